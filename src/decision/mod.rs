//! What tokengate does with one request, from its head alone: canonicalize, route, authenticate,
//! decide. No session and no I/O here, so the proxy and `tokengate explain` run the same code,
//! and what it decided is plain data the proxy records and `explain` prints.

use std::borrow::Cow;
use std::net::IpAddr;

use http::{HeaderValue, Version};
use pingora::http::RequestHeader;
use smallvec::SmallVec;

use super::admission::{REVOKED, SIGN_OUTS_UNAVAILABLE};
use super::head::{authorization_values, content_type, host_of, override_values};
use super::{Tokengate, JWKS_TEMPLATE, PREREAD_LIMIT};
use crate::error::{ApiError, ErrorCode};
use crate::forward_claims::ClaimValue;
use crate::policy::{self, Action, Authentication, Verdict};
use crate::request::body::body_is_encoded;
use crate::request::method::Found;
use crate::request::{canonicalize, BodyKind, BodyScan, Canonical, Framing, Head};
use crate::routes::{Decision, LimitKey, ParamValue};
use crate::token::Caller;

/// What `plan` does with a request once it is canonical.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Answer the token route.
    Token,
    /// Answer the JWKS.
    Jwks,
    /// Read a small body of this kind first: its `_method` may change the method checked.
    PreRead(BodyKind),
    /// Forward it.
    Forward,
    /// Answer this error.
    Refuse(ApiError),
}

/// What the forwarded request becomes upstream.
#[derive(Debug, Default, Clone)]
pub struct Forward {
    /// The canonical target, when it differs from the one received.
    pub target: Option<Vec<u8>>,
    /// The canonical authority: the client's Host value itself when it was canonical already.
    pub authority: Option<HeaderValue>,
    /// Whether Host must be rewritten to `authority`.
    pub host_rewritten: bool,
    /// The honoured override method.
    pub honoured_override: Option<&'static str>,
    /// Claims sent as headers (`forward_claims`), by header name.
    pub claims: Vec<(String, String)>,
}

/// Everything `plan` decided about one request, beside its [`Plan`].
#[derive(Debug, Default)]
pub struct Decided {
    /// The method routes were checked against, when an honoured override changed it.
    pub override_method: Option<&'static str>,
    /// The canonical path, when it differs from the received one (for the access log).
    pub canonical_path: Option<String>,
    /// Watches a `POST` body for `_method` fields as it streams upstream.
    pub body_scan: Option<BodyScan>,
    /// The matched route's rank in the table.
    pub route: Option<usize>,
    /// Index of the upstream group the route chose.
    pub group: usize,
    /// The route's ability check, on routes that require one.
    pub enforcement: Option<Decision>,
    /// The key the matched route's request limit counts (`sub:…`, `param:…`, `claim:…`, or
    /// the client's `ip:…`), when the route has a limit.
    pub limit_key: Option<String>,
    /// The verified subject.
    pub subject: Option<String>,
    /// The valid token the request carried, ready to be sent back as `X-token`.
    pub token: Option<HeaderValue>,
    /// How to rewrite the upstream request.
    pub forward: Forward,
    /// `forward_claims` left out because no header value can carry them, by index.
    pub omitted_claims: SmallVec<[usize; 1]>,
}

