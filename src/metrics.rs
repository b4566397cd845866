//! Every metric, defined once, registered in the registry `pingora-prometheus` serves.

use std::sync::{LazyLock, OnceLock};

use pingora_prometheus::prometheus::{
    self, register_gauge_vec, register_histogram, register_histogram_vec, register_int_counter,
    register_int_counter_vec, register_int_gauge, register_int_gauge_vec, GaugeVec, Histogram,
    HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

use crate::error::ErrorCode;

/// Buckets from 50 µs to 10 s: the token route answers in microseconds, upstreams in seconds.
const BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// `route` label values: answered in-process (token route, JWKS) or forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum RouteKind {
    /// `POST /api/v1/token`, answered in-process.
    Token,
    /// Forwarded to the upstream.
    Proxy,
    /// A gateway's question to the authorization listener.
    Authorize,
}

impl RouteKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Token => "token",
            RouteKind::Proxy => "proxy",
            RouteKind::Authorize => "authorize",
        }
    }
}

/// Who asked for a decision: the proxy itself, or a gateway through the authorization
/// listener, in its convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The proxy listeners.
    Proxy,
    /// nginx `auth_request` (and ingress-nginx `auth-url`).
    Nginx,
    /// Traefik `forwardAuth`.
    Traefik,
    /// Caddy `forward_auth`.
    Caddy,
    /// Envoy's HTTP `ext_authz` (Istio `CUSTOM`, Envoy Gateway `extAuth`).
    Envoy,
}

impl Caller {
    /// Every caller, in label order.
    pub const ALL: [Caller; 5] = [
        Caller::Proxy,
        Caller::Nginx,
        Caller::Traefik,
        Caller::Caddy,
        Caller::Envoy,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Caller::Proxy => "proxy",
            Caller::Nginx => "nginx",
            Caller::Traefik => "traefik",
            Caller::Caddy => "caddy",
            Caller::Envoy => "envoy",
        }
    }
}

/// What a decision came to, the `outcome` label of `tokengate_decisions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded, or allowed through the gateway.
    Allow,
    /// Refused.
    Refuse,
    /// Answered in-process (the token route, the key set).
    Answer,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Allow, Outcome::Refuse, Outcome::Answer];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Refuse => "refuse",
            Outcome::Answer => "answer",
        }
    }
}

/// Upstream error kinds, the `kind` label of `tokengate_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// Refused, reset or unreachable while connecting.
    Connect,
    /// A connect, read or write timeout.
    Timeout,
    /// The TLS handshake failed: an untrusted or wrong certificate, or no common protocol.
    Tls,
    /// Anything else after the connection was made.
    Other,
}

impl UpstreamErrorKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Tls => "tls",
            UpstreamErrorKind::Other => "other",
        }
    }
}

/// All of tokengate's metrics.
pub struct Metrics {
    /// `tokengate_requests_total{route,code}`.
    pub requests: IntCounterVec,
    /// `tokengate_request_duration_seconds{route}`.
    pub request_duration: HistogramVec,
    /// `tokengate_tokens_minted_total`.
    pub minted: IntCounter,
    /// `tokengate_token_rejections_total{reason}`.
    pub rejections: IntCounterVec,
    /// `tokengate_upstream_errors_total{kind}`.
    pub upstream_errors: IntCounterVec,
    /// `tokengate_upstream_duration_seconds`.
    pub upstream_duration: Histogram,
    /// `tokengate_in_flight_requests`.
    pub in_flight: IntGauge,
    /// `tokengate_build_info{version}`.
    pub build_info: GaugeVec,
    /// `tokengate_secret_reloads_total{result}`: rotations taken (`ok`) or refused (`error`).
    pub secret_reloads: IntCounterVec,
    /// `tokengate_certificate_reloads_total{result}`: TLS certificate files re-read.
    pub certificate_reloads: IntCounterVec,
    /// `tokengate_config_reloads_total{result}`: whole configurations swapped in or refused.
    pub config_reloads: IntCounterVec,
    /// `tokengate_enforcement_decisions_total{route,decision}`: ability checks on routes.
    pub enforcement: IntCounterVec,
    /// `tokengate_redis_errors_total{feature}`: Redis calls that failed or timed out.
    pub redis_errors: IntCounterVec,
    /// `tokengate_claim_headers_omitted_total{header}`: claims no header value can carry.
    pub claim_headers_omitted: IntCounterVec,
    /// `tokengate_redis_up`: 1 while Redis is connected (when configured).
    pub redis_up: IntGauge,
    /// `tokengate_spans_dropped_total`: spans not exported because the queue was full.
    pub spans_dropped: IntCounter,
    /// `tokengate_span_exports_total{result}`: batches sent to the collector (`ok`, `error`).
    pub span_exports: IntCounterVec,
    /// `tokengate_decisions_total{caller,outcome}`: decisions, by who asked and what they came to.
    pub decisions: IntCounterVec,
    /// `tokengate_issuer_key_fetches_total{issuer,result}`: an identity provider's key set
    /// fetched (`ok`) or not (`error`).
    pub issuer_fetches: IntCounterVec,
    /// `tokengate_issuer_keys{issuer}`: signing keys in use per identity provider (0: none
    /// usable, its tokens are refused).
    pub issuer_keys: IntGaugeVec,
    /// `tokengate_issuer_keys_age_seconds{issuer}`: time since its keys were last fetched.
    pub issuer_keys_age: IntGaugeVec,
    /// Resolved `decisions` series, by caller and outcome.
    decision_series: [[IntCounter; 3]; 5],
    /// Resolved `requests{route,code}` series, so a request skips the label lookup: one slot
    /// per route kind and status 100–599, filled on first use.
    request_series: [[OnceLock<IntCounter>; 500]; 3],
    /// Resolved `request_duration{route}` series.
    duration_series: [Histogram; 3],
}

