//! Request/reply: an RPC server and a client in one process.
//!
//! The server answers on the queue `rpc.pricing`; the client publishes each request with a
//! `reply_to` and a `correlation_id` and awaits the matching reply (kombu's `send_reply`
//! shape, so a Python kombu client or server could take either side). Runs with no setup on
//! the in-process memory transport:
//!
//! ```text
//! cargo run --example rpc
//! ```
//!
//! Point it at another broker with `KOMBU_URL` (`redis://127.0.0.1:6379/0`,
//! `amqp://guest:guest@127.0.0.1:5672//`: there the replies come through RabbitMQ's direct
//! reply-to); the code does not change.

use std::time::Duration;

use kombu::rpc::{RpcClient, RpcServer};
use kombu::{Connection, Error, ErrorKind};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Quote {
    item: String,
    quantity: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Price {
    item: String,
    total_cents: u64,
}

/// The server's work: price a quote, or fail for an item it does not sell.
async fn price(quote: Quote) -> kombu::Result<Price> {
    let unit_cents = match quote.item.as_str() {
        "teapot" => 2_500,
        "cup" => 450,
        other => {
            return Err(Error::new(
                ErrorKind::Config,
                format!("no price for {other:?}"),
            ));
        }
    };
    Ok(Price {
        total_cents: unit_cents * u64::from(quote.quantity),
        item: quote.item,
    })
}

#[tokio::main]
async fn main() -> kombu::Result<()> {
    let url = std::env::var("KOMBU_URL").unwrap_or_else(|_| "memory://".to_owned());
    let conn = Connection::open(&url).await?;
    println!("connected to {}", conn.url()); // the password, if any, prints as **

    // The server: four requests at a time, on a task of its own.
    let server = RpcServer::builder(&conn, "rpc.pricing")
        .concurrency(4)
        .build()
        .await?;
    let running = server.spawn(price);

    // The client: one reply queue for all its calls, which may run at once.
    let client = RpcClient::new(&conn).await?;
    println!("replies come to {}", client.reply_to());
    let timeout = Duration::from_secs(5);
    for (item, quantity) in [("teapot", 2), ("cup", 6)] {
        let quote = Quote {
            item: item.into(),
            quantity,
        };
        let price: Price = client.call("rpc.pricing", &quote, timeout).await?;
        println!("{quantity} x {item}: {} cents", price.total_cents);
    }
    let quotes: Vec<Quote> = (1..=3)
        .map(|quantity| Quote {
            item: "teapot".into(),
            quantity,
        })
        .collect();
    let calls = quotes
        .iter()
        .map(|quote| client.call::<_, Price>("rpc.pricing", quote, timeout));
    for (quote, price) in quotes.iter().zip(futures::future::join_all(calls).await) {
        println!(
            "{} x teapot, at once: {} cents",
            quote.quantity, price?.total_cents
        );
    }

    // The server's error comes back as an error, not as a timeout.
    let refused = Quote {
        item: "spoon".into(),
        quantity: 1,
    };
    match client
        .call::<_, Price>("rpc.pricing", &refused, timeout)
        .await
    {
        Ok(price) => println!("unexpected price: {price:?}"),
        Err(error) => println!("spoon: {error}"),
    }

    println!("the server answered {} requests", running.served());
    client.close().await?;
    running.stop().await?; // handlers in flight finish and reply first
    conn.delete_queue("rpc.pricing").await?;
    conn.close().await?;
    Ok(())
}
