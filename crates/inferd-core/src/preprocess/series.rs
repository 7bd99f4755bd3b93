//! Filling missing readings (`null`) in one time-series window, the way the
//! model's training filled its series.
//!
//! This module owns the fill rule and nothing else: which windows may carry
//! gaps (`max_missing` per model), field paths and the mapping of a
//! [`FillError`] to a 422 belong to the caller, and so does refusing non-finite
//! readings (already done where the request is decoded).
//!
//! Why this rule: `training/train_lstm.py` filled the gaps of the weekly co2
//! series with pandas `Series.interpolate(method="linear")` over the whole
//! series before cutting windows, so a window the model saw in training had each
//! missing week replaced by the straight line between its nearest observed
//! neighbours (index-based: weeks are evenly spaced). [`fill`] does the same
//! within the window, with numpy's `interp` arithmetic in f64, so a gap bracketed
//! by known readings inside the window gets exactly what training fed the model
//! (`training/gap_parity.py` exports every real-gap window; the tests below
//! check them all). Values are cast to f32 at the end, as training cast its
//! float64 series to float32.
//!
//! A window cannot see past its own ends, so gaps touching an end are filled
//! from inside the window:
//! - trailing gaps take the last known reading, as pandas' default
//!   (`limit_direction="forward"`) does at the end of a series;
//! - leading gaps take the first known reading (a backward fill). pandas would
//!   leave them NaN, which the model cannot take.
//!
//! Training, which saw the neighbours outside the window, filled those weeks
//! differently; the parity test measures by how much on the real co2 gaps.
//!
//! One window is one feature's column: a caller with several features fills
//! each column on its own, as pandas interpolates each column on its own.

/// A window with every gap filled.
#[derive(Debug, Clone, PartialEq)]
pub struct Filled {
    /// The readings in order, gaps filled, cast to f32 for the model.
    pub values: Vec<f32>,
    /// How many readings were missing and filled.
    pub filled: usize,
}

/// Why a window cannot be filled. The messages read well after a field path
/// (`instances[3]: ...`); the caller adds the path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FillError {
    #[error(
        "{missing} readings are null, more than the {max} missing readings this model fills per window"
    )]
    /// More gaps than the model fills.
    TooManyMissing {
        /// Null readings in the window.
        missing: usize,
        /// The most the model fills.
        max: usize,
    },
    #[error("every reading is null; a window needs at least one known reading to fill the others")]
    /// Nothing to interpolate from.
    AllMissing,
}

/// Fills the `None` readings of `window` (oldest first) as described in the
/// module doc, refusing windows with more than `max_missing` of them or with no
/// known reading at all. The cap is checked first, so an all-null window over
/// the cap reports [`FillError::TooManyMissing`]. An empty window has nothing to
/// fill and comes back empty (its length is the caller's to check).
pub fn fill(window: &[Option<f64>], max_missing: usize) -> Result<Filled, FillError> {
    let (values, filled) = fill_f64(window, max_missing)?;
    Ok(Filled {
        values: values.into_iter().map(|v| v as f32).collect(),
        filled,
    })
}

