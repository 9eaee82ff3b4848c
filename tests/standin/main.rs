//! `comfy-standin`: a test-only stand-in for a ComfyUI server (HTTP + WebSocket API as in
//! `docs`' reference `comfyui-api.md`), with fake but deterministic nodes and control
//! endpoints under `/_standin/` for fault injection. Not a product feature.

mod engine;
mod files;
mod http;
mod nodes;
mod sockets;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use tokio::io::AsyncWriteExt;

/// Latent previews during sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PreviewMethod {
    /// No previews (ComfyUI's default).
    None,
    /// Previews on every sampler step.
    Auto,
}

/// A stand-in ComfyUI server for tests.
#[derive(Debug, Parser)]
#[command(name = "comfy-standin", args_override_self = true)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Data directory: input/, output/ and temp/ are created under it.
    #[arg(long, default_value = "comfy-standin-data")]
    data: PathBuf,
    /// Duration of one sampler step, in milliseconds.
    #[arg(long, default_value_t = 50)]
    step_ms: u64,
    /// Latent previews: `none` or `auto`.
    #[arg(long, value_enum, default_value_t = PreviewMethod::None)]
    preview_method: PreviewMethod,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let dirs = files::Dirs::create(&cli.data)
        .with_context(|| format!("creating the data directory {}", cli.data.display()))?;
    let app = Arc::new(engine::App::new(
        engine::Config {
            step: Duration::from_millis(cli.step_ms),
            previews: cli.preview_method == PreviewMethod::Auto,
        },
        dirs,
    ));
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    let addr = listener.local_addr()?;
    let mut out = tokio::io::stdout();
    out.write_all(format!("comfy-standin listening on http://{addr}\n").as_bytes())
        .await?;
    out.flush().await?;
    eprintln!(
        "comfy-standin: data {} step {} ms previews {:?}",
        app.dirs
            .output
            .parent()
            .unwrap_or(&app.dirs.output)
            .display(),
        cli.step_ms,
        cli.preview_method
    );
    let worker = tokio::spawn(app.clone().worker());
    let served = axum::serve(listener, http::app(app)).await;
    worker.abort();
    served.context("serving")
}
