//! The route table: host + path template → upstream group, auth mode and required ability.
//! Pure: matching and the ability decision take plain values, so both are unit-tested here.

use std::fmt;

use serde_json::value::RawValue;
use serde_json::Value;

use crate::config::AuthMode;

/// A path template such as `/albums/{album}/images`: literal segments and `{param}` segments,
/// matched as a prefix on segment boundaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError(String);

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PathTemplate {
    /// Parses `/a/{b}/c`; the path must start with `/`, a parameter fill a whole segment.
    pub fn parse(template: &str) -> Result<PathTemplate, TemplateError> {
        let rest = template
            .strip_prefix('/')
            .ok_or_else(|| TemplateError(format!("{template:?} must start with /")))?;
        let segments = rest
            .split('/')
            .filter(|s| !s.is_empty())
            .map(
                |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) if !name.is_empty() && !name.contains(['{', '}']) => {
                        Ok(Segment::Param(name.to_owned()))
                    }
                    _ if s.contains(['{', '}']) => Err(TemplateError(format!(
                        "{template:?}: a parameter must be a whole segment like {{album}}"
                    ))),
                    _ => Ok(Segment::Literal(s.to_owned())),
                },
            )
            .collect::<Result<_, _>>()?;
        Ok(PathTemplate { segments })
    }

    /// The parameters, when `path` starts with this template's segments.
    pub fn matches<'p>(&self, path: &'p str) -> Option<Vec<(&str, &'p str)>> {
        let mut parts = path.split('/').filter(|s| !s.is_empty());
        let mut params = Vec::new();
        for segment in &self.segments {
            let part = parts.next()?;
            match segment {
                Segment::Literal(lit) if lit == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => params.push((name.as_str(), part)),
            }
        }
        Some(params)
    }

    /// Whether the template names parameter `name`.
    pub fn has_param(&self, name: &str) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Param(p) if p == name))
    }
}

/// Where the resource of a required ability comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// A fixed resource name.
    Fixed(String),
    /// The value of a path parameter, `{album}`.
    Param(String),
}

impl Resource {
    /// `"{album}"` names a parameter, anything else is a fixed resource.
    pub fn parse(text: &str) -> Resource {
        match text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            Some(name) => Resource::Param(name.to_owned()),
            None => Resource::Fixed(text.to_owned()),
        }
    }
}

/// An ability a route requires: `abilities[<resource>].Access[<access>] == true`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// Which resource.
    pub resource: Resource,
    /// Which ability name under `Access`.
    pub access: String,
}

/// One route of the table.
#[derive(Debug, Clone)]
pub struct Route {
    /// Configured name: the `route` label of enforcement metrics.
    pub name: String,
    /// Host to match (port ignored, case-insensitive); `None` matches any.
    pub host: Option<String>,
    /// Path template, matched as a prefix.
    pub path: PathTemplate,
    /// Methods to match, upper case; empty matches any.
    pub methods: Vec<String>,
    /// Index of the upstream group.
    pub upstream: usize,
    /// Auth mode; `None` follows the global rules.
    pub auth: Option<AuthMode>,
    /// Ability the request's token must grant.
    pub require: Option<Requirement>,
    /// Log and count refusals without refusing.
    pub shadow: bool,
}

/// A matched route and its path parameters.
#[derive(Debug)]
pub struct Matched<'r, 'p> {
    /// The route.
    pub route: &'r Route,
    /// Path parameters by name.
    pub params: Vec<(&'r str, &'p str)>,
}

/// The first route that matches `host`, `path` and `method`.
pub fn find<'r, 'p>(
    routes: &'r [Route],
    host: Option<&str>,
    path: &'p str,
    method: &str,
) -> Option<Matched<'r, 'p>> {
    let host = host.map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name));
    routes.iter().find_map(|route| {
        let host_ok = route
            .host
            .as_deref()
            .is_none_or(|want| host.is_some_and(|h| h.eq_ignore_ascii_case(want)));
        let method_ok = route.methods.is_empty() || route.methods.iter().any(|m| m == method);
        if !(host_ok && method_ok) {
            return None;
        }
        let params = route.path.matches(path)?;
        Some(Matched { route, params })
    })
}

/// What enforcement decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The token grants the ability.
    Allow,
    /// It does not, and the route enforces.
    Deny,
    /// It does not, but the route is in shadow mode: forwarded, logged, counted.
    ShadowDeny,
}

