//! The decision on one request, made once, before any byte of it leaves: refuse it with an
//! exact answer, answer it in-process (the token route, the JWKS), or forward an exact upstream
//! request. [`decide`] is one pass over a request head and, where the answer depends on it, the
//! body read ahead; [`decide_request`] runs it on a session, reading that body first. The proxy
//! and `tokengate explain` call [`decide_request`] and act on, or print, the value it returns;
//! nothing decides while acting.

mod credential;
mod forward;
mod head;
mod reported;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::LazyLock;

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Version};
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;
use pingora::upstreams::peer::HttpUpstreamRequestPolicy;
use smallvec::SmallVec;

use crate::error::{ApiError, ErrorCode};
use crate::forward_claims::{ClaimHeader, ClaimValue};
use crate::forwarded::TrustedProxies;
use crate::policy::{self, Authentication, Verdict};
use crate::request::body::body_is_encoded;
use crate::request::{self, canonicalize, BodyKind, BodyScan, Canonical, Framing, Head, Refusal};
use crate::respond::{self, Response};
use crate::routes::{self, LimitKey, ParamValue, PathTemplate, RouteTable};
use crate::shared::{Shared, Standing};
use crate::token::{issuer, Caller, Prepared, TokenService};
use credential::{credential, Credential};
pub use forward::{owned_headers, same_header, Forward, ForwardBody};
pub use head::{
    authorization_values, body_framing, expects_continue, grpc_call, request_id, token_request,
    unix_now,
};
use head::{content_type, host_of, override_values};
pub use reported::{decide_reported, Authorize, UnseenBody};

/// Where the public keys of asymmetrically signed tokens are published.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// Largest body read ahead of a forwarded request whose `_method` fields could change or refuse
/// it: what Pingora's retry buffer replays to the upstream. A longer body, or one of unknown
/// length, streams, and is scanned on its way.
pub const READ_AHEAD_LIMIT: usize = 64 * 1024;

/// [`JWKS_PATH`], parsed once.
static JWKS_TEMPLATE: LazyLock<PathTemplate> =
    LazyLock::new(|| PathTemplate::parse(JWKS_PATH).unwrap_or_else(|_| PathTemplate::root()));

/// The key set tokengate publishes, when it mints asymmetrically.
#[derive(Debug, Clone)]
pub struct Jwks {
    /// The JSON document.
    pub body: Bytes,
    /// Its `Cache-Control` value.
    pub cache_control: String,
}

/// Everything the decision reads: the token route's service and the forwarding rules. One
/// value per configuration, swapped whole by a reload.
pub struct Settings {
    /// Verifies session tokens and mints ability tokens.
    pub tokens: TokenService,
    /// What fetches the keys of `tokens`' identity providers, in the same order.
    pub issuers: Vec<std::sync::Arc<crate::issuers::Fetcher>>,
    /// Path of the token route (matched in any case, with a trailing `/` or `.format`).
    pub token_path: PathTemplate,
    /// The published key set, answered at [`JWKS_PATH`].
    pub jwks: Option<Jwks>,
    /// What a request may look like (semicolons, method overrides).
    pub request: request::Options,
    /// The ranked routes; the last is a catch-all to the default group.
    pub routes: RouteTable,
    /// Header carrying the subject to the upstream.
    pub identity_header: HeaderName,
    /// Claims forwarded as headers.
    pub forward_claims: Vec<ClaimHeader>,
    /// Peers whose forwarding headers are extended rather than replaced.
    pub trusted_proxies: TrustedProxies,
    /// How gateways' reports are believed and decided on.
    pub authorize: Authorize,
}

/// One request as the decision reads it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The request head, as the HTTP parser produced it.
    pub header: &'a RequestHeader,
    /// How its body is framed, from the protocol.
    pub framing: Framing,
    /// The client's address.
    pub peer: Option<IpAddr>,
    /// The body, when it was read ahead.
    pub body: Option<&'a [u8]>,
    /// Unix time, in seconds.
    pub now: u64,
}

