//! Dead letters: where a message that cannot be consumed goes, and the headers it carries.
//!
//! Nothing a consumer cannot read is dropped or left to block its queue. Two kinds of message
//! end up here:
//!
//! - **Unreadable envelopes** (virtual transports: Redis, SQLite, ...): a stored entry that
//!   is not a kombu envelope at all (not JSON, a JSON array, a bad `body_encoding`, a BLOB
//!   row, ...). Core moves it to the queue [`dlq_name`]`(queue)` with the stored bytes as its
//!   body (`application/octet-stream`), in one step where the store allows and never with a
//!   moment where it is in neither place; logs it at `warn`; and the consumer receives an
//!   [`ErrorKind::DeadLettered`](crate::ErrorKind::DeadLettered) error item carrying a
//!   [`DeadLettered`] before it goes on to the next message.
//! - **Poison messages** (every transport): a delivery whose body cannot be decoded or is
//!   refused (accept list, decompression bound, signature). The consumer's
//!   [`ErrorAction`](crate::ErrorAction) decides; the default dead-letters it: to its queue's
//!   dead-letter exchange where one is declared (`x-dead-letter-exchange`, with
//!   `x-dead-letter-routing-key` or the message's own routing key), else to the queue
//!   [`dlq_name`]`(queue)`, declared on first use. The copy keeps the body byte for byte, its
//!   properties and headers; the original is acked only once the broker took the copy. The
//!   exchange is used only when it exists and the connection can publish mandatory messages
//!   (so a copy no queue takes comes back as unroutable and goes to `<queue>.dlq` instead); on
//!   AMQP with `confirm_publish=false` that is not the case, and the copy to `<queue>.dlq` is
//!   sent without a confirmation.
//!
//! Every dead letter carries [`REASON`], [`ORIGINAL_QUEUE`], [`ORIGINAL_EXCHANGE`] and
//! [`ORIGINAL_ROUTING_KEY`]; an unreadable envelope also [`TRANSPORT`]. What a broker
//! dead-letters by itself (a TTL, a length limit, a reject by another client) carries RabbitMQ's
//! `x-death` instead, which core writes the same way on virtual transports.

use std::fmt;

use crate::channel::{Delivery, Outgoing};
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::value::Value;

/// Header: why the message was dead-lettered (a sentence, e.g. `unreadable envelope: ...` or
/// `not accepted: ...`).
pub const REASON: &str = "x-kombu-dead-reason";
/// Header: the queue the message was taken from.
pub const ORIGINAL_QUEUE: &str = "x-kombu-original-queue";
/// Header: the exchange the message was published to (empty when unknown, as for an
/// unreadable envelope).
pub const ORIGINAL_EXCHANGE: &str = "x-kombu-original-exchange";
/// Header: the routing key the message was published with (empty when unknown).
pub const ORIGINAL_ROUTING_KEY: &str = "x-kombu-original-routing-key";
/// Header: the transport an unreadable envelope was found on (`redis`, `sqlite`, ...).
pub const TRANSPORT: &str = "x-kombu-transport";
/// Header: how many times [`ErrorAction::Requeue`](crate::ErrorAction::Requeue) has put the
/// message back (absent: never). Past the consumer's limit it is dead-lettered.
pub const REDELIVERIES: &str = "x-kombu-redeliveries";

/// The suffix of a dead-letter queue's name.
pub const DLQ_SUFFIX: &str = ".dlq";

/// The dead-letter queue of `queue`: `<queue>.dlq`.
///
/// ```
/// assert_eq!(kombu_core::dead_letter::dlq_name("jobs"), "jobs.dlq");
/// ```
pub fn dlq_name(queue: &str) -> String {
    format!("{queue}{DLQ_SUFFIX}")
}

/// Where a message that could not be consumed went, and why. Carried by an
/// [`ErrorKind::DeadLettered`](crate::ErrorKind::DeadLettered) error
/// ([`Error::dead_lettered`](crate::Error::dead_lettered)) and returned by
/// [`Consumer::dead_letter`](crate::Consumer::dead_letter).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLettered {
    /// The queue the message was taken from.
    pub queue: String,
    /// Why (the [`REASON`] header).
    pub reason: String,
    /// Where it went.
    pub destination: Destination,
}

/// Where a dead letter was put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Stored in this queue (`<queue>.dlq`).
    Queue(String),
    /// Published to the queue's dead-letter exchange with this routing key.
    Exchange {
        /// The dead-letter exchange.
        exchange: String,
        /// The routing key it was published with.
        routing_key: String,
    },
}

impl DeadLettered {
    /// A record of a dead letter.
    pub fn new(
        queue: impl Into<String>,
        reason: impl Into<String>,
        destination: Destination,
    ) -> Self {
        DeadLettered {
            queue: queue.into(),
            reason: reason.into(),
            destination,
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Queue(queue) => write!(f, "queue {queue:?}"),
            Destination::Exchange {
                exchange,
                routing_key,
            } => write!(f, "exchange {exchange:?} (routing key {routing_key:?})"),
        }
    }
}

impl fmt::Display for DeadLettered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "message from queue {:?} dead-lettered to {}: {}",
            self.queue, self.destination, self.reason
        )
    }
}

impl std::error::Error for DeadLettered {}

