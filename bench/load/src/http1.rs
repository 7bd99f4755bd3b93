//! The lean HTTP/1.1 client behind `--protocol v1` and `v2`: each request is
//! encoded once, whole (request line, headers, body), and written as it is
//! on a pool of keep-alive connections; the answer is parsed with `httparse`
//! and its body skipped by its length.
//!
//! reqwest (over hyper) spends 70-100 us of CPU on every request: building
//! it, its header map, the pool's bookkeeping, a body stream. That caps an
//! open loop pinned to one core near 10,000 requests a second, below what a
//! server refusing fast (429) answers, so the generator, not the server, set
//! the pace. This client does a write, a read and a parse: 25-30 us a request
//! on loopback, most of it the kernel's (which delivers the request into the
//! server's socket on the sender's core).
//!
//! It speaks only what the load needs: plain `http://`, one request at a time
//! per connection (no pipelining), a body framed by `Content-Length`, chunks or
//! the connection's end.

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use reqwest::Url;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Most response headers read; inferd sends fewer than ten.
const MAX_HEADERS: usize = 64;

/// A response head still incomplete past this many bytes is refused, rather
/// than buffered without end.
const MAX_HEAD: usize = 64 * 1024;

/// Room kept free in a connection's buffer before each read.
const READ_CHUNK: usize = 8 * 1024;

/// Why an exchange failed. Every one counts as `connect_error` in the report,
/// as any reqwest error but a timeout does.
#[derive(Debug)]
pub enum Error {
    /// The connection could not be opened.
    Connect(io::Error),
    /// The connection failed or closed before any byte of the answer came:
    /// on a reused connection, most likely the server closed it while idle.
    Unanswered(io::Error),
    /// The connection failed part-way through the answer.
    Io(io::Error),
    /// The connection closed part-way through the answer.
    Truncated,
    /// The answer is not HTTP/1.x as this client reads it.
    Malformed(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect(e) => write!(f, "connect: {e}"),
            Error::Unanswered(e) => write!(f, "no answer: {e}"),
            Error::Io(e) => write!(f, "reading the answer: {e}"),
            Error::Truncated => f.write_str("connection closed mid-answer"),
            Error::Malformed(what) => write!(f, "malformed answer: {what}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<httparse::Error> for Error {
    fn from(e: httparse::Error) -> Self {
        Error::Malformed(e.to_string())
    }
}

/// What the load records of an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    /// The server's `x-queue-time`, in microseconds.
    pub queue_us: Option<u64>,
    /// Whether the connection may carry the next request.
    pub keep_alive: bool,
}

/// Where the requests go, from an `http://` URL.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    /// As the socket address wants it (an IPv6 address without brackets).
    host: String,
    port: u16,
    /// As the `Host` header wants it: `host[:port]`.
    authority: String,
}

impl Origin {
    /// `None` for a URL this client does not serve (not `http://`, or with
    /// credentials, which reqwest would send and this client would not).
    pub fn of(url: &Url) -> Option<Origin> {
        if url.scheme() != "http" || !url.username().is_empty() || url.password().is_some() {
            return None;
        }
        let named = url.host_str()?;
        let port = url.port_or_known_default()?;
        let authority = match url.port() {
            Some(p) => format!("{named}:{p}"),
            None => named.to_string(),
        };
        Some(Origin {
            host: named.trim_start_matches('[').trim_end_matches(']').into(),
            port,
            authority,
        })
    }
}

/// `POST` of `body` to `url` as the bytes on the wire.
pub fn encode_post(origin: &Origin, url: &Url, content_type: &str, body: &[u8]) -> Vec<u8> {
    let target = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let head = format!(
        "POST {target} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        origin.authority,
        body.len()
    );
    let mut wire = Vec::with_capacity(head.len() + body.len());
    wire.extend_from_slice(head.as_bytes());
    wire.extend_from_slice(body);
    wire
}

/// Keep-alive connections to one origin, idle ones kept for the next request.
///
/// The pool itself has no bound: a connection is opened only for a request
/// that finds none idle, so there are never more connections than the most
/// requests in flight at once, which the run loop bounds (`--max-in-flight`,
/// `--connections`).
pub struct Pool {
    origin: Origin,
    idle: Arc<Idle>,
}

/// The idle connections, and a signal when one comes back.
#[derive(Default)]
struct Idle {
    conns: Mutex<Vec<Conn>>,
    returned: Notify,
}

