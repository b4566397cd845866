//! Live reload under a steady stream of requests: a route added (the file changed, no signal),
//! a group moved to other addresses, a secret rotated (SIGHUP), then a broken configuration.
//! No request of the stream fails, the new rules apply, and the broken file is refused while the
//! previous configuration keeps serving.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const SECOND: &str = "second-secret-for-the-reload-test-0123456789";

fn write(path: &Path, text: &str) {
    // As a ConfigMap or an editor's save does: whole, then renamed over.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn config(secrets: &Path, pics: std::net::SocketAddr, extra_route: &str, extra: &str) -> String {
    format!(
        "tokengate:
  secret_file: {}
{extra}  upstreams:
    pics: {{addresses: ['{pics}']}}
  routes:
    - {{name: pics, path: /pics, upstream: pics, auth: required}}
{extra_route}",
        secrets.display()
    )
}

/// Keep-alive clients sending authenticated requests to `/pics` until stopped; every status.
struct Stream {
    stop: Arc<AtomicBool>,
    statuses: Arc<Mutex<Vec<u16>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Stream {
    fn start(tg: &Tokengate, clients: usize) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let statuses = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|i| {
                let (stop, statuses, addr) = (stop.clone(), statuses.clone(), tg.addr);
                let raw = format!(
                    "GET /pics/{i} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\n\r\n",
                    session("streamer")
                );
                thread::spawn(move || {
                    let mut conn = connect(addr);
                    while !stop.load(Ordering::Relaxed) {
                        let status = exchange(&mut conn, raw.as_bytes()).map_or(0, |r| r.status);
                        statuses.lock().unwrap().push(status);
                        if status == 0 {
                            conn = connect(addr);
                        }
                    }
                })
            })
            .collect();
        Stream {
            stop,
            statuses,
            threads,
        }
    }

    fn count(&self) -> usize {
        self.statuses.lock().unwrap().len()
    }

    fn finish(self) -> Vec<u16> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.statuses)
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

fn poll(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: not within the deadline"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_live_reload_swaps_routes_groups_and_keys_without_a_failed_request() {
    let dir = std::env::temp_dir().join(format!("tokengate-reload-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let secrets = dir.join("secrets");
    std::fs::write(&secrets, format!("{SECRET}\n")).unwrap();
    let conf = dir.join("tokengate.yaml");
    let (old_pics, new_pics, default) = (Upstream::start(), Upstream::start(), Upstream::start());
    write(&conf, &config(&secrets, old_pics.addr, "", ""));
    let tg = Tokengate::start_with_args(
        default.addr,
        &[("TOKENGATE_SECRET", "")],
        &["-c", conf.to_str().unwrap()],
    );
    let admin = || {
        tg.request(b"GET /admin/users HTTP/1.1\r\nHost: a\r\n\r\n")
            .status
    };
    let reloads = |result: &str| {
        tg.metric(&format!(
            "tokengate_config_reloads_total{{result=\"{result}\"}}"
        ))
    };
    assert_eq!(admin(), 200, "no /admin route yet: passed through");
    let stream = Stream::start(&tg, 4);
    poll("the stream runs", || stream.count() > 50);

    // 1. A route added; the file changes, no signal is sent.
    let admin_route = "    - {name: admin, path: /admin, auth: required}\n";
    write(&conf, &config(&secrets, old_pics.addr, admin_route, ""));
    poll("the new route applies", || admin() == 401);
    // Counted just after the swap the request above saw.
    poll("the reload is counted", || reloads("ok") == 1.0);

    // 2. The group moves to other addresses; a restart-only setting changes beside it. A
    // download begun before the reload finishes from the old address, on the old configuration.
    // (The test upstream answers one request at a time: while the download sits unread, the
    // stream's requests to the old address wait for it, and still none fails.)
    const DOWNLOAD: usize = 2 << 20;
    let mut download = connect(tg.addr);
    write!(
        download,
        "GET /pics/bytes/{DOWNLOAD} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\n\r\n",
        session("downloader")
    )
    .unwrap();
    let downloads = |up: &Upstream| {
        up.seen()
            .iter()
            .filter(|s| s.url.starts_with("/pics/bytes"))
            .count()
    };
    poll("the download reaches the old address", || {
        downloads(&old_pics) == 1
    });
    let moved = config(
        &secrets,
        new_pics.addr,
        admin_route,
        "  header_timeout: 5s\n",
    );
    write(&conf, &moved);
    tg.signal("-HUP");
    poll("traffic follows the group", || new_pics.seen().len() > 20);
    let settled = old_pics.seen().len();
    let before = new_pics.seen().len();
    poll("more traffic", || new_pics.seen().len() > before + 50);
    assert_eq!(
        old_pics.seen().len(),
        settled,
        "requests still reach the old address"
    );
    let downloaded = read_response(&mut download).unwrap();
    assert_eq!((downloaded.status, downloaded.body.len()), (200, DOWNLOAD));
    assert_eq!((downloads(&old_pics), downloads(&new_pics)), (1, 0));
    tg.logged("configuration reload: header_timeout changed and needs a restart");

    // 3. A secret rotated: the new one signs, the old one still verifies the stream's tokens.
    // (SIGHUP reaches both the secret reloader and the configuration reloader; wait for both.)
    let ok_before_rotation = reloads("ok");
    std::fs::write(&secrets, format!("{SECOND}\n{SECRET}\n")).unwrap();
    tg.signal("-HUP");
    let mint = || {
        let r = tg.request(&token_request(
            &[&format!("Bearer {}", session("m"))],
            None,
            "",
        ));
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["token"].as_str().unwrap().to_owned()
    };
    let signed_by = |token: &str, secret: &str| {
        let (message, sig) = token.rsplit_once('.').unwrap();
        let key = jsonwebtoken::DecodingKey::from_secret(secret.as_bytes());
        jsonwebtoken::crypto::verify(
            sig,
            message.as_bytes(),
            &key,
            jsonwebtoken::Algorithm::HS256,
        )
        .unwrap()
    };
    poll("the rotated secret signs", || signed_by(&mint(), SECOND));
    poll("the configuration is reloaded", || {
        reloads("ok") > ok_before_rotation
    });

    // 4. A broken configuration is refused; the running one keeps serving.
    let ok_before = reloads("ok");
    write(
        &conf,
        "tokengate:\n  routes: [{name: x, path: /x, upstream: nowhere}]\n",
    );
    tg.signal("-HUP");
    poll("the broken file is refused", || reloads("error") >= 1.0);
    let refused = tg.logged("configuration reload refused");
    assert!(refused.contains("nowhere"), "{refused}");
    assert_eq!(admin(), 401);
    let before = new_pics.seen().len();
    poll("traffic continues", || new_pics.seen().len() > before + 50);
    assert!(signed_by(&mint(), SECOND));
    assert_eq!(reloads("ok"), ok_before);

    let statuses = stream.finish();
    let failed: Vec<&u16> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(statuses.len() > 300, "only {} requests", statuses.len());
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        statuses.len()
    );
    tg.assert_no_panic();
    std::fs::remove_dir_all(dir).unwrap();
}
