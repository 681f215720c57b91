//! What a transport can do, as data.
//!
//! Every transport publishes one [`Capabilities`] value. The public API reads it to refuse what a
//! transport cannot do with a clear error, and the conformance suite reads it to decide which
//! behaviours a transport must pass (and checks that the transport says so when it cannot).

use crate::entity::ExchangeKind;

/// What a transport can do.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Direct exchanges route.
    pub direct: bool,
    /// Topic exchanges route (`*` one word, `#` zero or more).
    pub topic: bool,
    /// Fanout exchanges route.
    pub fanout: bool,
    /// Headers exchanges route (`x-match` all / any).
    pub headers: bool,
    /// Queues honour message priorities (with `max_priority` set).
    pub priorities: bool,
    /// Message priorities take effect as in kombu's Redis transport rather than AMQP's order:
    /// each message goes to one of its queue's priority buckets and lower numbers are consumed
    /// first, whatever the queue's `max_priority`. [`priorities`](Capabilities::priorities)
    /// (higher first) is off then.
    pub priority_buckets: bool,
    /// Per-message expiration and queue message TTL are honoured.
    pub message_ttl: bool,
    /// Queues with `max_length` drop their oldest messages.
    pub max_length: bool,
    /// Rejected, expired and overflowed messages go to the queue's dead-letter exchange.
    pub dead_lettering: bool,
    /// Messages can be published to become visible later.
    pub delayed_delivery: bool,
    /// Messages survive a broker (or process) restart.
    pub persistent: bool,
    /// Several processes can share the broker.
    pub shared_between_processes: bool,
    /// An unacked message whose consumer went silent returns after a visibility timeout: a
    /// take records its time (or that of its last
    /// [`extend_lease`](crate::Delivery::extend_lease)), and any consumer restores it once its
    /// own visibility timeout has passed since (see the
    /// [`Backend`](crate::transport::virtual_transport::Backend#visibility-the-one-rule) contract).
    pub visibility_timeout: bool,
    /// Unacked messages return to their queue when their consumer or channel is dropped.
    pub restore_on_drop: bool,
    /// Publishes can be confirmed by the broker.
    pub publisher_confirms: bool,
    /// A mandatory publish ([`Publish::mandatory`](crate::Publish::mandatory)) that no queue
    /// takes (an exchange with no matching binding, or the default exchange with a routing key
    /// that names no queue) fails with [`ErrorKind::Unroutable`](crate::ErrorKind::Unroutable).
    pub mandatory: bool,
    /// Time-based behaviour (TTL, visibility timeout) follows tokio's clock, so tests can use
    /// `tokio::time::pause()`.
    pub tokio_clock: bool,
    /// A publish to the default exchange naming a queue that exists nowhere stores the message
    /// for that queue, as Python kombu does (Redis: a queue is its list, made by the first push;
    /// SQLite: kombu's SQLAlchemy transport creates the `kombu_queue` row), instead of dropping
    /// it as AMQP and the memory transport do. Either way a mandatory publish fails with
    /// [`ErrorKind::Unroutable`](crate::ErrorKind::Unroutable) for such a queue.
    pub implicit_queues: bool,
    /// A queue's ready messages can be read without taking them
    /// ([`Channel::peek`](crate::transport::Channel::peek)): nothing is delivered, marked
    /// redelivered or reordered. AMQP 0-9-1 has no such operation (only a get and a requeue,
    /// which marks the message redelivered).
    pub peek: bool,
}

impl Capabilities {
    /// Everything off; transports switch on what they have.
    pub const fn none() -> Self {
        Capabilities {
            direct: false,
            topic: false,
            fanout: false,
            headers: false,
            priorities: false,
            priority_buckets: false,
            message_ttl: false,
            max_length: false,
            dead_lettering: false,
            delayed_delivery: false,
            persistent: false,
            shared_between_processes: false,
            visibility_timeout: false,
            restore_on_drop: false,
            publisher_confirms: false,
            mandatory: false,
            tokio_clock: false,
            implicit_queues: false,
            peek: false,
        }
    }

    /// Whether exchanges of this kind route.
    pub fn supports_exchange(&self, kind: ExchangeKind) -> bool {
        match kind {
            ExchangeKind::Direct => self.direct,
            ExchangeKind::Topic => self.topic,
            ExchangeKind::Fanout => self.fanout,
            ExchangeKind::Headers => self.headers,
        }
    }
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities::none()
    }
}
