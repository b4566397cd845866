//! Canonicalization never panics, and what it produces is canonical: a fixed point, starting
//! with `/`, without `//`, `/./` or `/../` (or a trailing `/.` or `/..`), with upper-case escapes
//! of bytes that are neither unreserved nor refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::request::path::canonical_path;
use tokengate::request::{canonicalize, Head, Options};

fuzz_target!(|data: &[u8]| {
    let (flags, target) = data.split_first().unwrap_or((&0, &[]));
    let allow_semicolon = flags & 1 == 1;
    let Ok(path) = canonical_path(target, allow_semicolon) else {
        return;
    };
    assert!(path.starts_with('/'), "{path:?}");
    for bad in ["//", "/./", "/../"] {
        assert!(!path.contains(bad), "{path:?} holds {bad}");
    }
    assert!(!path.ends_with("/.") && !path.ends_with("/.."), "{path:?}");
    let again = canonical_path(path.as_bytes(), allow_semicolon).expect("canonical stays valid");
    assert_eq!(again, path, "not a fixed point");
    let escapes = path.match_indices('%').all(|(i, _)| {
        path.get(i + 1..i + 3).is_some_and(|hex| {
            hex.bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
        })
    });
    assert!(escapes, "{path:?} has a lower-case or short escape");
    // The whole request line too: never a panic, whatever the method, Host and overrides.
    let head = Head {
        method: if flags & 2 == 2 { "POST" } else { "GET" },
        target,
        http11: flags & 4 == 4,
        host: (flags & 8 == 8).then_some(target),
        override_headers: &[target],
        transfer_encoding: if flags & 32 == 32 { &[target] } else { &[] },
    };
    let options = Options {
        allow_semicolon,
        honor_method_override: flags & 16 == 16,
    };
    let _ = canonicalize(&head, options);
});
