//! Celery on RabbitMQ, both ways: a real Celery worker executes a task message kombu-rs
//! published, and kombu-rs consumes and decodes a task Python Celery sent.
//!
//! The message kombu-rs publishes is built here by hand from Celery's protocol 2 (reference
//! `celery-protocol.md` §2: every header, the `[args, kwargs, embed]` JSON body, the task id as
//! `correlation_id`) and published by a kombu-core `Producer` to the default exchange with the
//! queue's name as routing key, as Celery routes to a direct queue. The worker
//! (`celery worker --pool solo` on a queue of its own) runs a task that writes its arguments and
//! request details to a file; the test waits for the file (60 s guard, not a timing assertion).
//! The worker is killed when the test ends, pass or fail. Both tests run on a virtual host made
//! fresh for the run (`kombu-rs-celery`).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kombu_core::{Connection, Exchange, Queue, Value};
use kombu_test_support::{CeleryWorker, await_recorded_task, celery_task_headers, python};
use serde_json::{Value as Json, json};

const GUARD: Duration = Duration::from_secs(60);

fn url() -> Option<String> {
    static URL: OnceLock<Option<String>> = OnceLock::new();
    URL.get_or_init(|| {
        kombu_amqp::register();
        if !common::broker_up("celery") {
            return None;
        }
        let vhost = common::fresh_vhost("kombu-rs-celery");
        Some(common::url_on(vhost.as_deref()))
    })
    .clone()
}

async fn setup() -> Option<(String, PathBuf)> {
    let url = tokio::task::spawn_blocking(url).await.ok().flatten()?;
    Some((url, python()?))
}

const APP: &str = r#"
import json
import os
import sys

from celery import Celery

QUEUE = os.environ["KOMBU_RS_QUEUE"]

app = Celery("kombu_rs_tasks", broker=os.environ["KOMBU_RS_BROKER"])
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


if __name__ == "__main__" and sys.argv[1] == "send":
    # What `add.apply_async((2, 3), kwargs=..., queue=QUEUE)` sends, by name.
    result = app.send_task("kombu_rs.add", args=(2, 3), kwargs={"label": "from-python"},
                           queue=QUEUE, priority=3)
    print(json.dumps({"id": result.id}))
"#;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "kombu-amqp-{name}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("create the scratch directory");
    std::fs::write(dir.join("kombu_rs_tasks.py"), APP).expect("write the app module");
    dir
}

/// Celery's declaration of a queue named `name`: a durable direct exchange of the same name,
/// bound with the name as key.
fn celery_queue(name: &str) -> Queue {
    Queue::new(name)
        .exchange(Exchange::direct(name))
        .routing_key(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_worker_runs_a_task_kombu_rs_published() {
    let Some((url, python)) = setup().await else {
        return;
    };
    let queue = format!("rs-tasks-{}", uuid::Uuid::new_v4().simple());
    let worker = CeleryWorker::start(
        &python,
        "amqp-celery",
        APP,
        &queue,
        &[("KOMBU_RS_BROKER", &url)],
    );
    let out_path = worker.dir().join("result.json");
    let out = out_path.to_str().expect("UTF-8 path").to_owned();

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
    // Declared as Celery declares it (the worker declares it too: the definitions must agree),
    // published to the default exchange with the queue's name as key, as Celery routes.
    conn.producer()
        .routing_key(&queue)
        .declare(celery_queue(&queue))
        .message(&body)
        .headers(celery_task_headers(
            "kombu_rs.record",
            &task_id,
            &argsrepr,
            kwargsrepr,
        ))
        .correlation_id(&task_id)
        .reply_to(uuid::Uuid::new_v4().to_string())
        .priority(0)
        .send()
        .await
        .expect("publish the task");

    await_recorded_task(&out_path, GUARD, &task_id, &queue, &nested).await;
    let deadline = Instant::now() + GUARD;
    loop {
        let log = worker.log();
        if log.contains(&format!("Task kombu_rs.record[{task_id}] succeeded")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker logged no success:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(conn.queue_size(&queue).await.expect("size"), 0, "acked");
    drop(worker);
    conn.delete_queue(&queue).await.expect("delete");
}

#[tokio::test]
async fn kombu_rs_consumes_a_task_celery_sent() {
    let Some((url, python)) = setup().await else {
        return;
    };
    let queue = format!("py-tasks-{}", uuid::Uuid::new_v4().simple());
    let dir = scratch("celery-send");
    let conn = Connection::open(&url).await.expect("open");
    // Declared first as Celery declares it; Celery's own declaration must then agree.
    let mut consumer = conn
        .consumer([celery_queue(&queue)])
        .accept(["json"])
        .build()
        .await
        .expect("consume");
    let out = Command::new(&python)
        .arg(dir.join("kombu_rs_tasks.py"))
        .arg("send")
        .current_dir(&dir)
        .env("KOMBU_RS_QUEUE", &queue)
        .env("KOMBU_RS_BROKER", &url)
        .output()
        .expect("run Celery's send_task");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "send_task failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent: Json = serde_json::from_slice(&out.stdout).expect("the task id as JSON");
    let task_id = sent["id"].as_str().expect("task id").to_owned();

    let d = match tokio::time::timeout(GUARD, consumer.next()).await {
        Ok(Some(Ok(d))) => d,
        other => panic!("no task message: {other:?}"),
    };
    assert_eq!(d.content_type(), Some("application/json"));
    assert_eq!(d.message().content_encoding.as_deref(), Some("utf-8"));
    assert_eq!(d.exchange(), "", "Celery publishes to the default exchange");
    assert_eq!(d.routing_key(), queue);
    let p = d.properties();
    assert_eq!(p.correlation_id.as_deref(), Some(task_id.as_str()));
    assert_eq!(p.priority, Some(3));
    assert_eq!(p.delivery_mode, Some(kombu_core::DeliveryMode::Persistent));
    let h = d.headers();
    let s = |k: &str| h.get(k).and_then(Value::as_str).map(str::to_owned);
    assert_eq!(s("lang").as_deref(), Some("py"));
    assert_eq!(s("task").as_deref(), Some("kombu_rs.add"));
    assert_eq!(s("id").as_deref(), Some(task_id.as_str()));
    assert_eq!(s("root_id").as_deref(), Some(task_id.as_str()));
    assert_eq!(h.get("retries"), Some(&Value::Int(0)));
    assert_eq!(h.get("parent_id"), Some(&Value::Null));
    assert_eq!(
        h.get("timelimit"),
        Some(&Value::List(vec![Value::Null, Value::Null]))
    );
    assert_eq!(s("argsrepr").as_deref(), Some("(2, 3)"));
    assert_eq!(s("kwargsrepr").as_deref(), Some("{'label': 'from-python'}"));
    let (args, kwargs, embed): (Vec<i64>, Json, Json) = d.decode().expect("protocol 2 body");
    assert_eq!(args, [2, 3]);
    assert_eq!(kwargs, json!({"label": "from-python"}));
    assert_eq!(
        embed,
        json!({"callbacks": null, "errbacks": null, "chain": null, "chord": null})
    );
    d.ack().await.expect("ack");
    consumer.close().await.expect("close");
    conn.delete_queue(&queue).await.expect("delete");
    conn.delete_exchange(&queue).await.expect("delete exchange");
}
