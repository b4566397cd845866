//! The method a request means: its own, checked for case, or the override an application would
//! apply (`X-HTTP-Method-Override` and its kin, a `_method` form or query field).

use super::Refusal;

/// Methods an override may name: those Rack's `MethodOverride` accepts. Anything else is
/// refused, since an app that ignores an unknown override runs the original `POST`.
pub const OVERRIDABLE: [&str; 9] = [
    "GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH", "LINK", "UNLINK",
];

/// Header names that override the method in common frameworks.
pub const OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Methods are case-sensitive (RFC 9110 §9.1), but some servers upper-case them (Werkzeug):
/// a method with a lower-case letter is refused rather than read two ways.
pub fn check_case(method: &str) -> Result<(), Refusal> {
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(Refusal::MethodCase);
    }
    Ok(())
}

/// Every override a request carries, gathered from headers, query and body.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Overrides {
    first: Option<Vec<u8>>,
    conflicting: bool,
}

impl Overrides {
    /// Records one override value, exactly as the application gets it: Rack, `method-override`
    /// and Symfony upper-case it but never trim it, so ` DELETE` is no method to them.
    pub fn add(&mut self, value: &[u8]) {
        match &self.first {
            None => self.first = Some(value.to_ascii_uppercase()),
            Some(first) if first.eq_ignore_ascii_case(value) => {}
            Some(_) => self.conflicting = true,
        }
    }

    /// Whether any override was seen.
    pub fn any(&self) -> bool {
        self.first.is_some()
    }

    /// The overriding method, when the values agree on one that can be overridden to.
    pub fn method(&self) -> Result<Option<&'static str>, Refusal> {
        let Some(first) = &self.first else {
            return Ok(None);
        };
        if self.conflicting {
            return Err(Refusal::ConflictingOverride);
        }
        OVERRIDABLE
            .iter()
            .find(|m| m.as_bytes() == first.as_slice())
            .map(|m| Some(*m))
            .ok_or(Refusal::UnknownOverride)
    }
}

/// Whether a form key means `_method` to some framework: Rack and Express take it as is, PHP
/// turns spaces and dots into `_` and drops leading spaces; case is ignored to be safe.
pub(super) fn is_method_key(decoded: &str) -> bool {
    let key = decoded.trim();
    key.len() == "_method".len()
        && key
            .bytes()
            .map(|b| match b {
                b' ' | b'.' => b'_',
                b => b.to_ascii_lowercase(),
            })
            .eq(b"_method".iter().copied())
}

/// Longest name worth keeping once its padding is gone: longer ones are no `_method`.
const MAX_CORE: usize = 16;

/// A field name judged as it streams, in bounded memory, under every reading a framework gives
/// it: Rack's `normalize_params` drops any run of `[` and `]` before a name and of `]` after it
/// (`[_method]`, `]]_method]]` are `_method` to it, and to qs), PHP drops leading spaces and
/// ends a name at NUL; what remains is checked by [`is_method_key`]. However long the padding,
/// only the name itself is kept.
#[derive(Debug, Default, Clone)]
pub(super) struct MethodKey {
    /// Percent-decode (and, in forms, take `+` for a space) before judging.
    decode: bool,
    plus_is_space: bool,
    /// A `%` and the bytes after it, up to two, decoded once complete.
    escape: Vec<u8>,
    core: Vec<u8>,
    /// A `]`, white space or NUL came after the name: only more of them may follow.
    tail: bool,
    /// The name cannot be `_method`.
    broken: bool,
    /// A NUL came: PHP reads nothing after it.
    ended: bool,
    /// Any byte arrived.
    seen: bool,
}

impl MethodKey {
    /// A name judged as sent.
    pub(super) fn raw() -> MethodKey {
        MethodKey::default()
    }

    /// A name judged percent-decoded, `+` a space when `plus_is_space` (url-encoded forms).
    pub(super) fn decoding(plus_is_space: bool) -> MethodKey {
        MethodKey {
            decode: true,
            plus_is_space,
            ..MethodKey::default()
        }
    }

    /// The next byte of the name, as received.
    pub(super) fn push(&mut self, b: u8) {
        self.seen = true;
        if !self.decode {
            return self.push_decoded(b);
        }
        if !self.escape.is_empty() {
            if b.is_ascii_hexdigit() {
                self.escape.push(b);
                if self.escape.len() == 3 {
                    self.flush();
                }
                return;
            }
            // Not an escape after all: it stands for itself, and `b` is read on its own.
            self.flush();
        }
        match b {
            b'%' => self.escape.push(b),
            b'+' if self.plus_is_space => self.push_decoded(b' '),
            b => self.push_decoded(b),
        }
    }

