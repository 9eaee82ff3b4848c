//! `outlast-upload`: the command-line uploader for Outlast (thin entry point; see `run.rs`).

mod cli;
mod download;
mod follow;
mod net;
mod prepare;
mod report;
mod run;
mod state;
mod submit;
mod upload;
mod walk;

use clap::Parser;

fn main() {
    // clap exits with 2 on usage errors and 0 for --help / --version.
    let args = cli::Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(cli::exit::USAGE);
        }
    };
    let code = runtime.block_on(run::run(args));
    // Do not wait for blocking threads (a preparation in progress) on the way out.
    runtime.shutdown_background();
    std::process::exit(code);
}
