//! tokengate: a Pingora reverse proxy that mints ability tokens in-process.
//!
//! A request reads top to bottom: [`proxy`] decides the route, [`token`] decides the answer,
//! [`respond`] puts it on the wire, [`metrics`] observes.

#[cfg(feature = "server")]
pub mod access_log;
#[cfg(feature = "server")]
pub mod admin;
#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "server")]
pub mod config;
pub mod error;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod proxy;
#[cfg(feature = "server")]
pub mod respond;
#[cfg(feature = "server")]
pub mod routes;
#[cfg(feature = "server")]
pub mod server;
pub mod token;
#[cfg(feature = "server")]
pub mod upstreams;
