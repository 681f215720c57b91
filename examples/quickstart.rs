//! Declare a queue, publish typed values, consume and acknowledge them.
//!
//! Runs with no setup on the in-process memory transport:
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Point it at another broker with `KOMBU_URL` (for example `KOMBU_URL=redis://127.0.0.1:6379/0`
//! once the Redis transport is enabled); the code does not change.

use kombu::{Connection, Exchange, Queue, StreamExt};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u32,
    item: String,
    quantity: u32,
}

#[tokio::main]
async fn main() -> kombu::Result<()> {
    let url = std::env::var("KOMBU_URL").unwrap_or_else(|_| "memory://".to_owned());
    let conn = Connection::open(&url).await?;
    println!("connected to {}", conn.url()); // the password, if any, prints as **

    // A topic exchange and a queue that takes every order for the EU.
    let orders = Exchange::topic("orders");
    let queue = Queue::new("eu-orders")
        .exchange(orders.clone())
        .routing_key("order.eu.*");
    conn.declare_queue(&queue).await?;

    // Publish typed values; the producer serializes them as JSON (kombu's default).
    let producer = conn.producer().exchange(orders);
    for (id, country) in [(1, "fr"), (2, "de"), (3, "us")] {
        let order = Order {
            id,
            item: "teapot".into(),
            quantity: id * 2,
        };
        producer
            .message(&order)
            .routing_key(format!("order.eu.{country}"))
            .header("country", country)
            .send()
            .await?;
    }
    // order.eu.us matches too: routing looks at the key, not at geography.
    println!("{} orders waiting", conn.queue_size("eu-orders").await?);

    // Consume with an accept list and prefetch, decode, acknowledge.
    let mut consumer = conn
        .consumer([queue])
        .accept(["json"])
        .prefetch(10)
        .build()
        .await?;
    for _ in 0..3 {
        let Some(delivery) = consumer.next().await else {
            break;
        };
        let delivery = delivery?;
        let order: Order = delivery.decode()?;
        println!(
            "got {order:?} via {} (header country={:?})",
            delivery.info().routing_key,
            delivery.headers().get("country").and_then(|v| v.as_str())
        );
        delivery.ack().await?;
    }
    println!("{} orders left", conn.queue_size("eu-orders").await?);

    // A real broker keeps queues after the program ends: leave none behind.
    consumer.close().await?;
    conn.delete_queue("eu-orders").await?;
    conn.delete_exchange("orders").await?;
    Ok(())
}
