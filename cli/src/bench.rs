//! `kombu bench`: publish N messages, then consume and ack them, per URL; throughput and
//! latency percentiles.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use kombu::serializers::Registry;
use kombu::{Connection, Outgoing, Queue, StreamExt as _};
use serde_json::json;

use crate::Outcome;
use crate::cli::{BenchArgs, Global};
use crate::common::{self, Ctx as _};

/// A consumer that sees no message for this long while some are missing gives up.
const STALL: Duration = Duration::from_secs(60);

/// Largest latency the histograms hold, in microseconds (an hour); longer ones count as this.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// One phase's numbers.
struct Phase {
    seconds: f64,
    latency: Histogram<u64>,
    messages: u64,
}

impl Phase {
    fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.messages as f64 / self.seconds
        } else {
            0.0
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "seconds": self.seconds,
            "msgs_per_sec": self.rate(),
            "latency_us": {
                "p50": self.latency.value_at_quantile(0.50),
                "p99": self.latency.value_at_quantile(0.99),
                "max": self.latency.max(),
            },
        })
    }
}

struct Run {
    url: String,
    publish: Phase,
    consume: Phase,
}

/// What every task needs to know.
struct Plan {
    queue: String,
    serializer: String,
    compression: Option<String>,
    body: Body,
    batch: u32,
    prefetch: u16,
}

#[derive(Clone)]
enum Body {
    Json(String),
    Bytes(Vec<u8>),
    Text(String),
}

pub async fn run(global: &Global, args: BenchArgs) -> anyhow::Result<Outcome> {
    if args.messages == 0 || args.producers == 0 || args.consumers == 0 || args.batch == 0 {
        return Err(anyhow!(
            "--messages, --producers, --consumers and --batch must be at least 1"
        ));
    }
    let registry = Registry::default();
    let serializer = registry
        .serializer(&args.serializer)
        .map_err(|e| anyhow!("{e} (try json, msgpack, yaml, raw or text)"))?
        .name()
        .to_owned();
    if let Some(c) = &args.compression {
        registry
            .compressor(c)
            .map_err(|e| anyhow!("{e} (try zlib, bzip2, lzma, brotli or zstd)"))?;
    }
    let body = match serializer.as_str() {
        "raw" => Body::Bytes(vec![b'x'; args.size]),
        "text" => Body::Text("x".repeat(args.size)),
        _ => Body::Json("x".repeat(args.size)),
    };
    let mut runs = Vec::new();
    for url in common::urls(global) {
        let id: String = uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .chars()
            .take(12)
            .collect();
        let plan = Arc::new(Plan {
            queue: format!("kombu-bench-{id}"),
            serializer: serializer.clone(),
            compression: args.compression.clone(),
            body: body.clone(),
            batch: args.batch,
            prefetch: args.prefetch,
        });
        runs.push(bench_one(&url, &args, plan).await?);
    }
    if args.json {
        // JSON lines: one object per URL.
        for r in &runs {
            let row = json!({
                "url": r.url,
                "messages": args.messages,
                "size": args.size,
                "producers": args.producers,
                "consumers": args.consumers,
                "prefetch": args.prefetch,
                "batch": args.batch,
                "serializer": serializer,
                "compression": args.compression,
                "publish": r.publish.json(),
                "consume": r.consume.json(),
            });
            println!("{row}");
        }
    } else {
        print_table(&runs);
    }
    Ok(Outcome::Done)
}

fn print_table(runs: &[Run]) {
    let width = runs.iter().map(|r| r.url.len()).max().unwrap_or(3).max(3);
    println!(
        "{:<width$}  {:>9}  {:>12}  {:>10}  {:>10}  {:>12}  {:>10}  {:>10}",
        "URL", "messages", "publish/s", "pub p50", "pub p99", "consume/s", "con p50", "con p99"
    );
    for r in runs {
        println!(
            "{:<width$}  {:>9}  {:>12.0}  {:>10}  {:>10}  {:>12.0}  {:>10}  {:>10}",
            r.url,
            r.publish.messages,
            r.publish.rate(),
            micros(r.publish.latency.value_at_quantile(0.50)),
            micros(r.publish.latency.value_at_quantile(0.99)),
            r.consume.rate(),
            micros(r.consume.latency.value_at_quantile(0.50)),
            micros(r.consume.latency.value_at_quantile(0.99)),
        );
    }
}

