//! The canonical Host: one name, lower case, no trailing dot, the port kept apart.

use std::borrow::Cow;
use std::fmt;

use super::Refusal;

/// A validated authority: what routes match (the name) and what the upstream is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority<'a> {
    /// Lower-case host name, IPv4 address or bracketed IPv6 literal, without a trailing dot.
    pub name: Cow<'a, str>,
    /// The port, when one was given.
    pub port: Option<u16>,
}

impl fmt::Display for Authority<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl Authority<'_> {
    /// Whether `raw` is already this authority's canonical spelling (so nothing is rewritten).
    pub fn spelled_as(&self, raw: &[u8]) -> bool {
        match self.port {
            None => raw == self.name.as_bytes(),
            Some(port) => raw
                .strip_prefix(self.name.as_bytes())
                .and_then(|rest| rest.strip_prefix(b":"))
                .is_some_and(|digits| is_decimal(digits, port)),
        }
    }
}

/// Whether `digits` is `port` written as `Display` writes it: digits only, no leading zero.
fn is_decimal(digits: &[u8], port: u16) -> bool {
    let canonical = digits.first() != Some(&b'0') || digits.len() == 1;
    canonical
        && digits.iter().all(u8::is_ascii_digit)
        && std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse().ok())
            == Some(port)
}

/// Parses a Host value (or an absolute-form authority): `None` for an empty one.
pub fn canonical_authority(raw: &[u8]) -> Result<Option<Authority<'_>>, Refusal> {
    if raw.is_empty() {
        return Ok(None);
    }
    let text = std::str::from_utf8(raw).map_err(|_| Refusal::BadHost)?;
    let (name, port) = split_port(text)?;
    let name = if name.starts_with('[') {
        ipv6_literal(name)?
    } else {
        reg_name(name)?
    };
    Ok(Some(Authority { name, port }))
}

/// `name[:port]` → name and port; an IPv6 literal keeps its colons.
fn split_port(text: &str) -> Result<(&str, Option<u16>), Refusal> {
    let bytes = text.as_bytes();
    let colon = match bytes.iter().rposition(|&b| b == b':') {
        Some(i) if !bytes[i..].contains(&b']') => i,
        _ => return Ok((text, None)),
    };
    let digits = &text[colon + 1..];
    let port = match digits {
        // RFC 3986 allows an empty port; it means the default one.
        "" => None,
        _ if digits.len() <= 5 && digits.bytes().all(|b| b.is_ascii_digit()) => {
            Some(digits.parse::<u16>().map_err(|_| Refusal::BadHost)?)
        }
        _ => return Err(Refusal::BadHost),
    };
    Ok((&text[..colon], port))
}

fn ipv6_literal(name: &str) -> Result<Cow<'_, str>, Refusal> {
    let inner = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .ok_or(Refusal::BadHost)?;
    if inner.parse::<std::net::Ipv6Addr>().is_err() {
        return Err(Refusal::BadHost);
    }
    Ok(lower(name))
}

/// A DNS name or IPv4 address: letters, digits, `-`, `_`, dots between non-empty labels, and
/// one trailing dot, which is dropped (`example.com.` is `example.com`).
fn reg_name(name: &str) -> Result<Cow<'_, str>, Refusal> {
    let name = name.strip_suffix('.').unwrap_or(name);
    // One pass over the bytes: a dot may not start or end the name or follow another dot
    // (every label is non-empty).
    let mut previous = b'.';
    let valid = name.bytes().all(|b| {
        let allowed = match b {
            b'.' => previous != b'.',
            _ => b.is_ascii_alphanumeric() || b == b'-' || b == b'_',
        };
        previous = b;
        allowed
    });
    if !valid || previous == b'.' {
        return Err(Refusal::BadHost);
    }
    Ok(lower(name))
}

fn lower(name: &str) -> Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(raw: &str) -> Result<Option<String>, Refusal> {
        canonical_authority(raw.as_bytes()).map(|a| a.map(|a| a.to_string()))
    }

    #[test]
    fn normalizes_case_trailing_dot_and_port() {
        for (raw, want) in [
            ("images.example.com", Some("images.example.com")),
            ("Images.Example.COM", Some("images.example.com")),
            ("images.example.com.", Some("images.example.com")),
            ("images.example.com.:8080", Some("images.example.com:8080")),
            ("images.example.com:", Some("images.example.com")),
            ("127.0.0.1:3000", Some("127.0.0.1:3000")),
            ("[::1]:8080", Some("[::1]:8080")),
            ("[2001:DB8::1]", Some("[2001:db8::1]")),
            ("under_score", Some("under_score")),
            ("a-.b_.C.-.", Some("a-.b_.c.-")),
            ("", None),
        ] {
            assert_eq!(canon(raw), Ok(want.map(str::to_owned)), "{raw}");
        }
        let a = canonical_authority(b"Images.example:80").unwrap().unwrap();
        assert_eq!((a.name.as_ref(), a.port), ("images.example", Some(80)));
        assert!(a.spelled_as(b"images.example:80"));
        assert!(!a.spelled_as(b"Images.example:80"));
        for other in [
            "images.example:080",
            "images.example:+80",
            "images.example:8",
            "",
        ] {
            assert!(!a.spelled_as(other.as_bytes()), "{other}");
        }
        let zero = canonical_authority(b"a:0").unwrap().unwrap();
        assert!(zero.spelled_as(b"a:0") && !zero.spelled_as(b"a:00"));
    }

    #[test]
    fn refuses_lists_and_odd_characters() {
        for raw in [
            "other, images.example.com",
            "images.example.com..",
            ".images.example.com",
            "images..example.com",
            "a b",
            "user@host",
            "host:port",
            "host:123456",
            "host:99999",
            "host/path",
            "[::1",
            "[not-v6]",
            "[::1]x",
            "h%41st",
            "\u{e9}.example",
            ".",
            ":80",
            "a..:80",
        ] {
            assert_eq!(canon(raw), Err(Refusal::BadHost), "{raw:?}");
        }
    }
}
