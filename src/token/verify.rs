//! Session token + keyring + clock → verified claims, in their original order and bytes.

use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde::Deserialize;

use super::keys::Keyring;
use super::object::Object;
use super::settings::Settings;
use crate::error::{ApiError, ErrorCode};

pub(crate) const MALFORMED: ApiError = ApiError::new(
    ErrorCode::InvalidToken,
    "The token is not a well-formed JWT.",
);
pub(crate) const BAD_ALGORITHM: ApiError = ApiError::new(
    ErrorCode::InvalidToken,
    "The token's signing algorithm is not allowed.",
);
pub(crate) const UNKNOWN_KID: ApiError = ApiError::new(
    ErrorCode::InvalidToken,
    "The token names an unknown key id.",
);
pub(crate) const BAD_SIGNATURE: ApiError = ApiError::new(
    ErrorCode::InvalidToken,
    "The token's signature is not valid.",
);
const CRITICAL: ApiError = ApiError::new(
    ErrorCode::InvalidToken,
    "The token's header lists critical extensions, which are not supported.",
);
const NO_EXP: ApiError = ApiError::new(
    ErrorCode::InvalidToken,
    "The token has no numeric exp claim.",
);
const BAD_NBF: ApiError = ApiError::new(
    ErrorCode::InvalidToken,
    "The token's nbf claim is not numeric.",
);
const BAD_IAT: ApiError = ApiError::new(
    ErrorCode::InvalidToken,
    "The token's iat claim is not numeric.",
);
/// A token issued in the future would outlive a sign-out, which compares `iat` with its time.
const FUTURE_IAT: ApiError = ApiError::new(
    ErrorCode::InvalidToken,
    "The token's iat claim lies in the future.",
);
const NO_SUBJECT: ApiError = ApiError::new(
    ErrorCode::InvalidToken,
    "The token lacks its subject claim, or it is not a non-empty string.",
);
const WRONG_TYP: ApiError = ApiError::new(
    ErrorCode::InvalidToken,
    "The token is a minted token, not a session token.",
);
const WRONG_ISSUER: ApiError = ApiError::new(
    ErrorCode::InvalidToken,
    "The token's issuer (iss) is not the one this gate accepts.",
);
const WRONG_AUDIENCE: ApiError = ApiError::new(
    ErrorCode::InvalidToken,
    "The token's audience (aud) does not include this gate.",
);
const EXPIRED: ApiError = ApiError::new(ErrorCode::TokenExpired, "The token has expired.");
const NOT_YET: ApiError = ApiError::new(ErrorCode::TokenNotYetValid, "The token is not valid yet.");

/// A verified token's claims: original order, original bytes of every value.
#[derive(Debug)]
pub struct Claims {
    object: Object,
    subject: Subject,
    exp: f64,
}

/// The subject: the claim's text when it holds no escapes, else decoded.
#[derive(Debug)]
enum Subject {
    /// Between the quotes of the raw value of the claim at this index.
    AsSent(usize),
    Decoded(String),
}

impl Claims {
    /// Every claim as (name, raw JSON value), in the token's order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.object.iter()
    }

    /// The raw JSON of one claim.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.object.get(name)
    }

    /// The subject: a non-empty string.
    pub fn subject(&self) -> &str {
        match &self.subject {
            Subject::Decoded(subject) => subject,
            Subject::AsSent(index) => self
                .object
                .entry(*index)
                .and_then(|(_, raw)| raw.get(1..raw.len().saturating_sub(1)))
                .unwrap_or_default(),
        }
    }

    /// The `exp` claim, in seconds since the epoch.
    pub fn exp(&self) -> f64 {
        self.exp
    }

    /// A session made of `object`, whose subject is under `subject_claim`: `None` without a
    /// numeric `exp` or a string subject.
    pub(crate) fn of_session(object: Object, subject_claim: &str) -> Option<Claims> {
        let exp = object
            .get("exp")
            .and_then(|raw| serde_json::from_str(raw).ok())?;
        let subject = subject(&object, subject_claim)?;
        Some(Claims {
            object,
            subject,
            exp,
        })
    }

    /// The `iat` claim, when the token has a numeric one.
    pub fn issued_at(&self) -> Option<f64> {
        self.get("iat")
            .and_then(|raw| serde_json::from_str::<f64>(raw).ok())
    }
}

