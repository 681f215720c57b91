//! Entities: declaring (idempotent, conflicts), sizes and purges, deleting, and asking whether
//! queues and exchanges exist.

use std::time::Duration;

use tokio::time::Instant;

use super::Ctx;
use super::fixtures::*;
use crate::error::{Error, ErrorKind, Result};
use crate::{Exchange, Queue};

/// `queue_size` counts ready messages only (not delivered, unsettled ones); `purge` removes the
/// ready ones, returns how many, and leaves the queue empty, while an unsettled message
/// survives a purge and can be requeued.
pub async fn purge_and_size(ctx: Ctx) -> Result<()> {
    let (conn, q) = declared_queue(&ctx).await?;
    assert_eq!(conn.queue_size(&q.name).await?, 0);
    assert_eq!(conn.purge(&q.name).await?, 0, "purging an empty queue");
    let producer = conn.producer().routing_key(q.name.clone());
    publish_all(&producer, 0..5u32).await?;
    wait_for_size(&conn, &q.name, 5, ctx.patience).await?;
    assert_eq!(conn.purge(&q.name).await?, 5);
    assert_eq!(conn.queue_size(&q.name).await?, 0);
    let mut consumer = conn.consumer([q.clone()]).build().await?;
    assert_quiet(&mut consumer, QUIET, "a purged queue is empty").await;
    consumer.close().await?;

    publish_all(&producer, 0..3u32).await?;
    let channel = conn.channel().await?;
    let held = channel
        .get(&q.name, false)
        .await?
        .expect("a ready message to get"); // ok: a conformance assertion
    wait_for_size(&conn, &q.name, 2, ctx.patience).await?;
    assert_eq!(
        conn.purge(&q.name).await?,
        2,
        "purge counts ready messages only"
    );
    assert_eq!(conn.queue_size(&q.name).await?, 0);
    held.requeue().await?;
    wait_for_size(&conn, &q.name, 1, ctx.patience).await?;
    assert_eq!(conn.purge(&q.name).await?, 1);
    channel.close().await?;
    Ok(())
}

/// Deleting a queue returns how many ready messages it held and removes its bindings:
/// messages published to its exchange or its name afterwards do not wait in a ghost, a new
/// queue of the same name starts empty, and the old binding does not route to the new queue.
/// Deleting an empty or missing queue returns 0.
pub async fn queue_delete(ctx: Ctx) -> Result<()> {
    let conn = open(&ctx).await?;
    let x = Exchange::direct(ctx.name("x"));
    let q = bound(&ctx, "q", &x, "k");
    conn.declare_queue(&q).await?;
    let producer = conn.producer().exchange(x).routing_key("k");
    publish_all(&producer, ["old-1", "old-2", "old-3"]).await?;
    wait_for_size(&conn, &q.name, 3, ctx.patience).await?;
    assert_eq!(conn.delete_queue(&q.name).await?, 3);
    producer.publish(&"to-the-exchange").await?;
    let by_name = conn.producer().routing_key(q.name.clone());
    if !conn.capabilities().implicit_queues {
        // Where a publish by name creates the queue (kombu's Redis), this one would be a
        // message for the new queue, not a ghost.
        by_name.publish(&"to-the-name").await?;
    }

    // The same name, now bound to nothing but the default exchange.
    let unbound = Queue::new(q.name.clone());
    let other = ctx.connect().await?;
    let mut consumer = other.consumer([unbound.clone()]).build().await?;
    assert_eq!(
        other.queue_size(&q.name).await?,
        0,
        "a new queue starts empty"
    );
    assert_quiet(&mut consumer, QUIET, "a new queue starts empty").await;
    producer.publish(&"old-binding").await?;
    by_name.publish(&"fresh").await?;
    let d = next_delivery(&mut consumer, ctx.patience).await;
    assert_eq!(
        d.decode::<String>()?,
        "fresh",
        "the deleted queue's binding must not route to the new queue"
    );
    d.ack().await?;
    assert_quiet(&mut consumer, QUIET, "only the fresh message").await;
    consumer.close().await?;
    assert_eq!(
        other.delete_queue(&q.name).await?,
        0,
        "deleting an empty queue"
    );
    assert_eq!(
        other.delete_queue(&q.name).await?,
        0,
        "deleting a missing queue"
    );
    Ok(())
}

