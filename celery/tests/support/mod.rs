//! What kombu-celery's interop tests share: the tasks of `interop/worker_app.py`, and the
//! Python side `interop/celery_side.py`.

// Each test file uses its part.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use kombu_celery::backend::RedisResultBackend;
use kombu_celery::{Celery, Task};
use kombu_core::Connection;
use kombu_test_support::{CeleryWorker, brokers};
use serde_json::Value as Json;

/// `interop/worker_app.py`'s `tasks.add`.
pub const ADD: Task<(i64, i64), i64> = Task::new("tasks.add");
/// `interop/worker_app.py`'s `tasks.fail`: raises `ValueError(message)`.
pub const FAIL: Task<(String,), ()> = Task::new("tasks.fail");

/// `interop/celery_side.py`.
pub fn script() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/interop/celery_side.py")
}

/// Runs a command of `celery_side.py` to its end and returns the JSON it printed.
pub fn celery_side(python: &Path, args: &[&str]) -> Json {
    let out = Command::new(python)
        .arg(script())
        .args(args)
        .output()
        .expect("run celery_side.py");
    assert!(
        out.status.success(),
        "celery_side.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from celery_side.py")
}

/// A Celery worker of `interop/worker_app.py` consuming `queue`, with `env` (its broker, and
/// its options and result backend when given).
pub fn worker(python: &Path, name: &str, queue: &str, env: &[(&str, &str)]) -> CeleryWorker {
    CeleryWorker::start(
        python,
        name,
        include_str!("../interop/worker_app.py"),
        queue,
        env,
    )
}

/// Both sides on the tests' Redis at `url` (a key prefix of the test's own): a Celery worker on
/// a fresh queue with Redis as broker and result backend, and ours: a connection, a client
/// sending to that queue, the Redis result backend, and the queue's name.
pub async fn on_redis(
    python: &Path,
    url: &str,
    name: &str,
) -> (CeleryWorker, Connection, Celery, RedisResultBackend, String) {
    kombu_redis::register();
    let (py_url, options) = brokers::celery_side("redis", url);
    let queue = format!("{name}-{}", uuid::Uuid::new_v4().simple());
    let worker = worker(
        python,
        name,
        &queue,
        &[
            ("KOMBU_RS_BROKER", &py_url),
            ("KOMBU_RS_OPTIONS", &options),
            ("KOMBU_RS_BACKEND", &py_url),
        ],
    );
    let conn = Connection::open(url).await.expect("open");
    let celery = Celery::builder(&conn).default_queue(queue.as_str()).build();
    let backend = RedisResultBackend::connect(url)
        .await
        .expect("the result backend");
    (worker, conn, celery, backend, queue)
}
