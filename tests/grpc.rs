//! The gRPC front door (KServe v2 / Open Inference Protocol over gRPC, and the
//! gRPC health service) against a live server on loopback, with the client
//! generated from the same `.proto`: results equal the REST door's for both
//! models, typed and raw; each refusal has its code; keys come from metadata;
//! the client's deadline is honoured; metrics say `protocol="grpc"`.

mod common;

use std::time::Duration;

use common::gate::{held, Gate, EVENTUALLY};
use common::*;
use inferd::config::ServeConfig;
use inferd_api::testing::pb;
use inferd_api::testing::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::{Code, Request};

fn grpc_config() -> ServeConfig {
    let mut c = uncached();
    c.net.grpc_listen = "127.0.0.1:0".parse().expect("addr");
    c
}

async fn client(s: &TestServer) -> GrpcInferenceServiceClient<Channel> {
    let addr = s.grpc.expect("gRPC on");
    GrpcInferenceServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
}

fn texts(n: usize) -> Vec<String> {
    golden("text-classifier")["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .take(n)
        .map(|c| c["input"].as_str().expect("text").to_string())
        .collect()
}

fn windows(n: usize) -> Vec<f32> {
    golden("lstm-forecaster")["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .take(n)
        .flat_map(|c| {
            c["input"]
                .as_array()
                .expect("window")
                .iter()
                .flat_map(|row| {
                    row.as_array()
                        .expect("row")
                        .iter()
                        .map(|v| v.as_f64().expect("number") as f32)
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn input(name: &str, datatype: &str, shape: Vec<i64>) -> pb::model_infer_request::InferInputTensor {
    pb::model_infer_request::InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape,
        parameters: Default::default(),
        contents: None,
    }
}

/// Both ways to send each model's input: typed contents, and raw bytes.
fn requests(model: &str, n: usize) -> (pb::ModelInferRequest, pb::ModelInferRequest, Value) {
    match model {
        "text-classifier" => {
            let t = texts(n);
            let mut typed = input("text", "BYTES", vec![n as i64]);
            typed.contents = Some(pb::InferTensorContents {
                bytes_contents: t.iter().map(|s| s.as_bytes().to_vec()).collect(),
                ..Default::default()
            });
            let raw: Vec<u8> = t
                .iter()
                .flat_map(|s| {
                    let mut b = (s.len() as u32).to_le_bytes().to_vec();
                    b.extend_from_slice(s.as_bytes());
                    b
                })
                .collect();
            let rest =
                json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [n], "data": t}]});
            (
                pb::ModelInferRequest {
                    model_name: model.into(),
                    inputs: vec![typed],
                    ..Default::default()
                },
                pb::ModelInferRequest {
                    model_name: model.into(),
                    inputs: vec![input("text", "BYTES", vec![n as i64])],
                    raw_input_contents: vec![raw],
                    ..Default::default()
                },
                rest,
            )
        }
        _ => {
            let w = windows(n);
            let steps = (w.len() / n) as i64;
            let mut typed = input("window", "FP32", vec![n as i64, steps, 1]);
            typed.contents = Some(pb::InferTensorContents {
                fp32_contents: w.clone(),
                ..Default::default()
            });
            let raw: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
            let rest = json!({"inputs": [{"name": "window", "datatype": "FP32", "shape": [n, steps, 1], "data": w}]});
            (
                pb::ModelInferRequest {
                    model_name: model.into(),
                    inputs: vec![typed],
                    ..Default::default()
                },
                pb::ModelInferRequest {
                    model_name: model.into(),
                    inputs: vec![input("window", "FP32", vec![n as i64, steps, 1])],
                    raw_input_contents: vec![raw],
                    ..Default::default()
                },
                rest,
            )
        }
    }
}

/// An output's elements, from typed contents or raw bytes, as f64 (exact
/// for float32 and for these small integers).
fn elements(resp: &pb::ModelInferResponse, i: usize) -> Vec<f64> {
    let o = &resp.outputs[i];
    if let Some(raw) = resp.raw_output_contents.get(i) {
        return match o.datatype.as_str() {
            "FP32" => raw
                .chunks(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64)
                .collect(),
            "INT64" => raw
                .chunks(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f64)
                .collect(),
            d => panic!("datatype {d}"),
        };
    }
    let c = o.contents.as_ref().expect("typed contents");
    match o.datatype.as_str() {
        "FP32" => c.fp32_contents.iter().map(|x| *x as f64).collect(),
        "INT64" => c.int64_contents.iter().map(|x| *x as f64).collect(),
        d => panic!("datatype {d}"),
    }
}

/// The REST door's elements the same way: its JSON prints float32 in their
/// shortest form, which reads back to the same float32.
fn rest_elements(data: &Value, datatype: &str) -> Vec<f64> {
    data.as_array()
        .expect("data")
        .iter()
        .map(|v| match datatype {
            "FP32" => v.as_f64().expect("number") as f32 as f64,
            _ => v.as_f64().expect("number"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_over_grpc_equals_the_rest_door_for_both_models_typed_and_raw() {
    let s = TestServer::start(grpc_config()).await;
    let mut c = client(&s).await;
    for model in ["text-classifier", "lstm-forecaster"] {
        let (typed, raw, rest) = requests(model, 8);
        let (st, _, want) = s
            .post_json(&format!("/v2/models/{model}/infer"), &rest)
            .await;
        assert_eq!(st, 200, "{want}");
        for (how, req) in [("typed", typed), ("raw", raw)] {
            let got = c.model_infer(req).await.expect(how).into_inner();
            assert_eq!(got.model_name, model);
            assert_eq!(got.model_version, want["model_version"].as_str().unwrap());
            assert_eq!(got.raw_output_contents.is_empty(), how == "typed", "{how}");
            let outputs = want["outputs"].as_array().expect("outputs");
            assert_eq!(got.outputs.len(), outputs.len(), "{model} {how}");
            for (i, w) in outputs.iter().enumerate() {
                let o = &got.outputs[i];
                assert_eq!(o.name, w["name"].as_str().unwrap(), "{model} {how}");
                assert_eq!(o.datatype, w["datatype"].as_str().unwrap());
                assert_eq!(json!(o.shape), w["shape"], "{model} {how}");
                assert_eq!(
                    elements(&got, i),
                    rest_elements(&w["data"], &o.datatype),
                    "{model} {how} output {}",
                    o.name
                );
            }
        }
    }
    let m = s.metrics().await;
    let grpc_200 = grpc_requests(&m, 200);
    assert_eq!(
        grpc_200, 4.0,
        "two models x typed and raw, counted as gRPC:\n{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_readiness_and_the_health_service() {
    let s = TestServer::start(grpc_config()).await;
    let mut c = client(&s).await;
    assert!(
        c.server_live(pb::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let md = c
        .server_metadata(pb::ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(md.name, "inferd");
    assert!(md.extensions.iter().any(|e| e == "model_repository"));
    let mm = c
        .model_metadata(pb::ModelMetadataRequest {
            name: "lstm-forecaster".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mm.inputs[0].name, "window");
    assert_eq!(mm.inputs[0].datatype, "FP32");
    assert!(mm.versions.contains(&latest_version("lstm-forecaster")));
    let ready = |name: &str, version: &str| pb::ModelReadyRequest {
        name: name.into(),
        version: version.into(),
    };
    assert!(
        c.model_ready(ready("text-classifier", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let e = c.model_ready(ready("nope", "")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = c
        .model_ready(ready("text-classifier", "99"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    let channel = Channel::from_shared(format!("http://{}", s.grpc.unwrap()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    // The health service follows the lifecycle within its 50 ms tick.
    for service in ["", "inference.GRPCInferenceService"] {
        let t = std::time::Instant::now();
        loop {
            let r = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .expect("health")
                .into_inner();
            use tonic_health::pb::health_check_response::ServingStatus;
            if r.status() == ServingStatus::Serving {
                break;
            }
            assert!(
                t.elapsed() < EVENTUALLY,
                "{service:?}: {:?} while /readyz says ready",
                r.status()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_unknown_models_get_their_codes() {
    let s = TestServer::start(grpc_config()).await;
    let mut c = client(&s).await;
    let (typed, _, _) = requests("lstm-forecaster", 2);
    let mut cases: Vec<(&str, pb::ModelInferRequest, Code)> = Vec::new();
    let mut unknown = typed.clone();
    unknown.model_name = "no-such-model".into();
    cases.push(("unknown model", unknown, Code::NotFound));
    let mut version = typed.clone();
    version.model_version = "99".into();
    cases.push(("unknown version", version, Code::NotFound));
    let mut dtype = typed.clone();
    dtype.inputs[0].datatype = "BYTES".into();
    cases.push(("wrong datatype", dtype, Code::InvalidArgument));
    let mut shape = typed.clone();
    shape.inputs[0].shape = vec![2, 5, 1];
    cases.push(("wrong shape", shape, Code::InvalidArgument));
    let mut negative = typed.clone();
    negative.inputs[0].shape = vec![-2, 26, 1];
    cases.push(("negative dimension", negative, Code::InvalidArgument));
    let mut name = typed.clone();
    name.inputs[0].name = "text".into();
    cases.push(("wrong input name", name, Code::InvalidArgument));
    let mut output = typed.clone();
    output.outputs = vec![pb::model_infer_request::InferRequestedOutputTensor {
        name: "no-such-output".into(),
        parameters: Default::default(),
    }];
    cases.push(("unknown output", output, Code::InvalidArgument));
    let mut both = typed.clone();
    both.raw_input_contents = vec![vec![0; 8]];
    cases.push(("typed and raw at once", both, Code::InvalidArgument));
    let mut short = typed.clone();
    short.inputs[0].contents = None;
    short.raw_input_contents = vec![vec![0; 7]];
    cases.push(("raw bytes short of the shape", short, Code::InvalidArgument));
    let mut gaps = typed.clone();
    if let Some(c) = gaps.inputs[0].contents.as_mut() {
        // NaN reads as a missing reading (as in the REST door's binary
        // tensors); a window of nothing else is refused.
        c.fp32_contents
            .iter_mut()
            .take(26)
            .for_each(|x| *x = f32::NAN);
    }
    cases.push((
        "a window of only missing readings",
        gaps,
        Code::InvalidArgument,
    ));
    let mut many = typed;
    many.inputs[0].shape = vec![65, 26, 1];
    if let Some(c) = many.inputs[0].contents.as_mut() {
        c.fp32_contents = vec![1.0; 65 * 26];
    }
    cases.push((
        "more instances than INFERD_MAX_INSTANCES",
        many,
        Code::InvalidArgument,
    ));
    for (what, req, want) in cases {
        let e = c.model_infer(req).await.expect_err(what);
        assert_eq!(e.code(), want, "{what}: {e:?}");
        assert!(!e.message().is_empty(), "{what}");
    }
    // The server is still whole.
    let (typed, _, _) = requests("lstm-forecaster", 1);
    c.model_infer(typed)
        .await
        .expect("served after the refusals");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_resource_exhausted_and_the_client_deadline_is_honoured() {
    let mut cfg = grpc_config();
    cfg.limits.max_concurrency = Some(1);
    cfg.limits.max_queue = 1;
    cfg.batching.max_batch_size = Some(1);
    let gate = Gate::closed();
    let _open = gate.open_on_drop();
    let s = TestServer::start_with_loader(cfg, held(&gate)).await;
    let c = client(&s).await;
    let (typed, _, _) = requests("lstm-forecaster", 1);
    let call = |c: &GrpcInferenceServiceClient<tonic::transport::Channel>| {
        let (mut c, req) = (c.clone(), typed.clone());
        tokio::spawn(async move { c.model_infer(req).await })
    };
    // One call held in the model, one in the queue's only place: the next
    // four are refused while the gate holds the first.
    let running = call(&c);
    gate.until_waiting(1, "the first call in the model").await;
    let queued = call(&c);
    common::eventually("the second call queued", || async {
        common::metric(&s.metrics().await, "inferd_queue_depth") == 1.0
    })
    .await;
    for _ in 0..4 {
        let e = call(&c)
            .await
            .unwrap()
            .expect_err("refused while the queue is full");
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert_eq!(
            e.metadata()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("1")
        );
    }
    // Each refusal counted once, as a gRPC 429.
    assert_eq!(grpc_requests(&s.metrics().await, 429), 4.0);

    // A 100 ms deadline while the model holds every call: an answer at all
    // is the server's own deadline (the model never answers while held).
    // tonic's client would give up on its own timer at the same moment, so
    // the call is sent by hand (HTTP/2 with the gRPC framing).
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut frame = vec![0u8];
    let msg = prost::Message::encode_to_vec(&typed);
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    gate.open();
    for t in [running, queued] {
        t.await.unwrap().expect("served once the gate opened");
    }
    gate.close();
    let held_call = call(&c);
    gate.until_waiting(1, "a call held in the model").await;
    let r = tokio::time::timeout(
        EVENTUALLY,
        h2.post(format!(
            "http://{}/inference.GRPCInferenceService/ModelInfer",
            s.grpc.unwrap()
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "100m")
        .body(frame)
        .send(),
    )
    .await
    .expect("the server answered the call past its deadline")
    .expect("an HTTP/2 answer");
    let grpc_status = r
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    assert_eq!(
        grpc_status.as_deref(),
        Some("4"),
        "DEADLINE_EXCEEDED (4) from the server: {:?}",
        r.headers()
    );
    let m = s.metrics().await;
    let deadline_504 = grpc_requests(&m, 504);
    assert!(deadline_504 >= 1.0, "the server counted the deadline:\n{m}");
    gate.open();
    held_call
        .await
        .unwrap()
        .expect("served once the gate opened");
}

/// A `ModelInfer` call holds room in the memory budget from its first
/// frame until it is answered, as a REST prediction does: a second call that
/// finds no room is refused before tonic buffers it, as RESOURCE_EXHAUSTED
/// counted as a gRPC 429 for `memory_budget`, and the room comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_hold_room_in_the_memory_budget() {
    let mut cfg = grpc_config();
    // Room for one call of the largest message: 3 x 4 KiB + 16 KiB.
    cfg.limits.max_body_bytes = 4096;
    cfg.limits.memory_budget_bytes = Some(3 * 4096 + 16 * 1024);
    cfg.limits.memory_wait_ms = 0;
    let gate = Gate::closed();
    let _open = gate.open_on_drop();
    let s = TestServer::start_with_loader(cfg, held(&gate)).await;
    let c = client(&s).await;
    // 32 windows sent raw: 3,328 bytes of floats.
    let (_, raw, _) = requests("lstm-forecaster", 32);
    let first = {
        let (mut c, r) = (c.clone(), raw.clone());
        tokio::spawn(async move { c.model_infer(r).await })
    };
    gate.until_waiting(1, "the first call in the model").await;
    let used = metric(&s.metrics().await, "inferd_memory_budget_used_bytes");
    assert!(
        used >= (16 * 1024 + 3 * 3328) as f64,
        "the held call's reservation: {used}"
    );
    let e = c
        .clone()
        .model_infer(raw.clone())
        .await
        .expect_err("no room for a second call");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("memory budget"), "{e:?}");
    assert_eq!(
        e.metadata()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let m = s.metrics().await;
    assert_eq!(grpc_requests(&m, 429), 1.0, "{m}");
    assert_eq!(
        metric(&m, "inferd_rejections_total{reason=\"memory_budget\"}"),
        1.0
    );
    gate.open();
    first
        .await
        .unwrap()
        .expect("the held call is served once the gate opens");
    common::eventually("the room comes back", || async {
        metric(&s.metrics().await, "inferd_memory_budget_used_bytes") == 0.0
    })
    .await;
    // A message over the size limit is still refused by the decoder, as
    // before the budget's layer: OUT_OF_RANGE.
    let mut big = raw.clone();
    big.raw_input_contents = vec![vec![0; 8192]];
    let e = c.clone().model_infer(big).await.expect_err("too large");
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    c.clone().model_infer(raw).await.expect("served again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_come_from_the_authorization_metadata() {
    let mut cfg = grpc_config();
    cfg.auth.api_keys = Some("inference-key".into());
    cfg.auth.admin_keys = Some("admin-key".into());
    let s = TestServer::start(cfg).await;
    let mut c = client(&s).await;
    let with = |key: Option<&str>, req: pb::ModelInferRequest| {
        let mut r = Request::new(req);
        if let Some(k) = key {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {k}").parse().unwrap());
        }
        r
    };
    let (typed, _, _) = requests("text-classifier", 1);
    let e = c.model_infer(with(None, typed.clone())).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = c
        .model_infer(with(Some("wrong"), typed.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    c.model_infer(with(Some("inference-key"), typed))
        .await
        .expect("a valid key");
    // Probes stay open, as /v2/health/* do.
    assert!(
        c.server_live(pb::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    // The repository is for admin keys.
    let index = |key: &str| {
        let mut r = Request::new(pb::RepositoryIndexRequest::default());
        r.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        r
    };
    let e = c
        .repository_index(index("inference-key"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let models = c
        .repository_index(index("admin-key"))
        .await
        .expect("admin key")
        .into_inner()
        .models;
    assert!(
        models
            .iter()
            .any(|m| m.name == "text-classifier" && m.state == "READY"),
        "{models:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_is_unavailable_and_the_health_service_says_so() {
    let mut cfg = grpc_config();
    cfg.net.drain_delay_ms = 1_500;
    let mut s = TestServer::start(cfg).await;
    let mut c = client(&s).await;
    let channel = Channel::from_shared(format!("http://{}", s.grpc.unwrap()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let (typed, _, _) = requests("lstm-forecaster", 1);
    c.model_infer(typed.clone())
        .await
        .expect("served before the drain");
    s.trigger_shutdown();
    let t = std::time::Instant::now();
    use tonic_health::pb::health_check_response::ServingStatus;
    loop {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health answers during the drain")
            .into_inner();
        if r.status() == ServingStatus::NotServing {
            break;
        }
        assert!(t.elapsed() < EVENTUALLY, "still SERVING");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let e = c.model_infer(typed).await.expect_err("draining");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(
        e.metadata()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert!(
        !c.server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    tokio::time::timeout(Duration::from_secs(10), &mut s.handle)
        .await
        .expect("the server returned after the drain")
        .unwrap()
        .unwrap();
}
