//! The Python side of the integration tests: the interpreter of the venv with kombu and
//! Celery, Celery workers, and Celery's task headers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use kombu_core::{Headers, Value};

/// The Python interpreter of the venv `scripts/python-env` makes (`$KOMBU_PYTHON`, else
/// `~/.cache/kombu-rs/venv/bin/python` when it exists). Without one: a panic when
/// `KOMBU_TEST_REQUIRE` is set (as in CI), else `None` with a "skipped" message.
pub fn python() -> Option<PathBuf> {
    let candidate = std::env::var_os("KOMBU_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            let venv = PathBuf::from(home).join(".cache/kombu-rs/venv/bin/python");
            venv.exists().then_some(venv)
        });
    if candidate.is_none() {
        let hint = "no Python with kombu and Celery: run scripts/python-env and set KOMBU_PYTHON";
        if std::env::var_os("KOMBU_TEST_REQUIRE").is_some() {
            panic!("{hint} (KOMBU_TEST_REQUIRE is set, so this is a failure)");
        }
        eprintln!("skipped: {hint}");
    }
    candidate
}

/// A Celery worker process (`celery -A kombu_rs_tasks worker --pool solo`) and its scratch
/// directory, which holds the app module and the worker's log. The worker is killed and the
/// directory removed when the guard drops; when the test is failing, the directory is kept and
/// the log printed.
#[derive(Debug)]
pub struct CeleryWorker {
    child: Option<Child>,
    dir: PathBuf,
    node: String,
}

impl CeleryWorker {
    /// Starts a worker of the app module `app` (Python source, written as `kombu_rs_tasks.py`)
    /// consuming `queue`, with `env` set for it (the app reads its broker URL from there).
    /// `name` labels the scratch directory. Panics when the worker cannot start (a test
    /// helper).
    pub fn start(python: &Path, name: &str, app: &str, queue: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn(python, name, app, queue, env, &["--without-heartbeat"])
    }

    /// [`CeleryWorker::start`], with the worker's events on: heartbeats every 2 s (so a
    /// monitor sees it online) and task events (`-E`).
    pub fn start_with_events(
        python: &Path,
        name: &str,
        app: &str,
        queue: &str,
        env: &[(&str, &str)],
    ) -> Self {
        Self::spawn(python, name, app, queue, env, &["-E"])
    }

    fn spawn(
        python: &Path,
        name: &str,
        app: &str,
        queue: &str,
        env: &[(&str, &str)],
        flags: &[&str],
    ) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir =
            std::env::temp_dir().join(format!("kombu-rs-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the worker directory"); // ok: a test helper; documented to panic
        std::fs::write(dir.join("kombu_rs_tasks.py"), app).expect("write the app module"); // ok: a test helper; documented to panic
        let log = std::fs::File::create(dir.join("worker.log")).expect("worker log"); // ok: a test helper; documented to panic
        // A node name of its own: workers of concurrent tests must not share a mailbox
        // (`<name>.celery.pidbox` is exclusive on RabbitMQ).
        let node = format!("kombu-rs-{name}-{}-{nanos}@test", std::process::id());
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
                "-c",
                "1",
                "-n",
                &node,
                "--loglevel",
                "INFO",
            ])
            .args(flags)
            .current_dir(&dir)
            .env("PYTHONPATH", &dir)
            .env("KOMBU_RS_QUEUE", queue)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log")) // ok: a test helper; documented to panic
            .stderr(log)
            .spawn()
            .expect("start the Celery worker"); // ok: a test helper; documented to panic
        CeleryWorker {
            child: Some(child),
            dir,
            node,
        }
    }

    /// The worker's node name (`-n`), unique to it.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The scratch directory (where the app module and the log are).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the worker has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("worker.log")).unwrap_or_default()
    }
}

impl Drop for CeleryWorker {
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

/// Celery's protocol 2 task headers (reference celery-protocol.md §2.2), all of them, in
/// Celery's order, for a task `task` with id `id` (also its root id).
pub fn celery_task_headers(task: &str, id: &str, argsrepr: &str, kwargsrepr: &str) -> Headers {
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

/// Waits (up to `guard`) for the JSON file the interop tests' Celery task `kombu_rs.record`
/// writes at `path`, and checks it against the task kombu-rs published: id `task_id` (its own
/// root, not retried), args `[2, 3]`, `label` `"from-rust"`, `nested` as given, delivered from
/// the default exchange with routing key `queue`. Returns it. Panics on a mismatch or when the
/// worker did not run the task in time (a test helper).
pub async fn await_recorded_task(
    path: &Path,
    guard: std::time::Duration,
    task_id: &str,
    queue: &str,
    nested: &serde_json::Value,
) -> serde_json::Value {
    use serde_json::json;
    let deadline = std::time::Instant::now() + guard;
    let result: serde_json::Value = loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            break serde_json::from_str(&text).expect("the task wrote JSON"); // ok: a test helper; panics are its failures
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the Celery worker did not run the task within {guard:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(result["args"], json!([2, 3]), "{result}");
    assert_eq!(result["label"], "from-rust", "{result}");
    assert_eq!(&result["nested"], nested, "{result}");
    assert_eq!(result["id"], task_id, "{result}");
    assert_eq!(result["root_id"], task_id, "{result}");
    assert_eq!(result["retries"], 0, "{result}");
    assert_eq!(result["delivery_info"]["exchange"], "", "{result}");
    assert_eq!(result["delivery_info"]["routing_key"], queue, "{result}");
    result
}
