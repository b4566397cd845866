//! The rendered pods must start: each overlay's tokengate container run as the kubelet would run
//! it. The overlay is rendered with `kubectl kustomize`; every volume the container mounts is
//! written the way the kubelet writes it (ConfigMap data and the Secret docs/kubernetes.md creates, in
//! the atomic-writer layout, root-owned, `defaultMode` or 0644, group `fsGroup` with group read
//! when one is set; emptyDirs as 0777 tmpfs) and bind-mounted at its `mountPath` in a private
//! mount and network namespace, with the root filesystem read-only when the container says so
//! and cluster host names resolved to loopback upstreams through a bind-mounted `/etc/hosts`.
//! The binary then runs with the container's `args` and `env`, as its user, group and
//! supplementary `fsGroup`, without capabilities or new privileges (`setpriv`).
//!
//! Required: `/healthz` and `/readyz` answer 200 on the probe ports, a request through the
//! proxy port reaches the upstream, a token minted with the mounted secret verifies, `SIGTERM`
//! exits 0 within `terminationGracePeriodSeconds`; and an upstream name that does not resolve
//! yet keeps `/readyz` at 503 without ending the process, until it does. Needs root (for the
//! namespaces), as CI has.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::{chown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

use common::pki::Pki;

/// The secret docs/kubernetes.md's `kubectl create secret generic tokengate-secrets
/// --from-file=secrets=./secrets` would hold.
const SECRET: &str = "pod-test-secret-pod-test-secret-pod-test-0000";

fn render(overlay: &str) -> Vec<Value> {
    let dir = format!("{}/k8s/overlays/{overlay}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("kubectl")
        .args(["kustomize", &dir])
        .output()
        .expect("kubectl kustomize");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize as _;

fn str_of<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path).and_then(Value::as_str)
}

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, key| v.get(*key))
}

/// What the kubelet needs to know to run the tokengate container of an overlay.
struct PodSpec {
    run_as_user: u32,
    run_as_group: u32,
    fs_group: Option<u32>,
    grace_seconds: u64,
    container: Value,
    volumes: Vec<Value>,
    config_maps: Vec<Value>,
}

fn pod_spec(docs: &[Value]) -> PodSpec {
    let (pod, container) = docs
        .iter()
        .filter(|d| str_of(d, &["kind"]) == Some("Deployment"))
        .filter_map(|d| at(d, &["spec", "template", "spec"]))
        .find_map(|pod| {
            ["initContainers", "containers"]
                .iter()
                .filter_map(|k| pod.get(*k).and_then(Value::as_sequence))
                .flatten()
                .find(|c| str_of(c, &["name"]) == Some("tokengate"))
                .map(|c| (pod, c.clone()))
        })
        .expect("a Deployment with a tokengate container");
    let id = |key: &str| {
        at(pod, &["securityContext", key])
            .and_then(Value::as_u64)
            .map(|v| v as u32)
    };
    PodSpec {
        run_as_user: id("runAsUser").expect("runAsUser"),
        run_as_group: id("runAsGroup").expect("runAsGroup"),
        fs_group: id("fsGroup"),
        grace_seconds: pod
            .get("terminationGracePeriodSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(30),
        container,
        volumes: pod
            .get("volumes")
            .and_then(Value::as_sequence)
            .cloned()
            .unwrap_or_default(),
        config_maps: docs
            .iter()
            .filter(|d| str_of(d, &["kind"]) == Some("ConfigMap"))
            .cloned()
            .collect(),
    }
}

/// Writes `files` into `dir` as the kubelet's atomic writer does: a timestamped directory,
/// `..data` pointing at it, one symlink per key; root-owned, `mode`, group `fs_group` with
/// group read added when there is one.
fn write_volume(dir: &Path, files: &BTreeMap<String, String>, mode: u32, fs_group: Option<u32>) {
    let stamp = dir.join("..2026_11_28_00_00_00.000000000");
    std::fs::create_dir_all(&stamp).unwrap();
    let group = fs_group.unwrap_or(0);
    let (file_mode, dir_mode) = match fs_group {
        Some(_) => (mode | 0o440, 0o2755),
        None => (mode, 0o755),
    };
    for (key, content) in files {
        let path = stamp.join(key);
        std::fs::write(&path, content).unwrap();
        chown(&path, Some(0), Some(group)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file_mode)).unwrap();
        symlink(format!("..data/{key}"), dir.join(key)).unwrap();
    }
    for d in [dir, stamp.as_path()] {
        chown(d, Some(0), Some(group)).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(dir_mode)).unwrap();
    }
    symlink(stamp.file_name().unwrap(), dir.join("..data")).unwrap();
}

