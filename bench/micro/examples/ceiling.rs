//! The HTTP ceiling for the serving figures: a bare axum route that takes the
//! same `/predict` body inferd takes, parses it the same way (typed request,
//! instances as JSON values), checks the content type and that each instance
//! is a window of numbers, and answers a response of the same shape, with no
//! model, queue, cache or log. inferd's request path is measured against it.
//!
//! With `typed`, `/predict` is the plainest route axum can have for a
//! forecaster instead (issue 27): the body straight into
//! `{model, instances: Vec<Vec<Vec<f32>>>}` by axum's own `Json`, answered
//! with `{model, predictions: Vec<f32>}` (each window's last reading). It
//! checks nothing the types do not, which is the ceiling that parsing a
//! request and writing a response allow.
//!
//! `cargo run --release -p inferd-microbench --example ceiling -- 127.0.0.1:18304 [typed]`

use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictRequest {
    model: String,
    #[serde(default)]
    version: Option<String>,
    instances: Vec<Value>,
}

#[derive(Serialize)]
struct Forecast {
    co2_ppm: f64,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Prediction {
    Forecast { forecast: Forecast },
    Label { label: &'static str },
}

#[derive(Serialize)]
struct PredictResponse {
    model: String,
    version: String,
    predictions: Vec<Prediction>,
    cached: Vec<bool>,
}

fn error(status: StatusCode, message: String) -> Response {
    (
        status,
        Json(serde_json::json!({"error": {"message": message}})),
    )
        .into_response()
}

/// What the server's own route does before the model: content type, typed
/// parse with the failing path, per-instance checks; then a same-shaped answer.
async fn predict(headers: HeaderMap, body: Bytes) -> Response {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if !json {
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send JSON".into());
    }
    let de = &mut serde_json::Deserializer::from_slice(&body);
    let req: PredictRequest = match serde_path_to_error::deserialize(&mut *de) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    };
    let mut predictions = Vec::with_capacity(req.instances.len());
    for inst in &req.instances {
        match inst {
            Value::String(_) => predictions.push(Prediction::Label { label: "ham" }),
            Value::Array(rows) => {
                let mut last = 0.0;
                for row in rows {
                    match row.get(0).and_then(Value::as_f64) {
                        Some(v) => last = v,
                        None if row.get(0).is_some_and(Value::is_null) => {}
                        None => {
                            return error(StatusCode::UNPROCESSABLE_ENTITY, "not a number".into())
                        }
                    }
                }
                predictions.push(Prediction::Forecast {
                    forecast: Forecast { co2_ppm: last },
                });
            }
            _ => return error(StatusCode::UNPROCESSABLE_ENTITY, "bad instance".into()),
        }
    }
    let n = predictions.len();
    Json(PredictResponse {
        model: req.model,
        version: req.version.unwrap_or_else(|| "1".into()),
        predictions,
        cached: vec![false; n],
    })
    .into_response()
}

#[derive(Deserialize)]
struct TypedRequest {
    model: String,
    instances: Vec<Vec<Vec<f32>>>,
}

#[derive(Serialize)]
struct TypedResponse {
    model: String,
    predictions: Vec<f32>,
}

/// The typed route: axum's `Json` both ways, nothing else.
async fn predict_typed(Json(req): Json<TypedRequest>) -> Json<TypedResponse> {
    let predictions = req
        .instances
        .iter()
        .map(|w| w.last().and_then(|r| r.first()).copied().unwrap_or(0.0))
        .collect();
    Json(TypedResponse {
        model: req.model,
        predictions,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18304".into());
    let typed = args.next().as_deref() == Some("typed");
    let route = if typed {
        post(predict_typed)
    } else {
        post(predict)
    };
    let app = Router::new()
        .route("/predict", route)
        .route("/readyz", get(|| async { "ready" }));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!(
        "ceiling probe on {addr} ({})",
        if typed { "typed" } else { "values" }
    );
    // As inferd does: answers go out at once, not after the client's ACK.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}
