//! Gateway protocols with real clients: TLS termination (SNI, ALPN, certificates reloaded from
//! disk), h2c, gRPC through the gate, and TLS to upstreams (verification, SNI, mTLS, opt-out).
//! Certificates come from the `openssl` command line; clients are curl, `openssl s_client`,
//! rustls and grpcio.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pki::Pki;
use common::*;

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Starts tokengate with a TLS listener on a free port; returns it and the TLS address.
fn start_tls(up: SocketAddr, conf: &str, env: &[(&str, &str)]) -> (Tokengate, SocketAddr) {
    let tls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let listen = tls.to_string();
    let mut env = env.to_vec();
    env.push(("TOKENGATE_TLS_LISTEN", &listen));
    let tg = Tokengate::start_with_args(up, &env, &["-c", conf]);
    (tg, tls)
}

/// The subject of the certificate `openssl s_client` is served for `servername` (or none).
fn served_subject(addr: SocketAddr, servername: Option<&str>) -> String {
    let mut args = vec![
        "s_client".to_owned(),
        "-connect".to_owned(),
        addr.to_string(),
    ];
    match servername {
        Some(name) => args.extend(["-servername".to_owned(), name.to_owned()]),
        None => args.push("-noservername".to_owned()),
    }
    let out = Command::new("openssl")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let all = text(&out.stdout);
    all.lines()
        .find_map(|l| l.strip_prefix("subject="))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| panic!("no certificate: {all}{}", text(&out.stderr)))
}

/// curl with `args`; returns (HTTP version, status, body) from `-w`.
fn curl(args: &[&str]) -> (String, u16, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .args(args)
        .output()
        .expect("curl");
    assert!(out.status.success(), "curl {args:?}: {}", text(&out.stderr));
    let all = text(&out.stdout);
    let (body, last) = all.rsplit_once('\n').unwrap();
    let (version, code) = last.split_once(' ').unwrap();
    (version.to_owned(), code.parse().unwrap(), body.to_owned())
}

const TWO_NAMES: &str = "tokengate:
  tls:
    certificates:
      - {cert: a.test.pem, key: a.test.key}
      - {cert: b.test.pem, key: b.test.key}
";

/// PKI with a CA and leaves for a.test and b.test (+ *.b.test); config file with both.
fn two_names(name: &str) -> (Pki, String) {
    let pki = Pki::new(name);
    pki.ca("ca");
    pki.leaf("ca", "a.test", "DNS:a.test", "serverAuth");
    pki.leaf("ca", "b.test", "DNS:b.test,DNS:*.b.test", "serverAuth");
    let yaml = TWO_NAMES.replace(": a.test", &format!(": {}/a.test", pki.dir.display()));
    let yaml = yaml.replace(": b.test", &format!(": {}/b.test", pki.dir.display()));
    let conf = pki.config(&yaml);
    (pki, conf)
}

