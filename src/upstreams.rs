//! Upstream groups: addresses or host names (resolved again on an interval, so a Kubernetes
//! Service that is not there yet, or a headless Service whose pods change, is followed),
//! round-robin, active TCP health checks (Pingora's load balancer) and passive ejection of an
//! address that just refused a connection.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::{HealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::prelude::HttpPeer;
use pingora::protocols::tls::CaType;
use pingora::protocols::ALPN;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};

/// A group's TCP health check, reported in one short line naming the group and the address:
/// Pingora's own would print the backend and the error's peer options whole (about 1.5 KB).
struct GroupHealthCheck {
    group: String,
    tcp: Box<TcpHealthCheck>,
}

#[async_trait]
impl HealthCheck for GroupHealthCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        self.tcp.check(target).await.map_err(|e| {
            let cause = e.root_cause().to_string();
            pingora::Error::explain(e.etype().clone(), cause)
        })
    }

    fn backend_summary(&self, target: &Backend) -> String {
        format!("upstream {} address {}", self.group, target.addr)
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.tcp.health_threshold(success)
    }
}

/// Timeouts towards an upstream: the `upstream_timeouts` setting, for the `default` group and
/// every group that sets none, each with its default beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamTimeouts {
    /// TCP connect.
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// Waiting for each read from the upstream.
    #[serde(with = "humantime_serde")]
    pub read: Duration,
    /// Waiting for each write to the upstream.
    #[serde(with = "humantime_serde")]
    pub write: Duration,
    /// How long a pooled keep-alive connection may sit idle.
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
}

impl Default for UpstreamTimeouts {
    fn default() -> UpstreamTimeouts {
        UpstreamTimeouts {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(60),
            write: Duration::from_secs(60),
            idle: Duration::from_secs(60),
        }
    }
}

/// A group's own timeouts, each falling back to [`UpstreamTimeouts`] when not set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupTimeouts {
    /// TCP connect.
    #[serde(with = "humantime_serde")]
    pub connect: Option<Duration>,
    /// Each read.
    #[serde(with = "humantime_serde")]
    pub read: Option<Duration>,
    /// Each write.
    #[serde(with = "humantime_serde")]
    pub write: Option<Duration>,
    /// Idle pooled connection.
    #[serde(with = "humantime_serde")]
    pub idle: Option<Duration>,
}

impl GroupTimeouts {
    /// These timeouts over `global`.
    pub fn over(self, global: UpstreamTimeouts) -> UpstreamTimeouts {
        UpstreamTimeouts {
            connect: self.connect.unwrap_or(global.connect),
            read: self.read.unwrap_or(global.read),
            write: self.write.unwrap_or(global.write),
            idle: self.idle.unwrap_or(global.idle),
        }
    }
}

/// How a group is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// Name, for logs.
    pub name: String,
    /// `host:port` entries: IP addresses, or names resolved on `resolve_interval`.
    pub addresses: Vec<String>,
    /// Timeouts towards these addresses.
    pub timeouts: UpstreamTimeouts,
    /// How often each address is probed with a TCP connect.
    pub health_check_interval: Duration,
    /// How long an address that refused a connection gets no new requests.
    pub ejection: Duration,
    /// How often host names are resolved again.
    pub resolve_interval: Duration,
    /// The HTTP version spoken to these addresses.
    pub protocol: Protocol,
    /// TLS towards these addresses, if any.
    pub tls: Option<UpstreamTls>,
}

/// The HTTP version a group speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1.
    #[default]
    H1,
    /// HTTP/2 (negotiated by ALPN, so only with TLS).
    H2,
    /// HTTP/2 in plaintext with prior knowledge (gRPC servers without TLS).
    H2c,
}

/// TLS towards a group's addresses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    /// The name sent as SNI and verified against the certificate.
    pub sni: String,
    /// DER trust anchors from a CA bundle; `None`: the system's roots.
    pub ca: Option<Vec<Vec<u8>>>,
    /// A client certificate chain (DER, leaf first) and its DER private key, for mTLS.
    pub client: Option<(Vec<Vec<u8>>, Vec<u8>)>,
    /// Accept any server certificate: for tests and emergencies only.
    pub insecure_skip_verify: bool,
}

