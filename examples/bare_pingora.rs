//! The floor tokengate is measured against: a bare Pingora 0.9 `ProxyHttp` with only
//! `upstream_peer`, built with the same Pingora, features and settings as tokengate (one
//! worker thread, no work stealing, keep-alive upstream pool). `benches/load.sh` runs it beside
//! tokengate.
//!
//!   cargo run --release --example bare_pingora -- LISTEN UPSTREAM [TLS_LISTEN CERT KEY]
//!
//! The plaintext listener also takes HTTP/2 with prior knowledge (h2c); the TLS one, when
//! given, offers h2 and HTTP/1.1 by ALPN, with the same read buffer as tokengate's
//! (`benches/protocols.sh`).

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_pingora LISTEN UPSTREAM");
        std::process::exit(2);
    };
    let Ok(upstream) = upstream.parse() else {
        eprintln!("bare_pingora: {upstream:?} is not an ip:port");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        upstream_keepalive_pool_size: 1024,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Bare { upstream });
    if let Some(app) = proxy.app_logic_mut() {
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        app.server_options = Some(options);
    }
    proxy.add_listener(ListenerConfig::tcp(listen).l4_buffer(L4BufferSettings::default().read(0)));
    if let (Some(tls), Some(cert), Some(key)) = (args.next(), args.next(), args.next()) {
        let Ok(mut settings) = TlsSettings::intermediate(&cert, &key) else {
            eprintln!("bare_pingora: cannot load {cert} and {key}");
            std::process::exit(2);
        };
        settings.enable_h2();
        proxy.add_listener(
            ListenerConfig::tcp(tls)
                .tls(settings)
                .l4_buffer(L4BufferSettings::default().read(16 * 1024 + 256)),
        );
    }
    proxy.threads = Some(1);
    server.add_service(proxy);
    server.run_forever();
}
