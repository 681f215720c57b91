//! A broker outage longer than the connection's `recover_timeout`: the connection's recovery
//! round gives up (the link reads `Failed`), the background watcher and the consumer try
//! again, and the consumer, which resubscribes under its own retry policy
//! (`ConsumeOptions::retry`, by default without a deadline), rides through the outage and gets
//! what is published once the broker is back.
//!
//! The node is not the shared one on 5672: `kombu-test-support`'s `RabbitNode` runs a node of
//! this test's own (AMQP port 5686, distribution port 25686, its own data directory and
//! cookie). Needs the `rabbitmq-server` package (as `scripts/test` installs it). Every wait is
//! bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kombu_core::{Connection, LinkState, Queue};
use kombu_test_support::faults::{self, RabbitNode};
use parking_lot::Mutex;

/// The AMQP port of the test's node.
const PORT: u16 = 5686;
/// Its Erlang distribution port.
const DIST_PORT: u16 = 25686;
/// How long the node stays down (more than the URL's `recover_timeout` of 2 s).
const DOWN: Duration = Duration::from_secs(5);
/// The longest any one step may take.
const GUARD: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_rides_through_an_outage_longer_than_recover_timeout() {
    if !faults::can_run("outage", "amqp", false, &["rabbitmq-server", "rabbitmqctl"]) {
        return;
    }
    kombu_amqp::register();
    let node = tokio::task::spawn_blocking(|| RabbitNode::start(PORT, DIST_PORT))
        .await
        .expect("start the node");
    let url = node.url("?connect_timeout=1&recover_timeout=2&heartbeat=5");
    let node = Arc::new(Mutex::new(node));

    let conn = Connection::open(&url).await.expect("open");
    let q = Queue::new(format!("outage-{}", uuid::Uuid::new_v4().simple())).durable(true);
    conn.declare_queue(&q).await.expect("declare");
    let mut consumer = conn.consumer([q.clone()]).build().await.expect("consume");
    // Every item the consumer's stream hands out; it must not end or fail.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let consuming = tokio::spawn(async move {
        while let Some(item) = consumer.next().await {
            let item = match item {
                Ok(d) => {
                    let body = d.decode::<String>().map_err(|e| e.to_string());
                    d.ack().await.map(|()| body).map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            if tx.send(item.and_then(|body| body)).is_err() {
                return;
            }
        }
        let _ = tx.send(Err("the consumer's stream ended".to_owned()));
    });
    let producer = conn.producer().routing_key(q.name.clone());
    producer.publish("before").await.expect("publish before");
    let got = tokio::time::timeout(GUARD, rx.recv()).await;
    assert_eq!(got.expect("in time"), Some(Ok("before".to_owned())));

    // Every link state the connection reports from here on, until Connected after a Failed.
    let mut link = conn.link();
    assert_eq!(*link.borrow_and_update(), LinkState::Connected);
    let seen = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut failed = false;
        while link.changed().await.is_ok() {
            let state = link.borrow_and_update().clone();
            failed |= matches!(state, LinkState::Failed { .. });
            let done = failed && state == LinkState::Connected;
            seen.push(state);
            if done {
                break;
            }
        }
        seen
    });

    let down = node.clone();
    let restarted = tokio::task::spawn_blocking(move || {
        let mut node = down.lock();
        node.kill();
        std::thread::sleep(DOWN);
        node.start_again(DIST_PORT)
    });
    let back = tokio::time::timeout(GUARD, restarted)
        .await
        .expect("the node restarts in time")
        .expect("restart the node");
    eprintln!("amqp outage: node back");

    let seen = tokio::time::timeout(GUARD, seen)
        .await
        .expect("the link reports Connected again")
        .expect("the link watcher");
    eprintln!("amqp outage: link states {seen:?}");
    assert!(
        matches!(seen.first(), Some(LinkState::Reconnecting { .. })),
        "the loss is reported first: {seen:?}"
    );
    let failed = seen
        .iter()
        .position(|s| matches!(s, LinkState::Failed { .. }))
        .expect("a recovery round that timed out reports Failed");
    assert!(
        seen[failed..]
            .iter()
            .any(|s| matches!(s, LinkState::Reconnecting { .. })),
        "recovery goes on after a round gave up: {seen:?}"
    );
    assert_eq!(seen.last(), Some(&LinkState::Connected), "{seen:?}");

    // The consumer is still there: it gets what is published now. "before" may come again
    // first: its ack may not have been written before the kill (the queue and the message
    // are durable).
    producer.publish("after").await.expect("publish after");
    loop {
        let got = tokio::time::timeout(GUARD, rx.recv())
            .await
            .expect("in time");
        match got {
            Some(Ok(body)) if body == "after" => break,
            Some(Ok(body)) if body == "before" => eprintln!("amqp outage: \"before\" came again"),
            other => panic!("the consumer goes on after the outage: {other:?}"),
        }
    }
    eprintln!(
        "amqp outage: consumed again {:.1?} after the node was back",
        Instant::now().saturating_duration_since(back)
    );

    consuming.abort();
    let _ = consuming.await;
    let _ = conn.delete_queue(&q.name).await;
    conn.close().await.expect("close");
    let node = Arc::try_unwrap(node).map(Mutex::into_inner);
    tokio::task::spawn_blocking(move || drop(node))
        .await
        .expect("stop the node");
}