impl GroupConfig {
    /// Whether any entry is a host name rather than an address.
    fn has_names(&self) -> bool {
        self.addresses
            .iter()
            .any(|a| a.parse::<SocketAddr>().is_err())
    }
}

/// Resolves the group's entries; a name that fails to resolve keeps its last known addresses
/// (a DNS hiccup must not empty a group), and one that never resolved contributes none yet.
struct Resolver {
    group: String,
    entries: Vec<String>,
    last: Mutex<HashMap<String, Vec<SocketAddr>>>,
}

#[async_trait]
impl ServiceDiscovery for Resolver {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let mut backends = BTreeSet::new();
        for entry in &self.entries {
            let resolved = match entry.parse::<SocketAddr>() {
                Ok(addr) => Ok(vec![addr]),
                Err(_) => tokio::net::lookup_host(entry.as_str())
                    .await
                    .map(|addrs| addrs.collect::<Vec<_>>()),
            };
            let addrs = {
                let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
                match resolved {
                    Ok(addrs) if !addrs.is_empty() => {
                        last.insert(entry.clone(), addrs.clone());
                        addrs
                    }
                    Ok(_) | Err(_) => {
                        log::warn!(
                            "upstream {}: cannot resolve {entry}, keeping its last addresses",
                            self.group
                        );
                        last.get(entry).cloned().unwrap_or_default()
                    }
                }
            };
            backends.extend(addrs.into_iter().map(|addr| Backend {
                addr: pingora::protocols::l4::socket::SocketAddr::Inet(addr),
                weight: 1,
                ext: Default::default(),
            }));
        }
        Ok((backends, HashMap::new()))
    }
}

/// A group ready to serve: its balancer (kept current by [`UpstreamGroup::run`]) and ejections.
pub struct UpstreamGroup {
    config: GroupConfig,
    /// What every peer of the group carries (TLS, ALPN), built once.
    template: PeerTemplate,
    balancer: Arc<LoadBalancer<RoundRobin>>,
    ejected: Mutex<HashMap<SocketAddr, Instant>>,
}

impl UpstreamGroup {
    /// The group; it knows no address until [`UpstreamGroup::refresh`] or `run` resolves them.
    pub fn new(config: GroupConfig) -> UpstreamGroup {
        let resolver = Resolver {
            group: config.name.clone(),
            entries: config.addresses.clone(),
            last: Mutex::new(HashMap::new()),
        };
        let mut balancer =
            LoadBalancer::<RoundRobin>::from_backends(Backends::new(Box::new(resolver)));
        // A lone address has no alternative: probing it would only add connections.
        if config.addresses.len() > 1 || config.has_names() {
            let mut check = TcpHealthCheck::new();
            check.peer_template.options.connection_timeout = Some(config.timeouts.connect);
            balancer.set_health_check(Box::new(GroupHealthCheck {
                group: config.name.clone(),
                tcp: check,
            }));
            balancer.health_check_frequency = Some(config.health_check_interval);
        }
        balancer.update_frequency = config.has_names().then_some(config.resolve_interval);
        balancer.parallel_health_check = true;
        UpstreamGroup {
            balancer: Arc::new(balancer),
            template: PeerTemplate::new(&config),
            config,
            ejected: Mutex::new(HashMap::new()),
        }
    }

    /// Resolves and health-checks the group on its intervals until `shutdown` says stop.
    pub async fn run(&self, shutdown: ShutdownWatch) {
        BackgroundService::start(&*self.balancer, shutdown).await;
    }

    /// Resolves the group's addresses once, so a group swapped in by a reload serves at once.
    pub async fn refresh(&self) {
        if let Err(e) = self.balancer.update().await {
            log::warn!("upstream {}: {e}", self.config.name);
        }
    }

