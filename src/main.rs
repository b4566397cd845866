//! The `tokengate` binary: parse the command line, load the configuration, run.

use std::process::ExitCode;
use std::time::Duration;

use std::io::Write;

use clap::Parser;
use pingora::server::configuration::Opt;
use pingora::server::{RunArgs, UnixShutdownSignalWatch};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use tokengate::access_log::LogFormat;
use tokengate::log_limit::Limited;

use tokengate::cli::{Cli, Command, ExplainArgs, KeysAction};
use tokengate::config::{Config, ProcessEnv};
use tokengate::decision::unix_now;
use tokengate::explain::Question;
use tokengate::server::{self, MarkDraining};
use tokengate::token::asymmetric::{self, KeyAlgorithm};
use tokengate::token::mint::session_token;

fn main() -> ExitCode {
    // Before anything else, SIGHUP included: from the first socket on, it means reload.
    if let Err(e) = tokengate::watch::catch_hangup() {
        return fail(format!("cannot handle SIGHUP: {e}"));
    }
    if let Err(e) = tokengate::watch::exit_on_interrupt() {
        return fail(format!("cannot handle SIGINT: {e}"));
    }
    let mut cli = Cli::parse();
    // Absolute now: with `-d` the daemon runs from `/`, and every reload reads the path again.
    if let Some(conf) = &cli.conf {
        match std::path::absolute(conf) {
            Ok(path) => cli.conf = Some(path),
            Err(e) => return fail(format!("cannot resolve {}: {e}", conf.display())),
        }
    }
    // Generating keys needs no configuration (and must work before any secret exists).
    if let Some(Command::Keys {
        action: KeysAction::Generate { algorithm, out },
    }) = &cli.command
    {
        return generate_keys(algorithm, out);
    }
    // The demo app needs no configuration either.
    if let Some(Command::DemoApp { listen }) = &cli.command {
        env_logger::Builder::new()
            .filter_level(log::LevelFilter::Info)
            .init();
        tokengate::demo::run(*listen);
        return ExitCode::SUCCESS;
    }
    let config = match Config::load(cli.conf.as_deref(), &ProcessEnv) {
        Ok(config) => config,
        Err(e) => return fail(e),
    };
    init_logging(&config);
    for warning in config.warnings() {
        log::warn!("{warning}");
    }
    match cli.command {
        Some(Command::Sign { user_id, ttl }) => sign(&config, &user_id, ttl.as_secs()),
        Some(Command::Keys { .. } | Command::DemoApp { .. }) => ExitCode::SUCCESS,
        Some(Command::Revoke { subject }) => revoke(&config, &subject),
        Some(Command::Explain(args)) => explain(&config, args),
        None if cli.test => {
            if cli.verbose {
                print!("{}", config.proxy.routes.describe(&config.group_names()));
            }
            println!("tokengate: configuration OK");
            ExitCode::SUCCESS
        }
        None => serve(config, &cli),
    }
}

/// Application logs go to stderr (stdout carries the access log), in the configured format, each
/// place in the code limited to a few lines a second (`log_limit`).
fn init_logging(config: &Config) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(config.log).format_target(false);
    if config.log_format == LogFormat::Json {
        builder.format(|buf, record| {
            let line = serde_json::json!({
                "time": tokengate::access_log::now_rfc3339(),
                "level": record.level().as_str(),
                "message": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    let logger = builder.build();
    let level = logger.filter();
    if log::set_boxed_logger(Box::new(Limited::new(logger))).is_ok() {
        log::set_max_level(level);
    }
}

fn serve(config: Config, cli: &Cli) -> ExitCode {
    let opt = Opt {
        upgrade: cli.upgrade,
        daemon: cli.daemon,
        ..Opt::default()
    };
    let banner = format!(
        "tokengate {} listening on {}, admin on {}, forwarding to {}",
        env!("CARGO_PKG_VERSION"),
        config.listen,
        config.admin_listen,
        config.proxy.upstream_groups[0].addresses.join(", ")
    );
    let built = match server::build(config, cli.conf.clone(), Some(opt)) {
        Ok(built) => built,
        Err(e) => return fail(e),
    };
    log::info!("{banner}");
    let signals = MarkDraining::new(UnixShutdownSignalWatch, built.state);
    built.server.run(RunArgs {
        shutdown_signal: Box::new(signals),
    });
    ExitCode::SUCCESS
}

fn sign(config: &Config, user_id: &str, ttl_secs: u64) -> ExitCode {
    let now = unix_now();
    let keys = match config.keyring() {
        Ok(keys) => keys,
        Err(e) => return fail(e),
    };
    match session_token(
        keys.signing(),
        &config.token.subject_claim,
        user_id,
        now,
        ttl_secs,
    ) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn explain(config: &Config, args: ExplainArgs) -> ExitCode {
    let question = Question {
        method: args.method,
        url: args.url,
        headers: args.headers,
        body: args.body,
        chunked: args.chunked,
        no_host: args.no_host,
        http10: args.http10,
        peer: args.peer,
        user_id: args.user_id,
        permission: args.permission,
        now: unix_now(),
        gateway: args.gateway,
    };
    let answer = match tokengate::explain::explain(config, &question) {
        Ok(answer) => answer,
        Err(e) => return fail(e),
    };
    let text = match args.json {
        true => match serde_json::to_string_pretty(&answer) {
            Ok(text) => text + "\n",
            Err(e) => return fail(e),
        },
        false => answer.to_string(),
    };
    // A closed pipe (`| head`) is the reader's choice, not a failure worth a panic.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    ExitCode::SUCCESS
}

fn revoke(config: &Config, subject: &str) -> ExitCode {
    let Some(settings) = &config.redis else {
        return fail("revoke needs the shared Redis: configure tokengate.redis");
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(e),
    };
    let outcome = runtime.block_on(async {
        let shared = tokengate::shared::Shared::new(settings.clone())?;
        tokio::time::timeout(Duration::from_secs(5), shared.revoke(subject))
            .await
            .unwrap_or_else(|_| Err(redis::RedisError::from((redis::ErrorKind::Io, "timed out"))))
    });
    match outcome {
        Ok(()) => {
            println!("signed out {subject}: its tokens issued until now are refused everywhere");
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("cannot reach redis at {}: {e}", settings.url)),
    }
}

fn generate_keys(algorithm: &str, out: &Path) -> ExitCode {
    let Some(alg) = KeyAlgorithm::parse(algorithm) else {
        return fail(format!("{algorithm:?} is not ES256 or EdDSA"));
    };
    let (private, public) = match asymmetric::generate(alg) {
        Ok(pair) => pair,
        Err(e) => return fail(e),
    };
    let public_path = PathBuf::from(format!("{}.pub", out.display()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .and_then(|mut f| f.write_all(private.as_bytes()))
        .and_then(|()| std::fs::write(&public_path, &public));
    if let Err(e) = written {
        return fail(format!("cannot write {}: {e}", out.display()));
    }
    match asymmetric::public_jwk(alg, &public) {
        Ok(jwk) => {
            println!(
                "kid {}\nprivate key {}\npublic key {}",
                jwk.kid,
                out.display(),
                public_path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("tokengate: {e}");
    ExitCode::from(2)
}
