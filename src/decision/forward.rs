//! The upstream request: exactly the canonical request tokengate checked, the identity from a
//! verified token only, forwarding headers from what tokengate knows.

use std::cell::RefCell;
use std::net::IpAddr;

use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;

use super::Settings;
use crate::forward_claims::ClaimHeader;
use crate::forwarded::{self, is_forwarding_header, Received};
use crate::request::method::OVERRIDE_HEADERS;
use crate::request::BodyScan;
use crate::respond::{name, Name, X_REQUEST_ID, X_TOKEN};

/// The request a forwarded one becomes upstream, as decided.
#[derive(Debug, Default)]
pub struct Forward {
    /// The canonical target, when it differs from the one received.
    pub target: Option<Vec<u8>>,
    /// The canonical authority: the client's Host value itself when it was canonical already.
    pub authority: Option<HeaderValue>,
    /// Whether Host must be rewritten to `authority`.
    pub host_rewritten: bool,
    /// The honoured override method.
    pub honoured_override: Option<&'static str>,
    /// Claims sent as headers (`forward_claims`), by header name.
    pub claims: Vec<(String, String)>,
    /// How the body goes upstream.
    pub body: ForwardBody,
}

/// How a forwarded request's body goes upstream.
#[derive(Debug, Default)]
pub enum ForwardBody {
    /// As it comes: there is none, or it is one no framework reads fields from.
    #[default]
    Unscanned,
    /// Read ahead and checked whole; Pingora sends it on.
    ReadAhead,
    /// Streamed and scanned on its way: the chunk that completes a `_method` field is never
    /// sent, and the request is refused.
    Scanned(BodyScan),
}

impl Forward {
    /// Rewrites `upstream`, a copy of the client's request head, into the one decided: for the
    /// verified `subject`, from the client at `peer`, over TLS when `tls`.
    pub fn apply(
        &self,
        upstream: &mut RequestHeader,
        settings: &Settings,
        subject: Option<&str>,
        peer: Option<IpAddr>,
        tls: bool,
        request_id: &HeaderValue,
    ) -> pingora::Result<()> {
        let rewrite = Rewrite {
            claim_headers: &settings.forward_claims,
            claims: &self.claims,
            target: self.target.as_deref(),
            authority: self.authority.as_ref(),
            host_rewritten: self.host_rewritten,
            honoured_override: self.honoured_override,
            subject,
            peer: peer.map(|ip| (ip, settings.trusted_proxies.contains(ip))),
            proto: match tls {
                true => "https",
                false => "http",
            },
            request_id,
        };
        rewrite_header(upstream, &settings.identity_header, &rewrite)?;
        if matches!(self.body, ForwardBody::ReadAhead) {
            // The client was already told to go on and sent it all; the upstream gets it at once.
            upstream.remove_header(&http::header::EXPECT);
        }
        Ok(())
    }
}

/// Headers set on every forwarded request, parsed once (`respond::Name`).
static FORWARDED: Name = (http::header::FORWARDED, "Forwarded");
static X_FORWARDED_FOR: Name = name("x-forwarded-for", "X-Forwarded-For");
static X_REAL_IP: Name = name("x-real-ip", "X-Real-IP");
static X_FORWARDED_PROTO: Name = name("x-forwarded-proto", "X-Forwarded-Proto");
static X_FORWARDED_HOST: Name = name("x-forwarded-host", "X-Forwarded-Host");
static X_USER_ID: Name = name("x-user-id", "X-User-Id");

/// Headers that would make an application read a different request than the one checked.
pub const PATH_OVERRIDE_HEADERS: [&str; 2] = ["x-original-url", "x-rewrite-url"];

/// The headers (lower case) whose value the application must have from tokengate alone, never
/// from the client: the identity, `X-token`, the claim headers, the method and path overrides.
pub fn owned_headers(settings: &Settings) -> impl Iterator<Item = &str> {
    [settings.identity_header.as_str(), X_TOKEN.0.as_str()]
        .into_iter()
        .chain(settings.forward_claims.iter().map(|c| c.header.as_str()))
        .chain(OVERRIDE_HEADERS)
        .chain(PATH_OVERRIDE_HEADERS)
}

