//! Optional bearer-token auth (`INFERD_API_KEYS`, `INFERD_API_KEYS_FILE`).
//!
//! Off unless keys are configured. When on, every route except the exempt paths
//! (probes, metrics, the API description by default) needs
//! `Authorization: Bearer <key>`; anything else is a 401 in the protocol of the
//! router the middleware is mounted on. Keys are kept only as SHA-256 digests and compared in
//! constant time against every key, so neither the comparison nor which key
//! matched leaks through timing, and no key ever reaches a log line.

use std::collections::HashSet;
use std::path::PathBuf;

use axum::extract::{OriginalUri, Request};
use axum::http::header;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::{ApiError, ErrorFormat};

/// Where the keys come from: comma-separated lists and files of one key per
/// line (`#` starts a comment), for inference and for model control.
#[derive(Debug, Clone, Default)]
pub struct KeySources {
    /// Inference keys, comma-separated (`INFERD_API_KEYS`).
    pub api_keys: Option<String>,
    /// A file of inference keys (`INFERD_API_KEYS_FILE`).
    pub api_keys_file: Option<PathBuf>,
    /// Model control keys, comma-separated (`INFERD_ADMIN_KEYS`).
    pub admin_keys: Option<String>,
    /// A file of model control keys (`INFERD_ADMIN_KEYS_FILE`).
    pub admin_keys_file: Option<PathBuf>,
    /// Paths that stay open when keys are on (`INFERD_AUTH_EXEMPT`).
    pub exempt: Vec<String>,
}

/// The keys the server accepts, kept only as SHA-256 digests.
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
    /// Keys for the model control routes (`INFERD_ADMIN_KEYS`).
    admin: Vec<[u8; 32]>,
    exempt: HashSet<String>,
}

/// The routes that change what serves: only admin keys open them.
pub(crate) const ADMIN_PREFIX: &str = "/v2/repository/";

fn read_keys(
    list: Option<&str>,
    file: Option<&std::path::Path>,
    what: &str,
) -> anyhow::Result<Vec<[u8; 32]>> {
    let mut keys: Vec<String> = list
        .unwrap_or("")
        .split(',')
        .map(|k| k.trim().to_string())
        .collect();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the {what} file {}: {e}", path.display()))?;
        keys.extend(
            text.lines()
                .map(|l| l.split('#').next().unwrap_or("").trim().to_string()),
        );
        if keys.iter().all(|k| k.is_empty()) {
            anyhow::bail!("the {what} file {} holds no key", path.display());
        }
    }
    Ok(keys
        .iter()
        .filter(|k| !k.is_empty())
        .map(|k| digest(k.as_bytes()))
        .collect())
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

impl ApiKeys {
    /// The keys from the lists and the key files. An unreadable key file is a
    /// start-up error: silently serving without auth would be worse.
    pub fn load(sources: &KeySources) -> anyhow::Result<Self> {
        Ok(ApiKeys {
            digests: read_keys(
                sources.api_keys.as_deref(),
                sources.api_keys_file.as_deref(),
                "API key",
            )?,
            admin: read_keys(
                sources.admin_keys.as_deref(),
                sources.admin_keys_file.as_deref(),
                "admin key",
            )?,
            exempt: sources.exempt.iter().cloned().collect(),
        })
    }

    /// Whether inference keys are required.
    pub fn enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    /// How many inference keys there are.
    pub fn count(&self) -> usize {
        self.digests.len()
    }

    /// How many model control keys there are.
    pub fn admin_count(&self) -> usize {
        self.admin.len()
    }

    /// Constant time in the token and over all keys: no early exit.
    fn accepts(&self, token: &str) -> bool {
        any_matches(&self.digests, token)
    }

    fn accepts_admin(&self, token: &str) -> bool {
        any_matches(&self.admin, token)
    }
}

fn any_matches(digests: &[[u8; 32]], token: &str) -> bool {
    let d = digest(token.as_bytes());
    digests
        .iter()
        .fold(subtle::Choice::from(0), |ok, k| ok | k.ct_eq(&d))
        .into()
}

fn bearer(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
}

/// What a call needs, for front doors that check keys themselves (gRPC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Nothing: probes.
    Open,
    /// An inference key, when keys are on.
    Inference,
    /// An admin key, when any key is configured (model control).
    Admin,
}

