//! Request body + content type → the requested permission, and the rules it must obey.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::object::{span_of, Key, Object};
use crate::error::{ApiError, ErrorCode};

/// Claims a permission may never set, whatever the configuration says.
pub const RESERVED_CLAIMS: [&str; 7] = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"];

/// The requested permission: its top-level keys in order, each value as compact JSON.
#[derive(Debug, Default)]
pub struct Permission {
    object: Object,
}

impl Permission {
    /// The raw JSON of one top-level key.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.object.get(name)
    }

    /// Top-level keys and raw JSON values, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.object.iter()
    }

    /// Top-level keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.object.iter().map(|(k, _)| k)
    }
}

impl serde::Serialize for Permission {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap};
        let mut map = serializer.serialize_map(Some(self.object.len()))?;
        for (key, value) in self.iter() {
            let raw: &RawValue = serde_json::from_str(value).map_err(S::Error::custom)?;
            map.serialize_entry(key, raw)?;
        }
        map.end()
    }
}

/// The rules a permission is held to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionPolicy {
    /// How large a token request, its permission and the minted token may be.
    pub limits: Limits,
    /// Claim names refused besides [`RESERVED_CLAIMS`] (the subject claim belongs here).
    pub reserved: Vec<String>,
    /// When set, the only names `abilities.<resource>.Access` may hold.
    pub abilities: Option<Vec<String>>,
}

/// How large a token request, its permission and the tokens may be: settings of the `token`
/// section, each declared here once with its default (the file's keys are the field names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Largest token request body, in bytes.
    pub body_limit: usize,
    /// Deepest permission nesting; the permission object itself is depth 1.
    pub max_depth: usize,
    /// Most object keys in one permission, counted at every depth.
    pub max_keys: usize,
    /// Longest token verified (a longer one is refused unread) or minted.
    pub max_token_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_limit: 16 * 1024,
            max_depth: 16,
            max_keys: 512,
            // Far above any real token, far below the header lines that clients refuse to read
            // back in `X-token`.
            max_token_bytes: 8 * 1024,
        }
    }
}

impl Default for PermissionPolicy {
    fn default() -> Self {
        PermissionPolicy {
            limits: Limits::default(),
            reserved: vec![super::DEFAULT_SUBJECT_CLAIM.to_owned()],
            abilities: None,
        }
    }
}

impl PermissionPolicy {
    fn is_reserved(&self, name: &str) -> bool {
        RESERVED_CLAIMS.contains(&name) || self.reserved.iter().any(|r| r == name)
    }
}

const fn bad_request(message: &'static str) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, message)
}

const fn invalid(message: &'static str) -> ApiError {
    ApiError::new(ErrorCode::InvalidPermission, message)
}

const UNSUPPORTED: ApiError = ApiError::new(
    ErrorCode::UnsupportedMediaType,
    "Send the body as application/x-www-form-urlencoded or application/json.",
);
const NOT_JSON: ApiError = bad_request("The permission is not valid JSON.");
const NOT_OBJECT: ApiError = invalid("The permission must be a JSON object.");
const RESERVED: ApiError =
    invalid("The permission may not set a reserved claim such as exp, iat or the subject.");
const DUPLICATE: ApiError = invalid("The permission repeats a key.");
const TOO_DEEP: ApiError = invalid("The permission is nested too deeply.");
const TOO_MANY_KEYS: ApiError = invalid("The permission has too many keys.");
const UNKNOWN_ABILITY: ApiError = invalid(
    "The permission names an ability that is not allowed, or gives it a non-boolean value.",
);
const ESCALATION: ApiError = ApiError::new(
    ErrorCode::Escalation,
    "The permission grants more than the session token does.",
);

