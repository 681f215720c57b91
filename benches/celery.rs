//! `Celery::send_task` against Celery's own `send_task` from Python (`benches/python/
//! celery_send_task.py`) on the same Redis, in the same run: N calls of `tasks.add(i, i)` to
//! one queue, medians of 3 rounds on each side. Rows: one sender awaiting each call (as
//! Python's loop), 16 senders at once (as a service's tasks send), and a raw `LPUSH` loop, the
//! round-trip limit of one awaited call; the one-sender and raw rows again on a current-thread
//! runtime (no thread hop per call). Target (issue "Celery from Rust"): 10× Celery's rate.
//!
//! ```text
//! cargo bench --bench celery              # 5,000 calls
//! cargo bench --bench celery -- 20000
//! ```
//!
//! Redis is `$KOMBU_BENCH_REDIS_URL` (default `redis://127.0.0.1:6379/0`), under a fresh key
//! prefix per side and round (deleted after).

mod support;

use std::time::{Duration, Instant};

use kombu::Connection;
use kombu::celery::{Celery, TaskOptions};

const ROUNDS: usize = 3;

fn server() -> String {
    std::env::var("KOMBU_BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// One round of ours: `n` sends from `senders` tasks at once (each awaiting its own sends),
/// timed after a first one (connection, declaration).
async fn ours(n: u64, senders: u64) -> kombu::Result<Duration> {
    let prefix = format!("bench-celery-rs-{}:", uuid::Uuid::new_v4().simple());
    let conn = Connection::open(&format!("{}?global_keyprefix={prefix}", server())).await?;
    let celery = Celery::new(&conn);
    let options = || TaskOptions::new().queue("bench-celery");
    celery.send_task("tasks.add", (0, 0), (), options()).await?;
    let start = Instant::now();
    let per = n / senders;
    let sending = (0..senders).map(|s| {
        let celery = &celery;
        async move {
            for i in s * per..(s + 1) * per {
                celery.send_task("tasks.add", (i, i), (), options()).await?;
            }
            Ok::<(), kombu::Error>(())
        }
    });
    for sent in futures::future::join_all(sending).await {
        sent?;
    }
    let took = start.elapsed();
    conn.delete_queue("bench-celery").await?;
    Ok(took)
}

/// The round-trip limit: `n` awaited `LPUSH`es of a 600-byte value on one connection.
async fn raw(n: u64) -> Result<Duration, redis::RedisError> {
    let client = redis::Client::open(server())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let key = format!("bench-celery-raw-{}", uuid::Uuid::new_v4().simple());
    let value = "x".repeat(600);
    let start = Instant::now();
    for _ in 0..n {
        let _: i64 = redis::cmd("LPUSH")
            .arg(&key)
            .arg(&value)
            .query_async(&mut conn)
            .await?;
    }
    let took = start.elapsed();
    let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut conn).await?;
    Ok(took)
}

/// The median rate of [`ROUNDS`] rounds of `round`.
fn median<E: std::fmt::Display>(
    rt: &tokio::runtime::Runtime,
    n: u64,
    mut round: impl FnMut() -> std::pin::Pin<Box<dyn Future<Output = Result<Duration, E>>>>,
) -> Option<f64> {
    let mut rates: Vec<f64> = (0..ROUNDS)
        .filter_map(|_| match rt.block_on(round()) {
            Ok(took) => Some(support::rate(n, took)),
            Err(e) => {
                eprintln!("a round failed: {e}");
                None
            }
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates.get(rates.len() / 2).copied()
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let Some(rust) = median(&rt, n, || Box::pin(ours(n, 1))) else {
        eprintln!("no round of ours finished");
        return;
    };
    let concurrent = median(&rt, n, || Box::pin(ours(n, 16)));
    let limit = median(&rt, n, || Box::pin(raw(n)));
    // On a current-thread runtime no call crosses threads (the connection's task and the
    // caller share one): the lowest round trip, for ours and the raw client alike.
    let local = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let rust_local = median(&local, n, || Box::pin(ours(n, 1)));
    let limit_local = median(&local, n, || Box::pin(raw(n)));
    let prefix = format!("bench-celery-py-{}:", uuid::Uuid::new_v4().simple());
    let python = support::python_script(
        "celery_send_task.py",
        &[&server(), &prefix, &n.to_string()],
        "rate",
    );
    let ratio = |v: f64| python.map_or(String::new(), |py| format!("{:.1}×", v / py));
    println!("send_task on Redis, {n} calls, medians of {ROUNDS}");
    println!("| side | calls/s | / Celery |");
    println!("|---|---:|---:|");
    println!(
        "| kombu-celery, one sender, each awaited | {} | {} |",
        support::grouped(rust),
        ratio(rust)
    );
    if let Some(c) = concurrent {
        println!(
            "| kombu-celery, 16 senders at once | {} | {} |",
            support::grouped(c),
            ratio(c)
        );
    }
    if let Some(l) = limit {
        println!(
            "| raw LPUSH, each awaited (the round-trip limit) | {} | {} |",
            support::grouped(l),
            ratio(l)
        );
    }
    if let (Some(r), Some(l)) = (rust_local, limit_local) {
        println!(
            "| kombu-celery, one sender, current-thread runtime | {} | {} |",
            support::grouped(r),
            ratio(r)
        );
        println!(
            "| raw LPUSH, current-thread runtime | {} | {} |",
            support::grouped(l),
            ratio(l)
        );
    }
    match python {
        Some(py) => println!("| Celery 5.7 (Python) | {} | 1.0× |", support::grouped(py)),
        None => println!("| Celery 5.7 (Python) | (no Python) | |"),
    }
}
