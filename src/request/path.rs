//! The canonical path: one spelling for every path that an application could read the same way.
//!
//! RFC 3986 §6.2.2 normalization, applied to what real routers do with a path: escapes of
//! unreserved characters are decoded (so `%2e%2e` is a dot segment), other escapes get upper-case
//! hex, repeated `/` merge, dot segments are removed (§5.2.4). Anything an application could read
//! as a different path than tokengate (an encoded `/` or `\`, a raw `\`, control bytes, a bad
//! escape, a climb above `/`, a `;` path parameter) is refused instead of guessed at.

use std::borrow::Cow;

use super::Refusal;

/// Characters that stand for themselves in a canonical path besides `/` and `%XX`: RFC 3986's
/// `pchar` less `;` and `%` (unreserved, sub-delims, `:` and `@`).
fn is_plain(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
        )
}

/// RFC 3986 unreserved: decoding their escapes never changes what a path means.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// The canonical form of an origin-form path (the target up to `?`), which must start with `/`.
///
/// Borrows when the path is already canonical, which is the common case.
pub fn canonical_path(raw: &[u8], allow_semicolon: bool) -> Result<Cow<'_, str>, Refusal> {
    if raw.first() != Some(&b'/') {
        return Err(Refusal::NotOriginForm);
    }
    if is_canonical(raw, allow_semicolon) {
        // Only ASCII passes `is_canonical`, so this cannot fail.
        return std::str::from_utf8(raw)
            .map(Cow::Borrowed)
            .map_err(|_| Refusal::BadEscape);
    }
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    for raw_segment in raw[1..].split(|&b| b == b'/') {
        let segment = canonical_segment(raw_segment, allow_semicolon)?;
        trailing_slash = true;
        match segment.as_str() {
            "" | "." => {}
            ".." => {
                segments.pop().ok_or(Refusal::AboveRoot)?;
            }
            _ => {
                segments.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut path = String::with_capacity(raw.len());
    for segment in &segments {
        path.push('/');
        path.push_str(segment);
    }
    if trailing_slash || segments.is_empty() {
        path.push('/');
    }
    Ok(Cow::Owned(path))
}

/// Whether `raw` needs no change: plain bytes only, no escapes, no empty or dot segments.
fn is_canonical(raw: &[u8], allow_semicolon: bool) -> bool {
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            if !is_canonical_escape(raw.get(i + 1..i + 3)) {
                return false;
            }
            i += 3;
            continue;
        }
        if !(b == b'/' || is_plain(b) || (allow_semicolon && b == b';')) {
            return false;
        }
        i += 1;
    }
    // With no `//`, an empty segment can only be the last one: a trailing slash.
    !raw.windows(2).any(|w| w == b"//")
        && raw[1..]
            .split(|&b| b == b'/')
            .all(|segment| segment != b"." && segment != b"..")
}

/// `XY` of a `%XY` that canonicalization keeps as it is: upper-case hex of a byte that is
/// neither unreserved (decoded) nor refused.
fn is_canonical_escape(hex: Option<&[u8]>) -> bool {
    let Some(&[hi, lo]) = hex else {
        return false;
    };
    let upper = |b: u8| b.is_ascii_digit() || (b'A'..=b'F').contains(&b);
    if !(upper(hi) && upper(lo)) {
        return false;
    }
    let value = hex_value(hi).zip(hex_value(lo)).map(|(h, l)| h << 4 | l);
    value.is_some_and(|v| !is_unreserved(v) && !is_control(v) && v != b'/' && v != b'\\')
}

/// One segment with its escapes normalized, or the reason it is refused.
fn canonical_segment(raw: &[u8], allow_semicolon: bool) -> Result<String, Refusal> {
    let mut out = String::with_capacity(raw.len());
    let mut bytes = raw.iter().copied();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (bytes.next(), bytes.next()) else {
                    return Err(Refusal::BadEscape);
                };
                let value = hex_value(hi)
                    .zip(hex_value(lo))
                    .map(|(h, l)| h << 4 | l)
                    .ok_or(Refusal::BadEscape)?;
                match value {
                    b'/' => return Err(Refusal::EncodedSlash),
                    b'\\' => return Err(Refusal::EncodedBackslash),
                    0 => return Err(Refusal::EncodedNul),
                    v if is_control(v) => return Err(Refusal::ControlByte),
                    v if is_unreserved(v) => out.push(char::from(v)),
                    v => push_escape(&mut out, v),
                }
            }
            b'\\' => return Err(Refusal::Backslash),
            b'#' => return Err(Refusal::Fragment),
            b';' if !allow_semicolon => return Err(Refusal::Semicolon),
            b';' => out.push(';'),
            b if is_control(b) => return Err(Refusal::ControlByte),
            b if is_plain(b) => out.push(char::from(b)),
            // Spaces, quotes, brackets and raw non-ASCII bytes mean the same to every app
            // escaped, and escaped they cannot be misread.
            b => push_escape(&mut out, b),
        }
    }
    Ok(out)
}

fn push_escape(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xf)]));
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// A canonical path's segments, still escaped; a trailing slash yields no empty segment.
pub fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

/// A canonical segment decoded (`%20` → space), as applications hand path parameters over;
/// `None` when the bytes are not UTF-8, which no resource name can match.
pub fn decode_segment(segment: &str) -> Option<Cow<'_, str>> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()
}

