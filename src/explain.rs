//! `tokengate explain`: what the proxy does with one request, and why. The request is written
//! as the HTTP/1.1 bytes a client would send to the plaintext listener, read by Pingora's own
//! HTTP parser, and decided by [`decide_request`], the function the proxy calls; the value it
//! returns is printed: the exact answer, or the exact head the upstream receives. Rate limits
//! and sign-outs, which need traffic or Redis, are not consulted.

use std::net::IpAddr;

use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::date::get_cached_date;
use pingora::protocols::http::ServerSession;
use pingora::proxy::upstream_request::{
    finalize_h1_upstream_request_framing, sanitize_h1_upstream_request,
};
use pingora::upstreams::peer::HttpUpstreamRequestPolicy;
use serde::Serialize;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::authorize;
use crate::config::{Config, ConfigError};
use crate::decision::{
    self, authorization_values, decide_request, grpc_call, request_id, Action, Facts, Forward,
    ForwardBody, Refused, Settings,
};
use crate::forwarded::TrustedProxies;
use crate::metrics::Caller;
use crate::reload;
use crate::request::BodyScan;
use crate::respond::Response;
use crate::token::mint::session_token;
use crate::token::{issuer, TokenRequest};

/// One request to explain, as given on the command line.
#[derive(Debug, Clone)]
pub struct Question {
    /// The method.
    pub method: String,
    /// The request target: a path with its query, or an absolute URL, sent as given.
    pub url: String,
    /// Headers as `Name: value`, in order.
    pub headers: Vec<String>,
    /// The body, if any.
    pub body: Option<String>,
    /// Frame the body as chunked rather than with a `Content-Length`.
    pub chunked: bool,
    /// Send no `Host` header unless one is given.
    pub no_host: bool,
    /// Send the request as HTTP/1.0.
    pub http10: bool,
    /// The client's address (what `X-Forwarded-For` gets).
    pub peer: IpAddr,
    /// Sign a session token for this subject and send it (or a token minted from it).
    pub user_id: Option<String>,
    /// With `user_id`: mint an ability token carrying this permission (JSON) and send that.
    pub permission: Option<String>,
    /// Unix time to decide at.
    pub now: u64,
    /// Ask as this gateway asks the authorization listener (with `conf/gateways/`'s
    /// configuration) instead of sending the request to the proxy.
    pub gateway: Option<Caller>,
}

/// What tokengate does with the request.
#[derive(Debug, Serialize)]
pub struct Explanation {
    /// The request as it was sent.
    pub request: Line,
    /// What `explain` filled in that the command line did not say.
    pub assumed: Vec<String>,
    /// What the proxy consults that `explain` does not.
    pub not_consulted: [&'static str; 2],
    /// Why Pingora's HTTP parser refused the request before any decision, if it did.
    pub parser: Option<String>,
    /// The canonical method checked (after an honoured override) and path.
    pub canonical: Option<Canonical>,
    /// The route matched.
    pub route: Option<RouteFacts>,
    /// The routes tried before it, in order.
    pub tried_before: Vec<String>,
    /// What the route requires (`resource:ability`, `(shadow)` in shadow mode).
    pub requires: Option<String>,
    /// The token: its subject and abilities, or why it is not valid.
    pub token: Option<Value>,
    /// The ability check: `allow`, `deny` or `shadow_deny` (the metric's label).
    pub verdict: Option<&'static str>,
    /// The request limit it counts against (not consulted).
    pub limit: Option<Limit>,
    /// `refuse`, `token`, `jwks` or `forward`; with a gateway, `allow` or `refuse`.
    pub plan: &'static str,
    /// tokengate's own answer, when it answers.
    pub answer: Option<Answer>,
    /// The request the upstream receives, when it is forwarded.
    pub upstream: Option<Upstream>,
}

/// A request line and its Host.
#[derive(Debug, Serialize)]
pub struct Line {
    /// The method.
    pub method: String,
    /// The target.
    pub target: String,
    /// The Host header, if any.
    pub host: Option<String>,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: &'static str,
}

/// The canonical request.
#[derive(Debug, Serialize)]
pub struct Canonical {
    /// The method routes are checked against.
    pub method: String,
    /// The canonical path.
    pub path: String,
}

/// The route a request matched.
#[derive(Debug, Serialize)]
pub struct RouteFacts {
    /// Its rank in the table, from 1.
    pub rank: usize,
    /// Its name.
    pub name: String,
    /// Its upstream group.
    pub upstream: String,
    /// `passthrough` or `required`.
    pub auth: &'static str,
}

/// A route's request limit and the key the request counts against.
#[derive(Debug, Serialize)]
pub struct Limit {
    /// The route.
    pub route: String,
    /// The key.
    pub key: String,
}

/// One header field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Header {
    /// Its name, as written on the wire.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// tokengate's own answer.
#[derive(Debug, Serialize)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The header fields, in order (`Content-Length` included).
    pub headers: Vec<Header>,
    /// The JSON body, `null` when it has none.
    pub body: Option<Value>,
    /// `keep-alive` or `close`: what the connection does after the answer.
    pub connection: &'static str,
}

