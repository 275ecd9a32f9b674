//! The `truc` binary: parses the command line, runs `serve` until SIGTERM or
//! Ctrl-C, or runs an operator command. `anyhow` lives only here.

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use truc::cli::{Cli, Command};

fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

async fn serve(cli: &Cli, args: &truc::cli::ServeArgs) -> anyhow::Result<()> {
    let mut config = truc::config::Config::load(cli.config.as_deref())?;
    config.accept_loss = args.accept_loss;
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: draining"),
        }
        signals.cancel();
    });
    truc::serve::serve(config, shutdown).await?;
    Ok(())
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Command::Serve(args) = &cli.command {
        init_logging();
        if let Err(e) = serve(&cli, args).await {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    if std::env::var_os("RUST_LOG").is_some() {
        init_logging();
    }
    if let Err(e) = truc::cli::run(cli).await {
        eprintln!("error: {e}");
        std::process::exit(e.code);
    }
}
