//! Moving messages between brokers: read every message of a queue on one broker and publish it
//! to a queue on another, acknowledging each only after the other broker took it
//! (at-least-once: a crash between the two leaves the message in the source, to be moved
//! again, never lost). The message moves as it is: body bytes, content type, headers and
//! properties.
//!
//! It seeds its own demo messages in the source queue first, moves them, and prints the
//! counts on both sides.
//!
//! ```text
//! cargo run --example move_messages
//! KOMBU_URL=redis://127.0.0.1:6379/0 KOMBU_URL_TO=amqp://guest:guest@127.0.0.1:5672// \
//!     cargo run --example move_messages
//! ```
//!
//! `KOMBU_URL` is the source (default `memory://`), `KOMBU_URL_TO` the destination (default a
//! second in-process broker, `memory://move-target`). Queue names are unique to the run and
//! the queues are deleted at the end.

use kombu::transport::Outgoing;
use kombu::{Connection, Error, ErrorKind, Queue, StreamExt};
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Invoice {
    number: u32,
    amount_cents: u64,
}

const SEEDED: u32 = 5;

#[tokio::main]
async fn main() -> kombu::Result<()> {
    let from_url = std::env::var("KOMBU_URL").unwrap_or_else(|_| "memory://".to_owned());
    let to_url =
        std::env::var("KOMBU_URL_TO").unwrap_or_else(|_| "memory://move-target".to_owned());
    let from = Connection::open(&from_url).await?;
    let to = Connection::open(&to_url).await?;
    println!("moving from {} to {}", from.url(), to.url());

    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let source = Queue::new(format!("invoices-old-{run}"));
    let target = Queue::new(format!("invoices-{run}"));
    from.declare_queue(&source).await?;
    to.declare_queue(&target).await?;

    // The demo messages: typed values with a header each.
    let seed = from.producer().routing_key(&source.name);
    for number in 1..=SEEDED {
        let invoice = Invoice {
            number,
            amount_cents: u64::from(number) * 1250,
        };
        seed.message(&invoice)
            .header("origin", "billing-v1")
            .send()
            .await?;
    }
    let total = from.queue_size(&source.name).await?;
    println!("{} holds {total} messages", source.name);

    // Move: publish each message as it is, then ack it at the source.
    let producer = to.producer();
    let mut consumer = from.consumer([source.clone()]).prefetch(16).build().await?;
    let mut moved = 0;
    while moved < total {
        let Some(delivery) = consumer.next().await else {
            break;
        };
        let delivery = delivery?;
        let copy = Outgoing::new("", target.name.clone(), delivery.message().clone());
        producer.send_batch(vec![copy]).await?;
        delivery.ack().await?;
        moved += 1;
    }
    consumer.close().await?;
    let left = from.queue_size(&source.name).await?;
    let arrived = to.queue_size(&target.name).await?;
    println!(
        "moved {moved}: {left} left in {}, {arrived} in {}",
        source.name, target.name
    );

    // They arrived whole: same values, same headers.
    let mut check = to.consumer([target.clone()]).build().await?;
    for expected in 1..=SEEDED {
        let Some(delivery) = check.next().await else {
            break;
        };
        let delivery = delivery?;
        let invoice: Invoice = delivery.decode()?;
        let origin = delivery.headers().get("origin").and_then(|v| v.as_str());
        println!("  {invoice:?} (origin {origin:?})");
        if invoice.number != expected || origin != Some("billing-v1") {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!(
                    "expected invoice {expected} from billing-v1, got {invoice:?} from {origin:?}"
                ),
            ));
        }
        delivery.ack().await?;
    }
    check.close().await?;
    if moved != total || left != 0 || arrived != total {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!("moved {moved} of {total}; {left} left, {arrived} arrived"),
        ));
    }

    from.delete_queue(&source.name).await?;
    to.delete_queue(&target.name).await?;
    from.close().await?;
    to.close().await
}
