//! `kombu publish`.

use std::io::{IsTerminal as _, Read as _};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use kombu::serializers::Registry;
use kombu::{Binding, Connection, ErrorKind, Exchange, Headers, Outgoing, Producer, Queue};
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
    /// Set on each message rather than on the producer, which would declare it again.
    exchange: String,
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

    if args.exchange.is_empty() && args.routing_key.is_empty() {
        return Err(anyhow!(
            "no --routing-key: on the default exchange (no --exchange) the routing key names the \
             queue; give --routing-key QUEUE, or --exchange"
        ));
    }

    let conn = common::connect(&url).await?;
    let caps = conn.capabilities();
    let durable = !args.transient;
    let mut producer = conn
        .producer()
        .routing_key(args.routing_key.clone())
        .serializer(serializer.name());
    if let Some(c) = &args.compression {
        producer = producer.compression(c.clone());
    }
    let where_to = if args.exchange.is_empty() {
        "the default exchange".to_owned()
    } else {
        declare_exchange(&conn, &args, durable, &masked).await?
    };
    if let Some(name) = &args.declare_queue {
        common::declare_queue_lenient(&conn, &Queue::new(name.clone()).durable(durable))
            .await
            .ctx(format!("cannot declare queue {name:?} on {masked}"))?;
        // Bound by name: the exchange exists now, whatever its type.
        if !args.exchange.is_empty() {
            let key = args.binding_key.as_ref().unwrap_or(&args.routing_key);
            conn.bind(name, &Binding::new(args.exchange.clone(), key.clone()))
                .await
                .ctx(format!(
                    "cannot bind queue {name:?} to exchange {:?} on {masked}",
                    args.exchange
                ))?;
        }
    }
    common::warn_unhonoured(
        &conn,
        &masked,
        &[
            (
                args.priority.is_some(),
                "--priority",
                caps.priorities || caps.priority_buckets,
            ),
            (args.expiration.is_some(), "--expiration", caps.message_ttl),
            (args.mandatory, "--mandatory", caps.mandatory),
        ],
    );
    let mandatory = if args.exchange.is_empty() {
        check_queue(&conn, &args, &where_to, &masked).await?
    } else {
        args.mandatory
    };
    let options = Options {
        headers,
        priority: args.priority,
        expiration: args.expiration.map(Duration::from_millis),
        correlation_id: args.correlation_id.clone(),
        reply_to: args.reply_to.clone(),
        exchange: args.exchange.clone(),
        mandatory: mandatory && caps.mandatory,
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
        bar.set_position(sent);
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
    let mut outgoing = publish.build()?;
    outgoing.exchange.clone_from(&options.exchange);
    Ok(outgoing)
}

async fn send(producer: &Producer, batch: &mut Vec<Outgoing>) -> kombu::Result<()> {
    producer.send_batch(std::mem::take(batch)).await
}

/// Declares `--exchange`: with `--exchange-type`, as asked (an error if it exists with another
/// type or durability). Without, an existing exchange is used as it is, not declared (a
/// declaration that differs would fail, and on AMQP close the channel), and a missing one is
/// declared direct. Returns how the summary names it.
async fn declare_exchange(
    conn: &Connection,
    args: &PublishArgs,
    durable: bool,
    masked: &str,
) -> anyhow::Result<String> {
    let name = &args.exchange;
    let asked = args.exchange_type.map(kombu::ExchangeKind::from);
    if asked.is_none() {
        let exists = conn
            .exchange_exists(name)
            .await
            .ctx(format!("cannot look up exchange {name:?} on {masked}"))?;
        if exists {
            if args.transient {
                eprintln!(
                    "warning: exchange {name:?} exists on {masked} and is used as it is: \
                     --transient applies only to what publish declares"
                );
            }
            return Ok(format!("exchange {name:?}"));
        }
    }
    let exchange =
        Exchange::new(name.clone(), asked.unwrap_or(kombu::ExchangeKind::Direct)).durable(durable);
    match conn.declare_exchange(&exchange).await {
        Ok(()) => Ok(format!("exchange {name:?} ({})", exchange.kind.as_str())),
        // Declared meanwhile by someone else, otherwise, and no type was asked for: as it is.
        Err(e) if e.kind() == ErrorKind::PreconditionFailed && asked.is_none() => {
            Ok(format!("exchange {name:?}"))
        }
        Err(e) => Err(e).ctx(format!(
            "cannot declare exchange {name:?} ({}{}) on {masked}",
            if durable { "durable " } else { "transient " },
            exchange.kind.as_str()
        )),
    }
}

/// On the default exchange: whether the routing key's queue exists anywhere, asked once for the
/// whole run. Where the broker keeps messages for a queue nobody declared (Redis and SQLite, as
/// Python kombu: `Capabilities::implicit_queues`), a missing queue is a warning unless
/// `--mandatory`; where it would drop them (AMQP, memory), an error. Returns whether the messages must still be published as mandatory (they are where
/// the broker would drop them, so that a queue deleted meanwhile is an error too).
async fn check_queue(
    conn: &Connection,
    args: &PublishArgs,
    where_to: &str,
    masked: &str,
) -> anyhow::Result<bool> {
    let queue = &args.routing_key;
    let stores = conn.capabilities().implicit_queues;
    let exists = conn
        .queue_exists(queue)
        .await
        .ctx(format!("cannot look up queue {queue:?} on {masked}"))?;
    if !exists {
        if args.mandatory || !stores {
            let why = if stores {
                "(--mandatory)"
            } else {
                "(this broker drops a message that no queue takes)"
            };
            let create = format!(
                "check the name, or create the queue first with --declare-queue {queue} or \
                 `kombu declare queue {queue}`"
            );
            let hint = if conn.url().scheme() == "memory" {
                format!("{}; {create}", common::MEMORY_NOTE)
            } else {
                create
            };
            return Err(common::hinted(
                format!(
                    "cannot publish to {where_to} with routing key {queue:?} on {masked}: no \
                     queue {queue:?} exists {why}"
                ),
                hint,
            ));
        }
        eprintln!(
            "warning: no queue {queue:?} exists on {masked}; the messages are stored under that \
             name all the same, as Python kombu does, until something consumes queue {queue:?} \
             (--mandatory makes this an error)"
        );
    }
    Ok(args.mandatory || !stores)
}

fn serializer_names(registry: &Registry) -> String {
    registry
        .serializers()
        .map(|s| s.name().to_owned())
        .collect::<Vec<_>>()
        .join(", ")
}
