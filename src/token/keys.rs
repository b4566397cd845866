//! The keyring: HMAC secrets that verify session tokens, the first of which signs.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey};
use sha2::Sha256;

/// Shortest secret accepted: RFC 7518 §3.2 wants a key at least as long as the HS256 hash.
pub const MIN_SECRET_LEN: usize = 32;

/// One secret as configured: its optional key id and its bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    /// The `kid` tokens may name to select this key.
    pub id: Option<String>,
    /// The HMAC key material.
    pub bytes: Vec<u8>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material, not even in a debug dump.
        write!(
            f,
            "Secret {{ id: {:?}, len: {} }}",
            self.id,
            self.bytes.len()
        )
    }
}

impl Secret {
    /// Parses a secrets file: one secret a line, optionally `KID SECRET`; `#` comments and blank
    /// lines are skipped.
    pub fn parse_file(text: &str) -> Vec<Secret> {
        text.lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| match line.split_once(char::is_whitespace) {
                Some((id, secret)) => Secret {
                    id: Some(id.to_owned()),
                    bytes: secret.trim().as_bytes().to_vec(),
                },
                None => Secret {
                    id: None,
                    bytes: line.as_bytes().to_vec(),
                },
            })
            .collect()
    }
}

/// Where secrets come from: read at start and again whenever the file changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretSource {
    /// `secret` / `TOKENGATE_SECRET`, first when set.
    pub inline: Option<String>,
    /// `secret_file` / `TOKENGATE_SECRET_FILE`, re-read on change or `SIGHUP`.
    pub file: Option<PathBuf>,
}

/// Why the configured secrets make no keyring.
#[derive(Debug)]
pub enum SecretsError {
    /// The secrets file could not be read.
    File(PathBuf, std::io::Error),
    /// The secrets do not make a usable keyring.
    Keys(KeyError),
}

impl fmt::Display for SecretsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretsError::File(path, e) => write!(
                f,
                "cannot read the secrets file {}: {e}; mount it there, or set TOKENGATE_SECRET \
                 or TOKENGATE_SECRET_FILE",
                path.display()
            ),
            SecretsError::Keys(e) => write!(f, "invalid secrets: {e}"),
        }
    }
}

impl SecretSource {
    /// Reads the secrets again (the file may have been rotated) and builds a keyring.
    pub fn keyring(&self, algorithms: &[Algorithm]) -> Result<Keyring, SecretsError> {
        Keyring::new(&self.secrets()?, algorithms).map_err(SecretsError::Keys)
    }

    /// The inline secret first, then the file's, read now.
    pub fn secrets(&self) -> Result<Vec<Secret>, SecretsError> {
        let mut secrets: Vec<Secret> = self
            .inline
            .iter()
            .map(|s| Secret {
                id: None,
                bytes: s.as_bytes().to_vec(),
            })
            .collect();
        if let Some(path) = &self.file {
            let text =
                std::fs::read_to_string(path).map_err(|e| SecretsError::File(path.clone(), e))?;
            secrets.extend(Secret::parse_file(&text));
        }
        Ok(secrets)
    }
}

/// Why a keyring could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// No secret was configured at all.
    NoSecret,
    /// Secret number `index` (1-based) is shorter than [`MIN_SECRET_LEN`].
    TooShort {
        /// 1-based position of the secret.
        index: usize,
        /// Its length in bytes.
        len: usize,
    },
    /// Two secrets share one key id.
    DuplicateId(String),
    /// An algorithm outside the HMAC family was allowed.
    NotHmac(Algorithm),
    /// The algorithm allow-list is empty.
    NoAlgorithm,
    /// The public development secret, on a listener other machines can reach.
    Public,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::NoSecret => {
                write!(
                    f,
                    "no signing secret: set TOKENGATE_SECRET or TOKENGATE_SECRET_FILE"
                )
            }
            KeyError::TooShort { index, len } => write!(
                f,
                "secret #{index} is {len} bytes long; at least {MIN_SECRET_LEN} bytes are required"
            ),
            KeyError::DuplicateId(id) => write!(f, "key id {id:?} is used by two secrets"),
            KeyError::NotHmac(alg) => write!(
                f,
                "algorithm {alg:?} is not allowed for shared secrets; use HS256, HS384 or HS512"
            ),
            KeyError::NoAlgorithm => write!(f, "the algorithm allow-list is empty"),
            KeyError::Public => write!(
                f,
                "the development secret from conf/tokengate.yaml is public and only serves \
                 loopback listeners: set TOKENGATE_SECRET or TOKENGATE_SECRET_FILE"
            ),
        }
    }
}

