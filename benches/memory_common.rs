//! The memory benchmark's body, shared by `benches/memory.rs` (mimalloc) and
//! `benches/memory_system_alloc.rs` (the system allocator): memory transport throughput and
//! latency, with a bare `tokio::sync::mpsc` channel doing the same work in the same run as the
//! ceiling.
//!
//! End-to-end rows run the producer and the consumer on two OS threads, each with its own
//! current-thread tokio runtime (one per core of this machine), on both sides of the
//! comparison, so the scheduler cannot put both on one core.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use kombu::{Connection, Queue, StreamExt};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Payload {
    id: u64,
    payload: String,
}

/// The payload's length: a body of `$KOMBU_BENCH_BODY` bytes of JSON (default 100, kombu's
/// `"x" * 64`) less the 36 the rest of `{"id": N, "payload": ...}` takes, as the other
/// benchmarks' `support::payload_text`.
static PAYLOAD_LEN: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| {
    std::env::var("KOMBU_BENCH_BODY")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(100)
        .saturating_sub(36)
});

fn payload(id: u64) -> Payload {
    Payload {
        id,
        payload: "x".repeat(*PAYLOAD_LEN),
    }
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs `producer` and `consumer` on two threads and times them from start to both done.
fn two_threads<P, C>(producer: P, consumer: C) -> Duration
where
    P: Future<Output = ()> + Send + 'static,
    C: Future<Output = ()> + Send + 'static,
{
    let start = Instant::now();
    let c = std::thread::spawn(move || runtime().block_on(consumer));
    let p = std::thread::spawn(move || runtime().block_on(producer));
    p.join().expect("producer thread");
    c.join().expect("consumer thread");
    start.elapsed()
}

fn mpsc_typed(n: u64) -> Duration {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    two_threads(
        async move {
            let p = payload(0);
            for i in 0..n {
                let body = serde_json::to_vec(&Payload {
                    id: i,
                    payload: p.payload.clone(),
                })
                .expect("encodes");
                tx.send(Bytes::from(body)).expect("receiver alive");
            }
        },
        async move {
            let mut sum = 0u64;
            while let Some(b) = rx.recv().await {
                let p: Payload = serde_json::from_slice(&b).expect("valid json");
                sum += p.id;
            }
            assert_eq!(sum, n * (n - 1) / 2);
        },
    )
}

fn mpsc_raw(n: u64, body: Bytes) -> Duration {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    two_threads(
        async move {
            for _ in 0..n {
                tx.send(body.clone()).expect("receiver alive");
            }
        },
        async move {
            let mut count = 0u64;
            while let Some(b) = rx.recv().await {
                count += u64::from(!b.is_empty());
            }
            assert_eq!(count, n);
        },
    )
}

/// Publish and consume-with-ack at once. `batch` > 1 publishes in batches; `raw` publishes
/// those bytes with no serializer and consumes without decoding.
fn kombu_end_to_end(n: u64, batch: usize, raw: Option<Bytes>) -> kombu::Result<Duration> {
    let (conn, mut consumer) = runtime().block_on(async {
        let conn = Connection::open(&format!("memory://bench-{}", unique())).await?;
        let queue = Queue::new("bench");
        conn.declare_queue(&queue).await?;
        let consumer = conn.consumer([queue]).prefetch(1000).build().await?;
        Ok::<_, kombu::Error>((conn, consumer))
    })?;
    let producer = conn.producer().routing_key("bench");
    let typed = raw.is_none();
    Ok(two_threads(
        async move {
            let base = payload(0);
            let published = match raw {
                Some(body) => {
                    let mut result = Ok(());
                    for _ in 0..n {
                        result = producer
                            .publish_bytes(body.clone(), "application/json", "utf-8")
                            .await;
                        if result.is_err() {
                            break;
                        }
                    }
                    result
                }
                None if batch <= 1 => {
                    let mut result = Ok(());
                    for i in 0..n {
                        result = producer
                            .publish(&Payload {
                                id: i,
                                payload: base.payload.clone(),
                            })
                            .await;
                        if result.is_err() {
                            break;
                        }
                    }
                    result
                }
                None => {
                    let mut i = 0;
                    let mut result = Ok(());
                    while i < n && result.is_ok() {
                        let end = (i + batch as u64).min(n);
                        let chunk: Vec<Payload> = (i..end)
                            .map(|id| Payload {
                                id,
                                payload: base.payload.clone(),
                            })
                            .collect();
                        result = producer.publish_batch(chunk.iter()).await;
                        i = end;
                    }
                    result
                }
            };
            published.expect("publish");
        },
        async move {
            for _ in 0..n {
                let d = consumer
                    .next()
                    .await
                    .expect("stream open")
                    .expect("delivery");
                if typed {
                    let p: Payload = d.decode().expect("decodes");
                    std::hint::black_box(p.id);
                }
                d.ack().await.expect("ack");
            }
        },
    ))
}

/// Publish everything, then consume everything with ack, in one task.
async fn kombu_phases(n: u64, batch: usize) -> kombu::Result<(Duration, Duration)> {
    let conn = Connection::open(&format!("memory://bench-{}", unique())).await?;
    let queue = Queue::new("bench");
    conn.declare_queue(&queue).await?;
    let producer = conn.producer().routing_key("bench");
    let base = payload(0);
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        let end = (i + batch as u64).min(n);
        let chunk: Vec<Payload> = (i..end)
            .map(|id| Payload {
                id,
                payload: base.payload.clone(),
            })
            .collect();
        producer.publish_batch(chunk.iter()).await?;
        i = end;
    }
    let publish = start.elapsed();
    assert_eq!(conn.queue_size("bench").await?, n);
    let mut consumer = conn.consumer([queue]).prefetch(1000).build().await?;
    let start = Instant::now();
    for _ in 0..n {
        let d = consumer
            .next()
            .await
            .expect("stream open")
            .expect("delivery");
        let p: Payload = d.decode()?;
        std::hint::black_box(p.id);
        d.ack().await?;
    }
    Ok((publish, start.elapsed()))
}

