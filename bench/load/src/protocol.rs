//! The wire protocols requests go out in, and the `Target` that holds a run's
//! encoded requests and sends them.
//!
//! Everything protocol-specific is here: what a full body in a payload file
//! must hold (`Protocol::body_key`), what start-up asks the server and how the
//! payloads are encoded (`Target::connect`), and how one request is sent and
//! its outcome named (`Target::send`). The run loop knows only `Target`.
//! v1 and v2 go out on the lean HTTP/1.1 client of `http1` unless
//! `--http-client reqwest` asks for reqwest.

use std::fmt;
use std::time::Duration;

use clap::ValueEnum;
use reqwest::Url;
use serde::Serialize;
use serde_json::{json, Value};

use crate::payloads::{kind_of, Kind, Payload, Request};

/// How requests reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// inferd's JSON API: `POST /predict` with `{"model", "version", "instances"}`.
    V1,
    /// KServe v2 REST: `POST /v2/models/{model}[/versions/{version}]/infer` with one
    /// JSON input tensor (texts: BYTES `[n]`; windows: FP32 `[n, steps, features]`),
    /// named after `inputs[0]` of the model's metadata, read once at start-up.
    V2,
    /// KServe v2 over gRPC: `ModelInfer` on `--url` (the server's gRPC address,
    /// e.g. `http://127.0.0.1:8081`), the same tensors as v2 sent raw.
    Grpc,
}

impl Protocol {
    /// The array a full request body of this protocol holds.
    pub fn body_key(self) -> &'static str {
        match self {
            Protocol::V1 => "instances",
            Protocol::V2 | Protocol::Grpc => "inputs",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::V1 => "v1",
            Protocol::V2 => "v2",
            Protocol::Grpc => "grpc",
        })
    }
}

/// Which client sends v1 and v2 requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpClient {
    /// Requests encoded whole once and written on keep-alive HTTP/1.1
    /// connections (`http1`): 25-30 us of CPU each on loopback.
    Lean,
    /// reqwest (hyper): 70-100 us each.
    Reqwest,
}

/// How long a request may take, connecting included, before it counts as
/// `timeout`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How one request ended: the HTTP status (`200`, `429`...), or `timeout` /
/// `connect_error`, and the queue wait the server reported (`x-queue-time`).
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: String,
    pub queue_us: Option<u64>,
}

/// The server's `x-queue-time` (milliseconds, as a header or gRPC metadata)
/// in microseconds.
pub fn queue_us(value: Option<&str>) -> Option<u64> {
    value?.parse::<f64>().ok().map(|ms| (ms * 1e3) as u64)
}

/// The model's input as KServe v2 metadata describes it (`inputs[0]`).
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    pub name: String,
    pub datatype: String,
    /// `-1` where any size goes.
    pub shape: Vec<i64>,
}

/// Where a run's requests go, and the requests, encoded once at start-up.
pub enum Target {
    /// v1 and v2 on the lean client: each request as the bytes on the wire.
    Lean {
        pool: crate::http1::Pool,
        requests: Vec<Vec<u8>>,
    },
    /// v1 and v2 through reqwest: JSON bodies posted to one URL.
    Http {
        client: reqwest::Client,
        url: Url,
        bodies: Vec<Vec<u8>>,
    },
    /// gRPC: `ModelInferRequest`s over a few HTTP/2 channels.
    Grpc(crate::grpc::GrpcTarget),
}

/// `base` with `segments` appended to its path (`http://h:8080/` + `predict`).
fn endpoint(base: &str, segments: &[&str]) -> anyhow::Result<Url> {
    let mut url = Url::parse(base).map_err(|e| anyhow::anyhow!("--url {base}: {e}"))?;
    url.path_segments_mut()
        .map_err(|_| anyhow::anyhow!("--url {base}: not an http(s) base URL"))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// The v1 or v2 target posting `bodies` to `url`: on the lean client where it
/// serves the URL (plain `http://`), through reqwest otherwise.
fn http_target(
    with: HttpClient,
    client: reqwest::Client,
    url: Url,
    bodies: Vec<Vec<u8>>,
) -> Target {
    match (with, crate::http1::Origin::of(&url)) {
        (HttpClient::Lean, Some(origin)) => {
            let requests = bodies
                .iter()
                .map(|b| crate::http1::encode_post(&origin, &url, "application/json", b))
                .collect();
            Target::Lean {
                pool: crate::http1::Pool::new(origin),
                requests,
            }
        }
        _ => Target::Http {
            client,
            url,
            bodies,
        },
    }
}

/// `/v2/models/{model}[/versions/{version}]` and what follows it.
fn v2_path<'a>(model: &'a str, version: Option<&'a str>, tail: &[&'a str]) -> Vec<&'a str> {
    let mut p = vec!["v2", "models", model];
    if let Some(v) = version {
        p.extend(["versions", v]);
    }
    p.extend(tail);
    p
}