/// Whether `name` (lower case, as `http` stores it) is `want` with `_` allowed for `-`: many
/// servers (Rack, CGI) fold both into one variable.
pub fn same_header(name: &str, want: &str) -> bool {
    name.len() == want.len()
        && name
            .bytes()
            .zip(want.bytes())
            .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
}

/// What the rewrite needs to know about one request.
pub struct Rewrite<'a> {
    /// Every header claims may be sent as: client copies are removed.
    pub claim_headers: &'a [ClaimHeader],
    /// The claims this request sends, by header name.
    pub claims: &'a [(String, String)],
    /// The canonical target, when it differs from the one received.
    pub target: Option<&'a [u8]>,
    /// The canonical authority, for Host (when it differs) and the forwarding headers.
    pub authority: Option<&'a HeaderValue>,
    /// Whether Host must be set to `authority`.
    pub host_rewritten: bool,
    /// The honoured override method, re-sent under the override headers the client used.
    pub honoured_override: Option<&'a str>,
    /// The verified subject, for the identity header.
    pub subject: Option<&'a str>,
    /// The client's address and whether it is a trusted proxy.
    pub peer: Option<(IpAddr, bool)>,
    /// The scheme the client used: `https` on the TLS listener.
    pub proto: &'static str,
    /// The request id tokengate answers with.
    pub request_id: &'a HeaderValue,
}

/// Rewrites `upstream` (a copy of the client's request) into the request the upstream gets.
/// Every header tokengate sets is first removed in all its spellings, then appended: cheaper
/// than Pingora's insert, which replaces and may grow two maps each time.
pub fn rewrite_header(
    upstream: &mut RequestHeader,
    identity_header: &HeaderName,
    rewrite: &Rewrite<'_>,
) -> pingora::Result<()> {
    // Room for every header appended below: the copy of the client's request has none, and
    // growing both of Pingora's header maps one step at a time costs more than the appends.
    upstream.reserve_headers(8 + rewrite.claims.len())?;
    let trusted = rewrite.peer.is_some_and(|(_, trusted)| trusted);
    let received = trusted.then(|| received_forwarding(upstream));
    let mut overrides_used: Vec<&'static str> = Vec::new();
    let mut strip: Vec<HeaderName> = Vec::new();
    for name in upstream.headers.keys() {
        let n = name.as_str();
        if let Some(header) = OVERRIDE_HEADERS.iter().find(|h| same_header(n, h)) {
            overrides_used.push(header);
            strip.push(name.clone());
        } else if same_header(n, identity_header.as_str())
            || n == "x-request-id"
            || rewrite
                .claim_headers
                .iter()
                .any(|c| same_header(n, &c.header))
            || PATH_OVERRIDE_HEADERS.iter().any(|h| same_header(n, h))
            || (is_forwarding_header(n) && (!trusted || n.contains('_')))
        {
            strip.push(name.clone());
        }
    }
    for name in &strip {
        upstream.remove_header(name);
    }
    if let Some(method) = rewrite.honoured_override {
        overrides_used.dedup();
        for header in overrides_used {
            upstream.append_header(header, method)?;
        }
    }
    if let Some(subject) = rewrite.subject {
        // The usual name goes out spelled as the SPEC writes it; another configured name as
        // Pingora writes names it does not know, in lower case.
        match *identity_header == X_USER_ID.0 {
            true => upstream.append_header(X_USER_ID.clone(), subject)?,
            false => upstream.append_header(identity_header.clone(), subject)?,
        };
    }
    for (header, value) in rewrite.claims {
        upstream.append_header(header.clone(), value.as_str())?;
    }
    collapse_content_length(upstream)?;
    if let Some(target) = rewrite.target {
        upstream.set_raw_path(target)?;
    }
    if let (true, Some(authority)) = (rewrite.host_rewritten, rewrite.authority) {
        upstream.insert_header(http::header::HOST, authority.clone())?;
    }
    match (rewrite.peer, received) {
        (Some((ip, _)), Some(received)) => trusted_forwarding(upstream, ip, rewrite, &received)?,
        (Some((ip, _)), None) => untrusted_forwarding(upstream, ip, rewrite)?,
        (None, _) => {}
    }
    upstream.append_header(X_REQUEST_ID.clone(), rewrite.request_id.clone())?;
    Ok(())
}

