//! One request, one meaning, end to end: the upstream receives exactly the canonical request
//! tokengate checked, and what cannot be made canonical is refused before it goes anywhere.

mod common;

use common::canonical_table::*;
use common::wire::{BodyFraming, EveryProtocol, Protocol, Req, PROTOCOLS};
use common::*;

#[test]
fn the_upstream_receives_the_canonical_target_and_host() {
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[]);
    let mut conn = tg.connect();
    for (line, host, want_url, want_host) in [
        (
            "GET /x/../albums/./b//images/ HTTP/1.1",
            Some("Images.Example."),
            "/albums/b/images/",
            "images.example",
        ),
        (
            "GET /%61lbums/b/%69mages?q=%2e%2e/x HTTP/1.1",
            Some("h:8080"),
            "/albums/b/images?q=%2e%2e/x",
            "h:8080",
        ),
        ("GET /a/%c3%a9/%7e HTTP/1.1", Some("h"), "/a/%C3%A9/~", "h"),
        (
            "GET /a/summer 2024 HTTP/1.1",
            Some("h"),
            "/a/summer%202024",
            "h",
        ),
        (
            "POST http://Images.Example.com/albums/b/images HTTP/1.1",
            None,
            "/albums/b/images",
            "images.example.com",
        ),
        ("GET HTTP://h:81 HTTP/1.1", None, "/", "h:81"),
        ("GET /plain HTTP/1.0", None, "/plain", ""),
    ] {
        let host_line = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
        let raw =
            format!("{line}\r\n{host_line}Content-Length: 0\r\nConnection: keep-alive\r\n\r\n");
        let r = exchange(&mut conn, raw.as_bytes()).unwrap();
        assert_eq!(r.status, 200, "{line}: {}", r.text());
        let seen = up.seen().pop().unwrap();
        assert_eq!(seen.url, want_url, "{line}");
        assert_eq!(
            seen.all("Host"),
            if want_host.is_empty() {
                vec![]
            } else {
                vec![want_host]
            },
            "{line}"
        );
    }
}

#[test]
fn what_cannot_be_made_canonical_is_refused_and_the_connection_kept() {
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[]);
    let mut conn = tg.connect();
    for raw in [
        "GET albums/b/images HTTP/1.1\r\nHost: h\r\n",
        "GET /albums%2Fb%2Fimages HTTP/1.1\r\nHost: h\r\n",
        "GET /albums/b%5Cimages HTTP/1.1\r\nHost: h\r\n",
        "GET /albums/b\\images HTTP/1.1\r\nHost: h\r\n",
        "GET /albums/b%00 HTTP/1.1\r\nHost: h\r\n",
        "GET /albums/b%0d%0aX:1 HTTP/1.1\r\nHost: h\r\n",
        "GET /albums/b%zz HTTP/1.1\r\nHost: h\r\n",
        "GET /../etc/passwd HTTP/1.1\r\nHost: h\r\n",
        "GET /albums/b/images;x HTTP/1.1\r\nHost: h\r\n",
        "post /albums/b/images HTTP/1.1\r\nHost: h\r\n",
        "Get /albums HTTP/1.1\r\nHost: h\r\n",
        "GET /albums HTTP/1.1\r\n",
        "GET /albums HTTP/1.1\r\nHost: other, images.example.com\r\n",
        "GET /albums HTTP/1.1\r\nHost: a b\r\n",
        "GET /albums HTTP/1.1\r\nHost: h..\r\n",
        "POST /albums?_method=DELETE HTTP/1.1\r\nHost: h\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: h\r\n",
    ] {
        let r = exchange(
            &mut conn,
            format!("{raw}Content-Length: 0\r\n\r\n").as_bytes(),
        )
        .unwrap_or_else(|e| panic!("{raw:?}: {e}"));
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (400, Some("invalid_request")),
            "{raw:?}"
        );
        assert_eq!(r.header("Connection"), Some("keep-alive"), "{raw:?}");
    }
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    // Refused before Pingora routes it at all: two Host headers.
    let r = tg.request(b"GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
    assert_eq!(r.status, 400);
    assert!(up.seen().is_empty());
}

