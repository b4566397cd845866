//! The route table: host + canonical path + method → route (upstream group, auth mode, required
//! ability). Pure: matching and precedence take plain values, so both are unit-tested here.
//!
//! Matching is as lenient as the most lenient application router, so no spelling an app would
//! serve slips past a rule: static segments ignore case (Express), the last segment may carry a
//! `.format` suffix (Rails' `(.:format)`), and parameters are the decoded segment. The most
//! specific route wins: see [`Route::precedence`].

use std::cmp::Reverse;
use std::fmt;

use serde::Deserialize;

use crate::forward_claims::ClaimPointer;
use crate::limits::RateLimit;
pub use crate::request::path::ParamValue;
use crate::request::path::{decode_segment, segments};
use crate::token::object::member;

/// Whether forwarded requests must carry a valid token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Forward everything; a valid token only adds identity.
    Passthrough,
    /// Answer 401 for a missing or invalid token; the upstream never sees the request.
    Required,
}

impl AuthMode {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Passthrough => "passthrough",
            AuthMode::Required => "required",
        }
    }
}

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

/// Why a template or a route table was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError(pub String);

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PathTemplate {
    /// Parses `/a/{b}/c`; the path must start with `/`, a parameter fill a whole segment.
    pub fn parse(template: &str) -> Result<PathTemplate, RouteError> {
        let rest = template
            .strip_prefix('/')
            .ok_or_else(|| RouteError(format!("{template:?} must start with /")))?;
        let segments = rest
            .split('/')
            .filter(|s| !s.is_empty())
            .map(
                |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) if !name.is_empty() && !name.contains(['{', '}']) => {
                        Ok(Segment::Param(name.to_owned()))
                    }
                    _ if s.contains(['{', '}']) => Err(RouteError(format!(
                        "{template:?}: a parameter must be a whole segment like {{album}}"
                    ))),
                    _ if s == "." || s == ".." || s.contains(['%', ';']) => {
                        Err(RouteError(format!(
                    "{template:?}: write literal segments decoded, without dot segments or ;"
                )))
                    }
                    _ => Ok(Segment::Literal(s.to_owned())),
                },
            )
            .collect::<Result<_, _>>()?;
        Ok(PathTemplate { segments })
    }

    /// The template `/`, which every path starts with.
    pub fn root() -> PathTemplate {
        PathTemplate {
            segments: Vec::new(),
        }
    }

    /// The parameters, when the canonical `path` starts with this template's segments
    /// (`exact`: has exactly them). With `semicolons`, `;params` of a segment are ignored.
    pub fn matches<'p>(
        &self,
        path: &'p str,
        exact: bool,
        semicolons: bool,
    ) -> Option<Vec<(&str, ParamValue<'p>)>> {
        // One pass, which a template's first literal usually ends at once.
        let mut parts = segments(path)
            .map(|s| match semicolons {
                true => s.split(';').next().unwrap_or(s),
                false => s,
            })
            .peekable();
        let mut params = Vec::new();
        for segment in &self.segments {
            let part = parts.next()?;
            let last = parts.peek().is_none();
            let decoded = decode_segment(part);
            match segment {
                Segment::Literal(lit) => {
                    if !decoded.is_some_and(|d| literal_matches(lit, &d, last)) {
                        return None;
                    }
                }
                Segment::Param(name) => params.push((
                    name.as_str(),
                    ParamValue {
                        value: decoded,
                        last,
                    },
                )),
            }
        }
        if exact && parts.next().is_some() {
            return None;
        }
        Some(params)
    }

    /// Whether the template names parameter `name`.
    pub fn has_param(&self, name: &str) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Param(p) if p == name))
    }

    /// Whether every path this template matches, `other` matches too (so `other`, ranked first,
    /// would hide this one).
    fn covered_by(&self, other: &PathTemplate) -> bool {
        other.segments.len() <= self.segments.len()
            && other
                .segments
                .iter()
                .zip(&self.segments)
                .all(|(theirs, ours)| match (theirs, ours) {
                    (Segment::Param(_), _) => true,
                    (Segment::Literal(a), Segment::Literal(b)) => a.eq_ignore_ascii_case(b),
                    (Segment::Literal(_), Segment::Param(_)) => false,
                })
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.segments.is_empty() {
            return f.write_str("/");
        }
        for segment in &self.segments {
            match segment {
                Segment::Literal(l) => write!(f, "/{l}")?,
                Segment::Param(p) => write!(f, "/{{{p}}}")?,
            }
        }
        Ok(())
    }
}

