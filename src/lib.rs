//! tokengate: a Pingora reverse proxy that mints ability tokens in-process.
//!
//! A request reads top to bottom: [`proxy`] decides the route, [`token`] decides the answer,
//! [`respond`] puts it on the wire, [`metrics`] observes.

pub mod access_log;
pub mod admin;
pub mod cli;
pub mod config;
pub mod error;
pub mod metrics;
pub mod proxy;
pub mod respond;
pub mod server;
pub mod token;