#[test]
fn a_transfer_coding_pingora_would_drop_is_refused() {
    // Forwarded, `gzip, chunked` would reach the app as plain `chunked`: gzip bytes as the body.
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[]);
    for codings in [
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: identity, chunked\r\n",
        "Transfer-Encoding: chunked, chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
    ] {
        let raw = format!("POST /upload HTTP/1.1\r\nHost: h\r\n{codings}\r\n3\r\nabc\r\n0\r\n\r\n");
        let r = tg.request(raw.as_bytes());
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (400, Some("invalid_request")),
            "{codings:?}"
        );
    }
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    let raw = "POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    assert_eq!(tg.request(raw.as_bytes()).status, 200);
    assert_eq!(up.seen().pop().unwrap().body_len, 3);
    tg.assert_no_panic();
}

#[test]
fn override_and_path_override_headers_never_reach_the_upstream() {
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[]);
    let raw = "POST /albums/a/images HTTP/1.1\r\nHost: h\r\nX-HTTP-Method-Override: DELETE\r\n\
               x_http_method: DELETE\r\nX-Method-Override: GET\r\nX-Original-URL: /admin\r\n\
               X_Rewrite_URL: /admin\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(tg.request(raw.as_bytes()).status, 200);
    let seen = up.seen().pop().unwrap();
    assert_eq!(seen.method, "POST");
    for name in [
        "X-HTTP-Method-Override",
        "X_HTTP_Method",
        "X-Method-Override",
        "X-Original-URL",
        "X_Rewrite_URL",
    ] {
        assert!(seen.all(name).is_empty(), "{name} reached the upstream");
    }
}

#[test]
fn a_compressed_form_multipart_or_json_body_is_refused_since_its_fields_cannot_be_checked() {
    // Express' body parsers inflate gzip: a `_method` inside would reach a body getter unseen.
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[]);
    let compressed = "\x1f\u{8b}\x08\x00compressed";
    let mut conn = tg.connect();
    for (content_type, encoding) in [
        (
            "Content-Type: application/x-www-form-urlencoded\r\n",
            "gzip",
        ),
        ("", "deflate"),
        (
            "Content-Type: application/x-www-form-urlencoded\r\n",
            "identity, br",
        ),
        ("Content-Type: multipart/form-data; boundary=b\r\n", "gzip"),
        ("Content-Type: application/json\r\n", "gzip"),
    ] {
        let raw = format!(
            "POST /albums/a/images HTTP/1.1\r\nHost: h\r\n{content_type}Content-Encoding: {encoding}\r\nContent-Length: {}\r\n\r\n{compressed}",
            compressed.len()
        );
        let r = exchange(&mut conn, raw.as_bytes()).unwrap();
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (415, Some("unsupported_media_type")),
            "{encoding}"
        );
        assert_eq!(r.header("Connection"), Some("keep-alive"), "{encoding}");
    }
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    // Other media types stream as before; `identity` is no coding.
    for (content_type, encoding, body) in [
        ("application/octet-stream", "gzip", compressed),
        ("application/x-www-form-urlencoded", "identity", "caption=x"),
    ] {
        let raw = format!(
            "POST /albums/a/images HTTP/1.1\r\nHost: h\r\nContent-Type: {content_type}\r\nContent-Encoding: {encoding}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(exchange(&mut conn, raw.as_bytes()).unwrap().status, 200);
        assert_eq!(up.seen().pop().unwrap().body_len, body.len());
    }
}

/// A multipart upload with `_method` as its last part, after a file.

