//! The token route's logic, pure: no sockets, no Pingora, the clock passed in.
//!
//! A request reads top to bottom: [`extract`] finds the session token, [`verify`] checks it,
//! [`permission`] parses and polices the body, [`mint`] merges and signs.

pub mod asymmetric;
pub mod extract;
pub mod issuer;
pub mod keys;
pub mod mint;
pub(crate) mod object;
pub mod permission;
pub mod settings;
pub mod verify;

use crate::error::{ApiError, ErrorCode};
pub use asymmetric::{AsymmetricKey, PublicKeys};
pub use keys::{KeyError, Keyring, Secret, SecretSource, SecretsError, SharedKeyring};
pub use permission::{Limits, PermissionPolicy};
pub use settings::{MintLimit, Settings};
pub use verify::{Claims, SignatureKeys};

/// What the token route needs of a request, borrowed from wherever it came from.
#[derive(Debug, Clone, Copy)]
pub struct TokenRequest<'a> {
    /// Every `Authorization` header value, in order.
    pub authorization: &'a [&'a [u8]],
    /// The `Content-Type` header, if any.
    pub content_type: Option<&'a [u8]>,
    /// The whole request body.
    pub body: &'a [u8],
    /// The session cookie's token, read only when there is no `Authorization` (the caller
    /// checked the request came from the same site).
    pub cookie: Option<&'a str>,
}

/// A successful answer: the JSON body and who it was minted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    /// `{"token":"…","endpoint":"…"}`, byte for byte.
    pub body: Vec<u8>,
    /// The session token as received, for the `X-token` header.
    pub session_token: String,
    /// The verified subject.
    pub subject: String,
}

/// A caller whose session token verified.
#[derive(Debug)]
pub struct Caller<'a> {
    /// The token as it came in.
    pub token: &'a str,
    /// Its verified claims.
    pub claims: Claims,
}

/// The token route's configuration, validated, ready to answer requests.
pub struct TokenService {
    /// Keys that verify session tokens; the first signs. Swapped on rotation.
    pub keys: SharedKeyring,
    /// The token section: what a session token must satisfy, how minted ones differ.
    pub settings: Settings,
    /// What a permission must satisfy.
    pub permission: PermissionPolicy,
    /// How minted tokens differ from the caller's claims (lifetime cap, `typ`, `iss`, `aud`).
    pub minting: mint::Minting,
    /// When set, minted tokens are signed with this ES256 / EdDSA key instead of the HS256 one.
    pub signer: Option<std::sync::Arc<AsymmetricKey>>,
    /// The public keys of the signer and of every published key: forwarded requests may carry
    /// a token tokengate minted with any of them.
    pub minted_keys: Option<std::sync::Arc<PublicKeys>>,
    /// Identity providers whose tokens are sessions too, each verified by its own keys.
    pub issuers: Vec<issuer::Issuer>,
}

/// The claim holding the subject in the legacy session tokens, unless configured.
pub const DEFAULT_SUBJECT_CLAIM: &str = "user_id";

const TOKEN_TOO_LONG: ApiError = ApiError::new(
    ErrorCode::InvalidRequest,
    "The token is longer than this gate accepts.",
);
/// The gate never mints what it would refuse to read back.
const MINTED_TOO_LONG: ApiError = ApiError::new(
    ErrorCode::InvalidPermission,
    "The permission makes a token longer than this gate accepts (max_token_bytes).",
);
const NO_IDENTITY: ApiError = ApiError::new(
    ErrorCode::InvalidToken,
    "The token's subject cannot be sent as an identity header.",
);

/// Session tokens by the HS256 keyring; tokens tokengate minted asymmetrically by their keys.
struct AnyGateToken<'a> {
    session: &'a Keyring,
    minted: Option<&'a PublicKeys>,
}

impl SignatureKeys for AnyGateToken<'_> {
    fn check(
        &self,
        alg: jsonwebtoken::Algorithm,
        kid: Option<&str>,
        message: &[u8],
        signature: &str,
    ) -> Result<(), ApiError> {
        use jsonwebtoken::Algorithm::{HS256, HS384, HS512};
        match (alg, self.minted) {
            (HS256 | HS384 | HS512, _) | (_, None) => {
                self.session.check(alg, kid, message, signature)
            }
            (_, Some(minted)) => minted.check(alg, kid, message, signature),
        }
    }
}

