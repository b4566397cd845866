//! One request, one meaning: the canonical form of a request, computed once, before any
//! decision, and the form the upstream receives. Pure: plain bytes in, plain values out.
//!
//! [`canonicalize`] reads the request line and the headers that change what a request means
//! (Host, method overrides); [`path`] normalizes the path, [`host`] the authority, [`method`]
//! the method and its overrides, [`body`] which bodies carry a `_method` field and the
//! streaming scans that find it.

pub mod body;
pub mod host;
pub mod method;
pub mod path;

use std::borrow::Cow;

use crate::error::{ApiError, ErrorCode};
pub use body::{BodyKind, BodyScan, Framing};
pub use host::Authority;
pub use method::{FormScan, Overrides};

/// Why a request is refused before any decision: each is `400 invalid_request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The target is neither origin-form (`/…`) nor absolute-form (`http://…`).
    NotOriginForm,
    /// `%2F` in the path: one segment to tokengate, two to many applications.
    EncodedSlash,
    /// `%5C` in the path.
    EncodedBackslash,
    /// A raw `\`, which some servers read as `/`.
    Backslash,
    /// `%00` in the path.
    EncodedNul,
    /// A control byte, raw or escaped.
    ControlByte,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// Dot segments climb above `/`.
    AboveRoot,
    /// `;` in the path, a path parameter to some servers, not allowed by the configuration.
    Semicolon,
    /// A `#` in the request target.
    Fragment,
    /// A method with a lower-case letter.
    MethodCase,
    /// HTTP/1.1 without a Host header.
    MissingHost,
    /// A Host that is not one valid host name (or address) with an optional port.
    BadHost,
    /// Method overrides that name different methods.
    ConflictingOverride,
    /// An override naming a method applications would ignore.
    UnknownOverride,
    /// A `_method` field while overrides are not honoured.
    OverrideField,
    /// A transfer coding other than one `chunked`.
    TransferCoding,
    /// Two `Content-Type` fields, a list in one, or a multipart boundary too long to be one.
    ContentType,
}

impl Refusal {
    /// The answer: `400 invalid_request` with a fixed sentence saying what to fix.
    pub fn api_error(self) -> ApiError {
        let message = match self {
            Refusal::NotOriginForm => {
                "The request target must be a path starting with / (or an http:// URL)."
            }
            Refusal::EncodedSlash => "The path may not contain an encoded slash (%2F).",
            Refusal::EncodedBackslash => "The path may not contain an encoded backslash (%5C).",
            Refusal::Backslash => "The path may not contain a backslash.",
            Refusal::EncodedNul => "The path may not contain an encoded NUL (%00).",
            Refusal::ControlByte => "The path may not contain control characters.",
            Refusal::BadEscape => "The path has a % not followed by two hex digits.",
            Refusal::AboveRoot => "The path climbs above the root with dot segments.",
            Refusal::Semicolon => "The path may not contain a semicolon.",
            Refusal::Fragment => "The request target may not contain a fragment (#).",
            Refusal::MethodCase => "Methods are case-sensitive: send them in upper case.",
            Refusal::MissingHost => "HTTP/1.1 requests need exactly one Host header.",
            Refusal::BadHost => {
                "The Host header must be one host name or address with an optional port."
            }
            Refusal::ConflictingOverride => "The request's method overrides disagree.",
            Refusal::UnknownOverride => "The method override names no method this gate can check.",
            Refusal::OverrideField => {
                "A _method field cannot change the method here; send the real method."
            }
            Refusal::TransferCoding => "Transfer-Encoding may only be chunked, once.",
            Refusal::ContentType => "Content-Type must be one media type, sent once.",
        };
        ApiError::new(ErrorCode::InvalidRequest, message)
    }
}

/// Settings that change what a request may look like: settings of the `proxy` section, each
/// declared here once (the file's keys are the field names; each defaults to `false`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
pub struct Options {
    /// Let `;` through in paths, literally (default: refused).
    pub allow_semicolon: bool,
    /// Check a `POST` by the method its override names (default: overrides are removed or,
    /// in a form or query, refused).
    pub honor_method_override: bool,
}

