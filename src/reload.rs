//! The proxy's configuration, built the same way at start-up and on a live reload: `SIGHUP` or
//! a changed configuration file re-reads everything, validates it as `-t` does, and swaps
//! routes, upstream groups, auth rules, limits and keys at once. Requests already begun finish
//! on the configuration they began with; one that does not validate is refused with one log
//! line and the running one stays.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use tokio::sync::{watch, Mutex};

use crate::access_log::AccessLog;
use crate::config::{Config, ConfigError, ProcessEnv};
use crate::decision::{self, Jwks};
use crate::issuers::Registry;
use crate::limits::Limiter;
use crate::metrics;
use crate::proxy::{AppState, Tokengate};
use crate::routes::PathTemplate;
use crate::shared::Shared;
use crate::trace::Exporter;
use crate::upstreams::{GroupConfig, UpstreamGroup};
use crate::watch::Subscriber;
use pingora_prometheus::prometheus::IntCounterVec;

/// What outlives any one configuration: process state and the connections to Redis and the
/// trace collector.
pub struct Lasting {
    /// Readiness and in-flight state.
    pub state: Arc<AppState>,
    /// Limits and sign-outs shared across replicas.
    pub shared: Option<Arc<Shared>>,
    /// Span export.
    pub tracer: Option<Arc<Exporter>>,
    /// Identity providers' keys, kept while their issuer stays configured the same way.
    pub issuers: Registry,
}

/// A new upstream group for each of `config`'s (not resolving or health-checking yet).
pub fn groups(config: &Config) -> Vec<Arc<UpstreamGroup>> {
    let groups = config.proxy.upstream_groups.iter();
    groups
        .map(|g| Arc::new(UpstreamGroup::new(g.clone())))
        .collect()
}

/// What the decision reads, for `config`: the proxy's and `tokengate explain`'s alike; its
/// identity providers' keys are those `registry` keeps.
pub fn decision_settings(
    config: &Config,
    registry: &Registry,
) -> Result<decision::Settings, ConfigError> {
    let token_path =
        PathTemplate::parse(&config.token.token_path).map_err(|e| ConfigError::Invalid {
            key: "tokengate.token_path".into(),
            problem: e.to_string(),
        })?;
    let proxy = &config.proxy;
    let mut tokens = config.token_service()?;
    let issuers = registry.attach(&mut tokens);
    Ok(decision::Settings {
        tokens,
        issuers,
        token_path,
        jwks: config.signing.as_ref().map(|s| Jwks {
            body: bytes::Bytes::from(s.jwks.clone()),
            cache_control: format!("public, max-age={}", s.jwks_max_age.as_secs()),
        }),
        request: proxy.request,
        routes: proxy.routes.clone(),
        identity_header: proxy.identity_header.clone(),
        forward_claims: proxy.forward_claims.clone(),
        trusted_proxies: proxy.trusted_proxies.clone(),
        authorize: config
            .authorize
            .as_ref()
            .map(|a| a.decision.clone())
            .unwrap_or_default(),
    })
}

/// The proxy's state for `config`, over upstream groups already made for it.
pub fn gate(
    config: &Config,
    groups: Vec<Arc<UpstreamGroup>>,
    lasting: &Lasting,
) -> Result<Tokengate, ConfigError> {
    let route_limiters = config
        .proxy
        .routes
        .routes()
        .iter()
        .filter_map(|r| {
            r.limit
                .as_ref()
                .map(|l| (r.name.clone(), Limiter::new(l.rate)))
        })
        .collect();
    Ok(Tokengate {
        decision: decision_settings(config, &lasting.issuers)?,
        groups: groups.into(),
        access_log: AccessLog::new(config.access_log.then_some(config.log_format)),
        limiter: config.token.rate_limit.rate().map(Limiter::new),
        mint_rate: config.token.rate_limit.rate(),
        route_limiters,
        shared: lasting.shared.clone(),
        tracer: lasting.tracer.clone(),
        secret_source: config.secret_source.clone(),
        algorithms: config.token.algorithms.clone(),
        state: lasting.state.clone(),
    })
}

