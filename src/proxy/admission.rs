//! Acting on what was decided, the same for the token route and for forwarding: a limit
//! counted, and the one way tokengate answers a refusal.

use std::time::Instant;

use pingora::proxy::Session;

use super::{RequestState, Tokengate};
use crate::decision::{self, grpc_call, Refused};
use crate::error::{ApiError, ErrorCode};
use crate::limits::{retry_after_secs, Limiter, RateLimit};
use crate::metrics;
use crate::respond;
use crate::shared::Admission;

/// Limits cannot be checked and they fail closed.
const LIMITS_UNAVAILABLE: ApiError = ApiError::new(
    ErrorCode::Unavailable,
    "The rate limit cannot be checked right now; retry shortly.",
);

/// What one request counts against: a scope (`mint`, or a route's name), its key, its rate,
/// the local limiter used without Redis, and the error owed when it is spent.
pub(super) struct Counted<'a> {
    pub scope: &'a str,
    pub key: &'a str,
    pub rate: RateLimit,
    pub local: Option<&'a Limiter>,
    pub spent: ApiError,
}

impl Tokengate {
    /// Counts a request against its limit, shared through Redis when configured, else in
    /// this process; a limit that cannot be checked fails closed.
    pub(super) async fn admit(&self, counted: Option<Counted<'_>>) -> Result<(), Refused> {
        let Some(c) = counted else {
            return Ok(());
        };
        let admission = match (&self.shared, c.local) {
            (Some(shared), _) => shared.admit(c.scope, c.key, c.rate).await,
            (None, Some(local)) => match local.admit(c.key, Instant::now()) {
                Ok(()) => Admission::Admit,
                Err(wait) => Admission::Wait(wait),
            },
            (None, None) => Admission::Admit,
        };
        match admission {
            Admission::Admit => Ok(()),
            Admission::Wait(wait) => Err(Refused {
                header: Some((&respond::RETRY_AFTER, retry_after_secs(wait).to_string())),
                ..c.spent.into()
            }),
            Admission::Unavailable => Err(LIMITS_UNAVAILABLE.into()),
        }
    }

    /// Answers a refusal and counts it; the connection stays open when the body, if any, can
    /// be dealt with ([`decision::keeps_connection`]).
    pub(super) async fn refuse(
        &self,
        session: &mut Session,
        request: &mut RequestState,
        refused: &Refused,
    ) -> pingora::Result<()> {
        let limit = self.decision.tokens.permission.limits.body_limit;
        if !decision::keeps_connection(session.as_downstream_mut(), refused, limit).await {
            session.set_keepalive(None);
        }
        request.refused(refused.error);
        let response = refused.response(&request.id, grpc_call(session.req_header()));
        respond::send(session, response).await
    }
}

impl RequestState {
    /// Notes the refusal for the access log, and counts it.
    pub(super) fn refused(&mut self, error: ApiError) {
        metrics::get().record_rejection(error.code);
        self.reason = Some(error.code);
    }
}
