//! The prediction pipeline every front door uses: per-instance cache lookup,
//! single-flight for misses, admission (queue bound), the model's batcher (which
//! merges concurrent requests into one inference on a blocking thread) under the
//! request's deadline, and cache fill. HTTP routes only decode and encode around
//! it, so `/predict` and any other protocol share one copy of this logic.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::admission::{Admission, AdmissionError};
use crate::api::ApiError;
use crate::batcher::Batcher;
use crate::cache::{instance_key, Cache, Key};
use crate::coalesce::{follow, Flights, Join, Lead};
use crate::metrics::Metrics;
use crate::repository::{Model, Repository};
use crate::runtime::InputBatch;
use crate::task::Prediction;

/// Where a request's time went (accumulated over its model calls).
#[derive(Debug, Default, Clone, Copy)]
pub struct Timings {
    pub queue: Duration,
    pub inference: Duration,
}

pub struct Predicted {
    pub predictions: Vec<Prediction>,
    pub cached: Vec<bool>,
    /// Per-instance canonical hashes (for the prediction log); empty when
    /// neither the cache nor the caller needed them.
    pub keys: Vec<Key>,
}

pub struct Pipeline {
    pub admission: Admission,
    pub cache: Option<Arc<Cache>>,
    flights: Arc<Flights>,
    batchers: OnceLock<HashMap<String, Batcher>>,
    metrics: Arc<Metrics>,
    timeout_ms: u64,
}

impl Pipeline {
    pub fn new(
        admission: Admission,
        cache: Option<Arc<Cache>>,
        metrics: Arc<Metrics>,
        timeout_ms: u64,
    ) -> Self {
        Pipeline {
            admission,
            cache,
            flights: Arc::new(Flights::default()),
            batchers: OnceLock::new(),
            metrics,
            timeout_ms,
        }
    }

    pub async fn predict(
        &self,
        model: &Arc<Model>,
        mut batch: InputBatch,
        deadline: Instant,
        want_keys: bool,
        timings: &mut Timings,
    ) -> Result<Predicted, ApiError> {
        let (name, version) = (&model.manifest.name, &model.manifest.version);
        let n = batch.len();
        let cache = self.cache.clone().filter(|_| model.manifest.cache.enabled);
        // Hashing costs a pass over every input byte: only when someone uses it.
        let keys: Vec<Key> = if cache.is_some() || want_keys {
            (0..n)
                .map(|i| instance_key(name, version, &batch, i))
                .collect()
        } else {
            Vec::new()
        };
        let Some(cache) = cache else {
            let predictions = self.run_model(model, batch, deadline, timings).await?;
            return Ok(Predicted {
                predictions,
                cached: vec![false; n],
                keys,
            });
        };

        let mut slots: Vec<Option<Prediction>> = vec![None; n];
        let mut cached = vec![false; n];
        for (i, hit) in cache
            .get_many(name, version, &keys)
            .await
            .into_iter()
            .enumerate()
        {
            if let Some(p) = hit.and_then(|b| serde_json::from_slice::<Prediction>(&b).ok()) {
                slots[i] = Some(p);
                cached[i] = true;
            }
        }

        let mut leads: Vec<(usize, Lead)> = Vec::new();
        let mut follows = Vec::new();
        for i in (0..n).filter(|&i| slots[i].is_none()) {
            match self.flights.join(keys[i]) {
                Join::Lead(l) => leads.push((i, l)),
                Join::Follow(rx) => follows.push((i, rx)),
            }
        }

        // A flight may have finished between our lookup and our join: its result
        // is in the local store now (leaders write it there before retiring).
        if !leads.is_empty() {
            let lead_keys: Vec<Key> = leads.iter().map(|(_, l)| *l.key()).collect();
            let again = cache.peek_many(&lead_keys).await;
            let mut still = Vec::with_capacity(leads.len());
            for ((i, lead), hit) in leads.into_iter().zip(again) {
                match hit.and_then(|b| serde_json::from_slice::<Prediction>(&b).ok()) {
                    Some(p) => {
                        lead.complete(Ok(p.clone()));
                        slots[i] = Some(p);
                        cached[i] = true;
                    }
                    None => still.push((i, lead)),
                }
            }
            leads = still;
        }

        if !leads.is_empty() {
            let idx: Vec<usize> = leads.iter().map(|(i, _)| *i).collect();
            let sub = if idx.len() == n && follows.is_empty() {
                // Nothing below reads the batch again: hand it over, no copy.
                std::mem::replace(&mut batch, InputBatch::Text(Vec::new()))
            } else if idx.len() == n {
                batch.clone()
            } else {
                batch.select(&idx)
            };
            match self.run_model(model, sub, deadline, timings).await {
                Ok(preds) => {
                    let entries: Vec<(Key, Bytes)> = idx
                        .iter()
                        .zip(&preds)
                        .filter_map(|(i, p)| {
                            serde_json::to_vec(p)
                                .ok()
                                .map(|b| (keys[*i], Bytes::from(b)))
                        })
                        .collect();
                    // Store locally before retiring the flights, so a request
                    // arriving in between finds the entry; Redis is written by a
                    // task of its own, off the response path.
                    cache.set_local(&entries).await;
                    for ((i, lead), p) in leads.into_iter().zip(preds) {
                        lead.complete(Ok(p.clone()));
                        slots[i] = Some(p);
                    }
                    if cache.has_remote() {
                        let (cache, model) = (cache.clone(), model.clone());
                        tokio::spawn(async move {
                            cache
                                .set_remote(&model.manifest.name, &model.manifest.version, entries)
                                .await;
                        });
                    }
                }
                Err(e) => {
                    for (_, lead) in leads {
                        lead.complete(Err(e.clone()));
                    }
                    return Err(e);
                }
            }
        }

        for (i, rx) in follows {
            match tokio::time::timeout_at(deadline, follow(rx)).await {
                Err(_) => return Err(ApiError::DeadlineExceeded(self.timeout_ms)),
                Ok(Some(Ok(p))) => {
                    self.metrics.cache_coalesced.inc();
                    slots[i] = Some(p);
                }
                Ok(Some(Err(e))) => return Err(e),
                // The leader's request went away before finishing: run it here.
                Ok(None) => {
                    let mut out = self
                        .run_model(model, batch.select(&[i]), deadline, timings)
                        .await?;
                    slots[i] = out.pop();
                }
            }
        }
        let predictions: Vec<Prediction> = slots.into_iter().flatten().collect();
        if predictions.len() != n {
            return Err(ApiError::Inference(
                "internal: a prediction went missing".into(),
            ));
        }
        Ok(Predicted {
            predictions,
            cached,
            keys,
        })
    }

