//! Acting on the answers tokengate gives itself: the token route's mint and the JWKS.

use pingora::proxy::Session;

use super::admission::Counted;
use super::{RequestState, Tokengate};
use crate::decision::Refused;
use crate::metrics;
use crate::respond::{self, Response};
use crate::token::{Prepared, RATE_LIMITED};

impl Tokengate {
    /// Serves the JWKS the decision chose to answer.
    pub(super) async fn answer_jwks(
        &self,
        session: &mut Session,
        request: &mut RequestState,
    ) -> pingora::Result<()> {
        let Some(jwks) = &self.decision.jwks else {
            return Ok(());
        };
        let response = Response::jwks(jwks.body.clone(), &jwks.cache_control, &request.id);
        respond::send(session, response).await
    }

    /// Mints the token request the decision prepared, once its subject's mint limit admits it.
    pub(super) async fn answer_mint(
        &self,
        session: &mut Session,
        request: &mut RequestState,
        prepared: Prepared,
    ) -> pingora::Result<()> {
        let counted = self.mint_rate.map(|rate| Counted {
            scope: "mint",
            key: prepared.subject(),
            rate,
            local: self.limiter.as_ref(),
            spent: RATE_LIMITED,
        });
        if let Err(refused) = self.admit(counted).await {
            return self.refuse(session, request, &refused).await;
        }
        let minted = match self.decision.tokens.mint(prepared) {
            Ok(minted) => minted,
            Err(error) => return self.refuse(session, request, &Refused::from(error)).await,
        };
        metrics::get().minted.inc();
        let response = Response::minted(
            minted.body,
            &minted.session_token,
            &request.id,
            request.start.elapsed(),
        );
        respond::send(session, response).await
    }
}
