//! Identity-provider issuers: their settings, the keys they publish, and what a token one of
//! them signed becomes as a session. Pure: keys come in as a JWKS document, the clock as seconds;
//! fetching is the server's business.
//!
//! A token goes to an issuer only by its `iss`, and to a key only by its `kid` among that
//! issuer's keys. The algorithm is the key's: a JWK's `alg`, or what its type and curve allow,
//! within the issuer's `algorithms`; a symmetric JWK is never loaded, so no public key can be
//! used as an HMAC secret. `jku`, `x5u` and `jwk` headers are never read.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::mint::{Claim, ObjectWriter};
use super::object::Object;
use super::settings::Settings;
use super::verify::{self, Claims, SignatureKeys, BAD_ALGORITHM, BAD_SIGNATURE, UNKNOWN_KID};
use crate::error::{ApiError, ErrorCode};

/// One identity provider whose tokens are sessions, as configured under `tokengate.issuers`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSettings {
    /// The `iss` its tokens carry, exactly; also where its discovery document is.
    pub issuer: String,
    /// Where its keys are; when unset, the discovery document's `jwks_uri`.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// The `aud` its tokens must hold: required, or any of its clients' tokens would do.
    pub audience: String,
    /// Algorithms its keys may verify with (asymmetric only).
    #[serde(default = "defaults::algorithms")]
    pub algorithms: Vec<Algorithm>,
    /// The claim naming the subject in its tokens.
    #[serde(default = "defaults::subject_claim")]
    pub subject_claim: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    #[serde(default = "defaults::leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Claims of its tokens the session keeps (and a minted token copies), besides the subject
    /// and the times.
    #[serde(default)]
    pub claims: Vec<String>,
    /// When set, the session records the token's `iss` under this claim.
    #[serde(default)]
    pub issuer_claim: Option<String>,
    /// Shortest time the keys are kept before they are fetched again, whatever `Cache-Control`
    /// says.
    #[serde(default = "defaults::min_refresh", with = "humantime_serde")]
    pub min_refresh: Duration,
    /// Longest time the keys are kept before they are fetched again (and how long without
    /// `Cache-Control`).
    #[serde(default = "defaults::max_refresh", with = "humantime_serde")]
    pub max_refresh: Duration,
    /// Shortest time between two fetches for a token naming an unknown key.
    #[serde(default = "defaults::refetch_interval", with = "humantime_serde")]
    pub refetch_interval: Duration,
    /// How long keys stay in use past their refresh while the provider cannot be reached.
    #[serde(default = "defaults::stale_for", with = "humantime_serde")]
    pub stale_for: Duration,
    /// Longest one fetch (discovery or key set) may take.
    #[serde(default = "defaults::fetch_timeout", with = "humantime_serde")]
    pub fetch_timeout: Duration,
}

/// Defaults named once.
mod defaults {
    use jsonwebtoken::Algorithm;
    use std::time::Duration;

    pub fn algorithms() -> Vec<Algorithm> {
        use Algorithm::*;
        vec![
            RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA,
        ]
    }
    pub fn subject_claim() -> String {
        "sub".to_owned()
    }
    pub fn leeway() -> Duration {
        Duration::from_secs(30)
    }
    pub fn min_refresh() -> Duration {
        Duration::from_secs(60)
    }
    pub fn max_refresh() -> Duration {
        Duration::from_secs(3600)
    }
    pub fn refetch_interval() -> Duration {
        Duration::from_secs(30)
    }
    pub fn stale_for() -> Duration {
        Duration::from_secs(6 * 3600)
    }
    pub fn fetch_timeout() -> Duration {
        Duration::from_secs(5)
    }
}

impl IssuerSettings {
    /// What cannot be used, as (the key, the problem).
    pub fn check(&self, session_subject: &str) -> Result<(), (&'static str, String)> {
        let url = |text: &str| text.starts_with("https://") || text.starts_with("http://");
        if !url(&self.issuer) {
            return Err(("issuer", format!("{:?} is not an http(s) URL", self.issuer)));
        }
        if let Some(uri) = self.jwks_uri.as_deref().filter(|u| !url(u)) {
            return Err(("jwks_uri", format!("{uri:?} is not an http(s) URL")));
        }
        if self.audience.is_empty() {
            return Err(("audience", "must name this gate's audience".into()));
        }
        if self.algorithms.is_empty() {
            return Err(("algorithms", "must allow at least one algorithm".into()));
        }
        if let Some(alg) = self.algorithms.iter().find(|a| is_symmetric(**a)) {
            return Err((
                "algorithms",
                format!("{alg:?} is symmetric: an identity provider's keys are public"),
            ));
        }
        let kept = self.claims.iter().chain(&self.issuer_claim);
        if let Some(name) = kept.clone().find(|n| RESERVED.contains(&n.as_str())) {
            return Err(("claims", format!("{name:?} is set by tokengate itself")));
        }
        if let Some(name) = kept.clone().find(|n| *n == session_subject) {
            return Err((
                "claims",
                format!("{name:?} is the session's subject claim (token.subject_claim)"),
            ));
        }
        if self.min_refresh.is_zero() || self.min_refresh > self.max_refresh {
            return Err((
                "min_refresh",
                "must be above zero and at most max_refresh".into(),
            ));
        }
        Ok(())
    }

