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
        ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::InvalidCert
        | ErrorType::HandshakeError => (UpstreamErrorKind::Tls, ErrorCode::UpstreamUnavailable),
        _ if tls_alert(error) => (UpstreamErrorKind::Tls, ErrorCode::UpstreamUnavailable),
        _ => (UpstreamErrorKind::Other, ErrorCode::UpstreamUnavailable),
    }
}

/// Whether a TLS error lies under `error`: a TLS 1.3 server refuses a client certificate only
/// after the handshake, so Pingora meets the alert as a read error.
fn tls_alert(error: &Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error.root_cause());
    while let Some(e) = cause {
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        if e.is::<rustls::Error>() || inner.is_some_and(|i| i.is::<rustls::Error>()) {
            return true;
        }
        cause = e.source();
    }
    false
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
            code(err(ErrorType::InvalidCert, ErrorSource::Upstream)),
            Some((ErrorCode::UpstreamUnavailable, Some(UpstreamErrorKind::Tls)))
        );
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        let mut read = err(ErrorType::ReadError, ErrorSource::Upstream);
        read.set_cause(std::io::Error::other(alert));
        assert_eq!(
            code(read),
            Some((ErrorCode::UpstreamUnavailable, Some(UpstreamErrorKind::Tls)))
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
