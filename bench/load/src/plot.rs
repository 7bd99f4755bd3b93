//! The SVG plot of a report: latency over time (p50 and p99 per window, with
//! the schedule's step boundaries) above the latency distribution.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::{Report, WINDOW_MS};

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// plotters' drawing errors carry the backend's error type; the caller only
/// needs the message.
fn draw_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plot: {e}")
}

/// Writes the plot of `r` to `path`.
pub fn plot(r: &Report, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let (top, bottom) = root.split_vertically(350);
    timeline(r, &top)?;
    distribution(r, &bottom)?;
    root.present().map_err(draw_err)?;
    Ok(())
}

fn timeline(r: &Report, area: &Area<'_>) -> anyhow::Result<()> {
    let t_max = r
        .timeline
        .last()
        .map(|w| w[0] + WINDOW_MS as f64 / 1e3)
        .unwrap_or(1.0);
    let y_max = r
        .timeline
        .iter()
        .map(|w| w[3])
        .fold(0.0, f64::max)
        .max(0.001)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{}: latency over time", r.model),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("ms")
        .draw()
        .map_err(draw_err)?;
    // Where each schedule step begins, labelled with its target rate.
    for s in &r.steps {
        let grey = BLACK.mix(0.4);
        if s.start_s > 0.0 {
            chart
                .draw_series(LineSeries::new(
                    [(s.start_s, 0.0), (s.start_s, y_max)],
                    grey.stroke_width(1),
                ))
                .map_err(draw_err)?;
        }
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{}/s", s.target_rps),
                (s.start_s, y_max * 0.97),
                ("sans-serif", 12).into_font().color(&grey),
            )))
            .map_err(draw_err)?;
    }
    for (label, column, color) in [("p50", 2, BLUE), ("p99", 3, RED)] {
        chart
            .draw_series(LineSeries::new(
                r.timeline.iter().map(|w| (w[0], w[column])),
                &color,
            ))
            .map_err(draw_err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .draw()
        .map_err(draw_err)?;
    Ok(())
}

fn distribution(r: &Report, area: &Area<'_>) -> anyhow::Result<()> {
    let buckets = r.distribution.len().max(1);
    let c_max = r
        .distribution
        .iter()
        .map(|b| b[1] as u64)
        .max()
        .unwrap_or(1)
        .max(1);
    let width = r.distribution.first().map(|b| b[0]).unwrap_or(1.0);
    let mut hist = ChartBuilder::on(area)
        .caption("latency distribution (ms, up to p99.9)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d((0..buckets).into_segmented(), 0..c_max)
        .map_err(draw_err)?;
    hist.configure_mesh()
        .y_desc("requests")
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                format!("{:.2}", (*i as f64 + 1.0) * width)
            }
            SegmentValue::Last => String::new(),
        })
        .draw()
        .map_err(draw_err)?;
    hist.draw_series(
        Histogram::vertical(&hist).style(BLUE.filled()).data(
            r.distribution
                .iter()
                .enumerate()
                .map(|(i, b)| (i, b[1] as u64)),
        ),
    )
    .map_err(draw_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;
    use crate::cli::BenchConfig;
    use crate::report::{summarize, Samples};

    #[test]
    fn writes_an_svg_with_both_charts() {
        let mut s = Samples::new();
        for i in 1..=200u64 {
            s.record(i / 20, 200 + i * 7, "200".into());
        }
        let cfg = BenchConfig::try_parse_from(["inferd-bench", "--model", "m"]).expect("parse");
        let r = summarize(&cfg, &s, Duration::from_secs(1), 1);
        let path =
            std::env::temp_dir().join(format!("inferd-bench-plot-{}.svg", std::process::id()));
        plot(&r, &path).expect("plot");
        let svg = std::fs::read_to_string(&path).expect("read");
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("m: latency over time") && svg.contains("latency distribution"));
    }

    #[test]
    fn marks_the_schedule_steps() {
        let mut s = Samples::with_steps(2);
        for i in 1..=200u64 {
            s.record(i / 10, 200 + i * 7, "200".into());
        }
        let cfg = BenchConfig::try_parse_from(["inferd-bench", "--schedule", "1s:100,1s:250"])
            .expect("parse");
        let r = summarize(&cfg, &s, Duration::from_secs(2), 1);
        let path = std::env::temp_dir().join(format!(
            "inferd-bench-plot-steps-{}.svg",
            std::process::id()
        ));
        plot(&r, &path).expect("plot");
        let svg = std::fs::read_to_string(&path).expect("read");
        let _ = std::fs::remove_file(&path);
        assert!(svg.contains("100/s") && svg.contains("250/s"), "{svg}");
    }
}
