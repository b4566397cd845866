//! The authorization listener: gateways that already front an application (nginx
//! `auth_request`, Traefik `forwardAuth`, Caddy `forward_auth`, Envoy `ext_authz`) ask it
//! whether a request may pass, and with which headers. It reads the gateway's report
//! ([`report`]), takes the same decision the proxy takes ([`decision::decide_reported`]),
//! counts the route's limit as the proxy does, and answers in the gateway's convention
//! ([`answer`]). Only configured gateway addresses are believed.

pub mod answer;
pub mod report;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::BytesMut;
use http::HeaderValue;
use pingora::apps::http_app::ServeHttp;
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;

use crate::access_log::{self, Entry};
use crate::decision::{
    decide_reported, grpc_call, read_body, request_id, unix_now, Action, Decision, Facts, Refused,
    Request, Settings, READ_AHEAD_LIMIT,
};
use crate::error::{ApiError, ErrorCode};
use crate::metrics::{self, Caller, Outcome, RouteKind};
use crate::proxy::Tokengate;
use crate::request::Framing;
use crate::shared::Shared;
use answer::Allowed;

/// A peer that is not a configured gateway.
const NOT_A_GATEWAY: ApiError = ApiError::new(
    ErrorCode::Forbidden,
    "This address is not one of the gateways configured to ask tokengate (authorize.gateways).",
);

/// Answers gateways' authorization requests with the configuration in force.
pub struct AuthorizeApp {
    current: Arc<ArcSwap<Tokengate>>,
}

impl AuthorizeApp {
    /// An authorizer deciding with whatever configuration `current` holds.
    pub fn new(current: Arc<ArcSwap<Tokengate>>) -> AuthorizeApp {
        AuthorizeApp { current }
    }

    /// The answer to one authorization request, and what it came to.
    async fn answer(
        &self,
        gate: &Tokengate,
        session: &mut ServerSession,
        id: &HeaderValue,
        start: Instant,
    ) -> (Option<Caller>, Outcome, http::Response<Vec<u8>>) {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let asked = ask(
            &gate.decision,
            session,
            peer,
            unix_now(),
            gate.shared.as_deref(),
        )
        .await;
        if let Some(header) = &asked.header {
            let id = id.to_str().unwrap_or_default();
            gate.record(header, id, &asked.decision.facts);
        }
        let Asked {
            caller,
            decision,
            grpc,
            header: asked_header,
        } = asked;
        let action = match decision.action {
            Action::Forward(forward) => match gate.admit_route(&decision.facts).await {
                Ok(()) => Action::Forward(forward),
                Err(refused) => Action::Refuse(refused),
            },
            other => other,
        };
        let (outcome, response) =
            respond(caller, &gate.decision, &decision.facts, &action, id, grpc);
        let reason = match &action {
            Action::Refuse(refused) => {
                metrics::get().record_rejection(refused.error.code);
                Some(refused.error.code.as_str())
            }
            _ => None,
        };
        if gate.access_log.enabled() {
            let asked = asked_header.as_ref().unwrap_or(session.req_header());
            let facts = &decision.facts;
            gate.access_log.write(&Entry {
                time: access_log::now_rfc3339(),
                request_id: id.to_str().unwrap_or_default(),
                method: asked.method.as_str(),
                path: facts.canonical_path.as_deref().unwrap_or(asked.uri.path()),
                status: response.status().as_u16(),
                route: RouteKind::Authorize.as_str(),
                duration: start.elapsed().as_secs_f64(),
                upstream_duration: None,
                bytes_in: session.body_bytes_read(),
                bytes_out: response.body().len(),
                subject: facts.subject.as_deref(),
                reason,
            });
        }
        (caller, outcome, response)
    }
}

/// A gateway's question, decided.
pub struct Asked {
    /// Which convention asked, when the path names one.
    pub caller: Option<Caller>,
    /// The original request the gateway reported, when it could be read.
    pub header: Option<RequestHeader>,
    /// The decision: the proxy's own on that request, or a refusal of the question.
    pub decision: Decision,
    /// Whether the original request is a gRPC call, answered in gRPC's form.
    pub grpc: bool,
}

