//! # kombu-amqp
//!
//! The AMQP 0-9-1 transport of kombu-rs, on [lapin](https://docs.rs/lapin): RabbitMQ does the
//! routing, and kombu's model maps onto AMQP as Python kombu (py-amqp) maps it, so Python kombu
//! and Celery share exchanges, queues and messages with a Rust service.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kombu_core::Result<()> {
//! kombu_amqp::register();
//! let conn = kombu_core::Connection::open("amqp://guest:guest@127.0.0.1:5672//").await?;
//! conn.producer().routing_key("celery").publish(&"hello").await?;
//! # Ok(()) }
//! ```
//!
//! ## URLs
//!
//! `amqp://[user[:password]@]host[:port][/vhost][?options]`; `amqps://` for TLS (port 5671),
//! `pyamqp://` as an alias of `amqp://`. As in kombu: user and password default to
//! `guest`, the host to `localhost` (as `127.0.0.1`), the virtual host is the path without its
//! first `/` (`amqp://h//` and `amqp://h` are `/`, `amqp://h/%2Fvh` is `/vh`). Options:
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `heartbeat` | `60` | heartbeat interval in seconds (0: off) |
//! | `connect_timeout` | `5` | seconds connecting may take |
//! | `confirm_publish` | `true` | publisher confirms: a publish returns once the broker has it |
//! | `recover` | `true` | reconnect, redeclare and resume after the connection drops |
//! | `recover_timeout` | `60` | seconds recovery keeps trying before operations fail |
//! | `ssl` | `false` | TLS on an `amqp://` URL |
//! | `ssl_ca_certs` | system roots | PEM file of the CAs that sign the server's certificate |
//! | `ssl_certfile`, `ssl_keyfile` | none | PEM files of a client certificate and its key, for brokers that verify clients |
//! | `frame_max`, `channel_max` | the broker's | connection tuning |
//! | `failover_strategy` | `round-robin` | on the first of `;`-separated URLs: the order failover tries them in (`round-robin`, `shuffle`), read by core |
//!
//! ## Mapping (as py-amqp)
//!
//! Content type and encoding are the AMQP properties of the same names; headers (with kombu's
//! `compression` header) are the application headers, integers written as signed 32-bit when
//! they fit and 64-bit otherwise, strings as long strings, byte strings as byte arrays; the
//! delivery mode is 2 (persistent) unless transient; the expiration is milliseconds as a decimal
//! string; priority, correlation id, reply-to, message id, timestamp, type, user id and app id
//! pass through. Exchanges and queues are declared with kombu's defaults (durable, not
//! auto-delete; exclusive implies auto-delete), never the default exchange or `amq.*`, and
//! queue arguments carry kombu's names (`x-message-ttl`, `x-expires`, `x-max-length`,
//! `x-max-priority`, `x-dead-letter-exchange`, `x-dead-letter-routing-key`, and any other,
//! such as `x-queue-type: quorum`, through [`Queue::argument`](kombu_core::Queue::argument)),
//! so redeclaring what Python kombu or Celery declared never fails with PRECONDITION_FAILED.
//!
//! ## Delayed delivery
//!
//! [`Publish::delay`](kombu_core::Publish::delay) and `eta` use kombu's native delayed
//! delivery, the layout Celery's workers use with quorum queues ([`delayed`]: the
//! `celery_delayed_N` levels and the `celery_delayed_delivery` exchange), so a message one side
//! delays is delivered to the other's queues. Whole seconds, rounded up; the destination is a
//! topic exchange, and its queues take the due message's key `<28 bits>.<routing key>` when
//! bound with `#.<routing key>` (Celery binds so). Delayed messages cannot also expire.
//!
//! ## Hostile headers
//!
//! Headers nested deeper than 64 tables or arrays are mapped down to that depth, the rest
//! replaced by a string saying it was left out (with a `warn` log), and their wire form is
//! dropped on a thread with a stack of its own. The AMQP client (lapin, through
//! amq-protocol-types) parses a frame's field tables recursively, with no depth limit, on a
//! thread it starts with the standard library's default stack: a publisher that nests a
//! thousand tables (a few KiB) overflows that 2 MiB stack and aborts the consuming process,
//! and the message stays first in its queue. Until the parser has a limit, a service that
//! consumes from brokers other services publish to should start with a larger default thread
//! stack, before its first connection: `RUST_MIN_STACK=268435456` (256 MiB of address space,
//! enough for the deepest nesting a 128 KiB frame holds; only what a parse uses is resident).
//! The `kombu` tool sets it for itself.
//!
//! ## Reliability
//!
//! - Publisher confirms are on by default. [`Channel::publish`](kombu_core::transport::Channel::publish)
//!   returns once the broker confirmed; a batch is published whole and its confirms awaited
//!   together. A mandatory publish that no queue takes fails with
//!   [`ErrorKind::Unroutable`](kombu_core::ErrorKind::Unroutable).
//! - Without confirms (`confirm_publish=false`: no guarantee, as in kombu) a publish returns
//!   once its frames are queued on the connection, in order, not once they are written: at
//!   most 256 publishes wait to be written before a publish waits for the oldest. Any other
//!   operation on the channel (a purge, a `get`, a declaration) waits for them (up to 5 s), so
//!   it does not overtake a publish that returned; closing the channel or the connection, or
//!   dropping the channel, writes them first, and publishing once the connection is closing
//!   is an error; a write that fails is logged.
//! - Consumers set their prefetch with `basic.qos` (per consumer, as kombu). Settling a
//!   delivery does not wait for the broker. Acks are coalesced: they are sent together as one
//!   `basic.ack` with `multiple` (covering only deliveries the application acked) when a
//!   quarter of the prefetch window (at most 64) is waiting, when the consumer has nothing to
//!   hand out while half its window is unsettled, 10 ms after the first at the latest, and
//!   before any other operation on the channel and before the channel or the connection
//!   closes. Rejects and requeues go at once. Closing or dropping the
//!   channel sends what waits and waits for it to be written. A settlement refused at once
//!   (the delivery's channel ended) is an error; one that fails later is logged, and the broker
//!   redelivers the message (as it does an acked message whose ack had not been sent when the
//!   process died: at-least-once).
//! - Channel-level errors (NOT_FOUND, PRECONDITION_FAILED, ACCESS_REFUSED) become errors of
//!   those kinds, and the channel reopens for the next operation: the connection stays usable.
//! - Recovery: when the connection drops, a background watcher (woken by lapin's connection
//!   events, and every second) or the next use of it, whichever comes first, reconnects (every
//!   failover URL in turn, with exponential backoff, for up to `recover_timeout`; an operation
//!   waiting for a recovery that fails gets its error, the connection's `link()` reads
//!   `Failed`, and the watcher tries again 5 s later, reporting `Reconnecting` from attempt 0),
//!   declares again every
//!   exchange, queue and binding this connection declared, and runs again. Failover URLs
//!   (`amqp://a;amqp://b`) are tried in turn, starting with the one in use
//!   (`?failover_strategy=shuffle` on the first URL, or the connection builder's strategy: in a
//!   new random order each round); `Connection::url` names the one in use. Consumers subscribe
//!   again by themselves, under their own `ConsumeOptions::retry` (default
//!   `RetryPolicy::forever()`: no deadline), not `recover_timeout`: a recovery round that
//!   gives up is one failed try, and the stream goes on once the broker is back; it ends with
//!   an error only when that error is not recoverable, recovery is off, or the policy gives
//!   up. A publish interrupted before its frames were written is published again on the
//!   recovered connection (within `recover_timeout`). One whose frames may have reached the
//!   broker and whose confirm did not arrive fails, its error saying the outcome is unknown
//!   (`Error::outcome_unknown`): a producer does not publish it again unless told to
//!   (`Producer::retry_unknown`: at least once, it may arrive twice), so nothing is duplicated
//!   silently. So does a batch that fails on a lost connection after some of its messages were
//!   confirmed, written or queued: publishing all of it again would duplicate those.
//!   Deliveries taken before the drop cannot be settled any more (the broker redelivers
//!   them).

