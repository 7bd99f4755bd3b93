//! What every response owes its request, done once around the whole router:
//! an `x-request-id` (the client's, else a new UUID, given to the handlers in
//! the request's headers and echoed on the response) and `x-response-time`.
//!
//! axum applies a `Router::layer` to each route separately and calls a
//! route by cloning its boxed service chain, so every layer added there cost
//! a few heap allocations per request (issue 27 counted 28 for the clones of
//! nine layers). Here the two jobs are one plain service around the router:
//! no box, no clone per request, and the future is the router's own.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use tower::{Layer, Service};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const RESPONSE_TIME: HeaderName = HeaderName::from_static("x-response-time");

/// The layer: `Front` around a service.
#[derive(Clone, Copy, Default)]
pub(crate) struct FrontLayer;

impl<S> Layer<S> for FrontLayer {
    type Service = Front<S>;

    fn layer(&self, inner: S) -> Front<S> {
        Front { inner }
    }
}

/// The service; see the module's documentation.
#[derive(Clone)]
pub(crate) struct Front<S> {
    inner: S,
}

impl<S, B> Service<Request> for Front<S>
where
    S: Service<Request, Response = Response<B>, Error = Infallible>,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = FrontFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let start = Instant::now();
        let id = match req.headers().get(&REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = new_request_id();
                req.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
        };
        FrontFuture {
            inner: self.inner.call(req),
            start,
            id: Some(id),
        }
    }
}

/// A new request id: a random (v4) UUID, formatted on the stack.
fn new_request_id() -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    // A UUID's text is always a valid header value.
    HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("-"))
}

pin_project_lite::pin_project! {
    /// The router's future, then the two headers.
    pub(crate) struct FrontFuture<F> {
        #[pin]
        inner: F,
        start: Instant,
        id: Option<HeaderValue>,
    }
}

impl<F, B> Future for FrontFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = Result<Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut resp) = std::task::ready!(this.inner.poll(cx));
        let headers = resp.headers_mut();
        if let Some(id) = this.id.take() {
            // A handler that set its own id (none does today) keeps it.
            headers.entry(REQUEST_ID).or_insert(id);
        }
        headers.insert(RESPONSE_TIME, super::serve::ms(this.start.elapsed()));
        Poll::Ready(Ok(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn echo(req: Request) -> Result<Response, Infallible> {
        // The handler sees the id the response will carry.
        let id = req.headers().get(&REQUEST_ID).cloned();
        let mut resp = Response::new(axum::body::Body::empty());
        if let Some(id) = id {
            resp.headers_mut()
                .insert(HeaderName::from_static("x-seen-id"), id);
        }
        Ok(resp)
    }

    #[tokio::test]
    async fn a_clients_id_is_kept_and_a_missing_one_is_made() {
        let svc = FrontLayer.layer(tower::service_fn(echo));
        let req = Request::builder()
            .header("x-request-id", "abc")
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.headers()["x-request-id"], "abc");
        assert_eq!(resp.headers()["x-seen-id"], "abc");
        assert!(resp.headers().contains_key("x-response-time"));

        let resp = svc
            .oneshot(Request::new(axum::body::Body::empty()))
            .await
            .unwrap();
        let id = resp.headers()["x-request-id"].to_str().unwrap();
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
        assert_eq!(resp.headers()["x-seen-id"], id);
    }
}
