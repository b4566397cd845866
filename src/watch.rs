//! One watcher for everything tokengate reads again while it runs (the configuration, the
//! secrets, the TLS certificates): every [`POLL`] it compares each subscriber's files with what
//! they held when last loaded, and `SIGHUP` reloads every subscriber that follows it. One
//! signal handler, one timer, one way a half-written file is left alone.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora_prometheus::prometheus::IntCounterVec;
use tokio::signal::unix::{signal, SignalKind};

/// How often the watched files are compared with what was loaded; Kubernetes takes about a
/// minute to update a mounted ConfigMap or Secret, so this is never the slow part.
pub const POLL: Duration = Duration::from_secs(2);

/// A changed file is read again after this long and used only if it reads the same: an editor
/// or a `>` redirection may be caught half-written.
const SETTLE: Duration = Duration::from_millis(200);

/// What made a subscriber reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// One of its files changed.
    FileChanged,
    /// `SIGHUP`.
    Hangup,
}

impl Why {
    /// As the log lines say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Why::FileChanged => "file changed",
            Why::Hangup => "SIGHUP",
        }
    }
}

/// Something read again from files while tokengate runs.
#[async_trait]
pub trait Subscriber: Send + Sync {
    /// What it is, as the log lines name it (`configuration`, `secrets`, …).
    fn name(&self) -> &'static str;
    /// Counts its reloads by `result` (`ok`, `error`).
    fn reloads(&self) -> &'static IntCounterVec;
    /// The files it was read from, looked at on every poll.
    fn files(&self) -> Vec<PathBuf>;
    /// Whether `SIGHUP` reloads it too.
    fn follows_hangup(&self) -> bool {
        true
    }
    /// The watcher starts (inside the server's runtime).
    async fn start(&self) {}
    /// Reads again and swaps in what it read, saying what; keeps what runs when that fails,
    /// saying why.
    async fn reload(&self) -> Result<String, String>;
    /// The process is stopping.
    fn stop(&self) {}
}

/// Set by a `SIGHUP` from the moment [`catch_hangup`] ran: one that arrives before the watcher
/// runs (while the process starts) is a reload owed, never the end of the process.
static HANGUP: LazyLock<Arc<AtomicBool>> = LazyLock::new(|| Arc::new(AtomicBool::new(false)));

/// Handles `SIGHUP` from now on: its default action would end the process, and a ConfigMap
/// reloader or an operator may send it while tokengate is still starting. Call it first.
pub fn catch_hangup() -> std::io::Result<()> {
    signal_hook::flag::register(signal_hook::consts::SIGHUP, HANGUP.clone()).map(drop)
}

/// Makes `SIGINT` end the process at once from now on, as Pingora's fast shutdown does once it
/// runs. Before that, a `SIGINT` that the parent set to be ignored (a background job's, in a
/// non-interactive shell) would be lost, and the process would run on. Call it first.
pub fn exit_on_interrupt() -> std::io::Result<()> {
    let always = Arc::new(AtomicBool::new(true));
    signal_hook::flag::register_conditional_shutdown(signal_hook::consts::SIGINT, 0, always)
        .map(drop)
}

/// The background service running every subscriber.
pub struct Watcher {
    subscribers: Vec<Box<dyn Subscriber>>,
}

impl Watcher {
    /// A watcher of `subscribers`, reloaded in this order.
    pub fn new(subscribers: Vec<Box<dyn Subscriber>>) -> Watcher {
        Watcher { subscribers }
    }
}

/// Every file's bytes; `None` for one that cannot be read.
fn read(files: &[PathBuf]) -> Vec<Option<Vec<u8>>> {
    files.iter().map(|p| std::fs::read(p).ok()).collect()
}

/// Whether files that now read as `now` differ from `loaded` and are whole: all readable, and
/// the same when read again a moment later.
async fn settled_change(
    files: &[PathBuf],
    loaded: &[Option<Vec<u8>>],
    now: &[Option<Vec<u8>>],
) -> bool {
    if now == loaded || now.iter().any(Option::is_none) {
        return false;
    }
    tokio::time::sleep(SETTLE).await;
    read(files) == now
}

/// Reloads one subscriber, with one log line and one count either way.
async fn reload(subscriber: &dyn Subscriber, why: Why) {
    let (name, why) = (subscriber.name(), why.as_str());
    let result = match subscriber.reload().await {
        Ok(summary) => {
            log::info!("{name} reloaded ({why}): {summary}");
            "ok"
        }
        Err(e) => {
            log::error!("{name} reload refused ({why}), the running one stays: {e}");
            "error"
        }
    };
    subscriber.reloads().with_label_values(&[result]).inc();
}

#[async_trait]
impl BackgroundService for Watcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // The signal, for a prompt reload; `HANGUP`, for one that came before this ran.
        let mut hangup = signal(SignalKind::hangup()).ok();
        for subscriber in &self.subscribers {
            subscriber.start().await;
        }
        let mut loaded: Vec<_> = self.subscribers.iter().map(|s| read(&s.files())).collect();
        loop {
            let pending = HANGUP.swap(false, Ordering::AcqRel);
            let hung_up = pending
                || tokio::select! {
                    _ = shutdown.changed() => break,
                    _ = tokio::time::sleep(POLL) => HANGUP.swap(false, Ordering::AcqRel),
                    Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                        HANGUP.store(false, Ordering::Release);
                        true
                    }
                };
            for (subscriber, loaded) in self.subscribers.iter().zip(loaded.iter_mut()) {
                let files = subscriber.files();
                let now = read(&files);
                let why = match hung_up && subscriber.follows_hangup() {
                    true => Why::Hangup,
                    false if settled_change(&files, loaded, &now).await => Why::FileChanged,
                    false => continue,
                };
                *loaded = now;
                reload(subscriber.as_ref(), why).await;
            }
        }
        self.subscribers.iter().for_each(|s| s.stop());
    }
}
