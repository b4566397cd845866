//! A failed exchange → the answer the client gets (or none, when it is gone) and the metric.

use pingora::{Error, ErrorSource, ErrorType};

use crate::error::{ApiError, ErrorCode};
use crate::metrics::UpstreamErrorKind;

/// How an upstream error counts and is answered.
pub fn upstream_error_code(error: &Error) -> (UpstreamErrorKind, ErrorCode) {
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

/// The answer to a request that failed with `error`: `None` when the client itself went away
/// (nobody to answer), else the JSON error and, for upstream failures, their kind.
pub fn answer(error: &Error) -> Option<(ApiError, Option<UpstreamErrorKind>)> {
    match error.esource() {
        ErrorSource::Upstream => {
            let (kind, code) = upstream_error_code(error);
            let message = match code {
                ErrorCode::UpstreamTimeout => "The upstream did not answer in time.",
                _ => "The upstream is unavailable.",
            };
            Some((ApiError::new(code, message), Some(kind)))
        }
        ErrorSource::Downstream => match error.etype() {
            ErrorType::ReadError
            | ErrorType::WriteError
            | ErrorType::ConnectionClosed
            | ErrorType::ReadTimedout => None,
            _ => Some((
                ApiError::new(ErrorCode::InvalidRequest, "The request could not be read."),
                None,
            )),
        },
        _ => Some((
            ApiError::new(
                ErrorCode::Internal,
                "tokengate failed to handle the request.",
            ),
            None,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(etype: ErrorType, source: ErrorSource) -> Box<Error> {
        let mut e = Error::new(etype);
        match source {
            ErrorSource::Upstream => e.as_up(),
            ErrorSource::Downstream => e.as_down(),
            _ => e.as_in(),
        }
        e
    }

    #[test]
    fn failures_map_to_the_spec() {
        let code = |e: Box<Error>| answer(&e).map(|(a, k)| (a.code, k));
        assert_eq!(
            code(err(ErrorType::ConnectRefused, ErrorSource::Upstream)),
            Some((
                ErrorCode::UpstreamUnavailable,
                Some(UpstreamErrorKind::Connect)
            ))
        );
        assert_eq!(
            code(err(ErrorType::ReadTimedout, ErrorSource::Upstream)),
            Some((ErrorCode::UpstreamTimeout, Some(UpstreamErrorKind::Timeout)))
        );
        assert_eq!(
            code(err(ErrorType::ConnectionClosed, ErrorSource::Upstream)),
            Some((
                ErrorCode::UpstreamUnavailable,
                Some(UpstreamErrorKind::Other)
            ))
        );
        assert_eq!(
            code(err(ErrorType::ConnectionClosed, ErrorSource::Downstream)),
            None
        );
        assert_eq!(
            code(err(ErrorType::InvalidHTTPHeader, ErrorSource::Downstream)),
            Some((ErrorCode::InvalidRequest, None))
        );
        assert_eq!(
            code(err(ErrorType::InternalError, ErrorSource::Internal)),
            Some((ErrorCode::Internal, None))
        );
    }
}
