//! `tokengate demo-app`: a stand-in for the image app, for a first try of the gate on one
//! machine. It answers every request `200` with what it received, as JSON: the method, the
//! target and the headers an application would act on, the identity tokengate set among them.

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::listening::Service;

/// Echoes each request as JSON.
struct Echo;

#[async_trait]
impl ServeHttp for Echo {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        // The body is read and counted, not echoed.
        let mut body_bytes = 0;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            body_bytes += chunk.len();
        }
        let header = session.req_header();
        let headers: serde_json::Map<String, serde_json::Value> = header
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect();
        let echo = serde_json::json!({
            "app": "tokengate demo-app",
            "method": header.method.as_str(),
            "target": String::from_utf8_lossy(header.raw_path()),
            "headers": headers,
            "body_bytes": body_bytes,
        });
        let mut body = serde_json::to_vec_pretty(&echo).unwrap_or_default();
        body.push(b'\n');
        let length = http::HeaderValue::from(body.len());
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        headers.insert(http::header::CONTENT_LENGTH, length);
        response
    }
}

/// Serves the demo app on `listen` until the process is stopped.
pub fn run(listen: std::net::SocketAddr) {
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(Opt::default()), conf);
    server.bootstrap();
    let mut app = Service::new("tokengate demo-app".to_owned(), Echo);
    app.add_tcp(&listen.to_string());
    server.add_service(app);
    log::info!("tokengate demo-app on {listen}: every request answered with what it received");
    server.run_forever();
}
