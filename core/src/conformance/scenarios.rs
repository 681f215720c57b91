//! The scenarios. Each is `pub async fn name(ctx: Ctx) -> Result<()>`, documented with what it
//! proves, and listed in [`conformance_tests!`](crate::conformance_tests).
//!
//! Conventions every scenario keeps, so the suite runs unchanged on every transport:
//! - only the public API (`Connection`, `Producer`, `Consumer`, `Delivery`, `Channel`, entities);
//! - every entity is named with [`Ctx::name`], extra connections come from [`Ctx::connect`];
//! - a behaviour the transport's [`Capabilities`](crate::Capabilities) declare missing is
//!   skipped with a note on stderr (and what still must hold without it is checked, e.g. that
//!   messages with priorities are all delivered); everything else is required;
//! - waiting *for* something loops with short waits until [`Ctx::patience`] runs out; showing
//!   that something does *not* happen waits a bounded [`QUIET`] period;
//! - scenarios whose checks wait call [`pause_clock`] first: on transports whose time follows
//!   tokio's clock (memory) they run in no real time, elsewhere they use short real durations.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::time::{Instant, timeout};

use super::Ctx;
use crate::error::{Error, ErrorKind, Result};
use crate::{
    Binding, Connection, ConsumeError, Consumer, Delivery, ErrorAction, Exchange, HeaderMatch,
    Headers, Queue, Value,
};

/// How long a check that something does *not* arrive waits.
pub const QUIET: Duration = Duration::from_millis(300);

/// A short real-time TTL for transports whose clock is not tokio's.
const SHORT_TTL: Duration = Duration::from_millis(300);

/// A short visibility timeout.
const VISIBILITY: Duration = Duration::from_secs(1);

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
fn skipped(scenario: &str, capability: &str) -> Result<()> {
    eprintln!("conformance/{scenario}: skipped, the transport has no {capability}");
    Ok(())
}

