//! The `ProxyHttp` phases. Each phase only calls the pure parts ([`crate::request`],
//! [`crate::policy`], [`crate::token`]) and records what they decided: canonicalize, route,
//! decide, answer or forward, observe.

mod failure;
mod forward;
mod state;
mod token_route;

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Version};
use jsonwebtoken::Algorithm;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType};
use smallvec::SmallVec;

use crate::access_log::{self, AccessLog, Entry};
use crate::config::SecretSource;
use crate::error::{ApiError, ErrorCode};
use crate::forward_claims::{ClaimHeader, ClaimValue};
use crate::forwarded::TrustedProxies;
use crate::limits::{retry_after_secs, Limiter, RateLimit};
use crate::metrics::{self, RouteKind, UpstreamErrorKind};
use crate::policy::{self, Action, Authentication};
use crate::request::body::{body_is_encoded, body_kind};
use crate::request::method::OVERRIDE_HEADERS;
use crate::request::{self, canonicalize, BodyKind, BodyScan, Canonical, Framing, Head, Refusal};
use crate::respond::{self, Response};
use crate::routes::{Decision, LimitKey, ParamValue, PathTemplate, RouteTable};
use crate::shared::{Admission, Shared, Standing};
use crate::token::{Caller, TokenService};
use crate::trace::{self, Exporter, SpanRecord, TraceContext};
use crate::upstreams::UpstreamGroup;
pub use forward::same_header;
pub use state::{watch_listener, AppState, InFlight};

/// Where the public keys of asymmetrically signed tokens are published.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// Largest url-encoded `POST` body read ahead to find a `_method` field when overrides are
/// honoured: what Pingora can replay to the upstream.
const PREREAD_LIMIT: usize = 64 * 1024;

/// Everything the proxy needs, built from the configuration by `server`.
pub struct Settings {
    /// The token route's service.
    pub tokens: TokenService,
    /// Path of the token route (matched in any case, with a trailing `/` or `.format`).
    pub token_path: PathTemplate,
    /// Largest body tokengate reads itself.
    pub body_limit: usize,
    /// Upstream groups, by index (a reload keeps the unchanged ones).
    pub groups: Arc<[Arc<UpstreamGroup>]>,
    /// The ranked route table.
    pub routes: RouteTable,
    /// Header carrying the verified subject upstream.
    pub identity_header: HeaderName,
    /// Claims forwarded as headers.
    pub forward_claims: Vec<ClaimHeader>,
    /// What a request may look like.
    pub request: request::Options,
    /// Peers whose forwarding headers are extended.
    pub trusted_proxies: TrustedProxies,
    /// The access log.
    pub access_log: AccessLog,
    /// The per-subject mint limit.
    pub limiter: Option<Limiter>,
    /// The per-subject mint limit's rate, for the shared (Redis) limiter.
    pub mint_rate: Option<RateLimit>,
    /// Local limiters of routes with a `limit`, by route name (without Redis).
    pub route_limiters: HashMap<String, Limiter>,
    /// Limits and sign-outs shared across replicas, when Redis is configured.
    pub shared: Option<Arc<Shared>>,
    /// Span export, when tracing is configured.
    pub tracer: Option<Arc<Exporter>>,
    /// The JWKS body and its `Cache-Control`, when minted tokens are signed asymmetrically.
    pub jwks: Option<(Bytes, String)>,
    /// Where the secrets are read from again when their file changes.
    pub secret_source: SecretSource,
    /// Algorithms session tokens may use, for a keyring read again.
    pub algorithms: Vec<Algorithm>,
    /// Readiness and in-flight state.
    pub state: Arc<AppState>,
}

/// The tokengate proxy.
pub struct Tokengate {
    tokens: TokenService,
    token_path: PathTemplate,
    jwks_path: PathTemplate,
    body_limit: usize,
    groups: Arc<[Arc<UpstreamGroup>]>,
    routes: RouteTable,
    identity_header: HeaderName,
    forward_claims: Vec<ClaimHeader>,
    options: request::Options,
    trusted_proxies: TrustedProxies,
    access_log: AccessLog,
    limiter: Option<Limiter>,
    mint_rate: Option<RateLimit>,
    route_limiters: HashMap<String, Limiter>,
    shared: Option<Arc<Shared>>,
    tracer: Option<Arc<Exporter>>,
    jwks: Option<(Bytes, String)>,
    secret_source: SecretSource,
    algorithms: Vec<Algorithm>,
    state: Arc<AppState>,
}