/// What tokengate does with a request, and what it learned deciding.
#[derive(Debug)]
pub struct Decision {
    /// What the decision found out on the way, for metrics, logs, `X-token` and `explain`.
    pub facts: Facts,
    /// What happens to the request.
    pub action: Action,
}

/// What happens to a request.
#[derive(Debug)]
pub enum Action {
    /// Answer this refusal; the upstream never sees the request.
    Refuse(Refused),
    /// Mint this token request (once its subject's mint limit admits it) and answer it.
    Mint(Prepared),
    /// Answer the published key set.
    Jwks,
    /// Forward this upstream request (once its route's limit admits it).
    Forward(Forward),
}

/// What the decision learned about a request, whatever it decided.
#[derive(Debug, Default)]
pub struct Facts {
    /// The request is for the token route or the key set: tokengate answers it, whatever the
    /// answer.
    pub answered_here: bool,
    /// The method routes were checked against, when an honoured override changed it.
    pub override_method: Option<&'static str>,
    /// The canonical path, when it differs from the received one.
    pub canonical_path: Option<String>,
    /// The matched route's rank in the table.
    pub route: Option<usize>,
    /// Index of the upstream group the route chose.
    pub group: usize,
    /// The route's ability check, on routes that require one.
    pub enforcement: Option<routes::Decision>,
    /// The key the matched route's request limit counts (`sub:…`, `param:…`, `claim:…`, or
    /// the client's `ip:…`), when the route has a limit.
    pub limit_key: Option<String>,
    /// The verified subject.
    pub subject: Option<String>,
    /// The valid token the request carried, ready to be sent back as `X-token`.
    pub token: Option<HeaderValue>,
    /// `forward_claims` left out because no header value can carry them, by index.
    pub omitted_claims: SmallVec<[usize; 1]>,
}

/// A refusal: the error, the header it carries, and whether the connection must close
/// because the rest of the body cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// What the client is answered.
    pub error: ApiError,
    /// `Retry-After` or `Allow`, with its value.
    pub header: Option<(&'static respond::Name, String)>,
    /// The body is left unread: close after the answer rather than drain it.
    pub close: bool,
}

impl From<ApiError> for Refused {
    fn from(error: ApiError) -> Refused {
        Refused {
            error,
            header: None,
            close: false,
        }
    }
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Refused {
        refusal.api_error().into()
    }
}

impl Refused {
    /// A 405 naming the methods allowed.
    fn method(error: ApiError, allow: &str) -> Refused {
        Refused {
            header: Some((&respond::ALLOW, allow.to_owned())),
            ..error.into()
        }
    }

    /// A refusal that leaves the body unread: the connection closes after it.
    fn closing(error: ApiError) -> Refused {
        Refused {
            close: true,
            ..error.into()
        }
    }

    /// The answer, in the form the client reads (gRPC or the SPEC's JSON).
    pub fn response(&self, request_id: &HeaderValue, grpc: bool) -> Response {
        let response = Response::error_for(&self.error, request_id, grpc);
        match &self.header {
            Some((name, value)) => response.with_header(name, value),
            None => response,
        }
    }
}

/// One pass of the decision: decided, or the body must be read ahead first.
// Not boxed: one is returned per request and moved straight on; a box is an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Step {
    /// The decision.
    Decided(Decision),
    /// Read the body, at most this many bytes; then decide again with it or, when the head was
    /// decided already and the body can only refuse it, check the body against that decision.
    ReadAhead(ReadAhead, Option<Decision>),
}

/// A body the decision needs before it can decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadAhead {
    /// Longer bodies are refused (`413`).
    pub limit: usize,
    /// The body goes upstream once read: Pingora must keep it to send it on.
    pub forwarded: bool,
}

