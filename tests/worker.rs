//! The worker runtime on every transport (`brokers::every`): typed handlers, the concurrency
//! bound, timeouts, retries then a dead letter with the retry count, permanent errors, bodies
//! that do not decode, and a graceful stop that waits for the handler in flight and returns
//! what was taken and not started; under the stop policy a bad body stops the worker and stays
//! in its queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kombu::worker::{Backoff, JobContext, JobError, RETRIES_HEADER, Route, Worker, WorkerHandle};
use kombu::{Connection, Delivery, ErrorAction, Queue, StreamExt, Value, dead_letter};
use kombu_test_support::brokers;
use kombu_test_support::until;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Task {
    id: u32,
}

/// Every wait in these tests gives up after this long.
const PATIENCE: Duration = Duration::from_secs(30);

fn unique(name: &str) -> String {
    format!("worker-{name}-{}", uuid::Uuid::new_v4().simple())
}

/// Waits until `queue` holds `n` ready messages.
async fn until_size(conn: &Connection, queue: &str, n: u64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let size = conn.queue_size(queue).await.expect("queue size");
        if size == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue {queue} holds {size} messages, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next message of `<queue>.dlq`, acked.
async fn dead_letter_of(conn: &Connection, queue: &str) -> Delivery {
    let dlq = dead_letter::dlq_name(queue);
    let mut consumer = conn
        .consumer([Queue::new(dlq.clone())])
        .build()
        .await
        .expect("dlq consumer");
    let delivery = tokio::time::timeout(PATIENCE, consumer.next())
        .await
        .unwrap_or_else(|_| panic!("nothing in {dlq}"))
        .expect("dlq stream ended")
        .expect("dlq delivery");
    let copy = Delivery::new(delivery.message().clone(), delivery.info().clone(), None);
    delivery.ack().await.expect("ack the dead letter");
    consumer.close().await.expect("close the dlq consumer");
    copy
}

fn start(worker: Worker) -> (WorkerHandle, JoinHandle<kombu::Result<()>>) {
    let handle = worker.handle();
    (handle, tokio::spawn(worker.run()))
}

async fn stop(handle: WorkerHandle, running: JoinHandle<kombu::Result<()>>) {
    handle.stop();
    tokio::time::timeout(PATIENCE, running)
        .await
        .expect("the worker stops")
        .expect("the worker task")
        .expect("the worker's result");
}

async fn publish(conn: &Connection, queue: &str, ids: std::ops::Range<u32>) {
    conn.declare_queue(&Queue::new(queue))
        .await
        .expect("declare");
    let producer = conn.producer().routing_key(queue);
    for id in ids {
        producer.publish(&Task { id }).await.expect("publish");
    }
}

fn header_int(delivery: &Delivery, name: &str) -> Option<i64> {
    match delivery.headers().get(name) {
        Some(Value::Int(n)) => Some(*n),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
}

fn header_text(delivery: &Delivery, name: &str) -> String {
    delivery
        .headers()
        .get(name)
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_handlers_run_within_the_concurrency_bound() {
    for broker in brokers::every("worker-typed") {
        let conn = Connection::open(&broker.url).await.expect("open");
        let queue = unique("typed");
        publish(&conn, &queue, 0..24).await;
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (r, m, s) = (running.clone(), most.clone(), seen.clone());
        let worker = Worker::builder(&conn)
            .concurrency(5)
            .handle(
                Route::from(queue.as_str()).concurrency(3),
                move |task: Task, ctx: JobContext| {
                    let (running, most, seen) = (r.clone(), m.clone(), s.clone());
                    async move {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(15)).await;
                        assert_eq!(ctx.retries(), 0);
                        seen.lock().expect("lock").push(task.id);
                        running.fetch_sub(1, Ordering::SeqCst);
                        Ok(())
                    }
                },
            )
            .build()
            .expect("build");
        let (handle, task) = start(worker);
        until("24 handled", PATIENCE, || handle.stats().handled == 24).await;
        stop(handle.clone(), task).await;
        let mut ids = seen.lock().expect("lock").clone();
        ids.sort_unstable();
        assert_eq!(ids, (0..24).collect::<Vec<_>>(), "{}", broker.transport);
        let most = most.load(Ordering::SeqCst);
        assert!(most <= 3, "{}: {most} handlers at once", broker.transport);
        assert!(most >= 2, "{}: handlers never overlapped", broker.transport);
        assert_eq!(handle.stats().failed, 0);
        until_size(&conn, &queue, 0).await;
        conn.delete_queue(&queue).await.expect("delete");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_then_dead_lettered_with_the_retry_count() {
    for broker in brokers::every("worker-retries") {
        let conn = Connection::open(&broker.url).await.expect("open");
        let queue = unique("retries");
        publish(&conn, &queue, 7..8).await;
        let attempts = Arc::new(AtomicUsize::new(0));
        let a = attempts.clone();
        let worker = Worker::builder(&conn)
            .max_retries(2)
            .backoff(Backoff::fixed(Duration::from_millis(20)))
            .handle(queue.as_str(), move |task: Task, ctx: JobContext| {
                let attempts = a.clone();
                async move {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    Err(JobError::retry(format!(
                        "task {} failed on retry {}",
                        task.id,
                        ctx.retries()
                    )))
                }
            })
            .build()
            .expect("build");
        let (handle, task) = start(worker);
        let dead = dead_letter_of(&conn, &queue).await;
        until("the dead letter counted", PATIENCE, || {
            handle.stats().dead_lettered == 1
        })
        .await;
        stop(handle.clone(), task).await;
        let t = broker.transport;
        assert_eq!(attempts.load(Ordering::SeqCst), 3, "{t}");
        assert_eq!(header_int(&dead, RETRIES_HEADER), Some(2), "{t}");
        let reason = header_text(&dead, dead_letter::REASON);
        assert!(
            reason.contains("task 7 failed on retry 2") && reason.contains("2 retries"),
            "{t}: {reason}"
        );
        assert_eq!(
            header_text(&dead, dead_letter::ORIGINAL_QUEUE),
            queue,
            "{t}"
        );
        assert_eq!(
            dead.decode::<Task>().expect("decode"),
            Task { id: 7 },
            "{t}"
        );
        let stats = handle.stats();
        assert_eq!(
            (stats.failed, stats.retried, stats.handled),
            (3, 2, 0),
            "{t}"
        );
        until_size(&conn, &queue, 0).await;
        conn.delete_queue(&queue).await.expect("delete");
        conn.delete_queue(&dead_letter::dlq_name(&queue))
            .await
            .expect("delete dlq");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_timeouts_and_bad_bodies_are_dead_lettered() {
    for broker in brokers::every("worker-permanent") {
        let t = broker.transport;
        let conn = Connection::open(&broker.url).await.expect("open");
        let permanent = unique("permanent");
        let slow = unique("slow");
        let typed = unique("undecodable");
        publish(&conn, &permanent, 1..2).await;
        publish(&conn, &slow, 2..3).await;
        conn.declare_queue(&Queue::new(typed.as_str()))
            .await
            .expect("declare");
        conn.producer()
            .routing_key(typed.as_str())
            .publish(&"not a task")
            .await
            .expect("publish");
        let worker = Worker::builder(&conn)
            .max_retries(5)
            .backoff(Backoff::none())
            .handle(
                permanent.as_str(),
                |task: Task, _ctx: JobContext| async move {
                    Err(JobError::permanent(format!("task {} is invalid", task.id)))
                },
            )
            .handle(
                Route::from(slow.as_str())
                    .timeout(Duration::from_millis(50))
                    .max_retries(0),
                |_task: Task, _ctx: JobContext| async move {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(())
                },
            )
            .handle(typed.as_str(), |_task: Task, _ctx: JobContext| async move {
                Ok(())
            })
            .build()
            .expect("build");
        let (handle, task) = start(worker);

        let dead = dead_letter_of(&conn, &permanent).await;
        assert_eq!(header_int(&dead, RETRIES_HEADER), None, "{t}: retried");
        let reason = header_text(&dead, dead_letter::REASON);
        assert!(reason.contains("task 1 is invalid"), "{t}: {reason}");

        let dead = dead_letter_of(&conn, &slow).await;
        let reason = header_text(&dead, dead_letter::REASON);
        assert!(reason.contains("timeout"), "{t}: {reason}");

        let dead = dead_letter_of(&conn, &typed).await;
        assert_eq!(
            dead.decode::<String>().expect("decode"),
            "not a task",
            "{t}"
        );
        until("three dead letters", PATIENCE, || {
            handle.stats().dead_lettered == 3
        })
        .await;
        stop(handle.clone(), task).await;
        let stats = handle.stats();
        assert_eq!((stats.failed, stats.retried), (2, 0), "{t}");
        for q in [&permanent, &slow, &typed] {
            until_size(&conn, q, 0).await;
            conn.delete_queue(q).await.expect("delete");
            conn.delete_queue(&dead_letter::dlq_name(q))
                .await
                .expect("delete dlq");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_waits_for_the_handler_in_flight_and_returns_the_rest() {
    for broker in brokers::every("worker-stop") {
        let t = broker.transport;
        let conn = Connection::open(&broker.url).await.expect("open");
        let queue = unique("stop");
        publish(&conn, &queue, 0..6).await;
        let started = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(tokio::sync::Notify::new());
        let (s, f, r) = (started.clone(), finished.clone(), release.clone());
        // One handler at a time in the worker, two for the queue: the lane takes a second
        // message and holds it, not started, while the first runs.
        let worker = Worker::builder(&conn)
            .concurrency(1)
            .shutdown_timeout(PATIENCE)
            .handle(
                Route::from(queue.as_str()).concurrency(2),
                move |_task: Task, _ctx: JobContext| {
                    let (started, finished, release) = (s.clone(), f.clone(), r.clone());
                    async move {
                        started.fetch_add(1, Ordering::SeqCst);
                        release.notified().await;
                        finished.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                },
            )
            .build()
            .expect("build");
        let (handle, task) = start(worker);
        until("the first handler", PATIENCE, || {
            started.load(Ordering::SeqCst) == 1
        })
        .await;
        handle.stop();
        // A worker that did not wait would have dropped the handler before it was released.
        release.notify_one();
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("the worker stops")
            .expect("the worker task")
            .expect("the worker's result");
        assert_eq!(started.load(Ordering::SeqCst), 1, "{t}");
        assert_eq!(
            finished.load(Ordering::SeqCst),
            1,
            "{t}: the handler was dropped"
        );
        assert_eq!(handle.stats().handled, 1, "{t}");
        until_size(&conn, &queue, 5).await;
        conn.delete_queue(&queue).await.expect("delete");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_stop_policy_a_bad_body_stops_the_worker_and_stays_queued() {
    for broker in brokers::every("worker-stop-policy") {
        let conn = Connection::open(&broker.url).await.expect("open");
        let queue = unique("stop-policy");
        conn.declare_queue(&Queue::new(queue.as_str()))
            .await
            .expect("declare");
        conn.producer()
            .routing_key(queue.as_str())
            .publish_bytes(&b"not json"[..], "application/json", "utf-8")
            .await
            .expect("publish");
        let handled = Arc::new(AtomicUsize::new(0));
        let h = handled.clone();
        let worker = Worker::builder(&conn)
            .error_action(ErrorAction::Stop)
            .handle(queue.as_str(), move |_: Task, _: JobContext| {
                h.fetch_add(1, Ordering::SeqCst);
                async { Ok(()) }
            })
            .build()
            .expect("worker");
        let outcome = tokio::time::timeout(PATIENCE, worker.run())
            .await
            .expect("the worker returns");
        let error = outcome.expect_err("the worker stops with the error");
        assert!(
            format!("{error:#}").contains(&queue),
            "{}: {error:#}",
            broker.transport
        );
        assert_eq!(handled.load(Ordering::SeqCst), 0);
        // Left in its queue, not dead-lettered.
        until_size(&conn, &queue, 1).await;
        let dlq = dead_letter::dlq_name(&queue);
        let in_dlq = conn.queue_size(&dlq).await.unwrap_or(0);
        assert_eq!(in_dlq, 0, "{}", broker.transport);
        conn.delete_queue(&queue).await.expect("delete");
    }
}
