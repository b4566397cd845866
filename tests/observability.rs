//! Metrics, probes and the access log, as an operator's Prometheus and log pipeline see them.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::wire::{EveryProtocol, Protocol, Req};
use common::*;

const FORM: &str = "application/x-www-form-urlencoded";

#[test]
fn a_known_mix_of_requests_moves_each_counter_by_exactly_its_share() {
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[]);
    let bearer = format!("Bearer {}", session("ivy"));
    let series = [
        "tokengate_tokens_minted_total",
        r#"tokengate_token_rejections_total{reason="missing_token"}"#,
        r#"tokengate_token_rejections_total{reason="invalid_token"}"#,
        r#"tokengate_token_rejections_total{reason="invalid_permission"}"#,
        r#"tokengate_token_rejections_total{reason="method_not_allowed"}"#,
        r#"tokengate_requests_total{code="200",route="token"}"#,
        r#"tokengate_requests_total{code="401",route="token"}"#,
        r#"tokengate_requests_total{code="422",route="token"}"#,
        r#"tokengate_requests_total{code="405",route="token"}"#,
        r#"tokengate_requests_total{code="200",route="proxy"}"#,
    ];
    let before: Vec<f64> = series.iter().map(|s| tg.metric(s)).collect();
    for _ in 0..3 {
        assert_eq!(tg.request(&token_request(&[&bearer], None, "")).status, 200);
    }
    for _ in 0..2 {
        assert_eq!(tg.request(&token_request(&[], None, "")).status, 401);
    }
    assert_eq!(
        tg.request(&token_request(&["Bearer a.b.c"], None, ""))
            .status,
        401
    );
    let reserved = "permission=%7B%22exp%22%3A1%7D";
    assert_eq!(
        tg.request(&token_request(&[&bearer], Some(FORM), reserved))
            .status,
        422
    );
    assert_eq!(
        tg.request(b"GET /api/v1/token HTTP/1.1\r\nHost: a\r\n\r\n")
            .status,
        405
    );
    for _ in 0..4 {
        assert_eq!(
            tg.request(b"GET /images HTTP/1.1\r\nHost: a\r\n\r\n")
                .status,
            200
        );
    }
    // Counters move after the response is written: poll until they settle, then compare exactly.
    let expected = [3.0, 2.0, 1.0, 1.0, 1.0, 3.0, 3.0, 1.0, 1.0, 4.0];
    let start = Instant::now();
    let deltas = loop {
        let deltas: Vec<f64> = series
            .iter()
            .zip(&before)
            .map(|(s, b)| tg.metric(s) - b)
            .collect();
        if deltas == expected || start.elapsed() > Duration::from_secs(5) {
            break deltas;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(deltas, expected);
    assert_eq!(tg.metric("tokengate_in_flight_requests"), 0.0);
}

#[test]
fn promtool_finds_a_real_scrape_clean() {
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[]);
    tg.request(&token_request(
        &[&format!("Bearer {}", session("jo"))],
        None,
        "",
    ));
    tg.request(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
    let scrape = tg.metrics();
    for name in [
        "tokengate_requests_total",
        "tokengate_request_duration_seconds_bucket",
        "tokengate_tokens_minted_total",
        "tokengate_token_rejections_total",
        "tokengate_upstream_errors_total",
        "tokengate_upstream_duration_seconds_bucket",
        "tokengate_in_flight_requests",
        "tokengate_build_info",
        "process_resident_memory_bytes",
    ] {
        assert!(scrape.contains(&format!("\n{name}")), "{name} missing");
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (bash .ci/setup installs Debian's prometheus package)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real Prometheus server on loopback scrapes the admin port; the value comes back through
/// its HTTP query API.
#[test]
fn a_real_prometheus_reads_the_minted_counter() {
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[]);
    let bearer = format!("Bearer {}", session("kim"));
    for _ in 0..5 {
        assert_eq!(tg.request(&token_request(&[&bearer], None, "")).status, 200);
    }
    let dir = std::env::temp_dir().join(format!("tokengate-prom-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tokengate\n    static_configs:\n      - targets: ['{}']\n",
            tg.admin
        ),
    )
    .unwrap();
    let web = format!("127.0.0.1:{}", free_port());
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (bash .ci/setup installs Debian's prometheus package)");
    let query = "/api/v1/query?query=tokengate_tokens_minted_total%7Bjob%3D%22tokengate%22%7D";
    let raw = format!("GET {query} HTTP/1.1\r\nHost: {web}\r\nConnection: close\r\n\r\n");
    let start = Instant::now();
    let value = loop {
        let answer = try_request(web.parse().unwrap(), raw.as_bytes())
            .ok()
            .filter(|r| r.status == 200);
        let value = answer.and_then(|r| {
            r.json()["data"]["result"][0]["value"][1]
                .as_str()
                .map(str::to_owned)
        });
        if let Some(value) = value {
            break value;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = prometheus.kill();
            panic!("Prometheus never returned the metric");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(value, "5");
}

#[test]
fn the_access_log_has_one_json_line_per_request_and_no_token() {
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[]);
    let token = session("lee");
    let bearer = format!("Bearer {token}");
    let requests: Vec<(String, Vec<u8>)> = vec![
        ("rid-mint".into(), token_request(&[&bearer], None, "")),
        ("rid-401".into(), token_request(&["Bearer a.b.c"], None, "")),
        (
            "rid-proxy".into(),
            format!(
                "GET /albums/1?secret=x HTTP/1.1\r\nHost: a\r\nAuthorization: {bearer}\r\n\r\n"
            )
            .into_bytes(),
        ),
    ];
    for (id, raw) in &requests {
        let raw = String::from_utf8(raw.clone()).unwrap().replacen(
            "\r\n",
            &format!("\r\nX-Request-Id: {id}\r\n"),
            1,
        );
        tg.request(raw.as_bytes());
    }
    let lines = tg.access_log(3);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let mut entries: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Each line is written when its request ends, on whichever worker ran it: the order of
    // lines from different connections is not the order the requests were sent in.
    let order = ["rid-mint", "rid-401", "rid-proxy"];
    let rank = |e: &serde_json::Value| order.iter().position(|id| e["request_id"] == *id);
    entries.sort_by_key(rank);
    let ids: Vec<&str> = entries
        .iter()
        .map(|e| e["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, order);
    let e = &entries[0];
    assert_eq!(
        (
            e["method"].as_str(),
            e["path"].as_str(),
            e["status"].as_u64()
        ),
        (Some("POST"), Some("/api/v1/token"), Some(200))
    );
    assert_eq!(
        (
            e["route"].as_str(),
            e["subject"].as_str(),
            e["reason"].as_str()
        ),
        (Some("token"), Some("lee"), None)
    );
    assert!(e["bytes_out"].as_u64().unwrap() > 100);
    assert_eq!(
        (entries[1]["status"].as_u64(), entries[1]["reason"].as_str()),
        (Some(401), Some("invalid_token"))
    );
    let p = &entries[2];
    assert_eq!(
        (
            p["path"].as_str(),
            p["route"].as_str(),
            p["subject"].as_str()
        ),
        (Some("/albums/1"), Some("proxy"), Some("lee"))
    );
    assert_eq!(
        p["bytes_out"].as_u64(),
        Some("upstream says hi".len() as u64)
    );
    assert!(p["upstream_duration"].as_f64().is_some());
    for e in &entries {
        let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "time",
                "request_id",
                "method",
                "path",
                "status",
                "route",
                "duration",
                "upstream_duration",
                "bytes_in",
                "bytes_out",
                "subject",
                "reason"
            ]
        );
    }
    let everything = format!(
        "{}\n{}",
        lines.join("\n"),
        tg.stderr.lock().unwrap().join("\n")
    );
    let signature = token.rsplit('.').next().unwrap();
    assert!(
        !everything.contains(signature)
            && !everything.contains(SECRET)
            && !everything.contains("secret=x")
    );
}

#[test]
fn text_log_format_and_access_log_off() {
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[("TOKENGATE_LOG_FORMAT", "text")]);
    tg.request(b"GET /p?q=1 HTTP/1.1\r\nHost: a\r\nX-Request-Id: rid-text\r\n\r\n");
    let line = tg.access_log(1).remove(0);
    assert!(line.contains(" rid-text GET /p 200 route=proxy "), "{line}");

    let quiet = Tokengate::start(up.addr, &[("TOKENGATE_ACCESS_LOG", "false")]);
    quiet.request(b"GET /p HTTP/1.1\r\nHost: a\r\n\r\n");
    // The /metrics answer proves the request was fully processed before looking at stdout.
    let start = Instant::now();
    while quiet.metric(r#"tokengate_requests_total{code="200",route="proxy"}"#) < 1.0 {
        assert!(start.elapsed() < DEADLINE);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(quiet.stdout.lock().unwrap().is_empty());
}

/// A dashboard panel or an alert on a metric nobody exports would stay silently empty.
#[test]
fn dashboard_and_alerts_query_only_exported_metrics() {
    let tg = Tokengate::start(dead_upstream(), &[]);
    tg.request(&token_request(
        &[&format!("Bearer {}", session("mo"))],
        None,
        "",
    ));
    tg.request(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
    let scrape = tg.metrics();
    let exported: std::collections::BTreeSet<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let root = env!("CARGO_MANIFEST_DIR");
    for file in [
        "k8s/monitoring/grafana-dashboard.json",
        "k8s/monitoring/tokengate-rules.yaml",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let used: Vec<&str> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("tokengate_") || w.starts_with("process_"))
            .collect();
        assert!(used.len() >= 5, "{file} queries almost nothing");
        for name in used {
            let histogram = format!("{name}_bucket");
            assert!(
                exported.contains(name) || exported.contains(histogram.as_str()),
                "{file} queries {name}, which /metrics does not export"
            );
        }
    }
}

/// Every WARN or ERROR line tokengate wrote so far.
fn alarms(tg: &Tokengate) -> Vec<String> {
    let lines = tg.stderr.lock().unwrap();
    lines
        .iter()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .cloned()
        .collect()
}

#[test]
fn healthy_keep_alive_traffic_writes_no_warn_or_error_line() {
    let up = Upstream::start();
    let gate = EveryProtocol::start(
        "quiet",
        up.addr,
        "tokengate:\n",
        &[("TOKENGATE_LOG", "info")],
    );
    let tg = &gate.tg;
    let started = alarms(tg);
    assert!(started.is_empty(), "{started:?}");
    // Keep-alive requests from 4 connections at once, through a healthy upstream: curl's URL
    // globbing reuses connections.
    let url = format!("http://{}/quiet/[1-2000]", tg.addr);
    let out = Command::new("curl")
        .args(["-s", "-Z", "--parallel-max", "4", "--http1.1"])
        .args(["-o", "/dev/null", "-w", "%{http_code}\n", &url])
        .output()
        .expect("curl");
    let codes = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        codes.lines().filter(|c| *c == "200").count(),
        2000,
        "{codes}"
    );
    // HTTP/2 on both listeners, a stream a connection.
    let requests: Vec<Req> = (0..300)
        .map(|i| Req::new("GET", &format!("/quiet/h2/{i}")))
        .collect();
    for protocol in [Protocol::H2c, Protocol::H2Tls] {
        let answers = gate.send_all(protocol, &requests);
        let ok = answers.iter().filter(|a| a.status == Some(200)).count();
        assert_eq!(
            ok,
            300,
            "{}: {:?}",
            protocol.name(),
            answers.iter().find(|a| a.status != Some(200))
        );
    }
    assert_eq!(
        tg.metric_eventually(
            r#"tokengate_requests_total{code="200",route="proxy"}"#,
            2600.0
        ),
        2600.0
    );
    let alarms = alarms(tg);
    assert!(
        alarms.is_empty(),
        "{} lines:\n{}",
        alarms.len(),
        alarms.join("\n")
    );
}
