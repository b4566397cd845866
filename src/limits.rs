//! The per-subject mint limit: a burst allowance above a sustained rate (GCRA, the generic cell
//! rate algorithm), in fixed memory whatever the number of subjects.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How many tokens one subject may mint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Mints allowed per `per`, sustained.
    pub mints: u32,
    /// The window the sustained rate is counted in.
    pub per: Duration,
    /// Mints allowed at once, before the sustained rate applies (at least 1).
    pub burst: u32,
}

/// Slots per row: subjects hash into them; a shared slot only ever makes a limit stricter.
const WIDTH: usize = 4096;
/// Independent rows: a subject is limited only when every one of its slots says so.
const ROWS: usize = 2;

/// Admits or refuses mints per subject.
pub struct Limiter {
    /// Nanoseconds one mint costs at the sustained rate.
    emission: u64,
    /// How far ahead of now a subject's schedule may run: the burst.
    tolerance: u64,
    /// Per slot, the theoretical arrival time of the next mint, in nanoseconds since `epoch`.
    slots: Box<[AtomicU64]>,
    /// One lock per slot of the first row: a subject's check and update happen under the lock
    /// of its first-row slot, so simultaneous requests of one subject are decided one after the
    /// other. Another subject sharing its second-row slot only ever raises that slot
    /// (`fetch_max`), which can only make this one stricter.
    locks: Box<[Mutex<()>]>,
    hashers: [RandomState; ROWS],
    epoch: Instant,
}

impl Limiter {
    /// A limiter for `limit`, starting now.
    pub fn new(limit: RateLimit) -> Limiter {
        let per = u64::try_from(limit.per.as_nanos()).unwrap_or(u64::MAX);
        let emission = per / u64::from(limit.mints.max(1));
        Limiter {
            emission,
            tolerance: emission.saturating_mul(u64::from(limit.burst.max(1) - 1)),
            slots: (0..WIDTH * ROWS).map(|_| AtomicU64::new(0)).collect(),
            locks: (0..WIDTH).map(|_| Mutex::new(())).collect(),
            hashers: std::array::from_fn(|_| RandomState::new()),
            epoch: Instant::now(),
        }
    }

    /// Whether `subject` may mint at `now`; when not, how long until it may.
    pub fn admit(&self, subject: &str, now: Instant) -> Result<(), Duration> {
        let now =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let slots: [usize; ROWS] = std::array::from_fn(|row| {
            let hash = self.hashers[row].hash_one(subject);
            row * WIDTH + usize::try_from(hash % WIDTH as u64).unwrap_or(0)
        });
        // Load, check and raise as one step: done apart, N simultaneous requests could all read
        // the same schedule and one more than the burst get through.
        let _decided_alone = self.locks[slots[0]]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let tat = slots
            .iter()
            .map(|&i| self.slots[i].load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
            .max(now);
        let ahead = tat - now;
        if ahead > self.tolerance {
            return Err(Duration::from_nanos(ahead - self.tolerance));
        }
        let next = tat.saturating_add(self.emission);
        for i in slots {
            self.slots[i].fetch_max(next, Ordering::AcqRel);
        }
        Ok(())
    }
}

/// `Retry-After` seconds for a wait: whole seconds, at least one.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: RateLimit = RateLimit {
        mints: 10,
        per: Duration::from_secs(1),
        burst: 100,
    };

    #[test]
    fn a_burst_passes_then_the_sustained_rate_applies() {
        let limiter = Limiter::new(PAGE);
        let t0 = Instant::now();
        for i in 0..100 {
            assert_eq!(limiter.admit("alice", t0), Ok(()), "mint {i}");
        }
        let wait = limiter.admit("alice", t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        // Others are not held back by alice.
        assert_eq!(limiter.admit("bob", t0), Ok(()));
        // A tenth of a second buys one more mint, and only one.
        let later = t0 + Duration::from_millis(100);
        assert_eq!(limiter.admit("alice", later), Ok(()));
        assert!(limiter.admit("alice", later).is_err());
        // After ten idle seconds the whole burst is back.
        let rested = t0 + Duration::from_secs(11);
        for _ in 0..100 {
            assert_eq!(limiter.admit("alice", rested), Ok(()));
        }
        assert!(limiter.admit("alice", rested).is_err());
    }

    #[test]
    fn a_sustained_flood_is_held_to_the_rate() {
        let limiter = Limiter::new(PAGE);
        let t0 = Instant::now();
        let admitted = (0..3000)
            .filter(|i| {
                let at = t0 + Duration::from_millis(*i);
                limiter.admit("flood", at).is_ok()
            })
            .count();
        // 100 at once, then 10 a second for 3 s.
        assert!((129..=131).contains(&admitted), "{admitted}");
    }

    #[test]
    fn simultaneous_requests_never_get_more_than_the_burst() {
        use std::sync::Barrier;
        const CALLERS: usize = 16;
        let burst_two = RateLimit {
            mints: 1,
            per: Duration::from_secs(3600),
            burst: 2,
        };
        for round in 0..300 {
            let limiter = Limiter::new(burst_two);
            let start = Barrier::new(CALLERS);
            let admitted: usize = std::thread::scope(|scope| {
                let callers: Vec<_> = (0..CALLERS)
                    .map(|_| {
                        scope.spawn(|| {
                            start.wait();
                            usize::from(limiter.admit("same", Instant::now()).is_ok())
                        })
                    })
                    .collect();
                callers.into_iter().map(|c| c.join().unwrap_or(0)).sum()
            });
            assert_eq!(admitted, 2, "round {round}");
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2100)), 3);
    }
}
