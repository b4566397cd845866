//! `authorize:`, the authorization listener gateways ask: off unless configured.

use std::net::SocketAddr;

use serde::Deserialize;

use super::values::listen_address;
use super::{invalid, ConfigError, Env};
use crate::decision::{Authorize, UnseenBody};
use crate::forwarded::TrustedProxies;

/// The authorization listener and how it decides.
#[derive(Debug, Clone)]
pub struct AuthorizeSettings {
    /// Where gateways ask.
    pub listen: SocketAddr,
    /// Who may ask, and what to do with bodies they keep.
    pub decision: Authorize,
}

/// `authorize:` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawAuthorize {
    listen: Option<String>,
    gateways: Option<Gateways>,
    unseen_body: UnseenBody,
}

/// Gateway addresses: a list, or one comma-separated line as the environment gives them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Gateways {
    List(Vec<String>),
    Line(String),
}

/// Each address of a comma-separated line.
fn split(line: &str) -> Vec<String> {
    line.split(',').map(|a| a.trim().to_owned()).collect()
}

/// Gateways believed unless configured: the same host only.
const LOOPBACK: [&str; 2] = ["127.0.0.0/8", "::1/128"];

/// The section resolved; `TOKENGATE_AUTHORIZE_LISTEN` alone turns it on.
pub(super) fn resolve(
    raw: Option<RawAuthorize>,
    env: &impl Env,
    others: &[SocketAddr],
) -> Result<Option<AuthorizeSettings>, ConfigError> {
    const VAR: &str = "TOKENGATE_AUTHORIZE_LISTEN";
    let raw = match (raw, env.var(VAR).is_some()) {
        (None, false) => return Ok(None),
        (raw, _) => raw.unwrap_or_default(),
    };
    if raw.listen.is_none() && env.var(VAR).is_none() {
        return Err(invalid(
            "tokengate.authorize.listen",
            "is required: the address gateways ask, like 127.0.0.1:9191",
        ));
    }
    let listen = listen_address(env, VAR, "authorize.listen", raw.listen, "")?;
    if others.contains(&listen) {
        return Err(invalid(
            "tokengate.authorize.listen",
            "must differ from the other listeners",
        ));
    }
    const GATEWAYS: &str = "TOKENGATE_AUTHORIZE_GATEWAYS";
    let (key, gateways) = match (env.var(GATEWAYS), raw.gateways) {
        (Some(line), _) => (GATEWAYS, split(&line)),
        (None, Some(Gateways::List(list))) => ("tokengate.authorize.gateways", list),
        (None, Some(Gateways::Line(line))) => ("tokengate.authorize.gateways", split(&line)),
        (None, None) => (
            "tokengate.authorize.gateways",
            LOOPBACK.map(str::to_owned).to_vec(),
        ),
    };
    let gateways = TrustedProxies::parse(&gateways).map_err(|e| invalid(key, e))?;
    Ok(Some(AuthorizeSettings {
        listen,
        decision: Authorize {
            gateways,
            unseen_body: raw.unseen_body,
        },
    }))
}
