//! `Authorization` header → the session token it names.

use crate::error::{ApiError, ErrorCode};

const MISSING: ApiError = ApiError::new(
    ErrorCode::MissingToken,
    "Send a session token as `Authorization: Bearer <jwt>` or `Token token=\"<jwt>\"`.",
);
const MULTIPLE_HEADERS: ApiError = ApiError::new(
    ErrorCode::InvalidRequest,
    "Send exactly one Authorization header.",
);
const TWO_TOKENS: ApiError = ApiError::new(
    ErrorCode::InvalidRequest,
    "The Authorization header names more than one token.",
);
const NOT_TEXT: ApiError = ApiError::new(
    ErrorCode::InvalidToken,
    "The token is not visible ASCII text.",
);

/// Finds the one token in the request's `Authorization` header values.
///
/// Accepts `Bearer <jwt>` and the Rails forms `Token token="<jwt>"`, `Token token=<jwt>` and
/// `Token <jwt>` (trailing `, key="value"` options ignored); the scheme is case-insensitive.
pub fn bearer_token<'a, I>(values: I) -> Result<&'a str, ApiError>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut values = values.into_iter();
    let value = values.next().ok_or(MISSING)?;
    if values.next().is_some() {
        return Err(MULTIPLE_HEADERS);
    }
    let value = std::str::from_utf8(value).map_err(|_| NOT_TEXT)?.trim();
    let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    let rest = rest.trim();
    let token = if scheme.eq_ignore_ascii_case("bearer") {
        bearer(rest)?
    } else if scheme.eq_ignore_ascii_case("token") {
        rails_token(rest)?
    } else {
        return Err(MISSING);
    };
    // A JWT is base64url and dots; anything else (control bytes, spaces in quotes) is no token.
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(NOT_TEXT);
    }
    Ok(token)
}

fn bearer(rest: &str) -> Result<&str, ApiError> {
    let mut words = rest.split_ascii_whitespace();
    match (words.next(), words.next()) {
        (None, _) => Err(MISSING),
        (Some(token), None) => Ok(token),
        (Some(_), Some(_)) => Err(TWO_TOKENS),
    }
}

/// Rails' `token_and_options`: parameters separated by `,` or `;`, the first may be the bare token.
fn rails_token(rest: &str) -> Result<&str, ApiError> {
    let mut found: Option<&str> = None;
    for (index, param) in params(rest).map(str::trim).enumerate() {
        let candidate = match param.split_once('=') {
            Some((key, value)) if key.trim() == "token" => unquote(value.trim()),
            Some(_) => continue,
            None if index == 0 && !param.is_empty() => param,
            None => continue,
        };
        match found {
            Some(previous) if previous != candidate => return Err(TWO_TOKENS),
            _ => found = Some(candidate),
        }
    }
    match found {
        Some(token) if !token.is_empty() => Ok(token),
        _ => Err(MISSING),
    }
}

/// `rest` cut at every `,` and `;`: ASCII bytes, so every cut falls between characters.
fn params(rest: &str) -> impl Iterator<Item = &str> {
    let mut start = 0;
    memchr::memchr2_iter(b',', b';', rest.as_bytes())
        .chain(std::iter::once(rest.len()))
        .map(move |end| {
            let param = rest.get(start..end).unwrap_or_default();
            start = end + 1;
            param
        })
}

fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extract(values: &[&str]) -> Result<String, ErrorCode> {
        bearer_token(values.iter().map(|v| v.as_bytes()))
            .map(str::to_owned)
            .map_err(|e| e.code)
    }

    #[test]
    fn every_accepted_form_yields_the_token() {
        for header in [
            "Token token=\"a.b.c\"",
            "Token token=a.b.c",
            "Token a.b.c",
            "token token=\"a.b.c\"",
            "TOKEN token=\"a.b.c\", nonce=\"xyz\"",
            "Token token=\"a.b.c\"; realm=x",
            "Bearer a.b.c",
            "bearer   a.b.c  ",
            "BEARER a.b.c",
        ] {
            assert_eq!(extract(&[header]), Ok("a.b.c".to_string()), "{header}");
        }
    }

    #[test]
    fn same_token_twice_is_not_ambiguous() {
        assert_eq!(
            extract(&["Token a.b.c, token=\"a.b.c\""]),
            Ok("a.b.c".into())
        );
    }

    #[test]
    fn refusals_carry_the_spec_codes() {
        assert_eq!(extract(&[]), Err(ErrorCode::MissingToken));
        assert_eq!(extract(&[""]), Err(ErrorCode::MissingToken));
        assert_eq!(
            extract(&["Basic dXNlcjpwYXNz"]),
            Err(ErrorCode::MissingToken)
        );
        assert_eq!(extract(&["Bearer"]), Err(ErrorCode::MissingToken));
        assert_eq!(
            extract(&["Token nonce=\"x\""]),
            Err(ErrorCode::MissingToken)
        );
        assert_eq!(extract(&["Token token=\"\""]), Err(ErrorCode::MissingToken));
        assert_eq!(
            extract(&["Bearer a.b.c", "Bearer a.b.c"]),
            Err(ErrorCode::InvalidRequest)
        );
        assert_eq!(
            extract(&["Token token=\"a.b.c\", token=\"d.e.f\""]),
            Err(ErrorCode::InvalidRequest)
        );
        assert_eq!(
            extract(&["Bearer a.b.c d.e.f"]),
            Err(ErrorCode::InvalidRequest)
        );
        assert_eq!(
            bearer_token([&b"Bearer \xff"[..]]).map_err(|e| e.code),
            Err(ErrorCode::InvalidToken)
        );
        assert_eq!(extract(&["Bearer a\u{b}b"]), Err(ErrorCode::InvalidToken));
        assert_eq!(
            extract(&["Token token=\"a b\""]),
            Err(ErrorCode::InvalidToken)
        );
    }
}
