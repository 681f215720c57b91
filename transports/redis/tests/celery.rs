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

use kombu_test_support::{CeleryWorker, await_recorded_task, celery_task_headers, python};
use std::time::{Duration, Instant};

use kombu_core::{Connection, Queue};
use serde_json::json;

const GUARD: Duration = Duration::from_secs(60);

fn server() -> String {
    std::env::var("KOMBU_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned())
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

/// A Celery worker of [`APP`] named `name` on `queue` under the key prefix `prefix`, the path
/// (and its text) of the result file its task writes, and a kombu-rs connection with the same
/// prefix.
async fn start(
    python: &std::path::Path,
    name: &str,
    queue: &str,
    prefix: &str,
) -> (CeleryWorker, std::path::PathBuf, String, Connection) {
    let broker = server();
    let worker = CeleryWorker::start(
        python,
        name,
        APP,
        queue,
        &[("KOMBU_RS_PREFIX", prefix), ("KOMBU_RS_BROKER", &broker)],
    );
    let out_path = worker.dir().join("result.json");
    let out = out_path.to_str().expect("UTF-8 path").to_owned();
    kombu_redis::register();
    let url = format!("{}?global_keyprefix={}", server(), percent(prefix));
    let conn = Connection::open(&url).await.expect("open");
    (worker, out_path, out, conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_worker_runs_a_task_kombu_rs_published() {
    let Some(python) = python() else { return };
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("kombu-rs-celery-{tag}:");
    let queue = format!("rs-tasks-{tag}");
    let (worker, out_path, out, conn) = start(&python, "redis-celery", &queue, &prefix).await;
    let (task_id, nested) = publish_task(&conn, &queue, &out, false)
        .await
        .expect("publish the task");
    await_recorded_task(&out_path, GUARD, &task_id, &queue, &nested).await;

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

/// Publishes the `kombu_rs.record` task (writing to `out`) to `queue` through the default
/// exchange, as Celery routes to a direct queue; with `mandatory` the queue is not declared
/// first, so the publish relies on the worker having declared it. Returns the task id and the
/// `nested` argument.
async fn publish_task(
    conn: &Connection,
    queue: &str,
    out: &str,
    mandatory: bool,
) -> kombu_core::Result<(String, serde_json::Value)> {
    let task_id = uuid::Uuid::new_v4().to_string();
    let nested = json!({"list": [1, 2.5, "three", null], "map": {"k": "v"}, "u": "h\u{e9}llo"});
    let body = json!([
        [out, 2, 3],
        {"label": "from-rust", "nested": nested},
        {"callbacks": null, "errbacks": null, "chain": null, "chord": null},
    ]);
    let argsrepr = format!("('{out}', 2, 3)");
    let kwargsrepr = "{'label': 'from-rust', 'nested': {...}}";
    let producer = conn.producer().routing_key(queue);
    let producer = if mandatory {
        producer
    } else {
        producer.declare(Queue::new(queue))
    };
    producer
        .message(&body)
        .headers(celery_task_headers(
            "kombu_rs.record",
            &task_id,
            &argsrepr,
            kwargsrepr,
        ))
        .correlation_id(&task_id)
        .reply_to(uuid::Uuid::new_v4().to_string())
        .mandatory(mandatory)
        .send()
        .await?;
    Ok((task_id, nested))
}

/// The queue a Celery worker declared (named `celery`, as a worker's default queue is, bound
/// to its direct exchange `celery`; no list exists while it is empty) takes a mandatory
/// publish from kombu-rs to the default exchange without kombu-rs declaring it, and its size
/// can be asked; the worker runs the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_workers_queue_takes_a_mandatory_publish_without_declaring() {
    let Some(python) = python() else { return };
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("kombu-rs-celery-{tag}:");
    let queue = "celery";
    let (worker, out_path, out, conn) =
        start(&python, "redis-celery-declared", queue, &prefix).await;
    // The worker declares its queue when it starts.
    let deadline = Instant::now() + GUARD;
    while !conn.queue_exists(queue).await.expect("queue_exists") {
        assert!(
            Instant::now() < deadline,
            "the worker declared no queue {queue:?}:\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    conn.queue_size(queue)
        .await
        .expect("the size of the worker's queue");
    let (task_id, nested) = publish_task(&conn, queue, &out, true)
        .await
        .expect("a mandatory publish to the worker's queue");
    await_recorded_task(&out_path, GUARD, &task_id, queue, &nested).await;
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
