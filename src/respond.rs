//! Responses tokengate answers itself: the standard header sets, and one writer for all of them.

use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use pingora::http::ResponseHeader;
use pingora::protocols::http::HttpTask;
use pingora::proxy::Session;

use crate::error::ApiError;

/// A header name tokengate writes: parsed once, and the spelling it goes out in, so Pingora
/// appends it without parsing or copying the name (`vendor/pingora-http`).
pub type Name = (HeaderName, &'static str);

/// A [`Name`] from its lower-case form and its spelling on the wire.
pub const fn name(lower_case: &'static str, spelling: &'static str) -> Name {
    (HeaderName::from_static(lower_case), spelling)
}

static CONTENT_TYPE: Name = (header::CONTENT_TYPE, "Content-Type");
static WWW_AUTHENTICATE: Name = (header::WWW_AUTHENTICATE, "WWW-Authenticate");
/// `X-token`, the caller's valid token echoed on a response.
pub static X_TOKEN: Name = name("x-token", "X-token");
static X_RUNTIME: Name = name("x-runtime", "X-Runtime");
static GRPC_STATUS: Name = name("grpc-status", "grpc-status");
static GRPC_MESSAGE_NAME: Name = name("grpc-message", "grpc-message");
/// `X-Request-Id`, on every response and forwarded request.
pub static X_REQUEST_ID: Name = name("x-request-id", "X-Request-Id");
/// `Retry-After`, on a 429.
pub static RETRY_AFTER: Name = (header::RETRY_AFTER, "Retry-After");
/// `Allow`, on a 405.
pub static ALLOW: Name = (header::ALLOW, "Allow");

static JSON: HeaderValue = HeaderValue::from_static("application/json; charset=utf-8");

/// Every answer of tokengate's own is uncacheable: it is about one caller's token.
static NO_STORE: (Name, HeaderValue) = (
    (header::CACHE_CONTROL, "Cache-Control"),
    HeaderValue::from_static("no-cache, no-store"),
);

/// The legacy service's security and caching headers, less the obsolete `P3P`.
static TOKEN_HEADERS: [(Name, HeaderValue); 9] = [
    (
        (header::PRAGMA, "Pragma"),
        HeaderValue::from_static("no-cache"),
    ),
    (
        (header::EXPIRES, "Expires"),
        HeaderValue::from_static("Fri, 01 Jan 1990 00:00:00 GMT"),
    ),
    (
        (header::X_FRAME_OPTIONS, "X-Frame-Options"),
        HeaderValue::from_static("DENY"),
    ),
    (
        (header::X_CONTENT_TYPE_OPTIONS, "X-Content-Type-Options"),
        HeaderValue::from_static("nosniff"),
    ),
    (
        (header::X_XSS_PROTECTION, "X-XSS-Protection"),
        HeaderValue::from_static("1; mode=block"),
    ),
    (
        name("x-download-options", "X-Download-Options"),
        HeaderValue::from_static("noopen"),
    ),
    (
        name(
            "x-permitted-cross-domain-policies",
            "X-Permitted-Cross-Domain-Policies",
        ),
        HeaderValue::from_static("none"),
    ),
    (
        (header::REFERRER_POLICY, "Referrer-Policy"),
        HeaderValue::from_static("origin-when-cross-origin, strict-origin-when-cross-origin"),
    ),
    (
        (header::VARY, "Vary"),
        HeaderValue::from_static("Accept-Encoding"),
    ),
];

/// The head of every minted token's answer up to its per-request headers: a clone of the built
/// maps costs far less than appending these 11 headers into Pingora's two header maps for each
/// answer (figures in docs/performance.md). `None` only if Pingora refused a static header.
static MINTED_HEAD: LazyLock<Option<ResponseHeader>> = LazyLock::new(|| {
    // Room for the four headers each answer adds, so only the entries grow, never the index.
    let mut head = ResponseHeader::build(200, Some(2 + TOKEN_HEADERS.len() + 4)).ok()?;
    head.append_header(CONTENT_TYPE.clone(), JSON.clone())
        .ok()?;
    head.append_header(NO_STORE.0.clone(), NO_STORE.1.clone())
        .ok()?;
    for (name, value) in &TOKEN_HEADERS {
        head.append_header(name.clone(), value.clone()).ok()?;
    }
    Some(head)
});

/// What a response's head starts from, before its own headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// Nothing: only the response's own headers.
    Empty,
    /// [`MINTED_HEAD`]: status 200, `Content-Type`, `Cache-Control` and the legacy set.
    Minted,
}

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
    /// The headers written before [`Self::headers`], and the status when not [`Preset::Empty`].
    pub preset: Preset,
    /// Headers in the order they are written, after the preset's.
    pub headers: Vec<(Name, HeaderValue)>,
    /// The whole body.
    pub body: Bytes,
}

