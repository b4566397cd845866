//! Verified claims + permission → the signed ability token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::keys::Key;
use super::permission::Permission;
use super::verify::Claims;

/// One claim of the minted payload: the caller's or the permission's raw JSON as received, a
/// capped `exp`, or a configured string.
pub(crate) enum Claim<'a> {
    Raw(&'a str),
    Exp(u64),
    Text(&'a str),
}

/// A JSON object written entry by entry: names escaped as serde_json escapes them, raw values
/// copied as they are.
pub(crate) struct ObjectWriter<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> ObjectWriter<'a> {
    pub(crate) fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        ObjectWriter { out, empty: true }
    }

    pub(crate) fn entry(&mut self, name: &str, claim: Claim<'_>) -> serde_json::Result<()> {
        if !std::mem::take(&mut self.empty) {
            self.out.push(b',');
        }
        serde_json::to_writer(&mut *self.out, name)?;
        self.out.push(b':');
        match claim {
            Claim::Raw(raw) => self.out.extend_from_slice(raw.as_bytes()),
            Claim::Exp(exp) => serde_json::to_writer(&mut *self.out, &exp)?,
            Claim::Text(text) => serde_json::to_writer(&mut *self.out, text)?,
        }
        Ok(())
    }

    pub(crate) fn end(self) {
        self.out.push(b'}');
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
fn write_payload(
    out: &mut Vec<u8>,
    claims: &Claims,
    permission: Option<&Permission>,
    capped_exp: Option<u64>,
    minting: &Minting,
) -> serde_json::Result<()> {
    let mut object = ObjectWriter::new(out);
    let overridden = |name: &str| minting.overrides().find(|(n, _)| *n == name);
    for (name, raw) in claims.iter() {
        let claim = match (overridden(name), permission.and_then(|p| p.get(name)), name) {
            (Some((_, value)), _, _) => Claim::Text(value),
            (None, Some(value), _) => Claim::Raw(value),
            (None, None, "exp") => capped_exp.map_or(Claim::Raw(raw), Claim::Exp),
            (None, None, _) => Claim::Raw(raw),
        };
        object.entry(name, claim)?;
    }
    for (name, value) in permission.into_iter().flat_map(Permission::iter) {
        if claims.get(name).is_none() {
            object.entry(name, Claim::Raw(value))?;
        }
    }
    for (name, value) in minting.overrides() {
        if claims.get(name).is_none() {
            object.entry(name, Claim::Text(value))?;
        }
    }
    object.end();
    Ok(())
}

/// Signs the merged claims with `key`; `exp` becomes `min(exp, now + max_ttl)` when capped.
pub fn mint(
    claims: &Claims,
    permission: Option<&Permission>,
    key: &Key,
    minting: &Minting,
    now: u64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let mut token = String::new();
    mint_into(&mut token, claims, permission, key, minting, now)?;
    Ok(token)
}

/// [`mint`], the token appended to `out` (the response body, written around it).
pub fn mint_into(
    out: &mut String,
    claims: &Claims,
    permission: Option<&Permission>,
    key: &Key,
    minting: &Minting,
    now: u64,
) -> Result<(), jsonwebtoken::errors::Error> {
    let payload = payload(claims, permission, minting, now)?;
    match &minting.typ {
        None => sign(out, key.signing_header(), key, &payload),
        Some(typ) => sign(out, &key.signing_header_with_typ(typ), key, &payload),
    }
    Ok(())
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
    write_payload(&mut out, claims, permission, capped_exp, minting)?;
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
    let mut token = String::new();
    sign(
        &mut token,
        key.signing_header(),
        key,
        &serde_json::to_vec(&claims)?,
    );
    Ok(token)
}

/// Appends `header.payload.signature` to `out`: `header` already base64url, signed HS256 by `key`.
fn sign(out: &mut String, header: &str, key: &Key, payload: &[u8]) {
    out.reserve(header.len() + payload.len() * 4 / 3 + 48);
    let start = out.len();
    out.push_str(header);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, out);
    let tag = key.hs256_tag(&out.as_bytes()[start..]);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(tag, out);
}
