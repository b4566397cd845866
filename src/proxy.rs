//! The `ProxyHttp` implementation: the token route answered in-process, everything else forwarded.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::BytesMut;
use http::{HeaderName, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType};

use crate::access_log::{self, AccessLog, Entry};
use crate::config::{AuthMode, AuthRules, Config, RateLimit};
use crate::error::{ApiError, ErrorCode};
use crate::metrics::{self, Route, UpstreamErrorKind};
use crate::respond::{self, Response};
use crate::routes::{self, Decision};
use crate::token::{SharedKeyring, TokenRequest, TokenService};
use crate::upstreams::UpstreamGroup;

/// Process-wide state shared by the proxy, the admin listener and the shutdown logic.
#[derive(Debug, Default)]
pub struct AppState {
    /// The proxy listener accepts connections.
    pub listening: AtomicBool,
    /// Shutdown or upgrade began: `/readyz` answers 503.
    pub draining: AtomicBool,
    /// `SIGTERM` arrived: the process may exit as soon as nothing is in flight.
    pub terminating: AtomicBool,
    /// Requests between their first filter and their log line.
    pub in_flight: AtomicUsize,
}

impl AppState {
    /// Whether Kubernetes should route traffic here.
    pub fn is_ready(&self) -> bool {
        self.listening.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }
}

/// Counts a request as in flight for as long as it lives.
pub struct InFlight(Arc<AppState>);

impl InFlight {
    fn new(state: Arc<AppState>) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        metrics::get().in_flight.inc();
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        metrics::get().in_flight.dec();
    }
}

/// Per-request state, passed through every phase.
pub struct RequestCtx {
    /// When the request's first filter ran.
    start: Instant,
    /// Which route answered: drives metric labels.
    route: Route,
    /// The propagated or generated request id.
    request_id: String,
    /// The valid session token a forwarded request carried, for `X-token`.
    token: Option<String>,
    /// The verified subject, on either route: the identity header and the access log.
    subject: Option<String>,
    /// The error code tokengate answered with, if any.
    reason: Option<ErrorCode>,
    /// When the request went upstream.
    upstream_start: Option<Instant>,
    /// Seconds the upstream took to its response header.
    upstream_duration: Option<f64>,
    /// How the upstream failed, if it did.
    upstream_error: Option<UpstreamErrorKind>,
    /// Index of the upstream group the route chose.
    group: usize,
    /// Addresses tried so far, so a retry goes elsewhere.
    tried: Vec<SocketAddr>,
    /// Held for the request's lifetime.
    _in_flight: InFlight,
}

/// Caps how many tokens one subject mints per window; memory stays fixed whatever the subjects.
struct MintLimiter {
    rate: pingora_limits::rate::Rate,
    mints: isize,
    retry_after: String,
}

impl MintLimiter {
    fn new(limit: RateLimit) -> MintLimiter {
        MintLimiter {
            rate: pingora_limits::rate::Rate::new(limit.per),
            mints: isize::try_from(limit.mints).unwrap_or(isize::MAX),
            // The window's length is the longest a refused caller has to wait.
            retry_after: limit.per.as_secs_f64().ceil().max(1.0).to_string(),
        }
    }

    fn admit(&self, subject: &str) -> bool {
        self.rate.observe(&subject, 1) <= self.mints
    }
}

/// The tokengate proxy.
pub struct Tokengate {
    tokens: TokenService,
    token_path: String,
    body_limit: usize,
    groups: Vec<UpstreamGroup>,
    routes: Vec<routes::Route>,
    identity_header: HeaderName,
    auth: AuthRules,
    access_log: AccessLog,
    limiter: Option<MintLimiter>,
    /// The JWKS body and its `Cache-Control`, when minted tokens are signed asymmetrically.
    jwks: Option<(bytes::Bytes, String)>,
    state: Arc<AppState>,
}

/// Where the public keys of asymmetrically signed tokens are published.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

impl Tokengate {
    /// Builds the proxy from a validated configuration.
    pub fn new(
        config: &Config,
        state: Arc<AppState>,
        groups: Vec<UpstreamGroup>,
    ) -> Result<Tokengate, crate::config::ConfigError> {
        Ok(Tokengate {
            tokens: config.token_service()?,
            token_path: config.token_path.clone(),
            body_limit: config.body_limit,
            groups,
            routes: config.routes.clone(),
            identity_header: config.identity_header.clone(),
            auth: config.auth.clone(),
            access_log: AccessLog::new(config.access_log.then_some(config.log_format)),
            limiter: config.rate_limit.map(MintLimiter::new),
            jwks: config.signing.as_ref().map(|s| {
                let max_age = s.jwks_max_age.as_secs();
                (
                    bytes::Bytes::from(s.jwks.clone()),
                    format!("public, max-age={max_age}"),
                )
            }),
            state,
        })
    }

