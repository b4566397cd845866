//! Request body → permission, in every content type, with and without an ability allow-list,
//! then attenuation against a caller's abilities; the body as permission text itself must come
//! out exactly as serde_json writes it back, whether it was copied or re-serialized.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use tokengate::error::ErrorCode;
use tokengate::token::permission::{
    check_attenuation, parse_body, parse_permission, PermissionPolicy,
};

const CONTENT_TYPES: [Option<&[u8]>; 4] = [
    Some(b"application/x-www-form-urlencoded"),
    Some(b"application/json"),
    Some(b"application/json; charset=utf-8"),
    None,
];

fuzz_target!(|data: &[u8]| {
    let Some((selector, body)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(*selector) % CONTENT_TYPES.len()];
    let mut policy = PermissionPolicy::default();
    if selector & 0x80 != 0 {
        policy.abilities = Some(vec!["see".into(), "image_list".into()]);
    }
    if let Ok(text) = std::str::from_utf8(body) {
        if let Ok(permission) = parse_permission(text, &policy) {
            let tree: serde_json::Value = serde_json::from_str(text).expect("validated JSON");
            assert_eq!(
                serde_json::to_string(&permission).expect("serializes"),
                tree.to_string()
            );
        }
    }
    match parse_body(content_type, body, &policy) {
        Ok(Some(permission)) => {
            for key in permission.keys() {
                assert!(
                    !["exp", "iat", "nbf", "iss", "aud", "sub", "jti", "user_id"].contains(&key)
                );
            }
            let held = RawValue::from_string(
                r#"{"a1":{"Access":{"see":true,"image_list":false}},"tags":{"t":"x"}}"#.to_owned(),
            )
            .expect("static JSON");
            let _ = check_attenuation(&permission, [("abilities", held.as_ref())]);
        }
        Ok(None) => {}
        Err(e) => assert!(matches!(
            e.code,
            ErrorCode::InvalidRequest
                | ErrorCode::InvalidPermission
                | ErrorCode::UnsupportedMediaType
        )),
    }
});