impl Idle {
    fn pop(&self) -> Option<Conn> {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    fn push(&self, conn: Conn) {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
        self.returned.notify_one();
    }
}

impl Pool {
    pub fn new(origin: Origin) -> Pool {
        Pool {
            origin,
            idle: Arc::default(),
        }
    }

    /// Sends `request` (complete, as `encode_post` makes it) and reads the
    /// answer, on an idle connection or a new one.
    pub async fn send(&self, request: &[u8]) -> Result<Response, Error> {
        let (mut conn, reused) = self.checkout().await?;
        let response = match conn.exchange(request).await {
            // The server closed the idle connection (its keep-alive timeout, a
            // restart) and never saw the request: send it again on a fresh
            // one, as hyper's pool does.
            Err(Error::Unanswered(_)) if reused => {
                conn = open(self.origin.clone()).await?;
                conn.exchange(request).await
            }
            other => other,
        }?;
        if response.keep_alive {
            self.idle.push(conn);
        }
        Ok(response)
    }

    /// An idle connection (`true`), or a new one.
    ///
    /// Without an idle one, it opens one but takes any that comes back
    /// first, and the new one joins the pool when it opens, as hyper's pool
    /// does. Opening costs more CPU than a request: were each request that
    /// finds none idle to wait for its own, a generator late by a burst
    /// would open a connection per late request and fall further behind
    /// (up to `--max-in-flight` connections, at the start of a run).
    async fn checkout(&self) -> Result<(Conn, bool), Error> {
        if let Some(conn) = self.idle.pop() {
            return Ok((conn, true));
        }
        let mut opening = Box::pin(open(self.origin.clone()));
        loop {
            // Listening before looking: a connection returned in between
            // still wakes us.
            let returned = self.idle.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(conn) = self.idle.pop() {
                let idle = self.idle.clone();
                tokio::spawn(async move {
                    if let Ok(new) = opening.await {
                        idle.push(new);
                    }
                });
                return Ok((conn, true));
            }
            tokio::select! {
                opened = &mut opening => return opened.map(|conn| (conn, false)),
                () = &mut returned => {}
            }
        }
    }
}

async fn open(origin: Origin) -> Result<Conn, Error> {
    let stream = TcpStream::connect((origin.host.as_str(), origin.port))
        .await
        .map_err(Error::Connect)?;
    // The request goes out in one write and waits for nothing after it.
    stream.set_nodelay(true).map_err(Error::Connect)?;
    Ok(Conn {
        stream,
        buf: Vec::with_capacity(READ_CHUNK),
    })
}

/// One connection and the buffer its answers are read into (kept, so that
/// reading allocates nothing once it has grown to the answers' size).
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn exchange(&mut self, request: &[u8]) -> Result<Response, Error> {
        exchange(&mut self.stream, &mut self.buf, request).await
    }
}

/// Writes `request` to `stream` and reads one answer, using `buf`.
async fn exchange<S>(stream: &mut S, buf: &mut Vec<u8>, request: &[u8]) -> Result<Response, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Err(e) = stream.write_all(request).await {
        // A server may answer (413, 429) and close before it has read the
        // whole body: its answer can still be waiting to be read.
        return match read_response(stream, buf).await {
            Ok(response) => Ok(Response {
                keep_alive: false,
                ..response
            }),
            Err(_) => Err(Error::Unanswered(e)),
        };
    }
    read_response(stream, buf).await
}

/// Reads one answer from `stream`, `buf` holding what was read of it.
async fn read_response<S>(stream: &mut S, buf: &mut Vec<u8>) -> Result<Response, Error>
where
    S: AsyncRead + Unpin,
{
    buf.clear();
    loop {
        if let Parsed::Done(mut response, used) = parse_response(buf, false)? {
            // Bytes past the answer belong to no request of ours: do not
            // guess what the next read would mean.
            response.keep_alive &= used == buf.len();
            return Ok(response);
        }
        buf.reserve(READ_CHUNK);
        let started = !buf.is_empty();
        let n = stream.read_buf(buf).await.map_err(|e| match started {
            false => Error::Unanswered(e),
            true => Error::Io(e),
        })?;
        if n == 0 {
            if !started {
                return Err(Error::Unanswered(io::ErrorKind::UnexpectedEof.into()));
            }
            // A body without a length ends with the connection.
            return match parse_response(buf, true)? {
                Parsed::Done(response, _) => Ok(Response {
                    keep_alive: false,
                    ..response
                }),
                Parsed::Partial => Err(Error::Truncated),
            };
        }
    }
}