    /// The discovery document's address (OpenID Connect Discovery §4).
    pub fn discovery_uri(&self) -> String {
        format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        )
    }

    /// How long keys fetched with `max_age` (from `Cache-Control`) are kept before a refresh.
    pub fn keep_for(&self, max_age: Option<Duration>) -> Duration {
        max_age
            .unwrap_or(self.max_refresh)
            .clamp(self.min_refresh, self.max_refresh)
    }
}

/// Claims an IdP session never copies: tokengate sets or checks them itself.
const RESERVED: [&str; 6] = ["exp", "iat", "nbf", "iss", "aud", "sub"];

fn is_symmetric(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// `max-age` of a `Cache-Control` value; `no-store` and `no-cache` mean none at all.
pub fn max_age(cache_control: &str) -> Option<Duration> {
    let mut age = None;
    for directive in cache_control.split(',').map(str::trim) {
        let (name, value) = directive.split_once('=').unwrap_or((directive, ""));
        match name.trim().to_ascii_lowercase().as_str() {
            "no-store" | "no-cache" => return Some(Duration::ZERO),
            "max-age" => age = value.trim().trim_matches('"').parse().ok(),
            _ => {}
        }
    }
    age.map(Duration::from_secs)
}

/// The `jwks_uri` of a discovery document, when it names `issuer` as its own (§4.3: a document
/// for another issuer is refused).
pub fn discovered_jwks_uri(document: &[u8], issuer: &str) -> Result<String, String> {
    #[derive(Deserialize)]
    struct Discovery {
        issuer: String,
        jwks_uri: String,
    }
    let found: Discovery = serde_json::from_slice(document)
        .map_err(|e| format!("the discovery document is not usable: {e}"))?;
    if found.issuer != issuer {
        return Err(format!(
            "the discovery document is for issuer {:?}, not {issuer:?}",
            found.issuer
        ));
    }
    Ok(found.jwks_uri)
}

/// One public key of an issuer.
struct IssuerKey {
    kid: Option<String>,
    /// What it may verify: the JWK's `alg`, or what its type allows, within the settings.
    algorithms: Vec<Algorithm>,
    key: PublicKey,
}

/// A public key as `ring` verifies with it (about ten times faster than the pure-Rust
/// backend jsonwebtoken is built with here, for RSA and P-256 alike).
enum PublicKey {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// The uncompressed point, `04 || x || y`.
    Ec(Vec<u8>),
    Ed25519(Vec<u8>),
}

impl PublicKey {
    /// Whether `signature` (base64url) is `alg`'s over `message` by this key.
    fn verifies(&self, alg: Algorithm, message: &[u8], signature: &str) -> bool {
        use ring::signature::{self as sig, RsaPublicKeyComponents, UnparsedPublicKey};
        // RSA up to 8192 bits: 1 KiB; anything longer is not a signature of these keys.
        let mut decoded = [0u8; 1024];
        let Ok(len) = URL_SAFE_NO_PAD.decode_slice(signature, &mut decoded) else {
            return false;
        };
        let signature = &decoded[..len];
        let rsa = |params: &'static sig::RsaParameters, n: &[u8], e: &[u8]| {
            RsaPublicKeyComponents { n, e }
                .verify(params, message, signature)
                .is_ok()
        };
        let unparsed = |params: &'static dyn sig::VerificationAlgorithm, key: &[u8]| {
            UnparsedPublicKey::new(params, key)
                .verify(message, signature)
                .is_ok()
        };
        match (self, alg) {
            (PublicKey::Rsa { n, e }, Algorithm::RS256) => {
                rsa(&sig::RSA_PKCS1_2048_8192_SHA256, n, e)
            }
            (PublicKey::Rsa { n, e }, Algorithm::RS384) => {
                rsa(&sig::RSA_PKCS1_2048_8192_SHA384, n, e)
            }
            (PublicKey::Rsa { n, e }, Algorithm::RS512) => {
                rsa(&sig::RSA_PKCS1_2048_8192_SHA512, n, e)
            }
            (PublicKey::Rsa { n, e }, Algorithm::PS256) => {
                rsa(&sig::RSA_PSS_2048_8192_SHA256, n, e)
            }
            (PublicKey::Rsa { n, e }, Algorithm::PS384) => {
                rsa(&sig::RSA_PSS_2048_8192_SHA384, n, e)
            }
            (PublicKey::Rsa { n, e }, Algorithm::PS512) => {
                rsa(&sig::RSA_PSS_2048_8192_SHA512, n, e)
            }
            (PublicKey::Ec(point), Algorithm::ES256) => {
                unparsed(&sig::ECDSA_P256_SHA256_FIXED, point)
            }
            (PublicKey::Ec(point), Algorithm::ES384) => {
                unparsed(&sig::ECDSA_P384_SHA384_FIXED, point)
            }
            (PublicKey::Ed25519(x), Algorithm::EdDSA) => unparsed(&sig::ED25519, x),
            _ => false,
        }
    }
}