/// Reads the permission out of a request body; `Ok(None)` when the body names none.
pub fn parse_body(
    content_type: Option<&[u8]>,
    body: &[u8],
    policy: &PermissionPolicy,
) -> Result<Option<Permission>, ApiError> {
    if body.is_empty() {
        return Ok(None);
    }
    let text = match media_type(content_type) {
        Some(MediaType::Form) => form_permission(body)?,
        Some(MediaType::Json) => json_permission(body)?,
        None => return Err(UNSUPPORTED),
    };
    text.map(|text| permission_from(text, policy)).transpose()
}

#[derive(Debug, PartialEq, Eq)]
enum MediaType {
    Form,
    Json,
}

/// `type/subtype` before any `;` parameters, case-insensitively.
fn media_type(content_type: Option<&[u8]>) -> Option<MediaType> {
    let value = std::str::from_utf8(content_type?).ok()?;
    let essence = value.split(';').next()?.trim();
    if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        Some(MediaType::Form)
    } else if essence.eq_ignore_ascii_case("application/json") {
        Some(MediaType::Json)
    } else {
        None
    }
}

fn form_permission(body: &[u8]) -> Result<Option<String>, ApiError> {
    match plain_form_permission(body) {
        Some(permission) => Ok(permission),
        None => decoded_form_permission(body),
    }
}

/// The common form, answered without the general decoder: no `+`, field names sent as is, one
/// `permission` whose value decodes to UTF-8 without U+FFFD. `None` leaves every other body to
/// [`decoded_form_permission`], whose answer this one always equals (a table test and the
/// permission fuzz target check).
fn plain_form_permission(body: &[u8]) -> Option<Option<String>> {
    if memchr::memchr(b'+', body).is_some() {
        return None;
    }
    let mut found = None;
    for pair in body.split(|&b| b == b'&') {
        let name = pair.split(|&b| b == b'=').next().unwrap_or_default();
        if memchr::memchr(b'%', name).is_some() || (name == b"permission" && found.is_some()) {
            return None;
        }
        if name == b"permission" {
            found = Some(pair.get(name.len() + 1..).unwrap_or_default());
        }
    }
    let Some(value) = found else {
        return Some(None);
    };
    match percent_encoding::percent_decode(value).decode_utf8() {
        Ok(text) if !text.contains('\u{FFFD}') => Some(Some(text.into_owned())),
        _ => None,
    }
}

/// Any url-encoded body, decoded as Rails and every form parser do.
fn decoded_form_permission(body: &[u8]) -> Result<Option<String>, ApiError> {
    /// Only `permission` is kept; other fields are skipped without allocating.
    #[derive(Deserialize)]
    struct Form {
        permission: Option<String>,
    }
    const NOT_UTF8: ApiError = bad_request("The form body is not valid UTF-8 url-encoded text.");
    // serde derive refuses a repeated field, which is what a second `permission` is.
    let form: Form = serde_urlencoded::from_bytes(body).map_err(|_| {
        bad_request("The form body is malformed or names permission more than once.")
    })?;
    // Form decoding turns invalid UTF-8 into U+FFFD; a permission must not change silently. Only
    // a decoded U+FFFD needs the strict (allocating) check: it may also have been sent as such.
    let replaced = form
        .permission
        .as_ref()
        .is_some_and(|p| p.contains('\u{FFFD}'));
    if replaced
        && percent_encoding::percent_decode(body)
            .decode_utf8()
            .is_err()
    {
        return Err(NOT_UTF8);
    }
    Ok(form.permission)
}

fn json_permission(body: &[u8]) -> Result<Option<String>, ApiError> {
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        permission: Option<&'a RawValue>,
    }
    const MALFORMED: ApiError =
        bad_request("The JSON body must be an object such as {\"permission\": {...}}.");
    // serde would also read a struct from a JSON array; only an object is a body.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(MALFORMED);
    }
    let parsed: Body = serde_json::from_slice(body).map_err(|_| MALFORMED)?;
    let Some(raw) = parsed.permission else {
        return Ok(None);
    };
    match raw.get().as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(raw.get())
            .map(Some)
            .map_err(|_| MALFORMED),
        Some(b'n') => Ok(None),
        _ => Ok(Some(raw.get().to_owned())),
    }
}

