//! Limits and redelivery: visibility timeouts, prefetch, priorities, TTLs, dead-lettering, maximum
//! lengths.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::{Instant, timeout};

use super::Ctx;
use super::fixtures::*;
use crate::error::Result;
use crate::{Delivery, Exchange, Queue, Value};

/// Visibility timeout: a consumer that takes a message and goes silent (alive, never settling)
/// loses it after its visibility timeout, not before: a second consumer then gets it,
/// redelivered. The silent consumer's late ack is harmless (at most a settlement error) and does
/// not remove the redelivered copy. [`Delivery::extend_lease`] keeps a message from being
/// redelivered past its original timeout. Needs
/// [`Capabilities::visibility_timeout`](crate::Capabilities).
pub async fn visibility_timeout(ctx: Ctx) -> Result<()> {
    let conn_a = open(&ctx).await?;
    if !conn_a.capabilities().visibility_timeout {
        return skipped("visibility_timeout", "visibility_timeout");
    }
    let conn_b = ctx.connect().await?;
    let q = Queue::new(ctx.name("q"));
    let mut a = conn_a
        .consumer([q.clone()])
        .prefetch(1)
        .visibility_timeout(VISIBILITY)
        .build()
        .await?;
    let mut b = conn_b
        .consumer([q.clone()])
        .visibility_timeout(VISIBILITY)
        .build()
        .await?;
    conn_a
        .producer()
        .routing_key(q.name.clone())
        .publish(&"leased")
        .await?;
    let stale = next_delivery(&mut a, ctx.patience).await;
    assert!(!stale.redelivered());
    assert_quiet(&mut b, VISIBILITY / 2, "the lease has not passed yet").await;
    let copy = next_delivery(&mut b, ctx.patience).await;
    assert!(
        copy.redelivered(),
        "a message whose lease passed is redelivered"
    );
    assert_eq!(copy.decode::<String>()?, "leased");

    // The silent consumer wakes up and acks its stale delivery.
    stale_ack(stale).await;
    a.close().await?;
    // The copy is still b's: requeueing it brings it back, so the late ack removed nothing.
    copy.requeue().await?;
    let again = next_delivery(&mut b, ctx.patience).await;
    assert_eq!(again.decode::<String>()?, "leased");
    assert!(again.redelivered());
    again.ack().await?;
    assert_quiet(&mut b, QUIET, "the acked message is gone").await;

    // extend_lease keeps the message away from other consumers.
    conn_a
        .producer()
        .routing_key(q.name.clone())
        .publish(&"extended")
        .await?;
    let held = next_delivery(&mut b, ctx.patience).await;
    assert_eq!(held.decode::<String>()?, "extended");
    let mut c = conn_a
        .consumer([q.clone()])
        .visibility_timeout(VISIBILITY)
        .build()
        .await?;
    // Extended every half timeout for twice the timeout: it never becomes visible.
    for _ in 0..4 {
        held.extend_lease().await?;
        assert_quiet(
            &mut c,
            VISIBILITY / 2,
            "an extended lease keeps the message",
        )
        .await;
    }
    held.ack().await?;
    assert_quiet(
        &mut c,
        VISIBILITY + QUIET,
        "an acked leased message is gone",
    )
    .await;
    assert_eq!(conn_a.queue_size(&q.name).await?, 0);
    Ok(())
}

/// Prefetch is an upper bound on unsettled deliveries: with prefetch 3 and 10 ready messages,
/// a consumer gets 3 and no 4th until it acks one; then exactly one more arrives. All 10 arrive
/// once in the end.
pub async fn prefetch_bound(ctx: Ctx) -> Result<()> {
    let (conn, q) = declared_queue(&ctx).await?;
    let producer = conn.producer().routing_key(q.name.clone());
    publish_all(&producer, 0..10u32).await?;
    let mut consumer = conn.consumer([q.clone()]).prefetch(3).build().await?;
    let mut held: Vec<Delivery> = next_deliveries(&mut consumer, 3, ctx.patience).await;
    assert_quiet(
        &mut consumer,
        QUIET,
        "prefetch 3 allows no 4th unsettled delivery",
    )
    .await;
    let mut seen = BTreeSet::new();
    while seen.len() < 10 {
        let d = held.remove(0);
        assert!(
            seen.insert(d.decode::<u32>()?),
            "duplicate {}",
            describe(&d)
        );
        d.ack().await?;
        if seen.len() + held.len() < 10 {
            held.push(next_delivery(&mut consumer, ctx.patience).await);
            assert_eq!(held.len(), 3);
            assert_quiet(&mut consumer, QUIET, "acking one allows exactly one more").await;
        }
    }
    assert_eq!(seen, (0..10).collect::<BTreeSet<u32>>());
    Ok(())
}