impl ApiKeys {
    /// The same decision as `require_api_key`, for a bearer token taken from
    /// wherever the protocol carries it.
    pub fn check(&self, needs: Needs, token: Option<&str>) -> Result<(), ApiError> {
        match needs {
            Needs::Open => Ok(()),
            Needs::Admin => {
                if !self.enabled() && self.admin.is_empty() {
                    return Ok(());
                }
                match token {
                    Some(t) if self.accepts_admin(t) => Ok(()),
                    Some(t) if self.accepts(t) => Err(ApiError::Forbidden(
                        "an inference key cannot control models: use an admin key (INFERD_ADMIN_KEYS)",
                    )),
                    Some(_) => Err(ApiError::Unauthorized("the admin key is not valid")),
                    None => Err(ApiError::Unauthorized(
                        "an admin key is required: `authorization: Bearer <admin key>`",
                    )),
                }
            }
            Needs::Inference => {
                if !self.enabled() {
                    return Ok(());
                }
                match token {
                    Some(t) if self.accepts(t) => Ok(()),
                    Some(_) => Err(ApiError::Unauthorized("the API key is not valid")),
                    None => Err(ApiError::Unauthorized(
                        "an API key is required: `authorization: Bearer <key>`",
                    )),
                }
            }
        }
    }

    /// Whether a path is exempt from keys (`INFERD_AUTH_EXEMPT`).
    pub fn exempt(&self, path: &str) -> bool {
        self.exempt.contains(path)
    }
}

/// The token of an `Authorization: Bearer <token>` value.
pub(crate) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// The refusal of a request without the key its path needs, rendered by
/// `F` (the router's error format); `None` lets it through.
pub(crate) fn refusal<F: ErrorFormat>(keys: &ApiKeys, req: &Request) -> Option<Response> {
    // Exempt paths are full paths; a nested router sees its path without the prefix.
    let path = req
        .extensions()
        .get::<OriginalUri>()
        .map(|u| u.path())
        .unwrap_or_else(|| req.uri().path());
    if path.starts_with(ADMIN_PREFIX) {
        // Open only when no key of either kind is configured (and then
        // `INFERD_MODEL_CONTROL` decides whether loads are allowed at all).
        if !keys.enabled() && keys.admin.is_empty() {
            return None;
        }
        let refusal = match bearer(req) {
            Some(t) if keys.accepts_admin(t) => return None,
            Some(t) if keys.accepts(t) => ApiError::Forbidden(
                "an inference key cannot control models: use an admin key (INFERD_ADMIN_KEYS)",
            ),
            Some(_) => ApiError::Unauthorized("the admin key is not valid"),
            None => ApiError::Unauthorized(
                "an admin key is required: `Authorization: Bearer <admin key>`",
            ),
        };
        return Some(F::render(refusal));
    }
    if !keys.enabled() || keys.exempt.contains(path) {
        return None;
    }
    let refusal = match bearer(req) {
        Some(t) if keys.accepts(t) => return None,
        Some(_) => ApiError::Unauthorized("the API key is not valid"),
        None => ApiError::Unauthorized("an API key is required: `Authorization: Bearer <key>`"),
    };
    Some(F::render(refusal))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: Option<&str>, file: Option<&std::path::Path>) -> anyhow::Result<ApiKeys> {
        ApiKeys::load(&KeySources {
            api_keys: list.map(str::to_string),
            api_keys_file: file.map(PathBuf::from),
            ..KeySources::default()
        })
    }

    #[test]
    fn keys_from_the_list_and_the_file() {
        assert!(!keys(None, None).unwrap().enabled());
        let k = keys(Some(" alpha , ,beta"), None).unwrap();
        assert_eq!(k.count(), 2);
        assert!(k.accepts("alpha") && k.accepts("beta"));
        assert!(!k.accepts("alph") && !k.accepts("") && !k.accepts("alpha "));
        let dir = std::env::temp_dir().join(format!("inferd-keys-{}", std::process::id()));
        std::fs::write(&dir, "# team A\ngamma\n\ndelta # rotated 2026-11\n").unwrap();
        let k = keys(None, Some(&dir)).unwrap();
        assert_eq!(k.count(), 2);
        assert!(k.accepts("gamma") && k.accepts("delta"));
        std::fs::write(&dir, "# nothing\n").unwrap();
        assert!(keys(None, Some(&dir)).is_err());
        std::fs::remove_file(&dir).unwrap();
    }
}
