//! The answer to a gateway, in its convention. Allowed: `200` with the headers the application
//! must receive, every one a gateway is told to copy present or, for Envoy, listed for removal.
//! Refused: the status, headers and JSON body tokengate would answer itself; nginx passes only
//! `401` and `403` on, so it gets the real status and body in headers for its error page. Pure.

use http::{HeaderName, HeaderValue, StatusCode};

use crate::decision::{owned_headers, Forward, Refused, Settings};
use crate::metrics::Caller;
use crate::request::method::OVERRIDE_HEADERS;
use crate::respond::{Response, X_REQUEST_ID, X_TOKEN};

/// The status tokengate would have answered, for nginx's error page.
pub const TOKENGATE_STATUS: &str = "x-tokengate-status";
/// The JSON body tokengate would have answered, for nginx's error page.
pub const TOKENGATE_ERROR: &str = "x-tokengate-error";
/// Where Envoy's HTTP service lists the upstream headers to remove.
const ENVOY_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// What an allowed request carries to the application.
pub struct Allowed<'a> {
    /// The verified subject.
    pub subject: Option<&'a str>,
    /// The caller's valid token.
    pub token: Option<&'a HeaderValue>,
    /// The decided upstream request.
    pub forward: &'a Forward,
}

/// `200`: the request goes on, with these headers. Every header tokengate owns
/// ([`owned_headers`]) is one the gateway is configured to copy, and so to remove when the
/// answer lacks it; Envoy is told which to remove.
pub fn allow(
    caller: Caller,
    settings: &Settings,
    allowed: &Allowed<'_>,
    request_id: &HeaderValue,
) -> http::Response<Vec<u8>> {
    let mut set: Vec<(HeaderName, HeaderValue)> = Vec::with_capacity(8);
    if let Some(subject) = allowed.subject.and_then(|s| HeaderValue::from_str(s).ok()) {
        set.push((settings.identity_header.clone(), subject));
    }
    if let Some(token) = allowed.token {
        set.push((X_TOKEN.0.clone(), token.clone()));
    }
    for (name, value) in &allowed.forward.claims {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            set.push((name, value));
        }
    }
    if let Some(method) = allowed.forward.honoured_override {
        for header in OVERRIDE_HEADERS {
            set.push((
                HeaderName::from_static(header),
                HeaderValue::from_static(method),
            ));
        }
    }
    let mut response = http::Response::new(Vec::new());
    let headers = response.headers_mut();
    if caller == Caller::Envoy {
        let absent: Vec<&str> = owned_headers(settings)
            .filter(|name| !set.iter().any(|(n, _)| n.as_str() == *name))
            .collect();
        if let Ok(value) = HeaderValue::from_str(&absent.join(", ")) {
            headers.insert(ENVOY_REMOVE, value);
        }
    }
    for (name, value) in set {
        headers.append(name, value);
    }
    headers.insert(&X_REQUEST_ID.0, request_id.clone());
    headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    response
}

/// The refusal, as the gateway passes it to the client.
pub fn refuse(
    caller: Caller,
    refused: &Refused,
    request_id: &HeaderValue,
    grpc: bool,
) -> http::Response<Vec<u8>> {
    let answer = refused.response(request_id, grpc);
    let mut response = into_http(&answer);
    if caller == Caller::Nginx {
        // nginx answers 500 for any status but 2xx, 401 and 403 from `auth_request`, and drops
        // the body: its error page answers from these headers.
        if answer.status != 401 {
            *response.status_mut() = StatusCode::FORBIDDEN;
        }
        let headers = response.headers_mut();
        headers.insert(TOKENGATE_STATUS, HeaderValue::from(answer.status));
        if let Ok(body) = HeaderValue::from_bytes(&answer.body) {
            headers.insert(TOKENGATE_ERROR, body);
        }
    }
    response
}

/// tokengate's own answer as an `http` response.
fn into_http(answer: &Response) -> http::Response<Vec<u8>> {
    let mut response = http::Response::new(answer.body.to_vec());
    *response.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::FORBIDDEN);
    let headers = response.headers_mut();
    for (name, value) in &answer.headers {
        headers.append(name.0.clone(), value.clone());
    }
    headers.insert(
        http::header::CONTENT_LENGTH,
        HeaderValue::from(answer.body.len()),
    );
    response
}
