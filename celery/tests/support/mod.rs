//! What kombu-celery's interop tests share: the tasks of `interop/worker_app.py`, and the
//! Python side `interop/celery_side.py`.

// Each test file uses its part.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use kombu_celery::Task;
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
