//! The accept loop: owns client connections from `accept` to close, which
//! `axum::serve` leaves unguarded. A client that connects and sends nothing,
//! sends half a header, or stops halfway through a body must not keep a
//! descriptor forever, and enough of them must not exhaust the process's
//! descriptors (then `accept` fails and nobody gets in). So:
//!
//! - a cap on open connections (`--max-connections`): at the cap the loop stops
//!   accepting and new connections wait in the kernel's listen backlog, whose
//!   length is ours to set (`bind`);
//! - per connection, one watchdog task with two deadlines, worked out from what
//!   the connection is doing: *idle* (no request in progress: a new connection
//!   before its first byte, a keep-alive one between requests) and *header*
//!   (from a request's first byte until hyper hands over its parsed header).
//!   The body's deadline is the request's own: `api::extract` reads it within
//!   `--body-read-timeout-ms` and answers 408. hyper's own header timer cannot
//!   tell the two apart (it starts when it begins waiting for a header, so it
//!   would cut idle keep-alive connections at the header's timeout);
//! - a pause after a refusal: when a request is shed (429 `queue_full` or
//!   `overloaded`, marked [`inferd_api::Shed`]), the connection's next
//!   request is left unread for a while: 1 ms, doubled for each refusal and
//!   halved for each other answer, up to `--refused-pause-max-ms`. A client
//!   that resends at once (a closed loop, a proxy's kept-alive upstream
//!   connection) otherwise spends the core on refusals:
//!   at 10x the text model's saturating connections on one core, the adaptive
//!   limit's 12,000 refusals a second took a third of it. The request waits
//!   in the kernel's socket buffer meanwhile, costing nothing. HTTP/2 and
//!   gRPC connections are not paused: one carries many clients' streams;
//! - a lingering close after an answer that refused a body it left unread
//!   (marked [`inferd_api::Linger`]: a large body refused before it was
//!   read): hyper's state and buffers are dropped, and the socket is read
//!   and dropped until the client closes its side or the body's deadline,
//!   so that a client still sending sees the refusal instead of a reset;
//! - graceful shutdown: on the signal, stop accepting, let each connection
//!   finish the request it is serving, and return when all have closed.
//!
//! Gauges and counters: `inferd_connections_open`, `..._accepted_total`,
//! `..._closed_total{reason}`, `inferd_accept_errors_total`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use futures::FutureExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use inferd_api::Arrival;
use inferd_telemetry::metrics::Registrar;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};

/// The accept loop's metrics.
#[allow(missing_docs)] // Each field's help text is its documentation.
pub struct ConnMetrics {
    pub connections_open: IntGauge,
    pub connections_max: IntGauge,
    pub connections_accepted: IntCounter,
    pub connections_closed: IntCounterVec,
    pub accept_errors: IntCounter,
    pub connection_pauses: IntCounter,
}

impl ConnMetrics {
    /// The accept loop's metrics, registered into `registry`.
    pub fn new(registry: &Registry) -> Self {
        let r = Registrar(registry);
        ConnMetrics {
            connections_open: r.gauge("inferd_connections_open", "Client connections open now"),
            connections_max: r.gauge(
                "inferd_connections_max",
                "The cap on open client connections (INFERD_MAX_CONNECTIONS, after fitting the descriptor limit)",
            ),
            connections_accepted: r.counter(
                "inferd_connections_accepted_total",
                "Client connections accepted",
            ),
            connections_closed: r.counter_vec(
                "inferd_connections_closed_total",
                "Client connections closed, by reason: client, error, idle_timeout, header_timeout, body_timeout, shutdown",
                &["reason"],
            ),
            accept_errors: r.counter(
                "inferd_accept_errors_total",
                "Failed accept calls (out of descriptors, for one)",
            ),
            connection_pauses: r.counter(
                "inferd_connection_pauses_total",
                "Times an HTTP/1 connection's next request was left unread for a while after a shed refusal (INFERD_REFUSED_PAUSE_MAX_MS)",
            ),
        }
    }
}

/// Descriptors kept back from the connection cap for everything else the
/// process opens: model files, Redis and PostgreSQL pools, the log files.
const RESERVED_FDS: u64 = 256;

