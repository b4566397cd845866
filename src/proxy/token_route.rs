//! The routes tokengate answers itself: the token route and the JWKS.

use bytes::BytesMut;
use http::Method;
use pingora::proxy::Session;

use std::time::Instant;

use super::{
    authorization_values, unix_now, RequestCtx, Tokengate, LIMITS_UNAVAILABLE, REVOKED,
    SIGN_OUTS_UNAVAILABLE,
};
use crate::error::{ApiError, ErrorCode};
use crate::limits::retry_after_secs;
use crate::metrics;
use crate::respond::{self, Response};
use crate::shared::{Admission, Standing};
use crate::token::{TokenRequest, RATE_LIMITED};

impl Tokengate {
    /// Serves the JWKS; always ends the request.
    pub(super) async fn jwks_route(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let method = &session.req_header().method;
        if method != Method::GET && method != Method::HEAD {
            let error = ApiError::new(ErrorCode::MethodNotAllowed, "Use GET on the key set.");
            return self.refuse_unread(session, ctx, &error, "GET, HEAD").await;
        }
        let Some((body, cache)) = &self.jwks else {
            return Ok(());
        };
        let response = Response::jwks(body.clone(), cache, &ctx.request_id);
        respond::send(session, response).await
    }

    /// Answers the token route; always ends the request.
    pub(super) async fn token_route(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if session.req_header().method != Method::POST {
            let error = ApiError::new(
                ErrorCode::MethodNotAllowed,
                "Use POST on the token endpoint.",
            );
            return self.refuse_unread(session, ctx, &error, "POST").await;
        }
        let body = match self.read_body(session).await {
            Ok(body) => body,
            Err(error) => {
                // The rest of the body stays unread (too large, or unreadable): close, don't drain.
                session.set_keepalive(None);
                if let Err(e) = self.refuse(session, ctx, &error, &[]).await {
                    log::debug!("client gone before its refusal was written: {e}");
                }
                return Ok(());
            }
        };
        let header = session.req_header();
        // A `Vec`, not inline: what is prepared borrows it across the refusals below.
        let authorization: Vec<&[u8]> = authorization_values(header);
        let request = TokenRequest {
            authorization: &authorization,
            content_type: header
                .headers
                .get(http::header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            body: &body,
        };
        let prepared = match self.tokens.prepare(&request, unix_now()) {
            Ok(prepared) => prepared,
            Err(error) => return self.refuse(session, ctx, &error, &[]).await,
        };
        match self.standing(prepared.subject(), prepared.issued_at()) {
            Standing::Valid => {}
            Standing::Revoked => return self.refuse(session, ctx, &REVOKED, &[]).await,
            Standing::Unavailable => {
                return self.refuse(session, ctx, &SIGN_OUTS_UNAVAILABLE, &[]).await
            }
        }
        let admission = match (&self.shared, &self.limiter, self.mint_rate) {
            (Some(shared), _, Some(rate)) => shared.admit("mint", prepared.subject(), rate).await,
            (_, Some(limiter), _) => match limiter.admit(prepared.subject(), Instant::now()) {
                Ok(()) => Admission::Admit,
                Err(wait) => Admission::Wait(wait),
            },
            _ => Admission::Admit,
        };
        match admission {
            Admission::Admit => {}
            Admission::Wait(wait) => {
                let retry_after = retry_after_secs(wait).to_string();
                return self
                    .refuse(
                        session,
                        ctx,
                        &RATE_LIMITED,
                        &[(&respond::RETRY_AFTER, &retry_after)],
                    )
                    .await;
            }
            Admission::Unavailable => {
                return self.refuse(session, ctx, &LIMITS_UNAVAILABLE, &[]).await
            }
        }
        match prepared.mint() {
            Ok(minted) => {
                metrics::get().minted.inc();
                ctx.subject = Some(minted.subject);
                let response = Response::minted(
                    minted.body,
                    &minted.session_token,
                    &ctx.request_id,
                    ctx.start.elapsed(),
                );
                respond::send(session, response).await
            }
            Err(error) => self.refuse(session, ctx, &error, &[]).await,
        }
    }

    /// A 405 with `Allow`: a body within the limit is read and dropped first, so the connection
    /// serves the next request; a larger or broken one closes it.
    async fn refuse_unread(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        error: &ApiError,
        allow: &str,
    ) -> pingora::Result<()> {
        if self.read_body(session).await.is_err() {
            session.set_keepalive(None);
        }
        self.refuse(session, ctx, error, &[(&respond::ALLOW, allow)])
            .await
    }

    /// Reads the whole body within the limit: `Content-Length` first, then a running count.
    pub(super) async fn read_body(&self, session: &mut Session) -> Result<BytesMut, ApiError> {
        read_body(session, self.body_limit).await
    }
}

/// Reads a request body of at most `limit` bytes, answering `Expect: 100-continue` first.
pub(super) async fn read_body(session: &mut Session, limit: usize) -> Result<BytesMut, ApiError> {
    const UNREADABLE: ApiError = ApiError::new(
        ErrorCode::InvalidRequest,
        "The request body could not be read: bad chunked framing or a broken connection.",
    );
    const TOO_LARGE: ApiError =
        ApiError::new(ErrorCode::PayloadTooLarge, "The request body is too large.");
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(TOO_LARGE);
    }
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session
            .write_continue_response()
            .await
            .map_err(|_| UNREADABLE)?;
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = session.read_request_body().await.map_err(|_| UNREADABLE)? {
        if body.len() + chunk.len() > limit {
            return Err(TOO_LARGE);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
