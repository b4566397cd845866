//! Upstream groups: several addresses, round-robin, active TCP health checks (Pingora's load
//! balancer) and passive ejection of an address that just refused a connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pingora::lb::health_check::TcpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, LoadBalancer};
use pingora::prelude::HttpPeer;
use pingora::services::background::{background_service, GenBackgroundService};

use crate::config::UpstreamTimeouts;

/// How a group is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// Name, for logs.
    pub name: String,
    /// Addresses, resolved at start-up.
    pub addresses: Vec<SocketAddr>,
    /// Timeouts towards these addresses.
    pub timeouts: UpstreamTimeouts,
    /// How often each address is probed with a TCP connect.
    pub health_check_interval: Duration,
    /// How long an address that refused a connection gets no new requests.
    pub ejection: Duration,
}

/// A group ready to serve: its balancer (health-checked by a background service) and ejections.
pub struct UpstreamGroup {
    config: GroupConfig,
    balancer: Arc<LoadBalancer<RoundRobin>>,
    ejected: Mutex<HashMap<SocketAddr, Instant>>,
}

impl UpstreamGroup {
    /// The group and the background service that health-checks it.
    pub fn new(
        config: GroupConfig,
    ) -> std::io::Result<(
        UpstreamGroup,
        GenBackgroundService<LoadBalancer<RoundRobin>>,
    )> {
        let mut balancer = LoadBalancer::<RoundRobin>::try_from_iter(
            config.addresses.iter().map(|a| a.to_string()),
        )?;
        let mut check = TcpHealthCheck::new();
        check.peer_template.options.connection_timeout = Some(config.timeouts.connect);
        balancer.set_health_check(check);
        balancer.health_check_frequency = Some(config.health_check_interval);
        balancer.parallel_health_check = true;
        let service = background_service(&format!("health check {}", config.name), balancer);
        let group = UpstreamGroup {
            balancer: service.task(),
            config,
            ejected: Mutex::new(HashMap::new()),
        };
        Ok((group, service))
    }

    /// The next healthy address, not ejected and not in `tried`; with none, the next untried
    /// address at all, since trying beats answering 502 without a try.
    pub fn select(&self, tried: &[SocketAddr]) -> Option<SocketAddr> {
        let now = Instant::now();
        let ejected = self.ejected.lock().unwrap_or_else(PoisonError::into_inner);
        let usable = |b: &Backend| {
            b.addr.as_inet().is_some_and(|a| {
                !tried.contains(a) && ejected.get(a).is_none_or(|until| *until <= now)
            })
        };
        let iterations = self.config.addresses.len().max(1) * 2;
        let chosen = self
            .balancer
            .select_with(b"", iterations, |b, healthy| healthy && usable(b))
            .or_else(|| self.balancer.select_with(b"", iterations, |b, _| usable(b)))
            .or_else(|| {
                self.balancer.select_with(b"", iterations, |b, _| {
                    b.addr.as_inet().is_some_and(|a| !tried.contains(a))
                })
            });
        chosen.and_then(|b| b.addr.as_inet().copied())
    }

    /// How many addresses the group has.
    pub fn len(&self) -> usize {
        self.config.addresses.len()
    }

    /// Never true: a group has at least one address.
    pub fn is_empty(&self) -> bool {
        self.config.addresses.is_empty()
    }

    /// Keeps new requests off `addr` for the ejection period.
    pub fn eject(&self, addr: SocketAddr) {
        let until = Instant::now() + self.config.ejection;
        self.ejected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(addr, until);
        log::warn!(
            "upstream {} ejected {addr} for {:?}",
            self.config.name,
            self.config.ejection
        );
    }

    /// Whether another address could be tried after `tried` failed.
    pub fn has_untried(&self, tried: &[SocketAddr]) -> bool {
        self.config.addresses.iter().any(|a| !tried.contains(a))
    }

    /// A peer for `addr` with the group's timeouts.
    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, false, String::new());
        let t = &self.config.timeouts;
        peer.options.connection_timeout = Some(t.connect);
        peer.options.read_timeout = Some(t.read);
        peer.options.write_timeout = Some(t.write);
        peer.options.idle_timeout = Some(t.idle);
        peer
    }
}
