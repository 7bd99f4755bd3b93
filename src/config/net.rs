//! Listening, connections and shutdown: the accept loop's settings.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use serde::{Serialize, Serializer};

use super::{check, DAY_MS, HOUR_MS};

/// Where the gRPC front door listens, or `off`: parsed once, here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcListen {
    /// No gRPC front door.
    Off,
    /// Listen on this address.
    On(SocketAddr),
}

impl GrpcListen {
    /// The address, when the door is on.
    pub fn addr(self) -> Option<SocketAddr> {
        match self {
            GrpcListen::Off => None,
            GrpcListen::On(a) => Some(a),
        }
    }
}

impl FromStr for GrpcListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "off" {
            return Ok(GrpcListen::Off);
        }
        s.parse().map(GrpcListen::On).map_err(|_| {
            format!("--grpc-listen must be an address such as 0.0.0.0:8081, or off (it is {s:?})")
        })
    }
}

impl fmt::Display for GrpcListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrpcListen::Off => f.write_str("off"),
            GrpcListen::On(a) => a.fmt(f),
        }
    }
}

impl Serialize for GrpcListen {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `Listen, connections and shutdown` in `--help`.
#[derive(Debug, Clone, Args, Serialize)]
#[command(next_help_heading = "Listen, connections and shutdown")]
pub struct NetArgs {
    /// Address to listen on.
    #[arg(long, env = "INFERD_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Address of the gRPC front door (KServe v2 and gRPC health), or `off`.
    #[arg(long, env = "INFERD_GRPC_LISTEN", default_value = "0.0.0.0:8081")]
    pub grpc_listen: GrpcListen,

    /// Most open client connections (per port); past it new ones wait in the
    /// listen backlog. Lowered, with a warning, to the descriptor limit (raised
    /// to the hard one at start-up) less 256.
    #[arg(long, env = "INFERD_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Connections the kernel queues for accepting (listen(2)'s backlog, per
    /// port): where those past the cap wait. Past it, a client's SYN is dropped
    /// and retried for seconds. The kernel caps it at net.core.somaxconn.
    #[arg(long, env = "INFERD_LISTEN_BACKLOG", default_value_t = 1024)]
    pub listen_backlog: u32,

    /// Time a client has to send a request's whole header, from its first byte;
    /// past it the connection is closed.
    #[arg(long, env = "INFERD_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,

    /// Time a request's body has to arrive, from the end of its header; past it,
    /// 408 and the connection is closed. The request deadline
    /// (INFERD_REQUEST_TIMEOUT_MS) also runs from the header's arrival.
    #[arg(long, env = "INFERD_BODY_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_read_timeout_ms: u64,

    /// How long a connection may sit with no request in progress (a new
    /// connection before its first byte, a keep-alive one between requests)
    /// before it is closed. Longer than nginx's upstream `keepalive_timeout`
    /// (60 s), so that the proxy, not the worker, closes an idle upstream
    /// connection and never sends a request into one being closed.
    #[arg(long, env = "INFERD_IDLE_TIMEOUT_MS", default_value_t = 75_000)]
    pub idle_timeout_ms: u64,

    /// After a request is shed (429 `queue_full` or `overloaded`), the
    /// connection's next request is left unread for a while: 1 ms, doubled
    /// for each refusal on the connection and halved for each other answer,
    /// at most this (jittered down by up to half). A client that resends at
    /// once then waits in the kernel instead of spending the core on
    /// refusals. HTTP/1 only; 0: never pause. Below the idle timeout.
    #[arg(long, env = "INFERD_REFUSED_PAUSE_MAX_MS", default_value_t = 20)]
    pub refused_pause_max_ms: u64,

    /// After SIGTERM/SIGINT, how long in-flight requests may take before exit.
    #[arg(long, env = "INFERD_SHUTDOWN_GRACE_MS", default_value_t = 30_000)]
    pub shutdown_grace_ms: u64,

    /// After SIGTERM/SIGINT, how long to keep the listener open answering 503
    /// (`/readyz` and new predictions) before closing it, so that load balancers
    /// and Kubernetes endpoints see the change before connections are refused.
    #[arg(long, env = "INFERD_DRAIN_DELAY_MS", default_value_t = 0)]
    pub drain_delay_ms: u64,
}

impl NetArgs {
    pub(super) fn validate(&self) -> Result<(), String> {
        check("max-connections", self.max_connections as u64, 1, 1_000_000)?;
        check("listen-backlog", self.listen_backlog.into(), 1, 65_535)?;
        check(
            "header-read-timeout-ms",
            self.header_read_timeout_ms,
            1,
            DAY_MS,
        )?;
        check("body-read-timeout-ms", self.body_read_timeout_ms, 1, DAY_MS)?;
        check("idle-timeout-ms", self.idle_timeout_ms, 1, DAY_MS)?;
        check(
            "refused-pause-max-ms",
            self.refused_pause_max_ms,
            0,
            self.idle_timeout_ms.saturating_sub(1).min(60_000),
        )?;
        check("shutdown-grace-ms", self.shutdown_grace_ms, 0, HOUR_MS)?;
        check("drain-delay-ms", self.drain_delay_ms, 0, HOUR_MS)
    }

    /// Time a request's body has to arrive.
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }

    /// How long in-flight requests may take after a shutdown signal.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// How long the listener answers 503 before it closes.
    pub fn drain_delay(&self) -> Duration {
        Duration::from_millis(self.drain_delay_ms)
    }

    /// The accept loop's limits, the cap fitted to the descriptor limit `fds`.
    pub fn conn_limits(&self, fds: Option<u64>) -> crate::listen::ConnLimits {
        crate::listen::ConnLimits {
            max_connections: crate::listen::effective_cap(self.max_connections, fds),
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            refused_pause_max: Duration::from_millis(self.refused_pause_max_ms),
        }
    }
}