impl Decision {
    /// The `decision` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::ShadowDeny => "shadow_deny",
        }
    }
}

/// Whether the claim `abilities` (raw JSON, if the token has it) grants `requirement` for a
/// request with `params`.
pub fn grants(
    abilities: Option<&RawValue>,
    requirement: &Requirement,
    params: &[(&str, &str)],
) -> bool {
    let resource = match &requirement.resource {
        Resource::Fixed(name) => name.as_str(),
        Resource::Param(param) => match params.iter().find(|(name, _)| name == param) {
            Some((_, value)) => value,
            None => return false,
        },
    };
    let Some(abilities) = abilities.and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
    else {
        return false;
    };
    abilities[resource]["Access"][requirement.access.as_str()] == Value::Bool(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, host: Option<&str>, path: &str, methods: &[&str]) -> Route {
        Route {
            name: name.into(),
            host: host.map(str::to_owned),
            path: PathTemplate::parse(path).unwrap(),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            upstream: 0,
            auth: None,
            require: None,
            shadow: false,
        }
    }

    #[test]
    fn templates_match_segment_prefixes_and_capture_params() {
        let t = PathTemplate::parse("/albums/{album}/images").unwrap();
        assert_eq!(t.matches("/albums/a1/images"), Some(vec![("album", "a1")]));
        assert_eq!(
            t.matches("/albums/a1/images/7/caption"),
            Some(vec![("album", "a1")])
        );
        assert_eq!(t.matches("/albums/a1/imagesX"), None);
        assert_eq!(t.matches("/albums/a1"), None);
        assert_eq!(t.matches("/albums//images"), None);
        assert_eq!(
            PathTemplate::parse("/").unwrap().matches("/anything"),
            Some(vec![])
        );
        assert!(PathTemplate::parse("albums").is_err());
        assert!(PathTemplate::parse("/albums/x{id}").is_err());
        assert!(PathTemplate::parse("/albums/{}").is_err());
    }

    #[test]
    fn first_match_wins_by_host_method_and_path() {
        let routes = [
            route(
                "upload",
                Some("images.example"),
                "/albums/{album}/images",
                &["POST"],
            ),
            route(
                "list",
                Some("images.example"),
                "/albums/{album}/images",
                &[],
            ),
            route("legacy", Some("legacy.example"), "/", &[]),
            route("default", None, "/", &[]),
        ];
        let name =
            |host, path, method| find(&routes, host, path, method).map(|m| m.route.name.clone());
        assert_eq!(
            name(Some("images.example:8080"), "/albums/a/images", "POST").as_deref(),
            Some("upload")
        );
        assert_eq!(
            name(Some("IMAGES.example"), "/albums/a/images", "GET").as_deref(),
            Some("list")
        );
        assert_eq!(
            name(Some("legacy.example"), "/albums/a/images", "POST").as_deref(),
            Some("legacy")
        );
        assert_eq!(name(None, "/x", "GET").as_deref(), Some("default"));
        assert_eq!(
            name(Some("other"), "/albums/a/images", "POST").as_deref(),
            Some("default")
        );
    }

    #[test]
    fn abilities_grant_only_true_for_the_right_resource() {
        let requirement = Requirement {
            resource: Resource::parse("{album}"),
            access: "image_upload".into(),
        };
        let raw = RawValue::from_string(r#"{"A":{"Access":{"image_upload":true,"see":true}},"B":{"Access":{"image_upload":false}}}"#.into()).unwrap();
        assert!(grants(Some(&raw), &requirement, &[("album", "A")]));
        assert!(!grants(Some(&raw), &requirement, &[("album", "B")]));
        assert!(!grants(Some(&raw), &requirement, &[("album", "C")]));
        assert!(!grants(Some(&raw), &requirement, &[]));
        assert!(!grants(None, &requirement, &[("album", "A")]));
        let fixed = Requirement {
            resource: Resource::parse("A"),
            access: "see".into(),
        };
        assert!(grants(Some(&raw), &fixed, &[]));
        let truthy = RawValue::from_string(r#"{"A":{"Access":{"see":"yes"}}}"#.into()).unwrap();
        assert!(!grants(Some(&truthy), &fixed, &[]));
    }
}
