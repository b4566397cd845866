//! `Authorization` header values → token: any bytes, one header or several.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::error::ErrorCode;
use tokengate::token::extract::bearer_token;

fuzz_target!(|data: &[u8]| {
    let values: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    for headers in [&values[..1], &values[..]] {
        match bearer_token(headers.iter().copied()) {
            Ok(token) => {
                assert!(!token.is_empty());
                assert!(token.bytes().all(|b| b.is_ascii_graphic()));
            }
            Err(e) => assert!(matches!(
                e.code,
                ErrorCode::MissingToken | ErrorCode::InvalidRequest | ErrorCode::InvalidToken
            )),
        }
    }
});
