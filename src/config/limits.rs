//! Admission and request limits.

use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::{check, DAY_MS};

/// `Limits` in `--help`.
#[derive(Debug, Clone, Args, Serialize)]
#[command(next_help_heading = "Limits")]
pub struct LimitArgs {
    /// Inferences allowed to run at once, across all models: the inference
    /// threads, and each model's sessions (one per thread). Default: physical
    /// cores, within the CPU affinity and the cgroup's CPU quota.
    #[arg(long, env = "INFERD_MAX_CONCURRENCY")]
    pub max_concurrency: Option<usize>,

    /// Requests allowed to wait for a free inference slot, across all models;
    /// past this, 429 (`queue_full`). With adaptive admission this is only the
    /// outer bound: each model's queue is also bounded by time.
    #[arg(long, env = "INFERD_MAX_QUEUE", default_value_t = 512)]
    pub max_queue: usize,

    /// How each model's queue is bounded. `adaptive`: by time, from the
    /// model's measured drain rate (a request that would wait longer than the
    /// target is refused at once, 429 `overloaded`); `static`: only by
    /// INFERD_MAX_QUEUE.
    #[arg(long, env = "INFERD_ADMISSION", value_enum, default_value_t = AdmissionMode::Adaptive)]
    pub admission: AdmissionMode,

    /// The longest a request may expect to wait in a model's queue (adaptive
    /// admission); a manifest's `queue_target_ms` overrides it for its
    /// version. Default: two full batches' time, as measured, at least 1 ms
    /// and at most half the request timeout.
    #[arg(long, env = "INFERD_QUEUE_TARGET_MS")]
    pub queue_target_ms: Option<u64>,

    /// Batches of a model version that take less than this many microseconds
    /// on average (as measured) run on the request's own thread, in a free
    /// inference slot, while requests arrive further apart than two batches,
    /// instead of being handed to an inference thread and back. A network
    /// thread is held that long per batch. 0 (the default): always on an
    /// inference thread; on 2 vCPUs, 200 changed the LSTM's throughput by
    /// less than run-to-run noise.
    #[arg(long, env = "INFERD_IN_PLACE_BATCH_US", default_value_t = 0)]
    pub in_place_batch_us: u64,

    /// Deadline for one request, counted from its header's arrival and covering
    /// the body, the queue wait and inference; past it, 504. A batch whose
    /// requests have all passed it (or whose clients all left) is stopped and
    /// its slot freed.
    #[arg(long, env = "INFERD_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,

    /// Largest request body accepted; past it, 413.
    #[arg(long, env = "INFERD_MAX_BODY_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Memory for prediction requests in flight: each reserves three times its
    /// body (the body, its parsed form, its tensors) plus 16 KiB from before
    /// its body is read until its response is built; a request without room
    /// waits INFERD_MEMORY_WAIT_MS, then is refused (429 `memory_budget`).
    /// Default: a quarter of the cgroup's memory limit when there is one,
    /// else 512 MiB. 0 turns the budget off.
    #[arg(long, env = "INFERD_MEMORY_BUDGET_BYTES")]
    pub memory_budget_bytes: Option<u64>,

    /// How long a request waits for room in the memory budget before it is
    /// refused.
    #[arg(long, env = "INFERD_MEMORY_WAIT_MS", default_value_t = 50)]
    pub memory_wait_ms: u64,

    /// Most instances in one request; past it, 422.
    #[arg(long, env = "INFERD_MAX_INSTANCES", default_value_t = 64)]
    pub max_instances: usize,
}

/// How model queues are bounded (`--admission`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdmissionMode {
    /// By time, from each model's measured drain rate.
    Adaptive,
    /// By INFERD_MAX_QUEUE alone.
    Static,
}

impl LimitArgs {
    pub(super) fn validate(&self) -> Result<(), String> {
        let concurrency = self.max_concurrency.unwrap_or(1) as u64;
        check("max-concurrency", concurrency, 1, 1024)?;
        check("max-queue", self.max_queue as u64, 1, 1_000_000)?;
        check("request-timeout-ms", self.request_timeout_ms, 1, DAY_MS)?;
        if let Some(t) = self.queue_target_ms {
            check("queue-target-ms", t, 1, self.request_timeout_ms)?;
        }
        check("max-body-bytes", self.max_body_bytes as u64, 1, 1 << 30)?;
        check("in-place-batch-us", self.in_place_batch_us, 0, 100_000)?;
        // Not bounded by the request timeout: a request's deadline ends its
        // wait for room anyway.
        check("memory-wait-ms", self.memory_wait_ms, 0, DAY_MS)?;
        if let Some(b) = self.memory_budget_bytes.filter(|b| *b > 0) {
            let one = 3 * self.max_body_bytes as u64 + 16 * 1024;
            if b < one {
                return Err(format!(
                    "memory-budget-bytes ({b}) must hold at least one request of \
                     max-body-bytes: {one} bytes (3 x the body + 16 KiB), or 0 for no budget"
                ));
            }
        }
        check("max-instances", self.max_instances as u64, 1, 65_536)
    }