/// Whether `subject` can travel as the identity header and arrive as the same string: no
/// control bytes, nothing a header parser would trim away, not empty.
pub fn is_identity(subject: &str) -> bool {
    !subject.is_empty() && subject.trim() == subject && !subject.chars().any(char::is_control)
}

impl TokenService {
    /// Finds and verifies the token of a forwarded request: a session token, or one tokengate
    /// minted (with any of its keys); its subject must be sendable as the identity header.
    pub fn authenticate<'a>(
        &self,
        authorization: &[&'a [u8]],
        now: u64,
    ) -> Result<Caller<'a>, ApiError> {
        let token = extract::bearer_token(authorization.iter().copied())?;
        self.authenticate_token(token, now)
    }

    /// Verifies `token`, from wherever it came, as [`authenticate`](Self::authenticate) does.
    pub fn authenticate_token<'a>(&self, token: &'a str, now: u64) -> Result<Caller<'a>, ApiError> {
        let session = self.keys.current();
        let keys = AnyGateToken {
            session: &session,
            minted: self.minted_keys.as_deref(),
        };
        let caller = self.verify_token(&keys, token, now, false)?;
        if !is_identity(caller.claims.subject()) {
            return Err(NO_IDENTITY);
        }
        Ok(caller)
    }

    /// The caller `token` proves: an identity provider's token by its issuer's keys, any other
    /// by `keys`; a `session` token (the token route's) may not be one this gate minted.
    fn verify_token<'a>(
        &self,
        keys: &dyn SignatureKeys,
        token: &'a str,
        now: u64,
        session: bool,
    ) -> Result<Caller<'a>, ApiError> {
        if token.len() > self.permission.limits.max_token_bytes {
            return Err(TOKEN_TOO_LONG);
        }
        let claims = match self.issuer_of(token) {
            Some(issuer) => issuer.verify(token, now, &self.settings.subject_claim)?,
            None => verify::verify_as(token, keys, &self.settings, now, session)?,
        };
        Ok(Caller { token, claims })
    }

    /// The identity provider whose token `token` says it is, if any is configured.
    pub fn issuer_of(&self, token: &str) -> Option<&issuer::Issuer> {
        if self.issuers.is_empty() {
            return None;
        }
        let peeked = issuer::peek(token)?;
        issuer::issuer_of(&self.issuers, &peeked).map(|(_, found)| found)
    }

    /// Answers `POST /api/v1/token` at `now` (seconds since the Unix epoch).
    pub fn handle(&self, request: &TokenRequest<'_>, now: u64) -> Result<Minted, ApiError> {
        self.handle_admitted(request, now, |_| true)
    }

    /// Like [`handle`](Self::handle), asking `admit` whether the verified subject may mint now.
    pub fn handle_admitted(
        &self,
        request: &TokenRequest<'_>,
        now: u64,
        admit: impl FnOnce(&str) -> bool,
    ) -> Result<Minted, ApiError> {
        let prepared = self.prepare(request, now)?;
        if !admit(prepared.subject()) {
            return Err(RATE_LIMITED);
        }
        self.mint(prepared)
    }

    /// Everything before signing: the caller verified, the permission parsed and checked. The
    /// caller decides, even asynchronously, whether [`TokenService::mint`] may sign it.
    pub fn prepare(&self, request: &TokenRequest<'_>, now: u64) -> Result<Prepared, ApiError> {
        // One snapshot for the whole request: a rotation mid-way cannot mix two keyrings.
        let keys = self.keys.current();
        let token = match (request.authorization.is_empty(), request.cookie) {
            (true, Some(token)) => token,
            _ => extract::bearer_token(request.authorization.iter().copied())?,
        };
        let caller = self.verify_token(&*keys, token, now, true)?;
        let permission =
            permission::parse_body(request.content_type, request.body, &self.permission)?;
        if let Some(permission) = &permission {
            permission::check_attenuation(permission, caller.claims.iter())?;
        }
        Ok(Prepared {
            keys,
            token: caller.token.to_owned(),
            claims: caller.claims,
            permission,
            now,
        })
    }

    /// Signs what [`prepare`](Self::prepare) checked: the merged claims, in the answer's body.
    pub fn mint(&self, prepared: Prepared) -> Result<Minted, ApiError> {
        let (claims, permission, now) =
            (&prepared.claims, prepared.permission.as_ref(), prepared.now);
        // The response body is written around the token: `{"token":"…","endpoint":…}`.
        let mut body = String::with_capacity(640 + self.settings.endpoint.len());
        body.push_str(TOKEN_OPENING);
        match &self.signer {
            Some(signer) => mint::payload(claims, permission, &self.minting, now)
                .and_then(|payload| match &self.minting.typ {
                    Some(typ) => signer.sign_typed(typ, &payload),
                    None => signer.sign(&payload),
                })
                .map(|token| body.push_str(&token)),
            None => mint::mint_into(
                &mut body,
                claims,
                permission,
                prepared.keys.signing(),
                &self.minting,
                now,
            ),
        }
        .map_err(|_| ApiError::new(ErrorCode::Internal, "The token could not be signed."))?;
        if body.len() - TOKEN_OPENING.len() > self.permission.limits.max_token_bytes {
            return Err(MINTED_TOO_LONG);
        }
        let subject = prepared.claims.subject().to_owned();
        Ok(Minted {
            body: close_response_body(body, &self.settings.endpoint),
            session_token: prepared.token,
            subject,
        })
    }
}