#[test]
fn tls_listener_picks_the_certificate_by_sni_and_speaks_h2_and_http1() {
    let (pki, conf) = two_names("sni");
    let up = Upstream::start();
    let (tg, tls) = start_tls(up.addr, &conf, &[]);
    for (sni, subject) in [
        (Some("a.test"), "CN = a.test"),
        (Some("b.test"), "CN = b.test"),
        (Some("photos.b.test"), "CN = b.test"),
        (Some("other.test"), "CN = a.test"),
        (None, "CN = a.test"),
    ] {
        assert_eq!(served_subject(tls, sni), subject, "SNI {sni:?}");
    }
    // TLS 1.1 and older are refused.
    let old = Command::new("openssl")
        .args(["s_client", "-connect", &tls.to_string(), "-tls1_1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !text(&old.stdout).contains("subject="),
        "TLS 1.1 was accepted"
    );

    let resolve = format!("b.test:{}:127.0.0.1", tls.port());
    let url = format!("https://b.test:{}/hello", tls.port());
    let ca = pki.path("ca.pem");
    let base = ["--cacert", p(&ca), "--resolve", &resolve];
    let h2 = curl(&[&base[..], &["--http2", &url]].concat());
    assert_eq!(h2, ("2".to_owned(), 200, "upstream says hi".to_owned()));
    let h1 = curl(&[&base[..], &["--http1.1", &url]].concat());
    assert_eq!(h1, ("1.1".to_owned(), 200, "upstream says hi".to_owned()));
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!((s.method.as_str(), s.url.as_str()), ("GET", "/hello"));
        assert_eq!(s.all("X-Forwarded-Proto"), ["https"]);
        assert_eq!(s.all("Host"), [format!("b.test:{}", tls.port())]);
    }
    // The plaintext listener still says http.
    tg.request(b"GET /plain HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(up.seen()[2].all("X-Forwarded-Proto"), ["http"]);

    // The token route over HTTP/2 and TLS.
    let auth = format!("Authorization: Bearer {}", session("7"));
    let token_url = format!("https://b.test:{}/api/v1/token", tls.port());
    let (version, status, body) = curl(
        &[
            &base[..],
            &[
                "--http2",
                "-H",
                &auth,
                "--data-urlencode",
                "permission={\"Id\":1}",
                &token_url,
            ],
        ]
        .concat(),
    );
    assert_eq!((version.as_str(), status), ("2", 200), "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    let minted = body["token"].as_str().unwrap();
    assert!(
        payload(minted).contains(r#""user_id":"7""#),
        "{}",
        payload(minted)
    );
    assert_eq!(
        up.seen().len(),
        3,
        "the token route never reaches the upstream"
    );
}

#[test]
fn a_client_that_never_finishes_the_tls_handshake_is_disconnected() {
    let (pki, conf) = two_names("handshake");
    let yaml = std::fs::read_to_string(&conf).unwrap() + "  header_timeout: 1s\n";
    let conf = pki.config(&yaml);
    let up = Upstream::start();
    let (_tg, tls) = start_tls(up.addr, &conf, &[]);
    // Connects and sends nothing; then one that sends half a ClientHello.
    let mut silent = connect(tls);
    let mut partial = connect(tls);
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    for (name, conn) in [("silent", &mut silent), ("partial", &mut partial)] {
        let mut buf = [0u8; 64];
        let closed =
            matches!(conn.read(&mut buf), Ok(0)) || conn.read(&mut buf).is_ok_and(|n| n == 0);
        assert!(closed, "{name}: still open after {DEADLINE:?}");
    }
    // Meanwhile and afterwards, real clients are served.
    let mut client = rustls_connect(tls, &pki.path("ca.pem"), "a.test");
    assert_eq!(get_over(&mut client, "/after"), "HTTP/1.1 200 OK");
}

#[test]
fn h2c_with_prior_knowledge_is_a_setting() {
    let up = Upstream::start();
    let url = |tg: &Tokengate| format!("http://{}/h2c", tg.addr);
    let on = Tokengate::start(up.addr, &[("TOKENGATE_H2C", "true")]);
    assert_eq!(
        curl(&["--http2-prior-knowledge", &url(&on)]),
        ("2".to_owned(), 200, "upstream says hi".to_owned())
    );
    // HTTP/1.1 keeps working beside it.
    assert_eq!(curl(&[&url(&on)]).0, "1.1");
    let off = Tokengate::start(up.addr, &[]);
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
        ])
        .args(["--http2-prior-knowledge", &url(&off)])
        .output()
        .unwrap();
    assert_ne!(text(&out.stdout), "2", "h2c was served while off");
    assert_eq!(up.seen().len(), 2);
    assert_eq!(up.seen()[0].all("X-Forwarded-Proto"), ["http"]);
}

const ALBUM_ROUTES: &str = "tokengate:
  h2c: true
  routes:
    - {name: upload, path: '/albums/{album}/images', methods: [POST], require: {resource: '{album}', access: image_upload}}
    - {name: list, path: '/albums/{album}/images', methods: [GET], require: {resource: '{album}', access: image_list}}
";

#[test]
fn http2_requests_are_canonicalized_and_checked_like_http1() {
    let pki = Pki::new("h2-routes");
    let up = Upstream::start();
    let tg = Tokengate::start_with_args(up.addr, &[], &["-c", &pki.config(ALBUM_ROUTES)]);
    let base = format!("http://{}", tg.addr);
    let abilities = r#"{"a":{"Access":{"image_upload":true,"image_list":true}}}"#;
    let (_, status, body) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        &format!("Authorization: Bearer {}", session("h2")),
        "-H",
        "Content-Type: application/json",
        "--data",
        &format!(r#"{{"permission":{{"abilities":{abilities}}}}}"#),
        &format!("{base}/api/v1/token.json"),
    ]);
    assert_eq!(status, 200, "{body}");
    let token: serde_json::Value = serde_json::from_str(&body).unwrap();
    let auth = format!("Authorization: Bearer {}", token["token"].as_str().unwrap());
    // (extra curl arguments, path, status, what the upstream saw: method and target)
    type Case<'a> = (&'a [&'a str], &'a str, u16, Option<(&'a str, &'a str)>);
    let cases: [Case; 9] = [
        (
            &["-X", "POST"],
            "/albums/a/images",
            200,
            Some(("POST", "/albums/a/images")),
        ),
        (&["-X", "POST"], "/albums/b/images", 403, None),
        (
            &["-X", "POST", "--path-as-is"],
            "/albums/a/../b/images",
            403,
            None,
        ),
        (&["-X", "POST"], "/albums/b/%69mages", 403, None),
        (&["-X", "POST"], "/ALBUMS/b/images", 403, None),
        (&["-X", "POST"], "/albums/b%2Fimages", 400, None),
        (&["-I"], "/albums/b/images", 403, None),
        (
            &["-X", "POST", "--path-as-is"],
            "/albums/a/./images",
            200,
            Some(("POST", "/albums/a/images")),
        ),
        (
            &["-X", "POST", "-H", "X-HTTP-Method-Override: DELETE"],
            "/albums/a/images",
            200,
            Some(("POST", "/albums/a/images")),
        ),
    ];
    for (args, path, want, seen) in cases {
        let before = up.seen().len();
        let url = format!("{base}{path}");
        let (version, status, body) =
            curl(&[&["--http2-prior-knowledge", "-H", &auth][..], args, &[&url]].concat());
        assert_eq!(
            (version.as_str(), status),
            ("2", want),
            "{args:?} {path}: {body}"
        );
        let after = up.seen();
        match seen {
            Some((method, target)) => {
                let s = &after[before];
                assert_eq!(
                    (s.method.as_str(), s.url.as_str()),
                    (method, target),
                    "{path}"
                );
                assert!(s.all("X-HTTP-Method-Override").is_empty());
            }
            None => assert_eq!(after.len(), before, "{args:?} {path} reached the upstream"),
        }
    }
}