    /// Decodes a pending escape (an invalid one stands for itself, as form decoders keep it).
    fn flush(&mut self) {
        let escape = std::mem::take(&mut self.escape);
        percent_encoding::percent_decode(&escape).for_each(|b| self.push_decoded(b));
    }

    fn push_decoded(&mut self, b: u8) {
        if self.ended {
            return;
        }
        self.ended = b == 0;
        let padding = matches!(b, b'[' | b']') || b.is_ascii_whitespace();
        if self.core.is_empty() && !self.tail && padding {
            return;
        }
        if matches!(b, b']' | 0) || b.is_ascii_whitespace() {
            self.tail = true;
        } else if self.tail || self.core.len() == MAX_CORE {
            self.broken = true;
        } else {
            self.core.push(b);
        }
    }

    /// Forgets what came so far: an RFC 5987 `charset'lang'` prefix is not part of a name.
    pub(super) fn restart(&mut self) {
        let seen = self.seen;
        self.clear();
        self.seen = seen;
    }

    /// Whether any byte of a name arrived.
    pub(super) fn seen(&self) -> bool {
        self.seen
    }

    /// Whether the name read so far is `_method`.
    pub(super) fn is_method(&mut self) -> bool {
        self.flush();
        !self.broken && is_method_key(&String::from_utf8_lossy(&self.core))
    }

    /// Starts the next name.
    pub(super) fn clear(&mut self) {
        *self = MethodKey {
            decode: self.decode,
            plus_is_space: self.plus_is_space,
            ..MethodKey::default()
        };
    }
}

/// The `_method` values of a url-encoded query or form, `&` and `;` both separating pairs
/// (Rack 2 splits on both).
pub fn form_overrides(form: &[u8], overrides: &mut Overrides) {
    let mut scan = FormScan::default();
    scan.feed(form);
    scan.finish();
    if let Some(found) = scan.found {
        for value in found.values {
            overrides.add(&value);
        }
    }
}

/// Longest raw value kept: longer ones are no method any framework accepts.
const MAX_VALUE: usize = 3 * 16;

/// What a scan found under `_method`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Found {
    /// The decoded values, in order; a value too long to be a method is kept as `?`.
    pub values: Vec<Vec<u8>>,
}

impl Found {
    /// Notes a `_method` field in `found`, whose value comes later or never.
    pub(super) fn mark(found: &mut Option<Found>) -> &mut Found {
        found.get_or_insert_with(Found::default)
    }

    /// Notes a `_method` field's value in `found`.
    pub(super) fn push(found: &mut Option<Found>, value: Vec<u8>) {
        Found::mark(found).values.push(value);
    }
}

/// A streaming scan of a url-encoded body for `_method` fields, in bounded memory, fed chunk by
/// chunk as the body passes through: a key is judged when its `=` or separator arrives, so a
/// body is refused before a single byte of the field's value reaches the application.
#[derive(Debug)]
pub struct FormScan {
    key: MethodKey,
    in_value: bool,
    value: Option<Vec<u8>>,
    /// Set once a `_method` key has been seen.
    pub found: Option<Found>,
}

impl Default for FormScan {
    fn default() -> FormScan {
        FormScan {
            key: MethodKey::decoding(true),
            in_value: false,
            value: None,
            found: None,
        }
    }
}

impl FormScan {
    /// Scans the next chunk; true once a `_method` key has been seen.
    pub fn feed(&mut self, chunk: &[u8]) -> bool {
        for &b in chunk {
            match b {
                b'&' | b';' => self.end_pair(),
                b'=' if !self.in_value => {
                    self.in_value = true;
                    if self.key.is_method() {
                        self.value = Some(Vec::new());
                        Found::mark(&mut self.found);
                    }
                }
                _ if self.in_value => {
                    if let Some(value) = &mut self.value {
                        if value.len() < MAX_VALUE {
                            value.push(b);
                        }
                    }
                }
                _ => self.key.push(b),
            }
        }
        self.found.is_some()
    }

    /// Ends the body: the last pair counts too.
    pub fn finish(&mut self) -> bool {
        self.end_pair();
        self.found.is_some()
    }