/// Parses permission JSON text and applies every rule that needs no caller claims.
pub fn parse_permission(text: &str, policy: &PermissionPolicy) -> Result<Permission, ApiError> {
    permission_from(text.to_owned(), policy)
}

fn permission_from(text: String, policy: &PermissionPolicy) -> Result<Permission, ApiError> {
    let checked = validate(&text, policy)?;
    // Valid JSON now, without duplicates: only a non-object fails here.
    let object = match (checked.form, checked.names) {
        // The check already saw where each top-level name sits; compact text needs no second read.
        (Form::Compact, Some(names)) => Object::from_compact(text, names),
        (Form::Compact, None) => return Err(NOT_OBJECT),
        (Form::Rewritten, _) => Object::parse(compact(&text)?).map_err(|_| NOT_OBJECT)?,
    };
    if object.iter().any(|(key, _)| policy.is_reserved(key)) {
        return Err(RESERVED);
    }
    let permission = Permission { object };
    if let Some(allowed) = &policy.abilities {
        let abilities = permission.get("abilities").map(tree).transpose()?;
        check_ability_names(abilities.as_ref(), allowed)?;
    }
    Ok(permission)
}

/// The text re-serialized compact (the payload has no whitespace), streamed without a tree.
fn compact(text: &str) -> Result<String, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let mut out = Vec::with_capacity(text.len());
    serde_transcode::transcode(
        &mut deserializer,
        &mut serde_json::Serializer::new(&mut out),
    )
    .map_err(|_| NOT_JSON)?;
    String::from_utf8(out).map_err(|_| NOT_JSON)
}

/// A value as a tree, for the few rules that need one.
fn tree(raw: &str) -> Result<Value, ApiError> {
    serde_json::from_str(raw).map_err(|_| NOT_JSON)
}

/// `abilities.<resource>.Access` may hold only allowed names, each a boolean.
fn check_ability_names(abilities: Option<&Value>, allowed: &[String]) -> Result<(), ApiError> {
    let Some(abilities) = abilities else {
        return Ok(());
    };
    let resources = abilities.as_object().ok_or(UNKNOWN_ABILITY)?;
    for resource in resources.values() {
        let Some(access) = resource.get("Access") else {
            continue;
        };
        let access = access.as_object().ok_or(UNKNOWN_ABILITY)?;
        let all_known = access
            .iter()
            .all(|(name, value)| value.is_boolean() && allowed.iter().any(|a| a == name));
        if !all_known {
            return Err(UNKNOWN_ABILITY);
        }
    }
    Ok(())
}

/// The request may only narrow: every grant it makes must be the caller's grant too, and a
/// claim the caller already holds may not be changed (that would be a grant of its own).
pub fn check_attenuation<'a, I>(permission: &Permission, caller: I) -> Result<(), ApiError>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    for (name, raw) in caller {
        let Some(requested) = permission.get(name) else {
            continue;
        };
        let (requested, held) = (tree(requested)?, tree(raw).map_err(|_| ESCALATION)?);
        let allowed = if name == "abilities" {
            covers(&requested, &held)
        } else {
            requested == held
        };
        if !allowed {
            return Err(ESCALATION);
        }
    }
    Ok(())
}

/// Whether `held` grants everything `requested` grants; `false` and empty containers grant nothing.
fn covers(requested: &Value, held: &Value) -> bool {
    if !grants_anything(requested) {
        return true;
    }
    match (requested, held) {
        (Value::Object(req), Value::Object(held)) => req
            .iter()
            .all(|(k, v)| covers(v, held.get(k).unwrap_or(&Value::Null))),
        (Value::Bool(true), held) => *held == Value::Bool(true),
        (requested, held) => requested == held,
    }
}

fn grants_anything(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => false,
        Value::Object(map) => map.values().any(grants_anything),
        Value::Array(items) => items.iter().any(grants_anything),
        _ => true,
    }
}

