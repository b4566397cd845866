//! The Kubernetes manifests agree with each other and with tokengate's own configuration.
//! Each overlay is rendered with `kubectl kustomize`, as an operator would apply it.

use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn render(overlay: &str) -> Vec<Value> {
    let out = Command::new("kubectl")
        .args(["kustomize", &format!("{ROOT}/k8s/overlays/{overlay}")])
        .output()
        .expect("kubectl (part of this machine image) renders the overlay");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(docs, kind);
    assert_eq!(found.len(), 1, "want exactly one {kind}");
    found[0]
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

fn seconds(duration: &str) -> u64 {
    duration.strip_suffix('s').unwrap().parse().unwrap()
}

/// The tokengate configuration carried by the rendered ConfigMap.
fn config(docs: &[Value]) -> Value {
    let cm = one(docs, "ConfigMap");
    serde_yaml::from_str(str_of(&cm["data"]["tokengate.yaml"])).unwrap()
}

/// The tokengate container of the pod template, and the pod spec.
fn tokengate_container(docs: &[Value]) -> (&Value, &Value) {
    for deployment in of_kind(docs, "Deployment") {
        let spec = &deployment["spec"]["template"]["spec"];
        for list in ["initContainers", "containers"] {
            if let Some(c) = spec[list]
                .as_sequence()
                .and_then(|cs| cs.iter().find(|c| c["name"] == "tokengate"))
            {
                return (c, spec);
            }
        }
    }
    panic!("no tokengate container");
}

fn container_port(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

fn check_overlay(overlay: &str) -> Vec<Value> {
    let docs = render(overlay);
    let conf = config(&docs);
    let tg = &conf["tokengate"];
    let (container, pod) = tokengate_container(&docs);

    // Probes hit the admin listener's port and paths.
    let admin = container_port(container, "admin");
    assert_eq!(
        admin,
        port_of(str_of(&tg["admin_listen"])),
        "{overlay}: admin port"
    );
    assert_eq!(
        container_port(container, "http"),
        port_of(str_of(&tg["listen"])),
        "{overlay}: http port"
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{overlay}: {probe}");
        assert_eq!(get["port"], "admin", "{overlay}: {probe}");
    }

    // Kubernetes waits longer than tokengate drains, preStop pause included.
    let grace = seconds(str_of(&tg["grace_period"]));
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        termination > grace + pre_stop,
        "{overlay}: {termination} s <= {grace} s + {pre_stop} s"
    );

    // The secret is a mounted Secret: referenced, never inlined.
    let secret_file = str_of(&tg["secret_file"]);
    assert!(
        tg["secret"].is_null(),
        "{overlay}: a secret in the ConfigMap"
    );
    assert!(
        of_kind(&docs, "Secret").is_empty(),
        "{overlay}: a Secret object carries key material"
    );
    let env = container["env"].as_sequence().unwrap();
    assert!(
        env.iter().all(|e| e["name"] != "TOKENGATE_SECRET"),
        "{overlay}: secret as a literal"
    );
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| !v["secret"].is_null())
        .expect("a Secret volume");
    assert_eq!(volume["secret"]["secretName"], "tokengate-secrets");
    let mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("the Secret volume is mounted");
    assert_eq!(mount["readOnly"], true);
    assert_eq!(
        format!("{}/secrets", str_of(&mount["mountPath"])),
        secret_file,
        "{overlay}: secret path"
    );

    // Hardened container and pod.
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert!(
        !container["resources"]["requests"].is_null()
            && !container["resources"]["limits"].is_null()
    );

    // The ServiceMonitor selects the Service and scrapes its admin port, which reaches tokengate.
    let service = one(&docs, "Service");
    let monitor = one(&docs, "ServiceMonitor");
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .unwrap()
    {
        assert_eq!(
            &service["metadata"]["labels"][key], value,
            "{overlay}: ServiceMonitor selects {key:?}"
        );
    }
    let scraped = str_of(&monitor["spec"]["endpoints"][0]["port"]);
    let ports = service["spec"]["ports"].as_sequence().unwrap();
    let admin_port = ports
        .iter()
        .find(|p| p["name"] == scraped)
        .expect("the scraped port exists");
    assert_eq!(admin_port["targetPort"], "admin");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    let http = ports
        .iter()
        .find(|p| p["name"] == "http")
        .expect("an http port");
    assert_eq!(
        http["targetPort"], "http",
        "{overlay}: traffic goes through tokengate"
    );
    docs
}

