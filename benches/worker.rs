//! The worker runtime's overhead on the memory transport: a worker with a no-op typed handler
//! against the raw consumer loop (`consumer.next()`, decode, `ack`) over the same messages,
//! rounds alternating (`support::alternate_rounds`, a 2-thread runtime), medians printed with
//! their ratio. Target: the worker at 0.8 of the raw loop or better.
//!
//! ```text
//! cargo bench --bench worker              # 200,000 messages
//! cargo bench --bench worker -- 50000     # fewer
//! ```
//!
//! Both sides consume a queue filled beforehand (not timed), decode each body into the same
//! struct and ack it. Rows: the worker at its default concurrency (16 handlers, prefetch 16)
//! against the raw loop with prefetch 16, and at concurrency 1 (prefetch 1) against the raw
//! loop with prefetch 1.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kombu::worker::{JobContext, Worker};
use kombu::{Connection, Queue, StreamExt};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Payload {
    id: u64,
    payload: String,
}

const ROUNDS: usize = 5;

/// A fresh memory broker with `n` messages in `jobs`.
async fn filled(n: u64) -> kombu::Result<Connection> {
    let name = uuid::Uuid::new_v4().simple().to_string();
    let conn = Connection::open(&format!("memory://bench-worker-{name}")).await?;
    conn.declare_queue(&Queue::new("jobs")).await?;
    let producer = conn.producer().routing_key("jobs");
    let payloads: Vec<Payload> = (0..n)
        .map(|id| Payload {
            id,
            payload: "x".repeat(64),
        })
        .collect();
    for chunk in payloads.chunks(1_000) {
        producer.publish_batch(chunk).await?;
    }
    Ok(conn)
}

/// The raw loop: next, decode, ack, `n` times, with `prefetch` deliveries in flight.
async fn raw(n: u64, prefetch: u16) -> kombu::Result<Duration> {
    let conn = filled(n).await?;
    let start = Instant::now();
    let mut consumer = conn
        .consumer([Queue::new("jobs")])
        .prefetch(prefetch)
        .build()
        .await?;
    for _ in 0..n {
        let Some(delivery) = consumer.next().await else {
            break;
        };
        let delivery = delivery?;
        let payload: Payload = delivery.decode()?;
        std::hint::black_box(payload.id);
        delivery.ack().await?;
    }
    let took = start.elapsed();
    consumer.close().await?;
    Ok(took)
}

/// A worker with a no-op handler until `n` are handled.
async fn worker(n: u64, concurrency: usize) -> kombu::Result<Duration> {
    let conn = filled(n).await?;
    let done = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(tokio::sync::Notify::new());
    let (d, f) = (done.clone(), finished.clone());
    let start = Instant::now();
    let worker = Worker::builder(&conn)
        .concurrency(concurrency)
        .handle("jobs", move |payload: Payload, _ctx: JobContext| {
            std::hint::black_box(payload.id);
            if d.fetch_add(1, Ordering::Relaxed) + 1 == n {
                f.notify_one();
            }
            async { Ok(()) }
        })
        .build()?;
    let handle = worker.handle();
    // In this task, as the raw loop runs in its own: same thread, same allocator caches.
    let (ran, took) = tokio::join!(worker.run(), async {
        finished.notified().await;
        let took = start.elapsed();
        handle.stop();
        took
    });
    ran?;
    Ok(took)
}

fn main() -> kombu::Result<()> {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    println!(
        "worker runtime on memory://, {n} messages (~90-byte JSON), decode + ack each, \
         2-thread runtime, median of {ROUNDS} alternating rounds"
    );
    let rates = |runs: &[kombu::Result<Duration>]| {
        support::median(runs, |r| match r {
            Ok(d) => support::rate(n, *d),
            Err(_) => 0.0,
        })
    };
    for (name, concurrency) in [
        ("worker, concurrency 16 (default)", 16),
        ("worker, concurrency 1", 1),
    ] {
        // The worker prefetches as many messages as it runs handlers: the raw loop too.
        let prefetch = u16::try_from(concurrency).unwrap_or(u16::MAX);
        let (ours, base) =
            support::alternate_rounds(ROUNDS, || worker(n, concurrency), || raw(n, prefetch));
        for run in ours.iter().chain(&base) {
            if let Err(e) = run {
                eprintln!("a round failed: {e:#}");
            }
        }
        let (o, b) = (rates(&ours), rates(&base));
        println!(
            "| {name:<34} | {:>12} msg/s | raw loop {:>12} msg/s | ratio {:.2} |",
            support::grouped(o),
            support::grouped(b),
            o / b
        );
    }
    Ok(())
}
