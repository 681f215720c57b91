//! Settlement: ack, reject, requeue, basic get, no-ack, and what returns to the queue when a
//! consumer is dropped, closed or loses its channel.

use std::collections::BTreeMap;

use futures::StreamExt;
use tokio::time::timeout;

use super::Ctx;
use super::fixtures::*;
use crate::error::{ErrorKind, Result};
use crate::{Queue, Value};

/// Acked messages are gone: the queue is empty and nothing is redelivered, neither to the same
/// consumer nor to a new one after the first is dropped.
pub async fn ack_removes(ctx: Ctx) -> Result<()> {
    let (conn, q) = scenario_queue(&ctx).await?;
    let mut consumer = conn.consumer([q.clone()]).build().await?;
    let producer = conn.producer().routing_key(q.name.clone());
    publish_all(&producer, ["m1", "m2", "m3"]).await?;
    let got = receive_texts(&mut consumer, 3, ctx.patience).await?;
    assert_eq!(got, ["m1", "m2", "m3"]);
    assert_quiet(&mut consumer, QUIET, "acked messages do not come back").await;
    drop(consumer);
    assert_eq!(conn.queue_size(&q.name).await?, 0);
    let other = ctx.connect().await?;
    let mut consumer = other.consumer([q.clone()]).build().await?;
    assert_quiet(
        &mut consumer,
        QUIET,
        "acked messages stay gone after a drop",
    )
    .await;
    assert_eq!(conn.queue_size(&q.name).await?, 0);
    Ok(())
}

/// A rejected message (queue without dead-letter exchange) is dropped: it never comes back,
/// to the same consumer or to another after the first is dropped.
pub async fn reject_drops(ctx: Ctx) -> Result<()> {
    let (conn, q) = scenario_queue(&ctx).await?;
    let mut consumer = conn.consumer([q.clone()]).build().await?;
    conn.producer()
        .routing_key(q.name.clone())
        .publish(&"bad")
        .await?;
    let d = next_delivery(&mut consumer, ctx.patience).await;
    assert_eq!(d.decode::<String>()?, "bad");
    d.reject().await?;
    assert_quiet(&mut consumer, QUIET, "a rejected message is dropped").await;
    drop(consumer);
    let other = ctx.connect().await?;
    let mut consumer = other.consumer([q.clone()]).build().await?;
    assert_quiet(&mut consumer, QUIET, "a rejected message stays dropped").await;
    assert_eq!(conn.queue_size(&q.name).await?, 0);
    Ok(())
}

/// A requeued message is delivered again, intact, with `redelivered()` true (and the first
/// delivery had it false); once acked it is gone.
pub async fn requeue_redelivers(ctx: Ctx) -> Result<()> {
    let (conn, q) = scenario_queue(&ctx).await?;
    let mut consumer = conn.consumer([q.clone()]).build().await?;
    conn.producer()
        .routing_key(q.name.clone())
        .message(&"again")
        .header("h", "v")
        .send()
        .await?;
    let first = next_delivery(&mut consumer, ctx.patience).await;
    assert!(!first.redelivered(), "first delivery is not redelivered");
    first.requeue().await?;
    let second = next_delivery(&mut consumer, ctx.patience).await;
    assert!(
        second.redelivered(),
        "requeued delivery is marked redelivered"
    );
    assert_eq!(second.decode::<String>()?, "again");
    assert_eq!(second.headers().get("h"), Some(&Value::from("v")));
    assert_eq!(second.info().routing_key, q.name);
    second.ack().await?;
    assert_quiet(&mut consumer, QUIET, "an acked requeued message is gone").await;
    Ok(())
}

