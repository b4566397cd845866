//! The `ProxyHttp` phases. `request_filter` asks [`decision::decide_request`] what happens to
//! the request, records what it learned, and acts on it (admit its limit, refuse, mint, answer
//! the key set, or forward); the later phases apply the decided `Forward` and observe. Nothing
//! here decides.

mod admission;
mod failure;
mod state;
mod token_route;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::HeaderValue;
use jsonwebtoken::Algorithm;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType};
use smallvec::SmallVec;

use crate::access_log::{self, AccessLog, Entry};
use crate::decision::{
    self, decide_request, grpc_call, request_id, unix_now, Action, Facts, Forward, ForwardBody,
    Refused,
};
use crate::error::{ApiError, ErrorCode};
use crate::limits::{Limiter, RateLimit};
use crate::metrics::{self, Caller, Outcome, RouteKind, UpstreamErrorKind};
use crate::respond;
use crate::routes::Decision;
use crate::shared::Shared;
use crate::token::SecretSource;
use crate::trace::{self, Exporter, SpanRecord, TraceContext};
use crate::upstreams::UpstreamGroup;
pub use state::{watch_listener, AppState, InFlight};

use admission::Counted;

/// One configuration of the proxy: what the decision reads, and the runtime handles acting on
/// it needs. Built by `reload::gate` and swapped whole by a reload.
pub struct Tokengate {
    /// What the decision reads.
    pub decision: decision::Settings,
    /// Upstream groups, by index (a reload keeps the unchanged ones).
    pub groups: Arc<[Arc<UpstreamGroup>]>,
    /// The access log.
    pub access_log: AccessLog,
    /// The per-subject mint limit, in this process.
    pub limiter: Option<Limiter>,
    /// The per-subject mint limit's rate.
    pub mint_rate: Option<RateLimit>,
    /// Local limiters of routes with a `limit`, by route name (without Redis).
    pub route_limiters: HashMap<String, Limiter>,
    /// Limits and sign-outs shared across replicas, when Redis is configured.
    pub shared: Option<Arc<Shared>>,
    /// Span export, when tracing is configured.
    pub tracer: Option<Arc<Exporter>>,
    /// Where the secrets are read from again when their file changes.
    pub secret_source: SecretSource,
    /// Algorithms session tokens may use, for a keyring read again.
    pub algorithms: Vec<Algorithm>,
    /// Readiness and in-flight state.
    pub state: Arc<AppState>,
}

impl Tokengate {
    /// The keyring the token route verifies and signs with, for rotation.
    pub fn keyring(&self) -> crate::token::SharedKeyring {
        self.decision.tokens.keys.clone()
    }

    /// The upstream groups, for readiness.
    pub fn groups(&self) -> &[Arc<UpstreamGroup>] {
        &self.groups
    }

    /// The request limit a forwarded request counts against, if its route has one.
    fn route_limit<'a>(&'a self, facts: &'a Facts) -> Option<Counted<'a>> {
        const ROUTE_RATE_LIMITED: ApiError = ApiError::new(
            ErrorCode::RateLimited,
            "Too many requests on this route; retry later.",
        );
        let key = facts.limit_key.as_deref()?;
        let route = self.decision.routes.routes().get(facts.route?)?;
        Some(Counted {
            scope: &route.name,
            key,
            rate: route.limit.as_ref()?.rate,
            local: self.route_limiters.get(&route.name),
            spent: ROUTE_RATE_LIMITED,
        })
    }

    /// Counts a forwarded request against its route's limit, if it has one.
    pub async fn admit_route(&self, facts: &Facts) -> Result<(), Refused> {
        self.admit(self.route_limit(facts)).await
    }