fn micros(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

/// A latency histogram in microseconds, from 1 µs to [`MAX_LATENCY_US`], 3 significant digits.
///
/// Bounded on purpose: `Histogram::new` starts with a range of 1..=2 that only grows on
/// `record`, and `saturating_record` clamps instead of growing, so every latency read 2 µs.
fn latency_histogram() -> Result<Histogram<u64>, hdrhistogram::CreationError> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    latency_histogram().map_err(|e| anyhow!("cannot make a latency histogram: {e}"))
}

fn elapsed_us(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

async fn bench_one(url: &str, args: &BenchArgs, plan: Arc<Plan>) -> anyhow::Result<Run> {
    let masked = common::mask(url);
    let conn = common::connect(url).await?;
    conn.declare_queue(&Queue::new(plan.queue.clone()))
        .await
        .ctx(format!("cannot declare queue {:?} on {masked}", plan.queue))?;
    let bar = common::progress(Some(args.messages * 2), &format!("bench {masked}"));
    let result = phases(url, &masked, args, &plan, &bar).await;
    bar.finish_and_clear();
    // Clean up whatever happened; a failure to do so is not the benchmark's result.
    let _ = conn.delete_queue(&plan.queue).await;
    let (publish, consume) = result?;
    Ok(Run {
        url: masked,
        publish,
        consume,
    })
}

async fn phases(
    url: &str,
    masked: &str,
    args: &BenchArgs,
    plan: &Arc<Plan>,
    bar: &ProgressBar,
) -> anyhow::Result<(Phase, Phase)> {
    // Publish: the messages split between the producers, each on a connection of its own.
    let mut tasks = Vec::new();
    let start = Instant::now();
    for i in 0..u64::from(args.producers) {
        let share = args.messages / u64::from(args.producers)
            + u64::from(i < args.messages % u64::from(args.producers));
        let conn = common::connect(url).await?;
        let plan = plan.clone();
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            publish_share(conn, plan, share, bar).await
        }));
    }
    let mut latency = histogram()?;
    for task in tasks {
        let h = task
            .await
            .map_err(|e| anyhow!("a publisher task failed: {e}"))?
            .ctx(format!("publishing to {masked}"))?;
        latency
            .add(&h)
            .map_err(|e| anyhow!("merging latencies: {e}"))?;
    }
    let publish = Phase {
        seconds: start.elapsed().as_secs_f64(),
        latency,
        messages: args.messages,
    };

    // Consume: until every message is acked, each consumer on a connection of its own.
    let remaining = Arc::new(AtomicU64::new(args.messages));
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let done_tx = Arc::new(done_tx);
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..args.consumers {
        let conn = common::connect(url).await?;
        let plan = plan.clone();
        let bar = bar.clone();
        let remaining = remaining.clone();
        let done_tx = done_tx.clone();
        let done_rx = done_rx.clone();
        tasks.push(tokio::spawn(async move {
            consume_until_done(conn, plan, remaining, done_tx, done_rx, bar).await
        }));
    }
    let mut latency = histogram()?;
    let mut failure = None;
    for task in tasks {
        match task.await {
            Ok(Ok(h)) => latency
                .add(&h)
                .map_err(|e| anyhow!("merging latencies: {e}"))?,
            Ok(Err(e)) => {
                // Stop the others too.
                let _ = done_tx.send(true);
                failure.get_or_insert(e.context(format!("consuming from {masked}")));
            }
            Err(e) => {
                let _ = done_tx.send(true);
                failure.get_or_insert(anyhow!("a consumer task failed: {e}"));
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let consume = Phase {
        seconds: start.elapsed().as_secs_f64(),
        latency,
        messages: args.messages,
    };
    Ok((publish, consume))
}

fn build(producer: &kombu::Producer, body: &Body) -> kombu::Result<Outgoing> {
    match body {
        Body::Json(s) | Body::Text(s) => producer.message(s).build(),
        Body::Bytes(b) => producer.message(b).build(),
    }
}

async fn publish_share(
    conn: Connection,
    plan: Arc<Plan>,
    share: u64,
    bar: ProgressBar,
) -> kombu::Result<Histogram<u64>> {
    let mut producer = conn
        .producer()
        .routing_key(plan.queue.clone())
        .serializer(plan.serializer.clone());
    if let Some(c) = &plan.compression {
        producer = producer.compression(c.clone());
    }
    let mut latency =
        latency_histogram().map_err(|e| kombu::Error::config(format!("latency histogram: {e}")))?;
    let mut left = share;
    while left > 0 {
        let n = left.min(u64::from(plan.batch));
        let t0 = Instant::now();
        if n == 1 {
            producer
                .connection()
                .default_channel()
                .publish(build(&producer, &plan.body)?)
                .await?;
        } else {
            let batch = (0..n)
                .map(|_| build(&producer, &plan.body))
                .collect::<kombu::Result<Vec<_>>>()?;
            producer.send_batch(batch).await?;
        }
        latency.saturating_record(elapsed_us(t0));
        left -= n;
        bar.inc(n);
    }
    let _ = conn.close().await;
    Ok(latency)
}

async fn consume_until_done(
    conn: Connection,
    plan: Arc<Plan>,
    remaining: Arc<AtomicU64>,
    done_tx: Arc<tokio::sync::watch::Sender<bool>>,
    mut done_rx: tokio::sync::watch::Receiver<bool>,
    bar: ProgressBar,
) -> anyhow::Result<Histogram<u64>> {
    let mut consumer = conn
        .consumer([Queue::new(plan.queue.clone())])
        .declare(false)
        .prefetch(plan.prefetch)
        .accept([plan.serializer.as_str()])
        .build()
        .await
        .ctx("cannot start a consumer")?;
    let mut latency = histogram()?;
    let structured = matches!(plan.body, Body::Json(_));
    loop {
        if *done_rx.borrow() || remaining.load(Ordering::Acquire) == 0 {
            break;
        }
        let t0 = Instant::now();
        let item = tokio::select! {
            item = tokio::time::timeout(STALL, consumer.next()) => item,
            _ = done_rx.changed() => break,
        };
        let delivery = match item {
            Err(_) => {
                return Err(anyhow!(
                    "no message for {}s with {} still missing",
                    STALL.as_secs(),
                    remaining.load(Ordering::Acquire)
                ));
            }
            Ok(None) => return Err(anyhow!("the broker ended the consumer")),
            Ok(Some(Err(e))) => return Err(kombu::Error::from(e)).ctx("a delivery failed"),
            Ok(Some(Ok(d))) => d,
        };
        // Decode, as an application would, so the serializer and compression count.
        if structured {
            delivery
                .decode::<serde_json::Value>()
                .ctx("cannot decode a message")?;
        } else {
            delivery
                .decompressed_body()
                .ctx("cannot decompress a message")?;
        }
        delivery.ack().await.ctx("cannot ack a message")?;
        latency.saturating_record(elapsed_us(t0));
        bar.inc(1);
        let before = remaining
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .unwrap_or(0);
        if before <= 1 {
            let _ = done_tx.send(true);
        }
    }
    let _ = consumer.close().await;
    let _ = conn.close().await;
    Ok(latency)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_are_kept_up_to_an_hour() {
        let mut h = histogram().unwrap();
        for us in [3, 30_000, 2_000_000] {
            h.saturating_record(us);
        }
        assert!(
            h.value_at_quantile(0.5) >= 29_900,
            "{}",
            h.value_at_quantile(0.5)
        );
        assert!(h.max() >= 1_990_000, "{}", h.max());
        h.saturating_record(MAX_LATENCY_US * 2);
        assert!(h.max() >= MAX_LATENCY_US - MAX_LATENCY_US / 500);
    }
}
