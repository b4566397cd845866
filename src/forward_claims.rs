//! Claims the application gets as headers: a map from a JSON pointer into the verified claims
//! (RFC 6901, `{param}` filled from the route, `/abilities/{album}/Access`) to a header name.
//! Pure: claims and route parameters in, header values out.

use serde_json::Value;

use crate::request::path::ParamValue;
use crate::token::{is_identity, Claims};

/// Where in the claims: `/claim/nested/{param}` (RFC 6901, `{param}` from the route).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPointer {
    /// The pointer's segments, unescaped; `{name}` segments are route parameters.
    segments: Vec<String>,
}

/// One mapping: where in the claims, and which header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHeader {
    /// Where in the claims.
    pub pointer: ClaimPointer,
    /// The header name, lower case.
    pub header: String,
}

/// A claim as a header value, or why the request goes without the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimValue {
    /// The pointer finds nothing (or names a parameter the route lacks).
    Absent,
    /// The value, ready to send.
    Header(String),
    /// A string no header value can carry unchanged (a control character, white space at an
    /// end, empty): left out, never a failed request.
    Unsendable,
}

/// Why a mapping was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMapError(pub String);

impl ClaimPointer {
    /// Parses `/claim/nested/{param}`.
    pub fn parse(pointer: &str) -> Result<ClaimPointer, ClaimMapError> {
        let rest = pointer.strip_prefix('/').ok_or_else(|| {
            ClaimMapError(format!(
                "{pointer:?} is no JSON pointer: it must start with /"
            ))
        })?;
        let segments: Vec<String> = rest
            .split('/')
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect();
        if segments[0].is_empty() || segments[0].starts_with('{') {
            return Err(ClaimMapError(format!(
                "{pointer:?} must name a claim first, like /abilities/{{album}}/Access"
            )));
        }
        Ok(ClaimPointer { segments })
    }

    /// The top-level claim the pointer starts at.
    pub fn claim(&self) -> &str {
        &self.segments[0]
    }