/// Hands the memory of a burst of connections back: each holds buffers of
/// its own (about 15 KB measured), which glibc keeps after they close, so a
/// flood of 20,000 left resident memory 290 MiB up for good. When the open
/// count falls to a quarter of its high-water mark (of at least 1,024), the
/// heap is trimmed, off the runtime; and once more when the burst has
/// drained (at most `SETTLED` open), for the last quarter's buffers.
#[derive(Default)]
struct BurstTrim {
    high: std::sync::atomic::AtomicUsize,
    /// A burst happened since the last settled trim.
    burst: AtomicBool,
}

impl BurstTrim {
    const MIN_BURST: usize = 1_024;
    const SETTLED: usize = 16;

    fn opened(&self, open: usize) {
        if self.high.fetch_max(open, Ordering::AcqRel).max(open) >= Self::MIN_BURST {
            self.burst.store(true, Ordering::Release);
        }
    }

    fn closed(&self, open: usize) {
        let high = self.high.load(Ordering::Acquire);
        let quarter = high >= Self::MIN_BURST
            && open <= high / 4
            && self
                .high
                .compare_exchange(high, open, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
        let settled = open <= Self::SETTLED && self.burst.swap(false, Ordering::AcqRel);
        if quarter || settled {
            tokio::task::spawn_blocking(inferd_core::memory::trim);
        }
    }
}

/// The connection limits, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Open connections, at most (after fitting the descriptor limit).
    pub max_connections: usize,
    /// Time to send a whole header, from its first byte.
    pub header_read_timeout: Duration,
    /// Time a connection may sit with no request in progress.
    pub idle_timeout: Duration,
    /// The longest pause before reading a connection's next request after a
    /// shed refusal; zero: no pause.
    pub refused_pause_max: Duration,
}

/// Why a connection ended, as the `reason` label of
/// `inferd_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    /// The client closed it, or asked for it to be closed.
    Client,
    /// A protocol or I/O error (a reset, a malformed request).
    Error,
    IdleTimeout,
    HeaderTimeout,
    /// A request's body did not arrive in time (`api::extract` said so).
    BodyTimeout,
    /// Closed after its last request by a graceful shutdown.
    Shutdown,
}

impl Closed {
    fn label(self) -> &'static str {
        match self {
            Closed::Client => "client",
            Closed::Error => "error",
            Closed::IdleTimeout => "idle_timeout",
            Closed::HeaderTimeout => "header_timeout",
            Closed::BodyTimeout => "body_timeout",
            Closed::Shutdown => "shutdown",
        }
    }
}

