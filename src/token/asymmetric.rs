//! ES256 / EdDSA signing keys for minted tokens, and the public keys the JWKS endpoint publishes.
//! Session tokens stay HS256; only what tokengate mints changes, so services that check minted
//! tokens need no shared secret.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::LineEnding;
use rand_core::OsRng;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::verify::{SignatureKeys, BAD_ALGORITHM, BAD_SIGNATURE, UNKNOWN_KID};
use crate::error::ApiError;

/// The asymmetric algorithms tokengate mints with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// Ed25519.
    EdDsa,
}

impl KeyAlgorithm {
    /// Parses `ES256` or `EdDSA`, case-insensitively.
    pub fn parse(text: &str) -> Option<KeyAlgorithm> {
        match text.to_ascii_lowercase().as_str() {
            "es256" => Some(KeyAlgorithm::Es256),
            "eddsa" | "ed25519" => Some(KeyAlgorithm::EdDsa),
            _ => None,
        }
    }

    /// The JOSE `alg` value.
    pub fn jose(self) -> &'static str {
        match self {
            KeyAlgorithm::Es256 => "ES256",
            KeyAlgorithm::EdDsa => "EdDSA",
        }
    }

    fn jsonwebtoken(self) -> Algorithm {
        match self {
            KeyAlgorithm::Es256 => Algorithm::ES256,
            KeyAlgorithm::EdDsa => Algorithm::EdDSA,
        }
    }
}

/// Why a key could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFileError(String);

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyFileError {}

/// A public key as a JWK (RFC 7517), members in RFC 7638's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Jwk {
    /// `P-256` or `Ed25519`.
    pub crv: &'static str,
    /// `EC` or `OKP`.
    pub kty: &'static str,
    /// The x coordinate (EC) or the public key (OKP), base64url.
    pub x: String,
    /// The y coordinate, EC only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// RFC 7638 thumbprint.
    pub kid: String,
    /// `ES256` or `EdDSA`.
    pub alg: &'static str,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub use_: &'static str,
}

impl Jwk {
    fn new(alg: KeyAlgorithm, x: &[u8], y: Option<&[u8]>) -> Jwk {
        let x = URL_SAFE_NO_PAD.encode(x);
        let y = y.map(|y| URL_SAFE_NO_PAD.encode(y));
        let (crv, kty) = match alg {
            KeyAlgorithm::Es256 => ("P-256", "EC"),
            KeyAlgorithm::EdDsa => ("Ed25519", "OKP"),
        };
        // RFC 7638: the required members only, lexicographic order, no whitespace.
        let canonical = match &y {
            Some(y) => format!(r#"{{"crv":"{crv}","kty":"{kty}","x":"{x}","y":"{y}"}}"#),
            None => format!(r#"{{"crv":"{crv}","kty":"{kty}","x":"{x}"}}"#),
        };
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
        Jwk {
            crv,
            kty,
            x,
            y,
            kid,
            alg: alg.jose(),
            use_: "sig",
        }
    }
}

/// The public half of a key, from a private (PKCS#8) or public (SPKI) PEM.
pub fn public_jwk(alg: KeyAlgorithm, pem: &str) -> Result<Jwk, KeyFileError> {
    let bad = |e: &dyn fmt::Display| KeyFileError(format!("not a {} PEM key: {e}", alg.jose()));
    match alg {
        KeyAlgorithm::Es256 => {
            let public = match p256::SecretKey::from_pkcs8_pem(pem) {
                Ok(secret) => secret.public_key(),
                Err(_) => p256::PublicKey::from_public_key_pem(pem).map_err(|e| bad(&e))?,
            };
            let point = public.to_encoded_point(false);
            let (x, y) = (
                point.x().ok_or_else(|| bad(&"no x"))?,
                point.y().ok_or_else(|| bad(&"no y"))?,
            );
            Ok(Jwk::new(alg, x, Some(y)))
        }
        KeyAlgorithm::EdDsa => {
            let public = match ed25519_dalek::SigningKey::from_pkcs8_pem(pem) {
                Ok(secret) => secret.verifying_key(),
                Err(_) => {
                    ed25519_dalek::VerifyingKey::from_public_key_pem(pem).map_err(|e| bad(&e))?
                }
            };
            Ok(Jwk::new(alg, public.as_bytes(), None))
        }
    }
}

/// A private key that signs minted tokens.
pub struct AsymmetricKey {
    alg: KeyAlgorithm,
    encoding: EncodingKey,
    jwk: Jwk,
    /// `base64url({"typ":"JWT","alg":…,"kid":…})`, computed once.
    header: String,
}

impl fmt::Debug for AsymmetricKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AsymmetricKey {{ alg: {}, kid: {} }}",
            self.alg.jose(),
            self.jwk.kid
        )
    }
}

