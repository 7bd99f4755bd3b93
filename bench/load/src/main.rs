//! The `inferd-bench` binary: parses the flags, runs the benchmark and maps the
//! outcome to the exit code (0 targets met, 2 a target missed, 1 an error).

use std::process::ExitCode;

use clap::Parser;
use inferd_bench::BenchConfig;

#[tokio::main]
async fn main() -> ExitCode {
    let cfg = BenchConfig::parse();
    match inferd_bench::main(cfg).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("inferd-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
