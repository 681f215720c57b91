//! `examples/celery_worker.rs` with Python Celery 5.7, on Redis (results in Redis), RabbitMQ
//! (`rpc://` results) and SQLite (Celery's `sqla+sqlite://` broker, `db+sqlite://` results):
//!
//! - Python's `examples/python/tasks.py` sends, our worker runs, Python's `AsyncResult.get()`
//!   reads: `add.delay(2, 3)`, keyword arguments, a JSON value echoed, a failure re-raised as
//!   `ValueError`, a task retrying itself, an expired task (REVOKED), an ETA task (not run
//!   early), a hard time limit, a protocol 1 message;
//! - a chain across languages: our worker, then a Python worker, then ours; a group, and a
//!   chord followed by another step, as chain steps our worker sends;
//! - chords across languages on Redis and `db+sqlite://` (`rpc://` has none), sent by Python
//!   and by us, each with its body on either side (on SQL the worker of the body's queue runs
//!   `celery.chord_unlock`);
//! - a few hundred tasks, every result back (`scripts/soak` runs 10,000, and the SIGKILL run);
//! - the worker stops with status 0 on SIGTERM.
//!
//! The example binary is the one `cargo test` builds beside this test's.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kombu::Connection;
use kombu::celery::backend::{RedisResultBackend, ResultBackend, SqlResultBackend};
use kombu::celery::{Celery, Signature};
use kombu_test_support::{CeleryWorker, brokers, python};
use serde_json::{Value as Json, json};

const TRANSPORTS: [&str; 3] = ["redis", "amqp", "sqlite"];
/// Tasks sent through the worker in one run here (the soak script sends 10,000).
const MANY: usize = 300;

/// The example's binary: `target/<profile>/examples/celery_worker`, beside this test's
/// `deps/` directory.
fn worker_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("this test's path");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let bin = profile.join("examples").join("celery_worker");
    assert!(
        bin.exists(),
        "{} is missing: build the examples (cargo test builds them)",
        bin.display()
    );
    bin
}

/// The example worker; its log (standard error) goes to a file, printed if the test fails.
struct RustWorker(Child, PathBuf);

