//! Start-up, the command line, probes and shutdown, as an operator meets them.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

fn tokengate(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("tokengate runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_configuration_stops_start_up_with_one_clear_line() {
    let dir = std::env::temp_dir();
    let unknown = dir.join(format!("tokengate-unknown-{}.yaml", free_port()));
    std::fs::write(
        &unknown,
        "tokengate:\n  listen: 127.0.0.1:0\n  secrett: oops\n",
    )
    .unwrap();
    let unknown = unknown.to_str().unwrap();
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 6] = [
        (&[], &[], "tokengate: invalid secrets: no signing secret: set TOKENGATE_SECRET or TOKENGATE_SECRET_FILE"),
        (&[], &[("TOKENGATE_SECRET", "too-short")], "tokengate: invalid secrets: secret #1 is 9 bytes long; at least 32 bytes are required"),
        (&[], &[("TOKENGATE_SECRET", SECRET), ("TOKENGATE_LISTEN", "localhost")], "tokengate: invalid TOKENGATE_LISTEN: \"localhost\" is not a host:port address"),
        (&[], &[("TOKENGATE_SECRET", SECRET), ("TOKENGATE_UPSTREAM_READ_TIMEOUT", "soon")], "tokengate: invalid TOKENGATE_UPSTREAM_READ_TIMEOUT: \"soon\" is not a duration"),
        (&["-c", unknown], &[("TOKENGATE_SECRET", SECRET)], "tokengate: invalid configuration: tokengate: unknown field `secrett`"),
        (&["-c", "/nonexistent/tokengate.yaml"], &[("TOKENGATE_SECRET", SECRET)], "tokengate: cannot read /nonexistent/tokengate.yaml: No such file or directory"),
    ];
    for (args, env, expected) in cases {
        let out = tokengate(args, env);
        assert_eq!(out.status.code(), Some(2), "{expected}");
        let err = stderr(&out);
        assert!(err.starts_with(expected), "got {err:?}, want {expected:?}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(!err.contains(SECRET));
    }
    std::fs::remove_file(unknown).unwrap();
}

#[test]
fn a_taken_port_is_refused_clearly() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let admin = format!("127.0.0.1:{}", free_port());
    let env = [
        ("TOKENGATE_SECRET", SECRET),
        ("TOKENGATE_LISTEN", &addr),
        ("TOKENGATE_ADMIN_LISTEN", &admin),
    ];
    let out = tokengate(&[], &env);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with(&format!(
            "tokengate: cannot listen on {addr} (tokengate.listen or TOKENGATE_LISTEN): "
        )),
        "{}",
        stderr(&out)
    );
}

