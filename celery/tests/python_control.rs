//! Our worker among Celery 5.7's own tools, on Redis and RabbitMQ, beside a Python worker:
//!
//! - `celery inspect ping|stats|active|registered` and `celery status` list both workers;
//!   `celery control revoke|add_consumer|shutdown` steer ours;
//! - our [`Control`] client asks the Python worker as Celery's does;
//! - Celery's `EventReceiver` (the library Flower uses) hears our worker online, its
//!   heartbeats and our tasks' states in order, and its `State` makes SUCCESS and FAILURE of
//!   them;
//! - Flower 2.x started on the broker lists our worker (`/api/workers`) and its tasks
//!   (`/api/tasks`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kombu_celery::control::{Broadcast, Control};
use kombu_celery::worker::{TaskContext, Worker, WorkerHandle};
use kombu_celery::{Celery, Task, TaskOptions};
use kombu_core::Connection;
use kombu_test_support::http::{free_port, get as http_get};
use kombu_test_support::{CeleryWorker, brokers, python, until};
use serde_json::{Map, Value as Json, json};

mod support;

const ADD: Task<(i64, i64), i64> = Task::new("tasks.add");
const SLEEP: Task<(f64,), f64> = Task::new("tasks.sleep");
const FAIL: Task<(String,), ()> = Task::new("tasks.fail");
const WAIT: Duration = Duration::from_secs(30);

/// Both workers on one broker: Celery's (on its queue) and ours (on another).
struct Pair {
    python: std::path::PathBuf,
    py: CeleryWorker,
    py_node: String,
    env: Vec<(String, String)>,
    conn: Connection,
    node: String,
    queue: String,
    handle: WorkerHandle,
    running: tokio::task::JoinHandle<kombu_core::Result<()>>,
}

impl Pair {
    async fn start(python: &Path, transport: &'static str, url: &str, task_events: bool) -> Pair {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (py_url, options) = brokers::celery_side(transport, url);
        let py_queue = format!("pyctl-{id}");
        let env = vec![
            ("KOMBU_RS_BROKER".to_owned(), py_url),
            ("KOMBU_RS_OPTIONS".to_owned(), options),
            ("KOMBU_RS_QUEUE".to_owned(), py_queue.clone()),
        ];
        let env_refs: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let py = support::worker(python, &format!("ctl-{transport}"), &py_queue, &env_refs);
        let py_node = py.node().to_owned();
        let conn = Connection::open(url).await.expect("open");
        let node = format!("rust-{}@test", &id[..12]);
        let queue = format!("rsctl-{id}");
        let worker = Worker::builder(&conn)
            .hostname(node.as_str())
            .queue(queue.as_str())
            .concurrency(2)
            .task_events(task_events)
            .task(ADD, |(x, y), _: TaskContext| async move { Ok(x + y) })
            .task(SLEEP, |(seconds,), _: TaskContext| async move {
                tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
                Ok(seconds)
            })
            .task(FAIL, |(message,), _: TaskContext| async move {
                Err(kombu_celery::TaskFailure::value_error(message).into())
            })
            .build()
            .expect("a worker");
        let handle = worker.handle();
        let running = tokio::spawn(worker.run());
        Pair {
            python: python.to_owned(),
            py,
            py_node,
            env,
            conn,
            node,
            queue,
            handle,
            running,
        }
    }

    /// `celery -A kombu_rs_tasks ARGS...` with the Python worker's app; its status and
    /// output.
    fn celery(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(&self.python)
            .args(["-m", "celery", "-A", "kombu_rs_tasks"])
            .args(args)
            .current_dir(self.py.dir())
            .env("PYTHONPATH", self.py.dir())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("run celery");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }

    /// `celery inspect|control CMD -j -d NODES ARGS...` as JSON.
    fn celery_json(&self, args: &[&str], nodes: &[&str]) -> Json {
        let destination = nodes.join(",");
        let mut all = args.to_vec();
        all.extend(["-j", "-t", "5", "-d", destination.as_str()]);
        let (status, text) = self.celery(&all);
        assert_eq!(status, 0, "celery {all:?}: {text}");
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(['{', '[']))
            .unwrap_or_else(|| panic!("celery {all:?} printed no JSON: {text}"));
        let parsed: Json =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("celery {all:?}: {e}: {text}"));
        // `inspect` prints {node: reply}; `control` a list of them.
        match parsed {
            Json::Array(replies) => Json::Object(
                replies
                    .into_iter()
                    .filter_map(|r| match r {
                        Json::Object(map) => Some(map),
                        _ => None,
                    })
                    .flatten()
                    .collect(),
            ),
            other => other,
        }
    }

    /// Waits until both workers answer `ping` (the Python worker takes a moment to start).
    fn both_answer(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, text) = self.celery(&[
                "inspect",
                "ping",
                "-j",
                "-t",
                "2",
                "-d",
                &format!("{},{}", self.node, self.py_node),
            ]);
            if status == 0 && text.contains(&self.node) && text.contains(&self.py_node) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "both workers never answered: {text}\n{}",
                self.py.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