#[test]
fn sidecar_overlay_is_consistent() {
    let docs = check_overlay("sidecar");
    let deployment = one(&docs, "Deployment");
    let spec = &deployment["spec"]["template"]["spec"];
    let sidecar = spec["initContainers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "tokengate")
        .unwrap();
    assert_eq!(sidecar["restartPolicy"], "Always", "a native sidecar");
    let app = spec["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "image-app")
        .unwrap();
    let upstream = sidecar["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "TOKENGATE_UPSTREAM")
        .unwrap();
    assert_eq!(
        str_of(&upstream["value"]),
        format!("127.0.0.1:{}", container_port(app, "app"))
    );
}

#[test]
fn gateway_overlay_is_consistent() {
    let docs = check_overlay("gateway");
    let deployment = one(&docs, "Deployment");
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);
    assert!(
        !deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
            .as_sequence()
            .unwrap()
            .is_empty()
    );
    let pdb = one(&docs, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["selector"], deployment["spec"]["selector"]);
    let hpa = one(&docs, "HorizontalPodAutoscaler");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    assert!(
        hpa["spec"]["minReplicas"].as_u64().unwrap()
            > pdb["spec"]["minAvailable"].as_u64().unwrap()
    );
}

#[test]
fn the_prometheus_rule_carries_the_checked_alert_rules() {
    let rules: Value = serde_yaml::from_str(
        &std::fs::read_to_string(format!("{ROOT}/k8s/monitoring/tokengate-rules.yaml")).unwrap(),
    )
    .unwrap();
    for overlay in ["sidecar", "gateway"] {
        let docs = render(overlay);
        assert_eq!(
            one(&docs, "PrometheusRule")["spec"],
            rules,
            "{overlay}: PrometheusRule drifted"
        );
    }
}

#[test]
fn authorizer_overlay_points_every_gateway_at_the_authorization_listener() {
    let docs = check_overlay("authorizer");
    let (container, _) = tokengate_container(&docs);
    let env = container["env"].as_sequence().unwrap();
    let var = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .map(|e| str_of(&e["value"]).to_owned())
            .unwrap_or_else(|| panic!("no {name}"))
    };
    let port = port_of(&var("TOKENGATE_AUTHORIZE_LISTEN"));
    assert_eq!(container_port(container, "authorize"), port);
    let service = one(&docs, "Service");
    let service_port = service["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "authorize")
        .expect("the Service exposes the authorization port");
    assert_eq!(service_port["port"].as_u64(), Some(port));
    // Only a gateway range is believed, never everyone.
    assert_ne!(var("TOKENGATE_AUTHORIZE_GATEWAYS"), "0.0.0.0/0");

    // The headers each gateway copies are exactly those conf/gateways/traefik.yml lists.
    let shipped: Value = serde_yaml::from_str(
        &std::fs::read_to_string(format!("{ROOT}/conf/gateways/traefik.yml")).unwrap(),
    )
    .unwrap();
    let copied = &shipped["http"]["middlewares"]["tokengate"]["forwardAuth"]["authResponseHeaders"];
    let names: Vec<&str> = copied.as_sequence().unwrap().iter().map(str_of).collect();
    let base = format!("http://tokengate.default.svc.cluster.local:{port}");

    let ingress = one(&docs, "Ingress");
    let notes = &ingress["metadata"]["annotations"];
    assert_eq!(
        str_of(&notes["nginx.ingress.kubernetes.io/auth-url"]),
        format!("{base}/nginx")
    );
    assert_eq!(
        str_of(&notes["nginx.ingress.kubernetes.io/auth-response-headers"]),
        names.join(", ")
    );
    let middleware = one(&docs, "Middleware");
    let forward = &middleware["spec"]["forwardAuth"];
    assert_eq!(
        str_of(&forward["address"]),
        format!("{base}/traefik?body=forwarded")
    );
    assert_eq!(&forward["authResponseHeaders"], copied);
    let policy = one(&docs, "SecurityPolicy");
    let http = &policy["spec"]["extAuth"]["http"];
    assert_eq!(http["path"], "/envoy");
    assert_eq!(http["backendRefs"][0]["port"].as_u64(), Some(port));
    assert_eq!(&http["headersToBackend"], copied);
}
