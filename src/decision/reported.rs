//! The decision on a request a gateway reports (nginx `auth_request`, Traefik `forwardAuth`,
//! Caddy `forward_auth`, Envoy `ext_authz`): [`decide`](super::decide) itself, on the request
//! the gateway describes, and then what the gateway cannot do that the proxy does. A gateway
//! forwards the request as its client sent it, so a request tokengate would rewrite is refused;
//! it answers nothing itself, so the token route is refused here; and it sends no body unless
//! configured to, so a body whose `_method` field could change the decision is dealt with as
//! [`UnseenBody`] says.

use http::Method;
use pingora::http::RequestHeader;
use serde::Deserialize;

use super::forward::{owned_headers, same_header};
use super::{decide, Action, Decision, ForwardBody, Refused, Request, Settings, Step};
use crate::error::{ApiError, ErrorCode};
use crate::forwarded::TrustedProxies;
use crate::request::method::OVERRIDABLE;
use crate::request::Framing;
use crate::shared::Shared;

/// What the authorizer does with a `POST` whose body a framework reads fields from (a form,
/// multipart, JSON or untyped body) when the gateway does not send that body along.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnseenBody {
    /// Always refused, as the proxy would refuse the `_method` field it cannot rule out: such
    /// requests come through a gateway that sends bodies, or the proxy.
    #[default]
    Refuse,
    /// Allowed only when no method a `_method` field could name would be refused: an override
    /// then gains the caller nothing it could not ask for directly (though the proxy, seeing
    /// the field, would refuse it).
    Guard,
    /// Decided as if the body had no `_method` field: the application honours none.
    Ignore,
}

/// How the authorization listener decides on what gateways report.
#[derive(Debug, Clone, Default)]
pub struct Authorize {
    /// Peers believed when they report a request; anyone else is refused.
    pub gateways: TrustedProxies,
    /// What to do with a body the gateway did not send.
    pub unseen_body: UnseenBody,
}

/// A body the gateway did not send could change the method, and the decision with it.
const UNSEEN_BODY: ApiError = ApiError::new(
    ErrorCode::UnsupportedMediaType,
    "The gateway does not send request bodies to tokengate, and a _method field in this one could change what the request may do; send it without a form, multipart or JSON body, or through a gateway that forwards bodies.",
);
/// The token route and the key set are answered by tokengate itself.
const ANSWERED_BY_PROXY: ApiError = ApiError::new(
    ErrorCode::InvalidRequest,
    "The token route and the key set are answered by tokengate's proxy listener: route them there, not through the gateway's authorization.",
);
/// The gateway forwards the request as sent, not in the form tokengate checked.
const NOT_CANONICAL: ApiError = ApiError::new(
    ErrorCode::InvalidRequest,
    "Behind a gateway the request goes on as sent: send its path, host and method override in canonical form (no dot segments, repeated slashes, encoded unreserved characters or lower-case hosts).",
);
/// A header spelled with `_` that an application would read as one tokengate sets.
const UNDERSCORE_SPELLING: ApiError = ApiError::new(
    ErrorCode::InvalidRequest,
    "A header name with '_' in place of '-' spells a header tokengate sets; a gateway would pass it on, so it is refused.",
);

/// The decision on a request a gateway reported: its head, its `body` when the gateway sent it
/// (then `request.body` is it, and `request.framing` its length), its client at `request.peer`.
pub fn decide_reported(
    settings: &Settings,
    request: &Request<'_>,
    unseen: UnseenBody,
    sign_outs: Option<&Shared>,
) -> Decision {
    if underscore_spelling(settings, request.header) {
        return Decision::refused(UNDERSCORE_SPELLING.into());
    }
    let decision = match decide(settings, request, sign_outs) {
        Step::Decided(decision) if body_unseen(&decision, request) => {
            unseen_body(settings, request, unseen, sign_outs)
        }
        Step::Decided(decision) => decision,
        // Only the token route reads a body it does not forward.
        Step::ReadAhead(ahead, _) if !ahead.forwarded => answered_by_proxy(),
        Step::ReadAhead(..) => unseen_body(settings, request, unseen, sign_outs),
    };
    as_sent(decision)
}

