//! Configuration values: on the command line, at start-up, and in the
//! environment of the binary.

use crate::files::*;
use crate::*;

/// The command line without its `INFERD_*` fallbacks: only the case's values.
pub(crate) fn cli_without_env() -> clap::Command {
    let no_env = |a: clap::Arg| a.env(None::<&'static str>);
    Cli::command()
        .mut_args(no_env)
        .mut_subcommands(|s| s.mut_args(no_env))
}

/// A serve option: its long name, environment variable and, for the
/// enumerations, the values it takes.
#[derive(Debug, Clone)]
pub(crate) struct Opt {
    pub long: String,
    pub env: Option<String>,
    pub values: Vec<String>,
}

pub(crate) fn serve_options() -> Vec<Opt> {
    Cli::command()
        .get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?.to_string();
            let env = a.get_env().map(|e| e.to_string_lossy().into_owned());
            let values = a
                .get_possible_values()
                .iter()
                .map(|v| v.get_name().to_string())
                .collect();
            (long != "help" && long != "version").then_some(Opt { long, env, values })
        })
        .collect()
}

/// Numbers an operator might type, or mistype.
pub(crate) fn config_number() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "0",
        "1",
        "2",
        "19",
        "20",
        "-1",
        "64",
        "4096",
        "65536",
        "4294967296",
        "9223372036854775807",
        "18446744073709551615",
        "18446744073709551616",
        "2305843009213693951",
        "2305843009213693952",
        "1e3",
        "0x10",
        "1_000",
        " 1",
        "+5",
        "",
    ])
    .prop_map(String::from)
}

/// Words and addresses an operator might type.
pub(crate) fn config_word() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "on",
        "off",
        "auto",
        "jsonl",
        "postgres",
        "full",
        "hash",
        "cpu",
        "cuda",
        "json",
        "text",
        "true",
        "127.0.0.1:0",
        "[::1]:0",
        "0.0.0.0:99999",
        "localhost:8080",
        "/nonexistent/path",
        ".",
        "a,b,,c",
        ",",
        "redis://127.0.0.1:1/0",
    ])
    .prop_map(String::from)
}

/// Values an operator might type, or mistype.
pub(crate) fn config_value() -> BoxedStrategy<String> {
    prop_oneof![
        3 => config_number(),
        2 => config_word(),
        2 => "\\PC{0,16}",
    ]
    .boxed()
}

/// A secret on the command line, in every form the server takes it.
#[derive(Debug, Clone)]
pub(crate) struct Secret {
    pub flag: &'static str,
    pub value: String,
    pub token: String,
}

pub(crate) fn secret() -> impl Strategy<Value = Secret> {
    let token = "[a-zA-Z0-9._~-]{6,16}".prop_map(|t| format!("sek{t}"));
    (
        prop::sample::select(vec!["api-keys", "admin-keys", "database-url", "redis-url"]),
        token,
    )
        .prop_map(|(flag, token)| {
            let value = match flag {
                "api-keys" | "admin-keys" => format!("{token},other-{token}"),
                "database-url" => format!("postgres://user:{token}@db:5432/inferd"),
                _ => format!("redis://:{token}@cache:6379/0"),
            };
            Secret { flag, value, token }
        })
}

