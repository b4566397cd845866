//! `tokengate explain`: why a request would be answered the way it is. It builds the proxy's
//! configuration as the server does and runs the proxy's own decision on one request head
//! (canonicalize, route, authenticate, decide, rewrite), then prints what the proxy would answer
//! or forward. Sign-outs and rate limits, which need Redis or traffic, are not consulted.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderValue, Method};
use pingora::http::RequestHeader;
use serde::Serialize;
use serde_json::Value;

use crate::config::{Config, ConfigError};
use crate::proxy::{
    self, authorization_values, jwks_method, token_method, token_request, AppState, Decided, Plan,
    Refused, Tokengate,
};
use crate::reload::{self, Lasting};
use crate::request::{Framing, Refusal};
use crate::token::mint::session_token;
use crate::token::TokenRequest;

/// One request to explain, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct Question {
    /// The method.
    pub method: String,
    /// A path with its query, or an absolute URL.
    pub url: String,
    /// Headers as `Name: value`.
    pub headers: Vec<String>,
    /// The body, if any.
    pub body: Option<String>,
    /// The client's address (what `X-Forwarded-For` gets).
    pub peer: Option<IpAddr>,
    /// Sign a session token for this subject and send it (or a token minted from it).
    pub user_id: Option<String>,
    /// With `user_id`: mint an ability token carrying this permission (JSON) and send that.
    pub permission: Option<String>,
    /// Unix time to decide at.
    pub now: u64,
}

/// What tokengate would do with the request.
#[derive(Debug, Serialize)]
pub struct Explanation {
    /// The request as received: method, target, host.
    pub request: [String; 3],
    /// The canonical method checked (after an honoured override) and path.
    pub canonical: Option<[String; 2]>,
    /// `token`, `jwks`, `forward` or `refuse`.
    pub plan: &'static str,
    /// The route matched: rank (from 1), name, upstream group, auth mode.
    pub route: Option<[String; 4]>,
    /// The routes tried before it, in order.
    pub tried_before: Vec<String>,
    /// What the route requires (`resource:ability`), and whether it is in shadow mode.
    pub requires: Option<String>,
    /// The token: its subject and abilities, or why it is not valid.
    pub token: Option<Value>,
    /// The ability check: `allow`, `deny` or `shadow_deny` (the metric's label).
    pub verdict: Option<&'static str>,
    /// The request limit it would count against: route and key.
    pub limit: Option<[String; 2]>,
    /// The status the client would get from tokengate (`forward`: whatever the upstream says).
    pub status: Option<u16>,
    /// The headers of tokengate's own answer.
    pub headers: Vec<[String; 2]>,
    /// Its body: the error, or the minted token.
    pub body: Option<Value>,
    /// What goes upstream: method, target, Host, and headers added and removed.
    pub upstream: Option<Upstream>,
}

/// The request the upstream would get.
#[derive(Debug, Serialize)]
pub struct Upstream {
    /// The method, target and Host forwarded.
    pub request: [String; 3],
    /// Headers tokengate adds or sets.
    pub added: Vec<[String; 2]>,
    /// Headers of the client's request that do not go upstream as they came.
    pub removed: Vec<String>,
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

/// Explains `q` against `config`.
pub fn explain(config: &Config, q: &Question) -> Result<Explanation, Problem> {
    let lasting = Lasting {
        state: Arc::new(AppState::default()),
        shared: None,
        tracer: None,
    };
    let groups = reload::groups(config);
    let gate = reload::gate(config, groups, &lasting).map_err(Problem::Config)?;
    let mut header = request_header(q)?;
    let authorization = caller_token(config, &gate, q)?;
    if let Some(token) = &authorization {
        let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(question)?;
        header
            .insert_header(http::header::AUTHORIZATION, value)
            .map_err(question)?;
    }
    Ok(answer(config, &gate, &header, q))
}

/// The request head the proxy would read.
fn request_header(q: &Question) -> Result<RequestHeader, Problem> {
    let method = Method::from_bytes(q.method.as_bytes()).map_err(question)?;
    let mut header = RequestHeader::build(method, q.url.as_bytes(), Some(q.headers.len() + 2))
        .map_err(|e| question(format!("{:?} is not a request target: {e}", q.url)))?;
    let mut host = header.uri.authority().map(|a| a.to_string());
    for line in &q.headers {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| question(format!("{line:?} is not `Name: value`")))?;
        let (name, value) = (name.trim().to_owned(), value.trim().to_owned());
        if name.eq_ignore_ascii_case("host") {
            host = Some(value.clone());
        }
        header.append_header(name, value).map_err(question)?;
    }
    if header.headers.get(http::header::HOST).is_none() {
        let host = host.unwrap_or_else(|| "localhost".to_owned());
        header
            .insert_header(http::header::HOST, host)
            .map_err(question)?;
    }
    if let Some(body) = &q.body {
        header
            .insert_header(http::header::CONTENT_LENGTH, body.len().to_string())
            .map_err(question)?;
    }
    Ok(header)
}

