//! The report's plots, as SVG files:
//! - `throughput.svg`: consume + ack on each transport against the body size, kombu-rs, its
//!   ceiling and Python kombu;
//! - `latency.svg`: publish→deliver p50, p99 and p999 at half the maximum rate per transport,
//!   kombu-rs and the raw client;
//! - `history.svg`: each target's figure over the runs kept as JSON lines (one file per run,
//!   named by its time so that they sort in order), as a share of the target: a regression
//!   shows as a line going down.

use std::path::Path;

use plotters::coord::ranged1d::Ranged;
use plotters::prelude::*;

use super::{Bound, TARGETS, Tables, load, target_value};

/// What a drawing error says.
fn text<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Distinct colours (matplotlib's "tab10"), one per series.
const COLOURS: [RGBColor; 8] = [
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(31, 119, 180),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

fn colour(i: usize) -> RGBAColor {
    COLOURS[i % COLOURS.len()].to_rgba()
}

/// The charts: two axes of `f64`, linear or logarithmic, on an SVG file.
type Chart<'a, 'b, X, Y> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<X, Y>>;

/// Draws `points` as a solid line with its points marked, in the legend as `label`.
fn solid<X, Y>(
    chart: &mut Chart<'_, '_, X, Y>,
    points: Vec<(f64, f64)>,
    color: RGBAColor,
    label: String,
) -> Result<(), String>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    if points.is_empty() {
        return Ok(());
    }
    chart
        .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
        .map_err(text)?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    chart
        .draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))
        .map_err(text)?;
    Ok(())
}

/// Draws `points` as a thin dashed line (a ceiling), in the legend as `label`.
fn dashed<X, Y>(
    chart: &mut Chart<'_, '_, X, Y>,
    points: Vec<(f64, f64)>,
    color: RGBAColor,
    label: String,
) -> Result<(), String>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    if points.is_empty() {
        return Ok(());
    }
    chart
        .draw_series(DashedLineSeries::new(points, 6, 4, color.stroke_width(1)))
        .map_err(text)?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    Ok(())
}

/// The legend, boxed, at `position`.
fn legend<'a, 'b: 'a, X, Y>(
    chart: &mut Chart<'a, 'b, X, Y>,
    position: SeriesLabelPosition,
) -> Result<(), String>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(text)
}

/// An axis label: `1,000,000`, `250`, `0.7`.
fn label(v: &f64) -> String {
    if *v >= 100.0 {
        crate::support::grouped(*v)
    } else if *v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Draws every plot of `tables` into `dir`, and the history from the runs in `history`.
pub fn draw(tables: &Tables, dir: &Path, history: Option<&str>) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    throughput(tables, &dir.join("throughput.svg"))?;
    latency(tables, &dir.join("latency.svg"))?;
    if let Some(history) = history {
        history_plot(Path::new(history), &dir.join("history.svg"))?;
    }
    Ok(())
}

/// The consume rows plotted per transport: label, benchmark, row.
const CONSUME: [(&str, &str, &str); 5] = [
    (
        "memory",
        "memory",
        "typed publish+consume+ack (publish one by one)",
    ),
    ("SQLite", "sqlite", "consume + ack, prefetch 100"),
    ("Redis", "redis", "consume + ack, prefetch 100"),
    ("RabbitMQ", "amqp", "consume + ack, prefetch 100"),
    ("MongoDB", "mongodb", "consume + ack, prefetch 100"),
];

/// `(body, median)` of one side of `row` of `bench` at every body size that ran.
fn by_size(tables: &Tables, bench: &str, row: &str, side: &str) -> Vec<(f64, f64)> {
    tables
        .iter()
        .filter(|((b, _), _)| b == bench)
        .filter_map(|((_, body), rows)| {
            let (_, r) = rows.iter().find(|(name, _)| name == row)?;
            let figure = match side {
                "ours" => r.ours.as_ref(),
                "raw" => r.raw.as_ref(),
                _ => r.python.as_ref(),
            }?;
            Some((*body as f64, figure.median))
        })
        .collect()
}

/// A log range around `values` (a decade when there is nothing).
fn log_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return 1.0..10.0;
    }
    lo / 2.0..hi * 2.0
}

fn throughput(tables: &Tables, path: &Path) -> Result<(), String> {
    let series: Vec<_> = CONSUME
        .iter()
        .map(|(label, bench, row)| {
            (
                *label,
                by_size(tables, bench, row, "ours"),
                by_size(tables, bench, row, "raw"),
                by_size(tables, bench, row, "python"),
            )
        })
        .collect();
    let y = log_range(
        series
            .iter()
            .flat_map(|(_, a, b, c)| a.iter().chain(b).chain(c).map(|p| p.1)),
    );
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(text)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Consume + ack by body size (memory: publish + consume + ack)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d((50f64..131_072f64).log_scale(), y.log_scale())
        .map_err(text)?;
    chart
        .configure_mesh()
        .x_desc("body size, bytes")
        .y_desc("messages a second")
        .x_label_formatter(&label)
        .y_label_formatter(&label)
        .draw()
        .map_err(text)?;
    for (i, (label, ours, raw, python)) in series.into_iter().enumerate() {
        let color = colour(i);
        solid(&mut chart, ours, color, format!("{label}: kombu-rs"))?;
        dashed(&mut chart, raw, color, format!("{label}: ceiling"))?;
        if !python.is_empty() {
            chart
                .draw_series(
                    python
                        .iter()
                        .map(|p| TriangleMarker::new(*p, 4, color.filled())),
                )
                .map_err(text)?
                .label(format!("{label}: Python kombu"))
                .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 4, color.filled()));
        }
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(text)
}