    /// Inference slots: the configured number, else the physical cores this
    /// process may use: no more than its CPU affinity and its cgroup's CPU
    /// quota allow (`available_parallelism` reads both). Counting the host's
    /// cores instead, a container limited to one CPU ran two batches at once
    /// on it, each at half speed: twice the latency for the same throughput.
    pub fn concurrency(&self) -> usize {
        self.max_concurrency
            .unwrap_or_else(|| {
                let usable = std::thread::available_parallelism().map_or(1, |n| n.get());
                num_cpus::get_physical().min(usable)
            })
            .max(1)
    }

    /// The memory budget in bytes: the configured one (`None` for 0), else a
    /// quarter of the cgroup's memory limit (at least one maximum request),
    /// else 512 MiB.
    pub fn memory_budget(&self) -> Option<u64> {
        match self.memory_budget_bytes {
            Some(0) => None,
            Some(b) => Some(b),
            None => {
                let one = 3 * self.max_body_bytes as u64 + 16 * 1024;
                Some(cgroup_memory_limit().map_or(DEFAULT_BUDGET, |l| (l / 4).max(one)))
            }
        }
    }

    /// A request's deadline.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The core pipeline's limits.
    pub fn pipeline(&self) -> inferd_core::pipeline::Limits {
        inferd_core::pipeline::Limits {
            max_instances: self.max_instances,
            timeout_ms: self.request_timeout_ms,
            queue: inferd_core::governor::Tuning {
                adaptive: self.admission == AdmissionMode::Adaptive,
                target: self.queue_target_ms.map(Duration::from_millis),
                in_place_under: Duration::from_micros(self.in_place_batch_us),
            },
        }
    }
}

/// The memory budget without a cgroup limit to derive it from.
const DEFAULT_BUDGET: u64 = 512 * 1024 * 1024;

/// The memory limit of this process's cgroup (v2 `memory.max`, or v1's
/// `memory.limit_in_bytes`), if one is set.
pub(super) fn cgroup_memory_limit() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    limit_from(&own, |p| std::fs::read_to_string(p).ok())
}

/// Reads the limit for the cgroup paths in `proc_self_cgroup` through `read`.
/// v1 is asked first: a host with both mounts the memory controller on one.
fn limit_from(proc_self_cgroup: &str, read: impl Fn(&str) -> Option<String>) -> Option<u64> {
    let mut v1 = None;
    let mut v2 = None;
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.split(',').any(|c| c == "memory") {
            v1 = Some(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"));
        } else if id == "0" && controllers.is_empty() {
            v2 = Some(format!("/sys/fs/cgroup{path}/memory.max"));
        }
    }
    [v1, v2]
        .into_iter()
        .flatten()
        .filter_map(|p| read(&p))
        // "max" (v2) and a page-rounded i64::MAX (v1) both mean no limit.
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .find(|l| *l < 1 << 60)
}

#[cfg(test)]
mod tests {
    use super::limit_from;

    #[test]
    fn cgroup_limits_v1_v2_and_none() {
        let v1 = "12:memory:/inferd-test\n11:cpu,cpuacct:/\n0::/";
        let read = |p: &str| match p {
            "/sys/fs/cgroup/memory/inferd-test/memory.limit_in_bytes" => {
                Some("1073741824\n".into())
            }
            "/sys/fs/cgroup/memory.max" => Some("max\n".into()),
            "/sys/fs/cgroup/pod/memory.max" => Some("536870912\n".into()),
            _ => None,
        };
        assert_eq!(limit_from(v1, read), Some(1 << 30));
        assert_eq!(limit_from("0::/pod", read), Some(1 << 29));
        assert_eq!(limit_from("0::/", read), None);
        let unlimited = |_: &str| Some("9223372036854771712".to_string());
        assert_eq!(limit_from("4:memory:/", unlimited), None);
    }
}
