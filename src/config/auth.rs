//! API keys.

use std::path::PathBuf;

use clap::Args;
use inferd_api::KeySources;
use serde::Serialize;

/// `API keys` in `--help`.
#[derive(Debug, Clone, Args, Serialize)]
#[command(next_help_heading = "API keys")]
pub struct AuthArgs {
    /// Bearer tokens accepted on the model routes, comma-separated. When this or
    /// `--api-keys-file` is set, requests without a valid `Authorization: Bearer`
    /// get 401. Never logged.
    #[arg(long, env = "INFERD_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,

    /// A file of bearer tokens, one per line (`#` starts a comment): for keys
    /// mounted from a secret store rather than passed in the environment. A
    /// file that cannot be read, or holds no key, stops start-up.
    #[arg(long, env = "INFERD_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// Paths that stay open when API keys are on, comma-separated (probes,
    /// scrapers and the API description need no key by default).
    #[arg(
        long,
        env = "INFERD_AUTH_EXEMPT",
        value_delimiter = ',',
        default_value = "/healthz,/readyz,/metrics,/v2/health/live,/v2/health/ready,/openapi.json,/docs"
    )]
    pub auth_exempt: Vec<String>,

    /// Bearer tokens for the model control routes (`/v2/repository/...`),
    /// comma-separated, separate from the inference keys: an inference key
    /// is refused there (403), and an admin key is not an inference key.
    /// Whenever any key is configured, those routes need an admin key.
    #[arg(long, env = "INFERD_ADMIN_KEYS", hide_env_values = true)]
    pub admin_keys: Option<String>,

    /// A file of admin tokens, one per line (`#` starts a comment).
    #[arg(long, env = "INFERD_ADMIN_KEYS_FILE")]
    pub admin_keys_file: Option<PathBuf>,
}

impl AuthArgs {
    /// Where the front doors read their keys from.
    pub fn sources(&self) -> KeySources {
        KeySources {
            api_keys: self.api_keys.clone(),
            api_keys_file: self.api_keys_file.clone(),
            admin_keys: self.admin_keys.clone(),
            admin_keys_file: self.admin_keys_file.clone(),
            exempt: self.auth_exempt.clone(),
        }
    }

    /// Whether admin keys are configured (model control's `auto`).
    pub fn has_admin_keys(&self) -> bool {
        self.admin_keys
            .as_deref()
            .is_some_and(|k| super::key_count(k) > 0)
            || self.admin_keys_file.is_some()
    }
}
