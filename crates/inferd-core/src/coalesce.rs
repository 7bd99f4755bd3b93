//! Single-flight: concurrent requests for the same uncached instance run the
//! model once and share the result.
//!
//! The first request to miss on a key becomes its leader and gets a `Lead`
//! guard; later ones get a `Follow` receiver. The leader publishes the result
//! (or the error) through the guard. If the leader's request is dropped first
//! (its client went away), the guard's `Drop` removes the entry and followers see
//! the channel close, and compute the instance themselves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::cache::Key;
use super::error::CoreError;
use super::task::Prediction;

pub(crate) type Outcome = Result<Prediction, CoreError>;
type Slot = (u64, watch::Sender<Option<Outcome>>);

#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<Key, Slot>>,
    next_id: AtomicU64,
}

pub(crate) enum Join {
    Lead(Lead),
    Follow(watch::Receiver<Option<Outcome>>),
}

pub(crate) struct Lead {
    flights: Arc<Flights>,
    key: Key,
    id: u64,
    done: bool,
}

impl Flights {
    pub(crate) fn join(self: &Arc<Self>, key: Key) -> Join {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, tx)) = map.get(&key) {
            return Join::Follow(tx.subscribe());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, _) = watch::channel(None);
        map.insert(key, (id, tx));
        Join::Lead(Lead {
            flights: self.clone(),
            key,
            id,
            done: false,
        })
    }

    fn take(&self, key: &Key, id: u64) -> Option<watch::Sender<Option<Outcome>>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some((owner, _)) if *owner == id => map.remove(key).map(|(_, tx)| tx),
            _ => None,
        }
    }
}

#[cfg(test)]
impl Flights {
    fn is_empty(&self) -> bool {
        self.map.lock().map(|m| m.is_empty()).unwrap_or(true)
    }
}

impl Lead {
    pub(crate) fn key(&self) -> &Key {
        &self.key
    }

    /// Publishes the outcome to every follower and retires the flight.
    pub(crate) fn complete(mut self, outcome: Outcome) {
        self.done = true;
        if let Some(tx) = self.flights.take(&self.key, self.id) {
            let _ = tx.send(Some(outcome));
        }
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        if !self.done {
            // Dropping the sender wakes followers with "closed".
            self.flights.take(&self.key, self.id);
        }
    }
}

/// Waits for a leader's outcome; `None` if the leader was abandoned.
pub(crate) async fn follow(mut rx: watch::Receiver<Option<Outcome>>) -> Option<Outcome> {
    match rx.wait_for(|v| v.is_some()).await {
        Ok(v) => v.clone(),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn pred(x: f32) -> Prediction {
        Prediction::Forecast {
            forecast: BTreeMap::from([("y".to_string(), x)]),
        }
    }

    #[tokio::test]
    async fn followers_share_the_leaders_result() {
        let f = Arc::new(Flights::default());
        let Join::Lead(lead) = f.join([1; 32]) else {
            panic!("first is leader")
        };
        let Join::Follow(rx) = f.join([1; 32]) else {
            panic!("second follows")
        };
        let waiter = tokio::spawn(follow(rx));
        lead.complete(Ok(pred(2.0)));
        assert_eq!(waiter.await.unwrap().unwrap().unwrap(), pred(2.0));
        assert!(f.is_empty());
        assert!(
            matches!(f.join([1; 32]), Join::Lead(_)),
            "a finished flight is gone"
        );
    }

    #[tokio::test]
    async fn abandoned_leader_releases_followers() {
        let f = Arc::new(Flights::default());
        let lead = f.join([2; 32]);
        let Join::Follow(rx) = f.join([2; 32]) else {
            panic!("follows")
        };
        drop(lead);
        assert!(follow(rx).await.is_none());
        assert!(f.is_empty());
    }
}