impl Target {
    /// Asks the server what the protocol needs (v2: the model's input), and
    /// encodes every payload; an error names the payload it cannot encode.
    /// `client` asks the v2 metadata, and sends the requests with
    /// `HttpClient::Reqwest`.
    pub async fn connect(
        protocol: Protocol,
        http_client: HttpClient,
        client: reqwest::Client,
        base: &str,
        model: &str,
        version: Option<&str>,
        payloads: &[Payload],
    ) -> anyhow::Result<Target> {
        anyhow::ensure!(!payloads.is_empty(), "no payloads to send");
        let encode = |p: &Payload, f: &dyn Fn(&[Value]) -> Result<Value, String>| {
            let body = match &p.request {
                Request::Body(v) => v.clone(),
                Request::Instances(items) => {
                    f(items).map_err(|e| anyhow::anyhow!("{}: {e}", p.origin))?
                }
            };
            Ok::<_, anyhow::Error>(serde_json::to_vec(&body)?)
        };
        match protocol {
            Protocol::V1 => {
                let wrap = |items: &[Value]| Ok(v1_body(model, version, items));
                let bodies = payloads
                    .iter()
                    .map(|p| encode(p, &wrap))
                    .collect::<anyhow::Result<_>>()?;
                let url = endpoint(base, &["predict"])?;
                Ok(http_target(http_client, client, url, bodies))
            }
            Protocol::V2 => {
                let meta = endpoint(base, &v2_path(model, version, &[]))?;
                let spec = v2_input(&client, &meta).await?;
                let wrap = |items: &[Value]| v2_body(&spec, model, items);
                let bodies = payloads
                    .iter()
                    .map(|p| encode(p, &wrap))
                    .collect::<anyhow::Result<_>>()?;
                let url = endpoint(base, &v2_path(model, version, &["infer"]))?;
                Ok(http_target(http_client, client, url, bodies))
            }
            Protocol::Grpc => {
                let mut clients = crate::grpc::connect(base).await?;
                let spec = crate::grpc::input_spec(&mut clients[0], model, version).await?;
                let requests = payloads
                    .iter()
                    .map(|p| {
                        let body = match &p.request {
                            Request::Body(v) => v.clone(),
                            Request::Instances(items) => v2_body(&spec, model, items)
                                .map_err(|e| anyhow::anyhow!("{}: {e}", p.origin))?,
                        };
                        crate::grpc::request(model, version, &body)
                            .map_err(|e| anyhow::anyhow!("{}: {e}", p.origin))
                    })
                    .collect::<anyhow::Result<_>>()?;
                Ok(Target::Grpc(crate::grpc::GrpcTarget::new(
                    clients, requests,
                )))
            }
        }
    }

