//! `upstreams:` and `routes:` → upstream groups and the ranked route table.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::values::{invalid, parse_duration, upstream_address};
use super::ConfigError;
use crate::forward_claims::ClaimPointer;
use crate::limits::RateLimit;
use crate::request::host::canonical_authority;
use crate::routes::{
    AuthMode, LimitKey, PathTemplate, Requirement, Resource, Route, RouteLimit, RouteTable,
};
use crate::upstreams::{GroupConfig, GroupTimeouts, Protocol, UpstreamTimeouts};

/// Name of the group the top-level `upstream` setting makes.
pub const DEFAULT_GROUP: &str = "default";
/// How often a group's addresses are probed, unless configured.
const HEALTH_CHECK_INTERVAL: &str = "1s";
/// How long an address that refused a connection rests, unless configured.
const EJECTION: &str = "5s";
/// How often host names are resolved again, unless configured.
const RESOLVE_INTERVAL: &str = "5s";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGroup {
    addresses: Vec<String>,
    #[serde(default)]
    health_check_interval: Option<String>,
    #[serde(default)]
    ejection: Option<String>,
    #[serde(default)]
    resolve_interval: Option<String>,
    #[serde(default)]
    timeouts: GroupTimeouts,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    tls: Option<super::tls::RawUpstreamTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
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
    #[serde(default)]
    limit: Option<RawLimit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    /// `subject`, or `claim:/pointer`.
    key: String,
    requests: u32,
    per: String,
    #[serde(default)]
    burst: Option<u32>,
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

/// The default group (from `upstream`) first, then the named ones.
pub(super) fn resolve_groups(
    upstream: String,
    timeouts: UpstreamTimeouts,
    raw_groups: BTreeMap<String, RawGroup>,
) -> Result<Vec<GroupConfig>, ConfigError> {
    let mut groups = vec![GroupConfig {
        name: DEFAULT_GROUP.to_owned(),
        addresses: vec![upstream],
        timeouts,
        health_check_interval: interval("", None, HEALTH_CHECK_INTERVAL)?,
        ejection: interval("", None, EJECTION)?,
        resolve_interval: interval("", None, RESOLVE_INTERVAL)?,
        protocol: Protocol::H1,
        tls: None,
    }];
    for (name, raw) in raw_groups {
        groups.push(resolve_group(name, raw, timeouts)?);
    }
    Ok(groups)
}

/// A duration setting of a group, or its default.
fn interval(key: &str, value: Option<String>, default: &str) -> Result<Duration, ConfigError> {
    parse_duration(key, value.as_deref().unwrap_or(default))
}

/// One named group.
fn resolve_group(
    name: String,
    raw: RawGroup,
    timeouts: UpstreamTimeouts,
) -> Result<GroupConfig, ConfigError> {
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
        .map(|a| upstream_address(&format!("{key}.addresses"), a))
        .collect::<Result<Vec<_>, _>>()?;
    let protocol = super::tls::resolve_protocol(&key, raw.protocol.as_deref(), raw.tls.is_some())?;
    let tls = raw
        .tls
        .map(|t| super::tls::resolve_upstream_tls(&key, t, &addresses))
        .transpose()?;
    let field = |name: &str| format!("{key}.{name}");
    Ok(GroupConfig {
        protocol,
        tls,
        timeouts: raw.timeouts.over(timeouts),
        health_check_interval: interval(
            &field("health_check_interval"),
            raw.health_check_interval,
            HEALTH_CHECK_INTERVAL,
        )?,
        ejection: interval(&field("ejection"), raw.ejection, EJECTION)?,
        resolve_interval: interval(
            &field("resolve_interval"),
            raw.resolve_interval,
            RESOLVE_INTERVAL,
        )?,
        name,
        addresses,
    })
}

/// What routes need to know besides their own settings.
pub(super) struct RouteContext<'a> {
    pub groups: &'a [GroupConfig],
    pub default_auth: AuthMode,
    pub abilities: Option<&'a [String]>,
    pub allow_semicolon: bool,
    /// Claims only the session token's issuer sets (no permission may): what a limit may be
    /// keyed by.
    pub issuer_claims: &'a [String],
}

/// The ranked route table, a catch-all to the default group last.
pub(super) fn resolve_routes(
    raw_routes: Vec<RawRoute>,
    context: &RouteContext<'_>,
) -> Result<RouteTable, ConfigError> {
    let mut routes: Vec<Route> = Vec::with_capacity(raw_routes.len());
    for raw in raw_routes {
        let key = format!("tokengate.routes.{}", raw.name);
        if routes.iter().any(|r| r.name == raw.name) {
            return Err(invalid(&key, "two routes share this name"));
        }
        routes.push(resolve_route(raw, &key, context)?);
    }
    let catch_all = Route {
        name: DEFAULT_GROUP.to_owned(),
        host: None,
        path: PathTemplate::parse("/").map_err(|e| invalid("tokengate.routes", e))?,
        methods: Vec::new(),
        upstream: 0,
        auth: context.default_auth,
        require: None,
        shadow: false,
        limit: None,
    };
    RouteTable::new(routes, catch_all, context.allow_semicolon)
        .map_err(|e| invalid("tokengate.routes", e))
}

