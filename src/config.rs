//! YAML file + environment → one validated [`Config`], or one line saying what is wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use jsonwebtoken::Algorithm;
use pingora::server::configuration::ServerConf;
use serde::Deserialize;

use crate::access_log::LogFormat;
use crate::routes::{PathTemplate, Requirement, Resource, Route};
use crate::token::asymmetric::{jwks, public_jwk, AsymmetricKey, KeyAlgorithm};
use crate::token::{
    KeyError, Keyring, PermissionPolicy, Secret, SharedKeyring, TokenService, VerifyPolicy,
};
use crate::upstreams::GroupConfig;

/// Why the configuration was refused; `Display` is the one line printed at start-up.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read(PathBuf, std::io::Error),
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
            ConfigError::Parse(e) => write!(f, "invalid configuration: {e}"),
            ConfigError::Invalid { key, problem } => write!(f, "invalid {key}: {problem}"),
            ConfigError::Keys(e) => write!(f, "invalid secrets: {e}"),
        }
    }
}

impl std::error::Error for ConfigError {}

fn invalid(key: &str, problem: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        problem: problem.to_string(),
    }
}

/// Whether forwarded requests must carry a valid token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Forward everything; a valid token only adds identity.
    Passthrough,
    /// Answer 401 for a missing or invalid token; the upstream never sees the request.
    Required,
}

/// `auth` for one path prefix, overriding the global mode.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthPath {
    /// Path prefix, matched against the request path.
    pub prefix: String,
    /// Mode for paths under the prefix.
    pub auth: AuthMode,
}

/// The auth mode of every path: the longest matching prefix wins, else the global mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRules {
    default: AuthMode,
    /// Sorted longest prefix first.
    paths: Vec<AuthPath>,
}

impl AuthRules {
    /// Rules from the global mode and the per-prefix overrides.
    pub fn new(default: AuthMode, mut paths: Vec<AuthPath>) -> AuthRules {
        paths.sort_by_key(|p| std::cmp::Reverse(p.prefix.len()));
        AuthRules { default, paths }
    }

    /// The mode for `path`.
    pub fn mode_for(&self, path: &str) -> AuthMode {
        self.paths
            .iter()
            .find(|p| path.starts_with(&p.prefix))
            .map_or(self.default, |p| p.auth)
    }
}

/// Where secrets come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretSource {
    /// `secret` / `TOKENGATE_SECRET`, first when set.
    pub inline: Option<String>,
    /// `secret_file` / `TOKENGATE_SECRET_FILE`, re-read on change or `SIGHUP`.
    pub file: Option<PathBuf>,
}

impl SecretSource {
    /// Reads the secrets again (the file may have been rotated) and builds a keyring.
    pub fn keyring(&self, algorithms: &[Algorithm]) -> Result<Keyring, ConfigError> {
        Keyring::new(&self.secrets()?, algorithms).map_err(ConfigError::Keys)
    }

    /// The inline secret first, then the file's, read now.
    fn secrets(&self) -> Result<Vec<Secret>, ConfigError> {
        let mut secrets: Vec<Secret> = self
            .inline
            .iter()
            .map(|s| Secret {
                id: None,
                bytes: s.as_bytes().to_vec(),
            })
            .collect();
        if let Some(path) = &self.file {
            let text =
                std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.clone(), e))?;
            secrets.extend(Secret::parse_file(&text));
        }
        Ok(secrets)
    }
}

/// How many tokens one subject may mint per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Mints allowed in one window.
    pub mints: u32,
    /// The window.
    pub per: Duration,
}

/// Timeouts towards the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamTimeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Waiting for each read from the upstream.
    pub read: Duration,
    /// Waiting for each write to the upstream.
    pub write: Duration,
    /// How long a pooled keep-alive connection may sit idle.
    pub idle: Duration,
}

