//! The worker on the memory transport: tower layers around a handler, the backoff (paused
//! time), requeues, panics, raw handlers, and what `build` refuses. The scenarios every
//! transport runs are the facade's `tests/worker.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use kombu_core::{Connection, ErrorKind, Queue, Value};
use kombu_patterns::worker::{
    Backoff, Job, JobContext, JobError, RETRIES_HEADER, Route, Worker, WorkerHandle,
};
use tokio::task::JoinHandle;
use tower::ServiceBuilder;

async fn open(name: &str) -> Connection {
    kombu_core::transport::memory::register();
    let id = uuid::Uuid::new_v4().simple().to_string();
    Connection::open(&format!("memory://patterns-worker-{name}-{id}"))
        .await
        .expect("open")
}

async fn publish<T: serde::Serialize>(conn: &Connection, queue: &str, values: &[T]) {
    conn.declare_queue(&Queue::new(queue))
        .await
        .expect("declare");
    let producer = conn.producer().routing_key(queue);
    for value in values {
        producer.publish(value).await.expect("publish");
    }
}

/// Waits (in the test's clock, paused or not) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..100_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

fn start(worker: Worker) -> (WorkerHandle, JoinHandle<kombu_core::Result<()>>) {
    let handle = worker.handle();
    (handle, tokio::spawn(worker.run()))
}

