//! Helpers shared by the transport benchmarks (`mod support;`): rates, number formatting,
//! percentiles, and Python kombu's figures from the shared baseline script. A folder, so that
//! Cargo does not take it for a benchmark of its own.

#![allow(dead_code)] // each benchmark uses the part it needs

use std::path::PathBuf;
use std::time::Duration;

/// Messages a second.
pub fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// `12345.6` → `"12,346"`.
pub fn grouped(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The `p` quantile (0 to 1) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs of the Python baseline per benchmark; its figures are their medians, as ours are.
const PYTHON_RUNS: &str = "3";

/// Python kombu's publish and consume rates for the baseline suite entry `name` (`redis`,
/// `amqp`, `sqlite`), `n` messages: the medians of [`PYTHON_RUNS`] runs of
/// `../shared/bench/kombu_baseline.py` (each in a fresh process) in the venv (`$KOMBU_PYTHON`,
/// else `~/.cache/kombu-rs/venv`); `None` (the column left out) when Python, the script or
/// every run is missing.
pub fn python_baseline(name: &str, n: u64) -> Option<(f64, f64)> {
    python_baseline_with(name, n, &[])
}

/// [`python_baseline`] with more arguments for the script (`mongodb`: `--mongo-url URL`, the
/// entry the script adds only when given a server).
pub fn python_baseline_with(name: &str, n: u64, extra: &[&str]) -> Option<(f64, f64)> {
    let python = python()?;
    let script = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../shared/bench/kombu_baseline.py");
    if !script.exists() {
        eprintln!("no {}: Python column left out", script.display());
        return None;
    }
    let out =
        std::env::temp_dir().join(format!("kombu-baseline-{name}-{}.json", std::process::id()));
    let status = std::process::Command::new(python)
        .arg(&script)
        .args([
            "--only",
            name,
            "--runs",
            PYTHON_RUNS,
            "--n",
            &n.to_string(),
            "--json",
        ])
        .arg(&out)
        .args(extra)
        .status()
        .ok()?;
    if !status.success() {
        eprintln!("the Python baseline failed ({status})");
        return None;
    }
    let text = std::fs::read_to_string(&out).ok()?;
    let _ = std::fs::remove_file(&out);
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let runs: Vec<&serde_json::Value> = json
        .as_array()?
        .iter()
        .filter(|r| r["name"] == name && r["ok"] == true)
        .collect();
    let median = |field: &str| {
        let mut rates: Vec<f64> = runs.iter().filter_map(|r| r[field].as_f64()).collect();
        rates.sort_by(f64::total_cmp);
        rates.get(rates.len() / 2).copied()
    };
    Some((median("publish_rate")?, median("consume_rate")?))
}

/// The venv's Python: `$KOMBU_PYTHON`, else `~/.cache/kombu-rs/venv/bin/python` if it exists.
pub fn python() -> Option<PathBuf> {
    std::env::var_os("KOMBU_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            let venv =
                PathBuf::from(std::env::var_os("HOME")?).join(".cache/kombu-rs/venv/bin/python");
            venv.exists().then_some(venv)
        })
}

