//! Delayed delivery on SQLite, beyond the conformance scenarios: a delayed row stays invisible
//! to Python kombu's SQLAlchemy transport on the same file until due, then Python consumes it
//! too (no kombu-rs consumer running: the storing process keeps time for it); delayed rows
//! outlive the connections that stored them and arrive exactly once after a reopen; a purge
//! removes ready rows and leaves those not yet due; a short visibility timeout never takes a
//! delayed row for a lease to restore.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kombu_core::{Connection, Consumer, Delivery, Queue};
use serde_json::Value as Json;

/// Longest wait for one delivery or one state before the test fails (a guard, not a timing
/// assertion).
const PATIENCE: Duration = Duration::from_secs(30);

/// A fresh database path in the temp directory; its files are removed on drop.
struct TempDb(PathBuf);

impl TempDb {
    fn new(name: &str) -> TempDb {
        TempDb(std::env::temp_dir().join(format!(
            "kombu-sqlite-delayed-{name}-{}.db",
            uuid::Uuid::new_v4().simple()
        )))
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temp path")
    }

    fn url(&self, query: &str) -> String {
        format!("sqlite://{}{query}", self.path())
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path()));
        }
    }
}

async fn open(url: &str) -> Connection {
    kombu_sqlite::register();
    Connection::open(url)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"))
}

async fn next(consumer: &mut Consumer) -> Delivery {
    match tokio::time::timeout(PATIENCE, consumer.next()).await {
        Err(_) => panic!("no delivery within {PATIENCE:?}"),
        Ok(None) => panic!("the delivery stream ended"),
        Ok(Some(Err(e))) => panic!("delivery refused: {e}"),
        Ok(Some(Ok(d))) => d,
    }
}

fn script() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/interop/sqla_interop.py")
}

/// Python kombu takes (and acks) every message it can see in `queue` now; their bodies.
fn python_drain(python: &Path, db: &TempDb, queue: &str) -> Vec<String> {
    let out = Command::new(python)
        .arg(script())
        .args(["drain", db.path(), queue])
        .output()
        .expect("run the interop script");
    assert!(
        out.status.success(),
        "sqla_interop.py drain failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Json = serde_json::from_slice(&out.stdout).expect("the script prints JSON");
    json["messages"]
        .as_array()
        .expect("a list of messages")
        .iter()
        .map(|m| m["payload"].as_str().expect("a text body").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sees_a_delayed_message_only_once_due() {
    let Some(python) = kombu_test_support::python() else {
        return;
    };
    let db = TempDb::new("python");
    let conn = open(&db.url("")).await;
    let queue = "delayedq";
    conn.declare_queue(&Queue::new(queue))
        .await
        .expect("declare");
    let producer = conn.producer().routing_key(queue);
    let delay = Duration::from_secs(5);
    let sent = Instant::now();
    producer
        .message(&"later")
        .delay(delay)
        .send()
        .await
        .expect("publish delayed");
    producer.publish(&"now").await.expect("publish");

    let before = python_drain(&python, &db, queue);
    // Only meaningful if Python looked before the delay was over.
    assert!(
        sent.elapsed() < delay,
        "Python took {:?} to look",
        sent.elapsed()
    );
    assert_eq!(before, ["now"], "Python sees only the undelayed message");
    assert_eq!(conn.queue_size(queue).await.expect("size"), 0);

    // No kombu-rs consumer: this process's sweeper makes it visible when due.
    let mut got = Vec::new();
    while got.is_empty() {
        assert!(sent.elapsed() < delay + PATIENCE, "Python never saw it");
        got = python_drain(&python, &db, queue);
    }
    assert!(
        sent.elapsed() >= delay,
        "visible {:?} after publishing",
        sent.elapsed()
    );
    assert_eq!(got, ["later"], "once, and nothing else");
    assert!(python_drain(&python, &db, queue).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_rows_outlive_their_connections_and_arrive_once() {
    let db = TempDb::new("reopen");
    let queue = "reopenq";
    let bodies: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    {
        let conn = open(&db.url("")).await;
        conn.declare_queue(&Queue::new(queue))
            .await
            .expect("declare");
        let producer = conn.producer().routing_key(queue);
        for (i, body) in bodies.iter().enumerate() {
            // Due in turn over about a second, some before the reopen, some after.
            let delay = Duration::from_millis(500 + 20 * i as u64);
            producer
                .message(body)
                .delay(delay)
                .send()
                .await
                .expect("publish delayed");
        }
        conn.close().await.expect("close");
    }
    // Nothing of this process has the file open now: no one keeps time for the rows.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let conn = open(&db.url("")).await;
    let mut consumer = conn
        .consumer([Queue::new(queue)])
        .build()
        .await
        .expect("consume");
    let mut got = Vec::new();
    for _ in 0..bodies.len() {
        let d = next(&mut consumer).await;
        got.push(d.decode::<String>().expect("a text body"));
        d.ack().await.expect("ack");
    }
    // Each due row joins the tail when due: they come in due order.
    assert_eq!(got, bodies);
    assert_eq!(conn.queue_size(queue).await.expect("size"), 0);
    let quiet = tokio::time::timeout(Duration::from_millis(300), consumer.next()).await;
    assert!(quiet.is_err(), "a message came twice: {quiet:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_leaves_rows_not_yet_due_and_leases_never_take_them() {
    let db = TempDb::new("purge");
    // Leases pass after 0.2 s: a delayed row must not be taken for one.
    let conn = open(&db.url("?visibility_timeout=0.2")).await;
    kombu_test_support::delayed::purge_keeps_what_is_not_due(
        &conn,
        "purgeq",
        Duration::from_millis(1500),
    )
    .await;
}
