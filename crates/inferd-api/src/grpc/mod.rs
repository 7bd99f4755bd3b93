//! The KServe v2 / Open Inference Protocol over gRPC (`inference.GRPCInferenceService`,
//! from `proto/grpc_predict_v2.proto`), and the standard `grpc.health.v1.Health`
//! service for Kubernetes' gRPC probes, on a port of their own
//! (`INFERD_GRPC_LISTEN`).
//!
//! A front door like the REST ones: it translates the wire format and maps
//! errors to the protocol's codes in one place (`status`), and nothing more.
//! Inference goes through the same `serve_prediction` as HTTP (the same
//! pipeline, cache, limits, prediction log and metrics, labelled
//! `protocol="grpc"`); metadata, readiness and the model repository call the
//! same functions as the v2 REST routes. API keys come from the
//! `authorization` metadata entry, with the REST doors' rules: liveness and
//! readiness open where `/v2/health/live` and `/v2/health/ready` are exempt,
//! the repository calls for admin keys only.
//!
//! The client's gRPC deadline (`grpc-timeout`) is honoured: the earlier of it
//! and `INFERD_REQUEST_TIMEOUT_MS` bounds the queue wait and the inference.

pub(crate) mod infer;
pub mod pb;
pub(crate) mod status;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tonic::{Request, Response, Status};

use self::pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use self::status::status;
use super::auth::{bearer_token, Needs};
use super::error::ApiError;
use super::serve::{serve_prediction, Caller};
use super::state::AppState;
use super::v2;
use inferd_core::lifecycle::Phase;

/// The service, over the server's shared state.
#[derive(Clone)]
pub(crate) struct Inference {
    st: Arc<AppState>,
}

impl Inference {
    pub(crate) fn new(st: Arc<AppState>) -> Self {
        Inference { st }
    }

    /// The caller's key, checked as the REST doors check theirs.
    fn authorize<T>(&self, req: &Request<T>, needs: Needs) -> Result<(), Status> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        self.st.api_keys.check(needs, token).map_err(|e| status(&e))
    }

    /// Liveness and readiness need a key only where their REST twins do.
    fn probe_needs(&self, rest_path: &str) -> Needs {
        match self.st.api_keys.exempt(rest_path) {
            true => Needs::Open,
            false => Needs::Inference,
        }
    }
}

fn core(e: inferd_core::CoreError) -> Status {
    status(&ApiError::Core(e))
}

/// Empty means "the version the server picks", as an absent path segment does.
fn version(v: String) -> Option<String> {
    (!v.is_empty()).then_some(v)
}

