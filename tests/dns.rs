//! Upstreams that move: a real DNS server (dnsmasq) on loopback serves the upstream group's name
//! in a private network and mount namespace; its answer changes, and traffic follows within the
//! group's `resolve_interval` with no failed request. Needs root for the namespaces, as CI has.

mod common;

use std::process::Command;

#[test]
fn traffic_follows_a_changed_dns_answer_without_a_failed_request() {
    let scratch = std::env::temp_dir().join(format!("tokengate-dns-{}", common::free_port()));
    std::fs::create_dir_all(&scratch).unwrap();
    let s = scratch.display();
    let script = format!(
        "set -eu
ip link set lo up
printf 'nameserver 127.0.0.1\\noptions timeout:1 attempts:2\\n' > {s}/resolv.conf
printf '127.0.0.1 localhost\\n' > {s}/hosts
mount --bind {s}/resolv.conf /etc/resolv.conf
mount --bind {s}/hosts /etc/hosts
exec {python} -B {app} {binary} {s}",
        python = common::python(),
        app = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps/dns_follow.py"),
        binary = env!("CARGO_BIN_EXE_tokengate"),
    );
    let out = Command::new("unshare")
        .args(["--mount", "--net", "--propagation", "private", "--fork"])
        .args(["bash", "-c", &script])
        .output()
        .expect("unshare (util-linux)");
    let _ = std::fs::remove_dir_all(&scratch);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the DNS test did not run (root and dnsmasq needed): {stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{stderr}", String::from_utf8_lossy(&out.stdout)));
    let answers = report["answers"].as_array().unwrap();
    let changed_at = report["changed_at"].as_u64().unwrap() as usize;
    let body = |a: &serde_json::Value| a[1].as_str().unwrap().to_owned();

    let failed: Vec<&serde_json::Value> = answers.iter().filter(|a| a[0] != 200).collect();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(
        answers[..changed_at]
            .iter()
            .all(|a| body(a) == "upstream 127.0.0.2"),
        "before the change every request goes to the first address"
    );
    let followed = answers[changed_at..]
        .iter()
        .find(|a| body(a) == "upstream 127.0.0.3")
        .expect("traffic never followed the new address");
    // resolve_interval 1 s and a 1 s TTL: the new address within about two seconds (a
    // generous bound, for a loaded machine).
    let seconds = followed[2].as_f64().unwrap();
    assert!(seconds < 5.0, "followed after {seconds:.2} s");
    let last = &answers[answers.len() - 200..];
    assert!(
        last.iter().all(|a| body(a) == "upstream 127.0.0.3"),
        "the vanished address still gets requests"
    );
}
