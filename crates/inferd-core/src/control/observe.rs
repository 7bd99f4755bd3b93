//! What model control shows and how it watches: the repository index, the
//! state table's metrics, and the poller that compares the models directory
//! with what serves.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::disk::{self, Failure, Fingerprint, Stage};
use super::{blocking, lock, IndexEntry, ModelControl, State, Status, Trigger};
use crate::error::CoreError;
use crate::lifecycle::Phase;
use crate::repository::Model;

impl ModelControl {
    /// Every version known: what serves, what failed or was unloaded, and
    /// what lies on disk unloaded.
    pub async fn index(&self) -> Result<Vec<IndexEntry>, CoreError> {
        let root = self.settings.root.clone();
        let on_disk = blocking(move || {
            let names = disk::model_names(&root).unwrap_or_default();
            names
                .into_iter()
                .map(|n| {
                    let vs = disk::versions(&root.join(&n))
                        .ok()
                        .flatten()
                        .map(|v| v.into_keys().collect::<Vec<_>>())
                        .unwrap_or_default();
                    (n, vs)
                })
                .collect::<Vec<_>>()
        })
        .await?;
        let mut out: BTreeMap<(String, u64), IndexEntry> = BTreeMap::new();
        for (name, versions) in on_disk {
            for version in versions {
                out.insert(
                    (name.clone(), version),
                    IndexEntry {
                        name: name.clone(),
                        version,
                        state: State::Unavailable,
                        reason: "not loaded".into(),
                    },
                );
            }
        }
        for (name, e) in lock(&self.table).iter() {
            for (version, s) in &e.versions {
                out.insert(
                    (name.clone(), *version),
                    IndexEntry {
                        name: name.clone(),
                        version: *version,
                        state: s.state,
                        reason: s.reason.clone(),
                    },
                );
            }
        }
        Ok(out.into_values().collect())
    }

    /// Compares the models directory with what serves every `every`, loading
    /// new or changed versions and retiring removed ones, until draining.
    pub fn spawn_poller(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                match this.lifecycle.phase() {
                    Phase::Draining => return,
                    Phase::Starting => continue,
                    Phase::Serving => {}
                }
                this.poll_once().await;
            }
        })
    }

    /// One pass of the poller.
    pub async fn poll_once(&self) {
        let root = self.settings.root.clone();
        let Ok(Ok(mut names)) = blocking(move || disk::model_names(&root)).await else {
            tracing::warn!(root = %self.settings.root.display(), "cannot read the models directory");
            return;
        };
        if let Some(d) = self.lifecycle.deployment() {
            names.extend(d.repository().models.keys().cloned());
        }
        for name in names {
            if lock(&self.table).get(&name).is_some_and(|e| e.unloaded) {
                continue;
            }
            match self.apply(&name, None, Trigger::Poll).await {
                Ok(_) | Err(CoreError::ModelBusy(_)) => {}
                Err(e) => {
                    tracing::warn!(model = %name, error = %e, "polling could not apply a change")
                }
            }
        }
        self.metrics.model_polls.inc();
    }

    pub(super) fn refused(
        &self,
        name: &str,
        v: u64,
        f: &Failure,
        fp: Fingerprint,
        still_serving: bool,
    ) {
        let vs = v.to_string();
        self.metrics
            .model_gate_failures
            .with_label_values(&[name, &vs, f.stage.name()])
            .inc();
        if f.stage == Stage::Unsupported {
            // Expected in a build without that runtime (the default build and
            // the TorchScript twin it ships): nothing for an operator to do,
            // and the index and metrics show it.
            self.count_load(name, v, "unsupported");
            tracing::info!(model = name, version = v, reason = %f.message, "model version unavailable in this build");
        } else {
            self.count_load(name, v, "failed");
            tracing::error!(model = name, version = v, stage = f.stage.name(), reason = %f.message, "model version refused");
        }
        let (state, reason) = if still_serving {
            (
                State::Ready,
                format!("serving the previous files: the changed ones were refused: {f}"),
            )
        } else {
            (State::Unavailable, f.to_string())
        };
        self.set_status(name, v, state, &reason, Some(fp));
    }

    pub(super) fn count_load(&self, name: &str, v: u64, result: &str) {
        self.metrics
            .model_loads
            .with_label_values(&[name, &v.to_string(), result])
            .inc();
    }

    pub(super) fn set_status(
        &self,
        name: &str,
        v: u64,
        state: State,
        reason: &str,
        fp: Option<Fingerprint>,
    ) {
        let vs = v.to_string();
        for s in State::ALL {
            self.metrics
                .model_state
                .with_label_values(&[name, &vs, s.name()])
                .set(i64::from(s == state));
        }
        let mut table = lock(&self.table);
        let entry = table.entry(name.to_string()).or_default();
        let fingerprint = fp.or_else(|| {
            // A version going unavailable forgets its files, so loading the
            // same files again is a real load.
            (state != State::Unavailable)
                .then(|| entry.versions.get(&v).and_then(|s| s.fingerprint.clone()))
                .flatten()
        });
        entry.versions.insert(
            v,
            Status {
                state,
                reason: reason.to_string(),
                fingerprint,
            },
        );
    }

    pub(super) fn set_info(&self, m: &Model, on: bool) {
        let labels = [
            m.manifest.name.as_str(),
            m.manifest.version.as_str(),
            m.task.name(),
            m.manifest.graph_sha256.as_str(),
        ];
        if on {
            self.metrics.model_info.with_label_values(&labels).set(1);
            if let Some(q) = &self.quality {
                q.remember(&m.manifest.name, &m.manifest.version);
            }
        } else {
            let _ = self.metrics.model_info.remove_label_values(&labels);
            if let Some(q) = &self.quality {
                q.forget(&m.manifest.name, &m.manifest.version);
            }
        }
    }
}
