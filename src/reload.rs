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
use crate::config::{Config, ConfigError, ListenerTls, ProcessEnv};
use crate::limits::Limiter;
use crate::metrics;
use crate::proxy::{AppState, Tokengate};
use crate::routes::PathTemplate;
use crate::shared::{RedisSettings, Shared};
use crate::trace::{Exporter, TraceSettings};
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
}

/// The proxy's state for `config`, over upstream groups already made for it.
pub fn gate(
    config: &Config,
    groups: Vec<Arc<UpstreamGroup>>,
    lasting: &Lasting,
) -> Result<Tokengate, ConfigError> {
    let token_path = PathTemplate::parse(&config.token_path).map_err(|e| ConfigError::Invalid {
        key: "tokengate.token_path".into(),
        problem: e.to_string(),
    })?;
    let route_limiters = config
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
        tokens: config.token_service()?,
        token_path,
        groups: groups.into(),
        routes: config.routes.clone(),
        identity_header: config.identity_header.clone(),
        forward_claims: config.forward_claims.clone(),
        request: config.request,
        trusted_proxies: config.trusted_proxies.clone(),
        access_log: AccessLog::new(config.access_log.then_some(config.log_format)),
        limiter: config.rate_limit.map(Limiter::new),
        mint_rate: config.rate_limit,
        route_limiters,
        shared: lasting.shared.clone(),
        tracer: lasting.tracer.clone(),
        jwks: config.signing.as_ref().map(|s| {
            (
                bytes::Bytes::from(s.jwks.clone()),
                format!("public, max-age={}", s.jwks_max_age.as_secs()),
            )
        }),
        secret_source: config.secret_source.clone(),
        algorithms: config.algorithms.clone(),
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

/// Settings that need new sockets or connections: a reload logs a change and keeps them.
#[derive(PartialEq)]
struct NeedsRestart {
    listen: std::net::SocketAddr,
    admin_listen: std::net::SocketAddr,
    tls: Option<ListenerTls>,
    h2c: bool,
    threads: usize,
    header_timeout: Duration,
    grace_period: Duration,
    redis: Option<RedisSettings>,
    tracing: Option<TraceSettings>,
    log: log::LevelFilter,
}

impl NeedsRestart {
    fn of(config: &Config) -> NeedsRestart {
        NeedsRestart {
            listen: config.listen,
            admin_listen: config.admin_listen,
            tls: config.tls.clone(),
            h2c: config.h2c,
            threads: config.threads,
            header_timeout: config.header_timeout,
            grace_period: config.grace_period,
            redis: config.redis.clone(),
            tracing: config.tracing.clone(),
            log: config.log,
        }
    }

    /// The names of the settings that differ in `new`.
    fn changed(&self, new: &NeedsRestart) -> Vec<&'static str> {
        let mut names = Vec::new();
        let mut check = |differs: bool, name| {
            if differs {
                names.push(name);
            }
        };
        check(self.listen != new.listen, "listen");
        check(self.admin_listen != new.admin_listen, "admin_listen");
        check(self.tls != new.tls, "tls");
        check(self.h2c != new.h2c, "h2c");
        check(self.threads != new.threads, "threads");
        check(self.header_timeout != new.header_timeout, "header_timeout");
        check(self.grace_period != new.grace_period, "grace_period");
        check(self.redis != new.redis, "redis");
        check(self.tracing != new.tracing, "tracing");
        check(self.log != new.log, "log");
        names
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
        let mut next = Vec::with_capacity(config.upstream_groups.len());
        for group_config in &config.upstream_groups {
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
            config.routes.routes().len(),
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

    fn settings() -> NeedsRestart {
        NeedsRestart {
            listen: "127.0.0.1:8080".parse().unwrap(),
            admin_listen: "127.0.0.1:9090".parse().unwrap(),
            tls: None,
            h2c: false,
            threads: 2,
            header_timeout: Duration::from_secs(10),
            grace_period: Duration::from_secs(10),
            redis: None,
            tracing: None,
            log: log::LevelFilter::Info,
        }
    }

    #[test]
    fn restart_only_changes_are_named() {
        let old = settings();
        assert!(old.changed(&settings()).is_empty());
        let mut new = settings();
        new.listen = "0.0.0.0:8080".parse().unwrap();
        new.h2c = true;
        new.log = log::LevelFilter::Debug;
        assert_eq!(old.changed(&new), ["listen", "h2c", "log"]);
    }
}
