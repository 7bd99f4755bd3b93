//! The governor driven by a simulated model: one slot whose batch of `b`
//! instances costs `fixed + per × b`, requests of one instance arriving at a
//! fixed rate, each with a deadline; time is the simulation's, handed to the
//! governor as `Instant`s, so every figure below is exact and repeatable.

use std::collections::VecDeque;

use super::*;

const DEADLINE: Duration = Duration::from_secs(1);
const BATCH: usize = 32;

#[derive(Clone, Copy)]
struct Cost {
    fixed: f64,
    per: f64,
}

impl Cost {
    fn of(&self, b: usize) -> f64 {
        self.fixed + self.per * b as f64
    }
    /// Instances per second with full batches.
    fn capacity(&self) -> f64 {
        BATCH as f64 / self.of(BATCH)
    }
}

/// A phase of the run: this cost, this arrival rate, this long.
struct Phase {
    cost: Cost,
    rate: f64,
    secs: f64,
}

#[derive(Default, Debug)]
struct PhaseResult {
    /// Answered within the deadline, per second of the phase's second half.
    goodput: f64,
    shed: usize,
    admitted: usize,
    /// Longest queue wait of a request admitted in the second half.
    max_wait: f64,
    /// The limit at the end of each 100 ms.
    limits: Vec<usize>,
}

/// Runs the phases back to back. `static_limit`: compare against a fixed
/// queue bound instead of the governor's (the governor still measures).
fn simulate(phases: &[Phase], tuning: Tuning, static_limit: Option<usize>) -> Vec<PhaseResult> {
    let base = Instant::now();
    let at = |t: f64| base + Duration::from_secs_f64(t);
    let mut gov = Governor::new(tuning, BATCH, DEADLINE);
    let mut queue: VecDeque<f64> = VecDeque::new();
    let mut busy_until = 0.0f64;
    let mut running: Option<(Vec<f64>, f64, f64)> = None; // arrivals, start, cost
    let mut results = Vec::new();
    let mut t0 = 0.0;
    for phase in phases {
        let mut r = PhaseResult::default();
        let half = t0 + phase.secs / 2.0;
        let end = t0 + phase.secs;
        let gap = 1.0 / phase.rate;
        let mut next_arrival = t0;
        let mut next_sample = t0 + 0.1;
        let mut good = 0usize;
        loop {
            let next_done = running.as_ref().map(|_| busy_until);
            let t = match next_done {
                Some(d) if d <= next_arrival => d,
                _ => next_arrival,
            };
            if t >= end {
                break;
            }
            while next_sample <= t {
                r.limits.push(gov.limit());
                next_sample += 0.1;
            }
            if next_done == Some(t) {
                let (arrivals, start, cost) = running.take().expect("running");
                for a in &arrivals {
                    if t - a <= DEADLINE.as_secs_f64() && *a >= half {
                        good += 1;
                    }
                }
                gov.completed(
                    arrivals.len(),
                    Duration::from_secs_f64(cost),
                    at(start + cost),
                );
            } else {
                let admitted = match static_limit {
                    Some(l) if queue.len() >= l => false,
                    Some(_) => {
                        gov.admit(1).ok();
                        true
                    }
                    None => gov.admit(1).is_ok(),
                };
                if admitted {
                    queue.push_back(t);
                    r.admitted += 1;
                } else {
                    r.shed += 1;
                }
                next_arrival += gap;
            }
            if running.is_none() && !queue.is_empty() {
                // Expired requests are dropped before the model, as `live` does.
                let mut batch = Vec::new();
                while batch.len() < BATCH {
                    let Some(a) = queue.pop_front() else { break };
                    gov.taken(1);
                    if t - a < DEADLINE.as_secs_f64() {
                        if a >= half {
                            r.max_wait = r.max_wait.max(t - a);
                        }
                        batch.push(a);
                    }
                }
                if !batch.is_empty() {
                    let cost = phase.cost.of(batch.len());
                    busy_until = t + cost;
                    running = Some((batch, t, cost));
                }
            }
        }
        r.goodput = good as f64 / (end - half);
        results.push(r);
        t0 = end;
    }
    results
}

const MODEL: Cost = Cost {
    fixed: 0.000_5,
    per: 0.000_1,
};
const SLOWER: Cost = Cost {
    fixed: 0.001,
    per: 0.000_2,
};

fn settled(limits: &[usize]) -> (usize, usize) {
    let tail = &limits[limits.len() / 2..];
    (
        *tail.iter().min().expect("samples"),
        *tail.iter().max().expect("samples"),
    )
}

#[test]
fn under_overload_the_limit_converges_and_admitted_requests_wait_about_two_batches() {
    let cap = MODEL.capacity();
    for overload in [1.2, 2.0, 5.0, 20.0] {
        let r = &simulate(
            &[Phase {
                cost: MODEL,
                rate: cap * overload,
                secs: 10.0,
            }],
            Tuning::default(),
            None,
        )[0];
        let (lo, hi) = settled(&r.limits);
        assert!(hi <= lo * 3 / 2, "{overload}x: limit wanders {lo}..{hi}");
        assert!(
            r.goodput >= 0.95 * cap,
            "{overload}x: {} of {cap}",
            r.goodput
        );
        // Two batch times of target, plus the batch the request may just miss.
        let bound = 3.0 * MODEL.of(BATCH);
        assert!(r.max_wait <= bound, "{overload}x: waited {}", r.max_wait);
        assert!(r.shed > 0);
    }
}

