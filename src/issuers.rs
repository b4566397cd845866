//! Keeping identity providers' keys: fetched at start and in the background as their
//! `Cache-Control` allows (within each issuer's bounds), again when a token names a key not yet
//! seen (one fetch at a time per issuer, at most one per `refetch_interval`, so forged `kid`s
//! cannot make the gate a load generator against the provider), and kept in use through an
//! outage for `stale_for`, then no longer (fail closed).
//!
//! The fetch itself is a small blocking HTTP client on the runtime's blocking pool; requests
//! never wait for one except for a key they name and nobody has.

use std::sync::{Arc, Mutex, PoisonError};

use crate::metrics;
use crate::token::issuer::{self, IssuerKeys, IssuerSettings, KeySet, Loaded};
use crate::token::TokenService;

/// Largest discovery document or key set read.
const MAX_DOCUMENT: u64 = 1 << 20;

/// One issuer's keys and how they are fetched.
#[derive(Debug)]
pub struct Fetcher {
    settings: IssuerSettings,
    keys: Arc<IssuerKeys>,
    /// Held for the length of each fetch, so there is one at a time; the last fetch a token
    /// asked for, in seconds since the epoch.
    fetching: tokio::sync::Mutex<Option<u64>>,
    /// The key set's address, once discovered.
    discovered: Mutex<Option<String>>,
    /// When the next background fetch is due.
    due: Mutex<u64>,
}

impl Fetcher {
    fn new(settings: IssuerSettings, keys: Arc<IssuerKeys>) -> Fetcher {
        Fetcher {
            settings,
            keys,
            fetching: tokio::sync::Mutex::new(None),
            discovered: Mutex::new(None),
            due: Mutex::new(0),
        }
    }

    /// The issuer, as configured (the `issuer` label of its metrics).
    pub fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    /// Whether its keys are usable at `now`.
    pub fn ready(&self, now: u64) -> bool {
        self.keys.usable(now).is_some()
    }

    /// Fetches now unless a fetch for a token already ran within `refetch_interval`; waits for
    /// one under way, and then takes its keys.
    pub async fn fetch_for_token(&self, kid: Option<&str>, now: u64) {
        let mut last = self.fetching.lock().await;
        if self.keys.usable(now).is_some_and(|l| l.set.knows(kid)) {
            return;
        }
        let interval = self.settings.refetch_interval.as_secs();
        if last.is_some_and(|at| now < at.saturating_add(interval.max(1))) {
            return;
        }
        *last = Some(now);
        self.fetch(now).await;
    }

    /// Fetches when the keys are due for a refresh.
    pub async fn refresh_if_due(&self, now: u64) {
        if !self.due(now) {
            return;
        }
        let _one = self.fetching.lock().await;
        // A token's fetch may have run while this one waited.
        if self.due(now) {
            self.fetch(now).await;
        }
    }

