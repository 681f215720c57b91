//! A consumer killed with SIGKILL loses nothing: what it held comes back after the visibility
//! timeout, what it acked never comes back.
//!
//! A `harness = false` test target: `main` is the parent, or, when `KOMBU_REDIS_CRASH_CHILD`
//! names a broker URL, the child consumer (the same binary, re-executed).
//!
//! 1. The parent publishes 20,000 messages (`{"id": N}`) to queue `crash` under a fresh
//!    `global_keyprefix`, URL option `visibility_timeout=2`.
//! 2. The child consumes with prefetch 500, acks 5,000 and prints each acked id; then it takes
//!    500 more without settling them, prints their ids, prints `READY` and sleeps.
//! 3. The parent kills it (`Child::kill`: SIGKILL; no destructor, no channel close).
//! 4. A new consumer in the parent takes and acks messages until the 15,000 the child did not
//!    ack have all arrived. Checked: none of the acked ids comes back; every other id arrives;
//!    an id arrives twice only if it was among the 500 in flight; the redelivered ones are
//!    exactly the 500 the child held; nothing more arrives afterwards and the queue is empty.
//!
//! Timeouts (60 s) only guard against hanging; nothing here asserts how fast anything is.
//! The server is `$KOMBU_REDIS_URL` (default `redis://127.0.0.1:6379/0`).

use kombu_test_support::{KillOnDrop, lines};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kombu_core::{Connection, Queue};
use serde_json::{Value as Json, json};

const TEST_NAME: &str = "killed_consumer_loses_nothing";
const CHILD_ENV: &str = "KOMBU_REDIS_CRASH_CHILD";
const QUEUE: &str = "crash";
const TOTAL: u64 = 20_000;
const ACKED_BY_CHILD: usize = 5_000;
const HELD_BY_CHILD: usize = 500;
const PREFETCH: u16 = 500;
const GUARD: Duration = Duration::from_secs(60);

fn main() {
    if let Ok(url) = std::env::var(CHILD_ENV) {
        runtime().block_on(child(&url));
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("{TEST_NAME}: test");
        return;
    }
    // `cargo test FILTER` passes the filter to every test binary: honour it.
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| TEST_NAME.contains(f.as_str())) {
        println!("test {TEST_NAME} ... filtered out");
        return;
    }
    println!("test {TEST_NAME} ...");
    runtime().block_on(parent());
    println!("test {TEST_NAME} ... ok");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn id_of(d: &kombu_core::Delivery) -> u64 {
    d.decode::<Json>().expect("decode")["id"]
        .as_u64()
        .expect("an id in the body")
}

async fn next_within(consumer: &mut kombu_core::Consumer, who: &str) -> kombu_core::Delivery {
    match tokio::time::timeout(GUARD, consumer.next()).await {
        Err(_) => panic!("{who}: no delivery within {GUARD:?}"),
        Ok(None) => panic!("{who}: the stream ended"),
        Ok(Some(d)) => d.unwrap_or_else(|e| panic!("{who}: delivery: {e}")),
    }
}

async fn child(url: &str) {
    kombu_redis::register();
    let conn = Connection::open(url).await.expect("child: open");
    let mut consumer = conn
        .consumer([Queue::new(QUEUE)])
        .prefetch(PREFETCH)
        .build()
        .await
        .expect("child: consume");
    let mut out = std::io::stdout().lock();
    for _ in 0..ACKED_BY_CHILD {
        let d = next_within(&mut consumer, "child").await;
        let id = id_of(&d);
        d.ack().await.expect("child: ack");
        // The parent must never see these again (the acks are on the server by READY).
        writeln!(out, "ACKED {id}").expect("stdout");
    }
    let mut held = Vec::with_capacity(HELD_BY_CHILD);
    for _ in 0..HELD_BY_CHILD {
        let d = next_within(&mut consumer, "child").await;
        writeln!(out, "HELD {}", id_of(&d)).expect("stdout");
        held.push(d);
    }
    // kombu-redis queues acks and writes them in batches; any read writes the queued ones
    // first. This barrier makes every ACKED line above an ack that is on the server before
    // the parent kills us (a kill could otherwise lose the last few: at-least-once).
    conn.queue_size(QUEUE).await.expect("child: flush acks");
    writeln!(out, "READY").expect("stdout");
    out.flush().expect("stdout");
    drop(out);
    // Killed here, holding 500 unsettled deliveries.
    tokio::time::sleep(Duration::from_secs(600)).await;
    drop(held);
}

/// Deletes every key under `prefix`.
async fn clean(prefix: &str) {
    let Ok(client) = redis::Client::open(server()) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
}

