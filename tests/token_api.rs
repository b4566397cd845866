//! `POST /api/v1/token` end to end: the real binary, real sockets, exact bytes.

mod common;

use common::*;

const SEED_SESSION_HEADER: &str = r#"{"typ":"JWT","alg":"HS256"}"#;
const SEED_SESSION_CLAIMS: &str =
    r#"{"exp":1554759531,"iat":1554745131,"user_id":"f551a1cb-930e-4501-87a9-f51a0718da3e"}"#;
const SEED_BODY: &str = "permission=%7B%22abilities%22%3A%7B%22album_id%22%3A%7B%22Access%22%3A%7B%22see%22%3Atrue%2C%22image_list%22%3Atrue%2C%22image_upload%22%3Atrue%2C%22image_delete%22%3Atrue%2C%22fullscreen%22%3Atrue%2C%22image_caption%22%3Atrue%7D%7D%2C%22tags%22%3A%7B%22auto_tag%22%3A%22test%22%7D%7D%2C%22Id%22%3A%22album_id%22%7D";
const SEED_MINTED: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJleHAiOjE1NTQ3NTk1MzEsImlhdCI6MTU1NDc0NTEzMSwidXNlcl9pZCI6ImY1NTFhMWNiLTkzMGUtNDUwMS04N2E5LWY1MWEwNzE4ZGEzZSIsImFiaWxpdGllcyI6eyJhbGJ1bV9pZCI6eyJBY2Nlc3MiOnsic2VlIjp0cnVlLCJpbWFnZV9saXN0Ijp0cnVlLCJpbWFnZV91cGxvYWQiOnRydWUsImltYWdlX2RlbGV0ZSI6dHJ1ZSwiZnVsbHNjcmVlbiI6dHJ1ZSwiaW1hZ2VfY2FwdGlvbiI6dHJ1ZX19LCJ0YWdzIjp7ImF1dG9fdGFnIjoidGVzdCJ9fSwiSWQiOiJhbGJ1bV9pZCJ9";
const SEED_PERMISSION: &str = r#"{"abilities":{"album_id":{"Access":{"see":true,"image_list":true,"image_upload":true,"image_delete":true,"fullscreen":true,"image_caption":true}},"tags":{"auto_tag":"test"}},"Id":"album_id"}"#;

const FORM: &str = "application/x-www-form-urlencoded";

fn seed_sig(message: &str) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256).unwrap()
}

/// The seed's token expired in 2019; a leeway reaching back to it puts "now" inside its life.
fn seed_server() -> (Upstream, Tokengate) {
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[("TOKENGATE_LEEWAY", "300000000s")]);
    (up, tg)
}

