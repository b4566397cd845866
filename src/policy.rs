//! `decide(canonical request, routes, authentication) → verdict`: which route a forwarded
//! request takes and whether tokengate refuses it. Pure, and tested as a table.

use crate::error::{ApiError, ErrorCode};
use crate::request::Canonical;
use crate::routes::{self, AuthMode, Decision, ParamValue, Route, RouteTable};
use crate::token::Caller;

/// What the request's `Authorization` header proved.
#[derive(Debug)]
pub enum Authentication<'t> {
    /// No `Authorization` header.
    Missing,
    /// A token that does not verify, or may not be used (too long, no usable subject).
    Invalid(ApiError),
    /// A verified caller.
    Valid(Caller<'t>),
}

impl Authentication<'_> {
    /// The refusal owed when a token is needed and this is not a valid one.
    fn refusal(&self) -> Option<ApiError> {
        const MISSING: ApiError =
            ApiError::new(ErrorCode::MissingToken, "This route requires a token.");
        match self {
            Authentication::Missing => Some(MISSING),
            Authentication::Invalid(error) => Some(*error),
            Authentication::Valid(_) => None,
        }
    }
}

/// What to do with the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Forward it (with the caller's identity, when authentication is valid).
    Forward,
    /// Answer it with this error; the upstream never sees it.
    Refuse(ApiError),
}

/// The decision about one forwarded request.
#[derive(Debug)]
pub struct Verdict<'r, 'p> {
    /// The route it matched (the catch-all at worst).
    pub route: &'r Route,
    /// The route's path parameters.
    pub params: Vec<(&'r str, ParamValue<'p>)>,
    /// Forward or refuse.
    pub action: Action,
    /// The ability check, on routes that require one.
    pub enforcement: Option<Decision>,
}

const FORBIDDEN: ApiError = ApiError::new(
    ErrorCode::Forbidden,
    "The token does not grant the ability this route requires.",
);

