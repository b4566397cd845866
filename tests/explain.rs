//! `tokengate explain` says what the running proxy does: a table of requests goes through the
//! proxy, serving the shipped `conf/image-app.yaml`, and through `explain --json` on the same
//! file, and the verdicts, statuses, error bodies and forwarded requests must agree.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

const CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/image-app.yaml");
const FORM: &str = "Content-Type: application/x-www-form-urlencoded";
const JSON: &str = "Content-Type: application/json";

/// The secrets file the shipped configuration names, stood in for by one holding [`SECRET`].
fn secrets() -> String {
    conf("secrets", &format!("{SECRET}\n"))
}

/// `tokengate explain --json` with the proxy's environment.
fn explain(upstream: std::net::SocketAddr, secrets: &str, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["-c", CONF, "explain", "--json"])
        .args(args)
        .env_clear()
        .env("TOKENGATE_SECRET_FILE", secrets)
        .env("TOKENGATE_UPSTREAM", upstream.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The raw HTTP/1.1 request for one row.
fn raw(method: &str, target: &str, headers: &[String], body: &str) -> Vec<u8> {
    let mut r = format!("{method} {target} HTTP/1.1\r\nHost: images.example\r\n");
    for h in headers {
        r.push_str(&format!("{h}\r\n"));
    }
    r.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    r.into_bytes()
}

#[test]
fn explain_and_the_proxy_give_every_request_the_same_verdict() {
    let app = Upstream::start();
    let secrets = secrets();
    let tg = Tokengate::start_with_args(
        app.addr,
        &[("TOKENGATE_SECRET_FILE", &secrets)],
        &["-c", CONF],
    );
    let mint = |abilities: &str| {
        let body = format!(r#"{{"permission":{{"abilities":{abilities},"Id":"a1"}}}}"#);
        let r = tg.request(&token_request(
            &[&format!("Bearer {}", session("alice"))],
            Some("application/json"),
            &body,
        ));
        assert_eq!(r.status, 200, "{}", r.text());
        format!(
            "Authorization: Bearer {}",
            r.json()["token"].as_str().unwrap()
        )
    };
    let viewer = mint(r#"{"a1":{"Access":{"see":true,"image_list":true}}}"#);
    let uploader = mint(r#"{"a1":{"Access":{"image_upload":true}}}"#);
    let signed_in = format!("Authorization: Bearer {}", session("alice"));
    let forged = "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJ1c2VyX2lkIjoiYSJ9.c2ln".to_owned();
    let permission = r#"{"permission":{"abilities":{"a1":{"Access":{"see":true}}}}}"#;
    let none: Vec<String> = Vec::new();
    let with = |h: &[&String]| h.iter().map(|s| (*s).clone()).collect::<Vec<String>>();
    let form = FORM.to_owned();
    let json = JSON.to_owned();
    let override_header = "X-HTTP-Method-Override: DELETE".to_owned();
    // (method, target, headers, body, what the proxy does: the status, or 0 when it forwards)
    let table: Vec<(&str, &str, Vec<String>, &str, u16)> = vec![
        ("GET", "/albums/a1", none.clone(), "", 401),
        ("GET", "/albums/a1", with(&[&viewer]), "", 0),
        ("GET", "/albums/a2/images", with(&[&viewer]), "", 403),
        (
            "GET",
            "/ALBUMS/a1/Images.json?page=2",
            with(&[&viewer]),
            "",
            0,
        ),
        ("GET", "/albums/a1/x/../images", with(&[&viewer]), "", 0),
        ("DELETE", "/albums/a1/images/7", with(&[&viewer]), "", 403),
        (
            "POST",
            "/albums/a1/images",
            with(&[&uploader, &form]),
            "t=1",
            0,
        ),
        (
            "POST",
            "/albums/a1/images",
            with(&[&uploader, &form]),
            "t=1&_method=DELETE",
            400,
        ),
        (
            "POST",
            "/albums/a1/images",
            with(&[&uploader, &override_header]),
            "",
            0,
        ),
        ("GET", "/albums/a1/fullscreen", with(&[&viewer]), "", 0),
        ("GET", "/albums", with(&[&signed_in]), "", 0),
        ("GET", "/albums", none.clone(), "", 401),
        ("GET", "/albums/a1", with(&[&forged]), "", 401),
        ("GET", "/albums/a1;x=1", with(&[&viewer]), "", 400),
        ("GET", "/elsewhere/%7Euser", none.clone(), "", 0),
        (
            "POST",
            "/api/v1/token",
            with(&[&signed_in, &json]),
            permission,
            200,
        ),
        ("GET", "/api/v1/token", with(&[&signed_in]), "", 405),
        ("POST", "/api/v1/token", with(&[&json]), permission, 401),
    ];
    let mut agreed = 0;
    for (method, target, headers, body, want) in &table {
        let row = format!("{method} {target} {headers:?} {body:?}");
        let seen_before = app.seen().len();
        let proxied = tg.request(&raw(method, target, headers, body));
        let mut args = vec![*method, *target, "-H", "Host: images.example"];
        for h in headers {
            args.extend(["-H", h.as_str()]);
        }
        if !body.is_empty() {
            args.extend(["--body", body]);
        }
        let explained = explain(app.addr, &secrets, &args);
        match want {
            0 => {
                assert_eq!(explained["plan"], "forward", "{row}: {explained}");
                assert_eq!(proxied.status, 200, "{row}: {}", proxied.text());
                let seen = app.seen();
                assert_eq!(seen.len(), seen_before + 1, "{row}");
                let got = &seen[seen_before];
                let up = &explained["upstream"]["request"];
                assert_eq!(
                    (got.method.as_str(), got.url.as_str()),
                    (up[0].as_str().unwrap(), up[1].as_str().unwrap()),
                    "{row}"
                );
                for added in explained["upstream"]["added"].as_array().unwrap() {
                    let name = added[0].as_str().unwrap();
                    if name == "x-request-id" {
                        continue;
                    }
                    assert_eq!(
                        got.all(name),
                        vec![added[1].as_str().unwrap()],
                        "{row}: {name}"
                    );
                }
            }
            status => {
                assert_eq!(explained["status"], *status, "{row}: {explained}");
                assert_eq!(proxied.status, *status, "{row}: {}", proxied.text());
                assert_eq!(app.seen().len(), seen_before, "{row}: reached the app");
                match status {
                    200 => assert_eq!(
                        proxied.json()["endpoint"],
                        explained["body"]["endpoint"],
                        "{row}"
                    ),
                    _ => assert_eq!(proxied.json(), explained["body"], "{row}"),
                }
            }
        }
        agreed += 1;
    }
    assert_eq!(agreed, table.len());

    // The shadow refusal the proxy logs carries what `explain` prints.
    let line = tg.logged("would refuse");
    assert!(
        line.contains("route fullscreen: would refuse request")
            && line.ends_with(
                "(shadow mode, forwarded): GET /albums/a1/fullscreen requires {album}:fullscreen, subject alice\"}"
            ),
        "{line}"
    );
    let explained = explain(
        app.addr,
        &secrets,
        &["GET", "/albums/a1/fullscreen", "-H", &viewer],
    );
    assert_eq!(explained["verdict"], "shadow_deny");
    assert_eq!(explained["requires"], "{album}:fullscreen (shadow)");
    assert_eq!(
        explained["tried_before"],
        serde_json::json!(["list", "upload", "delete", "caption"])
    );
    tg.assert_no_panic();
}

#[test]
fn explain_names_a_bad_question_and_exits_2() {
    let secrets = secrets();
    for (args, want) in [
        (
            vec!["GET", "/a", "-H", "no colon"],
            "tokengate: \"no colon\" is not `Name: value`\n",
        ),
        (vec!["G E T", "/a"], "tokengate: invalid HTTP method\n"),
        (
            vec![
                "GET",
                "/a",
                "--user-id",
                "bob",
                "--permission",
                "{\"exp\":1}",
            ],
            "tokengate: the permission does not mint: invalid_permission: ",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .args(["-c", CONF, "explain"])
            .args(&args)
            .env_clear()
            .env("TOKENGATE_SECRET_FILE", &secrets)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            text(&out.stderr).starts_with(want),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}
