//! The authorization listener: gateways that already front an application (nginx
//! `auth_request`, Traefik `forwardAuth`, Caddy `forward_auth`, Envoy `ext_authz`) ask it
//! whether a request may pass, and with which headers. It reads the gateway's report
//! ([`report`]), takes the same decision the proxy takes ([`decision::decide_reported`]),
//! counts the route's limit as the proxy does, and answers in the gateway's convention
//! ([`answer`]). Only configured gateway addresses are believed.

pub mod answer;
pub mod report;

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::BytesMut;
use http::HeaderValue;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::decision::{
    decide_reported, grpc_call, read_body, request_id, unix_now, Action, Refused, Request,
    READ_AHEAD_LIMIT,
};
use crate::error::{ApiError, ErrorCode};
use crate::metrics::{self, Caller, Outcome, RouteKind};
use crate::proxy::Tokengate;
use crate::request::Framing;
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
    ) -> (Option<Caller>, Outcome, http::Response<Vec<u8>>) {
        let caller = report::caller(session.req_header().uri.path());
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        if !peer.is_some_and(|ip| gate.decision.authorize.gateways.contains(ip)) {
            return refused(caller, NOT_A_GATEWAY.into(), id);
        }
        let report = match report::read(session.req_header()) {
            Ok(report) => report,
            Err(error) => return refused(caller, error.into(), id),
        };
        let body = match gateway_body(session, report.body_sent).await {
            Ok(body) => body,
            Err(error) => return refused(caller, error.into(), id),
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
            now: unix_now(),
        };
        let unseen = gate.decision.authorize.unseen_body;
        let decision = decide_reported(&gate.decision, &request, unseen, gate.shared.as_deref());
        gate.record(
            &report.header,
            id.to_str().unwrap_or_default(),
            &decision.facts,
        );
        let caller = Some(report.caller);
        let refusal = match decision.action {
            Action::Forward(forward) => match gate.admit_route(&decision.facts).await {
                Ok(()) => {
                    let allowed = Allowed {
                        subject: decision.facts.subject.as_deref(),
                        token: decision.facts.token.as_ref(),
                        forward: &forward,
                    };
                    let response = answer::allow(report.caller, &gate.decision, &allowed, id);
                    return (caller, Outcome::Allow, response);
                }
                Err(refused) => refused,
            },
            Action::Refuse(refused) => refused,
            // `decide_reported` refuses what only the proxy can answer.
            Action::Mint(_) | Action::Jwks => ApiError::new(
                ErrorCode::Internal,
                "An in-process answer reached the authorizer.",
            )
            .into(),
        };
        let grpc = grpc_call(&report.header);
        count_refusal(&refusal);
        let response = answer::refuse(report.caller, &refusal, id, grpc);
        (caller, Outcome::Refuse, response)
    }
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

/// A refusal before any decision.
fn refused(
    caller: Option<Caller>,
    refused: Refused,
    id: &HeaderValue,
) -> (Option<Caller>, Outcome, http::Response<Vec<u8>>) {
    count_refusal(&refused);
    let response = answer::refuse(caller.unwrap_or(Caller::Traefik), &refused, id, false);
    (caller, Outcome::Refuse, response)
}

/// Counts a refusal by its code, as the proxy does.
fn count_refusal(refused: &Refused) {
    metrics::get()
        .rejections
        .with_label_values(&[refused.error.code.as_str()])
        .inc();
}

#[async_trait]
impl ServeHttp for AuthorizeApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let start = Instant::now();
        let gate = self.current.load_full();
        let id = request_id(session.req_header());
        let (caller, outcome, response) = self.answer(&gate, session, &id).await;
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
