//! The visibility rule through connections with different URL options: a consumer of a
//! `?visibility_timeout=1` connection restores what a consumer of a connection with the
//! 3,600 s default took and left, about a second after the take (kombu's `restore_visible`
//! rule: `unacked_index` holds the take time, the sweeper applies its own timeout). The server
//! is `$KOMBU_TEST_REDIS_URL` (default `redis://127.0.0.1:6379/0`), under a fresh
//! `global_keyprefix` whose keys are deleted at the end.

use std::time::Duration;

use futures::StreamExt;
use kombu_core::{Connection, ErrorKind, Queue};

fn server() -> String {
    std::env::var("KOMBU_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned())
}

async fn open(url: &str) -> Connection {
    kombu_redis::register();
    Connection::open(url)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"))
}

async fn delete_prefix(prefix: &str) {
    let client = redis::Client::open(server()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .expect("keys");
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .expect("del");
    }
}

#[tokio::test]
async fn a_short_timeout_restores_what_the_default_took() {
    let prefix = format!("kombu-rs-lease-{}:", uuid::Uuid::new_v4().simple());
    let base = format!("{}?global_keyprefix={prefix}", server());

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
        "{base}&visibility_timeout=1&polling_interval=0.05"
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
    assert_eq!(stale.kind(), ErrorKind::StaleDelivery);
    let _ = held.ack().await;
    copy.ack().await.expect("ack");
    restorer.close().await.expect("close");
    taker.close().await.expect("close");
    assert_eq!(short.queue_size("jobs").await.expect("size"), 0);
    delete_prefix(&prefix).await;
}
