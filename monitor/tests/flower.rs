//! The monitor beside a real Flower (2.2, from the venv) on the same Redis, both listening to a
//! Rust worker with task events: the same bytes from `/api/tasks`, `/api/task/info/<id>` and
//! `/api/task/types`, and both see the worker alive.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kombu_celery::worker::{TaskContext, Worker};
use kombu_celery::{Celery, Task, TaskOptions};
use kombu_core::Connection;
use kombu_monitor::Monitor;
use kombu_test_support::{brokers, python};
use serde_json::{Value as Json, json};

const ADD: Task<(i64, i64), i64> = Task::new("tasks.add");
const FAIL: Task<(String,), ()> = Task::new("tasks.fail");
const WAIT: Duration = Duration::from_secs(40);

/// A free port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `GET path` on loopback `port`: the status and the body (`None` when nothing answers).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// A child process killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `port` at `path` until `done` holds for the JSON body; returns the body.
async fn poll(port: u16, path: &str, what: &str, done: impl Fn(&Json) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = {
            let path = path.to_owned();
            tokio::task::spawn_blocking(move || http_get(port, &path))
                .await
                .expect("joined")
        };
        if let Some((200, body)) = got
            && serde_json::from_str::<Json>(&body).is_ok_and(|v| done(&v))
        {
            return body;
        }
        assert!(Instant::now() < deadline, "{what} never came: {path}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_api_bytes_as_flower_on_redis() {
    kombu_redis::register();
    let Some(python) = python() else { return };
    let Some(broker) = brokers::broker("redis", "monitor") else {
        return;
    };
    let (py_url, options) = brokers::celery_side("redis", &broker.url);
    let dir = std::env::temp_dir().join(format!("kombu-monitor-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("a directory");
    std::fs::write(
        dir.join("flower_app.py"),
        "import json, os\nfrom celery import Celery\n\
         app = Celery('flower_app', broker=os.environ['KOMBU_RS_BROKER'])\n\
         app.conf.broker_transport_options = json.loads(os.environ['KOMBU_RS_OPTIONS'])\n",
    )
    .expect("write the app");
    let flower_port = free_port();
    let _flower = Child(
        Command::new(&python)
            .args([
                "-m",
                "celery",
                "-A",
                "flower_app",
                "flower",
                "--address=127.0.0.1",
            ])
            .arg(format!("--port={flower_port}"))
            .current_dir(&dir)
            .env("PYTHONPATH", &dir)
            .env("FLOWER_UNAUTHENTICATED_API", "true")
            .env("KOMBU_RS_BROKER", &py_url)
            .env("KOMBU_RS_OPTIONS", &options)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start flower"),
    );

    let conn = Connection::open(&broker.url).await.expect("open");
    let monitor = Monitor::builder(&conn).start().await.expect("the monitor");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let our_port = listener.local_addr().expect("address").port();
    let app = monitor.router();
    let serving = tokio::spawn(async move { axum::serve(listener, app).await });

    let id = uuid::Uuid::new_v4().simple().to_string();
    let node = format!("mon-{}@test", &id[..10]);
    let queue = format!("monitor-{id}");
    let worker = Worker::builder(&conn)
        .hostname(node.as_str())
        .queue(queue.as_str())
        .concurrency(1)
        .task_events(true)
        .task(ADD, |(x, y), _: TaskContext| async move { Ok(x + y) })
        .task(FAIL, |(message,), _: TaskContext| async move {
            Err(kombu_celery::TaskFailure::value_error(message).into())
        })
        .build()
        .expect("a worker");
    let handle = worker.handle();
    let running = tokio::spawn(worker.run());

    // Both hear the worker's heartbeats (Flower's receiver is up then).
    for port in [flower_port, our_port] {
        poll(port, "/api/workers?status=true", "the worker alive", |v| {
            v[&node] == json!(true)
        })
        .await;
    }
    let celery = Celery::builder(&conn).default_queue(queue.as_str()).build();
    let ok = celery
        .send_task(ADD.name(), (2, 3), (), TaskOptions::new())
        .await
        .expect("sent");
    let failing = celery
        .send_task(FAIL.name(), ("boom",), (), TaskOptions::new())
        .await
        .expect("sent");
    let finished =
        |v: &Json| v[&ok]["state"] == json!("SUCCESS") && v[&failing]["state"] == json!("FAILURE");
    let theirs = poll(flower_port, "/api/tasks", "Flower's tasks", finished).await;
    let ours = poll(our_port, "/api/tasks", "the monitor's tasks", finished).await;
    assert_eq!(ours, theirs, "/api/tasks");
    for path in [
        format!("/api/task/info/{ok}"),
        format!("/api/task/info/{failing}"),
        "/api/task/types".to_owned(),
        "/api/tasks?sort_by=-name&limit=1".to_owned(),
        "/api/tasks?state=failure".to_owned(),
        format!("/api/tasks?workername={node}&offset=1"),
        "/api/task/info/nothing".to_owned(),
        "/api/tasks?sort_by=size".to_owned(),
        "/api/tasks?limit=x".to_owned(),
    ] {
        let get = |port: u16| {
            let path = path.clone();
            tokio::task::spawn_blocking(move || http_get(port, &path))
        };
        let theirs = get(flower_port)
            .await
            .expect("joined")
            .expect("Flower answers");
        let ours = get(our_port)
            .await
            .expect("joined")
            .expect("the monitor answers");
        assert_eq!(ours, theirs, "{path}");
    }
    let (status, body) = tokio::task::spawn_blocking(move || http_get(our_port, "/healthcheck"))
        .await
        .expect("joined")
        .expect("answers");
    assert_eq!((status, body.as_str()), (200, "OK"));

    handle.stop();
    let _ = tokio::time::timeout(WAIT, running).await;
    serving.abort();
    monitor.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
