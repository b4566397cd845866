//! The nested layout: settings grouped by component (`listeners`, `token`, `proxy`, `upstream`,
//! `observability`, `process`), each nested key the same setting as its flat spelling, which
//! stays valid. Nested sections are moved to their flat names before the strict parse, and
//! errors name a setting the way the file wrote it.

use serde_yaml::{Mapping, Value};

use super::ConfigError;

/// Each section and the keys resolved in `config`: (nested name, flat name). A component's own
/// settings struct adds its keys to its section by itself ([`sections`]).
const SECTIONS: &[(&str, &[(&str, &str)])] = &[
    (
        "listeners",
        &[
            ("proxy", "listen"),
            ("admin", "admin_listen"),
            ("tls", "tls"),
            ("h2c", "h2c"),
            ("header_timeout", "header_timeout"),
            ("authorize", "authorize"),
        ],
    ),
    (
        "token",
        &[
            ("path", "token_path"),
            ("secret", "secret"),
            ("secret_file", "secret_file"),
            ("signing", "signing"),
        ],
    ),
    (
        "proxy",
        &[
            ("auth", "auth"),
            ("routes", "routes"),
            ("identity_header", "identity_header"),
            ("forward_claims", "forward_claims"),
            ("trusted_proxies", "trusted_proxies"),
        ],
    ),
    (
        "upstream",
        &[
            ("address", "upstream"),
            ("timeouts", "upstream_timeouts"),
            ("groups", "upstreams"),
        ],
    ),
    (
        "observability",
        &[
            ("log", "log"),
            ("log_format", "log_format"),
            ("access_log", "access_log"),
            ("tracing", "tracing"),
        ],
    ),
    (
        "process",
        &[("threads", "threads"), ("grace_period", "grace_period")],
    ),
];

/// Every grouped spelling and its flat one: (`section.key`, flat key).
pub fn grouped() -> Vec<(String, &'static str)> {
    sections()
        .into_iter()
        .flat_map(|(section, keys)| {
            keys.into_iter()
                .map(move |(nested, flat)| (format!("{section}.{nested}"), flat))
        })
        .collect()
}

/// Every section and its keys, (nested, flat): [`SECTIONS`] and the fields of the settings
/// structs components declare, spelled the same both ways.
fn sections() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    use serde_aux::serde_introspection::serde_introspect;
    let owned = |section: &str| -> Vec<&'static str> {
        match section {
            "token" => [
                serde_introspect::<crate::token::Settings>(),
                serde_introspect::<crate::token::Limits>(),
            ]
            .concat(),
            "proxy" => serde_introspect::<crate::request::Options>().to_vec(),
            _ => Vec::new(),
        }
    };
    SECTIONS
        .iter()
        .map(|(section, keys)| {
            let mut keys = keys.to_vec();
            for key in owned(section) {
                // Spelled differently grouped (`token.path`): listed in `SECTIONS`.
                if !keys.iter().any(|(_, flat)| *flat == key) {
                    keys.push((key, key));
                }
            }
            (*section, keys)
        })
        .collect()
}

/// How a flat setting was written in the file: (flat, nested), both without `tokengate.`.
pub(super) type Spellings = Vec<(String, String)>;