fn server() -> String {
    std::env::var("KOMBU_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned())
}

async fn parent() {
    kombu_redis::register();
    let prefix = format!("kombu-rs-crash-{}-", uuid::Uuid::new_v4().simple());
    let url = format!(
        "{}?global_keyprefix={prefix}&visibility_timeout=2",
        server()
    );
    let started = Instant::now();
    let conn = Connection::open(&url).await.expect("open");
    conn.declare_queue(&Queue::new(QUEUE))
        .await
        .expect("declare");
    let producer = conn.producer().routing_key(QUEUE);
    let bodies: Vec<Json> = (0..TOTAL).map(|id| json!({ "id": id })).collect();
    for chunk in bodies.chunks(1_000) {
        producer.publish_batch(chunk).await.expect("publish");
    }
    assert_eq!(conn.queue_size(QUEUE).await.expect("size"), TOTAL);

    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().expect("current exe"))
            .env(CHILD_ENV, &url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the child consumer"),
    );
    let stdout = child.0.stdout.take().expect("child stdout");
    let rx = lines(stdout);
    let mut acked = HashSet::new();
    let mut held = HashSet::new();
    let deadline = Instant::now() + GUARD;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(e) => panic!(
                "the child did not get ready within {GUARD:?} ({e}); acked {} held {}; \
                 exit status {:?}",
                acked.len(),
                held.len(),
                child.0.try_wait()
            ),
        };
        if line == "READY" {
            break;
        }
        let (what, id) = line.split_once(' ').expect("a child line");
        let id: u64 = id.parse().expect("an id");
        let fresh = match what {
            "ACKED" => acked.insert(id),
            "HELD" => held.insert(id),
            other => panic!("unexpected child line {other} {id}"),
        };
        assert!(fresh, "the child got id {id} twice");
    }
    assert_eq!(acked.len(), ACKED_BY_CHILD);
    assert_eq!(held.len(), HELD_BY_CHILD);
    assert!(acked.is_disjoint(&held));

    child.0.kill().expect("SIGKILL the child");
    let status = child.0.wait().expect("reap the child");
    assert!(!status.success(), "the child was killed, not finished");
    let killed_at = started.elapsed();

    // A fresh connection, as a restarted worker would have.
    let conn = Connection::open(&url).await.expect("reopen");
    let mut consumer = conn
        .consumer([Queue::new(QUEUE)])
        .prefetch(PREFETCH)
        .build()
        .await
        .expect("consume");
    let expected = TOTAL as usize - ACKED_BY_CHILD;
    let mut received: HashMap<u64, usize> = HashMap::new();
    let mut redelivered = HashSet::new();
    let mut deliveries = 0usize;
    let deadline = Instant::now() + GUARD;
    while received.len() < expected {
        let left = deadline.saturating_duration_since(Instant::now());
        let d = match tokio::time::timeout(left, consumer.next()).await {
            Err(_) => panic!(
                "only {} of {expected} messages arrived within {GUARD:?}; missing (first 20): \
                 {:?}",
                received.len(),
                (0..TOTAL)
                    .filter(|id| !acked.contains(id) && !received.contains_key(id))
                    .take(20)
                    .collect::<Vec<_>>()
            ),
            Ok(None) => panic!("the stream ended"),
            Ok(Some(d)) => d.expect("delivery"),
        };
        deliveries += 1;
        let id = id_of(&d);
        assert!(
            !acked.contains(&id),
            "id {id}, acked by the killed child, was delivered again"
        );
        *received.entry(id).or_default() += 1;
        if d.redelivered() {
            redelivered.insert(id);
        }
        d.ack().await.expect("ack");
    }
    let duplicates: HashSet<u64> = received
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| *id)
        .collect();
    eprintln!(
        "crash: {TOTAL} published, child acked {} and held {}, killed after {killed_at:?}; \
         afterwards {deliveries} deliveries of {} ids, {} redelivered, {} duplicated; \
         recovery took {:?}",
        acked.len(),
        held.len(),
        received.len(),
        redelivered.len(),
        duplicates.len(),
        started.elapsed() - killed_at,
    );
    let all: HashSet<u64> = (0..TOTAL).collect();
    let got: HashSet<u64> = received.keys().copied().collect();
    assert_eq!(
        got,
        all.difference(&acked).copied().collect::<HashSet<u64>>(),
        "every id the child did not ack arrives"
    );
    assert!(
        duplicates.is_subset(&held),
        "only messages in flight at the kill may arrive twice: {:?}",
        duplicates.difference(&held).take(20).collect::<Vec<_>>()
    );
    assert_eq!(
        redelivered, held,
        "the redelivered messages are exactly the ones the child held unsettled"
    );
    // Nothing else comes (another look after one more visibility timeout).
    if let Ok(Some(extra)) =
        tokio::time::timeout(Duration::from_millis(2_500), consumer.next()).await
    {
        panic!("an extra delivery after all {expected} arrived: {extra:?}");
    }
    consumer.close().await.expect("close");
    assert_eq!(conn.queue_size(QUEUE).await.expect("size"), 0);
    clean(&prefix).await;
}
