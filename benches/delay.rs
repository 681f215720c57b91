//! Delayed delivery precision: how late a delayed message reaches a consumer waiting for it.
//!
//! ```text
//! cargo bench --bench delay                       # every transport, 5 s at 1,000 msg/s
//! cargo bench --bench delay -- redis sqlite       # the transports named
//! KOMBU_BENCH_DELAY_SECONDS=10 cargo bench --bench delay
//! KOMBU_BENCH_MONGODB_URL=mongodb://127.0.0.1:27204 cargo bench --bench delay -- mongodb
//! ```
//!
//! For each transport: one connection publishes delayed messages at 1,000 a second for 5
//! seconds, delays spread evenly over 100 ms..1 s (a fixed pseudo-random sequence), each
//! carrying its due time (wall clock, µs) in a header; one consumer on another connection
//! receives and acks them. Lateness is receive time − due time; the table gives its p50, p99
//! and maximum, and how many arrived early (before their due time by this process's clock;
//! stores that count time by the server's clock may differ by a fraction of a millisecond).
//! Target (issue 18): p99 under 50 ms on loopback.
//!
//! A transport is a row of [`TRANSPORTS`]: its name and a function giving a fresh URL; add one
//! there. Redis is `$KOMBU_BENCH_REDIS_URL` (default `redis://127.0.0.1:6379/0`), under a fresh
//! key prefix; SQLite a fresh file in the temp directory (removed after); MongoDB a fresh
//! database (dropped after) on the server at `$KOMBU_BENCH_MONGODB_URL` (default
//! `mongodb://127.0.0.1:27018`; the row says so when none answers). AMQP is not measured here:
//! RabbitMQ's native delays count whole seconds.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kombu::{Connection, Queue, StreamExt};

/// Messages published a second.
const RATE: u64 = 1_000;
/// Shortest and longest delay, ms.
const DELAYS_MS: (u64, u64) = (100, 1_000);

/// Gives a fresh URL (queue names and keys of its own) for one run; `None` when the
/// transport's server is not there.
type FreshUrl = fn() -> Option<String>;

/// The transports measured: a name and its URLs.
const TRANSPORTS: &[(&str, FreshUrl)] = &[
    ("memory", || {
        Some(format!(
            "memory://bench-delay-{}",
            uuid::Uuid::new_v4().simple()
        ))
    }),
    ("redis", || {
        let server = std::env::var("KOMBU_BENCH_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
        Some(format!(
            "{server}?global_keyprefix=bench-delay-{}:",
            uuid::Uuid::new_v4().simple()
        ))
    }),
    ("sqlite", || {
        let file = std::env::temp_dir().join(format!(
            "kombu-rs-bench-delay-{}.db",
            uuid::Uuid::new_v4().simple()
        ));
        Some(format!("sqlite://{}", file.display()))
    }),
    ("mongodb", || {
        let server = std::env::var("KOMBU_BENCH_MONGODB_URL")
            .unwrap_or_else(|_| "mongodb://127.0.0.1:27018".to_owned());
        let server = server.trim_end_matches('/').to_owned();
        let address = server.trim_start_matches("mongodb://").parse().ok()?;
        std::net::TcpStream::connect_timeout(&address, Duration::from_millis(500)).ok()?;
        Some(format!(
            "{server}/bench_delay_{}",
            uuid::Uuid::new_v4().simple()
        ))
    }),
];

/// Removes what a run left: the SQLite file, the MongoDB database.
async fn clean_up(url: &str) {
    if let Some(path) = url.strip_prefix("sqlite://") {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{path}{suffix}"));
        }
    } else if let Some((server, database)) = url.rsplit_once('/')
        && url.starts_with("mongodb://")
        && let Ok(client) = mongodb::Client::with_uri_str(server).await
    {
        let _ = client.database(database).drop().await;
    }
}

/// Lateness of every message of one run.
struct Run {
    /// Receive time − due time, µs (negative: early).
    lateness_us: Vec<i64>,
    /// The publish rate reached.
    published_per_s: f64,
}

