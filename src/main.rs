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

async fn serve(
    mut config: truc::config::Config,
    args: &truc::cli::ServeArgs,
) -> anyhow::Result<()> {
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

/// The runtime of `truc serve`. On a shared (PostgreSQL) store every store
/// call blocks its worker thread for a round trip to the database, so the
/// runtime gets one more worker per store connection, beside one per core:
/// the cores keep routing while calls wait (`TOKIO_WORKER_THREADS`, when
/// set, decides instead).
fn serve_runtime(config: &truc::config::Config) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if config.store_url.is_some() && std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        builder.worker_threads(cores + config.store_connections);
    }
    builder.build()
}

fn main() {
    let cli = Cli::parse();
    if let Command::Serve(args) = &cli.command {
        init_logging();
        let run = truc::config::Config::load(cli.config.as_deref())
            .map_err(anyhow::Error::from)
            .and_then(|config| {
                let rt = serve_runtime(&config)?;
                let done = rt.block_on(serve(config, args));
                // What is still running once serve returned (a blocking store
                // call, a task past its stop limit) is not waited for: the
                // store was flushed before serve returned.
                rt.shutdown_timeout(std::time::Duration::from_secs(5));
                done
            });
        if let Err(e) = run {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    if std::env::var_os("RUST_LOG").is_some() {
        init_logging();
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(truc::cli::run(cli)) {
        eprintln!("error: {e}");
        std::process::exit(e.code);
    }
}
