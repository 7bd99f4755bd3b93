//! The served instances waiting for their labels: bounded by count and age,
//! oldest out first.
//!
//! Written here rather than with a general cache (moka) because every
//! prediction inserts one entry per instance: a general cache's per-entry
//! bookkeeping cost the LSTM's request path 17 heap allocations and a few
//! percent of its throughput, while this needs none in the steady state (keys
//! are hashes, entries live in the map, eviction is a FIFO of keys).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// Sharded maps from `(request id, instance)` to `T`, keyed by two
/// independent 64-bit hashes: one finds the entry, the other confirms it, so
/// two ids are confused only if both collide (about 2^-128).
pub(super) struct Index<T> {
    shards: Box<[Mutex<Shard<T>>]>,
    per_shard: usize,
    ttl: Duration,
    hasher: RandomState,
}

struct Shard<T> {
    map: HashMap<u64, Slot<T>>,
    /// Keys in insertion order, with their insertion time.
    order: VecDeque<(u64, Instant)>,
}

struct Slot<T> {
    check: u64,
    at: Instant,
    value: T,
}

impl<T> Index<T> {
    /// Room for about `capacity` entries, each kept at most `ttl`.
    pub(super) fn new(capacity: u64, ttl: Duration) -> Self {
        let per_shard = (capacity as usize).div_ceil(SHARDS).max(1);
        Index {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        order: VecDeque::new(),
                    })
                })
                .collect(),
            per_shard,
            ttl,
            hasher: RandomState::new(),
        }
    }

    fn keys(&self, id: &str, instance: u32) -> (u64, u64) {
        (
            self.hasher.hash_one((id, instance, 0u8)),
            self.hasher.hash_one((id, instance, 1u8)),
        )
    }

    fn shard(&self, key: u64) -> MutexGuard<'_, Shard<T>> {
        self.shards[(key as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Inserts (or replaces) the entry for `(id, instance)` at `now`.
    pub(super) fn insert(&self, id: &str, instance: u32, value: T, now: Instant) {
        let (key, check) = self.keys(id, instance);
        let mut s = self.shard(key);
        s.evict(self.per_shard.saturating_sub(1), self.ttl, now);
        s.map.insert(
            key,
            Slot {
                check,
                at: now,
                value,
            },
        );
        s.order.push_back((key, now));
    }

    /// Runs `f` on the entry for `(id, instance)` if it is there and not
    /// older than the TTL at `now`.
    pub(super) fn with<R>(
        &self,
        id: &str,
        instance: u32,
        now: Instant,
        f: impl FnOnce(&mut T) -> R,
    ) -> Option<R> {
        let (key, check) = self.keys(id, instance);
        let mut s = self.shard(key);
        let slot = s.map.get_mut(&key)?;
        if slot.check != check || now.saturating_duration_since(slot.at) > self.ttl {
            return None;
        }
        Some(f(&mut slot.value))
    }

    /// Entries held (expired ones included until they are evicted).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).map.len())
            .sum()
    }
}

impl<T> Shard<T> {
    /// Drops the oldest entries until at most `keep` remain, and every entry
    /// older than `ttl`.
    fn evict(&mut self, keep: usize, ttl: Duration, now: Instant) {
        while let Some(&(key, at)) = self.order.front() {
            let expired = now.saturating_duration_since(at) > ttl;
            // Bounded by the FIFO, not the map: an id sent again replaces
            // its map entry but adds to the FIFO.
            if !expired && self.order.len() <= keep {
                break;
            }
            self.order.pop_front();
            // A key inserted again since is a newer entry: leave it.
            if self.map.get(&key).is_some_and(|s| s.at == at) {
                self.map.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_leave_by_age_and_by_count_oldest_first() {
        let ix = Index::new(32, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..1000u32 {
            ix.insert("r", i, i, t0);
        }
        assert!(ix.len() <= 32, "{}", ix.len());
        assert_eq!(ix.with("r", 999, t0, |v| *v), Some(999));
        assert_eq!(ix.with("r", 0, t0, |v| *v), None);
        // Past the TTL an entry is not found; inserts into its shard drop it
        // (the bound on the count holds meanwhile).
        let later = t0 + Duration::from_secs(61);
        assert_eq!(ix.with("r", 999, later, |v| *v), None);
        let before = ix.len();
        for i in 0..64u32 {
            ix.insert("s", i, i, later);
        }
        assert!(ix.len() <= 32, "{}", ix.len());
        assert_eq!(ix.with("s", 63, later, |v| *v), Some(63));
        assert!(before > 0);
    }

    #[test]
    fn a_label_hours_late_still_finds_its_entry_within_the_ttl() {
        let ix = Index::new(1000, Duration::from_secs(24 * 3600));
        let t0 = Instant::now();
        ix.insert("order-1", 2, "spam", t0);
        let late = t0 + Duration::from_secs(23 * 3600);
        assert_eq!(ix.with("order-1", 2, late, |v| *v), Some("spam"));
        assert_eq!(ix.with("order-1", 1, late, |v| *v), None);
        assert_eq!(ix.with("order-2", 2, late, |v| *v), None);
        let expired = t0 + Duration::from_secs(24 * 3600 + 1);
        assert_eq!(ix.with("order-1", 2, expired, |v| *v), None);
    }

    #[test]
    fn a_sweep_drops_every_expired_entry() {
        let t0 = Instant::now();
        let mut s = Shard {
            map: HashMap::new(),
            order: VecDeque::new(),
        };
        for k in 0..5u64 {
            s.map.insert(
                k,
                Slot {
                    check: 0,
                    at: t0,
                    value: (),
                },
            );
            s.order.push_back((k, t0));
        }
        s.evict(100, Duration::from_secs(1), t0 + Duration::from_secs(2));
        assert!(s.map.is_empty() && s.order.is_empty());
    }

    #[test]
    fn an_id_sent_again_and_again_stays_within_the_bound() {
        let ix = Index::new(16, Duration::from_secs(60));
        let t0 = Instant::now();
        for _ in 0..1000 {
            ix.insert("same", 0, 1, t0);
        }
        let fifo: usize = ix
            .shards
            .iter()
            .map(|s| s.lock().unwrap().order.len())
            .sum();
        assert!(fifo <= 16, "{fifo}");
        assert_eq!(ix.with("same", 0, t0, |v| *v), Some(1));
    }

    #[test]
    fn an_id_sent_again_replaces_its_entry_and_survives_the_old_ones_eviction() {
        let ix = Index::new(1000, Duration::from_secs(60));
        let t0 = Instant::now();
        ix.insert("a", 0, 1, t0);
        let t1 = t0 + Duration::from_secs(30);
        ix.insert("a", 0, 2, t1);
        // The first insertion ages out; the second is still there.
        ix.insert("b", 0, 3, t0 + Duration::from_secs(61));
        assert_eq!(
            ix.with("a", 0, t0 + Duration::from_secs(61), |v| *v),
            Some(2)
        );
    }
}
