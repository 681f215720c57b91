//! `kombu celery call` and `kombu celery result` against a real Celery 5.7 worker on Redis
//! (broker and result backend under a key prefix of the test's own), as a user runs them: the
//! task id on stdout, the result as JSON on the last line with `--wait`, and the exit statuses
//! (0 SUCCESS, 1 FAILURE with the exception on stderr, 3 when the wait ends first or the task
//! is not finished).

mod cli_support;

use kombu_test_support::{CeleryWorker, brokers, python};
use predicates::prelude::*;

use cli_support::*;

#[test]
fn call_and_result_with_a_celery_worker() {
    let Some(python) = python() else { return };
    let Some(broker) = brokers::broker("redis", "cli-celery") else {
        return;
    };
    let url = broker.url.clone();
    let (py_url, options) = brokers::celery_side("redis", &url);
    let queue = format!("cli-celery-{}", uuid::Uuid::new_v4().simple());
    let worker = CeleryWorker::start(
        &python,
        "cli-celery",
        include_str!("../../celery/tests/interop/worker_app.py"),
        &queue,
        &[
            ("KOMBU_RS_BROKER", &py_url),
            ("KOMBU_RS_OPTIONS", &options),
            ("KOMBU_RS_BACKEND", &py_url),
        ],
    );

    // SUCCESS: the id, then the value on the last line.
    let out = kombu(&url)
        .args(["celery", "call", "tasks.add", "--args", "[2, 3]", "--queue"])
        .arg(&queue)
        .args(["--backend", &url, "--wait", "60"])
        .output()
        .expect("run kombu");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr),
        worker.log()
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let id = lines[0].to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(lines[1], "5");

    // The same result read again by its id.
    kombu(&url)
        .args(["celery", "result", &id, "--backend", &url])
        .assert()
        .success()
        .stdout("5\n");

    // FAILURE: exit 1, the state and the exception on stderr.
    kombu(&url)
        .args([
            "celery",
            "call",
            "tasks.fail",
            "--args",
            r#"["boom"]"#,
            "--queue",
        ])
        .arg(&queue)
        .args(["--backend", &url, "--wait", "60"])
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("FAILURE")
                .and(predicate::str::contains("ValueError"))
                .and(predicate::str::contains("boom")),
        );

    // Not finished: a task nobody takes (its queue has no worker) times out with exit 3.
    kombu(&url)
        .args(["celery", "call", "tasks.add", "--args", "[1, 1]"])
        .args(["--queue", &format!("{queue}-idle")])
        .args(["--backend", &url, "--wait", "0.5"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("PENDING"));
    kombu(&url)
        .args(["celery", "result", "no-such-task", "--backend", &url])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("is PENDING"));

    // Bad input is refused before anything is sent.
    kombu(&url)
        .args(["celery", "call", "tasks.add", "--args", "{}"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("JSON array"));
    kombu(&url)
        .args(["celery", "call", "tasks.add", "--wait", "1"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("--backend"));
    drop(worker);
    for q in [queue.clone(), format!("{queue}-idle")] {
        let _ = kombu(&url).args(["delete", "queue", &q]).output();
    }
}

#[test]
fn call_waits_on_rpc_by_default_on_rabbitmq() {
    let Some(python) = python() else { return };
    let Some(broker) = brokers::broker("amqp", "cli-celery-rpc") else {
        return;
    };
    let url = broker.url.clone();
    let queue = format!("cli-celery-rpc-{}", uuid::Uuid::new_v4().simple());
    let worker = CeleryWorker::start(
        &python,
        "cli-celery-rpc",
        include_str!("../../celery/tests/interop/worker_app.py"),
        &queue,
        &[("KOMBU_RS_BROKER", &url), ("KOMBU_RS_BACKEND", "rpc://")],
    );
    // No --backend: rpc:// on an AMQP broker, the results to a reply queue of the command's.
    let out = kombu(&url)
        .args([
            "celery",
            "call",
            "tasks.add",
            "--args",
            "[20, 22]",
            "--queue",
        ])
        .arg(&queue)
        .args(["--wait", "60"])
        .output()
        .expect("run kombu");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        worker.log()
    );
    assert_eq!(stdout.lines().last(), Some("42"), "{stdout}");
    kombu(&url)
        .args([
            "celery",
            "call",
            "tasks.fail",
            "--args",
            r#"["nope"]"#,
            "--queue",
        ])
        .arg(&queue)
        .args(["--wait", "60"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("ValueError").and(predicate::str::contains("nope")));
    // rpc:// results belong to the command that sent the task.
    kombu(&url)
        .args(["celery", "result", "any-id", "--backend", "rpc://"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("celery call --wait"));
    drop(worker);
    let _ = kombu(&url).args(["delete", "queue", &queue]).output();
}