/// The request the upstream receives.
#[derive(Debug, Serialize)]
pub struct Upstream {
    /// The method.
    pub method: String,
    /// The target.
    pub target: String,
    /// The Host header.
    pub host: Option<String>,
    /// Every header field, in order.
    pub headers: Vec<Header>,
    /// Fields that were not in the client's request as they are here.
    pub added: Vec<Header>,
    /// Names of the client's fields that do not go upstream as they came.
    pub removed: Vec<String>,
    /// How the body goes: `none`, `read ahead` (checked whole, then sent), `streamed`
    /// (scanned for `_method` on its way), `streamed, refused before its end` (the head and
    /// the chunks before the field went, never the rest) or `streamed unscanned`.
    pub body: &'static str,
}

/// Why a question could not be asked.
#[derive(Debug)]
pub enum Problem {
    /// The configuration is not valid.
    Config(ConfigError),
    /// The question is malformed (bad method, URL, header or permission).
    Question(String),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Config(e) => e.fmt(f),
            Problem::Question(e) => f.write_str(e),
        }
    }
}

fn question(problem: impl std::fmt::Display) -> Problem {
    Problem::Question(problem.to_string())
}

/// Where `--gateway` questions come from, believed as a configured gateway.
const GATEWAY_PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// Explains `q` against `config`.
pub fn explain(config: &Config, q: &Question) -> Result<Explanation, Problem> {
    let registry = crate::issuers::Registry::default();
    let mut settings = reload::decision_settings(config, &registry).map_err(Problem::Config)?;
    if q.gateway.is_some() {
        // The question comes from a gateway this configuration believes.
        let here = TrustedProxies::parse(&[GATEWAY_PEER.to_string()]).map_err(question)?;
        settings.authorize.gateways = here;
    }
    let authorization = caller_token(config, &settings, q)?;
    let (wire, line, assumed) = wire(q, authorization.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(question)?;
    runtime.block_on(run(config, &settings, q, wire, line, assumed))
}

/// The bytes a client sends for `q`, the request line they show, and what was assumed.
fn wire(
    q: &Question,
    authorization: Option<&str>,
) -> Result<(Vec<u8>, Line, Vec<String>), Problem> {
    let parts = [q.method.as_str(), q.url.as_str()]
        .into_iter()
        .chain(q.headers.iter().map(String::as_str));
    for part in parts {
        if part.contains(['\r', '\n']) {
            return Err(question(format!("{part:?} holds a line break")));
        }
    }
    let mut headers: Vec<(String, String)> = Vec::with_capacity(q.headers.len() + 3);
    for line in &q.headers {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| question(format!("{line:?} is not `Name: value`")))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let has = |headers: &[(String, String)], name: &str| {
        headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    let mut assumed = Vec::new();
    if !q.no_host && !q.http10 && !has(&headers, "host") {
        let host = absolute_authority(&q.url).unwrap_or("localhost").to_owned();
        assumed.push(format!(
            "Host: {host} (no -H Host given; --no-host sends none)"
        ));
        headers.insert(0, ("Host".to_owned(), host));
    }
    if let Some(token) = authorization {
        if has(&headers, "authorization") {
            assumed.push("--user-id replaced the Authorization header given".to_owned());
        }
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case("authorization"));
        headers.push(("Authorization".to_owned(), format!("Bearer {token}")));
    }
    let framed = has(&headers, "content-length") || has(&headers, "transfer-encoding");
    let body = q.body.as_deref().unwrap_or_default();
    let mut payload = Vec::new();
    match (q.chunked, q.body.is_some(), framed) {
        (true, _, false) => {
            headers.push(("Transfer-Encoding".to_owned(), "chunked".to_owned()));
            assumed.push("Transfer-Encoding: chunked (from --chunked)".to_owned());
            if !body.is_empty() {
                payload.extend_from_slice(format!("{:x}\r\n{body}\r\n", body.len()).as_bytes());
            }
            payload.extend_from_slice(b"0\r\n\r\n");
        }
        (false, true, false) => {
            headers.push(("Content-Length".to_owned(), body.len().to_string()));
            assumed.push(format!("Content-Length: {} (from --body)", body.len()));
            payload.extend_from_slice(body.as_bytes());
        }
        (_, _, _) => payload.extend_from_slice(body.as_bytes()),
    }
    let version = match q.http10 {
        true => "HTTP/1.0",
        false => "HTTP/1.1",
    };
    let mut raw = format!("{} {} {version}\r\n", q.method, q.url).into_bytes();
    for (name, value) in &headers {
        raw.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    raw.extend_from_slice(&payload);
    let host = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.clone());
    let line = Line {
        method: q.method.clone(),
        target: q.url.clone(),
        host,
        version,
    };
    Ok((raw, line, assumed))
}

/// The authority of an absolute-form target (`http://host:port/…`).
fn absolute_authority(url: &str) -> Option<&str> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let rest = ["http://", "https://"]
        .iter()
        .find(|s| lower.starts_with(*s))
        .map(|s| &url[s.len()..])?;
    Some(rest.split(['/', '?']).next().unwrap_or(rest))
}

