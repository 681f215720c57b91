//! The Rust Celery worker on the memory transport: results and states, keyword arguments,
//! retries and their limit, expiry, eta, time limits, panics, messages it cannot run, chains
//! and callbacks, late and early acks at a stop. (With Python Celery on the brokers:
//! tests/celery_worker.rs of the facade.)

use std::sync::Arc;
use std::time::Duration;

use kombu_celery::backend::{MemoryResultBackend, ResultBackend};
use kombu_celery::worker::{
    TaskContext, TaskFail, TaskSettings, Worker, WorkerBuilder, WorkerHandle,
};
use kombu_celery::{Celery, Sent, Signature, State, Task, TaskError, TaskFailure, TaskOptions};
use kombu_core::{Connection, Queue};
use kombu_test_support::until;
use serde_json::json;

const ADD: Task<(i64, i64), i64> = Task::new("tasks.add");
const MUL: Task<(i64, i64), i64> = Task::new("tasks.mul");
const FLAKY: Task<(u32,), u32> = Task::new("tasks.flaky");
const STUBBORN: Task<(), ()> = Task::new("tasks.stubborn");
const SLEEP: Task<(f64,), f64> = Task::new("tasks.sleep");
const SOFT: Task<(), String> = Task::new("tasks.soft");
const PANIC: Task<(), ()> = Task::new("tasks.panic");
const ECHO: Task<(serde_json::Value,), serde_json::Value> = Task::new("tasks.echo");
const FAIL: Task<(String,), ()> = Task::new("tasks.fail");
const RATED: Task<(), ()> = Task::new("tasks.rated");

const WAIT: Duration = Duration::from_secs(20);

fn tasks(worker: WorkerBuilder) -> WorkerBuilder {
    worker
        .task_with(
            ADD,
            TaskSettings::new().params(["x", "y"]),
            |(x, y), _: TaskContext| async move { Ok(x + y) },
        )
        .task(MUL, |(x, y), _: TaskContext| async move { Ok(x * y) })
        .task_with(
            FLAKY,
            TaskSettings::new().max_retries(None),
            |(times,), ctx: TaskContext| async move {
                if ctx.retries() < times {
                    return Err(ctx.retry().countdown(Duration::from_millis(50)).into());
                }
                Ok(ctx.retries())
            },
        )
        .task_with(
            STUBBORN,
            TaskSettings::new().max_retries(Some(2)),
            |(), ctx: TaskContext| async move {
                Err::<(), TaskFail>(ctx.retry().countdown(Duration::from_millis(20)).into())
            },
        )
        .task_with(
            SLEEP,
            TaskSettings::new().time_limit(Duration::from_millis(300)),
            |(seconds,), _: TaskContext| async move {
                tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
                Ok(seconds)
            },
        )
        .task_with(
            SOFT,
            TaskSettings::new().soft_time_limit(Duration::from_millis(100)),
            |(), ctx: TaskContext| async move {
                tokio::select! {
                    () = ctx.soft_time_limit_exceeded() => Err(TaskFailure::soft_time_limit().into()),
                    () = tokio::time::sleep(Duration::from_secs(30)) => Ok("done".to_owned()),
                }
            },
        )
        .task(ECHO, |(value,), _: TaskContext| async move { Ok(value) })
        .task_with(
            RATED,
            TaskSettings::new().rate_limit("1/m".parse().expect("a rate")),
            |(), _: TaskContext| async move { Ok(()) },
        )
        .task(FAIL, |(message,), _: TaskContext| async move {
            Err(TaskFailure::value_error(message).into())
        })
        .task(PANIC, |(), _: TaskContext| async move {
            panic!("the task went wrong");
        })
}

struct Setup {
    conn: Connection,
    celery: Celery,
    results: Arc<MemoryResultBackend>,
    handle: WorkerHandle,
    running: tokio::task::JoinHandle<kombu_core::Result<()>>,
    queue: String,
}

