//! The memory budget for work in flight: every prediction request holds a
//! share of one budget from before its body is read until its response is
//! built, so that a flood of large bodies is refused instead of taking the
//! process past its memory limit.
//!
//! Admission control bounds the *number* of requests waiting for a model, but
//! a request is only counted once its body has been read and decoded: 1,000
//! clients sending 2 MB bodies at once took the server from 77 MB to 1.9 GB
//! resident before the first was refused, and a pod with a 1 GiB limit would
//! have been killed with everything in flight. Here:
//! - a request with a `Content-Length` reserves `cost(length)` before a byte
//!   of its body is read, waiting at most `INFERD_MEMORY_WAIT_MS` for room;
//!   without room it is answered 429 (`memory_budget`) and its body drained;
//! - a chunked request reserves as its chunks arrive, and is refused the same
//!   way when a chunk finds no room;
//! - the reservation is the body times `COST_FACTOR`: the body itself, its
//!   parsed form and the tensors decoded from it (strings for the text model
//!   are copied twice; numbers shrink from text to f32), plus a fixed
//!   `BASE_COST` for headers, buffers and the response. It is an estimate that
//!   errs high, checked by the flood test against resident memory;
//! - when the budget empties after heavy use, freed heap pages are handed back
//!   to the system (`malloc_trim`), so resident memory returns near idle.
//!
//! gRPC `ModelInfer` calls hold a reservation the same way (`reserve_grpc`,
//! around tonic, which would otherwise buffer and decode a whole message
//! before any handler could refuse it); their bodies carry no length, so
//! they reserve as their frames arrive, and a refusal is
//! `RESOURCE_EXHAUSTED` with the REST doors' message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;
use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::{ApiError, ErrorFormat};
use super::extract::{by_body_deadline, Arrival};
use super::grpc::status::Grpc;
use super::state::AppState;

/// A body's reservation, in multiples of its length.
pub(crate) const COST_FACTOR: u64 = 3;
/// Reserved per request whatever its body: headers, buffers, the response.
pub(crate) const BASE_COST: u64 = 16 * 1024;
/// Reservations are counted in KiB (a semaphore's permits are `u32`).
const UNIT: u64 = 1024;
/// How long after the budget empties the heap is trimmed.
const TRIM_DELAY: Duration = Duration::from_millis(500);
/// How often a request waiting for room looks again.
const RETRY_EVERY: Duration = Duration::from_millis(5);
/// Trim after the budget empties only if this share of it had been in use.
const TRIM_AFTER_USE: f64 = 0.25;

/// The budget shared by every prediction request.
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    total_units: u64,
    wait: Duration,
    used: IntGauge,
    /// Highest use since the budget last emptied, in units.
    high: AtomicU64,
}

/// What one request holds; dropping it returns its share.
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
    budget: Arc<MemoryBudget>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let b = &self.budget;
        // The permit is released after this body runs: count it as returned.
        let held = self._permit.num_permits() as u64;
        let free = b.permits.available_permits() as u64 + held;
        let used = b.total_units.saturating_sub(free);
        b.used.set((used * UNIT) as i64);
        if used == 0 {
            let high = b.high.swap(0, Ordering::Relaxed);
            if high as f64 >= TRIM_AFTER_USE * b.total_units as f64 {
                // A moment later: the connections that carried the flood
                // close after their last request, and free their buffers then.
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async {
                        tokio::time::sleep(TRIM_DELAY).await;
                        let _ = tokio::task::spawn_blocking(inferd_core::memory::trim).await;
                    });
                }
            }
        }
    }
}

impl MemoryBudget {
    /// A budget of `bytes`; a request waits at most `wait` for room. `used`
    /// and `total` are its gauges.
    pub fn new(bytes: u64, wait: Duration, used: IntGauge, total: &IntGauge) -> Arc<Self> {
        let total_units = (bytes / UNIT).clamp(1, u64::from(u32::MAX));
        total.set((total_units * UNIT) as i64);
        Arc::new(MemoryBudget {
            permits: Arc::new(Semaphore::new(total_units as usize)),
            total_units,
            wait,
            used,
            high: AtomicU64::new(0),
        })
    }

