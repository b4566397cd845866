//! Everything that is not the token route: forwarded to a real upstream.

mod common;

use common::*;

#[test]
fn a_valid_token_sets_identity_and_x_token_and_spoofs_are_stripped() {
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[]);
    let session = session("frank");
    let raw = format!(
        "POST /albums/7/images?x=1 HTTP/1.1\r\nHost: images.example\r\nAuthorization: Bearer {session}\r\n\
         X-User-Id: mallory\r\nx-user-id: mallory2\r\nX_User_Id: mallory3\r\nX-Forwarded-For: 10.0.0.9\r\n\
         X-Request-Id: trace-abc\r\nContent-Length: 5\r\n\r\nhello"
    );
    let r = tg.request(raw.as_bytes());
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "upstream says hi");
    assert_eq!(r.header("X-token"), Some(session.as_str()));
    assert_eq!(r.header("X-Request-Id"), Some("trace-abc"));
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(
        (s.method.as_str(), s.url.as_str(), s.body_len),
        ("POST", "/albums/7/images?x=1", 5)
    );
    assert_eq!(s.all("X-User-Id"), ["frank"]);
    assert!(s.all("X_User_Id").is_empty());
    // The client is no trusted proxy: its X-Forwarded-For is replaced, not extended.
    assert_eq!(s.all("X-Forwarded-For"), ["127.0.0.1"]);
    assert_eq!(s.all("X-Forwarded-Proto"), ["http"]);
    assert_eq!(s.all("X-Forwarded-Host"), ["images.example"]);
    assert_eq!(s.all("X-Request-Id"), ["trace-abc"]);
}

#[test]
fn x_token_is_on_the_final_answer_after_an_informational_one() {
    // An upstream that sends `103 Early Hints` before its answer, on one connection.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match std::io::Read::read(&mut conn, &mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let _ = std::io::Write::write_all(
                &mut conn,
                b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n\
                  HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
            );
        }
    });
    let tg = Tokengate::start(addr, &[]);
    let session = session("frank");
    let raw =
        format!("GET /albums/7 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {session}\r\n\r\n");
    let mut conn = Pipelined::new(tg.connect());
    std::io::Write::write_all(&mut conn.stream, raw.as_bytes()).unwrap();
    // An informational answer has no body: read as the answer to a HEAD.
    let hints = conn.next(true).unwrap();
    assert_eq!(hints.status, 103);
    assert_eq!(hints.header("X-token"), Some(session.as_str()));
    let answer = conn.next(false).unwrap();
    assert_eq!((answer.status, answer.text().as_str()), (200, "hi"));
    assert_eq!(answer.header("X-token"), Some(session.as_str()));
    assert!(answer.header("X-Request-Id").is_some());
}

#[test]
fn without_a_valid_token_nothing_identifies_the_caller() {
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[]);
    for auth in ["", "Authorization: Bearer forged.token.here\r\n"] {
        let raw = format!("GET /public HTTP/1.1\r\nHost: a\r\n{auth}X-User-Id: admin\r\n\r\n");
        let r = tg.request(raw.as_bytes());
        assert_eq!(r.status, 200);
        assert_eq!(r.header("X-token"), None);
        let id = r.header("X-Request-Id").unwrap();
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.all("X-User-Id").is_empty()));
}

#[test]
fn required_mode_answers_401_and_never_reaches_the_upstream() {
    let up = Upstream::start();
    let conf = std::env::temp_dir().join(format!("tokengate-required-{}.yaml", free_port()));
    std::fs::write(&conf, "tokengate:\n  auth: required\n").unwrap();
    let tg = Tokengate::start_with_args(up.addr, &[], &["-c", conf.to_str().unwrap()]);
    let r = tg.request(b"GET /private HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (401, Some("missing_token"))
    );
    let r = tg.request(b"GET /private HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer x.y.z\r\n\r\n");
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (401, Some("invalid_token"))
    );
    assert!(up.seen().is_empty());
    let ok = format!(
        "GET /private HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\n\r\n",
        session("gina")
    );
    assert_eq!(tg.request(ok.as_bytes()).status, 200);
    assert_eq!(up.seen().len(), 1);
    std::fs::remove_file(conf).unwrap();
}