    /// The keyring the token route verifies and signs with, for rotation.
    pub fn keyring(&self) -> SharedKeyring {
        self.tokens.keys.clone()
    }

    /// Serves the JWKS; always ends the request.
    async fn jwks_route(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        body: bytes::Bytes,
        cache: &str,
    ) -> pingora::Result<()> {
        let method = &session.req_header().method;
        if method != Method::GET && method != Method::HEAD {
            let error = ApiError::new(ErrorCode::MethodNotAllowed, "Use GET on the key set.");
            return self
                .refuse(session, ctx, &error, &[("Allow", "GET, HEAD")])
                .await;
        }
        let response = Response {
            status: 200,
            headers: vec![
                ("Content-Type", "application/json".to_owned()),
                ("Cache-Control", cache.to_owned()),
                ("X-Request-Id", ctx.request_id.clone()),
            ],
            body,
        };
        respond::send(session, response).await
    }

    /// Answers the token route; always ends the request.
    async fn token_route(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if session.req_header().method != Method::POST {
            let error = ApiError::new(
                ErrorCode::MethodNotAllowed,
                "Use POST on the token endpoint.",
            );
            // Read and drop a body within the limit, so the connection can serve the next
            // request; a larger or broken one closes it.
            if self.read_body(session).await.is_err() {
                session.set_keepalive(None);
            }
            return self
                .refuse(session, ctx, &error, &[("Allow", "POST")])
                .await;
        }
        let body = match self.read_body(session).await {
            Ok(body) => body,
            Err(error) => {
                // The rest of the body stays unread (too large, or unreadable): close, don't drain.
                session.set_keepalive(None);
                if let Err(e) = self.refuse(session, ctx, &error, &[]).await {
                    log::debug!("client gone before its refusal was written: {e}");
                }
                return Ok(());
            }
        };
        let header = session.req_header();
        let authorization = authorization_values(header);
        let request = TokenRequest {
            authorization: &authorization,
            content_type: header
                .headers
                .get(http::header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            body: &body,
        };
        let admit = |subject: &str| self.limiter.as_ref().is_none_or(|l| l.admit(subject));
        match self.tokens.handle_admitted(&request, unix_now(), admit) {
            Ok(minted) => {
                metrics::get().minted.inc();
                ctx.subject = Some(minted.subject);
                let response = Response::minted(
                    minted.body,
                    &minted.session_token,
                    &ctx.request_id,
                    ctx.start.elapsed(),
                );
                respond::send(session, response).await
            }
            Err(error) if error.code == ErrorCode::RateLimited => {
                let retry_after = self
                    .limiter
                    .as_ref()
                    .map_or("1", |l| l.retry_after.as_str());
                self.refuse(session, ctx, &error, &[("Retry-After", retry_after)])
                    .await
            }
            Err(error) => self.refuse(session, ctx, &error, &[]).await,
        }
    }

    /// Reads the whole body within the limit: `Content-Length` first, then a running count.
    async fn read_body(&self, session: &mut Session) -> Result<BytesMut, ApiError> {
        const UNREADABLE: ApiError = ApiError::new(
            ErrorCode::InvalidRequest,
            "The request body could not be read: bad chunked framing or a broken connection.",
        );
        const TOO_LARGE: ApiError =
            ApiError::new(ErrorCode::PayloadTooLarge, "The request body is too large.");
        let declared = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok());
        if declared.is_some_and(|len| len > self.body_limit) {
            return Err(TOO_LARGE);
        }
        let expects_continue = session
            .req_header()
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue {
            session
                .write_continue_response()
                .await
                .map_err(|_| UNREADABLE)?;
        }
        let mut body = BytesMut::with_capacity(declared.unwrap_or(0));
        while let Some(chunk) = session.read_request_body().await.map_err(|_| UNREADABLE)? {
            if body.len() + chunk.len() > self.body_limit {
                return Err(TOO_LARGE);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Answers an error of tokengate's own and counts it.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        error: &ApiError,
        extra: &[(&'static str, &str)],
    ) -> pingora::Result<()> {
        metrics::get()
            .rejections
            .with_label_values(&[error.code.as_str()])
            .inc();
        ctx.reason = Some(error.code);
        let mut response = Response::error(error, &ctx.request_id);
        for (name, value) in extra {
            response = response.with_header(name, *value);
        }
        respond::send(session, response).await
    }

    /// Removes every client-sent copy of the identity header, in any case and with `_` for `-`.
    fn strip_identity(&self, header: &mut RequestHeader) {
        let wanted = self.identity_header.as_str();
        let spoofed: Vec<HeaderName> = header
            .headers
            .keys()
            .filter(|name| {
                let name = name.as_str();
                name.len() == wanted.len()
                    && name
                        .bytes()
                        .zip(wanted.bytes())
                        .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
            })
            .cloned()
            .collect();
        for name in spoofed {
            header.remove_header(&name);
        }
    }

    /// Routes a forwarded request and decides whether tokengate refuses it: `required` auth
    /// without a valid token (401), or a route's ability the token does not grant (401/403,
    /// unless the route is in shadow mode). Records the caller on `ctx` when its token is valid.
    fn check_forwarded(&self, header: &RequestHeader, ctx: &mut RequestCtx) -> Option<ApiError> {
        const FORBIDDEN: ApiError = ApiError::new(
            ErrorCode::Forbidden,
            "The token does not grant the ability this route requires.",
        );
        const MISSING: ApiError =
            ApiError::new(ErrorCode::MissingToken, "This route requires a token.");
        let host = header
            .headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| header.uri.host());
        let path = header.uri.path();
        let matched = routes::find(&self.routes, host, path, header.method.as_str())?;
        let rule = matched.route;
        ctx.group = rule.upstream;
        let mode = rule.auth.unwrap_or_else(|| self.auth.mode_for(path));
        let has_token = header.headers.contains_key(http::header::AUTHORIZATION);
        // Most forwarded requests carry no token and need none: nothing to verify.
        if !has_token && mode == AuthMode::Passthrough && rule.require.is_none() {
            return None;
        }
        let authorization = authorization_values(header);
        let auth = self.tokens.authenticate(&authorization, unix_now());
        if let Ok(caller) = &auth {
            ctx.token = Some(caller.token.to_owned());
            ctx.subject = Some(caller.claims.subject().to_owned());
        }
        let auth_error = match &auth {
            Ok(_) => None,
            Err(_) if !has_token => Some(MISSING),
            Err(e) => Some(*e),
        };
        if let Some(requirement) = &rule.require {
            let granted = auth.as_ref().is_ok_and(|caller| {
                routes::grants(caller.claims.get("abilities"), requirement, &matched.params)
            });
            let decision = match (granted, rule.shadow) {
                (true, _) => Decision::Allow,
                (false, true) => Decision::ShadowDeny,
                (false, false) => Decision::Deny,
            };
            metrics::get()
                .enforcement
                .with_label_values(&[rule.name.as_str(), decision.as_str()])
                .inc();
            match decision {
                Decision::Allow => {}
                Decision::ShadowDeny => log::warn!(
                    "route {}: would refuse request {} (shadow mode, forwarded)",
                    rule.name,
                    ctx.request_id
                ),
                Decision::Deny => return Some(auth_error.unwrap_or(FORBIDDEN)),
            }
        }
        if mode == AuthMode::Required {
            return auth_error;
        }
        None
    }
}

/// Every `Authorization` header value, in order: more than one is refused later, not merged.
fn authorization_values(header: &RequestHeader) -> Vec<&[u8]> {
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
pub fn request_id(header: &RequestHeader) -> String {
    header
        .headers
        .get("x-request-id")
        .map(|v| v.as_bytes())
        .filter(|v| (1..=200).contains(&v.len()) && v.iter().all(|b| b.is_ascii_graphic()))
        .and_then(|v| std::str::from_utf8(v).ok())
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

fn upstream_error_code(error: &Error) -> (UpstreamErrorKind, ErrorCode) {
    match error.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            (UpstreamErrorKind::Timeout, ErrorCode::UpstreamTimeout)
        }
        ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::SocketError => (UpstreamErrorKind::Connect, ErrorCode::UpstreamUnavailable),
        _ => (UpstreamErrorKind::Other, ErrorCode::UpstreamUnavailable),
    }
}

#[async_trait]
impl ProxyHttp for Tokengate {
    type CTX = RequestCtx;

    /// Runs first for every request: starts its clock and counts it in flight.
    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            route: Route::Proxy,
            request_id: String::new(),
            token: None,
            subject: None,
            reason: None,
            upstream_start: None,
            upstream_duration: None,
            upstream_error: None,
            group: 0,
            tried: Vec::new(),
            _in_flight: InFlight::new(self.state.clone()),
        }
    }

    /// Decides the route. `Ok(true)`: tokengate answered (token route, or `required` auth refused);
    /// `Ok(false)`: forward upstream.
    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        ctx.request_id = request_id(session.req_header());
        if session.req_header().uri.path() == self.token_path {
            ctx.route = Route::Token;
            self.token_route(session, ctx).await?;
            return Ok(true);
        }
        if let Some((body, cache)) = &self.jwks {
            if session.req_header().uri.path() == JWKS_PATH {
                ctx.route = Route::Token;
                self.jwks_route(session, ctx, body.clone(), cache).await?;
                return Ok(true);
            }
        }
        let refusal = self.check_forwarded(session.req_header(), ctx);
        match refusal {
            Some(error) => {
                self.refuse(session, ctx, &error, &[]).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Where a forwarded request goes: the next usable address of its route's group.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let group = &self.groups[ctx.group];
        let addr = group.select(&ctx.tried).ok_or_else(|| {
            // An upstream failure (502), not one of tokengate's own (500).
            Error::explain(
                ErrorType::ConnectNoRoute,
                "no usable address in the upstream group",
            )
            .into_up()
        })?;
        ctx.tried.push(addr);
        Ok(Box::new(group.peer(addr)))
    }

    /// Rewrites the upstream request: identity from the verified token only, forwarding headers.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        self.strip_identity(upstream);
        // On the forwarded route a subject is only ever set from a valid token.
        if let Some(subject) = &ctx.subject {
            // A signed subject that is no valid header value (a control byte, say) must not turn
            // into a 500: the upstream then sees no identity, as for an anonymous request.
            if upstream
                .insert_header(self.identity_header.clone(), subject.as_str())
                .is_err()
            {
                log::warn!(
                    "request {}: subject is not a valid header value, identity not forwarded",
                    ctx.request_id
                );
            }
        }
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string());
        if let Some(ip) = client_ip {
            let forwarded = match upstream
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(existing) => format!("{existing}, {ip}"),
                None => ip,
            };
            upstream.insert_header("X-Forwarded-For", forwarded)?;
        }
        upstream.insert_header("X-Forwarded-Proto", "http")?;
        if let Some(host) = session
            .req_header()
            .headers
            .get(http::header::HOST)
            .cloned()
        {
            upstream.insert_header("X-Forwarded-Host", host)?;
        }
        upstream.insert_header("X-Request-Id", ctx.request_id.as_str())?;
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
        response.insert_header("X-Request-Id", ctx.request_id.as_str())?;
        if let Some(token) = &ctx.token {
            response.insert_header("X-token", token.as_str())?;
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
        ctx.upstream_error = Some(upstream_error_code(&e).0);
        let group = &self.groups[ctx.group];
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
        let error = match e.esource() {
            ErrorSource::Upstream => {
                let (kind, code) = upstream_error_code(e);
                ctx.upstream_error = Some(kind);
                let message = match code {
                    ErrorCode::UpstreamTimeout => "The upstream did not answer in time.",
                    _ => "The upstream is unavailable.",
                };
                Some(ApiError::new(code, message))
            }
            ErrorSource::Downstream => match e.etype() {
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => None,
                ErrorType::ReadTimedout => None,
                _ => Some(ApiError::new(
                    ErrorCode::InvalidRequest,
                    "The request could not be read.",
                )),
            },
            _ => Some(ApiError::new(
                ErrorCode::Internal,
                "tokengate failed to handle the request.",
            )),
        };
        let Some(error) = error else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        if let Some(kind) = ctx.upstream_error {
            metrics::get()
                .upstream_errors
                .with_label_values(&[kind.as_str()])
                .inc();
        }
        ctx.reason = Some(error.code);
        if session.response_written().is_none() {
            session.set_keepalive(None);
            let response = Response::error(&error, &ctx.request_id);
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
        let m = metrics::get();
        let route = ctx.route.as_str();
        m.requests
            .with_label_values(&[route, written.map_or("0", |r| r.status.as_str())])
            .inc();
        m.request_duration
            .with_label_values(&[route])
            .observe(duration);
        if !self.access_log.enabled() {
            return;
        }
        let header = session.req_header();
        self.access_log.write(&Entry {
            time: access_log::now_rfc3339(),
            request_id: &ctx.request_id,
            method: header.method.as_str(),
            path: header.uri.path(),
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

/// Keeps connecting to the proxy listener until it answers, then marks the state as listening.
pub async fn watch_listener(addr: SocketAddr, state: Arc<AppState>) {
    let probe = match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        other => other,
    };
    loop {
        if tokio::net::TcpStream::connect(probe).await.is_ok() {
            state.listening.store(true, Ordering::Release);
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
