//! Virtual transports: brokers that only store (Redis, MongoDB, SQLite, memory).
//!
//! A store-only broker implements [`Backend`]: put and take messages, keep the binding table, and
//! the reliability operations (move to unacked on delivery, ack, restore, visibility timeout).
//! [`VirtualChannel`] turns any backend into a full [`Channel`](crate::transport::Channel): it routes
//! (direct, topic, fanout, headers), builds the kombu envelope, counts prefetch, numbers delivery
//! tags, settles, dead-letters, and restores unsettled messages when it is dropped. Routing,
//! envelope and bookkeeping exist here once, never in a backend.

mod channel;
pub mod envelope;
pub mod router;
mod shared;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::capabilities::Capabilities;
use crate::entity::{Exchange, Queue};
use crate::error::Result;
use crate::value::Headers;

pub use crate::message::Envelope;
pub use channel::VirtualChannel;
pub use shared::{TopologyCache, VirtualConnection};

/// A backend's handle on a taken (unacked) message, used to ack, reject or restore it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Receipt {
    /// A number (a sequence or row id).
    Id(u64),
    /// A key (a kombu delivery tag).
    Key(String),
}

/// A message taken from a queue.
#[derive(Debug, Clone)]
pub struct Taken {
    /// The stored message, shared: a backend that keeps it for redelivery and the delivery
    /// handed to the consumer hold the same one, with no copy.
    pub envelope: Arc<Envelope>,
    /// How to settle it (meaningless for no-ack takes).
    pub receipt: Receipt,
}

/// A binding as stored in the broker's binding table.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingRow {
    /// Exchange name.
    pub exchange: String,
    /// Binding key.
    pub routing_key: String,
    /// Bound queue.
    pub queue: String,
    /// Binding arguments (headers-exchange match table and `x-match`).
    pub arguments: Headers,
}

/// Why a message was dead-lettered (the `reason` of RabbitMQ's `x-death`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    /// Rejected without requeue.
    Rejected,
    /// Its TTL passed.
    Expired,
    /// Dropped from the head of a full queue.
    MaxLength,
}

impl DeathReason {
    /// RabbitMQ's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::MaxLength => "maxlen",
        }
    }
}

/// A message that left its queue for the queue's dead-letter exchange. Backends return these
/// (only for queues that have a dead-letter exchange); core republishes them.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The message.
    pub envelope: Envelope,
    /// The queue it left.
    pub queue: String,
    /// Why.
    pub reason: DeathReason,
    /// The queue's dead-letter exchange.
    pub exchange: String,
    /// The queue's dead-letter routing key (none: the message's own).
    pub routing_key: Option<String>,
}

/// What [`Backend::get_many`] found.
#[derive(Debug, Default)]
pub struct Fetched {
    /// Taken messages, oldest (or highest priority) first.
    pub taken: Vec<Taken>,
    /// Messages found expired on the way, for dead-lettering.
    pub dead: Vec<DeadLetter>,
}

/// How a message is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeMode {
    /// Removed at once (no-ack consumers).
    NoAck,
    /// Kept as unacked until settled or restored; with a visibility timeout, restored by itself
    /// when it passes without a settlement.
    Lease(Option<Duration>),
}