/// One message in flight: publish, receive, decode, ack, in one task.
async fn kombu_latency(n: u64) -> kombu::Result<Histogram<u64>> {
    let conn = Connection::open(&format!("memory://bench-{}", unique())).await?;
    let queue = Queue::new("lat");
    let mut consumer = conn.consumer([queue]).build().await?;
    let producer = conn.producer().routing_key("lat");
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    for i in 0..n {
        let t = Instant::now();
        producer.publish(&payload(i)).await?;
        let d = consumer
            .next()
            .await
            .expect("stream open")
            .expect("delivery");
        let p: Payload = d.decode()?;
        std::hint::black_box(p.id);
        d.ack().await?;
        hist.record(t.elapsed().as_nanos() as u64).expect("records");
    }
    Ok(hist)
}

/// The same shape with mpsc: send, receive, decode, in one task.
async fn mpsc_latency(n: u64) -> Histogram<u64> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    for i in 0..n {
        let t = Instant::now();
        tx.send(Bytes::from(serde_json::to_vec(&payload(i)).expect("json")))
            .expect("alive");
        let b = rx.recv().await.expect("message");
        let p: Payload = serde_json::from_slice(&b).expect("json");
        std::hint::black_box(p.id);
        hist.record(t.elapsed().as_nanos() as u64).expect("records");
    }
    hist
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Records one side of a row (the benches' `support::record`: bench, row, side, unit, the
/// rounds' figures).
pub type Record = fn(&str, &str, &str, &str, &[f64]);

/// Runs every measure `ROUNDS` times, alternating ours and the ceiling so that a noisy
/// neighbour hurts both alike, and prints the medians; `allocator` names the global allocator;
/// each row goes to `record` too.
pub fn run(allocator: &str, record: Record) -> kombu::Result<()> {
    const ROUNDS: usize = 3;
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let raw_body = Bytes::from(serde_json::to_vec(&payload(123_456)).expect("json"));
    println!(
        "memory transport, {n} messages of {} bytes, producer and consumer on 2 threads, \
         {allocator} allocator, median of {ROUNDS} rounds",
        raw_body.len()
    );
    // Warm up allocators and code paths.
    kombu_end_to_end(n / 10 + 1, 1, None)?;
    mpsc_typed(n / 10 + 1);

    let lat_n = (n / 20).clamp(1_000, 50_000);
    let names = [
        "typed publish+consume+ack (publish one by one)",
        "typed publish+consume+ack (publish batches of 100)",
        "raw bytes publish+consume+ack",
        "phase: publish only (batches of 100, one task)",
        "phase: consume+decode+ack only (one task)",
        "latency p50, one in flight (µs)",
        "latency p99, one in flight (µs)",
    ];
    let mut ours: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut ceil: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let rt = runtime();
    for _ in 0..ROUNDS {
        let typed_ceiling = rate(n, mpsc_typed(n));
        ceil[0].push(typed_ceiling);
        ceil[1].push(typed_ceiling);
        ours[0].push(rate(n, kombu_end_to_end(n, 1, None)?));
        ours[1].push(rate(n, kombu_end_to_end(n, 100, None)?));
        ceil[2].push(rate(n, mpsc_raw(n, raw_body.clone())));
        ours[2].push(rate(n, kombu_end_to_end(n, 1, Some(raw_body.clone()))?));
        let (publish, consume) = rt.block_on(kombu_phases(n, 100))?;
        ours[3].push(rate(n, publish));
        ours[4].push(rate(n, consume));
        let lat_ours = rt.block_on(kombu_latency(lat_n))?;
        let lat_ceil = rt.block_on(mpsc_latency(lat_n));
        for (i, q) in [(5, 0.5), (6, 0.99)] {
            ours[i].push(lat_ours.value_at_quantile(q) as f64 / 1000.0);
            ceil[i].push(lat_ceil.value_at_quantile(q) as f64 / 1000.0);
        }
    }
    println!();
    println!(
        "| {:<52} | {:>12} | {:>12} | {:>16} |",
        "measure", "kombu-rs", "bare mpsc", "kombu-rs / mpsc"
    );
    println!("|{:-<54}|{:->14}|{:->14}|{:->18}|", "", "", "", "");
    for (i, name) in names.iter().enumerate() {
        let latency = i >= 5;
        let fmt = |v: f64| {
            if latency {
                format!("{v:.2}")
            } else {
                format!("{v:.0}")
            }
        };
        let bench = match allocator {
            "mimalloc" => "memory",
            _ => "memory_system_alloc",
        };
        let unit = if latency { "µs" } else { "msg/s" };
        record(bench, name, "ours", unit, &ours[i]);
        record(bench, name, "raw", unit, &ceil[i]);
        let o = median(ours[i].clone());
        let (c, ratio) = if ceil[i].is_empty() {
            ("-".to_owned(), "-".to_owned())
        } else {
            let c = median(ceil[i].clone());
            (fmt(c), format!("{:.2}", o / c))
        };
        println!("| {name:<52} | {:>12} | {c:>12} | {ratio:>16} |", fmt(o));
    }
    println!(
        "\nthroughput in msg/s (ratio < 1: slower than the bare channel); latency in µs \
         (ratio > 1: slower)."
    );
    Ok(())
}
