//! The accept loop's own checks.

use super::*;

fn limits() -> ConnLimits {
    ConnLimits {
        max_connections: 10,
        header_read_timeout: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(1_000),
        refused_pause_max: Duration::from_millis(64),
    }
}

/// The accept loop on `listener`, until `stop` is cancelled.
fn serving(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    metrics: &Arc<ConnMetrics>,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::spawn(serve(
        listener,
        app,
        limits,
        metrics.clone(),
        stop.clone().cancelled_owned(),
        CancellationToken::new(),
    ))
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

#[test]
fn pauses_double_with_each_refusal_and_halve_with_each_answer() {
    let s = ConnState::new();
    let max = Duration::from_millis(64);
    // Each pause is jittered to between half and all of its step.
    let within = |pause: Duration, step_ms: u64| {
        let step = Duration::from_millis(step_ms);
        assert!(
            pause >= step / 2 && pause <= step,
            "{pause:?} for a step of {step:?}"
        );
    };
    for step in [1, 2, 4, 8, 16, 32, 64, 64, 64] {
        within(s.shed(max), step);
        assert!(s.paused_until().is_some());
    }
    // Levels stop at the cap's: one answer brings the pause below it.
    s.served();
    within(s.shed(max), 32);
    s.served();
    s.served();
    within(s.shed(max), 16);
    for _ in 0..10 {
        s.served();
    }
    within(s.shed(max), 1);
    // Off: no pause, and nothing marked.
    let off = ConnState::new();
    assert_eq!(off.shed(Duration::ZERO), Duration::ZERO);
    assert!(off.paused_until().is_none());
}

/// Raw HTTP/1.1 on one kept-alive connection: the pause is the connection's.
async fn post(conn: &mut TcpStream) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(b"POST /p HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    // The handlers answer with empty bodies: the head ends the response.
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    std::str::from_utf8(&got[9..12]).unwrap().parse().unwrap()
}

/// The next request on a connection whose last one was shed is read only
/// after the pause: in the handler's (paused, auto-advancing) clock, each
/// request after a refusal arrives at least half a step later, the steps
/// doubling; an answer that is not a refusal is followed by none.
#[tokio::test(start_paused = true)]
async fn a_shed_request_pauses_the_connection_before_its_next_one() {
    use axum::response::IntoResponse;
    let seen: Arc<std::sync::Mutex<Vec<tokio::time::Instant>>> = Arc::default();
    let refuse = Arc::new(AtomicU32::new(5));
    let app = Router::new().route(
        "/p",
        axum::routing::post({
            let (seen, refuse) = (seen.clone(), refuse.clone());
            move || async move {
                seen.lock().unwrap().push(tokio::time::Instant::now());
                let shed = refuse
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                    .is_ok();
                if shed {
                    let mut r = axum::http::StatusCode::TOO_MANY_REQUESTS.into_response();
                    r.extensions_mut().insert(inferd_api::Shed);
                    r
                } else {
                    axum::http::StatusCode::OK.into_response()
                }
            }
        }),
    );
    let listener = bind("127.0.0.1:0".parse().unwrap(), 64).unwrap();
    let addr = listener.local_addr().unwrap();
    let registry = Registry::new();
    let metrics = Arc::new(ConnMetrics::new(&registry));
    let stop = CancellationToken::new();
    let limits = ConnLimits {
        max_connections: 10,
        // Far beyond every pause: the auto-advancing clock must reach the
        // pauses' ends, never these.
        header_read_timeout: Duration::from_secs(3_600),
        idle_timeout: Duration::from_secs(3_600),
        refused_pause_max: Duration::from_millis(8),
    };
    let server = serving(listener, app, limits, &metrics, &stop);
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(post(&mut conn).await);
    }
    assert_eq!(statuses, [429, 429, 429, 429, 429, 200, 200, 200]);
    assert_eq!(metrics.connection_pauses.get(), 5);
    let seen = seen.lock().unwrap().clone();
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1] - w[0]).collect();
    // After refusals 1..5: steps of 1, 2, 4, 8 and 8 ms (the cap), each
    // jittered down by at most half.
    for (gap, step_ms) in gaps.iter().zip([1u64, 2, 4, 8, 8]) {
        assert!(
            *gap >= Duration::from_millis(step_ms) / 2,
            "{gap:?} after a refusal whose step is {step_ms} ms: {gaps:?}"
        );
    }
    // After a 200 nothing pauses: the clock has no timer of ours to jump to
    // (the connection's deadlines are an hour away), so no time passes.
    assert!(
        gaps[5..].iter().all(|g| *g < Duration::from_secs(1)),
        "{gaps:?}"
    );
    drop(conn);
    stop.cancel();
    server.await.unwrap().unwrap();
}