/// The forwarding headers for a trusted peer: its values, extended, replace every copy.
fn trusted_forwarding(
    upstream: &mut RequestHeader,
    ip: IpAddr,
    rewrite: &Rewrite<'_>,
    (forwarded, xff, others): &ReceivedOwned,
) -> pingora::Result<()> {
    let values = Received {
        forwarded: forwarded.iter().map(String::as_str).collect(),
        x_forwarded_for: xff.iter().map(String::as_str).collect(),
        x_real_ip: others[0].as_deref(),
        x_forwarded_proto: others[1].as_deref(),
        x_forwarded_host: others[2].as_deref(),
    };
    let host = rewrite.authority.and_then(|a| a.to_str().ok());
    let f = forwarded::forwarding(ip, rewrite.proto, host, &values);
    let text = |value: &str| HeaderValue::from_str(value).map_err(invalid_value);
    upstream.insert_header(FORWARDED.clone(), owned(f.forwarded)?)?;
    upstream.insert_header(X_FORWARDED_FOR.clone(), owned(f.x_forwarded_for)?)?;
    upstream.insert_header(X_REAL_IP.clone(), owned(f.x_real_ip)?)?;
    // Tokengate's own scheme and the request's own Host are sent without a copy.
    let proto = match f.x_forwarded_proto == rewrite.proto {
        true => HeaderValue::from_static(rewrite.proto),
        false => text(f.x_forwarded_proto)?,
    };
    upstream.insert_header(X_FORWARDED_PROTO.clone(), proto)?;
    if let Some(forwarded_host) = f.x_forwarded_host {
        let value = match (rewrite.authority, host == Some(forwarded_host)) {
            (Some(authority), true) => authority.clone(),
            _ => text(forwarded_host)?,
        };
        upstream.insert_header(X_FORWARDED_HOST.clone(), value)?;
    }
    Ok(())
}

/// The forwarding values for an untrusted peer, which depend on nothing but its address, the
/// scheme and the Host.
struct PeerValues {
    ip: IpAddr,
    proto: &'static str,
    host: Option<HeaderValue>,
    forwarded: HeaderValue,
    address: HeaderValue,
}

thread_local! {
    /// The last untrusted peer's values on this worker: request after request comes from one
    /// address (a keep-alive client, the one ingress in front of a sidecar), and formatting the
    /// address and building three values is a measurable part of a forward (docs/performance.md).
    static LAST_PEER: RefCell<Option<PeerValues>> = const { RefCell::new(None) };
}

/// The forwarding headers for an untrusted peer, whose copies were all removed: appended.
fn untrusted_forwarding(
    upstream: &mut RequestHeader,
    ip: IpAddr,
    rewrite: &Rewrite<'_>,
) -> pingora::Result<()> {
    let (forwarded, address) = LAST_PEER.with_borrow_mut(|last| {
        let hit = last.as_ref().filter(|v| {
            v.ip == ip && v.proto == rewrite.proto && v.host.as_ref() == rewrite.authority
        });
        if let Some(v) = hit {
            return Ok((v.forwarded.clone(), v.address.clone()));
        }
        let host = rewrite.authority.and_then(|a| a.to_str().ok());
        let f = forwarded::forwarding(ip, rewrite.proto, host, &Received::default());
        let values = PeerValues {
            ip,
            proto: rewrite.proto,
            host: rewrite.authority.cloned(),
            forwarded: owned(f.forwarded)?,
            address: owned(f.x_real_ip)?,
        };
        let pair = (values.forwarded.clone(), values.address.clone());
        *last = Some(values);
        Ok::<_, Box<pingora::Error>>(pair)
    })?;
    upstream.append_header(FORWARDED.clone(), forwarded)?;
    upstream.append_header(X_FORWARDED_FOR.clone(), address.clone())?;
    upstream.append_header(X_REAL_IP.clone(), address)?;
    upstream.append_header(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(rewrite.proto),
    )?;
    // As the pure rule has it: a Host that is not text names no host.
    if let Some(authority) = rewrite.authority.filter(|a| a.to_str().is_ok()) {
        upstream.append_header(X_FORWARDED_HOST.clone(), authority.clone())?;
    }
    Ok(())
}