/// Tokens whose signature these keys verified, by a digest of the whole token: a client sends
/// the same token with each request, and an RSA or ECDSA check costs 30 to 80 µs where the
/// digest costs 2. Fixed size, overwritten by slot; a new key set starts empty, so a key
/// the provider withdraws verifies nothing more.
struct Verified {
    slots: Box<[[AtomicU64; 2]]>,
}

/// Tokens remembered per key set: 64 KiB.
const VERIFIED_SLOTS: usize = 4096;

impl Verified {
    fn new() -> Verified {
        Verified {
            slots: (0..VERIFIED_SLOTS)
                .map(|_| [AtomicU64::new(0), AtomicU64::new(0)])
                .collect(),
        }
    }

    /// 128 bits of SHA-256 over the token: a forged token matches one verified only by
    /// breaking SHA-256, whatever slot it lands in.
    fn digest(message: &[u8], signature: &str) -> [u64; 2] {
        let hash = Sha256::new()
            .chain_update(message)
            .chain_update(b".")
            .chain_update(signature.as_bytes())
            .finalize();
        let word = |i: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&hash[i * 8..i * 8 + 8]);
            u64::from_le_bytes(bytes)
        };
        [word(0), word(1)]
    }

    fn slot(&self, digest: [u64; 2]) -> &[AtomicU64; 2] {
        &self.slots[digest[0] as usize % self.slots.len()]
    }

    fn contains(&self, digest: [u64; 2]) -> bool {
        let slot = self.slot(digest);
        slot[0].load(Ordering::Relaxed) == digest[0] && slot[1].load(Ordering::Relaxed) == digest[1]
    }

    fn insert(&self, digest: [u64; 2]) {
        let slot = self.slot(digest);
        slot[0].store(digest[0], Ordering::Relaxed);
        slot[1].store(digest[1], Ordering::Relaxed);
    }
}

/// An issuer's signing keys, as read from its JWKS.
pub struct KeySet {
    keys: Vec<IssuerKey>,
    verified: Verified,
    /// Keys in the document that are not used: encryption keys, symmetric or unknown types.
    pub skipped: usize,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<_> = self.keys.iter().map(|k| k.kid.as_deref()).collect();
        write!(f, "KeySet {{ kids: {kids:?}, skipped: {} }}", self.skipped)
    }
}

impl KeySet {
    /// Reads a JWKS document; keys it cannot use are skipped, and none usable is an error.
    pub fn parse(document: &[u8], allowed: &[Algorithm]) -> Result<KeySet, String> {
        #[derive(Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document = serde_json::from_slice(document)
            .map_err(|e| format!("the key set is not a JWKS document: {e}"))?;
        let total = document.keys.len();
        let keys: Vec<IssuerKey> = document
            .keys
            .into_iter()
            .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
            .filter_map(|jwk| usable(&jwk, allowed))
            .collect();
        if keys.is_empty() {
            return Err(format!(
                "the key set holds no signing key for {allowed:?} ({total} keys in all)"
            ));
        }
        Ok(KeySet {
            skipped: total - keys.len(),
            keys,
            verified: Verified::new(),
        })
    }

    /// How many keys verify.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether it holds no key (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a token naming `kid` finds a key here.
    pub fn knows(&self, kid: Option<&str>) -> bool {
        kid.is_none() || self.keys.iter().any(|k| k.kid.as_deref() == kid)
    }
}

