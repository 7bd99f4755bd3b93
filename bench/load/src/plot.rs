//! The plot of a report, as PNG or SVG by the file's extension: latency over
//! time (p50 and p99 per window, on a log axis, so that a step to overload
//! does not flatten every earlier step to zero), the answers per second over
//! time (2xx, refusals, other errors), both with the schedule's step
//! boundaries, and the latency distribution.

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::{Report, WINDOW_MS};

/// The formats `--plot` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A bitmap, for image viewers and chats.
    Png,
    /// A vector document, for browsers and editors.
    Svg,
}

impl Format {
    /// The format a path asks for by its extension, or why none.
    pub fn of(path: &Path) -> anyhow::Result<Format> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("png") => Ok(Format::Png),
            Some("svg") => Ok(Format::Svg),
            _ => Err(anyhow::anyhow!(
                "--plot {}: the file must end in .png or .svg (the format follows the extension)",
                path.display()
            )),
        }
    }
}

const SIZE: (u32, u32) = (1000, 1000);

/// plotters' drawing errors carry the backend's error type; the caller only
/// needs the message.
fn draw_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plot: {e}")
}

/// The series' labels, in a box over the chart.
fn legend<'a, DB: DrawingBackend + 'a, Y: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, Y>>,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(draw_err)?;
    Ok(())
}

/// Text needs a font: DejaVu Sans, built in, so that a machine without
/// fonts (a CI runner, a container) draws the same picture.
fn register_font() -> anyhow::Result<()> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| "the built-in font did not load".to_string())
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// Writes the plot of `r` to `path`, in the format its extension names.
pub fn plot(r: &Report, path: &Path) -> anyhow::Result<()> {
    let format = Format::of(path)?;
    register_font()?;
    match format {
        Format::Png => draw(r, BitMapBackend::new(path, SIZE).into_drawing_area()),
        Format::Svg => draw(r, SVGBackend::new(path, SIZE).into_drawing_area()),
    }
}

fn draw<DB: DrawingBackend>(r: &Report, root: DrawingArea<DB, Shift>) -> anyhow::Result<()> {
    root.fill(&WHITE).map_err(draw_err)?;
    let (top, rest) = root.split_vertically(380);
    let (middle, bottom) = rest.split_vertically(330);
    latency(r, &top)?;
    answers(r, &middle)?;
    distribution(r, &bottom)?;
    root.present().map_err(draw_err)?;
    Ok(())
}

/// Seconds from the start to the end of the last window.
fn t_max(r: &Report) -> f64 {
    r.timeline
        .last()
        .map(|w| w[0] + WINDOW_MS as f64 / 1e3)
        .unwrap_or(1.0)
}

/// Where each schedule step begins, labelled with its target rate.
fn steps<DB: DrawingBackend, Y: Ranged<ValueType = f64>>(
    r: &Report,
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, Y>>,
    (y_low, y_high): (f64, f64),
) -> anyhow::Result<()> {
    let grey = BLACK.mix(0.4);
    for s in &r.steps {
        if s.start_s > 0.0 {
            chart
                .draw_series(LineSeries::new(
                    [(s.start_s, y_low), (s.start_s, y_high)],
                    grey.stroke_width(1),
                ))
                .map_err(draw_err)?;
        }
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{}/s", s.target_rps),
                (s.start_s, y_high),
                ("sans-serif", 12).into_font().color(&grey),
            )))
            .map_err(draw_err)?;
    }
    Ok(())
}