fn unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The delay of message `i`: spread over [`DELAYS_MS`] by a fixed scramble of `i`.
fn delay_of(i: u64) -> Duration {
    let span = DELAYS_MS.1 - DELAYS_MS.0 + 1;
    Duration::from_millis(DELAYS_MS.0 + (i.wrapping_mul(7_919) ^ (i >> 3)) % span)
}

/// Publishes `n` delayed messages at [`RATE`] on one connection to `url` while a consumer on
/// another receives them; the lateness of each.
async fn run(url: &str, n: u64) -> Run {
    let publisher = Connection::open(url).await.expect("open");
    let consumer_conn = Connection::open(url).await.expect("open");
    let queue = Queue::new("bench_delay");
    publisher.declare_queue(&queue).await.expect("declare");
    let mut consumer = consumer_conn
        .consumer([queue])
        .prefetch(100)
        .build()
        .await
        .expect("consumer");

    let receiving = tokio::spawn(async move {
        let mut lateness_us = Vec::with_capacity(n as usize);
        while (lateness_us.len() as u64) < n {
            let next = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await;
            let d = match next {
                Ok(Some(Ok(d))) => d,
                other => panic!(
                    "after {} messages: {:?}",
                    lateness_us.len(),
                    other.map(|o| o.map(|r| r.map(|_| ())))
                ),
            };
            let now = unix_us();
            let due: i64 = d
                .headers()
                .get("due_us")
                .and_then(|v| v.as_str())
                .and_then(|s| s.parse().ok())
                .expect("due_us header");
            lateness_us.push(now - due);
            d.ack().await.expect("ack");
        }
        consumer.close().await.expect("close");
        lateness_us
    });

    let producer = publisher.producer().routing_key("bench_delay");
    let start = tokio::time::Instant::now();
    let tick = Duration::from_secs(1) / RATE as u32;
    for i in 0..n {
        tokio::time::sleep_until(start + tick * i as u32).await;
        let delay = delay_of(i);
        let due = unix_us() + delay.as_micros() as i64;
        producer
            .message(&i)
            .header("due_us", due.to_string().as_str())
            .delay(delay)
            .send()
            .await
            .expect("publish delayed");
    }
    let published_per_s = support::rate(n, start.elapsed());
    let lateness_us = receiving.await.expect("consumer task");
    publisher.close().await.expect("close");
    consumer_conn.close().await.expect("close");
    Run {
        lateness_us,
        published_per_s,
    }
}

fn ms(us: i64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

fn main() {
    let seconds: u64 = std::env::var("KOMBU_BENCH_DELAY_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let n = RATE * seconds;
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "delayed delivery: {n} messages at {RATE}/s, delays {}..{} ms, one consumer; lateness = receive - due",
        DELAYS_MS.0, DELAYS_MS.1
    );
    println!();
    println!("| transport | published/s | p50 | p99 | max | early |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, url) in TRANSPORTS {
        if !wanted.is_empty() && !wanted.iter().any(|w| w == name) {
            continue;
        }
        let Some(url) = url() else {
            println!("| {name} | (no server) | | | | |");
            continue;
        };
        let started = Instant::now();
        let mut r = rt.block_on(run(&url, n));
        rt.block_on(clean_up(&url));
        r.lateness_us.sort_unstable();
        let pick = |p: f64| {
            let i = ((r.lateness_us.len() - 1) as f64 * p).round() as usize;
            r.lateness_us[i]
        };
        let early = r.lateness_us.iter().filter(|l| **l < 0).count();
        println!(
            "| {name} | {} | {} | {} | {} | {early} |",
            support::grouped(r.published_per_s),
            ms(pick(0.5)),
            ms(pick(0.99)),
            ms(*r.lateness_us.last().unwrap_or(&0)),
        );
        eprintln!("{name}: {:.1} s", started.elapsed().as_secs_f64());
    }
}