/// What a buffer holds of an answer.
#[derive(Debug, PartialEq)]
enum Parsed {
    /// Not all of it yet.
    Partial,
    /// All of it, in the buffer's first `usize` bytes.
    Done(Response, usize),
}

/// How the body of an answer ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    Length(usize),
    Chunked,
    /// With the connection (`eof`: it has).
    UntilClose,
}

/// Parses the answer at the start of `buf`; `eof` says the connection closed
/// after it. Interim (1xx) answers are skipped: the final one follows.
fn parse_response(buf: &[u8], eof: bool) -> Result<Parsed, Error> {
    let mut at = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut head = httparse::Response::new(&mut headers);
        let head_len = match head.parse(&buf[at..])? {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial if buf.len() - at > MAX_HEAD => {
                return Err(Error::Malformed(format!("head over {MAX_HEAD} bytes")));
            }
            httparse::Status::Partial => return Ok(Parsed::Partial),
        };
        let status = head
            .code
            .ok_or_else(|| Error::Malformed("no status".into()))?;
        at += head_len;
        if (100..200).contains(&status) {
            continue;
        }
        let mut framing = match status {
            204 | 304 => Framing::Length(0),
            _ => Framing::UntilClose,
        };
        let mut close = head.version == Some(0);
        let mut queue_us = None;
        for h in head.headers.iter() {
            let value = || std::str::from_utf8(h.value).unwrap_or("").trim();
            if h.name.eq_ignore_ascii_case("content-length") && framing != Framing::Chunked {
                let n = value()
                    .parse()
                    .map_err(|_| Error::Malformed(format!("content-length {:?}", value())))?;
                framing = Framing::Length(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // Chunked, when it is, is the last coding, and wins over a length.
                if has_token(value(), "chunked") {
                    framing = Framing::Chunked;
                }
            } else if h.name.eq_ignore_ascii_case("connection") {
                if has_token(value(), "close") {
                    close = true;
                } else if has_token(value(), "keep-alive") {
                    close = false;
                }
            } else if h.name.eq_ignore_ascii_case("x-queue-time") {
                queue_us = crate::protocol::queue_us(Some(value()));
            }
        }
        let body = &buf[at..];
        let end = match framing {
            Framing::Length(n) => (body.len() >= n).then_some(n),
            Framing::Chunked => chunked_len(body)?,
            Framing::UntilClose => eof.then_some(body.len()),
        };
        return Ok(match end {
            None => Parsed::Partial,
            Some(n) => Parsed::Done(
                Response {
                    status,
                    queue_us,
                    keep_alive: !close && framing != Framing::UntilClose,
                },
                at + n,
            ),
        });
    }
}