    /// The reservation for a body of `len` bytes.
    pub fn cost(len: u64) -> u64 {
        len.saturating_mul(COST_FACTOR).saturating_add(BASE_COST)
    }

    fn units(bytes: u64) -> u32 {
        bytes.div_ceil(UNIT).min(u64::from(u32::MAX)) as u32
    }

    fn note(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Reservation {
        let used = self
            .total_units
            .saturating_sub(self.permits.available_permits() as u64);
        self.used.set((used * UNIT) as i64);
        self.high.fetch_max(used, Ordering::Relaxed);
        Reservation {
            _permit: permit,
            budget: self.clone(),
        }
    }

    /// Reserves `bytes`, waiting up to the budget's wait; `None` without room.
    ///
    /// The wait polls rather than queueing on the semaphore: a queued waiter
    /// for a large body takes every permit freed until it has all of its
    /// own, so a flood of large bodies would starve the small requests the
    /// remaining room could serve (measured: a normal client refused while
    /// 3 MB of the budget sat unused).
    pub async fn reserve(self: &Arc<Self>, bytes: u64) -> Option<Reservation> {
        let n = Self::units(bytes).min(self.total_units as u32);
        let until = tokio::time::Instant::now() + self.wait;
        loop {
            if let Ok(p) = self.permits.clone().try_acquire_many_owned(n) {
                return Some(self.note(p));
            }
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            tokio::time::sleep(left.min(RETRY_EVERY)).await;
        }
    }

    /// Adds `bytes` to a reservation at once, or `None` without room.
    fn grow(self: &Arc<Self>, r: &mut Reservation, bytes: u64) -> Option<()> {
        let more = self
            .permits
            .clone()
            .try_acquire_many_owned(Self::units(bytes))
            .ok()?;
        r._permit.merge(more);
        let used = self
            .total_units
            .saturating_sub(self.permits.available_permits() as u64);
        self.used.set((used * UNIT) as i64);
        self.high.fetch_max(used, Ordering::Relaxed);
        Some(())
    }

    /// The budget in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.total_units * UNIT
    }
}

/// Serves `req` through `next` holding a reservation while it is served, if
/// it is a prediction; `F` renders the refusal in the router's protocol.
pub(crate) async fn reserve<F: ErrorFormat>(
    st: &Arc<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if req.method() != Method::POST || !super::door::is_prediction(req.uri().path()) {
        return next.run(req).await;
    }
    let max = st.settings.max_body_bytes as u64;
    hold::<F>(st, req, next, "http", max, Overflow::Refuse).await
}

/// The gRPC port's middleware: `ModelInfer` calls hold a reservation while
/// they are served, as REST predictions do. Their limit is the message size
/// limit plus the 5-byte gRPC frame header.
pub(crate) async fn reserve_grpc(
    State(st): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    if !is_model_infer(req.uri().path()) {
        return next.run(req).await;
    }
    // The key first, as the REST doors' gate does: a caller without one must
    // not hold room the others need, and is told UNAUTHENTICATED either way.
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(super::auth::bearer_token);
    if let Err(e) = st.api_keys.check(super::auth::Needs::Inference, token) {
        return Grpc::render(e);
    }
    let max = st.settings.max_body_bytes as u64 + GRPC_FRAME_HEADER;
    hold::<Grpc>(&st, req, next, "grpc", max, Overflow::HandOn).await
}

/// What a body without a length does past its size limit.
#[derive(Clone, Copy, PartialEq)]
enum Overflow {
    /// Answered 413 here (the REST doors).
    Refuse,
    /// Handed on as it is, for the protocol's own decoder to refuse: tonic
    /// reads the message's length prefix and answers `OUT_OF_RANGE`, as
    /// gRPC clients expect, without reading the rest.
    HandOn,
}

/// A gRPC message's length prefix: one flag byte and four of length.
const GRPC_FRAME_HEADER: u64 = 5;

fn is_model_infer(path: &str) -> bool {
    use super::grpc::pb::grpc_inference_service_server::GrpcInferenceServiceServer;
    use tonic::server::NamedService;
    const NAME: &str = <GrpcInferenceServiceServer<super::grpc::Inference> as NamedService>::NAME;
    path.strip_prefix('/')
        .and_then(|p| p.strip_prefix(NAME))
        .is_some_and(|m| m == "/ModelInfer")
}

