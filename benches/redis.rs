//! Redis transport throughput against the raw `redis` crate doing the bare list work with the
//! same pipelining (the ceiling) and against Python kombu (`../shared/bench/kombu_baseline.py`),
//! in the same run, on the server at 127.0.0.1:6379 (`KOMBU_BENCH_REDIS_URL` to change).
//!
//! ```text
//! cargo bench --bench redis                  # 20,000 messages per row
//! cargo bench --bench redis -- 5000          # fewer
//! ```
//!
//! Messages are kombu's benchmark body, `{"id": N, "payload": "x" * 64}` as JSON (kombu-rs wraps
//! it in kombu's envelope, ~330 bytes on the wire); the raw rows push and pop byte strings of
//! the same size. `KOMBU_BENCH_BODY` sets another body size (bytes of JSON). Every row runs under a fresh key prefix. Rows:
//! - publish one by one: `producer.publish` / one awaited `LPUSH` per message;
//! - publish in batches of 100: `producer.publish_batch` / a pipeline of 100 `LPUSH`es;
//! - publish from 16 tasks, each one by one: clones of one producer / of one multiplexed
//!   connection, whose concurrent commands share round trips;
//! - consume with ack, prefetch 100: decode and ack every message / the same broker work as a
//!   bare client writes it: `RPOP key 100`, then one pipeline recording the 100 in kombu's
//!   `unacked` hash and `unacked_index` (`HSET` + `ZADD`), then one transaction acking them
//!   (`HDEL` + `ZREM`): three round trips a batch, where kombu-rs takes and records in one
//!   Lua script and coalesces acks, so it can pass this ceiling; and, as a floor under that,
//!   bare `RPOP key 100` round trips;
//! - latency p50/p99 with one message in flight: publish, receive, decode, ack / `LPUSH` then
//!   `RPOP`.

mod support;

use std::time::{Duration, Instant};

use kombu::{Connection, Queue, StreamExt};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Payload {
    id: u64,
    payload: String,
}

