//! Publish→deliver latency under a steady load, on every transport: a producer publishes one
//! message after another on a fixed schedule, at half the maximum rate kombu-rs reached on that
//! transport in the same run, while a consumer (prefetch 100) decodes and acks each; a
//! message's latency runs from the time the schedule gave it (not from when it was sent, so a
//! producer that falls behind shows as latency) to its decoding. p50, p99 and p999 over three
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

/// Latency quantiles of one round, µs.
#[derive(Clone, Copy, Default)]
struct Quantiles {
    p50: f64,
    p99: f64,
    p999: f64,
}

/// The schedule: message `i` is due `i / rate` seconds after `start`.
#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    rate: f64,
}

impl Schedule {
    fn due(&self, i: u64) -> Instant {
        self.start + Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// Waits for message `i`'s time unless it has come (tokio's timer counts milliseconds:
    /// what falls due within one goes out at once).
    async fn wait(&self, i: u64) {
        let due = self.due(i);
        if due > Instant::now() + Duration::from_millis(1) {
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

/// A histogram of latencies (ns) taken against the schedule.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("histogram bounds")
}

fn quantiles(hist: &Histogram<u64>) -> Quantiles {
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1e3;
    Quantiles {
        p50: us(0.5),
        p99: us(0.99),
        p999: us(0.999),
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

/// kombu-rs: `n` messages published one by one on `schedule` (as fast as possible without
/// one) while a consumer takes them; the rate reached and the latencies.
async fn ours(url: &str, n: u64, schedule: Option<Schedule>) -> (f64, Quantiles) {
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
    let schedule = schedule.map(|s| Schedule { start, ..s });
    let publishing = tokio::spawn(async move {
        for i in 0..n {
            if let Some(s) = &schedule {
                s.wait(i).await;
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
        if let Some(s) = &schedule {
            let late = Instant::now().saturating_duration_since(s.due(p.id));
            hist.saturating_record(late.as_nanos() as u64);
        }
        d.ack().await.expect("ack");
    }
    let rate = support::rate(n, start.elapsed());
    publishing.await.expect("publisher");
    consumer.close().await.expect("close");
    conn.delete_queue(&queue).await.expect("delete");
    conn.close().await.expect("close");
    clean_up(url).await;
    (rate, quantiles(&hist))
}

/// The redis crate at the same load: `LPUSH` each message (an 8-byte id and padding to
/// `envelope` bytes); a consumer on a connection of its own.
async fn raw_redis(n: u64, envelope: usize, schedule: Schedule) -> Quantiles {
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
    let start = Instant::now();
    let schedule = Schedule { start, ..schedule };
    let push_key = key.clone();
    let publishing = tokio::spawn(async move {
        let mut body = vec![b'x'; envelope.max(8)];
        for i in 0..n {
            schedule.wait(i).await;
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
        let now = Instant::now();
        for body in &bodies {
            let id = u64::from_le_bytes(body[..8].try_into().expect("eight bytes"));
            hist.saturating_record(
                now.saturating_duration_since(schedule.due(id)).as_nanos() as u64
            );
        }
        got += bodies.len() as u64;
    }
    publishing.await.expect("publisher");
    let _: i64 = push_del(&client, &key).await;
    quantiles(&hist)
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
async fn raw_amqp(n: u64, schedule: Schedule) -> Quantiles {
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
    let start = Instant::now();
    let schedule = Schedule { start, ..schedule };
    let (pch, routing) = (ch.clone(), queue.clone());
    let publishing = tokio::spawn(async move {
        let properties = lapin::BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        for i in 0..n {
            schedule.wait(i).await;
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
        let late = Instant::now().saturating_duration_since(schedule.due(p.id));
        hist.saturating_record(late.as_nanos() as u64);
        d.acker.ack(BasicAckOptions::default()).await.expect("ack");
    }
    publishing.await.expect("publisher");
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete");
    conn.close(200, "OK".into()).await.expect("close");
    quantiles(&hist)
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
    println!("| transport | load | side | p50 | p99 | p999 |");
    println!("|---|---:|---|---:|---:|---:|");
    for target in targets() {
        let probe = (target.url)();
        if !rt.block_on(reachable(&probe)) {
            println!(
                "| {} | – | not reachable: left out | – | – | – |",
                target.name
            );
            rt.block_on(clean_up(&probe));
            continue;
        }
        rt.block_on(clean_up(&probe));
        // The maximum: as many messages as about a second takes, as fast as they go.
        let warm = rt.block_on(ours(&(target.url)(), 2_000, None)).0;
        let probe_n = (warm as u64).clamp(1_000, 1_000_000);
        let max = rt.block_on(ours(&(target.url)(), probe_n, None)).0;
        let rate = max / 2.0;
        let n = ((rate * seconds) as u64).clamp(100, MOST);
        let schedule = Schedule {
            start: Instant::now(),
            rate,
        };
        let raw_side = matches!(target.name, "redis" | "amqp");
        let envelope = match target.name {
            "redis" => rt.block_on(support::redis_envelope_len(&redis_server())),
            _ => 0,
        };
        let mut ours_rounds = Vec::new();
        let mut raw_rounds = Vec::new();
        for _ in 0..3 {
            ours_rounds.push(rt.block_on(ours(&(target.url)(), n, Some(schedule))).1);
            match target.name {
                "redis" => raw_rounds.push(rt.block_on(raw_redis(n, envelope, schedule))),
                "amqp" => raw_rounds.push(rt.block_on(raw_amqp(n, schedule))),
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
            println!(
                "| {} | {} msg/s | {} | {:.0} µs | {:.0} µs | {:.0} µs |",
                target.name,
                support::grouped(rate),
                if *side == "ours" { "kombu-rs" } else { "raw" },
                pick(|q| q.p50),
                pick(|q| q.p99),
                pick(|q| q.p999)
            );
        }
    }
}
