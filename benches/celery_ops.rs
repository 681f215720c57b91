//! What Celery's operations cost the Rust worker, on Redis and RabbitMQ, rounds alternating:
//!
//! - **events at full speed**: N no-op tasks queued, then a worker (concurrency 8) runs them
//!   with task events off, then on (the events heard by a receiver and counted); the rate
//!   ratio is computed within each round.
//! - **events at 2,000 tasks a second**: a producer offers 2,000 tasks a second for 5 s while
//!   the worker runs, events off then on: the rate the worker keeps, and the CPU time per
//!   1,000 tasks of this process (worker, producer and receiver) and of the broker's server
//!   (`/proc`). Target (issue "Celery operations"): events from 2,000 tasks a second slow
//!   the worker's task rate by at most 10% (paced rate ratio ≥ 0.90).
//! - **ping**: `Control::broadcast("ping")` to one node, the whole call (reply queue declared,
//!   command sent, first reply read), a hundred times a round. Target: under 50 ms.
//!
//! ```text
//! cargo bench --bench celery_ops              # 20,000 tasks a round
//! cargo bench --bench celery_ops -- 50000
//! ```
//!
//! Brokers: `$KOMBU_BENCH_REDIS_URL` (default `redis://127.0.0.1:6379/0`, a fresh key prefix
//! per round) and `$KOMBU_BENCH_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`).

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use kombu::Connection;
use kombu::celery::control::{Broadcast, Control};
use kombu::celery::events::{EventKind, EventReceiver};
use kombu::celery::worker::{TaskContext, TaskFail, Worker};
use kombu::celery::{Celery, Task};
use serde_json::Map;

const ROUNDS: usize = 3;
const PINGS: usize = 100;
const NOOP: Task<(u64,), u64> = Task::new("bench.noop");

fn brokers() -> Vec<(&'static str, String)> {
    let redis = std::env::var("KOMBU_BENCH_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let amqp = std::env::var("KOMBU_BENCH_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    vec![("redis", redis), ("amqp", amqp)]
}

/// A URL of its own for one round: a key prefix on Redis.
fn fresh(transport: &str, base: &str) -> String {
    match transport {
        "redis" => {
            let sep = if base.contains('?') { '&' } else { '?' };
            format!(
                "{base}{sep}global_keyprefix=bench-ops-{}:",
                uuid::Uuid::new_v4().simple()
            )
        }
        _ => base.to_owned(),
    }
}

/// Tasks a second through a worker with task events on or off, and the task events heard.
async fn run_tasks(url: &str, n: u64, events: bool) -> kombu::Result<(f64, u64)> {
    let conn = Connection::open(url).await?;
    let queue = format!("bench-ops-{}", uuid::Uuid::new_v4().simple());
    let celery = Celery::builder(&conn).default_queue(queue.as_str()).build();
    let mut sent = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let calls = chunk.iter().map(|i| celery.call(&NOOP, (*i,)));
        for done in futures::future::join_all(calls).await {
            sent.push(done?);
        }
    }
    let mut receiver = EventReceiver::builder(&conn)
        .routing_key("task.#")
        .wake_workers(false)
        .build()
        .await?;
    let heard = tokio::spawn(async move {
        let mut succeeded = 0u64;
        while let Ok(Some(Ok(event))) =
            tokio::time::timeout(Duration::from_secs(3), receiver.next()).await
        {
            if event.kind() == &EventKind::TaskSucceeded {
                succeeded += 1;
            }
        }
        succeeded
    });
    let worker = Worker::builder(&conn)
        .hostname(format!("bench-{}@ops", uuid::Uuid::new_v4().simple()))
        .queue(queue.as_str())
        .concurrency(8)
        .task_events(events)
        .task(
            NOOP,
            |(i,), _: TaskContext| async move { Ok::<_, TaskFail>(i) },
        )
        .build()?;
    let handle = worker.handle();
    let start = Instant::now();
    let running = tokio::spawn(worker.run());
    while handle.stats().succeeded < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = start.elapsed();
    handle.stop();
    running
        .await
        .map_err(|e| kombu::Error::new(kombu::ErrorKind::Closed, e.to_string()))??;
    let heard = heard.await.unwrap_or(0);
    conn.delete_queue(&queue).await?;
    Ok((support::rate(n, took), heard))
}

/// CPU seconds (user + system) of process `pid` (`self` for this one) so far.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// The pid of the broker's server process (`redis-server`, RabbitMQ's `beam.smp`).
fn broker_pid(transport: &str) -> Option<String> {
    let name = match transport {
        "redis" => "redis-server",
        _ => "beam.smp",
    };
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid = entry.file_name().to_string_lossy().into_owned();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim() == name).then_some(pid)
        })
}

