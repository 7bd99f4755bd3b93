//! The prediction pipeline every front door uses: the instance limit and the
//! task's validation, per-instance cache lookup, single-flight for misses,
//! admission (queue bound), the model's batcher (which merges concurrent requests
//! into one inference on a slot thread) under the request's deadline, and
//! cache fill. Front doors only translate their wire format around it, so every
//! protocol shares one copy of this logic.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::admission::Admission;
use super::backend::InputBatch;
use super::batcher::Batcher;
use super::cache::{instance_key, Cache, Key};
use super::coalesce::{follow, Flights, Join, Lead};
use super::deployment::{Deployment, Target};
use super::error::CoreError;
use super::governor::Tuning;
use super::instances::Instances;
use super::policy::Routing;
use super::repository::Repository;
use super::task::{Decoded, Prediction};
use crate::metrics::Metrics;
use inferd_telemetry::trace::{self, TraceRef};
use opentelemetry::KeyValue;

/// Where a request's time went (accumulated over its model calls).
#[derive(Debug, Default, Clone, Copy)]
pub struct Timings {
    /// Waiting for a slot.
    pub queue: Duration,
    /// In the model.
    pub inference: Duration,
}

#[derive(Debug)]
/// A request's predictions and how each was made.
pub struct Predicted {
    /// One per instance, in order.
    pub predictions: Vec<Prediction>,
    /// Per instance: whether it came from the cache.
    pub cached: Vec<bool>,
    /// Per-instance canonical hashes (for the prediction log); empty when
    /// neither the cache nor the caller needed them.
    pub keys: Vec<Key>,
    /// Per instance, how many readings preprocessing filled in (forecasters
    /// that fill gaps); set by the caller from the decode step.
    pub filled: Option<Vec<usize>>,
}

/// The pipeline's limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most instances in one request.
    pub max_instances: usize,
    /// The request deadline, for error messages (the deadline itself is passed
    /// per call).
    pub timeout_ms: u64,
    /// How each model version's queue is bounded by time; a manifest's
    /// `queue_target_ms` overrides the target for its version.
    pub queue: Tuning,
}

/// The prediction path every front door uses.
pub struct Pipeline {
    /// The slots and the queue.
    pub admission: Admission,
    /// The result cache, when on.
    pub cache: Option<Arc<Cache>>,
    flights: Arc<Flights>,
    metrics: Arc<Metrics>,
    limits: Limits,
}

impl Pipeline {
    /// A pipeline over `admission`, with `cache` when there is one.
    pub fn new(
        admission: Admission,
        cache: Option<Arc<Cache>>,
        metrics: Arc<Metrics>,
        limits: Limits,
    ) -> Self {
        Pipeline {
            admission,
            cache,
            flights: Arc::new(Flights::default()),
            metrics,
            limits,
        }
    }

    /// Checks the instance count and has the model's task validate and convert
    /// the instances.
    pub fn decode(&self, target: &Target, instances: &Instances) -> Result<Decoded, CoreError> {
        if instances.is_empty() {
            return Err(CoreError::invalid(
                "instances",
                "must contain at least one instance",
            ));
        }
        let limit = self.limits.max_instances;
        if instances.len() > limit {
            return Err(CoreError::invalid(
                "instances",
                format!(
                    "at most {limit} instances per request (INFERD_MAX_INSTANCES), got {}",
                    instances.len()
                ),
            ));
        }
        Ok(target.model.task.decode_any(instances)?)
    }