/// What the forwarded request becomes upstream.
#[derive(Debug, Default)]
struct Forward {
    /// The canonical target, when it differs from the one received.
    target: Option<Vec<u8>>,
    /// The canonical authority: the client's Host value itself when it was canonical already.
    authority: Option<HeaderValue>,
    /// Whether Host must be rewritten to `authority`.
    host_rewritten: bool,
    /// The honoured override method.
    honoured_override: Option<&'static str>,
    /// Claims sent as headers (`forward_claims`), by header name.
    claims: Vec<(String, String)>,
}

/// Per-request state, passed through every phase.
pub struct RequestCtx {
    /// When the request's first filter ran.
    start: Instant,
    /// Answered in-process or forwarded: drives metric labels.
    route: RouteKind,
    /// The propagated or generated request id, ready to be sent (upstream, and back).
    request_id: HeaderValue,
    /// The valid token a forwarded request carried, ready to be sent back as `X-token`.
    token: Option<HeaderValue>,
    /// The verified subject, on either route: the identity header and the access log.
    subject: Option<String>,
    /// The error code tokengate answered with, if any.
    reason: Option<ErrorCode>,
    /// A refusal decided while the body streamed, answered by `fail_to_proxy`.
    refusal: Option<ApiError>,
    /// The canonical path, when it differs from the received one (for the access log).
    canonical_path: Option<String>,
    /// How to rewrite the upstream request.
    forward: Forward,
    /// Watches a `POST` body for `_method` fields as it streams upstream.
    body_scan: Option<BodyScan>,
    /// When the request went upstream.
    upstream_start: Option<Instant>,
    /// Seconds the upstream took to its response header.
    upstream_duration: Option<f64>,
    /// How the upstream failed, if it did.
    upstream_error: Option<UpstreamErrorKind>,
    /// Index of the upstream group the route chose.
    group: usize,
    /// The route's request limit to apply: its rank in the table and the key counted.
    limit: Option<(usize, String)>,
    /// Addresses tried so far, so a retry goes elsewhere; inline, as a request rarely tries
    /// more than two.
    tried: SmallVec<[SocketAddr; 2]>,
    /// This request's span, when tracing: its context, start (Unix ns) and the caller's
    /// `tracestate`.
    trace: Option<(TraceContext, u64, String)>,
    /// The matched route's name, for the span.
    route_name: Option<String>,
    /// Held for the request's lifetime.
    _in_flight: InFlight,
}

/// What `request_filter` does with a request once it is canonical.
enum Plan {
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

impl Tokengate {
    /// The proxy over `settings`.
    pub fn new(settings: Settings) -> Tokengate {
        Tokengate {
            tokens: settings.tokens,
            token_path: settings.token_path,
            jwks_path: PathTemplate::parse(JWKS_PATH).unwrap_or_else(|_| PathTemplate::root()),
            body_limit: settings.body_limit,
            groups: settings.groups,
            routes: settings.routes,
            identity_header: settings.identity_header,
            forward_claims: settings.forward_claims,
            options: settings.request,
            trusted_proxies: settings.trusted_proxies,
            access_log: settings.access_log,
            limiter: settings.limiter,
            mint_rate: settings.mint_rate,
            route_limiters: settings.route_limiters,
            shared: settings.shared,
            tracer: settings.tracer,
            jwks: settings.jwks,
            secret_source: settings.secret_source,
            algorithms: settings.algorithms,
            state: settings.state,
        }
    }

    /// The keyring the token route verifies and signs with, for rotation.
    pub fn keyring(&self) -> crate::token::SharedKeyring {
        self.tokens.keys.clone()
    }

    /// Where the keyring is read from again, and the algorithms it allows.
    pub fn secret_source(&self) -> (&SecretSource, &[Algorithm]) {
        (&self.secret_source, &self.algorithms)
    }

    /// The upstream groups, for readiness.
    pub fn groups(&self) -> &[Arc<UpstreamGroup>] {
        &self.groups
    }

