//! Publish→deliver latency under a steady load, on every transport: a producer publishes one
//! message after another on a fixed schedule, at half the maximum rate kombu-rs reached on that
//! transport in the same run (the median of three runs), while a consumer (prefetch 100)
//! decodes and acks each; a message's latency runs from the time the schedule gave it, or
//! from when it was sent if that was earlier (tokio's timer sends up to 1 ms early), to its
//! decoding: a producer that falls behind shows as latency, and how far behind it ended is
//! recorded too. p50, p99 and p999 over three
//! alternating rounds, each figure their median. On Redis and RabbitMQ the raw client is
//! measured at the same load: the redis crate (`LPUSH`; a consumer taking what is there with
//! `RPOP key 100` and blocking in `BRPOP` only when nothing is, a bare client's fastest way:
//! no unacked bookkeeping, so a floor) and bare lapin (publish with confirms, basic.consume
//! with prefetch 100 and an ack each).
//!
//! ```text
//! cargo bench --bench latency              # 5 s of load per round and transport
//! cargo bench --bench latency -- 2         # seconds of load
//! ```
//!
//! Servers as the other benchmarks take them: `KOMBU_BENCH_REDIS_URL`, `KOMBU_BENCH_AMQP_URL`,
//! `KOMBU_BENCH_MONGODB_URL` (a transport whose server does not answer is left out, and says
//! so). `KOMBU_BENCH_BODY` sets the body size.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use hdrhistogram::Histogram;
use kombu::{Connection, Queue};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Payload {
    id: u64,
    payload: String,
}

/// Latency quantiles of one round, and how far behind its schedule the producer ended, µs.
#[derive(Clone, Copy, Default)]
struct Quantiles {
    p50: f64,
    p99: f64,
    p999: f64,
    lag: f64,
}

/// One round's timing: message `i` is due `i / rate` seconds after `start`, and when each was
/// sent is kept (ns after `start`).
#[derive(Clone)]
struct Timing {
    start: Instant,
    rate: f64,
    sent: Arc<Vec<AtomicU64>>,
}

impl Timing {
    fn new(rate: f64, n: u64) -> Timing {
        Timing {
            start: Instant::now(),
            rate,
            sent: Arc::new((0..n).map(|_| AtomicU64::new(0)).collect()),
        }
    }

