//! Leases: the visibility rule (a taken message records the time of its take or of its last
//! extension; any consumer restores it once that time plus the restorer's own visibility
//! timeout has passed), lease extension, and the handler's lease heartbeat.

use std::time::Duration;

use tokio::sync::mpsc;

use super::Ctx;
use super::fixtures::*;
use crate::error::{ErrorKind, Result};
use crate::{Delivery, Queue};

/// A visibility timeout longer than any scenario runs.
const LONG: Duration = Duration::from_secs(3600);

/// The restorer's timeout decides: a message taken under a long visibility timeout (3,600 s,
/// the stores' default) by a consumer that then goes silent is restored by a consumer whose own
/// timeout is short, once that short timeout has passed since the take (not before), and
/// arrives redelivered; the silent consumer's extension then fails as a stale delivery. Needs
/// [`Capabilities::visibility_timeout`](crate::Capabilities).
pub async fn lease_restored_by_restorers_timeout(ctx: Ctx) -> Result<()> {
    let conn_a = open(&ctx).await?;
    if !conn_a.capabilities().visibility_timeout {
        return skipped("lease_restored_by_restorers_timeout", "visibility_timeout");
    }
    let q = Queue::new(ctx.name("q"));
    let mut a = conn_a
        .consumer([q.clone()])
        .visibility_timeout(LONG)
        .build()
        .await?;
    conn_a
        .producer()
        .routing_key(q.name.clone())
        .publish(&"long job")
        .await?;
    let silent = next_delivery(&mut a, ctx.patience).await;
    assert!(!silent.redelivered());

    let conn_b = ctx.connect().await?;
    let mut b = conn_b
        .consumer([q.clone()])
        .visibility_timeout(VISIBILITY)
        .build()
        .await?;
    assert_quiet(
        &mut b,
        VISIBILITY / 2,
        "the restorer's own timeout has not passed since the take",
    )
    .await;
    let copy = next_delivery(&mut b, ctx.patience).await;
    assert!(
        copy.redelivered(),
        "a message restored by the visibility rule is redelivered"
    );
    assert_eq!(copy.decode::<String>()?, "long job");
    let stale = silent.extend_lease().await;
    assert_eq!(
        stale.as_ref().map_err(crate::Error::kind),
        Err(ErrorKind::StaleDelivery),
        "extending a lease that was restored and taken again: {stale:?}"
    );
    copy.ack().await?;
    stale_ack(silent).await;
    assert_quiet(&mut b, QUIET, "the acked message is gone").await;
    assert_eq!(conn_b.queue_size(&q.name).await?, 0);
    Ok(())
}

/// An extension restarts the lease: a message extended before its visibility timeout passed is
/// not restored when the original timeout passes, only once the timeout has passed since the
/// extension; then another consumer gets it, redelivered. On a transport without leases
/// (AMQP: the broker holds a delivery until its channel closes) an extension succeeds and does
/// nothing.
pub async fn extended_lease_restarts(ctx: Ctx) -> Result<()> {
    let (conn_a, q) = declared_queue(&ctx).await?;
    let mut a = conn_a
        .consumer([q.clone()])
        .visibility_timeout(VISIBILITY)
        .build()
        .await?;
    conn_a
        .producer()
        .routing_key(q.name.clone())
        .publish(&"extended")
        .await?;
    let held = next_delivery(&mut a, ctx.patience).await;
    if !conn_a.capabilities().visibility_timeout {
        held.extend_lease().await?;
        held.ack().await?;
        return skipped("extended_lease_restarts", "visibility_timeout");
    }
    let conn_b = ctx.connect().await?;
    let mut b = conn_b
        .consumer([q.clone()])
        .visibility_timeout(VISIBILITY)
        .build()
        .await?;
    // Half the timeout after the take: extended (half a timeout of slack for a slow machine).
    tokio::time::sleep(VISIBILITY / 2).await;
    held.extend_lease().await?;
    // From the extension (0.5) to 1.2: past the take's timeout (1.0), short of the
    // extension's (1.5).
    assert_quiet(
        &mut b,
        VISIBILITY * 7 / 10,
        "an extended lease is not restored at the take's timeout",
    )
    .await;
    let copy = next_delivery(&mut b, ctx.patience).await;
    assert!(copy.redelivered());
    assert_eq!(copy.decode::<String>()?, "extended");
    copy.ack().await?;
    stale_ack(held).await;
    assert_quiet(&mut b, QUIET, "the acked message is gone").await;
    Ok(())
}

