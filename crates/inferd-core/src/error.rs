//! The core's one error type. Every front door (the JSON API, KServe v2 over
//! REST, any later protocol) maps it to its own status and body in one place;
//! nothing here knows about status codes or wire formats.
//!
//! It is `Clone` because one failure can have many owners: a batch that fails
//! answers every request merged into it, and a single-flight leader's failure
//! is handed to each of its followers.

use super::backend::BackendError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
/// Why the core could not answer.
pub enum CoreError {
    #[error("no model named `{0}`")]
    /// The request names no loaded model.
    ModelNotFound(String),
    #[error("model `{0}` has no version `{1}`")]
    /// The model has no such version.
    VersionNotFound(String, String),
    /// The request's content is wrong; `field` is a path into the request
    /// (`instances[2][25][0]`) when one part is to blame.
    #[error("{message}")]
    Invalid {
        /// Where in the request.
        field: Option<String>,
        /// What is wrong, and what was expected.
        message: String,
    },
    #[error("server is at capacity ({0} requests already waiting); retry shortly")]
    /// The wait queue is full; carries how many wait.
    QueueFull(usize),
    /// The model's queue already holds what it drains within its target
    /// wait (`governor`): this request would have waited longer.
    #[error(
        "model `{model}` is at capacity: a request now would wait about {wait_ms} ms in its \
         queue, over its target of {target_ms} ms; retry after {retry_after_ms} ms"
    )]
    Overloaded {
        /// The model refusing.
        model: String,
        /// How long this request would have waited.
        wait_ms: u64,
        /// The queue's target wait.
        target_ms: u64,
        /// How long the queue takes to drain at the measured rate.
        retry_after_ms: u64,
    },
    #[error("models are still loading or warming up")]
    /// Models are loading.
    NotReady,
    #[error("the server is shutting down and accepts no new work")]
    /// Shutdown began.
    Draining,
    #[error("the request deadline of {0} ms passed before the prediction was ready")]
    /// The request's deadline passed; carries the configured deadline.
    DeadlineExceeded(u64),
    #[error("inference failed: {0}")]
    /// The runtime failed the batch.
    Backend(#[from] BackendError),
    /// A load or unload of this model is already running; they never overlap.
    #[error("a load or unload of model `{0}` is already running; retry when it ends")]
    ModelBusy(String),
    /// A version failed verification, warm-up or its golden gate and does not
    /// serve; the message names the version, the stage and the reason.
    #[error("{0}")]
    LoadFailed(String),
    /// A broken invariant of the server itself, never the client's doing.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl CoreError {
    /// Invalid input at `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        CoreError::Invalid {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// Refusals before the request is accepted (the server is starting or
    /// stopping): nothing was computed, and a proxy may send it to another worker.
    pub fn refused_at_door(&self) -> bool {
        matches!(self, CoreError::NotReady | CoreError::Draining)
    }

    /// Transient refusals a client should retry after a pause.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            CoreError::QueueFull(_)
                | CoreError::Overloaded { .. }
                | CoreError::NotReady
                | CoreError::Draining
        )
    }

    /// When a retry has a fair chance, for retryable refusals: the measured
    /// drain time of the model's queue, else a second.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            CoreError::Overloaded { retry_after_ms, .. } => {
                Some(std::time::Duration::from_millis(*retry_after_ms))
            }
            e if e.retryable() => Some(std::time::Duration::from_secs(1)),
            _ => None,
        }
    }

    /// The `reason` label of `inferd_rejections_total`, for refusals that are
    /// about capacity or lifecycle rather than the request's content.
    pub fn rejection_reason(&self) -> Option<&'static str> {
        match self {
            CoreError::QueueFull(_) => Some("queue_full"),
            CoreError::Overloaded { .. } => Some("queue_time"),
            CoreError::NotReady => Some("not_ready"),
            CoreError::Draining => Some("draining"),
            CoreError::DeadlineExceeded(_) => Some("deadline"),
            _ => None,
        }
    }

    /// Whether the server, not the request, is at fault (worth a warning in the
    /// log; capacity and lifecycle refusals are not).
    pub fn is_server_fault(&self) -> bool {
        matches!(self, CoreError::Backend(_) | CoreError::Internal(_))
    }
}

/// A validation failure from a task's decoder.
impl From<super::task::InvalidInput> for CoreError {
    fn from(e: super::task::InvalidInput) -> Self {
        CoreError::Invalid {
            field: Some(e.field),
            message: e.message,
        }
    }
}