#[test]
fn h2c_detection_answers_short_http1_requests_at_once_and_splits_no_preface() {
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[("TOKENGATE_H2C", "true")]);
    // Shorter than the 24-byte preface: answered, not waited on.
    let r = tg.request(b"GET /a HTTP/1.0\r\n\r\n");
    assert_eq!((r.status, r.text().as_str()), (200, "upstream says hi"));
    // The preface in two writes is still HTTP/2: the server's first frame is SETTINGS (type 4).
    let mut conn = tg.connect();
    conn.set_nodelay(true).unwrap();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    conn.write_all(&preface[..10]).unwrap();
    conn.flush().unwrap();
    conn.write_all(&preface[10..]).unwrap();
    conn.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
    let mut frame = [0u8; 9];
    conn.read_exact(&mut frame).unwrap();
    assert_eq!(frame[3], 4, "{frame:?}");
}

/// Slow: Pingora's own one-minute limits, which tokengate does not shorten.
#[test]
fn idle_and_silent_http2_connections_are_closed_within_a_minute() {
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[("TOKENGATE_H2C", "true")]);
    let open = |bytes: &[u8]| {
        let mut conn = tg.connect();
        conn.set_read_timeout(Some(Duration::from_secs(90)))
            .unwrap();
        conn.write_all(bytes).unwrap();
        conn
    };
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    let conns = [
        ("silent", open(b"")),
        ("part of the preface", open(&preface[..16])),
        ("HTTP/2 without a stream", open(preface)),
    ];
    let handles: Vec<_> = conns
        .into_iter()
        .map(|(name, mut conn)| {
            std::thread::spawn(move || {
                let mut buf = [0u8; 256];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) => return (name, true),
                        Ok(_) => continue,
                        Err(e) => return (name, e.kind() == std::io::ErrorKind::ConnectionReset),
                    }
                }
            })
        })
        .collect();
    // Served meanwhile.
    assert_eq!(
        tg.request(b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n").status,
        200
    );
    for handle in handles {
        let (name, closed) = handle.join().unwrap();
        assert!(closed, "{name}: still open after 90 s");
    }
}

/// A rustls client connection to `addr` for `sni`, trusting `ca`.
fn rustls_connect(
    addr: SocketAddr,
    ca: &Path,
    sni: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = connect(addr);
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
    stream
}