/// Whether the comma-separated `value` holds `token` (any case).
fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The length of the chunked body at the start of `body`, trailers and the
/// final empty line included; `None` while incomplete.
fn chunked_len(body: &[u8]) -> Result<Option<usize>, Error> {
    let mut at = 0;
    loop {
        let (n, size) = match httparse::parse_chunk_size(&body[at..])
            .map_err(|_| Error::Malformed("chunk size".into()))?
        {
            httparse::Status::Complete(c) => c,
            httparse::Status::Partial => return Ok(None),
        };
        at += n;
        if size == 0 {
            // Trailer fields, if any, then an empty line.
            let rest = &body[at..];
            if rest.starts_with(b"\r\n") {
                return Ok(Some(at + 2));
            }
            return Ok(rest
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| at + i + 4));
        }
        let data = usize::try_from(size)
            .ok()
            .and_then(|s| s.checked_add(2))
            .ok_or_else(|| Error::Malformed(format!("chunk of {size} bytes")))?;
        if body.len() - at < data {
            return Ok(None);
        }
        if &body[at + data - 2..at + data] != b"\r\n" {
            return Err(Error::Malformed("chunk not ended by CRLF".into()));
        }
        at += data;
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use tokio::io::ReadBuf;
    use tokio::net::TcpListener;

    use super::*;

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
        x-queue-time: 0.250\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";

    fn done(status: u16, queue_us: Option<u64>, keep_alive: bool, len: usize) -> Parsed {
        Parsed::Done(
            Response {
                status,
                queue_us,
                keep_alive,
            },
            len,
        )
    }

    #[test]
    fn status_headers_and_a_content_length_body() {
        assert_eq!(
            parse_response(OK, false).expect("parses"),
            done(200, Some(250), true, OK.len())
        );
        let refused = b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            parse_response(refused, false).expect("parses"),
            done(429, None, true, refused.len())
        );
        // Every prefix is incomplete, however it is cut.
        for cut in 0..OK.len() {
            assert_eq!(
                parse_response(&OK[..cut], false).expect("a prefix"),
                Parsed::Partial,
                "{cut}"
            );
        }
        // What follows the body is not part of it.
        let two = [OK, OK].concat();
        assert_eq!(
            parse_response(&two, false).expect("parses"),
            done(200, Some(250), true, OK.len())
        );
    }

    #[test]
    fn connection_close_http_1_0_and_bodies_without_a_length() {
        let close =
            b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno";
        assert_eq!(
            parse_response(close, false).expect("parses"),
            done(503, None, false, close.len())
        );
        let old = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            parse_response(old, false).expect("parses"),
            done(200, None, false, old.len())
        );
        let old_kept = b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            parse_response(old_kept, false).expect("parses"),
            done(200, None, true, old_kept.len())
        );
        let unframed = b"HTTP/1.1 200 OK\r\n\r\nuntil the end";
        assert_eq!(
            parse_response(unframed, false).expect("parses"),
            Parsed::Partial
        );
        assert_eq!(
            parse_response(unframed, true).expect("parses"),
            done(200, None, false, unframed.len())
        );
        let no_content = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(
            parse_response(no_content, false).expect("parses"),
            done(204, None, true, no_content.len())
        );
    }

    #[test]
    fn chunked_bodies_and_interim_answers() {
        let chunked = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\
            Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n\
            4\r\nabcd\r\n1;ext=1\r\ne\r\n0\r\nx-trailer: 1\r\n\r\n";
        assert_eq!(
            parse_response(chunked, false).expect("parses"),
            done(200, None, true, chunked.len())
        );
        for cut in 0..chunked.len() {
            assert_eq!(
                parse_response(&chunked[..cut], false).expect("a prefix"),
                Parsed::Partial,
                "{cut}"
            );
        }
        assert!(matches!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd",
                false
            ),
            Err(Error::Malformed(_))
        ));
    }

    #[test]
    fn malformed_answers_are_errors() {
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n",
        ] {
            assert!(
                matches!(parse_response(bad, false), Err(Error::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let endless = [&b"HTTP/1.1 200 OK\r\nx: "[..], &[b'a'; MAX_HEAD]].concat();
        assert!(matches!(
            parse_response(&endless, false),
            Err(Error::Malformed(_))
        ));
    }

    /// A stream that hands out `chunks` one read at a time, then ends.
    struct Chunks(Vec<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if !self.0.is_empty() {
                let chunk = self.0.remove(0);
                // The test's chunks are smaller than any read's room.
                out.put_slice(&chunk);
            }
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn an_answer_split_across_reads() {
        for cut in [1, 10, OK.len() - 11, OK.len() - 1] {
            let mut stream = Chunks(vec![OK[..cut].to_vec(), OK[cut..].to_vec()]);
            let mut buf = Vec::new();
            let r = read_response(&mut stream, &mut buf).await.expect("read");
            assert_eq!((r.status, r.queue_us, r.keep_alive), (200, Some(250), true));
        }
        let bytewise = OK.iter().map(|b| vec![*b]).collect();
        let r = read_response(&mut Chunks(bytewise), &mut Vec::new())
            .await
            .expect("read");
        assert_eq!(r.status, 200);
        // Closed before a byte of the answer, or part-way through it.
        let mut buf = Vec::new();
        assert!(matches!(
            read_response(&mut Chunks(vec![]), &mut buf).await,
            Err(Error::Unanswered(_))
        ));
        assert!(matches!(
            read_response(&mut Chunks(vec![OK[..20].to_vec()]), &mut buf).await,
            Err(Error::Truncated)
        ));
        // Without a length, the end of the connection ends the body.
        let r = read_response(
            &mut Chunks(vec![b"HTTP/1.1 200 OK\r\n\r\nbody".to_vec()]),
            &mut buf,
        )
        .await
        .expect("read");
        assert_eq!((r.status, r.keep_alive), (200, false));
    }

    #[test]
    fn requests_are_encoded_whole() {
        let url = Url::parse("http://127.0.0.1:8080/v2/models/m/infer?x=1").expect("url");
        let origin = Origin::of(&url).expect("http");
        assert_eq!(
            encode_post(&origin, &url, "application/json", b"{}"),
            b"POST /v2/models/m/infer?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\
              Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
        let v6 = Origin::of(&Url::parse("http://[::1]/predict").expect("url")).expect("http");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 80));
        assert_eq!(v6.authority, "[::1]");
        for other in ["https://h/", "http://u:p@h/"] {
            assert_eq!(
                Origin::of(&Url::parse(other).expect("url")),
                None,
                "{other}"
            );
        }
    }

    /// A server on loopback that answers each request it reads on a
    /// connection with `answers` in turn, then closes that connection;
    /// counts the connections it accepted.
    async fn serve(answers: Vec<&'static [u8]>) -> (Origin, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let answers = answers.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    for a in answers {
                        // Each test request fits one read.
                        match s.read(&mut buf).await {
                            Ok(n) if n > 0 => {}
                            _ => return,
                        }
                        if s.write_all(a).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let url = Url::parse(&format!("http://127.0.0.1:{port}/predict")).expect("url");
        (Origin::of(&url).expect("http"), accepted)
    }

    fn request(origin: &Origin) -> Vec<u8> {
        let url = Url::parse("http://x/predict").expect("url");
        encode_post(origin, &url, "application/json", b"{\"instances\":[1]}")
    }

    #[tokio::test]
    async fn connections_are_reused_and_reopened_when_the_server_closes() {
        let limit = Duration::from_secs(10);
        // Three answers per connection, the third saying it closes.
        let close: &[u8] =
            b"HTTP/1.1 429 Too Many Requests\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        let (origin, accepted) = serve(vec![OK, OK, close]).await;
        let pool = Pool::new(origin.clone());
        let req = request(&origin);
        let mut statuses = Vec::new();
        for _ in 0..6 {
            let r = tokio::time::timeout(limit, pool.send(&req))
                .await
                .expect("in time")
                .expect("answered");
            statuses.push(r.status);
        }
        assert_eq!(statuses, [200, 200, 429, 200, 200, 429]);
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);

        // A server that closes after one answer without saying so: the next
        // request finds the connection dead and goes out again on a new one.
        let (origin, accepted) = serve(vec![OK]).await;
        let pool = Pool::new(origin.clone());
        for _ in 0..3 {
            let r = tokio::time::timeout(limit, pool.send(&req))
                .await
                .expect("in time")
                .expect("answered");
            assert_eq!(r.status, 200);
            // Let the server's close reach the idle connection.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_burst_opens_no_more_connections_than_requests_in_flight() {
        let (origin, accepted) = serve(vec![OK; 100]).await;
        let pool = Arc::new(Pool::new(origin.clone()));
        let req = Arc::new(request(&origin));
        let burst = |n: usize| {
            let mut all = tokio::task::JoinSet::new();
            for _ in 0..n {
                let (pool, req) = (pool.clone(), req.clone());
                all.spawn(async move { pool.send(&req).await.map(|r| r.status).ok() });
            }
            all
        };
        let within = Duration::from_secs(10);
        let mut first = burst(20);
        while let Some(status) = tokio::time::timeout(within, first.join_next())
            .await
            .expect("in time")
        {
            assert_eq!(status.expect("joined"), Some(200));
        }
        let opened = accepted.load(std::sync::atomic::Ordering::SeqCst);
        assert!((1..=20).contains(&opened), "{opened}");
        // Connections opened for requests that took a returned one instead
        // join the pool: give them time to, then run more at once than ever.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let idle = pool.idle.conns.lock().expect("unpoisoned").len();
        assert_eq!(idle, opened, "every connection opened is idle in the pool");
        let mut second = burst(opened);
        while let Some(status) = tokio::time::timeout(within, second.join_next())
            .await
            .expect("in time")
        {
            assert_eq!(status.expect("joined"), Some(200));
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), opened);
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/predict", listener.local_addr().expect("addr"));
        drop(listener);
        let origin = Origin::of(&Url::parse(&url).expect("url")).expect("http");
        let pool = Pool::new(origin.clone());
        let r = tokio::time::timeout(Duration::from_secs(10), pool.send(&request(&origin)))
            .await
            .expect("in time");
        assert!(matches!(r, Err(Error::Connect(_))), "{r:?}");
    }
}
