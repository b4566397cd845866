//! Tracing: one span per request exported over OTLP/HTTP to a real receiver (the official
//! opentelemetry-proto messages decode it), the caller's trace continued and passed upstream,
//! and a collector that is down changes nothing for requests.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// The Python OTLP receiver; its spans, one JSON value each.
struct Receiver {
    port: u16,
    child: Child,
    spans: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let port = free_port();
        let mut child = Command::new("python3")
            .args(["otlp_receiver.py", &port.to_string()])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with opentelemetry-proto (bash .ci/setup)");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let (out, sink) = (child.stdout.take().unwrap(), spans.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(span) = serde_json::from_str(&line) {
                    sink.lock().unwrap().push(span);
                }
            }
        });
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < DEADLINE,
                "the OTLP receiver did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Receiver { port, child, spans }
    }

    fn spans(&self, n: usize) -> Vec<serde_json::Value> {
        let start = Instant::now();
        loop {
            let spans = self.spans.lock().unwrap().clone();
            if spans.len() >= n || start.elapsed() > DEADLINE {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn conf(port: u16) -> String {
    let path = std::env::temp_dir().join(format!("tokengate-tracing-{}.yaml", free_port()));
    std::fs::write(
        &path,
        format!(
            "tokengate:\n  tracing: {{endpoint: 'http://127.0.0.1:{port}/v1/traces', service_name: gate-under-test, interval: 100ms, timeout: 500ms}}\n  routes:\n    - {{name: albums, path: /albums}}\n"
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

#[test]
fn one_span_per_request_continuing_the_callers_trace() {
    let receiver = Receiver::start();
    let up = Upstream::start();
    let tg = Tokengate::start_with_args(up.addr, &[], &["-c", &conf(receiver.port)]);
    let continued = format!(
        "GET /albums/1 HTTP/1.1\r\nHost: h\r\ntraceparent: 00-{TRACE}-{PARENT}-01\r\ntracestate: vendor=x\r\nX-Request-Id: rid-7\r\n\r\n"
    );
    let r = tg.request(continued.as_bytes());
    assert_eq!((r.status, r.header("X-Request-Id")), (200, Some("rid-7")));
    assert_eq!(
        tg.request(b"GET /other HTTP/1.1\r\nHost: h\r\n\r\n").status,
        200
    );
    assert_eq!(tg.request(&token_request(&[], None, "")).status, 401);

    let spans = receiver.spans(3);
    assert_eq!(spans.len(), 3, "{spans:?}");
    let by_name = |name: &str| {
        spans
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no span {name}: {spans:?}"))
    };
    let albums = by_name("proxy albums");
    assert_eq!(albums["service"], "gate-under-test");
    assert_eq!(albums["trace_id"], TRACE);
    assert_eq!(albums["parent_span_id"], PARENT);
    assert_eq!(albums["trace_state"], "vendor=x");
    assert_eq!(albums["kind"], 2, "SERVER");
    assert_eq!(albums["attributes"]["http.request.method"], "GET");
    assert_eq!(albums["attributes"]["http.response.status_code"], 200);
    // The upstream continues the trace under tokengate's span.
    let seen = &up.seen()[0];
    let span_id = albums["span_id"].as_str().unwrap();
    assert_eq!(
        seen.all("traceparent"),
        [format!("00-{TRACE}-{span_id}-01").as_str()]
    );
    assert_eq!(seen.all("tracestate"), ["vendor=x"]);
    // Without a caller's trace, a new one starts; the token route gets its span too.
    let other = by_name("proxy default");
    assert_ne!(other["trace_id"], TRACE);
    assert_eq!(other["parent_span_id"], "");
    assert_eq!(
        up.seen()[1].all("traceparent")[0].split('-').nth(1),
        other["trace_id"].as_str()
    );
    let token = by_name("token");
    assert_eq!(token["attributes"]["http.response.status_code"], 401);
    // Nothing about the caller's identity is in a span.
    for span in &spans {
        let text = span.to_string();
        assert!(
            !text.contains("user_id") && !text.contains("Bearer"),
            "{text}"
        );
    }
}

#[test]
fn a_collector_that_is_down_changes_nothing_for_requests() {
    let receiver = Receiver::start();
    let port = receiver.port;
    drop(receiver);
    let up = Upstream::start();
    let tg = Tokengate::start_with_args(up.addr, &[], &["-c", &conf(port)]);
    let mut conn = tg.connect();
    for i in 0..50 {
        let r = exchange(
            &mut conn,
            format!("GET /albums/{i} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 200);
    }
    assert_eq!(up.seen().len(), 50);
    let start = Instant::now();
    while tg.metric(r#"tokengate_span_exports_total{result="error"}"#) < 1.0 {
        assert!(start.elapsed() < DEADLINE, "failed exports are not counted");
        std::thread::sleep(Duration::from_millis(20));
    }
}