/// A requeued message keeps its place: with `a`, `b`, `c` queued and a consumer holding one
/// message at a time, requeueing `a` makes it the next delivery again, before `b` and `c`
/// (a peek leaves the queue as it was). The same for a message got with `basic_get`.
pub async fn requeue_keeps_place(ctx: Ctx) -> Result<()> {
    let (conn, q) = declared_queue(&ctx).await?;
    let producer = conn.producer().routing_key(q.name.clone());
    publish_all(&producer, ["a", "b", "c"]).await?;
    wait_for_size(&conn, &q.name, 3, ctx.patience).await?;
    let mut consumer = conn.consumer([q.clone()]).prefetch(1).build().await?;
    let first = next_delivery(&mut consumer, ctx.patience).await;
    assert_eq!(
        first.decode::<String>()?,
        "a",
        "the oldest message comes first"
    );
    first.requeue().await?;
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = next_delivery(&mut consumer, ctx.patience).await;
        got.push((d.decode::<String>()?, d.redelivered()));
        d.ack().await?;
    }
    assert_eq!(
        got,
        [("a".into(), true), ("b".into(), false), ("c".into(), false)],
        "a requeued message is delivered again before the ones queued after it"
    );
    consumer.close().await?;

    publish_all(&producer, ["d", "e"]).await?;
    wait_for_size(&conn, &q.name, 2, ctx.patience).await?;
    let channel = conn.channel().await?;
    let got = channel.get(&q.name, false).await?.expect("d is ready"); // ok: a conformance assertion
    assert_eq!(got.decode::<String>()?, "d");
    got.requeue().await?;
    wait_for_size(&conn, &q.name, 2, ctx.patience).await?;
    let again = channel.get(&q.name, false).await?.expect("d is back"); // ok: a conformance assertion
    assert_eq!(
        (again.decode::<String>()?, again.redelivered()),
        ("d".into(), true),
        "a requeued got message is got again first"
    );
    again.ack().await?;
    Ok(())
}

/// Unacked messages of a consumer that is dropped return to the queue and are delivered to
/// another consumer, intact and marked redelivered; late acks of the dropped consumer's
/// deliveries do not remove them. Needs [`Capabilities::restore_on_drop`](crate::Capabilities).
pub async fn unacked_return_on_drop(ctx: Ctx) -> Result<()> {
    let conn = open(&ctx).await?;
    if !conn.capabilities().restore_on_drop {
        return skipped("unacked_return_on_drop", "restore_on_drop");
    }
    let q = Queue::new(ctx.name("q"));
    let mut a = conn.consumer([q.clone()]).build().await?;
    let producer = conn.producer().routing_key(q.name.clone());
    publish_all(&producer, ["m1", "m2", "m3"]).await?;
    let held = next_deliveries(&mut a, 3, ctx.patience).await;
    drop(a);
    wait_for_size(&conn, &q.name, 3, ctx.patience).await?;
    for d in held {
        stale_ack(d).await;
    }
    assert_eq!(
        conn.queue_size(&q.name).await?,
        3,
        "late acks after the drop removed restored messages"
    );
    let other = ctx.connect().await?;
    let mut b = other.consumer([q.clone()]).build().await?;
    let again = next_deliveries(&mut b, 3, ctx.patience).await;
    let mut bodies = Vec::new();
    for d in again {
        assert!(
            d.redelivered(),
            "restored message is redelivered: {}",
            describe(&d)
        );
        bodies.push(d.decode::<String>()?);
        d.ack().await?;
    }
    bodies.sort();
    assert_eq!(bodies, ["m1", "m2", "m3"]);
    assert_quiet(&mut b, QUIET, "each restored message comes back once").await;
    Ok(())
}