    /// The value in `claims` on a route with `params`: a string as it is, anything else as
    /// compact JSON; `None` when the pointer finds nothing or names a parameter the route lacks.
    pub fn value(&self, claims: &Claims, params: &[(&str, ParamValue<'_>)]) -> Option<Value> {
        let claim: Value = serde_json::from_str(claims.get(&self.segments[0])?).ok()?;
        let mut pointer = String::new();
        for segment in &self.segments[1..] {
            let name = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}'));
            let part = match name {
                Some(param) => params
                    .iter()
                    .find(|(n, _)| *n == param)
                    .and_then(|(_, v)| v.value.as_deref())?
                    .to_owned(),
                None => segment.clone(),
            };
            pointer.push('/');
            pointer.push_str(&part.replace('~', "~0").replace('/', "~1"));
        }
        claim.pointer(&pointer).cloned()
    }

    /// [`ClaimPointer::value`] as text: a string as it is, anything else as compact JSON.
    pub fn text(&self, claims: &Claims, params: &[(&str, ParamValue<'_>)]) -> Option<String> {
        Some(match self.value(claims, params)? {
            Value::String(s) => s,
            other => other.to_string(),
        })
    }
}

/// `value` as a header value: a string as it is when a header carries it unchanged; anything
/// else as compact JSON with DEL escaped (`\u007f`, which serde_json leaves raw, inside a
/// string where the escape means the same), then checked against the header-value grammar.
fn header_value(value: Value) -> ClaimValue {
    let text = match value {
        Value::String(s) if is_identity(&s) => s,
        Value::String(_) => return ClaimValue::Unsendable,
        other => other.to_string().replace('\u{7f}', "\\u007f"),
    };
    match is_header_value(text.as_bytes()) {
        true => ClaimValue::Header(text),
        false => ClaimValue::Unsendable,
    }
}

/// Headers no claim may become: tokengate sets them, or they frame the connection, the message
/// or the client's credentials, and Pingora or the application acts on them before any route.
const OWNED: [&str; 18] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "http2-settings",
    "proxy-authorization",
    "proxy-authenticate",
    "authorization",
    "x-request-id",
    "x-token",
    "forwarded",
    "x-real-ip",
];

/// Words in the names of `X-` headers that frameworks, servers and gateways read: method and
/// path overrides (`X-HTTP-Method-Override`, `X-Original-URL`, `X-Rewrite-URL`), client
/// addresses (`X-Forwarded-*`, `X-Client-IP`, `X-Cluster-Client-IP`, `X-Remote-Addr`), forgery
/// and XHR markers (`X-CSRF-Token`, `X-XSRF-TOKEN`, `X-Requested-With`), identities and
/// credentials (`X-Remote-User`, `X-Auth-Request-User`, `X-Auth-Token`), server internals
/// (`X-Accel-Redirect`, `X-Sendfile`).
const READ_BY_FRAMEWORKS: [&str; 18] = [
    "method",
    "override",
    "original",
    "rewrite",
    "forwarded",
    "client",
    "real-ip",
    "remote",
    "originating",
    "csrf",
    "xsrf",
    "requested-with",
    "auth",
    "user",
    "token",
    "session",
    "accel",
    "sendfile",
];

/// Why `header` (lower case) cannot carry a claim, if it cannot. No claim becomes a header
/// tokengate sets or one that frames the connection or the message. A claim a permission can
/// set (`issuer_only: false`) is the caller's to choose, so it may only become an `X-`
/// extension header outside the families frameworks read ([`READ_BY_FRAMEWORKS`]): a standard
/// field (`Content-Type`, `Content-Encoding`, `True-Client-IP`, …) or an override header would
/// let a caller change which request the application serves.
pub fn unfit_header(header: &str, identity_header: &str, issuer_only: bool) -> Option<String> {
    if header == identity_header || OWNED.contains(&header) || header.starts_with("x-forwarded-") {
        return Some("is a header tokengate sets itself or one that frames the request".into());
    }
    if issuer_only {
        return None;
    }
    const CHOOSE: &str = "a claim a permission can set may only go to an X- header no framework \
                          reads (or map a claim only the session token's issuer sets)";
    let Some(name) = header.strip_prefix("x-") else {
        return Some(format!(
            "is a standard header the HTTP stack or the framework reads; {CHOOSE}"
        ));
    };
    READ_BY_FRAMEWORKS
        .iter()
        .find(|word| name.contains(*word))
        .map(|word| format!("is read by frameworks (`{word}`: an override, an address, a credential or a marker); {CHOOSE}"))
}

/// RFC 9110 §5.5 field-value: visible ASCII, obs-text, and space or tab inside, never at an
/// end; what `http::HeaderValue` accepts, and what arrives unchanged.
fn is_header_value(value: &[u8]) -> bool {
    let inner = |b: &u8| matches!(b, b'\t' | 0x20..=0x7e | 0x80..=0xff);
    let edge = |b: Option<&u8>| b.is_none_or(|b| !matches!(b, b' ' | b'\t'));
    value.iter().all(inner) && edge(value.first()) && edge(value.last())
}

impl ClaimHeader {
    /// Parses `pointer` for `header`.
    pub fn parse(pointer: &str, header: &str) -> Result<ClaimHeader, ClaimMapError> {
        let pointer = ClaimPointer::parse(pointer)?;
        let header = header.trim().to_ascii_lowercase();
        let valid = !header.is_empty()
            && header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid {
            return Err(ClaimMapError(format!("{header:?} is not a header name")));
        }
        Ok(ClaimHeader { pointer, header })
    }

    /// The header value for `claims` on a route with `params` (see [`ClaimPointer::value`]).
    pub fn value(&self, claims: &Claims, params: &[(&str, ParamValue<'_>)]) -> ClaimValue {
        match self.pointer.value(claims, params) {
            Some(value) => header_value(value),
            None => ClaimValue::Absent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::verify::tests::{ring, sign_raw, SECRET};
    use crate::token::Settings;
    use jsonwebtoken::Algorithm;
    use std::borrow::Cow;

    fn claims(json: &str) -> Claims {
        let token = sign_raw(r#"{"alg":"HS256"}"#, json, Algorithm::HS256, SECRET);
        crate::token::verify::verify(&token, &ring(&[Algorithm::HS256]), &Settings::default(), 1)
            .unwrap()
    }

    #[test]
    fn pointers_fill_route_parameters_and_serialize_compactly() {
        let c = claims(
            r#"{"exp":9,"user_id":"u","Id":"a/1","abilities":{"a/1":{"Access":{"see":true, "image_list":false}}},"n":7}"#,
        );
        let album = [(
            "album",
            ParamValue {
                value: Some(Cow::Borrowed("a/1")),
                last: false,
            },
        )];
        let value = |p: &str| match ClaimHeader::parse(p, "X-H").unwrap().value(&c, &album) {
            ClaimValue::Header(v) => Some(v),
            _ => None,
        };
        assert_eq!(value("/Id").as_deref(), Some("a/1"));
        assert_eq!(
            value("/abilities/{album}/Access").as_deref(),
            Some(r#"{"see":true,"image_list":false}"#)
        );
        assert_eq!(value("/n").as_deref(), Some("7"));
        assert_eq!(value("/abilities/{other}/Access"), None);
        assert_eq!(value("/missing"), None);
        assert_eq!(value("/abilities/b/Access"), None);
        let odd = claims(r#"{"exp":9,"user_id":"u","s":"line\nbreak"}"#);
        assert_eq!(
            ClaimHeader::parse("/s", "X-S").unwrap().value(&odd, &[]),
            ClaimValue::Unsendable
        );
    }

    #[test]
    fn every_character_in_a_claim_becomes_a_header_value_or_is_left_out() {
        for code in 0u32..=0xff {
            let c = char::from_u32(code).unwrap();
            // JSON text of a string holding `a`, the character, `b`: escaped where JSON must.
            let quoted = serde_json::to_string(&format!("a{c}b")).unwrap();
            let c = claims(&format!(
                r#"{{"exp":9,"user_id":"u","s":{quoted},"o":{{{quoted}:1}},"a":[{quoted}],"n":{{"x":[{{"y":{quoted}}}]}}}}"#
            ));
            for pointer in ["/s", "/o", "/a", "/n"] {
                let mapping = ClaimHeader::parse(pointer, "X-C").unwrap();
                let original = mapping.pointer.value(&c, &[]).unwrap();
                match mapping.value(&c, &[]) {
                    ClaimValue::Header(v) => {
                        assert!(is_header_value(v.as_bytes()), "{code:#x} {pointer}: {v:?}");
                        #[cfg(feature = "server")]
                        assert!(
                            http::HeaderValue::from_str(&v).is_ok(),
                            "{code:#x} {pointer}"
                        );
                        // The header means what the claim said.
                        let read = match pointer {
                            "/s" => Value::String(v.clone()),
                            _ => serde_json::from_str(&v).unwrap(),
                        };
                        assert_eq!(read, original, "{code:#x} {pointer}");
                    }
                    // Only a bare string with a control character is left out; JSON always goes.
                    ClaimValue::Unsendable => assert!(
                        pointer == "/s" && char::from_u32(code).unwrap().is_control(),
                        "{code:#x} {pointer} left out"
                    ),
                    ClaimValue::Absent => panic!("{code:#x} {pointer} not found"),
                }
            }
        }
    }

    #[test]
    fn bad_mappings_are_refused() {
        assert!(ClaimHeader::parse("Id", "X-Id").is_err());
        assert!(ClaimHeader::parse("/", "X-Id").is_err());
        assert!(ClaimHeader::parse("/{album}", "X-Id").is_err());
        assert!(ClaimHeader::parse("/Id", "X Id").is_err());
        assert_eq!(
            ClaimHeader::parse("/Id", "X-Album-Id").unwrap().header,
            "x-album-id"
        );
    }
}
