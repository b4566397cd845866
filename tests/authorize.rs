//! The authorization listener, through the real gateways that ask it: nginx (`auth_request`),
//! Traefik 3 (`forwardAuth`) and Caddy 2 (`forward_auth`), each running the configuration
//! shipped in `conf/gateways/`, in front of the real Flask, Express and Rails apps of the
//! differential test. The differential corpus goes through the proxy and through each gateway:
//! no request the proxy refuses reaches an app through a gateway, and where the two differ the
//! gateway's answer says why. Envoy cannot be installed here: its HTTP `ext_authz` requests are
//! sent as its documentation describes them.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::canonical_table::*;
use common::corpus::*;
use common::wire::{http1_answer, Answer, BodyFraming, Protocol, Req};
use common::*;

/// A real gateway on a loopback port, configured from `conf/gateways/`; killed when dropped.
struct Gateway {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The shipped configuration `file` with its placeholders filled in.
fn shipped(file: &str, fill: &[(&str, String)]) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/gateways/").to_owned() + file;
    let mut text = std::fs::read_to_string(path).unwrap();
    for (key, value) in fill {
        text = text.replace(&format!("{{{{{key}}}}}"), value);
    }
    assert!(!text.contains("{{"), "{file}: a placeholder left: {text}");
    text
}

impl Gateway {
    /// Starts gateway `name` in front of `app`, asking `tg`'s authorization listener, and
    /// sending the token route to its proxy listener.
    fn start(
        name: &'static str,
        app: SocketAddr,
        tg: &Tokengate,
        authorize: SocketAddr,
    ) -> Gateway {
        on_a_free_port(name, |port| {
            Self::try_start(name, app, (tg.addr, authorize), port)
        })
    }

