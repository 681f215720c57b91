//! `kombu publish`.

use std::io::{IsTerminal as _, Read as _};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use kombu::serializers::Registry;
use kombu::{Exchange, Headers, Outgoing, Producer, Queue};
use serde::Serialize;

use crate::Outcome;
use crate::cli::{Global, PublishArgs};
use crate::common::{self, Ctx as _};

/// Messages sent per broker round trip.
const CHUNK: usize = 500;

/// A body ready for its serializer.
enum Payload {
    /// For json, msgpack, yaml and other structured serializers.
    Json(serde_json::Value),
    /// For raw: bytes as given.
    Bytes(Vec<u8>),
    /// For text: UTF-8 as given.
    Text(String),
}

/// Per-message options shared by every message of the run.
struct Options {
    headers: Headers,
    priority: Option<u8>,
    expiration: Option<Duration>,
    correlation_id: Option<String>,
    reply_to: Option<String>,
    mandatory: bool,
}

pub async fn run(global: &Global, args: PublishArgs) -> anyhow::Result<Outcome> {
    let url = common::url(global)?;
    let masked = common::mask(&url);

    // Check names and read the input before connecting: a typo creates no database file.
    let registry = Registry::default();
    let serializer = registry
        .serializer(&args.serializer)
        .map_err(|e| anyhow!("{e} (available: {})", serializer_names(&registry)))?;
    let bytes_like = matches!(serializer.name(), "raw" | "text");
    let is_text = serializer.name() == "text";
    if let Some(c) = &args.compression {
        registry
            .compressor(c)
            .map_err(|e| anyhow!("{e} (available: zlib, bzip2, lzma, brotli, zstd)"))?;
    }
    let headers = common::parse_headers(&args.headers)?;
    let input = match &args.body {
        Some(body) => body.clone().into_bytes(),
        None => {
            if std::io::stdin().is_terminal() {
                eprintln!("reading the body from stdin (end with Ctrl-D, or give BODY)");
            }
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read the body from stdin")?;
            buf
        }
    };
    let pieces: Vec<&[u8]> = if args.lines {
        input
            .split(|b| *b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| !l.is_empty())
            .collect()
    } else {
        vec![&input[..]]
    };
    let payloads = pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let which = if args.lines {
                format!("line {} ", i + 1)
            } else {
                String::new()
            };
            if !bytes_like {
                serde_json::from_slice(piece)
                    .map(Payload::Json)
                    .map_err(|e| {
                        anyhow!(
                            "the body {which}is not JSON ({e}); the {} serializer takes JSON text \
                         (quote text as a JSON string, or use --serializer text)",
                            serializer.name()
                        )
                    })
            } else if is_text {
                String::from_utf8(piece.to_vec())
                    .map(Payload::Text)
                    .map_err(|_| {
                        anyhow!("the body {which}is not UTF-8 text; use --serializer raw for bytes")
                    })
            } else {
                Ok(Payload::Bytes(piece.to_vec()))
            }
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if payloads.is_empty() {
        return Err(anyhow!("nothing to publish: the input has no lines"));
    }

    let conn = common::connect(&url).await?;
    let mut producer = conn
        .producer()
        .routing_key(args.routing_key.clone())
        .serializer(serializer.name());
    if let Some(c) = &args.compression {
        producer = producer.compression(c.clone());
    }
    let exchange = (!args.exchange.is_empty())
        .then(|| Exchange::new(args.exchange.clone(), args.exchange_type.into()));
    let where_to = match &exchange {
        Some(x) => format!("exchange {:?} ({})", x.name, x.kind.as_str()),
        None => "the default exchange".to_owned(),
    };
    if let Some(x) = &exchange {
        conn.declare_exchange(x)
            .await
            .ctx(format!("cannot declare {where_to} on {masked}"))?;
        producer = producer.exchange(x.clone());
    }
    if let Some(name) = &args.declare_queue {
        let mut queue = Queue::new(name.clone());
        if let Some(x) = &exchange {
            let key = args.binding_key.as_ref().unwrap_or(&args.routing_key);
            queue = queue.exchange(x.clone()).routing_key(key.clone());
        }
        common::declare_queue_lenient(&conn, &queue)
            .await
            .ctx(format!("cannot declare queue {name:?} on {masked}"))?;
    }
    let caps = conn.capabilities();
    common::warn_unhonoured(
        &conn,
        &masked,
        &[
            (args.priority.is_some(), "--priority", caps.priorities),
            (args.expiration.is_some(), "--expiration", caps.message_ttl),
        ],
    );
    let options = Options {
        headers,
        priority: args.priority,
        expiration: args.expiration.map(Duration::from_millis),
        correlation_id: args.correlation_id.clone(),
        reply_to: args.reply_to.clone(),
        // The default exchange routes by queue name: refuse a name no queue has rather than
        // drop the message. Named exchanges with no bound queue drop it, as brokers do.
        mandatory: exchange.is_none() && conn.capabilities().mandatory,
    };

    let total = args.count.saturating_mul(payloads.len() as u64);
    let bar = common::progress((total > CHUNK as u64).then_some(total), "publishing");
    let mut batch = Vec::with_capacity(CHUNK.min(total as usize));
    let mut sent = 0u64;
    let what = format!(
        "cannot publish to {where_to} with routing key {:?} on {masked}",
        args.routing_key
    );
    for _ in 0..args.count {
        for payload in &payloads {
            let outgoing = match payload {
                Payload::Json(v) => build(&producer, v, &options),
                Payload::Bytes(b) => build(&producer, b, &options),
                Payload::Text(t) => build(&producer, t, &options),
            }
            .ctx(format!("cannot encode the body with {}", serializer.name()))?;
            batch.push(outgoing);
            if batch.len() >= CHUNK {
                let n = batch.len() as u64;
                send(&producer, &mut batch).await.ctx(what.clone())?;
                sent += n;
                bar.set_position(sent);
            }
        }
    }
    if !batch.is_empty() {
        let n = batch.len() as u64;
        send(&producer, &mut batch).await.ctx(what.clone())?;
        sent += n;
    }
    bar.finish_and_clear();
    let confirmed = if !args.confirm {
        ""
    } else if conn.capabilities().publisher_confirms {
        ", confirmed by the broker"
    } else {
        ", committed to the store"
    };
    println!(
        "published {sent} message{} to {where_to} with routing key {:?} on {masked}{confirmed}",
        if sent == 1 { "" } else { "s" },
        args.routing_key
    );
    Ok(Outcome::Done)
}

fn build<T: Serialize + ?Sized>(
    producer: &Producer,
    value: &T,
    options: &Options,
) -> kombu::Result<Outgoing> {
    let mut publish = producer
        .message(value)
        .headers(options.headers.clone())
        .mandatory(options.mandatory);
    if let Some(p) = options.priority {
        publish = publish.priority(p);
    }
    if let Some(e) = options.expiration {
        publish = publish.expiration(e);
    }
    if let Some(id) = &options.correlation_id {
        publish = publish.correlation_id(id.clone());
    }
    if let Some(q) = &options.reply_to {
        publish = publish.reply_to(q.clone());
    }
    publish.build()
}

async fn send(producer: &Producer, batch: &mut Vec<Outgoing>) -> kombu::Result<()> {
    producer.send_batch(std::mem::take(batch)).await
}

fn serializer_names(registry: &Registry) -> String {
    registry
        .serializers()
        .map(|s| s.name().to_owned())
        .collect::<Vec<_>>()
        .join(", ")
}