/// A static segment matches its literal in any case, and on the path's last segment with any
/// `.format` suffix.
fn literal_matches(literal: &str, segment: &str, last: bool) -> bool {
    if segment.eq_ignore_ascii_case(literal) {
        return true;
    }
    last && segment.len() > literal.len()
        && segment.is_char_boundary(literal.len())
        && segment[..literal.len()].eq_ignore_ascii_case(literal)
        && segment.as_bytes()[literal.len()] == b'.'
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

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Fixed(name) => f.write_str(name),
            Resource::Param(name) => write!(f, "{{{name}}}"),
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

impl fmt::Display for Requirement {
    /// `resource:access`, as `-t -v` and `explain` print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.resource, self.access)
    }
}

/// What a route's request limit counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The verified subject.
    Subject,
    /// A path parameter the route's `require` checked the grant against (`param:album`).
    Param(String),
    /// A claim only the session token's issuer sets (`claim:/iss`).
    Claim(ClaimPointer),
}

/// A limit on a route's requests per key; requests without a valid token count by client
/// address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteLimit {
    /// What the limit counts by.
    pub key: LimitKey,
    /// How many, how often.
    pub rate: RateLimit,
}

/// One route of the table.
#[derive(Debug, Clone)]
pub struct Route {
    /// Configured name: the `route` label of enforcement metrics.
    pub name: String,
    /// Host to match (lower case, no trailing dot; port ignored); `None` matches any.
    pub host: Option<String>,
    /// Path template, matched as a prefix.
    pub path: PathTemplate,
    /// Methods to match, upper case; empty matches any. `GET` also matches `HEAD`.
    pub methods: Vec<String>,
    /// Index of the upstream group.
    pub upstream: usize,
    /// Whether a valid token is required (the route's own mode, else the global one).
    pub auth: AuthMode,
    /// Ability the request's token must grant.
    pub require: Option<Requirement>,
    /// Log and count refusals without refusing.
    pub shadow: bool,
    /// Requests allowed per key.
    pub limit: Option<RouteLimit>,
}

impl Route {
    /// Ranking, highest first: a named host over any host; more path segments; at the first
    /// segment where two templates differ, a literal over a parameter; listed methods over any
    /// method. Ties keep the configuration's order.
    fn precedence(&self) -> impl Ord {
        let literals: Vec<bool> = self
            .path
            .segments
            .iter()
            .map(|s| matches!(s, Segment::Literal(_)))
            .collect();
        (
            self.host.is_some(),
            self.path.segments.len(),
            literals,
            !self.methods.is_empty(),
        )
    }

    fn matches_method(&self, method: &str) -> bool {
        self.methods.is_empty()
            || self
                .methods
                .iter()
                .any(|m| m == method || (method == "HEAD" && m == "GET"))
    }

    /// Whether every request this route matches, `other` matches too.
    fn covered_by(&self, other: &Route) -> bool {
        let host = other.host.is_none() || other.host == self.host;
        let methods = other.methods.is_empty()
            || (!self.methods.is_empty() && self.methods.iter().all(|m| other.matches_method(m)));
        host && methods && self.path.covered_by(&other.path)
    }
}

/// A matched route and its path parameters.
#[derive(Debug)]
pub struct Matched<'r, 'p> {
    /// The route.
    pub route: &'r Route,
    /// Path parameters by name.
    pub params: Vec<(&'r str, ParamValue<'p>)>,
}

/// The routes in precedence order, the catch-all last.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<Route>,
    semicolons: bool,
}

impl RouteTable {
    /// Ranks `routes` (configuration order breaks ties) and appends `catch_all`, which matches
    /// everything; refuses a route that could never be chosen.
    pub fn new(
        mut routes: Vec<Route>,
        catch_all: Route,
        semicolons: bool,
    ) -> Result<RouteTable, RouteError> {
        routes.sort_by_cached_key(|r| Reverse(r.precedence()));
        for (i, route) in routes.iter().enumerate() {
            if let Some(hider) = routes[..i].iter().find(|r| route.covered_by(r)) {
                return Err(RouteError(format!(
                    "route {:?} can never be chosen: route {:?} matches every request it does \
                     and ranks first",
                    route.name, hider.name
                )));
            }
        }
        routes.push(catch_all);
        Ok(RouteTable { routes, semicolons })
    }

    /// The routes in the order they are tried.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Where `route` (one of this table's) ranks.
    pub fn rank_of(&self, route: &Route) -> usize {
        self.routes
            .iter()
            .position(|r| std::ptr::eq(r, route))
            .unwrap_or(self.routes.len())
    }

    /// The highest-ranked route that matches `host`, the canonical `path` and `method`.
    pub fn find<'r, 'p>(
        &'r self,
        host: Option<&str>,
        path: &'p str,
        method: &str,
    ) -> Option<Matched<'r, 'p>> {
        self.routes.iter().find_map(|route| {
            let host_ok = route
                .host
                .as_deref()
                .is_none_or(|want| host.is_some_and(|h| h.eq_ignore_ascii_case(want)));
            if !(host_ok && route.matches_method(method)) {
                return None;
            }
            let params = route.path.matches(path, false, self.semicolons)?;
            Some(Matched { route, params })
        })
    }

