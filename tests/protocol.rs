//! Protocol hygiene on a raw socket: pipelining, forwarding headers, duplicate Content-Length,
//! slow request heads, oversized tokens, and secrets that cannot leak into production.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// One request of every kind tokengate handles, each with the answer it must get.
fn kinds(session: &str) -> Vec<(Vec<u8>, u16, bool)> {
    let body = r#"{"permission":{"Id":"p"}}"#;
    vec![
        // (request, status, whether it is a HEAD)
        (b"GET /forwarded HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(), 200, false),
        (
            b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            200,
            false,
        ),
        (
            b"POST /chunked HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n".to_vec(),
            200,
            false,
        ),
        (token_request(&[&format!("Bearer {session}")], Some("application/json"), body), 200, false),
        (
            format!(
                "POST /api/v1/token HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {session}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            )
            .into_bytes(),
            200,
            false,
        ),
        (b"GET /api/v1/token HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc".to_vec(), 405, false),
        (b"GET /private/x HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(), 401, false),
        (b"GET /a/%2e%2e/%2e%2e/x HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(), 400, false),
        (b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(), 200, false),
        (b"HEAD /forwarded HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(), 200, true),
    ]
}

#[test]
fn pipelined_requests_of_every_kind_are_answered_in_order() {
    let up = Upstream::start();
    let dir = std::env::temp_dir().join(format!("tokengate-pipe-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("k.pem");
    let made = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["keys", "generate", "--out", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(made.status.success());
    let yaml = format!(
        "tokengate:\n  signing: {{algorithm: ES256, key_file: '{}'}}\n  routes:\n    - {{name: private, path: /private, auth: required}}\n",
        key.display()
    );
    let tg = Tokengate::start_with_args(up.addr, &[], &["-c", &conf("pipe", &yaml)]);
    let kinds = kinds(&session("pip"));
    for count in [2, 3, 10, kinds.len() * 3] {
        let batch: Vec<&(Vec<u8>, u16, bool)> = kinds.iter().cycle().take(count).collect();
        let mut conn = Pipelined::new(tg.connect());
        // All of them in one write: the second request arrives with the first.
        let all: Vec<u8> = batch.iter().flat_map(|(raw, _, _)| raw.clone()).collect();
        conn.stream.write_all(&all).unwrap();
        for (i, (_, status, head)) in batch.iter().enumerate() {
            let r = conn
                .next(*head)
                .unwrap_or_else(|e| panic!("{count} pipelined: answer {i} missing: {e}"));
            assert_eq!(
                r.status,
                *status,
                "{count} pipelined: answer {i}: {}",
                r.text()
            );
            assert_eq!(r.header("Connection"), Some("keep-alive"), "answer {i}");
        }
    }
    // The upstream saw the forwarded ones, in order, with their bodies.
    let seen: Vec<(String, usize)> = up
        .seen()
        .iter()
        .take(5)
        .map(|s| (s.url.clone(), s.body_len))
        .collect();
    assert_eq!(
        seen,
        [
            ("/forwarded".to_owned(), 0),
            ("/upload".to_owned(), 5),
            ("/forwarded".to_owned(), 0),
            ("/upload".to_owned(), 5),
            ("/chunked".to_owned(), 5)
        ]
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_pipelined_request_after_connection_close_is_not_answered() {
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[]);
    let mut conn = Pipelined::new(tg.connect());
    conn.stream
        .write_all(
            b"GET /first HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /second HTTP/1.1\r\nHost: h\r\n\r\n",
        )
        .unwrap();
    let r = conn.next(false).unwrap();
    assert_eq!((r.status, r.header("Connection")), (200, Some("close")));
    let mut rest = conn.pending().to_vec();
    conn.stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    let urls: Vec<String> = up.seen().iter().map(|s| s.url.clone()).collect();
    assert_eq!(urls, ["/first"]);
}

/// Connects to `addr` from `local` (another loopback address plays another machine).
fn connect_from(local: &str, addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{local}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
}

const SPOOFED: &str = "Forwarded: for=10.0.0.1;proto=https;host=admin.internal\r\nX-Real-IP: 10.0.0.1\r\n\
                       X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: admin.internal\r\n\
                       X_Forwarded_For: 10.9.9.9\r\nX-Forwarded-Prefix: /admin\r\nx_real_ip: 10.9.9.9\r\n\
                       Client-IP: 10.0.0.1\r\nTrue-Client-IP: 10.0.0.1\r\nX-Scheme: https\r\nclient_ip: 10.9.9.9\r\n";

#[test]
fn forwarding_headers_are_replaced_from_untrusted_peers_and_extended_from_trusted_ones() {
    let up = Upstream::start();
    let yaml = "tokengate:\n  trusted_proxies: [127.0.0.2/32]\n";
    let tg = Tokengate::start_with_args(up.addr, &[], &["-c", &conf("trusted", yaml)]);
    let raw = format!("GET /who HTTP/1.1\r\nHost: images.example\r\n{SPOOFED}\r\n");
    let r = exchange(&mut connect_from("127.0.0.1", tg.addr), raw.as_bytes()).unwrap();
    assert_eq!(r.status, 200);
    let s = up.seen().pop().unwrap();
    assert_eq!(
        s.all("Forwarded"),
        ["for=127.0.0.1;proto=http;host=\"images.example\""]
    );
    assert_eq!(s.all("X-Real-IP"), ["127.0.0.1"]);
    assert_eq!(s.all("X-Forwarded-For"), ["127.0.0.1"]);
    assert_eq!(s.all("X-Forwarded-Proto"), ["http"]);
    assert_eq!(s.all("X-Forwarded-Host"), ["images.example"]);
    for gone in [
        "X_Forwarded_For",
        "X-Forwarded-Prefix",
        "x_real_ip",
        "Client-IP",
        "client_ip",
        "True-Client-IP",
        "X-Scheme",
    ] {
        assert!(s.all(gone).is_empty(), "{gone} reached the upstream");
    }
    // 127.0.0.2 is a trusted proxy: its chain is kept and extended.
    let r = exchange(&mut connect_from("127.0.0.2", tg.addr), raw.as_bytes()).unwrap();
    assert_eq!(r.status, 200);
    let s = up.seen().pop().unwrap();
    assert_eq!(
        s.all("Forwarded"),
        ["for=10.0.0.1;proto=https;host=admin.internal, for=127.0.0.2;proto=http;host=\"images.example\""]
    );
    assert_eq!(s.all("X-Forwarded-For"), ["10.0.0.1, 127.0.0.2"]);
    assert_eq!(s.all("X-Real-IP"), ["10.0.0.1"]);
    assert_eq!(s.all("X-Forwarded-Proto"), ["https"]);
    assert_eq!(s.all("X-Forwarded-Host"), ["admin.internal"]);
    assert_eq!(s.all("X-Forwarded-Prefix"), ["/admin"]);
    assert_eq!(s.all("True-Client-IP"), ["10.0.0.1"]);
    // Underscore spellings are no proxy's: gone even from a trusted one.
    for gone in ["X_Forwarded_For", "x_real_ip", "client_ip"] {
        assert!(s.all(gone).is_empty(), "{gone} reached the upstream");
    }
}

#[test]
fn identical_duplicate_content_lengths_are_forwarded_as_one_and_differing_ones_refused() {
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[]);
    for lengths in [
        "Content-Length: 5\r\nContent-Length: 5\r\n",
        "Content-Length: 5, 5\r\n",
    ] {
        let raw = format!("POST /dup HTTP/1.1\r\nHost: h\r\n{lengths}\r\nhello");
        let r = tg.request(raw.as_bytes());
        assert_eq!(r.status, 200, "{lengths:?}");
        let s = up.seen().pop().unwrap();
        assert_eq!(
            (s.all("Content-Length"), s.body_len),
            (vec!["5"], 5),
            "{lengths:?}"
        );
    }
    let before = up.seen().len();
    for lengths in [
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: 5, 6\r\n",
    ] {
        let raw = format!("POST /dup HTTP/1.1\r\nHost: h\r\n{lengths}\r\nhello!");
        assert_eq!(tg.request(raw.as_bytes()).status, 400, "{lengths:?}");
    }
    assert_eq!(up.seen().len(), before);
}

#[test]
fn a_slow_request_head_gets_408_while_other_clients_are_served() {
    let up = Upstream::start();
    let tg = Tokengate::start_with_args(
        up.addr,
        &[],
        &["-c", &conf("slow", "tokengate:\n  header_timeout: 1s\n")],
    );
    let mut slow = tg.connect();
    slow.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let head = b"GET /slow HTTP/1.1\r\nHost: h\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut answer = Vec::new();
    let mut served_meanwhile = 0;
    for byte in head {
        // A byte at a time, each well within the per-read timeout.
        if slow.write_all(&[*byte]).is_err() {
            break;
        }
        let mut chunk = [0u8; 256];
        match slow.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&chunk[..n]);
                break;
            }
            Err(_) => {}
        }
        // Meanwhile everyone else is served as usual.
        if tg.request(b"GET /fast HTTP/1.1\r\nHost: h\r\n\r\n").status == 200 {
            served_meanwhile += 1;
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n")
            && answer.contains("Connection: close"),
        "the slow client got {answer:?} before its head was complete"
    );
    assert!(served_meanwhile > 0);
    assert!(up.seen().iter().all(|s| s.url == "/fast"));
    // Its connection is closed.
    slow.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    // An idle keep-alive connection is not cut by the header deadline: the clock starts at the
    // next request's first byte.
    let mut idle = tg.connect();
    assert_eq!(
        exchange(&mut idle, b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n")
            .unwrap()
            .status,
        200
    );
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_millis(1500) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        exchange(&mut idle, b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
            .unwrap()
            .status,
        200
    );
}

#[test]
fn tokens_longer_than_the_limit_are_refused_unread() {
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[]);
    let now = now();
    let padding = "x".repeat(9000);
    let long = sign_raw(
        r#"{"alg":"HS256"}"#,
        &format!(
            r#"{{"exp":{},"user_id":"big","pad":"{padding}"}}"#,
            now + 60
        ),
        SECRET,
    );
    assert!(long.len() > 8192);
    let r = tg.request(&token_request(&[&format!("Bearer {long}")], None, ""));
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("invalid_request"))
    );
    // Forwarded, it identifies nobody and is not echoed back.
    let raw = format!("GET /x HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {long}\r\n\r\n");
    let r = tg.request(raw.as_bytes());
    assert_eq!((r.status, r.header("X-token")), (200, None));
    assert!(up.seen()[0].all("X-User-Id").is_empty());
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokengate"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_development_secret_never_serves_other_machines() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/tokengate.yaml");
    let port = free_port().to_string();
    let listen = format!("0.0.0.0:{port}");
    let admin = format!("127.0.0.1:{}", free_port());
    for env in [
        vec![
            ("TOKENGATE_LISTEN", listen.as_str()),
            ("TOKENGATE_ADMIN_LISTEN", admin.as_str()),
        ],
        vec![
            ("TOKENGATE_LISTEN", listen.as_str()),
            ("TOKENGATE_ADMIN_LISTEN", admin.as_str()),
            ("TOKENGATE_SECRET", ""),
        ],
    ] {
        let (code, stderr) = run(&["-c", shipped], &env);
        assert_eq!(code, Some(2), "{env:?}: {stderr}");
        assert_eq!(
            stderr,
            "tokengate: invalid secrets: the development secret from conf/tokengate.yaml is public \
             and only serves loopback listeners: set TOKENGATE_SECRET or TOKENGATE_SECRET_FILE\n"
        );
    }
    // On loopback it serves, with a warning.
    let up = Upstream::start();
    let tg = Tokengate::start_with_args(
        up.addr,
        &[("TOKENGATE_SECRET", ""), ("TOKENGATE_LOG", "warn")],
        &["-c", shipped],
    );
    tg.logged("public development secret");
    // The container image's default configuration holds no secret: without one it says what
    // to set, in one line.
    let image_conf = concat!(env!("CARGO_MANIFEST_DIR"), "/k8s/base/tokengate.yaml");
    let (code, stderr) = run(&["-c", image_conf], &[("TOKENGATE_SECRET", "")]);
    assert_eq!(code, Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(
            "tokengate: cannot read the secrets file /var/run/secrets/tokengate/secrets"
        ) && stderr.contains("set TOKENGATE_SECRET or TOKENGATE_SECRET_FILE"),
        "{stderr}"
    );
}