#[test]
fn below_capacity_nothing_is_refused() {
    let r = &simulate(
        &[Phase {
            cost: MODEL,
            rate: MODEL.capacity() * 0.5,
            secs: 5.0,
        }],
        Tuning::default(),
        None,
    )[0];
    assert_eq!(r.shed, 0);
}

#[test]
fn a_step_in_cost_backs_the_limit_off_within_seconds_and_it_recovers() {
    let phases = |rate: f64| {
        [
            Phase {
                cost: MODEL,
                rate,
                secs: 10.0,
            },
            Phase {
                cost: SLOWER,
                rate,
                secs: 10.0,
            },
            Phase {
                cost: MODEL,
                rate,
                secs: 10.0,
            },
        ]
    };
    let rate = MODEL.capacity() * 2.0;
    let r = simulate(&phases(rate), Tuning::default(), None);
    let before = settled(&r[0].limits);
    let during = settled(&r[1].limits);
    let after = settled(&r[2].limits);
    // The slower model drains half as fast over a target twice as long:
    // the same limit in instances, reached again within the phase.
    assert!(during.1 <= before.1 * 3 / 2, "{before:?} {during:?}");
    assert!(r[1].max_wait <= 3.0 * SLOWER.of(BATCH), "{}", r[1].max_wait);
    assert!(after.0 >= before.0 * 2 / 3, "{before:?} {after:?}");
    // The first 10 s of each phase settle it: the second half's goodput is
    // at least 95% of the best a static bound gets at the new cost.
    for (i, cost) in [(1, SLOWER), (2, MODEL)] {
        let best = [BATCH, 64, 128, 256, 512, 4096]
            .into_iter()
            .map(|l| simulate(&phases(rate), Tuning::default(), Some(l))[i].goodput)
            .fold(0.0, f64::max);
        assert!(
            r[i].goodput >= 0.95 * best,
            "phase {i}: {} against the best static {best} (capacity {})",
            r[i].goodput,
            cost.capacity()
        );
    }
}

#[test]
fn a_fixed_target_sets_the_wait() {
    let target = Duration::from_millis(20);
    let r = &simulate(
        &[Phase {
            cost: MODEL,
            rate: MODEL.capacity() * 3.0,
            secs: 5.0,
        }],
        Tuning {
            adaptive: true,
            target: Some(target),
            ..Tuning::default()
        },
        None,
    )[0];
    assert!(r.max_wait > 0.015 && r.max_wait <= 0.020 + MODEL.of(BATCH));
}

#[test]
fn an_empty_queue_always_admits_however_slow_the_model() {
    let mut g = Governor::new(Tuning::default(), 4, DEADLINE);
    let t = Instant::now();
    // One instance a minute: the limit is one batch.
    for k in 0..4u32 {
        g.completed(
            1,
            Duration::from_secs(60),
            t + Duration::from_secs(60 * k as u64),
        );
    }
    assert_eq!(g.limit(), 4);
    assert!(g.admit(100).is_ok(), "an empty queue takes any request");
    let shed = g.admit(1).expect_err("over the limit");
    assert_eq!(shed.queued, 100);
    assert!(shed.retry_after >= Duration::from_secs(60 * 60), "{shed:?}");
    g.taken(100);
    assert!(!g.full());
    assert!(g.admit(1).is_ok());
}

#[test]
fn static_tuning_never_refuses() {
    let mut g = Governor::new(
        Tuning {
            adaptive: false,
            target: None,
            ..Tuning::default()
        },
        1,
        DEADLINE,
    );
    let t = Instant::now();
    for k in 0..10u64 {
        g.completed(
            1,
            Duration::from_millis(10),
            t + Duration::from_millis(10 * k),
        );
    }
    assert!(g.drain().is_some());
    assert!((0..10_000).all(|_| g.admit(1).is_ok()));
}

#[test]
fn the_unloaded_latency_forgets_old_minimums() {
    let mut g = Governor::new(Tuning::default(), 1, DEADLINE);
    let t = Instant::now();
    g.completed(1, Duration::from_millis(1), t);
    for s in 1..=12u64 {
        g.completed(1, Duration::from_millis(5), t + Duration::from_secs(s));
    }
    assert_eq!(g.unloaded(), Some(Duration::from_millis(5)));
}

#[test]
fn an_idle_server_takes_a_burst_of_full_batches() {
    let mut g = Governor::new(Tuning::default(), BATCH, DEADLINE);
    let t = Instant::now();
    // One small request every 100 ms, each a batch of 1 in 1 ms: the
    // windows run dry and measure 10 instances a second.
    for k in 0..50u64 {
        g.admit(1).expect("idle");
        g.taken(1);
        g.completed(
            1,
            Duration::from_millis(1),
            t + Duration::from_millis(100 * k),
        );
    }
    // The floor is what one slot did per batch, and the target two full
    // batches' time at that rate: full batches wait while the slot runs the
    // one before them, until two are queued (the last request admitted may
    // take the queue past its limit).
    assert!(g.drain().expect("measured") >= 999.0, "{:?}", g.drain());
    assert_eq!(g.target(), Duration::from_millis(64));
    assert_eq!(g.limit(), 2 * BATCH);
    assert!(g.admit(BATCH).is_ok());
    g.taken(BATCH);
    assert!(g.admit(BATCH).is_ok(), "limit {}", g.limit());
    assert!(g.admit(BATCH).is_ok(), "limit {}", g.limit());
    assert!(g.admit(1).is_ok(), "at the limit: admitted");
    assert!(g.admit(1).is_err(), "past it: refused");
}