/// Reads `wire` as the proxy's listener does and decides on it.
async fn run(
    config: &Config,
    settings: &Settings,
    q: &Question,
    wire: Vec<u8>,
    line: Line,
    assumed: Vec<String>,
) -> Result<Explanation, Problem> {
    // The client's end stays open, as a client waiting for its answer: the proxy may write
    // `100 Continue` to it.
    let (mut client, server) = tokio::io::duplex(wire.len() + 64 * 1024);
    client.write_all(&wire).await.map_err(question)?;
    client.shutdown().await.map_err(question)?;
    let mut session = ServerSession::new_http1(Box::new(server));
    let mut out = Explanation {
        request: line,
        assumed,
        not_consulted: ["rate limits", "sign-outs"],
        parser: None,
        canonical: None,
        route: None,
        tried_before: Vec::new(),
        requires: None,
        token: None,
        verdict: None,
        limit: None,
        plan: "refuse",
        answer: None,
        upstream: None,
    };
    match session.read_request().await {
        Ok(true) => {}
        Ok(false) => return Err(question("the request is incomplete")),
        Err(e) => {
            let why = e.context.as_ref().map(|c| c.as_str().to_owned());
            out.parser = Some(why.unwrap_or_else(|| e.etype.as_str().to_owned()));
            out.answer = Some(parser_refusal());
            return Ok(out);
        }
    }
    if let Some(gateway) = q.gateway {
        asked_by_gateway(config, settings, q, gateway, &mut session, &mut out).await?;
        return Ok(out);
    }
    let header = session.req_header().clone();
    let has_body = decision::body_framing(&mut session).has_body();
    let decision = decide_request(settings, &mut session, Some(q.peer), q.now, None).await;
    describe(config, settings, &header, &decision.facts, q.now, &mut out);
    let id = request_id(&header);
    let grpc = grpc_call(&header);
    match decision.action {
        Action::Refuse(refused) => {
            let limit = settings.tokens.permission.limits.body_limit;
            if !decision::keeps_connection(&mut session, &refused, limit).await {
                session.set_keepalive(None);
            }
            let response = refused.response(&id, grpc);
            out.answer = Some(answer(&response, session.get_keepalive().is_some()));
        }
        Action::Jwks => {
            out.plan = "jwks";
            if let Some(jwks) = &settings.jwks {
                let response = Response::jwks(jwks.body.clone(), &jwks.cache_control, &id);
                out.answer = Some(answer(&response, session.get_keepalive().is_some()));
            }
        }
        Action::Mint(prepared) => {
            let response = match settings.tokens.mint(prepared) {
                Ok(minted) => {
                    out.plan = "token";
                    let runtime = std::time::Duration::ZERO;
                    Response::minted(minted.body, &minted.session_token, &id, runtime)
                }
                Err(error) => Refused::from(error).response(&id, grpc),
            };
            out.answer = Some(answer(&response, session.get_keepalive().is_some()));
        }
        Action::Forward(mut forward) => {
            out.plan = "forward";
            let subject = decision.facts.subject.as_deref();
            let upstream =
                upstream_head(settings, &header, &forward, subject, q.peer, &id, has_body)
                    .map_err(question)?;
            let mut described = describe_upstream(&header, &upstream, &forward.body, has_body);
            if let ForwardBody::Scanned(scan) = &mut forward.body {
                if refused_while_streaming(&mut session, scan).await {
                    // The head and the chunks before the field went; the rest never does.
                    out.plan = "refuse";
                    let refused = Refused::from(decision::streamed_override_refusal());
                    out.answer = Some(answer(&refused.response(&id, grpc), false));
                    described.body = "streamed, refused before its end";
                }
            }
            out.upstream = Some(described);
        }
    }
    Ok(out)
}