/// A built forwarding value as a header value, without a copy.
fn owned(value: String) -> pingora::Result<HeaderValue> {
    HeaderValue::try_from(value).map_err(invalid_value)
}

fn invalid_value(e: http::header::InvalidHeaderValue) -> Box<pingora::Error> {
    pingora::Error::because(
        pingora::ErrorType::InvalidHTTPHeader,
        "a forwarding header value",
        e,
    )
}

/// Identical duplicate `Content-Length` values (two fields, or `5, 5`), which the HTTP parser
/// accepted as one length, go upstream as one field (RFC 9110 §8.6); differing ones never get
/// this far.
fn collapse_content_length(upstream: &mut RequestHeader) -> pingora::Result<()> {
    let mut values = upstream
        .headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter();
    let Some(first) = values.next() else {
        return Ok(());
    };
    if values.next().is_none() && !first.as_bytes().contains(&b',') {
        return Ok(());
    }
    let length = first
        .to_str()
        .ok()
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_owned())
        .unwrap_or_default();
    upstream.insert_header(http::header::CONTENT_LENGTH, length)
}

/// `Forwarded` and `X-Forwarded-For` values, then `X-Real-IP`, `X-Forwarded-Proto` and
/// `X-Forwarded-Host`, as a trusted proxy sent them.
type ReceivedOwned = (Vec<String>, Vec<String>, [Option<String>; 3]);

