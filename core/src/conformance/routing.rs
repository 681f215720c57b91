//! Routing: what each exchange type delivers where, the default exchange, unroutable and mandatory
//! publishes, bindings made at run time.

use super::Ctx;
use super::fixtures::*;
use crate::error::{ErrorKind, Result};
use crate::{Binding, Exchange, HeaderMatch, Headers, Queue, Value};

/// Direct exchange: a message goes to every queue bound with a key equal to its routing key and
/// to no other; two queues bound with the same key both get it; a key nobody bound reaches no
/// queue.
pub async fn direct_routing(ctx: Ctx) -> Result<()> {
    let conn = open(&ctx).await?;
    let caps = conn.capabilities();
    if !caps.supports_exchange(crate::ExchangeKind::Direct) {
        return skipped("direct_routing", "direct exchanges");
    }
    let x = Exchange::direct(ctx.name("x"));
    let qa = bound(&ctx, "qa", &x, "a");
    let qb = bound(&ctx, "qb", &x, "b");
    let qa2 = bound(&ctx, "qa2", &x, "a");
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
    let conn = open(&ctx).await?;
    let caps = conn.capabilities();
    if !caps.supports_exchange(crate::ExchangeKind::Topic) {
        return skipped("topic_routing", "topic exchanges");
    }
    let x = Exchange::topic(ctx.name("x"));
    let bound = |what: &str, key: &str| bound(&ctx, what, &x, key);
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
    let conn = open(&ctx).await?;
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
    let conn = open(&ctx).await?;
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
    let conn = open(&ctx).await?;
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
    let conn = open(&ctx).await?;
    let x = Exchange::direct(ctx.name("x"));
    let bound = bound(&ctx, "bound", &x, "yes");
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
        delay: None,
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

/// Bindings made and removed at run time: [`Connection::bind`](crate::Connection::bind) routes a
/// new key to a queue, [`Connection::unbind`](crate::Connection::unbind) stops it (unbinding a
/// missing binding succeeds), and deleting an exchange removes its bindings, so a redeclared
/// exchange of the same name routes nowhere until bound again.
pub async fn bind_unbind(ctx: Ctx) -> Result<()> {
    let conn = open(&ctx).await?;
    let x = Exchange::direct(ctx.name("x"));
    let q = bound(&ctx, "q", &x, "k1");
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

/// A binding another connection (another process) makes is routed to at once: a publish that
/// matched no binding reads the bindings again rather than trusting a cached table (a Celery
/// client binds its reply queue a moment before the worker replies to it).
pub async fn binding_from_elsewhere(ctx: Ctx) -> Result<()> {
    let conn = open(&ctx).await?;
    let other = ctx.connect().await?;
    let x = Exchange::direct(ctx.name("x"));
    conn.declare_exchange(&x).await?;
    let producer = conn.producer().exchange(x.clone());
    // Read (and cached) with no binding for k.
    producer.message(&"nobody").routing_key("k").send().await?;
    let q = bound(&ctx, "q", &x, "k");
    other.declare_queue(&q).await?;
    producer.message(&"routed").routing_key("k").send().await?;
    expect_queue(&conn, &q.name, &["routed"], &ctx).await?;
    Ok(())
}
