//! The connection cap. The 20,000 idle and half-sent connections are
//! `tests/lifecycle/test_connections.py`: they need more descriptors than one
//! process may have here, so the server runs as a process of its own there.

mod common;

use std::time::{Duration, Instant};

use common::{metric, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes; returns what it sent and when it closed.
async fn until_closed(mut s: TcpStream) -> (Vec<u8>, Instant) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return (got, Instant::now()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn past_the_cap_a_connection_waits_for_a_free_one() {
    let mut c = common::config();
    c.net.max_connections = 4;
    c.net.idle_timeout_ms = 1_500;
    let server = TestServer::start(c).await;
    // `start` polled /readyz on a keep-alive connection: let it idle out, so
    // that the four below fill the cap.
    let mut silent = Vec::new();
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    for _ in 0..4 {
        silent.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The fifth waits in the listen backlog (the kernel completed its
    // handshake) and is served once the idle ones are closed.
    let asked = Instant::now();
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: inferd\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let (got, _) = tokio::time::timeout(Duration::from_secs(10), until_closed(s))
        .await
        .expect("served within 10 s");
    let waited = asked.elapsed();
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        waited >= Duration::from_millis(1_000),
        "served after {waited:?}: the cap did not hold it back"
    );
    let m = server.metrics().await;
    assert_eq!(metric(&m, "inferd_connections_max"), 4.0);
    // The process collector's series, which the dashboard and alerts use.
    for series in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
    ] {
        assert!(metric(&m, series) > 0.0, "{series}");
    }
    // Whole seconds: 0 in a test this short, but exported.
    assert!(common::metric_opt(&m, "process_cpu_seconds_total").is_some());
    assert!(
        metric(
            &m,
            "inferd_connections_closed_total{reason=\"idle_timeout\"}"
        ) >= 4.0
    );
    drop(silent);
    server.stop().await.expect("stop");
}