/// Declarations are idempotent: redeclaring an identical exchange or queue succeeds and keeps
/// the queue's messages; declaring an exchange of the same name with another type, or a queue
/// of the same name with other arguments, fails with [`ErrorKind::PreconditionFailed`].
pub async fn declare_idempotent(ctx: Ctx) -> Result<()> {
    let conn = open(&ctx).await?;
    let x = Exchange::direct(ctx.name("x"));
    let q = bound(&ctx, "q", &x, "k");
    conn.declare_queue(&q).await?;
    conn.producer()
        .exchange(x.clone())
        .routing_key("k")
        .publish(&"kept")
        .await?;
    conn.declare_exchange(&x).await?;
    conn.declare_queue(&q).await?;
    let other = ctx.connect().await?;
    other.declare_exchange(&x).await?;
    other.declare_queue(&q).await?;
    wait_for_size(&conn, &q.name, 1, ctx.patience).await?;
    // A conflicting declaration may close the channel it was made on (AMQP), so use a
    // connection of its own.
    let conflicting = ctx.connect().await?;
    match conflicting
        .declare_exchange(&Exchange::fanout(x.name.clone()))
        .await
    {
        Err(e) => assert_eq!(
            e.kind(),
            ErrorKind::PreconditionFailed,
            "redeclaring with another type: {e}"
        ),
        Ok(()) => panic!("redeclaring a direct exchange as fanout must fail"),
    }
    // The same for a queue redeclared with other arguments.
    let conflicting = ctx.connect().await?;
    match conflicting
        .declare_queue(&Queue::new(q.name.clone()).max_length(5))
        .await
    {
        Err(e) => assert_eq!(
            e.kind(),
            ErrorKind::PreconditionFailed,
            "redeclaring a queue with other arguments: {e}"
        ),
        Ok(()) => panic!("redeclaring a queue with another x-max-length must fail"),
    }
    expect_queue(&conn, &q.name, &["kept"], &ctx).await?;
    Ok(())
}

/// A conflicting redeclaration says what differs, once: the setting, the value the entity
/// exists with and the value asked for (a queue's `durable`, an x-argument, an exchange's
/// type).
pub async fn declare_conflict_says_what_differs(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    let name = ctx.name("q");
    conn.declare_queue(&Queue::new(name.clone()).durable(true))
        .await?;
    // A conflicting declaration may close the channel it was made on (AMQP), so each uses a
    // connection of its own.
    let conflict = |queue: Queue| {
        let ctx = ctx.clone();
        async move {
            match ctx.connect().await?.declare_queue(&queue).await {
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::PreconditionFailed, "{e}");
                    Ok::<String, Error>(e.to_string())
                }
                Ok(()) => panic!("redeclaring {queue:?} must fail"),
            }
        }
    };
    let said: String = conflict(Queue::new(name.clone()).durable(false)).await?;
    assert!(
        said.contains(&format!("{name:?}")),
        "names the queue: {said}"
    );
    assert!(said.contains("durable=true"), "names what it is: {said}");
    assert!(
        said.contains("durable=false"),
        "names what was asked: {said}"
    );
    assert_eq!(said.matches("durable").count(), 2, "says it once: {said}");

    let said: String = conflict(Queue::new(name.clone()).durable(true).max_priority(5)).await?;
    assert!(said.contains("x-max-priority=none"), "{said}");
    assert!(said.contains("x-max-priority=5"), "{said}");
    assert_eq!(said.matches("x-max-priority").count(), 2, "{said}");
    assert!(!said.contains("durable"), "names only what differs: {said}");

    let x = ctx.name("x");
    conn.declare_exchange(&Exchange::direct(x.clone())).await?;
    let said = match ctx
        .connect()
        .await?
        .declare_exchange(&Exchange::fanout(x.clone()))
        .await
    {
        Err(e) => e.to_string(),
        Ok(()) => panic!("redeclaring a direct exchange as fanout must fail"),
    };
    assert!(
        said.contains(&format!("{x:?}")),
        "names the exchange: {said}"
    );
    assert!(said.contains("type=direct"), "{said}");
    assert!(said.contains("type=fanout"), "{said}");
    assert_eq!(said.matches("direct").count(), 1, "says it once: {said}");
    conn.delete_queue(&name).await?;
    conn.delete_exchange(&x).await?;
    Ok(())
}