#[test]
fn a_refused_upstream_is_a_json_502_and_counted() {
    let tg = Tokengate::start(dead_upstream(), &[]);
    let r = tg.request(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Request-Id: rid-1\r\n\r\n");
    assert_eq!(r.status, 502);
    assert_eq!(
        r.text(),
        r#"{"error":"upstream_unavailable","message":"The upstream is unavailable."}"#
    );
    assert_eq!(r.header("X-Request-Id"), Some("rid-1"));
    assert_eq!(
        tg.metric(r#"tokengate_upstream_errors_total{kind="connect"}"#),
        1.0
    );
    assert_eq!(
        tg.metric_eventually(r#"tokengate_requests_total{code="502",route="proxy"}"#, 1.0),
        1.0
    );
}

#[test]
fn a_silent_upstream_is_a_json_504() {
    // Accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tg = Tokengate::start(
        silent.local_addr().unwrap(),
        &[("TOKENGATE_UPSTREAM_READ_TIMEOUT", "300ms")],
    );
    let r = tg.request(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert_eq!(
        tg.metric(r#"tokengate_upstream_errors_total{kind="timeout"}"#),
        1.0
    );
}

#[test]
fn every_method_and_http_1_0_pass_through() {
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[]);
    for (method, body) in [
        ("HEAD", ""),
        ("OPTIONS", ""),
        ("DELETE", ""),
        ("PATCH", "{\"a\":1}"),
        ("GET", "body on a GET"),
    ] {
        let raw = format!(
            "{method} /m HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut conn = tg.connect();
        std::io::Write::write_all(&mut conn, raw.as_bytes()).unwrap();
        let r = read_response_to(&mut conn, method == "HEAD").unwrap();
        assert_eq!(r.status, 200, "{method}");
        let expected: &[u8] = if method == "HEAD" {
            b""
        } else {
            b"upstream says hi"
        };
        assert_eq!(r.body, expected, "{method}");
    }
    let seen = up.seen();
    let got: Vec<(&str, usize)> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.body_len))
        .collect();
    assert_eq!(
        got,
        [
            ("HEAD", 0),
            ("OPTIONS", 0),
            ("DELETE", 0),
            ("PATCH", 7),
            ("GET", 13)
        ]
    );

    // An HTTP/1.0 client without Host gets its answer and a closed connection.
    let r = tg.request(b"GET /old HTTP/1.0\r\n\r\n");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"upstream says hi"[..])
    );
}

#[test]
fn upstream_connections_are_pooled() {
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[("TOKENGATE_THREADS", "1")]);
    let mut conn = tg.connect();
    for _ in 0..5 {
        let r = exchange(&mut conn, b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(r.status, 200);
    }
    let ports: std::collections::BTreeSet<_> =
        up.seen().iter().map(|s| s.peer.unwrap().port()).collect();
    assert_eq!(
        ports.len(),
        1,
        "five requests used {} upstream connections",
        ports.len()
    );
}

#[test]
fn per_path_auth_modes() {
    let up = Upstream::start();
    let conf = std::env::temp_dir().join(format!("tokengate-paths-{}.yaml", free_port()));
    std::fs::write(
        &conf,
        "tokengate:\n  auth: passthrough\n  routes:\n    - {name: albums, path: /albums, auth: required}\n",
    )
    .unwrap();
    let tg = Tokengate::start_with_args(up.addr, &[], &["-c", conf.to_str().unwrap()]);
    assert_eq!(
        tg.request(b"GET /public HTTP/1.1\r\nHost: a\r\n\r\n")
            .status,
        200
    );
    for path in [
        "/albums/1",
        "/ALBUMS/1",
        "/albums",
        "/x/../albums/1",
        "/albums.json",
    ] {
        let r = tg.request(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (401, Some("missing_token")),
            "{path}"
        );
    }
    let urls: Vec<String> = up.seen().iter().map(|s| s.url.clone()).collect();
    assert_eq!(urls, ["/public"]);
    std::fs::remove_file(conf).unwrap();
}

