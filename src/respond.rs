//! Responses tokengate answers itself: the standard header sets, and one writer for all of them.

use std::time::Duration;

use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use pingora::http::ResponseHeader;
use pingora::protocols::http::HttpTask;
use pingora::proxy::Session;

use crate::error::ApiError;

/// Every answer of tokengate's own is uncacheable: it is about one caller's token.
const NO_STORE: (&str, &str) = ("Cache-Control", "no-cache, no-store");

/// The legacy service's security and caching headers, less the obsolete `P3P`.
const TOKEN_HEADERS: [(&str, &str); 10] = [
    NO_STORE,
    ("Pragma", "no-cache"),
    ("Expires", "Fri, 01 Jan 1990 00:00:00 GMT"),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-XSS-Protection", "1; mode=block"),
    ("X-Download-Options", "noopen"),
    ("X-Permitted-Cross-Domain-Policies", "none"),
    (
        "Referrer-Policy",
        "origin-when-cross-origin, strict-origin-when-cross-origin",
    ),
    ("Vary", "Accept-Encoding"),
];

const JSON: &str = "application/json; charset=utf-8";

/// What `grpc-message` percent-encodes: everything outside printable ASCII, and `%`.
const GRPC_MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

/// Whether a request's `Content-Type` makes it a gRPC call (`application/grpc`, `+proto`, …);
/// gRPC-Web clients read HTTP statuses and get the JSON answers.
pub fn is_grpc(content_type: Option<&[u8]>) -> bool {
    content_type.is_some_and(|ct| {
        let rest = ct.strip_prefix(b"application/grpc").unwrap_or(b"-");
        rest.is_empty() || rest[0] == b'+' || rest[0] == b';'
    })
}

/// A complete response: status, headers in order, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Headers in the order they are written.
    pub headers: Vec<(&'static str, String)>,
    /// The whole body.
    pub body: Bytes,
}

impl Response {
    /// `200` with a minted token: the legacy header set plus `X-token`, `X-Request-Id`, `X-Runtime`.
    pub fn minted(
        body: Vec<u8>,
        session_token: &str,
        request_id: &str,
        runtime: Duration,
    ) -> Response {
        let mut headers = Vec::with_capacity(TOKEN_HEADERS.len() + 4);
        headers.push(("Content-Type", JSON.to_owned()));
        headers.extend(TOKEN_HEADERS.iter().map(|(k, v)| (*k, (*v).to_owned())));
        headers.push(("X-token", session_token.to_owned()));
        headers.push(("X-Request-Id", request_id.to_owned()));
        headers.push(("X-Runtime", format!("{:.6}", runtime.as_secs_f64())));
        Response {
            status: 200,
            headers,
            body: Bytes::from(body),
        }
    }

    /// The JSON error of the SPEC, with `WWW-Authenticate` on a 401.
    pub fn error(error: &ApiError, request_id: &str) -> Response {
        let mut headers = vec![
            ("Content-Type", JSON.to_owned()),
            (NO_STORE.0, NO_STORE.1.to_owned()),
            ("X-Request-Id", request_id.to_owned()),
        ];
        if let Some(challenge) = error.code.www_authenticate() {
            headers.push(("WWW-Authenticate", challenge.to_owned()));
        }
        Response {
            status: error.code.status(),
            headers,
            body: Bytes::from(error.body()),
        }
    }

    /// The same error for a gRPC client: a Trailers-Only response (HTTP 200, no body) whose
    /// `grpc-status` and `grpc-message` a gRPC library turns into a status it can act on.
    pub fn grpc_error(error: &ApiError, request_id: &str) -> Response {
        let message = utf8_percent_encode(error.message, GRPC_MESSAGE).to_string();
        let mut headers = vec![
            ("Content-Type", "application/grpc".to_owned()),
            ("grpc-status", error.code.grpc_status().to_string()),
            ("grpc-message", message),
            ("X-Request-Id", request_id.to_owned()),
        ];
        if let Some(challenge) = error.code.www_authenticate() {
            headers.push(("WWW-Authenticate", challenge.to_owned()));
        }
        Response {
            status: 200,
            headers,
            body: Bytes::new(),
        }
    }