/// The refusal when a subject minted more than its rate.
pub const RATE_LIMITED: ApiError = ApiError::new(
    ErrorCode::RateLimited,
    "Too many tokens minted for this subject; retry later.",
);

/// A token request that passed every check but the rate limit, ready to be signed; it owns what
/// it holds, so a decision can carry it past the request it was read from.
pub struct Prepared {
    keys: std::sync::Arc<Keyring>,
    token: String,
    claims: Claims,
    permission: Option<permission::Permission>,
    now: u64,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself, not even in a debug dump.
        write!(f, "Prepared {{ subject: {:?} }}", self.subject())
    }
}

impl Prepared {
    /// The verified subject, which the rate limit counts.
    pub fn subject(&self) -> &str {
        self.claims.subject()
    }

    /// When the verified token was issued (`iat`), for revocation checks.
    pub fn issued_at(&self) -> Option<f64> {
        self.claims.issued_at()
    }
}

/// The response body up to the token.
const TOKEN_OPENING: &str = "{\"token\":\"";

/// Ends the response body after the token. Every signer writes the compact form, base64url and
/// dots, which JSON never escapes: the token is written as it is, not escaped byte by byte.
fn close_response_body(body: String, endpoint: &str) -> Vec<u8> {
    debug_assert!(body[TOKEN_OPENING.len()..]
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
    let mut out = body.into_bytes();
    out.extend_from_slice(b"\",\"endpoint\":");
    if serde_json::to_writer(&mut out, endpoint).is_err() {
        return Vec::new();
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::verify::tests::{ring, sign_raw, SECRET};
    use super::*;
    use jsonwebtoken::Algorithm;

    const SEED_HEADER: &str = r#"{"typ":"JWT","alg":"HS256"}"#;
    const SEED_CLAIMS: &str =
        r#"{"exp":1554759531,"iat":1554745131,"user_id":"f551a1cb-930e-4501-87a9-f51a0718da3e"}"#;
    const SEED_BODY: &str = "permission=%7B%22abilities%22%3A%7B%22album_id%22%3A%7B%22Access%22%3A%7B%22see%22%3Atrue%2C%22image_list%22%3Atrue%2C%22image_upload%22%3Atrue%2C%22image_delete%22%3Atrue%2C%22fullscreen%22%3Atrue%2C%22image_caption%22%3Atrue%7D%7D%2C%22tags%22%3A%7B%22auto_tag%22%3A%22test%22%7D%7D%2C%22Id%22%3A%22album_id%22%7D";
    /// The first two segments of the seed's response token.
    const SEED_MINTED: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJleHAiOjE1NTQ3NTk1MzEsImlhdCI6MTU1NDc0NTEzMSwidXNlcl9pZCI6ImY1NTFhMWNiLTkzMGUtNDUwMS04N2E5LWY1MWEwNzE4ZGEzZSIsImFiaWxpdGllcyI6eyJhbGJ1bV9pZCI6eyJBY2Nlc3MiOnsic2VlIjp0cnVlLCJpbWFnZV9saXN0Ijp0cnVlLCJpbWFnZV91cGxvYWQiOnRydWUsImltYWdlX2RlbGV0ZSI6dHJ1ZSwiZnVsbHNjcmVlbiI6dHJ1ZSwiaW1hZ2VfY2FwdGlvbiI6dHJ1ZX19LCJ0YWdzIjp7ImF1dG9fdGFnIjoidGVzdCJ9fSwiSWQiOiJhbGJ1bV9pZCJ9";
    const SEED_IAT: u64 = 1_554_745_131;
    const SEED_EXP: u64 = 1_554_759_531;

    fn service() -> TokenService {
        TokenService {
            keys: SharedKeyring::new(ring(&[Algorithm::HS256])),
            settings: Settings::default(),
            permission: PermissionPolicy::default(),
            minting: Default::default(),
            signer: None,
            minted_keys: None,
            issuers: Vec::new(),
        }
    }

    fn seed_request(
        session: &str,
        f: impl FnOnce(&TokenRequest<'_>) -> Result<Minted, ApiError>,
    ) -> Result<Minted, ApiError> {
        let auth = format!("Token token=\"{session}\"");
        let authorization = [auth.as_bytes()];
        f(&TokenRequest {
            authorization: &authorization,
            content_type: Some(b"application/x-www-form-urlencoded"),
            body: SEED_BODY.as_bytes(),
            cookie: None,
        })
    }

    /// A token request with `token` as Bearer and no body (no permission).
    fn bare_request(svc: &TokenService, token: &str) -> Result<Minted, ApiError> {
        let auth = format!("Bearer {token}");
        svc.handle(
            &TokenRequest {
                authorization: &[auth.as_bytes()],
                content_type: None,
                body: b"",
                cookie: None,
            },
            SEED_IAT,
        )
    }

    #[test]
    fn a_token_longer_than_the_gate_reads_is_never_minted() {
        let session = sign_raw(SEED_HEADER, SEED_CLAIMS, Algorithm::HS256, SECRET);
        let minted = seed_request(&session, |r| service().handle(r, SEED_IAT)).unwrap();
        // The seed's token: its two segments, a dot, 43 characters of signature.
        let length = SEED_MINTED.len() + 1 + 43;
        assert_eq!(minted.body.len(), TOKEN_OPENING.len() + length + 30);
        let at_most = |max_token_bytes: usize| {
            let mut service = service();
            service.permission.limits.max_token_bytes = max_token_bytes;
            service
        };
        assert!(seed_request(&session, |r| at_most(length).handle(r, SEED_IAT)).is_ok());
        let refused = seed_request(&session, |r| at_most(length - 1).handle(r, SEED_IAT));
        assert_eq!(refused.err(), Some(MINTED_TOO_LONG));
        assert_eq!(MINTED_TOO_LONG.code.status(), 422);
    }

    #[test]
    fn seed_request_is_answered_byte_for_byte() {
        let session = sign_raw(SEED_HEADER, SEED_CLAIMS, Algorithm::HS256, SECRET);
        let svc = service();
        for now in [SEED_IAT, SEED_IAT + 7_000, SEED_EXP - 1] {
            let minted = seed_request(&session, |r| svc.handle(r, now)).unwrap();
            let body = String::from_utf8(minted.body).unwrap();
            assert_eq!(body.len(), 485);
            let expected_sig = jsonwebtoken::crypto::sign(
                SEED_MINTED.as_bytes(),
                &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
                Algorithm::HS256,
            )
            .unwrap();
            assert_eq!(
                body,
                format!(
                    r#"{{"token":"{SEED_MINTED}.{expected_sig}","endpoint":"localhost:5001"}}"#
                )
            );
            assert_eq!(minted.session_token, session);
            assert_eq!(minted.subject, "f551a1cb-930e-4501-87a9-f51a0718da3e");
        }
        let expired = seed_request(&session, |r| svc.handle(r, SEED_EXP)).unwrap_err();
        assert_eq!(expired.code, ErrorCode::TokenExpired);
    }

    #[test]
    fn max_ttl_caps_exp_only_when_shorter() {
        let session = sign_raw(SEED_HEADER, SEED_CLAIMS, Algorithm::HS256, SECRET);
        let svc = TokenService {
            minting: mint::Minting {
                max_ttl_secs: Some(60),
                ..Default::default()
            },
            ..service()
        };
        let minted = seed_request(&session, |r| svc.handle(r, SEED_IAT)).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&minted.body).unwrap();
        let token = body["token"].as_str().unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let payload =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
                .unwrap();
        let payload = String::from_utf8(payload).unwrap();
        assert!(
            payload.starts_with(&format!(r#"{{"exp":{},"iat":1554745131,"#, SEED_IAT + 60)),
            "{payload}"
        );
        // Near the end of the session the caller's own exp is the smaller one and is kept.
        let late = seed_request(&session, |r| svc.handle(r, SEED_EXP - 10)).unwrap();
        let late: serde_json::Value = serde_json::from_slice(&late.body).unwrap();
        assert_eq!(
            late["token"].as_str().unwrap().split('.').nth(1).unwrap(),
            SEED_MINTED.split('.').nth(1).unwrap()
        );
    }

    #[test]
    fn no_permission_keeps_claims_unchanged() {
        let session = sign_raw(SEED_HEADER, SEED_CLAIMS, Algorithm::HS256, SECRET);
        let minted = bare_request(&service(), &session).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&minted.body).unwrap();
        let token = body["token"].as_str().unwrap();
        assert_eq!(
            token.rsplit_once('.').unwrap().0,
            session.rsplit_once('.').unwrap().0
        );
    }

    #[test]
    fn a_typed_minted_token_is_no_session_token_but_opens_routes() {
        let policy = Settings {
            issuer: Some("rails".into()),
            audience: Some("gate".into()),
            minted_typ: Some("tokengate+jwt".into()),
            ..Settings::default()
        };
        let svc = TokenService {
            settings: policy,
            minting: mint::Minting {
                typ: Some("tokengate+jwt".into()),
                issuer: Some("rails".into()),
                audience: Some("gate".into()),
                ..Default::default()
            },
            ..service()
        };
        let session = sign_raw(
            SEED_HEADER,
            r#"{"exp":1554759531,"iss":"rails","aud":["gate","other"],"user_id":"u"}"#,
            Algorithm::HS256,
            SECRET,
        );
        let minted = seed_request(&session, |r| svc.handle(r, SEED_IAT)).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&minted.body).unwrap();
        let token = body["token"].as_str().unwrap().to_owned();
        let part = |i: usize| {
            let b = base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                token.split('.').nth(i).unwrap(),
            )
            .unwrap();
            String::from_utf8(b).unwrap()
        };
        assert_eq!(part(0), r#"{"typ":"tokengate+jwt","alg":"HS256"}"#);
        assert!(
            part(1).starts_with(
                r#"{"exp":1554759531,"iss":"rails","aud":"gate","user_id":"u","abilities""#
            ),
            "{}",
            part(1)
        );
        // Replayed as a session token: refused. On a forwarded request: accepted.
        let replay = bare_request(&svc, &token).unwrap_err();
        assert_eq!(replay.code, ErrorCode::InvalidToken);
        let auth = format!("Bearer {token}");
        assert!(svc.authenticate(&[auth.as_bytes()], SEED_IAT).is_ok());
        // A session token from another issuer is refused.
        let foreign = sign_raw(
            SEED_HEADER,
            r#"{"exp":1554759531,"iss":"x","aud":"gate","user_id":"u"}"#,
            Algorithm::HS256,
            SECRET,
        );
        assert!(seed_request(&foreign, |r| svc.handle(r, SEED_IAT)).is_err());
    }

    #[test]
    fn minted_token_remints_narrower_but_not_wider() {
        let svc = service();
        let session = sign_raw(SEED_HEADER, SEED_CLAIMS, Algorithm::HS256, SECRET);
        let minted = seed_request(&session, |r| svc.handle(r, SEED_IAT)).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&minted.body).unwrap();
        let ability = format!("Bearer {}", body["token"].as_str().unwrap());
        let ask = |permission: &str| {
            let body = serde_json::json!({ "permission": serde_json::from_str::<serde_json::Value>(permission).unwrap() }).to_string();
            svc.handle(
                &TokenRequest {
                    authorization: &[ability.as_bytes()],
                    content_type: Some(b"application/json"),
                    body: body.as_bytes(),
                    cookie: None,
                },
                SEED_IAT,
            )
            .map(|_| ())
            .map_err(|e| e.code)
        };
        assert_eq!(
            ask(r#"{"abilities":{"album_id":{"Access":{"see":true}}}}"#),
            Ok(())
        );
        assert_eq!(
            ask(r#"{"abilities":{"other_album":{"Access":{"see":true}}}}"#),
            Err(ErrorCode::Escalation)
        );
    }
}
