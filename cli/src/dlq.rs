//! `kombu dlq list` and `kombu dlq replay`: the dead letters of a queue.
//!
//! Both take messages from the dead-letter queue one at a time with [`Channel::get`] (nothing is
//! taken ahead), so exactly the messages shown or moved are touched. `list` holds what it shows
//! and puts it all back at the end, newest first, so that the queue keeps its order. `replay`
//! is [`kombu::dead_letter::replay`]: each message is published to its queue before it is
//! acked from the dead-letter queue, so a crash may duplicate one, never lose it.

use std::sync::Arc;

use anyhow::anyhow;
use kombu::dead_letter::{
    ORIGINAL_EXCHANGE, ORIGINAL_QUEUE, ORIGINAL_ROUTING_KEY, REASON, REDELIVERIES, TRANSPORT,
};
use kombu::transport::{Channel, Decoder};
use kombu::{Connection, Delivery};
use serde_json::{Value as Json, json};

use crate::Outcome;
use crate::cli::{DlqArgs, DlqCommand, DlqFormat, DlqListArgs, DlqReplayArgs, Global};
use crate::common::{self, Ctx as _};
use crate::consume;

pub async fn run(global: &Global, args: DlqArgs) -> anyhow::Result<Outcome> {
    match args.what {
        DlqCommand::List(args) => list(global, args).await,
        DlqCommand::Replay(args) => replay(global, args).await,
    }
}

/// A header as text (absent: `None`).
fn header(delivery: &Delivery, name: &str) -> Option<String> {
    kombu::dead_letter::header_text(delivery, name)
}

/// Opens the connection and a channel to take from the dead-letter queue; `None` when that
/// queue does not exist (nothing was ever dead-lettered there).
async fn open(
    global: &Global,
    dlq: &str,
) -> anyhow::Result<(Connection, String, Option<Arc<dyn Channel>>)> {
    let url = common::url(global)?;
    let masked = common::mask(&url);
    let conn = common::connect(&url).await?;
    let exists = conn
        .queue_exists(dlq)
        .await
        .ctx(format!("cannot look up queue {dlq:?} on {masked}"))?;
    if !exists {
        return Ok((conn, masked, None));
    }
    let channel = conn
        .channel()
        .await
        .ctx(format!("cannot open a channel on {masked}"))?;
    Ok((conn, masked, Some(channel)))
}

/// Puts held messages back, newest first, so that the queue keeps its order on transports that
/// requeue at the head.
async fn put_back(held: Vec<Delivery>, masked: &str) -> anyhow::Result<()> {
    let mut first = Ok(());
    for delivery in held.into_iter().rev() {
        let queue = delivery.queue().to_owned();
        let done = delivery.requeue().await.ctx(format!(
            "cannot put a message back on queue {queue:?} on {masked}"
        ));
        if first.is_ok() {
            first = done;
        }
    }
    first
}

async fn list(global: &Global, args: DlqListArgs) -> anyhow::Result<Outcome> {
    let dlq = args
        .dlq
        .clone()
        .unwrap_or_else(|| kombu::dead_letter::dlq_name(&args.queue));
    let (conn, masked, channel) = open(global, &dlq).await?;
    let Some(channel) = channel else {
        eprintln!("no dead letters: queue {dlq:?} does not exist on {masked}");
        conn.close().await.ok();
        return Ok(Outcome::Done);
    };
    let registry = conn.registry().clone();
    let (_, accepted) = consume::accept_list(&registry, &args.accept)?;
    let decoder = Arc::new(Decoder {
        registry: registry.clone(),
        accept: Some(accepted),
        max_decompressed_size: kombu::serializers::DEFAULT_MAX_DECOMPRESSED_SIZE,
    });
    let mut held: Vec<Delivery> = Vec::new();
    let mut shown = 0u64;
    let mut failure = None;
    while args.count.is_none_or(|c| shown < c) {
        let delivery =
            match channel.get(&dlq, false).await {
                Ok(Some(d)) => d.with_decoder(decoder.clone()),
                Ok(None) => break,
                Err(e) => {
                    failure = Some(anyhow::Error::new(common::BrokerError::from(e)).context(
                        format!("cannot take a message from queue {dlq:?} on {masked}"),
                    ));
                    break;
                }
            };
        if kombu::dead_letter::is_dead_letter_of(&delivery, &args.queue) {
            shown += 1;
            let line = match args.format {
                DlqFormat::Json => describe_json(&delivery, &registry).to_string(),
                DlqFormat::Line => describe_line(&delivery, &registry),
            };
            println!("{line}");
        }
        held.push(delivery);
    }
    let back = put_back(held, &masked).await;
    let _ = channel.close().await;
    conn.close().await.ok();
    if let Some(e) = failure {
        return Err(e);
    }
    back?;
    if shown == 0 {
        eprintln!(
            "no dead letters of queue {:?} in queue {dlq:?} on {masked}",
            args.queue
        );
    }
    Ok(Outcome::Done)
}

