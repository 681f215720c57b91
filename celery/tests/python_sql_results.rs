//! Celery's SQL result backend on SQLite (`db+sqlite://`), both ways, with real Celery 5.7: a
//! Celery worker (broker `sqla+sqlite://`, the same file kombu-rs's `sqlite://` uses) stores
//! the results of tasks we send and [`SqlResultBackend`] reads them (5, `ValueError`); Python's
//! `AsyncResult.get()` reads the results we store; `cleanup` removes expired rows. Either side
//! may create Celery's tables first.

use std::time::Duration;

use kombu_celery::backend::{ResultBackend, SqlResultBackend};
use kombu_celery::{Celery, ResultMeta, State, TaskError, TaskFailure};
use kombu_core::Connection;
use kombu_test_support::{brokers, python};
use serde_json::json;

mod support;
use support::{ADD, FAIL, celery_side};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_results_both_ways() {
    let Some(python) = python() else { return };
    let Some(broker) = brokers::broker("sqlite", "celery-sql") else {
        return;
    };
    kombu_sqlite::register();
    let broker_file = broker.url.strip_prefix("sqlite://").expect("a file");
    let results_file = format!("{broker_file}.results.db");
    // SQLAlchemy's absolute form: four slashes.
    let backend_url = format!("db+sqlite:///{results_file}");
    let queue = format!("celery-sql-{}", uuid::Uuid::new_v4().simple());

    // Ours first: the tables exist before the worker starts (it must take them as they are).
    let backend = SqlResultBackend::open(&backend_url)
        .await
        .expect("the SQL result backend");
    let worker = support::worker(
        &python,
        "celery-sql",
        &queue,
        &[
            ("KOMBU_RS_BROKER", &format!("sqla+sqlite:///{broker_file}")),
            ("KOMBU_RS_BACKEND", &backend_url),
        ],
    );
    let conn = Connection::open(&broker.url).await.expect("open");
    let celery = Celery::builder(&conn).default_queue(queue.as_str()).build();
    let sum = celery.call(&ADD, (40, 2)).await.expect("send add");
    let failing = celery
        .call(&FAIL, ("sql boom".to_owned(),))
        .await
        .expect("send fail");
    assert_eq!(
        sum.get(&backend, WAIT).await.expect("add's result"),
        42,
        "{}",
        worker.log()
    );
    match failing.get(&backend, WAIT).await {
        Err(TaskError::Failed(failure)) => {
            assert_eq!(failure.exc_type, "ValueError", "{failure:?}");
            assert_eq!(failure.exc_message, [json!("sql boom")], "{failure:?}");
        }
        other => panic!("tasks.fail: {other:?}\n{}", worker.log()),
    }
    let meta = backend.meta(sum.id()).await.expect("meta");
    assert!(
        meta.date_done
            .as_deref()
            .is_some_and(|d| d.ends_with("+00:00")),
        "{meta:?}"
    );
    drop(worker);

    // Python reads what we store.
    let read = |id: &str| celery_side(&python, &["result", &backend_url, "{}", id]);
    let ok = uuid::Uuid::new_v4().to_string();
    backend
        .store(&ResultMeta::success(&ok, json!([1, "two", {"three": 3.0}])))
        .await
        .expect("store a success");
    assert_eq!(
        read(&ok),
        json!({"state": "SUCCESS", "value": [1, "two", {"three": 3.0}]})
    );
    let failed = uuid::Uuid::new_v4().to_string();
    backend
        .store(&ResultMeta::failure(
            &failed,
            State::Failure,
            &TaskFailure::new("builtins", "KeyError", "order-7"),
        ))
        .await
        .expect("store a failure");
    let got = read(&failed);
    assert_eq!(got["state"], "FAILURE", "{got}");
    assert_eq!(got["error_type"], "KeyError", "{got}");

    // Expired rows go (every row here is older than a zero expiry).
    let cleaner = SqlResultBackend::open(&backend_url)
        .await
        .expect("open again")
        .result_expires(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(cleaner.cleanup().await.expect("cleanup") >= 4);
    assert_eq!(backend.meta(&ok).await.expect("meta").state, State::Pending);
    let _ = conn.delete_queue(&queue).await;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{results_file}{suffix}"));
    }
}