/// A forwarded request whose body would be scanned as it streams, when the gateway keeps it.
fn body_unseen(decision: &Decision, request: &Request<'_>) -> bool {
    request.body.is_none()
        && matches!(&decision.action, Action::Forward(f) if matches!(f.body, ForwardBody::Scanned(_)))
}

/// A request whose body could carry a `_method` field the gateway does not show: decided
/// without the body first (its head's own refusal comes first, as in the proxy), then as
/// `unseen` says.
fn unseen_body(
    settings: &Settings,
    request: &Request<'_>,
    unseen: UnseenBody,
    sign_outs: Option<&Shared>,
) -> Decision {
    let mut decision = decided(settings, &bodiless(request, request.header), sign_outs);
    if !matches!(decision.action, Action::Forward(_)) {
        return decision;
    }
    let refuse = match unseen {
        UnseenBody::Ignore => false,
        UnseenBody::Refuse => true,
        // Every method the body could switch to must be one the caller may use here anyway.
        UnseenBody::Guard => !every_method_forwarded(settings, request, sign_outs),
    };
    if refuse {
        decision.action = Action::Refuse(UNSEEN_BODY.into());
    }
    decision
}

/// Whether every method an override may name would be forwarded on `request`'s path.
fn every_method_forwarded(
    settings: &Settings,
    request: &Request<'_>,
    sign_outs: Option<&Shared>,
) -> bool {
    let mut header = request.header.clone();
    OVERRIDABLE.iter().all(|method| {
        let Ok(method) = Method::from_bytes(method.as_bytes()) else {
            return false;
        };
        header.set_method(method);
        let other = decided(settings, &bodiless(request, &header), sign_outs);
        matches!(other.action, Action::Forward(_))
    })
}

/// `request` with `header`, and no body.
fn bodiless<'a>(request: &Request<'a>, header: &'a RequestHeader) -> Request<'a> {
    Request {
        header,
        framing: Framing::Empty,
        body: None,
        ..*request
    }
}

/// One pass on a request without a body, which never asks for one.
fn decided(settings: &Settings, request: &Request<'_>, sign_outs: Option<&Shared>) -> Decision {
    match decide(settings, request, sign_outs) {
        Step::Decided(decision) => decision,
        Step::ReadAhead(..) => answered_by_proxy(),
    }
}

/// The refusal of the token route (or the key set), which a gateway cannot answer for tokengate.
fn answered_by_proxy() -> Decision {
    let mut decision = Decision::refused(ANSWERED_BY_PROXY.into());
    decision.facts.answered_here = true;
    decision
}

/// The decision as a gateway can carry it out: one that would answer in-process, or forward
/// a rewritten request, is refused instead.
fn as_sent(mut decision: Decision) -> Decision {
    let refusal: Option<Refused> = match &decision.action {
        Action::Mint(_) | Action::Jwks => Some(ANSWERED_BY_PROXY.into()),
        Action::Forward(forward) if forward.target.is_some() || forward.host_rewritten => {
            Some(NOT_CANONICAL.into())
        }
        _ => None,
    };
    if let Some(refused) = refusal {
        decision.action = Action::Refuse(refused);
    }
    decision
}

/// Whether a header name is a `_` spelling of one tokengate owns ([`owned_headers`]): Rack and
/// CGI read it as that header, and no gateway removes it by name.
fn underscore_spelling(settings: &Settings, header: &RequestHeader) -> bool {
    header.headers.keys().any(|name| {
        let n = name.as_str();
        n.contains('_') && owned_headers(settings).any(|owned| same_header(n, owned))
    })
}
