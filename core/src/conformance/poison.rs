//! Poison messages: a delivery that is not accepted or does not decode is dead-lettered
//! (default), requeued a bounded number of times, or left in its queue, by the consumer's
//! policy; the good messages around it are consumed in order and nothing is dropped.

use bytes::Bytes;
use tokio::time::timeout;

use super::Ctx;
use super::fixtures::*;
use crate::consumer::Handled;
use crate::dead_letter::{
    self, Destination, ORIGINAL_EXCHANGE, ORIGINAL_QUEUE, ORIGINAL_ROUTING_KEY, REASON,
    REDELIVERIES,
};
use crate::error::{Error, ErrorKind, Result};
use crate::{
    Connection, Consumer, DeadLettered, ErrorAction, Exchange, Headers, Message, Queue, Value,
};

const POISON: &[u8] = b"\x00\xffnot for this consumer";

/// Asserts the `x-kombu-*` headers of a dead letter taken from `queue` (published to the
/// default exchange, so its original routing key is the queue's name).
fn assert_dead_letter_headers(h: &Headers, queue: &str, reason_has: &str) {
    let reason = h.get(REASON).and_then(Value::as_str).unwrap_or_default();
    assert!(
        reason.contains(reason_has),
        "{REASON} {reason:?} should mention {reason_has:?}"
    );
    assert_eq!(h.get(ORIGINAL_QUEUE).and_then(Value::as_str), Some(queue));
    assert_eq!(h.get(ORIGINAL_EXCHANGE).and_then(Value::as_str), Some(""));
    assert_eq!(
        h.get(ORIGINAL_ROUTING_KEY).and_then(Value::as_str),
        Some(queue)
    );
}

/// Reads the one message of `queue` (accepting anything), acks it and checks nothing else is
/// there.
async fn only_message(conn: &Connection, queue: &str, ctx: &Ctx) -> Result<Message> {
    let mut consumer = conn
        .consumer([Queue::new(queue)])
        .declare(false)
        .accept(["json", "application/x-custom", "application/data"])
        .build()
        .await?;
    let d = next_delivery(&mut consumer, ctx.patience).await;
    let message = d.message().clone();
    d.ack().await?;
    assert_quiet(&mut consumer, QUIET, "one dead letter only").await;
    consumer.close().await?;
    Ok(message)
}

/// Takes the next item of `consumer`, which must be a refusal of `kind`, and settles it by the
/// consumer's policy, which must dead-letter it; returns where it went.
async fn dead_letter_next(
    consumer: &mut Consumer,
    kind: ErrorKind,
    ctx: &Ctx,
) -> Result<DeadLettered> {
    let refused = match next_item(consumer, ctx.patience).await {
        Ok(d) => panic!("poison handed out as good: {}", describe(&d)),
        Err(refused) => refused,
    };
    assert_eq!(refused.error.kind(), kind);
    match consumer.handle(refused).await? {
        Handled::DeadLettered(record) => Ok(record),
        other => panic!("dead-lettering expected, got {other:?}"),
    }
}

/// With the default policy, a message that is not accepted and one that does not decode go to
/// `<queue>.dlq`, byte for byte with the dead-letter headers, while the good messages around
/// them reach the handler in order; the queue ends empty.
pub async fn poison_dead_lettered(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    let q = Queue::new(ctx.name("poison"));
    conn.declare_queue(&q).await?;
    let producer = conn.producer().routing_key(q.name.clone());
    producer.publish(&"one").await?;
    producer
        .publish_bytes(Bytes::from_static(POISON), "application/x-custom", "binary")
        .await?;
    producer
        .publish_bytes(
            Bytes::from_static(b"{not json"),
            "application/json",
            "utf-8",
        )
        .await?;
    producer.publish(&"two").await?;

    let consumer = conn.consumer([q.clone()]).accept(["json"]).build().await?;
    let mut seen = Vec::new();
    let result = timeout(
        ctx.patience * 2,
        consumer.consume_as::<String, _, _>(|value, d| {
            seen.push(value);
            let done = seen.len() == 2;
            async move {
                d.ack().await?;
                if done {
                    return Err(Error::config("stop: both good messages handled"));
                }
                Ok(())
            }
        }),
    )
    .await
    .expect("the good messages arrive"); // ok: a conformance assertion
    let stopped = result.expect_err("the handler's error ends consume_as");
    assert_eq!(stopped.message(), "stop: both good messages handled");
    assert_eq!(seen, ["one", "two"], "good messages in order, none lost");
    assert_eq!(conn.queue_size(&q.name).await?, 0, "nothing left behind");

    let dlq = dead_letter::dlq_name(&q.name);
    let mut consumer = conn
        .consumer([Queue::new(dlq.clone())])
        .declare(false)
        .accept(["json", "application/x-custom"])
        .build()
        .await?;
    let refused = next_delivery(&mut consumer, ctx.patience).await;
    assert_eq!(refused.body().as_ref(), POISON, "kept byte for byte");
    assert_eq!(refused.content_type(), Some("application/x-custom"));
    assert_dead_letter_headers(refused.headers(), &q.name, "not accepted");
    refused.ack().await?;
    let undecodable = next_delivery(&mut consumer, ctx.patience).await;
    assert_eq!(undecodable.body().as_ref(), b"{not json");
    assert_dead_letter_headers(undecodable.headers(), &q.name, "codec error");
    undecodable.ack().await?;
    assert_quiet(&mut consumer, QUIET, "two dead letters only").await;
    consumer.close().await?;
    Ok(())
}