/// A token whose subject signed out after it was issued.
const REVOKED: ApiError = ApiError::new(
    ErrorCode::InvalidToken,
    "The token's subject signed out after it was issued.",
);
/// Sign-outs cannot be checked and the check fails closed.
const SIGN_OUTS_UNAVAILABLE: ApiError = ApiError::new(
    ErrorCode::Unavailable,
    "Sign-outs cannot be checked right now; retry shortly.",
);
/// A compressed form, multipart or JSON body: its `_method` field could not be checked.
const ENCODED_BODY: ApiError = ApiError::new(
    ErrorCode::UnsupportedMediaType,
    "Send form, multipart and JSON bodies without a Content-Encoding; they are checked as they pass.",
);
/// Pingora refuses these `Connection` values once an upstream is chosen; refused here first.
const CONNECTION_NOMINATIONS: ApiError = ApiError::new(
    ErrorCode::InvalidRequest,
    "The Connection header may list at most nine header names, never Host or X-Forwarded-*.",
);
/// A body that ended early or broke its framing.
const UNREADABLE: ApiError = ApiError::new(
    ErrorCode::InvalidRequest,
    "The request body could not be read: bad chunked framing or a broken connection.",
);
/// A body over the limit of what is read ahead.
const TOO_LARGE: ApiError =
    ApiError::new(ErrorCode::PayloadTooLarge, "The request body is too large.");

/// Decides on the request `session` has read: one pass on its head and, when the decision
/// depends on the body and its length is known and within the limit, a second with the body
/// read ahead. `sign_outs`, when given, is consulted for tokens whose subject signed out.
pub async fn decide_request(
    settings: &Settings,
    session: &mut ServerSession,
    peer: Option<IpAddr>,
    now: u64,
    sign_outs: Option<&Shared>,
) -> Decision {
    keys_for(settings, session.req_header(), now).await;
    let framing = body_framing(session);
    let head = Request {
        header: session.req_header(),
        framing,
        peer,
        body: None,
        now,
    };
    let (ahead, pending) = match decide(settings, &head, sign_outs) {
        Step::Decided(decision) => return decision,
        Step::ReadAhead(ahead, pending) => (ahead, pending),
    };
    if ahead.forwarded {
        session.enable_retry_buffering();
    }
    let body = match read_body(session, ahead.limit).await {
        Ok(body) => body,
        Err(error) => {
            let mut decision = Decision::refused(Refused::closing(error));
            // Only the token route's body is read without being forwarded.
            decision.facts.answered_here = !ahead.forwarded;
            return decision;
        }
    };
    if let Some(decision) = pending {
        return body_checked(decision, session.req_header(), &body);
    }
    let with_body = Request {
        header: session.req_header(),
        framing,
        peer,
        body: Some(&body),
        now,
    };
    match decide(settings, &with_body, sign_outs) {
        Step::Decided(decision) => decision,
        Step::ReadAhead(..) => {
            Decision::refused(ApiError::new(ErrorCode::Internal, "The body was read twice.").into())
        }
    }
}

/// The head's decision to forward, with its body read ahead: the body goes on whole, or a
/// `_method` field in it refuses the request (overrides are not honoured here, or the body
/// would have been read first).
fn body_checked(mut decision: Decision, header: &RequestHeader, body: &[u8]) -> Decision {
    let checked = content_type(header)
        .map_err(Refused::from)
        .and_then(|kind| unhonoured_body(&kind, body));
    let Action::Forward(forward) = &mut decision.action else {
        return decision;
    };
    match checked {
        Ok(body) => forward.body = body,
        Err(refused) => decision.action = Action::Refuse(refused),
    }
    decision
}

/// A whole body of `kind` for a request whose overrides are not honoured: sent on as read, or
/// refused for a `_method` field in it.
fn unhonoured_body(kind: &BodyKind, body: &[u8]) -> Result<ForwardBody, Refused> {
    match body_overrides(kind, body) {
        Some(_) => Err(Refusal::OverrideField.into()),
        None => Ok(ForwardBody::ReadAhead),
    }
}

impl Decision {
    /// A refusal decided before anything was learned.
    pub fn refused(refused: Refused) -> Decision {
        Decision {
            facts: Facts::default(),
            action: Action::Refuse(refused),
        }
    }
}

