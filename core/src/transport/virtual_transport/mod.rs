//! Virtual transports: brokers that only store (Redis, MongoDB, SQLite, memory).
//!
//! A store-only broker implements [`Backend`]: twelve required methods to declare and look up
//! exchanges and queues, keep the binding table, put and take messages, and settle them (ack
//! in batches, reject or requeue), plus provided ones with defaults correct for a plain store
//! (`put`, `queue_exists`, `purge`, `wait`, `extend_lease`, `publish_fanout`, and `link`,
//! `epoch` and `url_in_use` for a backend that reconnects). [`VirtualChannel`] turns any
//! backend into a full [`Channel`](crate::transport::Channel): it routes (direct, topic, fanout, headers),
//! builds the kombu envelope, compares redeclarations with what is stored, counts prefetch,
//! numbers delivery tags, coalesces acks, settles, dead-letters, and restores unsettled
//! messages when it is dropped. Routing, envelope and bookkeeping exist here once, never in a
//! backend.
//!
//! Why this shape: a backend author writes only what touches the store. Declarations are
//! "store if absent, return what is stored" ([`Backend::exchange`], [`Backend::queue`]), so
//! the `PreconditionFailed` check is core's and one lookup answers existence and size alike
//! (as AMQP's `declare-ok` carries the message count). Acks arrive as
//! [`Backend::ack_many`] batches that core gathers (see the `acks` module: a size and time
//! bound, and at once for a lease about to end), so no backend keeps an ack queue of its own.
//! Performance knobs are data ([`BackendCapabilities`]), not methods. Messages a backend hands
//! over outright (Redis fanout) carry [`Receipt::Unleased`] and never go back to it.

mod acks;
mod backend;
mod channel;
mod consume;
mod declare;
pub mod envelope;
#[cfg(test)]
mod heal_tests;
mod poll;
mod publish;
pub mod router;
mod settle;
mod shared;
mod unreadable;

use std::sync::Arc;
use std::time::Duration;

use crate::value::Headers;

pub use crate::message::Envelope;
pub use backend::{Backend, BackendCapabilities, StoredQueue, queue_settings};
pub use channel::VirtualChannel;
pub use poll::poll_until_ready;
pub use shared::{TopologyCache, VirtualConnection};
pub use unreadable::dead_letter_envelope;

/// A backend's handle on a taken (unacked) message, used to ack, reject or restore it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Receipt {
    /// A number (a sequence or row id).
    Id(u64),
    /// A key (a kombu delivery tag).
    Key(String),
    /// The message was handed over outright: the backend holds nothing of it to settle (a
    /// fanout message received over Redis PUB/SUB, at-most-once as in kombu). Core never
    /// passes it back to the backend: an ack or a reject drops the message, a requeue or a
    /// restore stores it again in its queue with [`Backend::put`], marked redelivered.
    Unleased,
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
    /// Entries taken that are not kombu envelopes (not JSON, a bad body encoding, not text):
    /// taken like the others (leased, in [`TakeMode::Lease`]), never dropped; core moves each
    /// to its queue's `<queue>.dlq` with [`Backend::set_aside`].
    pub unreadable: Vec<Unreadable>,
}

/// A stored entry that could not be read as a kombu envelope, as [`Backend::get_many`] took it.
#[derive(Debug, Clone)]
pub struct Unreadable {
    /// The stored bytes, exactly as found.
    pub raw: bytes::Bytes,
    /// Why it could not be read.
    pub reason: String,
    /// Its lease, settled by [`Backend::set_aside`]; [`Receipt::Unleased`] for an entry the
    /// backend no longer holds (taken in [`TakeMode::NoAck`], or received over PUB/SUB).
    pub receipt: Receipt,
}

/// How a message is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeMode {
    /// Removed at once (no-ack consumers).
    NoAck,
    /// Kept as unacked, with the time of the take, until settled or restored. The duration is
    /// the taker's visibility timeout: the take restores, first, every lease whose take (or
    /// last extension) is at least that long ago ([the visibility
    /// rule](crate::transport::virtual_transport::Backend#visibility-the-one-rule)); `None`
    /// restores nothing by time.
    Lease(Option<Duration>),
}