/// Whether re-serializing valid JSON text compactly would give back the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// Already compact: serde_json would write it byte for byte as it came.
    Compact,
    /// Whitespace between tokens, an escape, or a number serde_json writes differently.
    Rewritten,
}

/// What [`validate`] learned of valid JSON text.
#[derive(Debug, PartialEq, Eq)]
struct Checked {
    form: Form,
    /// Where each top-level name sits in the text, in order, when the text is an object whose
    /// names hold no escapes; `None` for any other value.
    names: Option<Vec<Range<usize>>>,
}

/// Checks JSON without building it: duplicate keys at any depth (which `serde_json::Value` would
/// silently collapse), nesting past the limit and too many keys are refused with 422, anything
/// that is not JSON with 400. Also tells whether the text is already compact, so the usual
/// request (a browser's `JSON.stringify`) is copied instead of re-serialized.
fn validate(text: &str, policy: &PermissionPolicy) -> Result<Checked, ApiError> {
    let violation = Cell::new(None);
    let top = RefCell::new(None);
    let keys = Cell::new(0usize);
    let rewritten = Cell::new(false);
    let spaces_in_strings = Cell::new(0usize);
    let names = RefCell::new(Vec::with_capacity(SCAN_LIMIT));
    let seed = Strict {
        base: text,
        top: &top,
        names: &names,
        depth: 0,
        policy,
        keys: &keys,
        violation: &violation,
        rewritten: &rewritten,
        spaces_in_strings: &spaces_in_strings,
    };
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let parsed = seed
        .deserialize(&mut deserializer)
        .and_then(|()| deserializer.end());
    match (parsed, violation.get()) {
        (_, Some(rule)) => Err(rule),
        (Err(_), None) => Err(NOT_JSON),
        (Ok(()), None) => {
            // Strings cannot hold raw tabs or line breaks, so whitespace beyond the spaces inside
            // strings sits between tokens.
            let compact = !rewritten.get() && json_spaces(text) == spaces_in_strings.get();
            let form = if compact {
                Form::Compact
            } else {
                Form::Rewritten
            };
            Ok(Checked {
                form,
                names: top.into_inner(),
            })
        }
    }
}

