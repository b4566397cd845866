//! A newcomer's first hour, as the README tells it: the shipped `conf/tokengate.yaml` in front of
//! `tokengate demo-app`, then the README's own lines, run as written (the binary and the ports
//! substituted): an allowed request, a refused one, `explain` saying why, the minted counter.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const README: &str = include_str!("../README.md");
const CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/tokengate.yaml");

/// The README's shell block under `heading`, the `n`th of its section.
fn shell_block(heading: &str, n: usize) -> String {
    let section = README.split(heading).nth(1).expect("the README section");
    section
        .split("```sh\n")
        .nth(n + 1)
        .and_then(|b| b.split("```").next())
        .expect("a shell block")
        .to_owned()
}

/// The demo app, killed when dropped.
struct DemoApp(Child);

impl Drop for DemoApp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn demo_app() -> (DemoApp, SocketAddr) {
    on_a_free_port("demo-app", |port| {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .args(["demo-app", "--listen", &addr.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        loop {
            if try_request(
                addr,
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            )
            .is_ok_and(|r| r.status == 200)
            {
                return Some((DemoApp(child), addr));
            }
            if child.try_wait().ok().flatten().is_some() {
                return None;
            }
            assert!(start.elapsed() < DEADLINE, "demo-app never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

#[test]
fn the_readmes_first_steps_show_an_allowed_request_a_refused_one_and_why() {
    let (_app, app) = demo_app();
    let tg = Tokengate::start_with_args(app, &[], &["-c", CONF]);
    let steps = shell_block("## Trying it", 1)
        .replace("cargo run --release -q --", env!("CARGO_BIN_EXE_tokengate"))
        .replace("127.0.0.1:8080", &tg.addr.to_string())
        .replace("127.0.0.1:9090", &tg.admin.to_string());
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &steps])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("TOKENGATE_SECRET", SECRET)
        .output()
        .unwrap();
    let text = text(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        common::text(&out.stderr)
    );
    for want in [
        "\"app\": \"tokengate demo-app\"",
        "\"x-user-id\": \"alice\"",
        "{\"error\":\"forbidden\",\"message\":\"The token does not grant the ability this route requires.\"}",
        "route       #1 delete (upstream default, auth passthrough)",
        "verdict     deny",
        "answer      403",
        "tokengate_tokens_minted_total 1",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    // And the demo app's own line in the README starts what the test started.
    assert_eq!(
        shell_block("## Trying it", 0).trim(),
        "cargo run --release -q -- demo-app"
    );
    tg.assert_no_panic();
}