/// Priorities: in a queue with `max_priority(10)`, messages published while no consumer runs
/// are delivered highest priority first, FIFO within a priority. Where the transport has no
/// priorities, every message is still delivered.
pub async fn priorities(ctx: Ctx) -> Result<()> {
    let conn = open(&ctx).await?;
    let supported = conn.capabilities().priorities;
    let q = Queue::new(ctx.name("q")).max_priority(10);
    conn.declare_queue(&q).await?;
    let producer = conn.producer().routing_key(q.name.clone());
    let sent = [
        ("low-1", 1),
        ("low-2", 1),
        ("high", 9),
        ("mid", 5),
        ("none", 0),
    ];
    for (body, priority) in sent {
        producer.message(&body).priority(priority).send().await?;
    }
    let mut consumer = conn.consumer([q.clone()]).prefetch(1).build().await?;
    let got = receive_texts(&mut consumer, sent.len(), ctx.patience).await?;
    if supported {
        assert_eq!(got, ["high", "mid", "low-1", "low-2", "none"]);
    } else {
        let mut got = got;
        got.sort();
        assert_eq!(got, ["high", "low-1", "low-2", "mid", "none"]);
    }
    assert_quiet(&mut consumer, QUIET, "each message once").await;
    Ok(())
}

/// Expiry: a message whose own expiration passed, or whose queue's message TTL passed, is never
/// delivered; messages with a longer or no TTL are. Needs
/// [`Capabilities::message_ttl`](crate::Capabilities).
pub async fn message_ttl(ctx: Ctx) -> Result<()> {
    let conn = open(&ctx).await?;
    if !conn.capabilities().message_ttl {
        return skipped("message_ttl", "message_ttl");
    }
    let short = Queue::new(ctx.name("short")).message_ttl(SHORT_TTL);
    let plain = Queue::new(ctx.name("plain"));
    conn.declare_queue(&short).await?;
    conn.declare_queue(&plain).await?;
    conn.producer()
        .routing_key(short.name.clone())
        .publish(&"queue-ttl")
        .await?;
    let producer = conn.producer().routing_key(plain.name.clone());
    producer
        .message(&"expires")
        .expiration(SHORT_TTL)
        .send()
        .await?;
    producer
        .message(&"long")
        .expiration(Duration::from_secs(600))
        .send()
        .await?;
    producer.publish(&"forever").await?;
    // Let the short TTL pass (a wait for time itself, not for the broker).
    tokio::time::sleep(SHORT_TTL * 2).await;
    expect_queue(&conn, &short.name, &[], &ctx).await?;
    expect_queue(&conn, &plain.name, &["long", "forever"], &ctx).await?;
    Ok(())
}

/// Dead-lettering: a rejected message, and an expired one (where
/// [`Capabilities::message_ttl`](crate::Capabilities)), go to the queue's dead-letter exchange
/// with its dead-letter routing key, body intact, with an `x-death` record naming the queue and
/// the reason (`rejected`, `expired`). Needs [`Capabilities::dead_lettering`](crate::Capabilities).
pub async fn dead_lettering(ctx: Ctx) -> Result<()> {
    let conn = open(&ctx).await?;
    let caps = conn.capabilities();
    if !caps.dead_lettering {
        return skipped("dead_lettering", "dead_lettering");
    }
    let dlx = Exchange::direct(ctx.name("dlx"));
    let dead = bound(&ctx, "dead", &dlx, "dead");
    let src = Queue::new(ctx.name("src"))
        .dead_letter_exchange(dlx.name.clone())
        .dead_letter_routing_key("dead");
    conn.declare_queue(&dead).await?;
    conn.declare_queue(&src).await?;
    let mut dead_consumer = conn.consumer([dead.clone()]).build().await?;
    let producer = conn.producer().routing_key(src.name.clone());

    producer
        .message(&"rejected")
        .header("h", "kept")
        .send()
        .await?;
    let mut consumer = conn.consumer([src.clone()]).build().await?;
    next_delivery(&mut consumer, ctx.patience)
        .await
        .reject()
        .await?;
    let d = next_delivery(&mut dead_consumer, ctx.patience).await;
    assert_eq!(d.decode::<String>()?, "rejected");
    assert_eq!(d.headers().get("h"), Some(&Value::from("kept")));
    assert_eq!(
        d.info().routing_key,
        "dead",
        "the dead-letter routing key is used"
    );
    assert_death(&d, &src.name, "rejected");
    d.ack().await?;
    consumer.close().await?;

    if caps.message_ttl {
        producer
            .message(&"expired")
            .expiration(SHORT_TTL)
            .send()
            .await?;
        tokio::time::sleep(SHORT_TTL * 2).await;
        // Brokers expire lazily (when the message reaches the head and someone looks), so look.
        let channel = conn.channel().await?;
        let start = Instant::now();
        let d = loop {
            if let Some(d) = channel.get(&src.name, false).await? {
                panic!("an expired message was delivered: {}", describe(&d));
            }
            match timeout(Duration::from_millis(50), dead_consumer.next()).await {
                Ok(Some(Ok(d))) => break d,
                Ok(Some(Err(e))) => panic!("dead-letter consumer failed: {e}"),
                Ok(None) => panic!("dead-letter consumer ended"),
                Err(_) => assert!(
                    start.elapsed() < ctx.patience,
                    "the expired message was not dead-lettered within {:?}",
                    ctx.patience
                ),
            }
        };
        assert_eq!(d.decode::<String>()?, "expired");
        assert_death(&d, &src.name, "expired");
        d.ack().await?;
        channel.close().await?;
    }
    assert_quiet(
        &mut dead_consumer,
        QUIET,
        "each message is dead-lettered once",
    )
    .await;
    assert_eq!(conn.queue_size(&src.name).await?, 0);
    Ok(())
}

