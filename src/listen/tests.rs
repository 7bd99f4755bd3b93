//! The accept loop's own checks.

use super::*;

fn limits() -> ConnLimits {
    ConnLimits {
        max_connections: 10,
        header_read_timeout: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(1_000),
    }
}

#[test]
fn deadlines_follow_what_the_connection_is_doing() {
    let s = ConnState::new();
    let l = limits();
    // New connection: idle until its first byte.
    assert_eq!(s.deadline(&l), Some((1 + 1_000, Closed::IdleTimeout)));
    std::thread::sleep(Duration::from_millis(5));
    s.on_read();
    let (at, why) = s.deadline(&l).unwrap();
    assert_eq!(why, Closed::HeaderTimeout);
    assert!((105..200).contains(&at), "{at}");
    // While a request is served, no connection deadline applies, and body
    // bytes do not start a header.
    s.request_started();
    s.on_read();
    assert_eq!(s.deadline(&l), None);
    s.request_done();
    let (at, why) = s.deadline(&l).unwrap();
    assert_eq!(why, Closed::IdleTimeout);
    assert!(at >= 1_005, "{at}");
}

#[test]
fn the_cap_leaves_room_for_other_descriptors() {
    assert_eq!(effective_cap(10_000, Some(1_048_576)), 10_000);
    assert_eq!(effective_cap(10_000, Some(1_024)), 768);
    assert_eq!(effective_cap(10_000, None), 10_000);
    assert_eq!(effective_cap(100, Some(10)), 1);
}

#[tokio::test]
async fn the_watchdog_fires_on_the_earliest_deadline() {
    let s = Arc::new(ConnState::new());
    let l = limits();
    let w = tokio::spawn({
        let s = s.clone();
        async move { s.watchdog(l).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    // The header's deadline is earlier than the idle one: the watchdog
    // must wake for it rather than sleep on to the idle deadline.
    s.on_read();
    let why = tokio::time::timeout(Duration::from_millis(500), w)
        .await
        .expect("fired before the idle deadline")
        .unwrap();
    assert_eq!(why, Closed::HeaderTimeout);
}

/// Connections nobody accepts yet (the server at its cap) all complete their
/// handshake while the backlog has room. With tokio's `bind` (128) the 130th
/// connect here hangs in SYN retransmits. (The kernel caps the backlog at
/// net.core.somaxconn, 4096 on current kernels.)
#[tokio::test]
async fn the_backlog_holds_what_the_cap_turns_away() {
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096);
    let n = somaxconn.min(400);
    let listener = bind("127.0.0.1:0".parse().unwrap(), 512).expect("bind");
    let addr = listener.local_addr().unwrap();
    let mut set = JoinSet::new();
    for _ in 0..n {
        set.spawn(tokio::time::timeout(
            Duration::from_millis(900),
            TcpStream::connect(addr),
        ));
    }
    let mut held = Vec::new();
    while let Some(r) = set.join_next().await {
        held.push(
            r.unwrap()
                .expect("connected within 900 ms")
                .expect("connect"),
        );
    }
    assert_eq!(held.len(), n);
    drop(listener);
}