/// A group in force and the switch that stops its resolver and health checks.
#[derive(Clone)]
struct Running {
    group: Arc<UpstreamGroup>,
    stop: Arc<watch::Sender<bool>>,
}

impl Running {
    /// Starts resolving and health-checking `group`.
    fn start(group: Arc<UpstreamGroup>) -> Running {
        let (stop, shutdown) = watch::channel(false);
        let task = group.clone();
        tokio::spawn(async move { task.run(shutdown).await });
        Running {
            group,
            stop: Arc::new(stop),
        }
    }

    fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Whether `self` is one of `others`.
    fn is_in(&self, others: &[Running]) -> bool {
        others.iter().any(|o| Arc::ptr_eq(&o.group, &self.group))
    }
}

/// The settings that need new sockets, threads or connections, each by name with its value as
/// text: a reload compares them, logs the ones that changed and keeps their running values.
struct NeedsRestart(Vec<(&'static str, String)>);

impl NeedsRestart {
    fn of(c: &Config) -> NeedsRestart {
        let text = |v: &dyn std::fmt::Debug| format!("{v:?}");
        NeedsRestart(vec![
            ("listen", text(&c.listen)),
            ("admin_listen", text(&c.admin_listen)),
            ("tls", text(&c.tls)),
            (
                "authorize.listen",
                text(&c.authorize.as_ref().map(|a| a.listen)),
            ),
            ("h2c", text(&c.h2c)),
            ("threads", text(&c.threads)),
            ("header_timeout", text(&c.proxy.header_timeout)),
            ("grace_period", text(&c.grace_period)),
            ("redis", text(&c.redis)),
            ("tracing", text(&c.tracing)),
            ("log", text(&c.log)),
        ])
    }

    /// The names of the settings that differ in `new`.
    fn changed(&self, new: &NeedsRestart) -> Vec<&'static str> {
        self.0
            .iter()
            .zip(&new.0)
            .filter(|(old, new)| old.1 != new.1)
            .map(|(old, _)| old.0)
            .collect()
    }
}

/// Longest a reload waits for a new group's first resolution.
const RESOLVE_FIRST: Duration = Duration::from_secs(5);

/// Swaps in a new configuration on `SIGHUP` or when the file changes; runs every upstream
/// group's resolver and health checks, stopping those a reload removes.
pub struct Reloader {
    path: Option<PathBuf>,
    current: Arc<ArcSwap<Tokengate>>,
    lasting: Lasting,
    restart: NeedsRestart,
    /// The groups in force, with their resolvers; started with the watcher.
    running: Mutex<Vec<Running>>,
    initial: Vec<Arc<UpstreamGroup>>,
}

impl Reloader {
    /// The reloader of the proxy slot `current`, started from `config` and its `groups`.
    pub fn new(
        path: Option<PathBuf>,
        config: &Config,
        current: Arc<ArcSwap<Tokengate>>,
        lasting: Lasting,
        groups: Vec<Arc<UpstreamGroup>>,
    ) -> Reloader {
        Reloader {
            path,
            current,
            lasting,
            restart: NeedsRestart::of(config),
            running: Mutex::new(Vec::new()),
            initial: groups,
        }
    }

    /// Reads, validates and swaps in the configuration; `running` becomes the new groups.
    async fn swap_in(&self, running: &mut Vec<Running>) -> Result<String, ConfigError> {
        let config = Config::load(self.path.as_deref(), &ProcessEnv)?;
        for warning in config.warnings() {
            log::warn!("configuration reload: {warning}");
        }
        let changed = self.restart.changed(&NeedsRestart::of(&config));
        if !changed.is_empty() {
            log::warn!(
                "configuration reload: {} changed and needs a restart; the running values stay",
                changed.join(", ")
            );
        }
        let mut next = Vec::with_capacity(config.proxy.upstream_groups.len());
        for group_config in &config.proxy.upstream_groups {
            next.push(self.group_for(group_config, running).await);
        }
        let groups = next.iter().map(|r| r.group.clone()).collect();
        let gate = match gate(&config, groups, &self.lasting) {
            Ok(gate) => gate,
            Err(e) => {
                // Never swapped in: stop what was started for it.
                next.iter()
                    .filter(|n| !n.is_in(running))
                    .for_each(Running::stop);
                return Err(e);
            }
        };
        self.current.store(Arc::new(gate));
        // Groups no longer in force stop resolving; requests still on them finish.
        running
            .iter()
            .filter(|r| !r.is_in(&next))
            .for_each(Running::stop);
        *running = next;
        Ok(format!(
            "{} routes, {} upstream groups",
            config.proxy.routes.routes().len(),
            running.len()
        ))
    }

    /// The running group for `config` if one is unchanged (its health and addresses kept), else
    /// a new one, resolved once and started.
    async fn group_for(&self, config: &GroupConfig, running: &[Running]) -> Running {
        if let Some(same) = running.iter().find(|r| r.group.config() == config) {
            return same.clone();
        }
        let group = Arc::new(UpstreamGroup::new(config.clone()));
        // Bounded: a name that does not resolve yet leaves the group empty until it does.
        let _ = tokio::time::timeout(RESOLVE_FIRST, group.refresh()).await;
        Running::start(group)
    }
}

#[async_trait]
impl Subscriber for Reloader {
    fn name(&self) -> &'static str {
        "configuration"
    }

    fn reloads(&self) -> &'static IntCounterVec {
        &metrics::get().config_reloads
    }

    fn files(&self) -> Vec<PathBuf> {
        self.path.iter().cloned().collect()
    }

    async fn start(&self) {
        *self.running.lock().await = self.initial.iter().cloned().map(Running::start).collect();
    }

    async fn reload(&self) -> Result<String, String> {
        let mut running = self.running.lock().await;
        self.swap_in(&mut running).await.map_err(|e| e.to_string())
    }

    fn stop(&self) {
        if let Ok(running) = self.running.try_lock() {
            running.iter().for_each(Running::stop);
        }
    }
}

