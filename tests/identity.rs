//! Sessions from identity providers, against a real OpenID Provider (the certified npm
//! `oidc-provider`, tests/apps/oidc_provider.mjs): its RS256 and ES256 tokens are sessions, its
//! key rotation is followed without a refused request, an outage is ridden out on cached keys
//! for `stale_for` and then fails closed, forged `kid`s cannot make tokengate hammer it, the
//! classic JWT attacks fail against every issuer, and a session cookie authorizes unsafe
//! methods only from the same site.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A running provider; killed when dropped. Its keys live in `state`, so one started again on
/// the same port is the same provider.
struct Provider {
    child: Option<Child>,
    port: u16,
    state: PathBuf,
    max_age: Option<u32>,
}

impl Provider {
    fn start(max_age: Option<u32>) -> Provider {
        on_a_free_port("the OpenID provider", |port| {
            let state = std::env::temp_dir().join(format!("tokengate-idp-{port}.json"));
            let _ = std::fs::remove_file(&state);
            let mut provider = Provider {
                child: None,
                port,
                state,
                max_age,
            };
            provider.try_start().then_some(provider)
        })
    }

    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts it again on its port, with its keys.
    fn restart(&mut self) {
        assert!(self.try_start(), "the provider did not start again");
    }

    /// Starts it and waits for its discovery document: false when it exited first (its port
    /// was taken).
    fn try_start(&mut self) -> bool {
        let apps = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps");
        let mut cmd = Command::new("node");
        cmd.current_dir(apps)
            .arg("oidc_provider.mjs")
            .arg(self.port.to_string())
            .arg(&self.state)
            .args(self.max_age.map(|a| a.to_string()))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("node runs the provider");
        let discovery = format!("{}/.well-known/openid-configuration", self.issuer());
        let start = Instant::now();
        while ureq::get(&discovery).call().is_err() {
            if child.try_wait().ok().flatten().is_some() {
                return false;
            }
            assert!(start.elapsed() < DEADLINE, "the provider never answered");
            thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
        true
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// An access token for `client` (`sub` is the client's id; `-es` clients get ES256).
    fn token(&self, client: &str) -> String {
        let mut response = ureq::post(&format!("{}/token", self.issuer()))
            .header("Authorization", basic(client))
            .send_form([("grant_type", "client_credentials"), ("scope", "images")])
            .expect("the provider issues a token");
        let body: Value =
            serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// How many times its key set was fetched.
    fn fetches(&self) -> u64 {
        let url = format!("{}/_fetches", self.issuer());
        let mut response = ureq::get(&url).call().unwrap();
        response
            .body_mut()
            .read_to_string()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// New keys sign from now on; the old ones stay published.
    fn rotate(&self) {
        ureq::post(&format!("{}/_rotate", self.issuer()))
            .send_empty()
            .unwrap();
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.state);
    }
}

/// The one value of a header the upstream saw, if it saw exactly one.
trait One {
    fn one(&self, name: &str) -> Option<&str>;
}

impl One for Seen {
    fn one(&self, name: &str) -> Option<&str> {
        match self.all(name)[..] {
            [value] => Some(value),
            _ => None,
        }
    }
}

fn basic(client: &str) -> String {
    use base64::Engine;
    let pair = format!("{client}:{client}-secret");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// The `kid` of a token's header.
fn kid(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    let header: Value = serde_json::from_slice(&json).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

/// The configuration docs/identity-providers.md shows, its issuer repeated for each of
/// `providers` with `extra` settings (`key: value` lines).
fn configuration(providers: &[&Provider], extra: &[&str]) -> String {
    let page = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/identity-providers.md"
    ))
    .unwrap();
    let yaml = page
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/identity-providers.md shows its configuration");
    let (head, issuer) = yaml
        .split_once("    - issuer: https://idp.example\n")
        .expect("one issuer, https://idp.example");
    let mut out = head.to_owned();
    for p in providers {
        out.push_str(&format!("    - issuer: {}\n{issuer}", p.issuer()));
        for line in extra {
            out.push_str(&format!("      {line}\n"));
        }
    }
    out
}

/// tokengate as docs/identity-providers.md configures it, in front of `upstream`.
fn gate(upstream: &Upstream, providers: &[&Provider], extra: &[&str]) -> Tokengate {
    let path = conf("identity", &configuration(providers, extra));
    Tokengate::start_with_args(upstream.addr, &[], &["-c", &path])
}

fn get(tg: &Tokengate, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut raw = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    tg.request(raw.as_bytes())
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The refusal's `message`; empty for an answer that is not one.
fn error_message(resp: &Resp) -> String {
    let json: Value = serde_json::from_slice(&resp.body).unwrap_or_default();
    json["message"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn tokens_of_a_real_provider_are_sessions_beside_the_legacy_ones() {
    let provider = Provider::start(None);
    let upstream = Upstream::start();
    let tg = gate(&upstream, &[&provider], &[]);
    for client in ["alice", "alice-es"] {
        let token = provider.token(client);
        let r = get(&tg, "/albums/1", &[("Authorization", &bearer(&token))]);
        assert_eq!(r.status, 200, "{client}: {}", r.text());
        let seen = upstream.seen().pop().unwrap();
        assert_eq!(seen.one("X-User-Id"), Some(client));
        assert_eq!(
            seen.one("X-Email"),
            Some(format!("{client}@example.test").as_str())
        );
        assert_eq!(r.header("X-token"), Some(token.as_str()));
    }
    // The legacy session still works beside it: a migration runs both at once.
    let legacy = get(
        &tg,
        "/albums/1",
        &[("Authorization", &bearer(&session("u-7")))],
    );
    assert_eq!(legacy.status, 200);
    assert_eq!(upstream.seen().pop().unwrap().one("X-User-Id"), Some("u-7"));
    // A token of the same provider for another audience is not one for this gate.
    let other = provider.token("other-audience");
    let r = get(&tg, "/albums/1", &[("Authorization", &bearer(&other))]);
    assert_eq!(r.status, 401);
    assert_eq!(
        error_message(&r),
        "The token's audience (aud) does not include this gate."
    );
    // Minting from the IdP session: the subject under the session's claim, the kept claims,
    // the issuer recorded; what is minted is verified again by this gate's own key.
    let idp = provider.token("alice-es");
    let permission = r#"{"abilities":{"a1":{"Access":{"see":true}}}}"#;
    let minted = tg.request(&token_request(
        &[&bearer(&idp)],
        Some("application/json"),
        &format!(r#"{{"permission":{permission}}}"#),
    ));
    assert_eq!(minted.status, 200, "{}", minted.text());
    let ability = minted.json()["token"].as_str().unwrap().to_owned();
    let claims: Value = serde_json::from_str(&payload(&ability)).unwrap();
    let idp_claims: Value = serde_json::from_str(&payload(&idp)).unwrap();
    let keys: Vec<&str> = claims
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["user_id", "email", "iat", "exp", "idp", "abilities"]);
    assert_eq!(claims["user_id"], "alice-es");
    assert_eq!(claims["exp"], idp_claims["exp"]);
    assert_eq!(claims["idp"], provider.issuer().as_str());
    let r = get(&tg, "/albums/a1", &[("Authorization", &bearer(&ability))]);
    assert_eq!(r.status, 200);
    // Readiness and the issuer's series.
    let ready = request(
        tg.admin,
        b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(ready.status, 200);
    let label = format!("{{issuer=\"{}\"}}", provider.issuer());
    assert_eq!(tg.metric(&format!("tokengate_issuer_keys{label}")), 2.0);
    let ok = format!(
        "tokengate_issuer_key_fetches_total{{issuer=\"{}\",result=\"ok\"}}",
        provider.issuer()
    );
    assert_eq!(tg.metric(&ok), 1.0);
    tg.assert_no_panic();
}

#[test]
fn a_key_rotation_is_followed_without_a_refused_request() {
    // The key set may be cached for an hour: only a token naming a new key fetches it.
    let provider = Provider::start(Some(3600));
    let upstream = Upstream::start();
    let tg = gate(&upstream, &[&provider], &[]);
    let old = [provider.token("alice"), provider.token("alice-es")];
    let fetched = provider.fetches();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Traffic with the old tokens all through the rotation.
    let traffic = {
        let (stop, addr, old) = (stop.clone(), tg.addr, old.clone());
        thread::spawn(move || {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                for token in &old {
                    let raw = format!(
                        "GET /albums/1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
                    );
                    statuses.push(request(addr, raw.as_bytes()).status);
                }
            }
            statuses
        })
    };
    provider.rotate();
    let new = [provider.token("alice"), provider.token("alice-es")];
    for (old, new) in old.iter().zip(&new) {
        assert_ne!(kid(old), kid(new), "the provider signs with a new key");
    }
    let mut statuses = Vec::new();
    for token in new.iter().chain(&new) {
        statuses.push(get(&tg, "/albums/1", &[("Authorization", &bearer(token))]).status);
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    let during = traffic.join().unwrap();
    assert!(!during.is_empty());
    assert!(
        during.iter().chain(&statuses).all(|s| *s == 200),
        "refused during the rotation: old {during:?}, new {statuses:?}"
    );
    // One fetch brought both new keys.
    assert_eq!(provider.fetches(), fetched + 1);
    tg.assert_no_panic();
}

#[test]
fn an_outage_is_ridden_out_on_cached_keys_then_fails_closed_and_recovers() {
    let mut provider = Provider::start(None);
    let upstream = Upstream::start();
    let tg = gate(
        &upstream,
        &[&provider],
        &[
            "min_refresh: 1s",
            "max_refresh: 1s",
            "stale_for: 5s",
            "refetch_interval: 1s",
        ],
    );
    let token = provider.token("alice");
    let auth = bearer(&token);
    assert_eq!(
        get(&tg, "/albums/1", &[("Authorization", &auth)]).status,
        200
    );
    provider.stop();
    // The keys fetched last are good for 1 s + 5 s more: the first request after the provider
    // went away is still served.
    assert_eq!(
        get(&tg, "/albums/1", &[("Authorization", &auth)]).status,
        200
    );
    let start = Instant::now();
    let refused = loop {
        let r = get(&tg, "/albums/1", &[("Authorization", &auth)]);
        if r.status != 200 {
            break r;
        }
        assert!(start.elapsed() < DEADLINE, "cached keys never expired");
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(refused.status, 503);
    assert_eq!(
        refused.json(),
        serde_json::json!({
            "error": "unavailable",
            "message": "The token's identity provider has no keys this gate can use now; try again shortly."
        })
    );
    // Readiness follows within a refresh tick.
    let ready = readyz_until(&tg, 503);
    assert_eq!(
        ready.text(),
        format!(
            "not ready\nno usable keys from issuer {}\n",
            provider.issuer()
        )
    );
    let failures = format!(
        "tokengate_issuer_key_fetches_total{{issuer=\"{}\",result=\"error\"}}",
        provider.issuer()
    );
    assert!(tg.metric(&failures) >= 1.0);
    let keys = format!("tokengate_issuer_keys{{issuer=\"{}\"}}", provider.issuer());
    assert_eq!(tg.metric(&keys), 0.0);
    // Legacy sessions never depended on it.
    let legacy = get(
        &tg,
        "/albums/1",
        &[("Authorization", &bearer(&session("u")))],
    );
    assert_eq!(legacy.status, 200);
    // Back: served again, and ready, with no restart of tokengate.
    provider.restart();
    let start = Instant::now();
    while get(&tg, "/albums/1", &[("Authorization", &auth)]).status != 200 {
        assert!(start.elapsed() < DEADLINE, "never recovered");
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(tg.metric_eventually(&keys, 2.0), 2.0);
    readyz_until(&tg, 200);
    tg.assert_no_panic();
}

/// `/readyz`, asked until it answers `status`.
fn readyz_until(tg: &Tokengate, status: u16) -> Resp {
    let start = Instant::now();
    loop {
        let ready = request(
            tg.admin,
            b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
        if ready.status == status {
            return ready;
        }
        assert!(start.elapsed() < DEADLINE, "/readyz stays {}", ready.status);
        thread::sleep(Duration::from_millis(50));
    }
}

/// Tokens an attacker makes, by name, from the providers' own key files: `python3 - STATE_A
/// ISS_A STATE_B ISS_B GATE_SECRET NOW`.
const FORGE: &str = r#"
import base64, hashlib, hmac, json, sys
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
state_a, iss_a, state_b, iss_b, secret, now = sys.argv[1:]
now = int(now)
keys = lambda path: json.load(open(path))
rsa_a, ec_a = keys(state_a)[:2]
rsa_b, _ = keys(state_b)[:2]
def private(jwk):
    return jwt.PyJWK(jwk).key
def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
def claims(**over):
    c = {"sub": "mallory", "iat": now, "exp": now + 600, "iss": iss_a, "aud": "tokengate"}
    c.update(over)
    return c
def signed(jwk, alg, c, **headers):
    return jwt.encode(c, private(jwk), algorithm=alg, headers={"kid": jwk["kid"], **headers})
def raw(header, c, sign):
    message = b64(json.dumps(header).encode()) + "." + b64(json.dumps(c).encode())
    return message + "." + sign(message.encode())
attacker = ec.generate_private_key(ec.SECP256R1())
attacker_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(attacker.public_key()))
public_pem = private(rsa_a).public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
hs = lambda key: (lambda m: b64(hmac.new(key, m, hashlib.sha256).digest()))
out = {
    "alg none": raw({"alg": "none", "kid": rsa_a["kid"]}, claims(), lambda m: ""),
    "alg none with a signature": raw({"alg": "none"}, claims(), lambda m: "c2ln"),
    "HS256 with the RSA public key as secret":
        raw({"alg": "HS256", "kid": rsa_a["kid"]}, claims(), hs(public_pem)),
    "HS256 with the gate's own secret": raw({"alg": "HS256"}, claims(), hs(secret.encode())),
    "jwk header with the attacker's key": jwt.encode(claims(), attacker, algorithm="ES256",
        headers={"kid": ec_a["kid"], "jwk": attacker_jwk}),
    "jku header": jwt.encode(claims(), attacker, algorithm="ES256",
        headers={"kid": ec_a["kid"], "jku": "http://127.0.0.1:9/jwks.json"}),
    "x5u header": jwt.encode(claims(), attacker, algorithm="ES256",
        headers={"kid": ec_a["kid"], "x5u": "http://127.0.0.1:9/cert.pem"}),
    "issuer A by issuer B's key": signed(rsa_b, "RS256", claims()),
    "issuer A by issuer B's key under A's kid":
        jwt.encode(claims(), private(rsa_b), algorithm="RS256", headers={"kid": rsa_a["kid"]}),
    "RS256 under the EC key's kid":
        jwt.encode(claims(), private(rsa_a), algorithm="RS256", headers={"kid": ec_a["kid"]}),
    "kid as a path": jwt.encode(claims(), private(rsa_a), algorithm="RS256",
        headers={"kid": "../../../../dev/null"}),
    "kid with a NUL": jwt.encode(claims(), private(rsa_a), algorithm="RS256",
        headers={"kid": rsa_a["kid"] + "\u0000"}),
    "expired": signed(rsa_a, "RS256", claims(exp=now - 60)),
    "not yet valid": signed(rsa_a, "RS256", claims(nbf=now + 600)),
    "issued in the future": signed(rsa_a, "RS256", claims(iat=now + 600)),
    "for another audience": signed(ec_a, "ES256", claims(aud="someone-else")),
    "without a subject": signed(ec_a, "ES256", {k: v for k, v in claims().items() if k != "sub"}),
    "genuine": signed(ec_a, "ES256", claims()),
}
print(json.dumps(out))
"#;

/// What each forged token is refused with.
const REFUSALS: &[(&str, u16, &str)] = &[
    ("alg none", 401, "The token is not a well-formed JWT."),
    (
        "alg none with a signature",
        401,
        "The token's signing algorithm is not allowed.",
    ),
    (
        "HS256 with the RSA public key as secret",
        401,
        "The token's signing algorithm is not allowed.",
    ),
    (
        "HS256 with the gate's own secret",
        401,
        "The token's signing algorithm is not allowed.",
    ),
    (
        "jwk header with the attacker's key",
        401,
        "The token's signature is not valid.",
    ),
    ("jku header", 401, "The token's signature is not valid."),
    ("x5u header", 401, "The token's signature is not valid."),
    (
        "issuer A by issuer B's key",
        401,
        "The token names an unknown key id.",
    ),
    (
        "issuer A by issuer B's key under A's kid",
        401,
        "The token's signature is not valid.",
    ),
    (
        "RS256 under the EC key's kid",
        401,
        "The token's signing algorithm is not allowed.",
    ),
    ("kid as a path", 401, "The token names an unknown key id."),
    ("kid with a NUL", 401, "The token names an unknown key id."),
    ("expired", 401, "The token has expired."),
    ("not yet valid", 401, "The token is not valid yet."),
    (
        "issued in the future",
        401,
        "The token's iat claim lies in the future.",
    ),
    (
        "for another audience",
        401,
        "The token's audience (aud) does not include this gate.",
    ),
    (
        "without a subject",
        401,
        "The token lacks its subject claim, or it is not a non-empty string.",
    ),
    ("genuine", 200, ""),
];

#[test]
fn the_classic_jwt_attacks_fail_against_every_issuer() {
    let a = Provider::start(None);
    let b = Provider::start(None);
    let upstream = Upstream::start();
    let tg = gate(&upstream, &[&a, &b], &[]);
    for (this, other) in [(&a, &b), (&b, &a)] {
        let forged = Command::new(python())
            .args(["-c", FORGE])
            .arg(&this.state)
            .arg(this.issuer())
            .arg(&other.state)
            .arg(other.issuer())
            .arg(SECRET)
            .arg(now().to_string())
            .output()
            .unwrap();
        assert!(forged.status.success(), "{}", text(&forged.stderr));
        let forged: Value = serde_json::from_slice(&forged.stdout).unwrap();
        assert_eq!(forged.as_object().unwrap().len(), REFUSALS.len());
        for (name, status, message) in REFUSALS {
            let token = forged[name].as_str().unwrap();
            let r = get(&tg, "/albums/1", &[("Authorization", &bearer(token))]);
            assert_eq!(
                (r.status, error_message(&r).as_str()),
                (*status, *message),
                "{name} as {}",
                this.issuer()
            );
        }
    }
    // Nothing forged reached the upstream; the genuine ones did, as mallory.
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.one("X-User-Id") == Some("mallory")));
    tg.assert_no_panic();
}

#[test]
fn a_forged_kid_flood_fetches_the_keys_once_per_refetch_interval() {
    let provider = Provider::start(None);
    let upstream = Upstream::start();
    // Its key set named directly, no discovery.
    let jwks_uri = format!("jwks_uri: {}/jwks", provider.issuer());
    let tg = gate(
        &upstream,
        &[&provider],
        &["refetch_interval: 1h", &jwks_uri],
    );
    let genuine = provider.token("alice");
    let before = provider.fetches();
    let (_, rest) = genuine.split_once('.').unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (addr, rest) = (tg.addr, rest.to_owned());
            thread::spawn(move || {
                let mut statuses = std::collections::BTreeMap::new();
                for i in 0..250 {
                    use base64::Engine;
                    let forged = format!(r#"{{"alg":"RS256","kid":"forged-{t}-{i}"}}"#);
                    let header =
                        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged);
                    let raw = format!(
                        "GET /albums/1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {header}.{rest}\r\nConnection: close\r\n\r\n"
                    );
                    *statuses.entry(request(addr, raw.as_bytes()).status).or_insert(0) += 1;
                }
                statuses
            })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::new();
    for thread in threads {
        for (status, n) in thread.join().unwrap() {
            *statuses.entry(status).or_insert(0) += n;
        }
    }
    assert_eq!(statuses, [(401, 1000)].into_iter().collect());
    assert_eq!(provider.fetches(), before + 1);
    // And the gate still serves the genuine token.
    let r = get(&tg, "/albums/1", &[("Authorization", &bearer(&genuine))]);
    assert_eq!(r.status, 200);
    tg.assert_no_panic();
}

#[test]
fn a_session_cookie_authorizes_unsafe_methods_only_from_the_same_site() {
    let provider = Provider::start(None);
    let upstream = Upstream::start();
    let tg = gate(&upstream, &[&provider], &[]);
    let idp = provider.token("alice");
    let legacy = session("u-9");
    let send = |method: &str, headers: &[(&str, &str)]| {
        let mut raw = format!("{method} /albums/1/images HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n");
        for (name, value) in headers {
            raw.push_str(&format!("{name}: {value}\r\n"));
        }
        raw.push_str("\r\n");
        tg.request(raw.as_bytes())
    };
    const CROSS_SITE: &str = "A session cookie authorizes this method only on a same-site request (Sec-Fetch-Site: same-origin, or an allowed Origin); send the token in Authorization instead.";
    for token in [&idp, &legacy] {
        let cookie = format!("theme=dark; session={token}");
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16, &'a str);
        let table: &[Case] = &[
            ("GET", &[("Cookie", &cookie)], 200, ""),
            ("POST", &[("Cookie", &cookie)], 403, CROSS_SITE),
            (
                "POST",
                &[
                    ("Cookie", &cookie),
                    ("Origin", "https://evil.example"),
                    ("Sec-Fetch-Site", "cross-site"),
                ],
                403,
                CROSS_SITE,
            ),
            (
                "DELETE",
                &[("Cookie", &cookie), ("Sec-Fetch-Site", "same-site")],
                403,
                CROSS_SITE,
            ),
            (
                "POST",
                &[("Cookie", &cookie), ("Sec-Fetch-Site", "same-origin")],
                200,
                "",
            ),
            (
                "PUT",
                &[
                    ("Cookie", &cookie),
                    ("Origin", "https://app.example"),
                    ("Sec-Fetch-Site", "same-site"),
                ],
                200,
                "",
            ),
            // The Authorization header is read first, whatever the request's site.
            (
                "POST",
                &[
                    ("Authorization", &bearer(token)),
                    ("Origin", "https://evil.example"),
                ],
                200,
                "",
            ),
            (
                "POST",
                &[
                    ("Authorization", "Bearer x.y.z"),
                    ("Cookie", &cookie),
                    ("Sec-Fetch-Site", "same-origin"),
                ],
                401,
                "The token is not a well-formed JWT.",
            ),
            (
                "GET",
                &[("Cookie", &format!("session={token}; session={token}"))],
                400,
                "The session cookie is sent more than once.",
            ),
        ];
        for (method, headers, status, message) in table {
            let r = send(method, headers);
            assert_eq!(
                (r.status, error_message(&r).as_str()),
                (*status, *message),
                "{method} {headers:?}"
            );
        }
    }
    // A cookie's token is not echoed in X-token: scripts must not read an HttpOnly cookie.
    let by_cookie = send("GET", &[("Cookie", &format!("session={idp}"))]);
    assert_eq!((by_cookie.status, by_cookie.header("X-token")), (200, None));
    let by_header = send("GET", &[("Authorization", &bearer(&idp))]);
    assert_eq!(by_header.header("X-token"), Some(idp.as_str()));
    assert_eq!(
        upstream.seen().pop().unwrap().one("X-User-Id"),
        Some("alice")
    );
    // Minting from a cookie: only from the same site.
    let mint = |headers: &str| {
        let body = r#"permission={}"#;
        let raw = format!(
            "POST /api/v1/token HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nCookie: session={idp}\r\n{headers}Connection: close\r\n\r\n{body}",
            body.len()
        );
        tg.request(raw.as_bytes())
    };
    let cross = mint("Origin: https://evil.example\r\n");
    assert_eq!(
        (cross.status, error_message(&cross).as_str()),
        (403, CROSS_SITE)
    );
    assert_eq!(mint("Sec-Fetch-Site: same-origin\r\n").status, 200);
    tg.assert_no_panic();
}

#[test]
fn explain_names_the_issuer_and_key_that_verified_a_token() {
    let provider = Provider::start(None);
    let upstream = Upstream::start();
    let yaml = configuration(&[&provider], &[]);
    let yaml = format!("{yaml}  upstream: '{}'\n", upstream.addr);
    let path = conf("identity-explain", &yaml);
    let token = provider.token("alice-es");
    let explain = |token: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .args(["explain", "-c", &path, "--json", "GET", "/albums/1", "-H"])
            .arg(format!("Authorization: Bearer {token}"))
            .env_clear()
            .env("TOKENGATE_SECRET", SECRET)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let json: Value = serde_json::from_slice(&out.stdout).unwrap();
        json["token"].clone()
    };
    assert_eq!(
        explain(&token),
        serde_json::json!({
            "issuer": provider.issuer(), "kid": kid(&token),
            "subject": "alice-es", "abilities": null,
        })
    );
    let forged = format!("{}x", &token[..token.len() - 1]);
    assert_eq!(
        explain(&forged)["invalid"],
        "The token's signature is not valid."
    );
}

#[test]
fn a_reload_keeps_an_unchanged_issuers_keys_and_fetches_a_changed_ones() {
    let provider = Provider::start(None);
    let upstream = Upstream::start();
    let yaml = configuration(&[&provider], &[]);
    let path = conf("identity-reload", &yaml);
    let tg = Tokengate::start_with_args(upstream.addr, &[], &["-c", &path]);
    let auth = bearer(&provider.token("alice"));
    let fetched = provider.fetches();
    let reloads = "tokengate_config_reloads_total{result=\"ok\"}";
    // Something else changes: the issuer keeps its keys, nothing is fetched.
    let other_route = yaml.replace("auth: required", "auth: passthrough");
    std::fs::write(&path, &other_route).unwrap();
    assert_eq!(tg.metric_eventually(reloads, 1.0), 1.0);
    assert_eq!(
        get(&tg, "/albums/1", &[("Authorization", &auth)]).status,
        200
    );
    assert_eq!(provider.fetches(), fetched);
    // The issuer's settings change: its keys are fetched anew, and its tokens still served.
    let leeway = configuration(&[&provider], &["leeway: 10s"]);
    std::fs::write(&path, leeway.replace("auth: required", "auth: passthrough")).unwrap();
    assert_eq!(tg.metric_eventually(reloads, 2.0), 2.0);
    assert_eq!(
        get(&tg, "/albums/1", &[("Authorization", &auth)]).status,
        200
    );
    assert_eq!(provider.fetches(), fetched + 1);
    tg.assert_no_panic();
}