async fn start(name: &str, configure: impl FnOnce(WorkerBuilder) -> WorkerBuilder) -> Setup {
    kombu_core::transport::memory::register();
    let conn = Connection::open(&format!(
        "memory://celery-worker-{name}-{}",
        uuid::Uuid::new_v4()
    ))
    .await
    .expect("open");
    let queue = format!("{name}-tasks");
    let results = Arc::new(MemoryResultBackend::new());
    let worker = configure(
        tasks(Worker::builder(&conn))
            .queue(queue.as_str())
            .concurrency(4)
            .shared_result_backend(results.clone()),
    )
    .build()
    .expect("the worker");
    let handle = worker.handle();
    let running = tokio::spawn(worker.run());
    // The worker declares its queue as it starts; so does the client.
    let celery = Celery::builder(&conn).default_queue(queue.as_str()).build();
    Setup {
        conn,
        celery,
        results,
        handle,
        running,
        queue,
    }
}

impl Setup {
    async fn stop(self) {
        self.handle.stop();
        self.running
            .await
            .expect("the worker's task")
            .expect("the worker ends well");
    }

    async fn get<R: serde::de::DeserializeOwned>(&self, sent: &Sent<R>) -> Result<R, TaskError> {
        sent.get(self.results.as_ref(), WAIT).await
    }
}