fn received_forwarding(header: &RequestHeader) -> ReceivedOwned {
    let all = |name: &str| -> Vec<String> {
        header
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    };
    let one = |name: &str| {
        header
            .headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    (
        all("forwarded"),
        all("x-forwarded-for"),
        [
            one("x-real-ip"),
            one("x-forwarded-proto"),
            one("x-forwarded-host"),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/a/../b", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn names(r: &RequestHeader) -> Vec<String> {
        let mut n: Vec<String> = r
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
            .collect();
        n.sort();
        n
    }

    /// The values kept for the last peer are used only for the same address, scheme and Host.
    #[test]
    fn each_peer_scheme_and_host_gets_its_own_forwarding_values() {
        let rid = HeaderValue::from_static("rid");
        let a = HeaderValue::from_static("a.example");
        let b = HeaderValue::from_static("b.example:8080");
        let forwarded = |peer: &str, proto: &'static str, authority: Option<&HeaderValue>| {
            let mut r = request(&[("Accept", "*/*")]);
            let rw = Rewrite {
                claim_headers: &[],
                claims: &[],
                target: None,
                authority,
                host_rewritten: false,
                honoured_override: None,
                subject: None,
                peer: Some((peer.parse().unwrap(), false)),
                request_id: &rid,
                proto,
            };
            rewrite_header(&mut r, &HeaderName::from_static("x-user-id"), &rw).unwrap();
            let get = |n: &str| r.headers.get(n).map(|v| v.to_str().unwrap().to_owned());
            (get("forwarded"), get("x-forwarded-for"), get("x-real-ip"))
        };
        let one = |v: &str| Some(v.to_owned());
        let cases = [
            (
                "10.0.0.1",
                "http",
                Some(&a),
                "for=10.0.0.1;proto=http;host=\"a.example\"",
                "10.0.0.1",
            ),
            (
                "10.0.0.1",
                "http",
                Some(&a),
                "for=10.0.0.1;proto=http;host=\"a.example\"",
                "10.0.0.1",
            ),
            (
                "10.0.0.1",
                "http",
                Some(&b),
                "for=10.0.0.1;proto=http;host=\"b.example:8080\"",
                "10.0.0.1",
            ),
            (
                "10.0.0.1",
                "https",
                Some(&b),
                "for=10.0.0.1;proto=https;host=\"b.example:8080\"",
                "10.0.0.1",
            ),
            (
                "10.0.0.1",
                "https",
                None,
                "for=10.0.0.1;proto=https",
                "10.0.0.1",
            ),
            (
                "10.0.0.2",
                "https",
                None,
                "for=10.0.0.2;proto=https",
                "10.0.0.2",
            ),
            ("::1", "https", None, "for=\"[::1]\";proto=https", "::1"),
            (
                "10.0.0.1",
                "http",
                Some(&a),
                "for=10.0.0.1;proto=http;host=\"a.example\"",
                "10.0.0.1",
            ),
        ];
        for (peer, proto, authority, want_forwarded, want_address) in cases {
            assert_eq!(
                forwarded(peer, proto, authority),
                (one(want_forwarded), one(want_address), one(want_address)),
                "{peer} {proto} {authority:?}"
            );
        }
    }

    #[test]
    fn an_untrusted_request_is_rewritten_to_what_was_checked() {
        let mut r = request(&[
            ("Host", "Images.Example."),
            ("X-User-Id", "mallory"),
            ("x_user_id", "mallory"),
            ("X-HTTP-Method-Override", "DELETE"),
            ("X_HTTP_Method", "DELETE"),
            ("X-Original-URL", "/admin"),
            ("X-Rewrite-URL", "/admin"),
            ("Forwarded", "for=10.0.0.1;host=admin.internal"),
            ("X-Real-IP", "10.0.0.1"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("X_Forwarded_Host", "admin.internal"),
            ("X-Forwarded-Prefix", "/admin"),
            ("Accept", "*/*"),
        ]);
        let authority = HeaderValue::from_static("images.example");
        let rid = HeaderValue::from_static("rid");
        let rw = Rewrite {
            claim_headers: &[],
            claims: &[],
            target: Some(b"/b"),
            authority: Some(&authority),
            host_rewritten: true,
            honoured_override: None,
            subject: Some("alice"),
            peer: Some(("127.0.0.1".parse().unwrap(), false)),
            request_id: &rid,
            proto: "http",
        };
        rewrite_header(&mut r, &HeaderName::from_static("x-user-id"), &rw).unwrap();
        assert_eq!(r.raw_path(), b"/b");
        assert_eq!(
            names(&r),
            [
                "accept: */*",
                "forwarded: for=127.0.0.1;proto=http;host=\"images.example\"",
                "host: images.example",
                "x-forwarded-for: 127.0.0.1",
                "x-forwarded-host: images.example",
                "x-forwarded-proto: http",
                "x-real-ip: 127.0.0.1",
                "x-request-id: rid",
                "x-user-id: alice",
            ]
        );
    }

    #[test]
    fn an_honoured_override_is_resent_canonical_and_a_trusted_chain_kept() {
        let mut r = request(&[
            ("Host", "h"),
            ("x-http-method", "delete"),
            ("Forwarded", "for=10.0.0.1"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("X-Forwarded-Proto", "https"),
        ]);
        let authority = HeaderValue::from_static("h");
        let rid = HeaderValue::from_static("rid");
        let rw = Rewrite {
            claim_headers: &[],
            claims: &[],
            target: None,
            authority: Some(&authority),
            host_rewritten: false,
            honoured_override: Some("DELETE"),
            subject: None,
            peer: Some(("127.0.0.2".parse().unwrap(), true)),
            request_id: &rid,
            proto: "http",
        };
        rewrite_header(&mut r, &HeaderName::from_static("x-user-id"), &rw).unwrap();
        assert_eq!(
            names(&r),
            [
                "forwarded: for=10.0.0.1, for=127.0.0.2;proto=http;host=\"h\"",
                "host: h",
                "x-forwarded-for: 10.0.0.1, 127.0.0.2",
                "x-forwarded-host: h",
                "x-forwarded-proto: https",
                "x-http-method: DELETE",
                "x-real-ip: 127.0.0.2",
                "x-request-id: rid",
            ]
        );
    }
}
