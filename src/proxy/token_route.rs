//! The routes tokengate answers itself: the token route and the JWKS.

use bytes::BytesMut;
use http::Method;
use pingora::proxy::Session;

use super::admission::{Counted, Refused};
use super::head::{authorization_values, expects_continue, token_request, unix_now};
use super::{RequestState, Tokengate};
use crate::error::{ApiError, ErrorCode};
use crate::metrics;
use crate::respond::{self, Response};
use crate::token::RATE_LIMITED;

impl Tokengate {
    /// Serves the JWKS; always ends the request.
    pub(super) async fn jwks_route(
        &self,
        session: &mut Session,
        request: &mut RequestState,
    ) -> pingora::Result<()> {
        if let Err(refused) = jwks_method(&session.req_header().method) {
            return self.refuse(session, request, &refused).await;
        }
        let Some((body, cache)) = &self.jwks else {
            return Ok(());
        };
        let response = Response::jwks(body.clone(), cache, &request.id);
        respond::send(session, response).await
    }

    /// Answers the token route; always ends the request.
    pub(super) async fn token_route(
        &self,
        session: &mut Session,
        request: &mut RequestState,
    ) -> pingora::Result<()> {
        match self.mint(session, request).await {
            Ok(response) => respond::send(session, response).await,
            Err(refused) if refused.close => {
                if let Err(e) = self.refuse(session, request, &refused).await {
                    log::debug!("client gone before its refusal was written: {e}");
                }
                Ok(())
            }
            Err(refused) => self.refuse(session, request, &refused).await,
        }
    }

    /// Reads the token request, admits it as forwarding admits a request, and mints.
    async fn mint(
        &self,
        session: &mut Session,
        request: &mut RequestState,
    ) -> Result<Response, Refused> {
        token_method(&session.req_header().method)?;
        let body = self.read_body(session).await.map_err(|error| Refused {
            // The rest of the body stays unread (too large, or unreadable): close, don't drain.
            close: true,
            ..error.into()
        })?;
        let header = session.req_header();
        // A `Vec`, not inline: what is prepared borrows it across the admission below.
        let authorization: Vec<&[u8]> = authorization_values(header);
        let asked = token_request(header, &authorization, &body);
        let prepared = self.tokens.prepare(&asked, unix_now())?;
        self.signed_in(prepared.subject(), prepared.issued_at())?;
        let counted = self.mint_rate.map(|rate| Counted {
            scope: "mint",
            key: prepared.subject(),
            rate,
            local: self.limiter.as_ref(),
            spent: RATE_LIMITED,
        });
        self.admit(counted).await?;
        let minted = prepared.mint()?;
        metrics::get().minted.inc();
        let response = Response::minted(
            minted.body,
            &minted.session_token,
            &request.id,
            request.start.elapsed(),
        );
        request.decided.subject = Some(minted.subject);
        Ok(response)
    }

    /// Reads the whole body within the limit: `Content-Length` first, then a running count.
    pub(super) async fn read_body(&self, session: &mut Session) -> Result<BytesMut, ApiError> {
        read_body(session, self.tokens.permission.limits.body_limit).await
    }
}

/// Only `POST` mints.
pub fn token_method(method: &Method) -> Result<(), Refused> {
    match method == Method::POST {
        true => Ok(()),
        false => Err(Refused::method(
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "Use POST on the token endpoint.",
            ),
            "POST",
        )),
    }
}

/// The key set is read with `GET` or `HEAD`.
pub fn jwks_method(method: &Method) -> Result<(), Refused> {
    match method == Method::GET || method == Method::HEAD {
        true => Ok(()),
        false => Err(Refused::method(
            ApiError::new(ErrorCode::MethodNotAllowed, "Use GET on the key set."),
            "GET, HEAD",
        )),
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
    if expects_continue(session.req_header()) {
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