/// The median over [`PYTHON_RUNS`] runs of `benches/python/<script>` with `args` of the number
/// it prints as `{"<field>": number}`; `None` when Python or every run is missing.
pub fn python_script(script: &str, args: &[&str], field: &str) -> Option<f64> {
    let python = python()?;
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("benches/python")
        .join(script);
    let runs: usize = PYTHON_RUNS.parse().ok()?;
    let mut values: Vec<f64> = (0..runs)
        .filter_map(|_| {
            let out = std::process::Command::new(&python)
                .arg(&path)
                .args(args)
                .output()
                .ok()?;
            if !out.status.success() {
                eprintln!(
                    "{script} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                return None;
            }
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            json[field].as_f64()
        })
        .collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

/// Publishes `values` one by one, each awaited; messages a second.
pub async fn publish_each<T: serde::Serialize>(producer: &kombu::Producer, values: &[T]) -> f64 {
    let start = std::time::Instant::now();
    for v in values {
        producer.publish(v).await.expect("publish");
    }
    rate(values.len() as u64, start.elapsed())
}

/// Publishes `values` in batches of 100; messages a second.
pub async fn publish_batches<T: serde::Serialize>(producer: &kombu::Producer, values: &[T]) -> f64 {
    let start = std::time::Instant::now();
    for chunk in values.chunks(100) {
        producer.publish_batch(chunk).await.expect("batch");
    }
    rate(values.len() as u64, start.elapsed())
}

/// Takes `n` deliveries, decoding each as `T` and acking it; messages a second.
pub async fn consume_acking<T: serde::de::DeserializeOwned>(
    consumer: &mut kombu::Consumer,
    n: u64,
) -> f64 {
    use kombu::StreamExt as _;
    let start = std::time::Instant::now();
    for _ in 0..n {
        let d = consumer.next().await.expect("message").expect("delivery");
        let _: T = d.decode().expect("decode");
        d.ack().await.expect("ack");
    }
    rate(n, start.elapsed())
}

/// Messages per row: the first number among the arguments, else `default`.
pub fn messages(default: u64) -> u64 {
    std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(default)
}

/// Runs `ours` and `raw` alternately for three rounds on a two-worker tokio runtime; their
/// figures, round by round.
pub fn alternate<T, O, R>(ours: impl Fn() -> O, raw: impl Fn() -> R) -> (Vec<T>, Vec<T>)
where
    O: std::future::Future<Output = T>,
    R: std::future::Future<Output = T>,
{
    alternate_rounds(3, ours, raw)
}

/// [`alternate`] over `rounds` rounds.
pub fn alternate_rounds<T, O, R>(
    rounds: usize,
    ours: impl Fn() -> O,
    raw: impl Fn() -> R,
) -> (Vec<T>, Vec<T>)
where
    O: std::future::Future<Output = T>,
    R: std::future::Future<Output = T>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut ours_runs = Vec::new();
    let mut raw_runs = Vec::new();
    for _ in 0..rounds {
        ours_runs.push(rt.block_on(ours()));
        raw_runs.push(rt.block_on(raw()));
    }
    (ours_runs, raw_runs)
}

/// The median over `runs` of the figure `f` picks.
pub fn median<T>(runs: &[T], f: impl Fn(&T) -> f64) -> f64 {
    let mut xs: Vec<f64> = runs.iter().map(f).collect();
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Records one side of a row for `scripts/bench` when `KOMBU_BENCH_JSON` names a file: a JSON
/// line `{"bench", "row", "side", "unit", "rounds", "median"}` appended to it (`side`: `ours`,
/// `raw` or `python`; `rounds`: the figure of each round, in round order, so that a ratio can
/// be taken within each round). Nothing when the variable is unset.
pub fn record(bench: &str, row: &str, side: &str, unit: &str, rounds: &[f64]) {
    let Some(path) = std::env::var_os("KOMBU_BENCH_JSON") else {
        return;
    };
    if rounds.is_empty() {
        return;
    }
    if let Some(bad) = rounds.iter().find(|v| !v.is_finite()) {
        // JSON has no NaN: say so rather than write a null the report would drop.
        eprintln!("{bench} / {row} / {side}: {bad} is no figure; not recorded");
        return;
    }
    let line = serde_json::json!({
        "bench": bench,
        "row": row,
        "side": side,
        "unit": unit,
        "rounds": rounds,
        "median": median(rounds, |v| *v),
    });
    use std::io::Write as _;
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| writeln!(file, "{line}"));
    if let Err(e) = written {
        eprintln!("KOMBU_BENCH_JSON {}: {e}", PathBuf::from(path).display());
    }
}

/// [`record`] for the rows of [`alternate`]'s rounds: `ours` and `raw` round by round, and
/// Python's median when there is one.
pub fn record_row<T>(
    bench: &str,
    row: &str,
    unit: &str,
    (ours, raw): (&[T], &[T]),
    f: impl Fn(&T) -> f64,
    python: Option<f64>,
) {
    let of = |runs: &[T]| runs.iter().map(&f).collect::<Vec<f64>>();
    record(bench, row, "ours", unit, &of(ours));
    record(bench, row, "raw", unit, &of(raw));
    if let Some(python) = python {
        record(bench, row, "python", unit, &[python]);
    }
}