fn mode_of(volume: &Value, kind: &str, default: u32) -> u32 {
    at(volume, &[kind, "defaultMode"])
        .and_then(Value::as_u64)
        .map_or(default, |m| m as u32)
}

/// The shell lines that mount every volume the container mounts, and the host names its env
/// names (for `/etc/hosts`) with the loopback ports upstreams must listen on.
fn mounts(spec: &PodSpec, work: &Path) -> (String, Vec<String>) {
    let mut script = String::new();
    let mut created = Vec::new();
    let mounts = spec
        .container
        .get("volumeMounts")
        .and_then(Value::as_sequence)
        .cloned()
        .unwrap_or_default();
    for mount in &mounts {
        let name = str_of(mount, &["name"]).unwrap();
        let path = str_of(mount, &["mountPath"]).unwrap().to_owned();
        let read_only = mount
            .get("readOnly")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let volume = spec
            .volumes
            .iter()
            .find(|v| str_of(v, &["name"]) == Some(name))
            .unwrap_or_else(|| panic!("volume {name} is mounted but not declared"));
        let dir = work.join("volumes").join(name);
        if !Path::new(&path).exists() {
            created.push(path.clone());
        }
        writeln!(script, "mkdir -p '{path}'").unwrap();
        if volume.get("emptyDir").is_some() {
            let group = spec
                .fs_group
                .map(|g| format!(",gid={g}"))
                .unwrap_or_default();
            writeln!(script, "mount -t tmpfs -o mode=0777{group} {name} '{path}'").unwrap();
            continue;
        }
        let files: BTreeMap<String, String> = if let Some(cm) = volume.get("configMap") {
            let wanted = str_of(cm, &["name"]).unwrap();
            let object = spec
                .config_maps
                .iter()
                .find(|c| str_of(c, &["metadata", "name"]) == Some(wanted))
                .unwrap_or_else(|| panic!("ConfigMap {wanted} is not rendered"));
            serde_yaml::from_value(object.get("data").cloned().unwrap()).unwrap()
        } else if let Some(secret) = volume.get("secret") {
            match str_of(secret, &["secretName"]) {
                Some("tokengate-tls") => tls_secret(),
                _ => BTreeMap::from([("secrets".to_owned(), format!("{SECRET}\n"))]),
            }
        } else {
            panic!("volume {name}: only configMap, secret and emptyDir are emulated");
        };
        let default = if volume.get("secret").is_some() {
            "secret"
        } else {
            "configMap"
        };
        write_volume(&dir, &files, mode_of(volume, default, 0o644), spec.fs_group);
        writeln!(script, "mount --bind '{}' '{path}'", dir.display()).unwrap();
        if read_only {
            writeln!(script, "mount -o remount,bind,ro '{path}'").unwrap();
        }
    }
    (script, created)
}

/// What `kubectl create secret tls tokengate-tls --cert=… --key=…` holds.
fn tls_secret() -> BTreeMap<String, String> {
    let pki = Pki::new("pod");
    pki.ca("ca");
    let (cert, key) = pki.leaf("ca", "tokengate", "DNS:tokengate", "serverAuth");
    [("tls.crt", cert), ("tls.key", key)]
        .into_iter()
        .map(|(name, path)| (name.to_owned(), std::fs::read_to_string(path).unwrap()))
        .collect()
}

fn env_of(container: &Value) -> Vec<(String, String)> {
    container
        .get("env")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .map(|e| {
            let name = str_of(e, &["name"]).unwrap().to_owned();
            let value = str_of(e, &["value"])
                .unwrap_or_else(|| panic!("env {name}: only value is emulated"));
            (name, value.to_owned())
        })
        .collect()
}