impl std::error::Error for KeyError {}

/// One verification key, possibly the signing one.
pub struct Key {
    id: Option<String>,
    decoding: DecodingKey,
    /// HMAC-SHA256 already keyed: cloning it skips the key schedule on every request.
    hs256: Hmac<Sha256>,
    /// `base64url(header)` of tokens this key signs, computed once.
    signing_header: String,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key {{ id: {:?} }}", self.id)
    }
}

impl Key {
    /// The key id, if it has one.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    pub(crate) fn decoding(&self) -> &DecodingKey {
        &self.decoding
    }

    /// HS256 of `message`.
    pub(crate) fn hs256_tag(&self, message: &[u8]) -> [u8; 32] {
        self.hs256
            .clone()
            .chain_update(message)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Whether `signature` (base64url) is the HS256 of `message`, compared in constant time.
    pub(crate) fn verify_hs256(&self, message: &[u8], signature: &str) -> bool {
        let mut tag = [0u8; 32];
        match URL_SAFE_NO_PAD.decode_slice(signature, &mut tag) {
            Ok(32) => self
                .hs256
                .clone()
                .chain_update(message)
                .verify_slice(&tag)
                .is_ok(),
            _ => false,
        }
    }

    /// `base64url` of `{"typ":"JWT","alg":"HS256"}` (plus `"kid"` when the key has one).
    pub(crate) fn signing_header(&self) -> &str {
        &self.signing_header
    }

    /// The signing header with another `typ`, for minted tokens that must not pass as sessions.
    pub(crate) fn signing_header_with_typ(&self, typ: &str) -> String {
        URL_SAFE_NO_PAD.encode(header_json_typed(typ, self.id.as_deref()))
    }
}

/// All verification keys and the algorithms tokens may use; never empty.
#[derive(Debug)]
pub struct Keyring {
    keys: Vec<Key>,
    algorithms: Vec<Algorithm>,
}

impl Keyring {
    /// Builds the keyring; the first secret signs, every secret verifies.
    pub fn new(secrets: &[Secret], algorithms: &[Algorithm]) -> Result<Keyring, KeyError> {
        if secrets.is_empty() {
            return Err(KeyError::NoSecret);
        }
        if algorithms.is_empty() {
            return Err(KeyError::NoAlgorithm);
        }
        if let Some(alg) = algorithms
            .iter()
            .find(|a| !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
        {
            return Err(KeyError::NotHmac(*alg));
        }
        let mut keys: Vec<Key> = Vec::with_capacity(secrets.len());
        for (index, secret) in secrets.iter().enumerate() {
            if secret.bytes.len() < MIN_SECRET_LEN {
                return Err(KeyError::TooShort {
                    index: index + 1,
                    len: secret.bytes.len(),
                });
            }
            if let Some(id) = &secret.id {
                if keys.iter().any(|k| k.id.as_ref() == Some(id)) {
                    return Err(KeyError::DuplicateId(id.clone()));
                }
            }
            keys.push(Key {
                id: secret.id.clone(),
                decoding: DecodingKey::from_secret(&secret.bytes),
                hs256: <Hmac<Sha256> as Mac>::new_from_slice(&secret.bytes).map_err(|_| {
                    KeyError::TooShort {
                        index: index + 1,
                        len: secret.bytes.len(),
                    }
                })?,
                signing_header: URL_SAFE_NO_PAD.encode(header_json(secret.id.as_deref())),
            });
        }
        Ok(Keyring {
            keys,
            algorithms: algorithms.to_vec(),
        })
    }

    /// How many keys verify.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Never true: a keyring holds at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key that signs minted tokens.
    pub fn signing(&self) -> &Key {
        // `new` refuses an empty list, so the first key always exists.
        &self.keys[0]
    }

    /// Whether a token may use `alg`.
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }

