//! Session token + keyring + clock → verified claims, in their original order and bytes.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::keys::Keyring;
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

/// What a session token must satisfy besides its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyPolicy {
    /// Name of the claim holding the subject (`user_id` in the legacy tokens).
    pub subject_claim: String,
    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// When set, the `iss` claim must equal it.
    pub issuer: Option<String>,
    /// When set, the `aud` claim (a string, or an array) must hold it.
    pub audience: Option<String>,
    /// When set, a token whose header `typ` names it is refused (RFC 8725 §3.11): the token
    /// route's way of refusing a minted token replayed as a session token.
    pub refused_typ: Option<String>,
}

impl Default for VerifyPolicy {
    fn default() -> Self {
        VerifyPolicy {
            subject_claim: super::DEFAULT_SUBJECT_CLAIM.to_owned(),
            leeway_secs: 0,
            issuer: None,
            audience: None,
            refused_typ: None,
        }
    }
}

/// A verified token's claims: original order, original bytes of every value.
#[derive(Debug)]
pub struct Claims {
    entries: Vec<(String, Box<RawValue>)>,
    subject: String,
    exp: f64,
}

impl Claims {
    /// Every claim, in the token's order.
    pub fn entries(&self) -> &[(String, Box<RawValue>)] {
        &self.entries
    }

    /// The raw JSON of one claim.
    pub fn get(&self, name: &str) -> Option<&RawValue> {
        self.entries
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_ref())
    }

    /// The subject: a non-empty string.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The subject, taking it out of the claims.
    pub fn into_subject(self) -> String {
        self.subject
    }

    /// The `exp` claim, in seconds since the epoch.
    pub fn exp(&self) -> f64 {
        self.exp
    }

    /// The `iat` claim, when the token has a numeric one.
    pub fn issued_at(&self) -> Option<f64> {
        self.get("iat")
            .and_then(|raw| serde_json::from_str::<f64>(raw.get()).ok())
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
    policy: &VerifyPolicy,
    now: u64,
) -> Result<Claims, ApiError> {
    verify_as(token, keys, policy, now, true)
}

/// Verifies `token`; unless it must be a `session` token, the refused `typ` (what this gate
/// mints) is accepted too.
pub fn verify_as(
    token: &str,
    keys: &dyn SignatureKeys,
    policy: &VerifyPolicy,
    now: u64,
    session: bool,
) -> Result<Claims, ApiError> {
    let (message, signature) = token.rsplit_once('.').ok_or(MALFORMED)?;
    let (header_b64, payload_b64) = message.split_once('.').ok_or(MALFORMED)?;
    if header_b64.is_empty() || payload_b64.is_empty() || signature.is_empty() {
        return Err(MALFORMED);
    }
    let header_json = decode_segment(header_b64)?;
    let header: JoseHeader = serde_json::from_slice(&header_json).map_err(|_| MALFORMED)?;
    if header.crit.is_some() {
        return Err(CRITICAL);
    }
    if let (true, Some(refused), Some(typ)) = (session, &policy.refused_typ, &header.typ) {
        if typ.eq_ignore_ascii_case(refused) {
            return Err(WRONG_TYP);
        }
    }
    let alg = Algorithm::from_str(&header.alg).map_err(|_| BAD_ALGORITHM)?;
    keys.check(alg, header.kid.as_deref(), message.as_bytes(), signature)?;
    let payload = decode_segment(payload_b64)?;
    let entries = serde_json::from_slice::<OrderedClaims>(&payload)
        .map_err(|_| MALFORMED)?
        .0;
    check_claims(entries, policy, now)
}

fn check_claims(
    entries: Vec<(String, Box<RawValue>)>,
    policy: &VerifyPolicy,
    now: u64,
) -> Result<Claims, ApiError> {
    let find = |name: &str| {
        entries
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.get())
    };
    let exp: f64 = find("exp")
        .and_then(|raw| serde_json::from_str(raw).ok())
        .ok_or(NO_EXP)?;
    let nbf: Option<f64> = find("nbf")
        .map(|raw| serde_json::from_str(raw).map_err(|_| BAD_NBF))
        .transpose()?;
    let subject: String = find(&policy.subject_claim)
        .and_then(|raw| serde_json::from_str::<String>(raw).ok())
        .filter(|s| !s.is_empty())
        .ok_or(NO_SUBJECT)?;
    let (now, leeway) = (now as f64, policy.leeway_secs as f64);
    if now >= exp + leeway {
        return Err(EXPIRED);
    }
    if nbf.is_some_and(|nbf| nbf > now + leeway) {
        return Err(NOT_YET);
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
        entries,
        subject,
        exp,
    })
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

/// A JSON object kept as ordered `(name, raw value)` pairs; a repeated name is refused, since a
/// claim set with two `exp` means whatever each reader wants it to mean.
struct OrderedClaims(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for OrderedClaims {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ClaimsVisitor;
        impl<'de> Visitor<'de> for ClaimsVisitor {
            type Value = OrderedClaims;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of claims")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries: Vec<(String, Box<RawValue>)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if entries.iter().any(|(k, _)| *k == key) {
                        return Err(de::Error::custom("duplicate claim"));
                    }
                    let value: Box<RawValue> = map.next_value()?;
                    entries.push((key, value));
                }
                Ok(OrderedClaims(entries))
            }
        }
        deserializer.deserialize_map(ClaimsVisitor)
    }
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
        verify(
            token,
            &ring(&[Algorithm::HS256]),
            &VerifyPolicy::default(),
            now,
        )
        .map_err(|e| e.code)
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
        let got: Vec<(&str, &str)> = claims
            .entries()
            .iter()
            .map(|(k, v)| (k.as_str(), v.get()))
            .collect();
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
        let leeway = VerifyPolicy {
            leeway_secs: 5,
            ..VerifyPolicy::default()
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
        let policy = VerifyPolicy {
            issuer: Some("https://rails.example".into()),
            audience: Some("tokengate".into()),
            refused_typ: Some("tokengate+jwt".into()),
            ..VerifyPolicy::default()
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
            &VerifyPolicy::default(),
            1500
        )
        .is_ok());
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
