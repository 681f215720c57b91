//! SQLite transport throughput against Python kombu's `sqla+sqlite` transport, measured in the
//! same run on the same machine (`../shared/bench/kombu_baseline.py`, run with the venv that
//! `scripts/python-env` makes).
//!
//! ```text
//! cargo bench --bench sqlite                 # 20,000 messages per row
//! cargo bench --bench sqlite -- 5000         # fewer
//! ```
//!
//! Messages are kombu's benchmark body, `{"id": N, "payload": "x" * 64}` as JSON
//! (`KOMBU_BENCH_BODY` sets another size), published to a direct exchange `bench_ex` bound to
//! `bench_q` with key `bench` (as the Python baseline does), into a fresh database file in the
//! temp directory; three rounds, each figure their median. Rows:
//! - publish, one by one: `producer.publish(&value)` per message, each its own transaction.
//! - publish, batches of 100: `producer.publish_batch`, one transaction per batch.
//! - consume with ack, prefetch 100: one consumer decodes and acks every message.
//! - consume with ack, prefetch 1: the same, one message in flight.
//!
//! Python kombu publishes one by one and consumes with prefetch 100 (its only modes).

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kombu::{Connection, Exchange, Queue, StreamExt};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Payload {
    id: u64,
    payload: String,
}

fn db_url(tag: &str) -> (String, PathBuf) {
    let path = std::env::temp_dir().join(format!("kombu-rs-bench-{tag}-{}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    (format!("sqlite://{}", path.display()), path)
}

fn cleanup(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

async fn publish(conn: &Connection, n: u64, batch: usize) -> Duration {
    let x = Exchange::direct("bench_ex");
    let q = Queue::new("bench_q")
        .exchange(x.clone())
        .routing_key("bench");
    conn.declare_queue(&q).await.expect("declare");
    let producer = conn.producer().exchange(x).routing_key("bench");
    let values: Vec<Payload> = (0..n)
        .map(|id| Payload {
            id,
            payload: support::payload_text(),
        })
        .collect();
    let start = Instant::now();
    if batch <= 1 {
        for v in &values {
            producer.publish(v).await.expect("publish");
        }
    } else {
        for chunk in values.chunks(batch) {
            producer.publish_batch(chunk).await.expect("publish batch");
        }
    }
    let elapsed = start.elapsed();
    assert_eq!(conn.queue_size("bench_q").await.expect("size"), n);
    elapsed
}

async fn consume(conn: &Connection, n: u64, prefetch: u16) -> Duration {
    let q = Queue::new("bench_q")
        .exchange(Exchange::direct("bench_ex"))
        .routing_key("bench");
    let mut consumer = conn
        .consumer([q])
        .prefetch(prefetch)
        .build()
        .await
        .expect("consumer");
    let mut seen = vec![false; usize::try_from(n).expect("n")];
    let start = Instant::now();
    for _ in 0..n {
        let delivery = consumer.next().await.expect("a message").expect("delivery");
        let value: Payload = delivery.decode().expect("decode");
        let slot = &mut seen[usize::try_from(value.id).expect("id")];
        assert!(!*slot, "duplicate {}", value.id);
        *slot = true;
        delivery.ack().await.expect("ack");
    }
    start.elapsed()
}

/// Rounds: each a fresh pair of database files.
const ROUNDS: usize = 3;

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    // Messages a second per row, round by round: publish one by one, publish in batches,
    // consume with prefetch 100, consume with prefetch 1.
    let rounds: Vec<[f64; 4]> = (0..ROUNDS)
        .map(|_| {
            rt.block_on(async {
                let (url, path) = db_url("single");
                let conn = Connection::open(&url).await.expect("open");
                let single_pub = publish(&conn, n, 1).await;
                let consume_100 = consume(&conn, n, 100).await;
                drop(conn);
                cleanup(&path);

                let (url, path) = db_url("batch");
                let conn = Connection::open(&url).await.expect("open");
                let batch_pub = publish(&conn, n, 100).await;
                let consume_1 = consume(&conn, n, 1).await;
                drop(conn);
                cleanup(&path);
                [single_pub, batch_pub, consume_100, consume_1].map(|d| support::rate(n, d))
            })
        })
        .collect();

    // Python kombu: 2,000 messages are plenty for its rate (its own default for sqlite).
    let py_file = std::env::temp_dir().join(format!("kombu-bench-py-{}.db", std::process::id()));
    let python = support::python_rates(
        "sqlite",
        &format!("sqla+sqlite:///{}", py_file.display()),
        n.min(2_000),
        &[],
    );

    println!(
        "sqlite: {n} messages of a {}-byte body (JSON) per row, median of {ROUNDS} rounds; Python kombu sqla+sqlite in the same run",
        support::body_size()
    );
    println!();
    println!("| row | kombu-rs msg/s | Python kombu msg/s | kombu-rs / Python |");
    println!("|---|---:|---:|---:|");
    let row = |name: &str, at: usize, theirs: Option<f64>| {
        let figures: Vec<f64> = rounds.iter().map(|r| r[at]).collect();
        support::record("sqlite", name, "ours", "msg/s", &figures);
        if let Some(theirs) = theirs {
            support::record("sqlite", name, "python", "msg/s", &[theirs]);
        }
        let ours = support::median(&figures, |v| *v);
        let (t, r) = match theirs {
            Some(t) => (support::grouped(t), format!("{:.1}×", ours / t)),
            None => ("–".to_owned(), "–".to_owned()),
        };
        println!("| {name} | {} | {t} | {r} |", support::grouped(ours));
    };
    row("publish, one by one", 0, python.map(|p| p.0));
    row("publish, batches of 100", 1, python.map(|p| p.0));
    row("consume + ack, prefetch 100", 2, python.map(|p| p.1));
    row("consume + ack, prefetch 1", 3, python.map(|p| p.1));
}