    /// Canonicalizes the request and decides what to do with it; `framing` is how its protocol
    /// frames the body, and `body` holds `_method` fields of a body read ahead.
    fn plan(
        &self,
        header: &RequestHeader,
        framing: Framing,
        peer: Option<IpAddr>,
        body: Option<&request::method::Found>,
        ctx: &mut RequestCtx,
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
        let mut canonical = match canonicalize(&head, self.options) {
            Ok(canonical) => canonical,
            Err(refusal) => return Plan::Refuse(refusal.api_error()),
        };
        if let Cow::Owned(path) = &canonical.path {
            ctx.canonical_path = Some(path.clone());
        }
        let semicolons = self.options.allow_semicolon;
        if self
            .token_path
            .matches(&canonical.path, true, semicolons)
            .is_some()
        {
            return Plan::Token;
        }
        if self.jwks.is_some()
            && self
                .jwks_path
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
            None if scanned && self.options.honor_method_override && preread_fits(framing) => {
                return Plan::PreRead(kind);
            }
            None if scanned_body => ctx.body_scan = BodyScan::new(&kind),
            None => {}
        }
        self.decide(header, &canonical, host.as_ref(), peer, ctx)
    }

    /// Authenticates, asks the policy, and records the verdict on `ctx`; `host` is the
    /// authority `plan` read, forwarded as it came when it was canonical.
    fn decide(
        &self,
        header: &RequestHeader,
        canonical: &Canonical<'_>,
        host: Option<&HeaderValue>,
        peer: Option<IpAddr>,
        ctx: &mut RequestCtx,
    ) -> Plan {
        // Inline: nearly every request carries none or one, and a `Vec` allocates for one.
        let authorization: SmallVec<[&[u8]; 2]> = authorization_values(header);
        let auth = match authorization.is_empty() {
            true => Authentication::Missing,
            false => match self.tokens.authenticate(&authorization, unix_now()) {
                Ok(caller) => {
                    match self.standing(caller.claims.subject(), caller.claims.issued_at()) {
                        Standing::Valid => Authentication::Valid(caller),
                        Standing::Revoked => Authentication::Invalid(REVOKED),
                        Standing::Unavailable => return Plan::Refuse(SIGN_OUTS_UNAVAILABLE),
                    }
                }
                Err(error) => Authentication::Invalid(error),
            },
        };
        let Some(verdict) = policy::decide(canonical, &self.routes, &auth) else {
            return Plan::Refuse(ApiError::new(ErrorCode::Internal, "No route matched."));
        };
        ctx.group = verdict.route.upstream;
        if self.tracer.is_some() {
            ctx.route_name = Some(verdict.route.name.clone());
        }
        if let Some(limit) = &verdict.route.limit {
            let key = match (&limit.key, &auth) {
                (LimitKey::Subject, Authentication::Valid(caller)) => {
                    Some(format!("sub:{}", caller.claims.subject()))
                }
                // The shortest reading (`a` of a last segment `a.json`): every spelling of
                // one resource counts against the same key.
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
            let key = key.or_else(|| peer.map(|ip| format!("ip:{ip}")));
            ctx.limit = key.map(|k| (self.routes.rank_of(verdict.route), k));
        }
        if let Some(decision) = verdict.enforcement {
            metrics::get()
                .enforcement
                .with_label_values(&[verdict.route.name.as_str(), decision.as_str()])
                .inc();
            if decision == Decision::ShadowDeny {
                log::warn!(
                    "route {}: would refuse request {} (shadow mode, forwarded)",
                    verdict.route.name,
                    ctx.request_id()
                );
            }
        }
        if let Authentication::Valid(caller) = &auth {
            ctx.subject = Some(caller.claims.subject().to_owned());
            // The extractor admits only visible ASCII, which a header value always takes.
            ctx.token = HeaderValue::from_str(caller.token).ok();
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
                    Authentication::Valid(caller) => self.claim_headers(caller, &verdict.params),
                    _ => Vec::new(),
                };
                ctx.forward = Forward {
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

    /// The `forward_claims` headers for `caller` on a route with `params`; a claim no header
    /// value can carry is left out and counted, never a failed request.
    fn claim_headers(
        &self,
        caller: &Caller<'_>,
        params: &[(&str, ParamValue<'_>)],
    ) -> Vec<(String, String)> {
        let mut headers = Vec::new();
        for mapping in &self.forward_claims {
            match mapping.value(&caller.claims, params) {
                ClaimValue::Header(value) => headers.push((mapping.header.clone(), value)),
                ClaimValue::Unsendable => metrics::get()
                    .claim_headers_omitted
                    .with_label_values(&[mapping.header.as_str()])
                    .inc(),
                ClaimValue::Absent => {}
            }
        }
        headers
    }

    /// Answers an error of tokengate's own and counts it.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        error: &ApiError,
        extra: &[(&respond::Name, &str)],
    ) -> pingora::Result<()> {
        metrics::get()
            .rejections
            .with_label_values(&[error.code.as_str()])
            .inc();
        ctx.reason = Some(error.code);
        let mut response = Response::error_for(error, &ctx.request_id, grpc_call(session));
        for (name, value) in extra {
            response = response.with_header(name, value);
        }
        respond::send(session, response).await
    }

    /// Refuses a request whose body is still unread: a client waiting for `100 Continue` is
    /// not invited to send it (the connection closes after the answer); another body within the
    /// limit is read and dropped so the connection can serve the next request.
    async fn refuse_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        error: &ApiError,
        extra: &[(&respond::Name, &str)],
    ) -> pingora::Result<()> {
        let expects_continue = session
            .req_header()
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if body_framing(session).has_body()
            && (expects_continue || self.read_body(session).await.is_err())
        {
            session.set_keepalive(None);
        }
        self.refuse(session, ctx, error, extra).await
    }

    /// Whether a token of `subject` issued at `issued_at` was signed out since.
    pub(super) fn standing(&self, subject: &str, issued_at: Option<f64>) -> Standing {
        self.shared.as_ref().map_or(Standing::Valid, |shared| {
            shared.standing(subject, issued_at)
        })
    }

    /// The route's request limit for this request: `None` to go ahead, else the refusal and
    /// its `Retry-After` seconds.
    async fn route_limit(&self, ctx: &RequestCtx) -> Option<(ApiError, Option<u64>)> {
        let (rank, key) = ctx.limit.as_ref()?;
        let route = self.routes.routes().get(*rank)?;
        let limit = route.limit.as_ref()?;
        let admission = match &self.shared {
            Some(shared) => shared.admit(&route.name, key, limit.rate).await,
            None => match self
                .route_limiters
                .get(&route.name)?
                .admit(key, Instant::now())
            {
                Ok(()) => Admission::Admit,
                Err(wait) => Admission::Wait(wait),
            },
        };
        match admission {
            Admission::Admit => None,
            Admission::Wait(wait) => Some((ROUTE_RATE_LIMITED, Some(retry_after_secs(wait)))),
            Admission::Unavailable => Some((LIMITS_UNAVAILABLE, None)),
        }
    }

    /// Reads a small body of `kind` (replayed upstream by Pingora's retry buffer) and plans
    /// again with its `_method` fields.
    async fn plan_after_body(
        &self,
        session: &mut Session,
        framing: Framing,
        kind: &BodyKind,
        ctx: &mut RequestCtx,
    ) -> Plan {
        session.as_downstream_mut().enable_retry_buffering();
        let body = match token_route::read_body(session, PREREAD_LIMIT).await {
            Ok(body) => body,
            Err(error) => {
                session.set_keepalive(None);
                return Plan::Refuse(error);
            }
        };
        let found = BodyScan::new(kind)
            .and_then(|mut scan| {
                scan.feed(&body);
                scan.finish();
                scan.found()
            })
            .unwrap_or_default();
        let peer = client_ip(session);
        self.plan(session.req_header(), framing, peer, Some(&found), ctx)
    }
}

/// A token whose subject signed out after it was issued.
pub(super) const REVOKED: ApiError = ApiError::new(
    ErrorCode::InvalidToken,
    "The token's subject signed out after it was issued.",
);
/// Sign-outs cannot be checked and the check fails closed.
pub(super) const SIGN_OUTS_UNAVAILABLE: ApiError = ApiError::new(
    ErrorCode::Unavailable,
    "Sign-outs cannot be checked right now; retry shortly.",
);
/// A compressed form, multipart or JSON body: its `_method` field could not be checked on the
/// way.
const ENCODED_BODY: ApiError = ApiError::new(
    ErrorCode::UnsupportedMediaType,
    "Send form, multipart and JSON bodies without a Content-Encoding; they are checked as they pass.",
);
/// A route's request limit is exhausted for this key.
const ROUTE_RATE_LIMITED: ApiError = ApiError::new(
    ErrorCode::RateLimited,
    "Too many requests on this route; retry later.",
);
/// Limits cannot be checked and they fail closed.
pub(super) const LIMITS_UNAVAILABLE: ApiError = ApiError::new(
    ErrorCode::Unavailable,
    "The rate limit cannot be checked right now; retry shortly.",
);

/// The client's address.
fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// How the body is read for `_method` fields, by the request's `Content-Type`.
fn content_type(header: &RequestHeader) -> Result<BodyKind, Refusal> {
    let fields = header.headers.get_all(http::header::CONTENT_TYPE);
    body_kind(fields.iter().map(|v| v.as_bytes()))
}

/// How the request's body is framed, from the protocol: before any of it is read, Pingora's
/// session says whether the message ended with its header (HTTP/1.1 by its framing rules,
/// HTTP/2 by `END_STREAM` on HEADERS).
fn body_framing(session: &mut Session) -> Framing {
    let ended = session.as_downstream_mut().is_body_done();
    let headers = &session.req_header().headers;
    Framing::of(
        ended,
        headers.contains_key(http::header::TRANSFER_ENCODING),
        headers
            .get(http::header::CONTENT_LENGTH)
            .map(|v| v.as_bytes()),
    )
}

/// Whether a body can be read ahead and replayed: its length announced and within the limit.
/// A body of unknown length is scanned as it streams instead, where a `_method` is refused.
fn preread_fits(framing: Framing) -> bool {
    matches!(framing, Framing::Length(len) if len <= PREREAD_LIMIT as u64)
}

/// Whether the client is a gRPC library, which reads `grpc-status` rather than HTTP statuses.
fn grpc_call(session: &Session) -> bool {
    crate::respond::is_grpc(
        session
            .req_header()
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
    )
}

/// The request's authority: its Host header or, in HTTP/2, its `:authority`; both, differing,
/// name two hosts and are refused (RFC 9113 §8.3.1).
fn host_of(header: &RequestHeader) -> Result<Option<HeaderValue>, Refusal> {
    let host = header.headers.get(http::header::HOST);
    if header.version != Version::HTTP_2 {
        return Ok(host.cloned());
    }
    let authority = header
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    match (host, authority) {
        (Some(host), Some(authority)) if host != authority => Err(Refusal::BadHost),
        (Some(host), _) => Ok(Some(host.clone())),
        (None, authority) => Ok(authority),
    }
}

/// Every method-override header value, in any spelling.
fn override_values(header: &RequestHeader) -> Vec<&[u8]> {
    header
        .headers
        .iter()
        .filter(|(name, _)| {
            OVERRIDE_HEADERS
                .iter()
                .any(|h| same_header(name.as_str(), h))
        })
        .map(|(_, value)| value.as_bytes())
        .collect()
}

/// Every `Authorization` header value, in order: more than one is refused later, not merged.
fn authorization_values<'a, B: FromIterator<&'a [u8]>>(header: &'a RequestHeader) -> B {
    header
        .headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .map(|v| v.as_bytes())
        .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The caller's `X-Request-Id` when it is 1–200 visible ASCII characters, else a new UUID v4.
pub fn request_id(header: &RequestHeader) -> HeaderValue {
    // The parsed name: looking up by `&str` parses it on every request.
    let given = header.headers.get(&respond::X_REQUEST_ID.0).filter(|v| {
        let v = v.as_bytes();
        (1..=200).contains(&v.len()) && v.iter().all(|b| b.is_ascii_graphic())
    });
    if let Some(given) = given {
        return given.clone();
    }
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_maybe_shared(carve_id(id.as_bytes()))
        .unwrap_or(HeaderValue::from_static("unknown"))
}

/// Generated ids per slab: one allocation for this many requests.
const IDS_PER_SLAB: usize = 64;

thread_local! {
    /// The current slab generated ids are cut from, per worker thread.
    static ID_SLAB: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// `id` copied into a shared per-thread slab: an id's own buffer would be one allocation,
/// and its first clone (upstream, then the response) a second one to make it shared; ids
/// cut from one slab share its reference count, and the slab goes with its last id (so a
/// long-lived request keeps its 2.3 KiB slab, not 36 bytes, until it ends).
fn carve_id(id: &[u8]) -> Bytes {
    ID_SLAB.with_borrow_mut(|slab| {
        if slab.capacity() - slab.len() < id.len() {
            *slab = BytesMut::with_capacity(id.len() * IDS_PER_SLAB);
        }
        slab.extend_from_slice(id);
        slab.split().freeze()
    })
}

impl RequestCtx {
    /// The request id as text; ids are visible ASCII by construction.
    pub(super) fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or_default()
    }
}

/// The phases, run by [`Proxy`] on the configuration a request started with.
impl Tokengate {
    /// Runs first for every request: starts its clock and counts it in flight.
    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            route: RouteKind::Proxy,
            request_id: HeaderValue::from_static(""),
            token: None,
            subject: None,
            reason: None,
            refusal: None,
            canonical_path: None,
            forward: Forward::default(),
            body_scan: None,
            upstream_start: None,
            upstream_duration: None,
            upstream_error: None,
            group: 0,
            limit: None,
            tried: SmallVec::new(),
            trace: None,
            route_name: None,
            _in_flight: InFlight::new(self.state.clone()),
        }
    }

    /// Before anything else: answer pipelined requests in order (RFC 9112 §9.3.2) instead of
    /// dropping them with the connection.
    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        session.as_downstream_mut().set_pipelining_enabled(true);
        if self.tracer.is_some() {
            let headers = &session.req_header().headers;
            let context =
                TraceContext::continue_or_start(headers.get("traceparent").map(|v| v.as_bytes()));
            let state = headers
                .get("tracestate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            ctx.trace = Some((context, trace::unix_nanos(), state));
        }
        Ok(())
    }

    /// Canonicalizes and decides. `Ok(true)`: tokengate answered (token route, JWKS, a
    /// refusal); `Ok(false)`: forward upstream.
    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        ctx.request_id = request_id(session.req_header());
        let peer = client_ip(session);
        let framing = body_framing(session);
        let mut plan = self.plan(session.req_header(), framing, peer, None, ctx);
        if let Plan::PreRead(kind) = &plan {
            plan = self.plan_after_body(session, framing, kind, ctx).await;
        }
        match plan {
            Plan::Token => {
                ctx.route = RouteKind::Token;
                self.token_route(session, ctx).await?;
            }
            Plan::Jwks => {
                ctx.route = RouteKind::Token;
                self.jwks_route(session, ctx).await?;
            }
            Plan::Refuse(error) => self.refuse_request(session, ctx, &error, &[]).await?,
            Plan::Forward => match self.route_limit(ctx).await {
                None => return Ok(false),
                Some((error, retry_after)) => {
                    let retry = retry_after.map(|s| s.to_string());
                    let extra: Vec<(&respond::Name, &str)> = retry
                        .iter()
                        .map(|r| (&respond::RETRY_AFTER, r.as_str()))
                        .collect();
                    self.refuse_request(session, ctx, &error, &extra).await?;
                }
            },
            Plan::PreRead(_) => {
                let error = ApiError::new(ErrorCode::Internal, "The body was read twice.");
                self.refuse(session, ctx, &error, &[]).await?;
            }
        }
        Ok(true)
    }

    /// Watches a form body for `_method` fields on its way upstream: the chunk that completes
    /// one is never sent, and the request is answered 400 instead.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let Some(scan) = ctx.body_scan.as_mut() else {
            return Ok(());
        };
        let mut found = body.as_deref().is_some_and(|chunk| scan.feed(chunk));
        if end_of_stream {
            found |= scan.finish();
        }
        if found {
            ctx.refusal = Some(Refusal::OverrideField.api_error());
            return Err(Error::explain(
                ErrorType::InvalidHTTPHeader,
                "a _method field in the request body",
            ));
        }
        Ok(())
    }

    /// Where a forwarded request goes: the next usable address of its route's group.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let no_address = || {
            // An upstream failure (502), not one of tokengate's own (500).
            Error::explain(
                ErrorType::ConnectNoRoute,
                "no usable address in the upstream group",
            )
            .into_up()
        };
        let group = self.groups.get(ctx.group).ok_or_else(no_address)?;
        let addr = group.select(&ctx.tried).ok_or_else(no_address)?;
        ctx.tried.push(addr);
        Ok(Box::new(group.peer(addr)))
    }

    /// Rewrites the upstream request into the canonical one tokengate checked.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let peer = client_ip(session).map(|ip| (ip, self.trusted_proxies.contains(ip)));
        let rewrite = forward::Rewrite {
            claim_headers: &self.forward_claims,
            claims: &ctx.forward.claims,
            target: ctx.forward.target.as_deref(),
            authority: ctx.forward.authority.as_ref(),
            host_rewritten: ctx.forward.host_rewritten,
            honoured_override: ctx.forward.honoured_override,
            subject: ctx.subject.as_deref(),
            peer,
            proto: match session.digest().is_some_and(|d| d.ssl_digest.is_some()) {
                true => "https",
                false => "http",
            },
            request_id: &ctx.request_id,
        };
        forward::rewrite(upstream, &self.identity_header, &rewrite)?;
        if let Some((context, _, _)) = &ctx.trace {
            // The upstream's parent is this request's span; `tracestate` passes as received.
            upstream.insert_header("traceparent", context.traceparent())?;
        }
        ctx.upstream_start = Some(Instant::now());
        Ok(())
    }

    /// Times the upstream up to its response header.
    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if let Some(start) = ctx.upstream_start.take() {
            let seconds = start.elapsed().as_secs_f64();
            metrics::get().upstream_duration.observe(seconds);
            ctx.upstream_duration = Some(seconds);
        }
        Ok(())
    }

    /// Adds `X-Request-Id`, and `X-token` when the request carried a valid token.
    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        // No `reserve_headers`: the parsed response header (vendor/README.md) has room for the
        // one or two added here at most sizes, where reserving would grow and rehash both maps.
        response.append_header(respond::X_REQUEST_ID.clone(), ctx.request_id.clone())?;
        // An informational answer (`100`, `103`) comes before the final one, which needs the
        // token too.
        let token = match response.status.is_informational() {
            true => ctx.token.clone(),
            false => ctx.token.take(),
        };
        if let Some(token) = token {
            response.insert_header(respond::X_TOKEN.clone(), token)?;
        }
        Ok(())
    }

    /// Notes that connecting failed, for the answer and the metric.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.upstream_error = Some(failure::upstream_error_code(&e).0);
        let Some(group) = self.groups.get(ctx.group) else {
            return e;
        };
        // With another address to go to, eject this one for a while and retry there.
        if let Some(addr) = ctx.tried.last().copied() {
            if group.has_untried(&ctx.tried) {
                group.eject(addr);
                e.set_retry(true);
            }
        }
        e
    }

    /// Answers a fatal error in the SPEC's JSON instead of Pingora's bare page.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let answer = match ctx.refusal.take() {
            Some(refusal) => Some((refusal, None)),
            None => failure::answer(e),
        };
        let Some((error, kind)) = answer else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        if let Some(kind) = kind {
            ctx.upstream_error = Some(kind);
            metrics::get()
                .upstream_errors
                .with_label_values(&[kind.as_str()])
                .inc();
        }
        if error.code.status() < 500 {
            metrics::get()
                .rejections
                .with_label_values(&[error.code.as_str()])
                .inc();
        }
        ctx.reason = Some(error.code);
        if session.response_written().is_none() {
            session.set_keepalive(None);
            let response = Response::error_for(&error, &ctx.request_id, grpc_call(session));
            if let Err(write_error) = respond::send(session, response).await {
                log::debug!("could not send error response: {write_error}");
            }
        }
        FailToProxy {
            error_code: error.code.status(),
            can_reuse_downstream: false,
        }
    }

    /// Records the request's metrics and access-log line once it is over.
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let duration = ctx.start.elapsed().as_secs_f64();
        let written = session.response_written();
        let status = written.map_or(0, |r| r.status.as_u16());
        metrics::get().record_request(ctx.route, status, duration);
        let route = ctx.route.as_str();
        if let (Some(tracer), Some((context, start, state))) = (&self.tracer, ctx.trace.take()) {
            if context.sampled() {
                let name = match &ctx.route_name {
                    Some(name) => format!("{route} {name}"),
                    None => route.to_owned(),
                };
                tracer.record(SpanRecord {
                    context,
                    trace_state: state,
                    name,
                    start_unix_nano: start,
                    end_unix_nano: trace::unix_nanos(),
                    method: session.req_header().method.as_str().to_owned(),
                    status,
                });
            }
        }
        if !self.access_log.enabled() {
            return;
        }
        let header = session.req_header();
        self.access_log.write(&Entry {
            time: access_log::now_rfc3339(),
            request_id: ctx.request_id(),
            method: header.method.as_str(),
            path: ctx
                .canonical_path
                .as_deref()
                .unwrap_or_else(|| header.uri.path()),
            status,
            route,
            duration,
            upstream_duration: ctx.upstream_duration,
            bytes_in: session.body_bytes_read(),
            bytes_out: session.body_bytes_sent(),
            subject: ctx.subject.as_deref(),
            reason: ctx.reason.map(ErrorCode::as_str),
        });
    }
}

