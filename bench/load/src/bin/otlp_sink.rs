//! `otlp-sink --listen 127.0.0.1:4317`: an OTLP/gRPC trace receiver that
//! decodes every export and counts its spans, nothing more. It stands in for
//! a collector when measuring what tracing costs inferd: a real collector
//! (or a Python receiver) on the same two cores would itself be the limit.
//! Prints `spans N requests M` once a second while spans arrive, and the
//! totals when stopped (SIGINT or SIGTERM).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::{Request, Response, Status};

#[derive(Parser)]
#[command(about = "Counts the spans exported to it over OTLP/gRPC")]
struct Args {
    /// Where to listen for OTLP/gRPC.
    #[arg(long, default_value = "127.0.0.1:4317")]
    listen: SocketAddr,
}

#[derive(Default)]
struct Counts {
    spans: AtomicU64,
    requests: AtomicU64,
}

struct Sink(Arc<Counts>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let n: usize = req
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.spans.fetch_add(n as u64, Ordering::Relaxed);
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let counts = Arc::new(Counts::default());
    let report = counts.clone();
    tokio::spawn(async move {
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let spans = report.spans.load(Ordering::Relaxed);
            if spans != last {
                let requests = report.requests.load(Ordering::Relaxed);
                println!("spans {spans} requests {requests}");
                last = spans;
            }
        }
    });
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    eprintln!("otlp-sink: listening on {}", args.listen);
    tonic::transport::Server::builder()
        .add_service(
            TraceServiceServer::new(Sink(counts.clone()))
                .max_decoding_message_size(64 * 1024 * 1024),
        )
        .serve_with_shutdown(args.listen, stop)
        .await?;
    println!(
        "total spans {} requests {}",
        counts.spans.load(Ordering::Relaxed),
        counts.requests.load(Ordering::Relaxed)
    );
    Ok(())
}