/// `max_length` drops from the head: a queue limited to 3 that receives 5 messages keeps the
/// newest 3, in order; the dropped ones go to the dead-letter exchange with reason `maxlen`
/// where [`Capabilities::dead_lettering`](crate::Capabilities). Needs
/// [`Capabilities::max_length`](crate::Capabilities).
pub async fn max_length(ctx: Ctx) -> Result<()> {
    let conn = open(&ctx).await?;
    let caps = conn.capabilities();
    if !caps.max_length {
        return skipped("max_length", "max_length");
    }
    let dlx = Exchange::fanout(ctx.name("dlx"));
    let dead = Queue::new(ctx.name("dead")).exchange(dlx.clone());
    let mut q = Queue::new(ctx.name("q")).max_length(3);
    if caps.dead_lettering {
        conn.declare_queue(&dead).await?;
        q = q.dead_letter_exchange(dlx.name.clone());
    }
    conn.declare_queue(&q).await?;
    let producer = conn.producer().routing_key(q.name.clone());
    publish_all(&producer, ["m0", "m1", "m2", "m3", "m4"]).await?;
    wait_for_size(&conn, &q.name, 3, ctx.patience).await?;
    let mut consumer = conn.consumer([q.clone()]).build().await?;
    let got = receive_texts(&mut consumer, 3, ctx.patience).await?;
    assert_eq!(got, ["m2", "m3", "m4"], "the oldest messages are dropped");
    assert_quiet(&mut consumer, QUIET, "only 3 were kept").await;
    if caps.dead_lettering {
        let mut dead_consumer = conn.consumer([dead.clone()]).build().await?;
        let mut bodies = Vec::new();
        for d in next_deliveries(&mut dead_consumer, 2, ctx.patience).await {
            assert_death(&d, &q.name, "maxlen");
            bodies.push(d.decode::<String>()?);
            d.ack().await?;
        }
        assert_eq!(bodies, ["m0", "m1"]);
        assert_quiet(&mut dead_consumer, QUIET, "only the dropped ones").await;
    }
    Ok(())
}

/// A lease that ends frees the prefetch slot of the delivery kept past it: a consumer at its
/// prefetch limit (1) with an unsettled delivery gets the message again, redelivered, once the
/// visibility timeout passes, instead of waiting forever; the stale delivery can no longer be
/// acked and the redelivered one can. Needs
/// [`Capabilities::visibility_timeout`](crate::Capabilities).
pub async fn lease_end_frees_prefetch_slot(ctx: Ctx) -> Result<()> {
    let conn = open(&ctx).await?;
    if !conn.capabilities().visibility_timeout {
        return skipped("lease_end_frees_prefetch_slot", "visibility_timeout");
    }
    let q = Queue::new(ctx.name("q"));
    let mut consumer = conn
        .consumer([q.clone()])
        .prefetch(1)
        .visibility_timeout(Duration::from_millis(100))
        .build()
        .await?;
    conn.producer()
        .routing_key(q.name.clone())
        .publish(&1)
        .await?;
    let kept = next_delivery(&mut consumer, ctx.patience).await;
    // At the prefetch limit with `kept` unsettled: the lease ends, the message comes back to
    // this same consumer instead of the stream waiting forever.
    let again = next_delivery(&mut consumer, ctx.patience).await;
    assert!(again.redelivered());
    assert!(
        kept.ack().await.is_err(),
        "the stale delivery is no longer pending"
    );
    again.ack().await?;
    assert_eq!(conn.queue_size(&q.name).await?, 0);
    Ok(())
}