#[test]
fn seed_request_is_answered_byte_for_byte() {
    let (up, tg) = seed_server();
    let session = sign_raw(SEED_SESSION_HEADER, SEED_SESSION_CLAIMS, SECRET);
    let raw = format!(
        "POST /api/v1/token HTTP/1.1\r\nAuthorization: Token token=\"{session}\"\r\nHost: example.org\r\nContent-Type: {FORM}\r\nCookie: \r\nContent-Length: {}\r\n\r\n{SEED_BODY}",
        SEED_BODY.len()
    );
    let r = tg.request(raw.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let expected = format!(
        r#"{{"token":"{SEED_MINTED}.{}","endpoint":"localhost:5001"}}"#,
        seed_sig(SEED_MINTED)
    );
    assert_eq!(r.text(), expected);
    assert_eq!(r.header("Content-Length"), Some("485"));
    for (name, value) in [
        ("Content-Type", "application/json; charset=utf-8"),
        ("Cache-Control", "no-cache, no-store"),
        ("Pragma", "no-cache"),
        ("Expires", "Fri, 01 Jan 1990 00:00:00 GMT"),
        ("X-Frame-Options", "DENY"),
        ("X-Content-Type-Options", "nosniff"),
        ("X-XSS-Protection", "1; mode=block"),
        ("X-Download-Options", "noopen"),
        ("X-Permitted-Cross-Domain-Policies", "none"),
        (
            "Referrer-Policy",
            "origin-when-cross-origin, strict-origin-when-cross-origin",
        ),
        ("Vary", "Accept-Encoding"),
    ] {
        assert_eq!(r.header(name), Some(value), "{name}");
    }
    assert_eq!(r.header("X-token"), Some(session.as_str()));
    assert_eq!(r.header("P3P"), None);
    let runtime = r.header("X-Runtime").unwrap();
    assert!(
        runtime.len() == 8
            && runtime.starts_with("0.")
            && runtime[2..].bytes().all(|b| b.is_ascii_digit()),
        "{runtime}"
    );
    let id = r.header("X-Request-Id").unwrap();
    assert!(
        uuid::Uuid::parse_str(id).is_ok_and(|u| u.get_version_num() == 4),
        "{id}"
    );
    assert!(
        up.seen().is_empty(),
        "the token route never reaches the upstream"
    );
}

#[test]
fn a_real_http_client_gets_the_seed_answer() {
    let (_up, tg) = seed_server();
    let session = sign_raw(SEED_SESSION_HEADER, SEED_SESSION_CLAIMS, SECRET);
    let mut response = ureq::post(&format!("http://{}/api/v1/token", tg.addr))
        .header("Authorization", &format!("Token token=\"{session}\""))
        .header("Content-Type", FORM)
        .send(SEED_BODY)
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body = response.body_mut().read_to_string().unwrap();
    assert_eq!(body.len(), 485);
    assert!(body.starts_with(&format!(r#"{{"token":"{SEED_MINTED}."#)));
}

#[test]
fn every_authorization_form_and_body_form_mints_the_same_claims() {
    let (_up, tg) = seed_server();
    let session = sign_raw(SEED_SESSION_HEADER, SEED_SESSION_CLAIMS, SECRET);
    let json_object = format!(r#"{{"permission":{SEED_PERMISSION}}}"#);
    let json_string = serde_json::json!({ "permission": SEED_PERMISSION }).to_string();
    let auths = [
        format!("Token token=\"{session}\""),
        format!("Token token={session}"),
        format!("Token {session}"),
        format!("token token=\"{session}\", nonce=\"abc\""),
        format!("Bearer {session}"),
        format!("bearer {session}"),
    ];
    let bodies = [
        (FORM, SEED_BODY.to_owned()),
        (
            "application/x-www-form-urlencoded; charset=UTF-8",
            SEED_BODY.to_owned(),
        ),
        ("application/json", json_object),
        ("application/json; charset=utf-8", json_string),
    ];
    // One keep-alive connection carries them all.
    let mut conn = tg.connect();
    for auth in &auths {
        for (ct, body) in &bodies {
            let r = exchange(&mut conn, &token_request(&[auth], Some(ct), body)).unwrap();
            assert_eq!(r.status, 200, "{auth} / {ct}: {}", r.text());
            let token = r.json()["token"].as_str().unwrap().to_owned();
            assert_eq!(
                token.rsplit_once('.').unwrap().0,
                SEED_MINTED,
                "{auth} / {ct}"
            );
        }
    }
}

#[test]
fn without_permission_the_claims_pass_unchanged() {
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[]);
    let session = session("alice");
    for (ct, body) in [
        (None, ""),
        (Some(FORM), ""),
        (Some(FORM), "other=1"),
        (Some("application/json"), "{}"),
    ] {
        let r = tg.request(&token_request(&[&format!("Bearer {session}")], ct, body));
        assert_eq!(r.status, 200, "{body}: {}", r.text());
        let token = r.json()["token"].as_str().unwrap().to_owned();
        assert_eq!(payload(&token), payload(&session));
    }
}

#[test]
fn chunked_body_and_expect_continue_are_honoured() {
    let (_up, tg) = seed_server();
    let session = sign_raw(SEED_SESSION_HEADER, SEED_SESSION_CLAIMS, SECRET);
    let (first, second) = SEED_BODY.split_at(100);
    let chunked = format!(
        "POST /api/v1/token HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {session}\r\nContent-Type: {FORM}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
        first.len(),
        second.len()
    );
    let r = tg.request(chunked.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body.len(), 485);

    // Expect: 100-continue: the interim answer must come before the body is sent.
    let mut conn = tg.connect();
    let head = format!(
        "POST /api/v1/token HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {session}\r\nContent-Type: {FORM}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        SEED_BODY.len()
    );
    use std::io::{Read, Write};
    conn.write_all(head.as_bytes()).unwrap();
    let mut interim = [0u8; 25];
    conn.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    let r = exchange(&mut conn, SEED_BODY.as_bytes()).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body.len(), 485);
}

/// Every row of the SPEC's error table that the token route can produce, on one connection.
#[test]
fn each_error_has_its_status_code_and_json_and_keeps_the_connection() {
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[]);
    let now = now();
    let good = session("bob");
    let bearer = format!("Bearer {good}");
    let expired = sign_raw(
        r#"{"alg":"HS256"}"#,
        &format!(r#"{{"exp":{},"user_id":"bob"}}"#, now - 10),
        SECRET,
    );
    let future = sign_raw(
        r#"{"alg":"HS256"}"#,
        &format!(
            r#"{{"exp":{},"nbf":{},"user_id":"bob"}}"#,
            now + 100,
            now + 50
        ),
        SECRET,
    );
    let forged = sign_raw(
        r#"{"alg":"HS256"}"#,
        &format!(r#"{{"exp":{},"user_id":"bob"}}"#, now + 100),
        "some-other-secret-some-other-secret!",
    );
    let minted_for = |permission: &str| {
        let body = format!(r#"{{"permission":{permission}}}"#);
        let r = tg.request(&token_request(&[&bearer], Some("application/json"), &body));
        assert_eq!(r.status, 200, "{}", r.text());
        format!("Bearer {}", r.json()["token"].as_str().unwrap())
    };
    let narrow = minted_for(r#"{"abilities":{"a1":{"Access":{"see":true}}}}"#);
    let perm = |p: &str| {
        format!(
            "permission={}",
            p.replace('{', "%7B")
                .replace('}', "%7D")
                .replace('"', "%22")
        )
    };

    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (token_request(&[], Some(FORM), ""), 401, "missing_token"),
        (
            token_request(&["Basic YTpi"], Some(FORM), ""),
            401,
            "missing_token",
        ),
        (
            token_request(&["Bearer not.a.jwt"], Some(FORM), ""),
            401,
            "invalid_token",
        ),
        (
            token_request(&[&format!("Bearer {forged}")], Some(FORM), ""),
            401,
            "invalid_token",
        ),
        (
            token_request(&[&format!("Bearer {expired}")], Some(FORM), ""),
            401,
            "token_expired",
        ),
        (
            token_request(&[&format!("Bearer {future}")], Some(FORM), ""),
            401,
            "token_not_yet_valid",
        ),
        (
            token_request(&[&bearer, &bearer], Some(FORM), ""),
            400,
            "invalid_request",
        ),
        (
            token_request(
                &[&format!("Token token=\"{good}\", token=\"{expired}\"")],
                Some(FORM),
                "",
            ),
            400,
            "invalid_request",
        ),
        (
            token_request(&[&bearer], Some(FORM), "permission=%7Bnope"),
            400,
            "invalid_request",
        ),
        (
            token_request(&[&bearer], Some("application/json"), "{\"permission\":"),
            400,
            "invalid_request",
        ),
        (
            token_request(&[&bearer], Some("text/plain"), "permission=%7B%7D"),
            415,
            "unsupported_media_type",
        ),
        (
            token_request(&[&bearer], None, "permission=%7B%7D"),
            415,
            "unsupported_media_type",
        ),
        (
            token_request(&[&bearer], Some(FORM), &perm(r#"["x"]"#)),
            422,
            "invalid_permission",
        ),
        (
            token_request(&[&bearer], Some(FORM), &perm(r#"{"exp":99999999999}"#)),
            422,
            "invalid_permission",
        ),
        (
            token_request(&[&bearer], Some(FORM), &perm(r#"{"user_id":"admin"}"#)),
            422,
            "invalid_permission",
        ),
        (
            token_request(&[&bearer], Some(FORM), &perm(r#"{"a":1,"a":2}"#)),
            422,
            "invalid_permission",
        ),
        (
            token_request(
                &[&bearer],
                Some(FORM),
                &perm(&format!("{}1{}", r#"{"a":"#.repeat(17), "}".repeat(17))),
            ),
            422,
            "invalid_permission",
        ),
        (
            token_request(
                &[&narrow],
                Some(FORM),
                &perm(r#"{"abilities":{"a1":{"Access":{"image_upload":true}}}}"#),
            ),
            403,
            "escalation",
        ),
        (
            b"GET /api/v1/token HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            405,
            "method_not_allowed",
        ),
        (
            b"PUT /api/v1/token HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\npermission="
                .to_vec(),
            405,
            "method_not_allowed",
        ),
    ];
    let mut conn = tg.connect();
    for (raw, status, code) in &cases {
        let r = exchange(&mut conn, raw).unwrap_or_else(|e| panic!("{code}: connection lost: {e}"));
        assert_eq!(r.status, *status, "{code}: {}", r.text());
        let body = r.json();
        assert_eq!(body["error"], *code, "{}", r.text());
        let message = body["message"].as_str().unwrap();
        assert!(!message.is_empty() && !message.contains(&good) && !message.contains("bob"));
        assert_eq!(body.as_object().unwrap().len(), 2);
        assert_eq!(
            r.header("Content-Type"),
            Some("application/json; charset=utf-8")
        );
        assert_eq!(r.header("Cache-Control"), Some("no-cache, no-store"));
        assert!(r.header("X-Request-Id").is_some());
        let challenge = r.header("WWW-Authenticate");
        match (*status, *code) {
            (401, "missing_token") => assert_eq!(
                challenge,
                Some(r#"Bearer realm="tokengate", error="invalid_request""#)
            ),
            (401, _) => assert_eq!(
                challenge,
                Some(r#"Bearer realm="tokengate", error="invalid_token""#)
            ),
            _ => assert_eq!(challenge, None),
        }
        if *status == 405 {
            assert_eq!(r.header("Allow"), Some("POST"));
        }
        assert_ne!(
            r.header("Connection"),
            Some("close"),
            "{code} closed the connection"
        );
    }
    // And the same connection still mints.
    let r = exchange(&mut conn, &token_request(&[&bearer], None, "")).unwrap();
    assert_eq!(r.status, 200);
    assert!(up.seen().is_empty());
}

#[test]
fn oversized_bodies_are_refused_by_length_and_while_reading() {
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[]);
    let bearer = format!("Bearer {}", session("carol"));
    let big = "x".repeat(16 * 1024 + 1);
    let r = tg.request(&token_request(&[&bearer], Some(FORM), &big));
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (413, Some("payload_too_large"))
    );

    let chunk = "y".repeat(4096);
    let mut raw = format!("POST /api/v1/token HTTP/1.1\r\nHost: a\r\nAuthorization: {bearer}\r\nContent-Type: {FORM}\r\nTransfer-Encoding: chunked\r\n\r\n");
    for _ in 0..5 {
        raw.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    raw.push_str("0\r\n\r\n");
    let r = tg.request(raw.as_bytes());
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (413, Some("payload_too_large"))
    );
    // Exactly at the limit is fine.
    let at_limit = format!("permission=%7B%7D&pad={}", "z".repeat(16 * 1024 - 22));
    assert_eq!(at_limit.len(), 16 * 1024);
    assert_eq!(
        tg.request(&token_request(&[&bearer], Some(FORM), &at_limit))
            .status,
        200
    );
}

#[test]
fn the_token_route_answers_while_the_upstream_is_down() {
    let tg = Tokengate::start(dead_upstream(), &[]);
    let r = tg.request(&token_request(
        &[&format!("Bearer {}", session("dave"))],
        None,
        "",
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = tg.request(b"GET /albums HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "upstream_unavailable");
}

#[test]
fn minted_tokens_verify_in_pyjwt() {
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[]);
    let session = session("erin");
    let body = format!(r#"{{"permission":{SEED_PERMISSION}}}"#);
    let r = tg.request(&token_request(
        &[&format!("Bearer {session}")],
        Some("application/json"),
        &body,
    ));
    assert_eq!(r.status, 200);
    let token = r.json()["token"].as_str().unwrap().to_owned();
    let script = "import json, sys, jwt\n\
                  claims = jwt.decode(sys.argv[1], sys.argv[2], algorithms=['HS256'])\n\
                  print(json.dumps(claims, separators=(',', ':')))";
    let out = std::process::Command::new("python3")
        .args(["-c", script, &token, SECRET])
        .output()
        .expect("python3 runs (bash .ci/setup installs PyJWT)");
    assert!(
        out.status.success(),
        "PyJWT refused the token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let claims = String::from_utf8(out.stdout).unwrap();
    assert_eq!(claims.trim(), payload(&token));
    assert!(
        claims.contains(r#""user_id":"erin","abilities":{"album_id""#),
        "{claims}"
    );
}

#[test]
fn a_token_issued_in_the_future_is_refused_wherever_it_is_verified() {
    let up = Upstream::start();
    let conf = conf(
        "iat",
        "tokengate:\n  routes:\n    - {name: private, path: /private, auth: required}\n",
    );
    let tg = Tokengate::start_with_args(up.addr, &[], &["-c", &conf]);
    let at = |iat: u64| {
        let claims = format!(r#"{{"exp":{},"iat":{iat},"user_id":"fut"}}"#, now() + 7200);
        sign_raw(r#"{"typ":"JWT","alg":"HS256"}"#, &claims, SECRET)
    };
    // A minute ahead: past the default leeway of 0 s, so it would outlive a sign-out.
    let future = at(now() + 60);
    let minted = tg.request(&token_request(&[&format!("Bearer {future}")], None, ""));
    assert_eq!(
        (
            minted.status,
            minted.json()["error"].as_str(),
            minted.json()["message"].as_str()
        ),
        (
            401,
            Some("invalid_token"),
            Some("The token's iat claim lies in the future.")
        )
    );
    let raw = format!("GET /private HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {future}\r\n\r\n");
    let forwarded = tg.request(raw.as_bytes());
    assert_eq!(
        (forwarded.status, forwarded.json()["error"].as_str()),
        (401, Some("invalid_token"))
    );
    assert!(up.seen().is_empty());
    // Issued now, it is served on both.
    let current = at(now());
    let minted = tg.request(&token_request(&[&format!("Bearer {current}")], None, ""));
    assert_eq!(minted.status, 200, "{}", minted.text());
    let raw =
        format!("GET /private HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {current}\r\n\r\n");
    assert_eq!(tg.request(raw.as_bytes()).status, 200);
    std::fs::remove_file(conf).unwrap();
}

#[test]
fn a_permission_that_would_mint_a_token_too_long_to_read_is_refused() {
    let up = Upstream::start();
    let conf = conf("long", "tokengate:\n  max_token_bytes: 600\n");
    let tg = Tokengate::start_with_args(up.addr, &[], &["-c", &conf]);
    let session = session("long");
    let mint = |filler: usize| {
        let body = format!(r#"{{"permission":{{"note":"{}"}}}}"#, "x".repeat(filler));
        tg.request(&token_request(
            &[&format!("Bearer {session}")],
            Some("application/json"),
            &body,
        ))
    };
    // The longest permission that still mints (a binary search, well within the mint limit's
    // burst), then one byte more.
    let (mut fits, mut too_long) = (0, 400);
    assert_eq!((mint(fits).status, mint(too_long).status), (200, 422));
    while too_long - fits > 1 {
        let middle = (fits + too_long) / 2;
        match mint(middle).status {
            200 => fits = middle,
            _ => too_long = middle,
        }
    }
    let token = mint(fits).json()["token"].as_str().unwrap().to_owned();
    assert!(token.len() <= 600 && token.len() > 596, "{}", token.len());
    let raw = format!("GET /x HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {token}\r\n\r\n");
    let r = tg.request(raw.as_bytes());
    assert_eq!((r.status, r.header("X-token")), (200, Some(token.as_str())));
    let refused = mint(fits + 1);
    assert_eq!(
        (refused.status, refused.json()["error"].as_str()),
        (422, Some("invalid_permission"))
    );
    std::fs::remove_file(conf).unwrap();
}