/// A short description of a delivery for failure messages.
fn describe(d: &Delivery) -> String {
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
async fn next_item(consumer: &mut Consumer, patience: Duration) -> Result<Delivery, ConsumeError> {
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
async fn receive_texts(
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
async fn expect_queue(conn: &Connection, queue: &str, expected: &[&str], ctx: &Ctx) -> Result<()> {
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
async fn wait_for_size(
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
fn assert_death(d: &Delivery, queue: &str, reason: &str) {
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
fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
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

/// A published JSON value comes back equal, with headers and properties intact, and the
/// delivery info names the exchange, routing key and queue.
pub async fn round_trip(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    let exchange = Exchange::direct(ctx.name("x"));
    let queue = Queue::new(ctx.name("q"))
        .exchange(exchange.clone())
        .routing_key("rk");
    let mut consumer = conn.consumer([queue.clone()]).build().await?;
    conn.producer()
        .exchange(exchange.clone())
        .message(&serde_json::json!({"hello": "world", "n": 1}))
        .routing_key("rk")
        .header("h1", "v1")
        .header("n", 7)
        .correlation_id("cid-1")
        .reply_to("replies")
        .message_id("mid-1")
        .priority(0)
        .send()
        .await?;
    let d = next_delivery(&mut consumer, ctx.patience).await;
    let value: serde_json::Value = d.decode()?;
    assert_eq!(value, serde_json::json!({"hello": "world", "n": 1}));
    assert_eq!(d.content_type(), Some("application/json"));
    assert_eq!(d.message().content_encoding.as_deref(), Some("utf-8"));
    assert_eq!(d.headers().get("h1"), Some(&crate::Value::from("v1")));
    assert_eq!(d.headers().get("n"), Some(&crate::Value::Int(7)));
    let p = d.properties();
    assert_eq!(p.correlation_id.as_deref(), Some("cid-1"));
    assert_eq!(p.reply_to.as_deref(), Some("replies"));
    assert_eq!(p.message_id.as_deref(), Some("mid-1"));
    assert_eq!(d.info().exchange, exchange.name);
    assert_eq!(d.info().routing_key, "rk");
    assert_eq!(d.info().queue, queue.name);
    assert!(!d.redelivered());
    d.ack().await?;
    assert_eq!(conn.queue_size(&queue.name).await?, 0);
    Ok(())
}

/// Direct exchange: a message goes to every queue bound with a key equal to its routing key and
/// to no other; two queues bound with the same key both get it; a key nobody bound reaches no
/// queue.
pub async fn direct_routing(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    let caps = conn.capabilities();
    if !caps.supports_exchange(crate::ExchangeKind::Direct) {
        return skipped("direct_routing", "direct exchanges");
    }
    let x = Exchange::direct(ctx.name("x"));
    let qa = Queue::new(ctx.name("qa"))
        .exchange(x.clone())
        .routing_key("a");
    let qb = Queue::new(ctx.name("qb"))
        .exchange(x.clone())
        .routing_key("b");
    let qa2 = Queue::new(ctx.name("qa2"))
        .exchange(x.clone())
        .routing_key("a");
    for q in [&qa, &qb, &qa2] {
        conn.declare_queue(q).await?;
    }
    let producer = conn.producer().exchange(x);
    producer.message(&"to-a").routing_key("a").send().await?;
    producer.message(&"to-b").routing_key("b").send().await?;
    producer.message(&"to-c").routing_key("c").send().await?;
    producer.message(&"to-a-2").routing_key("a").send().await?;
    expect_queue(&conn, &qa.name, &["to-a", "to-a-2"], &ctx).await?;
    expect_queue(&conn, &qb.name, &["to-b"], &ctx).await?;
    expect_queue(&conn, &qa2.name, &["to-a", "to-a-2"], &ctx).await?;
    Ok(())
}

/// Topic exchange with RabbitMQ semantics: `*` matches exactly one word, `#` zero or more
/// (`a.#` matches `a`, `#.c` matches `c`, `*.b` does not match `a.x.b`), and a queue with
/// several bindings that all match a message receives it once.
pub async fn topic_routing(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    let caps = conn.capabilities();
    if !caps.supports_exchange(crate::ExchangeKind::Topic) {
        return skipped("topic_routing", "topic exchanges");
    }
    let x = Exchange::topic(ctx.name("x"));
    let bound = |what: &str, key: &str| {
        Queue::new(ctx.name(what))
            .exchange(x.clone())
            .routing_key(key)
    };
    let a_hash = bound("a-hash", "a.#");
    let hash_c = bound("hash-c", "#.c");
    let star_b = bound("star-b", "*.b");
    let star = bound("star", "*");
    let all = bound("all", "#");
    let multi = bound("multi", "a.*")
        .bind(Binding::new(x.name.clone(), "*.b"))
        .bind(Binding::new(x.name.clone(), "#.b"));
    for q in [&a_hash, &hash_c, &star_b, &star, &all, &multi] {
        conn.declare_queue(q).await?;
    }
    let keys = [
        "a", "a.b", "a.b.c", "a.x.b", "b", "c", "x.c", "a.b.c.d", "c.d", "b.a",
    ];
    let producer = conn.producer().exchange(x);
    for key in keys {
        producer.message(&key).routing_key(key).send().await?;
    }
    expect_queue(
        &conn,
        &a_hash.name,
        &["a", "a.b", "a.b.c", "a.x.b", "a.b.c.d"],
        &ctx,
    )
    .await?;
    expect_queue(&conn, &hash_c.name, &["a.b.c", "c", "x.c"], &ctx).await?;
    expect_queue(&conn, &star_b.name, &["a.b"], &ctx).await?;
    expect_queue(&conn, &star.name, &["a", "b", "c"], &ctx).await?;
    expect_queue(&conn, &all.name, &keys, &ctx).await?;
    expect_queue(&conn, &multi.name, &["a.b", "a.x.b", "b"], &ctx).await?;
    Ok(())
}

/// Fanout exchange: every one of five bound queues gets every message exactly once, whatever
/// the binding keys and the message's routing key.
pub async fn fanout_routing(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    let caps = conn.capabilities();
    if !caps.supports_exchange(crate::ExchangeKind::Fanout) {
        return skipped("fanout_routing", "fanout exchanges");
    }
    let x = Exchange::fanout(ctx.name("x"));
    let queues: Vec<Queue> = (0..5)
        .map(|i| {
            Queue::new(ctx.name(&format!("q{i}")))
                .exchange(x.clone())
                .routing_key(format!("binding-key-{i}"))
        })
        .collect();
    for q in &queues {
        conn.declare_queue(q).await?;
    }
    let producer = conn.producer().exchange(x);
    producer
        .message(&"one")
        .routing_key("whatever")
        .send()
        .await?;
    producer.message(&"two").send().await?;
    for q in &queues {
        expect_queue(&conn, &q.name, &["one", "two"], &ctx).await?;
    }
    Ok(())
}

/// Headers exchange: an `x-match: all` binding takes messages whose headers contain every
/// bound header with an equal value (extra headers allowed), an `x-match: any` binding those
/// with at least one; the routing key is ignored. Bindings made through
/// [`Queue::binding_arguments`] and through [`Binding::headers`] behave the same.
pub async fn headers_routing(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    let caps = conn.capabilities();
    if !caps.supports_exchange(crate::ExchangeKind::Headers) {
        return skipped("headers_routing", "headers exchanges");
    }
    let x = Exchange::headers(ctx.name("x"));
    let h = |pairs: &[(&str, &str)]| -> Headers {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect()
    };
    let all_args = Binding::headers(
        x.name.clone(),
        HeaderMatch::All,
        h(&[("format", "pdf"), ("type", "report")]),
    )
    .arguments;
    let q_all = Queue::new(ctx.name("all"))
        .exchange(x.clone())
        .binding_arguments(all_args);
    conn.declare_exchange(&x).await?;
    let q_any = Queue::new(ctx.name("any")).bind(Binding::headers(
        x.name.clone(),
        HeaderMatch::Any,
        h(&[("format", "zip"), ("type", "report")]),
    ));
    conn.declare_queue(&q_all).await?;
    conn.declare_queue(&q_any).await?;

    let producer = conn.producer().exchange(x);
    let messages: [(&str, Headers); 5] = [
        ("m1", h(&[("format", "pdf"), ("type", "report")])),
        ("m2", h(&[("format", "pdf"), ("type", "log")])),
        ("m3", h(&[("format", "zip")])),
        ("m4", Headers::new()),
        (
            "m5",
            h(&[("format", "pdf"), ("type", "report"), ("extra", "1")]),
        ),
    ];
    for (body, headers) in messages {
        producer
            .message(&body)
            .routing_key("ignored")
            .headers(headers)
            .send()
            .await?;
    }
    expect_queue(&conn, &q_all.name, &["m1", "m5"], &ctx).await?;
    expect_queue(&conn, &q_any.name, &["m1", "m3", "m5"], &ctx).await?;
    Ok(())
}

/// The default exchange `""` routes a message to the queue named by its routing key, and only
/// to it; the delivery says exchange `""` and that routing key.
pub async fn default_exchange(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    let q1 = Queue::new(ctx.name("q1"));
    let q2 = Queue::new(ctx.name("q2"));
    conn.declare_queue(&q1).await?;
    conn.declare_queue(&q2).await?;
    conn.producer()
        .routing_key(q1.name.clone())
        .publish(&"for-q1")
        .await?;
    let mut consumer = conn.consumer([q1.clone()]).build().await?;
    let d = next_delivery(&mut consumer, ctx.patience).await;
    assert_eq!(d.decode::<String>()?, "for-q1");
    assert_eq!(d.info().exchange, "", "delivered from the default exchange");
    assert_eq!(d.info().routing_key, q1.name);
    assert_eq!(d.info().queue, q1.name);
    d.ack().await?;
    assert_quiet(&mut consumer, QUIET, "q1 got one message only").await;
    consumer.close().await?;
    assert_eq!(conn.queue_size(&q2.name).await?, 0, "q2 got nothing");
    Ok(())
}

/// A message that no binding of its exchange matches reaches no queue (not even one named
/// like its routing key); with `mandatory` the publish fails with
/// [`ErrorKind::Unroutable`] where [`Capabilities::mandatory`](crate::Capabilities::mandatory)
/// says so, as does a mandatory publish to the default exchange naming a missing queue.
/// The exchange still routes matching messages afterwards.
pub async fn unroutable(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    let x = Exchange::direct(ctx.name("x"));
    let bound = Queue::new(ctx.name("bound"))
        .exchange(x.clone())
        .routing_key("yes");
    let lookalike = Queue::new(ctx.name("lookalike"));
    conn.declare_queue(&bound).await?;
    conn.declare_queue(&lookalike).await?;
    let producer = conn.producer().exchange(x);
    producer
        .message(&"nowhere")
        .routing_key("no")
        .send()
        .await?;
    producer
        .message(&"not-to-the-lookalike")
        .routing_key(lookalike.name.clone())
        .send()
        .await?;
    if conn.capabilities().mandatory {
        let result = producer
            .message(&"mandatory")
            .routing_key("no")
            .mandatory(true)
            .send()
            .await;
        match result {
            Err(e) => assert_eq!(
                e.kind(),
                ErrorKind::Unroutable,
                "a mandatory unroutable publish fails as Unroutable: {e}"
            ),
            Ok(()) => panic!("a mandatory publish that no queue takes must fail"),
        }
        let result = conn
            .producer()
            .message(&"to a missing queue")
            .routing_key(ctx.name("missing"))
            .mandatory(true)
            .send()
            .await;
        match result {
            Err(e) => assert_eq!(
                e.kind(),
                ErrorKind::Unroutable,
                "a mandatory publish to a missing queue on the default exchange: {e}"
            ),
            Ok(()) => panic!("a mandatory publish to a queue that does not exist must fail"),
        }
    }
    // A mandatory publish that is routed succeeds.
    producer
        .message(&"routed")
        .routing_key("yes")
        .mandatory(true)
        .send()
        .await?;
    assert_eq!(conn.queue_size(&lookalike.name).await?, 0);
    expect_queue(&conn, &bound.name, &["routed"], &ctx).await?;
    expect_queue(&conn, &lookalike.name, &[], &ctx).await?;
    Ok(())
}

/// Acked messages are gone: the queue is empty and nothing is redelivered, neither to the same
/// consumer nor to a new one after the first is dropped.
pub async fn ack_removes(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    let q = Queue::new(ctx.name("q"));
    let mut consumer = conn.consumer([q.clone()]).build().await?;
    let producer = conn.producer().routing_key(q.name.clone());
    for m in ["m1", "m2", "m3"] {
        producer.publish(&m).await?;
    }
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
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    let q = Queue::new(ctx.name("q"));
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
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    let q = Queue::new(ctx.name("q"));
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
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    let q = Queue::new(ctx.name("q"));
    conn.declare_queue(&q).await?;
    let producer = conn.producer().routing_key(q.name.clone());
    for text in ["a", "b", "c"] {
        producer.publish(&text).await?;
    }
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

    for text in ["d", "e"] {
        producer.publish(&text).await?;
    }
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

/// Checks that a delivery whose channel is gone cannot be settled into harm: the late ack
/// either succeeds as a no-op or fails as a settlement/closed error.
async fn stale_ack(d: Delivery) {
    if let Err(e) = d.ack().await {
        assert!(
            matches!(e.error.kind(), ErrorKind::Settlement | ErrorKind::Closed),
            "a late ack fails only as a settlement or closed error, not {e}"
        );
    }
}

/// Unacked messages of a consumer that is dropped return to the queue and are delivered to
/// another consumer, intact and marked redelivered; late acks of the dropped consumer's
/// deliveries do not remove them. Needs [`Capabilities::restore_on_drop`](crate::Capabilities).
pub async fn unacked_return_on_drop(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    if !conn.capabilities().restore_on_drop {
        return skipped("unacked_return_on_drop", "restore_on_drop");
    }
    let q = Queue::new(ctx.name("q"));
    let mut a = conn.consumer([q.clone()]).build().await?;
    let producer = conn.producer().routing_key(q.name.clone());
    for m in ["m1", "m2", "m3"] {
        producer.publish(&m).await?;
    }
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

/// [`Consumer::close`] returns every message the consumer took and did not settle to the queue
/// (the one handed out and those prefetched but not yet handed out) before another consumer
/// takes them; the late ack of the closed consumer's delivery does not remove it.
pub async fn unacked_return_on_close(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    let q = Queue::new(ctx.name("q"));
    conn.declare_queue(&q).await?;
    let producer = conn.producer().routing_key(q.name.clone());
    for m in ["m1", "m2", "m3"] {
        producer.publish(&m).await?;
    }
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

/// Visibility timeout: a consumer that takes a message and goes silent (alive, never settling)
/// loses it after its visibility timeout, not before: a second consumer then gets it,
/// redelivered. The silent consumer's late ack is harmless (at most a settlement error) and does
/// not remove the redelivered copy. [`Delivery::extend_lease`] keeps a message from being
/// redelivered past its original timeout. Needs
/// [`Capabilities::visibility_timeout`](crate::Capabilities).
pub async fn visibility_timeout(ctx: Ctx) -> Result<()> {
    let conn_a = ctx.connect().await?;
    pause_clock(&conn_a);
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
        held.extend_lease(VISIBILITY).await?;
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
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    let q = Queue::new(ctx.name("q"));
    conn.declare_queue(&q).await?;
    let producer = conn.producer().routing_key(q.name.clone());
    for i in 0..10u32 {
        producer.publish(&i).await?;
    }
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
    let conn = ctx.connect().await?;
    pause_clock(&conn);
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
    let conn = ctx.connect().await?;
    pause_clock(&conn);
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
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    let caps = conn.capabilities();
    if !caps.dead_lettering {
        return skipped("dead_lettering", "dead_lettering");
    }
    let dlx = Exchange::direct(ctx.name("dlx"));
    let dead = Queue::new(ctx.name("dead"))
        .exchange(dlx.clone())
        .routing_key("dead");
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
    let conn = ctx.connect().await?;
    pause_clock(&conn);
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
    for m in ["m0", "m1", "m2", "m3", "m4"] {
        producer.publish(&m).await?;
    }
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

/// `queue_size` counts ready messages only (not delivered, unsettled ones); `purge` removes the
/// ready ones, returns how many, and leaves the queue empty, while an unsettled message
/// survives a purge and can be requeued.
pub async fn purge_and_size(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    let q = Queue::new(ctx.name("q"));
    conn.declare_queue(&q).await?;
    assert_eq!(conn.queue_size(&q.name).await?, 0);
    assert_eq!(conn.purge(&q.name).await?, 0, "purging an empty queue");
    let producer = conn.producer().routing_key(q.name.clone());
    for i in 0..5u32 {
        producer.publish(&i).await?;
    }
    wait_for_size(&conn, &q.name, 5, ctx.patience).await?;
    assert_eq!(conn.purge(&q.name).await?, 5);
    assert_eq!(conn.queue_size(&q.name).await?, 0);
    let mut consumer = conn.consumer([q.clone()]).build().await?;
    assert_quiet(&mut consumer, QUIET, "a purged queue is empty").await;
    consumer.close().await?;

    for i in 0..3u32 {
        producer.publish(&i).await?;
    }
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
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    let x = Exchange::direct(ctx.name("x"));
    let q = Queue::new(ctx.name("q"))
        .exchange(x.clone())
        .routing_key("k");
    conn.declare_queue(&q).await?;
    let producer = conn.producer().exchange(x).routing_key("k");
    for m in ["old-1", "old-2", "old-3"] {
        producer.publish(&m).await?;
    }
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

/// Competing consumers: two consumers on separate connections share one queue; of 200
/// messages each gets distinct ones and together they get all, none twice.
pub async fn competing_consumers(ctx: Ctx) -> Result<()> {
    let conn_a = ctx.connect().await?;
    pause_clock(&conn_a);
    let conn_b = ctx.connect().await?;
    let conn_p = ctx.connect().await?;
    let q = Queue::new(ctx.name("q"));
    let mut a = conn_a.consumer([q.clone()]).prefetch(10).build().await?;
    let mut b = conn_b.consumer([q.clone()]).prefetch(10).build().await?;
    let producer = conn_p.producer().routing_key(q.name.clone());
    for i in 0..200u32 {
        producer.publish(&i).await?;
    }
    let mut seen: [BTreeSet<u32>; 2] = [BTreeSet::new(), BTreeSet::new()];
    {
        let mut both = futures::stream::select(
            a.by_ref().map(|item| (0usize, item)),
            b.by_ref().map(|item| (1usize, item)),
        );
        for _ in 0..200 {
            let (who, item) = match timeout(ctx.patience, both.next()).await {
                Ok(Some(x)) => x,
                Ok(None) => panic!("consumers ended"),
                Err(_) => panic!(
                    "only {} of 200 messages within {:?}",
                    seen[0].len() + seen[1].len(),
                    ctx.patience
                ),
            };
            let d = item.map_err(Error::from)?;
            let n = d.decode::<u32>()?;
            assert!(
                !seen[0].contains(&n) && !seen[1].contains(&n),
                "message {n} delivered twice"
            );
            seen[who].insert(n);
            d.ack().await?;
        }
    }
    assert_quiet(&mut a, QUIET, "no duplicates for a").await;
    assert_quiet(&mut b, QUIET, "no duplicates for b").await;
    let all: BTreeSet<u32> = seen[0].union(&seen[1]).copied().collect();
    assert_eq!(all, (0..200).collect::<BTreeSet<u32>>());
    Ok(())
}

/// Concurrent producers: 10 tasks (half sharing one connection, half with their own) publish
/// 100 messages each at the same time while a consumer runs; all 1,000 arrive exactly once.
pub async fn concurrent_producers(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    let q = Queue::new(ctx.name("q"));
    let mut consumer = conn.consumer([q.clone()]).prefetch(50).build().await?;
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..10u32 {
        let ctx = ctx.clone();
        let shared = conn.clone();
        let queue = q.name.clone();
        tasks.spawn(async move {
            let conn = if p % 2 == 0 {
                ctx.connect().await?
            } else {
                shared
            };
            let producer = conn.producer().routing_key(queue);
            for n in 0..100u32 {
                producer.publish(&[p, n]).await?;
            }
            Ok::<(), Error>(())
        });
    }
    let mut seen = HashSet::new();
    for _ in 0..1000 {
        let d = next_delivery(&mut consumer, ctx.patience).await;
        let pn: [u32; 2] = d.decode()?;
        assert!(seen.insert(pn), "message {pn:?} delivered twice");
        d.ack().await?;
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("a producer task panicked")?; // ok: a conformance assertion
    }
    assert_quiet(&mut consumer, QUIET, "exactly 1,000").await;
    for p in 0..10u32 {
        for n in 0..100u32 {
            assert!(seen.contains(&[p, n]), "message {p}/{n} missing");
        }
    }
    Ok(())
}

/// Bodies are bytes: a 1 MiB random binary body, a body with every byte value 0..=255 and an
/// empty body arrive byte-identical, with their content type and encoding.
pub async fn binary_bodies(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    let q = Queue::new(ctx.name("q"));
    let mut consumer = conn.consumer([q.clone()]).build().await?;
    let producer = conn.producer().routing_key(q.name.clone());
    let seed = uuid::Uuid::new_v4().as_u64_pair().0;
    let large = Bytes::from(pseudo_random_bytes(1024 * 1024, seed));
    let every: Bytes = (0..=255u8).collect::<Vec<u8>>().into();
    producer
        .publish_bytes(large.clone(), "application/octet-stream", "binary")
        .await?;
    producer
        .publish_bytes(every.clone(), "application/data", "binary")
        .await?;
    producer
        .publish_bytes(Bytes::new(), "application/octet-stream", "binary")
        .await?;

    let d = next_delivery(&mut consumer, ctx.patience).await;
    assert_eq!(d.content_type(), Some("application/octet-stream"));
    assert_eq!(d.message().content_encoding.as_deref(), Some("binary"));
    assert_eq!(d.body().len(), large.len());
    assert!(*d.body() == large, "the 1 MiB body changed on the way");
    assert!(
        d.decode::<Bytes>()? == large,
        "decoding binary gives the bytes"
    );
    d.ack().await?;

    let d = next_delivery(&mut consumer, ctx.patience).await;
    assert_eq!(d.content_type(), Some("application/data"));
    assert_eq!(&d.body()[..], &every[..], "every byte value survives");
    assert_eq!(d.decode::<Bytes>()?, every);
    d.ack().await?;

    let d = next_delivery(&mut consumer, ctx.patience).await;
    assert!(
        d.body().is_empty(),
        "an empty body stays empty: {}",
        describe(&d)
    );
    d.ack().await?;
    Ok(())
}

/// Unicode: topic routing on non-ASCII words (`天气.*`, `café.#`) and non-ASCII entity names,
/// non-ASCII header keys and values, and a non-ASCII JSON body all arrive exactly as sent.
pub async fn unicode(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    if !conn.capabilities().topic {
        return skipped("unicode", "topic exchanges");
    }
    let x = Exchange::topic(ctx.name("交换-ü"));
    let weather = Queue::new(ctx.name("天气"))
        .exchange(x.clone())
        .routing_key("天气.*");
    let cafe = Queue::new(ctx.name("café"))
        .exchange(x.clone())
        .routing_key("café.#");
    conn.declare_queue(&weather).await?;
    conn.declare_queue(&cafe).await?;
    let producer = conn.producer().exchange(x.clone());
    for key in [
        "天气.北京",
        "天气.北京.朝阳",
        "café",
        "café.crème.brûlée",
        "cafe.x",
    ] {
        producer
            .message(&key)
            .routing_key(key)
            .header("clé-ключ-键-🔑", "valeur-значение-值-😀")
            .send()
            .await?;
    }
    let mut consumer = conn.consumer([weather.clone()]).build().await?;
    let d = next_delivery(&mut consumer, ctx.patience).await;
    assert_eq!(d.decode::<String>()?, "天气.北京");
    assert_eq!(d.info().routing_key, "天气.北京");
    assert_eq!(d.info().exchange, x.name);
    assert_eq!(d.info().queue, weather.name);
    assert_eq!(
        d.headers().get("clé-ключ-键-🔑"),
        Some(&Value::from("valeur-значение-值-😀"))
    );
    d.ack().await?;
    assert_quiet(&mut consumer, QUIET, "`*` is one word, also in unicode").await;
    consumer.close().await?;
    expect_queue(&conn, &cafe.name, &["café", "café.crème.brûlée"], &ctx).await?;
    Ok(())
}

/// Accept lists: a message whose content type the consumer does not accept is never handed out
/// as good and never lost. The stream yields a [`ConsumeError`] carrying the delivery (body
/// intact, a codec error, decode refused too), which can be requeued; the handler style
/// ([`Consumer::consume_as`]) gives it to `on_error`, whose `Requeue` and `Stop` put it back and
/// whose `Reject` dead-letters it (where supported) while good messages reach the handler; a
/// consumer that accepts the type then reads it intact. Always-trusted `application/data` is
/// accepted whatever the list.
pub async fn accept_list(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    let caps = conn.capabilities();
    let q = Queue::new(ctx.name("q"));
    conn.declare_queue(&q).await?;
    let producer = conn.producer().routing_key(q.name.clone());
    let payload = Bytes::from_static(b"\x00custom \xff payload");
    producer
        .publish_bytes(payload.clone(), "application/x-custom", "binary")
        .await?;

    // Stream style.
    let mut consumer = conn.consumer([q.clone()]).accept(["json"]).build().await?;
    for round in 0..2 {
        match next_item(&mut consumer, ctx.patience).await {
            Ok(d) => panic!(
                "an unaccepted content type was handed out: {}",
                describe(&d)
            ),
            Err(ConsumeError {
                error,
                delivery: Some(d),
            }) => {
                assert_eq!(error.kind(), ErrorKind::Codec, "refusal is a codec error");
                assert_eq!(d.body(), &payload, "the refused body is intact");
                assert_eq!(d.content_type(), Some("application/x-custom"));
                assert_eq!(d.redelivered(), round == 1);
                let refused = d.decode::<Bytes>();
                assert!(
                    matches!(&refused, Err(e) if e.kind() == ErrorKind::Codec),
                    "decode of an unaccepted type is refused: {refused:?}"
                );
                d.requeue().await?;
            }
            Err(e) => panic!("a refused message came without its delivery: {e}"),
        }
    }
    consumer.close().await?;

    // Handler style: Requeue, then Stop.
    let hooks = Arc::new(AtomicUsize::new(0));
    let handled = Arc::new(AtomicUsize::new(0));
    let consumer = conn
        .consumer([q.clone()])
        .accept(["json"])
        .on_error({
            let hooks = hooks.clone();
            move |error, _| {
                assert_eq!(error.kind(), ErrorKind::Codec);
                match hooks.fetch_add(1, Ordering::SeqCst) {
                    0 => ErrorAction::Requeue,
                    _ => ErrorAction::Stop,
                }
            }
        })
        .build()
        .await?;
    let result = timeout(
        ctx.patience,
        consumer.consume_as::<serde_json::Value, _, _>(|_, d| {
            handled.fetch_add(1, Ordering::SeqCst);
            async move {
                d.ack().await?;
                Ok(())
            }
        }),
    )
    .await
    .expect("consume_as stops on ErrorAction::Stop"); // ok: a conformance assertion
    let error = result.expect_err("ErrorAction::Stop returns the error");
    assert_eq!(error.kind(), ErrorKind::Codec);
    assert_eq!(
        hooks.load(Ordering::SeqCst),
        2,
        "on_error ran for each refusal"
    );
    assert_eq!(
        handled.load(Ordering::SeqCst),
        0,
        "the handler never saw it"
    );

    // A consumer that accepts the type reads it, intact: it was never lost.
    producer
        .publish_bytes(Bytes::from_static(b"trusted"), "application/data", "binary")
        .await?;
    let mut consumer = conn
        .consumer([q.clone()])
        .accept(["application/x-custom"])
        .build()
        .await?;
    let mut got = Vec::new();
    for d in next_deliveries(&mut consumer, 2, ctx.patience).await {
        got.push((d.content_type().map(str::to_owned), d.decode::<Bytes>()?));
        d.ack().await?;
    }
    got.sort();
    assert_eq!(
        got,
        [
            (
                Some("application/data".to_owned()),
                Bytes::from_static(b"trusted")
            ),
            (Some("application/x-custom".to_owned()), payload.clone()),
        ]
    );
    assert_quiet(&mut consumer, QUIET, "nothing else").await;
    consumer.close().await?;

    // Handler style: Reject dead-letters the refused message; good ones reach the handler.
    let dlx = Exchange::fanout(ctx.name("dlx"));
    let dead = Queue::new(ctx.name("dead")).exchange(dlx.clone());
    let mut rq = Queue::new(ctx.name("rq"));
    if caps.dead_lettering {
        conn.declare_queue(&dead).await?;
        rq = rq.dead_letter_exchange(dlx.name.clone());
    }
    conn.declare_queue(&rq).await?;
    let producer = conn.producer().routing_key(rq.name.clone());
    producer
        .publish_bytes(payload.clone(), "application/x-custom", "binary")
        .await?;
    producer.publish(&"good").await?;
    let rejected = Arc::new(AtomicUsize::new(0));
    let consumer = conn
        .consumer([rq.clone()])
        .accept(["json"])
        .on_error({
            let rejected = rejected.clone();
            move |_, _| {
                rejected.fetch_add(1, Ordering::SeqCst);
                ErrorAction::Reject
            }
        })
        .build()
        .await?;
    let result = timeout(
        ctx.patience,
        consumer.consume_as::<String, _, _>(|value, d| async move {
            assert_eq!(value, "good");
            d.ack().await?;
            Err(Error::config("stop: the good message was handled"))
        }),
    )
    .await
    .expect("the handler stops the consumer"); // ok: a conformance assertion
    let error = result.expect_err("the handler's error ends consume_as");
    assert_eq!(error.message(), "stop: the good message was handled");
    assert_eq!(
        rejected.load(Ordering::SeqCst),
        1,
        "the refused message was rejected"
    );
    assert_eq!(conn.queue_size(&rq.name).await?, 0);
    if caps.dead_lettering {
        let mut dead_consumer = conn
            .consumer([dead.clone()])
            .accept(["application/x-custom"])
            .build()
            .await?;
        let d = next_delivery(&mut dead_consumer, ctx.patience).await;
        assert_eq!(d.body(), &payload, "the dead-lettered body is intact");
        assert_death(&d, &rq.name, "rejected");
        d.ack().await?;
    }
    Ok(())
}

/// Compression: a zlib-compressed message carries the `compression` header
/// (`application/x-gzip`), a compressed body, and decodes to the value sent; a consumer whose
/// `max_decompressed_size` is smaller than the decompressed body refuses it with a codec error
/// from `decode` and `decompressed_body` (no panic, the delivery can still be settled), while
/// a small compressed message decodes fine there.
pub async fn compression(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    let q = Queue::new(ctx.name("q"));
    let producer = conn
        .producer()
        .routing_key(q.name.clone())
        .compression("zlib");
    let big = "compressible ".repeat(1000);
    let mut consumer = conn.consumer([q.clone()]).build().await?;
    producer.publish(&big).await?;
    let d = next_delivery(&mut consumer, ctx.patience).await;
    assert_eq!(
        d.headers().get(crate::COMPRESSION_HEADER),
        Some(&Value::from("application/x-gzip"))
    );
    assert_eq!(d.content_type(), Some("application/json"));
    assert!(
        d.body().len() < big.len() / 4,
        "the body is compressed ({} bytes)",
        d.body().len()
    );
    assert_eq!(d.decode::<String>()?, big);
    d.ack().await?;
    consumer.close().await?;

    let mut bounded = conn
        .consumer([q.clone()])
        .max_decompressed_size(1024)
        .build()
        .await?;
    producer.publish(&big).await?;
    producer.publish(&"tiny").await?;
    let d = next_delivery(&mut bounded, ctx.patience).await;
    let decoded = d.decode::<String>();
    assert!(
        matches!(&decoded, Err(e) if e.kind() == ErrorKind::Codec),
        "a body past max_decompressed_size is refused as a codec error: {decoded:?}"
    );
    let body = d.decompressed_body();
    assert!(
        matches!(&body, Err(e) if e.kind() == ErrorKind::Codec),
        "decompressed_body is bounded too: {:?}",
        body.map(|b| b.len())
    );
    d.reject().await?;
    let d = next_delivery(&mut bounded, ctx.patience).await;
    assert_eq!(d.decode::<String>()?, "tiny");
    d.ack().await?;
    Ok(())
}

/// Batch publish: [`Producer::publish_batch`](crate::Producer::publish_batch) of 500 values
/// delivers all of them, once each, in publish order (one producer, one consumer: FIFO).
pub async fn batch_fifo(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    let q = Queue::new(ctx.name("q"));
    let mut consumer = conn.consumer([q.clone()]).build().await?;
    let values: Vec<u32> = (0..500).collect();
    conn.producer()
        .routing_key(q.name.clone())
        .publish_batch(values.iter())
        .await?;
    let mut got = Vec::with_capacity(values.len());
    for _ in 0..values.len() {
        let d = next_delivery(&mut consumer, ctx.patience).await;
        got.push(d.decode::<u32>()?);
        d.ack().await?;
    }
    assert_eq!(got, values, "batch messages arrive once each, in order");
    assert_quiet(&mut consumer, QUIET, "exactly 500").await;
    Ok(())
}

/// Basic get ([`Channel::get`](crate::transport::Channel::get)): `None` on an empty queue; `Some` with the
/// message otherwise; a got message is settled like any delivery (requeue brings it back
/// redelivered, ack and reject remove it); a no-ack get removes the message at once.
pub async fn basic_get(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    let q = Queue::new(ctx.name("q"));
    conn.declare_queue(&q).await?;
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
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    let q = Queue::new(ctx.name("q"));
    conn.declare_queue(&q).await?;
    let producer = conn.producer().routing_key(q.name.clone());
    for i in 0..5u32 {
        producer.publish(&i).await?;
    }
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

/// Bindings made and removed at run time: [`Connection::bind`] routes a new key to a queue,
/// [`Connection::unbind`] stops it (unbinding a missing binding succeeds), and deleting an
/// exchange removes its bindings, so a redeclared exchange of the same name routes nowhere
/// until bound again.
pub async fn bind_unbind(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    let x = Exchange::direct(ctx.name("x"));
    let q = Queue::new(ctx.name("q"))
        .exchange(x.clone())
        .routing_key("k1");
    conn.declare_queue(&q).await?;
    let k2 = Binding::new(x.name.clone(), "k2");
    conn.bind(&q.name, &k2).await?;
    conn.bind(&q.name, &k2).await?; // idempotent: still delivered once
    let producer = conn.producer().exchange(x.clone());
    producer.message(&"k1-a").routing_key("k1").send().await?;
    producer.message(&"k2-a").routing_key("k2").send().await?;
    expect_queue(&conn, &q.name, &["k1-a", "k2-a"], &ctx).await?;

    conn.unbind(&q.name, &k2).await?;
    conn.unbind(&q.name, &k2).await?;
    conn.unbind(&q.name, &Binding::new(x.name.clone(), "never-bound"))
        .await?;
    producer.message(&"k1-b").routing_key("k1").send().await?;
    producer.message(&"k2-b").routing_key("k2").send().await?;
    expect_queue(&conn, &q.name, &["k1-b"], &ctx).await?;

    conn.delete_exchange(&x.name).await?;
    conn.delete_exchange(&x.name).await?;
    conn.declare_exchange(&x).await?;
    producer.message(&"k1-c").routing_key("k1").send().await?;
    expect_queue(&conn, &q.name, &[], &ctx).await?;
    conn.bind(&q.name, &Binding::new(x.name.clone(), "k1"))
        .await?;
    producer.message(&"k1-d").routing_key("k1").send().await?;
    expect_queue(&conn, &q.name, &["k1-d"], &ctx).await?;
    Ok(())
}

/// One consumer of several queues receives from all of them, each delivery naming the queue it
/// came from, and a busy queue does not starve the others.
pub async fn multi_queue_consumer(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    let busy = Queue::new(ctx.name("busy"));
    let quiet = Queue::new(ctx.name("quiet"));
    conn.declare_queue(&busy).await?;
    conn.declare_queue(&quiet).await?;
    for i in 0..50u32 {
        conn.producer()
            .routing_key(busy.name.clone())
            .publish(&format!("busy-{i}"))
            .await?;
    }
    conn.producer()
        .routing_key(quiet.name.clone())
        .publish(&"quiet-0")
        .await?;
    let mut consumer = conn
        .consumer([busy.clone(), quiet.clone()])
        .prefetch(1)
        .build()
        .await?;
    let mut seen = Vec::new();
    for _ in 0..51 {
        let d = next_delivery(&mut consumer, ctx.patience).await;
        let body = d.decode::<String>()?;
        let expected_queue = if body.starts_with("busy") {
            &busy.name
        } else {
            &quiet.name
        };
        assert_eq!(&d.info().queue, expected_queue, "{body} names its queue");
        seen.push(body);
        d.ack().await?;
    }
    let position = seen
        .iter()
        .position(|b| b == "quiet-0")
        .expect("the quiet queue's message arrived"); // ok: a conformance assertion
    assert!(
        position < 50,
        "the quiet queue waited for the busy one to drain (position {position})"
    );
    assert_quiet(&mut consumer, QUIET, "each message once").await;
    Ok(())
}

/// Declarations are idempotent: redeclaring an identical exchange or queue succeeds and keeps
/// the queue's messages; declaring an exchange of the same name with another type, or a queue
/// of the same name with other arguments, fails with [`ErrorKind::PreconditionFailed`].
pub async fn declare_idempotent(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    let x = Exchange::direct(ctx.name("x"));
    let q = Queue::new(ctx.name("q"))
        .exchange(x.clone())
        .routing_key("k");
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

/// Header values of every type (null, booleans, negative and 64-bit integers, floats,
/// strings, byte strings (UTF-8 and not), lists and nested tables) and every message
/// property (delivery mode, priority, correlation id, reply-to, expiration, message id,
/// timestamp, type, app id) arrive as sent.
pub async fn headers_and_properties(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    let q = Queue::new(ctx.name("q"));
    let mut consumer = conn.consumer([q.clone()]).build().await?;
    let nested: Headers = [
        ("inner".to_owned(), Value::from("value")),
        ("n".to_owned(), Value::Int(-1)),
    ]
    .into_iter()
    .collect();
    let headers: Headers = [
        ("null", Value::Null),
        ("true", Value::Bool(true)),
        ("false", Value::Bool(false)),
        ("zero", Value::Int(0)),
        ("negative", Value::Int(-42)),
        ("big", Value::Int(i64::MAX)),
        ("small", Value::Int(i64::MIN)),
        ("float", Value::Float(1.5)),
        ("string", Value::from("text")),
        ("empty", Value::from("")),
        ("bytes-utf8", Value::Bytes(b"abc".to_vec())),
        ("bytes-binary", Value::Bytes(vec![0, 159, 255])),
        (
            "list",
            Value::List(vec![Value::Int(1), Value::from("two"), Value::Bool(false)]),
        ),
        ("map", Value::Map(nested)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let properties = crate::Properties {
        delivery_mode: Some(crate::DeliveryMode::Transient),
        priority: Some(3),
        correlation_id: Some("cid".into()),
        reply_to: Some("reply-queue".into()),
        expiration: Some(Duration::from_secs(3600)),
        message_id: Some("mid".into()),
        timestamp: Some(1_700_000_000),
        kind: Some("my.type".into()),
        app_id: Some("conformance".into()),
        ..crate::Properties::default()
    };
    conn.producer()
        .routing_key(q.name.clone())
        .message(&"with everything")
        .properties(properties.clone())
        .headers(headers.clone())
        .send()
        .await?;
    let d = next_delivery(&mut consumer, ctx.patience).await;
    assert_eq!(d.decode::<String>()?, "with everything");
    for (key, value) in &headers {
        assert_eq!(d.headers().get(key), Some(value), "header {key:?}");
    }
    assert_eq!(d.properties(), &properties);
    d.ack().await?;
    Ok(())
}

/// Closing a consumer's channel ([`Consumer::channel`]) ends its stream, even while the
/// consumer is at its prefetch limit, and returns the unsettled messages to the queue.
pub async fn channel_close_ends_stream(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    pause_clock(&conn);
    let q = Queue::new(ctx.name("q"));
    conn.declare_queue(&q).await?;
    let producer = conn.producer().routing_key(q.name.clone());
    for m in ["m1", "m2"] {
        producer.publish(&m).await?;
    }
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

/// A queue exists when the transport knows it: [`Connection::queue_exists`] says `false` for
/// a name nobody declared (and asking creates nothing), `true` once declared, and `false` again
/// once deleted. `queue_size` and `purge` of a queue that exists nowhere fail with
/// [`ErrorKind::NotFound`] on every transport, while an empty declared queue has size 0.
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

/// An exchange exists when the transport knows it: [`Connection::exchange_exists`] says `true`
/// for the default exchange, `false` for a name nobody declared (asking creates nothing and
/// leaves the channel asked, and a consumer on it, working), `true` once declared (on another
/// connection too, whatever its type), and `false` again once deleted.
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

/// A mandatory batch to the default exchange: messages for a declared queue are taken, and a
/// batch naming a queue that exists nowhere fails as [`ErrorKind::Unroutable`] where
/// [`Capabilities::mandatory`](crate::Capabilities::mandatory) says so.
pub async fn default_exchange_mandatory_batch(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    if !conn.capabilities().mandatory {
        eprintln!("skipped: {} has no mandatory publishes", ctx.url);
        return Ok(());
    }
    let q = Queue::new(ctx.name("q"));
    conn.declare_queue(&q).await?;
    let outgoing = |key: &str, text: &str| crate::transport::Outgoing {
        exchange: String::new(),
        routing_key: key.to_owned(),
        message: crate::Message::new(text.as_bytes().to_vec()),
        mandatory: true,
    };
    let channel = conn.channel().await?;
    let batch: Vec<_> = (0..10).map(|i| outgoing(&q.name, &i.to_string())).collect();
    channel.publish_batch(batch).await?;
    wait_for_size(&conn, &q.name, 10, ctx.patience).await?;
    let missing = ctx.name("missing");
    match channel
        .publish_batch(vec![outgoing(&q.name, "x"), outgoing(&missing, "y")])
        .await
    {
        Err(e) => assert_eq!(e.kind(), ErrorKind::Unroutable, "{e}"),
        Ok(()) => panic!("a mandatory batch naming a missing queue must fail"),
    }
    assert!(
        !conn.queue_exists(&missing).await?,
        "a refused mandatory publish creates nothing"
    );
    Ok(())
}

/// Lists every scenario as a `#[tokio::test]` for the given harness expression.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@each $harness;
            round_trip,
            direct_routing,
            topic_routing,
            fanout_routing,
            headers_routing,
            default_exchange,
            unroutable,
            ack_removes,
            reject_drops,
            requeue_redelivers,
            requeue_keeps_place,
            unacked_return_on_drop,
            unacked_return_on_close,
            visibility_timeout,
            prefetch_bound,
            priorities,
            message_ttl,
            dead_lettering,
            max_length,
            purge_and_size,
            queue_delete,
            competing_consumers,
            concurrent_producers,
            binary_bodies,
            unicode,
            accept_list,
            compression,
            batch_fifo,
            basic_get,
            no_ack,
            bind_unbind,
            multi_queue_consumer,
            declare_idempotent,
            declare_conflict_says_what_differs,
            headers_and_properties,
            channel_close_ends_stream,
            missing_queue,
            missing_exchange,
            default_exchange_mandatory_batch,
        );
    };
    (@each $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                $crate::conformance::run(&$harness, stringify!($name), $crate::conformance::$name).await;
            }
        )*
    };
}