/// What canonicalization reads of a request.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    /// The method as received.
    pub method: &'a str,
    /// The request target as received.
    pub target: &'a [u8],
    /// HTTP/1.1 (a Host header is required) rather than HTTP/1.0.
    pub http11: bool,
    /// The Host header, if any (the HTTP parser already refuses two).
    pub host: Option<&'a [u8]>,
    /// Values of every method-override header, in any spelling.
    pub override_headers: &'a [&'a [u8]],
    /// Values of every `Transfer-Encoding` field.
    pub transfer_encoding: &'a [&'a [u8]],
}

/// A request's one meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical<'a> {
    /// The method as received, and as forwarded.
    pub method: &'a str,
    /// The method routes are checked against: the honoured override, else the method.
    pub effective_method: &'a str,
    /// The canonical path.
    pub path: Cow<'a, str>,
    /// The query, as sent.
    pub query: Option<&'a [u8]>,
    /// The canonical authority, from the Host header or an absolute-form target.
    pub authority: Option<Authority<'a>>,
    /// Whether the target forwarded differs from the one received.
    pub target_rewritten: bool,
    /// Whether the Host forwarded differs from the one received (or there was none).
    pub host_rewritten: bool,
    /// Override headers were honoured: they are forwarded, with the canonical value.
    pub header_override: bool,
    overrides: Overrides,
}

impl Canonical<'_> {
    /// The target the upstream receives: canonical path, query as sent.
    pub fn target(&self) -> Vec<u8> {
        let query = self.query.map_or(0, |q| q.len() + 1);
        let mut target = Vec::with_capacity(self.path.len() + query);
        target.extend_from_slice(self.path.as_bytes());
        if let Some(q) = self.query {
            target.push(b'?');
            target.extend_from_slice(q);
        }
        target
    }

    /// Host name for route matching, without port or trailing dot.
    pub fn host_name(&self) -> Option<&str> {
        self.authority.as_ref().map(|a| a.name.as_ref())
    }

    /// The override method honoured from headers, which are forwarded with this value.
    pub fn honoured_override(&self) -> Option<&'static str> {
        match self.header_override {
            true => self.overrides.method().ok().flatten(),
            false => None,
        }
    }

    /// The method an honoured override (header or body) checks the request as.
    pub fn override_method(&self) -> Option<&'static str> {
        self.overrides.method().ok().flatten()
    }

    /// Applies `_method` fields found in a body read ahead (overrides honoured only).
    pub fn add_body_overrides(&mut self, found: &method::Found) -> Result<(), Refusal> {
        for value in &found.values {
            self.overrides.add(value);
        }
        if let Some(method) = self.overrides.method()? {
            self.effective_method = method;
        }
        Ok(())
    }
}

/// Computes the canonical request, or why it is refused.
pub fn canonicalize<'a>(head: &Head<'a>, options: Options) -> Result<Canonical<'a>, Refusal> {
    method::check_case(head.method)?;
    check_transfer_coding(head.transfer_encoding)?;
    let (absolute, path, query) = split_target(head.target)?;
    let canonical_path = path::canonical_path(path, options.allow_semicolon)?;
    let authority = match (absolute, head.host) {
        (Some(authority), _) => {
            Some(host::canonical_authority(authority)?.ok_or(Refusal::BadHost)?)
        }
        (None, Some(raw)) => host::canonical_authority(raw)?,
        (None, None) if head.http11 => return Err(Refusal::MissingHost),
        (None, None) => None,
    };
    let host_rewritten = match (&authority, head.host) {
        (Some(a), Some(raw)) => !a.spelled_as(raw),
        (Some(_), None) => true,
        (None, _) => false,
    };
    let mut overrides = Overrides::default();
    let mut header_override = false;
    if head.method == "POST" {
        if options.honor_method_override {
            for value in head.override_headers {
                // A header's value is its field value less white space around it.
                overrides.add(value.trim_ascii());
                header_override = true;
            }
        }
        if let Some(query) = query {
            method::form_overrides(query, &mut overrides);
        }
        // Override headers are only gathered when honoured, so anything here came from the query.
        if !options.honor_method_override && overrides.any() {
            return Err(Refusal::OverrideField);
        }
    }
    let effective_method = overrides.method()?.unwrap_or(head.method);
    Ok(Canonical {
        method: head.method,
        effective_method,
        target_rewritten: absolute.is_some() || matches!(canonical_path, Cow::Owned(_)),
        path: canonical_path,
        query,
        authority,
        host_rewritten,
        header_override,
        overrides,
    })
}