/// `grpc-timeout`: an integer of at most 8 digits and a unit (H, M, S, m, u, n).
fn grpc_timeout<T>(req: &Request<T>) -> Option<Duration> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(
        &self,
        req: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        self.authorize(&req, self.probe_needs("/v2/health/live"))?;
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        req: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        self.authorize(&req, self.probe_needs("/v2/health/ready"))?;
        let ready = self.st.lifecycle.admit().is_ok();
        Ok(Response::new(pb::ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        req: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        self.authorize(&req, Needs::Inference)?;
        let r = req.into_inner();
        let ready = match v2::readiness(&self.st, r.name, version(r.version)) {
            Ok(m) => m.ready,
            // Starting or draining: not ready, which is an answer, not an error.
            Err(inferd_core::CoreError::NotReady | inferd_core::CoreError::Draining) => false,
            Err(e) => return Err(core(e)),
        };
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        req: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        self.authorize(&req, Needs::Inference)?;
        let m = v2::server_metadata().await.0;
        Ok(Response::new(pb::ServerMetadataResponse {
            name: m.name,
            version: m.version,
            extensions: m.extensions,
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        self.authorize(&req, Needs::Inference)?;
        let r = req.into_inner();
        let d = v2::deployment(&self.st).map_err(core)?;
        let m = v2::metadata(&d, r.name, version(r.version)).map_err(core)?;
        let tensors = |ts: Vec<v2::wire::TensorMetadata>| {
            ts.into_iter()
                .map(|t| pb::model_metadata_response::TensorMetadata {
                    name: t.name,
                    datatype: t.datatype,
                    shape: t.shape,
                })
                .collect()
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: m.name,
            versions: m.versions,
            platform: m.platform,
            inputs: tensors(m.inputs),
            outputs: tensors(m.outputs),
        }))
    }

    async fn model_infer(
        &self,
        req: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        self.authorize(&req, Needs::Inference)?;
        // As the HTTP doors do (`door`): while the queue (global, or the
        // model's by time) is full, refuse before
        // validating (for text, tokenizing), so that refusals cost the model no
        // CPU. tonic has decoded the message already; the rest is skipped.
        let admission = &self.st.pipeline.admission;
        let refusal = if admission.is_full() {
            Some(inferd_core::CoreError::QueueFull(admission.waiting()))
        } else {
            let m = req.get_ref();
            let version = Some(m.model_version.as_str()).filter(|v| !v.is_empty());
            self.st
                .lifecycle
                .deployment()
                .and_then(|d| d.refusal(Some(&m.model_name), version))
        };
        if let Some(e) = refusal {
            if let Some(reason) = e.rejection_reason() {
                self.st
                    .metrics
                    .rejections
                    .with_label_values(&[reason])
                    .inc();
            }
            self.st
                .doors
                .requests
                .with_label_values(&["", "", "429", "grpc"])
                .inc();
            return Err(core(e));
        }
        let st = self.st.clone();
        let mut caller = Caller::from_headers(req.metadata().as_ref(), req.remote_addr(), "grpc");
        caller.timeout = grpc_timeout(&req);
        let body = req.into_inner();
        let max_n = st.settings.max_instances;
        serve_prediction(
            st,
            caller,
            move |d, id| infer::prepare(d, id, body, max_n),
            infer::GrpcAnswer,
        )
        .await
        .result
    }

    async fn repository_index(
        &self,
        req: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        self.authorize(&req, Needs::Admin)?;
        let ready_only = req.into_inner().ready;
        let control = v2::repository::control(&self.st).map_err(core)?;
        let entries = control.index().await.map_err(core)?;
        let models = entries
            .into_iter()
            .filter(|e| !ready_only || e.state.name() == "READY")
            .map(v2::repository::item)
            .map(|i| pb::repository_index_response::ModelIndex {
                name: i.name,
                version: i.version,
                state: i.state,
                reason: i.reason,
            })
            .collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        req: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        self.authorize(&req, Needs::Admin)?;
        v2::repository::enabled(&self.st).map_err(|e| status(&e))?;
        let r = req.into_inner();
        let params: BTreeMap<String, Value> = r
            .parameters
            .into_iter()
            .map(|(k, v)| (k, repository_parameter(v)))
            .collect();
        let policy = v2::repository::policy_of(params).map_err(|e| status(&e))?;
        let control = v2::repository::control(&self.st).map_err(core)?;
        control.load(&r.model_name, policy).await.map_err(core)?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        req: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        self.authorize(&req, Needs::Admin)?;
        v2::repository::enabled(&self.st).map_err(|e| status(&e))?;
        let r = req.into_inner();
        let control = v2::repository::control(&self.st).map_err(core)?;
        control.unload(&r.model_name).await.map_err(core)?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}

fn repository_parameter(p: pb::ModelRepositoryParameter) -> Value {
    use pb::model_repository_parameter::ParameterChoice as C;
    match p.parameter_choice {
        Some(C::BoolParam(b)) => Value::Bool(b),
        Some(C::Int64Param(i)) => Value::from(i),
        Some(C::StringParam(s)) => Value::String(s),
        Some(C::BytesParam(b)) => Value::String(String::from_utf8_lossy(&b).into_owned()),
        None => Value::Null,
    }
}

/// The gRPC services as a router for the server's own accept loop
/// (`listen::serve`), so gRPC connections get the same cap, idle and header
/// deadlines, graceful shutdown and abandonment at the end of the grace as
/// HTTP ones. (tonic's own server would also enforce the client's deadline
/// itself, answering CANCELLED and dropping the call unrecorded; here the
/// pipeline enforces it and answers DEADLINE_EXCEEDED, counted as a 504.)
///
/// The health service follows the lifecycle: NOT_SERVING while the models
/// load and from the start of a drain, so that gRPC probes and balancers see
/// what `/readyz` says. The task that keeps it so is returned, to be stopped
/// with the server.
pub fn router(st: Arc<AppState>) -> (axum::Router, tokio::task::JoinHandle<()>) {
    let (reporter, health) = tonic_health::server::health_reporter();
    let lifecycle = st.lifecycle.clone();
    let watcher = tokio::spawn(async move {
        use tonic_health::ServingStatus;
        let mut last = None;
        loop {
            let now = match lifecycle.phase() {
                Phase::Serving => ServingStatus::Serving,
                _ => ServingStatus::NotServing,
            };
            if last != Some(now) {
                reporter.set_service_status("", now).await;
                reporter
                    .set_service_status(
                        <GrpcInferenceServiceServer<Inference> as tonic::server::NamedService>::NAME,
                        now,
                    )
                    .await;
                last = Some(now);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let limit = st.settings.max_body_bytes;
    let budget = axum::middleware::from_fn_with_state(st.clone(), super::budget::reserve_grpc);
    let svc = GrpcInferenceServiceServer::new(Inference::new(st))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX);
    let router = tonic::service::Routes::new(health)
        .add_service(svc)
        .into_axum_router()
        .layer(budget);
    (router, watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        let with = |v: &'static str| {
            let mut r = Request::new(());
            r.metadata_mut().insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&r)
        };
        assert_eq!(with("2S"), Some(Duration::from_secs(2)));
        assert_eq!(with("150m"), Some(Duration::from_millis(150)));
        assert_eq!(with("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(with("7u"), Some(Duration::from_micros(7)));
        assert_eq!(with("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(with("5x"), None);
        assert_eq!(with("S"), None);
        assert_eq!(grpc_timeout(&Request::new(())), None);
    }
}
