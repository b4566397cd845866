//! State every replica shares through Redis (opt-in): rate limits that count across replicas,
//! and sign-outs that reach all of them within a moment. Without it, limits count per replica
//! and there is no sign-out.
//!
//! Limits are GCRA, run atomically in Redis on Redis' own clock. Sign-outs are kept in a local
//! copy that a subscription keeps current (a full reload on every (re)connect, then every
//! published sign-out), so a request checks memory, not the network. When Redis cannot be
//! reached, each feature follows its configured failure mode: limits fail open (serve, count,
//! log) and sign-out checks fail closed (503) unless configured otherwise; both recover on their
//! own once Redis answers again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::limits::RateLimit;
use crate::metrics;

/// How Redis is reached and what happens when it is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://host:port/db`.
    pub url: String,
    /// Longest any one Redis call may take before it counts as a failure.
    pub timeout: Duration,
    /// Prefix of every key and channel, so several gates can share one Redis.
    pub key_prefix: String,
    /// Serve requests when the limit cannot be checked (`true`, the default) or answer 503.
    pub limits_fail_open: bool,
    /// Serve tokens when sign-outs cannot be checked (`false`, the default: 503).
    pub revocation_fail_open: bool,
    /// How long a sign-out is remembered: the longest a session token lives.
    pub revocation_ttl: Duration,
}

/// A feature that uses Redis, the `feature` label of its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// Rate limits.
    Limits,
    /// Sign-out checks.
    Revocation,
}

impl Feature {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Feature::Limits => "limits",
            Feature::Revocation => "revocation",
        }
    }
}

/// What a shared limit said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead.
    Admit,
    /// Not yet: retry after this long.
    Wait(Duration),
    /// Redis could not say, and the limit fails closed.
    Unavailable,
}

/// What the sign-out check said about a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Not signed out.
    Valid,
    /// Its subject signed out after it was issued.
    Revoked,
    /// Sign-outs cannot be checked right now, and the check fails closed.
    Unavailable,
}

/// GCRA on Redis' clock, in microseconds. KEYS[1]: the limit's key. ARGV: emission interval,
/// tolerance (burst). Returns 0 to admit, else the microseconds to wait.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat - now - tonumber(ARGV[2])
if wait > 0 then return wait end
local next = tat + tonumber(ARGV[1])
redis.call('SET', KEYS[1], next, 'PX', math.ceil((next - now) / 1000) + 1000)
return 0
";

/// Redis-backed shared state.
pub struct Shared {
    settings: RedisSettings,
    client: redis::Client,
    script: redis::Script,
    connection: RwLock<Option<ConnectionManager>>,
    /// Subject → when it signed out (Unix seconds), with when the entry lapses.
    revoked: RwLock<HashMap<String, (f64, f64)>>,
    /// The local copy of sign-outs is current (subscribed, loaded).
    synced: AtomicBool,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Shared {
    /// Shared state over `settings`; connects in the background ([`SharedSync`]).
    pub fn new(settings: RedisSettings) -> Result<Shared, redis::RedisError> {
        Ok(Shared {
            client: redis::Client::open(settings.url.as_str())?,
            script: redis::Script::new(GCRA),
            settings,
            connection: RwLock::new(None),
            revoked: RwLock::new(HashMap::new()),
            synced: AtomicBool::new(false),
        })
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut key = self.settings.key_prefix.clone();
        key.push_str(&parts.join(":"));
        key
    }

    fn connection(&self) -> Option<ConnectionManager> {
        self.connection
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn failed(&self, feature: Feature, error: &dyn std::fmt::Display) {
        metrics::get()
            .redis_errors
            .with_label_values(&[feature.as_str()])
            .inc();
        log::warn!("redis ({}): {error}", feature.as_str());
    }

    /// Counts one event against the limit `name` for `key`, across every replica.
    pub async fn admit(&self, name: &str, key: &str, limit: RateLimit) -> Admission {
        let per = u64::try_from(limit.per.as_micros()).unwrap_or(u64::MAX);
        let emission = per / u64::from(limit.mints.max(1));
        let tolerance = emission.saturating_mul(u64::from(limit.burst.max(1) - 1));
        let fail = match self.settings.limits_fail_open {
            true => Admission::Admit,
            false => Admission::Unavailable,
        };
        let Some(mut conn) = self.connection() else {
            self.failed(Feature::Limits, &"not connected");
            return fail;
        };
        let mut invocation = self.script.key(self.key(&["limit", name, key]));
        invocation.arg(emission).arg(tolerance);
        let call = invocation.invoke_async::<u64>(&mut conn);
        match tokio::time::timeout(self.settings.timeout, call).await {
            Ok(Ok(0)) => Admission::Admit,
            Ok(Ok(wait)) => Admission::Wait(Duration::from_micros(wait)),
            Ok(Err(e)) => {
                self.failed(Feature::Limits, &e);
                fail
            }
            Err(_) => {
                self.failed(Feature::Limits, &"timed out");
                fail
            }
        }
    }

    /// Whether a token of `subject` issued at `issued_at` (Unix seconds; `None`: unknown) still
    /// stands.
    pub fn standing(&self, subject: &str, issued_at: Option<f64>) -> Standing {
        if !self.synced.load(Ordering::Acquire) && !self.settings.revocation_fail_open {
            return Standing::Unavailable;
        }
        let revoked = self.revoked.read().unwrap_or_else(PoisonError::into_inner);
        match revoked.get(subject) {
            Some((at, until)) if *until > unix_now() && issued_at.is_none_or(|iat| iat <= *at) => {
                Standing::Revoked
            }
            _ => Standing::Valid,
        }
    }

    /// Signs `subject` out everywhere: every token issued until now is refused by every replica.
    pub async fn revoke(&self, subject: &str) -> Result<(), redis::RedisError> {
        let mut conn = self.client.get_multiplexed_async_connection().await?;
        let now = unix_now();
        let ttl = self.settings.revocation_ttl.as_secs().max(1);
        let value = format!("{now:.6}");
        redis::pipe()
            .atomic()
            .set_ex(self.key(&["revoked", subject]), &value, ttl)
            .publish(self.key(&["revocations"]), format!("{value} {subject}"))
            .query_async::<()>(&mut conn)
            .await
    }

    fn record_revocation(&self, subject: &str, at: f64, remaining_secs: f64) {
        let until = unix_now() + remaining_secs;
        let mut revoked = self.revoked.write().unwrap_or_else(PoisonError::into_inner);
        revoked.retain(|_, (_, until)| *until > unix_now());
        let entry = revoked.entry(subject.to_owned()).or_insert((at, until));
        if at > entry.0 {
            *entry = (at, until);
        }
    }

    /// Loads every remembered sign-out (on each (re)connect: none may have been missed).
    async fn load_revocations(&self, conn: &mut ConnectionManager) -> redis::RedisResult<()> {
        let pattern = self.key(&["revoked", "*"]);
        let prefix = self.key(&["revoked", ""]);
        let keys: Vec<String> = {
            let mut iter: redis::AsyncIter<String> = redis::cmd("SCAN")
                .cursor_arg(0)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .clone()
                .iter_async(conn)
                .await?;
            let mut keys = Vec::new();
            while let Some(key) = iter.next_item().await {
                keys.push(key?);
            }
            keys
        };
        for key in keys {
            let (at, ttl): (Option<String>, i64) =
                redis::pipe().get(&key).ttl(&key).query_async(conn).await?;
            if let (Some(at), Some(subject)) = (at, key.strip_prefix(&prefix)) {
                if let Ok(at) = at.parse::<f64>() {
                    self.record_revocation(subject, at, ttl.max(0) as f64);
                }
            }
        }
        Ok(())
    }

    /// `step` within the configured Redis timeout, or a timeout error.
    async fn bounded<T>(
        &self,
        step: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> redis::RedisResult<T> {
        tokio::time::timeout(self.settings.timeout, step)
            .await
            .unwrap_or_else(|_| {
                Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "no answer within the timeout",
                )))
            })
    }