mod channel;
mod connection;
mod consume;
pub mod delayed;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod lapin_channel;
mod mapping;
mod options;
mod publish;
mod settle;

use std::sync::Arc;

use async_trait::async_trait;
use kombu_core::transport::{BrokerConnection, Transport};
use kombu_core::{BrokerUrl, FailoverStrategy, Result};

pub use channel::AmqpChannel;
pub use connection::AmqpConnection;
pub use options::{AmqpOptions, OPTIONS};

/// The URL schemes of this transport.
pub const SCHEMES: &[&str] = &["amqp", "amqps", "pyamqp"];

/// The AMQP transport (`amqp://`, `amqps://`, `pyamqp://`).
#[derive(Debug, Clone, Copy, Default)]
pub struct AmqpTransport;

#[async_trait]
impl Transport for AmqpTransport {
    fn name(&self) -> &'static str {
        "amqp"
    }

    fn schemes(&self) -> &'static [&'static str] {
        SCHEMES
    }

    async fn connect(&self, url: &BrokerUrl) -> Result<Arc<dyn BrokerConnection>> {
        self.connect_with_alternates(url, std::slice::from_ref(url))
            .await
    }

    /// Connects to `url`; after the connection drops, recovery tries the AMQP URLs among
    /// `alternates` in turn, starting with the one in use (the strategy the first URL's
    /// `failover_strategy` option names, round-robin by default).
    async fn connect_with_alternates(
        &self,
        url: &BrokerUrl,
        alternates: &[BrokerUrl],
    ) -> Result<Arc<dyn BrokerConnection>> {
        let strategy = FailoverStrategy::from_urls(alternates)?;
        self.connect_failover(url, alternates, strategy).await
    }

    /// Connects to `url`; after the connection drops, recovery tries the AMQP URLs among
    /// `alternates` in `strategy`'s order: round-robin starts with the one in use (a broker
    /// that restarts is often back first), shuffle tries all in a new random order each round.
    async fn connect_failover(
        &self,
        url: &BrokerUrl,
        alternates: &[BrokerUrl],
        strategy: FailoverStrategy,
    ) -> Result<Arc<dyn BrokerConnection>> {
        let first = AmqpOptions::from_url(url)?;
        let at = alternates.iter().position(|a| a == url).unwrap_or(0);
        let mut urls = vec![first];
        let mut brokers = vec![url.clone()];
        // The ones after `url`, then the ones before it: the order round-robin tries them in.
        for other in alternates[at..].iter().skip(1).chain(&alternates[..at]) {
            if other != url && SCHEMES.contains(&other.scheme()) {
                urls.push(AmqpOptions::from_url(other)?);
                brokers.push(other.clone());
            }
        }
        Ok(Arc::new(
            AmqpConnection::open_failover(urls, brokers, strategy).await?,
        ))
    }
}

/// Registers the AMQP transport for its schemes. Idempotent.
pub fn register() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| kombu_core::transport::register_transport(Arc::new(AmqpTransport)));
}
