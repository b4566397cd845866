//! The token core on the seed's request: the whole route, then each step alone.
//! `cargo bench --bench token_core`; figures in the README's performance section.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use tokengate::routes::{grants, Requirement, Resource};
use tokengate::token::extract::bearer_token;
use tokengate::token::mint::{mint, session_token};
use tokengate::token::permission::{check_attenuation, parse_body, PermissionPolicy};
use tokengate::token::verify::verify;
use tokengate::token::Settings;
use tokengate::token::{Keyring, Secret, SharedKeyring, TokenRequest, TokenService};

const SECRET: &[u8] = b"benchmark-secret-benchmark-secret-00";
const FORM: &[u8] = b"application/x-www-form-urlencoded";
const SEED_BODY: &[u8] = b"permission=%7B%22abilities%22%3A%7B%22album_id%22%3A%7B%22Access%22%3A%7B%22see%22%3Atrue%2C%22image_list%22%3Atrue%2C%22image_upload%22%3Atrue%2C%22image_delete%22%3Atrue%2C%22fullscreen%22%3Atrue%2C%22image_caption%22%3Atrue%7D%7D%2C%22tags%22%3A%7B%22auto_tag%22%3A%22test%22%7D%7D%2C%22Id%22%3A%22album_id%22%7D";
const IAT: u64 = 1_554_745_131;

fn keyring() -> Keyring {
    let secrets = [Secret {
        id: None,
        bytes: SECRET.to_vec(),
    }];
    Keyring::new(&secrets, &[jsonwebtoken::Algorithm::HS256]).expect("keyring")
}

fn bench(c: &mut Criterion) {
    let keys = keyring();
    // The seed's session token claims, signed with the bench secret.
    let session = session_token(
        keys.signing(),
        "user_id",
        "f551a1cb-930e-4501-87a9-f51a0718da3e",
        IAT,
        14_400,
    )
    .unwrap();
    let auth = format!("Token token=\"{session}\"");
    let service = TokenService {
        keys: SharedKeyring::new(keyring()),
        settings: Settings::default(),
        permission: PermissionPolicy::default(),
        minting: Default::default(),
        signer: None,
        minted_keys: None,
        issuers: Vec::new(),
    };
    let authorization = [auth.as_bytes()];
    let request = TokenRequest {
        authorization: &authorization,
        content_type: Some(FORM),
        body: SEED_BODY,
        cookie: None,
    };
    assert_eq!(service.handle(&request, IAT + 1).unwrap().body.len(), 485);

    c.bench_function("token route (seed request)", |b| {
        b.iter(|| service.handle(black_box(&request), IAT + 1))
    });
    c.bench_function("extract", |b| {
        b.iter(|| bearer_token(black_box([auth.as_bytes()])))
    });
    let policy = Settings::default();
    c.bench_function("verify", |b| {
        b.iter(|| verify(black_box(&session), &keys, &policy, IAT + 1))
    });
    let permission_policy = PermissionPolicy::default();
    c.bench_function("parse permission", |b| {
        b.iter(|| parse_body(Some(FORM), black_box(SEED_BODY), &permission_policy))
    });
    let claims = verify(&session, &keys, &policy, IAT + 1).unwrap();
    let permission = parse_body(Some(FORM), SEED_BODY, &permission_policy)
        .unwrap()
        .unwrap();
    c.bench_function("attenuation check", |b| {
        b.iter(|| check_attenuation(black_box(&permission), claims.iter()))
    });
    // A route's ability check on a token granting 100 albums, the one asked for last: the path
    // to the ability read alone, against the same lookup through a `serde_json::Value` tree.
    let albums: Vec<String> = (0..100)
        .map(|i| {
            format!(
                r#""album-{i}":{{"Access":{{"see":true,"image_list":true,"image_upload":false}}}}"#
            )
        })
        .collect();
    let abilities = format!("{{{}}}", albums.join(","));
    let requirement = Requirement {
        resource: Resource::parse("album-99"),
        access: "image_list".into(),
    };
    assert!(grants(Some(&abilities), &requirement, &[]));
    c.bench_function("route grant, 100 albums", |b| {
        b.iter(|| grants(Some(black_box(&abilities)), &requirement, &[]))
    });
    c.bench_function("route grant, 100 albums, as a Value tree", |b| {
        b.iter(|| {
            let tree: serde_json::Value = serde_json::from_str(black_box(&abilities)).unwrap();
            tree["album-99"]["Access"]["image_list"] == serde_json::Value::Bool(true)
        })
    });
    c.bench_function("merge + sign", |b| {
        b.iter(|| {
            mint(
                black_box(&claims),
                Some(&permission),
                keys.signing(),
                &Default::default(),
                IAT + 1,
            )
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
