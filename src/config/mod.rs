//! YAML file + environment → one validated [`Config`], or one line saying what is wrong.
//!
//! One small resolver per section: [`values`] reads single settings, [`secrets`] the keys,
//! [`routes`] the upstream groups and the route table. Nothing in the runtime imports from here;
//! `server` hands each component the part it needs.

mod authorize;
mod layout;
mod routes;
mod secrets;
mod tls;
mod values;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use http::HeaderName;
use pingora::server::configuration::ServerConf;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_aux::serde_introspection::serde_introspect;
use serde_yaml::{Mapping, Value};

use crate::access_log::LogFormat;
use crate::forward_claims::{unfit_header, ClaimHeader};
use crate::forwarded::TrustedProxies;
use crate::request;
use crate::routes::{AuthMode, RouteTable};
use crate::shared::RedisSettings;
use crate::token::issuer::{Issuer, IssuerSettings};
use crate::token::mint::Minting;
use crate::token::permission::RESERVED_CLAIMS;
use crate::token::{
    self, KeyError, Keyring, Limits, PermissionPolicy, Secret, SecretSource, SecretsError,
    SharedKeyring, TokenService,
};
use crate::trace::TraceSettings;
use crate::upstreams::{GroupConfig, UpstreamTimeouts};
pub use authorize::AuthorizeSettings;
pub use layout::grouped;
pub use routes::DEFAULT_GROUP;
pub use secrets::{Signing, DEVELOPMENT_SECRET};
pub use tls::ListenerTls;
use values::{boolean, duration, invalid, listen_address, parse_duration, pick, upstream_address};