/// A value tokengate built itself (digits, a token, percent-encoded text): always valid, but
/// never a panic if it were not.
fn value(text: String) -> HeaderValue {
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `WWW-Authenticate` on a 401.
fn challenge(error: &ApiError) -> Option<(Name, HeaderValue)> {
    let challenge = error.code.www_authenticate()?;
    Some((WWW_AUTHENTICATE.clone(), value(challenge.to_owned())))
}

impl Response {
    /// `200` with a minted token: the legacy header set plus `X-token`, `X-Request-Id`, `X-Runtime`.
    pub fn minted(
        body: Vec<u8>,
        session_token: &str,
        request_id: &HeaderValue,
        runtime: Duration,
    ) -> Response {
        let runtime = format!("{:.6}", runtime.as_secs_f64());
        let headers = vec![
            (X_TOKEN.clone(), value(session_token.to_owned())),
            (X_REQUEST_ID.clone(), request_id.clone()),
            (X_RUNTIME.clone(), value(runtime)),
        ];
        Response {
            status: 200,
            preset: Preset::Minted,
            headers,
            body: Bytes::from(body),
        }
    }

    /// `200` with the JWKS, cacheable as configured.
    pub fn jwks(body: Bytes, cache_control: &str, request_id: &HeaderValue) -> Response {
        let headers = vec![
            (
                CONTENT_TYPE.clone(),
                HeaderValue::from_static("application/json"),
            ),
            // The same `Cache-Control` name, with the configured value.
            (NO_STORE.0.clone(), value(cache_control.to_owned())),
            (X_REQUEST_ID.clone(), request_id.clone()),
        ];
        Response {
            status: 200,
            preset: Preset::Empty,
            headers,
            body,
        }
    }

    /// The JSON error of the SPEC, with `WWW-Authenticate` on a 401.
    pub fn error(error: &ApiError, request_id: &HeaderValue) -> Response {
        let mut headers = Vec::with_capacity(5);
        headers.push((CONTENT_TYPE.clone(), JSON.clone()));
        headers.push(NO_STORE.clone());
        headers.push((X_REQUEST_ID.clone(), request_id.clone()));
        headers.extend(challenge(error));
        Response {
            status: error.code.status(),
            preset: Preset::Empty,
            headers,
            body: Bytes::from(error.body()),
        }
    }

    /// The same error for a gRPC client: a Trailers-Only response (HTTP 200, no body) whose
    /// `grpc-status` and `grpc-message` a gRPC library turns into a status it can act on.
    pub fn grpc_error(error: &ApiError, request_id: &HeaderValue) -> Response {
        let message = utf8_percent_encode(error.message, GRPC_MESSAGE).to_string();
        let mut headers = vec![
            (
                CONTENT_TYPE.clone(),
                HeaderValue::from_static("application/grpc"),
            ),
            (
                GRPC_STATUS.clone(),
                HeaderValue::from(u16::from(error.code.grpc_status())),
            ),
            (GRPC_MESSAGE_NAME.clone(), value(message)),
            (X_REQUEST_ID.clone(), request_id.clone()),
        ];
        headers.extend(challenge(error));
        Response {
            status: 200,
            preset: Preset::Empty,
            headers,
            body: Bytes::new(),
        }
    }

    /// The error in the form the request's client reads: gRPC or the SPEC's JSON.
    pub fn error_for(error: &ApiError, request_id: &HeaderValue, grpc: bool) -> Response {
        match grpc {
            true => Response::grpc_error(error, request_id),
            false => Response::error(error, request_id),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &Name, text: &str) -> Response {
        self.headers.push((name.clone(), value(text.to_owned())));
        self
    }

    /// The Pingora response header, `Content-Length` included.
    pub fn header(&self) -> pingora::Result<ResponseHeader> {
        let mut header = match self.preset {
            Preset::Empty => ResponseHeader::build(self.status, Some(self.headers.len() + 1))?,
            Preset::Minted => MINTED_HEAD.clone().ok_or_else(|| {
                pingora::Error::explain(pingora::ErrorType::InternalError, "minted head")
            })?,
        };
        for (name, value) in &self.headers {
            header.append_header(name.clone(), value.clone())?;
        }
        let length = HeaderValue::from(self.body.len());
        header.insert_header((header::CONTENT_LENGTH, "Content-Length"), length)?;
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

    const RID: HeaderValue = HeaderValue::from_static("rid");

    /// Each header as `(spelling, value)`, checking the parsed name agrees with the spelling.
    fn written(r: &Response) -> Vec<(&str, &str)> {
        r.headers
            .iter()
            .map(|((name, spelling), value)| {
                assert!(name.as_str().eq_ignore_ascii_case(spelling));
                (*spelling, value.to_str().unwrap())
            })
            .collect()
    }

    #[test]
    fn minted_carries_every_spec_header() {
        let r = Response::minted(b"{}".to_vec(), "a.b.c", &RID, Duration::from_micros(123));
        let h = r.header().unwrap();
        // Every header, as written on the wire, each spelling naming its parsed header.
        let wire: Vec<(&str, &str)> = h
            .case_header_iter()
            .map(|(spelling, value)| (std::str::from_utf8(spelling.as_slice()).unwrap(), value))
            .map(|(spelling, value)| (spelling, value.to_str().unwrap()))
            .collect();
        for (spelling, value) in &wire {
            assert_eq!(h.headers.get(*spelling).unwrap(), value);
        }
        assert_eq!(h.status, 200);
        assert_eq!(
            wire,
            [
                ("Content-Type", "application/json; charset=utf-8"),
                ("Cache-Control", "no-cache, no-store"),
                ("Pragma", "no-cache"),
                ("Expires", "Fri, 01 Jan 1990 00:00:00 GMT"),
                ("X-Frame-Options", "DENY"),
                ("X-Content-Type-Options", "nosniff"),
                ("X-XSS-Protection", "1; mode=block"),
                ("X-Download-Options", "noopen"),
                ("X-Permitted-Cross-Domain-Policies", "none"),
                (
                    "Referrer-Policy",
                    "origin-when-cross-origin, strict-origin-when-cross-origin"
                ),
                ("Vary", "Accept-Encoding"),
                ("X-token", "a.b.c"),
                ("X-Request-Id", "rid"),
                ("X-Runtime", "0.000123"),
                ("Content-Length", "2"),
            ]
        );
        assert_eq!(h.headers.len(), wire.len());
        // A second answer starts from the same head, not from the first one's headers.
        let again = Response::minted(b"{}".to_vec(), "d.e.f", &RID, Duration::ZERO);
        let h = again.header().unwrap();
        assert_eq!(h.headers.get_all("x-token").iter().count(), 1);
        assert_eq!(h.headers["x-token"], "d.e.f");
    }

    #[test]
    fn grpc_clients_get_a_grpc_status() {
        let e = Response::grpc_error(
            &ApiError::new(ErrorCode::Forbidden, "No 100% access."),
            &RID,
        );
        assert_eq!(e.status, 200);
        assert!(e.body.is_empty());
        assert_eq!(
            written(&e)[..3],
            [
                ("Content-Type", "application/grpc"),
                ("grpc-status", "7"),
                ("grpc-message", "No 100%25 access."),
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
        let e = Response::error(&ApiError::new(ErrorCode::MissingToken, "x"), &RID);
        assert_eq!(e.status, 401);
        assert!(written(&e).contains(&(
            "WWW-Authenticate",
            r#"Bearer realm="tokengate", error="invalid_request""#
        )));
        let e = Response::error(&ApiError::new(ErrorCode::PayloadTooLarge, "x"), &RID);
        assert!(!written(&e).iter().any(|(k, _)| *k == "WWW-Authenticate"));
    }
}