impl Tokengate {
    /// Canonicalizes the request and decides what to do with it; `framing` is how its protocol
    /// frames the body, `body` holds `_method` fields of a body read ahead, `now` is Unix time.
    pub fn plan(
        &self,
        header: &RequestHeader,
        framing: Framing,
        peer: Option<IpAddr>,
        body: Option<&Found>,
        now: u64,
        decided: &mut Decided,
    ) -> Plan {
        let overrides = override_values(header);
        let transfer_encoding: Vec<&[u8]> = header
            .headers
            .get_all(http::header::TRANSFER_ENCODING)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        let host = match host_of(header) {
            Ok(host) => host,
            Err(refusal) => return Plan::Refuse(refusal.api_error()),
        };
        let head = Head {
            method: header.method.as_str(),
            target: header.raw_path(),
            http11: header.version != Version::HTTP_10 && header.version != Version::HTTP_09,
            host: host.as_ref().map(|v| v.as_bytes()),
            override_headers: &overrides,
            transfer_encoding: &transfer_encoding,
        };
        let mut canonical = match canonicalize(&head, self.proxy.request) {
            Ok(canonical) => canonical,
            Err(refusal) => return Plan::Refuse(refusal.api_error()),
        };
        if let Cow::Owned(path) = &canonical.path {
            decided.canonical_path = Some(path.clone());
        }
        let semicolons = self.proxy.request.allow_semicolon;
        if self
            .token_path
            .matches(&canonical.path, true, semicolons)
            .is_some()
        {
            return Plan::Token;
        }
        if self.jwks.is_some()
            && JWKS_TEMPLATE
                .matches(&canonical.path, true, semicolons)
                .is_some()
        {
            return Plan::Jwks;
        }
        let kind = match content_type(header) {
            Ok(kind) => kind,
            Err(refusal) => return Plan::Refuse(refusal.api_error()),
        };
        // Only a `POST` body is read for `_method`, by Rack, `method-override` and Symfony.
        let scanned = canonical.method == "POST" && kind != BodyKind::Opaque;
        let scanned_body = scanned && framing.has_body();
        let encoded = || {
            let codings = header.headers.get_all(http::header::CONTENT_ENCODING);
            body_is_encoded(codings.iter().map(|v| v.as_bytes()))
        };
        if scanned_body && encoded() {
            return Plan::Refuse(ENCODED_BODY);
        }
        match body {
            Some(found) => {
                if let Err(refusal) = canonical.add_body_overrides(found) {
                    return Plan::Refuse(refusal.api_error());
                }
            }
            None if scanned
                && self.proxy.request.honor_method_override
                && preread_fits(framing) =>
            {
                return Plan::PreRead(kind);
            }
            None if scanned_body => decided.body_scan = BodyScan::new(&kind),
            None => {}
        }
        self.decide(header, &canonical, host.as_ref(), peer, now, decided)
    }

    /// Authenticates, asks the policy, and records the verdict; `host` is the authority `plan`
    /// read, forwarded as it came when it was canonical.
    fn decide(
        &self,
        header: &RequestHeader,
        canonical: &Canonical<'_>,
        host: Option<&HeaderValue>,
        peer: Option<IpAddr>,
        now: u64,
        decided: &mut Decided,
    ) -> Plan {
        let auth = match self.authenticate(header, now) {
            Ok(auth) => auth,
            Err(error) => return Plan::Refuse(error),
        };
        let Some(verdict) = policy::decide(canonical, &self.proxy.routes, &auth) else {
            return Plan::Refuse(ApiError::new(ErrorCode::Internal, "No route matched."));
        };
        decided.override_method = canonical.override_method();
        decided.route = Some(self.proxy.routes.rank_of(verdict.route));
        decided.group = verdict.route.upstream;
        decided.enforcement = verdict.enforcement;
        decided.limit_key = limit_key(&verdict, &auth, peer);
        if let Authentication::Valid(caller) = &auth {
            decided.subject = Some(caller.claims.subject().to_owned());
            // The extractor admits only visible ASCII, which a header value always takes.
            decided.token = HeaderValue::from_str(caller.token).ok();
        }
        match verdict.action {
            Action::Refuse(error) => Plan::Refuse(error),
            Action::Forward => {
                let authority = match canonical.host_rewritten {
                    false => host.cloned(),
                    true => canonical
                        .authority
                        .as_ref()
                        .and_then(|a| HeaderValue::from_str(&a.to_string()).ok()),
                };
                let claims = match &auth {
                    Authentication::Valid(caller) => {
                        self.claim_headers(caller, &verdict.params, &mut decided.omitted_claims)
                    }
                    _ => Vec::new(),
                };
                decided.forward = Forward {
                    target: canonical.target_rewritten.then(|| canonical.target()),
                    authority,
                    host_rewritten: canonical.host_rewritten,
                    honoured_override: canonical.honoured_override(),
                    claims,
                };
                Plan::Forward
            }
        }
    }

