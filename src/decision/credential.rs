//! Where a request's session token is: the `Authorization` header, or else the configured
//! session cookie, which authorizes an unsafe method only on a same-site request, as Rails'
//! forgery protection would have it.

use http::header::{COOKIE, ORIGIN};
use pingora::http::RequestHeader;
use smallvec::SmallVec;

use super::head::authorization_values;
use crate::error::{ApiError, ErrorCode};
use crate::token::settings::CookieSettings;

/// A request's session token, as presented.
#[derive(Debug)]
pub enum Credential<'h> {
    /// No token at all.
    Missing,
    /// Every `Authorization` value (one is a token; several are refused when read).
    Authorization(SmallVec<[&'h [u8]; 2]>),
    /// The session cookie's value.
    Cookie(&'h str),
    /// A token that may not be used as presented.
    Refused(ApiError),
}

/// The session cookie came more than once: which one the app reads is the app's guess, and a
/// cookie set by a sibling domain (cookie tossing) must not win it.
const COOKIE_TWICE: ApiError = ApiError::new(
    ErrorCode::InvalidRequest,
    "The session cookie is sent more than once.",
);

/// A cookie's token on an unsafe method from another site: a forged cross-site request.
pub const CROSS_SITE: ApiError = ApiError::new(
    ErrorCode::Forbidden,
    "A session cookie authorizes this method only on a same-site request (Sec-Fetch-Site: \
     same-origin, or an allowed Origin); send the token in Authorization instead.",
);

/// The session token of `header`, for a request whose effective method is `method`: the
/// `Authorization` header wins; the cookie is read only without one.
pub fn credential<'h>(
    header: &'h RequestHeader,
    cookie: Option<&CookieSettings>,
    method: &str,
) -> Credential<'h> {
    let authorization: SmallVec<[&[u8]; 2]> = authorization_values(header);
    if !authorization.is_empty() {
        return Credential::Authorization(authorization);
    }
    let Some(settings) = cookie else {
        return Credential::Missing;
    };
    match session_cookie(header, &settings.name) {
        Err(refused) => Credential::Refused(refused),
        Ok(None) => Credential::Missing,
        Ok(Some(_)) if !is_safe(method) && !same_site(header, &settings.origins) => {
            Credential::Refused(CROSS_SITE)
        }
        Ok(Some(token)) => Credential::Cookie(token),
    }
}

/// The value of cookie `name` across every `Cookie` header; twice is refused.
fn session_cookie<'h>(header: &'h RequestHeader, name: &str) -> Result<Option<&'h str>, ApiError> {
    let mut found = None;
    let lines = header.headers.get_all(COOKIE).iter();
    let cookies = lines
        .filter_map(|line| line.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok);
    for cookie in cookies {
        if cookie.name_raw() != Some(name) {
            continue;
        }
        if found.is_some() {
            return Err(COOKIE_TWICE);
        }
        found = cookie.value_raw().filter(|v| !v.is_empty());
    }
    Ok(found)
}

/// RFC 9110 §9.2.1: methods that change nothing, which a forged request gains nothing by.
fn is_safe(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE")
}

/// Whether the browser says the request comes from this origin, or from one configured: a
/// request that shows neither (no `Sec-Fetch-Site`, no `Origin`) is not trusted to.
fn same_site(header: &RequestHeader, origins: &[String]) -> bool {
    let single = |name| {
        let mut values = header.headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(value), None) => Some(value.as_bytes()),
            _ => None,
        }
    };
    if single("sec-fetch-site").is_some_and(|site| site.eq_ignore_ascii_case(b"same-origin")) {
        return true;
    }
    single(ORIGIN.as_str()).is_some_and(|origin| {
        origins
            .iter()
            .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut header = RequestHeader::build(method, b"/albums/1/images", None).unwrap();
        for (name, value) in headers {
            header.append_header(name.to_string(), *value).unwrap();
        }
        header
    }

    fn settings() -> CookieSettings {
        CookieSettings {
            name: "session".into(),
            origins: vec!["https://app.example".into()],
        }
    }

    /// What each request presents, as a short name.
    fn presented(method: &str, headers: &[(&str, &str)]) -> String {
        let header = request(method, headers);
        let settings = settings();
        let shown = match credential(&header, Some(&settings), method) {
            Credential::Missing => "missing".into(),
            Credential::Authorization(values) => format!("authorization x{}", values.len()),
            Credential::Cookie(token) => format!("cookie {token}"),
            Credential::Refused(e) if e == CROSS_SITE => "cross-site".into(),
            Credential::Refused(e) => format!("refused {}", e.code),
        };
        shown
    }

    #[test]
    fn the_cookie_authorizes_unsafe_methods_only_from_the_same_site() {
        let cookie = ("cookie", "theme=dark; session=t.o.k");
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let table: &[Case] = &[
            ("GET", &[cookie], "cookie t.o.k"),
            ("HEAD", &[cookie], "cookie t.o.k"),
            ("POST", &[cookie], "cross-site"),
            (
                "DELETE",
                &[cookie, ("sec-fetch-site", "cross-site")],
                "cross-site",
            ),
            (
                "POST",
                &[cookie, ("sec-fetch-site", "same-site")],
                "cross-site",
            ),
            (
                "POST",
                &[cookie, ("sec-fetch-site", "same-origin")],
                "cookie t.o.k",
            ),
            (
                "PUT",
                &[cookie, ("sec-fetch-site", "SAME-ORIGIN")],
                "cookie t.o.k",
            ),
            (
                "POST",
                &[cookie, ("origin", "https://app.example")],
                "cookie t.o.k",
            ),
            (
                "PATCH",
                &[cookie, ("origin", "https://evil.example")],
                "cross-site",
            ),
            (
                "POST",
                &[cookie, ("origin", "https://app.example.evil")],
                "cross-site",
            ),
            ("POST", &[cookie, ("origin", "null")], "cross-site"),
            (
                "POST",
                &[
                    cookie,
                    ("origin", "https://app.example"),
                    ("origin", "https://app.example"),
                ],
                "cross-site",
            ),
            (
                "POST",
                &[
                    cookie,
                    ("sec-fetch-site", "cross-site"),
                    ("origin", "https://app.example"),
                ],
                "cookie t.o.k",
            ),
            // Authorization wins, the cookie is not even read.
            (
                "POST",
                &[cookie, ("authorization", "Bearer a.b.c")],
                "authorization x1",
            ),
            (
                "GET",
                &[("cookie", "session=a; session=b")],
                "refused invalid_request",
            ),
            (
                "GET",
                &[("cookie", "session=a"), ("cookie", "session=a")],
                "refused invalid_request",
            ),
            ("GET", &[("cookie", "Session=a; sessions=b")], "missing"),
            ("GET", &[("cookie", "session=")], "missing"),
            ("POST", &[("sec-fetch-site", "same-origin")], "missing"),
        ];
        for (method, headers, expected) in table {
            assert_eq!(
                presented(method, headers),
                *expected,
                "{method} {headers:?}"
            );
        }
    }

    #[test]
    fn without_a_cookie_setting_only_authorization_counts() {
        let header = request("GET", &[("cookie", "session=t.o.k")]);
        assert!(matches!(
            credential(&header, None, "GET"),
            Credential::Missing
        ));
    }
}