#[test]
fn a_minted_ability_token_identifies_its_subject_too() {
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[]);
    let body = r#"{"permission":{"abilities":{"a1":{"Access":{"see":true}}},"Id":"a1"}}"#;
    let r = tg.request(&token_request(
        &[&format!("Bearer {}", session("nia"))],
        Some("application/json"),
        body,
    ));
    let minted = r.json()["token"].as_str().unwrap().to_owned();
    let raw =
        format!("GET /albums/a1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {minted}\r\n\r\n");
    let r = tg.request(raw.as_bytes());
    assert_eq!(r.header("X-token"), Some(minted.as_str()));
    assert_eq!(up.seen()[0].all("X-User-Id"), ["nia"]);
}

#[test]
fn websocket_upgrades_pass_through() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut ws = tungstenite::accept(stream).unwrap();
        loop {
            match ws.read() {
                Ok(msg) if msg.is_text() || msg.is_binary() => ws.send(msg).unwrap(),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    let tg = Tokengate::start(upstream, &[]);
    let (mut ws, response) =
        tungstenite::client(format!("ws://{}/socket", tg.addr), tg.connect()).unwrap();
    assert_eq!(response.status().as_u16(), 101);
    for text in ["hello", "through", "tokengate"] {
        ws.send(tungstenite::Message::text(text)).unwrap();
        assert_eq!(ws.read().unwrap(), tungstenite::Message::text(text));
    }
    ws.close(None).unwrap();
    while ws.read().is_ok() {}
    server.join().unwrap();
}

#[test]
fn the_upstream_sees_exactly_the_forwarding_headers() {
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[]);
    let session = session("olga");
    let raw = format!(
        "GET /exact HTTP/1.1\r\nHost: images.example\r\nAuthorization: Bearer {session}\r\n\
         Connection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: private\r\n\
         Proxy-Connection: keep-alive\r\nTE: trailers\r\nX-App: kept\r\nUser_Id: kept-too\r\n\r\n"
    );
    assert_eq!(tg.request(raw.as_bytes()).status, 200);
    let seen = &up.seen()[0];
    let mut names: Vec<String> = seen
        .headers
        .iter()
        .map(|(k, _)| k.to_ascii_lowercase())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "authorization",
            "forwarded",
            "host",
            "user_id",
            "x-app",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "x-real-ip",
            "x-request-id",
            "x-user-id"
        ]
    );
}

#[test]
fn a_subject_that_is_no_header_value_is_not_forwarded_and_no_5xx() {
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[]);
    let now = now();
    let token = sign_raw(
        r#"{"alg":"HS256"}"#,
        &format!(r#"{{"exp":{},"user_id":"line\nbreak"}}"#, now + 60),
        SECRET,
    );
    let raw = format!("GET /x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\r\n");
    let r = tg.request(raw.as_bytes());
    assert_eq!(r.status, 200);
    assert!(up.seen()[0].all("X-User-Id").is_empty());
}

#[test]
fn a_required_token_without_a_sendable_subject_is_401_never_forwarded() {
    let up = Upstream::start();
    let conf = std::env::temp_dir().join(format!("tokengate-identity-{}.yaml", free_port()));
    std::fs::write(&conf, "tokengate:\n  auth: required\n").unwrap();
    let tg = Tokengate::start_with_args(up.addr, &[], &["-c", conf.to_str().unwrap()]);
    let now = now();
    let mut conn = tg.connect();
    for subject in [
        "line\\nbreak",
        "",
        "   ",
        " padded",
        "tab\\there",
        "nul\\u0000",
    ] {
        let token = sign_raw(
            r#"{"alg":"HS256"}"#,
            &format!(r#"{{"exp":{},"user_id":"{subject}"}}"#, now + 60),
            SECRET,
        );
        let raw = format!("GET /x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\r\n");
        let r = exchange(&mut conn, raw.as_bytes()).unwrap();
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (401, Some("invalid_token")),
            "{subject:?}"
        );
    }
    assert!(up.seen().is_empty());
    let ok = format!(
        "GET /x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\n\r\n",
        session("ok")
    );
    assert_eq!(exchange(&mut conn, ok.as_bytes()).unwrap().status, 200);
    assert_eq!(up.seen()[0].all("X-User-Id"), ["ok"]);
    std::fs::remove_file(conf).unwrap();
}