/// A path parameter's value: the decoded segment and, for the path's last segment, every
/// reading without a `.format` suffix (`b.json` is album `b` to Rails, `b.json` to Express).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamValue<'p> {
    /// The decoded segment; `None` when it is not UTF-8 (no resource can match it).
    pub value: Option<Cow<'p, str>>,
    /// Whether the value ends the path, so that a router may strip a format suffix.
    pub last: bool,
}

impl ParamValue<'_> {
    /// Every resource name an application could read from this segment.
    pub fn readings(&self) -> Vec<&str> {
        let Some(value) = self.value.as_deref() else {
            return Vec::new();
        };
        let mut readings = vec![value];
        if self.last {
            readings.extend(value.match_indices('.').map(|(i, _)| &value[..i]));
        }
        readings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(raw: &str) -> Result<String, Refusal> {
        canonical_path(raw.as_bytes(), false).map(Cow::into_owned)
    }

    #[test]
    fn accepts_and_normalizes() {
        for (raw, want) in [
            ("/", "/"),
            ("/albums/a/images", "/albums/a/images"),
            ("/albums/a/images/", "/albums/a/images/"),
            ("//api/v1/token", "/api/v1/token"),
            ("/api/v1//token", "/api/v1/token"),
            ("/api/v1/./token", "/api/v1/token"),
            ("/x/../api/v1/token", "/api/v1/token"),
            ("/api/v1/%74oken", "/api/v1/token"),
            ("/albums/a/../b/images", "/albums/b/images"),
            ("/albums/b/%2e%2e/b/images", "/albums/b/images"),
            ("/albums/b/.%2E/b/images", "/albums/b/images"),
            ("/albums/./b/images", "/albums/b/images"),
            ("/%61lbums/b/images", "/albums/b/images"),
            ("/albums/b/%69mages", "/albums/b/images"),
            (
                "/albums/summer%202024/images",
                "/albums/summer%202024/images",
            ),
            ("/albums/summer 2024", "/albums/summer%202024"),
            ("/a/%c3%a9", "/a/%C3%A9"),
            ("/a/\u{e9}", "/a/%C3%A9"),
            ("/a/%3b", "/a/%3B"),
            ("/a/%25", "/a/%25"),
            ("/a/%252e%252e/b", "/a/%252e%252e/b"),
            ("/a/{x}|^`[]", "/a/%7Bx%7D%7C%5E%60%5B%5D"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a/..", "/"),
            ("/.", "/"),
            ("/a/...", "/a/..."),
            ("/a/.b/..c", "/a/.b/..c"),
            ("/a+b/c:d@e!$&'()*,=", "/a+b/c:d@e!$&'()*,="),
            ("/a/%7E", "/a/~"),
        ] {
            assert_eq!(canon(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn refuses_what_an_app_could_read_differently() {
        for (raw, why) in [
            ("albums/b/images", Refusal::NotOriginForm),
            ("", Refusal::NotOriginForm),
            ("*", Refusal::NotOriginForm),
            ("/albums%2Fb%2Fimages", Refusal::EncodedSlash),
            ("/albums/b%2fimages", Refusal::EncodedSlash),
            ("/albums/b%5Cimages", Refusal::EncodedBackslash),
            ("/albums/b\\images", Refusal::Backslash),
            ("/albums/b%00", Refusal::EncodedNul),
            ("/albums/b%0a", Refusal::ControlByte),
            ("/albums/b%7f", Refusal::ControlByte),
            ("/albums/b\timages", Refusal::ControlByte),
            ("/albums/b%", Refusal::BadEscape),
            ("/albums/b%4", Refusal::BadEscape),
            ("/albums/b%zz", Refusal::BadEscape),
            ("/..", Refusal::AboveRoot),
            ("/a/../..", Refusal::AboveRoot),
            ("/%2e%2e/etc", Refusal::AboveRoot),
            ("/albums/b/images;x", Refusal::Semicolon),
            ("/api/v1/token;jsessionid=1", Refusal::Semicolon),
            ("/a#frag", Refusal::Fragment),
        ] {
            assert_eq!(canon(raw), Err(why), "{raw:?}");
        }
    }

    #[test]
    fn semicolons_pass_literally_when_allowed() {
        assert_eq!(canonical_path(b"/a;v=1/b", true).as_deref(), Ok("/a;v=1/b"));
        assert_eq!(
            canonical_path(b"/a;v=1//b", true).as_deref(),
            Ok("/a;v=1/b")
        );
    }

    #[test]
    fn canonical_paths_are_borrowed_and_fixed_points() {
        for raw in ["/", "/albums/a/images", "/a/", "/a/%C3%A9", "/x.json"] {
            assert!(matches!(
                canonical_path(raw.as_bytes(), false),
                Ok(Cow::Borrowed(_))
            ));
        }
        for raw in ["//a/../b/./%63/", "/a/%c3%a9/%2e/x", "/%7e/ /"] {
            let once = canon(raw).unwrap();
            assert_eq!(canon(&once).as_deref(), Ok(once.as_str()), "{raw}");
        }
    }

    #[test]
    fn segments_decode_like_an_application() {
        assert_eq!(
            segments("/albums/summer%202024/images/").collect::<Vec<_>>(),
            ["albums", "summer%202024", "images"]
        );
        assert_eq!(
            decode_segment("summer%202024").as_deref(),
            Some("summer 2024")
        );
        assert_eq!(decode_segment("%C3%A9").as_deref(), Some("\u{e9}"));
        assert_eq!(decode_segment("%FF"), None);
    }
}