/// Why the configuration was refused; `Display` is the one line printed at start-up.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read(PathBuf, std::io::Error),
    /// The secrets file could not be read.
    SecretFile(PathBuf, std::io::Error),
    /// The file is not valid YAML of the expected shape (unknown keys included).
    Parse(String),
    /// A setting has a value that cannot be used.
    Invalid {
        /// The setting, as `tokengate.key` or `TOKENGATE_VAR`.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The secrets do not make a usable keyring.
    Keys(KeyError),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read(path, e) => write!(f, "cannot read {}: {e}", path.display()),
            ConfigError::SecretFile(path, e) => write!(
                f,
                "cannot read the secrets file {}: {e}; mount it there, or set TOKENGATE_SECRET \
                 or TOKENGATE_SECRET_FILE",
                path.display()
            ),
            ConfigError::Parse(e) => write!(f, "invalid configuration: {e}"),
            ConfigError::Invalid { key, problem } => write!(f, "invalid {key}: {problem}"),
            ConfigError::Keys(e) => write!(f, "invalid secrets: {e}"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl From<SecretsError> for ConfigError {
    fn from(e: SecretsError) -> ConfigError {
        match e {
            SecretsError::File(path, e) => ConfigError::SecretFile(path, e),
            SecretsError::Keys(e) => ConfigError::Keys(e),
        }
    }
}

/// The whole validated configuration.
#[derive(Debug)]
pub struct Config {
    /// Proxy listener.
    pub listen: SocketAddr,
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`).
    pub admin_listen: SocketAddr,
    /// The TLS listener, if any.
    pub tls: Option<ListenerTls>,
    /// The authorization listener gateways ask, if any.
    pub authorize: Option<AuthorizeSettings>,
    /// Whether the plaintext listener also takes HTTP/2 with prior knowledge.
    pub h2c: bool,
    /// Verification secrets; the first signs.
    pub secrets: Vec<Secret>,
    /// Where the secrets came from, to read them again on rotation.
    pub secret_source: SecretSource,
    /// The public development secret is in use (allowed on loopback listeners only).
    pub development_secret: bool,
    /// The `token` section: minting and verifying tokens, besides the keys.
    pub token: token::Settings,
    /// Identity providers whose tokens are sessions too.
    pub issuers: Vec<IssuerSettings>,
    /// How large a token request, its permission and the tokens may be.
    pub limits: Limits,
    /// ES256 / EdDSA minting, when configured; HS256 otherwise.
    pub signing: Option<Signing>,
    /// How forwarded requests are read, checked, routed and rewritten.
    pub proxy: ProxySettings,
    /// Shared limits and sign-outs across replicas, when configured.
    pub redis: Option<RedisSettings>,
    /// Span export, when configured.
    pub tracing: Option<TraceSettings>,
    /// How long `SIGTERM` waits for in-flight requests.
    pub grace_period: Duration,
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// Log level.
    pub log: log::LevelFilter,
    /// Format of log lines, the access log's and the application's.
    pub log_format: LogFormat,
    /// Whether each request gets an access-log line on stdout.
    pub access_log: bool,
    /// Pingora's own server settings (from the same file's other top-level keys).
    pub server: ServerConf,
}

/// `issuers:`, the identity providers whose tokens are sessions.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct IdentityProviders {
    issuers: Vec<IssuerSettings>,
}

impl IdentityProviders {
    /// Each issuer usable, named once, and not this gate's own `token.issuer` (whose tokens
    /// it verifies with its own keys).
    fn check(&self, token: &token::Settings) -> Result<(), ConfigError> {
        for (i, issuer) in self.issuers.iter().enumerate() {
            if let Err((key, problem)) = issuer.check(&token.subject_claim) {
                return Err(invalid(&format!("tokengate.issuers[{i}].{key}"), problem));
            }
            let key = format!("tokengate.issuers[{i}].issuer");
            if self.issuers[..i].iter().any(|o| o.issuer == issuer.issuer) {
                return Err(invalid(
                    &key,
                    format!("{:?} is configured twice", issuer.issuer),
                ));
            }
            if token.issuer.as_deref() == Some(issuer.issuer.as_str()) {
                return Err(invalid(
                    &key,
                    format!(
                        "{:?} is token.issuer, the iss of the tokens this gate mints itself",
                        issuer.issuer
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Whether an issuer's keys come over plain `http` from anywhere but this machine.
fn fetched_in_the_clear(issuer: &IssuerSettings) -> bool {
    let elsewhere = |uri: &String| {
        let Ok(uri) = uri.parse::<http::Uri>() else {
            return false;
        };
        let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
        let loopback = host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
        uri.scheme_str() == Some("http") && !loopback && host != "localhost"
    };
    [Some(&issuer.issuer), issuer.jwks_uri.as_ref()]
        .into_iter()
        .flatten()
        .any(elsewhere)
}

/// The settings resolved here; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawConfig {
    listen: Option<String>,
    admin_listen: Option<String>,
    upstream: Option<String>,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    identity_header: Option<String>,
    forward_claims: BTreeMap<String, String>,
    auth: Option<AuthMode>,
    /// Replaced by routes; kept only to say how to rewrite it.
    auth_paths: Option<serde_yaml::Value>,
    trusted_proxies: Vec<String>,
    #[serde(with = "humantime_serde")]
    header_timeout: Option<Duration>,
    #[serde(with = "humantime_serde")]
    grace_period: Option<Duration>,
    threads: Option<usize>,
    log: Option<String>,
    log_format: Option<String>,
    access_log: Option<bool>,
    upstream_timeouts: UpstreamTimeouts,
    upstreams: BTreeMap<String, routes::RawGroup>,
    routes: Vec<routes::RawRoute>,
    signing: Option<secrets::RawSigning>,
    redis: Option<RawRedis>,
    tracing: Option<RawTracing>,
    tls: Option<tls::RawListenerTls>,
    h2c: Option<bool>,
    authorize: Option<authorize::RawAuthorize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTracing {
    endpoint: String,
    #[serde(default)]
    service_name: Option<String>,
    #[serde(default)]
    queue: Option<usize>,
    #[serde(default)]
    batch: Option<usize>,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
}

fn resolve_tracing(raw: RawTracing) -> Result<TraceSettings, ConfigError> {
    if !(raw.endpoint.starts_with("http://") || raw.endpoint.starts_with("https://")) {
        return Err(invalid(
            "tokengate.tracing.endpoint",
            format!("{:?} is not an http(s) URL", raw.endpoint),
        ));
    }
    let positive = |key: &str, value: Option<usize>, default: usize| match value.unwrap_or(default)
    {
        0 => Err(invalid(key, "must be above zero")),
        n => Ok(n),
    };
    Ok(TraceSettings {
        endpoint: raw.endpoint,
        service_name: raw.service_name.unwrap_or_else(|| "tokengate".to_owned()),
        queue: positive("tokengate.tracing.queue", raw.queue, 2048)?,
        batch: positive("tokengate.tracing.batch", raw.batch, 512)?,
        interval: parse_duration(
            "tokengate.tracing.interval",
            raw.interval.as_deref().unwrap_or("1s"),
        )?,
        timeout: parse_duration(
            "tokengate.tracing.timeout",
            raw.timeout.as_deref().unwrap_or("2s"),
        )?,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    url: String,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    key_prefix: Option<String>,
    #[serde(default)]
    on_error: RawOnError,
    #[serde(default)]
    revocation_ttl: Option<String>,
}

/// Per feature, what a Redis failure means: `open` (serve) or `closed` (503).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawOnError {
    limits: Option<FailMode>,
    revocation: Option<FailMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FailMode {
    Open,
    Closed,
}

/// `redis:` from the file, its URL from `TOKENGATE_REDIS_URL` when set (which alone turns it on).
fn resolve_redis_source(
    raw: Option<RawRedis>,
    env: &impl Env,
) -> Result<Option<RedisSettings>, ConfigError> {
    let raw = match (raw, env.var("TOKENGATE_REDIS_URL")) {
        (Some(raw), Some(url)) => Some(RawRedis { url, ..raw }),
        (None, Some(url)) => Some(RawRedis {
            url,
            timeout: None,
            key_prefix: None,
            on_error: RawOnError::default(),
            revocation_ttl: None,
        }),
        (raw, None) => raw,
    };
    raw.map(resolve_redis).transpose()
}

fn resolve_redis(raw: RawRedis) -> Result<RedisSettings, ConfigError> {
    if !(raw.url.starts_with("redis://")
        || raw.url.starts_with("rediss://")
        || raw.url.starts_with("unix://"))
    {
        return Err(invalid(
            "tokengate.redis.url",
            format!("{:?} is not a redis:// URL", raw.url),
        ));
    }
    Ok(RedisSettings {
        url: raw.url,
        timeout: parse_duration(
            "tokengate.redis.timeout",
            raw.timeout.as_deref().unwrap_or(defaults::REDIS_TIMEOUT),
        )?,
        key_prefix: raw
            .key_prefix
            .unwrap_or_else(|| defaults::REDIS_PREFIX.to_owned()),
        limits_fail_open: raw.on_error.limits.unwrap_or(FailMode::Open) == FailMode::Open,
        revocation_fail_open: raw.on_error.revocation.unwrap_or(FailMode::Closed) == FailMode::Open,
        revocation_ttl: parse_duration(
            "tokengate.redis.revocation_ttl",
            raw.revocation_ttl
                .as_deref()
                .unwrap_or(defaults::REVOCATION_TTL),
        )?,
    })
}

/// Defaults named once.
mod defaults {
    pub const LISTEN: &str = "127.0.0.1:8080";
    pub const ADMIN_LISTEN: &str = "127.0.0.1:9090";
    pub const UPSTREAM: &str = "127.0.0.1:3000";
    pub const IDENTITY_HEADER: &str = "X-User-Id";
    pub const GRACE_PERIOD: &str = "10s";
    pub const HEADER_TIMEOUT: &str = "10s";
    pub const REDIS_TIMEOUT: &str = "200ms";
    pub const REDIS_PREFIX: &str = "tokengate:";
    /// The longest a session token lives: a sign-out must outlast every token it covers.
    pub const REVOCATION_TTL: &str = "24h";
    /// Idle upstream connections kept for reuse (Pingora's own default is 128).
    pub const UPSTREAM_POOL: usize = 1024;
}

/// Where environment variables come from; tests pass a map instead of the process environment.
/// An empty variable counts as unset, as Kubernetes' `value: ""` means.
pub trait Env {
    /// The variable's value, if set and not empty.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
            .filter(|v| !v.is_empty())
    }
}

impl Config {
    /// Loads `path` (or defaults when `None`), applies the environment, and validates.
    pub fn load(path: Option<&Path>, env: &impl Env) -> Result<Config, ConfigError> {
        let text = match path {
            Some(path) => {
                std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_owned(), e))?
            }
            None => String::new(),
        };
        Config::from_yaml(&text, env)
    }

    /// Parses YAML text: a `tokengate:` section beside Pingora's own server keys.
    pub fn from_yaml(text: &str, env: &impl Env) -> Result<Config, ConfigError> {
        let (raw, server, spellings) = split_sections(text)?;
        resolve(raw, server, env).map_err(|e| layout::as_written(e, &spellings))
    }

    /// The keyring the configured secrets make.
    pub fn keyring(&self) -> Result<Keyring, ConfigError> {
        Keyring::new(&self.secrets, &self.token.algorithms).map_err(ConfigError::Keys)
    }

    /// The token route's service, built from this configuration.
    pub fn token_service(&self) -> Result<TokenService, ConfigError> {
        let keys = SharedKeyring::new(self.keyring()?);
        let token = &self.token;
        let mut reserved = token.reserved_claims.clone();
        reserved.push(token.subject_claim.clone());
        Ok(TokenService {
            keys,
            settings: token.clone(),
            permission: PermissionPolicy {
                limits: self.limits,
                reserved,
                abilities: token.abilities.clone(),
            },
            minting: Minting {
                max_ttl_secs: token.max_ttl.map(|d| d.as_secs()),
                typ: token.minted_typ.clone(),
                issuer: token.issuer.clone(),
                audience: token.audience.clone(),
            },
            signer: self.signing.as_ref().map(|s| s.key.clone()),
            minted_keys: self.signing.as_ref().map(|s| s.public.clone()),
            issuers: self.issuers.iter().cloned().map(Issuer::new).collect(),
        })
    }

    /// What an operator must be told about this configuration at every start and reload:
    /// settings that are allowed but weaken the gate. Derived from the resolved values, so it is
    /// written once logging is set up, whatever order start-up runs in.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.development_secret {
            warnings.push(
                "the public development secret is in use: anyone can mint tokens; it is only \
                 accepted because every listener is on loopback"
                    .to_owned(),
            );
        }
        for issuer in self.issuers.iter().filter(|i| fetched_in_the_clear(i)) {
            warnings.push(format!(
                "tokengate.issuers: the keys of {} are fetched over plain http: anyone on the \
                 path can replace them",
                issuer.issuer
            ));
        }
        for group in &self.proxy.upstream_groups {
            if group.tls.as_ref().is_some_and(|t| t.insecure_skip_verify) {
                warnings.push(format!(
                    "tokengate.upstreams.{}.tls: insecure_skip_verify is on: any server \
                     certificate is accepted",
                    group.name
                ));
            }
        }
        warnings
    }

    /// The upstream groups' names, in index order.
    pub fn group_names(&self) -> Vec<String> {
        self.proxy
            .upstream_groups
            .iter()
            .map(|g| g.name.clone())
            .collect()
    }
}

/// Splits the file into tokengate's settings and Pingora's. tokengate's may sit under
/// `tokengate:` or, flat, at the top level beside Pingora's keys; every key must be one or the
/// other, and none may be given in both places.
fn split_sections(text: &str) -> Result<(Mapping, ServerConf, layout::Spellings), ConfigError> {
    let parse_err = |e: serde_yaml::Error| ConfigError::Parse(e.to_string());
    let mut doc: serde_yaml::Mapping = if text.trim().is_empty() {
        serde_yaml::Mapping::new()
    } else {
        serde_yaml::from_str(text)
            .map_err(|e| duplicated(text, &e).unwrap_or_else(|| parse_err(e)))?
    };
    let mut section = match doc.remove("tokengate") {
        Some(serde_yaml::Value::Mapping(section)) => section,
        Some(serde_yaml::Value::Null) | None => serde_yaml::Mapping::new(),
        Some(_) => {
            return Err(ConfigError::Parse(
                "tokengate: must be a mapping of settings".into(),
            ))
        }
    };
    // Pingora ignores keys it does not know; here every key not Pingora's is tokengate's, so a
    // typo anywhere is refused by tokengate's own strict parsing below.
    let known = pingora_keys();
    let flat: Vec<serde_yaml::Value> = doc
        .keys()
        .filter(|k| !k.as_str().is_some_and(|k| known.contains(k)))
        .cloned()
        .collect();
    for key in flat {
        if section.contains_key(&key) {
            let name = serde_yaml::to_string(&key).unwrap_or_default();
            return Err(ConfigError::Parse(format!(
                "`{}` is given both at the top level and under `tokengate:`",
                name.trim()
            )));
        }
        if let Some(value) = doc.remove(&key) {
            section.insert(key, value);
        }
    }
    let spellings = layout::flatten(&mut section)?;
    // `threads` is Pingora's key too; flat, it sets tokengate's worker threads.
    if let Some(threads) = doc.get("threads") {
        section
            .entry("threads".into())
            .or_insert_with(|| threads.clone());
    }
    // Each worker thread runs its own connections start to end unless the file says otherwise:
    // no cross-thread task stealing on the per-request path (cheaper, and what Pingora advises).
    let stealing_set = doc.contains_key("work_stealing");
    // A pool smaller than the number of clients closes and reopens an upstream connection for
    // most requests under load (a TCP handshake each, TIME_WAIT on the app's side); an idle
    // pooled connection costs about 1.5 KiB.
    let pool_set = doc.contains_key("upstream_keepalive_pool_size");
    let mut server: ServerConf =
        serde_yaml::from_value(serde_yaml::Value::Mapping(doc)).map_err(parse_err)?;
    if !stealing_set {
        server.work_stealing = false;
    }
    if !pool_set {
        server.upstream_keepalive_pool_size = defaults::UPSTREAM_POOL;
    }
    Ok((section, server, spellings))
}

/// A key given twice at the top level, named with the lines of every occurrence (the YAML
/// parser says only that there is one).
fn duplicated(text: &str, error: &serde_yaml::Error) -> Option<ConfigError> {
    let message = error.to_string();
    let key = message
        .strip_prefix("duplicate entry with key \"")?
        .split('"')
        .next()?;
    let lines: Vec<String> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| {
            line.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
        .map(|(i, _)| (i + 1).to_string())
        .collect();
    Some(ConfigError::Parse(format!(
        "`{key}` is given more than once (lines {}): write it once",
        lines.join(", ")
    )))
}

/// Every key the `tokengate:` section takes, flat, whoever declares it.
fn flat_keys() -> Vec<&'static str> {
    [
        serde_introspect::<RawConfig>(),
        serde_introspect::<IdentityProviders>(),
        serde_introspect::<token::Settings>(),
        serde_introspect::<Limits>(),
        serde_introspect::<request::Options>(),
    ]
    .concat()
}

/// Environment variables that set a key a component declares, by that key. (The settings
/// `config` resolves itself read theirs where they are resolved.)
const ENVIRONMENT: [(&str, &str); 6] = [
    ("TOKENGATE_ENDPOINT", "endpoint"),
    ("TOKENGATE_LEEWAY", "leeway"),
    (
        "TOKENGATE_UPSTREAM_CONNECT_TIMEOUT",
        "upstream_timeouts.connect",
    ),
    ("TOKENGATE_UPSTREAM_READ_TIMEOUT", "upstream_timeouts.read"),
    (
        "TOKENGATE_UPSTREAM_WRITE_TIMEOUT",
        "upstream_timeouts.write",
    ),
    ("TOKENGATE_UPSTREAM_IDLE_TIMEOUT", "upstream_timeouts.idle"),
];

/// Sets each key of [`ENVIRONMENT`] whose variable is set: the environment beats the file.
/// Returns the variables used, by key, for an error to name.
fn apply_environment(section: &mut Mapping, env: &impl Env) -> BTreeMap<String, &'static str> {
    let mut used = BTreeMap::new();
    for (var, path) in ENVIRONMENT {
        let Some(value) = env.var(var) else {
            continue;
        };
        // A dotted key sets a member of its section's mapping (made if the file has none).
        let mut at = &mut *section;
        let mut keys = path.split('.').peekable();
        while let Some(key) = keys.next() {
            if keys.peek().is_none() {
                at.insert(key.into(), Value::String(value.clone()));
                break;
            }
            let entry = at
                .entry(key.into())
                .or_insert_with(|| Value::Mapping(Mapping::new()));
            if !entry.is_mapping() {
                *entry = Value::Mapping(Mapping::new());
            }
            let Value::Mapping(inner) = entry else { break };
            at = inner;
        }
        used.insert(path.to_owned(), var);
    }
    used
}

/// Takes the keys a component's settings struct `T` declares out of `section` and reads `T`
/// from them: a refusal names the key (as the file, or the variable, gave it), its value, and
/// what is accepted.
fn take<T: DeserializeOwned>(
    section: &mut Mapping,
    from_env: &BTreeMap<String, &'static str>,
) -> Result<T, ConfigError> {
    let mut own = Mapping::new();
    for key in serde_introspect::<T>() {
        if let Some((key, value)) = section.remove_entry(*key) {
            own.insert(key, value);
        }
    }
    let document = Value::Mapping(own);
    serde_path_to_error::deserialize(document.clone()).map_err(|e| {
        let path = e.path().to_string();
        let top = path.split(['.', '[']).next().unwrap_or_default();
        let name = match from_env.get(&path).or_else(|| from_env.get(top)) {
            Some(var) => (*var).to_owned(),
            None => format!("tokengate.{path}"),
        };
        let shown = value_at(&document, &path)
            .and_then(|v| serde_json::to_string(v).ok())
            .unwrap_or_default();
        invalid(&name, refusal(&shown, &e.inner().to_string()))
    })
}

/// serde's refusal of `shown` in the words of the file: what it is not, and what would be
/// accepted.
fn refusal(shown: &str, message: &str) -> String {
    let expected = |what: &str| message.contains(&format!("expected {what}"));
    if message.starts_with("unknown field") {
        return message.to_owned();
    }
    if expected("a duration") {
        return format!("{shown} is not a duration like 10s, 500ms or 1h");
    }
    if expected("usize") || expected("u32") || expected("u64") {
        return format!("{shown} is not a whole number");
    }
    if expected("a boolean") {
        return format!("{shown} is not true or false");
    }
    if let Some((_, choices)) = message.split_once("expected one of ") {
        return format!("{shown} is not one of {choices}");
    }
    format!("{shown}: {message}")
}

/// The value at a dotted `path` (as `serde_path_to_error` writes it) in `document`.
fn value_at<'a>(document: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(document, |at, segment| {
        let (name, index) = match segment.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let at = at.get(name)?;
        match index {
            Some(i) => at.get(i),
            None => Some(at),
        }
    })
}

/// The keys left once every component took its own: none, or the first, refused.
fn refuse_unknown(section: &Mapping) -> Result<(), ConfigError> {
    let Some(key) = section.keys().next() else {
        return Ok(());
    };
    let key = serde_yaml::to_string(key).unwrap_or_default();
    let keys: Vec<String> = flat_keys().iter().map(|k| format!("`{k}`")).collect();
    let pingora: Vec<String> = pingora_keys().iter().map(|k| format!("`{k}`")).collect();
    Err(ConfigError::Parse(format!(
        "tokengate: unknown field `{}`, expected one of {} (or, at the top level, one of \
         Pingora's: {})",
        key.trim(),
        keys.join(", "),
        pingora.join(", ")
    )))
}

fn pingora_keys() -> BTreeSet<String> {
    let defaults = serde_yaml::to_value(ServerConf::default()).unwrap_or_default();
    defaults
        .as_mapping()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Listeners, and the upstream as written.
struct Network {
    listen: SocketAddr,
    admin_listen: SocketAddr,
    upstream: String,
}

fn resolve_network(raw: &mut RawConfig, env: &impl Env) -> Result<Network, ConfigError> {
    use defaults::*;
    let listen = listen_address(env, "TOKENGATE_LISTEN", "listen", raw.listen.take(), LISTEN)?;
    let admin_listen = listen_address(
        env,
        "TOKENGATE_ADMIN_LISTEN",
        "admin_listen",
        raw.admin_listen.take(),
        ADMIN_LISTEN,
    )?;
    if listen == admin_listen {
        return Err(invalid(
            "tokengate.admin_listen",
            "must differ from the proxy listener",
        ));
    }
    let (name, upstream) = pick(
        env,
        "TOKENGATE_UPSTREAM",
        "upstream",
        raw.upstream.take(),
        UPSTREAM,
    );
    Ok(Network {
        listen,
        admin_listen,
        upstream: upstream_address(&name, &upstream)?,
    })
}

/// Logging and threads: how the process runs.
struct Process {
    threads: usize,
    log: log::LevelFilter,
    log_format: LogFormat,
    access_log: bool,
    grace_period: Duration,
}

fn resolve_process(raw: &mut RawConfig, env: &impl Env) -> Result<Process, ConfigError> {
    let (name, threads) = pick(
        env,
        "TOKENGATE_THREADS",
        "threads",
        raw.threads.map(|t| t.to_string()),
        "0",
    );
    let threads = match threads.trim().parse::<usize>() {
        Ok(0) => std::thread::available_parallelism().map_or(1, |n| n.get()),
        Ok(n) => n,
        Err(_) => return Err(invalid(&name, format!("{threads:?} is not a whole number"))),
    };
    let (name, log) = pick(env, "TOKENGATE_LOG", "log", raw.log.take(), "info");
    let log = log::LevelFilter::from_str(log.trim()).map_err(|_| {
        invalid(
            &name,
            format!("{log:?} is not one of off, error, warn, info, debug, trace"),
        )
    })?;
    let (name, format) = pick(
        env,
        "TOKENGATE_LOG_FORMAT",
        "log_format",
        raw.log_format.take(),
        "json",
    );
    let log_format = LogFormat::from_str(&format)
        .map_err(|()| invalid(&name, format!("{format:?} is not json or text")))?;
    Ok(Process {
        threads,
        log,
        log_format,
        access_log: boolean(
            env,
            "TOKENGATE_ACCESS_LOG",
            "access_log",
            raw.access_log,
            true,
        )?,
        grace_period: duration(
            env,
            "TOKENGATE_GRACE_PERIOD",
            "grace_period",
            raw.grace_period
                .take()
                .map(|d| humantime::format_duration(d).to_string()),
            defaults::GRACE_PERIOD,
        )?,
    })
}

fn resolve_identity_header(raw: Option<String>) -> Result<HeaderName, ConfigError> {
    let name = raw.unwrap_or_else(|| defaults::IDENTITY_HEADER.to_owned());
    HeaderName::from_str(&name).map_err(|_| {
        invalid(
            "tokengate.identity_header",
            format!("{name:?} is not a header name"),
        )
    })
}

/// The `forward_claims` mappings, each header fit for its claim (`forward_claims::unfit_header`:
/// a claim a permission can set, unlike one of `issuer_claims`, may only become an `X-`
/// header no framework reads).
fn resolve_forward_claims(
    raw: BTreeMap<String, String>,
    identity_header: Option<&str>,
    issuer_claims: &[String],
) -> Result<Vec<ClaimHeader>, ConfigError> {
    let identity = identity_header
        .unwrap_or(defaults::IDENTITY_HEADER)
        .to_ascii_lowercase();
    let mut mapped: Vec<ClaimHeader> = Vec::with_capacity(raw.len());
    for (pointer, header) in raw {
        let key = format!("tokengate.forward_claims.{pointer}");
        let claim = ClaimHeader::parse(&pointer, &header).map_err(|e| invalid(&key, e.0))?;
        let issuer_only = issuer_claims.iter().any(|c| c == claim.pointer.claim());
        if let Some(why) = unfit_header(&claim.header, &identity, issuer_only) {
            return Err(invalid(&key, format!("{header:?} {why}")));
        }
        if mapped.iter().any(|m| m.header == claim.header) {
            return Err(invalid(&key, format!("{header:?} is mapped twice")));
        }
        mapped.push(claim);
    }
    Ok(mapped)
}

fn resolve(
    mut section: Mapping,
    mut server: ServerConf,
    env: &impl Env,
) -> Result<Config, ConfigError> {
    let from_env = apply_environment(&mut section, env);
    let token: token::Settings = take(&mut section, &from_env)?;
    let limits: Limits = take(&mut section, &from_env)?;
    let request: request::Options = take(&mut section, &from_env)?;
    let identity: IdentityProviders = take(&mut section, &from_env)?;
    let mut raw: RawConfig = take(&mut section, &from_env)?;
    refuse_unknown(&section)?;
    if let Err((key, problem)) = token.check() {
        return Err(invalid(&format!("tokengate.{key}"), problem));
    }
    identity.check(&token)?;
    crate::routes::PathTemplate::parse(&token.token_path)
        .map_err(|e| invalid("tokengate.token_path", e))?;
    if token.token_path.contains(['{', '}']) {
        return Err(invalid(
            "tokengate.token_path",
            "must be a fixed path, without {parameters}",
        ));
    }
    if raw.auth_paths.is_some() {
        return Err(invalid(
            "tokengate.auth_paths",
            "was replaced by routes: write each `{prefix: /albums, auth: required}` as a route \
             `{name: albums, path: /albums, auth: required}` under `routes:`",
        ));
    }
    let network = resolve_network(&mut raw, env)?;
    let tls = resolve_tls_listener(&mut raw, env, &network)?;
    let mut listeners = vec![network.listen, network.admin_listen];
    listeners.extend(tls.as_ref().map(|t| t.listen));
    let authorize = authorize::resolve(raw.authorize.take(), env, &listeners)?;
    listeners.extend(authorize.as_ref().map(|a| a.listen));
    let (secret_source, secrets, development_secret) = resolve_secrets(&mut raw, env, &listeners)?;
    let process = resolve_process(&mut raw, env)?;
    let signing = raw
        .signing
        .take()
        .map(secrets::resolve_signing)
        .transpose()?;
    // What the session token's issuer alone sets: the names no permission may set.
    let issuer_claims: Vec<String> = RESERVED_CLAIMS
        .iter()
        .map(|c| (*c).to_owned())
        .chain([token.subject_claim.clone()])
        .chain(token.reserved_claims.iter().cloned())
        .collect();
    let proxy = resolve_proxy_section(
        &mut raw,
        request,
        network.upstream,
        &ProxyContext {
            issuer_claims: &issuer_claims,
            abilities: token.abilities.as_deref(),
        },
    )?;
    server.threads = process.threads;
    // Pingora's grace sleep is fixed; the drain watcher exits as soon as in-flight work is done.
    server.grace_period_seconds = Some(process.grace_period.as_secs());
    server.graceful_shutdown_timeout_seconds = Some(1);
    let config = Config {
        listen: network.listen,
        admin_listen: network.admin_listen,
        tls,
        authorize,
        h2c: boolean(env, "TOKENGATE_H2C", "h2c", raw.h2c, false)?,
        secrets,
        secret_source,
        development_secret,
        token,
        issuers: identity.issuers,
        limits,
        signing,
        proxy,
        redis: resolve_redis_source(raw.redis.take(), env)?,
        tracing: raw.tracing.take().map(resolve_tracing).transpose()?,
        grace_period: process.grace_period,
        threads: process.threads,
        log: process.log,
        log_format: process.log_format,
        access_log: process.access_log,
        server,
    };
    // Building the keyring once here refuses short or missing secrets before anything listens.
    config.token_service()?;
    Ok(config)
}

/// The TLS listener, on an address of its own.
fn resolve_tls_listener(
    raw: &mut RawConfig,
    env: &impl Env,
    network: &Network,
) -> Result<Option<ListenerTls>, ConfigError> {
    let tls = tls::resolve_listener(raw.tls.take(), env)?;
    if tls
        .as_ref()
        .is_some_and(|t| t.listen == network.listen || t.listen == network.admin_listen)
    {
        return Err(invalid(
            "tokengate.tls.listen",
            "must differ from the other listeners",
        ));
    }
    Ok(tls)
}

/// Where the secrets come from, the secrets, and whether the public development one is used
/// (refused unless every listener is on loopback).
fn resolve_secrets(
    raw: &mut RawConfig,
    env: &impl Env,
    listeners: &[SocketAddr],
) -> Result<(SecretSource, Vec<Secret>, bool), ConfigError> {
    // The environment beats the file, as for every setting: either variable replaces both of
    // the file's (`docker run -e TOKENGATE_SECRET=…` starts whatever `secret_file` the image's
    // configuration names).
    let inline = env.var("TOKENGATE_SECRET");
    let file = env.var("TOKENGATE_SECRET_FILE").map(PathBuf::from);
    let source = match inline.is_some() || file.is_some() {
        true => SecretSource { inline, file },
        false => SecretSource {
            inline: raw.secret.take(),
            file: raw.secret_file.take(),
        },
    };
    let secrets = source.secrets()?;
    let development = secrets::check_development_secret(&secrets, listeners)?;
    Ok((source, secrets, development))
}

/// The `proxy` section resolved, with the upstream groups and the header deadline: how
/// forwarded requests are read, checked, routed and rewritten.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// What a request may look like (semicolons, method overrides).
    pub request: request::Options,
    /// Peers whose forwarding headers are extended rather than replaced.
    pub trusted_proxies: TrustedProxies,
    /// Header carrying the subject to the upstream.
    pub identity_header: HeaderName,
    /// Claims forwarded as headers.
    pub forward_claims: Vec<ClaimHeader>,
    /// Longest a client may take to send a request head.
    pub header_timeout: Duration,
    /// Upstream groups; the first is `default`, made of `upstream`.
    pub upstream_groups: Vec<GroupConfig>,
    /// The ranked routes; the last is a catch-all to the default group.
    pub routes: RouteTable,
}

/// What the proxy section's resolution needs from the token section.
struct ProxyContext<'a> {
    /// Claims only the session token's issuer sets (no permission may).
    issuer_claims: &'a [String],
    /// The ability names permissions may hold, when restricted.
    abilities: Option<&'a [String]>,
}

fn resolve_proxy_section(
    raw: &mut RawConfig,
    request: request::Options,
    upstream: String,
    context: &ProxyContext<'_>,
) -> Result<ProxySettings, ConfigError> {
    let upstream_timeouts = raw.upstream_timeouts;
    let upstream_groups = routes::resolve_groups(
        upstream,
        upstream_timeouts,
        std::mem::take(&mut raw.upstreams),
    )?;
    let routes = routes::resolve_routes(
        std::mem::take(&mut raw.routes),
        &routes::RouteContext {
            groups: &upstream_groups,
            default_auth: raw.auth.unwrap_or(AuthMode::Passthrough),
            abilities: context.abilities,
            allow_semicolon: request.allow_semicolon,
            issuer_claims: context.issuer_claims,
        },
    )?;
    Ok(ProxySettings {
        request,
        trusted_proxies: TrustedProxies::parse(&raw.trusted_proxies)
            .map_err(|e| invalid("tokengate.trusted_proxies", e))?,
        forward_claims: resolve_forward_claims(
            std::mem::take(&mut raw.forward_claims),
            raw.identity_header.as_deref(),
            context.issuer_claims,
        )?,
        identity_header: resolve_identity_header(raw.identity_header.take())?,
        header_timeout: match raw.header_timeout {
            Some(timeout) => timeout,
            None => parse_duration("tokengate.header_timeout", defaults::HEADER_TIMEOUT)?,
        },
        upstream_groups,
        routes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: (&str, &str) = ("TOKENGATE_SECRET", "0123456789abcdef0123456789abcdef");

    fn err<E: Env>(yaml: &str, env: &E) -> String {
        Config::from_yaml(yaml, env).unwrap_err().to_string()
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = Config::from_yaml("", &[SECRET]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(c.proxy.upstream_groups[0].addresses, ["127.0.0.1:3000"]);
        assert_eq!(c.token.endpoint, "localhost:5001");
        assert_eq!(c.grace_period, Duration::from_secs(10));
        assert_eq!(c.proxy.header_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.body_limit, 16384);
        assert_eq!(c.limits.max_token_bytes, 8192);
        assert_eq!(c.proxy.request, request::Options::default());
        assert_eq!(
            c.token.rate_limit.rate(),
            Some(crate::limits::RateLimit {
                mints: 10,
                per: Duration::from_secs(1),
                burst: 100
            })
        );
        assert_eq!(c.proxy.routes.routes().len(), 1);
        assert_eq!(c.proxy.routes.routes()[0].auth, AuthMode::Passthrough);
        assert_eq!(c.server.grace_period_seconds, Some(10));
        assert!(!c.server.work_stealing);
        assert_eq!(c.server.upstream_keepalive_pool_size, 1024);
        assert!(!c.development_secret);
    }

    #[test]
    fn pingora_settings_tokengate_defaults_differently_follow_the_file() {
        let yaml = "upstream_keepalive_pool_size: 16\nwork_stealing: true\n";
        let c = Config::from_yaml(yaml, &[SECRET]).unwrap();
        assert_eq!(c.server.upstream_keepalive_pool_size, 16);
        assert!(c.server.work_stealing);
    }

    #[test]
    fn the_nested_layout_means_what_the_flat_one_does() {
        let nested = "tokengate:
  listeners: {proxy: 127.0.0.1:1111, admin: 127.0.0.1:1112, h2c: true, header_timeout: 3s}
  token: {path: /api/v2/token, endpoint: img:1, subject_claim: sub, leeway: 5s, max_token_bytes: 4096, rate_limit: {mints: 3}}
  proxy: {auth: required, identity_header: X-Who, routes: [{name: a, path: /a, upstream: g}]}
  upstream: {address: 'up:80', timeouts: {read: 2s}, groups: {g: {addresses: ['127.0.0.1:5']}}}
  observability: {log: warn, log_format: text, access_log: false}
  process: {threads: 3, grace_period: 4s}
";
        let flat = "tokengate:
  listen: 127.0.0.1:1111
  admin_listen: 127.0.0.1:1112
  h2c: true
  header_timeout: 3s
  token_path: /api/v2/token
  endpoint: img:1
  subject_claim: sub
  leeway: 5s
  max_token_bytes: 4096
  rate_limit: {mints: 3}
  auth: required
  identity_header: X-Who
  routes: [{name: a, path: /a, upstream: g}]
  upstream: 'up:80'
  upstream_timeouts: {read: 2s}
  upstreams: {g: {addresses: ['127.0.0.1:5']}}
  log: warn
  log_format: text
  access_log: false
  threads: 3
  grace_period: 4s
";
        let debug = |yaml| format!("{:?}", Config::from_yaml(yaml, &[SECRET]).unwrap());
        assert_eq!(debug(nested), debug(flat));
        assert_eq!(
            err(
                "tokengate:\n  upstream: {groups: {g: {addresses: []}}}\n",
                &[SECRET]
            ),
            "invalid tokengate.upstream.groups.g: needs at least one address"
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let yaml = "tokengate:\n  listen: 127.0.0.1:1111\n  upstream_timeouts:\n    read: 30s\n";
        let env = [
            SECRET,
            ("TOKENGATE_LISTEN", "127.0.0.1:2222"),
            ("TOKENGATE_UPSTREAM_READ_TIMEOUT", "500ms"),
            ("TOKENGATE_THREADS", "3"),
            (
                "TOKENGATE_UPSTREAM",
                "legacy.default.svc.cluster.local:8080",
            ),
        ];
        let c = Config::from_yaml(yaml, &env).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:2222");
        assert_eq!(
            c.proxy.upstream_groups[0].timeouts.read,
            Duration::from_millis(500)
        );
        assert_eq!(
            c.proxy.upstream_groups[0].addresses,
            ["legacy.default.svc.cluster.local:8080"]
        );
        assert_eq!(c.threads, 3);
        assert_eq!(c.server.threads, 3);
    }

    #[test]
    fn refusals_name_the_problem_in_one_line() {
        assert_eq!(
            err("", &[("X", "")]),
            "invalid secrets: no signing secret: set TOKENGATE_SECRET or TOKENGATE_SECRET_FILE"
        );
        assert_eq!(
            err("", &[("TOKENGATE_SECRET", "short")]),
            "invalid secrets: secret #1 is 5 bytes long; at least 32 bytes are required"
        );
        assert!(err("", &[SECRET, ("TOKENGATE_LISTEN", "nonsense")])
            .starts_with("invalid TOKENGATE_LISTEN: \"nonsense\" is not a host:port address"));
        assert!(err("tokengate:\n  bogus: 1\n", &[SECRET]).contains("unknown field `bogus`"));
        assert!(err("bogus: 1\n", &[SECRET]).contains("unknown field `bogus`"));
        assert!(err(
            "listen: 127.0.0.1:1\ntokengate:\n  listen: 127.0.0.1:2\n",
            &[SECRET]
        )
        .contains("`listen` is given both at the top level and under `tokengate:`"));
        assert!(err("tokengate:\n  grace_period: soon\n", &[SECRET])
            .starts_with("invalid tokengate.grace_period:"));
        assert!(err("", &[SECRET, ("TOKENGATE_UPSTREAM", "no port")])
            .starts_with("invalid TOKENGATE_UPSTREAM:"));
        assert_eq!(
            err("", &[("TOKENGATE_SECRET_FILE", "/nonexistent/secrets")]),
            "cannot read the secrets file /nonexistent/secrets: No such file or directory \
             (os error 2); mount it there, or set TOKENGATE_SECRET or TOKENGATE_SECRET_FILE"
        );
        for e in [
            err("", &[("TOKENGATE_SECRET", "short")]),
            err("tokengate: [", &[SECRET]),
        ] {
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn a_key_given_twice_or_a_pingora_typo_is_named() {
        assert_eq!(
            err(
                "tokengate:\n  listen: 127.0.0.1:1\nversion: 1\ntokengate:\n  listen: 127.0.0.1:2\n",
                &[SECRET]
            ),
            "invalid configuration: `tokengate` is given more than once (lines 1, 4): write it once"
        );
        let e = err("pid_fille: /tmp/x\n", &[SECRET]);
        assert!(
            e.starts_with("invalid configuration: tokengate: unknown field `pid_fille`, expected one of `listen`")
                && e.contains("(or, at the top level, one of Pingora's: ")
                && e.contains("`pid_file`"),
            "{e}"
        );
    }

    #[test]
    fn the_environments_secrets_replace_the_files() {
        let yaml = "tokengate:\n  secret_file: /nonexistent/secrets\n  secret: short\n";
        let c = Config::from_yaml(yaml, &[SECRET]).unwrap();
        assert_eq!(c.secrets.len(), 1);
        assert_eq!(c.secret_source.file, None);
        assert!(err(yaml, &[("X", "")]).starts_with("cannot read the secrets file /nonexistent"));
    }

    #[test]
    fn auth_paths_is_refused_with_its_rewrite() {
        let e = err(
            "tokengate:\n  auth_paths:\n    - {prefix: /admin, auth: required}\n",
            &[SECRET],
        );
        assert!(
            e.starts_with("invalid tokengate.auth_paths: was replaced by routes"),
            "{e}"
        );
    }

    #[test]
    fn the_development_secret_serves_loopback_only() {
        let dev = ("TOKENGATE_SECRET", DEVELOPMENT_SECRET);
        let c = Config::from_yaml("", &[dev]).unwrap();
        assert!(c.development_secret);
        for listen in ["0.0.0.0:8080", "10.0.0.5:8080"] {
            assert_eq!(
                err("", &[dev, ("TOKENGATE_LISTEN", listen)]),
                "invalid secrets: the development secret from conf/tokengate.yaml is public and \
                 only serves loopback listeners: set TOKENGATE_SECRET or TOKENGATE_SECRET_FILE"
            );
        }
        assert!(err("", &[dev, ("TOKENGATE_ADMIN_LISTEN", "0.0.0.0:9090")]).contains("public"));
    }

    #[test]
    fn routes_are_checked_against_abilities_and_each_other() {
        let yaml = |routes: &str| {
            format!("tokengate:\n  abilities: [see, image_list]\n  routes:\n{routes}")
        };
        assert!(err(
            &yaml("    - {name: a, path: \"/albums/{album}\", require: {resource: \"{album}\", access: image_lsit}}\n"),
            &[SECRET]
        )
        .starts_with("invalid tokengate.routes.a.require.access: \"image_lsit\" is not one of"));
        assert!(err(
            &yaml("    - {name: a, path: \"/albums/{album}\", methods: [GET]}\n    - {name: b, path: \"/Albums/{x}\", methods: [get]}\n"),
            &[SECRET]
        )
        .contains("route \"b\" can never be chosen"));
        assert!(err(&yaml("    - {name: a, host: \"a, b\"}\n"), &[SECRET])
            .starts_with("invalid tokengate.routes.a.host"));
        let c = Config::from_yaml(
            &yaml("    - {name: a, host: Images.Example.,  path: \"/albums/{album}\", auth: required}\n"),
            &[SECRET],
        )
        .unwrap();
        assert_eq!(
            c.proxy.routes.routes()[0].host.as_deref(),
            Some("images.example")
        );
        assert_eq!(c.proxy.routes.routes()[0].auth, AuthMode::Required);
    }

    #[test]
    fn forward_claims_may_not_take_headers_tokengate_sets() {
        for (header, problem) in [
            ("X-User-Id", "is a header tokengate sets itself"),
            ("X-Forwarded-For", "is a header tokengate sets itself"),
            ("Host", "is a header tokengate sets itself"),
            ("X Bad", "is not a header name"),
        ] {
            let e = err(
                &format!("tokengate:\n  forward_claims:\n    /Id: {header}\n"),
                &[SECRET],
            );
            assert!(
                e.starts_with("invalid tokengate.forward_claims./Id: ") && e.contains(problem),
                "{e}"
            );
        }
        assert!(
            err("tokengate:\n  forward_claims:\n    Id: X-Id\n", &[SECRET])
                .contains("JSON pointer")
        );
        let c = Config::from_yaml(
            "tokengate:\n  forward_claims:\n    /Id: X-Album-Id\n",
            &[SECRET],
        )
        .unwrap();
        assert_eq!(c.proxy.forward_claims[0].header, "x-album-id");
    }

    #[test]
    fn a_claim_a_permission_can_set_never_becomes_a_header_frameworks_read() {
        for header in [
            "X-HTTP-Method-Override",
            "X-HTTP-Method",
            "X-Method-Override",
            "X-Original-URL",
            "X-Rewrite-URL",
            "Content-Type",
            "Content-Encoding",
            "Upgrade",
            "TE",
            "Trailer",
            "Keep-Alive",
            "Proxy-Connection",
            "Expect",
            "Proxy-Authorization",
            "Client-IP",
            "True-Client-IP",
            "X-Client-IP",
            "CF-Connecting-IP",
            "X-Cluster-Client-IP",
            "X-CSRF-Token",
            "X-Requested-With",
            "X-Remote-User",
            "X-Accel-Redirect",
        ] {
            let e = err(
                &format!("tokengate:\n  forward_claims:\n    /mo: {header}\n"),
                &[SECRET],
            );
            let start = format!("invalid tokengate.forward_claims./mo: {header:?} ");
            assert!(e.starts_with(&start) && !e.contains('\n'), "{e}");
        }
        // A claim only the issuer sets may go to a header applications read as an identity;
        // a permission's own claims to X- headers no framework reads.
        let c = Config::from_yaml(
            "tokengate:\n  forward_claims:\n    /user_id: X-Remote-User\n    /Id: X-Album-Id\n    \
             /abilities/{album}/Access/see: X-Can-See\n",
            &[SECRET],
        )
        .unwrap();
        assert_eq!(c.proxy.forward_claims.len(), 3);
        assert!(err(
            "tokengate:\n  forward_claims:\n    /user_id: Connection\n",
            &[SECRET]
        )
        .contains("is a header tokengate sets itself"));
    }

    #[test]
    fn every_refusal_names_the_key_its_value_and_what_is_accepted() {
        for (yaml, env, want) in [
            (
                "tokengate:\n  token: {max_depth: lots}\n",
                None,
                "invalid tokengate.token.max_depth: \"lots\" is not a whole number",
            ),
            (
                "tokengate:\n  header_timeout: 10\n",
                None,
                "invalid tokengate.header_timeout: 10 is not a duration like 10s, 500ms or 1h",
            ),
            (
                "tokengate:\n  leeway: soon\n",
                None,
                "invalid tokengate.leeway: \"soon\" is not a duration like 10s, 500ms or 1h",
            ),
            (
                "",
                Some(("TOKENGATE_LEEWAY", "bad")),
                "invalid TOKENGATE_LEEWAY: \"bad\" is not a duration like 10s, 500ms or 1h",
            ),
            (
                "tokengate:\n  algorithms: [HS999]\n",
                None,
                "invalid tokengate.algorithms[0]: \"HS999\" is not one of `HS256`",
            ),
        ] {
            let e = match env {
                Some(var) => err(yaml, &[SECRET, var]),
                None => err(yaml, &[SECRET]),
            };
            assert!(e.starts_with(want), "{yaml}: {e}");
        }
    }

    #[test]
    fn identity_providers_are_checked_and_named_by_their_place() {
        let issuer = |more: &str| {
            format!("tokengate:\n  issuers:\n    - {{issuer: 'https://idp.example', {more}}}\n")
        };
        let config = Config::from_yaml(&issuer("audience: gate"), &[SECRET]).unwrap();
        assert_eq!(config.issuers.len(), 1);
        assert_eq!(config.issuers[0].subject_claim, "sub");
        assert!(config.warnings().is_empty());
        for (yaml, want) in [
            (
                issuer("audience: ''"),
                "invalid tokengate.issuers[0].audience: must name this gate's audience",
            ),
            (
                "tokengate:\n  issuers: [{issuer: 'https://idp.example'}]\n".to_owned(),
                "invalid tokengate.issuers[0]: {\"issuer\":\"https://idp.example\"}: missing field \
                 `audience`",
            ),
            (
                issuer("audience: g, algorithms: [HS256]"),
                "invalid tokengate.issuers[0].algorithms: HS256 is symmetric",
            ),
            (
                issuer("audience: g, leeway: soon"),
                "invalid tokengate.issuers[0].leeway: \"soon\" is not a duration",
            ),
            (
                issuer("audience: g, clams: [email]"),
                "invalid tokengate.issuers[0].clams: unknown field `clams`",
            ),
            (
                format!(
                    "{}    - {{issuer: 'https://idp.example', audience: b}}\n",
                    issuer("audience: g")
                ),
                "invalid tokengate.issuers[1].issuer: \"https://idp.example\" is configured twice",
            ),
            (
                format!(
                    "{}  token: {{issuer: 'https://idp.example'}}\n",
                    issuer("audience: g")
                ),
                "invalid tokengate.issuers[0].issuer: \"https://idp.example\" is token.issuer",
            ),
        ] {
            let e = err(&yaml, &[SECRET]);
            assert!(e.starts_with(want), "{yaml}: {e}");
        }
        let clear = Config::from_yaml(
            "tokengate:\n  issuers:\n    - {issuer: 'http://keycloak:8080/realms/a', audience: g}\n    - {issuer: 'http://127.0.0.1:9/', audience: g}\n    - {issuer: 'https://idp.example', jwks_uri: 'http://[::1]:9/k', audience: g}\n",
            &[SECRET],
        )
        .unwrap();
        assert_eq!(
            clear.warnings(),
            [
                "tokengate.issuers: the keys of http://keycloak:8080/realms/a are fetched over \
              plain http: anyone on the path can replace them"
            ]
        );
    }

    #[test]
    fn redis_is_opt_in_from_the_file_or_the_environment() {
        assert_eq!(Config::from_yaml("", &[SECRET]).unwrap().redis, None);
        let env = [
            SECRET,
            ("TOKENGATE_REDIS_URL", "redis://redis.default.svc:6379"),
        ];
        let r = Config::from_yaml("", &env).unwrap().redis.unwrap();
        assert_eq!(r.url, "redis://redis.default.svc:6379");
        assert!(r.limits_fail_open && !r.revocation_fail_open);
        assert_eq!(r.timeout, Duration::from_millis(200));
        let file = "tokengate:\n  redis: {url: 'redis://a:1', on_error: {limits: closed, revocation: open}}\n";
        let r = Config::from_yaml(file, &env).unwrap().redis.unwrap();
        assert_eq!(r.url, "redis://redis.default.svc:6379");
        assert!(!r.limits_fail_open && r.revocation_fail_open);
        assert!(err("tokengate:\n  redis: {url: 'http://a'}\n", &[SECRET])
            .starts_with("invalid tokengate.redis.url"));
    }

    #[test]
    fn settings_may_also_be_flat_beside_pingoras() {
        let yaml = "version: 1\nlisten: 127.0.0.1:4444\nauth: required\nthreads: 3\n";
        let c = Config::from_yaml(yaml, &[SECRET]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:4444");
        assert_eq!(c.proxy.routes.routes()[0].auth, AuthMode::Required);
        assert_eq!((c.threads, c.server.threads), (3, 3));
    }

    #[test]
    fn pingora_keys_may_sit_beside_the_section() {
        let c = Config::from_yaml(
            "version: 1\nupgrade_sock: /tmp/tg.sock\ntokengate:\n  auth: required\n",
            &[SECRET],
        )
        .unwrap();
        assert_eq!(c.server.upgrade_sock, "/tmp/tg.sock");
        assert_eq!(c.proxy.routes.routes()[0].auth, AuthMode::Required);
    }

    #[test]
    fn the_authorization_listener_is_off_until_asked_for_and_checked_when_it_is() {
        assert!(Config::from_yaml("tokengate:\n", &[SECRET])
            .unwrap()
            .authorize
            .is_none());
        let on = [SECRET, ("TOKENGATE_AUTHORIZE_LISTEN", "127.0.0.1:9191")];
        let a = Config::from_yaml("tokengate:\n", &on)
            .unwrap()
            .authorize
            .unwrap();
        assert_eq!(a.listen.to_string(), "127.0.0.1:9191");
        assert!(a.decision.gateways.contains("127.0.0.1".parse().unwrap()));
        assert!(!a.decision.gateways.contains("10.0.0.1".parse().unwrap()));
        assert_eq!(a.decision.unseen_body, crate::decision::UnseenBody::Refuse);
        let file = "tokengate:\n  listeners: {authorize: {listen: 127.0.0.1:9191, gateways: 10.0.0.0/8, unseen_body: guard}}\n";
        let a = Config::from_yaml(file, &[SECRET])
            .unwrap()
            .authorize
            .unwrap();
        assert!(a.decision.gateways.contains("10.1.2.3".parse().unwrap()));
        assert_eq!(a.decision.unseen_body, crate::decision::UnseenBody::Guard);
        let none = ("TOKENGATE_LOG", "info");
        for (yaml, env, want) in [
            (
                "tokengate:\n  authorize: {gateways: [10.0.0.0/8]}\n",
                none,
                "invalid tokengate.authorize.listen: is required: the address gateways ask, like 127.0.0.1:9191",
            ),
            (
                "tokengate:\n  authorize: {listen: 127.0.0.1:9191, gateways: [10.0.0.0/33]}\n",
                none,
                "invalid tokengate.authorize.gateways: \"10.0.0.0/33\" is not an address or CIDR like 10.0.0.0/8",
            ),
            (
                "tokengate:\n  authorize: {listen: 127.0.0.1:9191}\n",
                ("TOKENGATE_AUTHORIZE_GATEWAYS", "10.0.0.0/8,nowhere"),
                "invalid TOKENGATE_AUTHORIZE_GATEWAYS: \"nowhere\" is not an address or CIDR like 10.0.0.0/8",
            ),
            (
                "tokengate:\n  authorize: {listen: 127.0.0.1:9090}\n",
                none,
                "invalid tokengate.authorize.listen: must differ from the other listeners",
            ),
            (
                "tokengate:\n  authorize: {listen: 127.0.0.1:9191, unseen_body: maybe}\n",
                none,
                "invalid tokengate.authorize.unseen_body: \"maybe\" is not one of `refuse`, `guard`, `ignore`",
            ),
        ] {
            assert_eq!(err(yaml, &[SECRET, env]), want);
        }
    }
}
