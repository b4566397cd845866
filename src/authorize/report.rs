//! What a gateway reports of the request it asks about, in its own convention: the original
//! request head rebuilt from it, the client's address, and whether the body came along. Pure.

use std::net::IpAddr;

use http::{HeaderValue, Version};
use pingora::http::RequestHeader;

use crate::error::{ApiError, ErrorCode};
use crate::metrics::Caller;
use crate::request::Framing;

/// Path prefix of Envoy's checks: Envoy appends the original path to its `path_prefix`.
pub const ENVOY_PREFIX: &str = "/envoy";

/// The query that says a Traefik or Caddy gateway sends the request body along.
const BODY_FORWARDED: &str = "body=forwarded";

/// The original request's `Content-Length`, which a gateway that sends no body reports here
/// (nginx: `$content_length`).
pub const ORIGINAL_LENGTH: &str = "x-original-content-length";

/// A gateway's question, read: the request as its client sent it.
#[derive(Debug)]
pub struct Report {
    /// Which convention asked.
    pub caller: Caller,
    /// The original request's head.
    pub header: RequestHeader,
    /// The client's address, as the gateway reports it.
    pub client: Option<IpAddr>,
    /// Whether the authorization request's body is the original body.
    pub body_sent: bool,
    /// The original body's framing, when the body was not sent.
    pub framing: Framing,
}

/// A gateway that did not say what it asks about.
const UNREPORTED: ApiError = ApiError::new(
    ErrorCode::InvalidRequest,
    "The gateway did not report the request: nginx sends X-Original-Method and X-Original-URI, Traefik and Caddy X-Forwarded-Method and X-Forwarded-Uri.",
);
/// An authorization path that names no convention.
const UNKNOWN_PATH: ApiError = ApiError::new(
    ErrorCode::InvalidRequest,
    "Ask the authorization listener at /nginx, /traefik, /caddy or /envoy followed by the request's path.",
);
/// A report that says two things: the gateway appended to a client's copy.
const REPORTED_TWICE: ApiError = ApiError::new(
    ErrorCode::InvalidRequest,
    "The gateway reported the request twice (a header of its report came more than once); configure it to set, not add, its report headers.",
);
/// The headers a report is read from, each allowed once where its convention reads it.
const REPORTED: [&str; 7] = [
    "x-original-method",
    "x-original-uri",
    "x-original-url",
    "x-forwarded-method",
    "x-forwarded-uri",
    "x-forwarded-host",
    ORIGINAL_LENGTH,
];
/// A reported method or target no HTTP parser would take.
const UNREADABLE: ApiError = ApiError::new(
    ErrorCode::InvalidRequest,
    "The reported method or target is not one an HTTP/1.1 request line can carry.",
);

/// Headers of the gateway's own hop, or of its report, never of the original request.
const HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "te",
    "upgrade",
    "content-length",
    "transfer-encoding",
];

/// Which convention an authorization request's path names.
pub fn caller(path: &str) -> Option<Caller> {
    match path {
        "/nginx" => Some(Caller::Nginx),
        "/traefik" => Some(Caller::Traefik),
        "/caddy" => Some(Caller::Caddy),
        _ if path.starts_with(ENVOY_PREFIX) && path[ENVOY_PREFIX.len()..].starts_with('/') => {
            Some(Caller::Envoy)
        }
        _ => None,
    }
}

/// What a convention tells of the original request: its method, target and host, and which of
/// the authorization request's headers are the gateway's own.
struct Told<'a> {
    method: &'a [u8],
    target: Vec<u8>,
    host: Option<&'a [u8]>,
    own: &'static [&'static str],
}

