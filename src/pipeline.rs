//! The prediction pipeline every front door uses: per-instance cache lookup,
//! single-flight for misses, admission, inference on a blocking thread under the
//! request's deadline, and cache fill. HTTP routes only decode and encode around
//! it, so `/predict` and any other protocol share one copy of this logic.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::admission::{Admission, AdmissionError};
use crate::api::ApiError;
use crate::cache::{instance_key, Cache, Key};
use crate::coalesce::{follow, Flights, Join, Lead};
use crate::metrics::Metrics;
use crate::repository::Model;
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
    /// Per-instance canonical hashes (for the prediction log).
    pub keys: Vec<Key>,
}

pub struct Pipeline {
    pub admission: Admission,
    pub cache: Option<Arc<Cache>>,
    flights: Arc<Flights>,
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
            metrics,
            timeout_ms,
        }
    }

    pub async fn predict(
        &self,
        model: &Arc<Model>,
        batch: InputBatch,
        deadline: Instant,
        timings: &mut Timings,
    ) -> Result<Predicted, ApiError> {
        let (name, version) = (&model.manifest.name, &model.manifest.version);
        let n = batch.len();
        let keys: Vec<Key> = (0..n)
            .map(|i| instance_key(name, version, &batch, i))
            .collect();
        let cache = self.cache.as_ref().filter(|_| model.manifest.cache.enabled);
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
        // is in the cache now. Re-checking is cheap for the in-process cache;
        // for Redis the window is the async write, and a rare recompute is fine.
        if !leads.is_empty() && cache.is_local() {
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
            let sub = if idx.len() == n {
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
                    if cache.is_local() {
                        // Fill the cache before retiring the flights, so a request
                        // that arrives in between finds the entry.
                        cache.set_many(name, version, entries).await;
                        for ((i, lead), p) in leads.into_iter().zip(preds) {
                            lead.complete(Ok(p.clone()));
                            slots[i] = Some(p);
                        }
                    } else {
                        // Answer followers now; keep the flights open until Redis
                        // has the entries (the fill task drops the guards).
                        let mut guards = Vec::with_capacity(leads.len());
                        for ((i, lead), p) in leads.into_iter().zip(preds) {
                            lead.publish(Ok(p.clone()));
                            slots[i] = Some(p);
                            guards.push(lead);
                        }
                        self.spawn_cache_fill(model, entries, guards);
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

    /// Redis writes go to a task of their own: the response does not wait for
    /// them. The flights stay open until the write is done (or has failed).
    fn spawn_cache_fill(&self, model: &Arc<Model>, entries: Vec<(Key, Bytes)>, flights: Vec<Lead>) {
        let Some(cache) = self.cache.clone() else {
            return;
        };
        let model = model.clone();
        tokio::spawn(async move {
            cache
                .set_many(&model.manifest.name, &model.manifest.version, entries)
                .await;
            drop(flights);
        });
    }

    /// Admission, then one backend call on a blocking thread, under the deadline.
    async fn run_model(
        &self,
        model: &Arc<Model>,
        batch: InputBatch,
        deadline: Instant,
        timings: &mut Timings,
    ) -> Result<Vec<Prediction>, ApiError> {
        let wait = std::time::Instant::now();
        let permit = self.admission.acquire(deadline).await;
        let waited = wait.elapsed();
        timings.queue += waited;
        self.metrics
            .queue_wait
            .with_label_values(&[&model.manifest.name])
            .observe(waited.as_secs_f64());
        let permit = permit.map_err(|e| match e {
            AdmissionError::QueueFull(n) => ApiError::QueueFull(n),
            AdmissionError::Deadline => ApiError::DeadlineExceeded(self.timeout_ms),
        })?;
        // The blocking task owns the permit: if the deadline passes or the client
        // goes away, the slot stays taken until ONNX Runtime has really finished.
        let m = model.clone();
        let metrics = self.metrics.clone();
        let job = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            metrics.in_flight.inc();
            let t = std::time::Instant::now();
            let out = m.backend.infer(&batch);
            let took = t.elapsed();
            metrics.in_flight.dec();
            let labels = [m.manifest.name.as_str(), m.manifest.version.as_str()];
            metrics
                .inference_duration
                .with_label_values(&labels)
                .observe(took.as_secs_f64());
            metrics
                .model_instances
                .with_label_values(&labels)
                .inc_by(batch.len() as u64);
            (out, took)
        });
        let (out, took) = match tokio::time::timeout_at(deadline, job).await {
            Err(_) => return Err(ApiError::DeadlineExceeded(self.timeout_ms)),
            Ok(Err(join)) => return Err(ApiError::Inference(format!("worker failed: {join}"))),
            Ok(Ok(r)) => r,
        };
        timings.inference += took;
        let out = out.map_err(|e| ApiError::Inference(e.to_string()))?;
        Ok(model.task.encode(&out))
    }
}