fn server() -> String {
    std::env::var("KOMBU_BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

fn prefix() -> String {
    format!("bench-{}:", uuid::Uuid::new_v4().simple())
}

struct Figures {
    publish_single: f64,
    publish_batch: f64,
    publish_tasks: f64,
    consume: f64,
    /// The raw side's bare pop (ours: the same as `consume`).
    consume_bare_pop: f64,
    /// The Redis server's CPU per message (µs) over the rows above.
    cpu_publish_single: f64,
    cpu_publish_batch: f64,
    cpu_consume: f64,
    p50: Duration,
    p99: Duration,
}

/// The server's CPU, read from `/proc` (the `redis-server` listening on the URL's port).
fn server_cpu() -> support::ServerCpu {
    support::ServerCpu::start("redis-server", &support::port_marker(&server(), 6379))
}

async fn ours(n: u64) -> Figures {
    let url = format!("{}?global_keyprefix={}", server(), prefix());
    let conn = Connection::open(&url).await.expect("open");
    let q = Queue::new("bench_q");
    conn.declare_queue(&q).await.expect("declare");
    let producer = conn.producer().routing_key("bench_q");
    let values: Vec<Payload> = (0..n)
        .map(|id| Payload {
            id,
            payload: support::payload_text(),
        })
        .collect();

    let cpu = server_cpu();
    let publish_single = support::publish_each(&producer, &values).await;
    let cpu_publish_single = cpu.per_message(n);

    let mut consumer = conn
        .consumer([q.clone()])
        .prefetch(100)
        .build()
        .await
        .expect("consumer");
    let cpu = server_cpu();
    let consume = support::consume_acking::<Payload>(&mut consumer, n).await;
    let cpu_consume = cpu.per_message(n);

    let cpu = server_cpu();
    let publish_batch = support::publish_batches(&producer, &values).await;
    let cpu_publish_batch = cpu.per_message(n);
    conn.purge("bench_q").await.expect("purge");

    let values = std::sync::Arc::new(values);
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let producer = producer.clone();
            let values = values.clone();
            tokio::spawn(async move {
                for v in values.iter().skip(t).step_by(TASKS) {
                    producer.publish(v).await.expect("publish");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("publishing task");
    }
    let publish_tasks = support::rate(n, start.elapsed());
    conn.purge("bench_q").await.expect("purge");

    let rounds = 2_000.min(n as usize);
    let mut lat = Vec::with_capacity(rounds);
    for v in values.iter().take(rounds) {
        let t = Instant::now();
        producer.publish(v).await.expect("publish");
        let d = consumer.next().await.expect("message").expect("delivery");
        let _: Payload = d.decode().expect("decode");
        d.ack().await.expect("ack");
        lat.push(t.elapsed());
    }
    lat.sort();
    consumer.close().await.expect("close");
    conn.delete_queue("bench_q").await.expect("delete");
    Figures {
        publish_single,
        publish_batch,
        publish_tasks,
        consume,
        consume_bare_pop: consume,
        cpu_publish_single,
        cpu_publish_batch,
        cpu_consume,
        p50: support::percentile(&lat, 0.5),
        p99: support::percentile(&lat, 0.99),
    }
}

/// Concurrent publishing tasks in the "16 tasks" rows.
const TASKS: usize = 16;

type RawConn = redis::aio::MultiplexedConnection;

/// `RPOP key 100`: up to 100 entries, one round trip.
async fn pop_batch(conn: &mut RawConn, key: &str) -> Vec<Vec<u8>> {
    redis::cmd("RPOP")
        .arg(key)
        .arg(100)
        .query_async(conn)
        .await
        .expect("rpop")
}

/// Pushes `n` copies of `body` onto `key` in pipelines of 100.
async fn push_batches(conn: &mut RawConn, key: &str, body: &[u8], n: u64) {
    for chunk in 0..n.div_ceil(100) {
        let mut pipe = redis::pipe();
        for _ in 0..100.min(n - chunk * 100) {
            pipe.lpush(key, body).ignore();
        }
        let _: () = pipe.query_async(conn).await.expect("pipeline");
    }
}

async fn raw(n: u64, envelope: usize) -> Figures {
    let client = redis::Client::open(server()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let key = format!("{}bench_q", prefix());
    let body = vec![b'x'; envelope];

    let cpu = server_cpu();
    let start = Instant::now();
    for _ in 0..n {
        let _: i64 = conn.lpush(&key, &body).await.expect("lpush");
    }
    let publish_single = support::rate(n, start.elapsed());
    let cpu_publish_single = cpu.per_message(n);

    let start = Instant::now();
    let mut got = 0u64;
    while got < n {
        got += pop_batch(&mut conn, &key).await.len() as u64;
    }
    let consume_bare_pop = support::rate(n, start.elapsed());

    // The same work as kombu's consumer: each batch taken is recorded as unacked, then acked.
    let cpu = server_cpu();
    let start = Instant::now();
    push_batches(&mut conn, &key, &body, n).await;
    let publish_batch = support::rate(n, start.elapsed());
    let cpu_publish_batch = cpu.per_message(n);
    let (unacked, index) = (format!("{key}:unacked"), format!("{key}:unacked_index"));
    let suffix = b", \"\", \"bench_q\"]";
    let cpu = server_cpu();
    let start = Instant::now();
    let mut got = 0u64;
    while got < n {
        let batch = pop_batch(&mut conn, &key).await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let fields: Vec<String> = (0..batch.len())
            .map(|i| format!("tag-{}", got + i as u64))
            .collect();
        let mut record = redis::pipe();
        let mut hset = redis::cmd("HSET");
        hset.arg(&unacked);
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(&index);
        for (field, raw) in fields.iter().zip(&batch) {
            let mut entry = Vec::with_capacity(raw.len() + suffix.len() + 1);
            entry.push(b'[');
            entry.extend_from_slice(raw);
            entry.extend_from_slice(suffix);
            hset.arg(field).arg(entry);
            zadd.arg(now).arg(field);
        }
        record.add_command(hset).ignore().add_command(zadd).ignore();
        let _: () = record.query_async(&mut conn).await.expect("record");
        let mut ack = redis::pipe();
        ack.atomic()
            .hdel(&unacked, &fields)
            .ignore()
            .zrem(&index, &fields)
            .ignore();
        let _: () = ack.query_async(&mut conn).await.expect("ack");
        got += batch.len() as u64;
    }
    let consume = support::rate(n, start.elapsed());
    let cpu_consume = cpu.per_message(n);
    let _: i64 = conn.del(&key).await.expect("del");

    let start = Instant::now();
    let per_task = n.div_ceil(TASKS as u64);
    let tasks: Vec<_> = (0..TASKS as u64)
        .map(|t| {
            let mut conn = conn.clone();
            let (key, body) = (key.clone(), body.clone());
            let count = per_task.min(n.saturating_sub(t * per_task));
            tokio::spawn(async move {
                for _ in 0..count {
                    let _: i64 = conn.lpush(&key, &body).await.expect("lpush");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("publishing task");
    }
    let publish_tasks = support::rate(n, start.elapsed());
    let _: i64 = conn.del(&key).await.expect("del");

    let rounds = 2_000.min(n as usize);
    let mut lat = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let _: i64 = conn.lpush(&key, &body).await.expect("lpush");
        let _: Option<Vec<u8>> = conn.rpop(&key, None).await.expect("rpop");
        lat.push(t.elapsed());
    }
    lat.sort();
    Figures {
        publish_single,
        publish_batch,
        publish_tasks,
        consume,
        consume_bare_pop,
        cpu_publish_single,
        cpu_publish_batch,
        cpu_consume,
        p50: support::percentile(&lat, 0.5),
        p99: support::percentile(&lat, 0.99),
    }
}

fn main() {
    let n = support::messages(20_000);
    // Alternate the two sides over three rounds; report medians.
    let envelope = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(support::redis_envelope_len(&server()));
    let (ours_runs, raw_runs) = support::alternate(|| ours(n), || raw(n, envelope));
    let pick = support::median::<Figures>;
    let py = support::python_rates("redis", &server(), n.min(5_000), &[]);

    println!(
        "redis: {n} messages per row, median of 3 rounds; raw = the redis crate doing the same broker work (consume: the pop, kombu's unacked entries and their acks), same pipelining; Python kombu in the same run"
    );
    println!();
    println!("| row | kombu-rs | raw redis | kombu-rs / raw | Python kombu | kombu-rs / Python |");
    println!("|---|---:|---:|---:|---:|---:|");
    let row = |name: &str, f: fn(&Figures) -> f64, py: Option<f64>| {
        support::record_row("redis", name, "msg/s", (&ours_runs, &raw_runs), f, py);
        let o = pick(&ours_runs, f);
        let r = pick(&raw_runs, f);
        let (p, pr) = match py {
            Some(p) => (support::grouped(p), format!("{:.1}×", o / p)),
            None => ("–".into(), "–".into()),
        };
        println!(
            "| {name} | {} msg/s | {} msg/s | {:.2} | {p} | {pr} |",
            support::grouped(o),
            support::grouped(r),
            o / r
        );
    };
    row("publish, one by one", |f| f.publish_single, py.map(|p| p.0));
    row(
        "publish, batches of 100",
        |f| f.publish_batch,
        py.map(|p| p.0),
    );
    row(
        "publish, 16 tasks one by one",
        |f| f.publish_tasks,
        py.map(|p| p.0),
    );
    row(
        "consume + ack, prefetch 100",
        |f| f.consume,
        py.map(|p| p.1),
    );
    row(
        "consume + ack, prefetch 100, against a bare RPOP (no unacked entries)",
        |f| f.consume_bare_pop,
        None,
    );
    let lat = |runs: &[Figures], f: fn(&Figures) -> Duration| {
        let mut xs: Vec<f64> = runs.iter().map(|r| f(r).as_secs_f64() * 1e6).collect();
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    for (name, f) in [
        (
            "latency p50, one in flight",
            (|f: &Figures| f.p50) as fn(&Figures) -> Duration,
        ),
        ("latency p99, one in flight", |f: &Figures| f.p99),
    ] {
        let micros = |r: &Figures| f(r).as_secs_f64() * 1e6;
        support::record_row("redis", name, "µs", (&ours_runs, &raw_runs), micros, None);
    }
    println!(
        "| latency p50, one in flight | {:.0} µs | {:.0} µs | {:.1}× slower | – | – |",
        lat(&ours_runs, |f| f.p50),
        lat(&raw_runs, |f| f.p50),
        lat(&ours_runs, |f| f.p50) / lat(&raw_runs, |f| f.p50)
    );
    println!(
        "| latency p99, one in flight | {:.0} µs | {:.0} µs | {:.1}× slower | – | – |",
        lat(&ours_runs, |f| f.p99),
        lat(&raw_runs, |f| f.p99),
        lat(&ours_runs, |f| f.p99) / lat(&raw_runs, |f| f.p99)
    );
    // The server's own CPU per message: where both sides are near it, the row is broker-bound.
    let cpu: [support::CpuRow<Figures>; 3] = [
        ("server CPU per message: publish, one by one", |f| {
            f.cpu_publish_single
        }),
        ("server CPU per message: publish, batches of 100", |f| {
            f.cpu_publish_batch
        }),
        ("server CPU per message: consume + ack", |f| f.cpu_consume),
    ];
    support::cpu_rows("redis", &cpu, &ours_runs, &raw_runs);
}