/// A queue exists when the transport knows it:
/// [`Connection::queue_exists`](crate::Connection::queue_exists) says `false` for a name nobody
/// declared (and asking creates nothing), `true` once declared, and `false` again once deleted.
/// `queue_size` and `purge` of a queue that exists nowhere fail with [`ErrorKind::NotFound`] on
/// every transport, while an empty declared queue has size 0.
pub async fn missing_queue(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    let name = ctx.name("missing");
    let not_found = |what: &str, result: Result<u64>| match result {
        Err(e) => assert_eq!(
            e.kind(),
            ErrorKind::NotFound,
            "{what} of a queue that exists nowhere: {e}"
        ),
        Ok(n) => panic!("{what} of a queue that exists nowhere gave {n}, not NotFound"),
    };
    assert!(!conn.queue_exists(&name).await?, "nobody declared it");
    not_found("queue_size", conn.queue_size(&name).await);
    not_found("purge", conn.purge(&name).await);
    assert!(
        !conn.queue_exists(&name).await?,
        "asking for size or purging creates nothing"
    );
    // The connection still works after the failures (AMQP closes the channel on a 404).
    let q = Queue::new(name.clone());
    conn.declare_queue(&q).await?;
    assert!(conn.queue_exists(&name).await?, "declared");
    assert_eq!(conn.queue_size(&name).await?, 0, "an empty declared queue");
    assert_eq!(
        conn.purge(&name).await?,
        0,
        "purging an empty declared queue"
    );
    conn.producer()
        .message(&"here")
        .routing_key(name.clone())
        .mandatory(conn.capabilities().mandatory)
        .send()
        .await?;
    wait_for_size(&conn, &name, 1, ctx.patience).await?;
    conn.delete_queue(&name).await?;
    assert!(!conn.queue_exists(&name).await?, "deleted");
    not_found("queue_size after delete", conn.queue_size(&name).await);

    // Publishing by name to a queue that exists nowhere: refused with `mandatory`, stored where
    // the transport keeps messages for undeclared queues (as Python kombu), dropped elsewhere.
    if conn.capabilities().mandatory {
        let refused = conn
            .producer()
            .message(&"refused")
            .routing_key(name.clone())
            .mandatory(true)
            .send()
            .await;
        match refused {
            Err(e) => assert_eq!(e.kind(), ErrorKind::Unroutable, "mandatory to nowhere: {e}"),
            Ok(()) => panic!("a mandatory publish to a queue that exists nowhere succeeded"), // ok: a conformance assertion
        }
        not_found(
            "queue_size after a refused publish",
            conn.queue_size(&name).await,
        );
    }
    conn.producer()
        .message(&"kept")
        .routing_key(name.clone())
        .send()
        .await?;
    if conn.capabilities().implicit_queues {
        wait_for_size(&conn, &name, 1, ctx.patience).await?;
        assert!(conn.queue_exists(&name).await?, "stored, so it exists");
        conn.delete_queue(&name).await?;
    } else {
        assert!(!conn.queue_exists(&name).await?, "dropped, nothing created");
    }
    Ok(())
}

