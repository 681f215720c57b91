//! The monitor's memory under load: 100,000 tasks' events (received, started, succeeded:
//! 300,000 events in batches of 24, as workers send them) through an in-process monitor on
//! the memory transport; prints the events per second taken in and the process's peak RSS
//! (`VmHWM`), with the history in memory (the default) and in a file (`--db`).
//!
//! `cargo bench -p kombu-monitor --bench memory [-- TASKS]`

use std::time::{Duration, Instant};

use kombu_celery::events::{EventDispatcher, EventKind};
use kombu_core::Connection;
use kombu_monitor::{Limits, Monitor};
use serde_json::{Map, Value as Json, json};

/// The process's peak resident set (kB), from /proc.
fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn fields(value: Json) -> Map<String, Json> {
    match value {
        Json::Object(map) => map,
        _ => Map::new(),
    }
}

async fn run(tasks: usize, db: Option<std::path::PathBuf>) -> (f64, u64) {
    let conn = Connection::open(&format!("memory://bench-{}", uuid::Uuid::new_v4().simple()))
        .await
        .expect("open");
    let mut builder = Monitor::builder(&conn).limits(Limits {
        max_tasks: 100_000,
        max_age: Duration::from_secs(3600),
    });
    if let Some(db) = &db {
        builder = builder.db(db);
    }
    let monitor = builder.start().await.expect("the monitor");
    let sender = EventDispatcher::new(&conn, "bench@host");
    let started = Instant::now();
    let mut sent = 0;
    while sent < tasks {
        let mut batch = Vec::with_capacity(24);
        for i in sent..(sent + 8).min(tasks) {
            let id = format!("task-{i:08}");
            batch.push(sender.event(
                EventKind::parse("task-received"),
                fields(
                    json!({"uuid": id, "name": "tasks.add", "args": "(2, 3)", "kwargs": "{}",
                    "retries": 0, "root_id": id, "parent_id": null, "eta": null, "expires": null}),
                ),
            ));
            batch.push(sender.event(
                EventKind::parse("task-started"),
                fields(json!({"uuid": id})),
            ));
            batch.push(sender.event(
                EventKind::parse("task-succeeded"),
                fields(json!({"uuid": id, "result": "5", "runtime": 0.0001})),
            ));
        }
        sender.send_batch(&batch).await.expect("send");
        sent = (sent + 8).min(tasks);
        // Keep the broker's backlog small: the measure is the monitor's memory.
        while (monitor.history().len() as usize) + 2_000 < sent {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    while (monitor.history().len() as usize) < tasks.min(100_000) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = (tasks * 3) as f64 / started.elapsed().as_secs_f64();
    monitor.stop().await;
    (rate, peak_rss_kb())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    kombu_core::transport::memory::register();
    let tasks: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let dir = std::env::temp_dir().join(format!("kombu-monitor-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    // The file first: the peak is the process's, so the in-memory run shows its own growth.
    let (rate, rss) = run(tasks, Some(dir.join("monitor.db"))).await;
    println!(
        "history in a file:   {tasks} tasks, {rate:.0} events/s, peak RSS {} MB",
        rss / 1024
    );
    let (rate, rss) = run(tasks, None).await;
    println!(
        "history in memory:   {tasks} tasks, {rate:.0} events/s, peak RSS {} MB",
        rss / 1024
    );
    let _ = std::fs::remove_dir_all(&dir);
}