/// Every serve option with random values: clap parses or refuses; a parsed
/// configuration validates or names the option; what validates keeps its
/// documented invariants; no secret reaches the start-up log line.
#[test]
fn cli_values_parse_validate_and_never_leak_secrets() {
    let options: Vec<String> = serve_options().into_iter().map(|o| o.long).collect();
    let arg = (prop::sample::select(options), config_value(), any::<bool>());
    let strategy = (
        any::<bool>(),
        prop::collection::vec(arg, 0..6),
        prop::option::of(secret()),
    );
    check("cli_values", 256, strategy, |(subcommand, args, secret)| {
        let mut argv = vec!["inferd".to_string()];
        if subcommand {
            argv.push("serve".into());
        }
        for (long, value, joined) in &args {
            if *joined {
                argv.push(format!("--{long}={value}"));
            } else {
                argv.extend([format!("--{long}"), value.clone()]);
            }
        }
        if let Some(s) = &secret {
            argv.extend([format!("--{}", s.flag), s.value.clone()]);
        }
        let matches = match cli_without_env().try_get_matches_from(&argv) {
            Ok(m) => m,
            Err(e) => {
                // A refusal names the flag or the value it is about, as the
                // operator typed it.
                let msg = e.to_string();
                let named = args.iter().any(|(long, value, _)| {
                    msg.contains(&format!("--{long}")) || msg.contains(&format!("'{value}'"))
                }) || secret
                    .as_ref()
                    .is_some_and(|s| msg.contains(&format!("--{}", s.flag)));
                prop_assert!(
                    e.exit_code() == 2 && named,
                    "a refusal that names no flag given: {msg}"
                );
                return Ok(());
            }
        };
        let cli = Cli::from_arg_matches(&matches)
            .map_err(|e| TestCaseError::fail(format!("matched, then: {e}")))?;
        let config = match cli.command {
            Some(Command::Serve(c)) => c,
            None => cli.serve,
            Some(other) => return Err(TestCaseError::fail(format!("not serve: {other:?}"))),
        };
        match config.validate() {
            Ok(()) => {
                for (name, v) in [
                    ("max_queue", config.limits.max_queue as u64),
                    ("request_timeout_ms", config.limits.request_timeout_ms),
                    ("max_connections", config.net.max_connections as u64),
                    ("max_body_bytes", config.limits.max_body_bytes as u64),
                    ("max_instances", config.limits.max_instances as u64),
                    ("predlog_channel", config.predlog.predlog_channel as u64),
                    (
                        "max_batch_size",
                        config.batching.max_batch_size.map_or(1, |v| v as u64),
                    ),
                    (
                        "max_concurrency",
                        config.limits.max_concurrency.map_or(1, |v| v as u64),
                    ),
                ] {
                    prop_assert!(v >= 1, "{name} = 0 validated");
                }
                prop_assert!(
                    config.predlog.sink != PredLogMode::Postgres
                        || config.predlog.database_url.is_some()
                );
                prop_assert!(config.limits.concurrency() >= 1);
            }
            Err(e) => prop_assert!(e.starts_with("--"), "{e}"),
        }
        let shown = config.redacted().to_string();
        if let Some(s) = &secret {
            prop_assert!(!shown.contains(&s.token), "--{} leaks into {shown}", s.flag);
        }
        Ok(())
    });
}

/// The other subcommands (`healthcheck`, `preprocess`) with random values:
/// each parses into its own configuration, or is refused naming the flag or
/// the argument it is about.
#[test]
fn other_subcommands_parse_or_name_what_is_wrong() {
    let sub = prop::sample::select(vec!["healthcheck", "preprocess"]);
    let flag = prop::sample::select(vec!["url", "timeout-ms", "truncate-chars", "field"]);
    let kind = prop::option::of(prop::sample::select(vec!["email", "mail", "EMAIL"]));
    let strategy = (
        sub,
        kind,
        prop::collection::vec((flag, config_value()), 0..4),
    );
    check("subcommands", 256, strategy, |(sub, kind, args)| {
        let mut argv = vec!["inferd".to_string(), sub.to_string()];
        if sub == "preprocess" {
            argv.extend(kind.map(String::from));
        }
        for (long, value) in &args {
            argv.push(format!("--{long}={value}"));
        }
        match cli_without_env().try_get_matches_from(&argv) {
            Ok(m) => {
                let cli = Cli::from_arg_matches(&m)
                    .map_err(|e| TestCaseError::fail(format!("matched, then: {e}")))?;
                match (sub, cli.command) {
                    ("healthcheck", Some(Command::Healthcheck(h))) => {
                        let given = args.iter().rev().find(|(l, _)| *l == "url");
                        prop_assert_eq!(
                            h.url.as_str(),
                            given.map_or("http://127.0.0.1:8080/healthz", |(_, v)| v.as_str())
                        );
                    }
                    ("preprocess", Some(Command::Preprocess(p))) => {
                        prop_assert_eq!(kind, Some("email"));
                        prop_assert!(args.iter().any(|(l, _)| *l == "truncate-chars"));
                        let field = args.iter().rev().find(|(l, _)| *l == "field");
                        prop_assert_eq!(
                            p.field.as_str(),
                            field.map_or("text", |(_, v)| v.as_str())
                        );
                    }
                    (sub, other) => {
                        return Err(TestCaseError::fail(format!("{sub} parsed as {other:?}")))
                    }
                }
            }
            Err(e) => {
                let msg = e.to_string();
                let named = args.iter().any(|(l, _)| msg.contains(&format!("--{l}")))
                    || msg.contains("<KIND>")
                    || msg.contains("--truncate-chars");
                prop_assert!(e.exit_code() == 2 && named, "{argv:?}: {msg}");
            }
        }
        Ok(())
    });
}

