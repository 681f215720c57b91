//! The monitor's memory under load: 100,000 tasks' events (received, started, succeeded:
//! 300,000 events in batches of 24, as workers send them) through an in-process monitor on
//! the memory transport; prints the events per second taken in and the process's peak RSS
//! (`VmHWM`), with the history in memory (the default) and in a file (`--db`). Meanwhile a
//! client asks for what the page asks for (the page, `/api/tasks?limit=100`,
//! `/api/monitor/workers`, `/api/stats/series`, `/api/broker/queues`) every 100 ms: the
//! answers' times under load, against the same asked of the idle monitor first.
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

/// What the page asks for, in turn.
const PAGE_CALLS: [&str; 5] = [
    "/",
    "/api/tasks?limit=100",
    "/api/monitor/workers",
    "/api/stats/series",
    "/api/broker/queues",
];

/// Asks `port` for the page's calls every 100 ms until `stop`; the answers' times.
async fn probe(port: u16, stop: tokio::sync::watch::Receiver<bool>) -> Vec<Duration> {
    let mut times = Vec::new();
    for path in PAGE_CALLS.iter().cycle() {
        if *stop.borrow() {
            break;
        }
        let asked = Instant::now();
        let answer = tokio::task::spawn_blocking(move || kombu_test_support::http::get(port, path))
            .await
            .ok()
            .flatten();
        match answer {
            Some((200, _)) => times.push(asked.elapsed()),
            other => panic!("{path}: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    times
}

/// The median and largest of `times`, in milliseconds (a run has too few answers for a 99th
/// percentile).
fn spread(mut times: Vec<Duration>) -> String {
    times.sort();
    let at = |q: f64| {
        let i = ((times.len() as f64 - 1.0) * q).round() as usize;
        times.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    format!(
        "{} answers, median {:.1} ms, max {:.1} ms",
        times.len(),
        at(0.5),
        at(1.0)
    )
}

/// What one run measured.
struct Measured {
    rate: f64,
    rss_kb: u64,
    idle: String,
    loaded: String,
}

async fn run(tasks: usize, db: Option<std::path::PathBuf>) -> Measured {
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let app = monitor.router();
    let serving = tokio::spawn(async move { axum::serve(listener, app).await });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let idle = tokio::spawn(probe(port, stopped));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = stop.send(true);
    let idle = idle.await.expect("the idle probe");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let loaded = tokio::spawn(probe(port, stopped));
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
    let _ = stop.send(true);
    let loaded = loaded.await.expect("the probe under load");
    serving.abort();
    monitor.stop().await;
    Measured {
        rate,
        rss_kb: peak_rss_kb(),
        idle: spread(idle),
        loaded: spread(loaded),
    }
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
    for (what, db) in [
        ("history in a file:  ", Some(dir.join("monitor.db"))),
        ("history in memory:  ", None),
    ] {
        let m = run(tasks, db).await;
        println!(
            "{what} {tasks} tasks, {:.0} events/s, peak RSS {} MB\n  the page's calls idle:       {}\n  the page's calls under load: {}",
            m.rate,
            m.rss_kb / 1024,
            m.idle,
            m.loaded
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
