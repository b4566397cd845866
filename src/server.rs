//! Config → a ready-to-run Pingora `Server`: the proxy, the admin listener, the readiness probe.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::io::IntoRawFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::Opt;
use pingora::server::ShutdownWatch;
use pingora::server::{Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use tokio::signal::unix::{signal, SignalKind};

use crate::admin::AdminApp;
use crate::config::{Config, ConfigError};
use crate::metrics;
use crate::proxy::{watch_listener, AppState, Proxy, Tokengate};
use crate::reload::{self, Lasting, Reloader};
use crate::shared::{Shared, SharedSync};
use crate::tls::{self, CertStore};
use crate::trace::Exporter;
use crate::upstreams::UpstreamGroup;
use arc_swap::ArcSwap;

/// Why the server could not be built.
#[derive(Debug)]
pub enum StartError {
    /// The configuration is unusable.
    Config(ConfigError),
    /// A listener address is taken or not ours to bind.
    Bind(SocketAddr, std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => e.fmt(f),
            StartError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

impl From<ConfigError> for StartError {
    fn from(e: ConfigError) -> Self {
        StartError::Config(e)
    }
}

/// A built server and the state its probes report.
pub struct Built {
    /// The Pingora server, ready for `run`.
    pub server: Server,
    /// Shared readiness and in-flight state.
    pub state: Arc<AppState>,
}

/// Builds the whole server from `config`, read from `path` (which a live reload reads again);
/// `opt` carries Pingora's `-u`, `-d`, `-t`.
pub fn build(config: Config, path: Option<PathBuf>, opt: Option<Opt>) -> Result<Built, StartError> {
    let upgrading = opt.as_ref().is_some_and(|o| o.upgrade);
    // Pingora panics inside its runtime on a bind failure, and the admin listener would go on
    // answering: bind here, with a clear error, and hand Pingora the sockets themselves, so no
    // other process can take an address between a check and Pingora's own bind. An upgrade
    // takes the running instance's sockets instead.
    let sockets = match upgrading {
        true => Vec::new(),
        false => {
            let tls = config.tls.as_ref().map(|t| t.listen);
            [config.listen, config.admin_listen]
                .into_iter()
                .chain(tls)
                .map(bind)
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    // Register every metric now, so the first scrape already shows them all at zero.
    metrics::get();
    let state = Arc::new(AppState::default());
    let shared = match &config.redis {
        Some(settings) => Some(Arc::new(Shared::new(settings.clone()).map_err(|e| {
            StartError::Config(ConfigError::Invalid {
                key: "tokengate.redis.url".into(),
                problem: e.to_string(),
            })
        })?)),
        None => None,
    };
    let lasting = Lasting {
        state: state.clone(),
        shared: shared.clone(),
        tracer: config.tracing.clone().map(|t| Arc::new(Exporter::new(t))),
    };
    let groups: Vec<Arc<UpstreamGroup>> = config
        .upstream_groups
        .iter()
        .map(|g| Arc::new(UpstreamGroup::new(g.clone())))
        .collect();
    let proxy_app = Proxy::new(reload::gate(&config, groups.clone(), &lasting)?);
    let current = proxy_app.current();
    let reloader = Reloader::new(path, &config, current.clone(), lasting, groups);
    let mut server = Server::new_with_opt_and_conf(opt, config.server);
    server.bootstrap();
    for (addr, socket) in sockets {
        server.adopt_listen_fd(&addr.to_string(), socket.into_raw_fd());
    }

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        proxy_app,
        "tokengate proxy",
    );
    if let Some(app) = proxy.app_logic_mut() {
        let mut options = HttpServerOptions::default();
        options.read_header_timeout = Some(config.header_timeout);
        options.h2c = config.h2c;
        // An HTTP/2 connection without streams closes like an idle HTTP/1.1 keep-alive one;
        // Pingora's default keeps it forever.
        options.h2_idle_timeout = Some(H2_IDLE_TIMEOUT);
        // A connection accepted the moment the listeners stop, at an upgrade or shutdown,
        // still gets its first request answered; Pingora's default closes it unanswered.
        options.shutdown_idle_delay = Some(SHUTDOWN_IDLE_DELAY);
        app.server_options = Some(options);
    }
    // Pingora puts a 64 KiB read buffer in front of every accepted connection, whose HTTP/1
    // and HTTP/2 readers copy out of it into buffers of their own: plaintext connections read
    // straight from the socket (64 KiB less per connection, one copy less per read).
    proxy.add_listener(
        ListenerConfig::tcp(config.listen.to_string())
            .l4_buffer(L4BufferSettings::default().read(0)),
    );
    let certificates = match &config.tls {
        Some(tls) => {
            let store = Arc::new(
                CertStore::load(tls.certificates.clone())
                    .map_err(|e| StartError::Config(invalid_tls(e)))?,
            );
            let mut settings = TlsSettings::with_callbacks(Box::new(NoCallbacks))
                .map_err(|e| StartError::Config(invalid_tls(e.to_string())))?;
            settings.set_cert_resolver(store.clone());
            // The head of a request has `header_timeout`; the handshake before it gets as long.
            settings.set_handshake_timeout(config.header_timeout);
            if tls.h2 {
                settings.enable_h2();
            }
            // rustls reads the socket 4 KiB at a time: a buffer of one whole record keeps an
            // upload to one read per record at a quarter of Pingora's default.
            proxy.add_listener(
                ListenerConfig::tcp(tls.listen.to_string())
                    .tls(settings)
                    .l4_buffer(L4BufferSettings::default().read(TLS_READ_BUFFER)),
            );
            Some(store)
        }
        None => None,
    };
    proxy.threads = Some(config.threads);

    let mut admin = Service::new("tokengate admin".to_owned(), AdminApp::new(state.clone()));
    admin.add_tcp(&config.admin_listen.to_string());
    admin.threads = Some(1);

    let mut probe = background_service(
        "readiness probe",
        ReadinessProbe {
            addr: config.listen,
            state: state.clone(),
            current: current.clone(),
        },
    );
    probe.threads = Some(1);

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(probe);
    server.add_service(background_service("configuration reloader", reloader));
    server.add_service(background_service(
        "secret reloader",
        KeyReloader { current },
    ));
    if let Some(store) = certificates {
        server.add_service(background_service(
            "certificate reloader",
            CertReloader { store },
        ));
    }
    if let Some(shared) = shared {
        server.add_service(background_service("redis", SharedSync(shared)));
    }
    Ok(Built { server, state })
}

/// A listening socket on `addr`, non-blocking, as Pingora adopts it.
fn bind(addr: SocketAddr) -> Result<(SocketAddr, TcpListener), StartError> {
    let socket = TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| StartError::Bind(addr, e))?;
    Ok((addr, socket))
}

/// Marks the proxy ready once its listener accepts connections and every upstream group knows
/// an address (a host name may take a while to appear in DNS), and keeps watching the groups.
struct ReadinessProbe {
    addr: SocketAddr,
    state: Arc<AppState>,
    current: Arc<ArcSwap<Tokengate>>,
}

/// How long an HTTP/2 connection may stay open without a stream (Pingora closes idle HTTP/1.1
/// keep-alive connections after 60 s).
const H2_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long connections waiting for a request stay open after the listeners stop: a client
/// sends its request within a round trip of connecting.
const SHUTDOWN_IDLE_DELAY: Duration = Duration::from_secs(1);

/// The read buffer in front of a TLS connection: about one TLS record at its largest.
const TLS_READ_BUFFER: usize = 16 * 1024 + 256;

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

/// How often the secret file is compared with what was loaded; Kubernetes takes about a minute
/// to update a mounted Secret, so this is never the slow part.
const SECRET_POLL: Duration = Duration::from_secs(2);

/// Re-reads the secret file when it changes, or on `SIGHUP`, and swaps the keyring of the
/// configuration in force; a file that does not make a valid keyring is refused and the current
/// keys stay.
struct KeyReloader {
    current: Arc<ArcSwap<Tokengate>>,
}

impl KeyReloader {
    fn reload(&self) {
        let gate = self.current.load();
        match gate.secret_source.keyring(&gate.algorithms) {
            Ok(keyring) => {
                log::info!("secrets reloaded: {} verification keys", keyring.len());
                gate.keyring().replace(keyring);
                metrics::get()
                    .secret_reloads
                    .with_label_values(&["ok"])
                    .inc();
            }
            Err(e) => {
                log::error!("secret rotation refused, the current keys stay: {e}");
                metrics::get()
                    .secret_reloads
                    .with_label_values(&["error"])
                    .inc();
            }
        }
    }

    /// The secret file of the configuration in force, if it has one.
    fn file(&self) -> Option<PathBuf> {
        self.current.load().secret_source.file.clone()
    }
}

#[async_trait]
impl BackgroundService for KeyReloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangup = signal(SignalKind::hangup()).ok();
        let read = |path: &Option<PathBuf>| path.as_ref().and_then(|p| std::fs::read(p).ok());
        let mut loaded = read(&self.file());
        loop {
            let forced = tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(SECRET_POLL) => false,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            let file = self.file();
            if file.is_none() {
                continue;
            }
            let current = read(&file);
            if forced || current != loaded {
                loaded = current;
                self.reload();
            }
        }
    }
}

fn invalid_tls(problem: String) -> ConfigError {
    ConfigError::Invalid {
        key: "tokengate.tls.certificates".into(),
        problem,
    }
}

/// Pingora's TLS settings take a resolver only alongside callbacks; tokengate needs none.
struct NoCallbacks;

#[async_trait]
impl pingora::listeners::TlsAccept for NoCallbacks {}

/// Reads the listener's certificate files again when they change: the next handshake gets the
/// new certificate, connections already open keep theirs.
struct CertReloader {
    store: Arc<CertStore>,
}

#[async_trait]
impl BackgroundService for CertReloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut loaded = tls::snapshot(&self.store);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(tls::CERT_POLL) => {}
            }
            let current = tls::snapshot(&self.store);
            if current == loaded {
                continue;
            }
            loaded = current;
            let result = match self.store.reload() {
                Ok(count) => {
                    log::info!("TLS certificates reloaded: {count}");
                    "ok"
                }
                Err(e) => {
                    log::error!("TLS certificates refused, the current ones stay: {e}");
                    "error"
                }
            };
            metrics::get()
                .certificate_reloads
                .with_label_values(&[result])
                .inc();
        }
    }
}

/// Exits the process with 0 once `SIGTERM` arrived and no request is in flight; Pingora itself
/// would sleep out the whole grace period even when idle.
pub fn exit_when_drained(state: Arc<AppState>) {
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
        }
        signal
    }
}
