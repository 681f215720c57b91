//! The visibility rule on one SQLite file through connections with different URL options: a
//! consumer of a `?visibility_timeout=1` connection restores what a consumer of a connection
//! with the 3,600 s default took and left, about a second after the take, not an hour after.

use std::time::Duration;

use futures::StreamExt;
use kombu_core::{Connection, Queue};

struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

async fn open(url: &str) -> Connection {
    kombu_sqlite::register();
    Connection::open(url)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"))
}

#[tokio::test]
async fn a_short_timeout_restores_what_the_default_took() {
    let dir = std::env::temp_dir().join(format!(
        "kombu-sqlite-lease-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = TempFile(dir.join("broker.db"));
    let base = format!("sqlite://{}", file.0.display());

    let long = open(&base).await;
    let mut taker = long
        .consumer([Queue::new("jobs")])
        .build()
        .await
        .expect("consumer");
    long.producer()
        .routing_key("jobs")
        .publish(&"job")
        .await
        .expect("publish");
    let held = tokio::time::timeout(Duration::from_secs(10), taker.next())
        .await
        .expect("a delivery")
        .expect("the stream goes on")
        .expect("a good delivery");
    assert!(!held.redelivered());

    let short = open(&format!(
        "{base}?visibility_timeout=1&polling_interval=0.05"
    ))
    .await;
    let mut restorer = short
        .consumer([Queue::new("jobs")])
        .build()
        .await
        .expect("consumer");
    let started = std::time::Instant::now();
    let copy = tokio::time::timeout(Duration::from_secs(10), restorer.next())
        .await
        .expect("restored within 10 s (the restorer's 1 s timeout, not the taker's 3,600 s)")
        .expect("the stream goes on")
        .expect("a good delivery");
    println!("restored after {:?}", started.elapsed());
    assert!(copy.redelivered());
    assert_eq!(copy.decode::<String>().expect("decode"), "job");
    // The taker's lease is gone: an extension says so, its ack changes nothing.
    let stale = held.extend_lease().await.expect_err("the lease is gone");
    assert_eq!(stale.kind(), kombu_core::ErrorKind::StaleDelivery);
    let _ = held.ack().await;
    copy.ack().await.expect("ack");
    restorer.close().await.expect("close");
    taker.close().await.expect("close");
    assert_eq!(short.queue_size("jobs").await.expect("size"), 0);
}