    /// How many distinct requests there are.
    pub fn len(&self) -> usize {
        match self {
            Target::Lean { requests, .. } => requests.len(),
            Target::Http { bodies, .. } => bodies.len(),
            Target::Grpc(g) => g.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends request `i` (modulo their number) and names the outcome.
    pub async fn send(&self, i: u64) -> Outcome {
        // gRPC's and reqwest's futures are boxed: the open loop spawns a task
        // per request around this future and each spawn copies all of it,
        // 2.6 KB with theirs inline against 0.6 KB without.
        match self {
            Target::Grpc(g) => Box::pin(g.send(i)).await,
            Target::Lean { pool, requests } => {
                let request = &requests[(i % requests.len() as u64) as usize];
                send_lean(pool, request, REQUEST_TIMEOUT).await
            }
            Target::Http {
                client,
                url,
                bodies,
            } => {
                let body = bodies[(i % bodies.len() as u64) as usize].clone();
                Box::pin(send_reqwest(client, url, body)).await
            }
        }
    }
}

/// One request on the lean client, its failures named as the reqwest path
/// names them: `timeout` past `limit` (connecting included), `connect_error`
/// for any other.
async fn send_lean(pool: &crate::http1::Pool, request: &[u8], limit: Duration) -> Outcome {
    let (status, queue_us) = match tokio::time::timeout(limit, pool.send(request)).await {
        Ok(Ok(r)) => (r.status.to_string(), r.queue_us),
        Err(_) => ("timeout".into(), None),
        Ok(Err(_)) => ("connect_error".into(), None),
    };
    Outcome { status, queue_us }
}

async fn send_reqwest(client: &reqwest::Client, url: &Url, body: Vec<u8>) -> Outcome {
    let sent = client
        .post(url.clone())
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    match sent {
        Ok(r) => {
            let status = r.status().as_u16().to_string();
            let queue_us = queue_us(
                r.headers()
                    .get("x-queue-time")
                    .and_then(|v| v.to_str().ok()),
            );
            // Read the body so the connection can be reused.
            let _ = r.bytes().await;
            Outcome { status, queue_us }
        }
        Err(e) if e.is_timeout() => Outcome {
            status: "timeout".into(),
            queue_us: None,
        },
        Err(_) => Outcome {
            status: "connect_error".into(),
            queue_us: None,
        },
    }
}

/// The JSON API's request for bare instances.
pub fn v1_body(model: &str, version: Option<&str>, instances: &[Value]) -> Value {
    match version {
        Some(v) => json!({"model": model, "version": v, "instances": instances}),
        None => json!({"model": model, "instances": instances}),
    }
}

/// `GET /v2/models/{model}[/versions/{v}]`: the model's first input.
async fn v2_input(client: &reqwest::Client, url: &Url) -> anyhow::Result<InputSpec> {
    let what = format!("GET {url} (the model's v2 metadata)");
    let r = client
        .get(url.clone())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    let status = r.status();
    let text = r.text().await.map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    anyhow::ensure!(
        status.is_success(),
        "{what}: {status}: {}",
        text.chars().take(300).collect::<String>()
    );
    let meta: Value =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{what}: not JSON: {e}"))?;
    parse_input_spec(&meta).map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

/// `inputs[0]` of a v2 model metadata document.
pub fn parse_input_spec(meta: &Value) -> Result<InputSpec, String> {
    let input = &meta["inputs"][0];
    let name = input["name"]
        .as_str()
        .ok_or("no `inputs[0].name` in the metadata")?;
    let datatype = input["datatype"]
        .as_str()
        .ok_or("no `inputs[0].datatype` in the metadata")?;
    let shape = match &input["shape"] {
        Value::Array(dims) => dims
            .iter()
            .map(|d| d.as_i64().ok_or("`inputs[0].shape` holds a non-integer"))
            .collect::<Result<Vec<i64>, _>>()?,
        _ => return Err("no `inputs[0].shape` in the metadata".into()),
    };
    Ok(InputSpec {
        name: name.into(),
        datatype: datatype.into(),
        shape,
    })
}

/// The v2 request for bare instances: one input tensor named after the
/// model's, texts as BYTES `[n]`, windows as FP32 `[n, steps, features]` with
/// their values flattened row-major (a `null` gap stays `null`).
pub fn v2_body(spec: &InputSpec, model: &str, instances: &[Value]) -> Result<Value, String> {
    let first = instances.first().ok_or("no instances")?;
    let kind = kind_of(first)?;
    for v in &instances[1..] {
        let k = kind_of(v)?;
        if k != kind {
            return Err(format!("{k} and {kind} in one request"));
        }
    }
    let n = instances.len() as i64;
    let input_is = |what: &str| {
        format!(
            "model `{model}`'s input `{}` is {} with shape {:?}, {what}",
            spec.name, spec.datatype, spec.shape
        )
    };
    let (datatype, shape, data) = match kind {
        Kind::Text => {
            if spec.datatype != "BYTES" {
                return Err(input_is("not texts (BYTES)"));
            }
            ("BYTES", vec![n], instances.to_vec())
        }
        Kind::Window { steps, features } => {
            if spec.datatype == "BYTES" {
                return Err(input_is(&format!("not windows ({kind} was given)")));
            }
            let dims = [steps as i64, features as i64];
            let fits = match spec.shape.as_slice() {
                [_, s, f] => [*s, *f]
                    .iter()
                    .zip(dims)
                    .all(|(d, got)| *d < 0 || *d == got),
                _ => false,
            };
            if !fits {
                return Err(input_is(&format!("not {kind}")));
            }
            let flat = instances
                .iter()
                .flat_map(|w| w.as_array().into_iter().flatten())
                .flat_map(|row| row.as_array().into_iter().flatten())
                .cloned()
                .collect();
            ("FP32", vec![n, dims[0], dims[1]], flat)
        }
    };
    Ok(json!({"inputs": [{
        "name": spec.name,
        "datatype": datatype,
        "shape": shape,
        "data": data,
    }]}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, datatype: &str, shape: &[i64]) -> InputSpec {
        InputSpec {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn v2_bodies_are_one_tensor_named_after_the_model_input() {
        let text = spec("text", "BYTES", &[-1]);
        assert_eq!(
            v2_body(&text, "t", &[json!("a"), json!("b")]),
            Ok(
                json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}]})
            )
        );
        let window = spec("window", "FP32", &[-1, 3, 1]);
        let w = json!([[1.5], [null], [3]]);
        assert_eq!(
            v2_body(&window, "l", &[w.clone(), w.clone()]),
            Ok(
                json!({"inputs": [{"name": "window", "datatype": "FP32", "shape": [2, 3, 1],
                "data": [1.5, null, 3, 1.5, null, 3]}]})
            )
        );
        let e = v2_body(&window, "l", &[json!([[1], [2]])]).expect_err("2 steps");
        assert!(
            e.contains("`l`'s input `window`") && e.contains("not a window of 2x1"),
            "{e}"
        );
        let e = v2_body(&window, "l", &[json!("a")]).expect_err("text");
        assert!(e.contains("not texts"), "{e}");
        let e = v2_body(&text, "t", &[w]).expect_err("window");
        assert!(e.contains("not windows"), "{e}");
    }

    #[test]
    fn v1_bodies_name_the_version_when_given() {
        assert_eq!(
            v1_body("m", Some("2"), &[json!("x")]),
            json!({"model": "m", "version": "2", "instances": ["x"]})
        );
        assert_eq!(
            v1_body("m", None, &[json!("x")]),
            json!({"model": "m", "instances": ["x"]})
        );
    }

    #[test]
    fn metadata_and_endpoints() {
        let meta = json!({"name": "l", "inputs": [{"name": "window", "datatype": "FP32", "shape": [-1, 26, 1]}]});
        assert_eq!(
            parse_input_spec(&meta),
            Ok(spec("window", "FP32", &[-1, 26, 1]))
        );
        assert!(parse_input_spec(&json!({"inputs": []})).is_err());
        assert_eq!(
            endpoint("http://h:1/", &["predict"]).expect("url").as_str(),
            "http://h:1/predict"
        );
        assert_eq!(
            endpoint("http://h:1/base", &v2_path("m", Some("2"), &["infer"]))
                .expect("url")
                .as_str(),
            "http://h:1/base/v2/models/m/versions/2/infer"
        );
        assert!(endpoint("not a url", &[]).is_err());
    }

    #[tokio::test]
    async fn lean_outcomes_are_named_as_reqwest_names_them() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::TcpListener;

        let pool_for = |addr: std::net::SocketAddr| {
            let url = Url::parse(&format!("http://{addr}/predict")).expect("url");
            let origin = crate::http1::Origin::of(&url).expect("http");
            let request = crate::http1::encode_post(&origin, &url, "application/json", b"{}");
            (crate::http1::Pool::new(origin), request)
        };
        let limit = Duration::from_millis(300);

        // Answers 429 with a queue time, then holds the next request unanswered.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 429 Too Many Requests\r\nx-queue-time: 1.5\r\ncontent-length: 0\r\n\r\n")
                .await;
            let _ = s.read(&mut buf).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let (pool, request) = pool_for(addr);
        assert_eq!(
            send_lean(&pool, &request, limit).await,
            Outcome {
                status: "429".into(),
                queue_us: Some(1500)
            }
        );
        assert_eq!(send_lean(&pool, &request, limit).await.status, "timeout");
        server.abort();

        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = closed.local_addr().expect("addr");
        drop(closed);
        let (pool, request) = pool_for(addr);
        assert_eq!(
            send_lean(&pool, &request, limit).await,
            Outcome {
                status: "connect_error".into(),
                queue_us: None
            }
        );
    }
}