/// A queue declared with a dead-letter exchange sends its poison there (with the routing key
/// `x-dead-letter-routing-key` names), through the stream style's [`Consumer::handle`].
///
/// [`Consumer::handle`]: crate::Consumer::handle
pub async fn poison_to_dead_letter_exchange(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    if !conn.capabilities().dead_lettering {
        return skipped("poison_to_dead_letter_exchange", "dead-letter exchanges");
    }
    let dlx = Exchange::direct(ctx.name("poison-dlx"));
    let dead = Queue::new(ctx.name("poison-dead"))
        .exchange(dlx.clone())
        .routing_key("dead");
    conn.declare_queue(&dead).await?;
    let q = Queue::new(ctx.name("poison-x"))
        .dead_letter_exchange(dlx.name.clone())
        .dead_letter_routing_key("dead");
    conn.declare_queue(&q).await?;
    let producer = conn.producer().routing_key(q.name.clone());
    producer
        .publish_bytes(Bytes::from_static(POISON), "application/x-custom", "binary")
        .await?;
    producer.publish(&"good").await?;

    let mut consumer = conn.consumer([q.clone()]).accept(["json"]).build().await?;
    let record = dead_letter_next(&mut consumer, ErrorKind::Codec, &ctx).await?;
    assert_eq!(record.queue, q.name);
    assert_eq!(
        record.destination,
        Destination::Exchange {
            exchange: dlx.name.clone(),
            routing_key: "dead".to_owned()
        }
    );
    let good = next_delivery(&mut consumer, ctx.patience).await;
    assert_eq!(good.decode::<String>()?, "good");
    good.ack().await?;
    consumer.close().await?;
    assert_eq!(conn.queue_size(&q.name).await?, 0);

    let d = only_message(&conn, &dead.name, &ctx).await?;
    assert_eq!(d.body.as_ref(), POISON);
    assert_dead_letter_headers(&d.headers, &q.name, "not accepted");
    Ok(())
}

/// [`ErrorAction::Requeue`] puts the message back at the tail, counting the tries; past the
/// limit it is dead-lettered. The good message behind it is not held up.
pub async fn poison_requeue_limit(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    let q = Queue::new(ctx.name("poison-requeue"));
    conn.declare_queue(&q).await?;
    let producer = conn.producer().routing_key(q.name.clone());
    producer
        .publish_bytes(Bytes::from_static(POISON), "application/x-custom", "binary")
        .await?;
    producer.publish(&"good").await?;

    let mut consumer = conn
        .consumer([q.clone()])
        .accept(["json"])
        .error_action(ErrorAction::Requeue)
        .max_redeliveries(2)
        .build()
        .await?;
    let mut handled = Vec::new();
    let mut good = Vec::new();
    while handled.len() < 3 || good.is_empty() {
        match next_item(&mut consumer, ctx.patience).await {
            Ok(d) => {
                good.push(d.decode::<String>()?);
                d.ack().await?;
            }
            Err(refused) => handled.push(consumer.handle(refused).await?),
        }
    }
    assert_eq!(good, ["good"]);
    assert_eq!(handled[0], Handled::Requeued { redeliveries: 1 });
    assert_eq!(handled[1], Handled::Requeued { redeliveries: 2 });
    let dlq = dead_letter::dlq_name(&q.name);
    match &handled[2] {
        Handled::DeadLettered(record) => {
            assert_eq!(record.destination, Destination::Queue(dlq.clone()));
        }
        other => panic!("dead-lettering after two requeues expected, got {other:?}"),
    }
    assert_quiet(&mut consumer, QUIET, "the poison is gone from the queue").await;
    consumer.close().await?;

    let d = only_message(&conn, &dlq, &ctx).await?;
    assert_eq!(d.body.as_ref(), POISON);
    assert_eq!(d.headers.get(REDELIVERIES).and_then(Value::as_i64), Some(2));
    assert_dead_letter_headers(&d.headers, &q.name, "given up after 2 redeliveries");
    Ok(())
}

