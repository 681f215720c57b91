//! Memory transport throughput and latency, with a bare `tokio::sync::mpsc` channel doing the same
//! work in the same run as the ceiling.
//!
//! ```text
//! cargo bench --bench memory                 # 1,000,000 messages
//! cargo bench --bench memory -- 200000       # fewer
//! ```
//!
//! Messages are kombu's benchmark body, `{"id": N, "payload": "x" * 64}` as JSON (~90 bytes).
//! Rows:
//! - typed: the producer serializes a struct, the consumer deserializes it and acks. The ceiling
//!   does the same serde_json work around an unbounded mpsc channel.
//! - raw: pre-encoded bytes, no decoding (kombu: `publish_bytes`, ack). The ceiling moves the same
//!   `Bytes` through mpsc.
//! - phases: publish everything, then consume everything with ack.
//! - latency: one message in flight at a time (publish, receive, ack), p50 and p99.

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

fn payload(id: u64) -> Payload {
    Payload {
        id,
        payload: "x".repeat(64),
    }
}

struct Row {
    name: &'static str,
    ours: f64,
    ceiling: Option<f64>,
    unit: &'static str,
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

async fn mpsc_typed(n: u64) -> Duration {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let start = Instant::now();
    let consumer = tokio::spawn(async move {
        let mut sum = 0u64;
        while let Some(b) = rx.recv().await {
            let p: Payload = serde_json::from_slice(&b).expect("valid json");
            sum += p.id;
        }
        sum
    });
    let p = payload(0);
    for i in 0..n {
        let body = serde_json::to_vec(&Payload {
            id: i,
            payload: p.payload.clone(),
        })
        .expect("encodes");
        tx.send(Bytes::from(body)).expect("receiver alive");
    }
    drop(tx);
    let sum = consumer.await.expect("consumer task");
    assert_eq!(sum, n * (n - 1) / 2);
    start.elapsed()
}

async fn mpsc_raw(n: u64, body: Bytes) -> Duration {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let start = Instant::now();
    let consumer = tokio::spawn(async move {
        let mut count = 0u64;
        while let Some(b) = rx.recv().await {
            count += u64::from(!b.is_empty());
        }
        count
    });
    for _ in 0..n {
        tx.send(body.clone()).expect("receiver alive");
    }
    drop(tx);
    assert_eq!(consumer.await.expect("consumer task"), n);
    start.elapsed()
}

async fn kombu_end_to_end(n: u64, batch: usize, raw: Option<Bytes>) -> kombu::Result<Duration> {
    let conn = Connection::open(&format!("memory://bench-{}", uuid())).await?;
    let queue = Queue::new("bench");
    conn.declare_queue(&queue).await?;
    let mut consumer = conn.consumer([queue]).prefetch(1000).build().await?;
    let producer = conn.producer().routing_key("bench");
    let start = Instant::now();
    let typed = raw.is_none();
    let consume = tokio::spawn(async move {
        let mut got = 0u64;
        while got < n {
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
            got += 1;
        }
        got
    });
    let base = payload(0);
    match raw {
        Some(body) => {
            for _ in 0..n {
                producer
                    .publish_bytes(body.clone(), "application/json", "utf-8")
                    .await?;
            }
        }
        None if batch <= 1 => {
            for i in 0..n {
                producer
                    .publish(&Payload {
                        id: i,
                        payload: base.payload.clone(),
                    })
                    .await?;
            }
        }
        None => {
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
        }
    }
    assert_eq!(consume.await.expect("consumer task"), n);
    Ok(start.elapsed())
}

async fn kombu_phases(n: u64, batch: usize) -> kombu::Result<(Duration, Duration)> {
    let conn = Connection::open(&format!("memory://bench-{}", uuid())).await?;
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

async fn kombu_latency(n: u64) -> kombu::Result<Histogram<u64>> {
    let conn = Connection::open(&format!("memory://bench-{}", uuid())).await?;
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
        let elapsed = t.elapsed();
        std::hint::black_box(p.id);
        d.ack().await?;
        hist.record(elapsed.as_nanos() as u64).expect("records");
    }
    Ok(hist)
}

async fn mpsc_latency(n: u64) -> Histogram<u64> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let (back_tx, mut back_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let echo = tokio::spawn(async move {
        let mut hist = Histogram::<u64>::new(3).expect("histogram");
        let _ = &mut hist;
        while let Some(b) = rx.recv().await {
            let p: Payload = serde_json::from_slice(&b).expect("json");
            std::hint::black_box(p.id);
            if back_tx.send(()).is_err() {
                break;
            }
        }
    });
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    for i in 0..n {
        let t = Instant::now();
        tx.send(Bytes::from(serde_json::to_vec(&payload(i)).expect("json")))
            .expect("alive");
        back_rx.recv().await.expect("echo");
        hist.record(t.elapsed().as_nanos() as u64).expect("records");
    }
    drop(tx);
    echo.await.expect("echo task");
    hist
}

fn uuid() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn main() -> kombu::Result<()> {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| kombu::Error::config(format!("tokio runtime: {e}")))?;
    rt.block_on(async move {
        let raw_body = Bytes::from(serde_json::to_vec(&payload(123_456)).expect("json"));
        println!(
            "memory transport, {n} messages of {} bytes, 2 worker threads",
            raw_body.len()
        );
        let mut rows = Vec::new();

        // Warm up allocators and code paths.
        kombu_end_to_end(n / 10 + 1, 1, None).await?;
        mpsc_typed(n / 10 + 1).await;

        let ceiling = rate(n, mpsc_typed(n).await);
        rows.push(Row {
            name: "typed publish+consume+ack (publish one by one)",
            ours: rate(n, kombu_end_to_end(n, 1, None).await?),
            ceiling: Some(ceiling),
            unit: "msg/s",
        });
        rows.push(Row {
            name: "typed publish+consume+ack (publish batches of 100)",
            ours: rate(n, kombu_end_to_end(n, 100, None).await?),
            ceiling: Some(ceiling),
            unit: "msg/s",
        });
        let raw_ceiling = rate(n, mpsc_raw(n, raw_body.clone()).await);
        rows.push(Row {
            name: "raw bytes publish+consume+ack",
            ours: rate(n, kombu_end_to_end(n, 1, Some(raw_body.clone())).await?),
            ceiling: Some(raw_ceiling),
            unit: "msg/s",
        });
        let (publish, consume) = kombu_phases(n, 100).await?;
        rows.push(Row {
            name: "phase: publish only (batches of 100)",
            ours: rate(n, publish),
            ceiling: None,
            unit: "msg/s",
        });
        rows.push(Row {
            name: "phase: consume+decode+ack only",
            ours: rate(n, consume),
            ceiling: None,
            unit: "msg/s",
        });
        let lat_n = (n / 20).clamp(1_000, 50_000);
        let ours = kombu_latency(lat_n).await?;
        let theirs = mpsc_latency(lat_n).await;
        for (name, q) in [
            ("latency p50 (one in flight)", 0.5),
            ("latency p99 (one in flight)", 0.99),
        ] {
            rows.push(Row {
                name,
                ours: ours.value_at_quantile(q) as f64 / 1000.0,
                ceiling: Some(theirs.value_at_quantile(q) as f64 / 1000.0),
                unit: "µs",
            });
        }

        println!();
        println!(
            "| {:<52} | {:>14} | {:>14} | {:>9} |",
            "measure", "kombu-rs", "bare mpsc", "ratio"
        );
        println!("|{:-<54}|{:->16}|{:->16}|{:->11}|", "", "", "", "");
        for row in rows {
            let (ceiling, ratio) = match row.ceiling {
                Some(c) if row.unit == "msg/s" => {
                    (format!("{c:.0}"), format!("{:.2}x", c / row.ours))
                }
                Some(c) => (format!("{c:.1}"), format!("{:.2}x", row.ours / c)),
                None => ("-".to_owned(), "-".to_owned()),
            };
            let ours = if row.unit == "msg/s" {
                format!("{:.0}", row.ours)
            } else {
                format!("{:.1}", row.ours)
            };
            println!(
                "| {:<52} | {:>14} | {:>14} | {:>9} |  {}",
                row.name, ours, ceiling, ratio, row.unit
            );
        }
        println!("\nratio: how many times slower than the bare channel (1.00x = as fast).");
        Ok(())
    })
}
