//! tokengate: a Pingora reverse proxy that mints ability tokens in-process.

pub mod error;
pub mod token;
