//! `kombu consume`.

use std::io::Write as _;
use std::time::Duration;

use anyhow::anyhow;
use base64::Engine as _;
use kombu::{ConsumeError, Delivery, Queue, StreamExt as _};
use serde_json::{Map, Value as Json, json};

use crate::Outcome;
use crate::cli::{ConsumeArgs, Format, Global};
use crate::common::{self, Ctx as _};

pub async fn run(global: &Global, args: ConsumeArgs) -> anyhow::Result<Outcome> {
    let url = common::url(global)?;
    let masked = common::mask(&url);
    let idle = match args.timeout {
        Some(secs) if !secs.is_finite() || secs < 0.0 => {
            return Err(anyhow!("--timeout {secs} is not a number of seconds >= 0"));
        }
        Some(secs) => Some(Duration::from_secs_f64(secs)),
        None => None,
    };
    let conn = common::connect(&url).await?;
    let registry = conn.registry().clone();
    let accept: Vec<String> = if args.accept.is_empty() {
        // An inspection tool reads whatever it is given: every known serializer.
        registry
            .serializers()
            .map(|s| s.name().to_owned())
            .collect()
    } else {
        args.accept.clone()
    };
    registry.accept(&accept).map_err(|e| {
        anyhow!(
            "{e} in --accept (known: {})",
            registry
                .serializers()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    for name in &args.queues {
        common::declare_queue_lenient(&conn, &Queue::new(name.clone()))
            .await
            .ctx(format!("cannot declare queue {name:?} on {masked}"))?;
    }
    // --requeue holds every message until the end (so none comes straight back): no bound.
    // With --count, take no more than that: extra ones would come back marked redelivered.
    let prefetch = match args.count {
        _ if args.requeue => 0,
        Some(c) if args.prefetch == 0 || u64::from(args.prefetch) > c => {
            u16::try_from(c.max(1)).unwrap_or(u16::MAX)
        }
        _ => args.prefetch,
    };
    let mut consumer = conn
        .consumer(args.queues.iter().map(|q| Queue::new(q.clone())))
        .declare(false)
        .prefetch(prefetch)
        .no_ack(args.no_ack)
        .accept(&accept)
        .build()
        .await
        .ctx(format!("cannot consume from {:?} on {masked}", args.queues))?;

    let mut held: Vec<Delivery> = Vec::new();
    let mut got = 0u64;
    let mut stdout = std::io::stdout().lock();
    let mut failure = None;
    let mut outcome = Outcome::Done;
    loop {
        if args.count.is_some_and(|c| got >= c) {
            break;
        }
        let next = async {
            match idle {
                Some(idle) => tokio::time::timeout(idle, consumer.next()).await.ok(),
                None => Some(consumer.next().await),
            }
        };
        let item = tokio::select! {
            item = next => item,
            _ = tokio::signal::ctrl_c() => {
                outcome = Outcome::Interrupted;
                break;
            }
        };
        let delivery = match item {
            None => {
                outcome = Outcome::TimedOut;
                break;
            }
            Some(None) => {
                failure = Some(anyhow!(
                    "the broker ended the consumer of {:?} on {masked}",
                    args.queues
                ));
                break;
            }
            Some(Some(Err(ConsumeError {
                error,
                delivery: Some(delivery),
            }))) => {
                let text = format!(
                    "message from queue {:?} refused: {error}; it was put back (try --accept with \
                     its serializer)",
                    delivery.queue()
                );
                let _ = delivery.requeue().await;
                failure = Some(anyhow!(text));
                break;
            }
            Some(Some(Err(ConsumeError { error, .. }))) => {
                failure = Some(
                    anyhow::Error::new(common::BrokerError::from(error))
                        .context(format!("consuming from {:?} on {masked}", args.queues)),
                );
                break;
            }
            Some(Some(Ok(delivery))) => delivery,
        };
        let rendered = match render(&delivery, args.format, &registry) {
            Ok(r) => r,
            Err(e) => {
                // Dropping the delivery puts it back.
                failure = Some(e.context(format!(
                    "cannot decode a message from queue {:?}; it was put back",
                    delivery.queue()
                )));
                break;
            }
        };
        if let Err(e) = stdout.write_all(&rendered).and_then(|()| stdout.flush()) {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                failure = Some(anyhow!("cannot write to stdout: {e}"));
            }
            break; // the unprinted delivery is dropped: put back
        }
        got += 1;
        if args.requeue {
            held.push(delivery);
        } else if !args.no_ack {
            let queue = delivery.queue().to_owned();
            if let Err(e) = delivery.ack().await.ctx(format!(
                "cannot acknowledge a message of queue {queue:?} on {masked}"
            )) {
                failure = Some(e);
                break;
            }
        }
    }
    for delivery in held {
        let queue = delivery.queue().to_owned();
        let requeued = delivery.requeue().await.ctx(format!(
            "cannot put a message back on queue {queue:?} on {masked}"
        ));
        if let Err(e) = requeued
            && failure.is_none()
        {
            failure = Some(e);
        }
    }
    let closed = consumer
        .close()
        .await
        .ctx(format!("cannot close the consumer on {masked}"));
    if let Some(e) = failure {
        return Err(e);
    }
    closed?;
    Ok(outcome)
}

/// The body as JSON: decoded for structured serializers, a string for text, base64 for bytes.
fn body_json(delivery: &Delivery, registry: &kombu::serializers::Registry) -> anyhow::Result<Json> {
    let content_type = delivery.content_type().unwrap_or("application/data");
    let structured = !is_bytes(content_type)
        && !is_text(content_type)
        && registry.serializer(content_type).is_ok();
    if structured {
        return delivery
            .decode::<Json>()
            .ctx(format!("cannot decode the {content_type} body"));
    }
    let body = delivery
        .decompressed_body()
        .ctx("cannot decompress the body")?;
    if !is_bytes(content_type)
        && let Ok(text) = std::str::from_utf8(&body)
    {
        return Ok(Json::String(text.to_owned()));
    }
    Ok(Json::String(
        base64::engine::general_purpose::STANDARD.encode(&body),
    ))
}

fn is_bytes(content_type: &str) -> bool {
    content_type == "application/data"
}

fn is_text(content_type: &str) -> bool {
    content_type.starts_with("text/")
}

/// The whole message as the JSON object `--format json` prints.
pub fn message_json(
    delivery: &Delivery,
    registry: &kombu::serializers::Registry,
) -> anyhow::Result<Json> {
    let message = delivery.message();
    let props = &message.properties;
    let info = delivery.info();
    Ok(json!({
        "body": body_json(delivery, registry)?,
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "headers": serde_json::to_value(&message.headers)?,
        "properties": {
            "priority": props.priority,
            "correlation_id": props.correlation_id,
            "reply_to": props.reply_to,
            "delivery_mode": props.delivery_mode.map(|m| m.as_u8()),
            "expiration": props.expiration.map(|e| u64::try_from(e.as_millis()).unwrap_or(u64::MAX)),
            "message_id": props.message_id,
        },
        "delivery_info": {
            "exchange": info.exchange,
            "routing_key": info.routing_key,
            "redelivered": info.redelivered,
            "queue": info.queue,
        },
    }))
}

fn render(
    delivery: &Delivery,
    format: Format,
    registry: &kombu::serializers::Registry,
) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    match format {
        Format::Json => {
            serde_json::to_writer(&mut out, &message_json(delivery, registry)?)?;
            out.push(b'\n');
        }
        Format::Body => {
            let content_type = delivery.content_type().unwrap_or("application/data");
            if is_bytes(content_type) || is_text(content_type) {
                let body = delivery
                    .decompressed_body()
                    .ctx("cannot decompress the body")?;
                out.extend_from_slice(&body);
            } else {
                serde_json::to_writer(&mut out, &body_json(delivery, registry)?)?;
            }
            out.push(b'\n');
        }
        Format::Pretty => {
            let all = message_json(delivery, registry)?;
            let info = delivery.info();
            writeln!(
                out,
                "--- from queue {:?} (exchange {:?}, routing key {:?}{})",
                info.queue,
                info.exchange,
                info.routing_key,
                if info.redelivered {
                    ", redelivered"
                } else {
                    ""
                }
            )?;
            writeln!(
                out,
                "content type: {} ({})",
                delivery.content_type().unwrap_or("none"),
                delivery
                    .message()
                    .content_encoding
                    .as_deref()
                    .unwrap_or("no encoding")
            )?;
            if !delivery.headers().is_empty() {
                writeln!(out, "headers: {}", all["headers"])?;
            }
            let set: Map<String, Json> = all["properties"]
                .as_object()
                .map(|p| {
                    p.iter()
                        .filter(|(_, v)| !v.is_null())
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            if !set.is_empty() {
                writeln!(out, "properties: {}", Json::Object(set))?;
            }
            match &all["body"] {
                Json::String(s) => writeln!(out, "body: {s}")?,
                other => writeln!(out, "body: {}", serde_json::to_string_pretty(other)?)?,
            }
        }
    }
    Ok(out)
}
