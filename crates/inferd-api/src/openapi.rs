//! The OpenAPI 3.1 document's skeleton (title, tags, the bearer scheme) and its
//! rendering as an HTML reference. The routes add their own paths and schemas
//! (`routes`): `GET /openapi.json` serves the result, `docs/openapi.json` holds a
//! committed copy that a test keeps equal to it, and the conformance suite
//! (schemathesis) checks the live server against it.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi as Document;
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "inferd",
        description = "Model-inference server: ONNX models through ONNX Runtime, and TorchScript \
            models through libtorch in builds with the `torch` feature. Its front doors reach the same \
            models through one pipeline (admission, cache, dynamic batching, prediction log): inferd's \
            own JSON API (`/predict`, `/v1/...`) and the KServe v2 / Open Inference Protocol over REST \
            (`/v2/...`, with Triton's binary tensor extension), both described here, and over gRPC on \
            a port of its own. When `INFERD_API_KEYS` is set, the routes marked \
            with the `bearer` scheme need `Authorization: Bearer <key>`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "v1", description = "inferd's JSON API: instances in, predictions out"),
        (name = "kserve-v2", description = "KServe v2 / Open Inference Protocol (REST)"),
        (name = "health", description = "Probes, metrics and this document"),
    ),
    components(schemas(crate::v1::PredictionSchema)),
    modifiers(&Bearer),
)]
pub(crate) struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "One of the keys in INFERD_API_KEYS / INFERD_API_KEYS_FILE",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document's skeleton; the routes add their paths and schemas.
pub(crate) fn base() -> Document {
    ApiDoc::openapi()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A schema in one line: `$ref`s become links, arrays show their items.
fn schema_name(v: &serde_json::Value) -> String {
    if let Some(r) = v.get("$ref").and_then(|r| r.as_str()) {
        let name = r.rsplit('/').next().unwrap_or(r);
        return format!("<a href=\"#schema-{0}\">{0}</a>", esc(name));
    }
    match v.get("type") {
        Some(serde_json::Value::String(t)) if t == "array" => {
            format!(
                "array of {}",
                v.get("items").map(schema_name).unwrap_or_default()
            )
        }
        Some(t) => esc(&t.to_string().replace('"', "")),
        None if v.get("oneOf").is_some() => "one of several shapes".into(),
        None => "any".into(),
    }
}

/// The document as one self-contained HTML page.
pub(crate) fn render(doc: &Document) -> String {
    let v = serde_json::to_value(doc).unwrap_or_default();
    let text = |p: &serde_json::Value| esc(p.as_str().unwrap_or(""));
    let mut out = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>inferd API</title>\
         <style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}\
         code,pre{font:13px ui-monospace,monospace}pre{background:#f5f5f5;padding:.5rem;overflow:auto}\
         .op{border-top:1px solid #ddd;padding:.5rem 0}.m{font-weight:bold;text-transform:uppercase}\
         td{padding:0 .75rem .2rem 0;vertical-align:top}</style></head><body>",
    );
    out += &format!(
        "<h1>{} {}</h1><p>{}</p><p>Machine-readable: <a href=\"/openapi.json\">/openapi.json</a> (OpenAPI {}).</p>",
        text(&v["info"]["title"]),
        text(&v["info"]["version"]),
        text(&v["info"]["description"]),
        text(&v["openapi"]),
    );
    for (path, ops) in v["paths"].as_object().into_iter().flatten() {
        for (method, op) in ops.as_object().into_iter().flatten() {
            out += &format!(
                "<div class=\"op\"><p><span class=\"m\">{}</span> <code>{}</code>{}</p><p>{}</p>",
                esc(method),
                esc(path),
                if op.get("security").is_some() {
                    " (bearer key when API keys are on)"
                } else {
                    ""
                },
                text(&op["summary"]),
            );
            if let Some(params) = op["parameters"].as_array() {
                out += "<table>";
                for p in params {
                    out += &format!(
                        "<tr><td><code>{}</code> ({})</td><td>{}</td></tr>",
                        text(&p["name"]),
                        text(&p["in"]),
                        text(&p["description"])
                    );
                }
                out += "</table>";
            }
            if let Some(content) = op["requestBody"]["content"].as_object() {
                out += "<p>Body: ";
                out += &content
                    .iter()
                    .map(|(ct, m)| {
                        format!("<code>{}</code>: {}", esc(ct), schema_name(&m["schema"]))
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                out += "</p>";
            }
            out += "<table>";
            for (status, r) in op["responses"].as_object().into_iter().flatten() {
                let body = r["content"]
                    .as_object()
                    .map(|c| {
                        c.iter()
                            .map(|(ct, m)| {
                                format!("<code>{}</code> {}", esc(ct), schema_name(&m["schema"]))
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                out += &format!(
                    "<tr><td>{}</td><td>{}</td><td>{body}</td></tr>",
                    esc(status),
                    text(&r["description"])
                );
            }
            out += "</table></div>";
        }
    }
    out += "<h2>Schemas</h2>";
    for (name, schema) in v["components"]["schemas"].as_object().into_iter().flatten() {
        out += &format!(
            "<h3 id=\"schema-{0}\">{0}</h3><pre>{1}</pre>",
            esc(name),
            esc(&serde_json::to_string_pretty(schema).unwrap_or_default())
        );
    }
    out + "</body></html>"
}