/// One pass of the decision on `request`: canonicalize, answer in-process or route,
/// authenticate, ask the policy.
pub fn decide(settings: &Settings, request: &Request<'_>, sign_outs: Option<&Shared>) -> Step {
    let mut facts = Facts::default();
    match decide_into(settings, request, sign_outs, &mut facts) {
        Ok(Next::Act(action)) => Step::Decided(Decision { facts, action }),
        Ok(Next::ReadAhead(ahead)) => Step::ReadAhead(ahead, None),
        Ok(Next::ReadThenForward(ahead, forward)) => Step::ReadAhead(
            ahead,
            Some(Decision {
                facts,
                action: Action::Forward(forward),
            }),
        ),
        Err(refused) => Step::Decided(Decision {
            facts,
            action: Action::Refuse(refused),
        }),
    }
}

/// What a pass ends in, short of a refusal.
#[allow(clippy::large_enum_variant)]
enum Next {
    Act(Action),
    ReadAhead(ReadAhead),
    /// Forward this, once the body read ahead has no `_method` field.
    ReadThenForward(ReadAhead, Forward),
}

/// [`decide`]'s pass, a refusal as its error, what it learned filled into `facts`.
fn decide_into(
    settings: &Settings,
    request: &Request<'_>,
    sign_outs: Option<&Shared>,
    facts: &mut Facts,
) -> Result<Next, Refused> {
    let header = request.header;
    let host = host_of(header)?;
    let overrides = override_values(header);
    let transfer_encoding: Vec<&[u8]> = header
        .headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let head = Head {
        method: header.method.as_str(),
        target: header.raw_path(),
        http11: header.version != Version::HTTP_10 && header.version != Version::HTTP_09,
        host: host.as_ref().map(|v| v.as_bytes()),
        override_headers: &overrides,
        transfer_encoding: &transfer_encoding,
    };
    let mut canonical = canonicalize(&head, settings.request)?;
    if let Cow::Owned(path) = &canonical.path {
        facts.canonical_path = Some(path.clone());
    }
    let semicolons = settings.request.allow_semicolon;
    if settings
        .token_path
        .matches(&canonical.path, true, semicolons)
        .is_some()
    {
        facts.answered_here = true;
        return token_route(settings, request, sign_outs, facts);
    }
    if settings.jwks.is_some()
        && JWKS_TEMPLATE
            .matches(&canonical.path, true, semicolons)
            .is_some()
    {
        facts.answered_here = true;
        jwks_method(&header.method)?;
        return Ok(Next::Act(Action::Jwks));
    }
    if !plain_connection(header) {
        pingora::proxy::upstream_request::check_connection_nominations(
            header,
            HttpUpstreamRequestPolicy::default(),
        )
        .map_err(|_| Refused::from(CONNECTION_NOMINATIONS))?;
    }
    let plan = forward_body(settings, request, &mut canonical)?;
    if let BodyPlan::ReadFirst(ahead) = plan {
        return Ok(Next::ReadAhead(ahead));
    }
    // Otherwise the head is decided first: a refusal of its own comes before any the body adds.
    let head = host.as_ref();
    let mut forward = forward_decision(settings, request, &canonical, head, sign_outs, facts)?;
    forward.body = match plan {
        BodyPlan::Forward(body) => body,
        BodyPlan::ReadAfterHead(ahead) => return Ok(Next::ReadThenForward(ahead, forward)),
        BodyPlan::ReadFirst(ahead) => return Ok(Next::ReadAhead(ahead)),
        BodyPlan::CheckedAfterHead(checked) => checked?,
    };
    Ok(Next::Act(Action::Forward(forward)))
}

/// No `Connection` header, or one that says only `keep-alive` or `close`, as most clients send:
/// nothing Pingora's policy would refuse, and no header name to parse per request.
fn plain_connection(header: &RequestHeader) -> bool {
    header
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .all(|v| {
            let v = v.as_bytes().trim_ascii();
            v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
        })
}

/// How a forwarded request's body is dealt with: already decided, to be read ahead first
/// (before the head is decided, when it may change the method; after, when it can only refuse),
/// or checked already, its refusal owed once the head has been decided.
enum BodyPlan {
    Forward(ForwardBody),
    ReadFirst(ReadAhead),
    ReadAfterHead(ReadAhead),
    CheckedAfterHead(Result<ForwardBody, Refused>),
}