/// What one connection is doing, shared by its I/O wrapper (which sees bytes),
/// its service (which sees requests) and its watchdog. Times are milliseconds
/// since the connection opened, plus one, so that 0 can mean "not set".
struct ConnState {
    /// tokio's clock, so that the watchdog's sleeps and these times agree
    /// (also under a paused test clock).
    opened: tokio::time::Instant,
    /// Requests handed to the router and not yet answered.
    active: AtomicU32,
    /// When the last request was answered (or the connection opened).
    idle_since: AtomicU64,
    /// When the first byte of a request arrived while idle; 0 when none is
    /// being read.
    head_since: AtomicU64,
    /// Set by `api::extract` when a body missed its deadline.
    body_timed_out: Arc<AtomicBool>,
    /// Wakes the watchdog when its deadline may have moved earlier.
    changed: Notify,
    /// The pause's level: up one per shed refusal, down one per other
    /// answer; each level doubles the pause.
    refusals: AtomicU32,
    /// Until when (microseconds since the connection opened; 0: not paused)
    /// the next request is left unread.
    pause_until: AtomicU64,
    /// Until when (microseconds since the connection opened; 0: no lingering)
    /// what the client still sends is read and dropped after the connection's
    /// last answer, which refused a body it left unread (`inferd_api::Linger`).
    linger_until: AtomicU64,
    /// The stream, handed over by the I/O wrapper as hyper drops it, when the
    /// connection is to linger: hyper's buffers are freed, the socket is not.
    parked: std::sync::Mutex<Option<TcpStream>>,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            opened: tokio::time::Instant::now(),
            active: AtomicU32::new(0),
            idle_since: AtomicU64::new(1),
            head_since: AtomicU64::new(0),
            body_timed_out: Arc::new(AtomicBool::new(false)),
            changed: Notify::new(),
            refusals: AtomicU32::new(0),
            pause_until: AtomicU64::new(0),
            linger_until: AtomicU64::new(0),
            parked: std::sync::Mutex::new(None),
        }
    }

    /// The answer just given left a body unread: once hyper is done with the
    /// connection, linger on it until `until`.
    fn linger(&self, until: Instant) {
        let until = tokio::time::Instant::from_std(until).saturating_duration_since(self.opened);
        self.linger_until
            .store(until.as_micros().max(1) as u64, Ordering::Release);
    }

    /// Until when to linger, if the connection is to.
    fn lingers_until(&self) -> Option<tokio::time::Instant> {
        match self.linger_until.load(Ordering::Acquire) {
            0 => None,
            us => Some(self.opened + Duration::from_micros(us)),
        }
    }

    /// The stream `Tracked` parked as hyper dropped it, if it did.
    fn take_parked(&self) -> Option<TcpStream> {
        self.parked.lock().ok().and_then(|mut p| p.take())
    }

    /// A request was shed: pauses reading the next one, `PAUSE_FIRST`
    /// doubled once per level, at most `max`; a refusal raises the level by
    /// one. Returns the pause. Jittered (between half and all of it), so that
    /// connections refused together do not all come back together.
    fn shed(&self, max: Duration) -> Duration {
        if max.is_zero() {
            return Duration::ZERO;
        }
        // The first level whose pause reaches `max`: higher ones would only
        // take more answers to come down from.
        let top = max
            .div_duration_f64(PAUSE_FIRST)
            .log2()
            .ceil()
            .clamp(0.0, 30.0) as u32;
        // The level before this refusal; stored levels never pass `top`.
        let k = self
            .refusals
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |k| {
                Some((k + 1).min(top))
            })
            .unwrap_or_else(|k| k);
        let full = PAUSE_FIRST.saturating_mul(1 << k).min(max);
        let pause = full / 2 + full.mul_f64(fastrand::f64() / 2.0);
        let until = self.opened.elapsed() + pause;
        self.pause_until
            .store(until.as_micros().max(1) as u64, Ordering::Release);
        pause
    }

    /// A request was answered other than by shedding it: the level comes
    /// down by one. Not to zero: under a closed loop with more clients than
    /// the limit admits, a client served once is refused again as soon as it
    /// resends, and pauses that started over at 1 ms after every answer let
    /// through twice the refusals (text model, 160 connections on one core,
    /// pauses of at most 100 ms: 29,986 in a run against 14,610 coming down
    /// one level per answer). This way a connection refused more often than
    /// it is served keeps its long pause.
    fn served(&self) {
        let _ = self
            .refusals
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |k| k.checked_sub(1));
    }

    /// Until when the next request is left unread, if it is.
    fn paused_until(&self) -> Option<tokio::time::Instant> {
        match self.pause_until.load(Ordering::Acquire) {
            0 => None,
            us => Some(self.opened + Duration::from_micros(us)),
        }
    }

    /// The pause that ended at `until` is over (unless a later one replaced it).
    fn resume(&self, until: tokio::time::Instant) {
        let us = until.duration_since(self.opened).as_micros() as u64;
        let _ = self
            .pause_until
            .compare_exchange(us, 0, Ordering::AcqRel, Ordering::Acquire);
    }

    fn now(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64 + 1
    }

    /// Bytes arrived: while idle, they start a request's header.
    fn on_read(&self) {
        if self.active.load(Ordering::Acquire) == 0
            && self
                .head_since
                .compare_exchange(0, self.now(), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.changed.notify_one();
        }
    }

    fn request_started(&self) {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(0, Ordering::Release);
    }

    fn request_done(&self) {
        if self.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_since.store(self.now(), Ordering::Release);
            self.changed.notify_one();
        }
    }

    /// The next deadline and what passing it means; `None` while a request is
    /// being served (its own deadlines apply).
    fn deadline(&self, limits: &ConnLimits) -> Option<(u64, Closed)> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        match self.head_since.load(Ordering::Acquire) {
            0 => Some((
                self.idle_since
                    .load(Ordering::Acquire)
                    .saturating_add(limits.idle_timeout.as_millis() as u64),
                Closed::IdleTimeout,
            )),
            since => Some((
                since.saturating_add(limits.header_read_timeout.as_millis() as u64),
                Closed::HeaderTimeout,
            )),
        }
    }

    /// Resolves when the connection has overstayed a deadline.
    async fn watchdog(&self, limits: ConnLimits) -> Closed {
        loop {
            match self.deadline(&limits) {
                Some((at, why)) if at <= self.now() => return why,
                Some((at, _)) => {
                    let wake = self.opened + Duration::from_millis(at.saturating_sub(1));
                    tokio::select! {
                        _ = tokio::time::sleep_until(wake) => {}
                        _ = self.changed.notified() => {}
                    }
                }
                None => self.changed.notified().await,
            }
        }
    }
}

