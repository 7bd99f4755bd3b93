//! What every route shares: the configuration, the core's pipeline and
//! lifecycle, model control, the prediction log, the metrics and the API keys. The server
//! builds it; routes only read it.

use std::sync::{Arc, OnceLock};

use super::auth::ApiKeys;
use crate::config::ServeConfig;
use crate::core::control::ModelControl;
use crate::core::lifecycle::Lifecycle;
use crate::core::pipeline::Pipeline;
use crate::metrics::Metrics;
use crate::predlog::PredLog;

pub struct AppState {
    pub config: ServeConfig,
    pub metrics: Arc<Metrics>,
    pub pipeline: Arc<Pipeline>,
    pub lifecycle: Arc<Lifecycle>,
    /// Set once the runtime and the first models are loaded.
    pub control: OnceLock<Arc<ModelControl>>,
    pub predlog: PredLog,
    pub api_keys: Arc<ApiKeys>,
}
