//! Optional bearer-token auth (`INFERD_API_KEYS`, `INFERD_API_KEYS_FILE`).
//!
//! Off unless keys are configured. When on, every route except the exempt paths
//! (probes, metrics, the API description by default) needs
//! `Authorization: Bearer <key>`; anything else is a 401 in the protocol of the
//! router the middleware is mounted on. Keys are kept only as SHA-256 digests and compared in
//! constant time against every key, so neither the comparison nor which key
//! matched leaks through timing, and no key ever reaches a log line.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{OriginalUri, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::{ApiError, ErrorFormat};
use crate::config::ServeConfig;

pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
    exempt: HashSet<String>,
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

impl ApiKeys {
    /// The keys from the config and the key file. An unreadable key file is a
    /// start-up error: silently serving without auth would be worse.
    pub fn from_config(config: &ServeConfig) -> anyhow::Result<Self> {
        let mut keys: Vec<String> = config
            .api_keys
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(|k| k.trim().to_string())
            .collect();
        if let Some(path) = &config.api_keys_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("cannot read the API key file {}: {e}", path.display())
            })?;
            keys.extend(
                text.lines()
                    .map(|l| l.split('#').next().unwrap_or("").trim().to_string()),
            );
            if keys.iter().all(|k| k.is_empty()) {
                anyhow::bail!("the API key file {} holds no key", path.display());
            }
        }
        Ok(ApiKeys {
            digests: keys
                .iter()
                .filter(|k| !k.is_empty())
                .map(|k| digest(k.as_bytes()))
                .collect(),
            exempt: config.auth_exempt.iter().cloned().collect(),
        })
    }

    pub fn enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    pub fn count(&self) -> usize {
        self.digests.len()
    }

    /// Constant time in the token and over all keys: no early exit.
    fn accepts(&self, token: &str) -> bool {
        let d = digest(token.as_bytes());
        self.digests
            .iter()
            .fold(subtle::Choice::from(0), |ok, k| ok | k.ct_eq(&d))
            .into()
    }
}

/// The middleware: refusals are rendered by `F`, the router's error format.
pub async fn require_api_key<F: ErrorFormat>(
    State(keys): State<Arc<ApiKeys>>,
    req: Request,
    next: Next,
) -> Response {
    // Exempt paths are full paths; a nested router sees its path without the prefix.
    let path = req
        .extensions()
        .get::<OriginalUri>()
        .map(|u| u.path())
        .unwrap_or_else(|| req.uri().path());
    if !keys.enabled() || keys.exempt.contains(path) {
        return next.run(req).await;
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    let refusal = match token {
        Some(t) if keys.accepts(t) => return next.run(req).await,
        Some(_) => ApiError::Unauthorized("the API key is not valid"),
        None => ApiError::Unauthorized("an API key is required: `Authorization: Bearer <key>`"),
    };
    F::render(refusal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn keys(args: &[&str]) -> ApiKeys {
        let mut argv = vec!["inferd"];
        argv.extend_from_slice(args);
        ApiKeys::from_config(&crate::config::Cli::try_parse_from(argv).unwrap().serve).unwrap()
    }

    #[test]
    fn keys_from_the_list_and_the_file() {
        assert!(!keys(&[]).enabled());
        let k = keys(&["--api-keys", " alpha , ,beta"]);
        assert_eq!(k.count(), 2);
        assert!(k.accepts("alpha") && k.accepts("beta"));
        assert!(!k.accepts("alph") && !k.accepts("") && !k.accepts("alpha "));
        let dir = std::env::temp_dir().join(format!("inferd-keys-{}", std::process::id()));
        std::fs::write(&dir, "# team A\ngamma\n\ndelta # rotated 2026-11\n").unwrap();
        let k = keys(&["--api-keys-file", dir.to_str().unwrap()]);
        assert_eq!(k.count(), 2);
        assert!(k.accepts("gamma") && k.accepts("delta"));
        std::fs::write(&dir, "# nothing\n").unwrap();
        let cli = crate::config::Cli::try_parse_from([
            "inferd",
            "--api-keys-file",
            dir.to_str().unwrap(),
        ])
        .unwrap();
        assert!(ApiKeys::from_config(&cli.serve).is_err());
        std::fs::remove_file(&dir).unwrap();
    }
}
