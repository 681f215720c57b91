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

/// The body size the benchmarks' messages have, in bytes of JSON: `$KOMBU_BENCH_BODY`, else
/// 100 (kombu's benchmark body, `{"id": N, "payload": "x" * 64}`).
pub fn body_size() -> usize {
    std::env::var("KOMBU_BENCH_BODY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_BODY)
}

/// The body size of the shared Python baseline.
pub const DEFAULT_BODY: usize = 100;

/// The `payload` text of a message of [`body_size`] bytes: `body_size - 36` bytes, so that 100
/// gives kombu's `"x" * 64`. The rest of `{"id": N, "payload": ...}` takes 21 to 27 bytes, so a
/// body is about 10 bytes short of its size (about 90 B, 1,014 B, 65,526 B).
pub fn payload_text() -> String {
    "x".repeat(body_size().saturating_sub(36))
}

/// Python kombu's publish and consume rates at [`body_size`] on `url` (as kombu writes it):
/// at the default size the shared baseline's suite entry `name` (which chooses its own server
/// URL, except MongoDB's, passed in `extra`), at other sizes `benches/python/kombu_throughput.py`
/// doing the same work; medians of [`PYTHON_RUNS`] runs each.
pub fn python_rates(name: &str, url: &str, n: u64, extra: &[&str]) -> Option<(f64, f64)> {
    if body_size() == DEFAULT_BODY {
        return python_baseline_with(name, n, extra);
    }
    let args = [url, &n.to_string(), &body_size().to_string()];
    let both = python_script_fields(
        "kombu_throughput.py",
        &args,
        &["publish_rate", "consume_rate"],
    )?;
    Some((both[0], both[1]))
}

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
    python_script_fields(script, args, &[field]).map(|v| v[0])
}

/// [`python_script`] for several fields of one JSON object, each field's median.
pub fn python_script_fields(script: &str, args: &[&str], fields: &[&str]) -> Option<Vec<f64>> {
    let python = python()?;
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("benches/python")
        .join(script);
    let runs: usize = PYTHON_RUNS.parse().ok()?;
    let outputs: Vec<serde_json::Value> = (0..runs)
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
            serde_json::from_slice(&out.stdout).ok()
        })
        .collect();
    fields
        .iter()
        .map(|field| {
            let mut values: Vec<f64> = outputs.iter().filter_map(|o| o[field].as_f64()).collect();
            values.sort_by(f64::total_cmp);
            values.get(values.len() / 2).copied()
        })
        .collect()
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
/// line `{"bench", "body", "row", "side", "unit", "rounds", "median"}` appended to it (`body`:
/// [`body_size`]; `side`: `ours`, `raw` or `python`; `rounds`: the figure of each round, in
/// round order, so that a ratio can be taken within each round). Nothing when the variable is
/// unset.
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
        "body": body_size(),
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

/// The CPU time (user + system) the local server processes named `comm` (as `/proc/PID/comm`
/// shows it: `redis-server`, `beam.smp`) whose command line holds `marker` (`:6379`, or `""`)
/// have used so far, all their threads; `None` when none runs here (a remote server) or `/proc`
/// cannot be read.
pub fn server_cpu(comm: &str, marker: &str) -> Option<Duration> {
    // Clock ticks per second: 100 on Linux everywhere this runs (`getconf CLK_TCK`).
    const TICKS: f64 = 100.0;
    let mut ticks = 0u64;
    let mut found = false;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let path = entry.path();
        let Ok(name) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if name.trim_end() != comm {
            continue;
        }
        let cmdline = std::fs::read(path.join("cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains(marker) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        // The fields after the command's closing parenthesis: utime and stime are the 12th
        // and 13th of them.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
        let stime: u64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        ticks += utime + stime;
        found = true;
    }
    found.then(|| Duration::from_secs_f64(ticks as f64 / TICKS))
}

/// `":<port>"` of a server URL (`scheme://[user@]host:port/...`), `default` when it names none:
/// how [`server_cpu`] tells one local server from others of its kind.
pub fn port_marker(url: &str, default: u16) -> String {
    let authority = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split(['/', '?'])
        .next()
        .unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let port = host
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(default);
    format!(":{port}")
}

/// Measures a local server's CPU over a stretch of work: [`ServerCpu::start`] before it,
/// [`ServerCpu::per_message`] after.
pub struct ServerCpu {
    comm: &'static str,
    marker: String,
    before: Option<Duration>,
}

impl ServerCpu {
    /// Reads the CPU time of the server [`server_cpu`] finds by `comm` and `marker` now.
    pub fn start(comm: &'static str, marker: &str) -> ServerCpu {
        ServerCpu {
            comm,
            marker: marker.to_owned(),
            before: server_cpu(comm, marker),
        }
    }

    /// The server's CPU time since [`start`](Self::start) per message of `n`, in µs (NaN
    /// when it could not be read, which [`record`] leaves out). `/proc` counts in 10 ms ticks:
    /// a stretch of work should take a second or more for a figure worth reading.
    pub fn per_message(&self, n: u64) -> f64 {
        match (self.before, server_cpu(self.comm, &self.marker)) {
            (Some(before), Some(after)) => {
                after.saturating_sub(before).as_secs_f64() * 1e6 / n.max(1) as f64
            }
            _ => f64::NAN,
        }
    }
}

/// The length of the entry kombu-rs pushes on the Redis at `server` for one message of
/// [`payload_text`] (its envelope), which raw rows push as byte strings of the same size.
pub async fn redis_envelope_len(server: &str) -> usize {
    use redis::AsyncCommands as _;
    #[derive(serde::Serialize)]
    struct Payload {
        id: u64,
        payload: String,
    }
    let prefix = format!("bench-{}:", uuid::Uuid::new_v4().simple());
    let conn = kombu::Connection::open(&format!("{server}?global_keyprefix={prefix}"))
        .await
        .expect("open");
    conn.declare_queue(&kombu::Queue::new("bench_q"))
        .await
        .expect("declare");
    conn.producer()
        .routing_key("bench_q")
        .publish(&Payload {
            id: 10_000,
            payload: payload_text(),
        })
        .await
        .expect("publish");
    let client = redis::Client::open(server).expect("client");
    let mut raw = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let entry: Option<Vec<u8>> = raw
        .rpop(format!("{prefix}bench_q"), None)
        .await
        .expect("rpop");
    conn.delete_queue("bench_q").await.expect("delete");
    entry.map_or(330, |e| e.len())
}

/// A server-CPU row: its name and the figure of a round it reads.
pub type CpuRow<T> = (&'static str, fn(&T) -> f64);

/// Records and prints a benchmark's server-CPU rows (µs of the broker's CPU per message, see
/// [`ServerCpu`]): each `(row, figure)` for `ours` and `raw` round by round, and a table line
/// with the medians and their ratio.
pub fn cpu_rows<T>(bench: &str, rows: &[CpuRow<T>], ours: &[T], raw: &[T]) {
    for (name, f) in rows {
        record_row(bench, name, "µs CPU", (ours, raw), f, None);
        let (o, r) = (median(ours, f), median(raw, f));
        println!("| {name} | {o:.1} µs | {r:.1} µs | {:.2}× | – | – |", o / r);
    }
}