/// The body as `consume` shows it, or base64 with why it does not decode.
fn shown_body(
    delivery: &Delivery,
    registry: &kombu::serializers::Registry,
) -> Result<Json, (String, String)> {
    crate::render::body_json(delivery, registry).map_err(|error| {
        let bytes = delivery
            .decompressed_body()
            .map(|b| b.to_vec())
            .unwrap_or_else(|_| delivery.message().body.to_vec());
        (
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes),
            format!("{error:#}"),
        )
    })
}

fn describe_json(delivery: &Delivery, registry: &kombu::serializers::Registry) -> Json {
    let message = delivery.message();
    let mut out = json!({
        "reason": header(delivery, REASON),
        "original_queue": header(delivery, ORIGINAL_QUEUE),
        "original_exchange": header(delivery, ORIGINAL_EXCHANGE),
        "original_routing_key": header(delivery, ORIGINAL_ROUTING_KEY),
        "transport": header(delivery, TRANSPORT),
        "redeliveries": header(delivery, REDELIVERIES),
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "size": message.body.len(),
        "headers": serde_json::to_value(&message.headers).unwrap_or(Json::Null),
    });
    match shown_body(delivery, registry) {
        Ok(body) => out["body"] = body,
        Err((base64, why)) => {
            out["body_base64"] = Json::String(base64);
            out["body_error"] = Json::String(why);
        }
    }
    out
}

fn describe_line(delivery: &Delivery, registry: &kombu::serializers::Registry) -> String {
    let message = delivery.message();
    let unknown = || "?".to_owned();
    let origin = format!(
        "from queue {:?} (exchange {:?}, routing key {:?})",
        header(delivery, ORIGINAL_QUEUE).unwrap_or_else(|| delivery.queue().to_owned()),
        header(delivery, ORIGINAL_EXCHANGE).unwrap_or_else(unknown),
        header(delivery, ORIGINAL_ROUTING_KEY).unwrap_or_else(unknown),
    );
    let mut what = format!(
        "{}{}, {} bytes",
        message.content_type.as_deref().unwrap_or("no content type"),
        message
            .content_encoding
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default(),
        message.body.len()
    );
    if let Some(transport) = header(delivery, TRANSPORT) {
        what.push_str(&format!(", unreadable on {transport}"));
    }
    let body = match shown_body(delivery, registry) {
        Ok(Json::String(s)) => format!("body {:?}", s),
        Ok(other) => format!("body {other}"),
        Err((base64, _)) => format!("body (base64) {base64}"),
    };
    let body = shorten(body);
    format!(
        "{origin}, {what}: {}; {body}",
        header(delivery, REASON).unwrap_or_else(|| "no reason given".to_owned())
    )
}

/// Longest body text a `--format line` line shows; `--format json` shows all of it.
const LINE_BODY_CHARS: usize = 200;

/// `text` cut after [`LINE_BODY_CHARS`] characters, with `...` when cut.
fn shorten(text: String) -> String {
    match text.char_indices().nth(LINE_BODY_CHARS) {
        Some((end, _)) => format!("{}... (--format json shows all)", &text[..end]),
        None => text,
    }
}

async fn replay(global: &Global, args: DlqReplayArgs) -> anyhow::Result<Outcome> {
    let queue = args.queue.clone();
    let dlq = args
        .dlq
        .clone()
        .unwrap_or_else(|| kombu::dead_letter::dlq_name(&queue));
    if dlq == queue {
        return Err(anyhow!("--dlq is the queue itself ({queue:?})"));
    }
    let url = common::url(global)?;
    let masked = common::mask(&url);
    let conn = common::connect(&url).await?;
    common::require_queue(
        &conn,
        &queue,
        &masked,
        &format!("check the name, or create it with `kombu declare queue {queue}`"),
    )
    .await?;
    let (done, outcome) = kombu::dead_letter::replay(conn.as_ref(), &queue, &dlq, args.count).await;
    if !done.found && outcome.is_ok() {
        println!("moved 0 messages: queue {dlq:?} does not exist on {masked}");
        conn.close().await.ok();
        return Ok(Outcome::Done);
    }
    if done.unreadable > 0 {
        eprintln!(
            "skipped {} entr{} the transport could not read as messages; they stay in queue \
             {dlq:?} (kombu dlq list shows them)",
            done.unreadable,
            if done.unreadable == 1 { "y" } else { "ies" }
        );
    }
    println!(
        "moved {} message{} from queue {dlq:?} back to queue {queue:?} on {masked}",
        done.moved,
        if done.moved == 1 { "" } else { "s" }
    );
    conn.close().await.ok();
    outcome.map_err(|e| {
        anyhow::Error::new(common::BrokerError::from(e)).context(format!("on {masked}"))
    })?;
    Ok(Outcome::Done)
}