/// Rack, `method-override` and Symfony read `_method` from a `POST` body only: such a body is
/// read ahead when its length is known and fits, else scanned as it streams.
fn forward_body(
    settings: &Settings,
    request: &Request<'_>,
    canonical: &mut Canonical<'_>,
) -> Result<BodyPlan, Refused> {
    let header = request.header;
    let kind = content_type(header)?;
    if canonical.method != "POST" || kind == BodyKind::Opaque || !request.framing.has_body() {
        return Ok(BodyPlan::Forward(ForwardBody::Unscanned));
    }
    let codings = header.headers.get_all(http::header::CONTENT_ENCODING);
    if body_is_encoded(codings.iter().map(|v| v.as_bytes())) {
        return Err(ENCODED_BODY.into());
    }
    let honoured = settings.request.honor_method_override;
    match request.body {
        Some(body) if !honoured => Ok(BodyPlan::CheckedAfterHead(unhonoured_body(&kind, body))),
        Some(body) => {
            if let Some(found) = body_overrides(&kind, body) {
                canonical.add_body_overrides(&found)?;
            }
            Ok(BodyPlan::Forward(ForwardBody::ReadAhead))
        }
        None if fits_read_ahead(request.framing) => {
            let ahead = ReadAhead {
                limit: READ_AHEAD_LIMIT,
                forwarded: true,
            };
            Ok(match honoured {
                true => BodyPlan::ReadFirst(ahead),
                false => BodyPlan::ReadAfterHead(ahead),
            })
        }
        None => Ok(BodyPlan::Forward(
            BodyScan::new(&kind).map_or(ForwardBody::Unscanned, ForwardBody::Scanned),
        )),
    }
}

/// Whether a body can be read ahead and replayed: its length announced and within the limit.
fn fits_read_ahead(framing: Framing) -> bool {
    matches!(framing, Framing::Length(len) if len <= READ_AHEAD_LIMIT as u64)
}

/// The `_method` fields of a whole body of `kind`, if it has any.
fn body_overrides(kind: &BodyKind, body: &[u8]) -> Option<request::method::Found> {
    let mut scan = BodyScan::new(kind)?;
    scan.feed(body);
    scan.finish();
    scan.found()
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

/// The refusal owed when a streamed body turns out to carry a `_method` field.
pub fn streamed_override_refusal() -> ApiError {
    Refusal::OverrideField.api_error()
}

/// The token route: `POST` only, its body read ahead within the limit, then checked as the
/// token service says; a `Content-Length` over the limit is refused unread.
fn token_route(
    settings: &Settings,
    request: &Request<'_>,
    sign_outs: Option<&Shared>,
    facts: &mut Facts,
) -> Result<Next, Refused> {
    token_method(&request.header.method)?;
    let limit = settings.tokens.permission.limits.body_limit;
    let body = match (request.body, request.framing) {
        (Some(body), _) => body,
        (None, Framing::Empty) => &[],
        (None, Framing::Length(len)) if len > limit as u64 => {
            return Err(Refused::closing(TOO_LARGE))
        }
        (None, _) => {
            return Ok(Next::ReadAhead(ReadAhead {
                limit,
                forwarded: false,
            }))
        }
    };
    let cookie = settings.tokens.settings.cookie.as_ref();
    let presented = credential(request.header, cookie, Method::POST.as_str());
    let (authorization, cookie) = match &presented {
        Credential::Refused(error) => return Err((*error).into()),
        Credential::Authorization(values) => (&values[..], None),
        Credential::Cookie(token) => (&[][..], Some(*token)),
        Credential::Missing => (&[][..], None),
    };
    let asked = token_request(request.header, authorization, cookie, body);
    let prepared = settings.tokens.prepare(&asked, request.now)?;
    signed_in(sign_outs, prepared.subject(), prepared.issued_at())?;
    facts.subject = Some(prepared.subject().to_owned());
    Ok(Next::Act(Action::Mint(prepared)))
}

/// Only `POST` mints.
pub fn token_method(method: &Method) -> Result<(), Refused> {
    match method == Method::POST {
        true => Ok(()),
        false => Err(Refused::method(
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "Use POST on the token endpoint.",
            ),
            "POST",
        )),
    }
}

