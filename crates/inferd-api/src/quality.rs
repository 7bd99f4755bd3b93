//! The quality loop's routes: labels fed back for served predictions
//! (`POST /v1/feedback`) and each model's online quality, shadow comparisons
//! and drift (`GET /v1/models/{name}/quality`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::{ApiError, ErrorBody};
use super::extract::JsonBody;
use super::state::AppState;
use inferd_core::quality::{Feedback, FeedbackError, Joined, QualityReport};
use inferd_core::CoreError;
use inferd_predlog::{JsonText, Record, FEEDBACK};
use inferd_telemetry::trace::TraceRef;

/// One label: which served instance, and its truth.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LabelEntry {
    /// The `x-request-id` the prediction was answered with.
    #[schema(example = "order-7f3a")]
    request_id: String,
    /// The instance's position in that request, from 0.
    #[serde(default)]
    instance: u32,
    /// A classifier's true label.
    #[serde(default)]
    #[schema(example = "spam")]
    label: Option<String>,
    /// A forecaster's true value: a number, or an object of target to number.
    #[serde(default)]
    value: Option<Value>,
    /// The model, recorded with a label deferred to the database's join
    /// (optional; the join itself is by request id and instance).
    #[serde(default)]
    model: Option<String>,
}

/// `POST /v1/feedback`: one label, or `{"labels": [...]}`. Each label is
/// kept as JSON until it is judged, so that one bad label is refused alone.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum FeedbackBody {
    Many { labels: Vec<Value> },
    One(Value),
}

/// The body as documented: one label, or several.
#[allow(dead_code)] // The schema of `FeedbackBody`, which parses more loosely.
#[derive(ToSchema)]
#[serde(untagged)]
pub(crate) enum FeedbackRequest {
    /// Several labels, each judged on its own.
    Many {
        /// The labels, at most INFERD_MAX_INSTANCES, each shaped as the one
        /// label below (`LabelEntry`). Each is judged on its own, so a
        /// malformed one is refused in the answer's `results`, not the request.
        #[schema(min_items = 1, value_type = Vec<Object>)]
        labels: Vec<LabelEntry>,
    },
    /// One label.
    One(LabelEntry),
}

/// What happened to each label.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FeedbackResponse {
    /// First labels for their instance.
    accepted: usize,
    /// Labels equal to the one already recorded (counted once).
    unchanged: usize,
    /// Labels that replaced a different earlier one.
    replaced: usize,
    /// Labels for predictions this worker did not serve, recorded in the
    /// prediction log's database for the join there (PostgreSQL only).
    deferred: usize,
    /// Labels refused (see `results`).
    rejected: usize,
    /// Per label, in order.
    results: Vec<LabelResult>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LabelResult {
    /// `accepted`, `unchanged`, `replaced`, `deferred` or `rejected`.
    outcome: &'static str,
    /// The model the instance was served by.
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    /// The versions it was served by (the primary first, then shadows).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    versions: Vec<String>,
    /// The refusal's status and message.
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Feeds back true labels (classifiers) or values (forecasters) for served
/// predictions, by the `x-request-id` they were answered with. Idempotent:
/// the same label again counts once; a different label replaces the earlier
/// one. A request with several labels is judged label by label and answers
/// 200 with each label's outcome (a refused one with its status): the good
/// ones are recorded whatever happens to the others, and resending the whole
/// request is safe.
#[utoipa::path(post, path = "/v1/feedback", tag = "v1", security(("bearer" = [])),
    request_body(content = FeedbackRequest, example = json!({"request_id": "order-7f3a", "instance": 0, "label": "spam"})),
    responses(
        (status = 200, description = "What happened to each label; for several labels, also those refused (each with its status)", body = FeedbackResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key (when INFERD_API_KEYS is set)", body = ErrorBody),
        (status = 404, description = "One label: no served instance under that request id and instance here (unknown, expired or evicted)", body = ErrorBody),
        (status = 409, description = "Label feedback is off (INFERD_QUALITY_INDEX=0)", body = ErrorBody),
        (status = 413, description = "Body over INFERD_MAX_BODY_BYTES", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = ErrorBody),
        (status = 422, description = "One label of the wrong type or not among the model's labels; or more labels than INFERD_MAX_INSTANCES (none is taken)", body = ErrorBody),
        (status = 429, description = "The memory budget for requests in flight is in use", body = ErrorBody),
        (status = 503, description = "Starting or draining", body = ErrorBody),
    ))]
