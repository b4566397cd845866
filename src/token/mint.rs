//! Verified claims + permission → the signed ability token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::value::RawValue;

use super::keys::Key;
use super::permission::Permission;
use super::verify::Claims;

/// One claim of the minted payload: the caller's bytes as received, the permission's compact
/// value, or a capped `exp`.
enum Claim<'a> {
    Raw(&'a RawValue),
    Exp(u64),
}

impl Serialize for Claim<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Claim::Raw(raw) => raw.serialize(serializer),
            Claim::Exp(exp) => serializer.serialize_u64(*exp),
        }
    }
}

/// How minted tokens differ from the caller's claims; all off by default, which keeps the
/// seed's output byte for byte.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Minting {
    /// Upper bound on a minted token's lifetime, in seconds.
    pub max_ttl_secs: Option<u64>,
    /// The JOSE header's `typ` (RFC 8725 §3.11), instead of `JWT`.
    pub typ: Option<String>,
    /// `iss` written onto minted tokens.
    pub issuer: Option<String>,
    /// `aud` written onto minted tokens.
    pub audience: Option<String>,
}

impl Minting {
    /// Claims every minted token gets, replacing the caller's of the same name.
    fn overrides(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("iss", self.issuer.as_deref()),
            ("aud", self.audience.as_deref()),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| (name, v)))
    }
}

/// The caller's claims in order, then the permission's new keys in order; a key both hold takes
/// the permission's value in the caller's position (Ruby's `Hash#merge`, as the legacy did).
/// Configured `iss` / `aud` replace the caller's, or follow at the end.
struct Payload<'a> {
    claims: &'a Claims,
    permission: Option<&'a Permission>,
    capped_exp: Option<u64>,
    minting: &'a Minting,
}

impl Serialize for Payload<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        let overridden = |name: &str| self.minting.overrides().find(|(n, _)| *n == name);
        for (name, raw) in self.claims.entries() {
            if let Some((_, value)) = overridden(name) {
                map.serialize_entry(name, value)?;
                continue;
            }
            let claim = match (self.permission.and_then(|p| p.get(name)), name.as_str()) {
                (Some(value), _) => Claim::Raw(value),
                (None, "exp") => self.capped_exp.map_or(Claim::Raw(raw), Claim::Exp),
                (None, _) => Claim::Raw(raw),
            };
            map.serialize_entry(name, &claim)?;
        }
        for (name, value) in self.permission.into_iter().flat_map(Permission::iter) {
            if self.claims.get(name).is_none() {
                map.serialize_entry(name, &Claim::Raw(value))?;
            }
        }
        for (name, value) in self.minting.overrides() {
            if self.claims.get(name).is_none() {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

/// Signs the merged claims with `key`; `exp` becomes `min(exp, now + max_ttl)` when capped.
pub fn mint(
    claims: &Claims,
    permission: Option<&Permission>,
    key: &Key,
    minting: &Minting,
    now: u64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let payload = payload(claims, permission, minting, now)?;
    match &minting.typ {
        None => sign(key.signing_header(), key, &payload),
        Some(typ) => sign(&key.signing_header_with_typ(typ), key, &payload),
    }
}

/// The minted token's payload JSON: merged claims, `exp` capped by `max_ttl`.
pub fn payload(
    claims: &Claims,
    permission: Option<&Permission>,
    minting: &Minting,
    now: u64,
) -> Result<Vec<u8>, jsonwebtoken::errors::Error> {
    let capped_exp = minting
        .max_ttl_secs
        .map(|ttl| now.saturating_add(ttl))
        .filter(|cap| (*cap as f64) < claims.exp());
    // Sized for the usual claims set, so the writer does not grow the buffer step by step.
    let mut out = Vec::with_capacity(512);
    serde_json::to_writer(
        &mut out,
        &Payload {
            claims,
            permission,
            capped_exp,
            minting,
        },
    )?;
    Ok(out)
}

/// A session token like the legacy application's: `exp`, `iat`, then the subject claim.
pub fn session_token(
    key: &Key,
    subject_claim: &str,
    subject: &str,
    now: u64,
    ttl_secs: u64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let mut claims = serde_json::Map::new();
    claims.insert("exp".into(), now.saturating_add(ttl_secs).into());
    claims.insert("iat".into(), now.into());
    claims.insert(subject_claim.into(), subject.into());
    sign(key.signing_header(), key, &serde_json::to_vec(&claims)?)
}

/// `header.payload.signature`: `header` already base64url, signed HS256 by `key`.
fn sign(header: &str, key: &Key, payload: &[u8]) -> Result<String, jsonwebtoken::errors::Error> {
    let mut token = String::with_capacity(header.len() + payload.len() * 4 / 3 + 48);
    token.push_str(header);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut token);
    let signature = key.sign_hs256(token.as_bytes());
    token.push('.');
    token.push_str(&signature);
    Ok(token)
}
