//! What runs beside the proxy for its life cycle: readiness, draining at shutdown, exit once
//! drained.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::BackgroundService;

use crate::decision::unix_now;
use crate::issuers;
use crate::proxy::{watch_listener, AppState, Tokengate};

/// Marks the proxy ready once its listener accepts connections and every upstream group knows
/// an address (a host name may take a while to appear in DNS), and keeps watching the groups.
pub(super) struct ReadinessProbe {
    pub(super) addr: SocketAddr,
    pub(super) state: Arc<AppState>,
    pub(super) current: Arc<ArcSwap<Tokengate>>,
}

/// How often the upstream groups are looked at for readiness.
const READINESS_POLL: Duration = Duration::from_millis(100);

#[async_trait]
impl BackgroundService for ReadinessProbe {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        watch_listener(self.addr, self.state.clone()).await;
        loop {
            let gate = self.current.load();
            let known = gate.groups().iter().all(|g| g.is_ready());
            if self.state.upstreams_known.swap(known, Ordering::AcqRel) != known {
                let names: Vec<&str> = gate
                    .groups()
                    .iter()
                    .filter(|g| !g.is_ready())
                    .map(|g| g.name())
                    .collect();
                match known {
                    true => log::info!("every upstream group has an address: ready"),
                    false => log::warn!("upstream groups without an address yet: {names:?}"),
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(READINESS_POLL) => {}
            }
        }
    }
}

/// Exits the process with 0 once no request is in flight, after `SIGTERM`; Pingora itself
/// would sleep out the whole grace period even when idle. Started when the signal arrives, in
/// the process that serves: a thread started before Pingora daemonizes (`-d`) would not survive
/// its fork.
fn exit_when_drained(state: Arc<AppState>) {
    std::thread::spawn(move || {
        let poll = std::time::Duration::from_millis(50);
        let mut idle_polls = 0;
        loop {
            std::thread::sleep(poll);
            if !state.terminating.load(Ordering::Acquire) {
                continue;
            }
            // Two idle polls in a row: a request accepted just before the listener closed has
            // had time to be counted.
            idle_polls = if state.in_flight.load(Ordering::Acquire) == 0 {
                idle_polls + 1
            } else {
                0
            };
            if idle_polls >= 2 {
                log::info!("drained: no request in flight, exiting");
                std::process::exit(0);
            }
        }
    });
}

/// Wraps a shutdown signal source so `/readyz` turns 503 the moment shutdown begins.
pub struct MarkDraining<W> {
    inner: W,
    state: Arc<AppState>,
}

impl<W> MarkDraining<W> {
    /// Reports shutdown on `state` when `inner` fires.
    pub fn new(inner: W, state: Arc<AppState>) -> Self {
        MarkDraining { inner, state }
    }
}

#[async_trait]
impl<W: ShutdownSignalWatch + Send + Sync> ShutdownSignalWatch for MarkDraining<W> {
    async fn recv(&self) -> ShutdownSignal {
        let signal = self.inner.recv().await;
        self.state.draining.store(true, Ordering::Release);
        if matches!(signal, ShutdownSignal::GracefulTerminate) {
            self.state.terminating.store(true, Ordering::Release);
            exit_when_drained(self.state.clone());
        }
        signal
    }
}

/// Refreshes identity providers' keys of the configuration in force as they fall due, and
/// keeps readiness and the issuer gauges current.
pub(super) struct KeyRefresher {
    /// The configuration in force (its issuers change with a reload).
    pub(super) current: Arc<ArcSwap<Tokengate>>,
    /// Where readiness is kept.
    pub(super) state: Arc<AppState>,
}

/// How often due refreshes are looked for.
const KEYS_TICK: Duration = Duration::from_millis(500);

#[async_trait]
impl BackgroundService for KeyRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let gate = self.current.load_full();
            let fetchers = &gate.decision.issuers;
            for fetcher in fetchers {
                let now = unix_now();
                fetcher.refresh_if_due(now).await;
                fetcher.report(now);
            }
            self.state
                .set_keys_missing(issuers::unready(fetchers, unix_now()));
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(KEYS_TICK) => {}
            }
        }
    }
}
