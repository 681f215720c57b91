//! Live updates on the memory transport: `/api/live` streams a worker's events and a task's
//! state changes as they happen (server-sent events), and `/api/stats/series` counts them in
//! the current second's bucket.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use kombu_celery::{Celery, TaskOptions};
use kombu_core::Connection;
use kombu_monitor::Monitor;
use kombu_test_support::http::get;
use serde_json::Value as Json;

use support::ADD;

/// Reads server-sent events from `port` until `done` holds for one (its type and JSON data),
/// or 30 s pass; returns every (type, data) read.
fn read_events(port: u16, done: impl Fn(&str, &Json) -> bool) -> Vec<(String, Json)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a read timeout");
    write!(
        stream,
        "GET /api/live HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("send the request");
    let mut reader = BufReader::new(stream);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut seen, mut kind) = (Vec::new(), String::new());
    let mut line = String::new();
    while Instant::now() < deadline {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let text = line.trim_end();
        if let Some(k) = text.strip_prefix("event: ") {
            kind = k.to_owned();
        } else if let Some(data) = text.strip_prefix("data: ") {
            let data: Json = serde_json::from_str(data).unwrap_or(Json::Null);
            let stop = done(&kind, &data);
            seen.push((kind.clone(), data));
            if stop {
                break;
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_and_worker_changes_stream_as_they_happen() {
    kombu_core::transport::memory::register();
    let conn = Connection::open(&format!("memory://live-{}", uuid::Uuid::new_v4().simple()))
        .await
        .expect("open");
    let monitor = Monitor::builder(&conn).start().await.expect("the monitor");
    let (port, server) = support::serve(&monitor).await;

    // The stream is open before anything happens.
    let reading = tokio::task::spawn_blocking(move || {
        read_events(port, |kind, data| {
            kind == "task" && data["event"] == "task-succeeded"
        })
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (handle, running) = support::add_worker(&conn, "live@test", "live");
    let celery = Celery::builder(&conn).default_queue("live").build();
    let sent = celery
        .send_task(ADD.name(), (2, 3), (), TaskOptions::new())
        .await
        .expect("sent");
    let seen = reading.await.expect("joined");
    let kinds: Vec<String> = seen
        .iter()
        .map(|(kind, data)| format!("{kind} {}", data["event"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("hello "),
        "{kinds:?}"
    );
    assert!(
        kinds.iter().any(|k| k == "worker worker-online"),
        "{kinds:?}"
    );
    let ours: Vec<&str> = seen
        .iter()
        .filter(|(kind, data)| kind == "task" && data["uuid"] == sent.as_str())
        .filter_map(|(_, data)| data["event"].as_str())
        .collect();
    assert_eq!(
        ours,
        ["task-received", "task-started", "task-succeeded"],
        "{seen:?}"
    );

    let (status, body) = tokio::task::spawn_blocking(move || get(port, "/api/stats/series"))
        .await
        .expect("joined")
        .expect("an answer");
    assert_eq!(status, 200);
    let series: Json = serde_json::from_str(&body).expect("JSON");
    let total = |k: &str| -> u64 {
        series[k]
            .as_array()
            .map(|a| a.iter().filter_map(Json::as_u64).sum())
            .unwrap_or(0)
    };
    assert_eq!(
        (total("received"), total("succeeded"), total("failed")),
        (1, 1, 0),
        "{body}"
    );
    assert_eq!(series["seconds"].as_array().map(Vec::len), Some(600));

    handle.stop();
    let _ = running.await;
    server.abort();
    monitor.stop().await;
}