/// The token `--user-id` (and `--permission`) ask for: a session token, or an ability token
/// the token route mints from it.
fn caller_token(
    config: &Config,
    gate: &Tokengate,
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
    let minted = gate
        .tokens
        .handle(
            &TokenRequest {
                authorization: &[bearer.as_bytes()],
                content_type: Some(b"application/json"),
                body: body.as_bytes(),
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

/// Runs the proxy's decision on `header` and describes it.
fn answer(config: &Config, gate: &Tokengate, header: &RequestHeader, q: &Question) -> Explanation {
    let body = q.body.as_deref().unwrap_or_default().as_bytes();
    let framing = match body.is_empty() {
        true => Framing::Empty,
        false => Framing::Length(body.len() as u64),
    };
    let mut decided = Decided::default();
    let mut plan = gate.plan(header, framing, q.peer, None, q.now, &mut decided);
    if let Plan::PreRead(kind) = &plan {
        let found = proxy::overrides_in(kind, body);
        decided = Decided::default();
        plan = gate.plan(header, framing, q.peer, Some(&found), q.now, &mut decided);
    }
    let id = proxy::request_id(header);
    let mut out = describe(config, gate, header, &decided, q);
    let refused = match plan {
        Plan::Token => {
            out.plan = "token";
            token_answer(gate, header, body, q.now, &id, &mut out)
        }
        Plan::Jwks => {
            out.plan = "jwks";
            jwks_method(&header.method).err()
        }
        Plan::Forward => {
            // The proxy refuses while the body streams, before the chunk with it goes upstream.
            let streamed = decided.body_scan.as_mut();
            match streamed.is_some_and(|scan| proxy::override_streamed(scan, Some(body), true)) {
                true => Some(Refusal::OverrideField.api_error().into()),
                false => {
                    out.plan = "forward";
                    out.upstream = forwarded(gate, header, &decided, q.peer, &id);
                    None
                }
            }
        }
        Plan::Refuse(error) => Some(error.into()),
        Plan::PreRead(_) => None,
    };
    if let Some(refused) = refused {
        out.plan = "refuse";
        let content_type = header.headers.get(http::header::CONTENT_TYPE);
        let grpc = crate::respond::is_grpc(content_type.map(|v| v.as_bytes()));
        let response = refused.response(&id, grpc);
        out.status = Some(response.status);
        out.headers = header_pairs(&response);
        out.body = serde_json::from_slice(&response.body).ok();
    }
    out
}

/// The route, token and verdict `decided` holds, in words.
fn describe(
    config: &Config,
    gate: &Tokengate,
    header: &RequestHeader,
    decided: &Decided,
    q: &Question,
) -> Explanation {
    let routes = gate.proxy.routes.routes();
    let route = decided.route.and_then(|rank| routes.get(rank));
    let groups = config.group_names();
    let token = token_facts(gate, header, q.now);
    Explanation {
        request: request_line(header),
        canonical: route.map(|_| {
            [
                decided
                    .override_method
                    .unwrap_or(header.method.as_str())
                    .to_owned(),
                decided
                    .canonical_path
                    .clone()
                    .unwrap_or_else(|| header.uri.path().to_owned()),
            ]
        }),
        plan: "",
        route: route.zip(decided.route).map(|(r, rank)| {
            [
                (rank + 1).to_string(),
                r.name.clone(),
                groups.get(r.upstream).cloned().unwrap_or_default(),
                r.auth.as_str().to_owned(),
            ]
        }),
        tried_before: decided.route.map_or(Vec::new(), |rank| {
            routes[..rank].iter().map(|r| r.name.clone()).collect()
        }),
        requires: route.and_then(|r| {
            let shadow = if r.shadow { " (shadow)" } else { "" };
            r.require.as_ref().map(|q| format!("{q}{shadow}"))
        }),
        token,
        verdict: decided.enforcement.map(|d| d.as_str()),
        limit: route
            .zip(decided.limit_key.as_ref())
            .map(|(r, key)| [r.name.clone(), key.clone()]),
        status: None,
        headers: Vec::new(),
        body: None,
        upstream: None,
    }
}

/// What the request's token proves: its subject and abilities, or why it is not valid.
fn token_facts(gate: &Tokengate, header: &RequestHeader, now: u64) -> Option<Value> {
    let authorization: Vec<&[u8]> = authorization_values(header);
    if authorization.is_empty() {
        return None;
    }
    Some(match gate.tokens.authenticate(&authorization, now) {
        Ok(caller) => serde_json::json!({
            "subject": caller.claims.subject(),
            "abilities": caller.claims.get("abilities")
                .and_then(|raw| serde_json::from_str::<Value>(raw).ok()),
        }),
        Err(error) => serde_json::json!({ "invalid": error.message }),
    })
}

/// The token route's answer, without sign-outs or the mint limit: `None` when it mints.
fn token_answer(
    gate: &Tokengate,
    header: &RequestHeader,
    body: &[u8],
    now: u64,
    id: &HeaderValue,
    out: &mut Explanation,
) -> Option<Refused> {
    if let Err(refused) = token_method(&header.method) {
        return Some(refused);
    }
    let authorization: Vec<&[u8]> = authorization_values(header);
    match gate
        .tokens
        .handle(&token_request(header, &authorization, body), now)
    {
        Ok(minted) => {
            let response = crate::respond::Response::minted(
                minted.body,
                &minted.session_token,
                id,
                std::time::Duration::ZERO,
            );
            out.status = Some(response.status);
            out.headers = header_pairs(&response);
            out.body = serde_json::from_slice(&response.body).ok();
            None
        }
        Err(error) => Some(error.into()),
    }
}

/// The upstream request, built by the proxy's own rewrite from the client's.
fn forwarded(
    gate: &Tokengate,
    header: &RequestHeader,
    decided: &Decided,
    peer: Option<IpAddr>,
    id: &HeaderValue,
) -> Option<Upstream> {
    let mut upstream = header.clone();
    gate.rewrite(&mut upstream, decided, peer, false, id).ok()?;
    let pairs = |h: &RequestHeader| -> Vec<[String; 2]> {
        h.headers
            .iter()
            .map(|(n, v)| [n.as_str().to_owned(), text(v.as_bytes())])
            .collect()
    };
    let (before, after) = (pairs(header), pairs(&upstream));
    let added = after
        .iter()
        .filter(|p| !before.contains(p))
        .cloned()
        .collect();
    let mut removed: Vec<String> = before
        .iter()
        .filter(|p| !after.contains(p))
        .map(|[n, _]| n.clone())
        .collect();
    removed.dedup();
    Some(Upstream {
        request: request_line(&upstream),
        added,
        removed,
    })
}

/// Method, target and Host.
fn request_line(header: &RequestHeader) -> [String; 3] {
    let host = header.headers.get(http::header::HOST);
    [
        header.method.to_string(),
        text(header.raw_path()),
        host.map_or(String::new(), |v| text(v.as_bytes())),
    ]
}

/// The headers tokengate writes for `response`, after its preset ones.
fn header_pairs(response: &crate::respond::Response) -> Vec<[String; 2]> {
    response
        .headers
        .iter()
        .map(|((_, name), value)| [(*name).to_owned(), text(value.as_bytes())])
        .collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl std::fmt::Display for Explanation {
    /// The text form: one fact a line, in the order the proxy decides.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [method, target, host] = &self.request;
        writeln!(f, "request     {method} {target} (Host: {host})")?;
        if let Some([method, path]) = &self.canonical {
            writeln!(f, "canonical   {method} {path}")?;
        }
        if let Some([rank, name, group, auth]) = &self.route {
            writeln!(
                f,
                "route       #{rank} {name} (upstream {group}, auth {auth})"
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
        if let Some([route, key]) = &self.limit {
            writeln!(f, "limit       route {route}, key {key}")?;
        }
        writeln!(f, "plan        {}", self.plan)?;
        if let Some(status) = self.status {
            writeln!(f, "answer      {status}")?;
            for [name, value] in &self.headers {
                writeln!(f, "            {name}: {value}")?;
            }
            if let Some(body) = &self.body {
                writeln!(f, "            {body}")?;
            }
        }
        if let Some(up) = &self.upstream {
            let [method, target, host] = &up.request;
            writeln!(f, "upstream    {method} {target} (Host: {host})")?;
            for [name, value] in &up.added {
                writeln!(f, "  + {name}: {value}")?;
            }
            for name in &up.removed {
                writeln!(f, "  - {name}")?;
            }
        }
        Ok(())
    }
}
