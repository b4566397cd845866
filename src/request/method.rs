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

/// Longest raw key worth looking at: `_method` with every byte escaped.
const MAX_KEY: usize = 3 * "_method".len();
/// Longest raw value kept: longer ones are no method any framework accepts.
const MAX_VALUE: usize = 3 * 16;

/// What a scan found under `_method`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Found {
    /// The decoded values, in order; a value too long to be a method is kept as `?`.
    pub values: Vec<Vec<u8>>,
}

/// A streaming scan of a url-encoded body for `_method` fields, in bounded memory, fed chunk by
/// chunk as the body passes through: a key is judged when its `=` or separator arrives, so a
/// body is refused before a single byte of the field's value reaches the application.
#[derive(Debug, Default)]
pub struct FormScan {
    key: Vec<u8>,
    key_too_long: bool,
    in_value: bool,
    value: Option<Vec<u8>>,
    /// Set once a `_method` key has been seen.
    pub found: Option<Found>,
}

impl FormScan {
    /// Scans the next chunk; true once a `_method` key has been seen.
    pub fn feed(&mut self, chunk: &[u8]) -> bool {
        for &b in chunk {
            match b {
                b'&' | b';' => self.end_pair(),
                b'=' if !self.in_value => {
                    self.in_value = true;
                    if self.key_is_method() {
                        self.value = Some(Vec::new());
                        self.found.get_or_insert_with(Found::default);
                    }
                }
                _ if self.in_value => {
                    if let Some(value) = &mut self.value {
                        if value.len() < MAX_VALUE {
                            value.push(b);
                        }
                    }
                }
                _ if self.key.len() < MAX_KEY => self.key.push(b),
                _ => self.key_too_long = true,
            }
        }
        self.found.is_some()
    }

    /// Ends the body: the last pair counts too.
    pub fn finish(&mut self) -> bool {
        self.end_pair();
        self.found.is_some()
    }

    fn key_is_method(&self) -> bool {
        if self.key_too_long {
            return false;
        }
        let decoded: String = form_urlencoded::parse(&self.key)
            .next()
            .map(|(key, _)| key.into_owned())
            .unwrap_or_default();
        is_method_key(&decoded)
    }

    fn end_pair(&mut self) {
        if !self.in_value && !self.key.is_empty() && self.key_is_method() {
            // `_method` with no `=`: an empty value, still an attempt.
            self.found
                .get_or_insert_with(Found::default)
                .values
                .push(Vec::new());
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
            self.found
                .get_or_insert_with(Found::default)
                .values
                .push(value);
        }
        self.key.clear();
        self.key_too_long = false;
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
        assert!(s.key.len() <= MAX_KEY);
        s.feed(b"&_method=");
        s.feed(&long);
        assert!(s.finish());
        assert_eq!(s.found.unwrap().values, [b"?".to_vec()]);
    }
}