/// `reserve` for a request already known to be a prediction of `protocol`
/// (the label its refusal is counted under), whose body may be `max` bytes.
async fn hold<F: ErrorFormat>(
    st: &Arc<AppState>,
    req: Request,
    next: Next,
    protocol: &'static str,
    max: u64,
    overflow: Overflow,
) -> Response {
    let Some(budget) = st.budget.clone() else {
        return next.run(req).await;
    };
    let length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match length {
        // Over the size limit: the extractor answers 413 without reading it.
        Some(len) => match budget.reserve(MemoryBudget::cost(len.min(max))).await {
            Some(held) => {
                let response = next.run(req).await;
                drop(held);
                response
            }
            None => {
                let (arrival, body) = super::door::body_alone(req);
                refuse::<F>(st, arrival, body, &budget, protocol).await
            }
        },
        None => chunked::<F>(st, req, next, &budget, (max, overflow), protocol).await,
    }
}

/// A body without a length: read here, reserving chunk by chunk, and handed
/// on whole.
async fn chunked<F: ErrorFormat>(
    st: &Arc<AppState>,
    req: Request,
    next: Next,
    budget: &Arc<MemoryBudget>,
    (max, overflow): (u64, Overflow),
    protocol: &'static str,
) -> Response {
    let Some(mut held) = budget.reserve(BASE_COST).await else {
        let (arrival, body) = super::door::body_alone(req);
        return refuse::<F>(st, arrival, body, budget, protocol).await;
    };
    let (parts, mut body) = req.into_parts();
    // The body's deadline, as for a body with a length: a client that stops
    // sending is answered 408, not waited for.
    let arrival = parts.extensions.get::<Arrival>();
    let timeout = st.settings.body_read_timeout;
    let mut buf = bytes::BytesMut::new();
    loop {
        let Some(frame) = by_body_deadline(arrival, timeout, body.frame()).await else {
            return F::render(ApiError::BodyTimeout(timeout.as_millis() as u64));
        };
        let Some(frame) = frame else {
            break;
        };
        let Ok(frame) = frame else {
            return F::render(ApiError::MalformedJson("the request body failed".into()));
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        if buf.len() as u64 + data.len() as u64 > max {
            if overflow == Overflow::Refuse {
                return F::render(ApiError::PayloadTooLarge(max as usize));
            }
            use futures::StreamExt;
            buf.extend_from_slice(data);
            let read = futures::stream::once(async move { Ok(buf.freeze()) });
            let req = Request::from_parts(
                parts,
                Body::from_stream(read.chain(body.into_data_stream())),
            );
            let response = next.run(req).await;
            drop(held);
            return response;
        }
        if budget
            .grow(&mut held, data.len() as u64 * COST_FACTOR)
            .is_none()
        {
            let arrival = parts.extensions.get::<Arrival>().cloned();
            return refuse::<F>(st, arrival, body, budget, protocol).await;
        }
        buf.extend_from_slice(data);
    }
    let mut req = Request::from_parts(parts, Body::from(Bytes::from(buf)));
    req.headers_mut().remove(header::TRANSFER_ENCODING);
    let response = next.run(req).await;
    drop(held);
    response
}

/// 429 `memory_budget`, after draining what is left of the body if it is
/// small, chunk by chunk, holding nothing, until the body's deadline; a
/// larger one is left to the accept loop's lingering close (`door::drain`):
/// answering a client still sending must not reset its connection.
async fn refuse<F: ErrorFormat>(
    st: &AppState,
    arrival: Option<Arrival>,
    body: Body,
    budget: &MemoryBudget,
    protocol: &'static str,
) -> Response {
    let drained = super::door::drain(st, arrival, body).await;
    st.metrics
        .rejections
        .with_label_values(&["memory_budget"])
        .inc();
    st.doors
        .requests
        .with_label_values(&["", "", "429", protocol])
        .inc();
    super::door::closing(
        F::render(ApiError::MemoryBudget(budget.total_bytes())),
        drained,
    )
}
