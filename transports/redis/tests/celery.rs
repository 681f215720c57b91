//! A real Celery worker executes a task message kombu-rs published on Redis.
//!
//! The message is built here by hand from Celery's protocol 2 (reference
//! `celery-protocol.md` §2: every header, the `[args, kwargs, embed]` JSON body, the task id as
//! `correlation_id`) and published by a kombu-core `Producer` to the default exchange with the
//! queue's name as routing key, as Celery itself routes to a direct queue. The worker
//! (`celery worker --pool solo`, a unique queue and `global_keyprefix`) runs a task that writes
//! its arguments and request details to a file; the test waits for the file (60 s guard, not a
//! timing assertion) and checks it. The worker is killed when the test ends, pass or fail.
//!
//! The server is `$KOMBU_REDIS_URL` (default `redis://127.0.0.1:6379/0`). The Python
//! interpreter is `$KOMBU_PYTHON`, else `~/.cache/kombu-rs/venv/bin/python` (with Celery);
//! without one the test fails when `KOMBU_TEST_REQUIRE` is set and is skipped otherwise.

use kombu_core::conformance::support::python;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kombu_core::{Connection, Headers, Queue, Value};
use serde_json::{Value as Json, json};

const GUARD: Duration = Duration::from_secs(60);

fn server() -> String {
    std::env::var("KOMBU_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned())
}

/// The worker process and its scratch directory: the worker is killed and the directory
/// removed on drop (kept, with the worker's log, when the test fails).
struct Worker {
    child: Option<Child>,
    dir: PathBuf,
}

impl Worker {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("worker.log")).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "worker directory kept: {}\n--- worker log ---\n{}",
                self.dir.display(),
                self.log()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

const APP: &str = r#"
import json
import os

from celery import Celery

PREFIX = os.environ["KOMBU_RS_PREFIX"]
QUEUE = os.environ["KOMBU_RS_QUEUE"]

app = Celery("kombu_rs_tasks", broker=os.environ["KOMBU_RS_BROKER"])
app.conf.broker_transport_options = {"global_keyprefix": PREFIX}
app.conf.task_default_queue = QUEUE
app.conf.worker_hijack_root_logger = False
app.conf.broker_connection_retry_on_startup = True


@app.task(name="kombu_rs.record", bind=True)
def record(self, path, a, b, *, label=None, nested=None):
    out = {
        "args": [a, b],
        "label": label,
        "nested": nested,
        "id": self.request.id,
        "root_id": self.request.root_id,
        "retries": self.request.retries,
        "delivery_info": self.request.delivery_info,
    }
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.rename(tmp, path)
    return a + b
"#;

fn start_worker(python: &Path, prefix: &str, queue: &str) -> Worker {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let dir =
        std::env::temp_dir().join(format!("kombu-redis-celery-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the worker directory");
    std::fs::write(dir.join("kombu_rs_tasks.py"), APP).expect("write the app module");
    let log = std::fs::File::create(dir.join("worker.log")).expect("worker log");
    let child = Command::new(python)
        .args([
            "-m",
            "celery",
            "-A",
            "kombu_rs_tasks",
            "worker",
            "--pool",
            "solo",
            "-Q",
            queue,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-c",
            "1",
            "--loglevel",
            "INFO",
        ])
        .current_dir(&dir)
        .env("PYTHONPATH", &dir)
        .env("KOMBU_RS_PREFIX", prefix)
        .env("KOMBU_RS_QUEUE", queue)
        .env("KOMBU_RS_BROKER", server())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start the Celery worker");
    Worker {
        child: Some(child),
        dir,
    }
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Celery's protocol 2 headers (celery-protocol.md §2.2), all of them, in Celery's order.
fn task_headers(task: &str, id: &str, argsrepr: &str, kwargsrepr: &str) -> Headers {
    let mut h = Headers::new();
    let mut set = |k: &str, v: Value| {
        h.insert(k.to_owned(), v);
    };
    set("lang", "py".into());
    set("task", task.into());
    set("id", id.into());
    set("shadow", Value::Null);
    set("eta", Value::Null);
    set("expires", Value::Null);
    set("group", Value::Null);
    set("group_index", Value::Null);
    set("retries", 0.into());
    set("timelimit", vec![Value::Null, Value::Null].into());
    set("root_id", id.into());
    set("parent_id", Value::Null);
    set("argsrepr", argsrepr.into());
    set("kwargsrepr", kwargsrepr.into());
    set(
        "origin",
        format!("gen{}@kombu-rs-test", std::process::id()).into(),
    );
    set("ignore_result", false.into());
    set("replaced_task_nesting", 0.into());
    set("stamped_headers", Value::Null);
    set("stamps", Headers::new().into());
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_worker_runs_a_task_kombu_rs_published() {
    let Some(python) = python() else { return };
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("kombu-rs-celery-{tag}:");
    let queue = format!("rs-tasks-{tag}");
    let worker = start_worker(&python, &prefix, &queue);
    let out_path = worker.dir.join("result.json");
    let out = out_path.to_str().expect("UTF-8 path").to_owned();

    kombu_redis::register();
    let url = format!("{}?global_keyprefix={}", server(), percent(&prefix));
    let conn = Connection::open(&url).await.expect("open");
    let task_id = uuid::Uuid::new_v4().to_string();
    let nested = json!({"list": [1, 2.5, "three", null], "map": {"k": "v"}, "u": "h\u{e9}llo"});
    let body = json!([
        [out, 2, 3],
        {"label": "from-rust", "nested": nested},
        {"callbacks": null, "errbacks": null, "chain": null, "chord": null},
    ]);
    let argsrepr = format!("('{out}', 2, 3)");
    let kwargsrepr = "{'label': 'from-rust', 'nested': {...}}";
    // The default exchange, routing key = queue name: how Celery routes to a direct queue.
    conn.producer()
        .routing_key(&queue)
        .declare(Queue::new(&queue))
        .message(&body)
        .headers(task_headers(
            "kombu_rs.record",
            &task_id,
            &argsrepr,
            kwargsrepr,
        ))
        .correlation_id(&task_id)
        .reply_to(uuid::Uuid::new_v4().to_string())
        .send()
        .await
        .expect("publish the task");

    let deadline = Instant::now() + GUARD;
    let result: Json = loop {
        if let Ok(text) = std::fs::read_to_string(&out_path) {
            break serde_json::from_str(&text).expect("the task wrote JSON");
        }
        assert!(
            Instant::now() < deadline,
            "the Celery worker did not run the task within {GUARD:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(result["args"], json!([2, 3]), "{result}");
    assert_eq!(result["label"], "from-rust", "{result}");
    assert_eq!(result["nested"], nested, "{result}");
    assert_eq!(result["id"], task_id.as_str(), "{result}");
    assert_eq!(result["root_id"], task_id.as_str(), "{result}");
    assert_eq!(result["retries"], 0, "{result}");
    assert_eq!(result["delivery_info"]["exchange"], "", "{result}");
    assert_eq!(
        result["delivery_info"]["routing_key"],
        queue.as_str(),
        "{result}"
    );

    // The worker acked it (task_acks_late=False: before running it): nothing left.
    let deadline = Instant::now() + GUARD;
    loop {
        let size = conn.queue_size(&queue).await.expect("size");
        if size == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{size} messages left");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = worker.log();
    assert!(
        log.contains(&format!("Task kombu_rs.record[{task_id}] succeeded")),
        "the worker logged no success:\n{log}"
    );
    drop(worker);
    clean(&prefix).await;
}

/// Deletes every key under `prefix`.
async fn clean(prefix: &str) {
    let Ok(client) = redis::Client::open(server()) else {
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
    if !keys.is_empty() {
        let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
}
