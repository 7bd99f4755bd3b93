//! The `inferd` binary: parses the command line (flags with `INFERD_*`
//! fallbacks), logs the effective configuration with secrets redacted, binds the
//! listener and hands everything to `inferd::run`; or runs `healthcheck`, or
//! `preprocess` (a model's preprocessing over JSON lines, for training).

use clap::Parser;

use std::io::{BufRead, Write};

use inferd::config::{Cli, Command, PreprocessConfig, PreprocessKind};
use inferd_core::preprocess::email;

fn main() -> std::process::ExitCode {
    // Before the runtime starts any thread.
    inferd_core::memory::fix_mmap_threshold();
    let cli = Cli::parse();
    let reactor_nice = match &cli.command {
        None => cli.serve.runtime.reactor_nice,
        Some(Command::Serve(c)) => c.runtime.reactor_nice,
        Some(_) => 0,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if reactor_nice > 0 {
        // Workers park as soon as they start, before they run any task, so
        // every one is niced before it serves. Blocking-pool threads never
        // park this way; the slot threads are started from this (main) thread,
        // which `block_on` keeps at normal priority.
        builder.on_thread_park(move || {
            thread_local!(static NICED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
            NICED.with(|n| {
                if !n.replace(true) {
                    inferd_core::slots::nice_current_thread(i32::from(reactor_nice));
                }
            });
        });
    }
    match builder.build() {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => {
            eprintln!("inferd: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> std::process::ExitCode {
    let config = match cli.command {
        Some(Command::Serve(c)) => c,
        Some(Command::Healthcheck(h)) => return inferd::server::healthcheck(&h).await,
        Some(Command::Preprocess(p)) => return preprocess(&p),
        None => cli.serve,
    };
    inferd::logging::init(config.telemetry.log_format);
    tracing::info!(config = %config.redacted(), "starting inferd {}", env!("CARGO_PKG_VERSION"));
    match inferd::listen::raise_fd_limit() {
        Ok((before, after, hard)) => tracing::info!(
            soft_before = before,
            soft = after,
            hard,
            max_connections = config.net.max_connections,
            "descriptor limit (RLIMIT_NOFILE) raised to the hard limit"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot raise the descriptor limit"),
    }
    let listener = match inferd::listen::bind(config.net.listen, config.net.listen_backlog) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot listen on {}: {e}", config.net.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    let bound = listener.local_addr().map_or(config.net.listen, |a| a);
    tracing::info!("listening on {bound}");
    // Process-wide, like the logger: the SDK's model is one tracer provider.
    let otel = match inferd_otlp::Otel::from_env() {
        Ok(o) => o,
        Err(e) => {
            tracing::error!("OpenTelemetry: {e:#}");
            eprintln!("inferd: OpenTelemetry: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let served = inferd::run(config, listener, inferd::server::shutdown_signal()).await;
    if let Some(otel) = otel {
        // Sends the last requests' spans; bounded, so a dead collector cannot
        // hold up the exit.
        let _ =
            tokio::task::spawn_blocking(move || otel.shutdown(std::time::Duration::from_secs(5)))
                .await;
    }
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("inferd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `inferd preprocess`: one JSON object per line in, the same object with its
/// text field cleaned out. A line that is not an object holding a string there
/// is an error naming the line, and the command exits 1.
fn preprocess(cfg: &PreprocessConfig) -> std::process::ExitCode {
    let stdin = std::io::stdin().lock();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (n, line) in stdin.lines().enumerate() {
        let result = line.map_err(|e| e.to_string()).and_then(|line| {
            let mut v: serde_json::Value =
                serde_json::from_str(&line).map_err(|e| e.to_string())?;
            let text = v
                .get_mut(&cfg.field)
                .and_then(|t| t.as_str().map(str::to_string))
                .ok_or_else(|| format!("no string field `{}`", cfg.field))?;
            let cleaned = match cfg.kind {
                PreprocessKind::Email => email::clean(&text, cfg.truncate_chars),
            };
            v[&cfg.field] = serde_json::Value::String(cleaned);
            serde_json::to_writer(&mut out, &v).map_err(|e| e.to_string())?;
            out.write_all(b"\n").map_err(|e| e.to_string())
        });
        if let Err(e) = result {
            eprintln!("inferd preprocess: line {}: {e}", n + 1);
            return std::process::ExitCode::FAILURE;
        }
    }
    match out.flush() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inferd preprocess: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
