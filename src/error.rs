//! Every error a client can see, and the one place that maps it to a status and a code.

use std::fmt;

/// The SPEC's error codes; each has exactly one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 400: malformed body, bad JSON, ambiguous `Authorization`.
    InvalidRequest,
    /// 401: no `Authorization` header, or an unknown scheme.
    MissingToken,
    /// 401: malformed JWT, bad signature, disallowed algorithm, unknown `kid`, missing claims.
    InvalidToken,
    /// 401: `exp` has passed.
    TokenExpired,
    /// 401: `nbf` lies in the future.
    TokenNotYetValid,
    /// 403: the request asks for more than the caller's token grants.
    Escalation,
    /// 403: a forwarded route requires an ability the token does not grant.
    Forbidden,
    /// 405: any method but `POST` on the token path.
    MethodNotAllowed,
    /// 413: body over the limit.
    PayloadTooLarge,
    /// 415: a body of any other content type.
    UnsupportedMediaType,
    /// 422: the permission breaks a rule.
    InvalidPermission,
    /// 429: the subject minted more than its rate.
    RateLimited,
    /// 502: the upstream refused or reset the connection.
    UpstreamUnavailable,
    /// 504: the upstream did not answer in time.
    UpstreamTimeout,
    /// 503: shared state (Redis) a check needs cannot be reached, and the check fails closed.
    Unavailable,
    /// 500: a fault of tokengate itself, never of client input.
    Internal,
}

impl ErrorCode {
    /// Every code, for metrics that want a zero series per reason.
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::InvalidRequest,
        ErrorCode::MissingToken,
        ErrorCode::InvalidToken,
        ErrorCode::TokenExpired,
        ErrorCode::TokenNotYetValid,
        ErrorCode::Escalation,
        ErrorCode::Forbidden,
        ErrorCode::MethodNotAllowed,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::InvalidPermission,
        ErrorCode::RateLimited,
        ErrorCode::UpstreamUnavailable,
        ErrorCode::UpstreamTimeout,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The HTTP status this code is answered with.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest => 400,
            ErrorCode::MissingToken
            | ErrorCode::InvalidToken
            | ErrorCode::TokenExpired
            | ErrorCode::TokenNotYetValid => 401,
            ErrorCode::Escalation | ErrorCode::Forbidden => 403,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::InvalidPermission => 422,
            ErrorCode::RateLimited => 429,
            ErrorCode::UpstreamUnavailable => 502,
            ErrorCode::UpstreamTimeout => 504,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }

    /// The machine-readable `error` field.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::MissingToken => "missing_token",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::TokenNotYetValid => "token_not_yet_valid",
            ErrorCode::Escalation => "escalation",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::InvalidPermission => "invalid_permission",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal_error",
        }
    }

    /// The gRPC status code a gRPC client gets instead (grpc/doc/statuscodes.md).
    pub fn grpc_status(self) -> u8 {
        match self {
            ErrorCode::InvalidRequest
            | ErrorCode::UnsupportedMediaType
            | ErrorCode::InvalidPermission => 3, // INVALID_ARGUMENT
            ErrorCode::MissingToken
            | ErrorCode::InvalidToken
            | ErrorCode::TokenExpired
            | ErrorCode::TokenNotYetValid => 16, // UNAUTHENTICATED
            ErrorCode::Escalation | ErrorCode::Forbidden => 7, // PERMISSION_DENIED
            ErrorCode::MethodNotAllowed => 12,                 // UNIMPLEMENTED
            ErrorCode::PayloadTooLarge | ErrorCode::RateLimited => 8, // RESOURCE_EXHAUSTED
            ErrorCode::UpstreamTimeout => 4,                   // DEADLINE_EXCEEDED
            ErrorCode::UpstreamUnavailable | ErrorCode::Unavailable => 14, // UNAVAILABLE
            ErrorCode::Internal => 13,                         // INTERNAL
        }
    }

    /// The `WWW-Authenticate` value a 401 carries, `None` for other statuses.
    pub fn www_authenticate(self) -> Option<&'static str> {
        match self {
            ErrorCode::MissingToken => Some(r#"Bearer realm="tokengate", error="invalid_request""#),
            ErrorCode::InvalidToken | ErrorCode::TokenExpired | ErrorCode::TokenNotYetValid => {
                Some(r#"Bearer realm="tokengate", error="invalid_token""#)
            }
            _ => None,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error answered to a client: a code and one sentence that never quotes client data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiError {
    /// What went wrong, in the SPEC's vocabulary.
    pub code: ErrorCode,
    /// One human sentence; static so it can never carry a token, claim value or key.
    pub message: &'static str,
}

impl ApiError {
    /// An error with its code and sentence.
    pub const fn new(code: ErrorCode, message: &'static str) -> Self {
        ApiError { code, message }
    }

    /// The JSON body `{"error":"…","message":"…"}`.
    pub fn body(&self) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            error: &'a str,
            message: &'a str,
        }
        // Serializing two plain strings cannot fail; fall back to an empty object regardless.
        serde_json::to_vec(&Body {
            error: self.code.as_str(),
            message: self.message,
        })
        .unwrap_or_else(|_| b"{}".to_vec())
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_compact_json_with_code_first() {
        let e = ApiError::new(ErrorCode::TokenExpired, "The token has expired.");
        assert_eq!(
            e.body(),
            br#"{"error":"token_expired","message":"The token has expired."}"#
        );
        assert_eq!(e.code.status(), 401);
    }

    #[test]
    fn only_401s_carry_www_authenticate() {
        for code in ErrorCode::ALL {
            assert_eq!(
                code.www_authenticate().is_some(),
                code.status() == 401,
                "{code}"
            );
        }
    }
}
