//! `tokengate explain` prints what the running proxy does. A generated set of requests (four
//! configurations, every value of every dimension at least once, then pairwise mixes from a
//! fixed seed) goes through the proxy, in front of a raw upstream that records what it
//! receives, and through `explain --json` on the same file; status, error body, answer headers,
//! forwarded method, target and header fields must agree for every one. Rate limits and
//! sign-outs, which `explain` says it does not consult, are out of reach of the set.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::Command;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::recorder::{Received, Recorder};
use common::*;
use serde_json::Value;

const IMAGE_APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/image-app.yaml");
const DEV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/tokengate.yaml");

/// A gate with shadow mode, a host route, a second upstream group, a limit, claims forwarded
/// as headers and overrides honoured.
const HONOURING: &str = "tokengate:
  honor_method_override: true
  abilities: [see, image_list, image_upload, image_delete, fullscreen]
  forward_claims: {/Id: X-Album-Id, /abilities/a1/Access/see: X-Can-See}
  upstreams: {second: {addresses: ['UPSTREAM']}}
  routes:
    - {name: list, path: \"/albums/{album}/images\", methods: [GET], require: {resource: \"{album}\", access: image_list}}
    - {name: upload, path: \"/albums/{album}/images\", methods: [POST, PUT], require: {resource: \"{album}\", access: image_upload}}
    - {name: delete, path: \"/albums/{album}/images\", methods: [DELETE], require: {resource: \"{album}\", access: image_delete}}
    - {name: full, path: \"/albums/{album}/fullscreen\", require: {resource: \"{album}\", access: fullscreen}, shadow: true}
    - {name: host, host: Images.Example., path: /albums, upstream: second, auth: required}
    - {name: limited, path: /thumbnails, upstream: second, limit: {key: subject, requests: 100000, per: 1s}}
";

/// A stricter gate: every request needs a token, `;` passes, overrides are refused, the
/// identity goes out under another name and the loopback peer is a trusted proxy.
const STRICT: &str = "tokengate:
  auth: required
  allow_semicolon: true
  identity_header: X-Who
  trusted_proxies: [127.0.0.1/32]
  routes:
    - {name: open, path: /elsewhere, auth: passthrough}
    - {name: delete, path: \"/albums/{album}/images\", methods: [DELETE], require: {resource: \"{album}\", access: image_delete}}
";

/// One configuration under test: its file and the proxy serving it.
struct Gate {
    name: &'static str,
    conf: String,
    tg: Tokengate,
    /// Ability tokens minted through this gate's own token route, by kind.
    minted: Vec<(&'static str, String)>,
}

/// How a request's body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length,
    Chunked,
}

/// One generated request.
#[derive(Debug, Clone)]
struct Case {
    method: String,
    target: String,
    host: Option<String>,
    http10: bool,
    headers: Vec<(String, String)>,
    body: Option<(String, Framing)>,
}

impl Case {
    /// The bytes a client sends: exactly what `explain` writes for the same arguments.
    fn wire(&self) -> Vec<u8> {
        let version = if self.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
        let mut raw = format!("{} {} {version}\r\n", self.method, self.target);
        if let Some(host) = &self.host {
            raw.push_str(&format!("Host: {host}\r\n"));
        }
        for (k, v) in &self.headers {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        let mut raw = raw.into_bytes();
        match &self.body {
            None => raw.extend_from_slice(b"\r\n"),
            Some((body, Framing::Length)) => {
                raw.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                raw.extend_from_slice(body.as_bytes());
            }
            Some((body, Framing::Chunked)) => {
                raw.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                if !body.is_empty() {
                    raw.extend_from_slice(format!("{:x}\r\n{body}\r\n", body.len()).as_bytes());
                }
                raw.extend_from_slice(b"0\r\n\r\n");
            }
        }
        raw
    }

    /// The same request as `explain` arguments.
    fn args(&self) -> Vec<String> {
        let mut args = vec![self.method.clone(), self.target.clone()];
        match &self.host {
            Some(host) => args.extend(["-H".into(), format!("Host: {host}")]),
            None => args.push("--no-host".into()),
        }
        if self.http10 {
            args.push("--http1.0".into());
        }
        for (k, v) in &self.headers {
            args.extend(["-H".into(), format!("{k}: {v}")]);
        }
        if let Some((body, framing)) = &self.body {
            args.push(format!("--body={body}"));
            if *framing == Framing::Chunked {
                args.push("--chunked".into());
            }
        }
        args
    }

    fn label(&self) -> String {
        let body = self.body.as_ref().map(|(b, f)| {
            let shown: String = b.chars().take(60).collect();
            format!("{f:?} {shown:?}")
        });
        format!(
            "{} {} host={:?} http10={} {:?} body={body:?}",
            self.method, self.target, self.host, self.http10, self.headers
        )
    }
}

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

/// Session tokens of every kind the gate meets: valid, expired, from the future, forged, with
/// a refused algorithm or none, malformed, with an unknown key id.
fn session_tokens() -> Vec<(&'static str, String)> {
    let now = now();
    let hs = r#"{"typ":"JWT","alg":"HS256"}"#;
    let claims = |exp: u64, iat: u64, user: &str| {
        format!(r#"{{"exp":{exp},"iat":{iat},"user_id":"{user}"}}"#)
    };
    let good = claims(now + 3600, now, "alice");
    vec![
        ("session", sign_raw(hs, &good, SECRET)),
        (
            "expired",
            sign_raw(hs, &claims(now - 60, now - 120, "alice"), SECRET),
        ),
        (
            "future iat",
            sign_raw(hs, &claims(now + 7200, now + 3600, "alice"), SECRET),
        ),
        (
            "forged",
            sign_raw(hs, &good, "another-secret-another-secret-000000"),
        ),
        (
            "HS512",
            sign_raw(r#"{"typ":"JWT","alg":"HS512"}"#, &good, SECRET),
        ),
        (
            "alg none",
            format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(&good)),
        ),
        ("garbage", "abc.def".to_owned()),
        (
            "unknown kid",
            sign_raw(r#"{"typ":"JWT","alg":"HS256","kid":"nope"}"#, &good, SECRET),
        ),
        (
            "no subject",
            sign_raw(hs, &format!(r#"{{"exp":{}}}"#, now + 60), SECRET),
        ),
        (
            "subject with a space",
            sign_raw(hs, &claims(now + 3600, now, " bob"), SECRET),
        ),
    ]
}

/// Permissions minted on every gate, by kind.
const MINTED: [(&str, &str); 4] = [
    (
        "viewer",
        r#"{"a1":{"Access":{"see":true,"image_list":true}}}"#,
    ),
    ("uploader", r#"{"a1":{"Access":{"image_upload":true}}}"#),
    (
        "deleter",
        r#"{"a1":{"Access":{"image_delete":true,"fullscreen":true,"see":true}}}"#,
    ),
    (
        "other album",
        r#"{"a2":{"Access":{"see":true,"image_list":true}}}"#,
    ),
];

fn start_gate(name: &'static str, conf: String, up: SocketAddr, env: &[(&str, &str)]) -> Gate {
    let tg = Tokengate::start_with_args(up, env, &["-c", &conf]);
    let minted = MINTED
        .iter()
        .map(|(kind, abilities)| {
            let body = format!(r#"{{"permission":{{"abilities":{abilities},"Id":"a1"}}}}"#);
            let auth = format!("Bearer {}", session("alice"));
            let r = tg.request(&token_request(&[&auth], Some("application/json"), &body));
            assert_eq!(r.status, 200, "{name} {kind}: {}", r.text());
            (*kind, r.json()["token"].as_str().unwrap().to_owned())
        })
        .collect();
    Gate {
        name,
        conf,
        tg,
        minted,
    }
}

/// A small deterministic generator (a 64-bit LCG), so the set is the same on every run.
struct Seed(u64);

impl Seed {
    fn pick(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }
}

/// The dimensions every case is drawn from.
struct Dimensions {
    methods: Vec<&'static str>,
    targets: Vec<&'static str>,
    hosts: Vec<Option<&'static str>>,
    tokens: Vec<(String, Option<String>)>,
    authorizations: Vec<&'static str>,
    bodies: Vec<BodyCase>,
    hop_by_hop: Vec<Vec<(&'static str, &'static str)>>,
}

/// A body with the headers that go with it.
#[derive(Clone)]
struct BodyCase {
    headers: Vec<(&'static str, &'static str)>,
    body: Option<(String, Framing)>,
}

fn body(headers: &[(&'static str, &'static str)], body: Option<(&str, Framing)>) -> BodyCase {
    BodyCase {
        headers: headers.to_vec(),
        body: body.map(|(b, f)| (b.to_owned(), f)),
    }
}

fn dimensions(gate: &Gate, sessions: &[(&'static str, String)]) -> Dimensions {
    use Framing::{Chunked, Length};
    const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");
    const JSON: (&str, &str) = ("Content-Type", "application/json");
    const MULTIPART: (&str, &str) = ("Content-Type", "multipart/form-data; boundary=b");
    let multipart_override =
        "--b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\ndelete\r\n--b--\r\n";
    let multipart_plain = "--b\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"a.jpg\"\r\n\r\njpeg\r\n--b--\r\n";
    let long_form: &'static str =
        Box::leak(format!("photo={}", "x".repeat(70 * 1024)).into_boxed_str());
    let long_override: &'static str =
        Box::leak(format!("photo={}&_method=DELETE", "x".repeat(70 * 1024)).into_boxed_str());
    let over_limit: &'static str =
        Box::leak(format!("permission={}", "x".repeat(17 * 1024)).into_boxed_str());
    let mut tokens: Vec<(String, Option<String>)> = vec![("none".into(), None)];
    tokens.extend(
        gate.minted
            .iter()
            .map(|(k, t)| ((*k).to_owned(), Some(t.clone()))),
    );
    tokens.extend(
        sessions
            .iter()
            .map(|(k, t)| ((*k).to_owned(), Some(t.clone()))),
    );
    Dimensions {
        methods: vec![
            "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "get", "Post", "FOO",
            "TRACE",
        ],
        targets: vec![
            "/albums/a1",
            "/albums/a1/images",
            "/ALBUMS/a1/Images.json?page=2",
            "/albums/a1/x/../images",
            "/albums/a1/./images/",
            "/albums//a1/images",
            "/albums/a%31/images",
            "/albums/a1/images/7",
            "/albums/a1/images/7?_method=DELETE",
            "/albums/a1%2Fimages",
            "/albums/a1;x=1/images",
            "/albums/a1/images%00",
            "/albums/a1/%2e%2e/a2/images",
            "/../albums",
            "/albums\\a1",
            "/albums/a1/captions",
            "/albums/a1/fullscreen",
            "/albums",
            "/albums/",
            "/thumbnails/1.jpg",
            "/elsewhere/%7Euser",
            "/",
            "*",
            "albums/a1",
            "http://images.example/albums/a1/images",
            "http://other.example/albums/a1",
            "/albums/a1/images b",
            "/albums/a1#frag",
            "/api/v1/token",
            "/API/V1/TOKEN/",
            "/api/v1/token.json",
            "/api/v1//token",
            "/.well-known/jwks.json",
            "/albums/a1/images?x=%zz",
            "/%61lbums/a1/images",
            "/albums/a1/images/../../a2/images",
            "/albums/A1/IMAGES",
            "/albums/a1/images.json",
            "/albums/%E2%82%AC/images",
            "/albums/a1/images;jsessionid=1",
            "/albums/a1%5cimages",
            "/albums/a1/images?q=a/../b",
            "/albums/a1/images?_method=PUT&x=1",
            "/albums/a1/fullscreen/../images",
        ],
        hosts: vec![
            Some("images.example"),
            Some("Images.Example."),
            Some("images.example:8080"),
            Some("127.0.0.1"),
            Some("[::1]:8080"),
            Some("user@images.example"),
            Some("images.example, other"),
            Some(""),
            None,
            Some("a b"),
            Some("other.example"),
        ],
        tokens,
        authorizations: vec![
            "Bearer {t}",
            "bearer {t}",
            "BEARER {t}",
            "Token token=\"{t}\"",
            "Token token={t}",
            "Token {t}",
            "token token=\"{t}\", nonce=\"x\"",
            "Bearer  {t}",
            "Basic dXNlcjpwYXNz",
            "Bearer {t}|Bearer {t}",
            "Bearer {t}|Bearer x.y.z",
            "Bearer {t} ",
            "Bearer",
            "Token token=\"{t}\" , x=\"y\"",
            "Bearer {t}|X-User-Id: mallory",
            "Bearer {t}|x_user_id: mallory",
            "Bearer {t}|X-Request-Id: explain-1",
        ],
        bodies: vec![
            body(&[], None),
            body(&[FORM], Some(("t=1", Length))),
            body(&[FORM], Some(("t=1&_method=DELETE", Length))),
            body(&[FORM], Some(("t=1&_method=DELETE", Chunked))),
            body(&[FORM], Some(("t=1", Chunked))),
            body(&[FORM], Some(("%5Fmethod=delete", Length))),
            body(&[], Some(("_method=DELETE", Length))),
            body(
                &[("Content-Type", "text/plain")],
                Some(("_method=DELETE", Length)),
            ),
            body(&[MULTIPART], Some((multipart_override, Length))),
            body(&[MULTIPART], Some((multipart_override, Chunked))),
            body(&[MULTIPART], Some((multipart_plain, Length))),
            body(&[JSON], Some((r#"{"_method":"DELETE"}"#, Length))),
            body(&[JSON], Some((r#"{"_method":"DELETE"}"#, Chunked))),
            body(&[JSON], Some((r#"{"caption":"_method"}"#, Length))),
            body(&[FORM, ("Content-Encoding", "gzip")], Some(("t=1", Length))),
            body(&[("X-HTTP-Method-Override", "DELETE")], None),
            body(&[("x_http_method", "delete")], None),
            body(&[("X-HTTP-Method-Override", "TRACE")], None),
            body(
                &[("X-Method-Override", "DELETE"), ("X-HTTP-Method", "PUT")],
                None,
            ),
            body(&[("X-Original-URL", "/admin")], None),
            body(&[FORM], Some((long_form, Length))),
            body(&[FORM], Some((long_override, Length))),
            body(&[FORM, ("Expect", "100-continue")], Some(("t=1", Length))),
            body(
                &[FORM, ("Content-Type", "text/plain")],
                Some(("t=1", Length)),
            ),
            body(
                &[(
                    "Content-Type",
                    "application/x-www-form-urlencoded, text/plain",
                )],
                Some(("t=1", Length)),
            ),
            body(&[], Some(("", Length))),
            body(
                &[FORM],
                Some((
                    r#"permission={"abilities":{"a1":{"Access":{"see":true}}}}"#,
                    Length,
                )),
            ),
            body(
                &[JSON],
                Some((
                    r#"{"permission":{"abilities":{"a1":{"Access":{"see":true}}}}}"#,
                    Chunked,
                )),
            ),
            body(&[JSON], Some((r#"{"permission":{"exp":1}}"#, Length))),
            body(
                &[JSON],
                Some((
                    r#"{"permission":{"abilities":{"a9":{"Access":{"image_delete":true}}}}}"#,
                    Length,
                )),
            ),
            body(&[JSON], Some(("{not json", Length))),
            body(&[FORM], Some((over_limit, Length))),
        ],
        hop_by_hop: vec![
            vec![],
            vec![("Connection", "keep-alive")],
            vec![("Connection", "keep-alive, X-Foo"), ("X-Foo", "1")],
            vec![("TE", "trailers")],
            vec![("Keep-Alive", "timeout=5")],
            vec![("Connection", "Upgrade"), ("Upgrade", "websocket")],
            vec![("Proxy-Connection", "keep-alive")],
            vec![("Connection", "X-Forwarded-For")],
            vec![("Connection", "\"x-foo\"")],
            vec![("Trailer", "x-checksum")],
            vec![("Proxy-Authorization", "Basic eDp5")],
        ],
    }
}

/// A case from one value of each dimension, by index.
fn case(d: &Dimensions, pick: [usize; 7]) -> Case {
    let [m, t, h, k, a, b, x] = pick;
    let mut headers: Vec<(String, String)> = Vec::new();
    if let (_, Some(token)) = &d.tokens[k] {
        for line in d.authorizations[a].split('|') {
            let line = line.replace("{t}", token);
            match line.split_once(": ") {
                Some((name, value)) if !name.contains(' ') => {
                    headers.push((name.to_owned(), value.to_owned()))
                }
                _ => headers.push(("Authorization".to_owned(), line)),
            }
        }
    }
    let bodycase = &d.bodies[b];
    headers.extend(
        bodycase
            .headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    headers.extend(
        d.hop_by_hop[x]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let http10 = d.hosts[h].is_none() && (m + t) % 2 == 0;
    Case {
        method: d.methods[m].to_owned(),
        target: d.targets[t].to_owned(),
        host: d.hosts[h].map(str::to_owned),
        http10,
        headers,
        body: bodycase.body.clone(),
    }
}

/// Every value of every dimension at least once beside a base request, then pairwise mixes.
fn cases(d: &Dimensions, seed: u64, mixes: usize) -> Vec<Case> {
    let sizes = [
        d.methods.len(),
        d.targets.len(),
        d.hosts.len(),
        d.tokens.len(),
        d.authorizations.len(),
        d.bodies.len(),
        d.hop_by_hop.len(),
    ];
    // GET /albums/a1/images with the viewer's token as `Bearer`, no body, nothing hop-by-hop.
    let base = [0, 1, 0, 1, 0, 0, 0];
    let mut out = Vec::new();
    for (dim, size) in sizes.iter().enumerate() {
        for value in 0..*size {
            let mut pick = base;
            pick[dim] = value;
            // A body goes with a method that carries one.
            if dim == 5 && value > 0 {
                pick[0] = 2;
            }
            out.push(case(d, pick));
        }
    }
    let mut seed = Seed(seed);
    for _ in 0..mixes {
        let mut pick = [0; 7];
        for (i, size) in sizes.iter().enumerate() {
            pick[i] = seed.pick(*size);
        }
        out.push(case(d, pick));
    }
    out
}

/// What the proxy did with a case: its answer, and what the upstream received of it.
struct Seen {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    received: Option<Received>,
    upstream_bytes: usize,
}

fn through_proxy(gate: &Gate, up: &Recorder, case: &Case) -> Seen {
    let before_bytes = up.bytes();
    let before = up.requests().len();
    let mut stream = connect(gate.tg.addr);
    stream.write_all(&case.wire()).unwrap();
    let head = case.method == "HEAD";
    let answer = read_response_to(&mut stream, head);
    let answer =
        answer.unwrap_or_else(|e| panic!("{}: {} no answer: {e}", gate.name, case.label()));
    let requests = up.requests();
    assert!(
        requests.len() <= before + 1,
        "{}: {}",
        gate.name,
        case.label()
    );
    Seen {
        status: answer.status,
        headers: answer.headers,
        body: answer.body,
        received: requests.get(before).cloned(),
        upstream_bytes: up.bytes() - before_bytes,
    }
}

fn explain(gate: &Gate, env: &[(String, String)], case: &Case) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["-c", &gate.conf, "explain", "--json"])
        .args(case.args())
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}: {}",
        gate.name,
        case.label(),
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Header fields whose values are the moment's, not the decision's.
fn varies(name: &str) -> bool {
    ["x-request-id", "x-runtime", "date"].contains(&name)
}

/// A header list as comparable pairs: names in lower case, values that vary blanked.
fn comparable(
    headers: impl IntoIterator<Item = (String, String)>,
    keep_id: bool,
) -> Vec<(String, String)> {
    headers
        .into_iter()
        .map(|(k, v)| {
            let k = k.to_ascii_lowercase();
            let v = match varies(&k) && !(keep_id && k == "x-request-id") {
                true => String::new(),
                false => v,
            };
            (k, v)
        })
        .collect()
}

fn json_pairs(list: &Value) -> Vec<(String, String)> {
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|h| {
                    let part = |k: &str| h[k].as_str().unwrap_or_default().to_owned();
                    (part("name"), part("value"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Where `explained` and `seen` disagree, if they do.
fn disagreement(case: &Case, explained: &Value, seen: &Seen) -> Option<String> {
    let keep_id = case
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("x-request-id"));
    let plan = explained["plan"].as_str().unwrap_or_default();
    let streamed = explained["upstream"]["body"] == "streamed, refused before its end";
    if plan != "forward" {
        if streamed && seen.received.is_some() {
            return Some("refused while streaming, yet the upstream got it whole".into());
        }
        if !streamed && seen.upstream_bytes != 0 {
            return Some(format!(
                "refused or answered, yet {} bytes went upstream",
                seen.upstream_bytes
            ));
        }
        let answer = &explained["answer"];
        if answer["status"] != seen.status {
            return Some(format!(
                "status: explain {} proxy {}",
                answer["status"], seen.status
            ));
        }
        let body: Value = match seen.body.is_empty() {
            true => Value::Null,
            false => serde_json::from_slice(&seen.body).unwrap_or(Value::String(text(&seen.body))),
        };
        let want = match case.method == "HEAD" {
            true => Value::Null,
            false => answer["body"].clone(),
        };
        if want != body {
            return Some(format!("body: explain {want} proxy {body}"));
        }
        let proxied = comparable(seen.headers.clone(), keep_id);
        let explained_headers = comparable(json_pairs(&answer["headers"]), keep_id);
        if proxied != explained_headers {
            return Some(format!(
                "headers: explain {explained_headers:?} proxy {proxied:?}"
            ));
        }
        let closed = seen
            .headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close"));
        let explained_close = answer["connection"] == "close";
        if closed != explained_close && !case.http10 {
            return Some(format!(
                "connection: explain {} proxy closed={closed}",
                answer["connection"]
            ));
        }
        return None;
    }
    let up = &explained["upstream"];
    let Some(received) = &seen.received else {
        return Some(format!(
            "forward, yet the upstream got no whole request (proxy {})",
            seen.status
        ));
    };
    if up["method"] != received.method.as_str() || up["target"] != received.target.as_str() {
        return Some(format!(
            "request line: explain {} {} upstream {} {}",
            up["method"], up["target"], received.method, received.target
        ));
    }
    let explained_headers = comparable(json_pairs(&up["headers"]), false);
    let got = comparable(received.headers.clone(), false);
    if explained_headers != got {
        return Some(format!(
            "upstream headers: explain {explained_headers:?} upstream {got:?}"
        ));
    }
    let sent = case.body.as_ref().map_or("", |(b, _)| b.as_str());
    if received.body != sent.as_bytes() {
        return Some(format!(
            "upstream body: {} bytes, sent {}",
            received.body.len(),
            sent.len()
        ));
    }
    if seen.status != 200 {
        return Some(format!("forwarded, yet the client got {}", seen.status));
    }
    None
}

#[test]
fn explain_and_the_proxy_agree_on_a_generated_set() {
    let up = Recorder::start();
    let upstream = up.addr.to_string();
    let secrets = conf("secrets", &format!("{SECRET}\n"));
    // The shipped image-app configuration, with its thumbnails pool pointed at the recorder.
    let shipped = std::fs::read_to_string(IMAGE_APP).unwrap().replace(
        "[127.0.0.1:3001, 127.0.0.1:3002]",
        &format!("['{upstream}']"),
    );
    // The proxy's own environment, as far as it bears on decisions (the harness sets the
    // secret too, which beats the one `conf/tokengate.yaml` ships with).
    let env: Vec<(String, String)> = vec![
        ("TOKENGATE_SECRET".into(), SECRET.into()),
        ("TOKENGATE_SECRET_FILE".into(), secrets.clone()),
        ("TOKENGATE_UPSTREAM".into(), upstream.clone()),
    ];
    let file_env = [("TOKENGATE_SECRET_FILE", secrets.as_str())];
    let gates = [
        start_gate("image-app", conf("image-app", &shipped), up.addr, &file_env),
        start_gate("dev", DEV.to_owned(), up.addr, &file_env),
        start_gate(
            "honouring",
            conf("honouring", &HONOURING.replace("UPSTREAM", &upstream)),
            up.addr,
            &file_env,
        ),
        start_gate("strict", conf("strict", STRICT), up.addr, &file_env),
    ];
    let sessions = session_tokens();
    let mut disagreements = Vec::new();
    let mut total = 0;
    for (i, gate) in gates.iter().enumerate() {
        let d = dimensions(gate, &sessions);
        let set = cases(&d, 7 + i as u64, 150);
        total += set.len();
        for case in &set {
            let seen = through_proxy(gate, &up, case);
            let explained = explain(gate, &env, case);
            if let Some(why) = disagreement(case, &explained, &seen) {
                disagreements.push(format!("{}: {}: {why}", gate.name, case.label()));
            }
        }
        gate.tg.assert_no_panic();
    }
    assert!(total >= 1000, "{total} requests");
    assert!(
        disagreements.is_empty(),
        "{} of {total} disagree:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
}

#[test]
fn explain_names_a_bad_question_and_exits_2() {
    let secrets = conf("secrets", &format!("{SECRET}\n"));
    for (args, want) in [
        (
            vec!["GET", "/a", "-H", "no colon"],
            "tokengate: \"no colon\" is not `Name: value`\n",
        ),
        (
            vec!["GET", "/a\r\nX-Evil: 1"],
            "tokengate: \"/a\\r\\nX-Evil: 1\" holds a line break\n",
        ),
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
            .args(["-c", IMAGE_APP, "explain"])
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

#[test]
fn explain_says_what_it_assumed_and_what_the_parser_refuses() {
    let secrets = conf("secrets", &format!("{SECRET}\n"));
    let run = |args: &[&str]| -> Value {
        let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .args(["-c", IMAGE_APP, "explain", "--json"])
            .args(args)
            .env_clear()
            .env("TOKENGATE_SECRET_FILE", &secrets)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let e = run(&[
        "POST",
        "/elsewhere",
        "--body",
        "abc",
        "-H",
        "Content-Type: text/plain",
    ]);
    assert_eq!(
        e["assumed"],
        serde_json::json!([
            "Host: localhost (no -H Host given; --no-host sends none)",
            "Content-Length: 3 (from --body)"
        ])
    );
    assert_eq!(
        e["not_consulted"],
        serde_json::json!(["rate limits", "sign-outs"])
    );
    assert_eq!(e["upstream"]["body"], "streamed unscanned");
    let e = run(&["GET", "/elsewhere", "--no-host"]);
    assert_eq!(e["answer"]["status"], 400);
    assert_eq!(
        e["answer"]["body"]["message"],
        "HTTP/1.1 requests need exactly one Host header."
    );
    let e = run(&["GET", "/a", "-H", "Host: user@localhost"]);
    assert_eq!(e["parser"], "userinfo in Host header");
    assert_eq!(e["answer"]["status"], 400);
    assert_eq!(e["answer"]["connection"], "close");
    assert_eq!(e["answer"]["body"], Value::Null);
}

/// A documented line and the one printed agree: exactly, or, for a value of the moment (a date,
/// a token signed now, an id generated now), in everything before the value.
fn same_line(documented: &str, printed: &str) -> bool {
    let moment = ["Date: ", "X-token: ", "{\"token\":\"", "X-Request-Id: "];
    match moment.iter().find(|m| documented.contains(*m)) {
        Some(m) if *m != "X-Request-Id: " || documented.contains('…') => {
            let cut = |l: &str| l.find(m).map(|i| l[..i + m.len()].to_owned());
            cut(documented) == cut(printed)
        }
        _ => documented == printed,
    }
}

#[test]
fn the_explain_examples_in_the_docs_print_what_they_show() {
    let secrets = conf("secrets", &format!("{SECRET}\n"));
    let mut examples = 0;
    for doc in ["README.md", "docs/routes.md"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(doc);
        let markdown = std::fs::read_to_string(path).unwrap();
        for block in markdown.split("```console\n").skip(1) {
            let block = block.split("```").next().unwrap();
            let mut lines = block.lines().peekable();
            let mut command = lines.next().unwrap().trim_start_matches("$ ").to_owned();
            while command.ends_with('\\') {
                command.pop();
                command.push_str(lines.next().unwrap().trim_start());
            }
            let documented: Vec<&str> = lines.collect();
            let command = command.replacen("tokengate", env!("CARGO_BIN_EXE_tokengate"), 1);
            let out = Command::new("bash")
                .args(["-c", &command])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .env_clear()
                .env("TOKENGATE_SECRET_FILE", &secrets)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{doc}: {command}: {}",
                text(&out.stderr)
            );
            let printed = text(&out.stdout);
            let printed: Vec<&str> = printed.lines().collect();
            assert_eq!(
                printed.len(),
                documented.len(),
                "{doc}: {command}:\n{}",
                printed.join("\n")
            );
            for (d, p) in documented.iter().zip(&printed) {
                assert!(same_line(d, p), "{doc}: documented {d:?}, printed {p:?}");
            }
            examples += 1;
        }
    }
    assert_eq!(examples, 5);
}
