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
