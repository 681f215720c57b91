//! Messages: bodies, headers, properties, unicode, compression and accept lists arrive as sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::timeout;

use super::Ctx;
use super::fixtures::*;
use crate::error::{ErrorKind, Result};
use crate::{ConsumeError, ErrorAction, Exchange, Headers, Queue, Value};

/// A published JSON value comes back equal, with headers and properties intact, and the
/// delivery info names the exchange, routing key and queue.
pub async fn round_trip(ctx: Ctx) -> Result<()> {
    let conn = ctx.connect().await?;
    let exchange = Exchange::direct(ctx.name("x"));
    let queue = bound(&ctx, "q", &exchange, "rk");
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

/// Bodies are bytes: a 1 MiB random binary body, a body with every byte value 0..=255 and an
/// empty body arrive byte-identical, with their content type and encoding.
pub async fn binary_bodies(ctx: Ctx) -> Result<()> {
    let (conn, q) = scenario_queue(&ctx).await?;
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
    let conn = open(&ctx).await?;
    if !conn.capabilities().topic {
        return skipped("unicode", "topic exchanges");
    }
    let x = Exchange::topic(ctx.name("交换-ü"));
    let weather = bound(&ctx, "天气", &x, "天气.*");
    let cafe = bound(&ctx, "café", &x, "café.#");
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

/// Header values of every type (null, booleans, negative and 64-bit integers, floats,
/// strings, byte strings (UTF-8 and not), lists and nested tables) and every message
/// property (delivery mode, priority, correlation id, reply-to, expiration, message id,
/// timestamp, type, app id) arrive as sent.
pub async fn headers_and_properties(ctx: Ctx) -> Result<()> {
    let (conn, q) = scenario_queue(&ctx).await?;
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

/// Compression: a zlib-compressed message carries the `compression` header
/// (`application/x-gzip`), a compressed body, and decodes to the value sent; a consumer whose
/// `max_decompressed_size` is smaller than the decompressed body refuses it with a codec error
/// from `decode` and `decompressed_body` (no panic, the delivery can still be settled), while
/// a small compressed message decodes fine there.
pub async fn compression(ctx: Ctx) -> Result<()> {
    let (conn, q) = scenario_queue(&ctx).await?;
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

/// Accept lists: a message whose content type the consumer does not accept is never handed out as
/// good and never lost. The stream yields a [`ConsumeError`] carrying the delivery (body intact, a
/// codec error, decode refused too), which can be requeued; the handler style
/// ([`Consumer::consume_as`](crate::Consumer::consume_as)) gives it to `on_error`, whose `Requeue`
/// and `Stop` put it back (dead-lettering is the `poison_*` scenarios'); a consumer that accepts
/// the type then reads it intact. Always-trusted
/// `application/data` is accepted whatever the list.
pub async fn accept_list(ctx: Ctx) -> Result<()> {
    let conn = open(&ctx).await?;
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

    Ok(())
}