/// What the gateway asks about the request `client` holds, as the shipped configuration of
/// `conf/gateways/` (or, for Envoy, docs/gateways.md) has it ask; and the authorizer's answer.
async fn asked_by_gateway(
    config: &Config,
    settings: &Settings,
    q: &Question,
    gateway: Caller,
    client: &mut ServerSession,
    out: &mut Explanation,
) -> Result<(), Problem> {
    let wire = gateway_question(gateway, client, q.peer)
        .await
        .map_err(question)?;
    let (mut asker, server) = tokio::io::duplex(wire.len() + 1024);
    asker.write_all(&wire).await.map_err(question)?;
    asker.shutdown().await.map_err(question)?;
    let mut session = ServerSession::new_http1(Box::new(server));
    if !matches!(session.read_request().await, Ok(true)) {
        return Err(question("the gateway's question could not be read"));
    }
    out.assumed.push(format!(
        "asked as {} asks with the configuration of docs/gateways.md, from a configured gateway",
        gateway.as_str()
    ));
    let asked = authorize::ask(settings, &mut session, Some(GATEWAY_PEER), q.now, None).await;
    if let Some(header) = &asked.header {
        describe(config, settings, header, &asked.decision.facts, q.now, out);
    }
    let id = match &asked.header {
        Some(header) => request_id(header),
        None => request_id(session.req_header()),
    };
    let facts = &asked.decision.facts;
    let (outcome, response) = authorize::respond(
        asked.caller,
        settings,
        facts,
        &asked.decision.action,
        &id,
        asked.grpc,
    );
    out.plan = outcome.as_str();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| Header {
            name: name.as_str().to_owned(),
            value: text(value.as_bytes()),
        })
        .collect();
    out.answer = Some(Answer {
        status: response.status().as_u16(),
        headers,
        body: serde_json::from_slice(response.body()).ok(),
        connection: "keep-alive",
    });
    Ok(())
}