    fn due(&self, i: u64) -> Instant {
        self.start + Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// Waits for message `i`'s time unless it has come, and notes when it goes. tokio's timer
    /// counts milliseconds, so what falls due within one goes out at once, up to 1 ms early.
    async fn turn(&self, i: u64) {
        let due = self.due(i);
        if due > Instant::now() + Duration::from_millis(1) {
            tokio::time::sleep_until(due.into()).await;
        }
        if let Some(slot) = self.sent.get(i as usize) {
            slot.store(self.start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
    }

    /// Message `id`'s latency now: from when it was due, or from when it was sent if that
    /// was earlier (a message sent before its time is not credited the difference; one sent
    /// late still counts the producer's delay).
    fn latency(&self, id: u64) -> Duration {
        let sent = self.sent.get(id as usize).map_or(self.start, |s| {
            self.start + Duration::from_nanos(s.load(Ordering::Relaxed))
        });
        Instant::now().saturating_duration_since(self.due(id).min(sent))
    }

    /// How far behind its schedule the last message went out, µs (0 if on time).
    fn lag(&self) -> f64 {
        let last = self.sent.len().saturating_sub(1) as u64;
        let sent = self.start
            + Duration::from_nanos(self.sent.last().map_or(0, |s| s.load(Ordering::Relaxed)));
        sent.saturating_duration_since(self.due(last)).as_secs_f64() * 1e6
    }
}

/// A histogram of latencies (ns) taken against the schedule.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("histogram bounds")
}

fn quantiles(hist: &Histogram<u64>, timing: &Timing) -> Quantiles {
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1e3;
    Quantiles {
        p50: us(0.5),
        p99: us(0.99),
        p999: us(0.999),
        lag: timing.lag(),
    }
}

/// Message `id`: made as it is sent (a run of large bodies would not fit in memory ahead).
fn message(id: u64, payload: &str) -> Payload {
    Payload {
        id,
        payload: payload.to_owned(),
    }
}

/// The most messages a round sends.
const MOST: u64 = 1_000_000;

/// A transport as kombu-rs opens it for one run: a URL with a fresh name space each time
/// (a key prefix, a file, a database).
struct Target {
    name: &'static str,
    url: Box<dyn Fn() -> String>,
}

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn redis_server() -> String {
    std::env::var("KOMBU_BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

fn targets() -> Vec<Target> {
    let redis = redis_server();
    let amqp = amqp_url();
    let mongodb = std::env::var("KOMBU_BENCH_MONGODB_URL")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27018".into());
    vec![
        Target {
            name: "memory",
            url: Box::new(|| "memory://".into()),
        },
        Target {
            name: "sqlite",
            url: Box::new(|| {
                let path = std::env::temp_dir().join(format!("kombu-latency-{}.db", unique()));
                format!("sqlite://{}", path.display())
            }),
        },
        Target {
            name: "redis",
            url: Box::new(move || format!("{redis}?global_keyprefix=latency-{}:", unique())),
        },
        Target {
            name: "amqp",
            url: Box::new(move || amqp.clone()),
        },
        Target {
            name: "mongodb",
            url: Box::new(move || {
                let base = mongodb.trim_end_matches('/');
                format!("{base}/latency_{}", unique())
            }),
        },
    ]
}

fn amqp_url() -> String {
    std::env::var("KOMBU_BENCH_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Removes what a run left: the SQLite file, the MongoDB database.
async fn clean_up(url: &str) {
    if let Some(path) = url.strip_prefix("sqlite://") {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{path}{suffix}"));
        }
    }
    if url.starts_with("mongodb://")
        && let Ok(client) = mongodb::Client::with_uri_str(url).await
        && let Some(db) = client.default_database()
    {
        let _ = db.drop().await;
    }
}

/// kombu-rs: `n` messages published one by one at `rate` (as fast as they go without one)
/// while a consumer takes them; the rate reached and the latencies.
async fn ours(url: &str, n: u64, rate: Option<f64>) -> (f64, Quantiles) {
    let conn = Connection::open(url).await.expect("open");
    let queue = format!("latency_{}", unique());
    let q = Queue::new(queue.as_str());
    conn.declare_queue(&q).await.expect("declare");
    let mut consumer = conn
        .consumer([q.clone()])
        .prefetch(100)
        .build()
        .await
        .expect("consumer");
    let producer = conn.producer().routing_key(queue.as_str());
    let payload = support::payload_text();
    let start = Instant::now();
    let timing = rate.map(|rate| Timing::new(rate, n));
    let turns = timing.clone();
    let publishing = tokio::spawn(async move {
        for i in 0..n {
            if let Some(t) = &turns {
                t.turn(i).await;
            }
            producer
                .publish(&message(i, &payload))
                .await
                .expect("publish");
        }
    });
    let mut hist = histogram();
    for _ in 0..n {
        let d = consumer.next().await.expect("message").expect("delivery");
        let p: Payload = d.decode().expect("decode");
        if let Some(t) = &timing {
            hist.saturating_record(t.latency(p.id).as_nanos() as u64);
        }
        d.ack().await.expect("ack");
    }
    let rate = support::rate(n, start.elapsed());
    publishing.await.expect("publisher");
    consumer.close().await.expect("close");
    conn.delete_queue(&queue).await.expect("delete");
    conn.close().await.expect("close");
    clean_up(url).await;
    let quantiles = timing.map_or_else(Quantiles::default, |t| quantiles(&hist, &t));
    (rate, quantiles)
}

/// The redis crate at the same load: `LPUSH` each message (an 8-byte id and padding to
/// `envelope` bytes); a consumer on a connection of its own.
async fn raw_redis(n: u64, envelope: usize, rate: f64) -> Quantiles {
    use redis::AsyncCommands as _;
    let client = redis::Client::open(redis_server()).expect("client");
    let mut push = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let mut pop = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let key = format!("latency-raw-{}", unique());
    let timing = Timing::new(rate, n);
    let (turns, push_key) = (timing.clone(), key.clone());
    let publishing = tokio::spawn(async move {
        let mut body = vec![b'x'; envelope.max(8)];
        for i in 0..n {
            turns.turn(i).await;
            body[..8].copy_from_slice(&i.to_le_bytes());
            let _: i64 = push.lpush(&push_key, &body).await.expect("lpush");
        }
    });
    let mut hist = histogram();
    let mut got = 0;
    while got < n {
        // What is there, up to 100 at a time; a blocking wait only when nothing is.
        let mut bodies: Vec<Vec<u8>> = redis::cmd("RPOP")
            .arg(&key)
            .arg(100)
            .query_async(&mut pop)
            .await
            .expect("rpop");
        if bodies.is_empty() {
            let popped: Option<(String, Vec<u8>)> = pop.brpop(&key, 5.0).await.expect("brpop");
            let Some((_, body)) = popped else {
                panic!("raw redis: nothing for 5 s after {got} of {n}");
            };
            bodies.push(body);
        }
        for body in &bodies {
            let id = u64::from_le_bytes(body[..8].try_into().expect("eight bytes"));
            hist.saturating_record(timing.latency(id).as_nanos() as u64);
        }
        got += bodies.len() as u64;
    }
    publishing.await.expect("publisher");
    let _: i64 = push_del(&client, &key).await;
    quantiles(&hist, &timing)
}

async fn push_del(client: &redis::Client, key: &str) -> i64 {
    use redis::AsyncCommands as _;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    conn.del(key).await.expect("del")
}

/// Bare lapin at the same load: each message published with its confirm awaited (as
/// kombu-rs's default), consumed with prefetch 100 and acked.
async fn raw_amqp(n: u64, rate: f64) -> Quantiles {
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::FieldTable;
    let conn = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
        .await
        .expect("connect");
    let queue = format!("latency-raw-{}", unique());
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::durable(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let cch = conn.create_channel().await.expect("channel");
    cch.basic_qos(100, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = cch
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let payload = support::payload_text();
    let timing = Timing::new(rate, n);
    let (turns, pch, routing) = (timing.clone(), ch.clone(), queue.clone());
    let publishing = tokio::spawn(async move {
        let properties = lapin::BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        for i in 0..n {
            turns.turn(i).await;
            let body = serde_json::to_vec(&message(i, &payload)).expect("encode");
            let confirm = pch
                .basic_publish(
                    "".into(),
                    routing.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties.clone(),
                )
                .await
                .expect("publish")
                .await
                .expect("confirm");
            assert!(confirm.is_ack());
        }
    });
    let mut hist = histogram();
    for _ in 0..n {
        let d = consumer.next().await.expect("message").expect("delivery");
        let p: Payload = serde_json::from_slice(&d.data).expect("decode");
        hist.saturating_record(timing.latency(p.id).as_nanos() as u64);
        d.acker.ack(BasicAckOptions::default()).await.expect("ack");
    }
    publishing.await.expect("publisher");
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete");
    conn.close(200, "OK".into()).await.expect("close");
    quantiles(&hist, &timing)
}

/// Whether kombu-rs can open `url` within a few seconds.
async fn reachable(url: &str) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(5), Connection::open(url)).await,
        Ok(Ok(_))
    )
}

fn main() {
    kombu::install();
    let seconds = support::messages(5) as f64;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "latency: publish→deliver at half of kombu-rs's maximum rate, {seconds} s of load a round, median of 3 rounds; {} bytes of JSON a body",
        support::body_size()
    );
    println!();
    println!("| transport | load | side | p50 | p99 | p999 | producer behind at the end |");
    println!("|---|---:|---|---:|---:|---:|---:|");
    for target in targets() {
        let probe = (target.url)();
        if !rt.block_on(reachable(&probe)) {
            println!(
                "| {} | – | not reachable: left out | – | – | – | – |",
                target.name
            );
            rt.block_on(clean_up(&probe));
            continue;
        }
        rt.block_on(clean_up(&probe));
        // The maximum: the median of three runs of as many messages as about a second takes,
        // as fast as they go (one run would catch this machine in a fast or a slow moment).
        let warm = rt.block_on(ours(&(target.url)(), 2_000, None)).0;
        let probe_n = (warm as u64).clamp(1_000, 1_000_000);
        let probes: Vec<f64> = (0..3)
            .map(|_| rt.block_on(ours(&(target.url)(), probe_n, None)).0)
            .collect();
        let rate = support::median(&probes, |v| *v) / 2.0;
        let n = ((rate * seconds) as u64).clamp(100, MOST);
        let raw_side = matches!(target.name, "redis" | "amqp");
        let envelope = match target.name {
            "redis" => rt.block_on(support::redis_envelope_len(&redis_server())),
            _ => 0,
        };
        let mut ours_rounds = Vec::new();
        let mut raw_rounds = Vec::new();
        for _ in 0..3 {
            ours_rounds.push(rt.block_on(ours(&(target.url)(), n, Some(rate))).1);
            match target.name {
                "redis" => raw_rounds.push(rt.block_on(raw_redis(n, envelope, rate))),
                "amqp" => raw_rounds.push(rt.block_on(raw_amqp(n, rate))),
                _ => {}
            }
        }
        support::record(
            "latency",
            &format!("{}: steady load (half kombu-rs's maximum)", target.name),
            "ours",
            "msg/s",
            &[rate],
        );
        let sides: &[(&str, &[Quantiles])] = if raw_side {
            &[("ours", &ours_rounds), ("raw", &raw_rounds)]
        } else {
            &[("ours", &ours_rounds)]
        };
        for (side, rounds) in sides {
            let pick = |f: fn(&Quantiles) -> f64| support::median(rounds, f);
            for (q, f) in [
                ("p50", (|q: &Quantiles| q.p50) as fn(&Quantiles) -> f64),
                ("p99", |q| q.p99),
                ("p999", |q| q.p999),
            ] {
                let row = format!("{}: publish→deliver {q} at half the maximum", target.name);
                let figures: Vec<f64> = rounds.iter().map(f).collect();
                support::record("latency", &row, side, "µs", &figures);
            }
            // A producer that could not keep the schedule: the load was more than the
            // machine took at that moment, and the latencies say so.
            let lags: Vec<f64> = rounds.iter().map(|q| q.lag).collect();
            let row = format!(
                "{}: the producer behind its schedule at the end",
                target.name
            );
            support::record("latency", &row, side, "µs", &lags);
            println!(
                "| {} | {} msg/s | {} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs |",
                target.name,
                support::grouped(rate),
                if *side == "ours" { "kombu-rs" } else { "raw" },
                pick(|q| q.p50),
                pick(|q| q.p99),
                pick(|q| q.p999),
                pick(|q| q.lag)
            );
        }
    }
}