/// Moves every nested section's keys to their flat names. `upstream` is a section only when it
/// is a mapping (flat, it is the default address).
pub(super) fn flatten(settings: &mut Mapping) -> Result<Spellings, ConfigError> {
    let mut spellings = Vec::new();
    for (section, keys) in &sections() {
        let Some(value) = settings.get(*section) else {
            continue;
        };
        let body = match value {
            Value::Mapping(body) => body.clone(),
            Value::Null => Mapping::new(),
            _ if *section == "upstream" => continue,
            _ => return Err(parse(format!("`{section}` must be a mapping of settings"))),
        };
        settings.remove(*section);
        for (key, value) in body {
            let name = key.as_str().unwrap_or_default();
            let Some((_, flat)) = keys.iter().find(|(nested, _)| *nested == name) else {
                let expected: Vec<&str> = keys.iter().map(|(nested, _)| *nested).collect();
                return Err(parse(format!(
                    "unknown field `{section}.{name}`, expected one of {}",
                    expected.join(", ")
                )));
            };
            if settings.contains_key(*flat) {
                return Err(parse(format!(
                    "`{section}.{name}` is also given as `{flat}`: write it once"
                )));
            }
            settings.insert(Value::from(*flat), value);
            spellings.push(((*flat).to_owned(), format!("{section}.{name}")));
        }
    }
    Ok(spellings)
}

fn parse(problem: String) -> ConfigError {
    ConfigError::Parse(format!("tokengate: {problem}"))
}

/// `error` with its setting named as the file wrote it.
pub(super) fn as_written(error: ConfigError, spellings: &Spellings) -> ConfigError {
    let ConfigError::Invalid { key, problem } = error else {
        return error;
    };
    let key = spellings
        .iter()
        .find_map(|(flat, nested)| {
            let rest = key
                .strip_prefix("tokengate.")?
                .strip_prefix(flat.as_str())?;
            (rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
                .then(|| format!("tokengate.{nested}{rest}"))
        })
        .unwrap_or(key);
    ConfigError::Invalid { key, problem }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(yaml: &str) -> Result<(Mapping, Spellings), String> {
        let mut map: Mapping = serde_yaml::from_str(yaml).unwrap();
        flatten(&mut map)
            .map(|s| (map, s))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn nested_sections_become_flat_settings() {
        let (map, spellings) = flat(
            "listeners: {proxy: 0.0.0.0:8080}\ntoken: {path: /t}\nupstream: {address: 'a:1'}\n",
        )
        .unwrap();
        let want: Mapping =
            serde_yaml::from_str("listen: 0.0.0.0:8080\ntoken_path: /t\nupstream: 'a:1'\n")
                .unwrap();
        assert_eq!(map, want);
        assert_eq!(spellings[1], ("token_path".into(), "token.path".into()));
        // Flat, `upstream` is the default address and stays as it is.
        assert_eq!(
            flat("upstream: 'a:1'\n").unwrap().0,
            serde_yaml::from_str("upstream: 'a:1'").unwrap()
        );
    }

    #[test]
    fn nested_mistakes_are_named() {
        for (yaml, want) in [
            ("token: {paht: /t}", "invalid configuration: tokengate: unknown field `token.paht`, expected one of path, secret, secret_file, signing, endpoint"),
            ("token: {path: /t}\ntoken_path: /u", "invalid configuration: tokengate: `token.path` is also given as `token_path`: write it once"),
            ("proxy: [auth]", "invalid configuration: tokengate: `proxy` must be a mapping of settings"),
        ] {
            let got = flat(yaml).unwrap_err();
            assert!(got.starts_with(want), "{yaml}: {got}");
        }
    }

    #[test]
    fn errors_name_the_setting_as_written() {
        let spellings = vec![
            ("token_path".to_owned(), "token.path".to_owned()),
            ("upstreams".to_owned(), "upstream.groups".to_owned()),
        ];
        let named = |key: &str| match as_written(
            ConfigError::Invalid {
                key: key.into(),
                problem: "p".into(),
            },
            &spellings,
        ) {
            ConfigError::Invalid { key, .. } => key,
            other => other.to_string(),
        };
        assert_eq!(named("tokengate.token_path"), "tokengate.token.path");
        assert_eq!(
            named("tokengate.upstreams.g.tls"),
            "tokengate.upstream.groups.g.tls"
        );
        assert_eq!(named("tokengate.upstream"), "tokengate.upstream");
        assert_eq!(named("TOKENGATE_LISTEN"), "TOKENGATE_LISTEN");
    }
}