    /// Starts one batcher per loaded model. Called once, after loading.
    pub fn attach(
        &self,
        repo: &Repository,
        size_override: Option<usize>,
        delay_override_ms: Option<u64>,
    ) {
        let mut map = HashMap::new();
        for m in repo.iter() {
            let b = &m.manifest.batching;
            let batcher = Batcher::start(
                m.clone(),
                self.admission.slots(),
                self.metrics.clone(),
                size_override.unwrap_or(b.max_batch_size),
                Duration::from_millis(delay_override_ms.unwrap_or(b.max_batch_delay_ms)),
                self.timeout_ms,
            );
            map.insert(batcher_key(&m.manifest.name, &m.manifest.version), batcher);
        }
        let _ = self.batchers.set(map);
    }

    /// Queues the batch with the model's batcher (split into jobs of at most
    /// `max_batch_size` instances) and waits for every part under the deadline.
    async fn run_model(
        &self,
        model: &Arc<Model>,
        batch: InputBatch,
        deadline: Instant,
        timings: &mut Timings,
    ) -> Result<Vec<Prediction>, ApiError> {
        let batcher = self
            .batchers
            .get()
            .and_then(|m| m.get(&batcher_key(&model.manifest.name, &model.manifest.version)))
            .ok_or(ApiError::NotReady)?;
        let n = batch.len();
        let max = batcher.max_batch_size;
        let mut parts = Vec::with_capacity(n.div_ceil(max));
        let pieces: Vec<InputBatch> = if n <= max {
            vec![batch]
        } else {
            (0..n)
                .step_by(max)
                .map(|start| batch.select(&(start..(start + max).min(n)).collect::<Vec<_>>()))
                .collect()
        };
        for part in pieces {
            let ticket = self.admission.enter().map_err(|e| match e {
                AdmissionError::QueueFull(w) => ApiError::QueueFull(w),
            })?;
            parts.push(batcher.submit(part, deadline, ticket));
        }
        let mut predictions = Vec::with_capacity(n);
        for rx in parts {
            let (out, queued, ran) = match tokio::time::timeout_at(deadline, rx).await {
                Err(_) => return Err(ApiError::DeadlineExceeded(self.timeout_ms)),
                Ok(Err(_)) => return Err(ApiError::Draining),
                Ok(Ok(r)) => r?,
            };
            timings.queue += queued;
            timings.inference += ran;
            predictions.extend(model.task.encode(&out));
        }
        Ok(predictions)
    }
}

fn batcher_key(name: &str, version: &str) -> String {
    format!("{name}\0{version}")
}
