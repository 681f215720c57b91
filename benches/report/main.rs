//! The benchmarks' report: reads the JSON lines the transport benchmarks record
//! (`KOMBU_BENCH_JSON`, [`support::record`]) and prints the targets met or missed, then one
//! Markdown table per benchmark and body size, the ratios taken within each round and their
//! median. With `--plots DIR` it also draws SVG plots there (`plots.rs`), the history plot
//! from the runs kept in `--history DIR` (one JSON-lines file per run). `scripts/bench` runs
//! it after the benchmarks.
//!
//! ```text
//! cargo bench --bench report -- target/bench/results.jsonl
//! cargo bench --bench report -- results.jsonl --plots benchmarks --history benchmarks/history
//! ```

#[path = "../support/mod.rs"]
mod support;

mod plots;

use serde::Deserialize;

/// One side of a row, as recorded.
#[derive(Debug, Clone, Deserialize)]
struct Figure {
    bench: String,
    /// The messages' body size in bytes (older records have none: the default).
    #[serde(default = "default_body")]
    body: usize,
    row: String,
    side: String,
    unit: String,
    rounds: Vec<f64>,
    median: f64,
}

fn default_body() -> usize {
    support::DEFAULT_BODY
}

/// `100 B`, `1 KiB`, `64 KiB`.
fn size(bytes: usize) -> String {
    match bytes {
        b if b >= 1024 && b % 1024 == 0 => format!("{} KiB", b / 1024),
        b => format!("{b} B"),
    }
}

/// A table of the report: a benchmark at one body size.
type Table = (String, usize);

/// A row's sides.
#[derive(Debug, Default)]
struct Row {
    unit: String,
    ours: Option<Figure>,
    raw: Option<Figure>,
    python: Option<Figure>,
}

/// The ratio of `a` to `b`: the median of the ratios within each round when both ran the same
/// rounds, else the ratio of the medians.
fn ratio(a: &Figure, b: &Figure) -> f64 {
    if a.rounds.len() == b.rounds.len() && a.rounds.len() > 1 {
        let ratios: Vec<f64> = a.rounds.iter().zip(&b.rounds).map(|(x, y)| x / y).collect();
        support::median(&ratios, |v| *v)
    } else {
        a.median / b.median
    }
}

/// What the raw side is, per benchmark.
fn ceiling(bench: &str) -> &'static str {
    match bench {
        "memory" | "memory_system_alloc" => "bare tokio mpsc",
        "redis" => "the redis crate",
        "amqp" => "bare lapin",
        "mongodb" => "the mongodb driver",
        "latency" => {
            "the raw client at the same load (Redis: the redis crate, RabbitMQ: bare lapin)"
        }
        "sqlite" => "none (no raw client measured)",
        _ => "raw client",
    }
}

fn number(v: f64, unit: &str) -> String {
    match unit {
        "µs" | "µs CPU" => format!("{v:.1} µs"),
        _ => format!("{} {unit}", support::grouped(v)),
    }
}

/// A target of the benchmarks issue: the benchmark and row it reads (at the default body size),
/// what it compares, and the least it must reach.
struct Target {
    what: &'static str,
    bench: &'static str,
    row: &'static str,
    /// `ours` (an absolute figure), `raw` or `python` (a ratio).
    against: &'static str,
    bound: Bound,
}

/// The least or the most a target allows.
#[derive(Clone, Copy)]
enum Bound {
    AtLeast(f64),
    AtMost(f64),
}

impl Bound {
    fn met(self, v: f64) -> bool {
        match self {
            Bound::AtLeast(least) => v >= least,
            Bound::AtMost(most) => v <= most,
        }
    }
}

const TARGETS: [Target; 7] = [
    Target {
        what: "memory: 1,000,000 typed messages a second, published one by one",
        bench: "memory",
        row: "typed publish+consume+ack (publish one by one)",
        against: "ours",
        bound: Bound::AtLeast(1_000_000.0),
    },
    Target {
        what: "Redis consume + ack: 0.6 of the same-work ceiling",
        bench: "redis",
        row: "consume + ack, prefetch 100",
        against: "raw",
        bound: Bound::AtLeast(0.6),
    },
    Target {
        what: "Redis consume + ack: 100× Python kombu",
        bench: "redis",
        row: "consume + ack, prefetch 100",
        against: "python",
        bound: Bound::AtLeast(100.0),
    },
    Target {
        what: "Redis publish in batches: 0.8 of the raw pipeline",
        bench: "redis",
        row: "publish, batches of 100",
        against: "raw",
        bound: Bound::AtLeast(0.8),
    },
    Target {
        what: "Redis: p99 publish→deliver under 2 ms at half the maximum rate",
        bench: "latency",
        row: "redis: publish→deliver p99 at half the maximum",
        against: "ours",
        bound: Bound::AtMost(2_000.0),
    },
    Target {
        what: "RabbitMQ: p99 publish→deliver under 2 ms at half the maximum rate",
        bench: "latency",
        row: "amqp: publish→deliver p99 at half the maximum",
        against: "ours",
        bound: Bound::AtMost(2_000.0),
    },
    Target {
        what: "SQLite consume + ack: 50× Python kombu",
        bench: "sqlite",
        row: "consume + ack, prefetch 100",
        against: "python",
        bound: Bound::AtLeast(50.0),
    },
];

/// The rows of a results file, grouped in tables (benchmarks and body sizes in the order they
/// ran, rows in the order they were recorded).
type Tables = Vec<(Table, Vec<(String, Row)>)>;