    /// Counts what the decision found that operators watch: the ability check, a shadow
    /// refusal (logged with the fields `tokengate explain` prints), claims left out.
    pub fn record(&self, header: &RequestHeader, id: &str, facts: &Facts) {
        let route = facts
            .route
            .and_then(|r| self.decision.routes.routes().get(r));
        if let (Some(route), Some(decision)) = (route, facts.enforcement) {
            metrics::get()
                .enforcement
                .with_label_values(&[route.name.as_str(), decision.as_str()])
                .inc();
            if decision == Decision::ShadowDeny {
                let requires = route.require.as_ref().map(|r| r.to_string());
                log::warn!(
                    "route {}: would refuse request {id} (shadow mode, forwarded): {} {} requires {}, subject {}",
                    route.name,
                    facts.override_method.unwrap_or(header.method.as_str()),
                    facts.canonical_path.as_deref().unwrap_or(header.uri.path()),
                    requires.as_deref().unwrap_or("-"),
                    facts.subject.as_deref().unwrap_or("-"),
                );
            }
        }
        for &i in &facts.omitted_claims {
            if let Some(mapping) = self.decision.forward_claims.get(i) {
                metrics::get()
                    .claim_headers_omitted
                    .with_label_values(&[mapping.header.as_str()])
                    .inc();
            }
        }
    }

    /// Acts on `action`, decided for the request in `session`: `Ok(true)` when tokengate
    /// answered, `Ok(false)` when the request goes upstream.
    async fn act(
        &self,
        session: &mut Session,
        request: &mut RequestState,
        action: Action,
    ) -> pingora::Result<bool> {
        let decided = |outcome| metrics::get().record_decision(Caller::Proxy, outcome);
        let refused = match action {
            Action::Refuse(refused) => refused,
            Action::Jwks => {
                decided(Outcome::Answer);
                self.answer_jwks(session, request).await?;
                return Ok(true);
            }
            Action::Mint(prepared) => {
                decided(Outcome::Answer);
                self.answer_mint(session, request, prepared).await?;
                return Ok(true);
            }
            Action::Forward(forward) => match self.admit_route(&request.facts).await {
                Ok(()) => {
                    decided(Outcome::Allow);
                    request.forward = forward;
                    return Ok(false);
                }
                Err(refused) => refused,
            },
        };
        decided(Outcome::Refuse);
        if refused.close {
            // The body is left unread, and the client often gone already.
            if let Err(e) = self.refuse(session, request, &refused).await {
                log::debug!("client gone before its refusal was written: {e}");
            }
            return Ok(true);
        }
        self.refuse(session, request, &refused).await?;
        Ok(true)
    }
}