/// The bytes a gateway sends the authorization listener about the request `client` holds.
async fn gateway_question(
    gateway: Caller,
    client: &mut ServerSession,
    peer: IpAddr,
) -> Result<Vec<u8>, String> {
    let header = client.req_header().clone();
    let body = decision::read_body(client, decision::READ_AHEAD_LIMIT)
        .await
        .map_err(|e| e.message.to_owned())?;
    let target = text(header.raw_path());
    let host = header
        .headers
        .get(http::header::HOST)
        .map(|v| text(v.as_bytes()));
    let length = header
        .headers
        .get(http::header::CONTENT_LENGTH)
        .map(|v| text(v.as_bytes()));
    let method = header.method.as_str();
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut line = format!("GET /{} HTTP/1.1", gateway.as_str());
    let mut payload = Vec::new();
    let mut report = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            fields.push((name.to_owned(), value));
        }
    };
    match gateway {
        Caller::Nginx => {
            report("X-Original-Method", Some(method.to_owned()));
            report("X-Original-URI", Some(target));
            report("X-Forwarded-Host", host);
            report("X-Original-Content-Length", length);
            report("X-Real-IP", Some(peer.to_string()));
        }
        Caller::Traefik | Caller::Caddy => {
            report("X-Forwarded-Method", Some(method.to_owned()));
            report("X-Forwarded-Uri", Some(target));
            report("X-Forwarded-Host", host);
            report("X-Forwarded-For", Some(peer.to_string()));
            match gateway {
                Caller::Traefik => {
                    line = "GET /traefik?body=forwarded HTTP/1.1".to_owned();
                    payload = body.to_vec();
                }
                _ => report("X-Original-Content-Length", length),
            }
        }
        Caller::Envoy | Caller::Proxy => {
            line = format!("{method} /envoy{target} HTTP/1.1");
            report("Host", host);
            report("x-envoy-auth-partial-body", Some("false".to_owned()));
            payload = body.to_vec();
        }
    }
    let mut raw = format!("{line}\r\n").into_bytes();
    if gateway != Caller::Envoy {
        raw.extend_from_slice(b"Host: tokengate\r\n");
    }
    for (name, value) in &header.headers {
        let n = name.as_str();
        // nginx and Caddy drop header names with `_`.
        let dropped = n.contains('_') && matches!(gateway, Caller::Nginx | Caller::Caddy);
        let hop = ["host", "content-length", "transfer-encoding", "connection"].contains(&n);
        if !dropped && !hop && !fields.iter().any(|(f, _)| f.eq_ignore_ascii_case(n)) {
            raw.extend_from_slice(format!("{n}: {}\r\n", text(value.as_bytes())).as_bytes());
        }
    }
    for (name, value) in &fields {
        raw.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    raw.extend_from_slice(format!("Content-Length: {}\r\n\r\n", payload.len()).as_bytes());
    raw.extend_from_slice(&payload);
    Ok(raw)
}

/// Streams the rest of the body past its scan, chunk by chunk as the proxy does: whether a
/// `_method` field turned up, which refuses the request before the chunk holding it is sent.
async fn refused_while_streaming(session: &mut ServerSession, scan: &mut BodyScan) -> bool {
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                let end = session.is_body_done();
                if decision::override_streamed(scan, Some(&chunk), end) {
                    return true;
                }
                if end {
                    return false;
                }
            }
            Ok(None) => return decision::override_streamed(scan, None, true),
            Err(_) => return false,
        }
    }
}

/// What Pingora answers a request its parser refuses: its bare `400`, and the connection closes.
fn parser_refusal() -> Answer {
    let header = ServerSession::generate_error(400);
    Answer {
        status: 400,
        headers: response_headers(header, false),
        body: None,
        connection: "close",
    }
}

/// The head the upstream receives: the client's, through Pingora's own request policy, the
/// decided rewrite, then Pingora's framing, in the order the proxy applies them.
fn upstream_head(
    settings: &Settings,
    header: &RequestHeader,
    forward: &Forward,
    subject: Option<&str>,
    peer: IpAddr,
    id: &HeaderValue,
    has_body: bool,
) -> pingora::Result<RequestHeader> {
    let mut upstream = header.clone();
    upstream.set_version(http::Version::HTTP_11);
    let http11 = header.version == http::Version::HTTP_11;
    sanitize_h1_upstream_request(&mut upstream, HttpUpstreamRequestPolicy::default(), http11)?;
    forward.apply(&mut upstream, settings, subject, Some(peer), false, id)?;
    finalize_h1_upstream_request_framing(&mut upstream, has_body)?;
    Ok(upstream)
}