/// The Pingora proxy: the configuration in force, swapped whole by a reload while requests
/// already begun finish on the one they started with.
pub struct Proxy {
    current: Arc<ArcSwap<Tokengate>>,
}

impl Proxy {
    /// The proxy serving `gate`.
    pub fn new(gate: Tokengate) -> Proxy {
        Proxy {
            current: Arc::new(ArcSwap::from_pointee(gate)),
        }
    }

    /// The slot a reload swaps a new configuration into.
    pub fn current(&self) -> Arc<ArcSwap<Tokengate>> {
        self.current.clone()
    }
}

/// A request's state and the configuration it began with, which it finishes on.
pub struct ProxyCtx {
    gate: Arc<Tokengate>,
    request: RequestCtx,
}

#[async_trait]
impl ProxyHttp for Proxy {
    // Boxed: Pingora keeps the context inline in each request's future, in three places, and
    // moves that future whole; a pointer keeps it at a bare proxy's size.
    type CTX = Box<ProxyCtx>;

    fn new_ctx(&self) -> Box<ProxyCtx> {
        let gate = self.current.load_full();
        let request = gate.new_ctx();
        Box::new(ProxyCtx { gate, request })
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        let ProxyCtx { gate, request } = &mut **ctx;
        gate.early_request_filter(session, request).await
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<bool> {
        let ProxyCtx { gate, request } = &mut **ctx;
        gate.request_filter(session, request).await
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        let ProxyCtx { gate, request } = &mut **ctx;
        gate.request_body_filter(session, body, end_of_stream, request)
            .await
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<Box<HttpPeer>> {
        let ProxyCtx { gate, request } = &mut **ctx;
        gate.upstream_peer(session, request).await
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        let ProxyCtx { gate, request } = &mut **ctx;
        gate.upstream_request_filter(session, upstream, request)
            .await
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        let ProxyCtx { gate, request } = &mut **ctx;
        gate.upstream_response_filter(session, upstream_response, request)
            .await
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        let ProxyCtx { gate, request } = &mut **ctx;
        gate.response_filter(session, response, request).await
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Self::CTX,
        e: Box<Error>,
    ) -> Box<Error> {
        let ProxyCtx { gate, request } = &mut **ctx;
        gate.fail_to_connect(session, peer, request, e)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let ProxyCtx { gate, request } = &mut **ctx;
        gate.fail_to_proxy(session, e, request).await
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        let ProxyCtx { gate, request } = &mut **ctx;
        gate.logging(session, e, request).await
    }

    /// Pingora's `Fail to proxy` ERROR line, kept for tokengate's own faults only: a refusal
    /// of the client's request or a client gone is ordinary traffic (the access log and
    /// metrics have it), an upstream failure is a WARN an operator can act on, not a page.
    fn suppress_error_log(&self, session: &Session, ctx: &Self::CTX, e: &Error) -> bool {
        let status = ctx.request.reason.map(ErrorCode::status);
        if status.is_some_and(|s| s < 500) || *e.esource() == ErrorSource::Downstream {
            log::debug!("request refused or abandoned: {e}");
            return true;
        }
        if ctx.request.upstream_error.is_some() {
            let header = session.req_header();
            log::warn!(
                "upstream failed for {} {}: {e}",
                header.method,
                header.uri.path()
            );
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_id(id: Option<&[u8]>) -> RequestHeader {
        let mut header = RequestHeader::build("GET", b"/", None).unwrap();
        if let Some(id) = id {
            let value = HeaderValue::from_bytes(id).unwrap();
            header.insert_header("x-request-id", value).unwrap();
        }
        header
    }

    fn is_uuid(v: &HeaderValue) -> bool {
        v.to_str()
            .is_ok_and(|s| uuid::Uuid::parse_str(s).is_ok() && s.len() == 36)
    }

    #[test]
    fn a_valid_request_id_is_kept_and_any_other_replaced() {
        let long = "a".repeat(201);
        let max = "a".repeat(200);
        let cases: [(Option<&[u8]>, Option<&str>); 6] = [
            (Some(b"abc-123"), Some("abc-123")),
            (Some(max.as_bytes()), Some(max.as_str())),
            (Some(long.as_bytes()), None),
            (Some(b""), None),
            (Some(b"a b"), None),
            (None, None),
        ];
        for (given, kept) in cases {
            let id = request_id(&with_id(given));
            match kept {
                Some(kept) => assert_eq!(id, kept, "{given:?}"),
                None => assert!(is_uuid(&id), "{given:?} gave {id:?}"),
            }
        }
    }

    #[test]
    fn generated_ids_are_distinct_across_slabs() {
        // Three slabs' worth held at once: ids from full slabs beside those of a fresh one.
        let ids: Vec<HeaderValue> = (0..IDS_PER_SLAB * 3)
            .map(|_| request_id(&with_id(None)))
            .collect();
        let copies: Vec<HeaderValue> = ids.to_vec();
        let distinct: std::collections::HashSet<&[u8]> = ids.iter().map(|v| v.as_bytes()).collect();
        assert_eq!(distinct.len(), IDS_PER_SLAB * 3);
        assert!(ids.iter().all(is_uuid));
        assert_eq!(ids, copies);
    }
}