pub(crate) async fn feedback(
    State(st): State<Arc<AppState>>,
    JsonBody(body): JsonBody<FeedbackBody>,
) -> Result<Response, ApiError> {
    if !st.quality.feedback_on() {
        st.quality
            .metrics()
            .feedback
            .with_label_values(&["off"])
            .inc();
        return Err(ApiError::Feedback(FeedbackError::Off));
    }
    let (entries, single) = match body {
        FeedbackBody::Many { labels } => (labels, false),
        FeedbackBody::One(v) => (vec![v], true),
    };
    if entries.is_empty() {
        return Err(ApiError::invalid("labels", "give at least one label"));
    }
    // The body's shape is checked whole; each label's content on its own.
    if let Some(i) = entries.iter().position(|e| !e.is_object()) {
        return Err(ApiError::invalid(
            format!("labels[{i}]"),
            "each label is an object with request_id, instance and label or value",
        ));
    }
    if entries.len() > st.settings.max_instances {
        return Err(ApiError::invalid(
            "labels",
            format!(
                "{} labels exceed the limit of {} per request (INFERD_MAX_INSTANCES)",
                entries.len(),
                st.settings.max_instances
            ),
        ));
    }
    let mut out = FeedbackResponse {
        accepted: 0,
        unchanged: 0,
        replaced: 0,
        deferred: 0,
        rejected: 0,
        results: Vec::with_capacity(entries.len()),
    };
    let mut statuses = Vec::new();
    for entry in entries {
        let result = match one(&st, entry) {
            Ok(Judged::Deferred(truth, entry)) => {
                st.quality
                    .metrics()
                    .feedback
                    .with_label_values(&["deferred"])
                    .inc();
                out.deferred += 1;
                let model = entry.model.clone().unwrap_or_default();
                let joined = Joined {
                    fed: inferd_core::quality::Fed::Accepted,
                    model: model.clone(),
                    versions: Vec::new(),
                };
                log_label(&st, &joined, &entry, truth);
                LabelResult {
                    outcome: "deferred",
                    model: entry.model,
                    versions: Vec::new(),
                    status: None,
                    error: None,
                }
            }
            Ok(Judged::Joined(joined, truth, entry)) => {
                let fed = joined.fed.as_str();
                st.quality
                    .metrics()
                    .feedback
                    .with_label_values(&[fed])
                    .inc();
                match joined.fed {
                    inferd_core::quality::Fed::Accepted => out.accepted += 1,
                    inferd_core::quality::Fed::Unchanged => out.unchanged += 1,
                    inferd_core::quality::Fed::Replaced => out.replaced += 1,
                }
                if joined.fed != inferd_core::quality::Fed::Unchanged {
                    log_label(&st, &joined, &entry, truth);
                }
                LabelResult {
                    outcome: fed,
                    model: Some(joined.model),
                    versions: joined.versions.into_iter().map(|(v, _)| v).collect(),
                    status: None,
                    error: None,
                }
            }
            Err((status, reason, message)) => {
                st.quality
                    .metrics()
                    .feedback
                    .with_label_values(&[reason])
                    .inc();
                out.rejected += 1;
                statuses.push(status);
                LabelResult {
                    outcome: "rejected",
                    model: None,
                    versions: Vec::new(),
                    status: Some(status.as_u16()),
                    error: Some(message),
                }
            }
        };
        out.results.push(result);
    }
    if single {
        if let Some(status) = statuses.first() {
            let message = out.results[0].error.clone().unwrap_or_default();
            return Err(ApiError::Label(*status, message));
        }
    }
    Ok((StatusCode::OK, Json(out)).into_response())
}

