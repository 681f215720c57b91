//! Task results in Celery's Redis result backend, both ways, with real Celery 5.7:
//!
//! - a Celery worker stores the results of tasks we send (`tasks.add` → 5, `tasks.fail` →
//!   `ValueError`) and [`Sent::get`] reads them, waiting on the key's PUB/SUB channel;
//! - results we store ([`RedisResultBackend`]: SUCCESS, FAILURE) are what Python's
//!   `AsyncResult.get()` returns or raises (the same exception type and text), and expire
//!   after `result_expires` (a day by default);
//! - a task the backend knows nothing of is PENDING, and waiting for it ends with
//!   [`TaskError::TimedOut`] when the time is up;
//! - on RabbitMQ, a Celery worker with the `rpc://` backend sends the results of tasks we sent
//!   with our reply queue as `reply_to` to that queue, where [`RpcResultBackend`] reads them;
//! - a chain we send (`chain` in the embed, Celery's order) runs on a Celery worker each result
//!   into the next task, and a group's members carry its id.
//!
//! The Redis server is the tests' (`kombu_test_support::brokers`), under a key prefix of the
//! test's own; Python is `$KOMBU_PYTHON`.

use std::time::Duration;

use kombu_celery::backend::{RedisResultBackend, ResultBackend, RpcResultBackend};
use kombu_celery::{
    Celery, ResultMeta, Sent, Signature, State, TaskError, TaskFailure, TaskOptions,
};
use kombu_core::Connection;
use kombu_test_support::{brokers, python};
use serde_json::json;