/// Marks a request answered when dropped, so a request whose client left
/// (its future dropped) counts too.
struct Active(Arc<ConnState>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.request_done();
    }
}

/// The first pause after a shed refusal; each refusal in a row doubles it.
const PAUSE_FIRST: Duration = Duration::from_millis(1);

/// The TCP stream, telling the connection's state when bytes arrive, and
/// leaving them unread while the connection is paused after a refusal.
struct Tracked {
    /// Always there until dropped: taken only by `drop`, to park it.
    inner: Option<TcpStream>,
    state: Arc<ConnState>,
    /// The timer of the pause in progress, kept for the next one.
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Tracked {
    fn io(&mut self) -> std::io::Result<Pin<&mut TcpStream>> {
        match &mut self.inner {
            Some(s) => Ok(Pin::new(s)),
            None => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }
}

impl Drop for Tracked {
    /// Parks the stream for the lingering close instead of closing it, when
    /// the connection's last answer left a body unread.
    fn drop(&mut self) {
        if self.state.lingers_until().is_some() {
            if let (Some(s), Ok(mut parked)) = (self.inner.take(), self.state.parked.lock()) {
                *parked = Some(s);
            }
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(until) = this.state.paused_until() {
            if until > tokio::time::Instant::now() {
                let sleep = match &mut this.pause {
                    Some(s) => {
                        if s.deadline() != until {
                            s.as_mut().reset(until);
                        }
                        s
                    }
                    None => this.pause.insert(Box::pin(tokio::time::sleep_until(until))),
                };
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            this.state.resume(until);
        }
        let before = buf.filled().len();
        let res = match self.io() {
            Ok(io) => io.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        };
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.on_read();
        }
        res
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.io()?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.io()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io()?.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io()?.poll_shutdown(cx)
    }
}

/// The soft descriptor limit (`RLIMIT_NOFILE`), or `None` where it cannot be read.
// Unsafe: std has no rlimit call; see SAFETY.
#[allow(unsafe_code)]
pub fn fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim.rlim_cur)
}

/// Binds a listener with `backlog` places in the kernel's accept queue.
/// tokio's `bind` asks for 128, the standard library's figure: a flood past
/// the connection cap overflows that at once, and every connection past it
/// waits out SYN retransmits (1, 3, 7 s...) instead of its turn.
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As tokio's `bind`: a restarted worker rebinds while old sockets linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Raises the soft descriptor limit to the hard one: the default soft limit
/// (often 1,024) is far below what a server holding thousands of keep-alive
/// connections needs, and only the hard limit is the operator's decision.
/// Returns (soft before, soft after, hard).
// Unsafe: std has no rlimit call; see SAFETY.
#[allow(unsafe_code)]
pub fn raise_fd_limit() -> std::io::Result<(u64, u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let after = fd_limit().unwrap_or(before);
    Ok((before, after, lim.rlim_max))
}

/// The connection cap that fits the descriptor limit: the configured one, or
/// less (with a warning) when the limit leaves no room for it.
pub fn effective_cap(configured: usize, fd_limit: Option<u64>) -> usize {
    match fd_limit {
        Some(limit) if (configured as u64).saturating_add(RESERVED_FDS) > limit => {
            let cap = limit.saturating_sub(RESERVED_FDS).max(1) as usize;
            tracing::warn!(
                configured,
                fd_limit = limit,
                cap,
                "INFERD_MAX_CONNECTIONS does not fit the descriptor limit; capping connections lower"
            );
            cap
        }
        _ => configured,
    }
}

/// After the last sweep of the accept queue at shutdown, how long the swept
/// connections have to be read before the stop reaches them: their requests
/// were sent with the connection, so they are in the socket already.
const SWEEP_READ: Duration = Duration::from_millis(50);

/// Accepts connections on `listener` and serves `app` on each until `signal`
/// resolves; then stops accepting, closes each connection after the request it
/// is serving, and returns when all are closed, or, once `abandon` is
/// cancelled (the grace period is over), when every connection still open has
/// been dropped with its requests. Waiting for the drop, rather than only
/// requesting it, lets the caller know that no handler is left to produce a
/// prediction-log record after it shuts the log down.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    metrics: Arc<ConnMetrics>,
    signal: impl Future<Output = ()> + Send + 'static,
    abandon: CancellationToken,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    metrics.connections_max.set(limits.max_connections as i64);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper grows a connection's read buffer to 400 KiB by default while a
    // large body streams in: 1,000 clients sending 2 MiB bodies held
    // hundreds of MB of buffers outside the memory budget (see
    // `inferd_api::MemoryBudget`). 16 KiB reads a 2 MiB body in 128 reads
    // and holds a request head of up to 16 KiB (nginx's default buffers
    // for a head are 8 KiB); a larger head is answered 431.
    builder.http1().max_buf_size(READ_BUFFER_BYTES);
    let builder = Arc::new(builder);
    let burst = Arc::new(BurstTrim::default());
    tokio::pin!(signal);
    let spawn = |tasks: &mut JoinSet<()>,
                 tcp: TcpStream,
                 peer: SocketAddr,
                 permit: OwnedSemaphorePermit| {
        // Responses are small: send them at once rather than letting Nagle's
        // algorithm hold them for the client's (delayed) ACK.
        let _ = tcp.set_nodelay(true);
        metrics.connections_accepted.inc();
        metrics.connections_open.inc();
        burst.opened(metrics.connections_open.get().max(0) as usize);
        let (app, builder, metrics, stop_rx, burst) = (
            app.clone(),
            builder.clone(),
            metrics.clone(),
            stop_rx.clone(),
            burst.clone(),
        );
        tasks.spawn(async move {
            let pauses = metrics.connection_pauses.clone();
            let why = serve_one(tcp, peer, app, &builder, limits, pauses, stop_rx).await;
            metrics.connections_open.dec();
            burst.closed(metrics.connections_open.get().max(0) as usize);
            metrics
                .connections_closed
                .with_label_values(&[why.label()])
                .inc();
            drop(permit);
        });
    };
    loop {
        // At the cap, wait here: the kernel queues new connections meanwhile.
        // Finished connections are reaped as they end, not only at the next
        // accept: a finished task's allocation (sized for the connection's
        // whole future, kilobytes) lives until its handle is taken from the
        // set, and after a flood of 20,000 that held 80 MiB until the next
        // client came.
        let permit = tokio::select! {
            _ = &mut signal => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = &mut signal => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    metrics.accept_errors.inc();
                    static FAILED: std::sync::LazyLock<inferd_telemetry::ratelimit::Every> =
                        inferd_telemetry::every!("accept failed");
                    if let Some(suppressed) = FAILED.tick() {
                        tracing::warn!(error = %e, suppressed, "accept failed");
                    }
                    // Out of descriptors (EMFILE/ENFILE) does not clear at once:
                    // pause rather than spin on the error.
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            },
        };
        spawn(&mut tasks, tcp, peer, permit);
    }
    // Connections the kernel has completed but the loop had not taken yet
    // would be reset when the listener closes, their requests perhaps sent:
    // take them in, and give them a moment to be read, so that they get the
    // drain's answer (503 with `Connection: close`) instead. Any arriving
    // after this sweep are refused, which a client can safely retry.
    let mut swept = 0;
    while let Ok(permit) = permits.clone().try_acquire_owned() {
        match listener.accept().now_or_never() {
            Some(Ok((tcp, peer))) => {
                spawn(&mut tasks, tcp, peer, permit);
                swept += 1;
            }
            _ => break,
        }
    }
    drop(listener);
    if swept > 0 {
        tokio::time::sleep(SWEEP_READ).await;
    }
    let _ = stop_tx.send(true);
    let all_closed = async { while tasks.join_next().await.is_some() {} };
    tokio::select! {
        _ = all_closed => {}
        _ = abandon.cancelled() => tasks.shutdown().await,
    }
    Ok(())
}