/// Reads a results file into its tables; lines that do not read are reported and skipped.
fn load(path: &str) -> Result<Tables, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut benches: Tables = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let figure: Figure = match serde_json::from_str(line) {
            Ok(figure) => figure,
            Err(e) => {
                eprintln!("{path}:{}: {e}", n + 1);
                continue;
            }
        };
        let key = (figure.bench.clone(), figure.body);
        let bench = match benches.iter().position(|(b, _)| *b == key) {
            Some(i) => &mut benches[i].1,
            None => {
                benches.push((key, Vec::new()));
                let last = benches.len() - 1;
                &mut benches[last].1
            }
        };
        let row = match bench.iter().position(|(r, _)| *r == figure.row) {
            Some(i) => &mut bench[i].1,
            None => {
                bench.push((figure.row.clone(), Row::default()));
                let last = bench.len() - 1;
                &mut bench[last].1
            }
        };
        row.unit = figure.unit.clone();
        match figure.side.as_str() {
            "ours" => row.ours = Some(figure),
            "raw" => row.raw = Some(figure),
            "python" => row.python = Some(figure),
            other => eprintln!("{path}:{}: unknown side {other}", n + 1),
        }
    }
    Ok(benches)
}

/// What a target reads in `tables`: the absolute figure (`ours`) or the ratio; `None` when the
/// run has no such figure.
fn target_value(tables: &Tables, t: &Target) -> Option<f64> {
    let (_, rows) = tables
        .iter()
        .find(|((b, body), _)| b == t.bench && *body == support::DEFAULT_BODY)?;
    let (_, row) = rows.iter().find(|(name, _)| name == t.row)?;
    let ours = row.ours.as_ref()?;
    match t.against {
        "ours" => Some(ours.median),
        "raw" => row.raw.as_ref().map(|raw| ratio(ours, raw)),
        _ => row.python.as_ref().map(|py| ratio(ours, py)),
    }
}

/// The value of `--name VALUE` among the arguments.
fn option(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut positional = args.iter().enumerate().filter(|(i, a)| {
        !a.starts_with('-') && (*i == 0 || !matches!(args[i - 1].as_str(), "--plots" | "--history"))
    });
    let Some((_, path)) = positional.next() else {
        eprintln!(
            "usage: cargo bench --bench report -- RESULTS.jsonl [--plots DIR] [--history DIR]"
        );
        std::process::exit(2);
    };
    let benches = match load(path) {
        Ok(tables) => tables,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    targets(&benches);
    println!();
    for ((bench, body), rows) in &benches {
        table(bench, *body, rows);
    }
    if let Some(dir) = option("--plots") {
        let history = option("--history");
        if let Err(e) = plots::draw(&benches, std::path::Path::new(&dir), history.as_deref()) {
            eprintln!("plots: {e}");
            std::process::exit(1);
        }
    }
}

/// The targets table.
fn targets(benches: &Tables) {
    println!("### Targets\n");
    println!("| target | measured | |");
    println!("|---|---:|---|");
    for t in &TARGETS {
        let ran = benches.iter().any(|((b, _), _)| b == t.bench);
        let (measured, verdict) = match target_value(benches, t) {
            None if ran => (format!("no {} figure", t.against), "–"),
            None => ("not run".to_owned(), "–"),
            Some(v) => {
                let shown = match (t.against, t.bound) {
                    ("ours", Bound::AtMost(_)) => format!("{v:.0} µs"),
                    ("ours", Bound::AtLeast(_)) => format!("{} msg/s", support::grouped(v)),
                    ("raw", _) => format!("{v:.2}"),
                    _ => format!("{v:.1}×"),
                };
                (shown, if t.bound.met(v) { "met" } else { "missed" })
            }
        };
        println!("| {} | {measured} | {verdict} |", t.what);
    }
}

/// One benchmark's table at one body size.
fn table(bench: &str, body: usize, rows: &[(String, Row)]) {
    let rounds = rows
        .iter()
        .filter_map(|(_, r)| r.ours.as_ref())
        .map(|f| f.rounds.len())
        .max()
        .unwrap_or(0);
    println!("### {bench}, {} bodies\n", size(body));
    println!(
        "Median of {rounds} round(s); ratios taken within each round where both sides ran \
         them; the ceiling: {}.\n",
        ceiling(bench)
    );
    println!(
        "| row | kombu-rs | ceiling | kombu-rs / ceiling | Python kombu | kombu-rs / Python |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, row) in rows {
        let Some(ours) = &row.ours else { continue };
        let cell = |f: &Option<Figure>| {
            f.as_ref()
                .map_or_else(|| "–".to_owned(), |f| number(f.median, &row.unit))
        };
        let to_raw = row.raw.as_ref().map(|raw| ratio(ours, raw));
        let to_python = row.python.as_ref().map(|py| ratio(ours, py));
        // A rate's ratio below 1 is slower; a latency's is said in words; a CPU cost's is
        // a multiple.
        let shown = |r: f64| match row.unit.as_str() {
            "µs" if r >= 1.0 => format!("{r:.2}× slower"),
            "µs" => format!("{:.2}× faster", 1.0 / r),
            "µs CPU" => format!("{r:.2}×"),
            _ => format!("{r:.2}"),
        };
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            number(ours.median, &row.unit),
            cell(&row.raw),
            to_raw.map_or_else(|| "–".to_owned(), shown),
            cell(&row.python),
            to_python.map_or_else(|| "–".to_owned(), |r| format!("{r:.1}×")),
        );
    }
    println!();
}
