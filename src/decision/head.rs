//! What the decision reads of a request's head: its body framing, the headers the pure parts
//! take, and the request id.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Version};
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;

use super::forward::same_header;
use crate::request::body::body_kind;
use crate::request::method::OVERRIDE_HEADERS;
use crate::request::{BodyKind, Framing, Refusal};
use crate::respond;
use crate::token::TokenRequest;

/// How the body is read for `_method` fields, by the request's `Content-Type`.
pub(super) fn content_type(header: &RequestHeader) -> Result<BodyKind, Refusal> {
    let fields = header.headers.get_all(http::header::CONTENT_TYPE);
    body_kind(fields.iter().map(|v| v.as_bytes()))
}

/// How the request's body is framed, from the protocol: before any of it is read, Pingora's
/// session says whether the message ended with its header (HTTP/1.1 by its framing rules,
/// HTTP/2 by `END_STREAM` on HEADERS).
pub fn body_framing(session: &mut ServerSession) -> Framing {
    let ended = session.is_body_done();
    let headers = &session.req_header().headers;
    Framing::of(
        ended,
        headers.contains_key(http::header::TRANSFER_ENCODING),
        headers
            .get(http::header::CONTENT_LENGTH)
            .map(|v| v.as_bytes()),
    )
}

/// Whether the client waits for `100 Continue` before it sends the body.
pub fn expects_continue(header: &RequestHeader) -> bool {
    header
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Whether the client is a gRPC library, which reads `grpc-status` rather than HTTP statuses.
pub fn grpc_call(header: &RequestHeader) -> bool {
    crate::respond::is_grpc(
        header
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
    )
}

/// The request's authority: its Host header or, in HTTP/2, its `:authority`; both, differing,
/// name two hosts and are refused (RFC 9113 §8.3.1).
pub(super) fn host_of(header: &RequestHeader) -> Result<Option<HeaderValue>, Refusal> {
    let host = header.headers.get(http::header::HOST);
    if header.version != Version::HTTP_2 {
        return Ok(host.cloned());
    }
    let authority = header
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    match (host, authority) {
        (Some(host), Some(authority)) if host != authority => Err(Refusal::BadHost),
        (Some(host), _) => Ok(Some(host.clone())),
        (None, authority) => Ok(authority),
    }
}

/// Every method-override header value, in any spelling.
pub(super) fn override_values(header: &RequestHeader) -> Vec<&[u8]> {
    header
        .headers
        .iter()
        .filter(|(name, _)| {
            OVERRIDE_HEADERS
                .iter()
                .any(|h| same_header(name.as_str(), h))
        })
        .map(|(_, value)| value.as_bytes())
        .collect()
}

/// Every `Authorization` header value, in order: more than one is refused later, not merged.
pub fn authorization_values<'a, B: FromIterator<&'a [u8]>>(header: &'a RequestHeader) -> B {
    header
        .headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .map(|v| v.as_bytes())
        .collect()
}

/// What the token route reads of a request: its `authorization` values or session `cookie`,
/// content type, `body`.
pub fn token_request<'a>(
    header: &'a RequestHeader,
    authorization: &'a [&'a [u8]],
    cookie: Option<&'a str>,
    body: &'a [u8],
) -> TokenRequest<'a> {
    TokenRequest {
        authorization,
        cookie,
        content_type: header
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
        body,
    }
}

/// Now, in Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The caller's `X-Request-Id` when it is 1–200 visible ASCII characters, else a new UUID v4.
pub fn request_id(header: &RequestHeader) -> HeaderValue {
    // The parsed name: looking up by `&str` parses it on every request.
    let given = header.headers.get(&respond::X_REQUEST_ID.0).filter(|v| {
        let v = v.as_bytes();
        (1..=200).contains(&v.len()) && v.iter().all(|b| b.is_ascii_graphic())
    });
    if let Some(given) = given {
        return given.clone();
    }
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_maybe_shared(carve_id(id.as_bytes()))
        .unwrap_or(HeaderValue::from_static("unknown"))
}

/// Generated ids per slab: one allocation for this many requests.
const IDS_PER_SLAB: usize = 64;

thread_local! {
    /// The current slab generated ids are cut from, per worker thread.
    static ID_SLAB: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// `id` copied into a shared per-thread slab: an id's own buffer would be one allocation,
/// and its first clone (upstream, then the response) a second one to make it shared; ids
/// cut from one slab share its reference count, and the slab goes with its last id (so a
/// long-lived request keeps its 2.3 KiB slab, not 36 bytes, until it ends).
fn carve_id(id: &[u8]) -> Bytes {
    ID_SLAB.with_borrow_mut(|slab| {
        if slab.capacity() - slab.len() < id.len() {
            *slab = BytesMut::with_capacity(id.len() * IDS_PER_SLAB);
        }
        slab.extend_from_slice(id);
        slab.split().freeze()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_id(id: Option<&[u8]>) -> RequestHeader {
        let mut header = RequestHeader::build("GET", b"/", None).unwrap();
        if let Some(id) = id {
            let value = HeaderValue::from_bytes(id).unwrap();
            header.insert_header("x-request-id", value).unwrap();
        }
        header
    }

    fn is_uuid(v: &HeaderValue) -> bool {
        v.to_str()
            .is_ok_and(|s| uuid::Uuid::parse_str(s).is_ok() && s.len() == 36)
    }

    #[test]
    fn a_valid_request_id_is_kept_and_any_other_replaced() {
        let long = "a".repeat(201);
        let max = "a".repeat(200);
        let cases: [(Option<&[u8]>, Option<&str>); 6] = [
            (Some(b"abc-123"), Some("abc-123")),
            (Some(max.as_bytes()), Some(max.as_str())),
            (Some(long.as_bytes()), None),
            (Some(b""), None),
            (Some(b"a b"), None),
            (None, None),
        ];
        for (given, kept) in cases {
            let id = request_id(&with_id(given));
            match kept {
                Some(kept) => assert_eq!(id, kept, "{given:?}"),
                None => assert!(is_uuid(&id), "{given:?} gave {id:?}"),
            }
        }
    }

    #[test]
    fn generated_ids_are_distinct_across_slabs() {
        // Three slabs' worth held at once: ids from full slabs beside those of a fresh one.
        let ids: Vec<HeaderValue> = (0..IDS_PER_SLAB * 3)
            .map(|_| request_id(&with_id(None)))
            .collect();
        let copies: Vec<HeaderValue> = ids.to_vec();
        let distinct: std::collections::HashSet<&[u8]> = ids.iter().map(|v| v.as_bytes()).collect();
        assert_eq!(distinct.len(), IDS_PER_SLAB * 3);
        assert!(ids.iter().all(is_uuid));
        assert_eq!(ids, copies);
    }
}