/// The port a probe names, by name (resolved through the container's ports) or number.
fn probe_port(container: &Value, probe: &str) -> (String, u16) {
    let get = at(container, &[probe, "httpGet"]).unwrap_or_else(|| panic!("{probe}.httpGet"));
    let path = str_of(get, &["path"]).unwrap().to_owned();
    let port = match get.get("port").unwrap() {
        Value::Number(n) => n.as_u64().unwrap() as u16,
        Value::String(name) => container
            .get("ports")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .find(|p| str_of(p, &["name"]) == Some(name.as_str()))
            .and_then(|p| p.get("containerPort").and_then(Value::as_u64))
            .unwrap_or_else(|| {
                panic!("{probe} names port {name}, which the container does not declare")
            }) as u16,
        other => panic!("{probe} port {other:?}"),
    };
    (path, port)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

struct Outcome {
    lines: Vec<String>,
    status: Option<i32>,
}

/// Runs one overlay's container as the kubelet would; the script prints `CHECK name ok|fail …`
/// lines and the logs.
fn run_pod(overlay: &str) -> Outcome {
    let spec = pod_spec(&render(overlay));
    // The pod's files live outside anything it mounts over (its /tmp emptyDir would hide a
    // checkout under /tmp), and the binary is copied in, as an image holds it.
    let work = PathBuf::from(format!(
        "/run/tokengate-pod-{overlay}-{}",
        common::free_port()
    ));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("scratch")).unwrap();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755)).unwrap();
    let binary = work.join("tokengate");
    std::fs::copy(env!("CARGO_BIN_EXE_tokengate"), &binary).unwrap();
    let binary = binary.display().to_string();
    let (mount_script, created) = mounts(&spec, &work);
    let volume_mounts = spec
        .container
        .get("volumeMounts")
        .and_then(Value::as_sequence);
    for mount in volume_mounts.into_iter().flatten() {
        let path = str_of(mount, &["mountPath"]).unwrap();
        assert!(
            !work.starts_with(path),
            "{path} would hide the test's own files"
        );
    }
    let env = env_of(&spec.container);
    let args: Vec<String> = spec
        .container
        .get("args")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    // Upstreams named in the env: `host:port` values whose host is a name go to /etc/hosts.
    let upstreams: Vec<(String, u16)> = env
        .iter()
        .filter(|(name, _)| name == "TOKENGATE_UPSTREAM")
        .filter_map(|(_, v)| v.rsplit_once(':'))
        .map(|(h, p)| (h.to_owned(), p.parse().unwrap()))
        .collect();
    // The shared Redis the env names, started on loopback like an upstream.
    let redis: Option<(String, u16)> = env
        .iter()
        .find(|(name, _)| name == "TOKENGATE_REDIS_URL")
        .and_then(|(_, url)| url.strip_prefix("redis://"))
        .and_then(|rest| rest.split('/').next())
        .and_then(|hp| hp.rsplit_once(':'))
        .map(|(h, p)| (h.to_owned(), p.parse().unwrap()));
    let names: Vec<&str> = upstreams
        .iter()
        .chain(redis.iter())
        .map(|(h, _)| h.as_str())
        .filter(|h| h.parse::<std::net::IpAddr>().is_err())
        .collect();
    let (health_path, health_port) = probe_port(&spec.container, "livenessProbe");
    let (ready_path, ready_port) = probe_port(&spec.container, "readinessProbe");
    let port_named = |name: &str| {
        spec.container
            .get("ports")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .find(|p| str_of(p, &["name"]) == Some(name))
            .and_then(|p| p.get("containerPort").and_then(Value::as_u64))
            .map(|p| p as u16)
    };
    let proxy_port = port_named("http").expect("an http port");
    // A TLS port serves with the certificate from the mounted Secret.
    let check_tls = match port_named("https") {
        Some(port) => format!(
            "body=$(curl -sk -m 5 https://127.0.0.1:{port}/anything)\n\
             check tls \"$( [ \"$body\" = \"upstream ok\" ] && echo ok || echo fail)\" \"$body\"\n"
        ),
        None => String::new(),
    };
    let read_only_root = at(
        &spec.container,
        &["securityContext", "readOnlyRootFilesystem"],
    )
    .and_then(Value::as_bool)
    .unwrap_or(false);
    let no_new_privs = at(
        &spec.container,
        &["securityContext", "allowPrivilegeEscalation"],
    )
    .and_then(Value::as_bool)
        == Some(false);
    let groups = spec
        .fs_group
        .map_or("--clear-groups".to_owned(), |g| format!("--groups={g}"));
    let env_args: String = env
        .iter()
        .map(|(k, v)| format!(" {}", shell_quote(&format!("{k}={v}"))))
        .collect();
    let run_as = format!(
        "setpriv --reuid={} --regid={} {groups} --inh-caps=-all --bounding-set=-all{} env -i PATH=/usr/bin:/bin{env_args}",
        spec.run_as_user,
        spec.run_as_group,
        if no_new_privs { " --no-new-privs" } else { "" },
    );
    let quoted_args: String = args
        .iter()
        .map(|a| format!(" {}", shell_quote(a)))
        .collect();
    let scratch = work.join("scratch");
    let upstream_py = r#"import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def do_GET(self):
        body = b'upstream ok'
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
"#;
    let python = common::python();
    let start_upstreams: String = upstreams
        .iter()
        .map(|(_, port)| {
            format!(
                "{python} -B \"$S/upstream.py\" {port} >/dev/null 2>&1 &\n\
                 for i in $(seq 100); do [ \"$(status http://127.0.0.1:{port}/)\" = 200 ] && break; sleep 0.1; done\n"
            )
        })
        .collect();
    let start_redis = match &redis {
        Some((_, port)) => format!(
            "redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &\n\
             for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && break; sleep 0.1; done\n"
        ),
        None => String::new(),
    };
    // With Redis, sign-out checks fail closed until it is connected: wait for it before minting.
    let wait_redis = match redis {
        Some(_) => format!(
            "for i in $(seq 100); do curl -s http://127.0.0.1:{ready_port}/metrics | grep -q '^tokengate_redis_up 1' && break; sleep 0.1; done\n\
             check redis \"$(curl -s http://127.0.0.1:{ready_port}/metrics | grep -q '^tokengate_redis_up 1' && echo ok || echo fail)\"\n"
        ),
        None => String::new(),
    };
    let resolve_names: String = names.iter().map(|n| format!("127.0.0.1 {n}\n")).collect();
    let copy_upstream = format!(
        "printf %s {} > \"$S/upstream.py\"",
        shell_quote(upstream_py)
    );
    let script = format!(
        r#"set -u
cd /
S={scratch}
check() {{ echo "CHECK $1 $2 ${{3:-}}"; }}
status() {{ curl -s -o /dev/null -w '%{{http_code}}' -m 2 "$1" 2>/dev/null; }}
ip link set lo up
mount -t tmpfs scratch "$S"
{copy_upstream}
printf '127.0.0.1 localhost\n' > "$S/hosts"
mount --bind "$S/hosts" /etc/hosts
{mount_script}
{remount_root}
{start_upstreams}
{start_redis}
{run_as} {binary}{quoted_args} > "$S/stdout" 2> "$S/stderr" &
pid=$!
# Up before DNS: /healthz answers, /readyz says 503 while an upstream name does not resolve.
for i in $(seq 100); do [ "$(status http://127.0.0.1:{health_port}{health_path})" = 200 ] && break; kill -0 $pid 2>/dev/null || break; sleep 0.1; done
check healthz "$( [ "$(status http://127.0.0.1:{health_port}{health_path})" = 200 ] && echo ok || echo fail)"
if [ -n "{names}" ]; then
  sleep 1
  r=$(status http://127.0.0.1:{ready_port}{ready_path})
  check readyz-before-dns "$( [ "$r" = 503 ] && kill -0 $pid 2>/dev/null && echo ok || echo fail)" "status $r"
  printf '127.0.0.1 localhost\n{resolve_names}' > "$S/hosts"
fi
for i in $(seq 150); do [ "$(status http://127.0.0.1:{ready_port}{ready_path})" = 200 ] && break; kill -0 $pid 2>/dev/null || break; sleep 0.1; done
r=$(status http://127.0.0.1:{ready_port}{ready_path})
check readyz "$( [ "$r" = 200 ] && echo ok || echo fail)" "status $r"
body=$(curl -s -m 5 http://127.0.0.1:{proxy_port}/anything)
check proxy "$( [ "$body" = "upstream ok" ] && echo ok || echo fail)" "$body"
{check_tls}{wait_redis}
session=$({run_as} {binary}{quoted_args} sign --user-id pod 2>"$S/sign.err")
echo "SESSION $session"
minted=$(curl -s -m 5 -X POST -H "Authorization: Bearer $session" http://127.0.0.1:{proxy_port}/api/v1/token)
echo "MINTED $minted"
kill -TERM $pid
start=$(date +%s)
wait $pid
code=$?
took=$(( $(date +%s) - start ))
check sigterm "$( [ $code = 0 ] && [ $took -le {grace} ] && echo ok || echo fail)" "exit $code after ${{took}}s"
echo "--- stderr"; cat "$S/stderr"; echo "--- stdout"; tail -3 "$S/stdout"; echo "--- sign"; cat "$S/sign.err"
kill $(jobs -p) 2>/dev/null
wait
"#,
        scratch = shell_quote(&scratch.display().to_string()),
        remount_root = if read_only_root {
            "mount -o remount,bind,ro /"
        } else {
            ""
        },
        names = names.join(" "),
        grace = spec.grace_seconds,
    );
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--net",
            "--propagation",
            "private",
            "--fork",
            "bash",
            "-c",
            &script,
        ])
        .output()
        .expect("unshare (util-linux)");
    for dir in created.iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
    let _ = std::fs::remove_dir_all(&work);
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.extend(
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(|l| format!("(stderr) {l}")),
    );
    Outcome {
        lines,
        status: out.status.code(),
    }
}

fn check_overlay(overlay: &str) {
    assert_eq!(
        euid(),
        0,
        "the pod test needs root for its mount and network namespaces (CI runs as root)"
    );
    let outcome = run_pod(overlay);
    let report = outcome.lines.join("\n");
    println!("{overlay}:\n{report}");
    let failed: Vec<&String> = outcome
        .lines
        .iter()
        .filter(|l| {
            l.starts_with("CHECK ") && l.split_whitespace().nth(2).is_none_or(|s| s != "ok")
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{overlay}: the pod does not start as the kubelet runs it:\n{report}"
    );
    let checks = outcome
        .lines
        .iter()
        .filter(|l| l.starts_with("CHECK "))
        .count();
    assert!(
        checks >= 4,
        "{overlay}: only {checks} checks ran:\n{report}"
    );
    assert_eq!(outcome.status, Some(0), "{report}");
    let minted = outcome
        .lines
        .iter()
        .find_map(|l| l.strip_prefix("MINTED "))
        .unwrap_or_else(|| panic!("{overlay}: nothing minted:\n{report}"));
    let minted: serde_json::Value =
        serde_json::from_str(minted).unwrap_or_else(|e| panic!("{overlay}: {e}: {minted}"));
    let token = minted["token"].as_str().expect("a minted token");
    let (message, signature) = token.rsplit_once('.').unwrap();
    let key = jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes());
    assert!(
        jsonwebtoken::crypto::verify(
            signature,
            message.as_bytes(),
            &key,
            jsonwebtoken::Algorithm::HS256
        )
        .unwrap(),
        "{overlay}: the minted token is not signed with the mounted secret"
    );
}

fn euid() -> u32 {
    // `id -u` keeps the test free of unsafe code.
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Both overlays in one test: they share mount points such as /etc/tokengate.
#[test]
fn each_overlay_starts_as_the_kubelet_runs_it() {
    for overlay in ["sidecar", "gateway"] {
        check_overlay(overlay);
    }
}
