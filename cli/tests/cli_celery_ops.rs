//! `kombu celery inspect`, `kombu celery control` and `kombu celery events` on Redis (a key
//! prefix of the test's own) against a Celery 5.7 worker and a kombu-rs worker side by side,
//! as a user runs them: one JSON object `{node: reply}` on stdout, exit 0 when a node
//! replied and 3 when none did; events as JSON lines until interrupted.

mod cli_support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use kombu::celery::Task;
use kombu::celery::worker::{TaskContext, Worker};
use kombu_test_support::{CeleryWorker, brokers, python};
use serde_json::{Value, json};

use cli_support::*;

const ADD: Task<(i64, i64), i64> = Task::new("tasks.add");

/// `kombu --url URL ARGS...`: its status and stdout as JSON.
fn json_of(url: &str, args: &[&str]) -> (Option<i32>, Value) {
    let out = kombu(url).args(args).output().expect("run kombu");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "kombu {args:?}: {e}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), value)
}

#[test]
fn inspect_control_and_events_reach_python_and_rust_workers() {
    let Some(python) = python() else { return };
    let Some(broker) = brokers::broker("redis", "cli-ops") else {
        return;
    };
    let url = broker.url.clone();
    let (py_url, options) = brokers::celery_side("redis", &url);
    let queue = format!("cli-ops-{}", uuid::Uuid::new_v4().simple());
    let py = CeleryWorker::start(
        &python,
        "cli-ops",
        include_str!("../../celery/tests/interop/worker_app.py"),
        &queue,
        &[("KOMBU_RS_BROKER", &py_url), ("KOMBU_RS_OPTIONS", &options)],
    );
    let py_node = py.node().to_owned();

    // Our worker, on a runtime of its own, with task events.
    let rust_node = format!(
        "rust-{}@test",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let rust_queue = format!("{queue}-rust");
    let (node, worker_url, worker_queue) = (rust_node.clone(), url.clone(), rust_queue.clone());
    let running = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let conn = kombu::Connection::open(&worker_url).await?;
            Worker::builder(&conn)
                .hostname(node)
                .queue(worker_queue)
                .task_events(true)
                .task(ADD, |(x, y), _: TaskContext| async move { Ok(x + y) })
                .build()?
                .run()
                .await
        })
    });

    // Both answer (the Python worker takes a moment to start).
    let deadline = Instant::now() + Duration::from_secs(60);
    let pongs = loop {
        let (code, replies) = json_of(
            &url,
            &[
                "celery", "inspect", "ping", "-d", &py_node, "-d", &rust_node, "-t", "2",
            ],
        );
        if replies.as_object().is_some_and(|r| r.len() == 2) {
            assert_eq!(code, Some(0));
            break replies;
        }
        assert!(
            Instant::now() < deadline,
            "no pong from both: {replies}\n{}",
            py.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(
        pongs,
        json!({&py_node: {"ok": "pong"}, &rust_node: {"ok": "pong"}})
    );

    let (code, stats) = json_of(
        &url,
        &[
            "celery", "inspect", "stats", "-d", &py_node, "-d", &rust_node,
        ],
    );
    assert_eq!(code, Some(0));
    for node in [&py_node, &rust_node] {
        assert!(
            stats[node]["total"].is_object() && stats[node]["broker"].is_object(),
            "{stats}"
        );
    }
    let (_, registered) = json_of(&url, &["celery", "inspect", "registered", "-d", &rust_node]);
    assert_eq!(registered, json!({&rust_node: ["tasks.add"]}));

    // Control: the same command, the same reply from both.
    let (code, set) = json_of(
        &url,
        &[
            "celery",
            "control",
            "rate_limit",
            "tasks.add",
            "5/s",
            "-d",
            &py_node,
            "-d",
            &rust_node,
        ],
    );
    assert_eq!(code, Some(0));
    let ok = json!({"ok": "new rate limit set successfully"});
    assert_eq!(set, json!({&py_node: ok, &rust_node: ok}));
    let (_, unknown) = json_of(&url, &["celery", "control", "nosuch", "-d", &rust_node]);
    assert_eq!(
        unknown,
        json!({&rust_node: {"error": "KeyError('nosuch')"}})
    );

    // Nobody there: {} and exit 3.
    let (code, none) = json_of(
        &url,
        &[
            "celery",
            "inspect",
            "ping",
            "-d",
            "nobody@nowhere",
            "-t",
            "0.3",
        ],
    );
    assert_eq!((code, none), (Some(3), json!({})));
    kombu(&url)
        .args(["celery", "control", "pool_grow", "two"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("not a whole number"));

    // Events: ready once our worker's heartbeat (the receiver's wake-up) arrives, then a task's.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kombu"))
        .args(["--url", &url, "celery", "events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kombu celery events");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first: Value =
        serde_json::from_str(&lines.next().expect("a line").expect("text")).expect("JSON");
    assert_eq!(first["type"], json!("worker-heartbeat"), "{first}");
    let id = stdout_of(kombu(&url).args([
        "celery",
        "call",
        "tasks.add",
        "--args",
        "[20, 22]",
        "--queue",
        &rust_queue,
    ]));
    let id = id.trim().to_owned();
    let mut kinds = Vec::new();
    for line in lines.by_ref() {
        let event: Value = serde_json::from_str(&line.expect("text")).expect("JSON");
        if event["uuid"] == json!(id) {
            kinds.push(event["type"].as_str().unwrap_or_default().to_owned());
            if event["type"] == json!("task-succeeded") {
                assert_eq!(event["result"], json!("42"));
                assert_eq!(event["hostname"], json!(rust_node));
                break;
            }
        }
    }
    assert_eq!(kinds, ["task-received", "task-started", "task-succeeded"]);
    // Interrupted: status 130.
    let pid = child.id().to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill");
    assert_eq!(child.wait().expect("wait").code(), Some(130));
    let (code, counted) = {
        let out = kombu(&url)
            .args([
                "celery",
                "events",
                "--count",
                "1",
                "--routing-key",
                "worker.#",
            ])
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(code, Some(0));
    assert_eq!(counted.lines().count(), 1, "{counted}");

    // Shutdown: sent without waiting, and our worker stops.
    let (code, sent) = json_of(&url, &["celery", "control", "shutdown", "-d", &rust_node]);
    assert_eq!((code, sent), (Some(0), json!({})));
    let ran = running.join().expect("the worker thread");
    assert!(ran.is_ok(), "{ran:?}");
}