/// The token `--user-id` (and `--permission`) ask for: a session token, or an ability token
/// the token route mints from it.
fn caller_token(
    config: &Config,
    settings: &Settings,
    q: &Question,
) -> Result<Option<String>, Problem> {
    let Some(user) = &q.user_id else {
        return Ok(None);
    };
    let keys = config.keyring().map_err(Problem::Config)?;
    let session = session_token(
        keys.signing(),
        &config.token.subject_claim,
        user,
        q.now,
        3600,
    )
    .map_err(question)?;
    let Some(permission) = &q.permission else {
        return Ok(Some(session));
    };
    let bearer = format!("Bearer {session}");
    let body = format!(r#"{{"permission":{permission}}}"#);
    let minted = settings
        .tokens
        .handle(
            &TokenRequest {
                authorization: &[bearer.as_bytes()],
                content_type: Some(b"application/json"),
                body: body.as_bytes(),
                cookie: None,
            },
            q.now,
        )
        .map_err(|e| question(format!("the permission does not mint: {e}")))?;
    let token = serde_json::from_slice::<Value>(&minted.body)
        .ok()
        .and_then(|v| v["token"].as_str().map(str::to_owned))
        .ok_or_else(|| question("the minted answer has no token"))?;
    Ok(Some(token))
}

/// The route, token and verdict the decision found, in words.
fn describe(
    config: &Config,
    settings: &Settings,
    header: &RequestHeader,
    facts: &Facts,
    now: u64,
    out: &mut Explanation,
) {
    let routes = settings.routes.routes();
    let route = facts.route.and_then(|rank| routes.get(rank));
    let groups = config.group_names();
    out.token = token_facts(settings, header, now);
    let Some((route, rank)) = route.zip(facts.route) else {
        return;
    };
    out.canonical = Some(Canonical {
        method: facts
            .override_method
            .unwrap_or(header.method.as_str())
            .to_owned(),
        path: facts
            .canonical_path
            .clone()
            .unwrap_or_else(|| header.uri.path().to_owned()),
    });
    out.route = Some(RouteFacts {
        rank: rank + 1,
        name: route.name.clone(),
        upstream: groups.get(route.upstream).cloned().unwrap_or_default(),
        auth: route.auth.as_str(),
    });
    out.tried_before = routes[..rank].iter().map(|r| r.name.clone()).collect();
    out.requires = route.require.as_ref().map(|r| {
        let shadow = if route.shadow { " (shadow)" } else { "" };
        format!("{r}{shadow}")
    });
    out.verdict = facts.enforcement.map(|d| d.as_str());
    out.limit = facts.limit_key.as_ref().map(|key| Limit {
        route: route.name.clone(),
        key: key.clone(),
    });
}

/// What the request's token proves: where it came from, which issuer and key it names, its
/// subject and abilities, or why it is not valid.
fn token_facts(settings: &Settings, header: &RequestHeader, now: u64) -> Option<Value> {
    let authorization: Vec<&[u8]> = authorization_values(header);
    let presented = decision::presented_token(settings, header);
    let (from_cookie, verified) = match (authorization.is_empty(), presented) {
        (false, _) => (false, settings.tokens.authenticate(&authorization, now)),
        (true, Some(token)) => (true, settings.tokens.authenticate_token(token, now)),
        (true, None) => return None,
    };
    // A cookie's token, and an identity provider's issuer and key, are named; a legacy
    // session from the header reads as it always did.
    let mut facts = serde_json::Map::new();
    if from_cookie {
        facts.insert("from".into(), "cookie".into());
    }
    if let Some(found) = presented.and_then(|t| settings.tokens.issuer_of(t)) {
        let kid = presented.and_then(issuer::peek).and_then(|p| p.kid);
        facts.insert("issuer".into(), found.settings.issuer.clone().into());
        facts.insert("kid".into(), kid.into());
    }
    let more = match verified {
        Ok(caller) => serde_json::json!({
            "subject": caller.claims.subject(),
            "abilities": caller.claims.get("abilities")
                .and_then(|raw| serde_json::from_str::<Value>(raw).ok()),
        }),
        Err(error) => serde_json::json!({ "invalid": error.message }),
    };
    if let Value::Object(more) = more {
        facts.extend(more);
    }
    Some(Value::Object(facts))
}

/// tokengate's answer as the client receives it.
fn answer(response: &Response, keeps_connection: bool) -> Answer {
    let headers = response
        .header()
        .map(|h| response_headers(h, keeps_connection))
        .unwrap_or_default();
    Answer {
        status: response.status,
        headers,
        body: serde_json::from_slice(&response.body).ok(),
        connection: match keeps_connection {
            true => "keep-alive",
            false => "close",
        },
    }
}

/// A response head's fields, spelled as written: with the `Date` and `Connection` fields
/// Pingora's HTTP/1.1 writer sets on every final answer.
fn response_headers(mut header: ResponseHeader, keep_alive: bool) -> Vec<Header> {
    let connection = match keep_alive {
        true => "keep-alive",
        false => "close",
    };
    let written = header
        .insert_header(http::header::DATE, get_cached_date())
        .and_then(|()| header.insert_header(http::header::CONNECTION, connection));
    if written.is_err() {
        return Vec::new();
    }
    header
        .case_header_iter()
        .map(|(name, value)| Header {
            name: text(name.as_slice()),
            value: text(value.as_bytes()),
        })
        .collect()
}

/// The upstream head, and how it differs from the client's; `has_body`: the client sent a body.
fn describe_upstream(
    client: &RequestHeader,
    upstream: &RequestHeader,
    body: &ForwardBody,
    has_body: bool,
) -> Upstream {
    let fields = |h: &RequestHeader| -> Vec<Header> {
        h.case_header_iter()
            .map(|(name, value)| Header {
                name: text(name.as_slice()),
                value: text(value.as_bytes()),
            })
            .collect()
    };
    let (before, after) = (fields(client), fields(upstream));
    let same = |a: &Header, b: &Header| a.name.eq_ignore_ascii_case(&b.name) && a.value == b.value;
    let added = after
        .iter()
        .filter(|a| !before.iter().any(|b| same(a, b)))
        .cloned()
        .collect();
    let mut removed: Vec<String> = Vec::new();
    for b in before.iter().filter(|b| !after.iter().any(|a| same(a, b))) {
        if !removed.iter().any(|r| r.eq_ignore_ascii_case(&b.name)) {
            removed.push(b.name.clone());
        }
    }
    let host = upstream.headers.get(http::header::HOST);
    Upstream {
        method: upstream.method.to_string(),
        target: text(upstream.raw_path()),
        host: host.map(|v| text(v.as_bytes())),
        headers: after,
        added,
        removed,
        body: match body {
            ForwardBody::Unscanned if has_body => "streamed unscanned",
            ForwardBody::Unscanned => "none",
            ForwardBody::ReadAhead => "read ahead",
            ForwardBody::Scanned(_) => "streamed",
        },
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl std::fmt::Display for Explanation {
    /// The text form: one fact a line, in the order the proxy decides.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Line {
            method,
            target,
            host,
            version,
        } = &self.request;
        let host = host.as_deref().unwrap_or("none");
        let version = match *version {
            "HTTP/1.1" => String::new(),
            other => format!(" {other}"),
        };
        writeln!(f, "request     {method} {target}{version} (Host: {host})")?;
        if let Some(why) = &self.parser {
            writeln!(f, "parser      refused before any decision: {why}")?;
        }
        if let Some(Canonical { method, path }) = &self.canonical {
            writeln!(f, "canonical   {method} {path}")?;
        }
        if let Some(route) = &self.route {
            writeln!(
                f,
                "route       #{} {} (upstream {}, auth {})",
                route.rank, route.name, route.upstream, route.auth
            )?;
            let tried = match self.tried_before.is_empty() {
                true => "-".to_owned(),
                false => self.tried_before.join(", "),
            };
            writeln!(f, "tried       {tried}")?;
            writeln!(f, "requires    {}", self.requires.as_deref().unwrap_or("-"))?;
        }
        if let Some(token) = &self.token {
            writeln!(f, "token       {token}")?;
        }
        if let Some(verdict) = self.verdict {
            writeln!(f, "verdict     {verdict}")?;
        }
        if let Some(Limit { route, key }) = &self.limit {
            writeln!(f, "limit       route {route}, key {key} (not consulted)")?;
        }
        writeln!(f, "plan        {}", self.plan)?;
        if let Some(answer) = &self.answer {
            writeln!(f, "answer      {}", answer.status)?;
            for Header { name, value } in &answer.headers {
                writeln!(f, "            {name}: {value}")?;
            }
            if let Some(body) = &answer.body {
                writeln!(f, "            {body}")?;
            }
            if answer.connection == "close" {
                writeln!(f, "            (the connection closes)")?;
            }
        }
        if let Some(up) = &self.upstream {
            let host = up.host.as_deref().unwrap_or("none");
            writeln!(f, "upstream    {} {} (Host: {host})", up.method, up.target)?;
            for Header { name, value } in &up.added {
                writeln!(f, "  + {name}: {value}")?;
            }
            for name in &up.removed {
                writeln!(f, "  - {name}")?;
            }
            writeln!(f, "body        {}", up.body)?;
        }
        Ok(())
    }
}