/// Re-reads the secret file when it changes, or on `SIGHUP`, and swaps the keyring of the
/// configuration in force; a file that does not make a valid keyring is refused and the current
/// keys stay.
pub struct Secrets {
    /// The configuration in force.
    pub current: Arc<ArcSwap<Tokengate>>,
}

#[async_trait]
impl Subscriber for Secrets {
    fn name(&self) -> &'static str {
        "secrets"
    }

    fn reloads(&self) -> &'static IntCounterVec {
        &metrics::get().secret_reloads
    }

    fn files(&self) -> Vec<PathBuf> {
        self.current
            .load()
            .secret_source
            .file
            .iter()
            .cloned()
            .collect()
    }

    /// Secrets written in the configuration itself are reloaded with it.
    fn follows_hangup(&self) -> bool {
        !self.files().is_empty()
    }

    async fn reload(&self) -> Result<String, String> {
        let gate = self.current.load();
        let keyring = gate
            .secret_source
            .keyring(&gate.algorithms)
            .map_err(|e| e.to_string())?;
        let summary = format!("{} verification keys", keyring.len());
        gate.keyring().replace(keyring);
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(yaml: &str) -> NeedsRestart {
        let secret = [(
            "TOKENGATE_SECRET",
            "a-secret-of-at-least-thirty-two-bytes!!",
        )];
        NeedsRestart::of(&Config::from_yaml(yaml, &secret).unwrap())
    }

    #[test]
    fn restart_only_changes_are_named() {
        let old = settings("tokengate:\n  endpoint: a:1\n");
        assert!(old
            .changed(&settings("tokengate:\n  endpoint: b:2\n"))
            .is_empty());
        let new = settings("tokengate:\n  listen: 0.0.0.0:8080\n  h2c: true\n  log: debug\n");
        assert_eq!(old.changed(&new), ["listen", "h2c", "log"]);
    }
}
