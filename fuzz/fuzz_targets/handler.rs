//! The whole token route: header, body and content type from the fuzzer, real keys, a fixed clock.
//! No input may produce a 5xx, and every success must verify under the signing key.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tokengate::error::ErrorCode;
use tokengate::token::mint::session_token;
use tokengate::token::{
    Keyring, PermissionPolicy, Secret, Settings, SharedKeyring, TokenRequest, TokenService,
};

const NOW: u64 = 1_700_000_000;
const SECRET: &[u8] = b"fuzzing-secret-fuzzing-secret-0000";

struct Fixture {
    service: TokenService,
    session: String,
    ability: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let secrets = [Secret { id: None, bytes: SECRET.to_vec() }];
        let keys = Keyring::new(&secrets, &[jsonwebtoken::Algorithm::HS256]).expect("valid keyring");
        let session = session_token(keys.signing(), "user_id", "fuzz", NOW, 3600).expect("signs");
        let service = TokenService {
            keys: SharedKeyring::new(keys),
            settings: Settings::default(),
            permission: PermissionPolicy::default(),
            minting: tokengate::token::mint::Minting { max_ttl_secs: Some(600), ..Default::default() },
                signer: None,
            minted_keys: None,
            issuers: Vec::new(),
        };
        let auth = format!("Bearer {session}");
        let body = br#"{"permission":{"abilities":{"a1":{"Access":{"see":true,"image_list":true}}},"Id":"a1"}}"#;
        let request = TokenRequest {
            authorization: &[auth.as_bytes()],
            content_type: Some(b"application/json"),
            body,
            cookie: None,
        };
        let minted = service.handle(&request, NOW).expect("fixture mints");
        let minted: serde_json::Value = serde_json::from_slice(&minted.body).expect("JSON");
        let ability = minted["token"].as_str().expect("token").to_owned();
        Fixture { service, session, ability }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let session_auth = format!("Bearer {}", f.session);
    let ability_auth = format!("Token token=\"{}\"", f.ability);
    let (authorization, content_type, body): (Vec<&[u8]>, Option<&[u8]>, &[u8]) = match mode % 5 {
        0 => (
            rest.split(|b| *b == b'\n').collect(),
            Some(b"application/x-www-form-urlencoded"),
            b"permission=%7B%7D",
        ),
        1 => (
            vec![session_auth.as_bytes()],
            Some(b"application/x-www-form-urlencoded"),
            rest,
        ),
        2 => (
            vec![session_auth.as_bytes()],
            Some(b"application/json"),
            rest,
        ),
        3 => (
            vec![ability_auth.as_bytes()],
            Some(b"application/json"),
            rest,
        ),
        _ => {
            let (ct, body) = rest.split_at(rest.len().min(usize::from(mode / 5)));
            (vec![session_auth.as_bytes()], Some(ct), body)
        }
    };
    let request = TokenRequest {
        authorization: &authorization,
        content_type,
        body,
        cookie: None,
    };
    match f.service.handle(&request, NOW) {
        Ok(minted) => {
            let answer: serde_json::Value =
                serde_json::from_slice(&minted.body).expect("JSON answer");
            let token = answer["token"].as_str().expect("token field");
            let (message, signature) = token.rsplit_once('.').expect("three segments");
            let key = jsonwebtoken::DecodingKey::from_secret(SECRET);
            assert!(jsonwebtoken::crypto::verify(
                signature,
                message.as_bytes(),
                &key,
                jsonwebtoken::Algorithm::HS256
            )
            .expect("verifiable"));
        }
        Err(e) => {
            assert_ne!(e.code, ErrorCode::Internal);
            assert!(e.code.status() < 500 && !e.message.is_empty());
        }
    }
});
