//! The broker restarts under load: while 10,000 messages are published with confirms and
//! consumed with acks, RabbitMQ's app is stopped and started again (`rabbitmqctl stop_app` /
//! `start_app`). Every confirmed message must arrive (duplicates are allowed: a publish whose
//! confirm was lost is published again, and a delivery whose ack was lost comes again), and
//! the consumer must resume by itself.
//!
//! A binary of its own, so no other AMQP test runs while the broker is down. The broker is
//! started again when the test ends, pass or fail (a guard), and every wait is bounded. Needs
//! `rabbitmqctl` (root on the broker's machine); without it the test fails when
//! `KOMBU_TEST_REQUIRE` names amqp and is skipped otherwise.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kombu_core::{Connection, Queue};
use parking_lot::Mutex;

const MESSAGES: u32 = 10_000;
const BATCH: u32 = 50;
/// The broker is stopped once this many messages were published and confirmed.
const STOP_AFTER: u32 = 2_000;
/// Published only once the broker is back.
const HELD_BACK: u32 = 500;
/// Bound on the whole test (a guard, not a timing assertion).
const GUARD: Duration = Duration::from_secs(240);

fn rabbitmqctl(args: &[&str]) -> bool {
    Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Starts the broker's app again when dropped (the test failed before it did).
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        rabbitmqctl(&["start_app"]);
        rabbitmqctl(&["await_startup", "--timeout", "120"]);
    }
}

