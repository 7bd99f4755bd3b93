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
    let (cpu_before, fds_before) = (cpu_seconds(), open_fds());
    let m = server.metrics().await;
    let (cpu_after, fds_after) = (cpu_seconds(), open_fds());
    assert_eq!(metric(&m, "inferd_connections_max"), 4.0);
    // The process collector's series, which the dashboard and alerts use, say
    // what the kernel says of this process (the server runs in the test's):
    // CPU in whole seconds, and the open descriptors (give or take those the
    // scrape itself opened and closed).
    let cpu = metric(&m, "process_cpu_seconds_total");
    assert!(
        (cpu_before as f64..=cpu_after as f64).contains(&cpu),
        "{cpu} CPU seconds exported, the kernel says {cpu_before}..{cpu_after}"
    );
    let fds = metric(&m, "process_open_fds");
    let (lo, hi) = (
        fds_before.min(fds_after) as f64,
        fds_before.max(fds_after) as f64,
    );
    assert!(
        (lo - 8.0..=hi + 8.0).contains(&fds),
        "{fds} descriptors exported, /proc/self/fd holds {fds_before}..{fds_after}"
    );
    assert!(metric(&m, "process_max_fds") >= fds);
    assert!(metric(&m, "process_resident_memory_bytes") > 0.0);
    assert!(
        metric(
            &m,
            "inferd_connections_closed_total{reason=\"idle_timeout\"}"
        ) >= 4.0
    );
    drop(silent);
    server.stop().await.expect("stop");
}

/// This process's CPU time (user and system) in whole seconds, as the
/// process collector counts it.
fn cpu_seconds() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The fields after the command name, which is in parentheses and may
    // hold spaces: utime and stime are the 14th and 15th of the line.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = fields[11] + fields[12];
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf");
    let per_s: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("CLK_TCK");
    ticks / per_s
}

/// Descriptors open in this process now.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}