/// The numeric settings `avoid_known` knows, with a setter each.
pub(crate) const NUMERIC: &[&str] = &[
    "max_queue",
    "request_timeout_ms",
    "max_connections",
    "listen_backlog",
    "header_read_timeout_ms",
    "body_read_timeout_ms",
    "idle_timeout_ms",
    "max_body_bytes",
    "max_instances",
    "intra_op_threads",
    "shutdown_grace_ms",
    "drain_delay_ms",
    "warmup_runs",
    "max_batch_size",
    "max_batch_delay_ms",
    "cache_ttl_secs",
    "cache_max_bytes",
    "cache_timeout_ms",
    "cache_breaker_ms",
    "predlog_max_bytes",
    "predlog_keep",
    "predlog_batch_rows",
    "predlog_flush_ms",
    "predlog_buffer_rows",
    "predlog_channel",
    "max_concurrency",
    "model_poll_secs",
];

pub(crate) fn set(c: &mut ServeConfig, field: &str, v: u64) {
    let u = v as usize;
    match field {
        "max_queue" => c.limits.max_queue = u,
        "request_timeout_ms" => c.limits.request_timeout_ms = v,
        "max_connections" => c.net.max_connections = u,
        "listen_backlog" => c.net.listen_backlog = v.try_into().unwrap_or(u32::MAX),
        "header_read_timeout_ms" => c.net.header_read_timeout_ms = v,
        "body_read_timeout_ms" => c.net.body_read_timeout_ms = v,
        "idle_timeout_ms" => c.net.idle_timeout_ms = v,
        "max_body_bytes" => c.limits.max_body_bytes = u,
        "max_instances" => c.limits.max_instances = u,
        "intra_op_threads" => c.runtime.intra_op_threads = u,
        "shutdown_grace_ms" => c.net.shutdown_grace_ms = v,
        "drain_delay_ms" => c.net.drain_delay_ms = v,
        "warmup_runs" => c.models.warmup_runs = u,
        "max_batch_size" => c.batching.max_batch_size = Some(u),
        "max_batch_delay_ms" => c.batching.max_batch_delay_ms = Some(v),
        "cache_ttl_secs" => c.cache.cache_ttl_secs = v,
        "cache_max_bytes" => c.cache.cache_max_bytes = v,
        "cache_timeout_ms" => c.cache.cache_timeout_ms = v,
        "cache_breaker_ms" => c.cache.cache_breaker_ms = v,
        "predlog_max_bytes" => c.predlog.predlog_max_bytes = v,
        "predlog_keep" => c.predlog.predlog_keep = u,
        "predlog_batch_rows" => c.predlog.predlog_batch_rows = u,
        "predlog_flush_ms" => c.predlog.predlog_flush_ms = v,
        "predlog_buffer_rows" => c.predlog.predlog_buffer_rows = u,
        "predlog_channel" => c.predlog.predlog_channel = u,
        "max_concurrency" => c.limits.max_concurrency = Some(u),
        "model_poll_secs" => c.models.model_poll_secs = v,
        other => panic!("test bug: no setter for {other}"),
    }
}

