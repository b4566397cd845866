//! Routes: ability enforcement on forwarded requests, shadow mode, upstream groups.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Mints, through tokengate itself, a token for `abilities` on top of a fresh session.
fn mint(tg: &Tokengate, user: &str, abilities: &str) -> String {
    let body = format!(r#"{{"permission":{{"abilities":{abilities}}}}}"#);
    let r = tg.request(&token_request(
        &[&format!("Bearer {}", session(user))],
        Some("application/json"),
        &body,
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["token"].as_str().unwrap().to_owned()
}

fn send(tg: &Tokengate, method: &str, path: &str, token: Option<&str>) -> Resp {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let mut conn = tg.connect();
    std::io::Write::write_all(
        &mut conn,
        format!(
            "{method} {path} HTTP/1.1\r\nHost: images.example\r\n{auth}Content-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    read_response_to(&mut conn, method == "HEAD").unwrap()
}

const IMAGE_ROUTES: &str = "tokengate:
  routes:
    - name: upload
      path: /albums/{album}/images
      methods: [POST]
      require: {resource: \"{album}\", access: image_upload}
    - name: list
      path: /albums/{album}/images
      methods: [GET]
      require: {resource: \"{album}\", access: image_list}
    - name: fullscreen
      path: /albums/{album}/fullscreen
      require: {resource: \"{album}\", access: fullscreen}
      shadow: true
";

#[test]
fn a_token_for_album_a_uploads_to_a_only() {
    let app = Upstream::start();
    let tg = Tokengate::start_with_args(app.addr, &[], &["-c", &conf("abilities", IMAGE_ROUTES)]);
    let token = mint(
        &tg,
        "uma",
        r#"{"A":{"Access":{"see":true,"image_upload":true}}}"#,
    );

    let r = send(&tg, "POST", "/albums/A/images", Some(&token));
    assert_eq!((r.status, r.text().as_str()), (200, "upstream says hi"));
    for (method, path, token, status, code) in [
        (
            "POST",
            "/albums/B/images",
            Some(token.as_str()),
            403,
            "forbidden",
        ),
        (
            "GET",
            "/albums/A/images",
            Some(token.as_str()),
            403,
            "forbidden",
        ),
        ("POST", "/albums/A/images", None, 401, "missing_token"),
        (
            "POST",
            "/albums/A/images",
            Some("not.a.token"),
            401,
            "invalid_token",
        ),
    ] {
        let r = send(&tg, method, path, token);
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (status, Some(code)),
            "{method} {path}"
        );
    }
    let seen: Vec<String> = app
        .seen()
        .iter()
        .map(|s| format!("{} {}", s.method, s.url))
        .collect();
    assert_eq!(
        seen,
        ["POST /albums/A/images"],
        "refused requests must never reach the app"
    );
    assert_eq!(app.seen()[0].all("X-User-Id"), ["uma"]);
    assert_eq!(
        tg.metric(r#"tokengate_enforcement_decisions_total{decision="allow",route="upload"}"#),
        1.0
    );
    assert_eq!(
        tg.metric(r#"tokengate_enforcement_decisions_total{decision="deny",route="upload"}"#),
        3.0
    );
    assert_eq!(
        tg.metric(r#"tokengate_enforcement_decisions_total{decision="deny",route="list"}"#),
        1.0
    );
}

#[test]
fn shadow_mode_forwards_and_counts() {
    let app = Upstream::start();
    let tg = Tokengate::start_with_args(app.addr, &[], &["-c", &conf("shadow", IMAGE_ROUTES)]);
    let token = mint(&tg, "vic", r#"{"A":{"Access":{"fullscreen":true}}}"#);
    assert_eq!(
        send(&tg, "GET", "/albums/A/fullscreen", Some(&token)).status,
        200
    );
    assert_eq!(
        send(&tg, "GET", "/albums/B/fullscreen", Some(&token)).status,
        200
    );
    assert_eq!(send(&tg, "GET", "/albums/B/fullscreen", None).status, 200);
    assert_eq!(app.seen().len(), 3);
    assert_eq!(
        tg.metric(r#"tokengate_enforcement_decisions_total{decision="allow",route="fullscreen"}"#),
        1.0
    );
    assert_eq!(
        tg.metric(
            r#"tokengate_enforcement_decisions_total{decision="shadow_deny",route="fullscreen"}"#
        ),
        2.0
    );
}

#[test]
fn routes_by_host_and_path_reach_their_groups() {
    let (default, images, legacy) = (Upstream::start(), Upstream::start(), Upstream::start());
    let yaml = format!(
        "tokengate:
  upstreams:
    images: {{addresses: ['{}']}}
    legacy: {{addresses: ['{}']}}
  routes:
    - {{name: legacy-host, host: legacy.example, upstream: legacy}}
    - {{name: images-path, path: /images, upstream: images}}
",
        images.addr, legacy.addr
    );
    let tg = Tokengate::start_with_args(default.addr, &[], &["-c", &conf("hosts", &yaml)]);
    for (host, path) in [
        ("legacy.example", "/images/1"),
        ("legacy.example:8080", "/x"),
        ("a.example", "/images/2"),
        ("a.example", "/other"),
    ] {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        assert_eq!(tg.request(raw.as_bytes()).status, 200);
    }
    let urls = |u: &Upstream| u.seen().iter().map(|s| s.url.clone()).collect::<Vec<_>>();
    assert_eq!(urls(&legacy), ["/images/1", "/x"]);
    assert_eq!(urls(&images), ["/images/2"]);
    assert_eq!(urls(&default), ["/other"]);
}

/// An upstream that really goes away when stopped: listener and connections closed, as when its
/// process dies. Answers `200 ok` and counts requests.
struct Killable {
    addr: std::net::SocketAddr,
    served: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Killable {
    fn start(addr: &str) -> Killable {
        let listener = std::net::TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (served, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (count, halt) = (served.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut conns: Vec<(std::net::TcpStream, Vec<u8>)> = Vec::new();
            while !halt.load(Ordering::Relaxed) {
                if let Ok((c, _)) = listener.accept() {
                    c.set_nonblocking(true).unwrap();
                    conns.push((c, Vec::new()));
                }
                conns.retain_mut(|(c, buf)| serve(c, buf, &count));
                std::thread::sleep(Duration::from_millis(1));
            }
            // Dropping the listener and every connection is the crash.
        });
        Killable {
            addr,
            served,
            stop,
            thread: Some(thread),
        }
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }

    fn kill(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
    }
}

/// Reads what is there; answers every complete request. False when the connection is over.
fn serve(conn: &mut std::net::TcpStream, buf: &mut Vec<u8>, count: &AtomicUsize) -> bool {
    use std::io::{Read, Write};
    let mut chunk = [0u8; 4096];
    match conn.read(&mut chunk) {
        Ok(0) => return false,
        Ok(n) => buf.extend_from_slice(&chunk[..n]),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(_) => return false,
    }
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                buf.drain(..n);
                count.fetch_add(1, Ordering::Relaxed);
                if conn
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .is_err()
                {
                    return false;
                }
            }
            Ok(httparse::Status::Partial) => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn a_group_shares_load_ejects_a_stopped_address_and_readmits_it() {
    let first = Killable::start("127.0.0.1:0");
    let second = Killable::start("127.0.0.1:0");
    let second_addr = second.addr;
    let yaml = format!(
        "tokengate:
  upstreams:
    pool: {{addresses: ['{}', '{}'], health_check_interval: 200ms, ejection: 1s}}
  routes:
    - {{name: pooled, upstream: pool}}
",
        first.addr, second.addr
    );
    let tg = Tokengate::start_with_args(dead_upstream(), &[], &["-c", &conf("pool", &yaml)]);
    let get = || tg.request(b"GET /p HTTP/1.1\r\nHost: a\r\n\r\n").status;
    for _ in 0..10 {
        assert_eq!(get(), 200);
    }
    assert_eq!((first.served(), second.served()), (5, 5), "round robin");

    second.kill();
    let before = first.served();
    for _ in 0..20 {
        assert_eq!(get(), 200, "a stopped address must not fail requests");
    }
    assert_eq!(first.served(), before + 20);

    let second = Killable::start(&second_addr.to_string());
    let start = Instant::now();
    while second.served() == 0 {
        assert_eq!(get(), 200);
        assert!(
            start.elapsed() < DEADLINE,
            "the restarted address was never readmitted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `conf/image-app.yaml`, the shipped example: each endpoint is checked with the ability its
/// comment names, whatever route is listed first.
#[test]
fn the_shipped_image_app_example_checks_each_endpoint_with_its_ability() {
    let app = Upstream::start();
    let secrets = std::env::temp_dir().join(format!("tokengate-image-app-{}", free_port()));
    std::fs::write(&secrets, format!("{SECRET}\n")).unwrap();
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/image-app.yaml");
    let tg = Tokengate::start_with_args(
        app.addr,
        &[
            ("TOKENGATE_SECRET", ""),
            ("TOKENGATE_SECRET_FILE", secrets.to_str().unwrap()),
        ],
        &["-c", shipped],
    );
    let lister = mint(&tg, "lia", r#"{"A":{"Access":{"image_list":true}}}"#);
    let viewer = mint(&tg, "vio", r#"{"A":{"Access":{"see":true}}}"#);
    for (token, method, path, status) in [
        (&lister, "GET", "/albums/A/images", 200),
        (&lister, "HEAD", "/albums/A/images", 200),
        (&lister, "GET", "/albums/A/images/7", 200),
        (&lister, "GET", "/Albums/A/Images.json", 200),
        (&lister, "GET", "/albums/B/images", 403),
        (&lister, "GET", "/albums/A", 403),
        (&lister, "POST", "/albums/A/images", 403),
        (&lister, "PUT", "/albums/A/images", 403),
        (&lister, "DELETE", "/albums/A/images/7", 403),
        (&lister, "PATCH", "/albums/A/captions", 403),
        (&viewer, "GET", "/albums/A", 200),
        (&viewer, "GET", "/albums/A/images", 403),
        (&viewer, "GET", "/albums/A/../A/images", 403),
    ] {
        let r = send(&tg, method, path, Some(token));
        assert_eq!(r.status, status, "{method} {path}");
    }
    // `fullscreen` is rolling out in shadow mode: forwarded, and counted on its own route.
    assert_eq!(
        send(&tg, "GET", "/albums/A/fullscreen", Some(&lister)).status,
        200
    );
    assert_eq!(
        tg.metric(
            r#"tokengate_enforcement_decisions_total{decision="shadow_deny",route="fullscreen"}"#
        ),
        1.0
    );
    assert_eq!(
        tg.metric(r#"tokengate_enforcement_decisions_total{decision="deny",route="list"}"#),
        3.0
    );
    // Anything else under /albums needs a valid token at least.
    assert_eq!(send(&tg, "GET", "/albums/A/comments", None).status, 401);
    assert_eq!(
        send(&tg, "GET", "/albums/A/comments", Some(&viewer)).status,
        200
    );
    let seen: Vec<String> = app
        .seen()
        .iter()
        .map(|s| format!("{} {}", s.method, s.url))
        .collect();
    assert_eq!(
        seen,
        [
            "GET /albums/A/images",
            "HEAD /albums/A/images",
            "GET /albums/A/images/7",
            "GET /Albums/A/Images.json",
            "GET /albums/A",
            "GET /albums/A/fullscreen",
            "GET /albums/A/comments",
        ]
    );
    std::fs::remove_file(secrets).unwrap();
}
