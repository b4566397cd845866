//! The proxy service and its listeners: plaintext (with h2c when configured) and TLS, with the
//! HTTP server options tokengate sets differently from Pingora.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::services::listening::Service;

use super::StartError;
use crate::config::{Config, ConfigError, ListenerTls};
use crate::proxy::Proxy;
use crate::tls::CertStore;

/// How long an HTTP/2 connection may stay open without a stream (Pingora closes idle HTTP/1.1
/// keep-alive connections after 60 s).
const H2_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long connections waiting for a request stay open after the listeners stop: a client
/// sends its request within a round trip of connecting.
const SHUTDOWN_IDLE_DELAY: Duration = Duration::from_secs(1);

/// The read buffer in front of a TLS connection: about one TLS record at its largest.
const TLS_READ_BUFFER: usize = 16 * 1024 + 256;

/// The proxy's Pingora service.
pub(super) type ProxyService = Service<HttpProxy<Proxy>>;

/// The proxy service over `app`, listening where `config` says; the certificates it serves,
/// for the watcher.
pub(super) fn proxy_service(
    conf: &Arc<ServerConf>,
    config: &Config,
    app: Proxy,
) -> Result<(ProxyService, Option<Arc<CertStore>>), StartError> {
    let mut proxy = pingora::proxy::http_proxy_service_with_name(conf, app, "tokengate proxy");
    if let Some(app) = proxy.app_logic_mut() {
        let mut options = HttpServerOptions::default();
        options.read_header_timeout = Some(config.proxy.header_timeout);
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
        Some(tls) => Some(tls_listener(&mut proxy, tls, config)?),
        None => None,
    };
    proxy.threads = Some(config.threads);
    Ok((proxy, certificates))
}

/// Adds the TLS listener; its certificates are chosen by SNI from a store read again when the
/// files change.
fn tls_listener(
    proxy: &mut ProxyService,
    tls: &ListenerTls,
    config: &Config,
) -> Result<Arc<CertStore>, StartError> {
    let store = Arc::new(CertStore::load(tls.certificates.clone()).map_err(invalid_tls)?);
    let mut settings = TlsSettings::with_callbacks(Box::new(NoCallbacks))
        .map_err(|e| invalid_tls(e.to_string()))?;
    settings.set_cert_resolver(store.clone());
    // The head of a request has `header_timeout`; the handshake before it gets as long.
    settings.set_handshake_timeout(config.proxy.header_timeout);
    if tls.h2 {
        settings.enable_h2();
    }
    // rustls reads the socket 4 KiB at a time: a buffer of one whole record keeps an upload to
    // one read per record at a quarter of Pingora's default.
    proxy.add_listener(
        ListenerConfig::tcp(tls.listen.to_string())
            .tls(settings)
            .l4_buffer(L4BufferSettings::default().read(TLS_READ_BUFFER)),
    );
    Ok(store)
}

fn invalid_tls(problem: String) -> StartError {
    StartError::Config(ConfigError::Invalid {
        key: "tokengate.tls.certificates".into(),
        problem,
    })
}

/// Pingora's TLS settings take a resolver only alongside callbacks; tokengate needs none.
struct NoCallbacks;

#[async_trait]
impl pingora::listeners::TlsAccept for NoCallbacks {}