/// The key set is read with `GET` or `HEAD`.
pub fn jwks_method(method: &Method) -> Result<(), Refused> {
    match method == Method::GET || method == Method::HEAD {
        true => Ok(()),
        false => Err(Refused::method(
            ApiError::new(ErrorCode::MethodNotAllowed, "Use GET on the key set."),
            "GET, HEAD",
        )),
    }
}

/// Authenticates, asks the policy, and records the verdict; `host` is the authority read from
/// the head, forwarded as it came when it was canonical.
fn forward_decision(
    settings: &Settings,
    request: &Request<'_>,
    canonical: &Canonical<'_>,
    host: Option<&HeaderValue>,
    sign_outs: Option<&Shared>,
    facts: &mut Facts,
) -> Result<Forward, Refused> {
    let method = canonical.effective_method;
    let (auth, from_cookie) =
        authenticate(settings, request.header, method, request.now, sign_outs)?;
    let Some(verdict) = policy::decide(canonical, &settings.routes, &auth) else {
        return Err(ApiError::new(ErrorCode::Internal, "No route matched.").into());
    };
    facts.override_method = canonical.override_method();
    facts.route = Some(settings.routes.rank_of(verdict.route));
    facts.group = verdict.route.upstream;
    facts.enforcement = verdict.enforcement;
    facts.limit_key = limit_key(&verdict, &auth, request.peer);
    if let Authentication::Valid(caller) = &auth {
        facts.subject = Some(caller.claims.subject().to_owned());
        // The extractor admits only visible ASCII, which a header value always takes. A
        // cookie's token is not echoed: a response header would hand an HttpOnly cookie to
        // the page's scripts.
        if !from_cookie {
            facts.token = HeaderValue::from_str(caller.token).ok();
        }
    }
    if let policy::Action::Refuse(error) = verdict.action {
        return Err(error.into());
    }
    let authority = match canonical.host_rewritten {
        false => host.cloned(),
        true => canonical
            .authority
            .as_ref()
            .and_then(|a| HeaderValue::from_str(&a.to_string()).ok()),
    };
    let claims = match &auth {
        Authentication::Valid(caller) => {
            claim_headers(settings, caller, &verdict.params, &mut facts.omitted_claims)
        }
        _ => Vec::new(),
    };
    Ok(Forward {
        target: canonical.target_rewritten.then(|| canonical.target()),
        authority,
        host_rewritten: canonical.host_rewritten,
        honoured_override: canonical.honoured_override(),
        claims,
        body: ForwardBody::Unscanned,
    })
}

/// The session token `header` presents, wherever it is, unverified: to know which keys its
/// decision will need.
pub fn presented_token<'h>(settings: &Settings, header: &'h RequestHeader) -> Option<&'h str> {
    let cookie = settings.tokens.settings.cookie.as_ref();
    match credential(header, cookie, Method::GET.as_str()) {
        Credential::Authorization(values) => {
            crate::token::extract::bearer_token(values.iter().copied()).ok()
        }
        Credential::Cookie(token) => Some(token),
        Credential::Missing | Credential::Refused(_) => None,
    }
}

/// Before a request is decided: when its token names an identity provider whose keys are not
/// at hand (an unknown `kid`, or none usable), fetch them, within that issuer's limits.
pub async fn keys_for(settings: &Settings, header: &RequestHeader, now: u64) {
    if settings.issuers.is_empty() {
        return;
    }
    let limit = settings.tokens.permission.limits.max_token_bytes;
    let token = presented_token(settings, header).filter(|t| t.len() <= limit);
    let Some(peeked) = token.and_then(issuer::peek) else {
        return;
    };
    let Some((index, found)) = issuer::issuer_of(&settings.tokens.issuers, &peeked) else {
        return;
    };
    let kid = peeked.kid.as_deref();
    if found.keys.usable(now).is_some_and(|l| l.set.knows(kid)) {
        return;
    }
    if let Some(fetcher) = settings.issuers.get(index) {
        fetcher.fetch_for_token(kid, now).await;
    }
}

