//! Reading one setting: environment over file over default, parsed, refused with its name.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::{ConfigError, Env};

/// A refusal naming the setting (`tokengate.key` or `TOKENGATE_VAR`) and what is wrong.
pub fn invalid(key: &str, problem: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        problem: problem.to_string(),
    }
}

/// A setting's value and the name to blame for it: the environment's if set, else the file's
/// (`tokengate.key`), else the default.
pub fn pick(
    env: &impl Env,
    var: &str,
    key: &str,
    file: Option<String>,
    default: &str,
) -> (String, String) {
    match env.var(var) {
        Some(value) => (var.to_owned(), value),
        None => (
            format!("tokengate.{key}"),
            file.unwrap_or_else(|| default.to_owned()),
        ),
    }
}

/// A duration setting, environment first.
pub fn duration(
    env: &impl Env,
    var: &str,
    key: &str,
    file: Option<String>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let (name, text) = pick(env, var, key, file, default);
    parse_duration(&name, &text)
}

/// A duration like `10s`, `500ms` or `1h`, refused with the setting's name.
pub fn parse_duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        invalid(
            key,
            format!("{text:?} is not a duration like 10s or 500ms ({e})"),
        )
    })
}

/// A listener address setting, environment first: an IP literal and a port.
pub fn listen_address(
    env: &impl Env,
    var: &str,
    key: &str,
    file: Option<String>,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let (name, text) = pick(env, var, key, file, default);
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| invalid(&name, format!("{text:?} is not a host:port address ({e})")))?;
    addrs
        .next()
        .ok_or_else(|| invalid(&name, format!("{text:?} resolves to no address")))
}

/// An upstream `host:port`: checked for shape only, since a name may not resolve yet when the
/// process starts (a Kubernetes Service still being created).
pub fn upstream_address(key: &str, text: &str) -> Result<String, ConfigError> {
    let text = text.trim();
    let bad = || invalid(key, format!("{text:?} is not a host:port address"));
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let valid_host = host.parse::<std::net::IpAddr>().is_ok()
        || (!host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')));
    if !valid_host || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(text.to_owned())
}

/// A boolean setting, environment first: `true`/`on`/`1` or `false`/`off`/`0`.
pub fn boolean(
    env: &impl Env,
    var: &str,
    key: &str,
    file: Option<bool>,
    default: bool,
) -> Result<bool, ConfigError> {
    let (name, text) = pick(
        env,
        var,
        key,
        file.map(|b| b.to_string()),
        &default.to_string(),
    );
    match text.trim() {
        "true" | "on" | "1" => Ok(true),
        "false" | "off" | "0" => Ok(false),
        other => Err(invalid(&name, format!("{other:?} is not true or false"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_addresses_are_checked_for_shape_not_resolved() {
        for ok in [
            "127.0.0.1:3000",
            "[::1]:80",
            "legacy.default.svc.cluster.local:8080",
            "not-yet-there:1",
        ] {
            assert_eq!(upstream_address("k", ok).ok().as_deref(), Some(ok));
        }
        for bad in [
            "nonsense",
            "host:",
            "host:0",
            "host:70000",
            ":80",
            "a b:1",
            "h/x:1",
        ] {
            assert!(upstream_address("k", bad).is_err(), "{bad}");
        }
    }
}