/// The key `jwk` makes, if it is a public signing key for an allowed algorithm.
fn usable(jwk: &Jwk, allowed: &[Algorithm]) -> Option<IssuerKey> {
    use Algorithm::*;
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let by_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => &[ES256],
            EllipticCurve::P384 => &[ES384],
            _ => &[],
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => &[EdDSA],
        _ => &[],
    };
    let declared = jwk
        .common
        .key_algorithm
        .and_then(|a| Algorithm::try_from(a).ok());
    let algorithms: Vec<Algorithm> = by_type
        .iter()
        .copied()
        .filter(|a| allowed.contains(a) && declared.is_none_or(|d| d == *a))
        .collect();
    if algorithms.is_empty() || jwk.common.key_algorithm.is_some() && declared.is_none() {
        return None;
    }
    let bytes = |text: &str| URL_SAFE_NO_PAD.decode(text).ok();
    let key = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => PublicKey::Rsa {
            n: bytes(&rsa.n)?,
            e: bytes(&rsa.e)?,
        },
        AlgorithmParameters::EllipticCurve(ec) => {
            let mut point = vec![4];
            point.extend(bytes(&ec.x)?);
            point.extend(bytes(&ec.y)?);
            PublicKey::Ec(point)
        }
        AlgorithmParameters::OctetKeyPair(okp) => PublicKey::Ed25519(bytes(&okp.x)?),
        _ => return None,
    };
    Some(IssuerKey {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key,
    })
}

impl SignatureKeys for KeySet {
    fn check(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
        message: &[u8],
        signature: &str,
    ) -> Result<(), ApiError> {
        let mut named = self
            .keys
            .iter()
            .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
            .peekable();
        if named.peek().is_none() {
            return Err(UNKNOWN_KID);
        }
        let mut fitting = named.filter(|k| k.algorithms.contains(&alg)).peekable();
        if fitting.peek().is_none() {
            return Err(BAD_ALGORITHM);
        }
        // The header (and so `alg` and `kid`) is part of what the digest covers.
        let digest = Verified::digest(message, signature);
        if self.verified.contains(digest) {
            return Ok(());
        }
        if !fitting.any(|k| k.key.verifies(alg, message, signature)) {
            return Err(BAD_SIGNATURE);
        }
        self.verified.insert(digest);
        Ok(())
    }
}

/// Keys as last fetched, and until when they may be used.
#[derive(Debug)]
pub struct Loaded {
    /// The keys.
    pub set: KeySet,
    /// When they were fetched (seconds since the epoch).
    pub fetched_at: u64,
    /// When they are due for a refresh.
    pub refresh_at: u64,
    /// After this, without a successful refresh, they are no longer used.
    pub usable_until: u64,
}

/// An issuer's keys as the server keeps them: swapped whole by each fetch, read per request.
#[derive(Debug, Default)]
pub struct IssuerKeys {
    loaded: RwLock<Option<Arc<Loaded>>>,
}

impl IssuerKeys {
    /// The keys in force, if any were ever fetched.
    pub fn current(&self) -> Option<Arc<Loaded>> {
        self.loaded
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `loaded` in force.
    pub fn set(&self, loaded: Loaded) {
        *self.loaded.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(loaded));
    }

    /// The keys when they may be used at `now`.
    pub fn usable(&self, now: u64) -> Option<Arc<Loaded>> {
        self.current().filter(|l| now <= l.usable_until)
    }
}

/// An issuer ready to verify: its settings, how its tokens are checked, and its keys.
#[derive(Debug)]
pub struct Issuer {
    /// As configured.
    pub settings: IssuerSettings,
    /// The token checks (`iss`, `aud`, subject, leeway) in the form [`verify`] reads.
    policy: Settings,
    /// Its keys, shared with whatever fetches them.
    pub keys: Arc<IssuerKeys>,
}

/// The issuer's keys were never fetched, or too long ago: fail closed.
pub const KEYS_UNAVAILABLE: ApiError = ApiError::new(
    ErrorCode::Unavailable,
    "The token's identity provider has no keys this gate can use now; try again shortly.",
);

impl Issuer {
    /// An issuer of `settings` with no keys yet.
    pub fn new(settings: IssuerSettings) -> Issuer {
        let policy = Settings {
            subject_claim: settings.subject_claim.clone(),
            algorithms: settings.algorithms.clone(),
            leeway: settings.leeway,
            issuer: Some(settings.issuer.clone()),
            audience: Some(settings.audience.clone()),
            minted_typ: None,
            ..Settings::default()
        };
        Issuer {
            settings,
            policy,
            keys: Arc::default(),
        }
    }