    /// How the group is configured.
    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    fn addresses(&self) -> Vec<SocketAddr> {
        self.balancer
            .backends()
            .get_backend()
            .iter()
            .filter_map(|b| b.addr.as_inet().copied())
            .collect()
    }

    /// Whether the group knows at least one address to send requests to.
    pub fn is_ready(&self) -> bool {
        !self.balancer.backends().get_backend().is_empty()
    }

    /// The next healthy address, not ejected and not in `tried`; with none, the next untried
    /// address at all, since trying beats answering 502 without a try.
    pub fn select(&self, tried: &[SocketAddr]) -> Option<SocketAddr> {
        // A lone address has no alternative to prefer: skip health and ejection bookkeeping.
        let backends = self.balancer.backends().get_backend();
        if backends.len() == 1 {
            return backends
                .first()
                .and_then(|b| b.addr.as_inet().copied())
                .filter(|a| !tried.contains(a));
        }
        let now = Instant::now();
        let ejected = self.ejected.lock().unwrap_or_else(PoisonError::into_inner);
        let usable = |b: &Backend| {
            b.addr.as_inet().is_some_and(|a| {
                !tried.contains(a) && ejected.get(a).is_none_or(|until| *until <= now)
            })
        };
        let iterations = backends.len().max(1) * 2;
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
        self.addresses().iter().any(|a| !tried.contains(a))
    }

    /// A peer for `addr` with the group's timeouts, protocol and TLS.
    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let template = &self.template;
        let mut peer = HttpPeer::new(addr, template.tls, template.sni.clone());
        let t = &self.config.timeouts;
        peer.options.connection_timeout = Some(t.connect);
        peer.options.read_timeout = Some(t.read);
        peer.options.write_timeout = Some(t.write);
        peer.options.idle_timeout = Some(t.idle);
        peer.options.alpn = template.alpn.clone();
        if template.alpn != ALPN::H1 {
            peer.options.max_h2_streams = H2_STREAMS;
        }
        peer.options.ca = template.ca.clone();
        peer.client_cert_key = template.client.clone();
        peer.options.verify_cert = template.verify;
        peer.options.verify_hostname = template.verify;
        // Pooled connections are keyed by peer; groups with different trust must not share.
        peer.group_key = template.group_key;
        peer
    }
}

/// Concurrent streams on one upstream HTTP/2 connection.
const H2_STREAMS: usize = 100;

/// The parts of a group's peers that do not depend on the address.
struct PeerTemplate {
    tls: bool,
    sni: String,
    alpn: ALPN,
    ca: Option<Arc<CaType>>,
    client: Option<Arc<CertKey>>,
    verify: bool,
    group_key: u64,
}

impl PeerTemplate {
    /// Certificates were parsed when the configuration was read, so Pingora's parsers, which
    /// panic on malformed input, only ever see well-formed ones.
    fn new(config: &GroupConfig) -> PeerTemplate {
        let tls = config.tls.as_ref();
        let alpn = match config.protocol {
            Protocol::H1 => ALPN::H1,
            Protocol::H2 | Protocol::H2c => ALPN::H2,
        };
        let ca = tls.and_then(|t| t.ca.as_ref()).map(|ders| {
            ders.iter()
                .map(|der| WrappedX509::new(der.clone(), parse_x509))
                .collect::<Vec<_>>()
                .into()
        });
        let client = tls
            .and_then(|t| t.client.as_ref())
            .map(|(chain, key)| Arc::new(CertKey::new(chain.clone(), key.clone())));
        let group_key = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            // A reload that changes a group's trust must not reuse its pooled connections.
            (&config.name, config.protocol, &config.tls).hash(&mut hasher);
            hasher.finish()
        };
        PeerTemplate {
            tls: tls.is_some(),
            sni: tls.map(|t| t.sni.clone()).unwrap_or_default(),
            alpn,
            ca,
            client,
            verify: tls.is_none_or(|t| !t.insecure_skip_verify),
            group_key,
        }
    }
}
