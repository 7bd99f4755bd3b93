//! Start-up files: model manifests (`model.toml`) and policies
//! (`policy.toml`, or a load call's JSON).

use crate::mutate::*;
use crate::*;

/// An edit of a TOML text, line by line.
#[derive(Debug, Clone)]
pub(crate) enum TomlEdit {
    DropLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    SetValue(usize, &'static str),
    RenameKey(usize, &'static str),
    InsertLine(usize, &'static str),
    Bytes(ByteEdit),
}

pub(crate) fn toml_edit() -> impl Strategy<Value = TomlEdit> {
    let values = prop::sample::select(vec![
        "0",
        "-1",
        "1",
        "3",
        "2",
        "18446744073709551615",
        "18446744073709551616",
        "9223372036854775807",
        "-9223372036854775808",
        "1e400",
        "nan",
        "inf",
        "-inf",
        "1.5",
        "\"\"",
        "\"x\"",
        "[]",
        "[-1]",
        "[-1, 3, 1]",
        "[-1, 0, 1]",
        "[-1, -1, 1]",
        "[-1, 1]",
        "[-1, 3]",
        "[\"y\"]",
        "[\"y\", \"z\"]",
        "{}",
        "true",
        "\"email\"",
        "\"interpolate\"",
        "\"refuse\"",
        "\"torchscript\"",
        "\"none\"",
        "\"float32\"",
        "\"string\"",
        "\"int64\"",
        "\"text-classification\"",
        "\"time-series-forecast\"",
    ]);
    let keys = prop::sample::select(vec![
        "name",
        "version",
        "task",
        "format",
        "graph_sha256",
        "onnx_sha256",
        "window",
        "features",
        "targets",
        "missing",
        "max_missing",
        "max_batch_size",
        "max_batch_delay_ms",
        "enabled",
        "shape",
        "dtype",
        "labels",
        "max_text_bytes",
        "scores_output",
        "preprocess",
        "truncate_chars",
        "x",
    ]);
    let lines = prop::sample::select(vec![
        "[text]",
        "[timeseries]",
        "[[inputs]]",
        "[[outputs]]",
        "[batching]",
        "[cache]",
        "[metrics]",
        "missing = \"interpolate\"",
        "max_missing = 2",
        "max_missing = 3",
        "window = 0",
        "preprocess = \"email\"",
        "truncate_chars = 0",
        "labels = []",
        "format = \"torchscript\"",
        "enabled = false",
        "max_batch_size = 0",
        "task = \"text-classification\"",
        "name = \"window\"",
        "shape = [-1, 3, 1]",
        "dtype = \"float32\"",
        "shape = [-1]",
        "x = 1",
    ]);
    prop_oneof![
        1 => any::<usize>().prop_map(TomlEdit::DropLine),
        1 => any::<usize>().prop_map(TomlEdit::DuplicateLine),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| TomlEdit::SwapLines(a, b)),
        3 => (any::<usize>(), values).prop_map(|(i, v)| TomlEdit::SetValue(i, v)),
        1 => (any::<usize>(), keys).prop_map(|(i, k)| TomlEdit::RenameKey(i, k)),
        2 => (any::<usize>(), lines).prop_map(|(i, l)| TomlEdit::InsertLine(i, l)),
        1 => byte_edit().prop_map(TomlEdit::Bytes),
    ]
}

pub(crate) fn edit_toml(text: &str, e: &TomlEdit) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let n = lines.len().max(1);
    let assignment = |lines: &Vec<String>, i: usize| -> Option<usize> {
        let with: Vec<usize> = (0..lines.len())
            .filter(|&j| lines[j].contains(" = "))
            .collect();
        (!with.is_empty()).then(|| with[i % with.len()])
    };
    match e {
        TomlEdit::DropLine(i) => {
            if !lines.is_empty() {
                lines.remove(i % n);
            }
        }
        TomlEdit::DuplicateLine(i) => {
            if !lines.is_empty() {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
        }
        TomlEdit::SwapLines(a, b) => {
            if !lines.is_empty() {
                lines.swap(a % n, b % n);
            }
        }
        TomlEdit::SetValue(i, v) => {
            if let Some(j) = assignment(&lines, *i) {
                let k = lines[j].split(" = ").next().unwrap_or("").to_string();
                lines[j] = format!("{k} = {v}");
            }
        }
        TomlEdit::RenameKey(i, k) => {
            if let Some(j) = assignment(&lines, *i) {
                let v = lines[j]
                    .split_once(" = ")
                    .map(|(_, v)| v.to_string())
                    .unwrap_or_default();
                lines[j] = format!("{k} = {v}");
            }
        }
        TomlEdit::InsertLine(i, l) => lines.insert(i % (lines.len() + 1), l.to_string()),
        TomlEdit::Bytes(b) => {
            let mut bytes = text.as_bytes().to_vec();
            b.apply(&mut bytes);
            return String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    lines.join("\n")
}

/// The graph file the scripted backend is loaded from: any bytes, pinned by
/// their hash like a real graph.
pub(crate) const FAKE_GRAPH: &[u8] = b"a scripted graph: the test backend ignores it";

/// Valid manifests to mutate: the repository's own, and the scripted
/// forecaster's, which the test backend can really load.
pub(crate) fn base_manifests() -> Vec<(String, String, String)> {
    let sha = hex::encode(Sha256::digest(FAKE_GRAPH));
    let mut scripted = forecaster_manifest("m", 3, 4);
    scripted.graph_sha256 = sha.clone();
    let mut out = vec![(
        "m".to_string(),
        "1".to_string(),
        toml::to_string(&scripted).expect("toml"),
    )];
    for (model, version) in [
        ("lstm-forecaster", "1"),
        ("text-classifier", "1"),
        ("text-classifier", "2"),
    ] {
        let p = common::root()
            .join("models")
            .join(model)
            .join(version)
            .join("model.toml");
        let text = std::fs::read_to_string(p).expect("manifest");
        let text = common::with_graph_sha(&text, &sha);
        out.push((model.to_string(), version.to_string(), text));
    }
    out
}

/// A mutated `model.toml` loads (and then warms up and decodes) or is refused
/// with a message naming the file: the start-up path of every version.
#[test]
fn manifests_load_or_are_refused_with_a_message() {
    let bases = base_manifests();
    let backend = TestBackend::forecaster(3, 1, 1);
    let strategy = (0..bases.len(), prop::collection::vec(toml_edit(), 0..4));
    check("manifests", 128, strategy, |(which, edits)| {
        let (name, version, base) = &bases[which];
        let text = edits.iter().fold(base.clone(), |t, e| edit_toml(&t, e));
        // The manifest alone: parse, then the task it describes.
        if let Ok(m) = toml::from_str::<Manifest>(&text) {
            if let Ok(task) = Task::from_manifest(&m) {
                prop_assert!(!task.instance_doc().is_empty());
            }
        }
        // The whole version, as start-up loads it.
        let root = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let dir = root.path().join(name).join(version);
        let write = |file: &str, bytes: &[u8]| std::fs::write(dir.join(file), bytes);
        std::fs::create_dir_all(&dir)
            .and_then(|_| write("model.toml", text.as_bytes()))
            .and_then(|_| write("model.onnx", FAKE_GRAPH))
            .and_then(|_| write("model.pt", FAKE_GRAPH))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        match load_version(&dir, &FixedLoader(backend.clone())) {
            Ok(model) => {
                prop_assert_eq!(&model.manifest.name, name);
                model.warm_up(1).map_err(|e| {
                    TestCaseError::fail(format!("loaded, then warm-up failed: {e}"))
                })?;
                let window = json!(vec![[1.0]; 3]);
                let d = model.task.decode(&[window]);
                prop_assert!(
                    d.is_ok(),
                    "a loaded forecaster refuses a plain window: {d:?}"
                );
            }
            Err(e) => {
                prop_assert!(!e.message.is_empty());
                prop_assert!(e.path.starts_with(root.path()), "{}", e.path.display());
            }
        }
        Ok(())
    });
}

/// A policy document (`policy.toml`, or a load call's JSON `config`).
pub(crate) fn policy_doc() -> impl Strategy<Value = Value> {
    let version = prop_oneof![1u64..6, Just(0), Just(u64::MAX)];
    let version_policy = prop_oneof![
        Just(Value::Null),
        Just(json!({"all": {}})),
        prop_oneof![0u64..4, Just(u64::from(u32::MAX) + 1)]
            .prop_map(|n| json!({"latest": {"num_versions": n}})),
        prop::collection::vec(version.clone(), 0..4)
            .prop_map(|v| json!({"specific": {"versions": v}})),
        Just(json!({"all": {}, "latest": {"num_versions": 1}})),
        Just(json!("all")),
    ];
    let canary = prop_oneof![
        Just(Value::Null),
        (
            version.clone(),
            prop::sample::select(vec![0.0, 0.1, 0.5, 1.0, 1.5, -0.1, 1e-300])
        )
            .prop_map(|(v, w)| json!({"version": v, "weight": w})),
    ];
    let default = prop_oneof![Just(Value::Null), version.prop_map(|v| json!(v))];
    (version_policy, default, canary, edits()).prop_map(|(vp, default, canary, edits)| {
        let mut doc = Map::new();
        for (k, v) in [
            ("version_policy", vp),
            ("default_version", default),
            ("canary", canary),
        ] {
            if !v.is_null() {
                doc.insert(k.to_string(), v);
            }
        }
        let mut doc = Value::Object(doc);
        for (at, op) in &edits {
            apply(&mut doc, *at, op);
        }
        doc
    })
}

/// Policies parse or are refused; a parsed one selects only versions on disk
/// and routes only to versions that serve.
#[test]
fn policies_select_and_route_within_what_serves() {
    fn judge(p: &Policy, on_disk: &BTreeSet<u64>, ids: &[String]) -> TestCaseResult {
        let serving = p.select(on_disk);
        prop_assert!(serving.is_subset(on_disk));
        if let Ok(r) = p.routing(&serving) {
            prop_assert!(serving.contains(&r.default), "{r:?} over {serving:?}");
            if let Some((v, w)) = r.canary {
                prop_assert!(serving.contains(&v) && w > 0.0 && w <= 1.0, "{r:?}");
            }
            for id in ids {
                let v = r.pick("m", Some(id.as_str()));
                prop_assert!(v == r.default || r.canary.is_some_and(|(c, _)| c == v));
            }
        }
        Ok(())
    }
    let strategy = (
        policy_doc(),
        prop::collection::btree_set(1u64..6, 0..5),
        prop::collection::vec("\\PC{0,12}", 0..4),
        prop::collection::vec(byte_edit(), 0..2),
    );
    check("policies", 256, strategy, |(doc, on_disk, ids, bytes)| {
        let mut json = doc.to_string().into_bytes();
        for e in &bytes {
            e.apply(&mut json);
        }
        if let Ok(p) = Policy::from_json(&String::from_utf8_lossy(&json)) {
            judge(&p, &on_disk, &ids)?;
        }
        if let Ok(text) = toml::to_string(&doc) {
            let mut text = text.into_bytes();
            for e in &bytes {
                e.apply(&mut text);
            }
            if let Ok(p) = Policy::from_toml(&String::from_utf8_lossy(&text)) {
                judge(&p, &on_disk, &ids)?;
            }
        }
        Ok(())
    });
}