/// The transports of the latency benchmark, as it names them, and their labels.
const LATENCY: [(&str, &str); 5] = [
    ("memory", "memory"),
    ("sqlite", "SQLite"),
    ("redis", "Redis"),
    ("amqp", "RabbitMQ"),
    ("mongodb", "MongoDB"),
];

fn latency(tables: &Tables, path: &Path) -> Result<(), String> {
    let Some((_, rows)) = tables
        .iter()
        .find(|((b, body), _)| b == "latency" && *body == crate::support::DEFAULT_BODY)
    else {
        return Ok(()); // not run
    };
    let quantile = |transport: &str, side: &str| -> Vec<(f64, f64)> {
        ["p50", "p99", "p999"]
            .iter()
            .enumerate()
            .filter_map(|(i, q)| {
                let name = format!("{transport}: publish→deliver {q} at half the maximum");
                let (_, r) = rows.iter().find(|(n, _)| *n == name)?;
                let f = if side == "ours" {
                    r.ours.as_ref()
                } else {
                    r.raw.as_ref()
                }?;
                Some((i as f64, f.median))
            })
            .collect()
    };
    let series: Vec<_> = LATENCY
        .iter()
        .map(|(t, label)| (*label, quantile(t, "ours"), quantile(t, "raw")))
        .collect();
    let y = log_range(
        series
            .iter()
            .flat_map(|(_, a, b)| a.iter().chain(b).map(|p| p.1)),
    );
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(text)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Publish→deliver latency at half the maximum rate (100 B bodies)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.2f64..2.2f64, y.log_scale())
        .map_err(text)?;
    chart
        .configure_mesh()
        .x_labels(3)
        .x_label_formatter(&|x| match x.round() as i64 {
            0 => "p50".into(),
            1 => "p99".into(),
            2 => "p999".into(),
            _ => String::new(),
        })
        .y_desc("µs")
        .y_label_formatter(&label)
        .draw()
        .map_err(text)?;
    for (i, (label, ours, raw)) in series.into_iter().enumerate() {
        let color = colour(i);
        solid(&mut chart, ours, color, format!("{label}: kombu-rs"))?;
        dashed(&mut chart, raw, color, format!("{label}: raw client"))?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present().map_err(text)
}

/// A target's figure as a share of the target: 1 is the target, above it met.
fn share(bound: Bound, v: f64) -> f64 {
    match bound {
        Bound::AtLeast(least) => v / least,
        Bound::AtMost(most) => most / v,
    }
}

fn history_plot(dir: &Path, path: &Path) -> Result<(), String> {
    let mut runs: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    runs.sort();
    let mut tables = Vec::new();
    for run in &runs {
        match load(&run.display().to_string()) {
            Ok(t) => tables.push(t),
            Err(e) => eprintln!("history: {e}"),
        }
    }
    let series: Vec<(String, Vec<(f64, f64)>)> = TARGETS
        .iter()
        .map(|t| {
            let points = tables
                .iter()
                .enumerate()
                .filter_map(|(i, run)| Some((i as f64, share(t.bound, target_value(run, t)?))))
                .collect();
            (t.what.to_owned(), points)
        })
        .collect();
    let y = log_range(
        series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|p| p.1))
            .chain([1.0]),
    );
    // Room below the lowest line for the legend.
    let y = y.start / 8.0..y.end;
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(text)?;
    let last = tables.len().max(2) as f64 - 1.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "The targets over the recorded runs (1 = the target; above it, met)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.2f64..last + 0.2, y.log_scale())
        .map_err(text)?;
    chart
        .configure_mesh()
        .x_desc("run (oldest first)")
        .y_desc("measured / target")
        .x_labels(tables.len().clamp(2, 12))
        .x_label_formatter(&|x| format!("{}", x.round() as i64 + 1))
        .y_label_formatter(&label)
        .draw()
        .map_err(text)?;
    chart
        .draw_series(LineSeries::new(vec![(-0.2, 1.0), (last + 0.2, 1.0)], BLACK))
        .map_err(text)?;
    for (i, (label, points)) in series.into_iter().enumerate() {
        solid(&mut chart, points, colour(i), label)?;
    }
    legend(&mut chart, SeriesLabelPosition::LowerLeft)?;
    root.present().map_err(text)
}