/// Stops the app, waits a little with it down, starts it again; returns how long it was down.
fn restart_broker() -> Duration {
    let started = Instant::now();
    assert!(rabbitmqctl(&["stop_app"]), "rabbitmqctl stop_app failed");
    std::thread::sleep(Duration::from_secs(1));
    assert!(rabbitmqctl(&["start_app"]), "rabbitmqctl start_app failed");
    assert!(
        rabbitmqctl(&["await_startup", "--timeout", "120"]),
        "RabbitMQ did not start again"
    );
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_loses_no_confirmed_message() {
    kombu_amqp::register();
    let setup = tokio::task::spawn_blocking(|| {
        if !common::broker_up("restart") {
            return None;
        }
        if !rabbitmqctl(&["await_startup", "--timeout", "10"]) {
            if common::required() {
                panic!("restart: rabbitmqctl cannot reach the broker, and KOMBU_TEST_REQUIRE requires this test");
            }
            eprintln!("restart: skipped, rabbitmqctl cannot reach the broker");
            return None;
        }
        let vhost = common::fresh_vhost("kombu-rs-restart");
        Some(common::url_on(vhost.as_deref()))
    })
    .await
    .expect("setup");
    let Some(url) = setup else { return };
    let restore = Restore;
    let started = Instant::now();

    let queue = Queue::new(format!("restart-{}", uuid::Uuid::new_v4().simple()));
    let consumer_conn = Connection::open(&url)
        .await
        .expect("open consumer connection");
    // The producer's URL lists an unreachable alternate first: it connects to the second, and
    // recovery goes through both in turn while the broker is down.
    let producer_conn = Connection::open(&format!(
        "amqp://guest:guest@127.0.0.1:1/?connect_timeout=1;{url}"
    ))
    .await
    .expect("open producer connection");
    assert_ne!(producer_conn.url().port(), Some(1));
    let mut consumer = consumer_conn
        .consumer([queue.clone()])
        .prefetch(200)
        .build()
        .await
        .expect("consume");

    let confirmed = Arc::new(Mutex::new(HashSet::new()));
    let failed = Arc::new(AtomicUsize::new(0));
    let published = Arc::new(AtomicUsize::new(0));
    let broker_back = Arc::new(AtomicBool::new(false));
    let producer = {
        let confirmed = confirmed.clone();
        let failed = failed.clone();
        let published = published.clone();
        let broker_back = broker_back.clone();
        let producer = producer_conn.producer().routing_key(queue.name.clone());
        tokio::spawn(async move {
            for start in (0..MESSAGES).step_by(BATCH as usize) {
                // From the stop until the broker is back, a batch every 10 ms, so that batches
                // are on their way when the connection drops (their confirms lost, they are
                // published again); the last ones wait for the broker to be back, so some
                // follow the restart however fast publishing is.
                if published.load(Ordering::SeqCst) >= STOP_AFTER as usize {
                    if start + HELD_BACK >= MESSAGES {
                        while !broker_back.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    } else if !broker_back.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                let batch: Vec<u32> = (start..(start + BATCH).min(MESSAGES)).collect();
                match producer.publish_batch(batch.iter()).await {
                    Ok(()) => {
                        confirmed.lock().extend(batch.iter().copied());
                        published.fetch_add(batch.len(), Ordering::SeqCst);
                    }
                    Err(e) => {
                        eprintln!("restart: a batch of {} was not confirmed: {e}", batch.len());
                        failed.fetch_add(batch.len(), Ordering::SeqCst);
                    }
                }
            }
        })
    };

    // The broker restarts once enough messages are through.
    let restarter = {
        let published = published.clone();
        tokio::spawn(async move {
            while published.load(Ordering::SeqCst) < STOP_AFTER as usize {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let down = tokio::task::spawn_blocking(restart_broker)
                .await
                .expect("restart the broker");
            broker_back.store(true, Ordering::SeqCst);
            (Instant::now(), down)
        })
    };

    let mut received: HashSet<u32> = HashSet::new();
    let mut deliveries = 0usize;
    let mut after_restart = 0usize;
    let mut stale_acks = 0usize;
    let mut restarted_at = None;
    let mut restarter = Some(restarter);
    let mut producer = Some(producer);
    loop {
        if producer.as_ref().is_some_and(|p| p.is_finished()) {
            producer
                .take()
                .expect("producer")
                .await
                .expect("producer task");
        }
        if let Some(r) = restarter.as_ref()
            && r.is_finished()
        {
            restarted_at = Some(restarter.take().expect("restarter").await.expect("restart"));
        }
        let done = producer.is_none()
            && restarted_at.is_some()
            && confirmed.lock().iter().all(|n| received.contains(n));
        if done {
            break;
        }
        assert!(
            started.elapsed() < GUARD,
            "after {GUARD:?}: {} of {} confirmed messages received ({} published, {} failed)",
            confirmed
                .lock()
                .iter()
                .filter(|n| received.contains(n))
                .count(),
            confirmed.lock().len(),
            published.load(Ordering::SeqCst),
            failed.load(Ordering::SeqCst)
        );
        match tokio::time::timeout(Duration::from_millis(200), consumer.next()).await {
            Err(_) => {}
            Ok(None) => panic!("the consumer stream ended instead of resuming"),
            Ok(Some(Err(e))) => panic!("the consumer failed instead of resuming: {e}"),
            Ok(Some(Ok(d))) => {
                let n: u32 = d.decode().expect("decode");
                received.insert(n);
                deliveries += 1;
                if restarted_at.is_some() {
                    after_restart += 1;
                }
                // A delivery taken before the drop cannot be acked any more; the broker
                // delivers it again.
                if d.ack().await.is_err() {
                    stale_acks += 1;
                }
            }
        }
    }
    let confirmed = confirmed.lock().len();
    let (_, down) = restarted_at.expect("restarted");
    eprintln!(
        "restart: {MESSAGES} published in batches of {BATCH}, {confirmed} confirmed, {} not \
         confirmed; broker down and up again in {down:.1?}; {} distinct received ({deliveries} \
         deliveries, {} duplicates, {after_restart} after the restart, {stale_acks} acks \
         refused as stale); total {:.1?}",
        failed.load(Ordering::SeqCst),
        received.len(),
        deliveries - received.len(),
        started.elapsed()
    );
    assert_eq!(
        confirmed, MESSAGES as usize,
        "every publish was confirmed in the end"
    );
    assert!(after_restart > 0, "the consumer resumed after the restart");
    consumer.close().await.expect("close");
    consumer_conn
        .delete_queue(&queue.name)
        .await
        .expect("delete");
    drop(restore);
}