    fn end_pair(&mut self) {
        if !self.in_value && self.key.seen() && self.key.is_method() {
            // `_method` with no `=`: an empty value, still an attempt.
            Found::push(&mut self.found, Vec::new());
        }
        if let Some(value) = self.value.take() {
            let decoded: Vec<u8> = form_urlencoded::parse(&[b"v=".as_slice(), &value].concat())
                .next()
                .map(|(_, v)| v.into_owned().into_bytes())
                .unwrap_or_default();
            let value = if value.len() >= MAX_VALUE {
                b"?".to_vec()
            } else {
                decoded
            };
            Found::push(&mut self.found, value);
        }
        self.key.clear();
        self.in_value = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_case_methods_are_refused() {
        for m in ["GET", "POST", "PROPFIND", "M-SEARCH"] {
            assert_eq!(check_case(m), Ok(()), "{m}");
        }
        for m in ["post", "Get", "dElEtE", "purge"] {
            assert_eq!(check_case(m), Err(Refusal::MethodCase), "{m}");
        }
    }

    #[test]
    fn overrides_must_agree_on_a_known_method() {
        let resolve = |values: &[&str]| {
            let mut o = Overrides::default();
            values.iter().for_each(|v| o.add(v.as_bytes()));
            o.method()
        };
        assert_eq!(resolve(&[]), Ok(None));
        assert_eq!(resolve(&["DELETE"]), Ok(Some("DELETE")));
        assert_eq!(resolve(&["delete", "Delete"]), Ok(Some("DELETE")));
        // Applications do not trim a field's value: ` DELETE` stays a POST to them.
        assert_eq!(resolve(&[" DELETE"]), Err(Refusal::UnknownOverride));
        assert_eq!(
            resolve(&["PATCH", "DELETE"]),
            Err(Refusal::ConflictingOverride)
        );
        assert_eq!(resolve(&["FOO"]), Err(Refusal::UnknownOverride));
        assert_eq!(resolve(&[""]), Err(Refusal::UnknownOverride));
    }

    fn scan(body: &str) -> Option<Vec<String>> {
        let mut s = FormScan::default();
        s.feed(body.as_bytes());
        s.finish();
        s.found.map(|f| {
            f.values
                .into_iter()
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .collect()
        })
    }

    #[test]
    fn finds_every_spelling_of_the_method_field() {
        for (body, want) in [
            ("_method=delete", vec!["delete"]),
            ("a=1&_method=DELETE&b=2", vec!["DELETE"]),
            ("a=1;_method=patch", vec!["patch"]),
            ("a=1; _method=patch", vec!["patch"]),
            ("%5Fmethod=delete", vec!["delete"]),
            ("_%6D%65thod=delete", vec!["delete"]),
            ("_METHOD=delete", vec!["delete"]),
            (".method=delete", vec!["delete"]),
            ("_method=del%65te", vec!["delete"]),
            ("_method=de+lete", vec!["de lete"]),
            ("_method", vec![""]),
            ("_method=a&_method=b", vec!["a", "b"]),
            // Rack and qs drop brackets around a name, however many.
            ("[_method]=delete", vec!["delete"]),
            ("_method]=delete", vec!["delete"]),
            ("%5B_method%5D=delete", vec!["delete"]),
            (
                "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[_method]]]]]]]]]]]]]]]]]]]]]]]]]]=delete",
                vec!["delete"],
            ),
            // PHP ends a name at NUL.
            ("_method%00x=delete", vec!["delete"]),
        ] {
            assert_eq!(
                scan(body),
                Some(want.iter().map(|s| s.to_string()).collect()),
                "{body}"
            );
        }
        for body in [
            "",
            "a=1",
            "_methods=1",
            "x_method=1",
            "_method[]=x",
            "a=_method",
            "a=_method=1",
            "+method=1",
            "_method[=1",
            "_method[x]=1",
            "_me]thod=1",
            "_method%=1",
        ] {
            assert_eq!(scan(body), None, "{body}");
        }
    }

    #[test]
    fn a_key_split_across_chunks_is_judged_when_it_ends() {
        let body = b"a=1&_meth";
        let mut s = FormScan::default();
        assert!(!s.feed(body));
        assert!(s.feed(b"od=delete"));
        let mut s = FormScan::default();
        for b in b"x=1&%5F%6Dethod=delete" {
            s.feed(&[*b]);
        }
        assert!(s.finish());
        assert_eq!(s.found.unwrap().values, [b"delete".to_vec()]);
    }

    #[test]
    fn memory_stays_bounded() {
        let mut s = FormScan::default();
        let long = vec![b'k'; 1 << 20];
        s.feed(&long);
        assert!(s.key.core.len() <= MAX_CORE);
        s.feed(b"&_method=");
        s.feed(&long);
        assert!(s.finish());
        assert_eq!(s.found.unwrap().values, [b"?".to_vec()]);
    }
}
