//! Process-wide state: ready, draining, requests in flight.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::metrics;

/// Process-wide state shared by the proxy, the admin listener and the shutdown logic.
#[derive(Debug, Default)]
pub struct AppState {
    /// The proxy listener accepts connections.
    pub listening: AtomicBool,
    /// Every upstream group knows at least one address.
    pub upstreams_known: AtomicBool,
    /// Shutdown or upgrade began: `/readyz` answers 503.
    pub draining: AtomicBool,
    /// `SIGTERM` arrived: the process may exit as soon as nothing is in flight.
    pub terminating: AtomicBool,
    /// Requests between their first filter and their log line.
    pub in_flight: AtomicUsize,
    /// Identity providers whose keys are not usable: their tokens are refused until they are.
    keys_missing: Mutex<Vec<String>>,
}

impl AppState {
    /// Whether Kubernetes should route traffic here.
    pub fn is_ready(&self) -> bool {
        self.listening.load(Ordering::Acquire)
            && self.upstreams_known.load(Ordering::Acquire)
            && !self.draining.load(Ordering::Acquire)
            && self.keys_missing().is_empty()
    }

    /// The identity providers whose keys are not usable now.
    pub fn keys_missing(&self) -> Vec<String> {
        self.keys_missing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records which identity providers' keys are not usable now.
    pub fn set_keys_missing(&self, issuers: Vec<String>) {
        *self
            .keys_missing
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = issuers;
    }
}

/// Counts a request as in flight for as long as it lives.
pub struct InFlight(Arc<AppState>);

impl InFlight {
    /// Counts one more request in flight.
    pub fn new(state: Arc<AppState>) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        metrics::get().in_flight.inc();
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        metrics::get().in_flight.dec();
    }
}

/// Keeps connecting to the proxy listener until it answers, then marks the state as listening.
pub async fn watch_listener(addr: SocketAddr, state: Arc<AppState>) {
    let probe = match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        other => other,
    };
    loop {
        if tokio::net::TcpStream::connect(probe).await.is_ok() {
            state.listening.store(true, Ordering::Release);
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