/// A worker fed 2,000 tasks a second for 5 s: the rate it kept, and CPU seconds per 1,000
/// tasks of this process and of the broker.
async fn paced(url: &str, transport: &str, events: bool) -> kombu::Result<(f64, f64, f64)> {
    const RATE: u64 = 2_000;
    const SECONDS: u64 = 5;
    let n = RATE * SECONDS;
    let conn = Connection::open(url).await?;
    let queue = format!("bench-paced-{}", uuid::Uuid::new_v4().simple());
    let celery = Celery::builder(&conn).default_queue(queue.as_str()).build();
    celery.call(&NOOP, (0,)).await?; // declares the queue
    conn.purge(&queue).await?;
    let mut receiver = EventReceiver::builder(&conn)
        .routing_key("task.#")
        .wake_workers(false)
        .build()
        .await?;
    let listening = tokio::spawn(async move {
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(3), receiver.next()).await
        {
        }
    });
    let worker = Worker::builder(&conn)
        .hostname(format!("bench-{}@paced", uuid::Uuid::new_v4().simple()))
        .queue(queue.as_str())
        .concurrency(8)
        .task_events(events)
        .task(
            NOOP,
            |(i,), _: TaskContext| async move { Ok::<_, TaskFail>(i) },
        )
        .build()?;
    let handle = worker.handle();
    let running = tokio::spawn(worker.run());
    let broker = broker_pid(transport).unwrap_or_default();
    let (own0, broker0) = (cpu_seconds("self"), cpu_seconds(&broker));
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let per_tick = RATE / 100;
    let mut sent = 0;
    while sent < n {
        tick.tick().await;
        let calls = (sent..sent + per_tick).map(|i| celery.call(&NOOP, (i,)));
        for done in futures::future::join_all(calls).await {
            done?;
        }
        sent += per_tick;
    }
    while handle.stats().succeeded < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = start.elapsed();
    let (own, brokered) = (cpu_seconds("self") - own0, cpu_seconds(&broker) - broker0);
    handle.stop();
    running
        .await
        .map_err(|e| kombu::Error::new(kombu::ErrorKind::Closed, e.to_string()))??;
    let _ = listening.await;
    conn.delete_queue(&queue).await?;
    let per_k = |cpu: f64| cpu / n as f64 * 1000.0;
    Ok((support::rate(n, took), per_k(own), per_k(brokered)))
}

/// The whole `ping` call to one node, `PINGS` times; sorted.
async fn pings(url: &str) -> kombu::Result<Vec<Duration>> {
    let conn = Connection::open(url).await?;
    let node = format!("bench-{}@ping", uuid::Uuid::new_v4().simple());
    let queue = format!("bench-ping-{}", uuid::Uuid::new_v4().simple());
    let worker = Worker::builder(&conn)
        .hostname(node.as_str())
        .queue(queue.as_str())
        .task(
            NOOP,
            |(i,), _: TaskContext| async move { Ok::<_, TaskFail>(i) },
        )
        .build()?;
    let handle = worker.handle();
    let running = tokio::spawn(worker.run());
    let control = Control::new(&conn);
    let to = Broadcast::new()
        .destination(node.as_str())
        .timeout(Duration::from_secs(2));
    // Until its mailbox listens.
    while control.broadcast("ping", Map::new(), &to).await?.is_empty() {}
    let mut took = Vec::with_capacity(PINGS);
    for _ in 0..PINGS {
        let start = Instant::now();
        let replies = control.broadcast("ping", Map::new(), &to).await?;
        took.push(start.elapsed());
        assert_eq!(replies.len(), 1, "one reply");
    }
    handle.stop();
    running
        .await
        .map_err(|e| kombu::Error::new(kombu::ErrorKind::Closed, e.to_string()))??;
    conn.delete_queue(&queue).await?;
    took.sort();
    Ok(took)
}

#[tokio::main]
async fn main() -> kombu::Result<()> {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    for (transport, base) in brokers() {
        let (mut off, mut on, mut ratio, mut heard) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut p50, mut p99) = (Vec::new(), Vec::new());
        let (mut paced_off, mut paced_on, mut paced_ratio) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            // Alternate which goes first.
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            let mut rates = [0.0; 2];
            for events in order {
                let (rate, got) = run_tasks(&fresh(transport, &base), n, events).await?;
                rates[usize::from(events)] = rate;
                if events {
                    heard.push(got as f64);
                }
            }
            off.push(rates[0]);
            on.push(rates[1]);
            ratio.push(rates[1] / rates[0]);
            let mut kept = [(0.0, 0.0, 0.0); 2];
            for events in order {
                kept[usize::from(events)] =
                    paced(&fresh(transport, &base), transport, events).await?;
            }
            paced_off.push(kept[0]);
            paced_on.push(kept[1]);
            paced_ratio.push(kept[1].0 / kept[0].0);
            let took = pings(&fresh(transport, &base)).await?;
            p50.push(support::percentile(&took, 0.5).as_secs_f64() * 1e3);
            p99.push(support::percentile(&took, 0.99).as_secs_f64() * 1e3);
        }
        println!(
            "{transport:6} events at full speed: {} tasks/s off, {} on, ratio {:.2}; \
             task-succeeded heard {:.0} of {n}",
            support::grouped(support::median(&off, |x| *x)),
            support::grouped(support::median(&on, |x| *x)),
            support::median(&ratio, |x| *x),
            support::median(&heard, |x| *x),
        );
        println!(
            "{transport:6} events at 2,000 tasks/s offered: kept {:.0}/s off, {:.0}/s on, ratio {:.2} \
             (target >= 0.90); CPU s per 1,000 tasks: ours {:.3} off, {:.3} on; broker {:.3} \
             off, {:.3} on",
            support::median(&paced_off, |t| t.0),
            support::median(&paced_on, |t| t.0),
            support::median(&paced_ratio, |x| *x),
            support::median(&paced_off, |t| t.1),
            support::median(&paced_on, |t| t.1),
            support::median(&paced_off, |t| t.2),
            support::median(&paced_on, |t| t.2),
        );
        println!(
            "{transport:6} ping: p50 {:.1} ms, p99 {:.1} ms (whole call; target < 50 ms)",
            support::median(&p50, |x| *x),
            support::median(&p99, |x| *x),
        );
    }
    Ok(())
}