/// [`Consumer::close`](crate::Consumer::close) returns every message the consumer took and did not
/// settle to the queue (the one handed out and those prefetched but not yet handed out) before
/// another consumer takes them; the late ack of the closed consumer's delivery does not remove it.
pub async fn unacked_return_on_close(ctx: Ctx) -> Result<()> {
    let (conn, q) = declared_queue(&ctx).await?;
    let producer = conn.producer().routing_key(q.name.clone());
    publish_all(&producer, ["m1", "m2", "m3"]).await?;
    let mut a = conn.consumer([q.clone()]).prefetch(10).build().await?;
    let held = next_delivery(&mut a, ctx.patience).await;
    assert_eq!(held.decode::<String>()?, "m1");
    a.close().await?;
    wait_for_size(&conn, &q.name, 3, ctx.patience).await?;
    stale_ack(held).await;
    assert_eq!(
        conn.queue_size(&q.name).await?,
        3,
        "a late ack after close removed a restored message"
    );
    let other = ctx.connect().await?;
    let mut b = other.consumer([q.clone()]).build().await?;
    let mut bodies = Vec::new();
    for d in next_deliveries(&mut b, 3, ctx.patience).await {
        if d.decode::<String>()? == "m1" {
            assert!(d.redelivered(), "the unsettled delivery is redelivered");
        }
        bodies.push(d.decode::<String>()?);
        d.ack().await?;
    }
    bodies.sort();
    assert_eq!(bodies, ["m1", "m2", "m3"]);
    assert_quiet(&mut b, QUIET, "each restored message comes back once").await;
    Ok(())
}

/// Closing a consumer's channel ([`Consumer::channel`](crate::Consumer::channel)) ends its stream,
/// even while the consumer is at its prefetch limit, and returns the unsettled messages to the
/// queue.
pub async fn channel_close_ends_stream(ctx: Ctx) -> Result<()> {
    let (conn, q) = declared_queue(&ctx).await?;
    let producer = conn.producer().routing_key(q.name.clone());
    publish_all(&producer, ["m1", "m2"]).await?;
    let mut consumer = conn.consumer([q.clone()]).prefetch(1).build().await?;
    let held = next_delivery(&mut consumer, ctx.patience).await;
    assert_quiet(&mut consumer, QUIET, "prefetch 1 holds one").await;
    consumer.channel().close().await?;
    match timeout(ctx.patience, consumer.next()).await {
        Ok(None) => {}
        Ok(Some(Err(e))) => assert_eq!(
            e.error.kind(),
            ErrorKind::Closed,
            "a closed channel's stream ends or says it is closed: {e}"
        ),
        Ok(Some(Ok(d))) => panic!("a closed channel delivered {}", describe(&d)),
        Err(_) => panic!(
            "the stream of a closed channel did not end within {:?}",
            ctx.patience
        ),
    }
    stale_ack(held).await;
    wait_for_size(&conn, &q.name, 2, ctx.patience).await?;
    Ok(())
}

/// Basic get ([`Channel::get`](crate::Channel::get)): `None` on an empty queue; `Some` with the
/// message otherwise; a got message is settled like any delivery (requeue brings it back
/// redelivered, ack and reject remove it); a no-ack get removes the message at once.
pub async fn basic_get(ctx: Ctx) -> Result<()> {
    let (conn, q) = declared_queue(&ctx).await?;
    let channel = conn.channel().await?;
    assert!(channel.get(&q.name, false).await?.is_none(), "empty queue");
    let producer = conn.producer().routing_key(q.name.clone());
    producer.publish(&"m1").await?;
    producer.publish(&"m2").await?;
    let d = channel.get(&q.name, false).await?.expect("m1"); // ok: a conformance assertion
    assert_eq!(d.decode::<String>()?, "m1");
    assert!(!d.redelivered());
    assert!(!d.is_no_ack());
    assert_eq!(d.info().queue, q.name);
    d.requeue().await?;
    wait_for_size(&conn, &q.name, 2, ctx.patience).await?;
    let mut got = BTreeMap::new();
    for _ in 0..2 {
        let d = channel.get(&q.name, false).await?.expect("a message"); // ok: a conformance assertion
        got.insert(d.decode::<String>()?, d);
    }
    let m1 = got.remove("m1").expect("m1 is back"); // ok: a conformance assertion
    let m2 = got.remove("m2").expect("m2 is there"); // ok: a conformance assertion
    assert!(m1.redelivered(), "a requeued got message is redelivered");
    assert!(!m2.redelivered());
    m1.ack().await?;
    m2.reject().await?;
    assert!(
        channel.get(&q.name, false).await?.is_none(),
        "acked and rejected"
    );
    assert_eq!(conn.queue_size(&q.name).await?, 0);

    producer.publish(&"m3").await?;
    let d = channel.get(&q.name, true).await?.expect("m3"); // ok: a conformance assertion
    assert!(d.is_no_ack());
    assert_eq!(d.decode::<String>()?, "m3");
    assert_eq!(conn.queue_size(&q.name).await?, 0, "a no-ack get removes");
    d.ack().await?;
    channel.close().await?;
    let mut consumer = conn.consumer([q.clone()]).build().await?;
    assert_quiet(
        &mut consumer,
        QUIET,
        "nothing comes back after a no-ack get",
    )
    .await;
    Ok(())
}