    fn try_start(
        name: &'static str,
        app: SocketAddr,
        (proxy, authorize): (SocketAddr, SocketAddr),
        port: u16,
    ) -> Option<Gateway> {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let dir = std::env::temp_dir().join(format!("tokengate-{name}-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let fill = [
            ("DIR", dir.display().to_string()),
            ("APP", app.to_string()),
            ("AUTHORIZE", authorize.to_string()),
            ("TOKENGATE", proxy.to_string()),
            ("LISTEN", addr.to_string()),
            ("PORT", port.to_string()),
        ];
        let mut cmd = match name {
            "nginx" => {
                let conf = dir.join("nginx.conf");
                std::fs::write(&conf, shipped("nginx.conf", &fill)).unwrap();
                let mut cmd = Command::new("nginx");
                cmd.arg("-p").arg(&dir).arg("-c").arg(&conf);
                // One process, so that killing it leaves no worker behind on the port.
                cmd.args(["-e", "stderr", "-g", "daemon off; master_process off;"]);
                cmd
            }
            "traefik" => {
                std::fs::write(dir.join("dynamic.yml"), shipped("traefik.yml", &fill)).unwrap();
                let conf = dir.join("traefik.yml");
                std::fs::write(&conf, shipped("traefik-static.yml", &fill)).unwrap();
                let mut cmd = Command::new("traefik");
                cmd.arg(format!("--configFile={}", conf.display()));
                cmd
            }
            _ => {
                let conf = dir.join("Caddyfile");
                std::fs::write(&conf, shipped("Caddyfile", &fill)).unwrap();
                let mut cmd = Command::new("caddy");
                cmd.args(["run", "--adapter", "caddyfile", "--config"])
                    .arg(&conf)
                    .env("XDG_DATA_HOME", &dir)
                    .env("XDG_CONFIG_HOME", &dir);
                cmd
            }
        };
        let log = std::fs::File::create(dir.join("gateway.log")).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut gateway = Gateway {
            name,
            child,
            addr,
            dir,
        };
        // Ready once its configuration is in force: the token route, routed to tokengate,
        // answers a GET with tokengate's own 405.
        let probe = Req::new("GET", "/api/v1/token");
        let start = Instant::now();
        loop {
            let answer = http1_answer_or_none(addr, &probe);
            if let Some(answer) = answer {
                if answer.status == Some(405) && answer.json()["error"] == "method_not_allowed" {
                    return Some(gateway);
                }
            }
            if let Ok(Some(_)) = gateway.child.try_wait() {
                // Its port was taken first by another test's server.
                return None;
            }
            if start.elapsed() > DEADLINE {
                let log = std::fs::read_to_string(gateway.dir.join("gateway.log"));
                panic!("{name} did not start answering: {log:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One exchange, or `None` when nothing listens yet.
fn http1_answer_or_none(addr: SocketAddr, request: &Req) -> Option<Answer> {
    std::net::TcpStream::connect(addr).ok()?;
    let answer = http1_answer(addr, request);
    answer.answered().then_some(answer)
}

/// tokengate with the differential routes, its authorization listener on too; and its address.
fn tokengate(upstream: SocketAddr, yaml: &str) -> (Tokengate, SocketAddr, String) {
    tokengate_with(upstream, yaml, &[])
}

/// [`tokengate`] with more environment.
fn tokengate_with(
    upstream: SocketAddr,
    yaml: &str,
    more: &[(&str, &str)],
) -> (Tokengate, SocketAddr, String) {
    let authorize: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let conf = conf("authorize", yaml);
    let listen = authorize.to_string();
    let mut env = vec![("TOKENGATE_AUTHORIZE_LISTEN", listen.as_str())];
    env.extend_from_slice(more);
    let tg = Tokengate::start_with_args(upstream, &env, &["-c", &conf]);
    (tg, authorize, conf)
}

/// What Caddy asks about `method target` (conf/gateways/Caddyfile).
fn caddy_asks(method: &str, target: &str) -> Req {
    Req::new("GET", "/caddy")
        .header("X-Forwarded-Method", method)
        .header("X-Forwarded-Uri", target)
}

/// A token for album `a`: `see` and `image_upload`.
fn granted_token(tg: &Tokengate) -> String {
    let minted = tg.request(&token_request(
        &[&format!("Bearer {}", session("gw"))],
        Some("application/json"),
        r#"{"permission":{"abilities":{"a":{"Access":{"see":true,"image_upload":true}}}}}"#,
    ));
    assert_eq!(minted.status, 200, "{}", minted.text());
    minted.json()["token"].as_str().unwrap().to_owned()
}

/// Why an answer did not come from the app: tokengate's error code, or the gateway's status.
fn refused_by(answer: &Answer) -> String {
    let json = answer.json();
    match json["error"].as_str() {
        Some(code) => code.to_owned(),
        None => format!("{} by the gateway", answer.status.unwrap_or(0)),
    }
}

/// The corpus through the proxy and through each gateway in front of `app`.
fn compare(app: App) {
    let (tg, authorize, _) = tokengate(app.addr, ROUTES);
    let token = granted_token(&tg);
    let gateways = [
        Gateway::start("nginx", app.addr, &tg, authorize),
        Gateway::start("traefik", app.addr, &tg, authorize),
        Gateway::start("caddy", app.addr, &tg, authorize),
    ];
    let mut cases: Vec<(String, Req)> = Vec::new();
    for case in corpus(&token, &session("gw")) {
        cases.extend(variants(&case, Protocol::Http1));
    }
    let mut failures = Vec::new();
    for gateway in &gateways {
        let (mut same, mut stricter) = (0, BTreeMap::<String, Vec<&str>>::new());
        for (label, req) in &cases {
            let proxied = http1_answer(tg.addr, req);
            let through = http1_answer(gateway.addr, req);
            let served = served_by(&through);
            if let Some((route, album)) = &served {
                let granted =
                    ability(route).is_some_and(|ab| GRANTED.contains(&(album.as_str(), ab)));
                if !granted {
                    failures.push(format!(
                        "{} via {}: {label}: app served {route} on album {album:?}",
                        app.name, gateway.name
                    ));
                }
            }
            let proxy_refused =
                served_by(&proxied).is_none() && proxied.json()["error"].is_string();
            match (proxy_refused, served.is_some()) {
                (true, true) => failures.push(format!(
                    "{} via {}: {label}: the proxy refused it ({}), the gateway let it through",
                    app.name,
                    gateway.name,
                    refused_by(&proxied)
                )),
                (false, false) if served_by(&proxied).is_some() => stricter
                    .entry(refused_by(&through))
                    .or_default()
                    .push(label),
                _ => same += 1,
            }
        }
        println!(
            "{} via {}: {} requests, {same} decided alike, refused only through the gateway: {stricter:?}",
            app.name,
            gateway.name,
            cases.len()
        );
        // The only requests a gateway refuses that the proxy forwards: those it would forward
        // rewritten, bodies it keeps from tokengate, and what its own parser refuses.
        for reason in stricter.keys() {
            let known = reason == "invalid_request"
                || reason == "unsupported_media_type"
                || reason.ends_with("by the gateway");
            if !known {
                failures.push(format!(
                    "{} via {}: refused as {reason}",
                    app.name, gateway.name
                ));
            }
        }
    }
    assert!(cases.len() >= 300, "corpus of {} only", cases.len());
    tg.assert_no_panic();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn through_every_gateway_flask_serves_only_what_the_proxy_would() {
    compare(App::start("flask", "python3", &["flask_app.py"]));
}

#[test]
fn through_every_gateway_express_serves_only_what_the_proxy_would() {
    compare(App::start(
        "express4",
        "node",
        &["express_app.js", "express4"],
    ));
}

#[test]
fn through_every_gateway_rails_serves_only_what_the_proxy_would() {
    compare(App::start("rails", "ruby", &["rails_app.rb"]));
}

const LIMITED: &str = r#"tokengate:
  routes:
    - {name: limited, path: /limited, limit: {key: subject, requests: 1, per: 1h}}
    - {name: albums, path: /albums, auth: required}
"#;

/// A recording upstream, and tokengate and the three gateways in front of it.
struct Stack {
    up: Upstream,
    tg: Tokengate,
    gateways: Vec<Gateway>,
    /// Its configuration file, for `tokengate explain`.
    conf: String,
}

impl Stack {
    fn start(yaml: &str) -> Stack {
        let up = Upstream::start();
        let (tg, authorize, conf) = tokengate(up.addr, yaml);
        let gateways = ["nginx", "traefik", "caddy"]
            .map(|name| Gateway::start(name, up.addr, &tg, authorize))
            .into();
        Stack {
            up,
            tg,
            gateways,
            conf,
        }
    }

    /// What the upstream saw of the request with `id`.
    fn seen(&self, id: &str) -> Option<Seen> {
        self.up
            .seen()
            .into_iter()
            .find(|s| s.all("x-request-id").contains(&id))
    }
}

#[test]
fn spoofed_reports_and_identity_headers_gain_nothing() {
    let stack = Stack::start(LIMITED);
    let token = granted_token(&stack.tg);
    let bearer = format!("Bearer {token}");
    for gateway in &stack.gateways {
        let g = gateway.name;
        // The client's own report headers name a path it may use; the gateway reports the real one.
        let spoof = Req::new("GET", "/albums/x")
            .header("X-Original-URI", "/elsewhere")
            .header("X-Original-Method", "GET")
            .header("X-Forwarded-Uri", "/elsewhere")
            .header("X-Forwarded-Method", "GET")
            .header("X-Request-Id", &format!("{g}-spoof"));
        let answer = http1_answer(gateway.addr, &spoof);
        assert_eq!(answer.status, Some(401), "{g}: {answer:?}");
        assert_eq!(answer.json()["error"], "missing_token", "{g}");
        assert!(stack.seen(&format!("{g}-spoof")).is_none(), "{g}");

        // An identity a client sends is replaced by the verified one, or removed.
        for (id, with_token) in [(format!("{g}-who"), true), (format!("{g}-anon"), false)] {
            let mut req = Req::new("GET", "/open")
                .header("X-User-Id", "admin")
                .header("X-token", "forged")
                .header("X-HTTP-Method-Override", "DELETE")
                .header("X-Original-URL", "/admin")
                .header("X-Request-Id", &id);
            if with_token {
                req = req.header("Authorization", &bearer);
            }
            let answer = http1_answer(gateway.addr, &req);
            assert_eq!(answer.status, Some(200), "{g}: {answer:?}");
            let seen = stack
                .seen(&id)
                .unwrap_or_else(|| panic!("{g}: {id} not seen"));
            let user: Vec<&str> = if with_token { vec!["gw"] } else { vec![] };
            assert_eq!(seen.all("x-user-id"), user, "{g}: {:?}", seen.headers);
            let tokens: Vec<&str> = if with_token { vec![&token] } else { vec![] };
            assert_eq!(seen.all("x-token"), tokens, "{g}");
            assert!(seen.all("x-http-method-override").is_empty(), "{g}");
            assert!(seen.all("x-original-url").is_empty(), "{g}");
            assert_eq!(seen.method, "GET", "{g}");
        }

        // A client's own length report, with a chunked form body whose `_method` would make the
        // POST a DELETE: never believed, the request never reaches the app.
        let length = Req::new("POST", "/open")
            .header("X-Original-Content-Length", "0")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("X-Request-Id", &format!("{g}-length"))
            .body(b"_method=DELETE", BodyFraming::Bytes);
        let answer = http1_answer(gateway.addr, &length);
        assert!(
            stack.seen(&format!("{g}-length")).is_none(),
            "{g}: {answer:?}"
        );
        assert!(
            [400, 415].contains(&answer.status.unwrap_or(0)),
            "{g}: {answer:?}"
        );

        // A header spelled with `_`, which Rack and CGI read as the identity or a path override,
        // never reaches the app: tokengate refuses it when the gateway passes it on (nginx and
        // Caddy drop such names).
        for name in ["X_User_Id", "X_Original_URL"] {
            let id = format!("{g}-{name}");
            let underscore = Req::new("GET", "/open")
                .header(name, "/admin")
                .header("X-Request-Id", &id);
            let answer = http1_answer(gateway.addr, &underscore);
            match stack.seen(&id) {
                Some(seen) => assert!(seen.all(name).is_empty(), "{g}: {:?}", seen.headers),
                None => assert_eq!(answer.status, Some(400), "{g}: {answer:?}"),
            }
        }
    }
}

#[test]
fn refusals_reach_the_client_as_tokengate_answers_them() {
    let stack = Stack::start(LIMITED);
    let token = granted_token(&stack.tg);
    let bearer = format!("Bearer {token}");
    let mut allowed = BTreeMap::new();
    for gateway in &stack.gateways {
        let g = gateway.name;
        let expired = Req::new("GET", "/albums/a")
            .header("Authorization", "Bearer a.b.c")
            .header("X-Request-Id", &format!("{g}-401"));
        let answer = http1_answer(gateway.addr, &expired);
        assert_eq!(answer.status, Some(401), "{g}: {answer:?}");
        assert_eq!(answer.json()["error"], "invalid_token", "{g}");
        assert_eq!(
            answer.header("www-authenticate"),
            Some(r#"Bearer realm="tokengate", error="invalid_token""#),
            "{g}"
        );
        assert_eq!(
            answer.header("x-request-id"),
            Some(format!("{g}-401").as_str()),
            "{g}"
        );

        // The route's limit counts once per request, as in the proxy; the second is 429.
        let session = session(&format!("limited-{g}"));
        let limited =
            Req::new("GET", "/limited").header("Authorization", &format!("Bearer {session}"));
        let first = http1_answer(gateway.addr, &limited);
        assert_eq!(first.status, Some(200), "{g}: {first:?}");
        let second = http1_answer(gateway.addr, &limited);
        assert_eq!(second.status, Some(429), "{g}: {second:?}");
        assert_eq!(second.json()["error"], "rate_limited", "{g}");
        let retry: u64 = second.header("retry-after").unwrap_or("0").parse().unwrap();
        assert!((3000..=3600).contains(&retry), "{g}: Retry-After {retry}");

        // A path tokengate would rewrite is refused, as the gateway would send it on as it
        // came; a gateway that makes it canonical itself (Traefik) sends what was checked.
        let dotted = Req::new("GET", "/albums/b/../a")
            .header("Authorization", &bearer)
            .header("X-Request-Id", &format!("{g}-dots"));
        let answer = http1_answer(gateway.addr, &dotted);
        let dots_allowed = match stack.seen(&format!("{g}-dots")) {
            Some(seen) => {
                assert_eq!(seen.url, "/albums/a", "{g}");
                true
            }
            None => {
                assert_eq!(answer.status, Some(400), "{g}: {answer:?}");
                false
            }
        };
        allowed.insert(g, 1 + usize::from(dots_allowed));

        // The token route is tokengate's own: routed to its proxy listener, it mints through the
        // gateway; a spelling the gateway does not route there is refused when it asks.
        let body = r#"{"permission":{"abilities":{"a":{"Access":{"see":true}}}}}"#;
        let mint = |path: &str| {
            Req::new("POST", path)
                .header(
                    "Authorization",
                    &format!("Bearer {}", common::session("gw")),
                )
                .header("Content-Type", "application/json")
                .body(body.as_bytes(), BodyFraming::Length)
        };
        let minted = http1_answer(gateway.addr, &mint("/api/v1/token"));
        assert_eq!(minted.status, Some(200), "{g}: {minted:?}");
        assert!(minted.json()["token"].is_string(), "{g}");
        let spelled = http1_answer(gateway.addr, &mint("/API/v1/token.json"));
        assert_eq!(spelled.status, Some(400), "{g}: {spelled:?}");
        assert_eq!(spelled.json()["error"], "invalid_request", "{g}");
    }
    // Each gateway asked six times (its start-up probe included): counted by caller.
    for (g, allowed) in allowed {
        let series =
            |outcome| format!("tokengate_decisions_total{{caller=\"{g}\",outcome=\"{outcome}\"}}");
        assert_eq!(stack.tg.metric(&series("allow")), allowed as f64, "{g}");
        assert_eq!(
            stack.tg.metric(&series("refuse")),
            (5 - allowed) as f64,
            "{g}"
        );
    }
}

#[test]
fn only_configured_gateways_are_believed_and_the_public_listener_is_no_authorizer() {
    let up = Upstream::start();
    let yaml = "tokengate:\n  authorize: {gateways: [10.9.9.9/32]}\n";
    let (tg, authorize, _) = tokengate(up.addr, yaml);
    let report = Req::new("GET", "/nginx")
        .header("X-Original-Method", "GET")
        .header("X-Original-URI", "/")
        .header("X-User-Id", "admin");
    let answer = http1_answer(authorize, &report);
    assert_eq!(answer.status, Some(403), "{answer:?}");
    assert_eq!(answer.json()["error"], "forbidden");
    assert!(answer.header("x-user-id").is_none());
    // The same question on the public listener is an ordinary request for `/nginx`, forwarded
    // without the client's identity.
    let public = http1_answer(tg.addr, &report.header("X-Request-Id", "public-nginx"));
    assert_eq!(public.status, Some(200));
    assert!(public.header("x-user-id").is_none());
    let seen = up.seen();
    let seen = seen
        .iter()
        .find(|s| s.all("x-request-id") == ["public-nginx"])
        .unwrap();
    assert_eq!(seen.url, "/nginx");
    assert!(seen.all("x-user-id").is_empty());
    // The process goes on answering.
    assert_eq!(
        http1_answer(authorize, &Req::new("GET", "/caddy")).status,
        Some(403)
    );
    tg.assert_no_panic();
}

/// Routes for the Envoy checks: an album route, and everything else open to any method.
const ENVOY: &str = r#"tokengate:
  routes:
    - {name: album, path: "/albums/{album}", methods: [GET], require: {resource: "{album}", access: see}}
"#;

/// An HTTP `ext_authz` check as Envoy's documentation describes it: the original method, the
/// `path_prefix` before the original path, the original `Host`, `Content-Length: 0` unless
/// `with_request_body` sends the body (then `x-envoy-auth-partial-body` says whether it is whole).
fn envoy_check(method: &str, path: &str) -> Req {
    Req::new(method, &format!("/envoy{path}"))
        .header("x-envoy-expected-rq-timeout-ms", "200")
        .header("x-forwarded-for", "192.0.2.7")
}

#[test]
fn envoy_ext_authz_checks_are_answered_in_its_convention() {
    let up = Upstream::start();
    let (tg, authorize, _) = tokengate(up.addr, ENVOY);
    let token = granted_token(&tg);
    let bearer = format!("Bearer {token}");
    let absent = |set: &[&str]| {
        let all = [
            "x-user-id",
            "x-token",
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
            "x-original-url",
            "x-rewrite-url",
        ];
        let rest: Vec<&str> = all.into_iter().filter(|h| !set.contains(h)).collect();
        rest.join(", ")
    };

    // Allowed: 200, the headers to add upstream, and the ones to remove (spoofed copies).
    let allowed = http1_answer(
        authorize,
        &envoy_check("GET", "/albums/a?size=2")
            .header("Authorization", &bearer)
            .header("Content-Length", "0"),
    );
    assert_eq!(allowed.status, Some(200), "{allowed:?}");
    assert_eq!(allowed.header("x-user-id"), Some("gw"));
    assert_eq!(allowed.header("x-token"), Some(token.as_str()));
    let remove = absent(&["x-user-id", "x-token"]);
    assert_eq!(
        allowed.header("x-envoy-auth-headers-to-remove"),
        Some(remove.as_str())
    );
    let anonymous = http1_answer(
        authorize,
        &envoy_check("DELETE", "/open").header("X-User-Id", "admin"),
    );
    assert_eq!(anonymous.status, Some(200), "{anonymous:?}");
    assert_eq!(anonymous.header("x-user-id"), None);
    let remove = absent(&[]);
    assert_eq!(
        anonymous.header("x-envoy-auth-headers-to-remove"),
        Some(remove.as_str())
    );

    // Refused: the status, headers and JSON body tokengate would answer, for Envoy to pass on.
    let refused = http1_answer(
        authorize,
        &envoy_check("GET", "/albums/b").header("Authorization", &bearer),
    );
    assert_eq!(refused.status, Some(403), "{refused:?}");
    assert_eq!(refused.json()["error"], "forbidden");
    assert_eq!(
        refused.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let missing = http1_answer(authorize, &envoy_check("GET", "/albums/a"));
    assert_eq!(missing.status, Some(401));
    assert_eq!(
        missing.header("www-authenticate"),
        Some(r#"Bearer realm="tokengate", error="invalid_request""#)
    );
    let dotted = http1_answer(
        authorize,
        &envoy_check("GET", "/albums/b/../a").header("Authorization", &bearer),
    );
    assert_eq!(dotted.status, Some(400), "{dotted:?}");

    // with_request_body: a whole body is checked as the proxy checks it.
    let form = |partial: &str| {
        envoy_check("POST", "/albums/b")
            .header("Authorization", &bearer)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("x-envoy-auth-partial-body", partial)
            .body(b"_method=GET", BodyFraming::Length)
    };
    let whole = http1_answer(authorize, &form("false"));
    assert_eq!(whole.status, Some(400), "{whole:?}");
    assert_eq!(whole.json()["error"], "invalid_request");
    // A partial body is not seen whole: through it this POST could become a GET of an album
    // the token does not grant, so it is refused as unseen.
    let partial = http1_answer(authorize, &form("true"));
    assert_eq!(partial.status, Some(415), "{partial:?}");
    // A length report is not Envoy's: a client's copy is no proof the body is empty.
    let claimed = envoy_check("POST", "/open")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("X-Original-Content-Length", "0");
    assert_eq!(http1_answer(authorize, &claimed).status, Some(415));
    // Without the body, a form POST is refused by default (`unseen_body: refuse`).
    let open = http1_answer(
        authorize,
        &envoy_check("POST", "/open").header("Content-Type", "application/x-www-form-urlencoded"),
    );
    assert_eq!(open.status, Some(415), "{open:?}");
    assert_eq!(open.json()["error"], "unsupported_media_type");
    let series = |outcome| {
        tg.metric(&format!(
            "tokengate_decisions_total{{caller=\"envoy\",outcome=\"{outcome}\"}}"
        ))
    };
    assert_eq!((series("allow"), series("refuse")), (2.0, 7.0));
    tg.assert_no_panic();
}

#[test]
fn the_gateway_docs_show_the_configuration_these_tests_run() {
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/gateways.md")).unwrap();
    for file in [
        "nginx.conf",
        "traefik-static.yml",
        "traefik.yml",
        "Caddyfile",
    ] {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/gateways/").to_owned() + file;
        let text = std::fs::read_to_string(path).unwrap();
        assert!(
            docs.contains(&text),
            "docs/gateways.md does not show {file} as it is"
        );
    }
}

#[test]
fn the_canonicalization_table_through_every_gateway_forwards_only_what_the_proxy_would() {
    let stack = Stack::start("tokengate:\n");
    let table = canonical_table();
    let mut failures = Vec::new();
    for gateway in &stack.gateways {
        let g = gateway.name;
        let (mut alike, mut stricter, mut own_parser) = (0, Vec::new(), Vec::new());
        for (request, expect, _) in &table {
            let before = stack.up.seen().len();
            let answer = http1_answer(gateway.addr, request);
            let seen: Vec<(String, String)> = stack.up.seen()[before..]
                .iter()
                .map(|s| (s.method.clone(), s.url.clone()))
                .collect();
            let what = format!(
                "{g}: {} {} {:?}",
                request.method, request.target, request.headers
            );
            match (*expect, seen.as_slice()) {
                (Expect::Forward(method, url, _, _), [(m, u)]) if m == method && u == url => {
                    alike += 1
                }
                (Expect::Forward(..), []) => stricter.push(format!(
                    "{} {} {:?} → {:?} {}",
                    request.method,
                    request.target,
                    request.headers,
                    answer.status,
                    refused_by(&answer)
                )),
                (_, []) => {
                    alike += 1;
                    // Refused as the proxy refuses it, by tokengate or first by the gateway.
                    if answer.json()["error"].is_null() {
                        own_parser.push(format!(
                            "{} {} host {:?} {:?} → {:?}",
                            request.method,
                            request.target,
                            request.host,
                            request.headers,
                            answer.status
                        ));
                    }
                }
                (expect, seen) => {
                    failures.push(format!("{what}: want {expect:?}, the app saw {seen:?}"))
                }
            }
        }
        println!(
            "{g}: canonicalization table, {} requests: {alike} decided alike, refused only through the gateway: {stricter:?}; refused first by {g} itself: {own_parser:?}",
            table.len()
        );
    }
    stack.tg.assert_no_panic();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_body_the_gateway_keeps_is_refused_guarded_or_ignored_as_configured() {
    // (mode, POST to a path open to every method, POST to an album whose GET is refused)
    for (mode, open, album) in [
        ("refuse", 415, 415),
        ("guard", 200, 415),
        ("ignore", 200, 200),
    ] {
        let up = Upstream::start();
        let yaml = format!("{ENVOY}  authorize: {{unseen_body: {mode}}}\n");
        let (tg, authorize, _) = tokengate(up.addr, &yaml);
        let bearer = format!("Bearer {}", granted_token(&tg));
        let post = |path: &str| {
            let check = envoy_check("POST", path)
                .header("Authorization", &bearer)
                .header("Content-Type", "multipart/form-data; boundary=b");
            http1_answer(authorize, &check).status
        };
        assert_eq!(post("/open"), Some(open), "{mode}");
        assert_eq!(post("/albums/b"), Some(album), "{mode}");
        // A length of 0, reported by a gateway that reports lengths (Caddy), is no body at all.
        let empty = caddy_asks("POST", "/albums/b")
            .header("Authorization", &bearer)
            .header("Content-Type", "multipart/form-data; boundary=b")
            .header("X-Original-Content-Length", "0");
        assert_eq!(http1_answer(authorize, &empty).status, Some(200), "{mode}");
    }
}

#[test]
fn a_question_no_convention_reads_gets_a_clear_refusal_and_the_next_is_answered() {
    let up = Upstream::start();
    let (tg, authorize, _) = tokengate(up.addr, "tokengate:\n");
    for (request, message) in [
        (
            Req::new("GET", "/elsewhere"),
            "Ask the authorization listener at /nginx, /traefik, /caddy or /envoy followed by the request's path.",
        ),
        (
            Req::new("GET", "/nginx").header("X-Original-URI", "/a"),
            "The gateway did not report the request: nginx sends X-Original-Method and X-Original-URI, Traefik and Caddy X-Forwarded-Method and X-Forwarded-Uri.",
        ),
        (
            Req::new("GET", "/traefik")
                .header("X-Forwarded-Method", "GET")
                .header("X-Forwarded-Uri", "no-slash"),
            "The request target must be a path starting with / (or an http:// URL).",
        ),
    ] {
        let nginx = request.target == "/nginx";
        let answer = http1_answer(authorize, &request);
        // nginx passes on only 401 and 403: the real status comes in a header.
        let (status, real) = match nginx {
            true => (403, answer.header("x-tokengate-status")),
            false => (400, Some("400")),
        };
        assert_eq!((answer.status, real), (Some(status), Some("400")), "{answer:?}");
        assert_eq!(answer.json()["message"], message);
        let fine = Req::new("GET", "/traefik")
            .header("X-Forwarded-Method", "GET")
            .header("X-Forwarded-Uri", "/a");
        assert_eq!(http1_answer(authorize, &fine).status, Some(200));
    }
    tg.assert_no_panic();
}

#[test]
fn a_reload_changes_who_is_believed_without_a_restart() {
    let up = Upstream::start();
    let yaml = "tokengate:\n  authorize: {gateways: [10.9.9.9/32]}\n";
    let (tg, authorize, path) = tokengate(up.addr, yaml);
    let ask = caddy_asks("GET", "/a");
    assert_eq!(http1_answer(authorize, &ask).status, Some(403));
    std::fs::write(
        &path,
        "tokengate:\n  authorize: {gateways: [127.0.0.1/32]}\n",
    )
    .unwrap();
    tg.signal("-HUP");
    let start = Instant::now();
    while http1_answer(authorize, &ask).status != Some(200) {
        assert!(start.elapsed() < DEADLINE, "the reload never took");
        std::thread::sleep(Duration::from_millis(20));
    }
    tg.assert_no_panic();
}

/// `tokengate explain --gateway` on `request`, against `conf`: its JSON.
fn explain_as(gateway: &str, conf: &str, request: &Req) -> serde_json::Value {
    let mut args = vec![
        "-c".to_owned(),
        conf.to_owned(),
        "explain".to_owned(),
        "--json".to_owned(),
    ];
    args.extend(["--gateway".to_owned(), gateway.to_owned()]);
    args.extend([request.method.clone(), request.target.clone()]);
    match &request.host {
        Some(host) => args.push(format!("--header=Host: {host}")),
        None => args.push("--no-host".to_owned()),
    }
    for (name, value) in &request.headers {
        args.push(format!("--header={name}: {value}"));
    }
    match &request.body {
        Some((body, BodyFraming::Length)) => args.push(format!("--body={}", text(body))),
        Some((body, _)) => args.extend(["--chunked".to_owned(), format!("--body={}", text(body))]),
        // The test client sends `Content-Length: 0` with a bodiless request.
        None => args.push("--body=".to_owned()),
    }
    let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(&args)
        .env_clear()
        .env("TOKENGATE_SECRET", SECRET)
        .env("TOKENGATE_AUTHORIZE_LISTEN", "127.0.0.1:1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn explain_says_what_each_real_gateway_answers() {
    let stack = Stack::start("tokengate:\n  routes:\n    - {name: album, path: \"/albums/{album}\", methods: [GET], require: {resource: \"{album}\", access: see}}\n");
    let token = granted_token(&stack.tg);
    let mut requests: Vec<Req> = canonical_table()
        .into_iter()
        .map(|(r, _, _)| r)
        // What a command line can carry: no NUL, no HTTP/2-only framing.
        .filter(|r| r.host.is_some() && !matches!(r.body, Some((_, BodyFraming::Unframed))))
        .filter(|r| {
            let in_headers = r
                .headers
                .iter()
                .any(|(n, v)| n.contains('\0') || v.contains('\0'));
            let in_body = r.body.as_ref().is_some_and(|(b, _)| b.contains(&0));
            !r.target.contains('\0') && !in_headers && !in_body
        })
        .collect();
    for target in ["/albums/a", "/albums/b", "/albums/a/../b", "/open"] {
        for auth in [
            None,
            Some(format!("Bearer {token}")),
            Some("Bearer a.b.c".to_owned()),
        ] {
            let mut r = Req::new("GET", target);
            if let Some(auth) = auth {
                r = r.header("Authorization", &auth);
            }
            requests.push(r);
        }
    }
    let mut disagreements = Vec::new();
    let mut compared = 0;
    for gateway in &stack.gateways {
        let g = gateway.name;
        for request in &requests {
            // Traefik re-encodes percent-escapes (Go's URL handling) before it reports a
            // target; explain reports the target as sent, and would refuse what Traefik cleaned.
            if g == "traefik" && request.target.contains('%') {
                continue;
            }
            let before = stack.up.seen().len();
            let real = http1_answer(gateway.addr, request);
            let reached = stack.up.seen().len() > before;
            let explained = explain_as(g, &stack.conf, request);
            let answer = &explained["answer"];
            // What the client gets: nginx's error page answers the status tokengate names.
            let status = match g {
                "nginx" => answer["headers"]
                    .as_array()
                    .and_then(|h| h.iter().find(|h| h["name"] == "x-tokengate-status"))
                    .and_then(|h| h["value"].as_str()?.parse().ok())
                    .or_else(|| answer["status"].as_u64()),
                _ => answer["status"].as_u64(),
            };
            let code = answer["body"]["error"].as_str();
            let agree = match explained["plan"].as_str() {
                Some("allow") => reached,
                _ => {
                    // The gateway's own parser may refuse first: then tokengate was not asked.
                    let by_gateway = real.json()["error"].is_null();
                    !reached
                        && (by_gateway
                            || (real.status.map(u64::from) == status
                                && real.json()["error"].as_str() == code))
                }
            };
            compared += 1;
            if !agree {
                disagreements.push(format!(
                    "{g}: {} {} {:?}: explain {} {status:?} {code:?}, the gateway {:?} {:?}, reached the app: {reached}",
                    request.method,
                    request.target,
                    request.headers,
                    explained["plan"],
                    real.status,
                    real.headers,
                ));
            }
        }
    }
    println!(
        "explain --gateway against the real gateways: {compared} requests, {} disagreements",
        disagreements.len()
    );
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}

#[test]
fn each_question_gets_an_access_log_line() {
    let up = Upstream::start();
    let yaml = "tokengate:\n  auth: required\n";
    let (tg, authorize, _) = tokengate_with(up.addr, yaml, &[("TOKENGATE_ACCESS_LOG", "true")]);
    let ask = caddy_asks("GET", "/albums/./a?secret=1").header("X-Request-Id", "log-1");
    assert_eq!(http1_answer(authorize, &ask).status, Some(401));
    let lines = tg.access_log(1);
    let line = lines.iter().find(|l| l.contains("log-1")).unwrap();
    let entry: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(entry["route"], "authorize");
    assert_eq!(entry["status"], 401);
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["path"], "/albums/a");
    assert_eq!(entry["reason"], "missing_token");
}

#[test]
fn a_question_whose_head_never_ends_is_closed_and_the_listener_goes_on() {
    let up = Upstream::start();
    let (tg, authorize, _) = tokengate(up.addr, "tokengate:\n  header_timeout: 1s\n");
    assert_closes_unfinished_head(authorize, b"GET /caddy HTTP/1.1\r\nHost: a\r\n");
    assert_eq!(
        http1_answer(authorize, &caddy_asks("GET", "/a")).status,
        Some(200)
    );
    tg.assert_no_panic();
}

#[test]
fn a_kept_body_is_judged_after_the_head_as_the_proxy_judges_it() {
    let up = Upstream::start();
    let (tg, authorize, _) = tokengate(up.addr, "tokengate:\n  auth: required\n");
    // Without a token, the head's own refusal comes first, as through the proxy.
    let form =
        envoy_check("POST", "/x").header("Content-Type", "application/x-www-form-urlencoded");
    let answer = http1_answer(authorize, &form);
    assert_eq!(answer.status, Some(401), "{answer:?}");
    assert_eq!(answer.json()["error"], "missing_token");
    let proxied = http1_answer(
        tg.addr,
        &Req::new("POST", "/x")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(b"_method=DELETE", BodyFraming::Length),
    );
    assert_eq!(proxied.status, Some(401));
    // With one, the body it cannot see is what refuses it.
    let bearer = format!("Bearer {}", common::session("gw"));
    let answer = http1_answer(authorize, &form.header("Authorization", &bearer));
    assert_eq!(answer.status, Some(415), "{answer:?}");
}