impl RustWorker {
    fn start(broker: &str, backend: &str, queue: &str, log: PathBuf) -> RustWorker {
        let file = std::fs::File::create(&log).expect("the worker's log");
        let child = Command::new(worker_binary())
            .args(["--broker", broker, "--backend", backend, "--queue", queue])
            .args([
                "--concurrency",
                "4",
                "--hostname",
                &format!("rust-{queue}@test"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start examples/celery_worker");
        RustWorker(child, log)
    }

    /// SIGTERM, then its exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.0.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -TERM {pid}");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.0.try_wait().expect("wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the worker did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RustWorker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.1).unwrap_or_default();
            eprintln!("--- the Rust worker's log ---\n{log}");
        }
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/celery_tasks.py")
}

/// Runs `celery_tasks.py` with `env`; the JSON it printed.
fn celery_tasks(python: &Path, env: &[(String, String)], args: &[&str]) -> Json {
    let out = Command::new(python)
        .arg(script())
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("run celery_tasks.py");
    assert!(
        out.status.success(),
        "celery_tasks.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from celery_tasks.py")
}

/// Our worker's broker and backend URLs, and Python's settings for the same.
fn settings(
    transport: &str,
    url: &str,
    scratch: &Path,
    queue: &str,
) -> (String, String, Vec<(String, String)>) {
    let (py_broker, options) = brokers::celery_side(transport, url);
    let (backend, py_backend) = match transport {
        "redis" => (url.to_owned(), py_broker.clone()),
        "amqp" => ("rpc://".to_owned(), "rpc://".to_owned()),
        _ => {
            let file = scratch.join("results.db");
            let url = format!("db+sqlite:///{}", file.display());
            (url.clone(), url)
        }
    };
    let env = vec![
        ("CELERY_BROKER_URL".to_owned(), py_broker),
        ("CELERY_RESULT_BACKEND".to_owned(), py_backend),
        ("CELERY_QUEUE".to_owned(), queue.to_owned()),
        ("CELERY_TRANSPORT_OPTIONS".to_owned(), options),
    ];
    (url.to_owned(), backend, env)
}

#[test]
fn python_sends_our_worker_runs() {
    let Some(python) = python() else { return };
    for transport in TRANSPORTS {
        let Some(broker) = brokers::broker(transport, "celery-worker") else {
            continue;
        };
        let scratch = tempdir(transport);
        let queue = format!("rust-worker-{}", uuid::Uuid::new_v4().simple());
        let (url, backend, env) = settings(transport, &broker.url, &scratch, &queue);
        let worker = RustWorker::start(&url, &backend, &queue, scratch.join("worker.log"));

        let out = celery_tasks(&python, &env, &["checks"]);
        let what = format!("{transport}: {out}");
        assert_eq!(out["add"], json!(5), "{what}");
        assert_eq!(out["add_kwargs"], json!(7), "{what}");
        assert_eq!(out["echo"], json!({"a": [1, 2.5, null, "x"]}), "{what}");
        assert_eq!(
            out["fail"],
            json!(["builtins", "ValueError", ["boom"]]),
            "{what}"
        );
        assert_eq!(out["flaky"], json!(2), "{what}");
        assert_eq!(
            out["expired"],
            json!(["celery.exceptions", "TaskRevokedError", ["expired"]]),
            "{what}"
        );
        assert_eq!(out["eta"], json!(8), "{what}");
        assert_eq!(out["eta_not_early"], json!(true), "{what}");
        assert_eq!(out["time_limit"][1], json!("TimeLimitExceeded"), "{what}");
        assert_eq!(out["protocol1"], json!(11), "{what}");

        // A chain across languages: ours, then a Python worker's, then ours.
        let py_queue = format!("{queue}-py");
        let py_env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let py_worker = CeleryWorker::start(
            &python,
            "celery-worker-chain",
            include_str!("../examples/python/tasks.py"),
            &py_queue,
            &py_env,
        );
        let out = celery_tasks(&python, &env, &["chain", &py_queue]);
        assert_eq!(
            out,
            json!({"value": 13, "parent": 9}),
            "{transport}: the chain"
        );
        // A group, and a chord with a step after it, as chain steps our worker sends.
        let chords = if transport == "amqp" {
            "nochords"
        } else {
            "chords"
        };
        let out = celery_tasks(&python, &env, &["canvas", &py_queue, chords]);
        assert_eq!(
            out["group"],
            json!([4, 6]),
            "{transport}: a group in a chain"
        );
        if transport != "amqp" {
            assert_eq!(
                out["chord"],
                json!([4, 6]),
                "{transport}: a chord in a chain"
            );
        }
        // Chords across languages (Celery's rpc:// has none): sent by Python, then by us.
        if transport != "amqp" {
            let out = celery_tasks(&python, &env, &["chord", &py_queue]);
            assert_eq!(
                out,
                json!({"ours": [2, 4, 6], "theirs": [20, 40]}),
                "{transport}: Python's chords"
            );
            let rt = tokio::runtime::Runtime::new().expect("a runtime");
            let values = rt.block_on(rust_chord(&url, &backend, &queue, &py_queue));
            assert_eq!(values, json!([[3, 7], [3, 7]]), "{transport}: our chords");
        }
        drop(py_worker);

        let out = celery_tasks(&python, &env, &["many", &MANY.to_string()]);
        let expected: Vec<usize> = (0..MANY).collect();
        assert_eq!(out["values"], json!(expected), "{transport}: {MANY} tasks");

        let status = worker.terminate();
        assert!(
            status.success(),
            "{transport}: the worker exited with {status}"
        );
        let _ = std::fs::remove_dir_all(&scratch);
    }
}

/// Two chords sent from Rust, each with one header task on our worker and one on Python's:
/// the body on Python's, then on ours. Their results.
async fn rust_chord(url: &str, backend_url: &str, ours: &str, theirs: &str) -> Json {
    let conn = Connection::open(url).await.expect("open");
    let backend: Box<dyn ResultBackend> = match backend_url.starts_with("redis") {
        true => Box::new(
            RedisResultBackend::connect(backend_url)
                .await
                .expect("backend"),
        ),
        false => Box::new(SqlResultBackend::open(backend_url).await.expect("backend")),
    };
    let celery = Celery::builder(&conn).default_queue(ours).build();
    let mut values = Vec::new();
    for body_queue in [theirs, ours] {
        let header = vec![
            Signature::new("tasks.add")
                .args((1, 2))
                .option("queue", ours),
            Signature::new("tasks.add")
                .args((3, 4))
                .option("queue", theirs),
        ];
        let body = Signature::new("tasks.echo").option("queue", body_queue);
        let sent = celery
            .chord(header, body, backend.as_ref())
            .await
            .expect("send the chord");
        let value = sent
            .body
            .get(backend.as_ref(), Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("the chord with its body on {body_queue}: {e}"));
        values.push(value);
    }
    Json::Array(values)
}

fn tempdir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "kombu-rs-celery-worker-{label}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}