/// Decides on the question `session` holds, asked from `peer`: believed only from a configured
/// gateway, read in the convention its path names, decided as the proxy decides
/// ([`decide_reported`]). Limits are not counted here; the caller admits them.
pub async fn ask(
    settings: &Settings,
    session: &mut ServerSession,
    peer: Option<IpAddr>,
    now: u64,
    sign_outs: Option<&Shared>,
) -> Asked {
    let caller = report::caller(session.req_header().uri.path());
    let refused = |refused: Refused| Asked {
        caller,
        header: None,
        decision: Decision::refused(refused),
        grpc: false,
    };
    if !peer.is_some_and(|ip| settings.authorize.gateways.contains(ip)) {
        return refused(NOT_A_GATEWAY.into());
    }
    let report = match report::read(session.req_header()) {
        Ok(report) => report,
        Err(error) => return refused(error.into()),
    };
    let body = match gateway_body(session, report.body_sent).await {
        Ok(body) => body,
        Err(error) => return refused(error.into()),
    };
    let request = Request {
        header: &report.header,
        framing: match &body {
            Some(body) if body.is_empty() => Framing::Empty,
            Some(body) => Framing::Length(body.len() as u64),
            None => report.framing,
        },
        peer: report.client.or(peer),
        body: body.as_deref(),
        now,
    };
    crate::decision::keys_for(settings, &report.header, now).await;
    let unseen = settings.authorize.unseen_body;
    let decision = decide_reported(settings, &request, unseen, sign_outs);
    Asked {
        caller: Some(report.caller),
        grpc: grpc_call(&report.header),
        header: Some(report.header),
        decision,
    }
}

/// The answer to a gateway for `action`, decided with `facts`, and what it came to.
pub fn respond(
    caller: Option<Caller>,
    settings: &Settings,
    facts: &Facts,
    action: &Action,
    id: &HeaderValue,
    grpc: bool,
) -> (Outcome, http::Response<Vec<u8>>) {
    // A question that named no convention is answered as Traefik and Caddy read answers.
    let convention = caller.unwrap_or(Caller::Traefik);
    let refused = match action {
        Action::Forward(forward) => {
            let allowed = Allowed {
                subject: facts.subject.as_deref(),
                token: facts.token.as_ref(),
                forward,
            };
            return (
                Outcome::Allow,
                answer::allow(convention, settings, &allowed, id),
            );
        }
        Action::Refuse(refused) => refused.clone(),
        // `decide_reported` refuses what only the proxy can answer.
        Action::Mint(_) | Action::Jwks => ApiError::new(
            ErrorCode::Internal,
            "An in-process answer reached the authorizer.",
        )
        .into(),
    };
    (
        Outcome::Refuse,
        answer::refuse(convention, &refused, id, grpc),
    )
}

/// The body of the authorization request when it is the original one, read whole; otherwise
/// whatever came is read and dropped, so the connection can serve the next question.
async fn gateway_body(
    session: &mut ServerSession,
    sent: bool,
) -> Result<Option<BytesMut>, ApiError> {
    let body = read_body(session, READ_AHEAD_LIMIT).await?;
    Ok(sent.then_some(body))
}

#[async_trait]
impl ServeHttp for AuthorizeApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let start = Instant::now();
        let gate = self.current.load_full();
        let id = request_id(session.req_header());
        let (caller, outcome, response) = self.answer(&gate, session, &id, start).await;
        if response.status().is_server_error() || response.status() == 413 {
            // The body may be left unread.
            session.set_keepalive(None);
        }
        let m = metrics::get();
        if let Some(caller) = caller {
            m.record_decision(caller, outcome);
        }
        let seconds = start.elapsed().as_secs_f64();
        m.record_request(RouteKind::Authorize, response.status().as_u16(), seconds);
        response
    }
}
