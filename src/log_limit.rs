//! No fault can turn the log into a disk filler: every place in the code that logs (its file and
//! line, tokengate's or a library's, such as Pingora's per-connection errors) writes at most
//! [`PER_SECOND`] lines a second; the first line it writes after leaving some out says how
//! many. Wraps the process's logger.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Log, Metadata, Record};

/// Lines one place may write in a second.
pub const PER_SECOND: u64 = 5;

/// One place's budget.
#[derive(Debug, Default, Clone, Copy)]
struct Budget {
    /// The second it is counted for, in Unix seconds.
    second: u64,
    /// Lines asked for in that second.
    count: u64,
    /// Lines left out since the last one written.
    left_out: u64,
}

/// A logger whose every place writes at most [`PER_SECOND`] lines a second.
pub struct Limited<L> {
    inner: L,
    budgets: Mutex<HashMap<u64, Budget>>,
}

impl<L: Log> Limited<L> {
    /// `inner`, limited.
    pub fn new(inner: L) -> Limited<L> {
        Limited {
            inner,
            budgets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `record` may be written at `now` (Unix seconds), and how many lines of its place
    /// were left out before it.
    fn admit(&self, record: &Record<'_>, now: u64) -> Option<u64> {
        let mut hasher = DefaultHasher::new();
        (record.file(), record.line(), record.target()).hash(&mut hasher);
        let mut budgets = self.budgets.lock().unwrap_or_else(PoisonError::into_inner);
        let budget = budgets.entry(hasher.finish()).or_default();
        if budget.second != now {
            budget.second = now;
            budget.count = 0;
        }
        budget.count += 1;
        if budget.count > PER_SECOND {
            budget.left_out += 1;
            return None;
        }
        Some(std::mem::take(&mut budget.left_out))
    }
}

impl<L: Log> Log for Limited<L> {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.inner.enabled(record.metadata()) {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let Some(left_out) = self.admit(record, now) else {
            return;
        };
        if left_out > 0 {
            self.inner.log(
                &Record::builder()
                    .args(format_args!(
                        "{left_out} lines like the next were left out (at most {PER_SECOND} a second from one place)"
                    ))
                    .level(record.level())
                    .target(record.target())
                    .build(),
            );
        }
        self.inner.log(record);
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps what it is asked to write.
    #[derive(Default)]
    struct Kept(Mutex<Vec<String>>);

    impl Log for Kept {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &Record<'_>) {
            self.0.lock().unwrap().push(record.args().to_string());
        }
        fn flush(&self) {}
    }

    fn record(line: u32) -> Record<'static> {
        Record::builder()
            .args(format_args!("a fault"))
            .file(Some("src/x.rs"))
            .line(Some(line))
            .level(log::Level::Warn)
            .build()
    }

    #[test]
    fn each_place_writes_its_budget_then_says_how_many_it_left_out() {
        let limited = Limited::new(Kept::default());
        let written = (0..100)
            .filter(|_| limited.admit(&record(1), 7).is_some())
            .count();
        assert_eq!(written as u64, PER_SECOND);
        // Another place has its own budget; the next second, the first says what it left out.
        assert_eq!(limited.admit(&record(2), 7), Some(0));
        assert_eq!(limited.admit(&record(1), 8), Some(100 - PER_SECOND));
        limited.log(&record(3));
        assert_eq!(limited.inner.0.lock().unwrap().as_slice(), ["a fault"]);
    }
}