impl AsymmetricKey {
    /// Loads a private key from PKCS#8 PEM.
    pub fn from_pem(alg: KeyAlgorithm, pem: &str) -> Result<AsymmetricKey, KeyFileError> {
        let bad = |e: &dyn fmt::Display| {
            KeyFileError(format!("not a private {} PKCS#8 PEM key: {e}", alg.jose()))
        };
        let der = match alg {
            KeyAlgorithm::Es256 => p256::SecretKey::from_pkcs8_pem(pem)
                .and_then(|k| k.to_pkcs8_der())
                .map_err(|e| bad(&e))?,
            KeyAlgorithm::EdDsa => ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
                .map_err(|e| bad(&e))?
                .to_pkcs8_der()
                .map_err(|e| bad(&e))?,
        };
        let encoding = match alg {
            KeyAlgorithm::Es256 => EncodingKey::from_ec_der(der.as_bytes()),
            KeyAlgorithm::EdDsa => EncodingKey::from_ed_der(der.as_bytes()),
        };
        let jwk = public_jwk(alg, pem)?;
        let header = header_b64("JWT", alg, &jwk.kid).map_err(|e| bad(&e))?;
        Ok(AsymmetricKey {
            alg,
            encoding,
            jwk,
            header,
        })
    }

    /// The public key, for the JWKS.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// `header.payload.signature` for `payload`.
    pub fn sign(&self, payload: &[u8]) -> Result<String, jsonwebtoken::errors::Error> {
        self.sign_with_header(&self.header, payload)
    }

    /// Like [`sign`](Self::sign), with another header `typ` than `JWT`.
    pub fn sign_typed(
        &self,
        typ: &str,
        payload: &[u8],
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let header = header_b64(typ, self.alg, &self.jwk.kid)
            .map_err(|_| jsonwebtoken::errors::ErrorKind::InvalidKeyFormat)?;
        self.sign_with_header(&header, payload)
    }

    pub(crate) fn sign_with_header(
        &self,
        header: &str,
        payload: &[u8],
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let mut token = String::with_capacity(header.len() + payload.len() * 4 / 3 + 100);
        token.push_str(header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let signature =
            jsonwebtoken::crypto::sign(token.as_bytes(), &self.encoding, self.alg.jsonwebtoken())?;
        token.push('.');
        token.push_str(&signature);
        Ok(token)
    }
}

/// `base64url({"typ":…,"alg":…,"kid":…})`.
fn header_b64(typ: &str, alg: KeyAlgorithm, kid: &str) -> Result<String, serde_json::Error> {
    #[derive(Serialize)]
    struct Header<'a> {
        typ: &'a str,
        alg: &'static str,
        kid: &'a str,
    }
    let header = serde_json::to_vec(&Header {
        typ,
        alg: alg.jose(),
        kid,
    })?;
    Ok(URL_SAFE_NO_PAD.encode(header))
}

/// A new key pair: the private key as PKCS#8 PEM and the public key as SPKI PEM.
pub fn generate(alg: KeyAlgorithm) -> Result<(String, String), KeyFileError> {
    let bad = |e: &dyn fmt::Display| KeyFileError(format!("cannot encode the new key: {e}"));
    match alg {
        KeyAlgorithm::Es256 => {
            let secret = p256::SecretKey::random(&mut OsRng);
            let private = secret.to_pkcs8_pem(LineEnding::LF).map_err(|e| bad(&e))?;
            let public = secret
                .public_key()
                .to_public_key_pem(LineEnding::LF)
                .map_err(|e| bad(&e))?;
            Ok((private.to_string(), public))
        }
        KeyAlgorithm::EdDsa => {
            let secret = ed25519_dalek::SigningKey::generate(&mut OsRng);
            // PKCS#8 v1 (RFC 8410), without the optional public key: OpenSSL 3.0 and Python's
            // `cryptography` refuse the v2 form that `SigningKey` writes.
            let v1 = ed25519_dalek::pkcs8::KeypairBytes {
                secret_key: secret.to_bytes(),
                public_key: None,
            };
            let private = v1.to_pkcs8_pem(LineEnding::LF).map_err(|e| bad(&e))?;
            let public = secret
                .verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .map_err(|e| bad(&e))?;
            Ok((private.to_string(), public))
        }
    }
}

/// The public keys that verify tokens tokengate minted: the signing key's and every published
/// one, so a token signed before a rotation opens routes until its key is retired.
pub struct PublicKeys {
    alg: KeyAlgorithm,
    keys: Vec<(String, DecodingKey)>,
}

impl fmt::Debug for PublicKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|(kid, _)| kid.as_str()).collect();
        write!(
            f,
            "PublicKeys {{ alg: {}, kids: {kids:?} }}",
            self.alg.jose()
        )
    }
}