/// [`fill`] before the cast to f32: the interpolation in f64, as pandas did.
fn fill_f64(window: &[Option<f64>], max_missing: usize) -> Result<(Vec<f64>, usize), FillError> {
    let missing = window.iter().filter(|v| v.is_none()).count();
    if missing > max_missing {
        return Err(FillError::TooManyMissing {
            missing,
            max: max_missing,
        });
    }
    if missing == window.len() && !window.is_empty() {
        return Err(FillError::AllMissing);
    }
    let mut out = vec![0.0_f64; window.len()];
    // The last known reading seen so far: (index, value).
    let mut prev: Option<(usize, f64)> = None;
    for (i, reading) in window.iter().enumerate() {
        let Some(y1) = *reading else { continue };
        out[i] = y1;
        match prev {
            // Leading gap: backward fill from the first known reading.
            None => out[..i].fill(y1),
            // Interior gap between i0 and i: numpy.interp's arithmetic,
            // `slope * (x - x0) + y0`, so the result is bit-for-bit pandas'.
            Some((i0, y0)) if i > i0 + 1 => {
                let slope = (y1 - y0) / (i - i0) as f64;
                for (k, v) in out.iter_mut().enumerate().take(i).skip(i0 + 1) {
                    *v = slope * (k - i0) as f64 + y0;
                }
            }
            Some(_) => {}
        }
        prev = Some((i, y1));
    }
    // Trailing gap: the last known reading carried forward, as pandas does.
    if let Some((last, y)) = prev {
        out[last + 1..].fill(y);
    }
    Ok((out, missing))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(vals: &[Option<f64>]) -> Vec<Option<f64>> {
        vals.to_vec()
    }

    #[test]
    fn no_gaps_is_unchanged() {
        let win = w(&[Some(315.25), Some(316.5), Some(317.125)]);
        let f = fill(&win, 0).unwrap();
        assert_eq!(f.values, vec![315.25_f32, 316.5, 317.125]);
        assert_eq!(f.filled, 0);
        assert_eq!(fill(&win, 5).unwrap(), f);
    }

    #[test]
    fn one_interior_gap_is_the_midpoint() {
        let f = fill(&w(&[Some(1.0), None, Some(2.0), Some(4.0)]), 1).unwrap();
        assert_eq!(f.values, vec![1.0_f32, 1.5, 2.0, 4.0]);
        assert_eq!(f.filled, 1);
    }

    #[test]
    fn consecutive_gaps_lie_on_the_line() {
        let f = fill(
            &w(&[Some(10.0), None, None, None, Some(14.0), Some(0.0)]),
            3,
        )
        .unwrap();
        assert_eq!(f.values, vec![10.0_f32, 11.0, 12.0, 13.0, 14.0, 0.0]);
        assert_eq!(f.filled, 3);
        // Two runs in one window, each on its own line.
        let f = fill(&w(&[Some(0.0), None, Some(2.0), None, None, Some(-1.0)]), 3).unwrap();
        assert_eq!(f.values, vec![0.0_f32, 1.0, 2.0, 1.0, 0.0, -1.0]);
        assert_eq!(f.filled, 3);
    }

    #[test]
    fn leading_gap_takes_the_first_known_reading() {
        let f = fill(&w(&[None, None, Some(5.0), Some(7.0)]), 2).unwrap();
        assert_eq!(f.values, vec![5.0_f32, 5.0, 5.0, 7.0]);
        assert_eq!(f.filled, 2);
    }

    #[test]
    fn trailing_gap_takes_the_last_known_reading() {
        let f = fill(&w(&[Some(5.0), Some(7.0), None, None]), 2).unwrap();
        assert_eq!(f.values, vec![5.0_f32, 7.0, 7.0, 7.0]);
        assert_eq!(f.filled, 2);
        // Both ends and the middle at once; a single known reading fills all.
        let f = fill(&w(&[None, Some(1.0), None, Some(3.0), None]), 3).unwrap();
        assert_eq!(f.values, vec![1.0_f32, 1.0, 2.0, 3.0, 3.0]);
        let f = fill(&w(&[None, Some(2.5), None]), 2).unwrap();
        assert_eq!(f.values, vec![2.5_f32; 3]);
        assert_eq!(f.filled, 2);
    }

    #[test]
    fn all_missing_is_refused() {
        assert_eq!(fill(&[None; 4], 4), Err(FillError::AllMissing));
        assert_eq!(fill(&[None; 4], 26), Err(FillError::AllMissing));
        // Over the cap, the cap is what is reported.
        assert_eq!(
            fill(&[None; 4], 3),
            Err(FillError::TooManyMissing { missing: 4, max: 3 })
        );
        let msg = FillError::AllMissing.to_string();
        assert!(msg.contains("every reading is null"), "{msg}");
    }

    #[test]
    fn more_than_max_missing_is_refused() {
        let win = w(&[Some(1.0), None, None, None, Some(2.0)]);
        assert_eq!(
            fill(&win, 2),
            Err(FillError::TooManyMissing { missing: 3, max: 2 })
        );
        assert_eq!(fill(&win, 3).unwrap().filled, 3);
        let msg = FillError::TooManyMissing { missing: 3, max: 2 }.to_string();
        assert_eq!(
            msg,
            "3 readings are null, more than the 2 missing readings this model fills per window"
        );
    }

    #[test]
    fn max_missing_zero_refuses_any_gap() {
        assert_eq!(
            fill(&w(&[Some(1.0), None, Some(2.0)]), 0),
            Err(FillError::TooManyMissing { missing: 1, max: 0 })
        );
        assert_eq!(fill(&w(&[Some(1.0), Some(2.0)]), 0).unwrap().filled, 0);
        assert_eq!(fill(&[], 0).unwrap().values, Vec::<f32>::new());
    }

    #[test]
    fn f64_until_the_cast() {
        // 1/3 steps: interpolating in f32 would round twice.
        let (v, _) = fill_f64(&w(&[Some(316.1), None, None, Some(315.8)]), 2).unwrap();
        let slope = (315.8_f64 - 316.1) / 3.0;
        assert_eq!(v[1], slope + 316.1);
        assert_eq!(v[2], slope * 2.0 + 316.1);
        let f = fill(&w(&[Some(316.1), None, None, Some(315.8)]), 2).unwrap();
        assert_eq!(f.values[2], v[2] as f32);
    }

    /// `tests/data/co2_gap_windows.json`, written by `training/gap_parity.py`:
    /// every 26-week window of the statsmodels co2 series that holds one of its
    /// 59 real gaps, raw (`null` gaps) and as training's whole-series pandas
    /// interpolation filled it.
    #[test]
    fn parity_with_training_on_the_real_co2_gaps() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../../../../tests/data/co2_gap_windows.json"))
                .unwrap();
        let t = doc["window"].as_u64().unwrap() as usize;
        let windows = doc["windows"].as_array().unwrap();
        assert_eq!(
            windows.len() as u64,
            doc["windows_with_gaps"].as_u64().unwrap()
        );
        assert!(!windows.is_empty());

        let (mut n_edge, mut n_interior) = (0, 0);
        // Gaps bracketed by known readings inside their window (in any window).
        let (mut bracketed, mut max_f64, mut max_f32) = (0usize, 0.0_f64, 0.0_f64);
        // Gaps at a window end: backward/forward fill vs whole-series interpolation.
        let (mut edge_gaps, mut sum_edge) = (0usize, 0.0_f64);
        let (mut max_lead, mut max_trail) = (0.0_f64, 0.0_f64);
        for win in windows {
            let raw: Vec<Option<f64>> = win["raw"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64())
                .collect();
            let pandas: Vec<f64> = win["pandas"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!((raw.len(), pandas.len()), (t, t));
            let missing = raw.iter().filter(|v| v.is_none()).count();
            assert!(missing > 0);

            let (f64s, filled) = fill_f64(&raw, t).unwrap();
            let f = fill(&raw, t).unwrap();
            assert_eq!((filled, f.filled), (missing, missing));
            assert_eq!(
                fill(&raw, missing - 1).unwrap_err(),
                FillError::TooManyMissing {
                    missing,
                    max: missing - 1
                }
            );

            let first = raw.iter().position(Option::is_some).unwrap();
            let last = raw.iter().rposition(Option::is_some).unwrap();
            let edge = first > 0 || last < t - 1;
            assert_eq!(
                edge,
                win["edge"].as_bool().unwrap(),
                "start {}",
                win["start"]
            );
            if edge {
                n_edge += 1;
            } else {
                n_interior += 1;
            }
            for k in 0..t {
                match raw[k] {
                    // Known readings pass through untouched.
                    Some(y) => {
                        assert_eq!(f64s[k], y);
                        assert_eq!(pandas[k], y);
                    }
                    None if k > first && k < last => {
                        bracketed += 1;
                        max_f64 = max_f64.max((f64s[k] - pandas[k]).abs());
                        // What the model gets: training's float32 cast of pandas.
                        let d = (f64::from(f.values[k]) - f64::from(pandas[k] as f32)).abs();
                        max_f32 = max_f32.max(d);
                    }
                    None => {
                        // The documented edge rule, exactly.
                        let expect = if k < first { raw[first] } else { raw[last] };
                        assert_eq!(Some(f64s[k]), expect, "start {} week {k}", win["start"]);
                        edge_gaps += 1;
                        let d = (f64s[k] - pandas[k]).abs();
                        if k < first {
                            max_lead = max_lead.max(d);
                        } else {
                            max_trail = max_trail.max(d);
                        }
                        sum_edge += d;
                    }
                }
            }
        }
        assert_eq!(n_interior as u64, doc["interior_only"].as_u64().unwrap());
        assert_eq!(n_edge as u64, doc["edge"].as_u64().unwrap());
        let max_edge = max_lead.max(max_trail);
        println!(
            "co2 gap windows: {} ({n_interior} interior-only, {n_edge} with an edge gap); \
             {bracketed} bracketed gaps: max |fill - pandas| {max_f64:.3e} ppm in f64, \
             {max_f32:.3e} ppm after the f32 cast; {edge_gaps} edge gaps: max |fill - pandas| \
             {max_edge:.4} ppm (leading {max_lead:.4}, trailing {max_trail:.4}), mean {:.4} ppm",
            windows.len(),
            sum_edge / edge_gaps.max(1) as f64,
        );
        assert!(bracketed > 0 && edge_gaps > 0);
        assert!(
            max_f64 < 1e-6,
            "bracketed gaps differ from pandas by {max_f64} ppm"
        );
        assert!(
            max_f32 < 1e-6,
            "bracketed gaps differ from training's f32 by {max_f32} ppm"
        );
        // The edge rule departs from training by at most this on the real gaps
        // (measured, rounded up); a larger value means the rule or data changed.
        assert!(
            max_edge < EDGE_BOUND_PPM,
            "edge gaps differ from pandas by {max_edge} ppm"
        );
    }

    const EDGE_BOUND_PPM: f64 = 2.1;
}