impl Metrics {
    /// Counts one finished request of `route` answered with `status` (0: none was sent), and
    /// its duration.
    pub fn record_request(&self, route: RouteKind, status: u16, seconds: f64) {
        let kind = route as usize;
        match usize::from(status).checked_sub(100).filter(|i| *i < 500) {
            Some(i) => self.request_series[kind][i]
                .get_or_init(|| {
                    self.requests
                        .with_label_values(&[route.as_str(), &status.to_string()])
                })
                .inc(),
            None => self
                .requests
                .with_label_values(&[route.as_str(), &status.to_string()])
                .inc(),
        }
        self.duration_series[kind].observe(seconds);
    }

    /// Counts one request tokengate refused, by its error code.
    pub fn record_rejection(&self, code: ErrorCode) {
        self.rejections.with_label_values(&[code.as_str()]).inc();
    }

    /// Counts one decision asked for by `caller`.
    pub fn record_decision(&self, caller: Caller, outcome: Outcome) {
        self.decision_series[caller as usize][outcome as usize].inc();
    }
}

fn register() -> Result<Metrics, prometheus::Error> {
    let request_duration = register_histogram_vec!(
        "tokengate_request_duration_seconds",
        "Time from request start to the end of the response, by route.",
        &["route"],
        BUCKETS.to_vec()
    )?;
    let duration_series = [RouteKind::Token, RouteKind::Proxy, RouteKind::Authorize]
        .map(|r| request_duration.with_label_values(&[r.as_str()]));
    let decisions = register_int_counter_vec!(
        "tokengate_decisions_total",
        "Decisions on requests, by caller (proxy, or the gateway asking the authorization listener) and outcome (allow, refuse, answer).",
        &["caller", "outcome"]
    )?;
    let decision_series = Caller::ALL.map(|caller| {
        Outcome::ALL
            .map(|outcome| decisions.with_label_values(&[caller.as_str(), outcome.as_str()]))
    });
    let metrics = Metrics {
        decisions,
        decision_series,
        request_series: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
        duration_series,
        requests: register_int_counter_vec!(
            "tokengate_requests_total",
            "Requests answered, by route and HTTP status.",
            &["route", "code"]
        )?,
        request_duration,
        minted: register_int_counter!("tokengate_tokens_minted_total", "Ability tokens minted.")?,
        rejections: register_int_counter_vec!(
            "tokengate_token_rejections_total",
            "Requests refused by tokengate, by error code.",
            &["reason"]
        )?,
        upstream_errors: register_int_counter_vec!(
            "tokengate_upstream_errors_total",
            "Failed upstream exchanges, by kind.",
            &["kind"]
        )?,
        upstream_duration: register_histogram!(
            "tokengate_upstream_duration_seconds",
            "Time from sending a request upstream to its response header.",
            BUCKETS.to_vec()
        )?,
        in_flight: register_int_gauge!(
            "tokengate_in_flight_requests",
            "Requests being served right now."
        )?,
        secret_reloads: register_int_counter_vec!(
            "tokengate_secret_reloads_total",
            "Secret file re-reads that changed the keyring (ok) or were refused (error).",
            &["result"]
        )?,
        certificate_reloads: register_int_counter_vec!(
            "tokengate_certificate_reloads_total",
            "TLS certificate file changes taken (ok) or refused, the old certificates kept (error).",
            &["result"]
        )?,
        config_reloads: register_int_counter_vec!(
            "tokengate_config_reloads_total",
            "Configuration reloads (SIGHUP or a changed file) swapped in (ok) or refused, the running one kept (error).",
            &["result"]
        )?,
        enforcement: register_int_counter_vec!(
            "tokengate_enforcement_decisions_total",
            "Ability checks of forwarded requests, by configured route name and decision (allow, deny, shadow_deny).",
            &["route", "decision"]
        )?,
        redis_errors: register_int_counter_vec!(
            "tokengate_redis_errors_total",
            "Redis calls that failed or timed out, by feature (limits, revocation).",
            &["feature"]
        )?,
        claim_headers_omitted: register_int_counter_vec!(
            "tokengate_claim_headers_omitted_total",
            "Claims left out of forward_claims headers because no header value carries them unchanged, by configured header.",
            &["header"]
        )?,
        spans_dropped: register_int_counter!(
            "tokengate_spans_dropped_total",
            "Spans dropped because the export queue was full."
        )?,
        span_exports: register_int_counter_vec!(
            "tokengate_span_exports_total",
            "Span batches sent to the OTLP collector, by result (ok, error).",
            &["result"]
        )?,
        issuer_fetches: register_int_counter_vec!(
            "tokengate_issuer_key_fetches_total",
            "Fetches of an identity provider's key set (discovery included), by issuer and result (ok, error).",
            &["issuer", "result"]
        )?,
        issuer_keys: register_int_gauge_vec!(
            "tokengate_issuer_keys",
            "Signing keys in use for an identity provider; 0 when none is usable and its tokens are refused.",
            &["issuer"]
        )?,
        issuer_keys_age: register_int_gauge_vec!(
            "tokengate_issuer_keys_age_seconds",
            "Seconds since an identity provider's keys were last fetched.",
            &["issuer"]
        )?,
        redis_up: register_int_gauge!(
            "tokengate_redis_up",
            "1 while the shared Redis is connected and sign-outs are current; 0 otherwise."
        )?,
        build_info: register_gauge_vec!(
            "tokengate_build_info",
            "Always 1; the version label says which build runs.",
            &["version"]
        )?,
    };
    zero_series(&metrics);
    Ok(metrics)
}

