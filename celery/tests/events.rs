//! Events between kombu-rs's own worker and client, on the memory transport and on Redis and
//! RabbitMQ: what a receiver hears, in order, for tasks that succeed, fail, expire, are
//! unknown, rejected (for good, with requeue, acked early) or ignored. (Remote control:
//! control.rs; with Celery's own tools and Flower: python_control.rs.)

mod nodes;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use kombu_celery::backend::ResultBackend;
use kombu_celery::control::Control;
use kombu_celery::events::{EventKind, EventReceiver};
use kombu_celery::worker::{Reject, TaskContext, TaskFail, TaskSettings};
use kombu_celery::{Celery, State, Task, TaskOptions};
use kombu_core::Connection;
use kombu_test_support::{brokers, until};
use nodes::{ADD, SLEEP, WAIT, answering, ask, node};
use serde_json::{Value as Json, json};

const REJECT: Task<(bool,), ()> = Task::new("tasks.reject");
const IGNORE: Task<(), ()> = Task::new("tasks.ignore");
const REJECT_EARLY: Task<(), ()> = Task::new("tasks.reject_early");

/// The next event within the patience, if any.
async fn next_event(
    receiver: &mut EventReceiver,
    patience: Duration,
) -> Option<kombu_celery::events::Event> {
    match tokio::time::timeout(patience, receiver.next()).await {
        Ok(Some(Ok(event))) => Some(event),
        Ok(Some(Err(error))) => panic!("an event that does not read: {error:#}"),
        Ok(None) | Err(_) => None,
    }
}