#[test]
fn forward_claims_send_exactly_the_configured_headers_and_never_spoofed_ones() {
    let up = Upstream::start();
    let conf = std::env::temp_dir().join(format!("tokengate-claims-{}.yaml", free_port()));
    std::fs::write(
        &conf,
        "tokengate:\n  forward_claims:\n    /abilities/{album}/Access: X-Abilities\n    /Id: X-Album-Id\n  routes:\n    - {name: album, path: \"/albums/{album}\"}\n",
    )
    .unwrap();
    let tg = Tokengate::start_with_args(up.addr, &[], &["-c", conf.to_str().unwrap()]);
    let body = r#"{"permission":{"abilities":{"a1":{"Access":{"see":true,"image_list":false}}},"Id":"a1"}}"#;
    let r = tg.request(&token_request(
        &[&format!("Bearer {}", session("cora"))],
        Some("application/json"),
        body,
    ));
    let minted = r.json()["token"].as_str().unwrap().to_owned();
    let spoofed = "X-Abilities: {\"a1\":{\"Access\":{\"image_delete\":true}}}\r\nx_album_id: a2\r\nX-ALBUM-ID: a3\r\n";
    for (path, token, want_abilities, want_id) in [
        (
            "/albums/a1/images",
            Some(minted.as_str()),
            vec![r#"{"see":true,"image_list":false}"#],
            vec!["a1"],
        ),
        (
            "/albums/a2/images",
            Some(minted.as_str()),
            vec![],
            vec!["a1"],
        ),
        ("/other", Some(minted.as_str()), vec![], vec!["a1"]),
        ("/albums/a1/images", None, vec![], vec![]),
    ] {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let raw = format!("GET {path} HTTP/1.1\r\nHost: h\r\n{auth}{spoofed}\r\n");
        assert_eq!(tg.request(raw.as_bytes()).status, 200, "{path}");
        let s = up.seen().pop().unwrap();
        assert_eq!(s.all("X-Abilities"), want_abilities, "{path}");
        assert_eq!(s.all("X-Album-Id"), want_id, "{path}");
        assert!(s.all("x_album_id").is_empty());
    }
    std::fs::remove_file(conf).unwrap();
}

#[test]
fn a_claim_no_header_can_carry_is_escaped_or_left_out_never_a_5xx() {
    let up = Upstream::start();
    let conf = conf(
        "claim-bytes",
        "tokengate:\n  forward_claims:\n    /Id: X-Album-Id\n    /Name: X-Name\n",
    );
    let tg = Tokengate::start_with_args(up.addr, &[], &["-c", &conf]);
    // DEL inside an object, which serde_json writes raw; a bare string with DEL, which no
    // escape leaves unchanged.
    let body = r#"{"permission":{"Id":{"x":"a\u007fb"},"Name":"c\u007fd"}}"#;
    let r = tg.request(&token_request(
        &[&format!("Bearer {}", session("dell"))],
        Some("application/json"),
        body,
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    let minted = r.json()["token"].as_str().unwrap().to_owned();
    for round in 1..=2 {
        let raw = format!("GET /x HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {minted}\r\n\r\n");
        let r = tg.request(raw.as_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
        let s = up.seen().pop().unwrap();
        assert_eq!(s.all("X-Album-Id"), [r#"{"x":"a\u007fb"}"#]);
        assert!(s.all("X-Name").is_empty(), "{:?}", s.all("X-Name"));
        assert_eq!(
            tg.metric(r#"tokengate_claim_headers_omitted_total{header="x-name"}"#),
            f64::from(round)
        );
    }
    let errors: Vec<String> = tg
        .stderr
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("ERROR"))
        .cloned()
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    std::fs::remove_file(conf).unwrap();
}