impl PublicKeys {
    /// The verifying keys of `jwks`, all of algorithm `alg`.
    pub fn new(alg: KeyAlgorithm, jwks: &[Jwk]) -> Result<PublicKeys, KeyFileError> {
        let keys = jwks
            .iter()
            .map(|jwk| {
                let key = match (&jwk.y, alg) {
                    (Some(y), KeyAlgorithm::Es256) => DecodingKey::from_ec_components(&jwk.x, y),
                    (None, KeyAlgorithm::EdDsa) => DecodingKey::from_ed_components(&jwk.x),
                    _ => {
                        return Err(KeyFileError(format!(
                            "key {} is not {}",
                            jwk.kid,
                            alg.jose()
                        )))
                    }
                };
                key.map(|key| (jwk.kid.clone(), key))
                    .map_err(|e| KeyFileError(format!("key {}: {e}", jwk.kid)))
            })
            .collect::<Result<_, _>>()?;
        Ok(PublicKeys { alg, keys })
    }
}

impl SignatureKeys for PublicKeys {
    fn check(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
        message: &[u8],
        signature: &str,
    ) -> Result<(), ApiError> {
        if alg != self.alg.jsonwebtoken() {
            return Err(BAD_ALGORITHM);
        }
        // tokengate always names the key; a token without a kid is none of its own.
        let (_, key) = self
            .keys
            .iter()
            .find(|(id, _)| Some(id.as_str()) == kid)
            .ok_or(UNKNOWN_KID)?;
        match jsonwebtoken::crypto::verify(signature, message, key, alg) {
            Ok(true) => Ok(()),
            _ => Err(BAD_SIGNATURE),
        }
    }
}

/// The JWKS document: `{"keys":[…]}`.
pub fn jwks(keys: &[Jwk]) -> Vec<u8> {
    #[derive(Serialize)]
    struct Set<'a> {
        keys: &'a [Jwk],
    }
    serde_json::to_vec(&Set { keys }).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_7638_thumbprint_of_the_rfc_8037_example() {
        // RFC 8037 appendix A.3: the Ed25519 example key's thumbprint.
        let jwk = Jwk::new(
            KeyAlgorithm::EdDsa,
            &URL_SAFE_NO_PAD
                .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
                .unwrap(),
            None,
        );
        assert_eq!(jwk.kid, "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn generated_keys_load_sign_and_publish() {
        for alg in [KeyAlgorithm::Es256, KeyAlgorithm::EdDsa] {
            let (private, public) = generate(alg).unwrap();
            let key = AsymmetricKey::from_pem(alg, &private).unwrap();
            assert_eq!(public_jwk(alg, &public).unwrap(), *key.jwk());
            let token = key.sign(br#"{"exp":1}"#).unwrap();
            let header = URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap();
            assert_eq!(
                String::from_utf8(header).unwrap(),
                format!(
                    r#"{{"typ":"JWT","alg":"{}","kid":"{}"}}"#,
                    alg.jose(),
                    key.jwk().kid
                )
            );
            assert!(
                AsymmetricKey::from_pem(alg, &public).is_err(),
                "a public key cannot sign"
            );
        }
        for alg in [KeyAlgorithm::Es256, KeyAlgorithm::EdDsa] {
            let (private, _) = generate(alg).unwrap();
            let key = AsymmetricKey::from_pem(alg, &private).unwrap();
            let token = key.sign(br#"{"exp":1}"#).unwrap();
            let (message, signature) = token.rsplit_once('.').unwrap();
            let kid = Some(key.jwk().kid.as_str());
            let own = PublicKeys::new(alg, std::slice::from_ref(key.jwk())).unwrap();
            let jose = alg.jsonwebtoken();
            assert_eq!(own.check(jose, kid, message.as_bytes(), signature), Ok(()));
            assert_eq!(
                own.check(jose, None, message.as_bytes(), signature),
                Err(UNKNOWN_KID)
            );
            assert_eq!(
                own.check(Algorithm::HS256, kid, message.as_bytes(), signature),
                Err(BAD_ALGORITHM)
            );
            let (other, _) = generate(alg).unwrap();
            let other = AsymmetricKey::from_pem(alg, &other).unwrap();
            let foreign = other.sign(br#"{"exp":1}"#).unwrap();
            let (fm, fs) = foreign.rsplit_once('.').unwrap();
            assert_eq!(own.check(jose, kid, fm.as_bytes(), fs), Err(BAD_SIGNATURE));
        }
        assert!(AsymmetricKey::from_pem(
            KeyAlgorithm::Es256,
            &generate(KeyAlgorithm::EdDsa).unwrap().0
        )
        .is_err());
    }
}
