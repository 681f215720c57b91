//! Graceful shutdown of a consumer on the memory transport (no visibility timeout, so nothing
//! comes back by itself: what is back right after a stop was returned by the stop): the
//! handler in flight finishes, what was prefetched goes back at once, a handler that overruns
//! the shutdown timeout is dropped and its delivery goes back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use kombu_core::{Connection, Error, Queue};
use tokio::sync::oneshot;

/// Bound on anything a test waits for (a guard, not a timing).
const GUARD: Duration = Duration::from_secs(20);

fn uniq(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("shutdown-{tag}-{}", N.fetch_add(1, Ordering::Relaxed))
}

async fn open_with(queue: &str, messages: usize) -> Connection {
    kombu_core::transport::memory::register();
    let conn = Connection::open(&format!("memory://{}", uniq("broker")))
        .await
        .expect("memory connects");
    conn.declare_queue(&Queue::new(queue))
        .await
        .expect("declare");
    let producer = conn.producer().routing_key(queue);
    for i in 0..messages {
        producer.publish(&i).await.expect("publish");
    }
    conn
}

#[tokio::test]
async fn stop_lets_the_handler_in_flight_finish_and_returns_the_prefetched_at_once() {
    let queue = uniq("finish");
    let conn = open_with(&queue, 10).await;
    let consumer = conn
        .consumer([Queue::new(&queue)])
        .prefetch(5)
        .shutdown_timeout(Duration::from_secs(10))
        .build()
        .await
        .expect("consumer");
    let stop = consumer.stop_handle();
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let started_tx = Arc::new(parking_lot::Mutex::new(Some(started_tx)));
    let handled = Arc::new(AtomicUsize::new(0));
    let seen = handled.clone();
    // The stop comes from another task (a signal handler) while the handler runs.
    let stopper = tokio::spawn(async move {
        tokio::time::timeout(GUARD, started_rx)
            .await
            .expect("the handler starts")
            .expect("the handler signals");
        stop.stop();
        stop
    });
    let worker = consumer.consume(move |delivery| {
        let started = started_tx.lock().take();
        let seen = seen.clone();
        async move {
            if let Some(started) = started {
                let _ = started.send(());
            }
            // Still running when the stop comes: it must be let finish.
            tokio::time::sleep(Duration::from_millis(300)).await;
            delivery.ack().await.map_err(Error::from)?;
            seen.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    tokio::time::timeout(GUARD, worker)
        .await
        .expect("the consumer stops")
        .expect("a clean stop");
    assert!(stopper.await.expect("no panic").is_stopped());
    assert_eq!(
        handled.load(Ordering::SeqCst),
        1,
        "the handler in flight finished (and acked) and no other started"
    );
    // Right after the stop: the 4 prefetched and never handed out are back, the acked one gone.
    assert_eq!(conn.queue_size(&queue).await.expect("size"), 9);
}

#[tokio::test]
async fn a_stopped_stream_ends_and_close_returns_its_buffer_at_once() {
    let queue = uniq("stream");
    let conn = open_with(&queue, 20).await;
    let mut consumer = conn
        .consumer([Queue::new(&queue)])
        .prefetch(10)
        .build()
        .await
        .expect("consumer");
    let stop = consumer.stop_handle();
    let first = tokio::time::timeout(GUARD, consumer.next())
        .await
        .expect("a delivery")
        .expect("the stream goes on")
        .expect("a good delivery");
    let held = tokio::time::timeout(GUARD, consumer.next())
        .await
        .expect("a delivery")
        .expect("the stream goes on")
        .expect("a good delivery");
    first.ack().await.expect("ack");
    assert_eq!(conn.queue_size(&queue).await.expect("size"), 10, "10 taken");
    // A stop from another task wakes a stream that waits too; here it ends the next poll.
    tokio::spawn(async move { stop.stop() })
        .await
        .expect("no panic");
    assert!(consumer.is_stopped());
    let next = tokio::time::timeout(GUARD, consumer.next())
        .await
        .expect("the stream answers");
    assert!(next.is_none(), "a stopped consumer hands out nothing more");
    // Settling what is held still works until the consumer is closed.
    held.ack().await.expect("ack after stop");
    consumer.close().await.expect("close");
    assert_eq!(
        conn.queue_size(&queue).await.expect("size"),
        18,
        "the 8 prefetched and never handed out are back at once, the 2 acked are gone"
    );
}

#[tokio::test]
async fn a_stop_wakes_a_stream_waiting_for_messages() {
    let queue = uniq("idle");
    let conn = open_with(&queue, 0).await;
    let mut consumer = conn
        .consumer([Queue::new(&queue)])
        .build()
        .await
        .expect("consumer");
    let stop = consumer.stop_handle();
    let waiting = tokio::spawn(async move {
        let next = consumer.next().await;
        (next.is_none(), consumer)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.stop();
    let (ended, consumer) = tokio::time::timeout(GUARD, waiting)
        .await
        .expect("the waiting stream wakes")
        .expect("no panic");
    assert!(ended, "the stream ends on a stop");
    consumer.shutdown().await.expect("shutdown");
    assert_eq!(conn.queue_size(&queue).await.expect("size"), 0);
}

#[tokio::test]
async fn a_handler_that_overruns_the_shutdown_timeout_is_dropped_and_its_delivery_goes_back() {
    let queue = uniq("overrun");
    let conn = open_with(&queue, 6).await;
    let consumer = conn
        .consumer([Queue::new(&queue)])
        .prefetch(3)
        .shutdown_timeout(Duration::from_millis(100))
        .build()
        .await
        .expect("consumer");
    let stop = consumer.stop_handle();
    let (started_tx, started_rx) = oneshot::channel::<u64>();
    let started_tx = Arc::new(parking_lot::Mutex::new(Some(started_tx)));
    let stopper = tokio::spawn(async move {
        let first = tokio::time::timeout(GUARD, started_rx)
            .await
            .expect("the handler starts")
            .expect("the handler signals");
        stop.stop();
        first
    });
    let worker = consumer.consume_as(move |value: u64, delivery| {
        let started = started_tx.lock().take();
        async move {
            if let Some(started) = started {
                let _ = started.send(value);
            }
            // Never finishes by itself.
            std::future::pending::<()>().await;
            delivery.ack().await.map_err(Error::from)
        }
    });
    tokio::time::timeout(GUARD, worker)
        .await
        .expect("the consumer stops past its shutdown timeout")
        .expect("a stop is not an error");
    assert_eq!(stopper.await.expect("no panic"), 0, "the first message");
    assert_eq!(
        conn.queue_size(&queue).await.expect("size"),
        6,
        "the abandoned delivery and the 2 prefetched are all back"
    );
    let mut again = conn
        .consumer([Queue::new(&queue)])
        .prefetch(1)
        .build()
        .await
        .expect("consumer");
    let delivery = tokio::time::timeout(GUARD, again.next())
        .await
        .expect("a delivery")
        .expect("the stream goes on")
        .expect("a good delivery");
    assert_eq!(delivery.decode::<u64>().expect("decode"), 0, "order kept");
    assert!(delivery.redelivered(), "returned marked redelivered");
    delivery.ack().await.expect("ack");
    again.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_loop_runs_in_a_task_of_its_own_and_stops_there() {
    let queue = uniq("spawned");
    let conn = open_with(&queue, 3).await;
    let consumer = conn
        .consumer([Queue::new(&queue)])
        .prefetch(1)
        .build()
        .await
        .expect("consumer");
    let stop = consumer.stop_handle();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    // The loop is `Send`: it runs on the multi-thread runtime's workers.
    let worker = tokio::spawn(consumer.consume_as(move |n: u64, delivery| {
        let seen = seen_tx.clone();
        async move {
            delivery.ack().await?;
            let _ = seen.send(n);
            Ok(())
        }
    }));
    for expected in 0..3 {
        let n = tokio::time::timeout(GUARD, seen_rx.recv())
            .await
            .expect("a message handled")
            .expect("the worker runs");
        assert_eq!(n, expected);
    }
    stop.stop();
    tokio::time::timeout(GUARD, worker)
        .await
        .expect("the worker stops")
        .expect("no panic")
        .expect("a clean stop");
    assert_eq!(conn.queue_size(&queue).await.expect("size"), 0);
}
