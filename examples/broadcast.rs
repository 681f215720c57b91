//! Broadcast to every worker: a fanout exchange and one queue per worker bound to it, so every
//! worker receives every message (where a shared queue would give each message to one worker).
//! This is kombu's `Broadcast`: each consumer declares a queue of its own named
//! `bcast.<uuid>`, auto-deleted when it stops, bound to the fanout exchange named after the
//! broadcast.
//!
//! Three workers start, then three announcements are published once; each worker prints what
//! it received and stops after the last.
//!
//! ```text
//! cargo run --example broadcast
//! KOMBU_URL=redis://127.0.0.1:6379/0 cargo run --example broadcast
//! KOMBU_URL=amqp://guest:guest@127.0.0.1:5672// cargo run --example broadcast
//! ```
//!
//! Fanout on Redis is kombu's PUB/SUB: a worker gets only what is published while it is
//! subscribed, so the workers start before the first announcement (on the other brokers the
//! bound queue keeps the messages anyway).

use std::time::Duration;

use kombu::{Connection, Consumer, Error, ErrorKind, Exchange, Queue, StreamExt};

const WORKERS: usize = 3;
const ANNOUNCEMENTS: [&str; 3] = ["config reloaded", "cache flushed", "shutting down at 18:00"];

/// kombu's `Broadcast(name)`: a queue of the worker's own on the fanout exchange `name`.
fn broadcast_queue(exchange: &Exchange) -> Queue {
    Queue::new(format!("bcast.{}", uuid::Uuid::new_v4()))
        .exchange(exchange.clone())
        .auto_delete(true)
}

/// One worker: every announcement, in order, then stop.
async fn worker(id: usize, mut consumer: Consumer) -> kombu::Result<Vec<String>> {
    let mut received = Vec::new();
    while received.len() < ANNOUNCEMENTS.len() {
        let next = tokio::time::timeout(Duration::from_secs(30), consumer.next()).await;
        let Ok(Some(delivery)) = next else {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!("worker {id} got {received:?} and then nothing for 30 s"),
            ));
        };
        let delivery = delivery?;
        let text: String = delivery.decode()?;
        println!("worker {id} got {text:?}");
        received.push(text);
        delivery.ack().await?;
    }
    consumer.close().await?;
    Ok(received)
}

#[tokio::main]
async fn main() -> kombu::Result<()> {
    let url = std::env::var("KOMBU_URL").unwrap_or_else(|_| "memory://".to_owned());
    let conn = Connection::open(&url).await?;
    println!("connected to {}", conn.url());
    if !conn.capabilities().fanout {
        println!("this transport has no fanout exchanges: nothing to show");
        return conn.close().await;
    }

    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let exchange = Exchange::fanout(format!("announcements-{run}"));

    // Every worker is subscribed before anything is published.
    let mut workers = Vec::new();
    let mut queues = Vec::new();
    for id in 1..=WORKERS {
        let queue = broadcast_queue(&exchange);
        println!("worker {id} listens on {}", queue.name);
        queues.push(queue.name.clone());
        let consumer = conn.consumer([queue]).build().await?;
        workers.push(tokio::spawn(worker(id, consumer)));
    }

    let producer = conn.producer().exchange(exchange.clone());
    for text in ANNOUNCEMENTS {
        producer.publish(text).await?;
    }
    println!("published {} announcements once", ANNOUNCEMENTS.len());

    for (i, handle) in workers.into_iter().enumerate() {
        let received = handle
            .await
            .map_err(|e| Error::new(ErrorKind::Closed, format!("worker {}: {e}", i + 1)))??;
        if received != ANNOUNCEMENTS {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("worker {} got {received:?}", i + 1),
            ));
        }
    }
    println!("every worker got every announcement");

    // Auto-delete queues go when their consumer stops on AMQP; deleting them is harmless
    // there and tidies the brokers that do not auto-delete.
    for queue in &queues {
        conn.delete_queue(queue).await?;
    }
    conn.delete_exchange(&exchange.name).await?;
    conn.close().await
}