    /// The keys a token must be checked against: the one its `kid` names, else all of them.
    pub fn candidates<'a>(&'a self, kid: Option<&'a str>) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys
            .iter()
            .filter(move |key| kid.is_none() || key.id.as_deref() == kid)
    }
}

/// The keyring in use, swappable while requests run, so rotated secrets take effect without a
/// restart.
#[derive(Clone)]
pub struct SharedKeyring(Arc<RwLock<Arc<Keyring>>>);

impl SharedKeyring {
    /// Shares `keyring`.
    pub fn new(keyring: Keyring) -> SharedKeyring {
        SharedKeyring(Arc::new(RwLock::new(Arc::new(keyring))))
    }

    /// The keyring as of now; a request holds on to it from start to end.
    pub fn current(&self) -> Arc<Keyring> {
        // A writer panicking mid-swap cannot leave a half-built Arc behind: the guard's data is fine.
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `keyring` in place for every later request.
    pub fn replace(&self, keyring: Keyring) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keyring);
    }
}

impl fmt::Debug for SharedKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedKeyring")
    }
}

/// The minted token's header, byte for byte the legacy service's: `typ` before `alg`.
fn header_json(kid: Option<&str>) -> String {
    header_json_typed("JWT", kid)
}

/// `{"typ":…,"alg":"HS256"[,"kid":…]}`.
fn header_json_typed(typ: &str, kid: Option<&str>) -> String {
    #[derive(serde::Serialize)]
    struct Header<'a> {
        typ: &'a str,
        alg: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        kid: Option<&'a str>,
    }
    serde_json::to_string(&Header {
        typ,
        alg: "HS256",
        kid,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(id: Option<&str>, s: &str) -> Secret {
        Secret {
            id: id.map(str::to_owned),
            bytes: s.as_bytes().to_vec(),
        }
    }

    const LONG: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn header_matches_the_legacy_bytes() {
        assert_eq!(header_json(None), r#"{"typ":"JWT","alg":"HS256"}"#);
        assert_eq!(
            header_json(Some("k1")),
            r#"{"typ":"JWT","alg":"HS256","kid":"k1"}"#
        );
        let ring = Keyring::new(&[secret(None, LONG)], &[Algorithm::HS256]).unwrap();
        assert_eq!(
            ring.signing().signing_header(),
            "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9"
        );
    }

    #[test]
    fn refuses_short_missing_and_non_hmac() {
        assert_eq!(
            Keyring::new(&[], &[Algorithm::HS256]).err(),
            Some(KeyError::NoSecret)
        );
        assert_eq!(
            Keyring::new(
                &[secret(None, LONG), secret(None, "short")],
                &[Algorithm::HS256]
            )
            .err(),
            Some(KeyError::TooShort { index: 2, len: 5 })
        );
        assert_eq!(
            Keyring::new(&[secret(None, LONG)], &[Algorithm::RS256]).err(),
            Some(KeyError::NotHmac(Algorithm::RS256))
        );
        assert_eq!(
            Keyring::new(
                &[secret(Some("a"), LONG), secret(Some("a"), LONG)],
                &[Algorithm::HS256]
            )
            .err(),
            Some(KeyError::DuplicateId("a".into()))
        );
    }

    #[test]
    fn kid_selects_one_key_and_none_selects_all() {
        let ring = Keyring::new(
            &[secret(Some("new"), LONG), secret(None, LONG)],
            &[Algorithm::HS256],
        )
        .unwrap();
        assert_eq!(ring.candidates(None).count(), 2);
        assert_eq!(ring.candidates(Some("new")).count(), 1);
        assert_eq!(ring.candidates(Some("old")).count(), 0);
    }

    #[test]
    fn secrets_file_lines() {
        let parsed = Secret::parse_file("# rotated 2026-11\nk2 second-secret\n\nfirst-secret\r\n");
        assert_eq!(
            parsed,
            vec![
                secret(Some("k2"), "second-secret"),
                secret(None, "first-secret")
            ]
        );
        assert!(!format!("{:?}", parsed[0]).contains("second-secret"));
    }
}