/// Routes `request` and decides: a route's ability (401 without a valid token, 403 without the
/// ability, forwarded anyway in shadow mode), then its auth mode (401 when required).
pub fn decide<'r, 'p>(
    request: &'p Canonical<'_>,
    table: &'r RouteTable,
    auth: &Authentication<'_>,
) -> Option<Verdict<'r, 'p>> {
    let matched = table.find(request.host_name(), &request.path, request.effective_method)?;
    let route = matched.route;
    let mut enforcement = None;
    if let Some(requirement) = &route.require {
        let granted = match auth {
            Authentication::Valid(caller) => {
                routes::grants(caller.claims.get("abilities"), requirement, &matched.params)
            }
            _ => false,
        };
        let decision = match (granted, route.shadow) {
            (true, _) => Decision::Allow,
            (false, true) => Decision::ShadowDeny,
            (false, false) => Decision::Deny,
        };
        enforcement = Some(decision);
        if decision == Decision::Deny {
            return Some(Verdict {
                route,
                params: matched.params,
                action: Action::Refuse(auth.refusal().unwrap_or(FORBIDDEN)),
                enforcement,
            });
        }
    }
    let action = match (route.auth, auth.refusal()) {
        (AuthMode::Required, Some(error)) => Action::Refuse(error),
        _ => Action::Forward,
    };
    Some(Verdict {
        route,
        params: matched.params,
        action,
        enforcement,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{canonicalize, Head, Options};
    use crate::routes::{PathTemplate, Requirement, Resource};
    use crate::token::verify::tests::{ring, sign_raw, SECRET};
    use crate::token::{SharedKeyring, TokenService};
    use jsonwebtoken::Algorithm;

    fn route(name: &str, path: &str, methods: &[&str], auth: AuthMode) -> Route {
        Route {
            name: name.into(),
            host: None,
            path: PathTemplate::parse(path).unwrap(),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            upstream: 0,
            auth,
            require: None,
            shadow: false,
            limit: None,
        }
    }

    fn requiring(mut r: Route, access: &str, shadow: bool) -> Route {
        r.require = Some(Requirement {
            resource: Resource::parse("{album}"),
            access: access.into(),
        });
        r.shadow = shadow;
        r
    }

    fn table() -> RouteTable {
        use AuthMode::*;
        RouteTable::new(
            vec![
                requiring(
                    route("upload", "/albums/{album}/images", &["POST"], Passthrough),
                    "image_upload",
                    false,
                ),
                requiring(
                    route("list", "/albums/{album}/images", &["GET"], Passthrough),
                    "image_list",
                    false,
                ),
                requiring(
                    route("fullscreen", "/albums/{album}/fullscreen", &[], Passthrough),
                    "fullscreen",
                    true,
                ),
                route("private", "/private", &[], Required),
            ],
            route("default", "/", &[], Passthrough),
            false,
        )
        .unwrap()
    }

    fn service() -> TokenService {
        TokenService {
            keys: SharedKeyring::new(ring(&[Algorithm::HS256])),
            settings: Default::default(),
            permission: Default::default(),
            minting: Default::default(),
            signer: None,
            minted_keys: None,
            issuers: Vec::new(),
        }
    }

    const ABILITIES: &str = r#"{"exp":2000,"user_id":"u","abilities":{"a":{"Access":{"image_upload":true,"image_list":false}}}}"#;

    #[test]
    fn decision_matrix() {
        let table = table();
        let svc = service();
        let token = format!(
            "Bearer {}",
            sign_raw(r#"{"alg":"HS256"}"#, ABILITIES, Algorithm::HS256, SECRET)
        );
        let bare = format!(
            "Bearer {}",
            sign_raw(
                r#"{"alg":"HS256"}"#,
                r#"{"exp":2000,"user_id":"u"}"#,
                Algorithm::HS256,
                SECRET
            )
        );
        let forged = format!(
            "Bearer {}",
            sign_raw(
                r#"{"alg":"HS256"}"#,
                ABILITIES,
                Algorithm::HS256,
                "another-secret-another-secret-0000"
            )
        );
        type Want = (&'static str, Option<ErrorCode>, Option<Decision>);
        let cases: [(&str, &str, Option<&str>, Want); 16] = [
            (
                "POST",
                "/albums/a/images",
                Some(&token),
                ("upload", None, Some(Decision::Allow)),
            ),
            (
                "POST",
                "/ALBUMS/a/images.json",
                Some(&token),
                ("upload", None, Some(Decision::Allow)),
            ),
            (
                "POST",
                "/albums/b/images",
                Some(&token),
                ("upload", Some(ErrorCode::Forbidden), Some(Decision::Deny)),
            ),
            (
                "POST",
                "/albums/a/images",
                Some(&bare),
                ("upload", Some(ErrorCode::Forbidden), Some(Decision::Deny)),
            ),
            (
                "POST",
                "/albums/a/images",
                None,
                (
                    "upload",
                    Some(ErrorCode::MissingToken),
                    Some(Decision::Deny),
                ),
            ),
            (
                "POST",
                "/albums/a/images",
                Some(&forged),
                (
                    "upload",
                    Some(ErrorCode::InvalidToken),
                    Some(Decision::Deny),
                ),
            ),
            (
                "GET",
                "/albums/a/images",
                Some(&token),
                ("list", Some(ErrorCode::Forbidden), Some(Decision::Deny)),
            ),
            (
                "HEAD",
                "/albums/a/images",
                Some(&token),
                ("list", Some(ErrorCode::Forbidden), Some(Decision::Deny)),
            ),
            (
                "GET",
                "/albums/a/fullscreen",
                Some(&token),
                ("fullscreen", None, Some(Decision::ShadowDeny)),
            ),
            (
                "GET",
                "/albums/a/fullscreen",
                None,
                ("fullscreen", None, Some(Decision::ShadowDeny)),
            ),
            (
                "GET",
                "/private/x",
                None,
                ("private", Some(ErrorCode::MissingToken), None),
            ),
            (
                "GET",
                "/private/x",
                Some(&forged),
                ("private", Some(ErrorCode::InvalidToken), None),
            ),
            ("GET", "/private/x", Some(&bare), ("private", None, None)),
            ("GET", "/public", None, ("default", None, None)),
            ("GET", "/public", Some(&forged), ("default", None, None)),
            (
                "DELETE",
                "/albums/a/images",
                Some(&token),
                ("default", None, None),
            ),
        ];
        for (method, path, authorization, (want_route, want_error, want_decision)) in cases {
            let head = Head {
                method,
                target: path.as_bytes(),
                http11: true,
                host: Some(b"images.example"),
                override_headers: &[],
                transfer_encoding: &[],
            };
            let request = canonicalize(&head, Options::default()).unwrap();
            let values: Vec<&[u8]> = authorization.iter().map(|a| a.as_bytes()).collect();
            let auth = match values.is_empty() {
                true => Authentication::Missing,
                false => match svc.authenticate(&values, 1500) {
                    Ok(caller) => Authentication::Valid(caller),
                    Err(e) => Authentication::Invalid(e),
                },
            };
            let verdict = decide(&request, &table, &auth).unwrap();
            let error = match verdict.action {
                Action::Forward => None,
                Action::Refuse(e) => Some(e.code),
            };
            assert_eq!(
                (verdict.route.name.as_str(), error, verdict.enforcement),
                (want_route, want_error, want_decision),
                "{method} {path} {authorization:?}"
            );
        }
    }
}