/// The parts of a JOSE header that matter; `jwk`, `jku`, `x5u`, `x5c` are never even read.
#[derive(Deserialize)]
struct JoseHeader<'a> {
    /// Borrowed from the decoded header unless it holds escapes.
    #[serde(borrow)]
    alg: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    kid: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    typ: Option<std::borrow::Cow<'a, str>>,
    crit: Option<serde::de::IgnoredAny>,
}

/// Keys a token's signature is checked against.
pub trait SignatureKeys {
    /// Checks `signature` (base64url) over `message` for a token whose header names `alg` and
    /// `kid`: `Ok` when it is valid, else the reason, which never quotes the token.
    fn check(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
        message: &[u8],
        signature: &str,
    ) -> Result<(), ApiError>;
}

impl SignatureKeys for Keyring {
    fn check(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
        message: &[u8],
        signature: &str,
    ) -> Result<(), ApiError> {
        if !self.allows(alg) {
            return Err(BAD_ALGORITHM);
        }
        let mut candidates = self.candidates(kid).peekable();
        if candidates.peek().is_none() {
            return Err(UNKNOWN_KID);
        }
        let valid = candidates.any(|key| {
            if alg == Algorithm::HS256 {
                return key.verify_hs256(message, signature);
            }
            jsonwebtoken::crypto::verify(signature, message, key.decoding(), alg).unwrap_or(false)
        });
        valid.then_some(()).ok_or(BAD_SIGNATURE)
    }
}

/// Verifies session token `token` at `now` (seconds since the Unix epoch) against `keys`.
pub fn verify(
    token: &str,
    keys: &dyn SignatureKeys,
    policy: &Settings,
    now: u64,
) -> Result<Claims, ApiError> {
    verify_as(token, keys, policy, now, true)
}

/// Verifies `token`; unless it must be a `session` token, the refused `typ` (what this gate
/// mints) is accepted too.
pub fn verify_as(
    token: &str,
    keys: &dyn SignatureKeys,
    policy: &Settings,
    now: u64,
    session: bool,
) -> Result<Claims, ApiError> {
    let (message, signature) = token.rsplit_once('.').ok_or(MALFORMED)?;
    let (header_b64, payload_b64) = message.split_once('.').ok_or(MALFORMED)?;
    if header_b64.is_empty() || payload_b64.is_empty() || signature.is_empty() {
        return Err(MALFORMED);
    }
    // A JOSE header is a few dozen bytes: decoded on the stack unless it is unusually long.
    let mut stack = [0u8; HEADER_ON_STACK];
    let heap;
    let header = match COMMON_HEADERS.contains(&header_b64) {
        true => common_header(),
        false => {
            let header_json = match URL_SAFE_NO_PAD.decode_slice(header_b64, &mut stack) {
                Ok(len) => &stack[..len],
                Err(base64::DecodeSliceError::OutputSliceTooSmall) => {
                    heap = decode_segment(header_b64)?;
                    &heap[..]
                }
                Err(_) => return Err(MALFORMED),
            };
            serde_json::from_slice::<JoseHeader>(header_json).map_err(|_| MALFORMED)?
        }
    };
    if header.crit.is_some() {
        return Err(CRITICAL);
    }
    if let (true, Some(refused), Some(typ)) = (session, &policy.minted_typ, &header.typ) {
        if typ.eq_ignore_ascii_case(refused) {
            return Err(WRONG_TYP);
        }
    }
    let alg = Algorithm::from_str(&header.alg).map_err(|_| BAD_ALGORITHM)?;
    keys.check(alg, header.kid.as_deref(), message.as_bytes(), signature)?;
    let payload = String::from_utf8(decode_segment(payload_b64)?).map_err(|_| MALFORMED)?;
    let object = Object::parse(payload).map_err(|_| MALFORMED)?;
    check_claims(object, policy, now)
}

/// The JOSE headers nearly every HS256 session token carries, base64url: `{"typ":"JWT",
/// "alg":"HS256"}` (Rails' `JWT.encode`, the seed's) and `{"alg":"HS256","typ":"JWT"}` (PyJWT,
/// jsonwebtoken). Either is read without decoding it; any other header is decoded and parsed.
const COMMON_HEADERS: [&str; 2] = [
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9",
];

