//! A consumer killed with SIGKILL loses nothing: what it held comes back after the visibility
//! timeout, what it acked never comes back.
//!
//! A `harness = false` test target: `main` is the parent, or, when `KOMBU_SQLITE_CRASH_CHILD`
//! names a database URL, the child consumer (the same binary, re-executed).
//!
//! 1. The parent publishes 10,000 messages (`{"id": N}`) to queue `crash` on a fresh file, URL
//!    option `visibility_timeout=2`.
//! 2. The child consumes with prefetch 100, acks 3,000 and prints each acked id; then it takes
//!    100 more without settling them, prints their ids, prints `READY` and sleeps.
//! 3. The parent kills it (`Child::kill`: SIGKILL on Unix; no destructor, no channel close).
//! 4. A new consumer in the parent takes and acks messages until the 7,000 the child did not ack
//!    have all arrived. Checked: none of the 3,000 acked ids comes back; every other id arrives
//!    exactly once; the redelivered ones are exactly the 100 the child held; nothing more
//!    arrives afterwards and the queue is empty.
//!
//! Timeouts (120 s) only guard against hanging; nothing here asserts how fast anything is.

use kombu_test_support::{KillOnDrop, lines};
use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kombu_core::{Connection, Queue};
use serde_json::{Value as Json, json};

const TEST_NAME: &str = "killed_consumer_loses_nothing";
const CHILD_ENV: &str = "KOMBU_SQLITE_CRASH_CHILD";
const QUEUE: &str = "crash";
const TOTAL: u64 = 10_000;
const ACKED_BY_CHILD: usize = 3_000;
const HELD_BY_CHILD: usize = 100;
const GUARD: Duration = Duration::from_secs(120);

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

async fn child(url: &str) {
    kombu_sqlite::register();
    let conn = Connection::open(url).await.expect("child: open");
    let mut consumer = conn
        .consumer([Queue::new(QUEUE)])
        .prefetch(100)
        .build()
        .await
        .expect("child: consume");
    let mut out = std::io::stdout().lock();
    for _ in 0..ACKED_BY_CHILD {
        let d = consumer
            .next()
            .await
            .expect("child: stream ended")
            .expect("child: delivery");
        let id = id_of(&d);
        d.ack().await.expect("child: ack");
        // Printed once the ack is done: the parent must never see these again.
        writeln!(out, "ACKED {id}").expect("stdout");
    }
    let mut held = Vec::with_capacity(HELD_BY_CHILD);
    for _ in 0..HELD_BY_CHILD {
        let d = consumer
            .next()
            .await
            .expect("child: stream ended")
            .expect("child: delivery");
        writeln!(out, "HELD {}", id_of(&d)).expect("stdout");
        held.push(d);
    }
    writeln!(out, "READY").expect("stdout");
    out.flush().expect("stdout");
    drop(out);
    // Killed here, holding 100 unsettled deliveries.
    tokio::time::sleep(Duration::from_secs(600)).await;
    drop(held);
}

struct TempDb {
    dir: PathBuf,
    path: PathBuf,
}

impl TempDb {
    fn new(name: &str) -> TempDb {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!(
            "kombu-sqlite-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create the temp directory");
        let path = dir.join("broker.db");
        TempDb { dir, path }
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("database kept for inspection: {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

async fn parent() {
    kombu_sqlite::register();
    let db = TempDb::new("crash");
    let url = format!(
        "sqlite://{}?visibility_timeout=2",
        db.path.to_str().expect("UTF-8 path")
    );
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

    // A fresh connection, as a restarted worker would have.
    let conn = Connection::open(&url).await.expect("reopen");
    let mut consumer = conn
        .consumer([Queue::new(QUEUE)])
        .prefetch(100)
        .build()
        .await
        .expect("consume");
    let expected = TOTAL as usize - ACKED_BY_CHILD;
    let mut received = HashSet::new();
    let mut redelivered = HashSet::new();
    let mut deliveries = 0usize;
    while received.len() < expected {
        let left = deadline.saturating_duration_since(Instant::now());
        let d = match tokio::time::timeout(left, consumer.next()).await {
            Err(_) => panic!(
                "only {} of {expected} messages arrived within {GUARD:?}; missing (first 20): \
                 {:?}",
                received.len(),
                (0..TOTAL)
                    .filter(|id| !acked.contains(id) && !received.contains(id))
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
        assert!(
            received.insert(id),
            "id {id} delivered twice after the kill"
        );
        if d.redelivered() {
            redelivered.insert(id);
        }
        d.ack().await.expect("ack");
    }
    assert_eq!(deliveries, expected, "no duplicates");
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
}
