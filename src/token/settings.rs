//! The token section's settings, declared here by the component that uses them: each field is
//! a key of the configuration (flat spelling; `token.…` grouped), with its default beside it.
//! The keys and the secrets that sign are the configuration's business; everything else about
//! verifying and minting tokens is here.

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;

use crate::limits::RateLimit;

/// How session tokens are verified and ability tokens minted.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Path of the token route.
    pub token_path: String,
    /// The `endpoint` returned with minted tokens.
    pub endpoint: String,
    /// Name of the claim holding the subject (`user_id` in the legacy tokens).
    pub subject_claim: String,
    /// Algorithms session tokens may be signed with.
    pub algorithms: Vec<Algorithm>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Upper bound on a minted token's lifetime.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Option<Duration>,
    /// When set, session tokens must carry this `iss`, and minted ones get it.
    pub issuer: Option<String>,
    /// When set, session tokens' `aud` must hold it, and minted ones get it.
    pub audience: Option<String>,
    /// When set, the header `typ` of minted tokens, and a session token with it is refused
    /// (RFC 8725 §3.11: a minted token replayed as a session token).
    pub minted_typ: Option<String>,
    /// Claims a permission may not set, besides the standard ones and the subject claim.
    pub reserved_claims: Vec<String>,
    /// When set, the only names `abilities.<resource>.Access` may hold.
    pub abilities: Option<Vec<String>>,
    /// How many tokens one subject may mint.
    pub rate_limit: MintLimit,
    /// When set, a session token may come in this cookie instead of `Authorization`.
    pub cookie: Option<CookieSettings>,
}

/// The session cookie browser clients send instead of an `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CookieSettings {
    /// The cookie's name.
    pub name: String,
    /// Origins (`https://app.example`) besides this gate's own from which a cookie's token
    /// authorizes an unsafe method.
    #[serde(default)]
    pub origins: Vec<String>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            token_path: "/api/v1/token".to_owned(),
            endpoint: "localhost:5001".to_owned(),
            subject_claim: super::DEFAULT_SUBJECT_CLAIM.to_owned(),
            algorithms: vec![Algorithm::HS256],
            leeway: Duration::ZERO,
            max_ttl: None,
            issuer: None,
            audience: None,
            minted_typ: None,
            reserved_claims: Vec::new(),
            abilities: None,
            rate_limit: MintLimit::default(),
            cookie: None,
        }
    }
}

/// The per-subject mint limit: `burst` at once, then `mints` per `per`; `mints: 0` turns it
/// off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MintLimit {
    /// Mints per `per`, sustained.
    pub mints: u32,
    /// The window.
    #[serde(with = "humantime_serde")]
    pub per: Duration,
    /// Mints at once.
    pub burst: u32,
}

impl Default for MintLimit {
    /// A page minting one token per album for 100 albums is served; then 10 a second.
    fn default() -> MintLimit {
        MintLimit {
            mints: 10,
            per: Duration::from_secs(1),
            burst: 100,
        }
    }
}

impl MintLimit {
    /// The rate, unless turned off.
    pub fn rate(&self) -> Option<RateLimit> {
        (self.mints > 0).then_some(RateLimit {
            mints: self.mints,
            per: self.per,
            burst: self.burst,
        })
    }
}

impl Settings {
    /// What cannot be used, as (the key, the problem): a `typ` that does not differ from the
    /// session tokens', a mint limit that admits nothing.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if let Some(typ) = &self.minted_typ {
            if typ.eq_ignore_ascii_case("JWT") || typ.trim().is_empty() {
                return Err((
                    "minted_typ",
                    "must differ from JWT, the session tokens' typ (e.g. tokengate+jwt)".into(),
                ));
            }
        }
        if let Some(cookie) = &self.cookie {
            let token = |c: char| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?={}".contains(c);
            if cookie.name.is_empty() || !cookie.name.chars().all(token) {
                return Err((
                    "cookie.name",
                    format!("{:?} is not a cookie name", cookie.name),
                ));
            }
            // Scheme and authority only, as a browser's `Origin` carries them: no path, no `/`.
            let origin = |o: &String| {
                (o.starts_with("https://") || o.starts_with("http://"))
                    && o.matches('/').count() == 2
            };
            if let Some(bad) = cookie.origins.iter().find(|o| !origin(o)) {
                return Err((
                    "cookie.origins",
                    format!("{bad:?} is not an origin like https://app.example"),
                ));
            }
        }
        if self.rate_limit.per.is_zero() {
            return Err(("rate_limit.per", "must be longer than zero".into()));
        }
        if self.rate_limit.burst == 0 {
            return Err(("rate_limit.burst", "must be at least 1".into()));
        }
        Ok(())
    }
}