    /// Predictions for every instance of `batch`, in order, from the cache where
    /// it has them and from the model for the rest: look every instance up,
    /// lead or follow a single flight for each miss, run the model once for
    /// the instances this request leads, then wait for those it follows.
    pub async fn predict(
        &self,
        target: &Target,
        mut batch: InputBatch,
        deadline: Instant,
        want_keys: bool,
        trace: TraceRef,
        timings: &mut Timings,
    ) -> Result<Predicted, CoreError> {
        let model = &target.model;
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
            let predictions = self
                .run_model(target, batch, deadline, trace, timings)
                .await?;
            return Ok(Predicted {
                predictions,
                cached: vec![false; n],
                keys,
                filled: None,
            });
        };
        let mut answers = lookup(&cache, name, version, &keys, trace).await;
        let (leads, follows) = self.join_flights(&keys, &answers);
        let leads = recheck(&cache, leads, &mut answers).await;
        let mut request = Request {
            target,
            deadline,
            trace,
            timings,
        };
        if !leads.is_empty() {
            let sub = if leads.len() == n {
                // Every instance is led, so none is followed and nothing
                // below reads the batch again: hand it over, no copy.
                std::mem::replace(&mut batch, InputBatch::Text(Vec::new()))
            } else {
                let idx: Vec<usize> = leads.iter().map(|(i, _)| *i).collect();
                batch.select(&idx)
            };
            self.lead(&mut request, &cache, sub, leads, &keys, &mut answers)
                .await?;
        }
        self.follow_all(&mut request, &batch, follows, &mut answers)
            .await?;
        let Answers { slots, cached } = answers;
        let predictions: Vec<Prediction> = slots.into_iter().flatten().collect();
        if predictions.len() != n {
            return Err(CoreError::Internal("a prediction went missing"));
        }
        Ok(Predicted {
            predictions,
            cached,
            keys,
            filled: None,
        })
    }

    /// Leads a flight for each instance no one is computing yet; follows the
    /// others.
    fn join_flights(&self, keys: &[Key], answers: &Answers) -> (Vec<(usize, Lead)>, Follows) {
        let mut leads = Vec::new();
        let mut follows = Vec::new();
        for i in (0..keys.len()).filter(|&i| answers.slots[i].is_none()) {
            match self.flights.join(keys[i]) {
                Join::Lead(l) => leads.push((i, l)),
                Join::Follow(rx) => follows.push((i, rx)),
            }
        }
        (leads, follows)
    }

    /// Runs the model on the instances this request leads, fills the cache
    /// and hands each flight its result (or the failure).
    async fn lead(
        &self,
        request: &mut Request<'_, '_>,
        cache: &Arc<Cache>,
        sub: InputBatch,
        leads: Vec<(usize, Lead)>,
        keys: &[Key],
        answers: &mut Answers,
    ) -> Result<(), CoreError> {
        let model = &request.target.model;
        let preds = match self
            .run_model(
                request.target,
                sub,
                request.deadline,
                request.trace,
                request.timings,
            )
            .await
        {
            Ok(preds) => preds,
            Err(e) => {
                for (_, lead) in leads {
                    lead.complete(Err(e.clone()));
                }
                return Err(e);
            }
        };
        let entries: Vec<(Key, Bytes)> = leads
            .iter()
            .zip(&preds)
            .filter_map(|((i, _), p)| {
                serde_json::to_vec(p)
                    .ok()
                    .map(|b| (keys[*i], Bytes::from(b)))
            })
            .collect();
        // Store locally before retiring the flights, so a request arriving in
        // between finds the entry; the shared store is written by a task of
        // its own, off the response path.
        cache.set_local(&entries).await;
        for ((i, lead), p) in leads.into_iter().zip(preds) {
            lead.complete(Ok(p.clone()));
            answers.slots[i] = Some(p);
        }
        if cache.has_remote() {
            let (cache, model) = (cache.clone(), model.clone());
            tokio::spawn(async move {
                cache
                    .set_remote(&model.manifest.name, &model.manifest.version, entries)
                    .await;
            });
        }
        Ok(())
    }

    /// Waits for the flights this request follows; runs an instance itself
    /// when its leader went away before finishing.
    async fn follow_all(
        &self,
        request: &mut Request<'_, '_>,
        batch: &InputBatch,
        follows: Follows,
        answers: &mut Answers,
    ) -> Result<(), CoreError> {
        if follows.is_empty() {
            return Ok(());
        }
        let following = trace::start(request.trace);
        let followed = follows.len();
        for (i, rx) in follows {
            match tokio::time::timeout_at(request.deadline, follow(rx)).await {
                Err(_) => return Err(CoreError::DeadlineExceeded(self.limits.timeout_ms)),
                Ok(Some(Ok(p))) => {
                    self.metrics.cache_coalesced.inc();
                    answers.slots[i] = Some(p);
                }
                Ok(Some(Err(e))) => return Err(e),
                Ok(None) => {
                    let mut out = self
                        .run_model(
                            request.target,
                            batch.select(&[i]),
                            request.deadline,
                            request.trace,
                            request.timings,
                        )
                        .await?;
                    answers.slots[i] = out.pop();
                }
            }
        }
        trace::child(
            request.trace,
            "single_flight.wait",
            following,
            || {
                vec![KeyValue::new(
                    "inferd.single_flight.followed",
                    followed as i64,
                )]
            },
            Vec::new(),
        );
        Ok(())
    }

    /// Starts one batcher per model version of `repo`; the deployment hands
    /// them out. The batchers stop by themselves once the
    /// deployment and every request holding one of its targets are gone.
    pub fn deploy(
        &self,
        repo: Repository,
        size_override: Option<usize>,
        delay_override_ms: Option<u64>,
    ) -> Deployment {
        self.redeploy(None, repo, HashMap::new(), size_override, delay_override_ms)
    }

    /// `deploy`, keeping the batchers of `prev` for the versions that stay (the
    /// same loaded `Model`), so a swap of one model leaves the others' queues
    /// alone. `routing` says where each model's unversioned requests go.
    pub fn redeploy(
        &self,
        prev: Option<&Deployment>,
        repo: Repository,
        routing: HashMap<String, Routing>,
        size_override: Option<usize>,
        delay_override_ms: Option<u64>,
    ) -> Deployment {
        let mut batchers = HashMap::new();
        for m in repo.iter() {
            let kept = prev.and_then(|d| d.batcher_of(m)).cloned();
            let batcher = kept.unwrap_or_else(|| {
                let b = &m.manifest.batching;
                Batcher::start(
                    m.clone(),
                    self.admission.slots(),
                    self.metrics.clone(),
                    size_override.unwrap_or(b.max_batch_size),
                    Duration::from_millis(delay_override_ms.unwrap_or(b.max_batch_delay_ms)),
                    self.limits.timeout_ms,
                    Tuning {
                        target: b
                            .queue_target_ms
                            .map(Duration::from_millis)
                            .or(self.limits.queue.target),
                        ..self.limits.queue
                    },
                )
            });
            batchers
                .entry(m.manifest.name.clone())
                .or_insert_with(HashMap::new)
                .insert(m.manifest.version.clone(), batcher);
        }
        Deployment::new(repo, batchers, routing)
    }

    /// Queues the batch with the model's batcher (split into jobs of at most
    /// `max_batch_size` instances) and waits for every part under the deadline.
    async fn run_model(
        &self,
        target: &Target,
        batch: InputBatch,
        deadline: Instant,
        trace: TraceRef,
        timings: &mut Timings,
    ) -> Result<Vec<Prediction>, CoreError> {
        let batcher = target.batcher();
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
        let mut tickets = Vec::with_capacity(pieces.len());
        for part in pieces {
            tickets.push((part, self.admission.enter()?));
        }
        parts.extend(batcher.submit_all(tickets, deadline, trace)?);
        let mut predictions = Vec::with_capacity(n);
        for rx in parts {
            let (out, queued, ran) = match tokio::time::timeout_at(deadline, rx).await {
                Err(_) => return Err(CoreError::DeadlineExceeded(self.limits.timeout_ms)),
                Ok(Err(_)) => return Err(CoreError::Draining),
                Ok(Ok(r)) => r?,
            };
            timings.queue += queued;
            timings.inference += ran;
            predictions.extend(target.model.task.encode(&out));
        }
        Ok(predictions)
    }
}

