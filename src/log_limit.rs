//! Log lines a fault repeats once per request (an upstream down, Redis unreachable), limited:
//! at most [`PER_SECOND`] a second from each place, then one line saying how many were left
//! out, so no fault can turn the log into a disk filler.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lines one place may write in a second.
pub const PER_SECOND: u64 = 5;

/// The budget of one place in the code that logs.
#[derive(Debug, Default)]
pub struct LogLimit {
    /// The second the count is for, in Unix seconds.
    second: AtomicU64,
    /// Lines asked for in that second.
    count: AtomicU64,
    /// Lines left out since the last one written.
    left_out: AtomicU64,
}

impl LogLimit {
    /// A fresh budget.
    pub const fn new() -> LogLimit {
        LogLimit {
            second: AtomicU64::new(0),
            count: AtomicU64::new(0),
            left_out: AtomicU64::new(0),
        }
    }

    /// Whether a line may be written now (`Some` with how many were left out before it) or
    /// must be left out (`None`).
    pub fn admit(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.second.swap(now, Ordering::AcqRel) != now {
            self.count.store(0, Ordering::Release);
        }
        if self.count.fetch_add(1, Ordering::AcqRel) >= PER_SECOND {
            self.left_out.fetch_add(1, Ordering::AcqRel);
            return None;
        }
        Some(self.left_out.swap(0, Ordering::AcqRel))
    }
}

/// A note for a line written after `left_out` others were left out.
pub fn left_out_note(left_out: u64) -> String {
    match left_out {
        0 => String::new(),
        n => format!(" ({n} like it left out)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_writes_the_budget_then_counts_what_it_left_out() {
        let limit = LogLimit::new();
        let written = (0..1000).filter_map(|_| limit.admit()).count();
        // A second may turn over within the loop: one budget, or two.
        assert!(
            written as u64 == PER_SECOND || written as u64 == 2 * PER_SECOND,
            "{written}"
        );
        assert_eq!(left_out_note(0), "");
        assert_eq!(left_out_note(3), " (3 like it left out)");
    }
}
