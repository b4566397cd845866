//! Shutdown and zero-downtime upgrade, with traffic flowing.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn sigterm_during_a_slow_upload_lets_it_complete() {
    let up = Upstream::start();
    let mut tg = Tokengate::start(up.addr, &[("TOKENGATE_GRACE_PERIOD", "5s")]);
    let mut conn = tg.connect();
    let total = 64 * 1024;
    conn.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {total}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let piece = vec![b's'; total / 8];
    conn.write_all(&piece).unwrap();
    let start = Instant::now();
    while tg.metric("tokengate_in_flight_requests") < 1.0 {
        assert!(start.elapsed() < DEADLINE);
        std::thread::sleep(Duration::from_millis(10));
    }
    tg.signal("-TERM");
    // The rest trickles in after the signal, over about a second.
    for _ in 1..8 {
        std::thread::sleep(Duration::from_millis(120));
        conn.write_all(&piece).unwrap();
    }
    let r = read_response(&mut conn).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "upstream says hi"));
    assert_eq!(up.seen()[0].body_len, total);
    assert_eq!(tg.wait_exit(Duration::from_secs(5)), Some(0));
}

/// A configuration whose upgrade socket is free, with a short grace period.
fn upgrade_conf() -> (std::path::PathBuf, std::path::PathBuf) {
    let sock = std::env::temp_dir().join(format!("tokengate-upgrade-{}.sock", free_port()));
    let conf = std::env::temp_dir().join(format!("tokengate-upgrade-{}.yaml", free_port()));
    std::fs::write(
        &conf,
        format!(
            "upgrade_sock: {}\ntokengate:\n  grace_period: 1s\n",
            sock.display()
        ),
    )
    .unwrap();
    (sock, conf)
}

/// Waits for the new instance's upgrade socket.
fn wait_for(sock: &std::path::Path) {
    let start = Instant::now();
    while !sock.exists() {
        assert!(
            start.elapsed() < DEADLINE,
            "the new instance never opened {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `tokengate -u` takes the listening sockets over from a running instance that got `SIGQUIT`;
/// a client hammering the proxy the whole time sees no failure.
#[test]
fn upgrade_under_a_stream_of_requests_fails_none() {
    let up = Upstream::start();
    let (sock, conf) = upgrade_conf();
    let conf_arg = conf.to_str().unwrap();
    let mut old = Tokengate::start_with_args(up.addr, &[], &["-c", conf_arg]);
    let addr = old.addr;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let client = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match try_request(
                    addr,
                    b"GET /during-upgrade HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                ) {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        errors.push(format!("{other:?}"));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            errors
        })
    };

    let mut new = Tokengate::spawn_on(old.addr, old.admin, up.addr, &[], &["-c", conf_arg, "-u"]);
    wait_for(&sock);
    let before = ok.load(Ordering::Relaxed);
    old.signal("-QUIT");
    assert_eq!(old.wait_exit(Duration::from_secs(20)), Some(0));
    // Only the new instance is left: it must keep serving.
    let after_old = ok.load(Ordering::Relaxed);
    let start = Instant::now();
    while ok.load(Ordering::Relaxed) < after_old + 50 {
        assert!(
            start.elapsed() < DEADLINE,
            "the new instance serves nothing"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let errors = client.join().unwrap();
    assert!(new.alive());
    // What each instance logged says which of them failed a request, and why.
    let logs = |tg: &Tokengate| tg.stderr.lock().unwrap().join("\n");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests: {errors:?}\nold instance:\n{}\nnew instance:\n{}",
        logs(&old),
        logs(&new)
    );
    assert!(
        after_old > before,
        "no request was served while the old instance handed over"
    );
    let _ = std::fs::remove_file(conf);
}

/// A connection the old instance holds, idle between requests, whose next request arrives only
/// after the old instance stopped listening at an upgrade, is answered and then closed: Pingora
/// alone closes it unanswered, and a connection accepted a moment before the listeners stopped
/// is lost the same way.
#[test]
fn a_request_arriving_just_after_an_upgrade_stopped_the_listeners_is_answered() {
    let up = Upstream::start();
    let (sock, conf) = upgrade_conf();
    let conf_arg = conf.to_str().unwrap();
    let mut old =
        Tokengate::start_with_args(up.addr, &[("TOKENGATE_LOG", "info")], &["-c", conf_arg]);
    let mut conn = old.connect();
    let r = exchange(&mut conn, b"GET /before HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(r.status, 200);
    let _new = Tokengate::spawn_on(old.addr, old.admin, up.addr, &[], &["-c", conf_arg, "-u"]);
    wait_for(&sock);
    old.signal("-QUIT");
    old.logged("Graceful shutdown started");
    let r = exchange(&mut conn, b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!((r.status, r.header("Connection")), (200, Some("close")));
    assert_eq!(up.seen().last().map(|s| s.url.as_str()), Some("/after"));
    assert_eq!(old.wait_exit(Duration::from_secs(20)), Some(0));
    let _ = std::fs::remove_file(conf);
}
