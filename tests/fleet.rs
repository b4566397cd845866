//! Fleet scale: two tokengate replicas sharing one real Redis on loopback. Mint limits and
//! route limits count across both, a sign-out on one is enforced by the other within a second,
//! and Redis going away and coming back follows the configured failure modes.

mod common;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::wire::{BodyFraming, EveryProtocol, Protocol, Req};
use common::*;

/// A real `redis-server` on a loopback port, without persistence; killed when dropped.
struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    /// On a free port; another port if something else took the chosen one first.
    fn start() -> Redis {
        on_a_free_port("redis-server", Redis::try_start_on)
    }

    fn start_on(port: u16) -> Redis {
        Redis::try_start_on(port).expect("redis-server could not listen on its port again")
    }

    /// `None` when redis-server exits instead of listening (its port was taken).
    fn try_start_on(port: u16) -> Option<Redis> {
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (bash .ci/setup installs it)");
        let start = Instant::now();
        // Listening is not enough: the port may be another test's; only Redis answers PONG.
        while !answers_ping(port) {
            if child.try_wait().ok().flatten().is_some() {
                return None;
            }
            assert!(start.elapsed() < DEADLINE, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Redis { port, child })
    }

    fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn conf(redis_port: u16) -> String {
    let yaml = format!(
        "tokengate:
  redis: {{url: 'redis://127.0.0.1:{redis_port}', timeout: 200ms, key_prefix: 'test-{redis_port}:'}}
  rate_limit: {{mints: 1, per: 60s, burst: 5}}
  routes:
    - name: private
      path: /private
      auth: required
    - name: limited
      path: /limited/{{album}}
      require: {{resource: '{{album}}', access: see}}
      limit: {{key: 'param:album', requests: 1, per: 60s, burst: 3}}
    - name: open
      path: /open
      limit: {{key: subject, requests: 1, per: 60s, burst: 3}}
"
    );
    let path = std::env::temp_dir().join(format!("tokengate-fleet-{}.yaml", free_port()));
    std::fs::write(&path, yaml).unwrap();
    path.to_str().unwrap().to_owned()
}

fn answers_ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

/// One Redis, an upstream, the configuration naming them, and two replicas on it, both
/// connected to Redis.
fn fleet() -> (Redis, Upstream, String, Tokengate, Tokengate) {
    let redis = Redis::start();
    let up = Upstream::start();
    let conf = conf(redis.port);
    let start = || Tokengate::start_with_args(up.addr, &[], &["-c", &conf]);
    let (a, b) = (start(), start());
    wait_connected(&a);
    wait_connected(&b);
    (redis, up, conf, a, b)
}

fn mint_status(tg: &Tokengate, session: &str, id: &str) -> (u16, Option<String>) {
    let body = format!(
        r#"{{"permission":{{"Id":"{id}","abilities":{{"{id}":{{"Access":{{"see":true}}}}}}}}}}"#
    );
    let r = tg.request(&token_request(
        &[&format!("Bearer {session}")],
        Some("application/json"),
        &body,
    ));
    let token = (r.status == 200).then(|| r.json()["token"].as_str().unwrap().to_owned());
    (r.status, token)
}

fn get(tg: &Tokengate, path: &str, token: Option<&str>) -> Resp {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    tg.request(format!("GET {path} HTTP/1.1\r\nHost: h\r\n{auth}\r\n").as_bytes())
}

/// Polls `check` until it is true or `within` passed; returns how long it took.
fn within(within: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if check() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn wait_connected(tg: &Tokengate) {
    assert!(
        within(DEADLINE, || tg.metric("tokengate_redis_up") == 1.0).is_some(),
        "never connected to redis"
    );
}

#[test]
fn the_mint_limit_holds_across_replicas() {
    let (_redis, _up, _conf, a, b) = fleet();
    let greedy = session("burst");
    let statuses: Vec<u16> = (0..10)
        .map(|i| mint_status(if i % 2 == 0 { &a } else { &b }, &greedy, "x").0)
        .collect();
    // A burst of 5 in all, not 5 per replica.
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        5,
        "{statuses:?}"
    );
    // Someone else still mints.
    assert_eq!(mint_status(&b, &session("other"), "x").0, 200);
}

#[test]
fn a_route_limit_keyed_by_the_checked_album_holds_across_replicas() {
    let (_redis, _up, _conf, a, b) = fleet();
    let (_, album_a) = mint_status(&a, &session("lim"), "A");
    let (_, album_b) = mint_status(&a, &session("lim2"), "B");
    let (album_a, album_b) = (album_a.unwrap(), album_b.unwrap());
    let statuses: Vec<u16> = (0..6)
        .map(|i| {
            get(
                if i % 2 == 0 { &a } else { &b },
                "/limited/A",
                Some(&album_a),
            )
            .status
        })
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
    // Another token for the same album, minted with another Id by the same user or by someone
    // else, is no way around the limit: the key is the album the grant was checked against.
    for (user, id) in [("lim", "A2"), ("lim3", "A3")] {
        let body = format!(
            r#"{{"permission":{{"Id":"{id}","abilities":{{"A":{{"Access":{{"see":true}}}}}}}}}}"#
        );
        let r = a.request(&token_request(
            &[&format!("Bearer {}", session(user))],
            Some("application/json"),
            &body,
        ));
        let other = r.json()["token"].as_str().unwrap().to_owned();
        assert_eq!(
            get(&b, "/limited/A", Some(&other)).status,
            429,
            "{user} {id}"
        );
    }
    let refused = get(&b, "/limited/A", Some(&album_a));
    assert_eq!(refused.json()["error"], "rate_limited");
    let retry: u64 = refused.header("Retry-After").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Another claim value counts on its own.
    assert_eq!(get(&b, "/limited/B", Some(&album_b)).status, 200);
}

#[test]
fn a_sign_out_on_one_replica_is_enforced_by_the_other_within_a_second() {
    let (_redis, _up, conf, a, b) = fleet();
    let old = session("leaver");
    let (_, minted) = mint_status(&a, &old, "x");
    let minted = minted.unwrap();
    for tg in [&a, &b] {
        assert_eq!(get(tg, "/private", Some(&old)).status, 200);
        assert_eq!(get(tg, "/private", Some(&minted)).status, 200);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["-c", &conf, "revoke", "--subject", "leaver"])
        .env("TOKENGATE_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for tg in [&b, &a] {
        let took = within(Duration::from_secs(1), || {
            get(tg, "/private", Some(&old)).status == 401
        });
        assert!(
            took.is_some(),
            "a replica still accepts a signed-out session after a second"
        );
        let r = get(tg, "/private", Some(&minted));
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (401, Some("invalid_token"))
        );
        // Minting from the old session is refused too.
        assert_eq!(mint_status(tg, &old, "x").0, 401);
    }
    // A session issued after the sign-out works: `iat` counts whole seconds and one in the
    // future is refused, so wait for the clock to pass the second the sign-out happened in.
    let signed_out_by = now();
    assert!(within(Duration::from_secs(3), || now() > signed_out_by).is_some());
    let now = now();
    let fresh = sign_raw(
        r#"{"typ":"JWT","alg":"HS256"}"#,
        &format!(r#"{{"exp":{},"iat":{now},"user_id":"leaver"}}"#, now + 3600),
        SECRET,
    );
    assert_eq!(get(&a, "/private", Some(&fresh)).status, 200);
    // Other subjects were never affected.
    assert_eq!(get(&b, "/private", Some(&session("stayer"))).status, 200);
}

#[test]
fn redis_going_away_follows_the_failure_modes_and_its_return_is_picked_up() {
    let (redis, _up, _conf, mut a, mut b) = fleet();
    let (_, token) = mint_status(&a, &session("steady"), "R");
    let token = token.unwrap();
    let port = redis.stop();
    // Sign-out checks fail closed: token-bearing requests get 503 (no 5xx beyond that).
    for tg in [&a, &b] {
        let closed = within(DEADLINE, || get(tg, "/private", Some(&token)).status == 503);
        assert!(closed.is_some(), "sign-out checks did not fail closed");
        let r = get(tg, "/private", Some(&token));
        assert_eq!(r.json()["error"], "unavailable");
        // Requests without a token are served as before.
        assert_eq!(get(tg, "/public", None).status, 200);
        assert_eq!(tg.metric("tokengate_redis_up"), 0.0);
        assert!(tg.metric(r#"tokengate_redis_errors_total{feature="revocation"}"#) >= 1.0);
    }
    assert!(a.alive() && b.alive());
    // Limits fail open: counted locally by nobody, every anonymous limited request is served.
    let served = (0..5)
        .filter(|_| get(&a, "/open", None).status == 200)
        .count();
    assert_eq!(served, 5);
    assert!(a.metric(r#"tokengate_redis_errors_total{feature="limits"}"#) >= 1.0);
    // Redis comes back (empty): both replicas pick it up without a restart.
    let _redis = Redis::start_on(port);
    for tg in [&a, &b] {
        let back = within(DEADLINE, || get(tg, "/private", Some(&token)).status == 200);
        assert!(back.is_some(), "redis's return was not picked up");
        assert_eq!(tg.metric("tokengate_redis_up"), 1.0);
    }
    let statuses: Vec<u16> = (0..4)
        .map(|_| get(&b, "/limited/R", Some(&token)).status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
    a.logged("sign-out checks fail closed");
}

#[test]
fn a_redis_that_accepts_but_never_answers_is_retried_until_a_real_one_answers() {
    // A listener that takes connections and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in silent.incoming() {
            match stream {
                Ok(s) if open.len() < 8 => open.push(s),
                _ => return,
            }
        }
    });
    let up = Upstream::start();
    let conf = conf(port);
    let mut tg = Tokengate::start_with_args(up.addr, &[], &["-c", &conf]);
    let errors = r#"tokengate_redis_errors_total{feature="revocation"}"#;
    // Each attempt gives up within the timeout and is counted, instead of waiting forever.
    assert!(
        within(DEADLINE, || tg.metric(errors) >= 3.0).is_some(),
        "stuck on a silent redis"
    );
    assert_eq!(tg.metric("tokengate_redis_up"), 0.0);
    assert_eq!(get(&tg, "/public", None).status, 200);
    // Once the silent listener is gone and Redis takes its port, the next attempt connects.
    let _ = std::net::TcpStream::connect(("127.0.0.1", port));
    drop(held.join());
    let _redis = Redis::start_on(port);
    wait_connected(&tg);
    assert!(tg.alive());
}

/// A mint limit and an album-keyed route limit, both with a burst of two and no refill.
const BURST_OF_TWO: &str = "tokengate:
  rate_limit: {mints: 1, per: 3600s, burst: 2}
  routes:
    - name: lim
      path: /lim/{album}
      require: {resource: '{album}', access: see}
      limit: {key: 'param:album', requests: 1, per: 3600s, burst: 2}
";

/// Half the requests over HTTP/1.1, each on its own connection, half as streams of one h2c
/// connection, all released at once; their statuses.
fn all_at_once(gate: &EveryProtocol, requests: &[Req]) -> Vec<Option<u16>> {
    let (http1, http2) = requests.split_at(requests.len() / 2);
    let start = std::sync::Barrier::new(http1.len() + 1);
    std::thread::scope(|scope| {
        let streams = scope.spawn(|| {
            start.wait();
            gate.multiplex(false, http2)
        });
        let connections: Vec<_> = http1
            .iter()
            .map(|r| {
                let start = &start;
                scope.spawn(move || {
                    start.wait();
                    common::wire::http1_answer(gate.tg.addr, r)
                })
            })
            .collect();
        let mut answers: Vec<_> = connections.into_iter().map(|c| c.join().unwrap()).collect();
        answers.extend(streams.join().unwrap());
        answers.iter().map(|a| a.status).collect()
    })
}

fn mint_request(user: &str, album: &str) -> Req {
    let body =
        format!(r#"{{"permission":{{"abilities":{{"{album}":{{"Access":{{"see":true}}}}}}}}}}"#);
    Req::new("POST", "/api/v1/token")
        .header("Authorization", &format!("Bearer {}", session(user)))
        .header("Content-Type", "application/json")
        .body(body.as_bytes(), BodyFraming::Length)
}

#[test]
fn simultaneous_requests_never_pass_more_than_the_burst_locally_or_through_redis() {
    let redis = Redis::start();
    let shared = BURST_OF_TWO.replace(
        "tokengate:\n",
        &format!(
            "tokengate:\n  redis: {{url: 'redis://127.0.0.1:{}', timeout: 2s, key_prefix: 'burst:'}}\n",
            redis.port
        ),
    );
    let up = Upstream::start();
    for (mode, yaml) in [("local", BURST_OF_TWO), ("redis", shared.as_str())] {
        let gate = EveryProtocol::start(&format!("burst-{mode}"), up.addr, yaml, &[]);
        if mode == "redis" {
            wait_connected(&gate.tg);
        }
        let want = |n: usize| {
            let mut statuses = vec![Some(200); 2];
            statuses.extend(vec![Some(429); n - 2]);
            statuses
        };
        for round in 0..15 {
            // Mints of one subject: 10 HTTP/1.1 connections and 10 HTTP/2 streams at once.
            let subject = format!("{mode}-minter-{round}");
            let mints: Vec<Req> = (0..20).map(|_| mint_request(&subject, "x")).collect();
            let mut got = all_at_once(&gate, &mints);
            got.sort();
            assert_eq!(got, want(20), "{mode} mints, round {round}");
            // Requests for one album, with tokens of two users.
            let album = format!("{mode}-album-{round}");
            let token = |user: &str| {
                let answer = gate.send(Protocol::Http1, &mint_request(user, &album));
                answer.json()["token"].as_str().unwrap().to_owned()
            };
            let tokens = [token(&format!("{album}-u1")), token(&format!("{album}-u2"))];
            let uploads: Vec<Req> = (0..20)
                .map(|i| {
                    Req::new("GET", &format!("/lim/{album}"))
                        .header("Authorization", &format!("Bearer {}", tokens[i % 2]))
                })
                .collect();
            let mut got = all_at_once(&gate, &uploads);
            got.sort();
            assert_eq!(got, want(20), "{mode} route limit, round {round}");
        }
        gate.tg.assert_no_panic();
    }
}