/// The headers dead-lettering adds, which [`replay`] removes.
pub const DEAD_LETTER_HEADERS: [&str; 6] = [
    REASON,
    ORIGINAL_QUEUE,
    ORIGINAL_EXCHANGE,
    ORIGINAL_ROUTING_KEY,
    TRANSPORT,
    REDELIVERIES,
];

/// A header of a delivery as text (a string as it is, anything else as JSON).
pub fn header_text(delivery: &Delivery, name: &str) -> Option<String> {
    match delivery.headers().get(name)? {
        Value::String(s) => Some(s.clone()),
        other => {
            Some(serde_json::to_value(other).map_or_else(|_| String::new(), |v| v.to_string()))
        }
    }
}

/// Whether a message of a dead-letter queue is one of `queue`'s: a dead-letter queue shared
/// by several queues (one bound to a dead-letter exchange) holds others' too. The queue it
/// came from is [`ORIGINAL_QUEUE`] (kombu-rs's dead letters), else `x-first-death-queue`
/// (what RabbitMQ, and core on virtual transports, dead-letter by themselves); a message with
/// neither counts as `queue`'s.
pub fn is_dead_letter_of(delivery: &Delivery, queue: &str) -> bool {
    header_text(delivery, ORIGINAL_QUEUE)
        .or_else(|| header_text(delivery, "x-first-death-queue"))
        .is_none_or(|q| q == queue)
}

/// What [`replay`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Replayed {
    /// Whether the dead-letter queue exists (nothing to replay when not).
    pub found: bool,
    /// Messages published back to the queue and removed from the dead-letter queue.
    pub moved: u64,
    /// Entries of the queue left in the dead-letter queue because they never were messages
    /// (unreadable envelopes, with [`TRANSPORT`]): replaying them would fail again.
    pub unreadable: u64,
}

/// Moves up to `max` (all when `None`) of `queue`'s dead letters from `dlq` back to
/// `queue`, oldest first, looking at no more messages than `dlq` held when it began: each is published to `queue` through the default exchange
/// (mandatory where the transport can tell an unroutable message) without the
/// [`DEAD_LETTER_HEADERS`], and only then removed from `dlq`, so a crash may duplicate one,
/// never lose it. Messages are taken one at a time with [`Channel::get`](crate::transport::Channel::get)
/// (nothing is taken ahead); those of other queues and unreadable entries are put back, in
/// their order, at the end.
///
/// Returns what was moved, and the failure that stopped it, if one did (what was moved
/// before stays moved; the message in hand goes back to `dlq`).
pub async fn replay(
    conn: &Connection,
    queue: &str,
    dlq: &str,
    max: Option<u64>,
) -> (Replayed, Result<()>) {
    let mut done = Replayed::default();
    if dlq == queue {
        return (
            done,
            Err(Error::config(format!(
                "the dead-letter queue is the queue itself ({queue:?})"
            ))),
        );
    }
    match conn.queue_exists(dlq).await {
        Ok(true) => done.found = true,
        Ok(false) => return (done, Ok(())),
        Err(e) => return (done, Err(e.context(format!("look up queue {dlq:?}")))),
    }
    // What is there now, and no more: a consumer that dead-letters a replayed message
    // again must not keep this going, nor others' messages pile up in `held`.
    let present = match conn.queue_size(dlq).await {
        Ok(n) => n,
        Err(e) => return (done, Err(e.context(format!("size of queue {dlq:?}")))),
    };
    let channel = match conn.channel().await {
        Ok(channel) => channel,
        Err(e) => return (done, Err(e.context("open a channel"))),
    };
    let mandatory = conn.capabilities().mandatory;
    let sender = conn.default_channel().clone();
    let mut held: Vec<Delivery> = Vec::new();
    let mut failure = Ok(());
    let mut taken = 0u64;
    while max.is_none_or(|m| done.moved < m) && taken < present {
        taken += 1;
        let delivery = match channel.get(dlq, false).await {
            Ok(Some(d)) => d,
            Ok(None) => break,
            Err(e) => {
                failure = Err(e.context(format!("take a message from queue {dlq:?}")));
                break;
            }
        };
        if !is_dead_letter_of(&delivery, queue) {
            held.push(delivery);
            continue;
        }
        if delivery.headers().contains_key(TRANSPORT) {
            done.unreadable += 1;
            held.push(delivery);
            continue;
        }
        let mut message = delivery.message().clone();
        for name in DEAD_LETTER_HEADERS {
            message.headers.remove(name);
        }
        let out = Outgoing::new("", queue.to_owned(), message).mandatory(mandatory);
        if let Err(e) = sender.publish(out).await {
            // The delivery goes back to the dead-letter queue with the held ones.
            held.push(delivery);
            failure = Err(e.context(format!(
                "publish to queue {queue:?} ({} moved so far; the one in hand stays in queue \
                 {dlq:?})",
                done.moved
            )));
            break;
        }
        if let Err(e) = delivery.ack().await {
            failure = Err(e.error.context(format!(
                "queue {queue:?} has the message but removing it from queue {dlq:?} failed: it \
                 may be replayed twice"
            )));
            break;
        }
        done.moved += 1;
    }
    // Newest first, so that the queue keeps its order where a requeue goes to the head.
    for delivery in held.into_iter().rev() {
        let back = delivery.requeue().await;
        if let (Ok(()), Err(e)) = (&failure, back) {
            failure = Err(e
                .error
                .context(format!("put a message back on queue {dlq:?}")));
        }
    }
    let _ = channel.close().await;
    (done, failure)
}