    /// Verifies `token` at `now` by this issuer's keys and makes it a session: the subject
    /// under `subject_claim`, the times, the kept claims, and the issuer when recorded.
    pub fn verify(&self, token: &str, now: u64, subject_claim: &str) -> Result<Claims, ApiError> {
        let loaded = self.keys.usable(now).ok_or(KEYS_UNAVAILABLE)?;
        let claims = verify::verify(token, &loaded.set, &self.policy, now)?;
        self.session(&claims, subject_claim)
    }

    /// The session claims of a verified token.
    fn session(&self, claims: &Claims, subject_claim: &str) -> Result<Claims, ApiError> {
        let mut out = Vec::with_capacity(256);
        self.write_session(&mut out, claims, subject_claim)
            .map_err(|_| verify::MALFORMED)?;
        let text = String::from_utf8(out).map_err(|_| verify::MALFORMED)?;
        let object = Object::parse(text).map_err(|_| verify::MALFORMED)?;
        Claims::of_session(object, subject_claim).ok_or(verify::MALFORMED)
    }

    /// The session's claims as a JSON object: the subject under `subject_claim`, the times
    /// and the kept claims in the token's order, then the issuer when recorded.
    fn write_session(
        &self,
        out: &mut Vec<u8>,
        claims: &Claims,
        subject_claim: &str,
    ) -> serde_json::Result<()> {
        let settings = &self.settings;
        let mut object = ObjectWriter::new(out);
        object.entry(subject_claim, Claim::Text(claims.subject()))?;
        for (name, raw) in claims.iter() {
            let kept =
                matches!(name, "exp" | "iat" | "nbf") || settings.claims.iter().any(|c| c == name);
            if kept && name != settings.subject_claim {
                object.entry(name, Claim::Raw(raw))?;
            }
        }
        if let Some(name) = &settings.issuer_claim {
            object.entry(name, Claim::Text(&settings.issuer))?;
        }
        object.end();
        Ok(())
    }
}

/// What a token says about where its keys are, read before anything is verified: only to
/// choose an issuer and know whether its key is at hand.
#[derive(Debug, PartialEq, Eq)]
pub struct Peek {
    /// `iss`, when the payload is an object with a string one.
    pub iss: Option<String>,
    /// The header's `kid`.
    pub kid: Option<String>,
}

/// The `iss` and `kid` of `token`, or `None` when its header and payload are not base64url
/// JSON objects.
pub fn peek(token: &str) -> Option<Peek> {
    #[derive(Deserialize)]
    struct Header<'a> {
        #[serde(borrow)]
        kid: Option<Cow<'a, str>>,
    }
    #[derive(Deserialize)]
    struct Payload<'a> {
        #[serde(borrow)]
        iss: Option<Cow<'a, str>>,
    }
    let mut parts = token.split('.');
    let (header, payload) = (parts.next()?, parts.next()?);
    let header = URL_SAFE_NO_PAD.decode(header).ok()?;
    let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let header: Header = serde_json::from_slice(&header).ok()?;
    let payload: Payload = serde_json::from_slice(&payload).ok()?;
    Some(Peek {
        iss: payload.iss.map(Cow::into_owned),
        kid: header.kid.map(Cow::into_owned),
    })
}

