//! Request body → permission, in every content type, with and without an ability allow-list,
//! then attenuation against a caller's abilities; the body as permission text itself must come
//! out exactly as serde_json writes it back, whether it was copied or re-serialized; a form
//! body must give what the general form decoder's `permission` field gives.
#![no_main]

use libfuzzer_sys::fuzz_target;
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
    if content_type == CONTENT_TYPES[0] {
        assert_form_decoded(body, &policy);
    }
    match parse_body(content_type, body, &policy) {
        Ok(Some(permission)) => {
            for key in permission.keys() {
                assert!(
                    !["exp", "iat", "nbf", "iss", "aud", "sub", "jti", "user_id"].contains(&key)
                );
            }
            let held = r#"{"a1":{"Access":{"see":true,"image_list":false}},"tags":{"t":"x"}}"#;
            let _ = check_attenuation(&permission, [("abilities", held)]);
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

/// `parse_body` on a form body answers as `form_urlencoded` decodes it: no `permission` is no
/// permission, two are refused, one is parsed as the permission text, unless it had invalid UTF-8.
fn assert_form_decoded(body: &[u8], policy: &PermissionPolicy) {
    let fields: Vec<String> = form_urlencoded::parse(body)
        .filter(|(name, _)| name == "permission")
        .map(|(_, value)| value.into_owned())
        .collect();
    let got = parse_body(CONTENT_TYPES[0], body, policy);
    match fields.as_slice() {
        _ if body.is_empty() => assert!(matches!(got, Ok(None))),
        [] => assert!(matches!(got, Ok(None))),
        [text]
            if text.contains('\u{FFFD}')
                && percent_encoding::percent_decode(body)
                    .decode_utf8()
                    .is_err() =>
        {
            assert!(matches!(got, Err(e) if e.code == ErrorCode::InvalidRequest))
        }
        [text] => match (parse_permission(text, policy), got) {
            (Ok(want), Ok(Some(got))) => assert_eq!(
                serde_json::to_string(&want).expect("serializes"),
                serde_json::to_string(&got).expect("serializes")
            ),
            (Err(want), Err(got)) => assert_eq!(want.code, got.code),
            (want, got) => panic!("form body: wanted {want:?}, got {got:?}"),
        },
        _ => assert!(matches!(got, Err(e) if e.code == ErrorCode::InvalidRequest)),
    }
}