async fn celery_tools(transport: &'static str) {
    let Some(python) = python() else { return };
    let Some(broker) = brokers::broker(transport, "pyctl") else {
        return;
    };
    let mut pair = Pair::start(&python, transport, &broker.url, false).await;
    tokio::task::block_in_place(|| pair.both_answer());
    let (rust, py) = (pair.node.as_str(), pair.py_node.as_str());
    let celery = Celery::builder(&pair.conn)
        .default_queue(pair.queue.as_str())
        .build();

    let pongs = tokio::task::block_in_place(|| pair.celery_json(&["inspect", "ping"], &[rust, py]));
    assert_eq!(pongs, json!({rust: {"ok": "pong"}, py: {"ok": "pong"}}));
    let (status, text) = tokio::task::block_in_place(|| pair.celery(&["status", "-t", "3"]));
    assert_eq!(status, 0, "{text}");
    assert!(
        text.contains(&format!("{rust}: OK")) && text.contains(&format!("{py}: OK")),
        "{text}"
    );

    let stats =
        tokio::task::block_in_place(|| pair.celery_json(&["inspect", "stats"], &[rust, py]));
    for node in [rust, py] {
        for key in [
            "total",
            "broker",
            "pool",
            "pid",
            "clock",
            "uptime",
            "prefetch_count",
        ] {
            assert!(
                stats[node].get(key).is_some(),
                "{node}'s stats have {key}: {stats}"
            );
        }
    }
    assert_eq!(
        stats[rust]["broker"]["transport"],
        stats[py]["broker"]["transport"]
    );
    let registered =
        tokio::task::block_in_place(|| pair.celery_json(&["inspect", "registered"], &[rust]));
    assert_eq!(
        registered,
        json!({rust: ["tasks.add", "tasks.fail", "tasks.sleep"]})
    );

    // A running task shows in `inspect active`, as the Python worker's would.
    let sleeper = celery
        .send_task(SLEEP.name(), (2.0,), (), TaskOptions::new())
        .await
        .expect("sent");
    until("the sleeper runs", WAIT, || {
        pair.handle.stats().started >= 1
    })
    .await;
    let active = tokio::task::block_in_place(|| pair.celery_json(&["inspect", "active"], &[rust]));
    assert_eq!(active[rust][0]["id"], json!(sleeper), "{active}");
    assert_eq!(active[rust][0]["name"], json!("tasks.sleep"));
    assert_eq!(active[rust][0]["hostname"], json!(rust));

    // Our client asks the Python worker.
    let control = Control::new(&pair.conn);
    let from_py = control
        .inspect(
            "stats",
            Map::new(),
            &Broadcast::new()
                .destination(py)
                .timeout(Duration::from_secs(5)),
        )
        .await
        .expect("stats");
    assert!(
        from_py[py]["pool"]["implementation"]
            .as_str()
            .is_some_and(|i| i.contains("celery")),
        "{from_py:?}"
    );
    let py_registered = control
        .inspect(
            "registered",
            Map::new(),
            &Broadcast::new()
                .destination(py)
                .timeout(Duration::from_secs(5)),
        )
        .await
        .expect("registered");
    assert!(
        py_registered[py]
            .as_array()
            .is_some_and(|l| l.contains(&json!("tasks.add"))),
        "{py_registered:?}"
    );

    // `celery control revoke`: the task is not run when it comes.
    let doomed = uuid::Uuid::new_v4().to_string();
    let revoked =
        tokio::task::block_in_place(|| pair.celery_json(&["control", "revoke", &doomed], &[rust]));
    assert_eq!(
        revoked,
        json!({rust: {"ok": format!("tasks {{'{doomed}'}} flagged as revoked")}})
    );
    let skipped = pair.handle.stats().revoked;
    celery
        .send_task(
            ADD.name(),
            (1, 2),
            (),
            TaskOptions::new().task_id(doomed.as_str()),
        )
        .await
        .expect("sent");
    until("the revoked task is skipped", WAIT, || {
        pair.handle.stats().revoked > skipped
    })
    .await;

    // `celery control add_consumer`: our worker takes tasks from the new queue.
    let extra = format!("{}-extra", pair.queue);
    let added = tokio::task::block_in_place(|| {
        pair.celery_json(&["control", "add_consumer", &extra], &[rust])
    });
    assert_eq!(
        added,
        json!({rust: {"ok": format!("add consumer {extra}")}})
    );
    let done = pair.handle.stats().succeeded;
    celery
        .send_task(
            ADD.name(),
            (3, 4),
            (),
            TaskOptions::new().queue(extra.as_str()),
        )
        .await
        .expect("sent");
    until("a task of the added queue runs", WAIT, || {
        pair.handle.stats().succeeded > done
    })
    .await;

    // `celery control shutdown`: ours stops (no reply, so Celery says none came).
    let (_, text) = tokio::task::block_in_place(|| {
        pair.celery(&["control", "shutdown", "-t", "1", "-d", rust])
    });
    tokio::time::timeout(WAIT, &mut pair.running)
        .await
        .unwrap_or_else(|_| panic!("our worker did not stop on `celery control shutdown`: {text}"))
        .expect("joined")
        .expect("ran");
    let pong = tokio::task::block_in_place(|| pair.celery_json(&["inspect", "ping"], &[py]));
    assert_eq!(
        pong,
        json!({py: {"ok": "pong"}}),
        "the Python worker runs on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_inspect_and_control_steer_our_worker_on_redis() {
    kombu_redis::register();
    celery_tools("redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_inspect_and_control_steer_our_worker_on_rabbitmq() {
    kombu_amqp::register();
    celery_tools("amqp").await;
}

/// A child process killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn events_and_flower(transport: &'static str) {
    let Some(python) = python() else { return };
    let Some(broker) = brokers::broker(transport, "pyevents") else {
        return;
    };
    let pair = Pair::start(&python, transport, &broker.url, true).await;
    tokio::task::block_in_place(|| pair.both_answer());
    let celery = Celery::builder(&pair.conn)
        .default_queue(pair.queue.as_str())
        .build();

    // Celery's EventReceiver, ready once it heard our worker.
    let mut receiver = Command::new(&python)
        .arg(support::script().with_file_name("events_side.py"))
        .args([pair.node.as_str(), "3", "20"])
        .envs(pair.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start events_side.py");
    let mut lines = BufReader::new(receiver.stdout.take().expect("its stdout")).lines();
    let first = tokio::task::block_in_place(|| lines.next());
    assert_eq!(first.and_then(Result::ok).as_deref(), Some("ready"));
    let ok = celery
        .send_task(ADD.name(), (2, 3), (), TaskOptions::new())
        .await
        .expect("sent");
    let failing = celery
        .send_task(FAIL.name(), ("boom",), (), TaskOptions::new())
        .await
        .expect("sent");
    let unknown = celery
        .send_task("tasks.unknown", (), (), TaskOptions::new())
        .await
        .expect("sent");
    let report = tokio::task::block_in_place(|| lines.next());
    let _ = receiver.wait();
    let report: Json = serde_json::from_str(&report.and_then(Result::ok).unwrap_or_default())
        .expect("events_side.py's report");
    let events = report["events"].as_array().cloned().unwrap_or_default();
    let kinds = |id: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["uuid"] == json!(id))
            .filter_map(|e| e["type"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(
        kinds(&ok),
        ["task-received", "task-started", "task-succeeded"],
        "{report}"
    );
    assert_eq!(
        kinds(&failing),
        ["task-received", "task-started", "task-failed"],
        "{report}"
    );
    // As Celery's on_unknown_task: one task-failed, NotRegistered.
    assert_eq!(kinds(&unknown), ["task-failed"], "{report}");
    assert!(
        events.iter().any(|e| e["uuid"] == json!(unknown)
            && e["exception"] == json!("NotRegistered('tasks.unknown')")),
        "{report}"
    );
    assert!(
        events.iter().any(|e| e["type"] == json!("worker-heartbeat")
            && e["sw_ident"] == json!("kombu-rs")
            && e["freq"] == json!(2.0)),
        "{report}"
    );
    // Task events in clock order (a heartbeat, not batched, may overtake a batch).
    let clocks: Vec<u64> = events
        .iter()
        .filter(|e| e["type"].as_str().is_some_and(|t| t.starts_with("task-")))
        .filter_map(|e| e["clock"].as_u64())
        .collect();
    assert!(
        clocks.windows(2).all(|w| w[0] < w[1]),
        "in clock order: {clocks:?}"
    );
    assert_eq!(report["tasks"][&ok], json!("SUCCESS"), "{report}");
    assert_eq!(report["tasks"][&failing], json!("FAILURE"), "{report}");
    assert_eq!(report["tasks"][&unknown], json!("FAILURE"), "{report}");
    assert_eq!(report["worker"]["alive"], json!(true), "{report}");

    // Flower on the same broker.
    let port = free_port();
    let port_text = port.to_string();
    let _flower = Child(
        Command::new(&python)
            .args([
                "-m",
                "celery",
                "-A",
                "kombu_rs_tasks",
                "flower",
                "--address=127.0.0.1",
            ])
            .arg(format!("--port={port_text}"))
            .current_dir(pair.py.dir())
            .env("PYTHONPATH", pair.py.dir())
            .env("FLOWER_UNAUTHENTICATED_API", "true")
            .envs(pair.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start flower"),
    );
    let node = pair.node.clone();
    let workers = tokio::task::block_in_place(|| {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some((200, body)) =
                http_get(port, &format!("/api/workers?refresh=1&workername={node}"))
                && let Ok(Json::Object(workers)) = serde_json::from_str::<Json>(&body)
                && workers.get(&node).is_some_and(|w| w.get("stats").is_some())
            {
                return Json::Object(workers);
            }
            assert!(Instant::now() < deadline, "Flower never listed {node}");
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    assert!(
        workers[&node]["registered"]
            .as_array()
            .is_some_and(|l| l.contains(&json!("tasks.add"))),
        "{workers}"
    );
    assert_eq!(
        workers[&node]["active_queues"][0]["name"],
        json!(pair.queue)
    );
    // Tasks sent now show in Flower with their state, from our task events.
    let seen = celery
        .send_task(ADD.name(), (20, 22), (), TaskOptions::new())
        .await
        .expect("sent");
    let task = tokio::task::block_in_place(|| {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some((200, body)) = http_get(port, "/api/tasks")
                && let Ok(tasks) = serde_json::from_str::<Json>(&body)
                && tasks[&seen]["state"] == json!("SUCCESS")
            {
                return tasks[&seen].clone();
            }
            assert!(
                Instant::now() < deadline,
                "Flower never showed task {seen} succeeded"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    assert_eq!(task["worker"], json!(node));
    assert_eq!(task["result"], json!("42"));
    assert_eq!(task["name"], json!("tasks.add"));
    let (status, online) =
        tokio::task::block_in_place(|| http_get(port, "/api/workers?status=true"))
            .expect("Flower answers");
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Json>(&online)
            .ok()
            .and_then(|w| w.get(&node).cloned()),
        Some(json!(true))
    );
    pair.handle.stop();
    let _ = tokio::time::timeout(WAIT, pair.running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_events_and_flower_see_our_worker_on_redis() {
    kombu_redis::register();
    events_and_flower("redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_events_and_flower_see_our_worker_on_rabbitmq() {
    kombu_amqp::register();
    events_and_flower("amqp").await;
}