    /// The error in the form the request's client reads: gRPC or the SPEC's JSON.
    pub fn error_for(error: &ApiError, request_id: &str, grpc: bool) -> Response {
        match grpc {
            true => Response::grpc_error(error, request_id),
            false => Response::error(error, request_id),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// The Pingora response header, `Content-Length` included.
    pub fn header(&self) -> pingora::Result<ResponseHeader> {
        let mut header = ResponseHeader::build(self.status, Some(self.headers.len() + 1))?;
        for (name, value) in &self.headers {
            header.append_header(*name, value.as_str())?;
        }
        header.insert_header("Content-Length", self.body.len().to_string())?;
        Ok(header)
    }
}

/// Writes `response` whole: header, then body, ending the stream; keep-alive is left as it was.
pub async fn send(session: &mut Session, response: Response) -> pingora::Result<()> {
    let header = response.header()?;
    // A HEAD answer keeps its Content-Length but carries no body; HTTP/2 clients treat DATA
    // after HEAD as a protocol error (Pingora's HTTP/1 writer drops it by itself).
    let bodiless = response.body.is_empty() || session.req_header().method == http::Method::HEAD;
    if bodiless && session.as_downstream().is_http2() {
        // One HEADERS frame that ends the stream: Pingora's own writer would send an empty DATA
        // frame after it, and gRPC reads only a header block that ends the stream as
        // Trailers-Only.
        let end = HttpTask::Header(Box::new(header), true);
        session
            .as_downstream_mut()
            .response_duplex_vec(vec![end])
            .await?;
        return Ok(());
    }
    session
        .write_response_header(Box::new(header), response.body.is_empty())
        .await?;
    if !response.body.is_empty() {
        session
            .write_response_body(Some(response.body), true)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn minted_carries_every_spec_header() {
        let r = Response::minted(b"{}".to_vec(), "a.b.c", "rid", Duration::from_micros(123));
        let names: Vec<&str> = r.headers.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            [
                "Content-Type",
                "Cache-Control",
                "Pragma",
                "Expires",
                "X-Frame-Options",
                "X-Content-Type-Options",
                "X-XSS-Protection",
                "X-Download-Options",
                "X-Permitted-Cross-Domain-Policies",
                "Referrer-Policy",
                "Vary",
                "X-token",
                "X-Request-Id",
                "X-Runtime"
            ]
        );
        assert_eq!(r.headers[13].1, "0.000123");
        let h = r.header().unwrap();
        assert_eq!(h.headers.get("content-length").unwrap(), "2");
    }

    #[test]
    fn grpc_clients_get_a_grpc_status() {
        let e = Response::grpc_error(
            &ApiError::new(ErrorCode::Forbidden, "No 100% access."),
            "rid",
        );
        assert_eq!(e.status, 200);
        assert!(e.body.is_empty());
        assert_eq!(
            e.headers[..3],
            [
                ("Content-Type", "application/grpc".to_owned()),
                ("grpc-status", "7".to_owned()),
                ("grpc-message", "No 100%25 access.".to_owned()),
            ]
        );
        for (ct, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc;charset=utf-8", true),
            ("application/grpc-web", false),
            ("application/grpcx", false),
            ("application/json", false),
        ] {
            assert_eq!(is_grpc(Some(ct.as_bytes())), grpc, "{ct}");
        }
        assert!(!is_grpc(None));
    }

    #[test]
    fn errors_challenge_only_on_401() {
        let e = Response::error(&ApiError::new(ErrorCode::MissingToken, "x"), "rid");
        assert_eq!(e.status, 401);
        assert!(e.headers.contains(&(
            "WWW-Authenticate",
            r#"Bearer realm="tokengate", error="invalid_request""#.to_owned()
        )));
        let e = Response::error(&ApiError::new(ErrorCode::PayloadTooLarge, "x"), "rid");
        assert!(!e.headers.iter().any(|(k, _)| *k == "WWW-Authenticate"));
    }
}