/// The handler style extends the lease of the delivery its handler runs on (by default at a
/// third of the visibility timeout): a handler that runs for three visibility timeouts keeps
/// its message from a second consumer all along, acks it, and nothing is redelivered. On a
/// transport without leases the broker holds the message anyway; the scenario holds there too.
pub async fn heartbeat_keeps_slow_handler(ctx: Ctx) -> Result<()> {
    let (conn_a, q) = declared_queue(&ctx).await?;
    let a = conn_a
        .consumer([q.clone()])
        .visibility_timeout(VISIBILITY)
        // Every fifth of the timeout: a stall of most of a timeout on a loaded machine still
        // leaves an extension in time.
        .lease_heartbeat(VISIBILITY / 5)
        .build()
        .await?;
    let (started_tx, mut started) = mpsc::unbounded_channel::<String>();
    let (done_tx, mut done) = mpsc::unbounded_channel::<()>();
    let consuming = a.consume(move |delivery: Delivery| {
        let started = started_tx.clone();
        let done = done_tx.clone();
        async move {
            let _ = started.send(delivery.decode::<String>()?);
            tokio::time::sleep(VISIBILITY * 3).await;
            delivery.ack().await?;
            let _ = done.send(());
            Ok(())
        }
    });
    let checks = async {
        conn_a
            .producer()
            .routing_key(q.name.clone())
            .publish(&"slow")
            .await?;
        let first = tokio::time::timeout(ctx.patience, started.recv()).await;
        assert_eq!(
            first.ok().flatten().as_deref(),
            Some("slow"),
            "the handler starts"
        );
        let conn_b = ctx.connect().await?;
        let mut b = conn_b
            .consumer([q.clone()])
            .visibility_timeout(VISIBILITY)
            .build()
            .await?;
        assert_quiet(
            &mut b,
            VISIBILITY * 5 / 2,
            "a running handler's lease is kept by the heartbeat",
        )
        .await;
        let finished = tokio::time::timeout(ctx.patience, done.recv()).await;
        assert!(
            matches!(finished, Ok(Some(()))),
            "the slow handler finishes and acks"
        );
        assert_quiet(
            &mut b,
            VISIBILITY + QUIET,
            "the slow handler's acked message never comes back",
        )
        .await;
        assert!(
            tokio::time::timeout(QUIET, started.recv()).await.is_err(),
            "the slow handler ran once"
        );
        Ok::<_, crate::Error>(conn_b)
    };
    // The consumer runs in this task, beside the checks (its future is not `Send`).
    tokio::pin!(consuming);
    let conn_b = tokio::select! {
        ended = &mut consuming => panic!("the consumer ended early: {ended:?}"),
        checked = checks => checked?,
    };
    assert_eq!(conn_b.queue_size(&q.name).await?, 0);
    Ok(())
}

/// An extension moves the consumer's own deadline for the delivery too: a consumer at its
/// prefetch limit (1) that keeps extending its delivery past the visibility timeout neither
/// gets the message again nor loses the delivery, whose ack then succeeds and removes it.
/// Needs [`Capabilities::visibility_timeout`](crate::Capabilities).
pub async fn extension_keeps_prefetch_slot(ctx: Ctx) -> Result<()> {
    let conn = open(&ctx).await?;
    if !conn.capabilities().visibility_timeout {
        return skipped("extension_keeps_prefetch_slot", "visibility_timeout");
    }
    let q = Queue::new(ctx.name("q"));
    let mut consumer = conn
        .consumer([q.clone()])
        .prefetch(1)
        .visibility_timeout(VISIBILITY)
        .build()
        .await?;
    conn.producer()
        .routing_key(q.name.clone())
        .publish(&"kept")
        .await?;
    let held = next_delivery(&mut consumer, ctx.patience).await;
    // Extended every quarter timeout for twice the timeout.
    for _ in 0..8 {
        assert_quiet(
            &mut consumer,
            VISIBILITY / 4,
            "an extended delivery does not come back to its own consumer",
        )
        .await;
        held.extend_lease().await?;
    }
    held.ack().await?;
    assert_quiet(
        &mut consumer,
        VISIBILITY + QUIET,
        "the acked message is gone",
    )
    .await;
    assert_eq!(conn.queue_size(&q.name).await?, 0);
    Ok(())
}