fn resolve_route(
    raw: RawRoute,
    key: &str,
    context: &RouteContext<'_>,
) -> Result<Route, ConfigError> {
    let path = PathTemplate::parse(&raw.path).map_err(|e| invalid(&format!("{key}.path"), e))?;
    let group = raw.upstream.as_deref().unwrap_or(DEFAULT_GROUP);
    let upstream = context
        .groups
        .iter()
        .position(|g| g.name == group)
        .ok_or_else(|| {
            invalid(
                &format!("{key}.upstream"),
                format!("no upstream group named {group:?}"),
            )
        })?;
    let require = raw
        .require
        .map(|r| resolve_requirement(r, &path, key, context.abilities))
        .transpose()?;
    let limit = raw
        .limit
        .map(|l| resolve_limit(l, key, &path, require.as_ref(), context.issuer_claims))
        .transpose()?;
    let host = raw
        .host
        .map(|h| {
            let bad = || invalid(&format!("{key}.host"), format!("{h:?} is not a host name"));
            match canonical_authority(h.as_bytes()) {
                Ok(Some(a)) if a.port.is_none() => Ok(a.name.into_owned()),
                _ => Err(bad()),
            }
        })
        .transpose()?;
    let methods = raw
        .methods
        .iter()
        .map(|m| {
            let m = m.trim().to_ascii_uppercase();
            match !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') {
                true => Ok(m),
                false => Err(invalid(
                    &format!("{key}.methods"),
                    format!("{m:?} is not a method"),
                )),
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(Route {
        name: raw.name,
        host,
        path,
        methods,
        upstream,
        auth: raw.auth.unwrap_or(context.default_auth),
        require,
        shadow: raw.shadow,
        limit,
    })
}

fn resolve_limit(
    raw: RawLimit,
    key: &str,
    path: &PathTemplate,
    require: Option<&Requirement>,
    issuer_claims: &[String],
) -> Result<RouteLimit, ConfigError> {
    let key = format!("{key}.limit");
    let limit_key = limit_key(&raw.key, path, require, issuer_claims)
        .map_err(|problem| invalid(&format!("{key}.key"), problem))?;
    let per = parse_duration(&format!("{key}.per"), &raw.per)?;
    if raw.requests == 0 || per.is_zero() {
        return Err(invalid(&key, "requests and per must be above zero"));
    }
    Ok(RouteLimit {
        key: limit_key,
        rate: RateLimit {
            mints: raw.requests,
            per,
            burst: raw.burst.unwrap_or(raw.requests).max(1),
        },
    })
}

/// What a limit counts by, when the caller cannot choose it: the subject; a path parameter the
/// route's `require` checked the token's grant against (another value is another resource, not
/// another try at the same one); a claim only the session token's issuer sets. A claim the token
/// endpoint lets a caller set in its permission (`claim:/Id`) is refused: one user could mint
/// a token per value and multiply the limit.
fn limit_key(
    written: &str,
    path: &PathTemplate,
    require: Option<&Requirement>,
    issuer_claims: &[String],
) -> Result<LimitKey, String> {
    if written == "subject" {
        return Ok(LimitKey::Subject);
    }
    if let Some(name) = written.strip_prefix("param:") {
        let checked = matches!(require, Some(r) if r.resource == Resource::Param(name.to_owned()));
        return match path.has_param(name) && checked {
            true => Ok(LimitKey::Param(name.to_owned())),
            false => Err(format!(
                "{written:?}: {{{name}}} must be a parameter of {path} that the route's require \
                 checks (resource: \"{{{name}}}\")"
            )),
        };
    }
    let Some(pointer) = written.strip_prefix("claim:") else {
        return Err(format!(
            "{written:?} is not `subject`, `param:NAME` or `claim:/pointer`"
        ));
    };
    let pointer = ClaimPointer::parse(pointer).map_err(|e| e.0)?;
    match issuer_claims.iter().any(|c| c == pointer.claim()) {
        true => Ok(LimitKey::Claim(pointer)),
        false => Err(format!(
            "{written:?} names a claim the token endpoint lets a caller set, so one user could \
             mint a token per value; key the limit by `subject`, `param:NAME`, or a claim only \
             the issuer sets ({})",
            issuer_claims.join(", ")
        )),
    }
}

fn resolve_requirement(
    raw: RawRequire,
    path: &PathTemplate,
    key: &str,
    abilities: Option<&[String]>,
) -> Result<Requirement, ConfigError> {
    let resource = Resource::parse(&raw.resource);
    if let Resource::Param(param) = &resource {
        if !path.has_param(param) {
            return Err(invalid(
                &format!("{key}.require.resource"),
                format!("{{{param}}} is not a parameter of {path}"),
            ));
        }
    }
    if let Some(allowed) = abilities {
        if !allowed.contains(&raw.access) {
            return Err(invalid(
                &format!("{key}.require.access"),
                format!(
                    "{:?} is not one of the configured abilities {allowed:?}",
                    raw.access
                ),
            ));
        }
    }
    Ok(Requirement {
        resource,
        access: raw.access,
    })
}
