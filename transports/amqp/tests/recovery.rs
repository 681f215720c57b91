//! Recovery without restarting the broker: `rabbitmqctl close_all_connections` on a virtual
//! host of this test's own drops every connection to it, which also deletes the exclusive
//! queue the consumer's connection declared. The connections reconnect by themselves, declare
//! their topology again (the exchange, the exclusive queue, its binding), the consumer
//! subscribes again, and publishing goes on. An idle connection also reconnects by itself. A
//! binary of its own: nothing else uses these vhosts.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kombu_core::{Connection, ErrorKind, Exchange, Queue};

const GUARD: Duration = Duration::from_secs(60);
const VHOST: &str = "kombu-rs-recovery";

fn close_all_connections() -> bool {
    Command::new("rabbitmqctl")
        .args([
            "close_all_connections",
            "-p",
            VHOST,
            "kombu-rs recovery test",
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    match tokio::time::timeout(GUARD, rx.recv()).await {
        Ok(Some(body)) => body,
        other => panic!("no delivery: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_recover_and_redeclare_their_topology() {
    kombu_amqp::register();
    let url = tokio::task::spawn_blocking(|| {
        if !common::broker_up("recovery") {
            return None;
        }
        match common::fresh_vhost(VHOST) {
            Some(vhost) => Some(common::url_on(Some(&vhost))),
            None if common::required() => {
                panic!("recovery: rabbitmqctl cannot make a vhost, and KOMBU_TEST_REQUIRE requires this test")
            }
            None => {
                eprintln!("recovery: skipped, rabbitmqctl unavailable");
                None
            }
        }
    })
    .await
    .expect("setup");
    let Some(url) = url else { return };

    let consumer_conn = Connection::open(&url).await.expect("open");
    let producer_conn = Connection::open(&url).await.expect("open");
    let x = Exchange::direct("events");
    let q = Queue::new(format!("mine-{}", uuid::Uuid::new_v4().simple()))
        .exclusive(true)
        .exchange(x.clone())
        .routing_key("k");
    let mut consumer = consumer_conn
        .consumer([q.clone()])
        .build()
        .await
        .expect("consume");
    // The consumer runs as an application's would: always waiting for the next delivery
    // (recovery happens as the connection is used).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let consuming = tokio::spawn(async move {
        while let Some(item) = consumer.next().await {
            let d = item.expect("a good delivery, never an error: the consumer resumes");
            tx.send(d.decode::<String>().expect("decode"))
                .expect("send");
            d.ack().await.expect("ack");
        }
    });
    let producer = producer_conn.producer().exchange(x).routing_key("k");
    producer
        .message(&"before")
        .mandatory(true)
        .send()
        .await
        .expect("publish before");
    assert_eq!(next(&mut rx).await, "before");

    assert!(
        tokio::task::spawn_blocking(close_all_connections)
            .await
            .expect("rabbitmqctl"),
        "rabbitmqctl close_all_connections failed"
    );

    // Until the consumer's connection has declared its exclusive queue again, a mandatory
    // publish comes back unroutable; then it is routed again. rabbitmqctl may return before
    // the producer's connection has read its close: a publish written to the closing
    // connection fails with its outcome unknown (by design not retried by default), and is
    // sent again here as a caller wanting at-least-once would.
    let started = Instant::now();
    loop {
        match producer.message(&"after").mandatory(true).send().await {
            Ok(()) => break,
            Err(e) if e.kind() == ErrorKind::Unroutable && started.elapsed() < GUARD => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) if e.outcome_unknown() && e.is_recoverable() && started.elapsed() < GUARD => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("publish after the connections dropped: {e}"),
        }
    }
    assert_eq!(next(&mut rx).await, "after");
    consuming.abort();
    producer_conn.close().await.expect("close");
    consumer_conn.close().await.expect("close");
}

/// The names (client and server address) of the connections to `vhost` (`rabbitmqctl`).
fn connections_on(vhost: &str) -> Option<Vec<String>> {
    let out = Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "-p",
            vhost,
            "name",
            "--no-table-headers",
            "-q",
        ])
        .output()
        .ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    })
}

/// Waits (bounded) until the connections to `vhost` satisfy `done`; what was listed last.
async fn await_connections(
    vhost: &'static str,
    done: impl Fn(&[String]) -> bool,
) -> Option<Vec<String>> {
    let deadline = Instant::now() + GUARD;
    loop {
        let listed = tokio::task::spawn_blocking(move || connections_on(vhost))
            .await
            .expect("rabbitmqctl");
        if listed.as_deref().is_some_and(&done) || Instant::now() > deadline {
            return listed;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_recovers_by_itself() {
    const IDLE_VHOST: &str = "kombu-rs-recovery-idle";
    kombu_amqp::register();
    let url = tokio::task::spawn_blocking(|| {
        if !common::broker_up("recovery") {
            return None;
        }
        match common::fresh_vhost(IDLE_VHOST) {
            Some(vhost) => Some(common::url_on(Some(&vhost))),
            None if common::required() => {
                panic!("recovery: rabbitmqctl cannot make a vhost, and KOMBU_TEST_REQUIRE requires this test")
            }
            None => None,
        }
    })
    .await
    .expect("setup");
    let Some(url) = url else { return };
    let conn = Connection::open(&url).await.expect("open");
    let before = await_connections(IDLE_VHOST, |c| c.len() == 1)
        .await
        .expect("rabbitmqctl list_connections");
    assert_eq!(before.len(), 1, "{before:?}");
    assert!(
        tokio::task::spawn_blocking(|| {
            Command::new("rabbitmqctl")
                .args(["close_all_connections", "-p", IDLE_VHOST, "idle test"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .await
        .expect("rabbitmqctl"),
        "rabbitmqctl close_all_connections failed"
    );
    // Nothing uses the connection: it connects again by itself (from another client port).
    let after = await_connections(IDLE_VHOST, |c| c.len() == 1 && c[0] != before[0]).await;
    assert!(
        after
            .as_deref()
            .is_some_and(|c| c.len() == 1 && c[0] != before[0]),
        "the idle connection did not come back: before {before:?}, after {after:?}"
    );
    conn.close().await.expect("close");
}