/// JSON's insignificant-whitespace bytes in `text`.
fn json_spaces(text: &str) -> usize {
    text.bytes()
        .filter(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .count()
}

/// Objects with more keys than this get a hash set for the duplicate check instead of a scan.
const SCAN_LIMIT: usize = 16;

#[derive(Clone, Copy)]
struct Strict<'a, 'de> {
    depth: usize,
    /// The text being read, which every borrowed string points into.
    base: &'de str,
    /// The top-level object's names as spans of `base`, once it turns out to be an object.
    top: &'a RefCell<Option<Vec<Range<usize>>>>,
    /// The keys of the objects being read, outermost first: one buffer for every level.
    names: &'a RefCell<Vec<Key<'de>>>,
    policy: &'a PermissionPolicy,
    keys: &'a Cell<usize>,
    violation: &'a Cell<Option<ApiError>>,
    /// Set once serde_json would write some value differently than it was sent.
    rewritten: &'a Cell<bool>,
    /// Spaces inside strings and keys as sent, to tell them from spaces between tokens.
    spaces_in_strings: &'a Cell<usize>,
}

impl Strict<'_, '_> {
    fn string_as_sent(self, text: &str) {
        self.spaces_in_strings
            .set(self.spaces_in_strings.get() + json_spaces(text));
    }

    fn deeper<E: de::Error>(self) -> Result<Self, E> {
        if self.depth + 1 > self.policy.limits.max_depth {
            return Err(self.refuse(TOO_DEEP));
        }
        Ok(Strict {
            depth: self.depth + 1,
            ..self
        })
    }

    fn refuse<E: de::Error>(self, rule: ApiError) -> E {
        self.violation.set(Some(rule));
        E::custom(rule.message)
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_, 'de> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        // Fractions, exponents, `-0` and integers beyond 64 bits: written back another way.
        self.rewritten.set(true);
        Ok(())
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<(), E> {
        self.string_as_sent(v);
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        // serde_json copies a string only to resolve escapes, which it writes back decoded.
        self.rewritten.set(true);
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.deeper()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.deeper()?;
        // A short scan for the usual small objects; a set once an object grows. An object's
        // keys sit above its parent's on the shared stack while it is read.
        let start = self.names.borrow().len();
        let mut index: Option<HashSet<Key<'de>>> = None;
        let top_level = self.depth == 0;
        if top_level {
            *self.top.borrow_mut() = Some(Vec::with_capacity(8));
        }
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match &key.0 {
                Cow::Borrowed(text) => {
                    self.string_as_sent(text);
                    if top_level {
                        if let Some(top) = self.top.borrow_mut().as_mut() {
                            top.push(span_of(self.base, text));
                        }
                    }
                }
                Cow::Owned(_) => self.rewritten.set(true),
            }
            self.keys.set(self.keys.get() + 1);
            if self.keys.get() > self.policy.limits.max_keys {
                return Err(self.refuse(TOO_MANY_KEYS));
            }
            let duplicate = match &mut index {
                Some(set) => !set.insert(key),
                None => {
                    let mut names = self.names.borrow_mut();
                    let duplicate = names[start..].contains(&key);
                    names.push(key);
                    if names.len() - start > SCAN_LIMIT {
                        index = Some(names.drain(start..).collect());
                    }
                    duplicate
                }
            };
            if duplicate {
                return Err(self.refuse(DUPLICATE));
            }
            map.next_value_seed(inner)?;
        }
        self.names.borrow_mut().truncate(start);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORM: &[u8] = b"application/x-www-form-urlencoded";
    const JSON: &[u8] = b"application/json";

    fn parse(ct: Option<&[u8]>, body: &str) -> Result<Option<String>, ErrorCode> {
        parse_body(ct, body.as_bytes(), &PermissionPolicy::default())
            .map(|p| p.map(|p| serde_json::to_string(&p).unwrap()))
            .map_err(|e| e.code)
    }

    #[test]
    fn both_body_forms_give_the_same_permission() {
        let want = Ok(Some(r#"{"a":{"b":true},"Id":"x y"}"#.to_string()));
        assert_eq!(
            parse(
                Some(FORM),
                "permission=%7B%22a%22%3A%7B%22b%22%3Atrue%7D%2C%22Id%22%3A%22x+y%22%7D"
            ),
            want
        );
        assert_eq!(
            parse(
                Some(b"Application/X-WWW-Form-Urlencoded; charset=UTF-8"),
                "other=1&permission=%7B%22a%22:%7B%22b%22:true%7D,%22Id%22:%22x%20y%22%7D"
            ),
            want
        );
        assert_eq!(
            parse(Some(JSON), r#"{"permission":{"a":{"b":true},"Id":"x y"}}"#),
            want
        );
        assert_eq!(
            parse(
                Some(b"application/json; charset=utf-8"),
                r#" {"permission":"{\"a\":{\"b\":true},\"Id\":\"x y\"}"}"#
            ),
            want
        );
    }

    #[test]
    fn the_plain_form_path_answers_as_the_general_decoder_or_not_at_all() {
        // (body, whether the plain path answers it)
        let table: [(&[u8], bool); 16] = [
            (b"permission=%7B%22a%22%3A1%7D", true),
            (b"a=1&&permission=%7B%7D&b", true),
            (b"a=%zz&permission=%7B%22%C3%A9%22%3A1%7D", true),
            (b"other=1", true),
            (b"permission", true),
            (b"permission=", true),
            (b"permission=%7B%22a%22%3A%22x+y%22%7D", false),
            (b"permissio%6E=%7B%22a%22%3A1%7D", false),
            (b"permission=%7B%7D&permissio%6E=%7B%7D", false),
            (b"permission=%7B%7D&permission=%7B%7D", false),
            (b"permission=%7B%22%FF%22%3A1%7D", false),
            (b"permission=%7B%22%EF%BF%BD%22%3A1%7D", false),
            (b"permission=%7B%22%EF%BF%BD%22%3A1%7D&x=%FF", false),
            (b"x=%FF&permission=%7B%22a%22%3A1%7D", true),
            (b"permission=%7B%7D&Permission=1", true),
            (b"=&permission==%7B%7D", true),
        ];
        for (body, plain) in table {
            let general = decoded_form_permission(body);
            match plain_form_permission(body) {
                Some(answer) => {
                    assert!(plain, "{:?} answered", String::from_utf8_lossy(body));
                    assert_eq!(Ok(answer), general.map_err(|e| e.code));
                }
                None => assert!(!plain, "{:?} not answered", String::from_utf8_lossy(body)),
            }
        }
        let refused = |body: &[u8]| form_permission(body).map_err(|e| e.code);
        assert_eq!(
            refused(b"permission=%7B%7D&permissio%6E=%7B%7D"),
            Err(ErrorCode::InvalidRequest)
        );
        assert_eq!(
            refused(b"permission=%7B%22%EF%BF%BD%22%3A1%7D&x=%FF"),
            Err(ErrorCode::InvalidRequest)
        );
        assert_eq!(refused(b"permissio%6E=%7B%7D"), Ok(Some("{}".to_owned())));
    }

    #[test]
    fn only_text_serde_json_writes_back_unchanged_is_copied() {
        let cases: &[(&str, Form)] = &[
            (
                r#"{"a":{"b":true,"c":[1,-2,null,false]},"Id":"x y"}"#,
                Form::Compact,
            ),
            (
                "{\"a b\":\"c  d\",\"é\":\"ü\u{7f}\",\"n\":18446744073709551615}",
                Form::Compact,
            ),
            (r#"{"n":-9223372036854775808,"e":{},"l":[]}"#, Form::Compact),
            (r#"{"a": 1}"#, Form::Rewritten),
            (" {\"a\":1}", Form::Rewritten),
            ("{\"a\":1}\n", Form::Rewritten),
            ("{\"a\":[1,\t2]}", Form::Rewritten),
            ("{\"a\":[1,\r\n2]}", Form::Rewritten),
            (r#"{"a":"x\"y"}"#, Form::Rewritten),
            (r#"{"a":"\u0041"}"#, Form::Rewritten),
            (r#"{"\u0041":1}"#, Form::Rewritten),
            (r#"{"a":"\/"}"#, Form::Rewritten),
            (r#"{"a":1.0}"#, Form::Rewritten),
            (r#"{"a":1e2}"#, Form::Rewritten),
            (r#"{"a":-0}"#, Form::Rewritten),
            (r#"{"a":18446744073709551616}"#, Form::Rewritten),
            (r#"{"a":-9223372036854775809}"#, Form::Rewritten),
            // A space in a key and one between tokens: the counts must not cancel out.
            (r#"{"a b":1,"c":2 }"#, Form::Rewritten),
        ];
        let policy = PermissionPolicy::default();
        for (text, form) in cases {
            assert_eq!(validate(text, &policy).map(|c| c.form), Ok(*form), "{text}");
            let mut deserializer = serde_json::Deserializer::from_str(text);
            let transcoder = serde_transcode::Transcoder::new(&mut deserializer);
            let rewritten = serde_json::value::to_raw_value(&transcoder).unwrap();
            if *form == Form::Compact {
                assert_eq!(rewritten.get(), *text);
            }
            // Either way the permission holds what the transcoder writes.
            let permission = parse_permission(text, &policy).unwrap();
            let held = serde_json::to_string(&permission).unwrap();
            assert_eq!(held, rewritten.get(), "{text}");
        }
    }

    #[test]
    fn compact_text_is_split_where_the_check_saw_its_names() {
        let policy = PermissionPolicy::default();
        let pairs = |object: &Object| -> Vec<(String, String)> {
            object
                .iter()
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect()
        };
        for text in [
            r#"{}"#,
            r#"{"a":1}"#,
            r#"{"a":",","b":{"c":"d,e:"},"f":[{"g":1}],"h":"}"}"#,
            r#"{"":null,"x y":"a b","é":{"Access":{"see":true}}}"#,
        ] {
            let checked = validate(text, &policy).unwrap();
            let split = match (checked.form, checked.names) {
                (Form::Compact, Some(names)) => Object::from_compact(text.to_owned(), names),
                other => panic!("{text}: {other:?}"),
            };
            let parsed = Object::parse(text.to_owned()).unwrap();
            assert_eq!(pairs(&split), pairs(&parsed), "{text}");
        }
        // Not an object, or an object only below the top: no names, so no permission.
        for text in ["1", "[{\"a\":1}]", "\"{}\""] {
            assert_eq!(validate(text, &policy).unwrap().names, None, "{text}");
            assert_eq!(
                parse_permission(text, &policy).err(),
                Some(NOT_OBJECT),
                "{text}"
            );
        }
    }

    #[test]
    fn a_reserved_claim_is_refused_in_every_place_and_spelling() {
        let policy = PermissionPolicy::default();
        for text in [
            r#"{"exp":1}"#,
            r#"{"a":1,"sub":"x"}"#,
            r#"{"a":{"exp":1},"iat":1,"b":2}"#,
            r#"{"a":1,"user_id":"someone-else"}"#,
            r#"{"a":1, "jti":"x"}"#,
            r#"{"\u0065xp":1}"#,
            r#"{"a":1,"us\u0065r_id":"x"}"#,
        ] {
            assert_eq!(
                parse_permission(text, &policy).err(),
                Some(RESERVED),
                "{text}"
            );
        }
        // Below the top level, a reserved name is only data.
        assert!(parse_permission(r#"{"a":{"exp":1}}"#, &policy).is_ok());
    }

    #[test]
    fn permission_is_optional() {
        assert_eq!(parse(None, ""), Ok(None));
        assert_eq!(parse(Some(FORM), "other=1"), Ok(None));
        assert_eq!(parse(Some(JSON), "{}"), Ok(None));
        assert_eq!(parse(Some(JSON), r#"{"permission":null}"#), Ok(None));
    }

    #[test]
    fn each_bad_body_has_its_code() {
        use ErrorCode::*;
        let cases: &[(Option<&[u8]>, &str, ErrorCode)] = &[
            (None, "permission=%7B%7D", UnsupportedMediaType),
            (
                Some(b"text/plain"),
                "permission=%7B%7D",
                UnsupportedMediaType,
            ),
            (
                Some(b"multipart/form-data; boundary=x"),
                "--x",
                UnsupportedMediaType,
            ),
            (Some(FORM), "permission=%7Bnot", InvalidRequest),
            (Some(FORM), "permission=", InvalidRequest),
            (
                Some(FORM),
                "permission=%7B%7D&permission=%7B%7D",
                InvalidRequest,
            ),
            (Some(FORM), "permission=%FF", InvalidRequest),
            (Some(JSON), "[{\"permission\":{}}]", InvalidRequest),
            (Some(JSON), "{\"permission\":{}", InvalidRequest),
            (
                Some(JSON),
                "{\"permission\":{},\"permission\":{}}",
                InvalidRequest,
            ),
            (Some(JSON), "{\"permission\":\"nope\"}", InvalidRequest),
            (Some(JSON), "{\"permission\":[1]}", InvalidPermission),
            (Some(JSON), "{\"permission\":\"7\"}", InvalidPermission),
            (
                Some(JSON),
                "{\"permission\":{\"exp\":9999999999}}",
                InvalidPermission,
            ),
            (
                Some(JSON),
                "{\"permission\":{\"user_id\":\"admin\"}}",
                InvalidPermission,
            ),
            (
                Some(JSON),
                "{\"permission\":{\"a\":1,\"a\":2}}",
                InvalidPermission,
            ),
            (
                Some(JSON),
                "{\"permission\":{\"a\":{\"b\":1,\"b\":1}}}",
                InvalidPermission,
            ),
            (
                Some(JSON),
                "{\"permission\":{\"a\":[{\"b\":1,\"b\":1}]}}",
                InvalidPermission,
            ),
        ];
        for (ct, body, code) in cases {
            assert_eq!(parse(*ct, body), Err(*code), "{body}");
        }
    }

    #[test]
    fn depth_and_key_limits() {
        let policy = PermissionPolicy::default();
        let nested = |n: usize| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n));
        assert!(parse_permission(&nested(16), &policy).is_ok());
        assert_eq!(parse_permission(&nested(17), &policy).err(), Some(TOO_DEEP));
        let arrays = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(parse_permission(&arrays, &policy).err(), Some(TOO_DEEP));
        let many: Vec<String> = (0..513).map(|i| format!("\"k{i}\":1")).collect();
        assert_eq!(
            parse_permission(&format!("{{{}}}", many.join(",")), &policy).err(),
            Some(TOO_MANY_KEYS)
        );
    }

    #[test]
    fn ability_allow_list() {
        let policy = PermissionPolicy {
            abilities: Some(vec!["see".into(), "image_list".into()]),
            ..PermissionPolicy::default()
        };
        let ok = r#"{"abilities":{"a1":{"Access":{"see":true,"image_list":false}},"tags":{"auto_tag":"x"}}}"#;
        assert!(parse_permission(ok, &policy).is_ok());
        for bad in [
            r#"{"abilities":{"a1":{"Access":{"rm_rf":true}}}}"#,
            r#"{"abilities":{"a1":{"Access":{"see":"yes"}}}}"#,
            r#"{"abilities":{"a1":{"Access":["see"]}}}"#,
            r#"{"abilities":["a1"]}"#,
        ] {
            assert_eq!(
                parse_permission(bad, &policy).err(),
                Some(UNKNOWN_ABILITY),
                "{bad}"
            );
        }
    }

    fn attenuate(requested: &str, caller: &[(&str, &str)]) -> Result<(), ErrorCode> {
        let permission = parse_permission(requested, &PermissionPolicy::default()).unwrap();
        check_attenuation(&permission, caller.iter().copied()).map_err(|e| e.code)
    }

    #[test]
    fn attenuation_narrows_never_widens() {
        let held = r#"{"a1":{"Access":{"see":true,"image_list":true,"image_upload":false}},"tags":{"auto_tag":"t"}}"#;
        let caller = [("abilities", held), ("Id", "\"a1\"")];
        assert_eq!(
            attenuate(r#"{"abilities":{"a1":{"Access":{"see":true}}}}"#, &caller),
            Ok(())
        );
        assert_eq!(
            attenuate(
                r#"{"abilities":{"a1":{"Access":{"see":true,"image_delete":false}}},"Id":"a1"}"#,
                &caller
            ),
            Ok(())
        );
        assert_eq!(
            attenuate(r#"{"abilities":{"tags":{"auto_tag":"t"}}}"#, &caller),
            Ok(())
        );
        assert_eq!(attenuate(r#"{"extra":1}"#, &caller), Ok(()));
        for widen in [
            r#"{"abilities":{"a1":{"Access":{"image_upload":true}}}}"#,
            r#"{"abilities":{"a1":{"Access":{"image_delete":true}}}}"#,
            r#"{"abilities":{"a2":{"Access":{"see":true}}}}"#,
            r#"{"abilities":{"tags":{"auto_tag":"other"}}}"#,
            r#"{"Id":"a2"}"#,
        ] {
            assert_eq!(
                attenuate(widen, &caller),
                Err(ErrorCode::Escalation),
                "{widen}"
            );
        }
        // A caller without abilities may be given any.
        assert_eq!(
            attenuate(r#"{"abilities":{"a9":{"Access":{"see":true}}}}"#, &[]),
            Ok(())
        );
    }
}
