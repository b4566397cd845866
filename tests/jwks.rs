//! ES256 and EdDSA minting, checked by an independent implementation (PyJWT) with nothing but
//! the key set fetched from tokengate's JWKS endpoint; rotation through the key set.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn generate(dir: &Path, alg: &str, name: &str) -> (PathBuf, String) {
    let out = dir.join(name);
    let run = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args([
            "keys",
            "generate",
            "--algorithm",
            alg,
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8(run.stdout).unwrap();
    let kid = stdout
        .lines()
        .next()
        .unwrap()
        .strip_prefix("kid ")
        .unwrap()
        .to_owned();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    (out, kid)
}

fn start(alg: &str, key: &Path, published: &[&Path], dir: &Path) -> (Upstream, Tokengate) {
    start_with(alg, key, published, dir, "")
}

fn start_with(
    alg: &str,
    key: &Path,
    published: &[&Path],
    dir: &Path,
    extra: &str,
) -> (Upstream, Tokengate) {
    let list = published
        .iter()
        .map(|p| format!("'{}'", p.display()))
        .collect::<Vec<_>>()
        .join(", ");
    let conf = dir.join(format!("tokengate-{}.yaml", free_port()));
    std::fs::write(
        &conf,
        format!(
            "tokengate:\n  signing:\n    algorithm: {alg}\n    key_file: '{}'\n    published_keys: [{list}]\n    jwks_max_age: 10m\n{extra}",
            key.display()
        ),
    )
    .unwrap();
    let up = Upstream::start();
    let tg = Tokengate::start_with_args(up.addr, &[], &["-c", conf.to_str().unwrap()]);
    (up, tg)
}

fn mint(tg: &Tokengate, user: &str) -> String {
    let body = r#"{"permission":{"abilities":{"a1":{"Access":{"see":true}}}}}"#;
    let r = tg.request(&token_request(
        &[&format!("Bearer {}", session(user))],
        Some("application/json"),
        body,
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["token"].as_str().unwrap().to_owned()
}

fn jwks(tg: &Tokengate) -> String {
    let r = tg.request(b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(r.header("Cache-Control"), Some("public, max-age=600"));
    r.text()
}

/// PyJWT, given only the JWKS text: the verified claims as compact JSON, or the error.
fn pyjwt_verify(jwks: &str, token: &str) -> Result<String, String> {
    let script = "import json, sys, jwt\n\
                  keys = jwt.PyJWKSet.from_json(sys.argv[1])\n\
                  kid = jwt.get_unverified_header(sys.argv[2])['kid']\n\
                  key = next((k for k in keys.keys if k.key_id == kid), None)\n\
                  if key is None: sys.exit('kid not in the key set')\n\
                  claims = jwt.decode(sys.argv[2], key.key, algorithms=[key.algorithm_name])\n\
                  print(json.dumps(claims, separators=(',', ':')))";
    let out = Command::new("python3")
        .args(["-c", script, jwks, token])
        .output()
        .expect("python3 with PyJWT (bash .ci/setup)");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap().trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn es256_and_eddsa_tokens_verify_with_only_the_published_keys() {
    let dir = std::env::temp_dir().join(format!("tokengate-jwks-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    for alg in ["ES256", "EdDSA"] {
        let (key, kid) = generate(&dir, alg, &format!("{alg}.pem"));
        let (_up, tg) = start(alg, &key, &[], &dir);
        let token = mint(&tg, "wes");
        let header: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                token.split('.').next().unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            header,
            serde_json::json!({"typ": "JWT", "alg": alg, "kid": kid})
        );
        let set = jwks(&tg);
        assert!(
            !set.contains("\"d\""),
            "private key material in the JWKS: {set}"
        );
        let claims = pyjwt_verify(&set, &token).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(claims, payload(&token));
        assert!(claims.contains(r#""user_id":"wes","abilities""#));
        // A minted ES256/EdDSA token is no session token: tokengate verifies HS256 sessions only.
        let r = tg.request(&token_request(&[&format!("Bearer {token}")], None, ""));
        assert_eq!(r.status, 401);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn rotation_keeps_old_tokens_verifiable_until_the_old_key_is_retired() {
    let dir = std::env::temp_dir().join(format!("tokengate-rotate-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let (old, old_kid) = generate(&dir, "ES256", "old.pem");
    let (new, new_kid) = generate(&dir, "ES256", "new.pem");
    let new_pub = PathBuf::from(format!("{}.pub", new.display()));
    let old_pub = PathBuf::from(format!("{}.pub", old.display()));

    // 1. Publish the new key before using it.
    let (_up, tg) = start("ES256", &old, &[&new_pub], &dir);
    let old_token = mint(&tg, "xia");
    let set = jwks(&tg);
    assert!(set.contains(&old_kid) && set.contains(&new_kid));
    drop(tg);
    // 2. Switch signing; the old key stays published.
    let (_up, tg) = start("ES256", &new, &[&old_pub], &dir);
    let new_token = mint(&tg, "xia");
    let set = jwks(&tg);
    assert!(pyjwt_verify(&set, &old_token).is_ok());
    assert!(pyjwt_verify(&set, &new_token).is_ok());
    drop(tg);
    // 3. Retire the old key.
    let (_up, tg) = start("ES256", &new, &[], &dir);
    let set = jwks(&tg);
    assert!(!set.contains(&old_kid));
    assert!(pyjwt_verify(&set, &new_token).is_ok());
    let refused = pyjwt_verify(&set, &old_token).unwrap_err();
    assert!(refused.contains("kid not in the key set"), "{refused}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn without_asymmetric_signing_the_jwks_path_is_just_forwarded() {
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[]);
    let r = tg.request(b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!((r.status, r.text().as_str()), (200, "upstream says hi"));
    assert_eq!(up.seen()[0].url, "/.well-known/jwks.json");
}

const ENFORCED: &str = "  routes:\n    - name: album\n      path: /albums/{album}\n      require: {resource: \"{album}\", access: see}\n";

fn get_album(tg: &Tokengate, token: &str) -> Resp {
    tg.request(
        format!("GET /albums/a1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\r\n")
            .as_bytes(),
    )
}

#[test]
fn minted_es256_and_eddsa_tokens_open_enforced_routes_and_foreign_ones_do_not() {
    let dir = std::env::temp_dir().join(format!("tokengate-enforced-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    for alg in ["ES256", "EdDSA"] {
        let (old, _) = generate(&dir, alg, &format!("{alg}-old.pem"));
        let (key, _) = generate(&dir, alg, &format!("{alg}.pem"));
        let (foreign_key, _) = generate(&dir, alg, &format!("{alg}-foreign.pem"));
        let old_pub = PathBuf::from(format!("{}.pub", old.display()));
        // A token signed before a rotation, by the key now only published.
        let (_up_old, tg_old) = start_with(alg, &old, &[], &dir, ENFORCED);
        let before_rotation = mint(&tg_old, "yan");
        drop(tg_old);
        let (_fup, foreign_gate) = start_with(alg, &foreign_key, &[], &dir, ENFORCED);
        let foreign = mint(&foreign_gate, "yan");
        drop(foreign_gate);

        let (up, tg) = start_with(alg, &key, &[&old_pub], &dir, ENFORCED);
        let own = mint(&tg, "yan");
        for token in [&own, &before_rotation] {
            let r = get_album(&tg, token);
            assert_eq!(
                (r.status, r.text().as_str()),
                (200, "upstream says hi"),
                "{alg}"
            );
            assert_eq!(r.header("X-token"), Some(token.as_str()));
        }
        let r = get_album(&tg, &foreign);
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (401, Some("invalid_token")),
            "{alg}: a token from another gate's key"
        );
        // An HS256 session token still identifies its subject but grants no ability.
        let r = get_album(&tg, &session("yan"));
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (403, Some("forbidden"))
        );
        let seen = up.seen();
        assert_eq!(seen.len(), 2, "only the two valid tokens reached the app");
        assert!(seen.iter().all(|s| s.all("X-User-Id") == ["yan"]));
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn key_files_load_in_openssl_and_pyjwt() {
    let dir = std::env::temp_dir().join(format!("tokengate-keyfiles-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    for alg in ["ES256", "EdDSA"] {
        let (key, _) = generate(&dir, alg, &format!("{alg}.pem"));
        let pem = std::fs::read_to_string(&key).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
        let openssl = Command::new("openssl")
            .args(["pkey", "-in", key.to_str().unwrap(), "-noout", "-text"])
            .output()
            .expect("openssl");
        assert!(
            openssl.status.success(),
            "{alg}: openssl pkey: {}",
            String::from_utf8_lossy(&openssl.stderr)
        );
        // PyJWT signs with the private key file and verifies with the public one.
        let script = "import sys, jwt\n\
                      from cryptography.hazmat.primitives import serialization as s\n\
                      private = s.load_pem_private_key(open(sys.argv[1], 'rb').read(), None)\n\
                      public = s.load_pem_public_key(open(sys.argv[1] + '.pub', 'rb').read())\n\
                      token = jwt.encode({'sub': 'x'}, private, algorithm=sys.argv[2])\n\
                      print(jwt.decode(token, public, algorithms=[sys.argv[2]])['sub'])";
        let out = Command::new("python3")
            .args(["-c", script, key.to_str().unwrap(), alg])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "x",
            "{alg}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_jwks_post_with_a_body_is_405_and_keeps_the_connection() {
    let dir = std::env::temp_dir().join(format!("tokengate-jwks405-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let (key, _) = generate(&dir, "ES256", "k.pem");
    let (_up, tg) = start("ES256", &key, &[], &dir);
    let mut conn = tg.connect();
    for spelling in [
        "/.well-known/jwks.json",
        "/.WELL-KNOWN/JWKS.JSON",
        "/.well-known//jwks.json",
    ] {
        let r = exchange(
            &mut conn,
            format!("POST {spelling} HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            (r.status, r.header("Allow")),
            (405, Some("GET, HEAD")),
            "{spelling}"
        );
        assert_eq!(r.header("Connection"), Some("keep-alive"));
    }
    let r = exchange(
        &mut conn,
        b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    std::fs::remove_dir_all(dir).unwrap();
}
