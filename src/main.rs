//! The `inferd` binary: parses the command line (flags with `INFERD_*`
//! fallbacks), logs the effective configuration with secrets redacted, binds the
//! listener and hands everything to `inferd::run`, or runs `healthcheck`.

use clap::Parser;

use inferd::config::{Cli, Command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let config = match cli.command {
        Some(Command::Serve(c)) => c,
        Some(Command::Healthcheck(h)) => return inferd::server::healthcheck(&h).await,
        None => cli.serve,
    };
    inferd::telemetry::init(config.log_format);
    tracing::info!(config = %config.redacted(), "starting inferd {}", env!("CARGO_PKG_VERSION"));
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot listen on {}: {e}", config.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    let bound = listener.local_addr().map_or(config.listen, |a| a);
    tracing::info!("listening on {bound}");
    match inferd::run(config, listener, inferd::server::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("inferd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