    fn due(&self, now: u64) -> bool {
        now >= *self.due.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One fetch on the blocking pool, its keys put in force; a failure keeps the keys there
    /// are and tries again after `min_refresh`.
    async fn fetch(&self, now: u64) {
        let settings = self.settings.clone();
        let discovered = self.discovered_uri();
        let fetched =
            tokio::task::spawn_blocking(move || fetch_blocking(&settings, discovered, now))
                .await
                .unwrap_or_else(|e| Err(format!("the fetch stopped: {e}")));
        let next = match fetched {
            Ok((loaded, jwks_uri)) => {
                *self
                    .discovered
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(jwks_uri);
                let refresh_at = loaded.refresh_at;
                self.keys.set(loaded);
                metrics::get()
                    .issuer_fetches
                    .with_label_values(&[self.issuer(), "ok"])
                    .inc();
                refresh_at
            }
            Err(problem) => {
                // The address may have moved: discover it again next time.
                *self
                    .discovered
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = None;
                metrics::get()
                    .issuer_fetches
                    .with_label_values(&[self.issuer(), "error"])
                    .inc();
                let kept = match self.keys.usable(now) {
                    Some(loaded) => format!(
                        "its keys stay in use until {}s from now",
                        loaded.usable_until.saturating_sub(now)
                    ),
                    None => "its tokens are refused until it answers".to_owned(),
                };
                log::warn!(
                    "cannot fetch the keys of issuer {}: {problem}; {kept}",
                    self.issuer()
                );
                now + self.settings.min_refresh.as_secs()
            }
        };
        *self.due.lock().unwrap_or_else(PoisonError::into_inner) = next;
        self.report(now);
    }

    /// Its gauges at `now`.
    pub fn report(&self, now: u64) {
        let metrics = metrics::get();
        let (count, age) = match self.keys.usable(now) {
            Some(loaded) => (loaded.set.len(), now.saturating_sub(loaded.fetched_at)),
            None => (0, 0),
        };
        let label = [self.issuer()];
        metrics
            .issuer_keys
            .with_label_values(&label)
            .set(count as i64);
        metrics
            .issuer_keys_age
            .with_label_values(&label)
            .set(age as i64);
    }

    fn discovered_uri(&self) -> Option<String> {
        self.discovered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Fetches `settings`' key set (discovering its address first unless configured or already
/// `discovered`): the keys and the address they came from.
fn fetch_blocking(
    settings: &IssuerSettings,
    discovered: Option<String>,
    now: u64,
) -> Result<(Loaded, String), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(settings.fetch_timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let get = |uri: &str| -> Result<(Vec<u8>, Option<String>), String> {
        let mut response = agent
            .get(uri)
            .header("Accept", "application/jwk-set+json, application/json")
            .call()
            .map_err(|e| format!("GET {uri}: {e}"))?;
        if response.status() != 200 {
            return Err(format!("GET {uri}: status {}", response.status()));
        }
        let cache_control = response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_DOCUMENT)
            .read_to_vec()
            .map_err(|e| format!("GET {uri}: {e}"))?;
        Ok((body, cache_control))
    };
    let jwks_uri = match settings.jwks_uri.clone().or(discovered) {
        Some(uri) => uri,
        None => {
            let (document, _) = get(&settings.discovery_uri())?;
            issuer::discovered_jwks_uri(&document, &settings.issuer)?
        }
    };
    let (document, cache_control) = get(&jwks_uri)?;
    let set = KeySet::parse(&document, &settings.algorithms)?;
    let max_age = cache_control.as_deref().and_then(issuer::max_age);
    let refresh_at = now + settings.keep_for(max_age).as_secs();
    let loaded = Loaded {
        set,
        fetched_at: now,
        refresh_at,
        usable_until: refresh_at + settings.stale_for.as_secs(),
    };
    Ok((loaded, jwks_uri))
}

/// Every issuer's fetcher, kept across reloads: an issuer configured the same way keeps its
/// keys and its schedule.
#[derive(Debug, Default)]
pub struct Registry {
    fetchers: Mutex<Vec<Arc<Fetcher>>>,
}

impl Registry {
    /// Gives each of `tokens`' issuers its fetcher's keys (a new fetcher for a new issuer), and
    /// returns the fetchers in issuer order; fetchers of issuers no longer configured go.
    pub fn attach(&self, tokens: &mut TokenService) -> Vec<Arc<Fetcher>> {
        let mut known = self.fetchers.lock().unwrap_or_else(PoisonError::into_inner);
        let attached: Vec<Arc<Fetcher>> = tokens
            .issuers
            .iter_mut()
            .map(|issuer| {
                let fetcher = known
                    .iter()
                    .find(|f| f.settings == issuer.settings)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Fetcher::new(issuer.settings.clone(), issuer.keys.clone()))
                    });
                issuer.keys = fetcher.keys.clone();
                fetcher
            })
            .collect();
        *known = attached.clone();
        attached
    }
}

/// The issuers whose keys are not usable at `now`, for readiness.
pub fn unready(fetchers: &[Arc<Fetcher>], now: u64) -> Vec<String> {
    fetchers
        .iter()
        .filter(|f| !f.ready(now))
        .map(|f| f.issuer().to_owned())
        .collect()
}
