//! Config → a ready-to-run Pingora `Server`: the listening sockets, the proxy service
//! (`listeners`), the admin listener, the readiness probe and drain (`lifecycle`), the watcher
//! that reloads configuration, secrets and certificates, and the Redis sync.

mod lifecycle;
mod listeners;

use std::net::{SocketAddr, TcpListener};
use std::os::unix::io::IntoRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::apps::HttpServerOptions;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::Opt;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::AdminApp;
use crate::authorize::AuthorizeApp;
use crate::config::{Config, ConfigError};
use crate::issuers::Registry;
use crate::metrics;
use crate::proxy::{AppState, Proxy};
use crate::reload::{self, Lasting, Reloader, Secrets};
use crate::shared::{Shared, SharedSync};
use crate::tls::CertReloader;
use crate::trace::Exporter;
use crate::watch::{Subscriber, Watcher};
pub use lifecycle::MarkDraining;
use lifecycle::{KeyRefresher, ReadinessProbe};

/// Why the server could not be built.
#[derive(Debug)]
pub enum StartError {
    /// The configuration is unusable.
    Config(ConfigError),
    /// A listener address is taken or not ours to bind.
    Bind(&'static str, SocketAddr, std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => e.fmt(f),
            StartError::Bind(setting, addr, e) => {
                write!(f, "cannot listen on {addr} ({setting}): {e}")
            }
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
pub fn build(
    mut config: Config,
    path: Option<PathBuf>,
    opt: Option<Opt>,
) -> Result<Built, StartError> {
    let upgrading = opt.as_ref().is_some_and(|o| o.upgrade);
    let sockets = match upgrading {
        // An upgrade takes the running instance's sockets instead.
        true => Vec::new(),
        false => bind_all(&config)?,
    };
    // Register every metric now, so the first scrape already shows them all at zero.
    metrics::get();
    let state = Arc::new(AppState::default());
    // Not ready before each identity provider's keys are first fetched.
    state.set_keys_missing(config.issuers.iter().map(|i| i.issuer.clone()).collect());
    let lasting = lasting(&config, &state)?;
    let shared = lasting.shared.clone();
    let groups = reload::groups(&config);
    let proxy_app = Proxy::new(reload::gate(&config, groups.clone(), &lasting)?);
    let current = proxy_app.current();
    let reloader = Reloader::new(path, &config, current.clone(), lasting, groups);
    let mut server = Server::new_with_opt_and_conf(opt, std::mem::take(&mut config.server));
    server.bootstrap();
    for (addr, socket) in sockets {
        server.adopt_listen_fd(&addr.to_string(), socket.into_raw_fd());
    }
    let (proxy, certificates) =
        listeners::proxy_service(&server.configuration, &config, proxy_app)?;
    let admin_app = served_with(AdminApp::new(state.clone()), &config);
    let mut admin = Service::new("tokengate admin".to_owned(), admin_app);
    admin.add_tcp(&config.admin_listen.to_string());
    admin.threads = Some(1);
    // Probes are answered until the process exits after SIGTERM (`/readyz` 503 while it drains);
    // on an upgrade (SIGQUIT) the new process takes the socket and this one stops, as usual.
    let terminating = state.clone();
    admin.keep_listening_at_shutdown(Arc::new(move || {
        terminating
            .terminating
            .load(std::sync::atomic::Ordering::Acquire)
    }));
    let probe = ReadinessProbe {
        addr: config.listen,
        state: state.clone(),
        current: current.clone(),
    };
    let mut probe = background_service("readiness probe", probe);
    probe.threads = Some(1);
    let asked = current.clone();
    let keys_current = current.clone();
    let mut watched: Vec<Box<dyn Subscriber>> =
        vec![Box::new(reloader), Box::new(Secrets { current })];
    if let Some(store) = certificates {
        watched.push(Box::new(CertReloader { store }));
    }
    if let Some(authorize) = &config.authorize {
        let app = served_with(AuthorizeApp::new(asked), &config);
        let mut service = Service::new("tokengate authorize".to_owned(), app);
        // As the proxy's plaintext listener: read straight from the socket, no 64 KiB buffer
        // in front of every gateway connection.
        service.add_listener(
            ListenerConfig::tcp(authorize.listen.to_string())
                .l4_buffer(L4BufferSettings::default().read(0)),
        );
        service.threads = Some(config.threads);
        server.add_service(service);
    }
    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(probe);
    server.add_service(background_service("reloader", Watcher::new(watched)));
    if let Some(shared) = shared {
        server.add_service(background_service("redis", SharedSync(shared)));
    }
    let refresher = KeyRefresher {
        current: keys_current,
        state: state.clone(),
    };
    server.add_service(background_service("issuer keys", refresher));
    Ok(Built { server, state })
}

/// `app` served as HTTP with the proxy's header deadline: a connection that dawdles over a
/// request head is closed, not kept forever (Pingora's bare `ServeHttp` sets none).
fn served_with<A: ServeHttp + Send + Sync>(app: A, config: &Config) -> HttpServer<A> {
    let mut server = HttpServer::new_app(app);
    let mut options = HttpServerOptions::default();
    options.read_header_timeout = Some(config.proxy.header_timeout);
    server.server_options = Some(options);
    server
}

/// Binds every listener. Pingora panics inside its runtime on a bind failure, and the admin
/// listener would go on answering: bind here, with a clear error, and hand Pingora the sockets
/// themselves, so no other process can take an address between a check and Pingora's own bind.
fn bind_all(config: &Config) -> Result<Vec<(SocketAddr, TcpListener)>, StartError> {
    let tls = config
        .tls
        .as_ref()
        .map(|t| ("tokengate.tls.listen or TOKENGATE_TLS_LISTEN", t.listen));
    [
        ("tokengate.listen or TOKENGATE_LISTEN", config.listen),
        (
            "tokengate.admin_listen or TOKENGATE_ADMIN_LISTEN",
            config.admin_listen,
        ),
    ]
    .into_iter()
    .chain(tls)
    .chain(config.authorize.as_ref().map(|a| {
        (
            "tokengate.authorize.listen or TOKENGATE_AUTHORIZE_LISTEN",
            a.listen,
        )
    }))
    .map(|(setting, addr)| bind(setting, addr))
    .collect()
}

/// What outlives any one configuration: the connections to Redis and the trace collector.
fn lasting(config: &Config, state: &Arc<AppState>) -> Result<Lasting, StartError> {
    let shared = match &config.redis {
        Some(settings) => Some(Arc::new(Shared::new(settings.clone()).map_err(|e| {
            ConfigError::Invalid {
                key: "tokengate.redis.url".into(),
                problem: e.to_string(),
            }
        })?)),
        None => None,
    };
    Ok(Lasting {
        state: state.clone(),
        shared,
        tracer: config.tracing.clone().map(|t| Arc::new(Exporter::new(t))),
        issuers: Registry::default(),
    })
}

/// A listening socket on `addr`, the value of `setting`, non-blocking, as Pingora adopts it.
fn bind(setting: &'static str, addr: SocketAddr) -> Result<(SocketAddr, TcpListener), StartError> {
    let socket = TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| StartError::Bind(setting, addr, e))?;
    Ok((addr, socket))
}