/// An exchange exists when the transport knows it:
/// [`Connection::exchange_exists`](crate::Connection::exchange_exists) says `true` for the default
/// exchange, `false` for a name nobody declared (asking creates nothing and leaves the channel
/// asked, and a consumer on it, working), `true` once declared (on another connection too, whatever
/// its type), and `false` again once deleted.
pub async fn missing_exchange(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    let name = ctx.name("missing-x");
    assert!(
        conn.exchange_exists("").await?,
        "the default exchange always exists"
    );
    assert!(!conn.exchange_exists(&name).await?, "nobody declared it");
    assert!(
        !conn.exchange_exists(&name).await?,
        "asking creates nothing"
    );

    // A consumer on the channel that was asked still gets its messages.
    let q = Queue::new(ctx.name("q"));
    conn.declare_queue(&q).await?;
    let mut consumer = conn.consumer([q.clone()]).build().await?;
    assert!(
        !consumer.channel().exchange_exists(&name).await?,
        "asked on a consumer's channel"
    );
    conn.producer()
        .message(&"still here")
        .routing_key(q.name.clone())
        .send()
        .await?;
    let delivery = next_delivery(&mut consumer, ctx.patience).await;
    assert_eq!(delivery.decode::<String>()?, "still here");
    delivery.ack().await?;
    consumer.close().await?;

    let caps = conn.capabilities();
    let kind = [crate::ExchangeKind::Topic, crate::ExchangeKind::Direct]
        .into_iter()
        .find(|k| caps.supports_exchange(*k));
    let Some(kind) = kind else {
        return skipped("missing_exchange", "direct or topic exchange");
    };
    conn.declare_exchange(&Exchange::new(name.clone(), kind))
        .await?;
    assert!(conn.exchange_exists(&name).await?, "declared");
    // Another connection may cache what it learnt for a moment (Redis, for a second): it
    // sees the change within the patience.
    let other = ctx.connect().await?;
    let sees = async |exists: bool| -> Result<bool> {
        let deadline = Instant::now() + ctx.patience;
        loop {
            if other.exchange_exists(&name).await? == exists {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert!(sees(true).await?, "declared, seen from another connection");
    conn.delete_exchange(&name).await?;
    assert!(!conn.exchange_exists(&name).await?, "deleted");
    assert!(sees(false).await?, "deleted, seen from another connection");
    other.close().await?;
    conn.delete_queue(&q.name).await?;
    Ok(())
}

/// The bodies of peeked envelopes (JSON strings, as [`publish_all`] sends them).
fn peeked_bodies(seen: &[crate::transport::Envelope]) -> Result<Vec<String>> {
    seen.iter()
        .map(|e| {
            serde_json::from_slice::<String>(&e.message.body).map_err(|err| {
                Error::new(
                    ErrorKind::Codec,
                    format!("a peeked body is not a string: {err}"),
                )
            })
        })
        .collect()
}

/// `queue_stats` counts ready messages as `queue_size` does and, where the transport reports
/// it, the unsettled ones. Where [`Capabilities::peek`](crate::Capabilities::peek) is on,
/// `peek` shows ready messages in the order a consumer gets them and takes none: the size
/// stays, the next take gets the first one peeked, not marked redelivered, and a message
/// taken and unsettled is not shown; elsewhere `peek` is `Unsupported`. A missing queue is
/// `NotFound` for both.
pub async fn stats_and_peek(ctx: Ctx) -> Result<()> {
    let (conn, q) = declared_queue(&ctx).await?;
    let stats = conn.queue_stats(&q.name).await?;
    assert_eq!(stats.ready, 0, "an empty queue: {stats:?}");
    assert!(stats.unacked.is_none_or(|n| n == 0), "{stats:?}");
    let producer = conn.producer().routing_key(q.name.clone());
    publish_all(&producer, ["a", "b", "c"]).await?;
    wait_for_size(&conn, &q.name, 3, ctx.patience).await?;
    let stats = conn.queue_stats(&q.name).await?;
    assert_eq!(stats.ready, 3, "{stats:?}");
    assert!(stats.unacked.is_none_or(|n| n == 0), "{stats:?}");
    let peek = conn.capabilities().peek;
    if peek {
        let seen = conn.peek(&q.name, 2).await?;
        assert_eq!(peeked_bodies(&seen)?, ["a", "b"], "the first two, in order");
        assert!(seen.iter().all(|e| !e.redelivered));
        assert_eq!(
            peeked_bodies(&conn.peek(&q.name, 10).await?)?,
            ["a", "b", "c"]
        );
        assert_eq!(conn.queue_size(&q.name).await?, 3, "a peek takes nothing");
    } else {
        let refused = conn.peek(&q.name, 2).await;
        assert!(
            matches!(&refused, Err(e) if e.kind() == ErrorKind::Unsupported),
            "without the capability, peek is unsupported: {refused:?}"
        );
    }
    let channel = conn.channel().await?;
    let held = channel
        .get(&q.name, false)
        .await?
        .expect("a ready message to get"); // ok: a conformance assertion
    assert_eq!(held.decode::<String>()?, "a");
    assert!(
        !held.redelivered(),
        "a peek does not mark a message redelivered"
    );
    wait_for_size(&conn, &q.name, 2, ctx.patience).await?;
    let stats = conn.queue_stats(&q.name).await?;
    assert_eq!(stats.ready, 2, "{stats:?}");
    assert!(
        stats.unacked.is_none_or(|n| n == 1),
        "one message held: {stats:?}"
    );
    if peek {
        assert_eq!(
            peeked_bodies(&conn.peek(&q.name, 10).await?)?,
            ["b", "c"],
            "a held message is not ready"
        );
    }
    held.ack().await?;
    channel.close().await?;

    let nowhere = ctx.name("nowhere");
    let missing = conn.queue_stats(&nowhere).await;
    assert!(
        matches!(&missing, Err(e) if e.kind() == ErrorKind::NotFound),
        "stats of a missing queue: {missing:?}"
    );
    if peek {
        let missing = conn.peek(&nowhere, 1).await;
        assert!(
            matches!(&missing, Err(e) if e.kind() == ErrorKind::NotFound),
            "a peek at a missing queue: {missing:?}"
        );
    }
    Ok(())
}
