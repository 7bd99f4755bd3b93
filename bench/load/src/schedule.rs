//! The rate schedule of an open-loop run: `--schedule 10s:100,30s:500,10s:0`,
//! a list of steps, each a duration and a target rate in requests per second.
//!
//! Steps jump: a step holds its rate for its whole duration, and the next one
//! starts at its own rate (a ramp is written as several short steps). A step at
//! rate 0 sends nothing. `--rate R -d D` is the one-step schedule `D:R`.

use std::fmt;
use std::time::Duration;

use crate::cli::parse_duration;

/// One step: `rate` requests per second for `duration`.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub duration: Duration,
    pub rate: f64,
}

/// The steps of an open-loop run, in order; never empty, and at least one
/// step has a positive rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    steps: Vec<Step>,
}

impl Schedule {
    /// `rate` requests per second for `duration`.
    pub fn constant(rate: f64, duration: Duration) -> Result<Schedule, String> {
        Schedule::new(vec![Step { duration, rate }])
    }

    /// Checks the steps: each rate finite and not negative (and, when positive,
    /// high enough to have an interval), each duration positive, some rate positive.
    pub fn new(steps: Vec<Step>) -> Result<Schedule, String> {
        if steps.is_empty() {
            return Err("a schedule needs at least one step".into());
        }
        for (i, s) in steps.iter().enumerate() {
            let n = i + 1;
            if !(s.rate.is_finite() && s.rate >= 0.0) {
                return Err(format!(
                    "step {n}: rate {} is not a number of requests per second",
                    s.rate
                ));
            }
            if s.rate > 0.0 && Duration::try_from_secs_f64(1.0 / s.rate).is_err() {
                return Err(format!("step {n}: rate {} is too low", s.rate));
            }
            if s.duration.is_zero() {
                return Err(format!("step {n}: the duration must be positive"));
            }
        }
        if steps.iter().all(|s| s.rate == 0.0) {
            return Err("every step's rate is 0: nothing would be sent".into());
        }
        Ok(Schedule { steps })
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The whole schedule's length.
    pub fn total(&self) -> Duration {
        self.steps.iter().map(|s| s.duration).sum()
    }

    /// When each step starts, from the start of the schedule.
    pub fn starts(&self) -> Vec<Duration> {
        let mut at = Duration::ZERO;
        self.steps
            .iter()
            .map(|s| {
                let start = at;
                at += s.duration;
                start
            })
            .collect()
    }

    /// The step running at `offset` since the schedule began, or `None` past its end.
    pub fn step_at(&self, offset: Duration) -> Option<usize> {
        let mut end = Duration::ZERO;
        for (i, s) in self.steps.iter().enumerate() {
            end += s.duration;
            if offset < end {
                return Some(i);
            }
        }
        None
    }

    /// The warm-up's rate: the first step's with a positive rate.
    pub fn warmup_rate(&self) -> f64 {
        self.steps
            .iter()
            .map(|s| s.rate)
            .find(|r| *r > 0.0)
            .unwrap_or(0.0)
    }
}

/// The same syntax as `--schedule` takes: `10s:100,30s:500,10s:0`.
impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.steps.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let ms = s.duration.as_millis();
            if ms % 1000 == 0 {
                write!(f, "{}s:{}", ms / 1000, s.rate)?;
            } else {
                write!(f, "{}ms:{}", s.duration.as_secs_f64() * 1e3, s.rate)?;
            }
        }
        Ok(())
    }
}

/// `DURATION:RATE[,DURATION:RATE...]`: durations as `--duration` takes them
/// (`500ms`, `10s`, `1m`), rates in requests per second (`0` pauses).
pub fn parse_schedule(s: &str) -> Result<Schedule, String> {
    let steps = s
        .split(',')
        .enumerate()
        .map(|(i, part)| {
            let n = i + 1;
            let part = part.trim();
            let (d, r) = part.split_once(':').ok_or_else(|| {
                format!("step {n} `{part}`: expected DURATION:RATE, e.g. 10s:100")
            })?;
            let duration = parse_duration(d).map_err(|e| format!("step {n} `{part}`: {e}"))?;
            let rate: f64 = r
                .trim()
                .parse()
                .map_err(|_| format!("step {n} `{part}`: `{}` is not a rate", r.trim()))?;
            Ok(Step { duration, rate })
        })
        .collect::<Result<Vec<Step>, String>>()?;
    Schedule::new(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_steps_and_locates_offsets() {
        let s = parse_schedule("10s:100, 30s:500,500ms:0").expect("parses");
        assert_eq!(
            s.steps(),
            &[
                Step {
                    duration: Duration::from_secs(10),
                    rate: 100.0
                },
                Step {
                    duration: Duration::from_secs(30),
                    rate: 500.0
                },
                Step {
                    duration: Duration::from_millis(500),
                    rate: 0.0
                },
            ]
        );
        assert_eq!(s.total(), Duration::from_millis(40_500));
        assert_eq!(
            s.starts(),
            vec![
                Duration::ZERO,
                Duration::from_secs(10),
                Duration::from_secs(40)
            ]
        );
        assert_eq!(s.step_at(Duration::ZERO), Some(0));
        assert_eq!(s.step_at(Duration::from_millis(9_999)), Some(0));
        assert_eq!(s.step_at(Duration::from_secs(10)), Some(1));
        assert_eq!(s.step_at(Duration::from_millis(40_499)), Some(2));
        assert_eq!(s.step_at(Duration::from_millis(40_500)), None);
        assert_eq!(s.warmup_rate(), 100.0);
        assert_eq!(s.to_string(), "10s:100,30s:500,500ms:0");
        assert_eq!(parse_schedule(&s.to_string()), Ok(s));
        assert_eq!(
            parse_schedule("1s:0,2s:7.5").expect("parses").warmup_rate(),
            7.5
        );
    }

    #[test]
    fn refuses_bad_steps_naming_them() {
        for (text, says) in [
            ("", "step 1"),
            ("10s", "expected DURATION:RATE"),
            ("10s:100,fast:5", "step 2 `fast:5`"),
            ("10s:100,5s:lots", "`lots` is not a rate"),
            ("10s:-1", "step 1"),
            ("10s:NaN", "step 1"),
            ("0s:100", "duration must be positive"),
            ("1s:0,2s:0", "nothing would be sent"),
            ("1s:1e-300", "too low"),
            ("5h:100", "unknown unit"),
        ] {
            let e = parse_schedule(text).expect_err(text);
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
