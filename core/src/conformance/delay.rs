//! Delayed delivery: a message published with a delay or an ETA stays invisible until due,
//! then arrives like any other.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::Ctx;
use super::fixtures::*;
use crate::error::Result;
use crate::{Exchange, Queue};

/// How long the delayed messages of the scenarios wait: whole seconds, as RabbitMQ's native
/// delayed delivery counts them.
const DELAY: Duration = Duration::from_secs(2);

/// The bound queue of a delay scenario: a topic exchange and a queue bound with `#.<key>`,
/// which takes `<key>` everywhere and, on RabbitMQ, also the `<delay bits>.<key>` key kombu's
/// native delayed delivery routes a due message back with
/// (`bind_queue_to_native_delayed_delivery_exchange` binds so). The key is the scenario's own:
/// RabbitMQ's delivery exchange routes by key alone, to every exchange bound for it.
async fn delay_queue(ctx: &Ctx) -> Result<(crate::Connection, Exchange, Queue, String)> {
    let conn = open(ctx).await?;
    let exchange = Exchange::topic(ctx.name("x"));
    let key = ctx.name("rk");
    let queue = bound(ctx, "q", &exchange, &format!("#.{key}"));
    conn.declare_queue(&queue).await?;
    Ok((conn, exchange, queue, key))
}

/// A message published with [`delay`](crate::Publish::delay) is neither delivered nor counted
/// by [`queue_size`](crate::Connection::queue_size) before it is due, while one published
/// after it without a delay arrives at once; once due it arrives, body and headers intact, no
/// earlier than its delay. Needs [`Capabilities::delayed_delivery`](crate::Capabilities).
pub async fn delayed_delivery(ctx: Ctx) -> Result<()> {
    let (conn, exchange, queue, key) = delay_queue(&ctx).await?;
    if !conn.capabilities().delayed_delivery {
        return skipped("delayed_delivery", "delayed_delivery");
    }
    let mut consumer = conn.consumer([queue.clone()]).build().await?;
    let producer = conn.producer().exchange(exchange).routing_key(key);
    let sent = Instant::now();
    producer
        .message(&"later")
        .header("kind", "delayed")
        .delay(DELAY)
        .send()
        .await?;
    producer.publish(&"now").await?;

    let first = next_delivery(&mut consumer, ctx.patience).await;
    assert_eq!(
        first.decode::<String>()?,
        "now",
        "the undelayed message comes first"
    );
    first.ack().await?;
    assert_eq!(
        conn.queue_size(&queue.name).await?,
        0,
        "a delayed message is not counted before it is due"
    );
    assert_quiet(
        &mut consumer,
        DELAY / 2,
        "the delayed message before it is due",
    )
    .await;

    let later = next_delivery(&mut consumer, ctx.patience + DELAY).await;
    let waited = sent.elapsed();
    assert_eq!(later.decode::<String>()?, "later");
    assert_eq!(
        later.headers().get("kind").and_then(|v| v.as_str()),
        Some("delayed")
    );
    // The stores take their clocks from different places (the broker's, the process's):
    // allow them a few milliseconds apart.
    assert!(
        waited + Duration::from_millis(50) >= DELAY,
        "delivered {waited:?} after publishing, before its delay of {DELAY:?}"
    );
    later.ack().await?;
    Ok(())
}

/// [`eta`](crate::Publish::eta) delivers at a wall-clock time: an ETA in the future is held
/// like a delay, one in the past is delivered at once. Needs
/// [`Capabilities::delayed_delivery`](crate::Capabilities).
pub async fn delayed_eta(ctx: Ctx) -> Result<()> {
    let (conn, exchange, queue, key) = delay_queue(&ctx).await?;
    if !conn.capabilities().delayed_delivery {
        return skipped("delayed_eta", "delayed_delivery");
    }
    let mut consumer = conn.consumer([queue.clone()]).build().await?;
    let producer = conn.producer().exchange(exchange).routing_key(key);
    let now = SystemTime::now();
    // Time as the transport counts it (tokio's, paused, on memory).
    let sent = Instant::now();
    producer.message(&"future").eta(now + DELAY).send().await?;
    producer
        .message(&"past")
        .eta(now - Duration::from_secs(3600))
        .send()
        .await?;
    let first = next_delivery(&mut consumer, ctx.patience).await;
    assert_eq!(
        first.decode::<String>()?,
        "past",
        "a past ETA is due at once"
    );
    first.ack().await?;
    let second = next_delivery(&mut consumer, ctx.patience + DELAY).await;
    assert_eq!(second.decode::<String>()?, "future");
    let waited = sent.elapsed();
    assert!(
        waited + Duration::from_millis(50) >= DELAY,
        "delivered {waited:?} after publishing, before its ETA {DELAY:?} ahead"
    );
    second.ack().await?;
    Ok(())
}