#[test]
fn a_method_field_in_a_form_multipart_or_json_body_is_refused_before_the_app_has_the_whole_body() {
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[]);
    for (content_type, body) in [
        (
            "Content-Type: application/x-www-form-urlencoded\r\n",
            "caption=x&_method=delete",
        ),
        ("", "_method=delete"),
        ("Content-Type: \r\n", "_method=delete"),
        (
            "Content-Type: application/x-www-form-urlencoded; charset=utf-8\r\n",
            "%5Fmethod=DELETE",
        ),
        // Rack reads a multipart body without a boundary as url-encoded.
        ("Content-Type: multipart/form-data\r\n", "_method=delete"),
        (
            "Content-Type: multipart/form-data; boundary=b\r\n",
            MULTIPART_METHOD,
        ),
        (
            "Content-Type: application/json\r\n",
            r#"{"caption":"x","\u005fmethod":"delete"}"#,
        ),
    ] {
        let raw = format!(
            "POST /albums/a/images/7 HTTP/1.1\r\nHost: h\r\n{content_type}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let r = tg.request(raw.as_bytes());
        assert_eq!(
            (r.status, r.json()["message"].as_str()),
            (
                400,
                Some("A _method field cannot change the method here; send the real method.")
            ),
            "{body}"
        );
        // Chunked, with the field's name split across chunks.
        let (head, tail) = body.split_at(body.rfind("method").unwrap() + 3);
        let raw = format!(
            "POST /albums/a/images/7 HTTP/1.1\r\nHost: h\r\n{content_type}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{head}\r\n{:x}\r\n{tail}\r\n0\r\n\r\n",
            head.len(),
            tail.len()
        );
        let r = tg.request(raw.as_bytes());
        assert_eq!(r.status, 400, "chunked {body}");
    }
    // Bodies without the field, and media types no framework reads fields from, pass untouched.
    for (i, (content_type, body)) in [
        ("application/json", r#"{"caption":"_method","a":{"_method":1}}"#),
        ("application/x-www-form-urlencoded", "caption=nice&method=x"),
        (
            "multipart/form-data; boundary=b",
            "--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"_method.jpg\"\r\n\r\nname=_method\r\n--b--\r\n",
        ),
        ("text/plain", "_method=delete"),
    ]
    .iter()
    .enumerate()
    {
        let raw = format!(
            "POST /albums/a/images?ok={i} HTTP/1.1\r\nHost: h\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(tg.request(raw.as_bytes()).status, 200, "{content_type}");
        let seen = up.seen();
        let s = seen
            .iter()
            .find(|s| s.url == format!("/albums/a/images?ok={i}"))
            .unwrap();
        assert_eq!(s.body_len, body.len());
    }
    // A chunked refused body may have started upstream before the field arrived, but it never
    // completes: the upstream cannot read a single whole one.
    let refused: Vec<usize> = up
        .seen()
        .iter()
        .filter(|s| s.url == "/albums/a/images/7")
        .map(|s| s.body_len)
        .collect();
    assert!(refused.iter().all(|len| *len == 0), "{refused:?}");
}

#[test]
fn a_content_type_read_two_ways_is_refused_and_the_connection_kept() {
    // Rack takes the first element of a list (`application/x-www-form-urlencoded, text/plain`
    // is a form to it); a second field is read first or last depending on the server.
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[]);
    let mut conn = tg.connect();
    for content_type in [
        "Content-Type: application/x-www-form-urlencoded, text/plain\r\n",
        "Content-Type: text/plain,application/x-www-form-urlencoded\r\n",
        "Content-Type: text/plain\r\nContent-Type: application/x-www-form-urlencoded\r\n",
    ] {
        let raw = format!(
            "POST /albums/a/images HTTP/1.1\r\nHost: h\r\n{content_type}Content-Length: 9\r\n\r\ncaption=x"
        );
        let r = exchange(&mut conn, raw.as_bytes()).unwrap();
        assert_eq!(
            (r.status, r.json()["message"].as_str()),
            (400, Some("Content-Type must be one media type, sent once.")),
            "{content_type:?}"
        );
        assert_eq!(r.header("Connection"), Some("keep-alive"));
    }
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    // A comma inside a quoted parameter is no list.
    let body = "--a,b\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nx\r\n--a,b--\r\n";
    let raw = format!(
        "POST /albums/a/images HTTP/1.1\r\nHost: h\r\nContent-Type: multipart/form-data; boundary=\"a,b\"\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(exchange(&mut conn, raw.as_bytes()).unwrap().status, 200);
    assert_eq!(up.seen().pop().unwrap().body_len, body.len());
}

const HONOURED: &str = "tokengate:
  honor_method_override: true
  routes:
    - {name: delete, path: /albums, methods: [DELETE], auth: required}
";

#[test]
fn honoured_overrides_are_checked_as_the_method_they_name() {
    let up = Upstream::start();
    let tg = Tokengate::start_with_args(up.addr, &[], &["-c", &conf("honour", HONOURED)]);
    let token = session("hana");
    // Without a token, every way of asking for DELETE is refused as a DELETE.
    for raw in [
        "POST /albums/1 HTTP/1.1\r\nHost: h\r\nX-HTTP-Method-Override: delete\r\nContent-Length: 0\r\n\r\n".to_owned(),
        "POST /albums/1 HTTP/1.1\r\nHost: h\r\nx_http_method: DELETE\r\nContent-Length: 0\r\n\r\n".to_owned(),
        "POST /albums/1?_method=DELETE HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n".to_owned(),
        "POST /albums/1 HTTP/1.1\r\nHost: h\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 16\r\n\r\na=1&_method=dele".to_owned()
            .replace("Content-Length: 16\r\n\r\na=1&_method=dele", "Content-Length: 18\r\n\r\na=1&_method=delete"),
    ] {
        let r = tg.request(raw.as_bytes());
        assert_eq!((r.status, r.json()["error"].as_str()), (401, Some("missing_token")), "{raw:?}");
    }
    // A multipart part or a JSON key, read ahead, counts the same.
    for (content_type, body) in [
        ("multipart/form-data; boundary=b", MULTIPART_METHOD),
        ("application/json", r#"{"_method":"delete"}"#),
    ] {
        let raw = format!(
            "POST /albums/1 HTTP/1.1\r\nHost: h\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let r = tg.request(raw.as_bytes());
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (401, Some("missing_token")),
            "{body}"
        );
    }
    // Applications do not trim a field: ` delete` leaves them a POST, so no method is checked.
    let raw = "POST /albums/1 HTTP/1.1\r\nHost: h\r\nContent-Length: 17\r\n\r\n_method=%20delete";
    let r = tg.request(raw.as_bytes());
    assert_eq!(
        (r.status, r.json()["message"].as_str()),
        (
            400,
            Some("The method override names no method this gate can check.")
        )
    );
    assert!(up.seen().is_empty());
    // With one, the request goes through with its override (canonical) and its body intact.
    let body = "a=1&_method=delete";
    let raw = format!(
        "POST /albums/1 HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {token}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(tg.request(raw.as_bytes()).status, 200);
    let seen = up.seen().pop().unwrap();
    assert_eq!((seen.method.as_str(), seen.body_len), ("POST", body.len()));
    let raw = format!(
        "POST /albums/1 HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {token}\r\nx_http_method: delete\r\nContent-Length: 0\r\n\r\n"
    );
    assert_eq!(tg.request(raw.as_bytes()).status, 200);
    assert_eq!(up.seen().pop().unwrap().all("X-HTTP-Method"), ["DELETE"]);
    // Overrides that disagree, or name a method no app would take, are refused.
    for header in [
        "X-HTTP-Method-Override: TRACE",
        "X-HTTP-Method-Override: PUT\r\nX-Method-Override: DELETE",
    ] {
        let raw =
            format!("POST /albums/1 HTTP/1.1\r\nHost: h\r\n{header}\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(tg.request(raw.as_bytes()).status, 400, "{header}");
    }
}

#[test]
fn semicolons_pass_literally_when_allowed() {
    let up = Upstream::start();
    let yaml = "tokengate:\n  allow_semicolon: true\n  routes:\n    - {name: token-ish, path: /private, auth: required}\n";
    let tg = Tokengate::start_with_args(up.addr, &[], &["-c", &conf("semicolon", yaml)]);
    let r = tg.request(b"GET /a;v=1/b HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(up.seen().pop().unwrap().url, "/a;v=1/b");
    // A path parameter does not hide a route, nor the token path.
    let r = tg.request(b"GET /private;jsessionid=1/x HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(r.status, 401);
    let r = tg.request(b"GET /api/v1/token;x HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!((r.status, r.header("Allow")), (405, Some("POST")));
    assert_eq!(up.seen().len(), 1);
}

/// Sends the table over `protocol` and returns what went wrong, a line each.
fn run_table(
    gate: &EveryProtocol,
    up: &Upstream,
    protocol: Protocol,
    table: &[(Req, Expect, Option<Expect>)],
) -> Vec<String> {
    let tag = format!("{protocol:?}").to_lowercase();
    let requests: Vec<Req> = table
        .iter()
        .enumerate()
        .map(|(i, (r, _, _))| {
            r.clone()
                .header("X-Request-Id", &format!("canon-{tag}-{i}"))
        })
        .collect();
    let answers = gate.send_all(protocol, &requests);
    let mut wrong = Vec::new();
    for (i, ((request, http1, http2), answer)) in table.iter().zip(&answers).enumerate() {
        let expect = match protocol {
            Protocol::Http1 => http1,
            _ => http2.as_ref().unwrap_or(http1),
        };
        let id = format!("canon-{tag}-{i}");
        let seen: Vec<Seen> = up
            .seen()
            .into_iter()
            .filter(|s| s.all("X-Request-Id") == [id.as_str()])
            .collect();
        let what = format!(
            "{}: {} {} host {:?} {:?} body {:?}",
            protocol.name(),
            request.method,
            request.target,
            request.host,
            request.headers,
            request.body.as_ref().map(|(b, f)| (text(b), *f))
        );
        let got = (
            answer.status,
            answer.json()["error"].as_str().map(str::to_owned),
        );
        match *expect {
            Expect::Forward(method, url, host, body_len) => {
                let upstream: Vec<(&str, &str, Vec<&str>, usize)> = seen
                    .iter()
                    .map(|s| (s.method.as_str(), s.url.as_str(), s.all("Host"), s.body_len))
                    .collect();
                if got.0 != Some(200) || upstream != [(method, url, vec![host], body_len)] {
                    wrong.push(format!("{what}: got {got:?}, upstream saw {upstream:?}"));
                }
            }
            Expect::Refuse(status, code) => {
                let read = seen.iter().any(|s| s.body_len > 0);
                let byte_frames = protocol != Protocol::Http1
                    && matches!(request.body, Some((_, BodyFraming::Bytes)));
                let calmed = byte_frames && answer.reset == Some(ENHANCE_YOUR_CALM);
                if (got != (Some(status), Some(code.to_owned())) && !calmed) || read {
                    wrong.push(format!(
                        "{what}: got {got:?} (reset {:?}), want {status} {code}; upstream read a body: {read}",
                        answer.reset
                    ));
                }
            }
            Expect::Reset(code) => {
                if answer.status.is_some() || answer.reset != Some(code) || !seen.is_empty() {
                    wrong.push(format!(
                        "{what}: got {got:?} (reset {:?}), want reset {code}",
                        answer.reset
                    ));
                }
            }
            Expect::Bare(status) => {
                if got != (Some(status), None) || !seen.is_empty() {
                    wrong.push(format!("{what}: got {got:?}, want a bare {status}"));
                }
            }
        }
    }
    wrong
}

#[test]
fn every_canonicalization_and_body_rule_holds_on_every_protocol() {
    let up = Upstream::start();
    let gate = EveryProtocol::start("canon", up.addr, "tokengate:\n", &[]);
    let table = canonical_table();
    let mut wrong = Vec::new();
    for protocol in PROTOCOLS {
        let found = run_table(&gate, &up, protocol, &table);
        println!(
            "{}: {} requests, {} as expected",
            protocol.name(),
            table.len(),
            table.len() - found.len()
        );
        wrong.extend(found);
    }
    gate.tg.assert_no_panic();
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