/// The issuer among `issuers` whose tokens `peeked` claims to be.
pub fn issuer_of<'i>(issuers: &'i [Issuer], peeked: &Peek) -> Option<(usize, &'i Issuer)> {
    let iss = peeked.iss.as_deref()?;
    issuers
        .iter()
        .enumerate()
        .find(|(_, i)| i.settings.issuer == iss)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::asymmetric::{self, generate, jwks, AsymmetricKey, KeyAlgorithm};

    const ISS: &str = "https://idp.example";
    const NOW: u64 = 10_000;

    /// A key pair: its signing key, and its JWK as published.
    struct Pair {
        private: AsymmetricKey,
        jwk: asymmetric::Jwk,
    }

    fn pair(alg: KeyAlgorithm) -> Pair {
        let (private, _) = generate(alg).unwrap();
        let jwk = asymmetric::public_jwk(alg, &private).unwrap();
        let private = AsymmetricKey::from_pem(alg, &private).unwrap();
        Pair { private, jwk }
    }

    fn settings() -> IssuerSettings {
        serde_json::from_value(serde_json::json!({
            "issuer": ISS, "audience": "tokengate", "claims": ["email"], "issuer_claim": "idp",
        }))
        .unwrap()
    }

    fn issuer_with(keys: &[&asymmetric::Jwk]) -> Issuer {
        let issuer = Issuer::new(settings());
        let owned: Vec<asymmetric::Jwk> = keys.iter().map(|k| (*k).clone()).collect();
        let set = KeySet::parse(&jwks(&owned), &issuer.settings.algorithms).unwrap();
        issuer.keys.set(Loaded {
            set,
            fetched_at: NOW - 10,
            refresh_at: NOW + 50,
            usable_until: NOW + 100,
        });
        issuer
    }

    /// Signs `header` and `payload` JSON with `pair`'s private key.
    fn sign(header: &str, payload: &str, pair: &Pair) -> String {
        let header = URL_SAFE_NO_PAD.encode(header);
        pair.private
            .sign_with_header(&header, payload.as_bytes())
            .unwrap()
    }

    fn es256(kid: &str) -> String {
        format!(r#"{{"alg":"ES256","typ":"at+jwt","kid":"{kid}"}}"#)
    }

    const GOOD: &str = r#"{"email":"a@example.test","sub":"alice","iat":9990,"exp":10600,"scope":"images","iss":"https://idp.example","aud":"tokengate"}"#;

    #[test]
    fn a_verified_token_becomes_a_session_of_the_kept_claims() {
        let key = pair(KeyAlgorithm::Es256);
        let issuer = issuer_with(&[&key.jwk]);
        let token = sign(&es256(&key.jwk.kid), GOOD, &key);
        let claims = issuer.verify(&token, NOW, "user_id").unwrap();
        let got: Vec<(&str, &str)> = claims.iter().collect();
        assert_eq!(
            got,
            [
                ("user_id", "\"alice\""),
                ("email", "\"a@example.test\""),
                ("iat", "9990"),
                ("exp", "10600"),
                ("idp", "\"https://idp.example\""),
            ]
        );
        assert_eq!(claims.subject(), "alice");
    }

    #[test]
    fn the_classic_attacks_are_refused() {
        let key = pair(KeyAlgorithm::Es256);
        let other = pair(KeyAlgorithm::Es256);
        let issuer = issuer_with(&[&key.jwk]);
        let kid = key.jwk.kid.as_str();
        let payload = |claims: &str| claims.to_owned();
        let unsigned = |header: &str, signature: &str| {
            format!(
                "{}.{}.{signature}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(GOOD)
            )
        };
        // HS256 with the public key's own bytes as the secret (the RS/HS confusion).
        let public_as_secret = {
            let header = format!(r#"{{"alg":"HS256","kid":"{kid}"}}"#);
            let message = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(&header),
                URL_SAFE_NO_PAD.encode(GOOD)
            );
            let secret = serde_json::to_vec(&key.jwk).unwrap();
            let encoding = jsonwebtoken::EncodingKey::from_secret(&secret);
            let signature =
                jsonwebtoken::crypto::sign(message.as_bytes(), &encoding, Algorithm::HS256)
                    .unwrap();
            format!("{message}.{signature}")
        };
        let cases: Vec<(&str, String, ApiError)> = vec![
            (
                "alg none",
                unsigned(r#"{"alg":"none"}"#, ""),
                verify::MALFORMED,
            ),
            (
                "alg none, a signature",
                unsigned(r#"{"alg":"none"}"#, "c2ln"),
                BAD_ALGORITHM,
            ),
            ("public key as HMAC secret", public_as_secret, BAD_ALGORITHM),
            (
                "another key under this kid",
                sign(&es256(kid), GOOD, &other),
                BAD_SIGNATURE,
            ),
            (
                "jwk header carrying the signer",
                sign(
                    &format!(
                        r#"{{"alg":"ES256","kid":"{kid}","jwk":{}}}"#,
                        serde_json::to_string(&other.jwk).unwrap()
                    ),
                    GOOD,
                    &other,
                ),
                BAD_SIGNATURE,
            ),
            (
                "jku and x5u headers",
                sign(
                    r#"{"alg":"ES256","jku":"http://127.0.0.1:1/k","x5u":"http://127.0.0.1:1/c"}"#,
                    GOOD,
                    &other,
                ),
                BAD_SIGNATURE,
            ),
            (
                "a kid that is a path",
                sign(&es256("../../../dev/null"), GOOD, &key),
                UNKNOWN_KID,
            ),
            (
                "a kid of another key",
                sign(&es256(&other.jwk.kid), GOOD, &other),
                UNKNOWN_KID,
            ),
            (
                "expired",
                sign(&es256(kid), &payload(&GOOD.replace("10600", "9960")), &key),
                ApiError::new(ErrorCode::TokenExpired, "The token has expired."),
            ),
            (
                "issued in the future",
                sign(&es256(kid), &payload(&GOOD.replace("9990", "10040")), &key),
                ApiError::new(
                    ErrorCode::InvalidToken,
                    "The token's iat claim lies in the future.",
                ),
            ),
            (
                "for another audience",
                sign(
                    &es256(kid),
                    &GOOD.replace("\"tokengate\"", "\"other\""),
                    &key,
                ),
                ApiError::new(
                    ErrorCode::InvalidToken,
                    "The token's audience (aud) does not include this gate.",
                ),
            ),
        ];
        for (name, token, expected) in cases {
            let got = issuer.verify(&token, NOW, "user_id").err();
            assert_eq!(got.map(|e| e.message), Some(expected.message), "{name}");
        }
    }

    #[test]
    fn a_remembered_signature_vouches_for_its_own_token_only() {
        let key = pair(KeyAlgorithm::Es256);
        let issuer = issuer_with(&[&key.jwk]);
        let token = sign(&es256(&key.jwk.kid), GOOD, &key);
        for _ in 0..2 {
            assert!(issuer.verify(&token, NOW, "user_id").is_ok());
        }
        let (message, signature) = token.rsplit_once('.').unwrap();
        let (header, _) = message.split_once('.').unwrap();
        let other_claims = URL_SAFE_NO_PAD.encode(GOOD.replace("alice", "admin"));
        let forgeries = [
            format!("{header}.{other_claims}.{signature}"),
            format!("{message}.{}", &signature[..signature.len() - 2]),
            format!("{message}.{signature}AA"),
        ];
        for forged in forgeries {
            let refused = issuer.verify(&forged, NOW, "user_id").err();
            assert_eq!(refused, Some(BAD_SIGNATURE), "{forged}");
        }
        // Remembered or not, the claims are checked every time.
        let short = sign(&es256(&key.jwk.kid), &GOOD.replace("10600", "10050"), &key);
        assert!(issuer.verify(&short, NOW, "user_id").is_ok());
        let expired = issuer.verify(&short, NOW + 90, "user_id").err();
        assert_eq!(expired.map(|e| e.code), Some(ErrorCode::TokenExpired));
        // A new key set without the key: the token it verified is refused, not remembered.
        let other = pair(KeyAlgorithm::Es256);
        let set = KeySet::parse(
            &jwks(std::slice::from_ref(&other.jwk)),
            &defaults::algorithms(),
        )
        .unwrap();
        issuer.keys.set(Loaded {
            set,
            fetched_at: NOW,
            refresh_at: NOW + 50,
            usable_until: NOW + 100,
        });
        assert_eq!(
            issuer.verify(&token, NOW, "user_id").err(),
            Some(UNKNOWN_KID)
        );
    }

    #[test]
    fn keys_are_used_only_while_usable() {
        let key = pair(KeyAlgorithm::Es256);
        let token = sign(&es256(&key.jwk.kid), GOOD, &key);
        let none = Issuer::new(settings());
        assert_eq!(
            none.verify(&token, NOW, "user_id").err(),
            Some(KEYS_UNAVAILABLE)
        );
        let issuer = issuer_with(&[&key.jwk]);
        assert!(issuer.verify(&token, NOW + 100, "user_id").is_ok());
        assert_eq!(
            issuer.verify(&token, NOW + 101, "user_id").err(),
            Some(KEYS_UNAVAILABLE)
        );
    }

    #[test]
    fn a_key_set_keeps_only_public_signing_keys_for_allowed_algorithms() {
        let ec = pair(KeyAlgorithm::Es256);
        let ed = pair(KeyAlgorithm::EdDsa);
        let mut document: serde_json::Value =
            serde_json::from_slice(&jwks(&[ec.jwk.clone(), ed.jwk.clone()])).unwrap();
        let keys = document["keys"].as_array_mut().unwrap();
        let mut encryption = keys[0].clone();
        encryption["use"] = "enc".into();
        encryption["kid"] = "enc".into();
        let mut mislabelled = keys[0].clone();
        mislabelled["alg"] = "RS256".into();
        mislabelled["kid"] = "mislabelled".into();
        keys.extend([
            encryption,
            mislabelled,
            serde_json::json!({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}),
            serde_json::json!({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA", "kid": "p521"}),
            serde_json::json!({"kty": "unknown", "kid": "what"}),
        ]);
        let bytes = serde_json::to_vec(&document).unwrap();
        let set = KeySet::parse(&bytes, &defaults::algorithms()).unwrap();
        assert_eq!((set.len(), set.skipped), (2, 5));
        assert!(set.knows(Some(&ec.jwk.kid)) && set.knows(Some(&ed.jwk.kid)));
        assert!(!set.knows(Some("hmac")) && !set.knows(Some("enc")));
        let es_only = KeySet::parse(&bytes, &[Algorithm::ES256]).unwrap();
        assert_eq!(es_only.len(), 1);
        let refused = KeySet::parse(&bytes, &[Algorithm::RS256]).unwrap_err();
        assert!(
            refused.starts_with("the key set holds no signing key"),
            "{refused}"
        );
        assert!(KeySet::parse(b"{\"keys\":{}}", &[Algorithm::ES256]).is_err());
    }

    #[test]
    fn cache_control_is_kept_within_the_bounds() {
        let s = IssuerSettings {
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(3600),
            ..settings()
        };
        let table = [
            ("public, max-age=300", 300),
            ("max-age=5", 60),
            ("max-age=86400, must-revalidate", 3600),
            ("no-store", 60),
            ("no-cache, max-age=300", 60),
            ("Max-Age=\"120\"", 120),
            ("max-age=soon", 3600),
            ("private", 3600),
        ];
        for (header, secs) in table {
            assert_eq!(s.keep_for(max_age(header)).as_secs(), secs, "{header}");
        }
        assert_eq!(s.keep_for(None).as_secs(), 3600);
    }

    #[test]
    fn a_discovery_document_for_another_issuer_is_refused() {
        let doc = br#"{"issuer":"https://idp.example","jwks_uri":"https://idp.example/jwks"}"#;
        assert_eq!(
            discovered_jwks_uri(doc, ISS).as_deref(),
            Ok("https://idp.example/jwks")
        );
        let other = discovered_jwks_uri(doc, "https://idp.example/").unwrap_err();
        assert!(other.contains("is for issuer"), "{other}");
        assert!(discovered_jwks_uri(b"{}", ISS).is_err());
    }

    #[test]
    fn unusable_settings_name_their_key() {
        let with = |change: serde_json::Value| {
            let mut value = serde_json::json!({"issuer": ISS, "audience": "tokengate"});
            value
                .as_object_mut()
                .unwrap()
                .extend(change.as_object().unwrap().clone());
            let settings: IssuerSettings = serde_json::from_value(value).unwrap();
            settings.check("user_id").err().map(|(key, _)| key)
        };
        assert_eq!(with(serde_json::json!({})), None);
        assert_eq!(
            with(serde_json::json!({"issuer": "idp.example"})),
            Some("issuer")
        );
        assert_eq!(
            with(serde_json::json!({"jwks_uri": "file:///k"})),
            Some("jwks_uri")
        );
        assert_eq!(with(serde_json::json!({"audience": ""})), Some("audience"));
        assert_eq!(
            with(serde_json::json!({"algorithms": ["HS256"]})),
            Some("algorithms")
        );
        assert_eq!(
            with(serde_json::json!({"algorithms": []})),
            Some("algorithms")
        );
        assert_eq!(with(serde_json::json!({"claims": ["aud"]})), Some("claims"));
        assert_eq!(
            with(serde_json::json!({"claims": ["user_id"]})),
            Some("claims")
        );
        assert_eq!(
            with(serde_json::json!({"issuer_claim": "exp"})),
            Some("claims")
        );
        assert_eq!(
            with(serde_json::json!({"min_refresh": "2h", "max_refresh": "1h"})),
            Some("min_refresh")
        );
    }

    #[test]
    fn peek_reads_only_where_the_keys_are() {
        let token = format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"k1"}"#),
            URL_SAFE_NO_PAD.encode(r#"{"iss":"https://idp.example","sub":"a"}"#)
        );
        let peeked = peek(&token).unwrap();
        assert_eq!(
            (peeked.iss.as_deref(), peeked.kid.as_deref()),
            (Some(ISS), Some("k1"))
        );
        assert!(peek("a.b.c").is_none());
        let issuers = [Issuer::new(settings())];
        assert_eq!(issuer_of(&issuers, &peeked).map(|(i, _)| i), Some(0));
        let elsewhere = Peek {
            iss: Some("https://idp.example/".into()),
            kid: None,
        };
        assert!(issuer_of(&issuers, &elsewhere).is_none());
    }
}