/// Reads the authorization request `asked` as its convention describes the original request.
pub fn read(asked: &RequestHeader) -> Result<Report, ApiError> {
    let caller = caller(asked.uri.path()).ok_or(UNKNOWN_PATH)?;
    let text = |name: &str| asked.headers.get(name).map(HeaderValue::as_bytes);
    let told = match caller {
        Caller::Nginx => {
            let target = match (text("x-original-uri"), text("x-original-url")) {
                (Some(uri), _) => uri.to_vec(),
                (None, Some(url)) => origin_form(url).ok_or(UNREADABLE)?,
                (None, None) => return Err(UNREPORTED),
            };
            // Never the question's own Host: that names tokengate, as nginx's upstream.
            let host = text("x-forwarded-host");
            let own: &[&str] = &[
                "x-original-method",
                "x-original-uri",
                "x-original-url",
                "x-forwarded-host",
                "x-forwarded-proto",
                "x-real-ip",
                ORIGINAL_LENGTH,
            ];
            let method = text("x-original-method").ok_or(UNREPORTED)?;
            Told {
                method,
                target,
                host,
                own,
            }
        }
        Caller::Traefik | Caller::Caddy => {
            let target = text("x-forwarded-uri").ok_or(UNREPORTED)?.to_vec();
            let own: &[&str] = &[
                "x-forwarded-method",
                "x-forwarded-uri",
                "x-forwarded-host",
                "x-forwarded-proto",
                "x-forwarded-port",
                "x-forwarded-server",
                "x-forwarded-for",
                "x-real-ip",
                ORIGINAL_LENGTH,
            ];
            let method = text("x-forwarded-method").ok_or(UNREPORTED)?;
            let host = text("x-forwarded-host");
            Told {
                method,
                target,
                host,
                own,
            }
        }
        Caller::Proxy | Caller::Envoy => {
            let raw = asked.raw_path();
            let target = raw.get(ENVOY_PREFIX.len()..).unwrap_or_default().to_vec();
            let method = asked.method.as_str().as_bytes();
            Told {
                method,
                target,
                host: text("host"),
                own: &[],
            }
        }
    };
    let Told {
        method,
        target,
        host,
        own,
    } = told;
    let twice =
        |name: &&str| REPORTED.contains(name) && asked.headers.get_all(*name).iter().count() > 1;
    if own.iter().any(twice) {
        return Err(REPORTED_TWICE);
    }
    let mut header =
        RequestHeader::build(method, &target, Some(asked.headers.len())).map_err(|_| UNREADABLE)?;
    if host.is_none() {
        // Only an HTTP/1.0 request may come without a Host.
        header.set_version(Version::HTTP_10);
    }
    for (name, value) in &asked.headers {
        let n = name.as_str();
        let gateways = HOP.contains(&n) || own.contains(&n) || n.starts_with("x-envoy-");
        if !gateways && n != "host" {
            header
                .append_header(name.clone(), value.clone())
                .map_err(|_| UNREADABLE)?;
        }
    }
    if let Some(host) = host {
        let host = HeaderValue::from_bytes(host).map_err(|_| UNREADABLE)?;
        header
            .insert_header(http::header::HOST, host)
            .map_err(|_| UNREADABLE)?;
    }
    let body_sent = match caller {
        Caller::Envoy => asked
            .headers
            .get("x-envoy-auth-partial-body")
            .is_some_and(|v| v.as_bytes() == b"false"),
        Caller::Traefik | Caller::Caddy => asked.uri.query() == Some(BODY_FORWARDED),
        Caller::Nginx | Caller::Proxy => false,
    };
    // Only nginx and Caddy are configured to report the length; through the others the
    // header would be the client's own.
    let length = match caller {
        Caller::Nginx | Caller::Caddy => text(ORIGINAL_LENGTH),
        _ => None,
    };
    Ok(Report {
        caller,
        framing: reported_framing(length),
        header,
        client: reported_client(asked),
        body_sent,
    })
}

/// The original body's framing when the gateway keeps the body: from the length it reports,
/// else unknown (a body may come or not).
fn reported_framing(length: Option<&[u8]>) -> Framing {
    let length = length
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::Unknown,
    }
}

/// The origin-form target of an absolute URL (ingress-nginx's `X-Original-URL`).
fn origin_form(url: &[u8]) -> Option<Vec<u8>> {
    let uri = http::Uri::try_from(url).ok()?;
    let target = uri.path_and_query()?.as_str();
    Some(target.as_bytes().to_vec())
}