#[test]
fn dash_t_checks_the_shipped_configuration() {
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/tokengate.yaml");
    let out = tokengate(&["-t", "-c", conf], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "tokengate: configuration OK\n"
    );
    let out = tokengate(&["-t", "-c", conf], &[("TOKENGATE_SECRET", "short")]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn sign_prints_a_session_token_the_proxy_accepts() {
    let out = tokengate(
        &["sign", "--user-id", "hank", "--ttl", "30m"],
        &[("TOKENGATE_SECRET", SECRET)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let claims: serde_json::Value = serde_json::from_str(&payload(&token)).unwrap();
    let keys: Vec<&str> = claims
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["exp", "iat", "user_id"]);
    assert_eq!(claims["user_id"], "hank");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        1800
    );
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[]);
    let r = tg.request(&token_request(&[&format!("Bearer {token}")], None, ""));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn help_and_version() {
    let out = tokengate(&["--version"], &[]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        concat!("tokengate ", env!("CARGO_PKG_VERSION"), "\n")
    );
    let out = tokengate(&["--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["--conf", "--daemon", "--upgrade", "--test", "sign"] {
        assert!(help.contains(word), "{word} missing from:\n{help}");
    }
}

#[test]
fn probes_report_health_and_sigterm_exits_zero_promptly() {
    let up = Upstream::start();
    let mut tg = Tokengate::start(up.addr, &[]);
    // Before any request, every counter is already there at zero for alerts to work with.
    let scrape = tg.metrics();
    assert!(
        scrape.contains("\ntokengate_tokens_minted_total 0\n"),
        "{scrape}"
    );
    assert!(scrape.contains("\ntokengate_token_rejections_total{reason=\"invalid_token\"} 0\n"));
    let r = request(tg.admin, b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    let r = request(tg.admin, b"GET /readyz HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!((r.status, r.text().as_str()), (200, "ready\n"));
    tg.signal("-TERM");
    // Idle: it must not sleep out the 10 s grace period.
    assert_eq!(tg.wait_exit(Duration::from_secs(9)), Some(0));
}

#[test]
fn sigterm_lets_an_in_flight_request_finish() {
    // An upstream that answers only after the test has sent SIGTERM.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap();
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = conn.read(&mut buf).unwrap();
        wait.recv().unwrap();
        conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
            .unwrap();
    });
    let mut tg = Tokengate::start(upstream, &[]);
    let addr = tg.addr;
    let client =
        std::thread::spawn(move || request(addr, b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n"));
    let start = Instant::now();
    while tg.metric("tokengate_in_flight_requests") < 1.0 {
        assert!(start.elapsed() < DEADLINE);
        std::thread::sleep(Duration::from_millis(10));
    }
    tg.signal("-TERM");
    let start = Instant::now();
    loop {
        let r = try_request(tg.admin, b"GET /readyz HTTP/1.1\r\nHost: a\r\n\r\n");
        if r.map_or(true, |r| r.status == 503) {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "/readyz never turned 503");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(tg.alive(), "exited with a request in flight");
    release.send(()).unwrap();
    let r = client.join().unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "slow"));
    server.join().unwrap();
    assert_eq!(tg.wait_exit(DEADLINE), Some(0));
}

#[test]
fn dash_t_dash_v_prints_the_route_table_in_the_order_routes_are_tried() {
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/image-app.yaml");
    let secrets = std::env::temp_dir().join(format!("tokengate-tv-{}", free_port()));
    std::fs::write(&secrets, format!("{SECRET}\n")).unwrap();
    let out = tokengate(
        &["-t", "-v", "-c", conf],
        &[("TOKENGATE_SECRET_FILE", secrets.to_str().unwrap())],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        names,
        [
            "list",
            "upload",
            "delete",
            "caption",
            "fullscreen",
            "album",
            "albums",
            "thumbnails",
            "default",
            "configuration"
        ]
    );
    assert!(stdout.contains("require={album}:image_list"), "{stdout}");
    std::fs::remove_file(secrets).unwrap();
}

#[test]
fn dash_t_refuses_routes_that_cannot_be_chosen_or_name_unknown_abilities() {
    for (routes, problem) in [
        (
            "    - {name: a, path: \"/albums/{album}\", methods: [GET]}\n    - {name: b, path: \"/albums/{id}\", methods: [GET]}\n",
            "invalid tokengate.routes: route \"b\" can never be chosen",
        ),
        (
            "    - {name: a, path: \"/albums/{album}\", require: {resource: \"{album}\", access: sea}}\n",
            "invalid tokengate.routes.a.require.access: \"sea\" is not one of the configured abilities",
        ),
    ] {
        let conf = std::env::temp_dir().join(format!("tokengate-badroutes-{}.yaml", free_port()));
        std::fs::write(
            &conf,
            format!("tokengate:\n  abilities: [see]\n  routes:\n{routes}"),
        )
        .unwrap();
        let out = tokengate(&["-t", "-c", conf.to_str().unwrap()], &[("TOKENGATE_SECRET", SECRET)]);
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).starts_with(&format!("tokengate: {problem}")), "{}", stderr(&out));
        assert_eq!(stderr(&out).lines().count(), 1);
        std::fs::remove_file(conf).unwrap();
    }
}

#[test]
fn dash_t_refuses_a_limit_key_the_caller_chooses_with_one_line_naming_it() {
    let route = |key: &str| {
        format!(
            "tokengate:\n  reserved_claims: [tenant]\n  routes:\n    - name: upload\n      path: /albums/{{album}}/images\n      require: {{resource: '{{album}}', access: image_upload}}\n      limit: {{key: '{key}', requests: 1, per: 1s}}\n"
        )
    };
    let env = [("TOKENGATE_SECRET", SECRET)];
    for key in [
        "subject",
        "param:album",
        "claim:/iss",
        "claim:/user_id",
        "claim:/tenant/x",
    ] {
        let conf = conf("limit-key", &route(key));
        let out = tokengate(&["-t", "-c", &conf], &env);
        assert!(out.status.success(), "{key}: {}", stderr(&out));
    }
    for (key, said) in [
        (
            "claim:/Id",
            "tokengate: invalid tokengate.routes.upload.limit.key: \"claim:/Id\" names a claim the \
             token endpoint lets a caller set, so one user could mint a token per value; key the \
             limit by `subject`, `param:NAME`, or a claim only the issuer sets (exp, iat, nbf, \
             iss, aud, sub, jti, user_id, tenant)\n",
        ),
        (
            "claim:/abilities/{album}/Access",
            "names a claim the token endpoint lets a caller set",
        ),
        (
            "param:other",
            "tokengate: invalid tokengate.routes.upload.limit.key: \"param:other\": {other} must \
             be a parameter of /albums/{album}/images that the route's require checks \
             (resource: \"{other}\")\n",
        ),
    ] {
        let conf = conf("limit-key", &route(key));
        let out = tokengate(&["-t", "-c", &conf], &env);
        assert_eq!(out.status.code(), Some(2), "{key}");
        let said_it = match said.starts_with("tokengate: ") {
            true => stderr(&out) == said,
            false => stderr(&out).lines().count() == 1 && stderr(&out).contains(said),
        };
        assert!(said_it, "{key}: {}", stderr(&out));
    }
    // A parameter the route does not check against the token is no key either.
    let unchecked = "tokengate:\n  routes:\n    - name: list\n      path: /albums/{album}\n      limit: {key: 'param:album', requests: 1, per: 1s}\n";
    let out = tokengate(&["-t", "-c", &conf("limit-key", unchecked)], &env);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("that the route's require checks"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn dash_t_refuses_a_caller_chosen_claim_in_a_header_frameworks_read() {
    // The attack: an upload-only caller mints {"mo":"DELETE","ct":"application/x-www-form-…"}
    // and a text/plain POST reaches the app as a form with an override header.
    let conf = conf(
        "claims",
        "tokengate:\n  forward_claims:\n    /mo: X-HTTP-Method-Override\n    /ct: Content-Type\n",
    );
    let out = tokengate(&["-t", "-c", &conf], &[("TOKENGATE_SECRET", SECRET)]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("tokengate: invalid tokengate.forward_claims./ct: \"Content-Type\" is a standard header"),
        "{err}"
    );
}