/// The whole validated configuration.
#[derive(Debug)]
pub struct Config {
    /// Proxy listener.
    pub listen: SocketAddr,
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`).
    pub admin_listen: SocketAddr,
    /// Upstream address, resolved once at start-up.
    pub upstream: SocketAddr,
    /// The `endpoint` returned with minted tokens.
    pub endpoint: String,
    /// Verification secrets; the first signs.
    pub secrets: Vec<Secret>,
    /// Where the secrets came from, to read them again on rotation.
    pub secret_source: SecretSource,
    /// Mints allowed per subject and window; `None` means unlimited.
    pub rate_limit: Option<RateLimit>,
    /// Algorithms session tokens may use.
    pub algorithms: Vec<Algorithm>,
    /// Name of the subject claim.
    pub subject_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// Upper bound on a minted token's lifetime.
    pub max_ttl: Option<Duration>,
    /// Path of the token route.
    pub token_path: String,
    /// Largest token request body, in bytes.
    pub body_limit: usize,
    /// Deepest permission nesting.
    pub max_depth: usize,
    /// Most keys in one permission.
    pub max_keys: usize,
    /// Claims a permission may not set, besides the standard ones.
    pub reserved_claims: Vec<String>,
    /// Allowed ability names, when restricted.
    pub abilities: Option<Vec<String>>,
    /// Header carrying the subject to the upstream.
    pub identity_header: HeaderName,
    /// Whether forwarded requests need a valid token, globally and per path prefix.
    pub auth: AuthRules,
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
    /// ES256 / EdDSA minting, when configured; HS256 otherwise.
    pub signing: Option<Signing>,
    /// Upstream groups; the first is `default`, made of `upstream`.
    pub upstream_groups: Vec<GroupConfig>,
    /// Routes in match order; the last is a catch-all to the default group.
    pub routes: Vec<Route>,
    /// Pingora's own server settings (from the same file's other top-level keys).
    pub server: ServerConf,
}

/// The `tokengate:` section as written; every field optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    admin_listen: Option<String>,
    upstream: Option<String>,
    endpoint: Option<String>,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    subject_claim: Option<String>,
    algorithms: Option<Vec<String>>,
    leeway: Option<String>,
    max_ttl: Option<String>,
    token_path: Option<String>,
    body_limit: Option<usize>,
    max_depth: Option<usize>,
    max_keys: Option<usize>,
    reserved_claims: Vec<String>,
    abilities: Option<Vec<String>>,
    identity_header: Option<String>,
    auth: Option<AuthMode>,
    auth_paths: Vec<AuthPath>,
    grace_period: Option<String>,
    threads: Option<usize>,
    log: Option<String>,
    log_format: Option<String>,
    access_log: Option<bool>,
    upstream_timeouts: RawTimeouts,
    rate_limit: RawRateLimit,
    upstreams: BTreeMap<String, RawGroup>,
    routes: Vec<RawRoute>,
    signing: Option<RawSigning>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSigning {
    algorithm: String,
    key_file: PathBuf,
    #[serde(default)]
    published_keys: Vec<PathBuf>,
    #[serde(default)]
    jwks_max_age: Option<String>,
}

/// Asymmetric signing of minted tokens and the JWKS that publishes the public keys.
#[derive(Debug)]
pub struct Signing {
    /// The private key minted tokens are signed with.
    pub key: Arc<AsymmetricKey>,
    /// The JWKS body: the signing key's public half, then every published key.
    pub jwks: Vec<u8>,
    /// `Cache-Control: max-age` of the JWKS.
    pub jwks_max_age: Duration,
}

fn resolve_signing(raw: RawSigning) -> Result<Signing, ConfigError> {
    let alg = KeyAlgorithm::parse(&raw.algorithm).ok_or_else(|| {
        invalid(
            "tokengate.signing.algorithm",
            format!("{:?} is not ES256 or EdDSA", raw.algorithm),
        )
    })?;
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.clone(), e))
    };
    let key = AsymmetricKey::from_pem(alg, &read(&raw.key_file)?).map_err(|e| {
        invalid(
            "tokengate.signing.key_file",
            format!("{}: {e}", raw.key_file.display()),
        )
    })?;
    let mut published = vec![key.jwk().clone()];
    for path in &raw.published_keys {
        let jwk = public_jwk(alg, &read(path)?).map_err(|e| {
            invalid(
                "tokengate.signing.published_keys",
                format!("{}: {e}", path.display()),
            )
        })?;
        if !published.iter().any(|k| k.kid == jwk.kid) {
            published.push(jwk);
        }
    }
    let age = raw.jwks_max_age.unwrap_or_else(|| "5m".to_owned());
    let jwks_max_age = parse_duration("tokengate.signing.jwks_max_age", &age)?;
    Ok(Signing {
        key: Arc::new(key),
        jwks: jwks(&published),
        jwks_max_age,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    addresses: Vec<String>,
    #[serde(default)]
    health_check_interval: Option<String>,
    #[serde(default)]
    ejection: Option<String>,
    #[serde(default)]
    timeouts: RawTimeouts,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    #[serde(default)]
    host: Option<String>,
    #[serde(default = "root_path")]
    path: String,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    upstream: Option<String>,
    #[serde(default)]
    auth: Option<AuthMode>,
    #[serde(default)]
    require: Option<RawRequire>,
    #[serde(default)]
    shadow: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequire {
    resource: String,
    access: String,
}

fn root_path() -> String {
    "/".to_owned()
}

/// Name of the group the top-level `upstream` setting makes.
pub const DEFAULT_GROUP: &str = "default";

/// Groups (the default one first) and routes (a catch-all to the default group last).
fn resolve_routes(
    raw_groups: BTreeMap<String, RawGroup>,
    raw_routes: Vec<RawRoute>,
    upstream: SocketAddr,
    timeouts: UpstreamTimeouts,
) -> Result<(Vec<GroupConfig>, Vec<Route>), ConfigError> {
    let mut groups = vec![GroupConfig {
        name: DEFAULT_GROUP.to_owned(),
        addresses: vec![upstream],
        timeouts,
        health_check_interval: Duration::from_secs(1),
        ejection: Duration::from_secs(5),
    }];
    for (name, raw) in raw_groups {
        let key = format!("tokengate.upstreams.{name}");
        if name == DEFAULT_GROUP {
            return Err(invalid(
                &key,
                "`default` is the group of the top-level `upstream` setting",
            ));
        }
        if raw.addresses.is_empty() {
            return Err(invalid(&key, "needs at least one address"));
        }
        let addresses = raw
            .addresses
            .iter()
            .map(|a| resolve_address(&format!("{key}.addresses"), a))
            .collect::<Result<_, _>>()?;
        let d = |field: &str, value: Option<String>, default: &str| {
            parse_duration(
                &format!("{key}.{field}"),
                value.as_deref().unwrap_or(default),
            )
        };
        groups.push(GroupConfig {
            timeouts: UpstreamTimeouts {
                connect: raw
                    .timeouts
                    .connect
                    .map_or(Ok(timeouts.connect), |t| d("timeouts.connect", Some(t), ""))?,
                read: raw
                    .timeouts
                    .read
                    .map_or(Ok(timeouts.read), |t| d("timeouts.read", Some(t), ""))?,
                write: raw
                    .timeouts
                    .write
                    .map_or(Ok(timeouts.write), |t| d("timeouts.write", Some(t), ""))?,
                idle: raw
                    .timeouts
                    .idle
                    .map_or(Ok(timeouts.idle), |t| d("timeouts.idle", Some(t), ""))?,
            },
            health_check_interval: d("health_check_interval", raw.health_check_interval, "1s")?,
            ejection: d("ejection", raw.ejection, "5s")?,
            name,
            addresses,
        });
    }
    let mut routes = Vec::with_capacity(raw_routes.len() + 1);
    for raw in raw_routes {
        let key = format!("tokengate.routes.{}", raw.name);
        if routes.iter().any(|r: &Route| r.name == raw.name) {
            return Err(invalid(&key, "two routes share this name"));
        }
        let path =
            PathTemplate::parse(&raw.path).map_err(|e| invalid(&format!("{key}.path"), e))?;
        let group = raw.upstream.as_deref().unwrap_or(DEFAULT_GROUP);
        let upstream = groups.iter().position(|g| g.name == group).ok_or_else(|| {
            invalid(
                &format!("{key}.upstream"),
                format!("no upstream group named {group:?}"),
            )
        })?;
        let require = match raw.require {
            Some(r) => {
                let resource = Resource::parse(&r.resource);
                if let Resource::Param(param) = &resource {
                    if !path.has_param(param) {
                        return Err(invalid(
                            &format!("{key}.require.resource"),
                            format!("{{{param}}} is not a parameter of {:?}", raw.path),
                        ));
                    }
                }
                Some(Requirement {
                    resource,
                    access: r.access,
                })
            }
            None => None,
        };
        routes.push(Route {
            name: raw.name,
            host: raw.host,
            path,
            methods: raw.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
            upstream,
            auth: raw.auth,
            require,
            shadow: raw.shadow,
        });
    }
    routes.push(Route {
        name: DEFAULT_GROUP.to_owned(),
        host: None,
        path: PathTemplate::parse("/").map_err(|e| invalid("route", e))?,
        methods: Vec::new(),
        upstream: 0,
        auth: None,
        require: None,
        shadow: false,
    });
    Ok((groups, routes))
}

fn resolve_address(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| invalid(key, format!("{text:?} is not a host:port address ({e})")))?;
    addrs
        .next()
        .ok_or_else(|| invalid(key, format!("{text:?} resolves to no address")))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawRateLimit {
    mints: Option<u32>,
    per: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawTimeouts {
    connect: Option<String>,
    read: Option<String>,
    write: Option<String>,
    idle: Option<String>,
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
        let (raw, server) = split_sections(text)?;
        resolve(raw, server, env)
    }

    /// The keyring the configured secrets make.
    pub fn keyring(&self) -> Result<Keyring, ConfigError> {
        Keyring::new(&self.secrets, &self.algorithms).map_err(ConfigError::Keys)
    }

    /// The token route's service, built from this configuration.
    pub fn token_service(&self) -> Result<TokenService, ConfigError> {
        let keys = SharedKeyring::new(self.keyring()?);
        let mut reserved = self.reserved_claims.clone();
        reserved.push(self.subject_claim.clone());
        Ok(TokenService {
            keys,
            verify: VerifyPolicy {
                subject_claim: self.subject_claim.clone(),
                leeway_secs: self.leeway.as_secs(),
            },
            permission: PermissionPolicy {
                max_depth: self.max_depth,
                max_keys: self.max_keys,
                reserved,
                abilities: self.abilities.clone(),
            },
            max_ttl_secs: self.max_ttl.map(|d| d.as_secs()),
            endpoint: self.endpoint.clone(),
            signer: self.signing.as_ref().map(|s| s.key.clone()),
        })
    }
}

/// Splits the file into tokengate's settings and Pingora's. tokengate's may sit under
/// `tokengate:` or, flat, at the top level beside Pingora's keys; every key must be one or the
/// other, and none may be given in both places.
fn split_sections(text: &str) -> Result<(RawConfig, ServerConf), ConfigError> {
    let parse_err = |e: serde_yaml::Error| ConfigError::Parse(e.to_string());
    let mut doc: serde_yaml::Mapping = if text.trim().is_empty() {
        serde_yaml::Mapping::new()
    } else {
        serde_yaml::from_str(text).map_err(parse_err)?
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
    // `threads` is Pingora's key too; flat, it sets tokengate's worker threads.
    if let Some(threads) = doc.get("threads") {
        section
            .entry("threads".into())
            .or_insert_with(|| threads.clone());
    }
    let raw = serde_yaml::from_value(serde_yaml::Value::Mapping(section))
        .map_err(|e| ConfigError::Parse(format!("tokengate: {e}")))?;
    let server = serde_yaml::from_value(serde_yaml::Value::Mapping(doc)).map_err(parse_err)?;
    Ok((raw, server))
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

/// A setting's value: the environment's if set, else the file's, else the default.
fn pick(env: &impl Env, var: &str, file: Option<String>, default: &str) -> (String, String) {
    match env.var(var) {
        Some(value) => (var.to_owned(), value),
        None => (String::new(), file.unwrap_or_else(|| default.to_owned())),
    }
}

fn setting_name(source: String, key: &str) -> String {
    if source.is_empty() {
        format!("tokengate.{key}")
    } else {
        source
    }
}

fn duration(
    env: &impl Env,
    var: &str,
    key: &str,
    file: Option<String>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let (source, text) = pick(env, var, file, default);
    parse_duration(&setting_name(source, key), &text)
}

/// A duration like `10s`, `500ms` or `1h`, refused with the setting's name.
fn parse_duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        invalid(
            key,
            format!("{text:?} is not a duration like 10s or 500ms ({e})"),
        )
    })
}

fn address(
    env: &impl Env,
    var: &str,
    key: &str,
    file: Option<String>,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let (source, text) = pick(env, var, file, default);
    resolve_address(&setting_name(source, key), &text)
}

fn resolve(raw: RawConfig, mut server: ServerConf, env: &impl Env) -> Result<Config, ConfigError> {
    let listen = address(
        env,
        "TOKENGATE_LISTEN",
        "listen",
        raw.listen,
        "127.0.0.1:8080",
    )?;
    let admin_listen = address(
        env,
        "TOKENGATE_ADMIN_LISTEN",
        "admin_listen",
        raw.admin_listen,
        "127.0.0.1:9090",
    )?;
    let upstream = address(
        env,
        "TOKENGATE_UPSTREAM",
        "upstream",
        raw.upstream,
        "127.0.0.1:3000",
    )?;
    if listen == admin_listen {
        return Err(invalid(
            "tokengate.admin_listen",
            "must differ from the proxy listener",
        ));
    }
    let (_, endpoint) = pick(env, "TOKENGATE_ENDPOINT", raw.endpoint, "localhost:5001");
    let secret_source = SecretSource {
        inline: env.var("TOKENGATE_SECRET").or(raw.secret),
        file: env
            .var("TOKENGATE_SECRET_FILE")
            .map(PathBuf::from)
            .or(raw.secret_file),
    };
    let secrets = secret_source.secrets()?;
    let rate_per = raw.rate_limit.per.unwrap_or_else(|| "1s".to_owned());
    let rate_per = parse_duration("tokengate.rate_limit.per", &rate_per)?;
    if rate_per.is_zero() {
        return Err(invalid(
            "tokengate.rate_limit.per",
            "must be longer than zero",
        ));
    }
    let rate_limit = match raw.rate_limit.mints.unwrap_or(30) {
        0 => None,
        mints => Some(RateLimit {
            mints,
            per: rate_per,
        }),
    };
    let algorithms = raw
        .algorithms
        .unwrap_or_else(|| vec!["HS256".to_owned()])
        .iter()
        .map(|a| {
            Algorithm::from_str(a)
                .map_err(|_| invalid("tokengate.algorithms", format!("unknown algorithm {a:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (threads_source, threads) = pick(
        env,
        "TOKENGATE_THREADS",
        raw.threads.map(|t| t.to_string()),
        "0",
    );
    let threads = match threads.trim().parse::<usize>() {
        Ok(0) => std::thread::available_parallelism().map_or(1, |n| n.get()),
        Ok(n) => n,
        Err(_) => {
            return Err(invalid(
                &setting_name(threads_source, "threads"),
                format!("{threads:?} is not a whole number"),
            ))
        }
    };
    let (log_source, log) = pick(env, "TOKENGATE_LOG", raw.log, "info");
    let log = log::LevelFilter::from_str(log.trim()).map_err(|_| {
        invalid(
            &setting_name(log_source, "log"),
            format!("{log:?} is not one of off, error, warn, info, debug, trace"),
        )
    })?;
    let (format_source, log_format) = pick(env, "TOKENGATE_LOG_FORMAT", raw.log_format, "json");
    let log_format = LogFormat::from_str(&log_format).map_err(|()| {
        invalid(
            &setting_name(format_source, "log_format"),
            format!("{log_format:?} is not json or text"),
        )
    })?;
    let (access_source, access_log) = pick(
        env,
        "TOKENGATE_ACCESS_LOG",
        raw.access_log.map(|b| b.to_string()),
        "true",
    );
    let access_log = match access_log.trim() {
        "true" | "on" | "1" => true,
        "false" | "off" | "0" => false,
        other => {
            return Err(invalid(
                &setting_name(access_source, "access_log"),
                format!("{other:?} is not true or false"),
            ))
        }
    };
    let identity_header = raw
        .identity_header
        .unwrap_or_else(|| "X-User-Id".to_owned());
    let identity_header = HeaderName::from_str(&identity_header).map_err(|_| {
        invalid(
            "tokengate.identity_header",
            format!("{identity_header:?} is not a header name"),
        )
    })?;
    let token_path = raw.token_path.unwrap_or_else(|| "/api/v1/token".to_owned());
    if !token_path.starts_with('/') {
        return Err(invalid("tokengate.token_path", "must start with /"));
    }
    let max_ttl = raw
        .max_ttl
        .map(|text| parse_duration("tokengate.max_ttl", &text))
        .transpose()?;
    let grace_period = duration(
        env,
        "TOKENGATE_GRACE_PERIOD",
        "grace_period",
        raw.grace_period,
        "10s",
    )?;
    let t = raw.upstream_timeouts;
    let upstream_timeouts = UpstreamTimeouts {
        connect: duration(
            env,
            "TOKENGATE_UPSTREAM_CONNECT_TIMEOUT",
            "upstream_timeouts.connect",
            t.connect,
            "5s",
        )?,
        read: duration(
            env,
            "TOKENGATE_UPSTREAM_READ_TIMEOUT",
            "upstream_timeouts.read",
            t.read,
            "60s",
        )?,
        write: duration(
            env,
            "TOKENGATE_UPSTREAM_WRITE_TIMEOUT",
            "upstream_timeouts.write",
            t.write,
            "60s",
        )?,
        idle: duration(
            env,
            "TOKENGATE_UPSTREAM_IDLE_TIMEOUT",
            "upstream_timeouts.idle",
            t.idle,
            "60s",
        )?,
    };
    let signing = raw.signing.map(resolve_signing).transpose()?;
    let (upstream_groups, routes) =
        resolve_routes(raw.upstreams, raw.routes, upstream, upstream_timeouts)?;
    server.threads = threads;
    // Pingora's grace sleep is fixed; the drain watcher exits as soon as in-flight work is done.
    server.grace_period_seconds = Some(grace_period.as_secs());
    server.graceful_shutdown_timeout_seconds = Some(1);
    let config = Config {
        listen,
        admin_listen,
        upstream,
        endpoint,
        secrets,
        secret_source,
        rate_limit,
        algorithms,
        subject_claim: raw.subject_claim.unwrap_or_else(|| "user_id".to_owned()),
        leeway: duration(env, "TOKENGATE_LEEWAY", "leeway", raw.leeway, "0s")?,
        max_ttl,
        token_path,
        body_limit: raw.body_limit.unwrap_or(16 * 1024),
        max_depth: raw.max_depth.unwrap_or(16),
        max_keys: raw.max_keys.unwrap_or(512),
        reserved_claims: raw.reserved_claims,
        abilities: raw.abilities,
        identity_header,
        auth: AuthRules::new(raw.auth.unwrap_or(AuthMode::Passthrough), raw.auth_paths),
        grace_period,
        threads,
        log,
        log_format,
        access_log,
        upstream_groups,
        routes,
        signing,
        server,
    };
    // Building the keyring once here refuses short or missing secrets before anything listens.
    config.token_service()?;
    Ok(config)
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
        assert_eq!(c.upstream.to_string(), "127.0.0.1:3000");
        assert_eq!(c.endpoint, "localhost:5001");
        assert_eq!(c.grace_period, Duration::from_secs(10));
        assert_eq!(c.body_limit, 16384);
        assert_eq!(c.auth.mode_for("/anything"), AuthMode::Passthrough);
        assert_eq!(c.server.grace_period_seconds, Some(10));
    }

    #[test]
    fn environment_overrides_the_file() {
        let yaml = "tokengate:\n  listen: 127.0.0.1:1111\n  upstream_timeouts:\n    read: 30s\n";
        let env = [
            SECRET,
            ("TOKENGATE_LISTEN", "127.0.0.1:2222"),
            ("TOKENGATE_UPSTREAM_READ_TIMEOUT", "500ms"),
            ("TOKENGATE_THREADS", "3"),
        ];
        let c = Config::from_yaml(yaml, &env).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:2222");
        assert_eq!(
            c.upstream_groups[0].timeouts.read,
            Duration::from_millis(500)
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
        for e in [
            err("", &[("TOKENGATE_SECRET", "short")]),
            err("tokengate: [", &[SECRET]),
        ] {
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn longest_auth_prefix_wins() {
        let yaml = "tokengate:\n  auth_paths:\n    - {prefix: /admin, auth: required}\n    - {prefix: /admin/health, auth: passthrough}\n";
        let c = Config::from_yaml(yaml, &[SECRET]).unwrap();
        assert_eq!(c.auth.mode_for("/admin/users"), AuthMode::Required);
        assert_eq!(c.auth.mode_for("/admin/health"), AuthMode::Passthrough);
        assert_eq!(c.auth.mode_for("/public"), AuthMode::Passthrough);
    }

    #[test]
    fn settings_may_also_be_flat_beside_pingoras() {
        let yaml = "version: 1\nlisten: 127.0.0.1:4444\nauth: required\nthreads: 3\n";
        let c = Config::from_yaml(yaml, &[SECRET]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:4444");
        assert_eq!(c.auth.mode_for("/"), AuthMode::Required);
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
        assert_eq!(c.auth.mode_for("/"), AuthMode::Required);
    }
}