/// A server whose one route refuses at once, leaving the body unread and
/// marking the answer for the lingering close until `linger` from now, as
/// `inferd_api` does for a refused body larger than it drains.
async fn refusing_server(
    linger: Duration,
) -> (
    SocketAddr,
    Arc<ConnMetrics>,
    CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    use axum::response::IntoResponse;
    let app = Router::new().route(
        "/p",
        axum::routing::post(move || async move {
            let mut r = (
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                [(axum::http::header::CONNECTION, "close")],
                "refused",
            )
                .into_response();
            let until = tokio::time::Instant::now().into_std() + linger;
            r.extensions_mut().insert(inferd_api::Linger { until });
            r
        }),
    );
    let listener = bind("127.0.0.1:0".parse().unwrap(), 64).unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Arc::new(ConnMetrics::new(&Registry::new()));
    let stop = CancellationToken::new();
    let limits = ConnLimits {
        max_connections: 10,
        header_read_timeout: Duration::from_secs(3_600),
        idle_timeout: Duration::from_secs(3_600),
        refused_pause_max: Duration::ZERO,
    };
    let server = serving(listener, app, limits, &metrics, &stop);
    (addr, metrics, stop, server)
}

/// Sends a header announcing a 16 MiB body and its first 64 KiB, and reads
/// the answer, which comes before the rest is sent.
async fn refused_early(addr: SocketAddr) -> TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"POST /p HTTP/1.1\r\nhost: t\r\ncontent-length: 16777216\r\n\r\n")
        .await
        .unwrap();
    conn.write_all(&[b'x'; 64 * 1024]).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"refused") {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the answer: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_lowercase();
    assert!(head.starts_with("http/1.1 429"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    conn
}

async fn closed_as(metrics: &ConnMetrics, reason: &str) {
    while metrics.connections_open.get() > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        metrics
            .connections_closed
            .with_label_values(&[reason])
            .get(),
        1
    );
}

/// After an answer that refused a body it left unread, the connection is read
/// and dropped until the client closes its side: the client sends the rest
/// of its body (16 MiB, far more than the sockets' buffers take, so every
/// write needs the server reading) and then sees the connection end cleanly,
/// not reset. Without the lingering close the writes failed with a reset.
#[tokio::test(start_paused = true)]
async fn a_refused_body_left_unread_is_read_and_dropped_until_the_client_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, metrics, stop, server) = refusing_server(Duration::from_secs(60)).await;
    let mut conn = refused_early(addr).await;
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..16 {
        conn.write_all(&chunk)
            .await
            .expect("the server reads the rest");
    }
    conn.shutdown().await.unwrap();
    let mut rest = Vec::new();
    assert_eq!(conn.read_to_end(&mut rest).await.expect("a clean end"), 0);
    closed_as(&metrics, "client").await;
    stop.cancel();
    server.await.unwrap().unwrap();
}

/// A client that stops sending after such an answer is not waited for past
/// the body's deadline (the mark's `until`): its connection is closed then,
/// and counted as a body timeout.
#[tokio::test(start_paused = true)]
async fn a_lingering_connection_is_closed_at_the_bodys_deadline() {
    use tokio::io::AsyncReadExt;
    let (addr, metrics, stop, server) = refusing_server(Duration::from_secs(5)).await;
    let start = tokio::time::Instant::now();
    let mut conn = refused_early(addr).await;
    // The server shut its side after the answer: the client reads the end.
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).await.expect("a clean end");
    closed_as(&metrics, "body_timeout").await;
    assert!(
        start.elapsed() >= Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    stop.cancel();
    server.await.unwrap().unwrap();
}