mod support;
use support::{ADD, FAIL, celery_side, on_redis, worker};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn we_read_the_results_a_celery_worker_stores() {
    let Some(python) = python() else { return };
    let Some(broker) = brokers::broker("redis", "celery-results") else {
        return;
    };
    let (worker, conn, celery, backend, queue) =
        on_redis(&python, &broker.url, "celery-results").await;

    let sum = celery.call(&ADD, (2, 3)).await.expect("send add");
    let failing = celery
        .call(&FAIL, ("boom".to_owned(),))
        .await
        .expect("send fail");
    assert_eq!(sum.get(&backend, WAIT).await.expect("add's result"), 5);
    match failing.get(&backend, WAIT).await {
        Err(TaskError::Failed(failure)) => {
            assert_eq!(failure.exc_type, "ValueError", "{failure:?}");
            assert_eq!(failure.exc_module, "builtins", "{failure:?}");
            assert_eq!(failure.exc_message, [json!("boom")], "{failure:?}");
            assert!(
                failure
                    .traceback
                    .as_deref()
                    .is_some_and(|t| t.contains("ValueError: boom")),
                "{failure:?}"
            );
        }
        other => panic!("tasks.fail: {other:?}\n{}", worker.log()),
    }
    assert_eq!(sum.state(&backend).await.expect("state"), State::Success);
    drop(worker);
    let _ = conn.delete_queue(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_reads_the_results_we_store() {
    let Some(python) = python() else { return };
    let Some(broker) = brokers::broker("redis", "celery-stored") else {
        return;
    };
    let (py_url, options) = brokers::celery_side("redis", &broker.url);
    let backend = RedisResultBackend::connect(&broker.url)
        .await
        .expect("the result backend");
    let read = |id: &str| celery_side(&python, &["result", &py_url, &options, id]);

    let ok = uuid::Uuid::new_v4().to_string();
    backend
        .store(&ResultMeta::success(
            &ok,
            json!({"total": 42, "items": [1, 2]}),
        ))
        .await
        .expect("store a success");
    assert_eq!(
        read(&ok),
        json!({"state": "SUCCESS", "value": {"total": 42, "items": [1, 2]}})
    );

    let failed = uuid::Uuid::new_v4().to_string();
    let failure = TaskFailure::new("builtins", "ValueError", "no such order");
    backend
        .store(&ResultMeta::failure(&failed, State::Failure, &failure))
        .await
        .expect("store a failure");
    let got = read(&failed);
    assert_eq!(got["state"], "FAILURE", "{got}");
    assert_eq!(got["error_type"], "ValueError", "{got}");
    assert_eq!(got["error"], "no such order", "{got}");

    // A stored success is never overwritten (as Celery's backends do).
    backend
        .store(&ResultMeta::failure(&ok, State::Failure, &failure))
        .await
        .expect("store again");
    assert_eq!(backend.meta(&ok).await.expect("meta").state, State::Success);

    // Results expire after result_expires (a day by default).
    let mut raw = redis::Client::open(py_url.as_str())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    let ttl: i64 = redis::cmd("TTL")
        .arg(backend.key(&ok))
        .query_async(&mut raw)
        .await
        .expect("TTL");
    assert!(ttl > 86_000 && ttl <= 86_400, "TTL {ttl}");
    let _: i64 = redis::cmd("DEL")
        .arg(backend.key(&ok))
        .arg(backend.key(&failed))
        .query_async(&mut raw)
        .await
        .expect("DEL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_task_is_pending_and_waiting_for_it_times_out() {
    let Some(broker) = brokers::broker("redis", "celery-pending") else {
        return;
    };
    let backend = RedisResultBackend::connect(&broker.url)
        .await
        .expect("the result backend");
    let never: Sent<i64> = Sent::new(uuid::Uuid::new_v4().to_string());
    assert_eq!(never.state(&backend).await.expect("state"), State::Pending);
    match never.get(&backend, Duration::from_millis(200)).await {
        Err(TaskError::TimedOut { state, .. }) => assert_eq!(state, State::Pending),
        other => panic!("{other:?}"),
    }
    // A result stored while a client waits wakes it (PUB/SUB, no polling).
    let id = never.id().to_owned();
    let store = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        backend
            .store(&ResultMeta::success(&id, json!(7)))
            .await
            .expect("store");
    };
    let (got, ()) = tokio::join!(never.get(&backend, WAIT), store);
    assert_eq!(got.expect("the stored value"), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_results_from_a_celery_worker_come_to_our_reply_queue() {
    let Some(python) = python() else { return };
    let Some(broker) = brokers::broker("amqp", "celery-rpc") else {
        return;
    };
    kombu_amqp::register();
    let queue = format!("celery-rpc-{}", uuid::Uuid::new_v4().simple());
    let worker = worker(
        &python,
        "celery-rpc",
        &queue,
        &[
            ("KOMBU_RS_BROKER", &broker.url),
            ("KOMBU_RS_BACKEND", "rpc://"),
        ],
    );
    let conn = Connection::open(&broker.url).await.expect("open");
    let backend = RpcResultBackend::new(&conn).await.expect("the rpc backend");
    let celery = Celery::builder(&conn)
        .default_queue(queue.as_str())
        .reply_to(backend.reply_to())
        .build();
    let sums: Vec<_> = futures::future::join_all((0..3).map(|i| celery.call(&ADD, (i, 10))))
        .await
        .into_iter()
        .map(|sent| sent.expect("send add"))
        .collect();
    let failing = celery
        .call(&FAIL, ("bad input".to_owned(),))
        .await
        .expect("send fail");
    // Read in reverse order: each reply is kept for its own task.
    for (i, sum) in sums.iter().enumerate().rev() {
        let value = sum.get(&backend, WAIT).await;
        assert_eq!(
            value.expect("add's result"),
            i as i64 + 10,
            "{}",
            worker.log()
        );
    }
    match failing.get(&backend, WAIT).await {
        Err(TaskError::Failed(failure)) => {
            assert_eq!(failure.exc_type, "ValueError", "{failure:?}");
            assert_eq!(failure.exc_message, [json!("bad input")], "{failure:?}");
        }
        other => panic!("tasks.fail: {other:?}\n{}", worker.log()),
    }
    // Another client's backend has none of them: results belong to their reply queue.
    let other = RpcResultBackend::new(&conn)
        .await
        .expect("another rpc backend");
    assert_eq!(sums[0].state(&other).await.expect("state"), State::Pending);
    drop(worker);
    let _ = conn.delete_queue(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_and_a_group_we_send_run_on_a_celery_worker() {
    let Some(python) = python() else { return };
    let Some(broker) = brokers::broker("redis", "celery-canvas") else {
        return;
    };
    let (worker, conn, celery, backend, queue) =
        on_redis(&python, &broker.url, "celery-canvas").await;

    // add(2, 3) | mul(10) | mul(2): each result is the next task's first argument.
    let (second, last) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    let first = celery
        .send_task(
            "tasks.add",
            (2, 3),
            (),
            TaskOptions::new().chain([
                Signature::new("tasks.mul")
                    .args((10,))
                    .option("task_id", second.as_str()),
                Signature::new("tasks.mul")
                    .args((2,))
                    .option("task_id", last.as_str()),
            ]),
        )
        .await
        .expect("send the chain");
    let end: Sent<i64> = Sent::new(last.as_str());
    assert_eq!(
        end.get(&backend, WAIT).await.expect("the chain's result"),
        100,
        "{}",
        worker.log()
    );
    let middle = backend.meta(&second).await.expect("meta");
    assert_eq!(middle.result, json!(50));
    assert_eq!(
        middle.parent_id.as_deref(),
        Some(first.as_str()),
        "{middle:?}"
    );

    // A group: each member with the group's id and its index.
    let group = celery
        .group(
            (1..=3)
                .map(|i| Signature::new("tasks.add").args((i, i)))
                .collect(),
        )
        .await
        .expect("send the group");
    let values: Vec<i64> = group
        .get(&backend, WAIT)
        .await
        .expect("the group's results");
    assert_eq!(values, [2, 4, 6]);
    for member in group.members() {
        let meta = backend.meta(member).await.expect("meta");
        assert_eq!(meta.group_id.as_deref(), Some(group.id()), "{meta:?}");
    }
    drop(worker);
    let _ = conn.delete_queue(&queue).await;
}
