//! The Rust Celery worker in a process of its own, many tasks through it, on Redis, RabbitMQ
//! and SQLite:
//!
//! - **clean run**: every task runs exactly once (each execution appends its number to a
//!   file: no number missing, none twice);
//! - **killed run** (acks late): the worker is SIGKILLed once a third of the tasks ran, and a
//!   new one started: every task still runs, and only those in flight at the kill (at most
//!   the prefetch window) run twice.
//!
//! `KOMBU_CELERY_SOAK_TASKS` sets the number of tasks (default 300; `scripts/soak celery`
//! runs 10,000). A test binary without libtest's harness: `main` is the parent, or the worker
//! when `KOMBU_CELERY_KILL_URL` names its broker.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kombu::Connection;
use kombu::celery::worker::{TaskContext, TaskFail, Worker};
use kombu::celery::{Celery, Task};
use kombu_test_support::{KillOnDrop, brokers};

const URL_VAR: &str = "KOMBU_CELERY_KILL_URL";
const QUEUE_VAR: &str = "KOMBU_CELERY_KILL_QUEUE";
const FILE_VAR: &str = "KOMBU_CELERY_KILL_FILE";
const NOTE: Task<(u64,), u64> = Task::new("soak.note");
const CONCURRENCY: usize = 4;
/// The worker's prefetch window (its concurrency times Celery's multiplier of 4).
const WINDOW: usize = CONCURRENCY * 4;

fn main() {
    match std::env::var(URL_VAR) {
        Ok(url) => child(
            &url,
            &std::env::var(QUEUE_VAR).expect("the queue"),
            Path::new(&std::env::var(FILE_VAR).expect("the file")),
        ),
        Err(_) => parent(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The worker: `soak.note(n)` appends `n` to the file, acked late.
fn child(url: &str, queue: &str, file: &Path) {
    let file = file.to_owned();
    let outcome = runtime().block_on(async move {
        let conn = Connection::open(url).await?;
        let worker = Worker::builder(&conn)
            .queue(queue)
            .concurrency(CONCURRENCY)
            .acks_late(true)
            .task(NOTE, move |(n,), _: TaskContext| {
                let file = file.clone();
                async move {
                    let mut out = std::fs::OpenOptions::new()
                        .append(true)
                        .create(true)
                        .open(&file)
                        .map_err(|e| {
                            TaskFail::from(kombu::celery::TaskFailure::new(
                                "builtins",
                                "OSError",
                                e.to_string(),
                            ))
                        })?;
                    // One write of a short line: O_APPEND keeps lines whole.
                    let _ = out.write_all(format!("{n}\n").as_bytes());
                    Ok(n)
                }
            })
            .build()?;
        worker.run_until_signal().await
    });
    if let Err(error) = outcome {
        eprintln!("the worker failed: {error:#}");
        std::process::exit(1);
    }
}

fn spawn_worker(url: &str, queue: &str, file: &Path) -> KillOnDrop {
    KillOnDrop(
        Command::new(std::env::current_exe().expect("this test's executable"))
            .env(URL_VAR, url)
            .env(QUEUE_VAR, queue)
            .env(FILE_VAR, file)
            .stdin(Stdio::null())
            .spawn()
            .expect("start the worker"),
    )
}

/// How often each number was noted so far.
fn noted(file: &Path) -> HashMap<u64, usize> {
    let mut counts = HashMap::new();
    for line in std::fs::read_to_string(file).unwrap_or_default().lines() {
        if let Ok(n) = line.parse() {
            *counts.entry(n).or_default() += 1;
        }
    }
    counts
}

fn parent() {
    let tasks: u64 = std::env::var("KOMBU_CELERY_SOAK_TASKS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    let rt = runtime();
    for transport in ["redis", "amqp", "sqlite"] {
        let Some(broker) = brokers::broker(transport, "celery-kill") else {
            continue;
        };
        // Redis gives an unacked message back after its visibility timeout: short here.
        let url = match transport {
            "redis" => format!("{}&visibility_timeout=5", broker.url),
            "sqlite" => format!("{}?visibility_timeout=5", broker.url),
            _ => broker.url.clone(),
        };
        for kill in [false, true] {
            rt.block_on(round(transport, &url, tasks, kill));
        }
    }
}

async fn round(transport: &str, url: &str, tasks: u64, kill: bool) {
    let what = format!("{transport}, {}", if kill { "killed" } else { "clean" });
    let queue = format!("celery-kill-{}", uuid::Uuid::new_v4().simple());
    let file: PathBuf = std::env::temp_dir().join(format!("{queue}.notes"));
    let conn = Connection::open(url).await.expect("open");
    let celery = Celery::builder(&conn).default_queue(queue.as_str()).build();
    let started = Instant::now();
    for n in 0..tasks {
        celery.call(&NOTE, (n,)).await.expect("send");
    }
    let mut worker = spawn_worker(url, &queue, &file);
    let patience = Duration::from_secs(60 + tasks / 50);
    let deadline = Instant::now() + patience;
    let mut killed_at = None;
    loop {
        let counts = noted(&file);
        if kill && killed_at.is_none() && counts.len() as u64 >= tasks / 3 {
            let _ = worker.0.kill(); // SIGKILL
            let _ = worker.0.wait();
            killed_at = Some(counts.len());
            worker = spawn_worker(url, &queue, &file);
        }
        if counts.len() as u64 == tasks {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {tasks} tasks ran in {patience:?}",
            counts.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    // Stop the worker cleanly (SIGTERM), then count once more: nothing ran after the end.
    let pid = worker.0.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let status = worker.0.wait().expect("the worker's status");
    assert!(status.success(), "{what}: the worker exited {status}");
    let counts = noted(&file);
    let twice: Vec<u64> = counts
        .iter()
        .filter(|&(_, &c)| c > 1)
        .map(|(&n, _)| n)
        .collect();
    assert_eq!(counts.len() as u64, tasks, "{what}: a task was lost");
    assert!(
        counts.keys().all(|&n| n < tasks),
        "{what}: a number never sent"
    );
    match kill {
        false => assert!(twice.is_empty(), "{what}: ran twice: {twice:?}"),
        true => assert!(
            twice.len() <= WINDOW,
            "{what}: {} ran twice, more than the prefetch window of {WINDOW}",
            twice.len()
        ),
    }
    assert_eq!(
        conn.queue_size(&queue).await.expect("size"),
        0,
        "{what}: left over"
    );
    println!(
        "celery_kill {what}: {tasks} tasks, {} ran twice{}, {:.1} s",
        twice.len(),
        killed_at.map_or_else(String::new, |n| format!(" (killed after {n})")),
        elapsed.as_secs_f64()
    );
    let _ = conn.delete_queue(&queue).await;
    let _ = std::fs::remove_file(&file);
}