/// One `chunked` and nothing else. Pingora forwards any other coding list as plain `chunked`,
/// so the application would take `gzip` bytes for the body itself; chunking twice is forbidden
/// (RFC 9112 §6.1), and `identity` is no coding any more.
fn check_transfer_coding(fields: &[&[u8]]) -> Result<(), Refusal> {
    if fields.is_empty() {
        return Ok(());
    }
    let mut codings = list_elements(fields.iter().copied());
    match (codings.next(), codings.next()) {
        (Some(coding), None) if coding.eq_ignore_ascii_case(b"chunked") => Ok(()),
        _ => Err(Refusal::TransferCoding),
    }
}

/// The elements of a list-valued header (RFC 9110 §5.6.1) over all its fields, trimmed, empty
/// ones dropped.
fn list_elements<'a>(fields: impl IntoIterator<Item = &'a [u8]>) -> impl Iterator<Item = &'a [u8]> {
    fields
        .into_iter()
        .flat_map(|field| field.split(|&b| b == b','))
        .map(|element| element.trim_ascii())
        .filter(|element| !element.is_empty())
}

/// A target's parts: absolute-form authority, path, query.
type TargetParts<'a> = (Option<&'a [u8]>, &'a [u8], Option<&'a [u8]>);

/// Target → (absolute-form authority, path, query); the path of `http://host` is `/`.
fn split_target(target: &[u8]) -> Result<TargetParts<'_>, Refusal> {
    let (absolute, rest) = match absolute_form(target) {
        Some((authority, rest)) => (Some(authority), rest),
        None if target.first() == Some(&b'/') => (None, target),
        None => return Err(Refusal::NotOriginForm),
    };
    let (path, query) = match rest.iter().position(|&b| b == b'?') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let path: &[u8] = if path.is_empty() { b"/" } else { path };
    Ok((absolute, path, query))
}

