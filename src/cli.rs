//! The command line: serve (with Pingora's `-d`, `-u`, `-t`) or `sign` a session token.

use std::path::PathBuf;
use std::time::Duration;

use crate::metrics::Caller;
use clap::{Args, Parser, Subcommand};

/// tokengate: a Pingora reverse proxy that mints ability tokens in-process.
#[derive(Debug, Parser)]
#[command(name = "tokengate", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (YAML); the environment overrides it.
    #[arg(short = 'c', long = "conf", global = true)]
    pub conf: Option<PathBuf>,
    /// Run in the background (Pingora's daemon mode).
    #[arg(short, long)]
    pub daemon: bool,
    /// Take the listening sockets over from a running instance (zero-downtime upgrade).
    #[arg(short, long)]
    pub upgrade: bool,
    /// Check the configuration and exit.
    #[arg(short, long)]
    pub test: bool,
    /// With `-t`: also print the effective route table, in the order routes are tried.
    #[arg(short, long)]
    pub verbose: bool,
    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a session token signed with the configured secret, for trying the service by hand.
    Sign {
        /// The subject, stored in the subject claim (`user_id` by default).
        #[arg(long)]
        user_id: String,
        /// Lifetime, such as 4h or 30m.
        #[arg(long, default_value = "4h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Sign a subject out everywhere: every token of it issued until now is refused by every
    /// replica sharing the configured Redis.
    Revoke {
        /// The subject (the subject claim's value).
        #[arg(long)]
        subject: String,
    },
    /// Explain what the proxy would do with one request, and why: the canonical request, the
    /// route, what it requires and what the token grants, the verdict, and the exact answer or
    /// the request forwarded upstream.
    Explain(ExplainArgs),
    /// Serve a stand-in for the image app, for a first try on one machine: every request is
    /// answered 200 with what it received (method, target, headers), as JSON.
    DemoApp {
        /// Where it listens: the upstream `conf/tokengate.yaml` forwards to.
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: std::net::SocketAddr,
    },
    /// Manage the ES256 / EdDSA keys minted tokens can be signed with.
    Keys {
        /// What to do with keys.
        #[command(subcommand)]
        action: KeysAction,
    },
}

/// `tokengate keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Write a new key pair: the private key to OUT (mode 0600), the public key to OUT.pub.
    Generate {
        /// ES256 or EdDSA.
        #[arg(long, default_value = "ES256")]
        algorithm: String,
        /// Where the private key goes (PKCS#8 PEM).
        #[arg(long)]
        out: PathBuf,
    },
}

/// `tokengate explain …`: the request is sent, as HTTP/1.1 bytes to the plaintext listener,
/// through Pingora's own parser and the proxy's own decision; nothing leaves the process.
///
/// Defaults it assumes: a `Host: localhost` header when none is given (the URL's authority for
/// an absolute URL; `--no-host` sends none), a `Content-Length` derived from `--body` (or
/// `Transfer-Encoding: chunked` with `--chunked`) unless a framing header is given, the client
/// address 127.0.0.1, `X-Forwarded-Proto: http`, and the time now. `--user-id` sends a session
/// token (or with `--permission` an ability token minted from it) as `Authorization: Bearer`,
/// replacing any `Authorization` given with `-H`. Rate limits and sign-outs are not consulted.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ExplainArgs {
    /// The method, such as GET, sent as given.
    pub method: String,
    /// The request target, sent as given: a path and query (`/albums/a/images?x=1`) or an
    /// absolute URL.
    pub url: String,
    /// A request header, `Name: value`; repeat for more, in order.
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// The request body; sent with a Content-Length unless --chunked.
    #[arg(long)]
    pub body: Option<String>,
    /// Frame the body as chunked (Transfer-Encoding: chunked), with no length.
    #[arg(long)]
    pub chunked: bool,
    /// Send no Host header unless one is given with -H.
    #[arg(long)]
    pub no_host: bool,
    /// Send the request as HTTP/1.0 (which needs no Host; none is assumed).
    #[arg(long = "http1.0")]
    pub http10: bool,
    /// Send a session token signed for this subject with the configured secret.
    #[arg(long)]
    pub user_id: Option<String>,
    /// With --user-id: send an ability token minted with this permission (JSON) instead.
    #[arg(long, requires = "user_id")]
    pub permission: Option<String>,
    /// The client's address (what X-Forwarded-For and an `ip:` limit key get).
    #[arg(long, default_value = "127.0.0.1")]
    pub peer: std::net::IpAddr,
    /// Print JSON, for scripts (fields documented in docs/routes.md).
    #[arg(long)]
    pub json: bool,
    /// Ask as this gateway asks the authorization listener (nginx, traefik, caddy, envoy),
    /// with the configuration of docs/gateways.md: the answer the gateway gets.
    #[arg(long, value_parser = gateway)]
    pub gateway: Option<Caller>,
}

/// A gateway's name, as `--gateway` takes it.
fn gateway(name: &str) -> Result<Caller, String> {
    Caller::ALL
        .into_iter()
        .find(|c| *c != Caller::Proxy && c.as_str() == name)
        .ok_or_else(|| format!("{name:?} is not one of nginx, traefik, caddy, envoy"))
}
