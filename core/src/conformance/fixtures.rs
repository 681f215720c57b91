//! What the scenarios share: the setup most of them start with (the scenario's connection
//! with tokio's clock paused where it can be, its queue `q`, publishing a list of values) and
//! the checks they end with (the next deliveries, a queue's contents, silence, `x-death`).

use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;
use tokio::time::{Instant, timeout};

use super::Ctx;
use crate::error::{ErrorKind, Result};
use crate::{Connection, ConsumeError, Consumer, Delivery, Exchange, Producer, Queue, Value};

/// How long a check that something does *not* arrive waits.
pub const QUIET: Duration = Duration::from_millis(300);

/// A short real-time TTL for transports whose clock is not tokio's.
pub(super) const SHORT_TTL: Duration = Duration::from_millis(300);

/// A short visibility timeout.
pub(super) const VISIBILITY: Duration = Duration::from_secs(1);

/// Pauses tokio's clock when the transport's time follows it and the test runs on a
/// current-thread runtime (as [`conformance_tests!`](crate::conformance_tests) makes them), so
/// bounded waits, TTLs and visibility timeouts pass in no real time. Returns whether it did.
///
/// Call it at most once per runtime, on a runtime not started paused (tokio panics otherwise).
pub fn pause_clock(conn: &Connection) -> bool {
    let current_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
    let pause = conn.capabilities().tokio_clock && current_thread;
    if pause {
        tokio::time::pause();
    }
    pause
}

/// Notes that a scenario (or part of one) is skipped because the transport says it lacks
/// `capability`; returns `Ok(())` for an early return.
pub(super) fn skipped(scenario: &str, capability: &str) -> Result<()> {
    eprintln!("conformance/{scenario}: skipped, the transport has no {capability}");
    Ok(())
}

/// A short description of a delivery for failure messages.
pub(super) fn describe(d: &Delivery) -> String {
    let body = d.body();
    let shown = &body[..body.len().min(120)];
    format!(
        "{:?} (content type {:?}, body {:?})",
        d.info(),
        d.content_type(),
        String::from_utf8_lossy(shown)
    )
}

/// Receives the next delivery or fails after `patience`.
pub async fn next_delivery(consumer: &mut Consumer, patience: Duration) -> Delivery {
    match timeout(patience, consumer.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => panic!("consumer yielded an error: {e}"),
        Ok(None) => panic!("consumer stream ended"),
        Err(_) => panic!("no delivery within {patience:?}"),
    }
}

/// Receives the next item of the stream, good or refused, or fails after `patience`.
pub(super) async fn next_item(
    consumer: &mut Consumer,
    patience: Duration,
) -> Result<Delivery, ConsumeError> {
    match timeout(patience, consumer.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("consumer stream ended"),
        Err(_) => panic!("no delivery within {patience:?}"),
    }
}

/// Receives `n` deliveries, failing if any takes longer than `patience`.
pub async fn next_deliveries(
    consumer: &mut Consumer,
    n: usize,
    patience: Duration,
) -> Vec<Delivery> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        match timeout(patience, consumer.next()).await {
            Ok(Some(Ok(d))) => out.push(d),
            Ok(Some(Err(e))) => panic!("delivery {i} of {n}: consumer yielded an error: {e}"),
            Ok(None) => panic!("delivery {i} of {n}: consumer stream ended"),
            Err(_) => panic!("delivery {i} of {n}: none within {patience:?}"),
        }
    }
    out
}

/// Checks that nothing arrives at `consumer` within `within`; `what` says what was expected.
pub async fn assert_quiet(consumer: &mut Consumer, within: Duration, what: &str) {
    match timeout(within, consumer.next()).await {
        Err(_) => {}
        Ok(Some(Ok(d))) => panic!("{what}: unexpected delivery {}", describe(&d)),
        Ok(Some(Err(e))) => panic!("{what}: unexpected consumer error {e}"),
        Ok(None) => panic!("{what}: consumer stream ended"),
    }
}

/// Receives `n` JSON strings, acking each; returns them in arrival order.
pub(super) async fn receive_texts(
    consumer: &mut Consumer,
    n: usize,
    patience: Duration,
) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let d = next_delivery(consumer, patience).await;
        out.push(d.decode::<String>()?);
        d.ack().await?;
    }
    Ok(out)
}