pub(crate) fn edge_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        prop::sample::select(vec![
            0u64,
            1,
            2,
            1000,
            1 << 31,
            1 << 32,
            1 << 53,
            (usize::MAX >> 3) as u64,
            (usize::MAX >> 3) as u64 + 1,
            u64::MAX / 2,
            u64::MAX - 1,
            u64::MAX,
        ]),
        any::<u64>(),
    ]
}

/// A models directory holding the scripted forecaster `m`, version 1.
pub(crate) fn scripted_models(root: &Path) -> std::path::PathBuf {
    let models = root.join("models");
    let dir = models.join("m/1");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut m = forecaster_manifest("m", 3, 4);
    m.graph_sha256 = hex::encode(Sha256::digest(FAKE_GRAPH));
    std::fs::write(dir.join("model.toml"), toml::to_string(&m).expect("toml")).expect("manifest");
    std::fs::write(dir.join("model.onnx"), FAKE_GRAPH).expect("graph");
    models
}

pub(crate) fn scripted_loader() -> inferd::server::MakeLoader {
    Box::new(|_| Ok(Box::new(FixedLoader(TestBackend::forecaster(3, 1, 1))) as Box<dyn Loader>))
}

/// One start-up at a time, so that a panic is that start-up's.
pub(crate) static START_LOCK: Mutex<()> = Mutex::new(());

/// How one start-up ended.
#[derive(Debug)]
pub(crate) enum StartUp {
    /// Ready, and then the status of one valid prediction (`None`: no answer).
    Ready(Option<u16>),
    Refused(String),
    /// Still starting when given up on: allowed only where connections are
    /// cut too fast to ask `/readyz`.
    Unknown,
}

/// What is asked of a server once ready.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Probe {
    /// One valid prediction.
    Predict,
    /// `GET /readyz` whose header arrives in two parts, 50 ms apart.
    SlowHeader,
}

pub(crate) async fn probe(
    addr: std::net::SocketAddr,
    client: &reqwest::Client,
    p: Probe,
) -> Option<u16> {
    match p {
        Probe::Predict => client
            .post(format!("http://{addr}/v1/models/m/predict"))
            .timeout(Duration::from_secs(5))
            .json(&json!({"instances": [[[1.0], [2.0], [3.0]]]}))
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16()),
        Probe::SlowHeader => tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            s.write_all(b"GET /readyz HTTP/1.1\r\n").ok()?;
            std::thread::sleep(Duration::from_millis(50));
            s.write_all(b"Host: x\r\nConnection: close\r\n\r\n").ok()?;
            let mut answer = Vec::new();
            let _ = s.read_to_end(&mut answer);
            let answer = String::from_utf8_lossy(&answer).into_owned();
            answer.split(' ').nth(1)?.parse().ok()
        })
        .await
        .ok()
        .flatten(),
    }
}