    /// The effective table, one route a line, in the order routes are tried.
    pub fn describe(&self, group_names: &[String]) -> String {
        let mut out = String::new();
        for (rank, r) in self.routes.iter().enumerate() {
            let methods = match r.methods.is_empty() {
                true => "*".to_owned(),
                false => r.methods.join(","),
            };
            let require = r
                .require
                .as_ref()
                .map_or("-".to_owned(), Requirement::to_string);
            out.push_str(&format!(
                "{:>2} {:<14} host={:<20} {:<12} {:<32} upstream={:<10} auth={:<11} require={}{}\n",
                rank + 1,
                r.name,
                r.host.as_deref().unwrap_or("*"),
                methods,
                r.path.to_string(),
                group_names.get(r.upstream).map_or("?", String::as_str),
                r.auth.as_str(),
                require,
                if r.shadow { " (shadow)" } else { "" },
            ));
        }
        out
    }
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
/// request with `params`: for a parameter, every reading of it must be granted.
pub fn grants(
    abilities: Option<&str>,
    requirement: &Requirement,
    params: &[(&str, ParamValue<'_>)],
) -> bool {
    let resources: Vec<&str> = match &requirement.resource {
        Resource::Fixed(name) => vec![name.as_str()],
        Resource::Param(param) => match params.iter().find(|(name, _)| name == param) {
            Some((_, value)) => value.readings(),
            None => return false,
        },
    };
    let Some(abilities) = abilities else {
        return false;
    };
    // Only the path to the one ability is read: a token granting many albums costs no more.
    let granted = |resource: &str| {
        member(abilities, resource)
            .and_then(|access| member(access, "Access"))
            .and_then(|access| member(access, &requirement.access))
            == Some("true")
    };
    !resources.is_empty() && resources.iter().all(|resource| granted(resource))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn route(name: &str, host: Option<&str>, path: &str, methods: &[&str]) -> Route {
        Route {
            name: name.into(),
            host: host.map(str::to_owned),
            path: PathTemplate::parse(path).unwrap(),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            upstream: 0,
            auth: AuthMode::Passthrough,
            require: None,
            shadow: false,
            limit: None,
        }
    }

    fn table(routes: Vec<Route>) -> Result<RouteTable, RouteError> {
        RouteTable::new(routes, route("default", None, "/", &[]), false)
    }

    fn param(value: &str, last: bool) -> ParamValue<'_> {
        ParamValue {
            value: Some(Cow::Borrowed(value)),
            last,
        }
    }

    #[test]
    fn templates_match_segment_prefixes_case_formats_and_decoded_params() {
        let t = PathTemplate::parse("/albums/{album}/images").unwrap();
        let m = |path| t.matches(path, false, false);
        assert_eq!(
            m("/albums/a1/images"),
            Some(vec![("album", param("a1", false))])
        );
        assert_eq!(
            m("/albums/a1/images/7/caption"),
            Some(vec![("album", param("a1", false))])
        );
        assert_eq!(
            m("/ALBUMS/a1/Images"),
            Some(vec![("album", param("a1", false))])
        );
        assert_eq!(
            m("/albums/a1/images.json"),
            Some(vec![("album", param("a1", false))])
        );
        assert_eq!(
            m("/albums/a1/images/"),
            Some(vec![("album", param("a1", false))])
        );
        assert_eq!(
            m("/albums/summer%202024/images"),
            Some(vec![("album", param("summer 2024", false))])
        );
        assert_eq!(m("/albums/a1/imagesX"), None);
        assert_eq!(m("/albums/a1/images.json/x"), None);
        assert_eq!(m("/albums/a1"), None);
        let album = PathTemplate::parse("/albums/{album}").unwrap();
        assert_eq!(
            album.matches("/albums/b.json", false, false),
            Some(vec![("album", param("b.json", true))])
        );
        assert_eq!(
            param("b.tar.gz", true).readings(),
            ["b.tar.gz", "b", "b.tar"]
        );
        assert_eq!(param("b.x", false).readings(), ["b.x"]);
        let token = PathTemplate::parse("/api/v1/token").unwrap();
        for path in [
            "/api/v1/token",
            "/API/V1/Token",
            "/api/v1/token/",
            "/api/v1/token.json",
            "/api/v1/token.",
        ] {
            assert!(token.matches(path, true, false).is_some(), "{path}");
        }
        for path in [
            "/api/v1/token/x",
            "/api/v1/tokens",
            "/api/v1",
            "/api/v1/token%2F",
            "/api/v2/token",
            "/",
            "",
        ] {
            assert!(token.matches(path, true, false).is_none(), "{path}");
        }
        assert!(token.matches("/api/v1/token;x", true, true).is_some());
        let root = PathTemplate::parse("/").unwrap();
        assert_eq!(root.matches("/", true, false), Some(vec![]));
        assert_eq!(root.matches("/a", true, false), None);
        assert_eq!(root.matches("/a", false, false), Some(vec![]));
        assert!(PathTemplate::parse("albums").is_err());
        assert!(PathTemplate::parse("/albums/x{id}").is_err());
        assert!(PathTemplate::parse("/albums/{}").is_err());
        assert!(PathTemplate::parse("/albums/a%20b").is_err());
    }

    #[test]
    fn the_most_specific_route_wins() {
        let t = table(vec![
            route("album", None, "/albums/{album}", &["GET"]),
            route("list", None, "/albums/{album}/images", &["GET"]),
            route("upload", None, "/albums/{album}/images", &["POST"]),
            route("special", None, "/albums/special/images", &[]),
            route("any-images", None, "/albums/{album}/images", &[]),
            route("legacy", Some("legacy.example"), "/", &[]),
        ])
        .unwrap();
        let name = |host, path, method| t.find(host, path, method).map(|m| m.route.name.clone());
        for (host, path, method, want) in [
            (None, "/albums/a/images", "GET", "list"),
            (None, "/albums/a/images", "HEAD", "list"),
            (None, "/albums/a/images", "POST", "upload"),
            (None, "/albums/a/images", "DELETE", "any-images"),
            (None, "/albums/a/fullscreen", "GET", "album"),
            (None, "/albums/a", "GET", "album"),
            (None, "/albums/a", "POST", "default"),
            (None, "/albums/special/images", "GET", "special"),
            (Some("legacy.example"), "/albums/a/images", "GET", "legacy"),
            (Some("other"), "/x", "GET", "default"),
        ] {
            assert_eq!(
                name(host, path, method).as_deref(),
                Some(want),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn a_route_that_can_never_be_chosen_is_refused() {
        let err = table(vec![
            route("a", None, "/albums/{album}", &["GET"]),
            route("b", None, "/albums/{x}", &["GET"]),
        ])
        .unwrap_err();
        assert!(err.0.contains("route \"b\" can never be chosen"), "{err}");
        assert!(table(vec![
            route("any", None, "/albums/{album}", &[]),
            route("get", None, "/ALBUMS/{x}", &["GET", "HEAD"]),
        ])
        .is_ok());
        assert!(table(vec![
            route("get", None, "/albums/{album}", &["GET"]),
            route("head", None, "/albums/{x}", &["HEAD"]),
        ])
        .is_err());
        assert!(table(vec![
            route("host", Some("h"), "/a", &[]),
            route("any", None, "/a", &[]),
        ])
        .is_ok());
    }

    #[test]
    fn abilities_grant_only_true_for_every_reading_of_the_resource() {
        let requirement = Requirement {
            resource: Resource::parse("{album}"),
            access: "image_upload".into(),
        };
        let raw = r#"{"A":{"Access":{"image_upload":true,"see":true}},"B":{"Access":{"image_upload":false}},"A.json":{"Access":{"image_upload":true}}}"#;
        let grant = |value, last| grants(Some(raw), &requirement, &[("album", param(value, last))]);
        assert!(grant("A", false));
        assert!(grant("A.json", true));
        assert!(!grant("B", false));
        assert!(!grant("C", false));
        assert!(!grant("B.json", true));
        assert!(!grants(Some(raw), &requirement, &[]));
        assert!(!grants(None, &requirement, &[("album", param("A", false))]));
        let undecodable = ParamValue {
            value: None,
            last: false,
        };
        assert!(!grants(Some(raw), &requirement, &[("album", undecodable)]));
        let fixed = Requirement {
            resource: Resource::parse("A"),
            access: "see".into(),
        };
        assert!(grants(Some(raw), &fixed, &[]));
        let truthy = r#"{"A":{"Access":{"see":"yes"}}}"#;
        assert!(!grants(Some(truthy), &fixed, &[]));
        // A name sent twice at any step grants nothing: readers disagree on which one counts.
        for twice in [
            r#"{"A":{"Access":{"see":false,"see":true}}}"#,
            r#"{"A":{"Access":{"see":true},"Access":{"see":true}}}"#,
            r#"{"A":{"Access":{"see":true}},"A":{"Access":{"see":true}}}"#,
        ] {
            assert!(!grants(Some(twice), &fixed, &[]), "{twice}");
        }
        let spaced = r#"{ "A" : { "Access" : { "see" : true } } }"#;
        assert!(grants(Some(spaced), &fixed, &[]));
    }
}