type Rejected = (StatusCode, &'static str, String);

enum Judged {
    Joined(Joined, Value, LabelEntry),
    Deferred(Value, LabelEntry),
}

fn one(st: &AppState, entry: Value) -> Result<Judged, Rejected> {
    let entry: LabelEntry = serde_json::from_value(entry).map_err(|e| {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("not a label (request_id, instance, label or value): {e}"),
        )
    })?;
    let (fed, truth) = match (&entry.label, &entry.value) {
        (Some(l), None) => (Feedback::Label(l), Value::from(l.as_str())),
        (None, Some(v)) => (Feedback::Value(v), v.clone()),
        _ => {
            return Err((
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "give exactly one of \"label\" (classifiers) and \"value\" (forecasters)".into(),
            ))
        }
    };
    match st.quality.feedback(&entry.request_id, entry.instance, fed) {
        Ok(j) => Ok(Judged::Joined(j, truth, entry)),
        Err(FeedbackError::Unknown { .. }) if st.settings.defer_unknown_labels => {
            Ok(Judged::Deferred(truth, entry))
        }
        Err(e) => {
            let status = match e {
                FeedbackError::Unknown { .. } => StatusCode::NOT_FOUND,
                FeedbackError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
                FeedbackError::Off => StatusCode::CONFLICT,
            };
            Err((status, e.reason(), e.to_string()))
        }
    }
}

/// The label goes to the prediction log beside the prediction it judges
/// (`role = feedback`): PostgreSQL keeps the latest per instance in its
/// `feedback` table, and a spill while the database is down is replayed like
/// the predictions.
fn log_label(st: &AppState, joined: &Joined, entry: &LabelEntry, truth: Value) {
    if !st.predlog.enabled() {
        return;
    }
    let key = if entry.label.is_some() {
        "label"
    } else {
        "value"
    };
    st.predlog.log(Record {
        id: Uuid::new_v4(),
        ts: chrono::Utc::now(),
        request_id: entry.request_id.clone(),
        model: joined.model.clone(),
        version: joined
            .versions
            .first()
            .map(|(v, _)| v.clone())
            .unwrap_or_default(),
        status: 200,
        instance: None,
        instance_sha256: None,
        input_sha256: None,
        prediction: JsonText::of(&serde_json::json!({ key: truth })),
        cached: false,
        latency_ms: 0.0,
        client: None,
        error: None,
        trace_id: None,
        instance_index: Some(entry.instance),
        role: Some(FEEDBACK.to_string()),
        trace: TraceRef::default(),
    });
}

/// A model's quality on live traffic in this process: per version and arm,
/// the windowed and total figures from labels fed back (accuracy and per-class
/// precision, recall and F1 with 95% Wilson intervals, or MAE and RMSE), label
/// coverage; each shadow against its primary on the same requests; and each
/// version's drift against its training data.
#[utoipa::path(get, path = "/v1/models/{name}/quality", tag = "v1", security(("bearer" = [])),
    params(("name" = String, Path, description = "Model name", example = "text-classifier")),
    responses(
        (status = 200, description = "The model's quality report", body = Object),
        (status = 401, description = "Missing or wrong API key (when INFERD_API_KEYS is set)", body = ErrorBody),
        (status = 404, description = "No such model", body = ErrorBody),
        (status = 503, description = "Models still loading", body = ErrorBody),
    ))]
pub(crate) async fn get_quality(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<QualityReport>, ApiError> {
    let deployment = st.lifecycle.deployment().ok_or(CoreError::NotReady)?;
    let versions = deployment.repository().versions(&name)?;
    // Versions that have not served yet still say whether drift is judged.
    for m in versions.values() {
        st.quality.book(m);
    }
    st.quality
        .report(&name)
        .map(Json)
        .ok_or_else(|| CoreError::ModelNotFound(name).into())
}
