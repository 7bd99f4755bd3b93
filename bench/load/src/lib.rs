//! `inferd-bench`: a load generator for a running inferd (or any server with the
//! same `/predict` or KServe v2 REST contract), built apart from the server so
//! that the server binary carries none of it.
//!
//! Payloads are the model's held-out golden inputs or the lines of a JSON-lines
//! file (`payloads`), encoded and sent by the chosen protocol (`protocol`). The
//! load runs in a closed or an open loop, the open one on a rate schedule
//! (`schedule`, `run`); percentiles come from HDR histograms, and the report is
//! a table, optional JSON and targets that set the exit code (`report`), plus
//! an optional SVG plot (`plot`). The flags are in `cli`.

pub mod cli;
pub mod grpc;
pub mod http1;
pub mod payloads;
pub mod plot;
pub mod protocol;
pub mod report;
pub mod run;
pub mod schedule;

pub use cli::BenchConfig;
pub use report::Report;

/// Runs the benchmark, prints the table and writes the JSON report and the plot
/// when asked. `Ok(false)` when a target was missed (the binary exits 2).
pub async fn main(cfg: BenchConfig) -> anyhow::Result<bool> {
    let report = run::run(&cfg).await?;
    report::print_table(&report);
    if let Some(p) = &cfg.json {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(p, json).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    }
    if let Some(p) = &cfg.plot {
        plot::plot(&report, p)?;
    }
    Ok(report.passed)
}