    fn set_connected(&self, conn: Option<ConnectionManager>) {
        let up = conn.is_some();
        *self
            .connection
            .write()
            .unwrap_or_else(PoisonError::into_inner) = conn;
        metrics::get().redis_up.set(i64::from(up));
    }

    /// Connects, loads sign-outs, then follows them until the subscription breaks.
    async fn sync_once(&self) -> redis::RedisResult<()> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.settings.timeout))
            .set_response_timeout(Some(self.settings.timeout))
            .set_number_of_retries(1);
        let mut conn = self
            .client
            .get_connection_manager_with_config(config)
            .await?;
        // The subscription has no timeouts of its own: a Redis that stops answering between
        // the two connections would hold this task, and every reconnect, for as long as the
        // kernel's TCP timeouts (minutes).
        let mut pubsub = self.bounded(self.client.get_async_pubsub()).await?;
        self.bounded(pubsub.subscribe(self.key(&["revocations"])))
            .await?;
        self.load_revocations(&mut conn).await?;
        self.set_connected(Some(conn));
        if !self.synced.swap(true, Ordering::AcqRel) {
            log::info!("redis: connected, sign-outs loaded");
        }
        let ttl = self.settings.revocation_ttl.as_secs_f64();
        let mut messages = pubsub.on_message();
        let mut probe = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { break };
                    let Ok(text) = message.get_payload::<String>() else { continue };
                    if let Some((at, subject)) = text.split_once(' ') {
                        if let Ok(at) = at.parse::<f64>() {
                            self.record_revocation(subject, at, ttl);
                        }
                    }
                }
                _ = probe.tick() => {
                    // A silent subscription proves nothing: check that Redis still answers.
                    let Some(mut conn) = self.connection() else { break };
                    let ping_cmd = redis::cmd("PING");
                    let ping = ping_cmd.query_async::<String>(&mut conn);
                    if !matches!(tokio::time::timeout(self.settings.timeout, ping).await, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "lost the connection",
        )))
    }
}

/// The background service keeping [`Shared`] connected and its sign-outs current.
pub struct SharedSync(pub std::sync::Arc<Shared>);

#[async_trait]
impl BackgroundService for SharedSync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let shared = &self.0;
        loop {
            let outcome = tokio::select! {
                _ = shutdown.changed() => return,
                outcome = shared.sync_once() => outcome,
            };
            if let Err(e) = outcome {
                if shared.synced.swap(false, Ordering::AcqRel) {
                    log::error!(
                        "redis: {e}; limits fail {}, sign-out checks fail {}",
                        if shared.settings.limits_fail_open {
                            "open"
                        } else {
                            "closed"
                        },
                        if shared.settings.revocation_fail_open {
                            "open"
                        } else {
                            "closed"
                        }
                    );
                }
                shared.set_connected(None);
                shared.failed(Feature::Revocation, &e);
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }
}