/// The serial number of the certificate a connection was served.
fn served_serial(stream: &rustls::StreamOwned<rustls::ClientConnection, TcpStream>) -> String {
    let der = &stream.conn.peer_certificates().unwrap()[0];
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.raw_serial_as_string()
}

/// One keep-alive GET on a TLS stream; the upstream's 16-byte greeting is the whole body.
fn get_over(stream: &mut impl ReadWrite, path: &str) -> String {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"upstream says hi") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed: {}", text(&got));
        got.extend_from_slice(&buf[..n]);
    }
    text(&got).lines().next().unwrap().to_owned()
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

#[test]
fn a_certificate_replaced_on_disk_reaches_new_connections_while_old_ones_keep_working() {
    let (pki, conf) = two_names("reload");
    let up = Upstream::start();
    let (tg, tls) = start_tls(up.addr, &conf, &[]);
    let ca = pki.path("ca.pem");
    let mut old = rustls_connect(tls, &ca, "a.test");
    let first = served_serial(&old);
    assert_eq!(get_over(&mut old, "/before"), "HTTP/1.1 200 OK");

    // cert-manager style: a new pair written beside, then renamed over the old files.
    let (cert, key) = pki.leaf("ca", "a.test.next", "DNS:a.test", "serverAuth");
    std::fs::rename(&key, pki.path("a.test.key")).unwrap();
    std::fs::rename(&cert, pki.path("a.test.pem")).unwrap();
    let start = Instant::now();
    let second = loop {
        let serial = served_serial(&rustls_connect(tls, &ca, "a.test"));
        if serial != first {
            break serial;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the new certificate was never served"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        tg.metric_eventually(r#"tokengate_certificate_reloads_total{result="ok"}"#, 1.0),
        1.0
    );
    assert_eq!(
        get_over(&mut old, "/after"),
        "HTTP/1.1 200 OK",
        "the old connection"
    );
    assert_eq!(served_serial(&old), first);

    // A broken file is refused; the running certificate stays.
    std::fs::write(
        pki.path("a.test.pem"),
        "-----BEGIN CERTIFICATE-----\nbroken\n",
    )
    .unwrap();
    assert_eq!(
        tg.metric_eventually(
            r#"tokengate_certificate_reloads_total{result="error"}"#,
            1.0
        ),
        1.0
    );
    let mut new = rustls_connect(tls, &ca, "a.test");
    assert_eq!(served_serial(&new), second);
    assert_eq!(get_over(&mut new, "/still"), "HTTP/1.1 200 OK");
    let urls: Vec<String> = up.seen().into_iter().map(|s| s.url).collect();
    assert_eq!(urls, ["/before", "/after", "/still"]);
}

/// A Python child that printed its port on the first line.
struct Peer {
    child: Child,
    port: u16,
}

impl Peer {
    fn start(script: &str, args: &[&str]) -> Peer {
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (bash .ci/setup)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{script} printed {line:?}"));
        Peer { child, port }
    }

    fn addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the grpcio client through `target`; its JSON results.
fn grpc_client(target: SocketAddr, token: &str) -> serde_json::Value {
    let out: Output = Command::new("python3")
        .args(["grpc_peer.py", "client", &target.to_string(), token])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps"))
        .output()
        .expect("python3 with grpcio (bash .ci/setup)");
    assert!(out.status.success(), "grpc client: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

const GRPC_ROUTES: &str = "
  routes:
    - {name: secure, path: /test.Secure, auth: required, upstream: grpc}
    - {name: echo, path: /test.Echo, upstream: grpc}
";

#[test]
fn grpc_passes_through_over_h2c_and_to_a_tls_h2_upstream() {
    let pki = Pki::new("grpc");
    pki.ca("ca");
    let (cert, key) = pki.leaf("ca", "grpc.test", "DNS:grpc.test", "serverAuth");
    let plain = Peer::start("grpc_peer.py", &["server"]);
    let secure = Peer::start("grpc_peer.py", &["server", p(&cert), p(&key)]);
    let groups = [
        format!(
            "    grpc: {{addresses: ['{}'], protocol: h2c}}",
            plain.addr()
        ),
        format!(
            "    grpc: {{addresses: ['{}'], protocol: h2, tls: {{sni: grpc.test, ca_file: {}}}}}",
            secure.addr(),
            pki.path("ca.pem").display()
        ),
    ];
    let up = Upstream::start();
    for group in groups {
        let conf = pki.config(&format!("tokengate:\n  upstreams:\n{group}\n{GRPC_ROUTES}"));
        let tg = Tokengate::start_with_args(up.addr, &[("TOKENGATE_H2C", "true")], &["-c", &conf]);
        let token = session("grpc-user");
        let got = grpc_client(tg.addr, &token);
        let say = &got["say"];
        assert_eq!(say["reply"], "yawetag", "{got}");
        assert_eq!(say["code"], "OK");
        assert_eq!(say["initial"]["x-echo"], "hello");
        assert_eq!(say["trailing"]["x-done"], "yes");
        let replies: Vec<String> = (0..5).map(|i| format!("message {i}")).collect();
        assert_eq!(got["count"]["replies"], serde_json::json!(replies));
        assert_eq!(got["count"]["code"], "OK");
        assert_eq!(got["fail"]["code"], "PERMISSION_DENIED");
        assert_eq!(got["fail"]["details"], "not yours");
        assert_eq!(got["fail"]["trailing"]["x-detail"], "album 42 is private");
        assert_eq!(got["secure_without"]["code"], "UNAUTHENTICATED");
        assert_eq!(
            got["secure_without"]["details"],
            "This route requires a token."
        );
        assert_eq!(
            got["secure_with"],
            serde_json::json!({"code": "OK", "reply": "cba"})
        );
        assert_eq!(
            tg.metric(r#"tokengate_upstream_errors_total{kind="tls"}"#),
            0.0
        );
    }
    assert!(up.seen().is_empty(), "every call went to the gRPC group");
}

/// An HTTP/2 upstream that ends its response with an empty DATA frame: the HTTP/1.1 client gets
/// it chunked with one last chunk, and its keep-alive connection carries the next answer intact.
/// The request direction once sent a second last-chunk marker for such a frame
/// (`vendor/pingora-core-empty-chunk.patch`); this is the response direction's check.
#[test]
fn an_http2_response_ending_in_an_empty_data_frame_keeps_an_http1_connection_in_step() {
    let h2 = Peer::start("h2c_upstream.py", &[]);
    let conf = conf(
        "h2-empty-end",
        &format!(
            "tokengate:\n  upstreams:\n    h2: {{addresses: ['{}'], protocol: h2c}}\n  routes:\n    - {{name: h2, path: /h2, upstream: h2}}\n",
            h2.addr()
        ),
    );
    let up = Upstream::start();
    let tg = Tokengate::start_with_args(up.addr, &[], &["-c", &conf]);
    let mut conn = Pipelined::new(tg.connect());
    for path in ["/h2/one", "/h2/two", "/h2/three"] {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n");
        conn.stream.write_all(raw.as_bytes()).unwrap();
        let r = conn.next(false).unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, path));
        assert_eq!(r.header("Transfer-Encoding"), Some("chunked"));
        assert_eq!(conn.pending(), b"", "after {path}");
    }
    assert!(up.seen().is_empty());
    tg.assert_no_panic();
}

const UPSTREAM_TLS: &str = "tokengate:
  upstreams:
    verified: {addresses: ['UP'], tls: {ca_file: CA}}
    named: {addresses: ['UP'], tls: {sni: up.test, ca_file: CA}}
    wrongname: {addresses: ['UP'], tls: {sni: other.test, ca_file: CA}}
    otherca: {addresses: ['UP'], tls: {ca_file: OTHER}}
    skip: {addresses: ['UP'], tls: {ca_file: OTHER, insecure_skip_verify: true}}
    mutual: {addresses: ['MTLS'], tls: {ca_file: CA, cert_file: CLIENT.pem, key_file: CLIENT.key}}
    anonymous: {addresses: ['MTLS'], tls: {ca_file: CA}}
  routes:
    - {name: verified, path: /verified, upstream: verified}
    - {name: named, path: /named, upstream: named}
    - {name: wrongname, path: /wrongname, upstream: wrongname}
    - {name: otherca, path: /otherca, upstream: otherca}
    - {name: skip, path: /skip, upstream: skip}
    - {name: mutual, path: /mutual, upstream: mutual}
    - {name: anonymous, path: /anonymous, upstream: anonymous}
";

#[test]
fn tls_to_upstreams_verifies_names_and_cas_and_presents_a_client_certificate() {
    let pki = Pki::new("upstream");
    pki.ca("ca");
    pki.ca("other");
    let (cert, key) = pki.leaf("ca", "up.test", "DNS:up.test,IP:127.0.0.1", "serverAuth");
    pki.leaf("ca", "tokengate-client", "", "clientAuth");
    let https = Peer::start("tls_upstream.py", &[p(&cert), p(&key)]);
    let ca = pki.path("ca.pem");
    let mtls = Peer::start("tls_upstream.py", &[p(&cert), p(&key), p(&ca)]);
    let yaml = UPSTREAM_TLS
        .replace("'UP'", &format!("'{}'", https.addr()))
        .replace("'MTLS'", &format!("'{}'", mtls.addr()))
        .replace("OTHER", p(&pki.path("other.pem")))
        .replace("CA", p(&ca))
        .replace("CLIENT", p(&pki.path("tokengate-client")));
    let conf = pki.config(&yaml);
    let tg = Tokengate::start_with_args(dead_upstream(), &[], &["-c", &conf]);
    // Said at start, not only after a reload: the configuration is read before logging is set
    // up, so its warnings are derived from it and written once it is.
    tg.logged("tokengate.upstreams.skip.tls: insecure_skip_verify is on: any server certificate is accepted");
    let get = |path: &str| tg.request(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
    for (path, client) in [
        ("/verified/x", None),
        ("/named/x", None),
        ("/skip/x", None),
        ("/mutual/x", Some("tokengate-client")),
    ] {
        let r = get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let body = r.json();
        assert_eq!(body["path"], path);
        assert_eq!(body["client"], serde_json::json!(client), "{path}");
        assert_eq!(body["proto"], "http");
    }
    for path in ["/wrongname/x", "/otherca/x", "/anonymous/x"] {
        let r = get(path);
        assert_eq!(r.status, 502, "{path}: {}", r.text());
        assert_eq!(r.json()["error"], "upstream_unavailable", "{path}");
    }
    assert_eq!(
        tg.metric(r#"tokengate_upstream_errors_total{kind="tls"}"#),
        3.0
    );
}

#[test]
fn tls_settings_that_cannot_work_stop_start_up_with_their_name() {
    let pki = Pki::new("bad");
    pki.ca("ca");
    let (cert, _) = pki.leaf("ca", "a.test", "DNS:a.test", "serverAuth");
    let missing = pki.path("missing.pem");
    let cases = [
        (
            "upstreams: {g: {addresses: ['127.0.0.1:1'], protocol: h2}}".to_owned(),
            "tokengate.upstreams.g.protocol: h2 needs `tls:`; plaintext HTTP/2 is h2c",
        ),
        (
            format!(
                "upstreams: {{g: {{addresses: ['127.0.0.1:1'], tls: {{ca_file: {}}}}}}}",
                p(&missing)
            ),
            "missing.pem",
        ),
        (
            format!(
                "upstreams: {{g: {{addresses: ['127.0.0.1:1'], tls: {{cert_file: {}}}}}}}",
                p(&cert)
            ),
            "tokengate.upstreams.g.tls",
        ),
        (
            "upstreams: {g: {addresses: ['a.internal:443', 'b.internal:443'], tls: {}}}".to_owned(),
            "tokengate.upstreams.g.tls.sni: the addresses name more than one host",
        ),
        (
            format!(
                "tls: {{certificates: [{{cert: {}, key: {}}}]}}",
                p(&cert),
                p(&missing)
            ),
            "tokengate.tls.certificates",
        ),
        (
            format!(
                "tls: {{certificates: [{{cert: {}, key: {}}}]}}",
                p(&cert),
                p(&pki.path("ca.key"))
            ),
            "do not make a certificate",
        ),
    ];
    for (yaml, want) in cases {
        let conf = pki.config(&format!("tokengate:\n  {yaml}\n"));
        let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .args(["-t", "-c", &conf])
            .env_clear()
            .env("TOKENGATE_SECRET", SECRET)
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{yaml}: {err}");
        assert!(err.starts_with("tokengate: invalid "), "{yaml}: {err}");
        assert!(err.contains(want), "{yaml}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    // The environment's one pair (a mounted kubernetes.io/tls Secret) needs both halves.
    let cert_only = [("TOKENGATE_TLS_CERT", p(&cert))];
    let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .arg("-t")
        .env_clear()
        .env("TOKENGATE_SECRET", SECRET)
        .envs(cert_only)
        .output()
        .unwrap();
    assert_eq!(
        text(&out.stderr).trim_end(),
        "tokengate: invalid TOKENGATE_TLS_KEY: TOKENGATE_TLS_CERT needs its key"
    );
}
