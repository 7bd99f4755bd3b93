//! Property-based tests of every decoder: random and mutated inputs give a
//! 4xx with a JSON error body (over HTTP), a typed error (pure functions) or a
//! start-up error (manifests, configuration), never a panic, a 5xx or a hang.
//!
//! Two levels. Pure decoders reachable from the crate's API are called
//! directly: the v2 binary codec, JSON request parsing, each task's instance
//! decoding and its preprocessing, manifests, model policies, command-line
//! values and start-up with them. The rest (tensors to instances in the v2
//! front door, the framing of binary bodies, routing) is driven through one
//! in-process server on the real models, shared by every HTTP property.
//!
//! Case counts and the seed are fixed: each property's default count (256 for
//! pure functions, fewer where a case costs a request or a process) and one
//! seed (`SEED`), so every run tries the same cases; `PROPTEST_CASES` and
//! `PROPTEST_RNG_SEED` override them, and `make fuzz` runs with fresh seeds
//! and more cases. Nothing is persisted. A failure prints its seed and count;
//! the same cases run again with
//! `PROPTEST_RNG_SEED=<seed> PROPTEST_CASES=<n> cargo test --test properties <name>`.
//!
//! Modules (tests/properties/): `shared` (the server and what every answer
//! must look like), `mutate` and `requests` (generators), `http`, `decoders`,
//! `files` and `config` (the properties), `bugs`.
//!
//! Bugs these properties found keep their minimal case as a test in `bugs`
//! (all fixed). `avoid_known` keeps generated values clear only of settings
//! that are valid but would make a case slow (threads, delays, warm-up runs).

mod common;

// Shared by every module below, which takes them with `use crate::*`.
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt::Debug;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use clap::{CommandFactory, FromArgMatches};
use inferd::config::{Cli, Command, PredLogMode, ServeConfig};
use inferd_api::testing::codec;
use inferd_api::testing::parse;
use inferd_api::testing::PredictRequest;
use inferd_api::testing::{InferRequest, TensorData};
use inferd_core::backend::testing::{forecaster_manifest, FixedLoader, TestBackend};
use inferd_core::backend::{InputBatch, Loader};
use inferd_core::manifest::Manifest;
use inferd_core::policy::Policy;
use inferd_core::preprocess::{email, series};
use inferd_core::repository::load_version;
use inferd_core::task::Task;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseResult, TestRunner};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
#[path = "properties/bugs.rs"]
mod bugs;
#[path = "properties/config.rs"]
mod config;
#[path = "properties/decoders.rs"]
mod decoders;
#[path = "properties/files.rs"]
mod files;
#[path = "properties/http.rs"]
mod http;
#[path = "properties/mutate.rs"]
mod mutate;
#[path = "properties/requests.rs"]
mod requests;
#[path = "properties/shared.rs"]
mod shared;

// ---------------------------------------------------------------------------
// Harness

/// `PROPTEST_CASES` when set (CI pins it), else the property's own default.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The seed every run uses unless `PROPTEST_RNG_SEED` says otherwise: a test
/// run is the same cases every time, so a failure in CI fails again on any
/// machine. `make fuzz` explores with fresh seeds (and prints each).
const SEED: u64 = 20_261_206;

/// `PROPTEST_RNG_SEED` replays a failure, or (`make fuzz`) explores; else `SEED`.
fn seed() -> u64 {
    std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SEED)
}

/// Runs one property, panicking with the minimal failing case and how to
/// replay it.
fn check<S>(name: &str, default_cases: u32, strategy: S, test: impl Fn(S::Value) -> TestCaseResult)
where
    S: Strategy,
    S::Value: Debug,
{
    watch_server_panics();
    let seed = seed();
    let cases = cases(default_cases);
    let config = Config {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    if let Err(e) = runner.run(&strategy, test) {
        panic!(
            "{name}: {e}\nreplay: PROPTEST_RNG_SEED={seed} PROPTEST_CASES={cases} \
             cargo test --test properties {name}"
        );
    }
}

/// Panics on the server's threads. A panicking handler only drops its
/// connection, and one in a background task may show nowhere else.
static SERVER_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn watch_server_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("");
            if name.starts_with("tokio-") || name.starts_with("inferd") {
                if let Ok(mut p) = SERVER_PANICS.lock() {
                    p.push(format!("{name}: {info}"));
                }
            }
            previous(info);
        }));
    });
}

/// Fails the case that first sees a server panic (and only that one).
fn no_server_panic() -> TestCaseResult {
    let seen = SERVER_PANICS
        .lock()
        .map(|mut p| std::mem::take(&mut *p))
        .unwrap_or_default();
    prop_assert!(seen.is_empty(), "the server panicked: {seen:#?}");
    Ok(())
}

// ---------------------------------------------------------------------------
// Limits of the libraries and of the configuration (see `bugs`).

/// moka panics when a cache's time to live is over 1000 years.
const MOKA_MAX_TTL_SECS: u64 = 1000 * 365 * 24 * 3600;
/// tokio's mpsc panics when its capacity is over `Semaphore::MAX_PERMITS`.
const TOKIO_MAX_PERMITS: u64 = (usize::MAX >> 3) as u64;
/// The largest connection timeouts the configuration allows.
const DAY_MS: u64 = 24 * 3600 * 1000;

/// Keeps a configuration value clear of values that are no bug but would
/// make a case take forever or exhaust the machine: `max_concurrency` starts
/// that many inference threads, `warmup_runs` runs each session that many
/// times before ready, and the delays below are waited out.
fn avoid_known(field: &str, v: u64) -> u64 {
    match field {
        "max_concurrency" => v.min(4),
        // Waited out at every shutdown, and the property shuts down each case.
        "drain_delay_ms" => v.min(100),
        // Waited out by a lone request (up to its deadline, then 504).
        "max_batch_delay_ms" => v.min(100),
        "warmup_runs" => v.min(1000),
        _ => v,
    }
}
