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
    let service = service(Vec::new());
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

/// The per-request cost of a session from an identity provider, RS256 and ES256, against the
/// legacy HS256 session: `TokenService::authenticate` whole (extract, choose the issuer,
/// verify, make the session), as a forwarded request pays it.
fn identity_providers(c: &mut Criterion) {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;
    use tokengate::token::asymmetric::{generate, public_jwk, AsymmetricKey, KeyAlgorithm};
    use tokengate::token::issuer::{Issuer, KeySet, Loaded};

    const ISS: &str = "https://idp.example";
    let rsa = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).expect("an RSA key");
    let rsa_der = rsa.to_pkcs1_der().expect("PKCS#1");
    let rsa_jwk = serde_json::json!({
        "kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig",
        "n": URL_SAFE_NO_PAD.encode(rsa.n().to_bytes_be()),
        "e": URL_SAFE_NO_PAD.encode(rsa.e().to_bytes_be()),
    });
    let (ec_pem, _) = generate(KeyAlgorithm::Es256).expect("an EC key");
    let ec_jwk = public_jwk(KeyAlgorithm::Es256, &ec_pem).expect("its JWK");
    let document = serde_json::json!({ "keys": [rsa_jwk, ec_jwk] });
    let settings: tokengate::token::issuer::IssuerSettings =
        serde_json::from_value(serde_json::json!({ "issuer": ISS, "audience": "tokengate" }))
            .expect("settings");
    let issuer = Issuer::new(settings);
    let document = serde_json::to_vec(&document).unwrap();
    let algorithms = issuer.settings.algorithms.clone();
    // Keys as a fetch puts them in force: nothing verified with them yet.
    let fresh = move || Loaded {
        set: KeySet::parse(&document, &algorithms).expect("keys"),
        fetched_at: IAT,
        refresh_at: IAT + 3600,
        usable_until: IAT + 7200,
    };
    let keys = issuer.keys.clone();
    keys.set(fresh());
    let service = service(vec![issuer]);
    // An access token as oidc-provider issues one.
    let claims = format!(
        r#"{{"email":"alice@example.test","jti":"3y7FaJI_Mi3ukXI3hrM_vOKLfa4LBESRHNE8U86F9Dl","sub":"alice","iat":{IAT},"exp":{},"scope":"images","client_id":"alice","iss":"{ISS}","aud":"tokengate"}}"#,
        IAT + 600
    );
    let rs256 = {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"at+jwt","kid":"rsa-1"}"#);
        let message = format!("{header}.{}", URL_SAFE_NO_PAD.encode(&claims));
        let key = jsonwebtoken::EncodingKey::from_rsa_der(rsa_der.as_bytes());
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::RS256)
                .expect("signed");
        format!("{message}.{signature}")
    };
    let es256 = {
        let key = AsymmetricKey::from_pem(KeyAlgorithm::Es256, &ec_pem).expect("key");
        key.sign_typed("at+jwt", claims.as_bytes()).expect("signed")
    };
    let legacy = session_token(keyring().signing(), "user_id", "alice", IAT, 600).unwrap();
    let plain = self::service(Vec::new());
    for (name, service, token) in [
        ("authenticate HS256 session", &plain, &legacy),
        (
            "authenticate HS256 session, an issuer configured",
            &service,
            &legacy,
        ),
        ("authenticate RS256 IdP token", &service, &rs256),
        ("authenticate ES256 IdP token", &service, &es256),
    ] {
        let header = format!("Bearer {token}");
        let authorization = [header.as_bytes()];
        service
            .authenticate(&authorization, IAT + 1)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        c.bench_function(name, |b| {
            b.iter(|| service.authenticate(black_box(&authorization), IAT + 1))
        });
        if !name.contains("IdP") {
            continue;
        }
        // Its first request: the signature checked, not yet remembered.
        c.bench_function(&format!("{name}, first use"), |b| {
            b.iter_batched(
                || keys.set(fresh()),
                |()| service.authenticate(black_box(&authorization), IAT + 1),
                criterion::BatchSize::PerIteration,
            )
        });
    }
}

/// The token service of the bench secret, with `issuers`.
fn service(issuers: Vec<tokengate::token::issuer::Issuer>) -> TokenService {
    TokenService {
        keys: SharedKeyring::new(keyring()),
        settings: Settings::default(),
        permission: PermissionPolicy::default(),
        minting: Default::default(),
        signer: None,
        minted_keys: None,
        issuers,
    }
}

criterion_group!(benches, bench, identity_providers);
criterion_main!(benches);