/// `http://authority/rest` (scheme in any case; `https` too) → (authority, `/rest`).
fn absolute_form(target: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = ["http://", "https://"].iter().find_map(|scheme| {
        let head = target.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme.as_bytes())
            .then(|| &target[scheme.len()..])
    })?;
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    Some((&rest[..end], &rest[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head<'a>(method: &'a str, target: &'a str, host: Option<&'a str>) -> Head<'a> {
        Head {
            method,
            target: target.as_bytes(),
            http11: true,
            host: host.map(str::as_bytes),
            override_headers: &[],
            transfer_encoding: &[],
        }
    }

    fn canon(h: &Head<'_>, options: Options) -> Result<(String, String, Option<String>), Refusal> {
        canonicalize(h, options).map(|c| {
            (
                c.effective_method.to_owned(),
                String::from_utf8(c.target()).unwrap(),
                c.authority.map(|a| a.to_string()),
            )
        })
    }

    const DEFAULT: Options = Options {
        allow_semicolon: false,
        honor_method_override: false,
    };
    const HONOR: Options = Options {
        allow_semicolon: false,
        honor_method_override: true,
    };

    #[test]
    fn origin_and_absolute_form() {
        let ok = |method, target, host: Option<&str>, want: (&str, &str, Option<&str>)| {
            let got = canon(&head(method, target, host), DEFAULT).unwrap();
            assert_eq!(
                (got.0.as_str(), got.1.as_str(), got.2.as_deref()),
                want,
                "{method} {target} {host:?}"
            );
        };
        ok(
            "GET",
            "/a/../b?x=1&y",
            Some("Example.com."),
            ("GET", "/b?x=1&y", Some("example.com")),
        );
        ok(
            "POST",
            "http://images.example.com/albums/b/images",
            None,
            ("POST", "/albums/b/images", Some("images.example.com")),
        );
        ok(
            "GET",
            "HTTP://Images.Example.com:8080",
            None,
            ("GET", "/", Some("images.example.com:8080")),
        );
        ok("GET", "http://h?q", None, ("GET", "/?q", Some("h")));
        ok(
            "GET",
            "/q?a=/../b",
            Some("h"),
            ("GET", "/q?a=/../b", Some("h")),
        );
        let c = canonicalize(&head("GET", "/a", Some("h")), DEFAULT).unwrap();
        assert!(!c.target_rewritten && !c.host_rewritten);
        let c = canonicalize(&head("GET", "/a/", Some("H:80")), DEFAULT).unwrap();
        assert!(!c.target_rewritten && c.host_rewritten);
        let c = canonicalize(&head("GET", "http://h/a", None), DEFAULT).unwrap();
        assert!(c.target_rewritten && c.host_rewritten);
    }

    #[test]
    fn refusals() {
        for (method, target, host, why) in [
            ("GET", "albums/b/images", Some("h"), Refusal::NotOriginForm),
            ("GET", "*", Some("h"), Refusal::NotOriginForm),
            (
                "GET",
                "images.example.com:443",
                Some("h"),
                Refusal::NotOriginForm,
            ),
            ("GET", "ftp://h/a", Some("h"), Refusal::NotOriginForm),
            ("GET", "http:///a", None, Refusal::BadHost),
            ("post", "/a", Some("h"), Refusal::MethodCase),
            ("GET", "/a", None, Refusal::MissingHost),
            ("GET", "/a", Some("other, h"), Refusal::BadHost),
            ("GET", "/a;x", Some("h"), Refusal::Semicolon),
            (
                "POST",
                "/a?_method=DELETE",
                Some("h"),
                Refusal::OverrideField,
            ),
            (
                "POST",
                "/a?x=1&%5Fmethod=DELETE",
                Some("h"),
                Refusal::OverrideField,
            ),
        ] {
            assert_eq!(
                canon(&head(method, target, host), DEFAULT),
                Err(why),
                "{method} {target}"
            );
        }
        // HTTP/1.0 may leave Host out; a GET's query `_method` means nothing to a framework.
        let h10 = Head {
            http11: false,
            ..head("GET", "/a?_method=DELETE", None)
        };
        assert!(canonicalize(&h10, DEFAULT).is_ok());
    }

    #[test]
    fn only_one_chunked_coding_is_accepted() {
        let coded = |fields: &[&str]| {
            let fields: Vec<&[u8]> = fields.iter().map(|f| f.as_bytes()).collect();
            let h = Head {
                transfer_encoding: &fields,
                ..head("POST", "/a", Some("h"))
            };
            canonicalize(&h, DEFAULT).err()
        };
        for fine in [
            &[][..],
            &["chunked"],
            &["Chunked"],
            &[" CHUNKED "],
            &["chunked,"],
        ] {
            assert_eq!(coded(fine), None, "{fine:?}");
        }
        for refused in [
            &["gzip, chunked"][..],
            &["identity, chunked"],
            &["chunked, identity"],
            &["chunked, chunked"],
            &["chunked", "chunked"],
            &["gzip", "chunked"],
            &["xchunked"],
            &["gzip"],
            &[""],
            &[","],
        ] {
            assert_eq!(coded(refused), Some(Refusal::TransferCoding), "{refused:?}");
        }
    }

    #[test]
    fn overrides_are_checked_only_when_honoured_and_only_on_post() {
        let headers: [&[u8]; 1] = [b"delete"];
        let with = |method, target, options| {
            let h = Head {
                override_headers: &headers,
                ..head(method, target, Some("h"))
            };
            canonicalize(&h, options).map(|c| (c.effective_method, c.header_override))
        };
        assert_eq!(with("POST", "/a", DEFAULT), Ok(("POST", false)));
        assert_eq!(with("POST", "/a", HONOR), Ok(("DELETE", true)));
        assert_eq!(with("GET", "/a", HONOR), Ok(("GET", false)));
        assert_eq!(
            with("POST", "/a?_method=delete", HONOR),
            Ok(("DELETE", true))
        );
        assert_eq!(
            with("POST", "/a?_method=patch", HONOR),
            Err(Refusal::ConflictingOverride)
        );
        let bogus: [&[u8]; 1] = [b"TRACE"];
        let h = Head {
            override_headers: &bogus,
            ..head("POST", "/a", Some("h"))
        };
        assert_eq!(
            canonicalize(&h, HONOR).err(),
            Some(Refusal::UnknownOverride)
        );
    }

    #[test]
    fn body_overrides_join_the_others() {
        let mut c = canonicalize(&head("POST", "/a", Some("h")), HONOR).unwrap();
        let mut scan = FormScan::default();
        scan.feed(b"x=1&_method=delete");
        scan.finish();
        c.add_body_overrides(&scan.found.unwrap()).unwrap();
        assert_eq!(c.effective_method, "DELETE");
    }

    #[test]
    fn every_refusal_is_a_400() {
        for r in [
            Refusal::NotOriginForm,
            Refusal::MethodCase,
            Refusal::OverrideField,
        ] {
            assert_eq!(r.api_error().code.status(), 400);
        }
    }
}
