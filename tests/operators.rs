//! What operators and their tooling do to a running gate: signals at any instant of its life
//! (a ConfigMap reloader's `SIGHUP` while it starts, a `SIGINT` right after), and what the gate
//! owns in every answer (`X-Request-Id` once, `X-token` never the upstream's).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Polls until something accepts connections on `addr`: the instant a listener is bound.
fn wait_accepting(addr: SocketAddr, tg: &mut Tokengate) {
    let start = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(tg.alive(), "tokengate exited while starting");
        assert!(start.elapsed() < DEADLINE, "{addr} never accepted");
        thread::sleep(Duration::from_millis(2));
    }
}

/// A tokengate spawned on free ports, not yet waited for.
fn spawn(up: SocketAddr) -> Tokengate {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    Tokengate::spawn_on(addr, admin, up, &[("TOKENGATE_LOG", "info")], &[])
}

/// Bytes the process wrote to stderr.
fn logged_bytes(tg: &Tokengate) -> usize {
    tg.stderr.lock().unwrap().iter().map(|l| l.len() + 1).sum()
}

#[test]
fn sighup_from_the_first_socket_on_reloads_and_never_ends_the_process() {
    let up = Upstream::start();
    for round in 0..10 {
        let mut tg = spawn(up.addr);
        // As the port first accepts, and (every other round) again at once.
        let admin = tg.admin;
        let port = if round % 2 == 0 { tg.addr } else { admin };
        wait_accepting(port, &mut tg);
        tg.signal("-HUP");
        if round % 2 == 1 {
            tg.signal("-HUP");
        }
        assert!(tg.try_wait_ready(), "round {round}: not ready");
        assert!(tg.alive(), "round {round}: SIGHUP ended the process");
        let r = tg.request(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(r.status, 200, "round {round}");
        // The hangup is a reload owed: it happens once the watcher runs.
        tg.logged("configuration reloaded (SIGHUP)");
        tg.assert_no_panic();
    }
}

#[test]
fn sigint_at_any_instant_of_start_up_exits_promptly_without_flooding_the_log() {
    let up = Upstream::start();
    for round in 0..12 {
        let mut tg = spawn(up.addr);
        let addr = tg.addr;
        match round % 3 {
            0 => wait_accepting(addr, &mut tg),
            1 => {
                let admin = tg.admin;
                wait_accepting(admin, &mut tg)
            }
            _ => assert!(tg.try_wait_ready()),
        }
        tg.signal("-INT");
        // Gone, whichever way: by its handler, or by the signal itself before one runs.
        tg.wait_exit(Duration::from_secs(10));
        // Give the pipe's reader a moment to take the last lines, then bound what was logged.
        let start = Instant::now();
        let mut last = usize::MAX;
        while logged_bytes(&tg) != last && start.elapsed() < Duration::from_secs(2) {
            last = logged_bytes(&tg);
            thread::sleep(Duration::from_millis(50));
        }
        let bytes = logged_bytes(&tg);
        assert!(bytes < 32 * 1024, "round {round}: {bytes} bytes logged");
    }
}

/// An upstream that answers every request with its own `X-Request-Id` and `X-token`.
fn meddling_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let mut buf = [0u8; 8192];
                let mut pending = Vec::new();
                loop {
                    let Ok(n) = stream.read(&mut buf) else { return };
                    if n == 0 {
                        return;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\nX-Request-Id: upstream-id\r\nX-token: upstream-token\r\nContent-Length: 2\r\n\r\nok";
                        if stream.write_all(answer).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn every_answer_carries_one_request_id_and_only_the_gates_token() {
    let tg = Tokengate::start(meddling_upstream(), &[]);
    let token = session("alice");
    for (authorization, id, want_token) in [
        (None, None, None),
        (None, Some("client-1"), None),
        (Some(token.as_str()), None, Some(token.as_str())),
        (Some("a.b.c"), Some("client-2"), None),
    ] {
        let mut raw = String::from("GET /x HTTP/1.1\r\nHost: a\r\n");
        if let Some(t) = authorization {
            raw.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(id) = id {
            raw.push_str(&format!("X-Request-Id: {id}\r\n"));
        }
        raw.push_str("\r\n");
        let r = tg.request(raw.as_bytes());
        assert_eq!(r.status, 200);
        let ids: Vec<&str> = r
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("x-request-id"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(ids.len(), 1, "{ids:?}");
        match id {
            Some(id) => assert_eq!(ids[0], id),
            None => assert_eq!(ids[0].len(), 36, "a new UUID: {ids:?}"),
        }
        let tokens: Vec<&str> = r
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("x-token"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(tokens, want_token.into_iter().collect::<Vec<_>>());
    }
    tg.assert_no_panic();
}

/// Polls `path` until it holds a process id.
fn read_pid(path: &std::path::Path) -> u32 {
    let start = Instant::now();
    loop {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            return pid;
        }
        assert!(start.elapsed() < DEADLINE, "no pid in {}", path.display());
        thread::sleep(Duration::from_millis(20));
    }
}

/// A daemon's process, killed if a test ends before it does.
struct Daemon(u32);

impl Drop for Daemon {
    fn drop(&mut self) {
        if alive(self.0) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn kill(signal: &str, pid: u32) {
    let ok = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// Polls `path` until it holds `needle`.
fn wait_logged(path: &std::path::Path, needle: &str) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "never logged {needle:?}: {text}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_daemon_reloads_its_relative_configuration_and_exits_once_drained() {
    let up = Upstream::start();
    let dir = std::env::temp_dir().join(format!("tokengate-daemon-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let (listen, admin) = (free_port(), free_port());
    let conf = |endpoint: &str| {
        format!(
            "pid_file: {dir}/tg.pid\nerror_log: {dir}/tg.log\nupgrade_sock: {dir}/tg.sock\n\
             tokengate:\n  listen: 127.0.0.1:{listen}\n  admin_listen: 127.0.0.1:{admin}\n  \
             upstream: {up}\n  endpoint: {endpoint}\n  log_format: text\n",
            dir = dir.display(),
            up = up.addr
        )
    };
    std::fs::write(dir.join("tg.yaml"), conf("a:1")).unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["-d", "-c", "tg.yaml"])
        .current_dir(&dir)
        .env_clear()
        .env("TOKENGATE_SECRET", SECRET)
        .status()
        .unwrap();
    assert!(status.success());
    let pid = read_pid(&dir.join("tg.pid"));
    let _daemon = Daemon(pid);
    let log = dir.join("tg.log");
    let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let start = Instant::now();
    while try_request(
        admin_addr,
        b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .map_or(true, |r| r.status != 200)
    {
        assert!(start.elapsed() < DEADLINE, "the daemon never became ready");
        thread::sleep(Duration::from_millis(20));
    }
    // The daemon runs from `/`: the relative path was made absolute when it started.
    std::fs::write(dir.join("tg.yaml"), conf("b:2")).unwrap();
    kill("-HUP", pid);
    let text = wait_logged(&log, "configuration reloaded (SIGHUP)");
    assert!(!text.contains("cannot read"), "{text}");
    // Nothing in flight: SIGTERM ends it at once, not after the 10 s grace period.
    let start = Instant::now();
    kill("-TERM", pid);
    while alive(pid) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "still draining after 5 s"
        );
        thread::sleep(Duration::from_millis(20));
    }
    wait_logged(&log, "drained: no request in flight, exiting");
}

#[test]
fn probes_are_answered_until_the_process_exits_after_sigterm() {
    let up = Upstream::start();
    let mut tg = Tokengate::start(up.addr, &[("TOKENGATE_GRACE_PERIOD", "5s")]);
    // A request in flight keeps the process draining.
    let mut conn = tg.connect();
    conn.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhalf")
        .unwrap();
    let start = Instant::now();
    while tg.metric("tokengate_in_flight_requests") < 1.0 {
        assert!(start.elapsed() < DEADLINE);
        thread::sleep(Duration::from_millis(10));
    }
    tg.signal("-TERM");
    let admin = tg.admin;
    let probe = |path: &str| {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        try_request(admin, raw.as_bytes()).map(|r| r.status)
    };
    // From the signal on: not ready, still alive, on new connections, again and again.
    let start = Instant::now();
    while probe("/readyz").ok() != Some(503) {
        assert!(start.elapsed() < DEADLINE, "readyz never said draining");
        thread::sleep(Duration::from_millis(10));
    }
    for _ in 0..20 {
        assert_eq!(probe("/readyz").ok(), Some(503));
        assert_eq!(probe("/healthz").ok(), Some(200));
        thread::sleep(Duration::from_millis(20));
    }
    conn.write_all(b"other!").unwrap();
    let r = read_response(&mut conn).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(tg.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(
        probe("/healthz").is_err(),
        "the admin listener outlived the process"
    );
}

#[test]
fn a_failed_health_check_is_one_short_line() {
    let up = Upstream::start();
    let dead = dead_upstream();
    let yaml = format!(
        "tokengate:\n  upstreams:\n    pool: {{addresses: ['{}', '{dead}'], health_check_interval: 100ms}}\n  routes:\n    - {{name: pool, path: /pool, upstream: pool}}\n",
        up.addr
    );
    let path = conf("health", &yaml);
    let tg = Tokengate::start_with_args(up.addr, &[], &["-c", &path]);
    let line = tg.logged("becomes unhealthy");
    assert!(
        line.contains(&format!("upstream pool address {dead} becomes unhealthy")),
        "{line}"
    );
    assert!(line.len() < 400, "{} bytes: {line}", line.len());
}

#[test]
fn a_flood_of_broken_connections_writes_a_few_lines_a_second() {
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[]);
    let before = tg.stderr.lock().unwrap().len();
    // Each breaks off in the middle of its request head: one log line each, unlimited.
    for _ in 0..300 {
        let mut conn = tg.connect();
        let _ = conn.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Half: ");
        let _ = conn.shutdown(std::net::Shutdown::Both);
    }
    // The gate still serves; what it logs has reached the pipe once its count stops moving.
    assert_eq!(
        tg.request(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").status,
        200
    );
    let start = Instant::now();
    let mut last = usize::MAX;
    while tg.stderr.lock().unwrap().len() != last && start.elapsed() < Duration::from_secs(2) {
        last = tg.stderr.lock().unwrap().len();
        thread::sleep(Duration::from_millis(100));
    }
    let lines: Vec<String> = tg.stderr.lock().unwrap()[before..].to_vec();
    assert!(
        !lines.is_empty(),
        "nothing logged: the flood proves nothing"
    );
    assert!(lines.len() <= 20, "{} lines: {lines:?}", lines.len());
    tg.assert_no_panic();
}

#[test]
fn an_admin_request_whose_head_never_ends_is_closed_and_probes_go_on() {
    let up = Upstream::start();
    let conf = conf("admin-slow", "tokengate:\n  header_timeout: 1s\n");
    let tg = Tokengate::start_with_args(up.addr, &[], &["-c", &conf]);
    assert_closes_unfinished_head(tg.admin, b"GET /metrics HTTP/1.1\r\nHost: a\r\n");
    let probe = request(
        tg.admin,
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(probe.status, 200);
}

#[test]
fn sigint_ends_start_up_even_where_the_parent_ignores_it() {
    let up = Upstream::start();
    for _ in 0..5 {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        // A background job of a non-interactive shell starts with SIGINT ignored; `exec`
        // keeps the pid, so the signal goes to tokengate itself.
        let mut cmd = std::process::Command::new("sh");
        cmd.args([
            "-c",
            "trap '' INT; exec \"$0\"",
            env!("CARGO_BIN_EXE_tokengate"),
        ]);
        let mut tg = Tokengate::spawn_command(cmd, addr, admin, up.addr, &[]);
        wait_accepting(admin, &mut tg);
        tg.signal("-INT");
        tg.wait_exit(Duration::from_secs(10));
    }
}