/// The store-only broker contract. Every method is one logical broker operation; backends do
/// no routing and build no envelopes.
///
/// Semantics a backend must keep:
/// - `put`/`put_many` append to the named queue (in priority order where the backend has
///   priorities; higher number first). A put to a queue that was never declared may create it
///   (as kombu does: Redis, SQLite) or drop the message (memory); it must never reach another
///   queue.
/// - `get_many` takes up to `max` ready messages from one queue. In [`TakeMode::Lease`] each moves
///   to the backend's unacked set atomically with the take, so a crash between the two cannot
///   lose it.
/// - `ack` removes an unacked message; `reject` removes it and hands it back as a
///   [`DeadLetter`] when the queue has a dead-letter exchange; `restore` puts it back at the
///   head of its queue, marked redelivered. All three succeed for a receipt that is already gone
///   (a lease that expired and was restored), so a late settlement is harmless.
/// - leases that pass are restored (marked redelivered) by the backend before or during the next
///   `get_many` or `wait` on that queue.
/// - `wait` returns when a message may be ready on one of the queues, or after `timeout`; it
///   blocks or subscribes where the broker can, and polls with a bounded interval otherwise.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// What the backend stores and enforces (routing capabilities are core's and ignored here).
    fn capabilities(&self) -> Capabilities;

    /// Records an exchange (its type) where other connections can find it.
    async fn declare_exchange(&self, exchange: &Exchange) -> Result<()>;
    /// Looks an exchange up.
    async fn lookup_exchange(&self, name: &str) -> Result<Option<Exchange>>;
    /// Removes an exchange and every binding to it.
    async fn delete_exchange(&self, name: &str) -> Result<()>;

    /// Creates a queue (idempotent) and records its arguments (priority, TTL, length, DLX).
    async fn declare_queue(&self, queue: &Queue) -> Result<()>;
    /// Deletes a queue, its messages and its bindings; returns how many ready messages it held.
    async fn delete_queue(&self, queue: &str) -> Result<u64>;
    /// Whether a queue exists: the backend knows it (declared, holding messages, or named in
    /// the broker's binding table by any client, Python kombu's included). Asked by
    /// [`Channel::queue_exists`](crate::transport::Channel::queue_exists), by mandatory publishes to the
    /// default exchange (once per distinct queue of a batch), and when `size` or `purge` find
    /// nothing (a queue that exists nowhere is then `NotFound`). Never creates the queue.
    /// Brokers whose queues exist implicitly keep the default, `true`.
    async fn queue_exists(&self, queue: &str) -> Result<bool> {
        let _ = queue;
        Ok(true)
    }

    /// Adds a row to the binding table (idempotent).
    async fn bind(&self, row: &BindingRow) -> Result<()>;
    /// Removes a row from the binding table (idempotent).
    async fn unbind(&self, row: &BindingRow) -> Result<()>;
    /// Every binding of an exchange.
    async fn bindings(&self, exchange: &str) -> Result<Arc<[BindingRow]>>;

    /// Stores a message in a queue; returns messages pushed out of a full queue.
    async fn put(&self, queue: &str, envelope: Envelope) -> Result<Vec<DeadLetter>>;
    /// Stores many messages in one round trip.
    async fn put_many(&self, items: Vec<(String, Envelope)>) -> Result<Vec<DeadLetter>>;

    /// Takes up to `max` ready messages from one queue.
    async fn get_many(&self, queue: &str, max: usize, mode: TakeMode) -> Result<Fetched>;
    /// Removes an unacked message.
    async fn ack(&self, queue: &str, receipt: &Receipt) -> Result<()>;
    /// Acks at once when the backend can without I/O (in-process); `None` means use `ack`.
    fn try_ack(&self, queue: &str, receipt: &Receipt) -> Option<Result<()>> {
        let _ = (queue, receipt);
        None
    }
    /// Removes an unacked message; hands it back if the queue dead-letters.
    async fn reject(&self, queue: &str, receipt: &Receipt) -> Result<Option<DeadLetter>>;
    /// Returns an unacked message to the head of its queue, marked redelivered.
    async fn restore(&self, queue: &str, receipt: &Receipt) -> Result<()>;
    /// Pushes an unacked message's lease to `by` from now.
    async fn extend_lease(&self, queue: &str, receipt: &Receipt, by: Duration) -> Result<()>;

    /// Removes every ready message; returns how many.
    async fn purge(&self, queue: &str) -> Result<u64>;
    /// Number of ready messages.
    async fn size(&self, queue: &str) -> Result<u64>;
    /// Waits until one of `queues` may have a message, or `timeout`.
    async fn wait(&self, queues: &[String], timeout: Duration) -> Result<()>;

    /// Whether the backend carries fanout exchanges itself (kombu's Redis PUB/SUB): a publish
    /// to a fanout exchange with at least one binding then goes once to
    /// [`publish_fanout`](Self::publish_fanout) instead of into each bound queue, and the
    /// backend hands what it receives to consumers of the bound queues through `get_many`.
    fn native_fanout(&self) -> bool {
        false
    }

    /// Publishes to a fanout exchange (the envelope names it) when
    /// [`native_fanout`](Self::native_fanout) is on.
    async fn publish_fanout(&self, envelope: Envelope) -> Result<()> {
        let _ = envelope;
        Err(crate::error::Error::new(
            crate::error::ErrorKind::Unsupported,
            "this backend does not carry fanout exchanges itself",
        ))
    }

    /// Writes settlements the backend queued to batch them (a channel calls it when it
    /// closes, so a closed consumer's acks are on the broker). Default: nothing is queued.
    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    /// How many times an idle consumer looks again, yielding to the runtime in between, before
    /// it calls [`Backend::wait`]. Only for in-process backends, where a look costs no I/O: a
    /// steady stream of publishes then costs no thread wake-up per message. Default 0.
    fn idle_spins(&self) -> u32 {
        0
    }
}
