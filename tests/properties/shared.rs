//! The shared server: one in-process inferd on the real models for every
//! HTTP property, how it is asked, and what every answer must look like.

use crate::*;

pub(crate) struct Shared {
    pub rt: tokio::runtime::Runtime,
    pub server: common::TestServer,
}

/// One server on the real models for every HTTP property, started by the
/// first that needs it (the default configuration of the other test files).
pub(crate) fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let server = rt.block_on(common::TestServer::start(common::config()));
        Shared { rt, server }
    })
}

#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub content_type: String,
    pub header_length: Option<String>,
    pub filled: Option<String>,
    pub body: Vec<u8>,
}

/// POSTs to the shared server. No answer at all is a failure: that is what a
/// panicking handler looks like from the client.
pub(crate) fn post(
    path: &str,
    headers: &[(&'static str, Vec<u8>)],
    body: Vec<u8>,
) -> Result<Reply, TestCaseError> {
    let s = shared();
    s.rt.block_on(async {
        let mut req = s
            .server
            .client
            .post(s.server.url(path))
            .timeout(Duration::from_secs(30))
            .body(body);
        for (name, value) in headers {
            let v = reqwest::header::HeaderValue::from_bytes(value)
                .map_err(|e| TestCaseError::fail(format!("test bug: header {name}: {e}")))?;
            req = req.header(*name, v);
        }
        let r = req.send().await.map_err(|e| {
            TestCaseError::fail(format!(
                "POST {path}: no answer ({e}); a handler that panics drops the connection"
            ))
        })?;
        let header = |n: &str| {
            r.headers()
                .get(n)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let status = r.status().as_u16();
        let content_type = header("content-type").unwrap_or_default();
        let header_length = header("inference-header-content-length");
        let filled = header("x-inferd-filled");
        let body = r
            .bytes()
            .await
            .map_err(|e| TestCaseError::fail(format!("POST {path}: body cut short ({e})")))?
            .to_vec();
        Ok::<Reply, TestCaseError>(Reply {
            status,
            content_type,
            header_length,
            filled,
            body,
        })
    })
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Door {
    /// `{"error": {"code", "message"}}`.
    V1,
    /// `{"error": "<message>"}`.
    V2,
}

/// Below 500, and an error is JSON in the front door's own shape.
pub(crate) fn check_reply(door: Door, r: &Reply) -> TestCaseResult {
    no_server_panic()?;
    let text = || String::from_utf8_lossy(&r.body[..r.body.len().min(600)]).into_owned();
    prop_assert!(r.status < 500, "{}: {}", r.status, text());
    if (200..300).contains(&r.status) {
        return Ok(());
    }
    prop_assert!(
        r.content_type.starts_with("application/json"),
        "{} with content type `{}`: {}",
        r.status,
        r.content_type,
        text()
    );
    let v: Value = serde_json::from_slice(&r.body).map_err(|e| {
        TestCaseError::fail(format!(
            "{}: error body is not JSON ({e}): {}",
            r.status,
            text()
        ))
    })?;
    let message = match door {
        Door::V1 => {
            prop_assert!(
                v["error"]["code"].is_string(),
                "{}: no error code: {v}",
                r.status
            );
            v["error"]["message"].as_str()
        }
        Door::V2 => v["error"].as_str(),
    };
    prop_assert!(
        message.is_some_and(|m| !m.is_empty()),
        "{}: no error message: {v}",
        r.status
    );
    Ok(())
}

/// A 200 from the JSON API answers exactly the instances sent, in a document
/// that was a request.
pub(crate) fn check_v1_success(sent: &[u8], r: &Reply) -> TestCaseResult {
    let req: PredictRequest = serde_json::from_slice(sent)
        .map_err(|e| TestCaseError::fail(format!("200 for a body that is no request: {e}")))?;
    let n = req.instances.as_ref().map(Vec::len);
    prop_assert!(n.is_some(), "200 without instances");
    let got: Value = serde_json::from_slice(&r.body)
        .map_err(|e| TestCaseError::fail(format!("200 body is not JSON: {e}")))?;
    prop_assert_eq!(got["predictions"].as_array().map(Vec::len), n, "{}", got);
    prop_assert_eq!(got["cached"].as_array().map(Vec::len), n, "{}", got);
    Ok(())
}

/// Bytes per element of an output datatype.
pub(crate) fn output_size(datatype: &str) -> Option<u64> {
    match datatype {
        "FP32" | "INT32" => Some(4),
        "FP64" | "INT64" => Some(8),
        _ => None,
    }
}

/// A 200 from v2 answers as many instances as the input's first dimension,
/// each output consistent with its shape, in JSON or in binary.
pub(crate) fn check_v2_success(sent_json: &[u8], r: &Reply) -> TestCaseResult {
    // Parsed as the server parses it: fields it ignores are not checked.
    let sent: InferRequest = serde_json::from_slice(sent_json)
        .map_err(|e| TestCaseError::fail(format!("200 for a JSON part that is no request: {e}")))?;
    let k = sent.inputs.first().and_then(|i| i.shape.first()).copied();
    prop_assert!(k.is_some(), "200 without a first dimension: {sent:?}");
    let (head, blob) = match &r.header_length {
        Some(n) => {
            let n: usize = n.parse().map_err(|_| {
                TestCaseError::fail(format!("bad Inference-Header-Content-Length {n}"))
            })?;
            prop_assert!(n <= r.body.len());
            r.body.split_at(n)
        }
        None => (&r.body[..], &[][..]),
    };
    let head: Value = serde_json::from_slice(head)
        .map_err(|e| TestCaseError::fail(format!("200 whose JSON part is not JSON: {e}")))?;
    let outputs = head["outputs"].as_array().cloned().unwrap_or_default();
    // An empty `outputs` list asks for none.
    let none_asked = sent.outputs.as_ref().is_some_and(Vec::is_empty);
    prop_assert!(
        !outputs.is_empty() || none_asked,
        "200 without outputs: {head}"
    );
    let mut binary = 0;
    for o in &outputs {
        let shape: Vec<u64> = o["shape"]
            .as_array()
            .map(|s| s.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        prop_assert_eq!(shape.first().copied(), k, "{}", o);
        let elements: u64 = shape.iter().product();
        match o["parameters"]["binary_data_size"].as_u64() {
            Some(size) => {
                let each = output_size(o["datatype"].as_str().unwrap_or(""));
                prop_assert_eq!(Some(size), each.map(|e| e * elements), "{}", o);
                binary += size;
            }
            None => prop_assert_eq!(
                o["data"].as_array().map(|d| d.len() as u64),
                Some(elements),
                "{}",
                o
            ),
        }
    }
    prop_assert_eq!(
        binary,
        blob.len() as u64,
        "binary outputs vs bytes after the header"
    );
    Ok(())
}