/// Starts a server on the scripted model with `config`, waits for readiness
/// or a start-up error, asks the `probe` of a ready one, then shuts it down.
/// A panic of the server's task or its loader is an `Err`.
/// `patience`: how long to wait for readiness: only a defect outlasts a long
/// one, while a configuration that cannot pass `/readyz` (deadlines too short
/// for a probe) gets a short one.
pub(crate) async fn start_up(
    config: ServeConfig,
    p: Probe,
    patience: Duration,
) -> Result<StartUp, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut handle = tokio::spawn(inferd::server::run_with_loader(
        config,
        listener,
        async move {
            let _ = rx.await;
        },
        scripted_loader(),
    ));
    // No kept-alive connection: with `max_connections = 1` it would hold the
    // only place, and the slow header's connection would wait behind it.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut outcome = StartUp::Unknown;
    while start.elapsed() < patience && !handle.is_finished() {
        if let Ok(r) = client.get(format!("http://{addr}/readyz")).send().await {
            if r.status() == 200 {
                outcome = StartUp::Ready(probe(addr, &client, p).await);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = tx.send(());
    // A long drain delay or grace period keeps it up: not a failure.
    match tokio::time::timeout(Duration::from_secs(3), &mut handle).await {
        Ok(Ok(Ok(()))) => Ok(outcome),
        Ok(Ok(Err(e))) => {
            let e = format!("{e:#}");
            if e.contains("panicked") {
                return Err(format!("start-up ended in a panic: {e}"));
            }
            match outcome {
                StartUp::Ready(_) => Ok(outcome),
                _ => Ok(StartUp::Refused(e)),
            }
        }
        Ok(Err(join)) => Err(format!("the server task failed: {join}")),
        Err(_) => {
            handle.abort();
            Ok(outcome)
        }
    }
}

/// Extreme values of every numeric setting: start-up refuses the
/// configuration or serves, never panics. Panics on the server's threads count
/// too (`watch_server_panics`).
#[test]
fn start_up_with_extreme_config_values_serves_or_refuses() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let tmp = tempfile::tempdir().expect("tempdir");
    let models = scripted_models(tmp.path());
    let strategy = (
        prop::collection::vec((prop::sample::select(NUMERIC), edge_u64()), 0..6),
        prop::sample::select(vec![
            PredLogMode::Off,
            PredLogMode::Jsonl,
            PredLogMode::Auto,
        ]),
        any::<bool>(),
        prop::sample::select(vec![Probe::Predict, Probe::SlowHeader]),
    );
    check(
        "start_up_config",
        64,
        strategy,
        |(values, predlog, cache, p)| {
            let _one = START_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            let mut config = common::config();
            config.models.models_dir = models.clone();
            config.predlog.sink = predlog;
            config.predlog.predlog_path = tmp.path().join("predictions.jsonl");
            config.predlog.predlog_spill_path = tmp.path().join("spill.jsonl");
            config.cache.mode = if cache {
                inferd::config::CacheMode::On
            } else {
                inferd::config::CacheMode::Off
            };
            config.limits.max_concurrency = Some(2);
            for (field, v) in &values {
                set(&mut config, field, avoid_known(field, *v));
            }
            let valid = config.validate().is_ok();
            // `/readyz` is reliable only when connections live long enough for it.
            let probe_ok = [
                config.net.header_read_timeout_ms,
                config.net.idle_timeout_ms,
                config.net.body_read_timeout_ms,
            ]
            .iter()
            .all(|&t| t >= 200);
            // A deadline this short may pass before the model answers.
            let may_time_out = config.limits.request_timeout_ms < 1000;
            let patience = if valid && probe_ok {
                crate::common::gate::EVENTUALLY
            } else {
                Duration::from_secs(5)
            };
            let outcome = rt
                .block_on(start_up(config, p, patience))
                .map_err(TestCaseError::fail)?;
            no_server_panic()?;
            match outcome {
                StartUp::Ready(status) => {
                    prop_assert!(valid, "served with a configuration that does not validate");
                    match status {
                        Some(s) => {
                            prop_assert!(s < 500 || (s == 504 && may_time_out), "{p:?}: {s}")
                        }
                        None => prop_assert!(!probe_ok, "{p:?}: no answer"),
                    }
                }
                // Refused: an invalid configuration, named by its flag.
                StartUp::Refused(e) => prop_assert!(
                    !valid && e.starts_with("--"),
                    "refused a configuration that validates, or without naming it: {e}"
                ),
                StartUp::Unknown => prop_assert!(
                    !(valid && probe_ok),
                    "a valid configuration neither served nor failed"
                ),
            }
            Ok(())
        },
    );
    // Not `drop`: that waits for the blocking pool, and a stuck log write
    // (see `bug_predlog_keep_...`) would hang the test instead of failing it.
    rt.shutdown_timeout(Duration::from_secs(5));
}

/// An environment variable and its value: half the time one its option
/// takes (a name of an enumeration, else a number), or anything printable,
/// or bytes that are not UTF-8.
pub(crate) fn env_var(options: Vec<Opt>) -> impl Strategy<Value = (String, Vec<u8>)> {
    let value = prop_oneof![
        2 => config_value().prop_map(String::into_bytes),
        1 => prop::collection::vec(1u8..=255, 0..12),
    ];
    (
        prop::sample::select(options),
        any::<bool>(),
        any::<prop::sample::Index>(),
        config_number(),
        value,
    )
        .prop_map(|(opt, plausible, i, number, value)| {
            let v = match (plausible, opt.values.is_empty()) {
                (true, false) => i.get(&opt.values).clone().into_bytes(),
                (true, true) => number.into_bytes(),
                (false, _) => value,
            };
            (opt.env.unwrap_or_default(), v)
        })
}

/// `INFERD_*` values as the binary reads them: a start-up error (exit 1) or a
/// usage error (exit 2), never a panic (101) or a signal. Start-up is made to
/// fail at once after the configuration (no models, no ONNX Runtime), so each
/// case costs one short process.
#[test]
fn env_values_give_a_start_up_error_not_a_crash() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("missing");
    let missing = missing.to_string_lossy().into_owned();
    // The options whose flag ends start-up early (or keeps files in the
    // sandbox) unless the case's variable is the one being tried.
    let pinned: Vec<(&str, &str, String)> = vec![
        ("INFERD_LISTEN", "--listen", "127.0.0.1:0".into()),
        ("INFERD_GRPC_LISTEN", "--grpc-listen", "127.0.0.1:0".into()),
        ("INFERD_MODELS_DIR", "--models-dir", missing.clone()),
        (
            "ORT_DYLIB_PATH",
            "--ort-dylib-path",
            format!("{missing}/libonnxruntime.so"),
        ),
        (
            "INFERD_PREDLOG_PATH",
            "--predlog-path",
            format!("{missing}/p.jsonl"),
        ),
        (
            "INFERD_PREDLOG_SPILL_PATH",
            "--predlog-spill-path",
            format!("{missing}/s.jsonl"),
        ),
    ];
    // Left out: the two that reach the network (Redis, PostgreSQL).
    let options: Vec<Opt> = serve_options()
        .into_iter()
        .filter(|o| {
            o.env
                .as_ref()
                .is_some_and(|e| e != "INFERD_REDIS_URL" && e != "INFERD_DATABASE_URL")
        })
        .collect();
    let strategy = prop::collection::vec(env_var(options), 1..3);
    check("env_values", 32, strategy, |vars| {
        let mut p = Process::new(env!("CARGO_BIN_EXE_inferd"));
        p.env_clear()
            .current_dir(tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (var, value) in &vars {
            let field = var.trim_start_matches("INFERD_").to_ascii_lowercase();
            let value = match std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            {
                Some(n) if avoid_known(&field, n) != n => {
                    avoid_known(&field, n).to_string().into_bytes()
                }
                _ => value.clone(),
            };
            p.env(var, OsString::from_vec(value));
        }
        for (var, flag, value) in &pinned {
            if !vars.iter().any(|(v, _)| v.as_str() == *var) {
                p.args([*flag, value.as_str()]);
            }
        }
        let child = p
            .spawn()
            .map_err(|e| TestCaseError::fail(format!("spawn: {e}")))?;
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let out = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(out) => out.map_err(|e| TestCaseError::fail(e.to_string()))?,
            Err(_) => {
                // The process we started, by its id.
                let _ = Process::new("kill").args(["-9", &pid.to_string()]).status();
                return Err(TestCaseError::fail("no exit within 20 s"));
            }
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        prop_assert!(
            !stderr.contains("panicked") && !stdout.contains("panicked"),
            "{stderr}{stdout}"
        );
        prop_assert!(
            matches!(out.status.code(), Some(1 | 2)),
            "exit {:?}: {stderr}",
            out.status
        );
        prop_assert!(
            !stderr.trim().is_empty() || !stdout.trim().is_empty(),
            "failed silently"
        );
        Ok(())
    });
}
