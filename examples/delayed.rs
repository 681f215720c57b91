//! Delayed jobs: messages published with a delay (or an ETA) stay invisible until due, then
//! arrive like any other. Three reminders are published out of order, with delays of 3, 1 and
//! 2 seconds, and arrive in the order they fall due.
//!
//! ```text
//! cargo run --example delayed
//! KOMBU_URL=redis://127.0.0.1:6379/0 cargo run --example delayed
//! KOMBU_URL=amqp://guest:guest@127.0.0.1:5672// cargo run --example delayed
//! ```
//!
//! Each transport holds the message its own way: memory by its clock, Redis in a sorted set,
//! SQLite and MongoDB as rows or documents Python kombu does not see until due, RabbitMQ in
//! kombu's native delayed-delivery queues (the ones Celery uses: whole seconds, through a topic
//! exchange whose queues are bound with `#.<routing key>`, which is why this example binds so).
//! The exchange and queue get names unique to the run and are deleted at the end.

use std::time::{Duration, Instant};

use kombu::{Connection, Error, ErrorKind, Exchange, Queue, StreamExt};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Reminder {
    text: String,
    /// Seconds after the start it is due.
    due: u64,
}

#[tokio::main]
async fn main() -> kombu::Result<()> {
    let url = std::env::var("KOMBU_URL").unwrap_or_else(|_| "memory://".to_owned());
    let conn = Connection::open(&url).await?;
    println!("connected to {}", conn.url());

    let run = uuid::Uuid::new_v4().simple().to_string();
    let exchange = Exchange::topic(format!("reminders-{run}"));
    let key = format!("reminder.{run}");
    let queue = Queue::new(format!("reminders-{run}"))
        .exchange(exchange.clone())
        .routing_key(format!("#.{key}"));
    let mut consumer = conn.consumer([queue.clone()]).build().await?;

    let producer = conn.producer().exchange(exchange.clone()).routing_key(key);
    let start = Instant::now();
    for (text, due) in [("stand up", 3), ("drink water", 1), ("check the oven", 2)] {
        let reminder = Reminder {
            text: text.to_owned(),
            due,
        };
        producer
            .message(&reminder)
            .delay(Duration::from_secs(due))
            .send()
            .await?;
        println!("scheduled {text:?} in {due} s");
    }
    println!(
        "{} ready now (the reminders are not due yet)",
        conn.queue_size(&queue.name).await?
    );

    let mut order = Vec::new();
    while order.len() < 3 {
        let next = tokio::time::timeout(Duration::from_secs(30), consumer.next()).await;
        let Ok(Some(delivery)) = next else {
            return Err(Error::new(ErrorKind::Timeout, "a reminder did not arrive"));
        };
        let delivery = delivery?;
        let reminder: Reminder = delivery.decode()?;
        let at = start.elapsed();
        println!(
            "{:>5.2} s: {:?} (due at {} s)",
            at.as_secs_f64(),
            reminder.text,
            reminder.due
        );
        if at + Duration::from_millis(50) < Duration::from_secs(reminder.due) {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("{:?} arrived before it was due", reminder.text),
            ));
        }
        order.push(reminder.due);
        delivery.ack().await?;
    }
    if order != [1, 2, 3] {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!("reminders arrived out of order: {order:?}"),
        ));
    }
    consumer.close().await?;
    conn.delete_queue(&queue.name).await?;
    conn.delete_exchange(&exchange.name).await?;
    conn.close().await?;
    Ok(())
}
