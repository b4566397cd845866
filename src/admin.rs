//! The admin listener: `/metrics`, `/healthz`, `/readyz`.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora_prometheus::prometheus::{self, Encoder, TextEncoder};

use crate::proxy::AppState;

/// Serves the admin endpoints from the shared state and the global metric registry.
pub struct AdminApp {
    state: Arc<AppState>,
}

impl AdminApp {
    /// An admin app reporting on `state`.
    pub fn new(state: Arc<AppState>) -> AdminApp {
        AdminApp { state }
    }

    /// Why `/readyz` says no; an identity provider without usable keys is named.
    fn not_ready(&self) -> Vec<u8> {
        let mut body = String::from("not ready\n");
        for issuer in self.state.keys_missing() {
            body.push_str(&format!("no usable keys from issuer {issuer}\n"));
        }
        body.into_bytes()
    }

    fn route(&self, path: &str) -> (u16, &'static str, Vec<u8>) {
        const TEXT: &str = "text/plain; charset=utf-8";
        match path {
            "/metrics" => {
                let encoder = TextEncoder::new();
                let mut body = Vec::new();
                match encoder.encode(&prometheus::gather(), &mut body) {
                    Ok(()) => (200, prometheus::TEXT_FORMAT, body),
                    Err(e) => (
                        500,
                        TEXT,
                        format!("cannot encode metrics: {e}\n").into_bytes(),
                    ),
                }
            }
            "/healthz" => (200, TEXT, b"ok\n".to_vec()),
            "/readyz" if self.state.is_ready() => (200, TEXT, b"ready\n".to_vec()),
            "/readyz" => (503, TEXT, self.not_ready()),
            _ => (
                404,
                TEXT,
                b"not found: try /metrics, /healthz or /readyz\n".to_vec(),
            ),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let (status, content_type, body) = self.route(session.req_header().uri.path());
        let length = http::HeaderValue::from(body.len());
        let mut response = Response::new(body);
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        headers.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        headers.insert(http::header::CONTENT_LENGTH, length);
        response
    }
}