    /// What the request's `Authorization` proves, a signed-out subject's token included; `Err`
    /// when sign-outs cannot be checked (fails closed).
    fn authenticate<'h>(
        &self,
        header: &'h RequestHeader,
        now: u64,
    ) -> Result<Authentication<'h>, ApiError> {
        // Inline: nearly every request carries none or one, and a `Vec` allocates for one.
        let authorization: SmallVec<[&[u8]; 2]> = authorization_values(header);
        if authorization.is_empty() {
            return Ok(Authentication::Missing);
        }
        let caller = match self.tokens.authenticate(&authorization, now) {
            Ok(caller) => caller,
            Err(error) => return Ok(Authentication::Invalid(error)),
        };
        match self.signed_in(caller.claims.subject(), caller.claims.issued_at()) {
            Ok(()) => Ok(Authentication::Valid(caller)),
            Err(error) if error == SIGN_OUTS_UNAVAILABLE => Err(error),
            Err(_) => Ok(Authentication::Invalid(REVOKED)),
        }
    }
}

/// The key a route's request limit counts: the subject, a path parameter or an issuer's
/// claim, else the client's address; `None` when the route has no limit.
fn limit_key(
    verdict: &Verdict<'_, '_>,
    auth: &Authentication<'_>,
    peer: Option<IpAddr>,
) -> Option<String> {
    let limit = verdict.route.limit.as_ref()?;
    let key = match (&limit.key, auth) {
        (LimitKey::Subject, Authentication::Valid(caller)) => {
            Some(format!("sub:{}", caller.claims.subject()))
        }
        // The shortest reading (`a` of a last segment `a.json`): every spelling of one
        // resource counts against the same key.
        (LimitKey::Param(name), Authentication::Valid(_)) => verdict
            .params
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.readings().into_iter().min_by_key(|r| r.len()))
            .map(|v| format!("param:{v}")),
        (LimitKey::Claim(pointer), Authentication::Valid(caller)) => pointer
            .text(&caller.claims, &verdict.params)
            .map(|v| format!("claim:{v}")),
        _ => None,
    };
    key.or_else(|| peer.map(|ip| format!("ip:{ip}")))
}

impl Tokengate {
    /// The `forward_claims` headers for `caller` on a route with `params`; a claim no header
    /// value can carry is left out (its index noted in `omitted`), never a failed request.
    fn claim_headers(
        &self,
        caller: &Caller<'_>,
        params: &[(&str, ParamValue<'_>)],
        omitted: &mut SmallVec<[usize; 1]>,
    ) -> Vec<(String, String)> {
        let mut headers = Vec::new();
        for (i, mapping) in self.proxy.forward_claims.iter().enumerate() {
            match mapping.value(&caller.claims, params) {
                ClaimValue::Header(value) => headers.push((mapping.header.clone(), value)),
                ClaimValue::Unsendable => omitted.push(i),
                ClaimValue::Absent => {}
            }
        }
        headers
    }
}

/// The `_method` fields of a body of `kind` read ahead.
pub fn overrides_in(kind: &BodyKind, body: &[u8]) -> Found {
    BodyScan::new(kind)
        .and_then(|mut scan| {
            scan.feed(body);
            scan.finish();
            scan.found()
        })
        .unwrap_or_default()
}

/// Feeds one chunk of a streamed body to its scan: `true` once a `_method` field is complete,
/// and the request must be refused before the chunk goes upstream.
pub fn override_streamed(scan: &mut BodyScan, chunk: Option<&[u8]>, end_of_stream: bool) -> bool {
    let mut found = chunk.is_some_and(|chunk| scan.feed(chunk));
    if end_of_stream {
        found |= scan.finish();
    }
    found
}

/// Whether a body can be read ahead and replayed: its length announced and within the limit.
/// A body of unknown length is scanned as it streams instead, where a `_method` is refused.
fn preread_fits(framing: Framing) -> bool {
    matches!(framing, Framing::Length(len) if len <= PREREAD_LIMIT as u64)
}

/// A compressed form, multipart or JSON body: its `_method` field could not be checked on the
/// way.
const ENCODED_BODY: ApiError = ApiError::new(
    ErrorCode::UnsupportedMediaType,
    "Send form, multipart and JSON bodies without a Content-Encoding; they are checked as they pass.",
);