/// The client's address.
fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// Sends a sampled request's span to the exporter, named by its kind and route.
fn record_span(
    tracer: &Exporter,
    span: Span,
    kind: &str,
    route: Option<&crate::routes::Route>,
    session: &Session,
    status: u16,
) {
    if !span.context.sampled() {
        return;
    }
    let name = match route {
        Some(route) => format!("{kind} {}", route.name),
        None => kind.to_owned(),
    };
    tracer.record(SpanRecord {
        context: span.context,
        trace_state: span.trace_state,
        name,
        start_unix_nano: span.start_unix_nano,
        end_unix_nano: trace::unix_nanos(),
        method: session.req_header().method.as_str().to_owned(),
        status,
    });
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

/// How the request went upstream.
#[derive(Debug, Default)]
pub struct UpstreamState {
    /// When the request went upstream.
    start: Option<Instant>,
    /// Seconds the upstream took to its response header.
    duration: Option<f64>,
    /// How the upstream failed, if it did.
    error: Option<UpstreamErrorKind>,
    /// Addresses tried so far, so a retry goes elsewhere; inline, as a request rarely tries
    /// more than two.
    tried: SmallVec<[SocketAddr; 2]>,
}

/// This request's span, when tracing.
pub struct Span {
    context: TraceContext,
    /// Start, in Unix nanoseconds.
    start_unix_nano: u64,
    /// The caller's `tracestate`, passed on as received.
    trace_state: String,
}

/// One request's state, passed through every phase.
pub struct RequestState {
    /// When the request's first filter ran.
    start: Instant,
    /// Answered in-process or forwarded: drives metric labels.
    kind: RouteKind,
    /// The propagated or generated request id, ready to be sent (upstream, and back).
    id: HeaderValue,
    /// What the decision found out.
    facts: Facts,
    /// The upstream request, once the decision forwards it.
    forward: Forward,
    /// The error code tokengate answered with, if any.
    reason: Option<ErrorCode>,
    /// A refusal decided while the body streamed, answered by `fail_to_proxy`.
    refusal: Option<ApiError>,
    /// The upstream side.
    upstream: UpstreamState,
    /// The span, when tracing.
    span: Option<Span>,
    /// Held for the request's lifetime.
    _in_flight: InFlight,
}

impl RequestState {
    /// The request id as text; ids are visible ASCII by construction.
    fn id(&self) -> &str {
        self.id.to_str().unwrap_or_default()
    }
}

/// A request's state and the configuration it began with, which it finishes on.
pub struct RequestCtx {
    gate: Arc<Tokengate>,
    request: RequestState,
}

// Not `#[async_trait]`: the hooks return their futures unboxed, in the signatures the
// (vendored) trait declares, which saves an allocation per hook per request. An `async fn`
// cannot have those signatures' lifetime bounds, whatever clippy suggests.
#[allow(clippy::manual_async_fn)]
impl ProxyHttp for Proxy {
    // Boxed: Pingora keeps the context inline in each request's future, in three places, and
    // that future lives in every connection's task; a pointer keeps it at a bare proxy's size.
    type CTX = Box<RequestCtx>;

    /// No downstream modules: tokengate never compresses, and Pingora's default, a disabled
    /// compression module, still costs three allocations and a boxed filter per request.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    /// Runs first for every request: starts its clock and counts it in flight.
    fn new_ctx(&self) -> Box<RequestCtx> {
        let gate = self.current.load_full();
        let request = RequestState {
            start: Instant::now(),
            kind: RouteKind::Proxy,
            id: HeaderValue::from_static(""),
            facts: Facts::default(),
            forward: Forward::default(),
            reason: None,
            refusal: None,
            upstream: UpstreamState::default(),
            span: None,
            _in_flight: InFlight::new(gate.state.clone()),
        };
        Box::new(RequestCtx { gate, request })
    }

    /// Before anything else: answer pipelined requests in order (RFC 9112 §9.3.2) instead of
    /// dropping them with the connection.
    fn early_request_filter<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        session: &'life1 mut Session,
        ctx: &'life2 mut Self::CTX,
    ) -> impl Future<Output = pingora::Result<()>> + Send + 'async_trait
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        async move {
            session.as_downstream_mut().set_pipelining_enabled(true);
            if ctx.gate.tracer.is_some() {
                let headers = &session.req_header().headers;
                let context = TraceContext::continue_or_start(
                    headers.get("traceparent").map(|v| v.as_bytes()),
                );
                let trace_state = headers
                    .get("tracestate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                ctx.request.span = Some(Span {
                    context,
                    start_unix_nano: trace::unix_nanos(),
                    trace_state,
                });
            }
            Ok(())
        }
    }

    /// Canonicalizes and decides. `Ok(true)`: tokengate answered (token route, JWKS, a
    /// refusal); `Ok(false)`: forward upstream.
    fn request_filter<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        session: &'life1 mut Session,
        ctx: &'life2 mut Self::CTX,
    ) -> impl Future<Output = pingora::Result<bool>> + Send + 'async_trait
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        async move {
            let RequestCtx { gate, request } = &mut **ctx;
            request.id = request_id(session.req_header());
            let peer = client_ip(session);
            let decision = decide_request(
                &gate.decision,
                session.as_downstream_mut(),
                peer,
                unix_now(),
                gate.shared.as_deref(),
            )
            .await;
            gate.record(session.req_header(), request.id(), &decision.facts);
            if decision.facts.answered_here {
                request.kind = RouteKind::Token;
            }
            request.facts = decision.facts;
            gate.act(session, request, decision.action).await
        }
    }

    /// Watches a form body for `_method` fields on its way upstream: the chunk that completes
    /// one is never sent, and the request is answered 400 instead.
    fn request_body_filter<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 self,
        _session: &'life1 mut Session,
        body: &'life2 mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &'life3 mut Self::CTX,
    ) -> impl Future<Output = pingora::Result<()>> + Send + 'async_trait
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        async move {
            let request = &mut ctx.request;
            let ForwardBody::Scanned(scan) = &mut request.forward.body else {
                return Ok(());
            };
            if decision::override_streamed(scan, body.as_deref(), end_of_stream) {
                request.refusal = Some(decision::streamed_override_refusal());
                return Err(Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    "a _method field in the request body",
                ));
            }
            Ok(())
        }
    }

    /// Where a forwarded request goes: the next usable address of its route's group.
    fn upstream_peer<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        _session: &'life1 mut Session,
        ctx: &'life2 mut Self::CTX,
    ) -> impl Future<Output = pingora::Result<Box<HttpPeer>>> + Send + 'async_trait
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        async move {
            let no_address = || {
                // An upstream failure (502), not one of tokengate's own (500).
                Error::explain(
                    ErrorType::ConnectNoRoute,
                    "no usable address in the upstream group",
                )
                .into_up()
            };
            let RequestCtx { gate, request } = &mut **ctx;
            let group = gate
                .groups
                .get(request.facts.group)
                .ok_or_else(no_address)?;
            let tried = &mut request.upstream.tried;
            let addr = group.select(tried).ok_or_else(no_address)?;
            tried.push(addr);
            Ok(Box::new(group.peer(addr)))
        }
    }

    /// Rewrites the upstream request into the canonical one tokengate checked.
    fn upstream_request_filter<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 self,
        session: &'life1 mut Session,
        upstream: &'life2 mut RequestHeader,
        ctx: &'life3 mut Self::CTX,
    ) -> impl Future<Output = pingora::Result<()>> + Send + 'async_trait
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        async move {
            let RequestCtx { gate, request } = &mut **ctx;
            let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
            request.forward.apply(
                upstream,
                &gate.decision,
                request.facts.subject.as_deref(),
                client_ip(session),
                tls,
                &request.id,
            )?;
            if let Some(span) = &request.span {
                // The upstream's parent is this request's span; `tracestate` passes as received.
                upstream.insert_header("traceparent", span.context.traceparent())?;
            }
            request.upstream.start = Some(Instant::now());
            Ok(())
        }
    }

    /// Times the upstream up to its response header.
    fn upstream_response_filter<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 self,
        _session: &'life1 mut Session,
        _upstream_response: &'life2 mut ResponseHeader,
        ctx: &'life3 mut Self::CTX,
    ) -> impl Future<Output = pingora::Result<()>> + Send + 'async_trait
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        async move {
            let upstream = &mut ctx.request.upstream;
            if let Some(start) = upstream.start.take() {
                let seconds = start.elapsed().as_secs_f64();
                metrics::get().upstream_duration.observe(seconds);
                upstream.duration = Some(seconds);
            }
            Ok(())
        }
    }

    /// Sets `X-Request-Id`, and `X-token` when the request carried a valid token, replacing any
    /// the upstream sent.
    fn response_filter<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 self,
        _session: &'life1 mut Session,
        response: &'life2 mut ResponseHeader,
        ctx: &'life3 mut Self::CTX,
    ) -> impl Future<Output = pingora::Result<()>> + Send + 'async_trait
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        async move {
            let request = &mut ctx.request;
            // One id per answer, and `X-token` is the gate's alone: an upstream's own copies go.
            // Looked up first, as removing what is absent still walks both maps.
            if response.headers.contains_key(&respond::X_REQUEST_ID.0) {
                response.remove_header(&respond::X_REQUEST_ID.0);
            }
            if response.headers.contains_key(&respond::X_TOKEN.0) {
                response.remove_header(&respond::X_TOKEN.0);
            }
            // No `reserve_headers`: the parsed response header (vendor/README.md) has room for the
            // one or two added here at most sizes, where reserving would grow and rehash both maps.
            response.append_header(respond::X_REQUEST_ID.clone(), request.id.clone())?;
            // An informational answer (`100`, `103`) comes before the final one, which needs the
            // token too.
            let token = match response.status.is_informational() {
                true => request.facts.token.clone(),
                false => request.facts.token.take(),
            };
            if let Some(token) = token {
                response.append_header(respond::X_TOKEN.clone(), token)?;
            }
            Ok(())
        }
    }

    /// Notes that connecting failed, for the answer and the metric.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let RequestCtx { gate, request } = &mut **ctx;
        request.upstream.error = Some(failure::upstream_error_code(&e).0);
        let Some(group) = gate.groups.get(request.facts.group) else {
            return e;
        };
        // With another address to go to, eject this one for a while and retry there.
        let tried = &request.upstream.tried;
        if let Some(addr) = tried.last().copied() {
            if group.has_untried(tried) {
                group.eject(addr);
                e.set_retry(true);
            }
        }
        e
    }

    /// Answers a fatal error in the SPEC's JSON instead of Pingora's bare page.
    fn fail_to_proxy<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 self,
        session: &'life1 mut Session,
        e: &'life2 Error,
        ctx: &'life3 mut Self::CTX,
    ) -> impl Future<Output = FailToProxy> + Send + 'async_trait
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        async move {
            let request = &mut ctx.request;
            let answer = match request.refusal.take() {
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
                request.upstream.error = Some(kind);
                metrics::get()
                    .upstream_errors
                    .with_label_values(&[kind.as_str()])
                    .inc();
            }
            match error.code.status() < 500 {
                true => request.refused(error),
                false => request.reason = Some(error.code),
            }
            if session.response_written().is_none() {
                session.set_keepalive(None);
                let grpc = grpc_call(session.req_header());
                let response = Refused::from(error).response(&request.id, grpc);
                if let Err(write_error) = respond::send(session, response).await {
                    log::debug!("could not send error response: {write_error}");
                }
            }
            FailToProxy {
                error_code: error.code.status(),
                can_reuse_downstream: false,
            }
        }
    }

    /// Records the request's metrics, span and access-log line once it is over.
    fn logging<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 self,
        session: &'life1 mut Session,
        _e: Option<&'life2 Error>,
        ctx: &'life3 mut Self::CTX,
    ) -> impl Future<Output = ()> + Send + 'async_trait
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        async move {
            let RequestCtx { gate, request } = &mut **ctx;
            let duration = request.start.elapsed().as_secs_f64();
            let written = session.response_written();
            let status = written.map_or(0, |r| r.status.as_u16());
            metrics::get().record_request(request.kind, status, duration);
            let kind = request.kind.as_str();
            if let (Some(tracer), Some(span)) = (&gate.tracer, request.span.take()) {
                let route = request.facts.route;
                let route = route.and_then(|r| gate.decision.routes.routes().get(r));
                record_span(tracer, span, kind, route, session, status);
            }
            if !gate.access_log.enabled() {
                return;
            }
            let header = session.req_header();
            gate.access_log.write(&Entry {
                time: access_log::now_rfc3339(),
                request_id: request.id(),
                method: header.method.as_str(),
                path: request
                    .facts
                    .canonical_path
                    .as_deref()
                    .unwrap_or_else(|| header.uri.path()),
                status,
                route: kind,
                duration,
                upstream_duration: request.upstream.duration,
                bytes_in: session.body_bytes_read(),
                bytes_out: session.body_bytes_sent(),
                subject: request.facts.subject.as_deref(),
                reason: request.reason.map(ErrorCode::as_str),
            });
        }
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
        if ctx.request.upstream.error.is_some() {
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
