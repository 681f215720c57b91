//! Delayed-delivery checks the stores share (SQLite's `visible = 0` rows, MongoDB's
//! `kombu_rs.delayed:<queue>` documents): what only their own tests can set up (a visibility
//! timeout shorter than the delay) is checked the same way.

use std::time::{Duration, Instant};

use kombu_core::{Connection, Queue};

use crate::interop::next_delivery;

/// On `conn` (opened with a visibility timeout well under `delay`): a message delayed by
/// `delay` and two ready ones; a purge removes the two ready ones only, and the delayed one
/// arrives once due, as a first delivery (no lease ever took it for a restored one).
pub async fn purge_keeps_what_is_not_due(conn: &Connection, queue: &str, delay: Duration) {
    conn.declare_queue(&Queue::new(queue))
        .await
        .expect("declare");
    let producer = conn.producer().routing_key(queue);
    let sent = Instant::now();
    producer
        .message(&"delayed")
        .delay(delay)
        .send()
        .await
        .expect("publish delayed");
    producer.publish(&"a").await.expect("publish");
    producer.publish(&"b").await.expect("publish");
    assert_eq!(conn.queue_size(queue).await.expect("size"), 2);
    assert_eq!(conn.purge(queue).await.expect("purge"), 2, "the ready ones");
    assert_eq!(conn.queue_size(queue).await.expect("size"), 0);

    let mut consumer = conn
        .consumer([Queue::new(queue)])
        .build()
        .await
        .expect("consume");
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.decode::<String>().expect("text"), "delayed");
    assert!(
        sent.elapsed() + Duration::from_millis(50) >= delay,
        "delivered {:?} after publishing",
        sent.elapsed()
    );
    assert!(!d.redelivered(), "delivered as a first delivery");
    d.ack().await.expect("ack");
    consumer.close().await.expect("close");
}