/// What the request's token proves (its `Authorization`, else its session cookie, for a
/// request whose effective method is `method`), a signed-out subject's token included, and
/// whether it came from the cookie; `Err` when sign-outs cannot be checked (fails closed).
fn authenticate<'h>(
    settings: &Settings,
    header: &'h RequestHeader,
    method: &str,
    now: u64,
    sign_outs: Option<&Shared>,
) -> Result<(Authentication<'h>, bool), Refused> {
    let tokens = &settings.tokens;
    let (verified, from_cookie) = match credential(header, tokens.settings.cookie.as_ref(), method)
    {
        Credential::Missing => return Ok((Authentication::Missing, false)),
        Credential::Refused(error) => return Ok((Authentication::Invalid(error), true)),
        Credential::Authorization(values) => (tokens.authenticate(&values, now), false),
        Credential::Cookie(token) => (tokens.authenticate_token(token, now), true),
    };
    let caller = match verified {
        Ok(caller) => caller,
        Err(error) => return Ok((Authentication::Invalid(error), from_cookie)),
    };
    let standing = signed_in(
        sign_outs,
        caller.claims.subject(),
        caller.claims.issued_at(),
    );
    match standing {
        Ok(()) => Ok((Authentication::Valid(caller), from_cookie)),
        Err(error) if error == SIGN_OUTS_UNAVAILABLE => Err(error.into()),
        Err(_) => Ok((Authentication::Invalid(REVOKED), from_cookie)),
    }
}

/// `Ok` unless the subject signed out after `issued_at`, or sign-outs cannot be checked.
fn signed_in(
    sign_outs: Option<&Shared>,
    subject: &str,
    issued_at: Option<f64>,
) -> Result<(), ApiError> {
    let standing = sign_outs.map_or(Standing::Valid, |shared| {
        shared.standing(subject, issued_at)
    });
    match standing {
        Standing::Valid => Ok(()),
        Standing::Revoked => Err(REVOKED),
        Standing::Unavailable => Err(SIGN_OUTS_UNAVAILABLE),
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

/// The `forward_claims` headers for `caller` on a route with `params`; a claim no header value
/// can carry is left out (its index noted in `omitted`), never a failed request.
fn claim_headers(
    settings: &Settings,
    caller: &Caller<'_>,
    params: &[(&str, ParamValue<'_>)],
    omitted: &mut SmallVec<[usize; 1]>,
) -> Vec<(String, String)> {
    let mut headers = Vec::new();
    for (i, mapping) in settings.forward_claims.iter().enumerate() {
        match mapping.value(&caller.claims, params) {
            ClaimValue::Header(value) => headers.push((mapping.header.clone(), value)),
            ClaimValue::Unsendable => omitted.push(i),
            ClaimValue::Absent => {}
        }
    }
    headers
}

/// Whether a refused request's connection can serve the next one: a body still unread is read
/// and dropped, within `limit`. It must close instead when the refusal says so, when the client
/// waits for `100 Continue` (it is not invited to send the body), or when the body cannot be
/// read within the limit.
pub async fn keeps_connection(
    session: &mut ServerSession,
    refused: &Refused,
    limit: usize,
) -> bool {
    if refused.close {
        return false;
    }
    if !body_framing(session).has_body() {
        return true;
    }
    !expects_continue(session.req_header()) && read_body(session, limit).await.is_ok()
}

/// Reads a request body of at most `limit` bytes, answering `Expect: 100-continue` first:
/// `Content-Length` is judged before anything is read, then a running count.
pub async fn read_body(session: &mut ServerSession, limit: usize) -> Result<BytesMut, ApiError> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(TOO_LARGE);
    }
    if expects_continue(session.req_header()) {
        session
            .write_continue_response()
            .await
            .map_err(|_| UNREADABLE)?;
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = session.read_request_body().await.map_err(|_| UNREADABLE)? {
        if body.len() + chunk.len() > limit {
            return Err(TOO_LARGE);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
