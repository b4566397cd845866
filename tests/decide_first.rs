//! Decide first, then act: on HTTP/1.1, h2c and HTTP/2 over TLS, a request tokengate refuses
//! leaves no byte for the upstream when its body is within the read-ahead limit, and a refused
//! body that must stream (no length, or longer than the limit) never reaches it whole. The
//! upstream is a raw recorder that keeps every byte it receives.

mod common;

use std::io::Write;

use common::recorder::Recorder;
use common::wire::{Answer, BodyFraming, EveryProtocol, Protocol, Req, PROTOCOLS};
use common::*;

const CONFIG: &str = "tokengate:
  abilities: [see, image_list, image_upload, image_delete]
  routes:
    - {name: list, path: \"/albums/{album}/images\", methods: [GET], require: {resource: \"{album}\", access: image_list}}
    - {name: upload, path: \"/albums/{album}/images\", methods: [POST, PUT], require: {resource: \"{album}\", access: image_upload}}
    - {name: delete, path: \"/albums/{album}/images\", methods: [DELETE], require: {resource: \"{album}\", access: image_delete}}
    - {name: private, path: /private, auth: required}
    - {name: limited, path: /limited, limit: {key: subject, requests: 1, per: 1h}}
";

const FORM: &str = "application/x-www-form-urlencoded";

/// An ability token for album `a1` with `abilities`, minted through the real token route.
fn mint(tg: &Tokengate, abilities: &str) -> String {
    let body =
        format!(r#"{{"permission":{{"abilities":{{"a1":{{"Access":{abilities}}}}},"Id":"a1"}}}}"#);
    let auth = format!("Bearer {}", session("alice"));
    let r = tg.request(&token_request(&[&auth], Some("application/json"), &body));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["token"].as_str().unwrap().to_owned()
}

/// A multipart body whose last part is `_method`.
fn multipart_override() -> Vec<u8> {
    b"--b\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"a.jpg\"\r\n\r\njpeg\r\n--b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\ndelete\r\n--b--\r\n".to_vec()
}

/// Every kind of refusal whose cause is in the head or in a body within the read-ahead limit:
/// (what it is, the request, the status).
fn refusals(viewer: &str, uploader: &str) -> Vec<(&'static str, Req, u16)> {
    let bearer = |t: &str| format!("Bearer {t}");
    let upload = |body: &[u8], content_type: &str| {
        Req::new("POST", "/albums/a1/images")
            .header("authorization", &bearer(uploader))
            .header("content-type", content_type)
            .body(body, BodyFraming::Length)
    };
    vec![
        (
            "a path above the root",
            Req::new("GET", "/albums/%2e%2e/%2e%2e/etc"),
            400,
        ),
        (
            "an encoded slash",
            Req::new("GET", "/albums/a1%2Fimages"),
            400,
        ),
        (
            "a lower-case method",
            Req::new("get", "/albums/a1/images"),
            400,
        ),
        ("a required token missing", Req::new("GET", "/private"), 401),
        (
            "a forged token on a required route",
            Req::new("GET", "/private").header("authorization", "Bearer a.b.c"),
            401,
        ),
        (
            "an ability not granted",
            Req::new("DELETE", "/albums/a1/images/7").header("authorization", &bearer(viewer)),
            403,
        ),
        (
            "an ability not granted, with a body",
            Req::new("PUT", "/albums/a1/images")
                .header("authorization", &bearer(viewer))
                .body(b"photo", BodyFraming::Length),
            403,
        ),
        (
            "a query _method",
            Req::new("POST", "/albums/a1/images?_method=DELETE")
                .header("authorization", &bearer(uploader)),
            400,
        ),
        (
            "a form _method with a length",
            upload(b"t=1&_method=DELETE", FORM),
            400,
        ),
        (
            "a multipart _method with a length",
            upload(&multipart_override(), "multipart/form-data; boundary=b"),
            400,
        ),
        (
            "a JSON _method with a length",
            upload(br#"{"t":1,"_method":"DELETE"}"#, "application/json"),
            400,
        ),
        (
            "an encoded form",
            upload(b"t=1", FORM).header("content-encoding", "gzip"),
            415,
        ),
        (
            "a Content-Type read two ways",
            upload(b"t=1", "application/x-www-form-urlencoded, text/plain"),
            400,
        ),
        (
            "the token route with the wrong method",
            Req::new("GET", "/api/v1/token"),
            405,
        ),
    ]
}

fn status(answer: &Answer) -> Option<u16> {
    answer.status
}

#[test]
fn a_refused_request_leaves_no_byte_upstream_on_every_protocol() {
    let up = Recorder::start();
    let every = EveryProtocol::start("decide-first", up.addr, CONFIG, &[]);
    let viewer = mint(&every.tg, r#"{"see":true,"image_list":true}"#);
    let uploader = mint(&every.tg, r#"{"image_upload":true}"#);
    for protocol in PROTOCOLS {
        for (what, request, want) in refusals(&viewer, &uploader) {
            let answer = every.send(protocol, &request);
            assert_eq!(
                status(&answer),
                Some(want),
                "{} {what}: {answer:?}",
                protocol.name()
            );
            assert_eq!(
                up.bytes(),
                0,
                "{} {what}: {:?}",
                protocol.name(),
                up.received()
            );
        }
    }
    // A Connection header Pingora would refuse once an upstream is chosen (HTTP/1.1 only:
    // HTTP/2 has no Connection header) is refused before one is.
    let nominated = Req::new("GET", "/albums/a1/images")
        .header("authorization", &format!("Bearer {viewer}"))
        .header("Connection", "X-Forwarded-For");
    assert_eq!(every.send(Protocol::Http1, &nominated).status, Some(400));
    assert_eq!(up.bytes(), 0, "{:?}", up.received());

    // The gate forwards what it allows: the same upload without `_method` arrives whole.
    let body = b"t=1&caption=nice";
    let fine = Req::new("POST", "/albums/a1/images")
        .header("authorization", &format!("Bearer {uploader}"))
        .header("content-type", FORM)
        .body(body, BodyFraming::Length);
    for protocol in PROTOCOLS {
        assert_eq!(
            every.send(protocol, &fine).status,
            Some(200),
            "{}",
            protocol.name()
        );
    }
    let arrived = up.requests();
    assert_eq!(arrived.len(), 3, "{arrived:?}");
    assert!(arrived
        .iter()
        .all(|r| r.body == body && r.target == "/albums/a1/images"));

    // A limit spent: the first request goes, the second is refused and sends nothing.
    let limited = Req::new("GET", "/limited").header("authorization", &format!("Bearer {viewer}"));
    assert_eq!(every.send(Protocol::Http1, &limited).status, Some(200));
    let before = up.bytes();
    for protocol in PROTOCOLS {
        assert_eq!(
            every.send(protocol, &limited).status,
            Some(429),
            "{}",
            protocol.name()
        );
    }
    assert_eq!(up.bytes(), before);
    every.tg.assert_no_panic();
}

#[test]
fn a_refused_streamed_body_never_reaches_the_upstream_whole() {
    let up = Recorder::start();
    let every = EveryProtocol::start("decide-first-streamed", up.addr, CONFIG, &[]);
    let uploader = mint(&every.tg, r#"{"image_upload":true}"#);
    let long = format!("photo={}&_method=DELETE", "x".repeat(80 * 1024));
    let cases: Vec<(&str, Vec<u8>, BodyFraming)> = vec![
        (
            "no length",
            b"t=1&_method=DELETE".to_vec(),
            BodyFraming::Unframed,
        ),
        (
            "a byte at a time",
            b"t=1&_method=DELETE".to_vec(),
            BodyFraming::Bytes,
        ),
        (
            "longer than the read-ahead limit",
            long.into_bytes(),
            BodyFraming::Length,
        ),
    ];
    for protocol in PROTOCOLS {
        for (what, body, framing) in &cases {
            let request = Req::new("POST", "/albums/a1/images")
                .header("authorization", &format!("Bearer {uploader}"))
                .header("content-type", FORM)
                .body(body, *framing);
            let answer = every.send(protocol, &request);
            assert_eq!(
                status(&answer),
                Some(400),
                "{} {what}: {answer:?}",
                protocol.name()
            );
            // Its head and first chunks may have gone, but never the whole request: the chunk
            // that completes the field is withheld, and nothing after it is sent.
            assert!(up.requests().is_empty(), "{} {what}", protocol.name());
            for bytes in up.received() {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                assert!(!text.contains("DELETE"), "{} {what}", protocol.name());
            }
        }
    }
    every.tg.assert_no_panic();
}

/// A body without a length goes upstream chunked. An HTTP/2 client commonly ends its stream
/// with an empty DATA frame; Pingora wrote that as a zero-size chunk, the last-chunk marker,
/// then the marker again, which the upstream read as the start of a next request and answered
/// `400` on a connection the pool handed to someone else (vendor/README.md, empty chunk).
#[test]
fn a_streamed_body_reaches_the_upstream_as_exactly_one_request_on_every_protocol() {
    let up = Recorder::start();
    let every = EveryProtocol::start("decide-first-framing", up.addr, CONFIG, &[]);
    let uploader = mint(&every.tg, r#"{"image_upload":true}"#);
    let mut sent = 0;
    for protocol in PROTOCOLS {
        // A form is scanned as it streams, an opaque body is not: both are framed the same.
        for content_type in [FORM, "application/octet-stream"] {
            for framing in [BodyFraming::Unframed, BodyFraming::Bytes] {
                let request = Req::new("POST", "/albums/a1/images")
                    .header("authorization", &format!("Bearer {uploader}"))
                    .header("content-type", content_type)
                    .body(b"caption=nice", framing);
                let answer = every.send(protocol, &request);
                let what = format!("{} {content_type} {framing:?}", protocol.name());
                assert_eq!(status(&answer), Some(200), "{what}: {answer:?}");
                sent += 1;
                let requests = up.requests();
                assert_eq!(requests.len(), sent, "{what}");
                assert_eq!(requests[sent - 1].body, b"caption=nice", "{what}");
                // Whatever followed reached the upstream before the next request did.
                let stray: Vec<String> = up
                    .unparsed()
                    .iter()
                    .filter(|tail| !tail.is_empty())
                    .map(|tail| String::from_utf8_lossy(tail).into_owned())
                    .collect();
                assert!(stray.is_empty(), "{what}: the upstream also got {stray:?}");
            }
        }
    }
    every.tg.assert_no_panic();
}

#[test]
fn a_body_read_ahead_behind_100_continue_keeps_the_connection_and_the_pipeline() {
    let up = Recorder::start();
    let tg = Tokengate::start(up.addr, &[]);
    let form = "Content-Type: application/x-www-form-urlencoded\r\n";
    let mut raw = String::new();
    for (i, expect) in ["", "Expect: 100-continue\r\n", ""].iter().enumerate() {
        raw.push_str(&format!(
            "POST /p{i} HTTP/1.1\r\nHost: h\r\n{form}{expect}Content-Length: 3\r\n\r\nt={i}"
        ));
    }
    raw.push_str("GET /after HTTP/1.1\r\nHost: h\r\n\r\n");
    let mut conn = Pipelined::new(tg.connect());
    conn.stream.write_all(raw.as_bytes()).unwrap();
    for _ in 0..4 {
        let r = conn.next(false).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("Connection"), Some("keep-alive"));
    }
    let seen: Vec<(String, Vec<u8>)> = up
        .requests()
        .into_iter()
        .map(|r| (r.target, r.body))
        .collect();
    assert_eq!(
        seen,
        [
            ("/p0".to_owned(), b"t=0".to_vec()),
            ("/p1".to_owned(), b"t=1".to_vec()),
            ("/p2".to_owned(), b"t=2".to_vec()),
            ("/after".to_owned(), Vec::new()),
        ]
    );
    tg.assert_no_panic();
}
