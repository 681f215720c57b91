//! `Worker::run_until_signal` in a process of its own, on Redis and RabbitMQ: the test
//! publishes ten messages, starts itself again as the worker (concurrency 2, each handler
//! taking 3 s), and sends it SIGTERM (then, in a second round, SIGINT) once two handlers have
//! started. The worker takes nothing more, lets both handlers finish (each prints `done`),
//! and `run_until_signal` returns `Ok`: the process exits 0 with the other eight messages still
//! in the queue, ready for the next worker.
//!
//! A test binary without libtest's harness: `main` is the parent, or the worker when
//! `KOMBU_WORKER_SIGNAL_URL` names its broker.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use kombu::worker::{JobContext, Worker};
use kombu::{Connection, Queue};
use kombu_test_support::{KillOnDrop, brokers, lines};

const URL_VAR: &str = "KOMBU_WORKER_SIGNAL_URL";
const QUEUE_VAR: &str = "KOMBU_WORKER_SIGNAL_QUEUE";
/// Every wait gives up after this long.
const PATIENCE: Duration = Duration::from_secs(60);

fn main() {
    match std::env::var(URL_VAR) {
        Ok(url) => child(&url, &std::env::var(QUEUE_VAR).expect("the queue")),
        Err(_) => parent(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The worker: prints `ready`, then `started <n>` and `done <n>` around each handler, and
/// `stopped` once `run_until_signal` returned `Ok`.
fn child(url: &str, queue: &str) {
    let outcome = runtime().block_on(async {
        let conn = Connection::open(url).await?;
        let worker = Worker::builder(&conn)
            .concurrency(2)
            .handle(queue, |n: u32, _: JobContext| async move {
                say(&format!("started {n}"));
                // Long enough that the parent's signal comes before a third could start.
                tokio::time::sleep(Duration::from_secs(3)).await;
                say(&format!("done {n}"));
                Ok(())
            })
            .build()?;
        say("ready");
        worker.run_until_signal().await
    });
    match outcome {
        Ok(()) => say("stopped"),
        Err(error) => {
            eprintln!("the worker failed: {error:#}");
            std::process::exit(1);
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn parent() {
    let rt = runtime();
    let mut ran = 0;
    for transport in ["redis", "amqp"] {
        for signal in ["TERM", "INT"] {
            let Some(broker) = brokers::broker(transport, "worker-signal") else {
                continue;
            };
            rt.block_on(one_round(transport, &broker.url, signal));
            ran += 1;
        }
    }
    println!("worker_signal: {ran} rounds passed");
}

async fn one_round(transport: &str, url: &str, signal: &str) {
    let what = format!("{transport}, SIG{signal}");
    let conn = Connection::open(url).await.expect("open");
    let queue = format!("worker-signal-{}", uuid::Uuid::new_v4().simple());
    conn.declare_queue(&Queue::new(queue.as_str()))
        .await
        .expect("declare");
    let ids: Vec<u32> = (0..10).collect();
    conn.producer()
        .routing_key(queue.as_str())
        .publish_batch(&ids)
        .await
        .expect("publish");

    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().expect("this test's executable"))
            .env(URL_VAR, url)
            .env(QUEUE_VAR, &queue)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the worker"),
    );
    let out = lines(child.0.stdout.take().expect("stdout"));
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    let next = |seen: &mut Vec<String>| {
        let left = deadline.saturating_duration_since(Instant::now());
        match out.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                Some(line)
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!("{what}: the worker said {seen:?}, then nothing")
            }
            Err(RecvTimeoutError::Disconnected) => None,
        }
    };
    while seen.iter().filter(|l| l.starts_with("started")).count() < 2 {
        if next(&mut seen).is_none() {
            panic!("{what}: the worker ended early: {seen:?}");
        }
    }
    let killed = Command::new("kill")
        .args([&format!("-{signal}"), &child.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success(), "{what}: kill -{signal}");
    while next(&mut seen).is_some() {}
    let status = child.0.wait().expect("the worker's status");

    assert!(
        status.success(),
        "{what}: the worker exited {status}: {seen:?}"
    );
    let started = seen.iter().filter(|l| l.starts_with("started")).count();
    let done = seen.iter().filter(|l| l.starts_with("done")).count();
    assert_eq!(
        started, 2,
        "{what}: nothing taken after the signal: {seen:?}"
    );
    assert_eq!(done, 2, "{what}: the handlers in flight finished: {seen:?}");
    assert_eq!(
        seen.last().map(String::as_str),
        Some("stopped"),
        "{what}: {seen:?}"
    );
    // The two handled messages were acked, the eight others are back (or still) in the queue.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let size = conn.queue_size(&queue).await.expect("size");
        if size == 8 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {size} messages left, not 8"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    conn.delete_queue(&queue).await.expect("delete");
    println!("{what}: {seen:?}");
}
