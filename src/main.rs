//! The `inferd` binary: parses the command line (flags with `INFERD_*`
//! fallbacks), logs the effective configuration with secrets redacted, binds the
//! listener and hands everything to `inferd::run`; or runs `healthcheck`, or
//! `preprocess` (a model's preprocessing over JSON lines, for training).

/// Rust's small blocks from mimalloc, large ones from glibc. Every request
/// allocates and frees some seventy small blocks, often on different
/// threads, and glibc's malloc and free were 9% of a miss-path request's
/// instructions: with mimalloc, measured for issue 27, 4-6% fewer
/// instructions per LSTM request and up to 13% less CPU per request at
/// 16-256 connections. Large blocks (request bodies, batches, read buffers)
/// stay with glibc, whose fixed mmap threshold and `malloc_trim` give memory
/// back after a flood: with mimalloc for every size, resident memory stayed
/// at twice its idle size after the memory-budget flood test. C and C++
/// libraries (ONNX Runtime) use glibc's allocator anyway.
#[global_allocator]
static GLOBAL: SplitAlloc = SplitAlloc;

/// Blocks of at most this many bytes go to mimalloc.
const SMALL_BLOCK: usize = 4096;

struct SplitAlloc;

fn small(layout: std::alloc::Layout) -> bool {
    layout.size() <= SMALL_BLOCK
}

// Unsafe: a global allocator is an unsafe trait; each call forwards to the
// allocator that the block's size picks, so a block is always freed by the
// allocator that made it (`dealloc` and `realloc` get the size it was made
// with).
#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for SplitAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe {
            if small(layout) {
                mimalloc::MiMalloc.alloc(layout)
            } else {
                std::alloc::System.alloc(layout)
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe {
            if small(layout) {
                mimalloc::MiMalloc.alloc_zeroed(layout)
            } else {
                std::alloc::System.alloc_zeroed(layout)
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `layout` is the one `ptr` was allocated with, so `small`
        // picks the allocator that made it.
        unsafe {
            if small(layout) {
                mimalloc::MiMalloc.dealloc(ptr, layout)
            } else {
                std::alloc::System.dealloc(ptr, layout)
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with `layout`'s alignment
        // is a valid layout; a block that changes side is moved by hand.
        unsafe {
            let new = std::alloc::Layout::from_size_align_unchecked(new_size, layout.align());
            match (small(layout), small(new)) {
                (true, true) => mimalloc::MiMalloc.realloc(ptr, layout, new_size),
                (false, false) => std::alloc::System.realloc(ptr, layout, new_size),
                _ => {
                    let moved = self.alloc(new);
                    if !moved.is_null() {
                        std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    moved
                }
            }
        }
    }
}

/// Hands mimalloc's free pages back to the system.
// Unsafe: a C call with no safe wrapper; see SAFETY.
#[allow(unsafe_code)]
fn release_mimalloc() {
    // SAFETY: mi_collect frees only memory mimalloc holds free; it touches no
    // live allocation, and may run on any thread.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

use clap::Parser;

use std::io::{BufRead, Write};

use inferd::config::{Cli, Command, PreprocessConfig, PreprocessKind};
use inferd_core::preprocess::email;

fn main() -> std::process::ExitCode {
    // Before the runtime starts any thread.
    inferd_core::memory::fix_mmap_threshold();
    inferd_core::memory::on_trim(release_mimalloc);
    let cli = Cli::parse();
    let reactor_nice = match &cli.command {
        None => cli.serve.runtime.reactor_nice,
        Some(Command::Serve(c)) => c.runtime.reactor_nice,
        Some(_) => 0,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if reactor_nice > 0 {
        // Workers park as soon as they start, before they run any task, so
        // every one is niced before it serves. Blocking-pool threads never
        // park this way; the slot threads are started from this (main) thread,
        // which `block_on` keeps at normal priority.
        builder.on_thread_park(move || {
            thread_local!(static NICED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
            NICED.with(|n| {
                if !n.replace(true) {
                    inferd_core::slots::nice_current_thread(i32::from(reactor_nice));
                }
            });
        });
    }
    match builder.build() {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => {
            eprintln!("inferd: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> std::process::ExitCode {
    let config = match cli.command {
        Some(Command::Serve(c)) => c,
        Some(Command::Healthcheck(h)) => return inferd::server::healthcheck(&h).await,
        Some(Command::Preprocess(p)) => return preprocess(&p),
        None => cli.serve,
    };
    inferd::logging::init(config.telemetry.log_format);
    tracing::info!(config = %config.redacted(), "starting inferd {}", env!("CARGO_PKG_VERSION"));
    match inferd::listen::raise_fd_limit() {
        Ok((before, after, hard)) => tracing::info!(
            soft_before = before,
            soft = after,
            hard,
            max_connections = config.net.max_connections,
            "descriptor limit (RLIMIT_NOFILE) raised to the hard limit"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot raise the descriptor limit"),
    }
    let listener = match inferd::listen::bind(config.net.listen, config.net.listen_backlog) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot listen on {}: {e}", config.net.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    let bound = listener.local_addr().map_or(config.net.listen, |a| a);
    tracing::info!("listening on {bound}");
    // Process-wide, like the logger: the SDK's model is one tracer provider.
    let otel = match inferd_otlp::Otel::from_env() {
        Ok(o) => o,
        Err(e) => {
            tracing::error!("OpenTelemetry: {e:#}");
            eprintln!("inferd: OpenTelemetry: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let served = inferd::run(config, listener, inferd::server::shutdown_signal()).await;
    if let Some(otel) = otel {
        // Sends the last requests' spans; bounded, so a dead collector cannot
        // hold up the exit.
        let _ =
            tokio::task::spawn_blocking(move || otel.shutdown(std::time::Duration::from_secs(5)))
                .await;
    }
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("inferd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `inferd preprocess`: one JSON object per line in, the same object with its
/// text field cleaned out. A line that is not an object holding a string there
/// is an error naming the line, and the command exits 1.
fn preprocess(cfg: &PreprocessConfig) -> std::process::ExitCode {
    let stdin = std::io::stdin().lock();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (n, line) in stdin.lines().enumerate() {
        let result = line.map_err(|e| e.to_string()).and_then(|line| {
            let mut v: serde_json::Value =
                serde_json::from_str(&line).map_err(|e| e.to_string())?;
            let text = v
                .get_mut(&cfg.field)
                .and_then(|t| t.as_str().map(str::to_string))
                .ok_or_else(|| format!("no string field `{}`", cfg.field))?;
            let cleaned = match cfg.kind {
                PreprocessKind::Email => email::clean(&text, cfg.truncate_chars),
            };
            v[&cfg.field] = serde_json::Value::String(cleaned);
            serde_json::to_writer(&mut out, &v).map_err(|e| e.to_string())?;
            out.write_all(b"\n").map_err(|e| e.to_string())
        });
        if let Err(e) = result {
            eprintln!("inferd preprocess: line {}: {e}", n + 1);
            return std::process::ExitCode::FAILURE;
        }
    }
    match out.flush() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inferd preprocess: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