/// No-ack consumers: messages are removed as they are delivered (settling is a no-op), so
/// nothing comes back after the consumer is dropped.
pub async fn no_ack(ctx: Ctx) -> Result<()> {
    let (conn, q) = declared_queue(&ctx).await?;
    let producer = conn.producer().routing_key(q.name.clone());
    publish_all(&producer, 0..5u32).await?;
    let mut consumer = conn.consumer([q.clone()]).no_ack(true).build().await?;
    let delivered = next_deliveries(&mut consumer, 5, ctx.patience).await;
    assert_eq!(conn.queue_size(&q.name).await?, 0);
    let mut got = Vec::new();
    for (i, d) in delivered.into_iter().enumerate() {
        assert!(d.is_no_ack());
        got.push(d.decode::<u32>()?);
        if i % 2 == 0 {
            d.ack().await?;
        } // The others are dropped unsettled: no-ack deliveries need nothing.
    }
    assert_eq!(got, [0, 1, 2, 3, 4]);
    drop(consumer);
    let other = ctx.connect().await?;
    let mut consumer = other.consumer([q.clone()]).build().await?;
    assert_quiet(&mut consumer, QUIET, "no-ack deliveries never come back").await;
    Ok(())
}

/// A delivery dropped unsettled (e.g. `?` on a decode error in a handler) is requeued and
/// frees its prefetch slot: a consumer with prefetch 1 gets it again, redelivered and intact,
/// instead of stalling.
pub async fn dropped_delivery_requeued(ctx: Ctx) -> Result<()> {
    let (conn, q) = scenario_queue(&ctx).await?;
    let mut consumer = conn.consumer([q.clone()]).prefetch(1).build().await?;
    conn.producer()
        .routing_key(q.name.clone())
        .publish(&1)
        .await?;
    let d = next_delivery(&mut consumer, ctx.patience).await;
    drop(d);
    let again = next_delivery(&mut consumer, ctx.patience).await;
    assert!(
        again.redelivered(),
        "a dropped delivery comes back redelivered"
    );
    assert_eq!(again.decode::<i32>()?, 1);
    again.ack().await?;
    Ok(())
}

/// Polling a consumer whose stream ended (its channel closed) does not panic: the stream ends
/// (after at most one error saying the channel is closed) and stays ended.
pub async fn polling_after_end(ctx: Ctx) -> Result<()> {
    let (conn, q) = scenario_queue(&ctx).await?;
    let mut consumer = conn.consumer([q.clone()]).build().await?;
    consumer.channel().close().await?;
    match timeout(ctx.patience, consumer.next()).await {
        Ok(None) => {}
        Ok(Some(Err(e))) => {
            assert_eq!(
                e.error.kind(),
                ErrorKind::Closed,
                "a closed channel's stream ends or says it is closed: {e}"
            );
            let after = timeout(ctx.patience, consumer.next()).await;
            assert!(
                matches!(after, Ok(None)),
                "the stream ends after saying it is closed"
            );
        }
        Ok(Some(Ok(d))) => panic!("a closed channel delivered {}", describe(&d)),
        Err(_) => panic!(
            "the stream of a closed channel did not end within {:?}",
            ctx.patience
        ),
    }
    let again = timeout(ctx.patience, consumer.next()).await;
    assert!(
        matches!(again, Ok(None)),
        "an ended stream stays ended when polled again"
    );
    Ok(())
}
