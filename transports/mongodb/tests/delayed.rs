//! Delayed delivery on MongoDB, beyond the conformance scenarios: a delayed document stays
//! invisible to Python kombu's MongoDB transport on the same database (its takes, its size,
//! its purge) until due, then Python consumes it too (no kombu-rs consumer running: the
//! storing process keeps time for it); delayed documents outlive the connections that stored
//! them and arrive exactly once after a reopen; a purge removes ready messages and leaves
//! those not yet due; a short visibility timeout never returns a delayed document early.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kombu_core::{Connection, Consumer, Delivery, Queue};
use mongodb::bson::{Document, doc};
use serde_json::Value as Json;

/// Longest wait for one delivery or one state before the test fails (a guard, not a timing
/// assertion).
const PATIENCE: Duration = Duration::from_secs(30);

fn script() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/interop/mongo_interop.py")
}

/// A test's database on the server.
struct Db {
    server: String,
    name: String,
}

impl Db {
    async fn new(what: &str) -> Option<Db> {
        let server = support::require(what).await?;
        Some(Db {
            server,
            name: support::fresh_database(what),
        })
    }

    fn url(&self, extra: &str) -> String {
        format!("{}/{}?polling_interval=0.1{extra}", self.server, self.name)
    }

    async fn open(&self, extra: &str) -> Connection {
        kombu_mongodb::register();
        let url = self.url(extra);
        Connection::open(&url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"))
    }

    /// Runs a command of the interop script (blocking) on this database.
    fn python(&self, python: &PathBuf, command: &str, queue: &str) -> Json {
        let out = Command::new(python)
            .arg(script())
            .arg(command)
            .arg(format!("{}/{}", self.server, self.name))
            .arg(queue)
            .output()
            .expect("run the interop script");
        assert!(
            out.status.success(),
            "mongo_interop.py {command} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("the script prints JSON")
    }

    /// The bodies Python kombu takes (and acks) from `queue` now.
    fn python_drain(&self, python: &PathBuf, queue: &str) -> Vec<String> {
        self.python(python, "drain", queue)["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["payload"].as_str().expect("a text body").to_owned())
            .collect()
    }

    /// The `queue` field of every document of the database's `messages`.
    async fn queue_fields(&self) -> Vec<String> {
        let client = mongodb::Client::with_uri_str(&self.server)
            .await
            .expect("a raw client");
        let docs: Vec<Document> = client
            .database(&self.name)
            .collection::<Document>("messages")
            .find(doc! {})
            .await
            .expect("find")
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .map(|d| d.expect("a document"))
            .collect();
        docs.iter()
            .map(|d| d.get_str("queue").unwrap_or_default().to_owned())
            .collect()
    }

    async fn drop_database(&self) {
        support::drop_database(&self.url("")).await;
    }
}

async fn next(consumer: &mut Consumer) -> Delivery {
    match tokio::time::timeout(PATIENCE, consumer.next()).await {
        Err(_) => panic!("no delivery within {PATIENCE:?}"),
        Ok(None) => panic!("the delivery stream ended"),
        Ok(Some(Err(e))) => panic!("delivery refused: {e}"),
        Ok(Some(Ok(d))) => d,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sees_a_delayed_message_only_once_due() {
    let Some(db) = Db::new("delayed_py").await else {
        return;
    };
    let Some(python) = kombu_test_support::python() else {
        return;
    };
    let conn = db.open("").await;
    let queue = "delayedq";
    conn.declare_queue(&Queue::new(queue))
        .await
        .expect("declare");
    let producer = conn.producer().routing_key(queue);
    // Long enough for three cold starts of Python before it is due.
    let delay = Duration::from_secs(10);
    let sent = Instant::now();
    producer
        .message(&"later")
        .delay(delay)
        .send()
        .await
        .expect("publish delayed");
    producer.publish(&"ready").await.expect("publish");
    producer.publish(&"now").await.expect("publish");
    assert_eq!(
        db.queue_fields().await,
        ["kombu_rs.delayed:delayedq", "delayedq", "delayedq"],
        "stored apart from its queue until due"
    );

    // Python kombu: its purge, size and takes see only the undelayed messages.
    assert_eq!(db.python(&python, "purge", queue)["purged"], 2);
    producer.publish(&"now").await.expect("publish");
    assert_eq!(db.python(&python, "size", queue)["size"], 1);
    assert_eq!(db.python_drain(&python, queue), ["now"]);
    // Only meaningful if Python looked before the delay was over.
    assert!(
        sent.elapsed() < delay,
        "Python took {:?} to look",
        sent.elapsed()
    );
    assert_eq!(conn.queue_size(queue).await.expect("size"), 0);

    // No kombu-rs consumer: this process's timekeeper moves it back when due.
    let mut got = Vec::new();
    while got.is_empty() {
        assert!(sent.elapsed() < delay + PATIENCE, "Python never saw it");
        got = db.python_drain(&python, queue);
    }
    assert!(
        sent.elapsed() >= delay,
        "visible {:?} after publishing",
        sent.elapsed()
    );
    assert_eq!(got, ["later"], "once, and nothing else");
    assert!(db.python_drain(&python, queue).is_empty());
    assert!(db.queue_fields().await.is_empty());
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_documents_outlive_their_connections_and_arrive_once() {
    let Some(db) = Db::new("delayed_reopen").await else {
        return;
    };
    let queue = "reopenq";
    let bodies: Vec<String> = (0..30).map(|i| format!("m{i}")).collect();
    {
        let conn = db.open("").await;
        conn.declare_queue(&Queue::new(queue))
            .await
            .expect("declare");
        let producer = conn.producer().routing_key(queue);
        for (i, body) in bodies.iter().enumerate() {
            // Due in turn over about two seconds, some before the reopen, some after.
            let delay = Duration::from_millis(500 + 50 * i as u64);
            producer
                .message(body)
                .delay(delay)
                .send()
                .await
                .expect("publish delayed");
        }
        conn.close().await.expect("close");
    }
    // No connection of this process is open now: no one keeps time for the documents.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let conn = db.open("").await;
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
    let mut sorted = got.clone();
    sorted.sort_by_key(|b| b[1..].parse::<u32>().unwrap_or_default());
    assert_eq!(sorted, bodies, "each once: {got:?}");
    assert_eq!(conn.queue_size(queue).await.expect("size"), 0);
    let quiet = tokio::time::timeout(Duration::from_millis(500), consumer.next()).await;
    assert!(quiet.is_err(), "a message came twice: {quiet:?}");
    drop(consumer);
    conn.close().await.expect("close");
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_leaves_documents_not_yet_due_and_leases_never_return_them() {
    let Some(db) = Db::new("delayed_purge").await else {
        return;
    };
    // Leases pass after 0.3 s: a delayed document must not be returned as one.
    let conn = db.open("&visibility_timeout=0.3").await;
    kombu_test_support::delayed::purge_keeps_what_is_not_due(
        &conn,
        "purgeq",
        Duration::from_millis(2000),
    )
    .await;
    conn.close().await.expect("close");
    db.drop_database().await;
}
