//! Where keys come from: the HMAC secrets (inline or a file re-read on rotation) and the optional
//! ES256 / EdDSA signing key with the keys the JWKS publishes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::values::{invalid, parse_duration};
use super::ConfigError;
use crate::token::asymmetric::{jwks, public_jwk, AsymmetricKey, KeyAlgorithm, PublicKeys};
use crate::token::Secret;

/// The development secret `conf/tokengate.yaml` ships with: public, so it may only ever serve
/// loopback listeners.
pub const DEVELOPMENT_SECRET: &str = "tokengate-dev-only-secret-do-not-deploy-0123456789";

/// Refuses the public development secret unless nothing but this machine can reach tokengate;
/// true when it is in use on loopback (worth a warning on every start).
pub(super) fn check_development_secret(
    secrets: &[Secret],
    listeners: &[SocketAddr],
) -> Result<bool, ConfigError> {
    if !secrets
        .iter()
        .any(|s| s.bytes == DEVELOPMENT_SECRET.as_bytes())
    {
        return Ok(false);
    }
    if listeners.iter().all(|a| a.ip().is_loopback()) {
        return Ok(true);
    }
    Err(ConfigError::Keys(crate::token::KeyError::Public))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSigning {
    algorithm: String,
    key_file: PathBuf,
    #[serde(default)]
    published_keys: Vec<PathBuf>,
    #[serde(default)]
    jwks_max_age: Option<String>,
}

/// Asymmetric signing of minted tokens and the JWKS that publishes the public keys.
#[derive(Debug)]
pub struct Signing {
    /// The private key minted tokens are signed with.
    pub key: Arc<AsymmetricKey>,
    /// The signing key's public half and every published key: they verify minted tokens.
    pub public: Arc<PublicKeys>,
    /// The JWKS body: the signing key's public half, then every published key.
    pub jwks: Vec<u8>,
    /// `Cache-Control: max-age` of the JWKS.
    pub jwks_max_age: Duration,
}

/// How long verifiers may cache the JWKS, unless configured.
const JWKS_MAX_AGE: &str = "5m";

pub(super) fn resolve_signing(raw: RawSigning) -> Result<Signing, ConfigError> {
    let alg = KeyAlgorithm::parse(&raw.algorithm).ok_or_else(|| {
        invalid(
            "tokengate.signing.algorithm",
            format!("{:?} is not ES256 or EdDSA", raw.algorithm),
        )
    })?;
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.clone(), e))
    };
    let key = AsymmetricKey::from_pem(alg, &read(&raw.key_file)?).map_err(|e| {
        invalid(
            "tokengate.signing.key_file",
            format!("{}: {e}", raw.key_file.display()),
        )
    })?;
    let mut published = vec![key.jwk().clone()];
    for path in &raw.published_keys {
        let jwk = public_jwk(alg, &read(path)?).map_err(|e| {
            invalid(
                "tokengate.signing.published_keys",
                format!("{}: {e}", path.display()),
            )
        })?;
        if !published.iter().any(|k| k.kid == jwk.kid) {
            published.push(jwk);
        }
    }
    let age = raw.jwks_max_age.as_deref().unwrap_or(JWKS_MAX_AGE);
    let public = PublicKeys::new(alg, &published)
        .map_err(|e| invalid("tokengate.signing.published_keys", e))?;
    Ok(Signing {
        key: Arc::new(key),
        public: Arc::new(public),
        jwks: jwks(&published),
        jwks_max_age: parse_duration("tokengate.signing.jwks_max_age", age)?,
    })
}
