//! The every-protocol canonicalization table: each rule of `tests/canonical.rs` as one request
//! and the answer it must get. `tests/canonical.rs` runs it through the proxy on every protocol,
//! `tests/authorize.rs` through real gateways asking tokengate.

use super::wire::{BodyFraming, Req};

/// A multipart body whose `_method` field would turn the request into a `DELETE`.
pub const MULTIPART_METHOD: &str = "--b\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"a.jpg\"\r\n\r\njpeg\r\n--b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\ndelete\r\n--b--\r\n";

/// What one request of the every-protocol table must come to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Expect<'a> {
    /// Forwarded: the upstream saw this method, target, Host and body length.
    Forward(&'a str, &'a str, &'a str, usize),
    /// Refused by tokengate with this status and error code, the upstream never reading a byte.
    Refuse(u16, &'a str),
    /// HTTP/2 only: refused below tokengate's hooks by the `h2` library, which resets a stream
    /// whose pseudo-headers make no URI (PROTOCOL_ERROR, 1).
    Reset(u32),
    /// HTTP/2 only: refused below tokengate's hooks by Pingora's HTTP/2 session, which answers
    /// a request without `:authority` or `host` with a bare 400 before any hook runs.
    Bare(u16),
}

/// The `h2` library's flood guard: a body sent a byte a DATA frame may exhaust its budget for
/// small frames buffered at once, and the connection goes away with ENHANCE_YOUR_CALM (11).
pub const ENHANCE_YOUR_CALM: u32 = 11;

/// The rules of the tests above as one table, each request with the answer it must get.
pub fn canonical_table() -> Vec<(Req, Expect<'static>, Option<Expect<'static>>)> {
    use Expect::*;
    let mut table = Vec::new();
    let get = |target: &str, host: Option<&str>| {
        let mut r = Req::new("GET", target);
        r.host = host.map(str::to_owned);
        r
    };
    for (target, host, url, want_host) in [
        (
            "/x/../albums/./b//images/",
            "Images.Example.",
            "/albums/b/images/",
            "images.example",
        ),
        (
            "/%61lbums/b/%69mages?q=%2e%2e/x",
            "h:8080",
            "/albums/b/images?q=%2e%2e/x",
            "h:8080",
        ),
        ("/a/%c3%a9/%7e", "h", "/a/%C3%A9/~", "h"),
    ] {
        table.push((
            get(target, Some(host)),
            Forward("GET", url, want_host, 0),
            None,
        ));
    }
    table.push((
        get("albums/b/images", Some("h")),
        Refuse(400, "invalid_request"),
        Some(Reset(1)),
    ));
    for target in [
        "/albums%2Fb%2Fimages",
        "/albums/b%5Cimages",
        "/albums/b\\images",
        "/albums/b%00",
        "/albums/b%0d%0aX:1",
        "/albums/b%zz",
        "/../etc/passwd",
        "/albums/b/images;x",
    ] {
        table.push((get(target, Some("h")), Refuse(400, "invalid_request"), None));
    }
    for (method, target) in [
        ("post", "/albums/b/images"),
        ("Get", "/albums"),
        ("POST", "/albums?_method=DELETE"),
        ("OPTIONS", "*"),
    ] {
        let mut r = get(target, Some("h"));
        r.method = method.to_owned();
        table.push((r, Refuse(400, "invalid_request"), None));
    }
    for (host, h2) in [
        (None, Some(Bare(400))),
        (Some("other, images.example.com"), Some(Reset(1))),
        (Some("a b"), Some(Reset(1))),
        (Some("h.."), None),
    ] {
        table.push((get("/albums", host), Refuse(400, "invalid_request"), h2));
    }
    let post = |content_type: Option<&str>| {
        let r = Req::new("POST", "/albums/a/images/7");
        match content_type {
            Some(ct) => r.header("Content-Type", ct),
            None => r,
        }
    };
    table.push((
        [
            ("X-HTTP-Method-Override", "DELETE"),
            ("x_http_method", "DELETE"),
            ("X-Method-Override", "GET"),
            ("X-Original-URL", "/admin"),
            ("X_Rewrite_URL", "/admin"),
        ]
        .iter()
        .fold(post(None), |r, (k, v)| r.header(k, v)),
        Forward("POST", "/albums/a/images/7", "images.example.com", 0),
        None,
    ));
    // Bodies, each sent with its length, without one, a byte at a time, and without a body.
    let compressed = b"\x1f\x8b\x08\x00compressed".as_slice();
    // (request, body, with the body, without it)
    let mut bodies: Vec<(Req, &[u8], Expect, Expect)> = Vec::new();
    let bodiless = Forward("POST", "/albums/a/images/7", "images.example.com", 0);
    for (ct, coding) in [
        (Some("application/x-www-form-urlencoded"), "gzip"),
        (None, "deflate"),
        (Some("application/x-www-form-urlencoded"), "identity, br"),
        (Some("multipart/form-data; boundary=b"), "gzip"),
        (Some("application/json"), "gzip"),
    ] {
        let r = post(ct).header("Content-Encoding", coding);
        bodies.push((
            r,
            compressed,
            Refuse(415, "unsupported_media_type"),
            bodiless,
        ));
    }
    for (ct, body) in [
        (
            Some("application/x-www-form-urlencoded"),
            "caption=x&_method=delete",
        ),
        (None, "_method=delete"),
        (Some(""), "_method=delete"),
        (
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            "%5Fmethod=DELETE",
        ),
        (Some("multipart/form-data"), "_method=delete"),
        (Some("multipart/form-data; boundary=b"), MULTIPART_METHOD),
        (
            Some("application/json"),
            r#"{"caption":"x","\u005fmethod":"delete"}"#,
        ),
    ] {
        let refused = Refuse(400, "invalid_request");
        bodies.push((post(ct), body.as_bytes(), refused, bodiless));
    }
    for two_ways in [
        &["application/x-www-form-urlencoded, text/plain"][..],
        &["text/plain,application/x-www-form-urlencoded"],
        &["text/plain", "application/x-www-form-urlencoded"],
    ] {
        let r = two_ways
            .iter()
            .fold(post(None), |r, ct| r.header("Content-Type", ct));
        // Refused whether or not a body follows: the type alone is read two ways.
        let refused = Refuse(400, "invalid_request");
        bodies.push((r, b"caption=x", refused, refused));
    }
    for (ct, body) in [
        ("application/json", r#"{"caption":"_method","a":{"_method":1}}"#),
        ("application/x-www-form-urlencoded", "caption=nice&method=x"),
        (
            "multipart/form-data; boundary=b",
            "--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"_method.jpg\"\r\n\r\nname=_method\r\n--b--\r\n",
        ),
        ("text/plain", "_method=delete"),
        ("application/octet-stream", "\u{1f}\u{8b}\u{8}\u{0}compressed"),
        (
            "multipart/form-data; boundary=\"a,b\"",
            "--a,b\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nx\r\n--a,b--\r\n",
        ),
    ] {
        let expect = Forward("POST", "/albums/a/images/7", "images.example.com", body.len());
        bodies.push((post(Some(ct)), body.as_bytes(), expect, bodiless));
    }
    let identity_req =
        post(Some("application/x-www-form-urlencoded")).header("Content-Encoding", "identity");
    let identity = Forward("POST", "/albums/a/images/7", "images.example.com", 9);
    bodies.push((identity_req, b"caption=x", identity, bodiless));
    for (request, body, with_body, without) in bodies {
        for framing in [
            BodyFraming::Length,
            BodyFraming::Unframed,
            BodyFraming::Bytes,
        ] {
            table.push((request.clone().body(body, framing), with_body, None));
        }
        table.push((request, without, None));
    }
    table
}
