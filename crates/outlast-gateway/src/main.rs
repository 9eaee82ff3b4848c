//! The `outlast` binary: parse configuration, set up logging, run until SIGTERM/SIGINT; or
//! `outlast token ...`, which prints a signed token and exits.

use clap::Parser;
use outlast_gateway::config::{Args, Command, Config, LogFormat, TokenArgs};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut args = Args::parse();
    let command = args.command.take();
    let config = match Config::load(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("outlast: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Some(Command::Token(t)) = command {
        return mint(&config, &t);
    }
    let filter = EnvFilter::try_from_env("OUTLAST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        LogFormat::Pretty => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        signals.cancel();
    });
    let result = outlast_gateway::run(config, shutdown, |addr| {
        println!("outlast: listening on http://{addr}/ (demo page)");
    })
    .await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outlast: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `outlast token`: prints a signed token on stdout.
fn mint(config: &Config, t: &TokenArgs) -> std::process::ExitCode {
    use outlast_gateway::auth::{Claims, Scope, mint};
    let fail = |m: String| {
        eprintln!("outlast token: {m}");
        std::process::ExitCode::from(2)
    };
    if t.owner.parse::<outlast_protocol::OwnerId>().is_err() {
        return fail(format!(
            "{:?} is not a valid owner (1-64 of [A-Za-z0-9_.-])",
            t.owner
        ));
    }
    if let Some(bad) = t.scopes.iter().find(|s| Scope::parse(s).is_none()) {
        return fail(format!(
            "unknown scope {bad:?} (submit, read, upload, admin)"
        ));
    }
    let (kid, secret) = match config.jwt.signing_key(t.kid.as_deref()) {
        Ok(k) => k,
        Err(e) => return fail(e.to_string()),
    };
    let now = outlast_gateway::clock::now_ms() / 1000;
    let claims = Claims {
        sub: t.owner.clone(),
        exp: now + t.ttl.as_secs().max(1),
        iat: Some(now),
        scope: Some(if t.scopes.is_empty() {
            "submit read upload".to_owned()
        } else {
            t.scopes.join(" ")
        }),
        backends: (!t.backends.is_empty()).then(|| t.backends.clone()),
    };
    match mint(&claims, kid, secret) {
        Ok(token) => {
            println!("{token}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => fail(e.to_string()),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, only the process's death stops it.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