async fn stop(handle: &WorkerHandle, running: JoinHandle<kombu_core::Result<()>>) {
    handle.stop();
    running
        .await
        .expect("the worker task")
        .expect("the worker's result");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_layers_compose_with_a_handler() {
    let conn = open("tower").await;
    publish(&conn, "jobs", &[1u32, 2, 3, 4, 5, 6, 7, 8]).await;
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (r, m) = (running.clone(), most.clone());
    let service = ServiceBuilder::new()
        .concurrency_limit(2) // tower's limit, below the worker's 8
        .timeout(Duration::from_secs(60))
        .service_fn(move |job: Job<u32>| {
            let (running, most) = (r.clone(), m.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                if *job.value() == 0 {
                    return Err(JobError::permanent("zero"));
                }
                Ok::<(), JobError>(())
            }
        });
    let worker = Worker::builder(&conn)
        .concurrency(8)
        .service("jobs", service)
        .build()
        .expect("build");
    let (handle, task) = start(worker);
    until("8 handled", || handle.stats().handled == 8).await;
    stop(&handle, task).await;
    let most = most.load(Ordering::SeqCst);
    assert!((1..=2).contains(&most), "{most} at once under a limit of 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_timeouts_are_failures_and_job_errors_keep_their_kind() {
    let conn = open("tower-timeout").await;
    publish(&conn, "slow", &[1u32]).await;
    publish(&conn, "bad", &[2u32]).await;
    let slow = ServiceBuilder::new()
        .timeout(Duration::from_millis(20))
        .service_fn(|_job: Job<u32>| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<(), JobError>(())
        });
    let bad = ServiceBuilder::new()
        .timeout(Duration::from_secs(60))
        .service_fn(|_job: Job<u32>| async { Err::<(), _>(JobError::permanent("no")) });
    let worker = Worker::builder(&conn)
        .max_retries(0)
        .service("slow", slow)
        .service(Route::from("bad").max_retries(9), bad)
        .build()
        .expect("build");
    let (handle, task) = start(worker);
    until("two dead letters", || handle.stats().dead_lettered == 2).await;
    stop(&handle, task).await;
    let stats = handle.stats();
    assert_eq!((stats.failed, stats.retried), (2, 0));
    assert_eq!(conn.queue_size("slow.dlq").await.expect("size"), 1);
    assert_eq!(conn.queue_size("bad.dlq").await.expect("size"), 1);
}

#[tokio::test(start_paused = true)]
async fn the_backoff_is_waited_before_a_retry() {
    let conn = open("backoff").await;
    publish(&conn, "jobs", &["once"]).await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let worker = Worker::builder(&conn)
        .backoff(Backoff::fixed(Duration::from_secs(120)))
        .handle("jobs", move |_v: String, ctx: JobContext| {
            let seen = s.clone();
            async move {
                let retries = ctx.retries();
                let header = ctx.headers().get(RETRIES_HEADER).cloned();
                seen.lock()
                    .expect("lock")
                    .push((tokio::time::Instant::now(), retries, header));
                if retries == 0 {
                    return Err(JobError::retry("first try fails"));
                }
                Ok(())
            }
        })
        .build()
        .expect("build");
    let (handle, task) = start(worker);
    until("the retry handled", || handle.stats().handled == 1).await;
    stop(&handle, task).await;
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2);
    assert_eq!((seen[0].1, seen[0].2.clone()), (0, None));
    assert_eq!((seen[1].1, seen[1].2.clone()), (1, Some(Value::Int(1))));
    let waited = seen[1].0 - seen[0].0;
    assert!(
        waited >= Duration::from_secs(120),
        "retried after {waited:?}"
    );
    let stats = handle.stats();
    assert_eq!((stats.failed, stats.retried, stats.handled), (1, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeues_and_panics() {
    let conn = open("requeue").await;
    publish(&conn, "requeue", &[1u32]).await;
    publish(&conn, "panics", &[2u32]).await;
    publish(&conn, "panics-early", &[3u32]).await;
    let worker = Worker::builder(&conn)
        .backoff(Backoff::none())
        .handle("requeue", |_v: u32, ctx: JobContext| async move {
            if !ctx.redelivered() {
                return Err(JobError::requeue("not yet"));
            }
            Ok(())
        })
        .handle("panics", |_v: u32, ctx: JobContext| async move {
            assert!(ctx.retries() > 0, "a panicking handler");
            Ok(())
        })
        // Panics before it returns its future: the same failure, retried.
        .handle("panics-early", |_v: u32, ctx: JobContext| {
            assert!(ctx.retries() > 0, "a handler panicking as it is called");
            async { Ok(()) }
        })
        .build()
        .expect("build");
    let (handle, task) = start(worker);
    until("all three handled", || handle.stats().handled == 3).await;
    stop(&handle, task).await;
    let stats = handle.stats();
    assert_eq!((stats.failed, stats.requeued, stats.retried), (3, 1, 2));
    assert_eq!(conn.queue_size("requeue").await.expect("size"), 0);
    assert_eq!(conn.queue_size("panics").await.expect("size"), 0);
    assert_eq!(conn.queue_size("panics-early").await.expect("size"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_handlers_get_the_body() {
    let conn = open("raw").await;
    conn.declare_queue(&Queue::new("raw"))
        .await
        .expect("declare");
    conn.producer()
        .routing_key("raw")
        .publish_bytes(
            &b"\x00\x01 not json"[..],
            "application/octet-stream",
            "binary",
        )
        .await
        .expect("publish");
    let got = Arc::new(std::sync::Mutex::new(None));
    let g = got.clone();
    let worker = Worker::builder(&conn)
        .accept(["application/octet-stream"])
        .handle_raw("raw", move |body: Bytes, ctx: JobContext| {
            let got = g.clone();
            async move {
                let kind = ctx.delivery().content_type().map(str::to_owned);
                *got.lock().expect("lock") = Some((body, kind));
                Ok(())
            }
        })
        .build()
        .expect("build");
    let (handle, task) = start(worker);
    until("handled", || handle.stats().handled == 1).await;
    stop(&handle, task).await;
    let got = got.lock().expect("lock").clone();
    assert_eq!(
        got,
        Some((
            Bytes::from_static(b"\x00\x01 not json"),
            Some("application/octet-stream".to_owned())
        ))
    );
}

#[tokio::test]
async fn build_refuses_no_route_and_two_handlers_of_a_queue() {
    let conn = open("build").await;
    let none = Worker::builder(&conn).build();
    assert_eq!(
        none.map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::Config)
    );
    let twice = Worker::builder(&conn)
        .handle("q", |_v: u32, _c: JobContext| async { Ok(()) })
        .handle("q", |_v: u32, _c: JobContext| async { Ok(()) })
        .build();
    assert_eq!(
        twice.map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::Config)
    );
}

#[tokio::test]
async fn a_worker_stopped_before_it_runs_returns_at_once() {
    let conn = open("stopped").await;
    publish(&conn, "jobs", &[1u32]).await;
    let worker = Worker::builder(&conn)
        .handle("jobs", |_v: u32, _c: JobContext| async { Ok(()) })
        .build()
        .expect("build");
    let handle = worker.handle();
    handle.stop();
    worker.run().await.expect("run");
    assert_eq!(handle.stats().handled, 0);
    assert_eq!(conn.queue_size("jobs").await.expect("size"), 1);
    assert!(format!("{handle:?}").contains("stopped: true"));
}