/// [`ErrorAction::Stop`] returns the error and leaves the message in its queue, intact, for a
/// consumer that can read it.
pub async fn poison_stop_leaves_it(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    let q = Queue::new(ctx.name("poison-stop"));
    conn.declare_queue(&q).await?;
    conn.producer()
        .routing_key(q.name.clone())
        .publish_bytes(Bytes::from_static(POISON), "application/x-custom", "binary")
        .await?;
    let consumer = conn
        .consumer([q.clone()])
        .accept(["json"])
        .error_action(ErrorAction::Stop)
        .build()
        .await?;
    let result = timeout(
        ctx.patience,
        consumer.consume(|d| async move {
            panic!("poison handed to the handler: {}", describe(&d));
        }),
    )
    .await
    .expect("Stop ends the consumer"); // ok: a conformance assertion
    let error = result.expect_err("Stop returns the error");
    assert_eq!(error.kind(), ErrorKind::Codec);

    let mut consumer = conn
        .consumer([q.clone()])
        .accept(["application/x-custom"])
        .build()
        .await?;
    let d = next_delivery(&mut consumer, ctx.patience).await;
    assert_eq!(d.body().as_ref(), POISON, "left in its queue, intact");
    assert!(d.redelivered());
    d.ack().await?;
    consumer.close().await?;
    Ok(())
}

/// Dead letters never go where nothing holds them: a dead-letter exchange that was never
/// declared sends them to `<queue>.dlq` (and leaves the consumer's channel open), and one of
/// kind fanout delivers them into its bound queue (never only to whoever listens right now,
/// as Redis's PUB/SUB fanout would).
pub async fn poison_dead_letter_exchange_fallbacks(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    // The consumer reads the dead-letter exchange from the `Queue` it is given; the queues
    // are declared plainly, so that this runs where queues cannot be declared with one.
    let plain = Queue::new(ctx.name("poison-missing-dlx"));
    conn.declare_queue(&plain).await?;
    let q = plain.clone().dead_letter_exchange(ctx.name("nowhere"));
    let producer = conn.producer().routing_key(q.name.clone());
    producer
        .publish_bytes(Bytes::from_static(POISON), "application/x-custom", "binary")
        .await?;
    producer.publish(&"after").await?;
    let mut consumer = conn
        .consumer([q.clone()])
        .declare(false)
        .accept(["json"])
        .build()
        .await?;
    let record = dead_letter_next(&mut consumer, ErrorKind::Codec, &ctx).await?;
    assert_eq!(
        record.destination,
        Destination::Queue(dead_letter::dlq_name(&q.name))
    );
    let after = next_delivery(&mut consumer, ctx.patience).await;
    assert_eq!(
        after.decode::<String>()?,
        "after",
        "the channel still works"
    );
    after.ack().await?;
    consumer.close().await?;
    let d = only_message(&conn, &dead_letter::dlq_name(&q.name), &ctx).await?;
    assert_eq!(d.body.as_ref(), POISON);

    // Fanout exchange with a bound queue and no consumer listening.
    let dlx = Exchange::fanout(ctx.name("poison-fanout-dlx"));
    let dead = Queue::new(ctx.name("poison-fanout-dead")).exchange(dlx.clone());
    // Declared (and bound) by another connection that is gone by the time the dead letter is
    // sent: nobody listens for the fanout exchange, only the bound queue can hold it.
    let other = ctx.connect().await?;
    other.declare_queue(&dead).await?;
    other.close().await?;
    let plain = Queue::new(ctx.name("poison-fanout"));
    conn.declare_queue(&plain).await?;
    let q = plain.clone().dead_letter_exchange(dlx.name.clone());
    conn.producer()
        .routing_key(q.name.clone())
        .publish_bytes(Bytes::from_static(POISON), "application/x-custom", "binary")
        .await?;
    let mut consumer = conn
        .consumer([q.clone()])
        .declare(false)
        .accept(["json"])
        .build()
        .await?;
    let record = dead_letter_next(&mut consumer, ErrorKind::Codec, &ctx).await?;
    assert!(
        matches!(&record.destination, Destination::Exchange { exchange, .. } if *exchange == dlx.name),
        "{record:?}"
    );
    consumer.close().await?;
    conn.close().await?;
    let reader = ctx.connect().await?;
    let d = only_message(&reader, &dead.name, &ctx).await?;
    reader.close().await?;
    assert_eq!(d.body.as_ref(), POISON, "held by the bound queue");
    assert_dead_letter_headers(&d.headers, &q.name, "not accepted");
    Ok(())
}