async fn events_in_order(url: &str) {
    let conn = Connection::open(url).await.expect("open");
    let mut all = EventReceiver::builder(&conn)
        .build()
        .await
        .expect("a receiver");
    let mut batches = EventReceiver::builder(&conn)
        .routing_key("task.multi")
        .wake_workers(false)
        .build()
        .await
        .expect("a receiver of task.multi");
    // Refusals as Celery's `Reject` and `Ignore`, acked late so that they act on the message.
    let late = TaskSettings::new().acks_late(true);
    let runs = Arc::new(AtomicUsize::new(0));
    let ignored_ran = Arc::new(AtomicBool::new(false));
    let worker = node(&conn, "events", |w| {
        let (runs, ignored_ran) = (runs.clone(), ignored_ran.clone());
        w.task_events(true)
            .task_with(REJECT, late.clone(), move |(requeue,), _: TaskContext| {
                // With requeue: refused once, then run.
                let again = requeue && runs.fetch_add(1, Ordering::SeqCst) > 0;
                async move {
                    match again {
                        true => Ok(()),
                        false => Err(Reject::new("too big").requeue(requeue).into()),
                    }
                }
            })
            // Acked early, as Celery: a failure, the message already gone (no dead letter).
            .task_with(
                REJECT_EARLY,
                TaskSettings::new().acks_late(false),
                |(), _: TaskContext| async { Err::<(), _>(Reject::new("too late").into()) },
            )
            .task_with(IGNORE, late, move |(), _: TaskContext| {
                ignored_ran.store(true, Ordering::SeqCst);
                async { Err::<(), _>(TaskFail::Ignore) }
            })
    })
    .await;
    let control = Control::new(&conn);
    answering(&control, &worker).await;
    let celery = Celery::builder(&conn)
        .default_queue(worker.queue.as_str())
        .send_sent_events(true)
        .build();
    let ok = celery
        .send_task(ADD.name(), (2, 3), (), TaskOptions::new())
        .await
        .expect("sent");
    let failing = celery
        .send_task(SLEEP.name(), (5.0,), (), TaskOptions::new().time_limit(0.1))
        .await
        .expect("sent");
    let expired = celery
        .send_task(
            ADD.name(),
            (1, 1),
            (),
            // Taken at once (it waits in the worker for its eta), expired by then.
            TaskOptions::new()
                .countdown(Duration::from_millis(900))
                .expires_in(Duration::from_millis(300)),
        )
        .await
        .expect("sent");
    let unknown = celery
        .send_task("tasks.unknown", (), (), TaskOptions::new())
        .await
        .expect("sent");
    let refused = celery
        .send_task(REJECT.name(), (false,), (), TaskOptions::new())
        .await
        .expect("sent");
    let requeued = celery
        .send_task(REJECT.name(), (true,), (), TaskOptions::new())
        .await
        .expect("sent");
    let ignored = celery
        .send_task(IGNORE.name(), (), (), TaskOptions::new())
        .await
        .expect("sent");
    let early = celery
        .send_task(REJECT_EARLY.name(), (), (), TaskOptions::new())
        .await
        .expect("sent");
    for id in [
        &ok, &failing, &expired, &unknown, &refused, &requeued, &early,
    ] {
        let meta = worker.results.wait(id, WAIT).await.expect("a result");
        assert!(meta.state.is_ready(), "{id}: {meta:?}");
    }
    // As Celery: an unknown task fails NotRegistered, a rejection for good fails Reject, a
    // requeued one runs again; an ignored one stores nothing.
    let failure = async |id: &str| {
        let meta = worker.results.meta(id).await.expect("a result");
        assert_eq!(meta.state, State::Failure, "{meta:?}");
        let failure = meta.failure_of().expect("a failure");
        (failure.exc_module, failure.exc_type, failure.exc_message)
    };
    assert_eq!(
        failure(&unknown).await,
        (
            "celery.exceptions".into(),
            "NotRegistered".into(),
            vec![json!("tasks.unknown")]
        )
    );
    assert_eq!(
        failure(&refused).await,
        (
            "celery.exceptions".into(),
            "Reject".into(),
            vec![json!("too big"), json!(false)]
        )
    );
    assert_eq!(
        worker
            .results
            .meta(&requeued)
            .await
            .expect("a result")
            .state,
        State::Success
    );
    assert_eq!(
        failure(&early).await,
        (
            "celery.exceptions".into(),
            "Reject".into(),
            vec![json!("too late"), json!(false)]
        )
    );
    until("the ignored task ran", WAIT, || {
        ignored_ran.load(Ordering::SeqCst)
    })
    .await;
    // Both messages it does not run are kept: the unknown task's and the refused one's.
    let dlq = format!("{}.dlq", worker.queue);
    until("two dead letters", WAIT, || {
        worker.handle.stats().rejected == 2
    })
    .await;
    assert_eq!(conn.queue_size(&dlq).await.expect("the dead letters"), 2);
    assert_eq!(
        ask(&control, &worker, "heartbeat", json!({})).await,
        Json::Null
    );
    worker.handle.stop();
    tokio::time::timeout(WAIT, worker.running)
        .await
        .expect("stopped")
        .expect("joined")
        .expect("ran");

    let mut mine = Vec::new();
    let mut sent = Vec::new();
    while let Some(event) = next_event(&mut all, Duration::from_secs(10)).await {
        if event.hostname() == Some(worker.name.as_str()) {
            let offline = event.kind() == &EventKind::WorkerOffline;
            mine.push(event);
            if offline {
                break;
            }
        } else if event.kind() == &EventKind::TaskSent {
            sent.push(event);
        }
    }
    let kinds = |id: &str| -> Vec<String> {
        mine.iter()
            .filter(|e| e.uuid() == Some(id))
            .map(|e| e.kind().as_str().to_owned())
            .collect()
    };
    assert_eq!(
        mine.first().map(|e| e.kind().clone()),
        Some(EventKind::WorkerOnline)
    );
    assert_eq!(
        mine.last().map(|e| e.kind().clone()),
        Some(EventKind::WorkerOffline)
    );
    assert_eq!(
        kinds(&ok),
        ["task-received", "task-started", "task-succeeded"]
    );
    assert_eq!(
        kinds(&failing),
        ["task-received", "task-started", "task-failed"]
    );
    assert_eq!(
        kinds(&expired),
        ["task-received", "task-revoked"],
        "taken, then expired"
    );
    assert_eq!(
        kinds(&unknown),
        ["task-failed"],
        "as Celery's on_unknown_task"
    );
    assert_eq!(
        kinds(&refused),
        [
            "task-received",
            "task-started",
            "task-failed",
            "task-rejected"
        ]
    );
    assert_eq!(
        kinds(&requeued),
        [
            "task-received",
            "task-started",
            "task-rejected",
            "task-received",
            "task-started",
            "task-succeeded"
        ]
    );
    assert_eq!(kinds(&ignored), ["task-received", "task-started"]);
    assert_eq!(
        kinds(&early),
        ["task-received", "task-started", "task-failed"],
        "acked before its run: nothing to reject"
    );
    assert!(
        worker.results.meta(&ignored).await.expect("a state").state == State::Pending,
        "an ignored task stores nothing"
    );
    assert!(
        mine.iter().all(|e| e.clock().is_some()),
        "every event has a clock"
    );
    // Task events come in the order of their clocks (worker events are not batched, so a
    // heartbeat may overtake a batch, as with Celery's).
    let clocks: Vec<u64> = mine
        .iter()
        .filter(|e| e.kind().group() == "task")
        .filter_map(|e| e.clock())
        .collect();
    assert!(
        clocks.windows(2).all(|w| w[0] < w[1]),
        "clocks rise: {clocks:?}"
    );
    let field = |id: &str, kind: &EventKind, key: &str| {
        mine.iter()
            .find(|e| e.uuid() == Some(id) && e.kind() == kind)
            .and_then(|e| e.get(key).cloned())
    };
    assert_eq!(
        field(&ok, &EventKind::TaskReceived, "args"),
        Some(json!("(2, 3)"))
    );
    assert_eq!(
        field(&ok, &EventKind::TaskReceived, "name"),
        Some(json!("tasks.add"))
    );
    assert_eq!(
        field(&ok, &EventKind::TaskSucceeded, "result"),
        Some(json!("5"))
    );
    assert!(field(&ok, &EventKind::TaskSucceeded, "runtime").is_some_and(|r| r.is_f64()));
    assert_eq!(
        field(&failing, &EventKind::TaskFailed, "exception"),
        Some(json!("TimeLimitExceeded(0.1)"))
    );
    assert_eq!(
        field(&expired, &EventKind::TaskRevoked, "expired"),
        Some(json!(true))
    );
    assert_eq!(
        field(&unknown, &EventKind::TaskFailed, "exception"),
        Some(json!("NotRegistered('tasks.unknown')"))
    );
    assert_eq!(
        field(&refused, &EventKind::TaskFailed, "exception"),
        Some(json!("reject requeue=False: too big"))
    );
    assert_eq!(
        field(&refused, &EventKind::TaskRejected, "requeue"),
        Some(json!(false))
    );
    assert_eq!(
        field(&requeued, &EventKind::TaskRejected, "requeue"),
        Some(json!(true))
    );
    let beat = mine
        .iter()
        .find(|e| e.kind() == &EventKind::WorkerHeartbeat)
        .expect("a heartbeat (asked for)");
    for key in [
        "freq",
        "active",
        "processed",
        "loadavg",
        "sw_ident",
        "sw_ver",
        "sw_sys",
        "utcoffset",
        "pid",
        "timestamp",
    ] {
        assert!(beat.get(key).is_some(), "a heartbeat has {key}: {beat:?}");
    }
    let mut sent_ids: Vec<&str> = sent.iter().filter_map(|e| e.uuid()).collect();
    sent_ids.sort_unstable();
    let mut want = vec![
        ok.as_str(),
        failing.as_str(),
        expired.as_str(),
        unknown.as_str(),
        refused.as_str(),
        requeued.as_str(),
        ignored.as_str(),
        early.as_str(),
    ];
    want.sort_unstable();
    assert_eq!(sent_ids, want, "the client's task-sent events");
    assert_eq!(sent[0].get("queue"), Some(&json!(worker.queue)));
    // Task events come in batches under task.multi.
    let mut batched = Vec::new();
    while let Some(event) = next_event(&mut batches, Duration::from_millis(500)).await {
        batched.push(event);
    }
    assert!(
        batched
            .iter()
            .any(|e| e.uuid() == Some(ok.as_str()) && e.kind() == &EventKind::TaskSucceeded),
        "task events under task.multi: {batched:?}"
    );
    assert!(batched.iter().all(|e| e.kind().group() == "task"));
    conn.delete_queue(&dlq)
        .await
        .expect("delete the dead letters");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_hears_the_worker_and_its_tasks_in_order() {
    kombu_core::transport::memory::register();
    kombu_redis::register();
    kombu_amqp::register();
    for transport in ["memory", "redis", "amqp"] {
        let Some(broker) = brokers::broker(transport, "events") else {
            continue;
        };
        events_in_order(&broker.url).await;
    }
}