/// The build's series, and every labelled series known in advance at zero, so rates and
/// alerts work before the first event.
fn zero_series(metrics: &Metrics) {
    metrics
        .build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1.0);
    for code in ErrorCode::ALL.iter().filter(|c| c.status() < 500) {
        metrics.rejections.with_label_values(&[code.as_str()]);
    }
    for result in ["ok", "error"] {
        metrics.secret_reloads.with_label_values(&[result]);
        metrics.certificate_reloads.with_label_values(&[result]);
        metrics.config_reloads.with_label_values(&[result]);
    }
    for result in ["ok", "error"] {
        metrics.span_exports.with_label_values(&[result]);
    }
    for feature in ["limits", "revocation"] {
        metrics.redis_errors.with_label_values(&[feature]);
    }
    for kind in [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Tls,
        UpstreamErrorKind::Other,
    ] {
        metrics.upstream_errors.with_label_values(&[kind.as_str()]);
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    // Static names and help texts that a unit test registers: failing here is a programming error.
    register().expect("tokengate metric definitions are valid and registered once")
});

/// The process-wide metrics, registered on first use.
pub fn get() -> &'static Metrics {
    &METRICS
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_prometheus::prometheus::{Encoder, TextEncoder};

    #[test]
    fn every_spec_metric_is_exported() {
        get().minted.inc_by(0);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&prometheus::gather(), &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        for name in [
            "# TYPE tokengate_tokens_minted_total counter",
            "# TYPE tokengate_token_rejections_total counter",
            "# TYPE tokengate_upstream_errors_total counter",
            "# TYPE tokengate_upstream_duration_seconds histogram",
            "# TYPE tokengate_in_flight_requests gauge",
            "tokengate_build_info{version=\"0.1.0\"} 1",
            "tokengate_token_rejections_total{reason=\"escalation\"} 0",
        ] {
            assert!(text.contains(name), "missing {name}");
        }
    }
}