/// Most a connection buffers of what it reads (see `serve`).
const READ_BUFFER_BYTES: usize = 16 * 1024;

async fn serve_one(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    builder: &auto::Builder<TokioExecutor>,
    limits: ConnLimits,
    pauses: IntCounter,
    mut stop: watch::Receiver<bool>,
) -> Closed {
    let state = Arc::new(ConnState::new());
    let io = TokioIo::new(Tracked {
        inner: Some(tcp),
        state: state.clone(),
        pause: None,
    });
    let svc = {
        let state = state.clone();
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            state.request_started();
            let active = Active(state.clone());
            // One HTTP/2 connection carries many clients' streams: pausing
            // it for one refusal would stall them all.
            let h1 = req.version() < hyper::Version::HTTP_2;
            let (state, pauses) = (state.clone(), pauses.clone());
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(Arrival {
                at: Instant::now(),
                body_timed_out: state.body_timed_out.clone(),
            });
            let app = app.clone();
            async move {
                let resp = app.oneshot(req).await;
                if let (true, Ok(r)) = (h1, &resp) {
                    if let Some(l) = r.extensions().get::<inferd_api::Linger>() {
                        state.linger(l.until);
                    }
                    if r.extensions().get::<inferd_api::Shed>().is_some() {
                        if !state.shed(limits.refused_pause_max).is_zero() {
                            pauses.inc();
                        }
                    } else {
                        state.served();
                    }
                }
                drop(active);
                Ok::<_, Infallible>(match resp {
                    Ok(r) => r,
                    Err(never) => match never {},
                })
            }
        })
    };
    let mut stopping = *stop.borrow();
    // In a block of its own, so that hyper's connection, with its buffers, is
    // dropped before a lingering close (`Tracked` parks the stream then).
    let why = {
        let conn = builder.serve_connection_with_upgrades(io, svc);
        tokio::pin!(conn);
        if stopping {
            conn.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                res = conn.as_mut() => break match res {
                    _ if state.body_timed_out.load(Ordering::Acquire) => Closed::BodyTimeout,
                    Ok(()) if stopping => Closed::Shutdown,
                    Ok(()) => Closed::Client,
                    Err(_) => Closed::Error,
                },
                why = state.watchdog(limits) => break why,
                changed = stop.changed(), if !stopping => {
                    stopping = true;
                    if changed.is_ok() {
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    };
    if let (Some(stream), Some(until)) = (state.take_parked(), state.lingers_until()) {
        if !linger(stream, until, &mut stop).await {
            return Closed::BodyTimeout;
        }
    }
    why
}

/// The lingering close of a connection whose last answer refused a body it
/// left unread (`inferd_api::Linger`): hyper has sent the answer and shut
/// the write side, and what the client still sends is read and dropped until
/// it closes its side, `until` (the body's deadline) or shutdown. Closing
/// with the rest unread would reset the connection, and a client still
/// sending would see the reset instead of the answer. Meanwhile the
/// connection holds its socket and its task, not hyper's buffers. Returns
/// false when `until` came first.
async fn linger(
    stream: TcpStream,
    until: tokio::time::Instant,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let read = async {
        loop {
            if stream.readable().await.is_err() {
                return;
            }
            match discard(&stream) {
                Ok(0) => return,
                Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => return,
                _ => {}
            }
        }
    };
    tokio::select! {
        _ = read => true,
        _ = stop.wait_for(|stopping| *stopping) => true,
        _ = tokio::time::sleep_until(until) => false,
    }
}

/// One read of what the socket holds, dropped: the buffer is on the thread's
/// stack for the call, not in every lingering connection's task.
fn discard(stream: &TcpStream) -> std::io::Result<usize> {
    let mut buf = [0u8; 16 * 1024];
    stream.try_read(&mut buf)
}

#[cfg(test)]
mod tests;