/// The client's address as a trusted gateway reports it: the last `X-Forwarded-For` entry (the
/// one the gateway appended), else `X-Real-IP`.
fn reported_client(asked: &RequestHeader) -> Option<IpAddr> {
    let parse = |v: &HeaderValue| v.to_str().ok()?.rsplit(',').next()?.trim().parse().ok();
    let forwarded = asked.headers.get_all("x-forwarded-for").iter().next_back();
    forwarded
        .and_then(parse)
        .or_else(|| asked.headers.get("x-real-ip").and_then(parse))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut h = RequestHeader::build(method, path.as_bytes(), None).unwrap();
        for (n, v) in headers {
            h.append_header(n.to_string(), *v).unwrap();
        }
        h
    }

    fn names(h: &RequestHeader) -> Vec<String> {
        h.headers.keys().map(|n| n.to_string()).collect()
    }

    #[test]
    fn each_convention_reports_the_original_request() {
        let cases = [
            (
                asked(
                    "GET",
                    "/nginx",
                    &[
                        ("host", "tokengate"),
                        ("x-original-method", "DELETE"),
                        ("x-original-uri", "/albums/1/../2?x=1"),
                        ("x-forwarded-host", "Photos.example"),
                        ("x-real-ip", "10.1.2.3"),
                        ("authorization", "Bearer t"),
                    ],
                ),
                (
                    "DELETE",
                    "/albums/1/../2?x=1",
                    "Photos.example",
                    Some("10.1.2.3"),
                ),
            ),
            (
                asked(
                    "GET",
                    "/nginx",
                    &[
                        ("x-original-method", "GET"),
                        ("x-original-url", "https://photos.example/a%2e/b?q"),
                        ("x-forwarded-host", "photos.example"),
                    ],
                ),
                ("GET", "/a%2e/b?q", "photos.example", None),
            ),
            (
                asked(
                    "GET",
                    "/traefik",
                    &[
                        ("x-forwarded-method", "PUT"),
                        ("x-forwarded-uri", "/x"),
                        ("x-forwarded-host", "h"),
                        ("x-forwarded-for", "1.1.1.1, 10.0.0.9"),
                    ],
                ),
                ("PUT", "/x", "h", Some("10.0.0.9")),
            ),
            (
                asked("PATCH", "/envoy/albums/1?x", &[("host", "h:8080")]),
                ("PATCH", "/albums/1?x", "h:8080", None),
            ),
        ];
        for (asked, (method, target, host, client)) in cases {
            let report = read(&asked).unwrap();
            assert_eq!(report.header.method.as_str(), method);
            assert_eq!(report.header.raw_path(), target.as_bytes());
            assert_eq!(report.header.headers["host"], host);
            assert_eq!(report.client, client.map(|c| c.parse().unwrap()));
            let names = names(&report.header);
            assert!(
                !names.iter().any(|n| n.starts_with("x-original")),
                "{names:?}"
            );
            assert!(!names.iter().any(|n| n == "x-forwarded-uri"), "{names:?}");
        }
    }

    #[test]
    fn unreported_and_unknown_paths_are_refused() {
        let cases = [
            asked("GET", "/nginx", &[("x-original-uri", "/x")]),
            asked("GET", "/traefik", &[("x-forwarded-method", "GET")]),
            asked("GET", "/caddy", &[]),
            asked("GET", "/other", &[]),
            asked("GET", "/envoyx/a", &[]),
            asked(
                "GET",
                "/traefik",
                &[
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-uri", "/a"),
                    ("x-forwarded-uri", "/b"),
                ],
            ),
            asked(
                "GET",
                "/nginx",
                &[("x-original-method", "G T"), ("x-original-uri", "/")],
            ),
        ];
        for asked in cases {
            assert!(read(&asked).is_err(), "{:?}", asked.uri);
        }
    }

    #[test]
    fn bodies_and_lengths() {
        let with = |path: &str, headers: &[(&str, &str)]| {
            let mut all = vec![("x-forwarded-method", "POST"), ("x-forwarded-uri", "/")];
            all.extend_from_slice(headers);
            read(&asked("GET", path, &all)).unwrap()
        };
        assert!(with("/traefik?body=forwarded", &[]).body_sent);
        assert!(!with("/traefik", &[]).body_sent);
        assert_eq!(
            with("/caddy", &[(ORIGINAL_LENGTH, "0")]).framing,
            Framing::Empty
        );
        // Through Traefik the header would be the client's: never believed.
        assert_eq!(
            with("/traefik", &[(ORIGINAL_LENGTH, "0")]).framing,
            Framing::Unknown
        );
        assert_eq!(
            with("/caddy", &[(ORIGINAL_LENGTH, "12")]).framing,
            Framing::Length(12)
        );
        assert_eq!(with("/caddy", &[]).framing, Framing::Unknown);
        let envoy = |partial: &str| {
            read(&asked(
                "POST",
                "/envoy/",
                &[("x-envoy-auth-partial-body", partial)],
            ))
            .unwrap()
            .body_sent
        };
        assert!(envoy("false"));
        assert!(!envoy("true"));
    }
}