/// Per instance: its prediction once known, and whether the cache had it.
struct Answers {
    slots: Vec<Option<Prediction>>,
    cached: Vec<bool>,
}

/// The flights a request follows: the instance and the leader's channel.
type Follows = Vec<(
    usize,
    tokio::sync::watch::Receiver<Option<super::coalesce::Outcome>>,
)>;

/// What every model call of one request shares.
struct Request<'a, 't> {
    target: &'a Target,
    deadline: Instant,
    trace: TraceRef,
    timings: &'t mut Timings,
}

/// Looks every instance up, locally then in the shared store.
async fn lookup(
    cache: &Cache,
    name: &str,
    version: &str,
    keys: &[Key],
    trace: TraceRef,
) -> Answers {
    let n = keys.len();
    let mut answers = Answers {
        slots: vec![None; n],
        cached: vec![false; n],
    };
    let looking = trace::start(trace);
    for (i, hit) in cache
        .get_many(name, version, keys)
        .await
        .into_iter()
        .enumerate()
    {
        if let Some(p) = hit.and_then(|b| serde_json::from_slice::<Prediction>(&b).ok()) {
            answers.slots[i] = Some(p);
            answers.cached[i] = true;
        }
    }
    trace::child(
        trace,
        "cache.lookup",
        looking,
        || {
            let hits = answers.cached.iter().filter(|c| **c).count();
            vec![
                KeyValue::new("inferd.cache.hits", hits as i64),
                KeyValue::new("inferd.cache.misses", (n - hits) as i64),
                KeyValue::new("inferd.cache.remote", cache.has_remote()),
            ]
        },
        Vec::new(),
    );
    answers
}

/// A flight may have finished between the lookup and the join: its result is
/// in the local store now (leaders write it there before retiring). Those
/// flights are completed from it; the rest still lead.
async fn recheck(
    cache: &Cache,
    leads: Vec<(usize, Lead)>,
    answers: &mut Answers,
) -> Vec<(usize, Lead)> {
    if leads.is_empty() {
        return leads;
    }
    let lead_keys: Vec<Key> = leads.iter().map(|(_, l)| *l.key()).collect();
    let again = cache.peek_many(&lead_keys).await;
    let mut still = Vec::with_capacity(leads.len());
    for ((i, lead), hit) in leads.into_iter().zip(again) {
        match hit.and_then(|b| serde_json::from_slice::<Prediction>(&b).ok()) {
            Some(p) => {
                lead.complete(Ok(p.clone()));
                answers.slots[i] = Some(p);
                answers.cached[i] = true;
            }
            None => still.push((i, lead)),
        }
    }
    still
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