fn latency<DB: DrawingBackend>(r: &Report, area: &DrawingArea<DB, Shift>) -> anyhow::Result<()> {
    let positive = |v: f64| v.max(0.001);
    let y_max = r.timeline.iter().map(|w| w[3]).fold(0.01, f64::max) * 2.0;
    let y_min = r
        .timeline
        .iter()
        .map(|w| positive(w[2]))
        .fold(y_max, f64::min)
        / 2.0;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{}: latency over time (log scale)", r.model),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max(r), (y_min..y_max).log_scale())
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("ms")
        .draw()
        .map_err(draw_err)?;
    steps(r, &mut chart, (y_min, y_max / 1.2))?;
    for (label, column, color) in [("p50", 2, BLUE), ("p99", 3, RED)] {
        chart
            .draw_series(LineSeries::new(
                r.timeline.iter().map(|w| (w[0], positive(w[column]))),
                &color,
            ))
            .map_err(draw_err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    legend(&mut chart)
}

fn answers<DB: DrawingBackend>(r: &Report, area: &DrawingArea<DB, Shift>) -> anyhow::Result<()> {
    let y_max = r
        .answers_per_s
        .iter()
        .map(|w| w[1].max(w[2]).max(w[3]))
        .fold(1.0, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption("answers per second", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max(r), 0.0..y_max)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("seconds (the window each request started in)")
        .y_desc("per second")
        .draw()
        .map_err(draw_err)?;
    steps(r, &mut chart, (0.0, y_max / 1.05))?;
    let orange = RGBColor(230, 140, 0);
    for (label, column, color) in [
        ("2xx", 1, GREEN.mix(0.9)),
        ("refused (429, 503)", 2, orange.mix(0.9)),
        ("other errors", 3, BLACK.mix(0.7)),
    ] {
        chart
            .draw_series(LineSeries::new(
                r.answers_per_s.iter().map(|w| (w[0], w[column])),
                color.stroke_width(2),
            ))
            .map_err(draw_err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    legend(&mut chart)
}

fn distribution<DB: DrawingBackend>(
    r: &Report,
    area: &DrawingArea<DB, Shift>,
) -> anyhow::Result<()> {
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
        .y_label_area_size(60)
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

    fn report(schedule: Option<&str>) -> Report {
        let steps = schedule.map_or(0, |s| s.split(',').count());
        let mut s = Samples::with_steps(steps);
        for i in 1..=200u64 {
            let status = if i % 4 == 0 { "429" } else { "200" };
            s.record(i / 10, 200 + i * 7, status.into());
        }
        let mut args = vec!["inferd-bench", "--model", "m"];
        if let Some(sched) = schedule {
            args.extend(["--schedule", sched]);
        }
        let cfg = BenchConfig::try_parse_from(args).expect("parse");
        summarize(&cfg, &s, Duration::from_secs(2), 1)
    }

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("inferd-bench-{}-{name}", std::process::id()))
    }

    #[test]
    fn an_svg_for_svg_with_every_chart() {
        let path = temp("plot.svg");
        plot(&report(None), &path).expect("plot");
        let svg = std::fs::read_to_string(&path).expect("read");
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg"));
        for title in [
            "m: latency over time (log scale)",
            "answers per second",
            "refused (429, 503)",
            "latency distribution",
        ] {
            assert!(svg.contains(title), "{title}");
        }
    }

    #[test]
    fn a_png_for_png() {
        let path = temp("plot.PNG");
        plot(&report(None), &path).expect("plot");
        let png = std::fs::read(&path).expect("read");
        let _ = std::fs::remove_file(&path);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "the PNG signature");
        // Its header says the size drawn.
        assert_eq!(&png[16..24], &[0, 0, 3, 232, 0, 0, 3, 232]);
    }

    #[test]
    fn any_other_extension_is_refused_before_anything_is_written() {
        for name in ["plot.jpg", "plot", "plot.svg.txt"] {
            let path = temp(name);
            let e = plot(&report(None), &path).expect_err(name);
            assert!(e.to_string().contains(".png or .svg"), "{e}");
            assert!(!path.exists(), "{name} was written");
        }
    }

    #[test]
    fn marks_the_schedule_steps() {
        let path = temp("steps.svg");
        plot(&report(Some("1s:100,1s:250")), &path).expect("plot");
        let svg = std::fs::read_to_string(&path).expect("read");
        let _ = std::fs::remove_file(&path);
        assert!(svg.contains("100/s") && svg.contains("250/s"), "{svg}");
    }
}
