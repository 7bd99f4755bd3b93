//! Refusal at the door: while the inference queue is full (the global bound),
//! or the queue of the model the path names refuses by time (`governor`; for
//! `/predict`, the only model when one serves), a prediction is answered 429
//! before its body is read or parsed.
//!
//! Under overload the refusals are most of the traffic; parsing and validating
//! each one (tokenizing a text, for the classifier) took the CPU the model
//! needed, so goodput fell to a few percent of capacity at 64 times the
//! saturating load. Here a refusal costs the routing and one atomic load. The
//! check is advisory: a request let in while the queue fills is still refused
//! by `Admission::enter` after decoding, exactly as before. A small body is
//! still drained (read and dropped, up to `DRAIN_AT_MOST`), so that the
//! connection can carry the client's next request; a larger one is left to
//! the accept loop's lingering close ([`Linger`]): closing a connection on
//! unread data resets it, and the client would see a reset instead of the
//! 429. Cache hits are refused too while the queue is full; telling them
//! apart would mean reading and hashing the body, which is the cost this
//! saves.

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method};
use axum::response::Response;
use http_body_util::BodyExt;

use super::extract::{by_body_deadline, Arrival};

use super::error::{ApiError, ErrorFormat, Linger};
use super::state::AppState;
use inferd_core::CoreError;

/// The request back when it may go on, else its refusal, rendered by `F` in
/// the router's protocol after its body is drained.
pub(crate) async fn check<F: ErrorFormat>(
    st: &AppState,
    req: Request,
) -> Result<Request, Response> {
    let path = req.uri().path();
    if req.method() != Method::POST || !is_prediction(path) {
        return Ok(req);
    }
    let Some(e) = refusal(st, path) else {
        return Ok(req);
    };
    let (arrival, body) = body_alone(req);
    let drained = drain(st, arrival, body).await;
    if let Some(reason) = e.rejection_reason() {
        st.metrics.rejections.with_label_values(&[reason]).inc();
    }
    // No model was resolved: the same empty labels as other refusals before
    // resolution, so `inferd_requests_total{status="429"}` counts every 429.
    st.doors
        .requests
        .with_label_values(&["", "", "429", "http"])
        .inc();
    Err(closing(F::render(ApiError::Core(e)), drained))
}

/// The most of a refused request's body that is read here (and dropped):
/// a few reads of the connection's buffer, after which the connection carries
/// the client's next request. A larger body is not read (`Drained::Left`).
pub(crate) const DRAIN_AT_MOST: u64 = 16 * 1024;

/// What became of a refused request's body.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Drained {
    /// Read to its end: the connection stays open for the next request.
    Whole,
    /// Its deadline passed first, and the connection is marked as a body
    /// timeout: the answer closes it.
    Stalled,
    /// More than `DRAIN_AT_MOST` was left unread: the answer closes the
    /// connection, which the accept loop reads and drops until the client
    /// closes its side or the body's deadline (given here) passes.
    Left(std::time::Instant),
}

/// Reads and drops a refused request's body if it is small (at most
/// `DRAIN_AT_MOST` bytes), so that the connection stays usable; a larger
/// body is left unread for the accept loop's lingering close. Reading it
/// here, through hyper, held the connection's read buffers (two of up to
/// 16 KiB each, measured) while it came in: with 10,000 clients sending
/// 2 MiB bodies and refused for memory, 270 MB outside the memory budget.
/// A small body is read only until the body's deadline
/// (`INFERD_BODY_READ_TIMEOUT_MS` from the header's arrival, as for a body
/// that is read): a client that stops sending must not hold its connection
/// for good.
pub(crate) async fn drain(
    st: &AppState,
    arrival: Option<Arrival>,
    mut body: axum::body::Body,
) -> Drained {
    use axum::body::HttpBody;
    let timeout = st.settings.body_read_timeout;
    let until = arrival
        .as_ref()
        .map_or_else(std::time::Instant::now, |a| a.at)
        + timeout;
    if body.size_hint().lower() > DRAIN_AT_MOST {
        return Drained::Left(until);
    }
    let mut left = DRAIN_AT_MOST;
    let read = async {
        while let Some(Ok(frame)) = body.frame().await {
            let n = frame.data_ref().map_or(0, |d| d.len()) as u64;
            if n > left {
                return false;
            }
            left -= n;
        }
        true
    };
    match by_body_deadline(arrival.as_ref(), timeout, read).await {
        Some(true) => Drained::Whole,
        Some(false) => Drained::Left(until),
        None => Drained::Stalled,
    }
}

/// A refused request's body and arrival, the rest dropped at once: the
/// head's parts (headers, extensions) are not kept while a body drains.
/// Keeping them through the drain, 10,000 clients refused for memory took
/// resident memory 150 MB higher.
pub(crate) fn body_alone(req: Request) -> (Option<Arrival>, axum::body::Body) {
    let (mut parts, body) = req.into_parts();
    (parts.extensions.remove::<Arrival>(), body)
}

/// `response`, closing the connection after it unless the request's body was
/// drained whole: the rest of it may still come, and would be read as the
/// next request. A body left unread is marked for the lingering close.
pub(crate) fn closing(mut response: Response, drained: Drained) -> Response {
    let linger = match drained {
        Drained::Whole => return response,
        Drained::Stalled => None,
        Drained::Left(until) => Some(Linger { until }),
    };
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    if let Some(l) = linger {
        response.extensions_mut().insert(l);
    }
    response
}

/// Why a prediction to `path` is refused before its body is read, if it is.
fn refusal(st: &AppState, path: &str) -> Option<CoreError> {
    let admission = &st.pipeline.admission;
    if admission.is_full() {
        return Some(CoreError::QueueFull(admission.waiting()));
    }
    let (name, version) = model_in_path(path);
    st.lifecycle.deployment()?.refusal(name, version)
}

/// The model and version a prediction path names: `.../models/{name}[/versions/{v}]/...`.
fn model_in_path(path: &str) -> (Option<&str>, Option<&str>) {
    let mut parts = path.split('/').skip_while(|p| *p != "models").skip(1);
    let name = parts.next().filter(|n| !n.is_empty());
    let version = match (parts.next(), parts.next()) {
        (Some("versions"), v) => v,
        _ => None,
    };
    (name, version)
}

/// The prediction routes of both front doors (`/predict`,
/// `/v1/models/{name}[/versions/{v}]/predict`, `/v2/models/{name}[/versions/{v}]/infer`).
pub(crate) fn is_prediction(path: &str) -> bool {
    path.ends_with("/predict") || path.ends_with("/infer")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_model_a_path_names() {
        use super::model_in_path as m;
        assert_eq!(m("/predict"), (None, None));
        assert_eq!(m("/v1/models/lstm/predict"), (Some("lstm"), None));
        assert_eq!(m("/v1/models/t/versions/2/predict"), (Some("t"), Some("2")));
        assert_eq!(m("/models/t/infer"), (Some("t"), None));
        assert_eq!(m("/v2/models/t/versions/1/infer"), (Some("t"), Some("1")));
    }

    #[test]
    fn prediction_paths() {
        for p in [
            "/predict",
            "/v1/models/m/predict",
            "/v1/models/m/versions/1/predict",
            "/models/m/infer",
            "/models/m/versions/2/infer",
        ] {
            assert!(super::is_prediction(p), "{p}");
        }
        for p in [
            "/repository/models/m/load",
            "/models/m",
            "/metrics",
            "/readyz",
        ] {
            assert!(!super::is_prediction(p), "{p}");
        }
    }
}
