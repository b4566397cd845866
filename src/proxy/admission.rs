//! Admission, the same for the token route and for forwarding: a subject signed out, a limit
//! spent, and the one way tokengate refuses a request.

use std::time::Instant;

use pingora::proxy::Session;

use super::head::{body_framing, expects_continue, grpc_call};
use super::{RequestState, Tokengate};
use crate::error::{ApiError, ErrorCode};
use crate::limits::{retry_after_secs, Limiter, RateLimit};
use crate::metrics;
use crate::respond::{self, Response};
use crate::shared::{Admission, Standing};

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
/// Limits cannot be checked and they fail closed.
const LIMITS_UNAVAILABLE: ApiError = ApiError::new(
    ErrorCode::Unavailable,
    "The rate limit cannot be checked right now; retry shortly.",
);

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

impl Refused {
    /// A 405 naming the methods allowed.
    pub(super) fn method(error: ApiError, allow: &str) -> Refused {
        Refused {
            header: Some((&respond::ALLOW, allow.to_owned())),
            ..error.into()
        }
    }

    /// The answer, in the form the client reads (gRPC or the SPEC's JSON).
    pub fn response(&self, request_id: &http::HeaderValue, grpc: bool) -> Response {
        let response = Response::error_for(&self.error, request_id, grpc);
        match &self.header {
            Some((name, value)) => response.with_header(name, value),
            None => response,
        }
    }
}

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
    /// `Ok` unless the subject signed out after `issued_at`, or sign-outs cannot be checked.
    pub(super) fn signed_in(&self, subject: &str, issued_at: Option<f64>) -> Result<(), ApiError> {
        let standing = self.shared.as_ref().map_or(Standing::Valid, |shared| {
            shared.standing(subject, issued_at)
        });
        match standing {
            Standing::Valid => Ok(()),
            Standing::Revoked => Err(REVOKED),
            Standing::Unavailable => Err(SIGN_OUTS_UNAVAILABLE),
        }
    }

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

    /// Answers a refusal and counts it. A body still unread is dealt with first: a client
    /// waiting for `100 Continue` is not invited to send it, and one that cannot be read within
    /// the limit is left; either way the connection closes after the answer. Another is read
    /// and dropped, so the connection serves the next request.
    pub(super) async fn refuse(
        &self,
        session: &mut Session,
        request: &mut RequestState,
        refused: &Refused,
    ) -> pingora::Result<()> {
        let unread = !refused.close && body_framing(session).has_body();
        if refused.close
            || (unread
                && (expects_continue(session.req_header())
                    || self.read_body(session).await.is_err()))
        {
            session.set_keepalive(None);
        }
        request.refused(refused.error);
        let response = refused.response(&request.id, grpc_call(session));
        respond::send(session, response).await
    }
}

impl RequestState {
    /// Notes the refusal for the access log, and counts it.
    pub(super) fn refused(&mut self, error: ApiError) {
        metrics::get()
            .rejections
            .with_label_values(&[error.code.as_str()])
            .inc();
        self.reason = Some(error.code);
    }
}
