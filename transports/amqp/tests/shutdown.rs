//! Graceful shutdown against RabbitMQ: a stopped consumer returns at once what the broker
//! pushed to it (its prefetch) and it did not hand out, and writes the acks it coalesced.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kombu_core::{Connection, Error, Queue};

/// Bound on anything a test waits for (a guard, not a timing).
const GUARD: Duration = Duration::from_secs(20);

async fn setup() -> Option<String> {
    tokio::task::spawn_blocking(|| {
        kombu_amqp::register();
        common::broker_up("shutdown").then(common::base_url)
    })
    .await
    .ok()
    .flatten()
}

/// A connection and a fresh queue holding `n` messages.
async fn queue_of(name: &str, n: u32) -> Option<(Connection, Queue)> {
    let url = setup().await?;
    let conn = Connection::open(&url).await.expect("open");
    let q = Queue::new(format!("{name}-{}", uuid::Uuid::new_v4().simple()));
    conn.declare_queue(&q).await.expect("declare");
    let producer = conn.producer().routing_key(q.name.clone());
    for i in 0..n {
        producer.publish(&i).await.expect("publish");
    }
    Some((conn, q))
}

/// Waits (bounded) until the broker has pushed every ready message to the consumer.
async fn all_pushed(conn: &Connection, queue: &str) {
    let start = Instant::now();
    while conn.queue_size(queue).await.expect("size") > 0 {
        assert!(start.elapsed() < GUARD, "the broker pushes the prefetch");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_stopped_stream_returns_its_prefetch_at_once() {
    let Some((conn, q)) = queue_of("shutdown-stream", 50).await else {
        return;
    };
    let mut consumer = conn
        .consumer([q.clone()])
        .prefetch(50)
        .build()
        .await
        .expect("consume");
    let first = tokio::time::timeout(GUARD, consumer.next())
        .await
        .expect("a delivery")
        .expect("stream open")
        .expect("a good delivery");
    all_pushed(&conn, &q.name).await;
    first.ack().await.expect("ack");
    consumer.stop_handle().stop();
    assert!(
        consumer.next().await.is_none(),
        "a stopped consumer hands out nothing more"
    );
    consumer.close().await.expect("close");
    // Right after the close: the 49 pushed and never handed out are ready again, and the
    // coalesced ack of the first was written (else it would be back too).
    let after = conn.queue_size(&q.name).await.expect("size");
    assert_eq!(after, 49, "the prefetched deliveries are back at once");
    conn.delete_queue(&q.name).await.expect("delete");
    conn.close().await.expect("close the connection");
}

#[tokio::test]
async fn a_stopped_handler_loop_finishes_its_delivery_and_returns_the_rest_at_once() {
    let Some((conn, q)) = queue_of("shutdown-loop", 50).await else {
        return;
    };
    let consumer = conn
        .consumer([q.clone()])
        .prefetch(50)
        .shutdown_timeout(Duration::from_secs(10))
        .build()
        .await
        .expect("consume");
    let stop = consumer.stop_handle();
    let handled = Arc::new(AtomicUsize::new(0));
    let seen = handled.clone();
    let (conn2, name) = (conn.clone(), q.name.clone());
    tokio::time::timeout(
        GUARD,
        consumer.consume(move |delivery| {
            let (stop, seen, conn, name) =
                (stop.clone(), seen.clone(), conn2.clone(), name.clone());
            async move {
                // Stopped while this handler runs: it is let finish, and acks.
                all_pushed(&conn, &name).await;
                stop.stop();
                tokio::time::sleep(Duration::from_millis(100)).await;
                delivery.ack().await.map_err(Error::from)?;
                seen.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }),
    )
    .await
    .expect("the consumer stops")
    .expect("a clean stop");
    assert_eq!(
        handled.load(Ordering::SeqCst),
        1,
        "one handler ran, to its end"
    );
    let after = conn.queue_size(&q.name).await.expect("size");
    assert_eq!(after, 49, "the prefetched deliveries are back at once");
    conn.delete_queue(&q.name).await.expect("delete");
    conn.close().await.expect("close the connection");
}