/// What [`COMMON_HEADERS`] say.
fn common_header() -> JoseHeader<'static> {
    JoseHeader {
        alg: "HS256".into(),
        kid: None,
        typ: Some("JWT".into()),
        crit: None,
    }
}

/// Bytes of decoded JOSE header kept on the stack.
const HEADER_ON_STACK: usize = 384;

fn check_claims(object: Object, policy: &Settings, now: u64) -> Result<Claims, ApiError> {
    let find = |name: &str| object.get(name);
    let exp: f64 = find("exp")
        .and_then(|raw| serde_json::from_str(raw).ok())
        .ok_or(NO_EXP)?;
    let nbf: Option<f64> = find("nbf")
        .map(|raw| serde_json::from_str(raw).map_err(|_| BAD_NBF))
        .transpose()?;
    let iat: Option<f64> = find("iat")
        .map(|raw| serde_json::from_str(raw).map_err(|_| BAD_IAT))
        .transpose()?;
    let subject = subject(&object, &policy.subject_claim).ok_or(NO_SUBJECT)?;
    let (now, leeway) = (now as f64, policy.leeway.as_secs() as f64);
    if now >= exp + leeway {
        return Err(EXPIRED);
    }
    if nbf.is_some_and(|nbf| nbf > now + leeway) {
        return Err(NOT_YET);
    }
    if iat.is_some_and(|iat| iat > now + leeway) {
        return Err(FUTURE_IAT);
    }
    if let Some(issuer) = &policy.issuer {
        let iss: Option<String> = find("iss").and_then(|raw| serde_json::from_str(raw).ok());
        if iss.as_deref() != Some(issuer.as_str()) {
            return Err(WRONG_ISSUER);
        }
    }
    if let Some(audience) = &policy.audience {
        let aud: Option<Audience> = find("aud").and_then(|raw| serde_json::from_str(raw).ok());
        let holds = match aud {
            Some(Audience::One(one)) => one == *audience,
            Some(Audience::Many(many)) => many.contains(audience),
            None => false,
        };
        if !holds {
            return Err(WRONG_AUDIENCE);
        }
    }
    Ok(Claims {
        object,
        subject,
        exp,
    })
}

/// The subject claim when it is a non-empty string: read in place unless it holds escapes.
fn subject(object: &Object, name: &str) -> Option<Subject> {
    let index = (0..object.len()).find(|&i| object.entry(i).is_some_and(|(n, _)| n == name))?;
    let (_, raw) = object.entry(index)?;
    let plain = raw.len() > 2 && raw.starts_with('"') && !raw.contains('\\');
    if plain {
        return Some(Subject::AsSent(index));
    }
    serde_json::from_str::<String>(raw)
        .ok()
        .filter(|s| !s.is_empty())
        .map(Subject::Decoded)
}

/// `aud`: one audience or several (RFC 7519 §4.1.3).
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

