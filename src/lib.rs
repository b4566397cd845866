//! tokengate: a Pingora reverse proxy that mints ability tokens in-process.
//!
//! A request reads top to bottom: [`request`] makes it canonical, [`routes`] and [`policy`]
//! decide, [`token`] answers the token route, `proxy` forwards or refuses, `respond` puts
//! tokengate's own answers on the wire, `metrics` and `access_log` observe. The pure modules
//! (`request`, `routes`, `policy`, `token`, `forwarded`, `forward_claims`, `limits`) build without Pingora.

#[cfg(feature = "server")]
pub mod access_log;
#[cfg(feature = "server")]
pub mod admin;
#[cfg(feature = "server")]
pub mod authorize;
#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod decision;
#[cfg(feature = "server")]
pub mod demo;
pub mod error;
#[cfg(feature = "server")]
pub mod explain;
pub mod forward_claims;
pub mod forwarded;
#[cfg(feature = "server")]
pub mod issuers;
pub mod limits;
#[cfg(feature = "server")]
pub mod log_limit;
#[cfg(feature = "server")]
pub mod metrics;
pub mod policy;
#[cfg(feature = "server")]
pub mod proxy;
#[cfg(feature = "server")]
pub mod reload;
pub mod request;
#[cfg(feature = "server")]
pub mod respond;
pub mod routes;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod shared;
#[cfg(feature = "server")]
pub mod tls;
pub mod token;
#[cfg(feature = "server")]
pub mod trace;
#[cfg(feature = "server")]
pub mod upstreams;
#[cfg(feature = "server")]
pub mod watch;
