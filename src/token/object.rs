//! A JSON object's top-level entries kept as spans into its own text: names and raw values
//! read once, in order, without a copy of each (claims and permissions are read this way on
//! every request; only a name holding escapes is decoded into a string of its own).

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// An object's text and where each of its top-level entries sits in it.
#[derive(Debug, Default)]
pub(crate) struct Object {
    text: String,
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    name: Name,
    value: Range<usize>,
}

/// A name as sent, or decoded when it held escapes.
#[derive(Debug)]
enum Name {
    Span(Range<usize>),
    Decoded(Box<str>),
}

impl Object {
    /// Reads `text` as one JSON object; a name sent twice is refused, since an object with two
    /// `exp` means whatever each reader wants it to mean.
    pub(crate) fn parse(text: String) -> Result<Object, serde_json::Error> {
        let mut deserializer = serde_json::Deserializer::from_str(&text);
        let entries = Spans { base: &text }.deserialize(&mut deserializer)?;
        deserializer.end()?;
        Ok(Object { text, entries })
    }

    /// The object whose top-level names sit at `names` in `text`, which must be valid compact
    /// JSON (no whitespace between tokens) with no escape in those names, as a strict check of
    /// `text` found: each value then runs from after its name's `":` to before the next `,"`,
    /// or the closing `}`.
    pub(crate) fn from_compact(text: String, names: Vec<Range<usize>>) -> Object {
        let ends = names
            .iter()
            .skip(1)
            .map(|next| next.start.saturating_sub(2))
            .chain([text.len().saturating_sub(1)]);
        let entries = names
            .iter()
            .zip(ends)
            .map(|(name, end)| Entry {
                name: Name::Span(name.clone()),
                value: name.end + 2..end,
            })
            .collect();
        Object { text, entries }
    }

    /// Every entry as (name, raw JSON value), in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|entry| (self.name(entry), slice(&self.text, &entry.value)))
    }

    /// The raw JSON value of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The entry at `index`, as (name, raw JSON value).
    pub(crate) fn entry(&self, index: usize) -> Option<(&str, &str)> {
        let entry = self.entries.get(index)?;
        Some((self.name(entry), slice(&self.text, &entry.value)))
    }

    /// How many entries the object has.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn name<'a>(&'a self, entry: &'a Entry) -> &'a str {
        entry.name.text(&self.text)
    }
}

impl Name {
    fn text<'a>(&'a self, base: &'a str) -> &'a str {
        match self {
            Name::Span(span) => slice(base, span),
            Name::Decoded(name) => name,
        }
    }
}

/// The raw JSON value of member `name` of the JSON object `object`, read without building the
/// object; `None` when it is absent, named twice (which readers disagree on), or `object` is no
/// object.
pub(crate) fn member<'a>(object: &'a str, name: &str) -> Option<&'a str> {
    let mut deserializer = serde_json::Deserializer::from_str(object);
    Member { name }
        .deserialize(&mut deserializer)
        .ok()
        .flatten()
}

/// Looks for one member, skipping the others' values unread.
struct Member<'n> {
    name: &'n str,
}

impl<'de> DeserializeSeed<'de> for Member<'_> {
    type Value = Option<&'de str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Member<'_> {
    type Value = Option<&'de str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(Key(name)) = map.next_key()? {
            if name != self.name {
                map.next_value::<de::IgnoredAny>()?;
            } else if found.is_some() {
                return Err(de::Error::custom("a name repeated"));
            } else {
                found = Some(map.next_value::<&RawValue>()?.get());
            }
        }
        Ok(found)
    }
}

/// `base[span]`; spans come from the parse of `base`, so they always fall on characters.
fn slice<'a>(base: &'a str, span: &Range<usize>) -> &'a str {
    base.get(span.clone()).unwrap_or_default()
}

/// Where `part`, borrowed from `base`, starts and ends in it.
pub(crate) fn span_of(base: &str, part: &str) -> Range<usize> {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    start..start + part.len()
}

/// Deserializes the top-level entries of `base` as spans of it.
struct Spans<'a> {
    base: &'a str,
}

impl<'de> DeserializeSeed<'de> for Spans<'_> {
    type Value = Vec<Entry>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<Entry>, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Spans<'_> {
    type Value = Vec<Entry>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Entry>, A::Error> {
        let mut entries: Vec<Entry> = Vec::with_capacity(8);
        while let Some(Key(name)) = map.next_key()? {
            if entries.iter().any(|e| e.name.text(self.base) == name) {
                return Err(de::Error::custom("a name repeated"));
            }
            let value: &RawValue = map.next_value()?;
            let name = match name {
                Cow::Borrowed(text) => Name::Span(span_of(self.base, text)),
                Cow::Owned(text) => Name::Decoded(text.into_boxed_str()),
            };
            entries.push(Entry {
                name,
                value: span_of(self.base, value.get()),
            });
        }
        Ok(entries)
    }
}

/// A member name, borrowed from the text unless it holds escapes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key<'de>(pub(crate) Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_keep_order_bytes_and_decoded_names() {
        let object =
            Object::parse(r#" {"z" : 1.50,"\u0065xp":2000, "a":{"b": [1, "\u00e9"]}} "#.into())
                .unwrap();
        let got: Vec<(&str, &str)> = object.iter().collect();
        assert_eq!(
            got,
            [
                ("z", "1.50"),
                ("exp", "2000"),
                ("a", r#"{"b": [1, "\u00e9"]}"#)
            ]
        );
        assert_eq!(object.get("exp"), Some("2000"));
        assert_eq!(object.get("b"), None);
        assert_eq!(object.len(), 3);
    }

    #[test]
    fn one_member_is_found_without_reading_the_others() {
        let object = r#"{"a":{"x":[1,{"y":2}]},"\u0062":true, "c" : "t"}"#;
        for (name, want) in [
            ("a", Some(r#"{"x":[1,{"y":2}]}"#)),
            ("b", Some("true")),
            ("c", Some(r#""t""#)),
            ("x", None),
        ] {
            assert_eq!(member(object, name), want, "{name}");
        }
        for object in [
            r#"{"a":1,"a":2}"#,
            r#"{"a":1,"\u0061":2}"#,
            "[1]",
            "7",
            r#"{"a":"#,
        ] {
            assert_eq!(member(object, "a"), None, "{object}");
        }
    }

    #[test]
    fn only_one_object_with_distinct_names_is_read() {
        for text in [
            r#"{"exp":1,"exp":2}"#,
            r#"{"exp":1,"\u0065xp":2}"#,
            r#"[1,2]"#,
            r#""exp""#,
            r#"{"a":1} {"b":2}"#,
            r#"{"a":1"#,
            "",
        ] {
            assert!(Object::parse(text.into()).is_err(), "{text}");
        }
        assert_eq!(Object::parse("{}".into()).unwrap().len(), 0);
    }
}
