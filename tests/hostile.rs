//! Hostile input against the real server: every case gets its exact status and code, nothing
//! gets a 5xx, and the process keeps serving.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use common::*;
use jsonwebtoken::Algorithm::{HS256, HS384, HS512};

const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";
const HS: &str = r#"{"typ":"JWT","alg":"HS256"}"#;

struct Case {
    name: String,
    raw: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

fn claims(now: u64) -> String {
    format!(r#"{{"exp":{},"iat":{now},"user_id":"victim"}}"#, now + 600)
}

fn form(permission: &str) -> String {
    serde_urlencoded::to_string([("permission", permission)]).unwrap()
}

/// Token cases: each is sent with an empty body.
fn token_cases(now: u64) -> Vec<(String, String, u16, &'static str)> {
    let c = claims(now);
    let good = sign_raw(HS, &c, SECRET);
    let (message, sig) = good.rsplit_once('.').unwrap();
    let mut cases: Vec<(String, String, u16, &'static str)> = vec![
        (
            "forged: other secret".into(),
            sign_raw(HS, &c, "attacker-secret-attacker-secret-000"),
            401,
            "invalid_token",
        ),
        (
            "forged: empty secret".into(),
            sign_raw(HS, &c, ""),
            401,
            "invalid_token",
        ),
        (
            "forged: payload swapped".into(),
            format!("{}.{}.{sig}", b64(HS), b64(&c.replace("victim", "admin"))),
            401,
            "invalid_token",
        ),
        (
            "forged: signature flipped".into(),
            format!("{message}.{}", sig.chars().rev().collect::<String>()),
            401,
            "invalid_token",
        ),
        (
            "forged: signature of another token".into(),
            format!(
                "{message}.{}",
                sign_raw(HS, "{}", SECRET).rsplit('.').next().unwrap()
            ),
            401,
            "invalid_token",
        ),
        (
            "alg none, no signature".into(),
            format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(&c)),
            401,
            "invalid_token",
        ),
        (
            "alg None".into(),
            format!("{}.{}.", b64(r#"{"alg":"None"}"#), b64(&c)),
            401,
            "invalid_token",
        ),
        (
            "alg NONE with signature".into(),
            format!("{}.{}.{sig}", b64(r#"{"alg":"NONE"}"#), b64(&c)),
            401,
            "invalid_token",
        ),
        (
            "alg none, two segments".into(),
            format!("{}.{}", b64(r#"{"alg":"none"}"#), b64(&c)),
            401,
            "invalid_token",
        ),
        (
            "HS384 same secret".into(),
            sign_with(r#"{"alg":"HS384"}"#, &c, SECRET, HS384),
            401,
            "invalid_token",
        ),
        (
            "HS512 same secret".into(),
            sign_with(r#"{"alg":"HS512"}"#, &c, SECRET, HS512),
            401,
            "invalid_token",
        ),
        (
            "RS256 header, HMAC signature".into(),
            sign_with(r#"{"alg":"RS256"}"#, &c, SECRET, HS256),
            401,
            "invalid_token",
        ),
        (
            "ES256 header, HMAC signature".into(),
            sign_with(r#"{"alg":"ES256"}"#, &c, SECRET, HS256),
            401,
            "invalid_token",
        ),
        (
            "alg missing".into(),
            sign_with(r#"{"typ":"JWT"}"#, &c, SECRET, HS256),
            401,
            "invalid_token",
        ),
        (
            "alg not a string".into(),
            sign_with(r#"{"alg":256}"#, &c, SECRET, HS256),
            401,
            "invalid_token",
        ),
        (
            "wrong kid".into(),
            sign_raw(r#"{"alg":"HS256","kid":"old"}"#, &c, SECRET),
            401,
            "invalid_token",
        ),
        (
            "kid path traversal".into(),
            sign_raw(r#"{"alg":"HS256","kid":"../../../../dev/null"}"#, &c, ""),
            401,
            "invalid_token",
        ),
        (
            "kid injection".into(),
            sign_raw(r#"{"alg":"HS256","kid":"x' OR '1'='1"}"#, &c, SECRET),
            401,
            "invalid_token",
        ),
        (
            "embedded jwk".into(),
            sign_raw(r#"{"alg":"HS256","jwk":{"kty":"oct","k":"YQ"}}"#, &c, "a"),
            401,
            "invalid_token",
        ),
        (
            "jku".into(),
            sign_raw(
                r#"{"alg":"HS256","jku":"http://127.0.0.1:1/keys"}"#,
                &c,
                "k",
            ),
            401,
            "invalid_token",
        ),
        (
            "x5u".into(),
            sign_raw(
                r#"{"alg":"HS256","x5u":"http://127.0.0.1:1/cert"}"#,
                &c,
                "k",
            ),
            401,
            "invalid_token",
        ),
        (
            "x5c".into(),
            sign_raw(r#"{"alg":"HS256","x5c":["MIIB"]}"#, &c, "k"),
            401,
            "invalid_token",
        ),
        (
            "crit header".into(),
            sign_raw(r#"{"alg":"HS256","crit":["b64"],"b64":false}"#, &c, SECRET),
            401,
            "invalid_token",
        ),
        (
            "exp missing".into(),
            sign_raw(HS, r#"{"user_id":"victim"}"#, SECRET),
            401,
            "invalid_token",
        ),
        (
            "exp a string".into(),
            sign_raw(
                HS,
                &format!(r#"{{"exp":"{}","user_id":"victim"}}"#, now + 600),
                SECRET,
            ),
            401,
            "invalid_token",
        ),
        (
            "exp null".into(),
            sign_raw(HS, r#"{"exp":null,"user_id":"victim"}"#, SECRET),
            401,
            "invalid_token",
        ),
        (
            "exp passed".into(),
            sign_raw(
                HS,
                &format!(r#"{{"exp":{},"user_id":"victim"}}"#, now - 1),
                SECRET,
            ),
            401,
            "token_expired",
        ),
        (
            "exp zero".into(),
            sign_raw(HS, r#"{"exp":0,"user_id":"victim"}"#, SECRET),
            401,
            "token_expired",
        ),
        (
            "exp negative".into(),
            sign_raw(HS, r#"{"exp":-1,"user_id":"victim"}"#, SECRET),
            401,
            "token_expired",
        ),
        (
            "nbf future".into(),
            sign_raw(
                HS,
                &format!(
                    r#"{{"exp":{},"nbf":{},"user_id":"victim"}}"#,
                    now + 600,
                    now + 300
                ),
                SECRET,
            ),
            401,
            "token_not_yet_valid",
        ),
        (
            "nbf a string".into(),
            sign_raw(
                HS,
                &format!(r#"{{"exp":{},"nbf":"soon","user_id":"victim"}}"#, now + 600),
                SECRET,
            ),
            401,
            "invalid_token",
        ),
        (
            "subject missing".into(),
            sign_raw(HS, &format!(r#"{{"exp":{}}}"#, now + 600), SECRET),
            401,
            "invalid_token",
        ),
        (
            "subject empty".into(),
            sign_raw(
                HS,
                &format!(r#"{{"exp":{},"user_id":""}}"#, now + 600),
                SECRET,
            ),
            401,
            "invalid_token",
        ),
        (
            "subject a number".into(),
            sign_raw(
                HS,
                &format!(r#"{{"exp":{},"user_id":1}}"#, now + 600),
                SECRET,
            ),
            401,
            "invalid_token",
        ),
        (
            "subject null".into(),
            sign_raw(
                HS,
                &format!(r#"{{"exp":{},"user_id":null}}"#, now + 600),
                SECRET,
            ),
            401,
            "invalid_token",
        ),
        (
            "subject an array".into(),
            sign_raw(
                HS,
                &format!(r#"{{"exp":{},"user_id":["a"]}}"#, now + 600),
                SECRET,
            ),
            401,
            "invalid_token",
        ),
        (
            "duplicate exp claim".into(),
            sign_raw(
                HS,
                &format!(r#"{{"exp":1,"exp":{},"user_id":"victim"}}"#, now + 600),
                SECRET,
            ),
            401,
            "invalid_token",
        ),
        (
            "duplicate subject claim".into(),
            sign_raw(
                HS,
                &format!(
                    r#"{{"exp":{},"user_id":"victim","user_id":"admin"}}"#,
                    now + 600
                ),
                SECRET,
            ),
            401,
            "invalid_token",
        ),
        (
            "claims an array".into(),
            sign_raw(HS, "[1]", SECRET),
            401,
            "invalid_token",
        ),
        (
            "claims a string".into(),
            sign_raw(HS, "\"x\"", SECRET),
            401,
            "invalid_token",
        ),
        (
            "claims not JSON".into(),
            sign_raw(HS, "{exp:1}", SECRET),
            401,
            "invalid_token",
        ),
        (
            "header not JSON".into(),
            format!("{}.{}.{sig}", b64("{alg:HS256}"), b64(&c)),
            401,
            "invalid_token",
        ),
        (
            "claims invalid UTF-8".into(),
            {
                let m = format!(
                    "{}.{}",
                    b64(HS),
                    URL_SAFE_NO_PAD.encode(b"{\"exp\":9999999999,\"user_id\":\"\xff\"}")
                );
                let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
                format!(
                    "{m}.{}",
                    jsonwebtoken::crypto::sign(m.as_bytes(), &key, HS256).unwrap()
                )
            },
            401,
            "invalid_token",
        ),
        (
            "standard base64 with padding".into(),
            format!("{}.{}=.{sig}", STANDARD.encode(HS), STANDARD.encode(&c)),
            401,
            "invalid_token",
        ),
        (
            "standard base64 alphabet".into(),
            sign_with(HS, &c, SECRET, HS256)
                .replace('-', "+")
                .replace('_', "/")
                + "+/",
            401,
            "invalid_token",
        ),
        (
            "padded signature".into(),
            format!("{good}="),
            401,
            "invalid_token",
        ),
        (
            "four segments".into(),
            format!("{good}.x"),
            401,
            "invalid_token",
        ),
        (
            "empty header segment".into(),
            format!(".{}.{sig}", b64(&c)),
            401,
            "invalid_token",
        ),
        (
            "empty payload segment".into(),
            format!("{}..{sig}", b64(HS)),
            401,
            "invalid_token",
        ),
        ("only dots".into(), "..".into(), 401, "invalid_token"),
        ("one word".into(), "token".into(), 401, "invalid_token"),
        (
            "unicode".into(),
            "eyJ\u{00e9}.x.y".into(),
            401,
            "invalid_token",
        ),
        (
            "huge claim".into(),
            sign_raw(
                HS,
                &format!(
                    r#"{{"exp":{},"user_id":"victim","pad":"{}"}}"#,
                    now + 600,
                    "p".repeat(6000)
                ),
                "wrong-secret-wrong-secret-wrong-00",
            ),
            401,
            "invalid_token",
        ),
    ];
    // Truncated tokens: cut at a spread of lengths.
    for cut in [
        1,
        10,
        36,
        37,
        38,
        60,
        good.len() / 2,
        good.len() - 44,
        good.len() - 43,
        good.len() - 1,
    ] {
        cases.push((
            format!("truncated at {cut}"),
            good[..cut].to_owned(),
            401,
            "invalid_token",
        ));
    }
    cases
}

/// Permission cases, sent with a valid session token.
fn permission_cases() -> Vec<(String, &'static str, String, u16, &'static str)> {
    let nested = |n: usize| format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
    let many: Vec<String> = (0..513).map(|i| format!("\"k{i}\":1")).collect();
    let mut cases: Vec<(String, &'static str, String, u16, &'static str)> = Vec::new();
    for claim in ["exp", "iat", "nbf", "iss", "aud", "sub", "jti", "user_id"] {
        cases.push((
            format!("reserved {claim}"),
            FORM,
            form(&format!(r#"{{"{claim}":1}}"#)),
            422,
            "invalid_permission",
        ));
    }
    cases.extend([
        (
            "reserved claim beside others".into(),
            JSON,
            r#"{"permission":{"abilities":{},"exp":9999999999}}"#.into(),
            422,
            "invalid_permission",
        ),
        (
            "duplicate top-level key".into(),
            FORM,
            form(r#"{"Id":"a","Id":"b"}"#),
            422,
            "invalid_permission",
        ),
        (
            "duplicate key at depth 2".into(),
            FORM,
            form(r#"{"abilities":{"a":1,"a":2}}"#),
            422,
            "invalid_permission",
        ),
        (
            "duplicate key at depth 4".into(),
            JSON,
            r#"{"permission":{"abilities":{"a":{"Access":{"see":true,"see":false}}}}}"#.into(),
            422,
            "invalid_permission",
        ),
        (
            "duplicate key inside array".into(),
            FORM,
            form(r#"{"x":[{"k":1,"k":2}]}"#),
            422,
            "invalid_permission",
        ),
        (
            "duplicate key via escape".into(),
            FORM,
            form(r#"{"Id":"a","\u0049d":"b"}"#),
            422,
            "invalid_permission",
        ),
        (
            "depth 17".into(),
            FORM,
            form(&nested(17)),
            422,
            "invalid_permission",
        ),
        (
            "depth 100".into(),
            FORM,
            form(&nested(100)),
            422,
            "invalid_permission",
        ),
        (
            "depth 2000 arrays".into(),
            JSON,
            format!(
                r#"{{"permission":{{"a":{}{}}}}}"#,
                "[".repeat(2000),
                "]".repeat(2000)
            ),
            422,
            "invalid_permission",
        ),
        (
            "513 keys".into(),
            JSON,
            format!(r#"{{"permission":{{{}}}}}"#, many.join(",")),
            422,
            "invalid_permission",
        ),
        (
            "not an object: array".into(),
            FORM,
            form("[1,2]"),
            422,
            "invalid_permission",
        ),
        (
            "not an object: string".into(),
            FORM,
            form("\"admin\""),
            422,
            "invalid_permission",
        ),
        (
            "not an object: number".into(),
            FORM,
            form("42"),
            422,
            "invalid_permission",
        ),
        (
            "not an object: true".into(),
            FORM,
            form("true"),
            422,
            "invalid_permission",
        ),
        (
            "not an object: null text".into(),
            FORM,
            form("null"),
            422,
            "invalid_permission",
        ),
        (
            "JSON string holding an array".into(),
            JSON,
            r#"{"permission":"[1]"}"#.into(),
            422,
            "invalid_permission",
        ),
        (
            "huge body".into(),
            FORM,
            form(&format!(r#"{{"pad":"{}"}}"#, "x".repeat(20_000))),
            413,
            "payload_too_large",
        ),
        (
            "malformed: unclosed".into(),
            FORM,
            form(r#"{"a":1"#),
            400,
            "invalid_request",
        ),
        (
            "malformed: trailing comma".into(),
            FORM,
            form(r#"{"a":1,}"#),
            400,
            "invalid_request",
        ),
        (
            "malformed: single quotes".into(),
            FORM,
            form("{'a':1}"),
            400,
            "invalid_request",
        ),
        (
            "malformed: bare word".into(),
            FORM,
            form("admin"),
            400,
            "invalid_request",
        ),
        (
            "malformed: trailing garbage".into(),
            FORM,
            form(r#"{"a":1}x"#),
            400,
            "invalid_request",
        ),
        (
            "malformed: two objects".into(),
            FORM,
            form(r#"{}{}"#),
            400,
            "invalid_request",
        ),
        (
            "malformed: NaN".into(),
            FORM,
            form(r#"{"a":NaN}"#),
            400,
            "invalid_request",
        ),
        (
            "malformed: comment".into(),
            FORM,
            form(r#"{"a":1/*x*/}"#),
            400,
            "invalid_request",
        ),
        (
            "malformed: lone surrogate".into(),
            FORM,
            form(r#"{"a":"\ud800"}"#),
            400,
            "invalid_request",
        ),
        (
            "malformed: control char".into(),
            FORM,
            form("{\"a\":\"\u{1}\"}"),
            400,
            "invalid_request",
        ),
        (
            "empty permission".into(),
            FORM,
            "permission=".into(),
            400,
            "invalid_request",
        ),
        (
            "permission twice".into(),
            FORM,
            format!("{}&{}", form("{}"), form("{}")),
            400,
            "invalid_request",
        ),
        (
            "bad percent-encoding".into(),
            FORM,
            "permission=%7B%ZZ%7D".into(),
            400,
            "invalid_request",
        ),
        (
            "invalid UTF-8 in form".into(),
            FORM,
            "permission=%7B%22a%22%3A%22%FF%22%7D".into(),
            400,
            "invalid_request",
        ),
        (
            "JSON body an array".into(),
            JSON,
            r#"[{"permission":{}}]"#.into(),
            400,
            "invalid_request",
        ),
        (
            "JSON body a string".into(),
            JSON,
            r#""permission""#.into(),
            400,
            "invalid_request",
        ),
        (
            "JSON body truncated".into(),
            JSON,
            r#"{"permission":{"a":"#.into(),
            400,
            "invalid_request",
        ),
        (
            "JSON body permission twice".into(),
            JSON,
            r#"{"permission":{},"permission":{"a":1}}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "JSON permission string not JSON".into(),
            JSON,
            r#"{"permission":"{nope"}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "JSON body in a form".into(),
            FORM,
            r#"{"permission":{}}"#.into(),
            200,
            "",
        ),
        (
            "text/plain".into(),
            "text/plain",
            form("{}"),
            415,
            "unsupported_media_type",
        ),
        (
            "multipart".into(),
            "multipart/form-data; boundary=x",
            "--x\r\n".into(),
            415,
            "unsupported_media_type",
        ),
        (
            "xml".into(),
            "application/xml",
            "<permission/>".into(),
            415,
            "unsupported_media_type",
        ),
        (
            "json lookalike".into(),
            "application/jsonp",
            "{}".into(),
            415,
            "unsupported_media_type",
        ),
        (
            "form lookalike".into(),
            "application/x-www-form-urlencodedx",
            form("{}"),
            415,
            "unsupported_media_type",
        ),
        (
            "empty content type".into(),
            "",
            form("{}"),
            415,
            "unsupported_media_type",
        ),
    ]);
    cases
}

fn build_cases() -> Vec<Case> {
    let now = now();
    let bearer = format!("Bearer {}", sign_raw(HS, &claims(now), SECRET));
    let mut cases = Vec::new();
    for (name, token, status, code) in token_cases(now) {
        cases.push(Case {
            name,
            raw: token_request(&[&format!("Bearer {token}")], None, ""),
            status,
            code,
        });
    }
    for (name, ct, body, status, code) in permission_cases() {
        let raw = if ct.is_empty() {
            format!("POST /api/v1/token HTTP/1.1\r\nHost: a\r\nAuthorization: {bearer}\r\nContent-Type: \r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
        } else {
            token_request(&[&bearer], Some(ct), &body)
        };
        cases.push(Case {
            name,
            raw,
            status,
            code,
        });
    }
    let headers: [(&str, Vec<&str>, u16, &str); 8] = [
        ("no Authorization", vec![], 401, "missing_token"),
        (
            "Basic scheme",
            vec!["Basic dmljdGltOnB3"],
            401,
            "missing_token",
        ),
        (
            "Digest scheme",
            vec!["Digest username=\"victim\""],
            401,
            "missing_token",
        ),
        ("scheme only", vec!["Bearer"], 401, "missing_token"),
        (
            "Token without token",
            vec!["Token nonce=\"1\""],
            401,
            "missing_token",
        ),
        (
            "two headers",
            vec![&bearer, &bearer],
            400,
            "invalid_request",
        ),
        (
            "two bearer tokens",
            vec!["Bearer a.b.c d.e.f"],
            400,
            "invalid_request",
        ),
        (
            "two Rails tokens",
            vec!["Token token=\"a.b.c\", token=\"d.e.f\""],
            400,
            "invalid_request",
        ),
    ];
    for (name, auth, status, code) in headers {
        cases.push(Case {
            name: name.into(),
            raw: token_request(&auth, None, ""),
            status,
            code,
        });
    }
    for method in ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"] {
        let raw = format!("{method} /api/v1/token HTTP/1.1\r\nHost: a\r\nAuthorization: {bearer}\r\nContent-Length: 0\r\n\r\n");
        cases.push(Case {
            name: format!("method {method}"),
            raw: raw.into_bytes(),
            status: 405,
            code: "method_not_allowed",
        });
    }
    cases
}

#[test]
fn a_hundred_hostile_requests_each_get_their_exact_answer() {
    let up = Upstream::start();
    let mut tg = Tokengate::start(up.addr, &[]);
    let cases = build_cases();
    assert!(cases.len() >= 100, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let r = match try_request(tg.addr, &case.raw) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: no answer ({e})", case.name));
                continue;
            }
        };
        let code = if r.status == 200 {
            String::new()
        } else {
            r.json()["error"].as_str().unwrap_or("?").to_owned()
        };
        if r.status != case.status || code != case.code {
            failures.push(format!(
                "{}: got {} {code}, want {} {}",
                case.name, r.status, case.status, case.code
            ));
        }
        if r.status != 200 && (r.text().contains("victim") || r.text().contains(SECRET)) {
            failures.push(format!(
                "{}: the error echoes a claim or the secret",
                case.name
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(up.seen().is_empty(), "the token route reached the upstream");
    assert!(tg.alive());
    let ok = tg.request(&token_request(
        &[&format!("Bearer {}", session("after"))],
        None,
        "",
    ));
    assert_eq!(ok.status, 200);
}

/// Bytes no HTTP client would send: the proxy may refuse or close, never answer 5xx or die.
#[test]
fn raw_socket_abuse_never_yields_a_5xx_nor_ends_the_process() {
    let up = Upstream::start();
    let mut tg = Tokengate::start(up.addr, &[]);
    let bearer = format!("Bearer {}", session("raw"));
    let abuse: Vec<(&str, Vec<u8>)> = vec![
        ("garbage request line", b"\x00\x01\x02 garbage\r\n\r\n".to_vec()),
        ("no version", b"GET /\r\n\r\n".to_vec()),
        ("bad version", b"GET / HTTP/9.9\r\nHost: a\r\n\r\n".to_vec()),
        ("space in path", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("header without colon", b"GET / HTTP/1.1\r\nHost a\r\n\r\n".to_vec()),
        ("header name with space", b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n".to_vec()),
        ("conflicting Content-Length", format!("POST /api/v1/token HTTP/1.1\r\nHost: a\r\nAuthorization: {bearer}\r\nContent-Length: 5\r\nContent-Length: 50\r\n\r\nhello").into_bytes()),
        ("Content-Length not a number", b"POST /api/v1/token HTTP/1.1\r\nHost: a\r\nContent-Length: five\r\n\r\nhello".to_vec()),
        ("negative Content-Length", b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n".to_vec()),
        ("CL and TE together", format!("POST /api/v1/token HTTP/1.1\r\nHost: a\r\nAuthorization: {bearer}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").into_bytes()),
        ("bad chunk size", format!("POST /api/v1/token HTTP/1.1\r\nHost: a\r\nAuthorization: {bearer}\r\nContent-Type: {FORM}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n").into_bytes()),
        ("huge chunk size", format!("POST /api/v1/token HTTP/1.1\r\nHost: a\r\nAuthorization: {bearer}\r\nContent-Type: {FORM}\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nabc").into_bytes()),
        ("bad chunk to upstream", b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n".to_vec()),
        ("huge header", format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "h".repeat(200_000)).into_bytes()),
        ("many headers", format!("GET / HTTP/1.1\r\nHost: a\r\n{}\r\n", "X-H: v\r\n".repeat(5000)).into_bytes()),
        ("huge Authorization", format!("POST /api/v1/token HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\n\r\n", "a".repeat(100_000)).into_bytes()),
        ("truncated token body", format!("POST /api/v1/token HTTP/1.1\r\nHost: a\r\nAuthorization: {bearer}\r\nContent-Type: {FORM}\r\nContent-Length: 100\r\n\r\npermission=").into_bytes()),
        ("truncated upstream body", b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc".to_vec()),
        ("truncated headers", b"GET / HTTP/1.1\r\nHost: a\r\nX-Half".to_vec()),
        ("bare LF", b"GET / HTTP/1.1\nHost: a\n\n".to_vec()),
        ("obsolete line folding", b"GET / HTTP/1.1\r\nHost: a\r\nX-Fold: a\r\n  b\r\n\r\n".to_vec()),
        ("NUL in header value", b"GET / HTTP/1.1\r\nHost: a\r\nX-N: a\x00b\r\n\r\n".to_vec()),
        ("absolute-form URI", b"GET http://evil.example/ HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("CONNECT", b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n".to_vec()),
        ("h2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
        ("TLS hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec()),
    ];
    let mut fives = Vec::new();
    for (name, bytes) in &abuse {
        let mut conn = tg.connect();
        conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = conn.write_all(bytes);
        // Half-close: a truncated request is all the client will ever send.
        let _ = conn.shutdown(std::net::Shutdown::Write);
        let mut answer = Vec::new();
        let _ = conn.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        if text.starts_with("HTTP/1.1 5") || text.starts_with("HTTP/1.0 5") {
            fives.push(format!(
                "{name}: {}",
                text.lines().next().unwrap_or_default()
            ));
        }
        assert!(tg.alive(), "{name} ended the process");
    }
    assert!(fives.is_empty(), "5xx answers:\n{}", fives.join("\n"));
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) && !tg.alive() {}
    assert!(tg.alive());
    let ok = tg.request(&token_request(&[&bearer], None, ""));
    assert_eq!(ok.status, 200);
}

#[test]
fn minting_is_rate_limited_per_subject() {
    let up = Upstream::start();
    let conf = std::env::temp_dir().join(format!("tokengate-rate-{}.yaml", free_port()));
    std::fs::write(
        &conf,
        "tokengate:\n  rate_limit: {mints: 1, per: 10s, burst: 3}\n",
    )
    .unwrap();
    let tg = Tokengate::start_with_args(up.addr, &[], &["-c", conf.to_str().unwrap()]);
    let greedy = format!("Bearer {}", session("greedy"));
    let statuses: Vec<u16> = (0..5)
        .map(|_| tg.request(&token_request(&[&greedy], None, "")).status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let r = tg.request(&token_request(&[&greedy], None, ""));
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (429, Some("rate_limited"))
    );
    assert_eq!(r.header("Retry-After"), Some("10"));
    // Someone else is unaffected, and refused requests never count against anyone.
    let other = format!("Bearer {}", session("patient"));
    assert_eq!(tg.request(&token_request(&[&other], None, "")).status, 200);
    assert_eq!(
        tg.metric(r#"tokengate_token_rejections_total{reason="rate_limited"}"#),
        3.0
    );
    std::fs::remove_file(conf).unwrap();
}

/// A page that mints a token per album for 100 albums at once is served by the default limit;
/// a flood beyond 10 a second is refused.
#[test]
fn a_page_burst_is_served_and_a_sustained_flood_is_limited() {
    let up = Upstream::start();
    let mut tg = Tokengate::start(up.addr, &[]);
    let page = format!("Bearer {}", session("page"));
    let mut conn = tg.connect();
    for album in 0..100 {
        let body = format!(r#"{{"permission":{{"Id":"album-{album}"}}}}"#);
        let r = exchange(
            &mut conn,
            &token_request(&[&page], Some("application/json"), &body),
        )
        .unwrap();
        assert_eq!(r.status, 200, "mint {album}: {}", r.text());
    }
    let start = Instant::now();
    let mut admitted = 0;
    let mut refused = 0;
    for _ in 0..200 {
        let r = exchange(&mut conn, &token_request(&[&page], None, "")).unwrap();
        match r.status {
            200 => admitted += 1,
            429 => {
                refused += 1;
                assert_eq!(r.header("Retry-After"), Some("1"));
            }
            other => panic!("status {other}"),
        }
    }
    // 10 a second at most, plus one for the token that was due at the start.
    let allowed = 1 + (start.elapsed().as_secs_f64() * 10.0).ceil() as usize;
    assert!(
        admitted <= allowed,
        "{admitted} admitted in {:?}",
        start.elapsed()
    );
    assert_eq!(admitted + refused, 200);
    assert!(tg.alive());
}

/// Kubernetes rotates a mounted Secret by rewriting the file: no restart, old tokens still verify.
#[test]
fn rotating_the_secret_file_takes_effect_without_a_restart() {
    let up = Upstream::start();
    let dir = std::env::temp_dir().join(format!("tokengate-keys-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("secrets");
    let old_secret = "old-secret-old-secret-old-secret-0000";
    let new_secret = "new-secret-new-secret-new-secret-1111";
    let newest = "newest-secret-newest-secret-newest-22";
    std::fs::write(&file, format!("{new_secret}\n{old_secret}\n")).unwrap();
    let file_arg = file.to_str().unwrap();
    let tg = Tokengate::start(
        up.addr,
        &[
            ("TOKENGATE_SECRET", ""),
            ("TOKENGATE_SECRET_FILE", file_arg),
        ],
    );
    let now = now();
    let claims = format!(r#"{{"exp":{},"iat":{now},"user_id":"rot"}}"#, now + 600);
    let signed_by = |token: &str, secret: &str| {
        let (message, sig) = token.rsplit_once('.').unwrap();
        let key = jsonwebtoken::DecodingKey::from_secret(secret.as_bytes());
        jsonwebtoken::crypto::verify(sig, message.as_bytes(), &key, HS256).unwrap()
    };
    let mint = |session: &str| {
        let r = tg.request(&token_request(&[&format!("Bearer {session}")], None, ""));
        (r.status, r.json()["token"].as_str().map(str::to_owned))
    };
    // A token from before the rotation still verifies; minted tokens are signed by the first key.
    let (status, minted) = mint(&sign_raw(HS, &claims, old_secret));
    assert_eq!(status, 200);
    assert!(signed_by(&minted.unwrap(), new_secret));

    std::fs::write(&file, format!("{newest}\n{new_secret}\n")).unwrap();
    let start = Instant::now();
    loop {
        let (status, minted) = mint(&sign_raw(HS, &claims, new_secret));
        assert_eq!(status, 200);
        if signed_by(&minted.unwrap(), newest) {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the rotated file was never picked up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The retired key no longer verifies.
    assert_eq!(mint(&sign_raw(HS, &claims, old_secret)).0, 401);

    // A broken file is refused: the current keys stay, and SIGHUP forces a re-read.
    std::fs::write(&file, "too-short\n").unwrap();
    tg.signal("-HUP");
    let start = Instant::now();
    while tg.metric(r#"tokengate_secret_reloads_total{result="error"}"#) < 1.0 {
        assert!(start.elapsed() < DEADLINE);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(mint(&sign_raw(HS, &claims, newest)).0, 200);
    std::fs::remove_dir_all(dir).unwrap();
}
