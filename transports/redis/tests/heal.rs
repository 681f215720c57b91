//! Consumers that heal: a Redis server of the test's own (AOF, `appendfsync always`) is
//! SIGKILLed and started again while messages flow, or its client connections are cut; the
//! consumer goes on by itself, loses nothing that was confirmed, and returns what it had
//! taken into its buffer on the lost connection at once (not after the visibility timeout).
//!
//! Ports 16390-16399 are this file's.

#[path = "support/durable.rs"]
mod durable;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use durable::Durable;
use futures::StreamExt;
use kombu_core::{Connection, LinkState, Queue, RetryPolicy};
use parking_lot::Mutex;

/// Messages published across the restart (`KOMBU_HEAL_MESSAGES` overrides it, for a soak
/// run); the server is killed after a third of them.
const MESSAGES: u64 = 1500;

fn messages() -> u64 {
    std::env::var("KOMBU_HEAL_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(MESSAGES)
}
/// How long the server stays down.
const OUTAGE: Duration = Duration::from_millis(300);
/// Bound on each phase of a test.
const GUARD: Duration = Duration::from_secs(20);

/// How long before the kill a delivery's first receipt still counts as in flight at the
/// fault: its ack may not have been written when the server died.
const ACK_WINDOW: Duration = Duration::from_secs(1);

/// Whether this machine has `redis-server` (else the test is skipped, or fails when
/// `KOMBU_TEST_REQUIRE` asks for Redis).
fn can_run(test: &str) -> bool {
    kombu_test_support::faults::can_run(test, "redis", false, &["redis-server"])
}

/// Records every link state a connection reports.
fn record_link(conn: &Connection) -> Arc<Mutex<Vec<LinkState>>> {
    let states = Arc::new(Mutex::new(Vec::new()));
    let mut link = conn.link();
    let seen = states.clone();
    tokio::spawn(async move {
        while link.changed().await.is_ok() {
            let state = link.borrow_and_update().clone();
            seen.lock().push(state);
        }
    });
    states
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_rides_through_a_server_restart() {
    if !can_run("a_consumer_rides_through_a_server_restart") {
        return;
    }
    kombu_redis::register();
    let server = Durable::start(16390);
    let url = server.url("visibility_timeout=30");
    let queue = Queue::new("heal");
    let publisher = Connection::open(&url).await.expect("connects");
    publisher.declare_queue(&queue).await.expect("declares");
    let consumer_conn = Connection::open(&url).await.expect("connects");
    let states = record_link(&consumer_conn);
    let mut consumer = consumer_conn
        .consumer([queue.clone()])
        .prefetch(50)
        .build()
        .await
        .expect("consumes");

    let received: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    // The ids whose ack failed (the server hands them out again).
    let stale: Arc<Mutex<HashSet<u64>>> = Arc::new(Mutex::new(HashSet::new()));
    let redelivered = Arc::new(Mutex::new(0u64));
    let consuming = {
        let (received, stale, redelivered) = (received.clone(), stale.clone(), redelivered.clone());
        tokio::spawn(async move {
            while let Some(item) = consumer.next().await {
                let delivery = match item {
                    Ok(delivery) => delivery,
                    Err(refused) => panic!("the consumer stream failed: {:#}", refused.error),
                };
                let n: u64 = delivery.decode().expect("a number");
                received.lock().push((n, Instant::now()));
                *redelivered.lock() += u64::from(delivery.redelivered());
                if delivery.ack().await.is_err() {
                    stale.lock().insert(n);
                }
            }
        })
    };

    // The server is killed once BEFORE_KILL messages are confirmed, and comes back after OUTAGE.
    let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
    let restarter = tokio::task::spawn_blocking(move || {
        let mut server = server;
        if kill_rx.recv().is_err() {
            return (server, None);
        }
        server.kill();
        let killed = Instant::now();
        std::thread::sleep(OUTAGE);
        server.restart();
        (server, Some((killed, Instant::now())))
    });

    let producer = publisher.producer().routing_key("heal");
    let (messages, before_kill) = (messages(), messages() / 3);
    let guard = GUARD + Duration::from_millis(messages * 5);
    let started = Instant::now();
    let (mut confirmed, mut failed_publishes, mut unknown) = (Vec::new(), 0u64, 0u64);
    // The ids whose publish failed at least once and was published again (stored twice when
    // the first attempt reached the server).
    let mut published_again: HashSet<u64> = HashSet::new();
    for n in 0..messages {
        if n == before_kill {
            kill_tx.send(()).expect("the restarter waits");
        }
        loop {
            match producer.publish(&n).await {
                Ok(()) => {
                    confirmed.push(n);
                    break;
                }
                Err(e) => {
                    assert!(e.is_recoverable(), "publish {n}: {e:#}");
                    failed_publishes += 1;
                    published_again.insert(n);
                    unknown += u64::from(e.outcome_unknown());
                    assert!(
                        started.elapsed() < guard,
                        "publishing takes too long: {e:#}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    let published_in = started.elapsed();
    let (server, times) = restarter.await.expect("the restarter ran");
    let (killed, back) = times.expect("the server was restarted");

    // Every confirmed message arrives.
    let wanted: HashSet<u64> = confirmed.iter().copied().collect();
    let deadline = Instant::now() + guard;
    loop {
        let got: HashSet<u64> = received.lock().iter().map(|(n, _)| *n).collect();
        if wanted.is_subset(&got) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    consuming.abort();
    let received = received.lock().clone();
    let unique: HashSet<u64> = received.iter().map(|(n, _)| *n).collect();
    let lost = wanted.difference(&unique).count();
    let duplicated = received.len() - unique.len();
    let first_after = received
        .iter()
        .find(|(_, at)| *at >= back)
        .map(|(_, at)| at.duration_since(back));
    println!(
        "redis restart: sent (confirmed) {}, received {}, lost {lost}, duplicated {duplicated}, \
         failed publish attempts {failed_publishes} (outcome unknown {unknown}), stale acks {}, \
         redelivered {}, \
         down {:?}, first delivery {first_after:?} after the server was back; published in \
         {published_in:?}, last received {:?} after the start",
        confirmed.len(),
        received.len(),
        stale.lock().len(),
        *redelivered.lock(),
        back.duration_since(killed),
        received
            .iter()
            .map(|(_, at)| at.duration_since(started))
            .max(),
    );
    assert_eq!(lost, 0, "every confirmed message is received");
    // Duplicates only among the messages in flight at the kill: received shortly before it or
    // after it (their ack may not have been written), whose ack failed, or published again.
    let mut first_seen: HashMap<u64, Instant> = HashMap::new();
    let mut times: HashMap<u64, usize> = HashMap::new();
    for (n, at) in &received {
        first_seen.entry(*n).or_insert(*at);
        *times.entry(*n).or_default() += 1;
    }
    let window_start = killed.checked_sub(ACK_WINDOW).unwrap_or(killed);
    let stale = stale.lock().clone();
    let unexpected: Vec<String> = times
        .iter()
        .filter(|(n, count)| {
            **count > 1
                && first_seen[*n] < window_start
                && !stale.contains(*n)
                && !published_again.contains(*n)
        })
        .map(|(n, count)| {
            format!(
                "{n} ({count} times, first {:?} before the kill)",
                killed.saturating_duration_since(first_seen[n])
            )
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "messages received and acked before the kill came again: {unexpected:?}"
    );
    let states = states.lock().clone();
    println!("consumer link states: {states:?}");
    assert!(
        states
            .iter()
            .any(|s| matches!(s, LinkState::Reconnecting { .. })),
        "the consumer's link reported the loss: {states:?}"
    );
    assert_eq!(states.last(), Some(&LinkState::Connected), "and its return");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takes_in_the_buffer_go_back_at_once_when_the_connection_is_cut() {
    if !can_run("takes_in_the_buffer_go_back_at_once_when_the_connection_is_cut") {
        return;
    }
    kombu_redis::register();
    let server = Durable::start(16391);
    // A lease far longer than the test: what comes back came back because it was returned.
    let url = server.url("visibility_timeout=600");
    let queue = Queue::new("buffered");
    let publisher = Connection::open(&url).await.expect("connects");
    publisher.declare_queue(&queue).await.expect("declares");
    let producer = publisher.producer().routing_key("buffered");
    for n in 0..50u64 {
        producer.publish(&n).await.expect("publishes");
    }
    let consumer_conn = Connection::open(&url).await.expect("connects");
    let mut consumer = consumer_conn
        .consumer([queue.clone()])
        .prefetch(100)
        .build()
        .await
        .expect("consumes");
    // One handed out, 49 in the consumer's buffer, all 50 leased.
    let first = tokio::time::timeout(GUARD, consumer.next())
        .await
        .expect("bounded")
        .expect("open")
        .expect("a delivery");
    assert_eq!(first.decode::<u64>().expect("a number"), 0);
    assert_eq!(publisher.queue_size("buffered").await.expect("size"), 0);

    // Cut every client connection (the publisher's too).
    let admin = redis::Client::open(format!("redis://127.0.0.1:{}/", server.port)).expect("client");
    let mut admin = admin
        .get_multiplexed_async_connection()
        .await
        .expect("admin connects");
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut admin)
        .await
        .expect("clients killed");
    let cut = Instant::now();

    // The consumer's connection notices at its next command and reconnects.
    let deadline = Instant::now() + GUARD;
    loop {
        match consumer_conn.queue_size("buffered").await {
            Ok(_) => break,
            Err(e) => {
                assert!(e.is_recoverable(), "{e:#}");
                assert!(Instant::now() < deadline, "no reconnection: {e:#}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    // The 49 taken on the lost connection went back to the queue and are taken again.
    let mut again = Vec::new();
    while again.len() < 49 {
        let delivery = tokio::time::timeout(GUARD, consumer.next())
            .await
            .expect("bounded")
            .expect("open")
            .expect("a delivery");
        assert!(
            delivery.redelivered(),
            "returned to the queue and taken again"
        );
        again.push(delivery.decode::<u64>().expect("a number"));
        delivery.ack().await.expect("acked");
    }
    println!(
        "redis cut: 49 buffered takes back and taken again {:?} after the cut (lease 600 s)",
        cut.elapsed()
    );
    again.sort_unstable();
    assert_eq!(again, (1..50).collect::<Vec<_>>());
    // The lease of the one handed out survived the cut: its ack is a real ack.
    first.ack().await.expect("acked");
    consumer.close().await.expect("closes");
    consumer_conn.close().await.expect("closes");
    let unacked: u64 = redis::cmd("HLEN")
        .arg("unacked")
        .query_async(&mut admin)
        .await
        .expect("HLEN");
    assert_eq!(unacked, 0, "nothing is left leased");
    // The publisher's connection was cut too: its first command fails (the loss is found
    // there), a retry reconnects.
    let size = RetryPolicy::default()
        .run(|| publisher.queue_size("buffered"), |_| {})
        .await
        .expect("size");
    assert_eq!(size, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declarations_come_back_after_a_restart_that_lost_them() {
    if !can_run("declarations_come_back_after_a_restart_that_lost_them") {
        return;
    }
    kombu_redis::register();
    let mut server = Durable::start(16392);
    let url = server.url("visibility_timeout=30");
    let exchange = kombu_core::Exchange::direct("heal-ex");
    let queue = Queue::new("heal-bound")
        .exchange(exchange.clone())
        .routing_key("k");
    let consumer_conn = Connection::open(&url).await.expect("connects");
    let states = record_link(&consumer_conn);
    // Declares the exchange, the queue and the binding.
    let mut consumer = consumer_conn
        .consumer([queue])
        .build()
        .await
        .expect("consumes");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let consuming = tokio::spawn(async move {
        while let Some(item) = consumer.next().await {
            let delivery = item.expect("the stream goes on");
            let n: u64 = delivery.decode().expect("a number");
            delivery.ack().await.expect("acked");
            let _ = tx.send(n);
        }
    });
    let publisher = Connection::open(&url).await.expect("connects");
    let producer = publisher.producer().exchange(exchange).routing_key("k");
    producer.publish(&1u64).await.expect("publishes");
    let got = tokio::time::timeout(GUARD, rx.recv())
        .await
        .expect("bounded");
    assert_eq!(got, Some(1));

    // A restart that keeps nothing: the exchange, the queue and the binding are gone.
    let server = tokio::task::spawn_blocking(move || {
        server.restart_empty();
        server
    })
    .await
    .expect("restarted");
    // The idle consumer finds the loss, reconnects and declares again.
    let deadline = Instant::now() + GUARD;
    loop {
        let seen = states.lock().clone();
        let lost = seen
            .iter()
            .any(|s| matches!(s, LinkState::Reconnecting { .. }));
        if lost && seen.last() == Some(&LinkState::Connected) {
            break;
        }
        assert!(Instant::now() < deadline, "no reconnection: {seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The publisher's first command finds its connection dead (outcome unknown: retried here,
    // where a duplicate is harmless); a retry reconnects.
    RetryPolicy::default()
        .retry_unknown(true)
        .run(|| producer.publish(&2u64), |_| {})
        .await
        .expect("publishes");
    let got = tokio::time::timeout(GUARD, rx.recv())
        .await
        .expect("bounded");
    assert_eq!(got, Some(2), "routed through the binding declared again");
    consuming.abort();
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_moves_to_the_next_failover_url() {
    if !can_run("a_lost_connection_moves_to_the_next_failover_url") {
        return;
    }
    kombu_redis::register();
    let mut first = Durable::start(16393);
    let second = Durable::start(16394);
    let url = format!(
        "{};{}",
        first.url("visibility_timeout=30"),
        second.url("visibility_timeout=30")
    );
    let consumer_conn = Connection::open(&url).await.expect("connects");
    assert_eq!(consumer_conn.url().port(), Some(16393));
    let mut consumer = consumer_conn
        .consumer([Queue::new("moved")])
        .build()
        .await
        .expect("consumes");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let consuming = tokio::spawn(async move {
        while let Some(item) = consumer.next().await {
            let delivery = item.expect("the stream goes on");
            let n: u64 = delivery.decode().expect("a number");
            delivery.ack().await.expect("acked");
            let _ = tx.send(n);
        }
    });
    let publisher = Connection::open(&url).await.expect("connects");
    let producer = publisher.producer().routing_key("moved");
    producer.publish(&1u64).await.expect("publishes");
    let got = tokio::time::timeout(GUARD, rx.recv())
        .await
        .expect("bounded");
    assert_eq!(got, Some(1));

    let first = tokio::task::spawn_blocking(move || {
        first.kill();
        first
    })
    .await
    .expect("killed");
    // Outcome unknown for the first attempt over the dead connection: a duplicate is harmless here.
    RetryPolicy::default()
        .retry_unknown(true)
        .run(|| producer.publish(&2u64), |_| {})
        .await
        .expect("publishes on the second server");
    assert_eq!(publisher.url().port(), Some(16394));
    let got = tokio::time::timeout(GUARD, rx.recv())
        .await
        .expect("bounded");
    assert_eq!(
        got,
        Some(2),
        "the consumer moved too, and declared its queue there"
    );
    assert_eq!(consumer_conn.url().port(), Some(16394));
    consuming.abort();
    drop((first, second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_takes_go_back_once_a_killed_server_is_back() {
    if !can_run("buffered_takes_go_back_once_a_killed_server_is_back") {
        return;
    }
    kombu_redis::register();
    let server = Durable::start(16395);
    let url = server.url("visibility_timeout=600");
    let publisher = Connection::open(&url).await.expect("connects");
    publisher
        .declare_queue(&Queue::new("held"))
        .await
        .expect("declares");
    let producer = publisher.producer().routing_key("held");
    for n in 0..200u64 {
        producer.publish(&n).await.expect("publishes");
    }
    let consumer_conn = Connection::open(&url).await.expect("connects");
    let mut consumer = consumer_conn
        .consumer([Queue::new("held")])
        .prefetch(100)
        .build()
        .await
        .expect("consumes");
    // One handed out, 99 in the buffer.
    let first = tokio::time::timeout(GUARD, consumer.next())
        .await
        .expect("bounded")
        .expect("open")
        .expect("a delivery");
    // SIGKILL while they are held; the consumer's connection finds the loss while the server
    // is down; the server is back after OUTAGE with everything the AOF kept.
    let mut server = server;
    server.kill();
    let found = consumer_conn.queue_size("held").await;
    assert!(found.is_err(), "the server is down");
    let killed = Instant::now();
    let restarter = tokio::task::spawn_blocking(move || {
        std::thread::sleep(OUTAGE);
        server.restart();
        (server, Instant::now())
    });
    // The 99 go back to the queue once it is there again, and are taken again.
    let mut got = vec![0u64];
    let mut redelivered = 0;
    while got.len() < 100 {
        let delivery = tokio::time::timeout(GUARD, consumer.next())
            .await
            .expect("bounded")
            .expect("open")
            .expect("a delivery");
        redelivered += usize::from(delivery.redelivered());
        got.push(delivery.decode::<u64>().expect("a number"));
        delivery.ack().await.expect("queued");
    }
    let (server, back) = restarter.await.expect("restarted");
    println!(
        "redis kill with 99 buffered: the 99 back and taken again {:?} after the server was back \
         (down {:?})",
        back.elapsed(),
        back.duration_since(killed)
    );
    assert_eq!(
        redelivered, 99,
        "every buffered take went back to the queue"
    );
    // The lease of the one handed out survived (AOF): its ack is a real one.
    first.ack().await.expect("queued");
    while got.len() < 200 {
        let delivery = tokio::time::timeout(GUARD, consumer.next())
            .await
            .expect("bounded")
            .expect("open")
            .expect("a delivery");
        got.push(delivery.decode::<u64>().expect("a number"));
        delivery.ack().await.expect("queued");
    }
    got.sort_unstable();
    assert_eq!(got, (0..200).collect::<Vec<_>>(), "each once");
    consumer.close().await.expect("closes");
    consumer_conn.close().await.expect("closes");
    let size = RetryPolicy::default()
        .run(|| publisher.queue_size("held"), |_| {})
        .await
        .expect("size");
    assert_eq!(size, 0, "nothing left behind");
    let admin = redis::Client::open(format!("redis://127.0.0.1:{}/", server.port)).expect("client");
    let mut admin = admin
        .get_multiplexed_async_connection()
        .await
        .expect("admin connects");
    let unacked: u64 = redis::cmd("HLEN")
        .arg("unacked")
        .query_async(&mut admin)
        .await
        .expect("HLEN");
    assert_eq!(
        unacked, 0,
        "every lease settled, the one taken before the kill included"
    );
    drop(server);
}
