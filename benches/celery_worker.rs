//! The Rust Celery worker against a Python Celery worker (prefork, `-c 2`) running
//! `tasks.add` on the same Redis, results in Redis, in the same run, rounds alternating:
//! N tasks are queued first, then the worker starts; its rate is taken from the results'
//! `date_done` (the first to the last), so start-up does not count. Our worker runs with the
//! same concurrency, 2. Target (issue "Celery from Rust"): 5× Python's rate.
//!
//! ```text
//! cargo bench --bench celery_worker              # 3,000 tasks a round
//! cargo bench --bench celery_worker -- 10000
//! ```
//!
//! Redis is `$KOMBU_BENCH_REDIS_URL` (default `redis://127.0.0.1:6379/0`), a fresh key prefix
//! per round (deleted after).

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::DateTime;
use kombu::Connection;
use kombu::celery::backend::RedisResultBackend;
use kombu::celery::worker::{TaskContext, TaskFail, Worker};
use kombu::celery::{Celery, Task};

const ROUNDS: usize = 3;
const QUEUE: &str = "bench-celery-worker";
const ADD: Task<(i64, i64), i64> = Task::new("tasks.add");

fn server() -> String {
    std::env::var("KOMBU_BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// Queues `n` calls of `tasks.add` under `prefix`; their ids.
async fn queue_tasks(url: &str, n: u64) -> kombu::Result<Vec<String>> {
    let conn = Connection::open(url).await?;
    let celery = Celery::builder(&conn).default_queue(QUEUE).build();
    let sending = (0..16u64).map(|s| {
        let celery = &celery;
        async move {
            let mut ids = Vec::new();
            for i in (s..n).step_by(16) {
                let i = i64::try_from(i).unwrap_or(0);
                ids.push(celery.call(&ADD, (i, i)).await?.id().to_owned());
            }
            Ok::<_, kombu::Error>(ids)
        }
    });
    let mut ids = Vec::new();
    for sent in futures::future::join_all(sending).await {
        ids.extend(sent?);
    }
    Ok(ids)
}

/// Waits until every result is stored; tasks a second from the first `date_done` to the last.
async fn rate_of(base: &str, prefix: &str, ids: &[String], patience: Duration) -> Option<f64> {
    let client = redis::Client::open(base).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let deadline = Instant::now() + patience;
    let keys: Vec<String> = ids
        .iter()
        .map(|id| format!("{prefix}celery-task-meta-{id}"))
        .collect();
    let docs: Vec<Option<String>> = loop {
        let mut docs = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(1000) {
            let got: Vec<Option<String>> = redis::cmd("MGET")
                .arg(chunk)
                .query_async(&mut conn)
                .await
                .ok()?;
            docs.extend(got);
        }
        if docs.iter().all(Option::is_some) {
            break docs;
        }
        if Instant::now() > deadline {
            eprintln!(
                "{} of {} results after {patience:?}",
                docs.iter().flatten().count(),
                ids.len()
            );
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let times: Vec<DateTime<chrono::FixedOffset>> = docs
        .iter()
        .flatten()
        .filter_map(|doc| {
            let doc: serde_json::Value = serde_json::from_str(doc).ok()?;
            let done = doc["date_done"].as_str()?;
            DateTime::parse_from_rfc3339(done).ok().or_else(|| {
                chrono::NaiveDateTime::parse_from_str(done, "%Y-%m-%dT%H:%M:%S%.f")
                    .ok()
                    .map(|t| t.and_utc().fixed_offset())
            })
        })
        .collect();
    let first = times.iter().min()?;
    let last = times.iter().max()?;
    let span = (*last - *first).to_std().ok()?;
    Some((times.len() - 1) as f64 / span.as_secs_f64())
}

async fn cleanup(base: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(base) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    for chunk in keys.chunks(1000) {
        let _: Result<i64, _> = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await;
    }
}

/// One round of ours: tasks a second.
async fn ours(n: u64) -> Option<f64> {
    let base = server();
    let prefix = format!("bench-cw-rs-{}:", uuid::Uuid::new_v4().simple());
    let url = format!("{base}?global_keyprefix={prefix}");
    let ids = queue_tasks(&url, n).await.ok()?;
    let conn = Connection::open(&url).await.ok()?;
    let worker = Worker::builder(&conn)
        .queue(QUEUE)
        .concurrency(2)
        .result_backend(RedisResultBackend::connect(&url).await.ok()?)
        .task(ADD, |(x, y), _: TaskContext| async move {
            Ok::<_, TaskFail>(x + y)
        })
        .build()
        .ok()?;
    let handle = worker.handle();
    let running = tokio::spawn(worker.run());
    let rate = rate_of(&base, &prefix, &ids, Duration::from_secs(120)).await;
    handle.stop();
    let _ = running.await;
    cleanup(&base, &prefix).await;
    rate
}

/// One round of a Python Celery worker (prefork, 2 processes): tasks a second.
async fn python(n: u64) -> Option<f64> {
    let python = support::python()?;
    let base = server();
    let prefix = format!("bench-cw-py-{}:", uuid::Uuid::new_v4().simple());
    let url = format!("{base}?global_keyprefix={prefix}");
    let ids = queue_tasks(&url, n).await.ok()?;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/python");
    let options = serde_json::json!({ "global_keyprefix": prefix }).to_string();
    let mut child = Command::new(python)
        .args([
            "-m", "celery", "-A", "tasks", "worker", "-P", "prefork", "-c", "2",
        ])
        .args([
            "-Q",
            QUEUE,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ])
        .args(["--loglevel", "WARNING"])
        .current_dir(&dir)
        .env("CELERY_BROKER_URL", &base)
        .env("CELERY_RESULT_BACKEND", &base)
        .env("CELERY_TRANSPORT_OPTIONS", &options)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    let rate = rate_of(&base, &prefix, &ids, Duration::from_secs(300)).await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    cleanup(&base, &prefix).await;
    rate
}

fn main() {
    let n = support::messages(3_000);
    let (rust, py) = support::alternate_rounds(ROUNDS, || ours(n), || python(n));
    let rust: Vec<f64> = rust.into_iter().flatten().collect();
    let py: Vec<f64> = py.into_iter().flatten().collect();
    if rust.is_empty() {
        eprintln!("no round of ours finished");
        return;
    }
    let ours = support::median(&rust, |r| *r);
    println!("tasks.add on Redis with results in Redis, {n} tasks a round, medians of {ROUNDS}");
    println!("| worker | tasks/s | / Celery |");
    println!("|---|---:|---:|");
    match py.is_empty() {
        false => {
            let theirs = support::median(&py, |r| *r);
            println!(
                "| kombu-celery, concurrency 2 | {} | {:.1}× |",
                support::grouped(ours),
                ours / theirs
            );
            println!(
                "| Celery 5.7 worker, prefork -c 2 | {} | 1.0× |",
                support::grouped(theirs)
            );
        }
        true => {
            println!(
                "| kombu-celery, concurrency 2 | {} | |",
                support::grouped(ours)
            );
            println!("| Celery 5.7 worker, prefork -c 2 | (no Python) | |");
        }
    }
}