fn failure(result: Result<impl std::fmt::Debug, TaskError>) -> TaskFailure {
    match result {
        Err(TaskError::Failed(f) | TaskError::Revoked(f)) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn runs_tasks_and_stores_their_results() {
    let s = start("results", |w| w).await;
    let sent = s.celery.call(&ADD, (2, 3)).await.expect("send");
    assert_eq!(s.get(&sent).await.expect("the sum"), 5);
    let meta = s.results.meta(sent.id()).await.expect("meta");
    assert_eq!(meta.state, State::Success);
    assert!(meta.date_done.is_some());

    // Keyword arguments fill the named parameters; extra ones fail as Python's TypeError.
    let id = s
        .celery
        .send_task("tasks.add", (3,), json!({"y": 4}), TaskOptions::new())
        .await
        .expect("send");
    assert_eq!(s.get(&Sent::<i64>::new(id)).await.expect("the sum"), 7);
    let id = s
        .celery
        .send_task("tasks.add", (1, 2), json!({"z": 4}), TaskOptions::new())
        .await
        .expect("send");
    let f = failure(s.get(&Sent::<i64>::new(id)).await);
    assert_eq!(
        (f.exc_module.as_str(), f.exc_type.as_str()),
        ("builtins", "TypeError")
    );
    let id = s
        .celery
        .send_task("tasks.mul", ("two", 3), (), TaskOptions::new())
        .await
        .expect("send");
    assert_eq!(
        failure(s.get(&Sent::<i64>::new(id)).await).exc_type,
        "TypeError"
    );
    assert_eq!(s.handle.stats().succeeded, 2);
    assert_eq!(s.handle.stats().failed, 2);
    s.stop().await;
}

#[tokio::test]
async fn retries_until_done_or_out_of_retries() {
    let s = start("retries", |w| w).await;
    let flaky = s.celery.call(&FLAKY, (3,)).await.expect("send");
    assert_eq!(s.get(&flaky).await.expect("its retries"), 3);
    let stubborn = s.celery.call(&STUBBORN, ()).await.expect("send");
    let f = failure(s.get(&stubborn).await);
    assert_eq!(f.exc_type, "MaxRetriesExceededError");
    assert_eq!(f.exc_module, "celery.exceptions");
    // A protocol 1 message (the task in the body) retries through its body.
    s.conn
        .producer()
        .routing_key(s.queue.as_str())
        .publish(&json!({
            "task": "tasks.flaky", "id": "protocol-1", "args": [1], "kwargs": {},
            "retries": 0, "eta": null, "expires": null,
        }))
        .await
        .expect("publish");
    assert_eq!(
        s.get(&Sent::<u32>::new("protocol-1"))
            .await
            .expect("its retries"),
        1
    );
    // 3 for flaky, 2 for stubborn (its third retry is its failure), 1 for protocol 1.
    assert_eq!(s.handle.stats().retried, 6);
    s.stop().await;
}

#[tokio::test]
async fn an_expired_task_is_revoked_and_an_eta_is_waited_for() {
    let s = start("expiry", |w| w).await;
    // Due after it expires: it goes back to wait for its eta, and is revoked then.
    let late = s
        .celery
        .call_with(
            &ADD,
            (1, 1),
            TaskOptions::new()
                .countdown(Duration::from_millis(1500))
                .expires_in(Duration::from_millis(500)),
        )
        .await
        .expect("send");
    let sent_at = chrono::Utc::now();
    let due = s
        .celery
        .call_with(
            &ADD,
            (4, 4),
            TaskOptions::new().countdown(Duration::from_secs(2)),
        )
        .await
        .expect("send");
    match s.get(&late).await {
        Err(TaskError::Revoked(f)) => {
            assert_eq!(f.exc_type, "TaskRevokedError");
            assert_eq!(f.exc_message, vec![json!("expired")]);
        }
        other => panic!("expected the expired task revoked, got {other:?}"),
    }
    assert_eq!(s.get(&due).await.expect("the sum"), 8);
    let done = s
        .results
        .meta(due.id())
        .await
        .expect("meta")
        .date_done
        .expect("done");
    let done = chrono::DateTime::parse_from_rfc3339(&done).expect("a time");
    assert!(
        done >= sent_at + chrono::Duration::seconds(2),
        "ran at {done}, before its eta (sent {sent_at} with a 2 s countdown)"
    );
    assert_eq!(s.handle.stats().revoked, 1);
    s.stop().await;
}

#[tokio::test]
async fn time_limits_and_panics_fail_the_task_not_the_worker() {
    let s = start("limits", |w| w).await;
    let slow = s.celery.call(&SLEEP, (5.0,)).await.expect("send");
    let f = failure(s.get(&slow).await);
    assert_eq!(
        (f.exc_module.as_str(), f.exc_type.as_str()),
        ("celery.exceptions", "TimeLimitExceeded")
    );
    // The message's own limits win over the task's.
    let quick = s
        .celery
        .call_with(&SLEEP, (0.5,), TaskOptions::new().time_limit(2.0))
        .await
        .expect("send");
    assert_eq!(s.get(&quick).await.expect("slept"), 0.5);
    let soft = s.celery.call(&SOFT, ()).await.expect("send");
    assert_eq!(
        failure(s.get(&soft).await).exc_type,
        "SoftTimeLimitExceeded"
    );
    let panicked = s.celery.call(&PANIC, ()).await.expect("send");
    let f = failure(s.get(&panicked).await);
    assert_eq!(f.exc_type, "RuntimeError");
    assert!(format!("{f}").contains("the task went wrong"), "{f}");
    let after = s.celery.call(&ADD, (1, 2)).await.expect("send");
    assert_eq!(s.get(&after).await.expect("still working"), 3);
    s.stop().await;
}

#[tokio::test]
async fn messages_it_cannot_run_are_dead_lettered() {
    let s = start("poison", |w| w).await;
    let dlq = format!("{}.dlq", s.queue);
    // The client declares the queue (the memory transport drops what no queue takes).
    s.celery
        .send_task("tasks.unknown", (1,), (), TaskOptions::new())
        .await
        .expect("send");
    s.conn
        .producer()
        .routing_key(s.queue.as_str())
        .publish(&json!({"not": "a task"}))
        .await
        .expect("publish");
    let handle = s.handle.clone();
    until("both messages rejected", WAIT, || {
        handle.stats().rejected == 2
    })
    .await;
    assert_eq!(s.conn.queue_size(&dlq).await.expect("the dead letters"), 2);
    let sent = s.celery.call(&ADD, (2, 2)).await.expect("send");
    assert_eq!(s.get(&sent).await.expect("still working"), 4);
    s.stop().await;
}

#[tokio::test]
async fn chains_and_callbacks_carry_the_result_on() {
    let s = start("canvas", |w| w).await;
    // add(2, 2) | mul(10) | add(1), with a callback on the first.
    let first = s
        .celery
        .call_with(
            &ADD,
            (2, 2),
            TaskOptions::new()
                .chain([
                    Signature::new("tasks.mul")
                        .args((10,))
                        .option("task_id", "mul-id"),
                    Signature::new("tasks.add")
                        .args((1,))
                        .option("task_id", "last-id"),
                ])
                .link(
                    Signature::new("tasks.mul")
                        .args((3,))
                        .option("task_id", "callback-id"),
                ),
        )
        .await
        .expect("send");
    assert_eq!(
        s.get(&Sent::<i64>::new("last-id"))
            .await
            .expect("the chain's end"),
        41
    );
    assert_eq!(
        s.get(&Sent::<i64>::new("callback-id"))
            .await
            .expect("the callback"),
        12
    );
    assert_eq!(s.get(&first).await.expect("the first"), 4);
    let meta = s.results.meta("last-id").await.expect("meta");
    assert_eq!(meta.parent_id.as_deref(), Some("mul-id"));
    let meta = s.results.meta("mul-id").await.expect("meta");
    assert_eq!(meta.parent_id.as_deref(), Some(first.id()));

    // A callback that is itself a chain (Celery's `celery.chain` signature) runs in order.
    let mut nested = Signature::new("celery.chain");
    nested.subtask_type = Some("chain".into());
    nested.kwargs.insert(
        "tasks".into(),
        json!([
            Signature::new("tasks.mul")
                .args((2,))
                .option("task_id", "nested-1"),
            Signature::new("tasks.add")
                .args((1,))
                .option("task_id", "nested-2"),
        ]),
    );
    s.celery
        .call_with(&ADD, (2, 2), TaskOptions::new().link(nested))
        .await
        .expect("send");
    assert_eq!(
        s.get(&Sent::<i64>::new("nested-2"))
            .await
            .expect("the nested chain"),
        9
    );

    // A failure fails the rest of its chain.
    s.celery
        .send_task(
            "tasks.fail",
            ("broken",),
            (),
            TaskOptions::new().chain([
                Signature::new("tasks.mul")
                    .args((2,))
                    .option("task_id", "after-1"),
                Signature::new("tasks.add")
                    .args((1,))
                    .option("task_id", "after-2"),
            ]),
        )
        .await
        .expect("send");
    let f = failure(s.get(&Sent::<i64>::new("after-2")).await);
    assert_eq!(f.exc_type, "ValueError");
    assert_eq!(f.exc_message, vec![json!("broken")]);
    s.stop().await;
}

#[tokio::test]
async fn a_stop_returns_late_acked_tasks_and_not_early_acked_ones() {
    for late in [true, false] {
        let s = start(if late { "late" } else { "early" }, |w| {
            w.acks_late(late)
                .shutdown_timeout(Duration::from_millis(100))
        })
        .await;
        let sent = s
            .celery
            .call_with(&SLEEP, (10.0,), TaskOptions::new().time_limit(60.0))
            .await
            .expect("send");
        let results = s.results.clone();
        let handle = s.handle.clone();
        until("the task started", WAIT, || handle.stats().started == 1).await;
        let (conn, queue) = (s.conn.clone(), s.queue.clone());
        s.stop().await;
        conn.declare_queue(&Queue::new(queue.as_str()))
            .await
            .expect("declare");
        let left = conn.queue_size(&queue).await.expect("size");
        assert_eq!(
            left,
            u64::from(late),
            "acks_late {late}: {left} left in the queue"
        );
        // Acked early and stopped at the shutdown timeout: its result says so.
        let meta = results.meta(sent.id()).await.expect("meta");
        match late {
            true => assert_eq!(meta.state, State::Pending),
            false => {
                assert_eq!(meta.state, State::Failure);
                let f = meta.failure_of().expect("the failure");
                assert_eq!(f.exc_type, "WorkerLostError");
            }
        }
    }
}

#[tokio::test]
async fn chords_run_their_body_with_the_header_results() {
    let s = start("chord", |w| w).await;
    // The memory backend does not join chords: the worker runs celery.chord_unlock.
    let header = (1..=3)
        .map(|i| Signature::new("tasks.add").args((i, i)))
        .collect();
    let chord = s
        .celery
        .chord(header, Signature::new("tasks.echo"), s.results.as_ref())
        .await
        .expect("send the chord");
    assert_eq!(
        s.get(&chord.body).await.expect("the body's result"),
        json!([2, 4, 6])
    );
    assert_eq!(chord.header.members().len(), 3);
    // A header task that fails fails the chord.
    let header = vec![
        Signature::new("tasks.add").args((1, 1)),
        Signature::new("tasks.fail").args(("no",)),
    ];
    let chord = s
        .celery
        .chord(header, Signature::new("tasks.echo"), s.results.as_ref())
        .await
        .expect("send the chord");
    let f = failure(s.get(&chord.body).await);
    assert_eq!(f.exc_type, "ChordError");
    assert!(format!("{f}").contains("ValueError"), "{f}");
    s.stop().await;
}

#[tokio::test]
async fn a_rate_limited_task_waits_without_its_slot() {
    // One slot; the second `tasks.rated` must wait a minute for its turn.
    let s = start("rate", |w| w.concurrency(1)).await;
    let first = s.celery.call(&RATED, ()).await.expect("send");
    let second = s.celery.call(&RATED, ()).await.expect("send");
    s.get(&first).await.expect("the first runs at once");
    // The slot is free for others meanwhile.
    let sum = s.celery.call(&ADD, (1, 2)).await.expect("send");
    assert_eq!(s.get(&sum).await.expect("the sum"), 3);
    let meta = s.results.meta(second.id()).await.expect("meta");
    assert_eq!(meta.state, State::Pending, "the second waits for its rate");
    // Stopped, the waiting one goes back to its queue.
    let (conn, queue) = (s.conn.clone(), s.queue.clone());
    s.stop().await;
    conn.declare_queue(&Queue::new(queue.as_str()))
        .await
        .expect("declare");
    assert_eq!(conn.queue_size(&queue).await.expect("size"), 1);
}

#[tokio::test]
async fn a_chord_as_a_chain_step_keeps_celerys_ids() {
    let s = start("chord-step", |w| w).await;
    // chain(add(1, 1), group(mul(2), mul(3)), echo(), echo()) as Celery serializes it: the
    // group and the echo after it upgraded to a chord whose id is the header's task_id.
    let member = |factor: i64, id: &str| {
        Signature::new("tasks.mul")
            .args((factor,))
            .option("task_id", id)
    };
    let chord: Signature = serde_json::from_value(json!({
        "task": "celery.chord",
        "args": [],
        "kwargs": {
            "kwargs": {},
            "header": {
                "task": "celery.group",
                "args": [],
                "kwargs": {"tasks": [member(2, "member-1"), member(3, "member-2")]},
                "options": {"task_id": "group-1"},
                "subtask_type": "group",
                "immutable": false,
            },
            "body": Signature::new("tasks.echo").option("task_id", "body-1"),
        },
        "options": {"task_id": "group-1"},
        "subtask_type": "chord",
        "immutable": false,
    }))
    .expect("a chord signature");
    s.celery
        .call_with(
            &ADD,
            (1, 1),
            TaskOptions::new().chain([
                chord,
                Signature::new("tasks.echo").option("task_id", "after-1"),
            ]),
        )
        .await
        .expect("send");
    let value = s
        .get(&Sent::<serde_json::Value>::new("after-1"))
        .await
        .expect("the step after the chord");
    assert_eq!(value, json!([4, 6]));
    for id in ["member-1", "member-2", "body-1"] {
        let meta = s.results.meta(id).await.expect("meta");
        assert_eq!(meta.group_id.as_deref(), Some("group-1"), "{id}'s group");
    }
    s.stop().await;
}
