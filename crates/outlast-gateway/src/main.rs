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
    match command {
        Some(Command::Token(t)) => return mint(&config, &t),
        Some(Command::Health) => return health(config.listen),
        None => {}
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

/// `outlast health`: asks `GET /healthz` on `listen` (an unspecified address means this
/// machine's loopback) and exits 0 on a 200.
fn health(listen: std::net::SocketAddr) -> std::process::ExitCode {
    use std::io::{Read as _, Write as _};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let addr = SocketAddr::new(ip, listen.port());
    let limit = std::time::Duration::from_secs(5);
    let answer = (|| -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, limit)?;
        s.set_read_timeout(Some(limit))?;
        s.set_write_timeout(Some(limit))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut head = [0u8; 64];
        let n = s.read(&mut head)?;
        Ok(String::from_utf8_lossy(&head[..n]).into_owned())
    })();
    match answer {
        Ok(head) if head.starts_with("HTTP/1.1 200 ") => std::process::ExitCode::SUCCESS,
        Ok(head) => {
            let line = head.lines().next().unwrap_or("");
            eprintln!("outlast health: {addr} answered {line:?}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("outlast health: {addr}: {e}");
            std::process::ExitCode::FAILURE
        }
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