fn decode_segment(segment: &str) -> Result<Vec<u8>, ApiError> {
    URL_SAFE_NO_PAD.decode(segment).map_err(|_| MALFORMED)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::keys::Secret;
    use super::*;

    pub(crate) const SECRET: &str = "test-secret-test-secret-test-secret!";

    pub(crate) fn ring(algs: &[Algorithm]) -> Keyring {
        Keyring::new(
            &[Secret {
                id: None,
                bytes: SECRET.as_bytes().to_vec(),
            }],
            algs,
        )
        .unwrap()
    }

    /// Signs `header` and `payload` JSON as they are, bytes untouched.
    pub(crate) fn sign_raw(header: &str, payload: &str, alg: Algorithm, secret: &str) -> String {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, alg).unwrap();
        format!("{message}.{sig}")
    }

    const HS256: &str = r#"{"typ":"JWT","alg":"HS256"}"#;
    const CLAIMS: &str = r#"{"exp":2000,"iat":1000,"user_id":"u-1"}"#;

    fn check(token: &str, now: u64) -> Result<Claims, ErrorCode> {
        verify(token, &ring(&[Algorithm::HS256]), &Settings::default(), now).map_err(|e| e.code)
    }

    #[test]
    fn keeps_claim_order_and_bytes() {
        let token = sign_raw(
            HS256,
            r#"{"z":1.50,"exp":2000,"user_id":"u-1","a":"\u00e9"}"#,
            Algorithm::HS256,
            SECRET,
        );
        let claims = check(&token, 1500).unwrap();
        let got: Vec<(&str, &str)> = claims.iter().collect();
        assert_eq!(
            got,
            [
                ("z", "1.50"),
                ("exp", "2000"),
                ("user_id", "\"u-1\""),
                ("a", "\"\\u00e9\"")
            ]
        );
        assert_eq!(claims.subject(), "u-1");
    }

    #[test]
    fn time_bounds_are_exact() {
        let token = sign_raw(HS256, CLAIMS, Algorithm::HS256, SECRET);
        assert!(check(&token, 1999).is_ok());
        assert_eq!(check(&token, 2000).err(), Some(ErrorCode::TokenExpired));
        let leeway = Settings {
            leeway: std::time::Duration::from_secs(5),
            ..Settings::default()
        };
        assert!(verify(&token, &ring(&[Algorithm::HS256]), &leeway, 2004).is_ok());
        let nbf = sign_raw(
            HS256,
            r#"{"exp":2000,"nbf":1600,"user_id":"u"}"#,
            Algorithm::HS256,
            SECRET,
        );
        assert_eq!(check(&nbf, 1599).err(), Some(ErrorCode::TokenNotYetValid));
        assert!(check(&nbf, 1600).is_ok());
    }

    #[test]
    fn a_token_issued_in_the_future_is_refused_beyond_the_leeway() {
        let at = |iat: &str| {
            let claims = format!(r#"{{"exp":2000,"iat":{iat},"user_id":"u"}}"#);
            sign_raw(HS256, &claims, Algorithm::HS256, SECRET)
        };
        let future = at("1600");
        assert!(check(&future, 1600).is_ok());
        assert_eq!(check(&future, 1599).err(), Some(ErrorCode::InvalidToken));
        assert_eq!(
            check(&at("1600.5"), 1600).err(),
            Some(ErrorCode::InvalidToken)
        );
        assert_eq!(
            check(&at("\"1500\""), 1600).err(),
            Some(ErrorCode::InvalidToken)
        );
        let leeway = Settings {
            leeway: std::time::Duration::from_secs(5),
            ..Settings::default()
        };
        let ring = ring(&[Algorithm::HS256]);
        assert!(verify(&future, &ring, &leeway, 1595).is_ok());
        let refused = verify(&future, &ring, &leeway, 1594).err();
        assert_eq!(refused.map(|e| e.message), Some(FUTURE_IAT.message));
    }

    #[test]
    fn refuses_what_rfc_8725_says_to_refuse() {
        let cases = [
            sign_raw(r#"{"alg":"HS384"}"#, CLAIMS, Algorithm::HS384, SECRET),
            sign_raw(r#"{"alg":"HS512"}"#, CLAIMS, Algorithm::HS512, SECRET),
            format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
                URL_SAFE_NO_PAD.encode(CLAIMS)
            ),
            format!(
                "{}.{}.c2ln",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
                URL_SAFE_NO_PAD.encode(CLAIMS)
            ),
            sign_raw(
                r#"{"alg":"HS256","kid":"nope"}"#,
                CLAIMS,
                Algorithm::HS256,
                SECRET,
            ),
            sign_raw(
                r#"{"alg":"HS256","crit":["exp"]}"#,
                CLAIMS,
                Algorithm::HS256,
                SECRET,
            ),
            sign_raw(
                HS256,
                CLAIMS,
                Algorithm::HS256,
                "another-secret-another-secret-0000",
            ),
            sign_raw(
                HS256,
                r#"{"exp":2000,"exp":3000,"user_id":"u"}"#,
                Algorithm::HS256,
                SECRET,
            ),
            sign_raw(
                HS256,
                r#"{"exp":"2000","user_id":"u"}"#,
                Algorithm::HS256,
                SECRET,
            ),
            sign_raw(HS256, r#"{"user_id":"u"}"#, Algorithm::HS256, SECRET),
            sign_raw(
                HS256,
                r#"{"exp":2000,"user_id":""}"#,
                Algorithm::HS256,
                SECRET,
            ),
            sign_raw(
                HS256,
                r#"{"exp":2000,"user_id":7}"#,
                Algorithm::HS256,
                SECRET,
            ),
            sign_raw(HS256, r#"[1,2]"#, Algorithm::HS256, SECRET),
            "a.b".into(),
            "a.b.c.d".into(),
            "..".into(),
            "not a token".into(),
        ];
        for token in cases {
            assert_eq!(
                check(&token, 1500).err(),
                Some(ErrorCode::InvalidToken),
                "{token}"
            );
        }
    }

    #[test]
    fn issuer_audience_and_typ_are_checked_when_configured() {
        let policy = Settings {
            issuer: Some("https://rails.example".into()),
            audience: Some("tokengate".into()),
            minted_typ: Some("tokengate+jwt".into()),
            ..Settings::default()
        };
        let check = |header: &str, claims: &str| {
            let token = sign_raw(header, claims, Algorithm::HS256, SECRET);
            verify(&token, &ring(&[Algorithm::HS256]), &policy, 1500)
                .map(|_| ())
                .map_err(|e| e.message)
        };
        let good = r#"{"exp":2000,"user_id":"u","iss":"https://rails.example","aud":"tokengate"}"#;
        assert_eq!(check(HS256, good), Ok(()));
        assert_eq!(
            check(
                HS256,
                r#"{"exp":2000,"user_id":"u","iss":"https://rails.example","aud":["x","tokengate"]}"#
            ),
            Ok(())
        );
        assert_eq!(
            check(HS256, r#"{"exp":2000,"user_id":"u","aud":"tokengate"}"#),
            Err(WRONG_ISSUER.message)
        );
        assert_eq!(
            check(
                HS256,
                r#"{"exp":2000,"user_id":"u","iss":"https://rails.example","aud":"images"}"#
            ),
            Err(WRONG_AUDIENCE.message)
        );
        assert_eq!(
            check(r#"{"typ":"TOKENGATE+JWT","alg":"HS256"}"#, good),
            Err(WRONG_TYP.message)
        );
        // Nothing configured: none of it is looked at.
        let token = sign_raw(
            r#"{"typ":"tokengate+jwt","alg":"HS256"}"#,
            CLAIMS,
            Algorithm::HS256,
            SECRET,
        );
        assert!(verify(
            &token,
            &ring(&[Algorithm::HS256]),
            &Settings::default(),
            1500
        )
        .is_ok());
    }

    #[test]
    fn common_headers_read_as_they_decode() {
        for header in COMMON_HEADERS {
            let json = URL_SAFE_NO_PAD.decode(header).unwrap();
            let parsed: JoseHeader = serde_json::from_slice(&json).unwrap();
            let common = common_header();
            assert_eq!(
                (parsed.alg, parsed.kid, parsed.typ, parsed.crit.is_some()),
                (common.alg, common.kid, common.typ, common.crit.is_some())
            );
        }
        // The fast path still meets every other check: the signature, then the claims.
        let token = sign_raw(HS256, CLAIMS, Algorithm::HS256, SECRET);
        assert!(token.starts_with(COMMON_HEADERS[0]));
        assert!(check(&token, 1500).is_ok());
        let forged = sign_raw(
            HS256,
            CLAIMS,
            Algorithm::HS256,
            "another-secret-another-secret-0000",
        );
        assert_eq!(check(&forged, 1500).err(), Some(ErrorCode::InvalidToken));
        let typed = Settings {
            minted_typ: Some("jwt".into()),
            ..Settings::default()
        };
        let refused = verify(&token, &ring(&[Algorithm::HS256]), &typed, 1500);
        assert_eq!(refused.err().map(|e| e.message), Some(WRONG_TYP.message));
        let hs384_only = verify(
            &token,
            &ring(&[Algorithm::HS384]),
            &Settings::default(),
            1500,
        );
        assert_eq!(
            hs384_only.err().map(|e| e.message),
            Some(BAD_ALGORITHM.message)
        );
    }

    #[test]
    fn header_borne_keys_are_ignored() {
        // A token signed with the attacker's own key, which it carries in its header.
        let header =
            r#"{"alg":"HS256","jwk":{"kty":"oct","k":"YXR0YWNrZXI"},"jku":"http://127.0.0.1/k"}"#;
        let forged = sign_raw(header, CLAIMS, Algorithm::HS256, "attacker");
        assert_eq!(check(&forged, 1500).err(), Some(ErrorCode::InvalidToken));
        let genuine = sign_raw(header, CLAIMS, Algorithm::HS256, SECRET);
        assert!(check(&genuine, 1500).is_ok());
    }
}