/// Consumes the (already declared) queue `queue`, checks it holds exactly `expected` (in any
/// order, each once), acks them, and closes the consumer.
pub(super) async fn expect_queue(
    conn: &Connection,
    queue: &str,
    expected: &[&str],
    ctx: &Ctx,
) -> Result<()> {
    let mut consumer = conn
        .consumer([Queue::new(queue)])
        .declare(false)
        .build()
        .await?;
    let mut got = receive_texts(&mut consumer, expected.len(), ctx.patience).await?;
    got.sort();
    let mut want: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    assert_eq!(got, want, "queue {queue:?} received the wrong messages");
    assert_quiet(
        &mut consumer,
        QUIET,
        &format!("queue {queue:?} should hold only {expected:?}"),
    )
    .await;
    consumer.close().await
}

/// Waits until `queue` holds `expected` ready messages, or fails after `patience`.
pub(super) async fn wait_for_size(
    conn: &Connection,
    queue: &str,
    expected: u64,
    patience: Duration,
) -> Result<()> {
    let start = Instant::now();
    loop {
        let size = conn.queue_size(queue).await?;
        if size == expected {
            return Ok(());
        }
        assert!(
            start.elapsed() < patience,
            "queue {queue:?} holds {size} ready messages, expected {expected} within {patience:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Checks that a dead-lettered delivery carries an `x-death` record for `queue` and `reason`.
pub(super) fn assert_death(d: &Delivery, queue: &str, reason: &str) {
    let deaths = match d.headers().get("x-death") {
        Some(Value::List(list)) => list,
        other => panic!("dead-lettered message has no x-death list: {other:?}"),
    };
    let found = deaths.iter().any(|entry| match entry {
        Value::Map(m) => {
            m.get("queue").and_then(Value::as_str) == Some(queue)
                && m.get("reason").and_then(Value::as_str) == Some(reason)
                && m.get("count").and_then(Value::as_i64).unwrap_or(0) >= 1
        }
        _ => false,
    });
    assert!(
        found,
        "x-death has no entry for queue {queue:?} with reason {reason:?} and count >= 1: {deaths:?}"
    );
}

/// Deterministic pseudo-random bytes (xorshift64*), so no extra dependency is needed.
pub(super) fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Checks that a delivery whose channel is gone cannot be settled into harm: the late ack
/// either succeeds as a no-op or fails as a settlement/closed error.
pub(super) async fn stale_ack(d: Delivery) {
    if let Err(e) = d.ack().await {
        assert!(
            matches!(
                e.error.kind(),
                ErrorKind::Settlement | ErrorKind::StaleDelivery | ErrorKind::Closed
            ),
            "a late ack fails only as a settlement, stale delivery or closed error, not {e}"
        );
    }
}

/// Opens the scenario's connection and calls [`pause_clock`] on it.
pub(super) async fn open(ctx: &Ctx) -> Result<Connection> {
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    Ok(conn)
}

/// The scenario's connection (from [`open`]) and its queue `q`, not declared yet (a consumer
/// declares it).
pub(super) async fn scenario_queue(ctx: &Ctx) -> Result<(Connection, Queue)> {
    Ok((open(ctx).await?, Queue::new(ctx.name("q"))))
}

/// The scenario's connection (from [`open`]) and its queue `q`, declared.
pub(super) async fn declared_queue(ctx: &Ctx) -> Result<(Connection, Queue)> {
    let (conn, q) = scenario_queue(ctx).await?;
    conn.declare_queue(&q).await?;
    Ok((conn, q))
}

/// Publishes each of `values`, in order, with `producer`.
pub(super) async fn publish_all<T: Serialize>(
    producer: &Producer,
    values: impl IntoIterator<Item = T>,
) -> Result<()> {
    for value in values {
        producer.publish(&value).await?;
    }
    Ok(())
}

/// The scenario's queue `what`, bound to `exchange` with `key` (declared with it).
pub(super) fn bound(ctx: &Ctx, what: &str, exchange: &Exchange, key: &str) -> Queue {
    Queue::new(ctx.name(what))
        .exchange(exchange.clone())
        .routing_key(key)
}
