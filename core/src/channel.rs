//! The native transport contract: [`Channel`], and the [`Delivery`] it hands out.
//!
//! A transport whose broker routes (AMQP) implements [`Channel`] directly. Store-only brokers
//! implement the smaller [`Backend`](crate::transport::virtual_transport::Backend) trait instead, and core's
//! virtual channel turns it into a `Channel`. Either way the rest of the library (Producer,
//! Consumer, the conformance suite) sees only `Channel`.
//!
//! What every method must guarantee is written on [`Channel`] itself.
//!
//! Over 700 lines because it is the whole contract of a transport with the one type it hands
//! out, documented with runnable examples; split, the contract would be read in pieces.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use serde::de::DeserializeOwned;

use crate::capabilities::Capabilities;
pub use crate::decoder::Decoder;
use crate::entity::{Binding, Exchange, Queue};
use crate::error::{Error, ErrorKind, Result};
use crate::message::{DeliveryInfo, Envelope, Message, Properties};
pub use crate::queue_stats::QueueStats;
use crate::retry::RetryPolicy;
use crate::value::Headers;

/// A message on its way out: where to and what. Built with [`Outgoing::new`] and
/// [`Outgoing::mandatory`] (the struct may gain fields, so it is not built literally outside
/// this crate); [`Publish::build`](crate::Publish::build) makes one from a producer's settings.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// Exchange name (`""` = default exchange).
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// The message.
    pub message: Message,
    /// Ask the broker to return the message if no queue takes it (where supported).
    pub mandatory: bool,
    /// Hold the message back this long before any consumer can see it (`None`: at once). A
    /// transport without [`Capabilities::delayed_delivery`](crate::Capabilities) refuses it
    /// with [`ErrorKind::Unsupported`]; see [`Publish::delay`](crate::Publish::delay).
    pub delay: Option<Duration>,
}

/// Options of a consumer. Built from [`ConsumeOptions::default`] with a builder method per
/// option (the struct may gain fields, so it is not built literally outside this crate):
///
/// ```
/// use std::time::Duration;
/// use kombu_core::transport::ConsumeOptions;
///
/// let options = ConsumeOptions::default()
///     .prefetch(10)
///     .consumer_tag("worker-1")
///     .visibility_timeout(Duration::from_secs(30));
/// assert!(!options.no_ack);
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumeOptions {
    /// Most unacked deliveries this consumer may hold; 0 = unbounded.
    pub prefetch: u16,
    /// Deliveries are settled on delivery (at-most-once); `ack`/`reject` become no-ops.
    pub no_ack: bool,
    /// Consumer tag; empty = generated.
    pub consumer_tag: String,
    /// How long a delivery may stay unsettled before the message is given to another consumer;
    /// none = the transport's default (see its URL options).
    pub visibility_timeout: Option<Duration>,
    /// How a consumer waits for its broker after a recoverable failure (a lost connection)
    /// before it looks again; the stream ends with the error only when the policy gives up or
    /// the error is not recoverable. Default [`RetryPolicy::forever`]: waits from 100 ms up to
    /// 2 s between looks, as long as it takes. Virtual transports apply it in core; a native
    /// transport applies it to its own reconnection.
    pub retry: RetryPolicy,
    /// Sees each of those retries (for logs and metrics; they are logged at warn anyway).
    pub on_retry: Option<crate::retry::OnRetry>,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        ConsumeOptions {
            prefetch: 100,
            no_ack: false,
            consumer_tag: String::new(),
            visibility_timeout: None,
            retry: RetryPolicy::forever(),
            on_retry: None,
        }
    }
}

impl Outgoing {
    /// A message for `exchange` (`""` = the default exchange) with `routing_key`, not
    /// mandatory.
    pub fn new(
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        message: Message,
    ) -> Self {
        Outgoing {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            message,
            mandatory: false,
            delay: None,
        }
    }

    /// Asks the broker to return the message if no queue takes it (where supported).
    #[must_use]
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    /// Holds the message back `delay` before any consumer can see it (a zero delay is none).
    #[must_use]
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = (!delay.is_zero()).then_some(delay);
        self
    }
}

impl ConsumeOptions {
    /// Sets the most unacked deliveries the consumer may hold; 0 = unbounded.
    #[must_use]
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// Settles deliveries on delivery (at-most-once) when `true`.
    #[must_use]
    pub fn no_ack(mut self, no_ack: bool) -> Self {
        self.no_ack = no_ack;
        self
    }

    /// Sets the consumer tag (empty = generated).
    #[must_use]
    pub fn consumer_tag(mut self, tag: impl Into<String>) -> Self {
        self.consumer_tag = tag.into();
        self
    }

    /// Sets how long a delivery may stay unsettled before the message is given to another
    /// consumer.
    #[must_use]
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = Some(timeout);
        self
    }

    /// Sets how the consumer waits for its broker after a recoverable failure (see
    /// [`ConsumeOptions::retry`](ConsumeOptions#structfield.retry)).
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }
}

/// A stream of deliveries from [`Channel::consume`].
pub type DeliveryStream = BoxStream<'static, Result<Delivery>>;

/// The native transport contract: what every transport's channel must do. Applications use it
/// through a `Connection`, its [`Producer`](crate::Producer)s and
/// [`Consumer`](crate::Consumer)s; transport authors implement it (or
/// [`Backend`](crate::transport::virtual_transport::Backend) for brokers that only store).
///
/// # The contract
///
/// A conforming channel:
/// - is `Send + Sync` and usable from many tasks at once;
/// - routes a published message to every queue whose binding matches (direct: equal key; topic:
///   `*` one word, `#` zero or more, as RabbitMQ; fanout: all; headers: `x-match` all/any), to the
///   queue named by the routing key on the default exchange `""`, and drops it when nothing
///   matches (an unroutable message is never delivered anywhere else);
/// - hands out each ready message to one consumer at a time, never more unacked messages to a
///   consumer than its prefetch allows (0 = unbounded);
/// - keeps a delivered message until it is settled: [`Delivery::ack`] removes it,
///   [`Delivery::reject`] drops it (to the queue's dead-letter exchange if it has one),
///   [`Delivery::requeue`] makes it ready again with `redelivered` set;
/// - returns every unsettled message to its queue, `redelivered` set, when the channel is closed
///   or dropped (if [`Capabilities::restore_on_drop`]), and when a delivery's visibility timeout
///   passes without a settlement (if [`Capabilities::visibility_timeout`]); a [`Delivery`]
///   dropped unsettled is requeued (its [`Drop`] asks the [`Settler`]);
/// - frees a consumer's prefetch slot when its delivery is settled, dropped, or its lease ends;
/// - reports broker faults as [`Error`]s and never panics.
#[async_trait]
pub trait Channel: Send + Sync + fmt::Debug + 'static {
    /// What this channel's transport can do.
    fn capabilities(&self) -> &Capabilities;

    /// Declares an exchange; redeclaring an identical one succeeds.
    async fn declare_exchange(&self, exchange: &Exchange) -> Result<()>;

    /// Deletes an exchange and its bindings. Deleting a missing exchange succeeds.
    async fn delete_exchange(&self, name: &str) -> Result<()>;

    /// Whether the broker knows an exchange named `name`, to use it as it is rather than
    /// declare it (a declaration that differs from the existing exchange fails, and on AMQP
    /// closes the channel).
    ///
    /// The contract, on every transport:
    /// - `Ok(true)` for the default exchange `""`, and when the transport knows the exchange:
    ///   declared on the broker (AMQP: by anyone, `amq.*` included), or, on a virtual
    ///   transport, recorded by its backend
    ///   ([`exchange`](crate::transport::virtual_transport::Backend::exchange)). Python
    ///   kombu keeps the types of the exchanges it declares on Redis in process memory, so
    ///   there an exchange only Python declared is unknown (`false`) until kombu-rs declares it;
    /// - `Ok(false)` when it exists nowhere; asking never creates it, never changes it, and
    ///   leaves this channel and its consumers untouched (AMQP asks on a channel of its own);
    /// - `Err` only for a broker fault (unreachable, closed channel), never for a missing
    ///   exchange;
    /// - the answer is a snapshot: another client may create or delete the exchange right
    ///   after, and a transport that caches its exchange table may see another connection's
    ///   change a moment late (Redis: within a second).
    async fn exchange_exists(&self, name: &str) -> Result<bool>;

    /// Declares a queue, its exchange (if any, and not the default), and all its bindings.
    async fn declare_queue(&self, queue: &Queue) -> Result<()>;

    /// Binds a queue to an exchange.
    async fn bind(&self, queue: &str, binding: &Binding) -> Result<()>;

    /// Removes a binding. Removing a missing binding succeeds.
    async fn unbind(&self, queue: &str, binding: &Binding) -> Result<()>;

    /// Whether the broker knows a queue named `queue`.
    ///
    /// The contract, on every transport:
    /// - `Ok(true)` when the transport knows the queue: declared on the broker (AMQP), or, on a
    ///   virtual transport, recorded by its backend, holding messages, or named in the broker's
    ///   binding table (so a queue that Python kombu or a Celery worker declared counts on Redis
    ///   and SQLite, see each transport's docs);
    /// - `Ok(false)` when it exists nowhere; asking never creates it and never changes it;
    /// - `Err` only for a broker fault (unreachable, closed channel), never for a missing queue;
    /// - the answer is a snapshot: another client may create or delete the queue right after.
    ///
    /// The default asks [`queue_size`](Channel::queue_size) and maps
    /// [`ErrorKind::NotFound`] to `false`.
    async fn queue_exists(&self, queue: &str) -> Result<bool> {
        match self.queue_size(queue).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Number of ready messages (not counting delivered, unsettled ones). Fails with
    /// [`ErrorKind::NotFound`] when the queue exists nowhere (see
    /// [`queue_exists`](Channel::queue_exists)), on every transport.
    async fn queue_size(&self, queue: &str) -> Result<u64>;

    /// What the broker can tell of a queue: its ready messages always, and where the transport
    /// knows them its unsettled messages, its consumers and when its oldest ready message was
    /// stored (see [`QueueStats`]). Fails with [`ErrorKind::NotFound`] when the queue exists
    /// nowhere, as [`queue_size`](Channel::queue_size).
    ///
    /// The default reports [`queue_size`](Channel::queue_size) alone.
    async fn queue_stats(&self, queue: &str) -> Result<QueueStats> {
        Ok(QueueStats::new(self.queue_size(queue).await?))
    }

    /// Up to `limit` of a queue's ready messages, in the order consumers would get them,
    /// without taking them: nothing is delivered, leased, marked redelivered or moved. A
    /// snapshot: a consumer may take any of them right after. Fails with
    /// [`ErrorKind::NotFound`] when the queue exists nowhere, and with
    /// [`ErrorKind::Unsupported`] on a transport that cannot read a queue without taking
    /// from it ([`Capabilities::peek`] off; AMQP 0-9-1).
    ///
    /// The default is unsupported.
    async fn peek(&self, queue: &str, limit: usize) -> Result<Vec<Envelope>> {
        let _ = limit;
        Err(Error::unsupported(format!(
            "this transport cannot read the messages of queue {queue:?} without taking them"
        )))
    }

    /// Removes every ready message; returns how many. Fails with [`ErrorKind::NotFound`] when
    /// the queue exists nowhere (see [`queue_exists`](Channel::queue_exists)), on every
    /// transport.
    async fn purge(&self, queue: &str) -> Result<u64>;

    /// Deletes a queue and its bindings; returns how many ready messages it held.
    async fn delete_queue(&self, queue: &str) -> Result<u64>;

    /// Publishes one message. Returns once the broker has it (confirmed, where the transport
    /// confirms).
    async fn publish(&self, outgoing: Outgoing) -> Result<()>;

    /// Publishes many messages, in order, in as few broker round trips as the transport allows.
    async fn publish_batch(&self, batch: Vec<Outgoing>) -> Result<()>;

    /// Starts consuming from `queues` (round robin between them).
    async fn consume(&self, queues: &[String], options: &ConsumeOptions) -> Result<DeliveryStream>;

    /// Takes one ready message, if any (AMQP basic.get).
    async fn get(&self, queue: &str, no_ack: bool) -> Result<Option<Delivery>>;

    /// Closes the channel: unsettled deliveries return to their queues.
    async fn close(&self) -> Result<()>;
}

/// How a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done: remove the message.
    Ack,
    /// Refused: drop it, or dead-letter it if its queue has a dead-letter exchange.
    Reject,
    /// Not now: make it ready again, marked redelivered.
    Requeue,
}

/// The channel side of a delivery: what settles it. Implemented by transports.
#[async_trait]
pub trait Settler: Send + Sync + fmt::Debug + 'static {
    /// Settles the delivery with this channel-scoped tag.
    async fn settle(&self, delivery_tag: u64, outcome: Outcome) -> Result<()>;

    /// Settles at once, without waiting, when the transport can (an in-process broker); `None`
    /// means the caller must use [`Settler::settle`]. Same semantics as `settle`.
    fn try_settle(&self, delivery_tag: u64, outcome: Outcome) -> Option<Result<()>> {
        let _ = (delivery_tag, outcome);
        None
    }

    /// Restarts the lease of an unsettled delivery: the message counts as taken now, so no
    /// consumer restores it before now + its own visibility timeout. A delivery this settler no
    /// longer holds (settled, or its lease ended and the message was restored) fails with
    /// [`ErrorKind::StaleDelivery`]. Default: `Ok` doing nothing, for transports whose broker
    /// holds a delivery until its channel closes (AMQP): there is no lease to extend.
    async fn extend_lease(&self, delivery_tag: u64) -> Result<()> {
        let _ = delivery_tag;
        Ok(())
    }

    /// How long the lease of this delivery lasts without an extension (the visibility timeout
    /// it was taken with); `None` when it has none (default: the broker holds it until the
    /// channel closes). [`Consumer::consume`](crate::Consumer::consume) extends the lease of
    /// the delivery being handled at a third of this by default.
    fn lease_timeout(&self, delivery_tag: u64) -> Option<Duration> {
        let _ = delivery_tag;
        None
    }
}

/// A received message that must be settled exactly once: [`ack`](Delivery::ack),
/// [`reject`](Delivery::reject) or [`requeue`](Delivery::requeue).
///
/// Settling consumes the delivery. If settling fails, the error hands the delivery back
/// ([`SettleError::into_delivery`]) so it is never silently lost. A delivery dropped without
/// being settled is requeued, marked redelivered.
///
/// [`decode`](Delivery::decode) decompresses the body (bounded), checks the consumer's accept
/// list and deserializes it into any `T: DeserializeOwned`; the raw body, headers, properties
/// and where the message came from ([`info`](Delivery::info)) are there too.
///
/// A delivery taken before a lost connection settles by its transport's rule. AMQP: the
/// broker redelivers it, so settling fails with
/// [`ErrorKind::StaleDelivery`](crate::ErrorKind::StaleDelivery) (a warning, not a failure).
/// Redis: each take has its own lease in `unacked`; one that survived (an AOF restart, a cut
/// connection) is settled for real, one that is gone (restored, maybe taken again under
/// another lease) makes the settle a no-op, never touching another take's lease. SQLite
/// never loses its file: a row taken again has a new version, a late settle is a no-op.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> kombu_core::Result<()> {
/// use futures::StreamExt;
/// use kombu_core::{Connection, Queue};
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// struct Resize { width: u32 }
///
/// # kombu_core::transport::memory::register();
/// let conn = Connection::open("memory://doc-delivery").await?;
/// let mut consumer = conn.consumer([Queue::new("images")]).build().await?;
/// let producer = conn.producer().routing_key("images");
/// producer.message(&serde_json::json!({"width": 64})).header("attempt", 1.0).send().await?;
///
/// let Some(Ok(delivery)) = consumer.next().await else { return Ok(()) };
/// assert_eq!(delivery.queue(), "images");
/// assert_eq!(delivery.content_type(), Some("application/json"));
/// assert!(!delivery.redelivered());
/// let job: Resize = delivery.decode()?;
/// if job.width > 0 {
///     // Not now: back to the queue, marked redelivered.
///     delivery.requeue().await?;
/// } else {
///     // Refused: dropped, or dead-lettered when the queue has a dead-letter exchange.
///     delivery.reject().await?;
/// }
///
/// let Some(Ok(again)) = consumer.next().await else { return Ok(()) };
/// assert!(again.redelivered());
/// if let Err(failed) = again.ack().await {
///     // The broker did not take the ack: the delivery comes back, to retry or inspect.
///     let _delivery = failed.into_delivery();
/// }
/// # Ok(()) }
/// ```
pub struct Delivery {
    // Boxed: deliveries move through streams, options and results, and a message with its
    // properties is a few hundred bytes.
    inner: Box<DeliveryInner>,
}

struct DeliveryInner {
    /// The message with where it was published; shared with the backend that keeps it for
    /// redelivery, so taking a message copies nothing.
    envelope: Arc<Envelope>,
    queue: Arc<str>,
    consumer_tag: Arc<str>,
    delivery_tag: u64,
    /// Built on first use: most consumers never look, and it costs four strings.
    info: OnceLock<DeliveryInfo>,
    settler: Option<Arc<dyn Settler>>,
    decoder: Arc<Decoder>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("Delivery")
            .field("queue", &inner.queue)
            .field("delivery_tag", &inner.delivery_tag)
            .field("exchange", &inner.envelope.exchange)
            .field("routing_key", &inner.envelope.routing_key)
            .field("redelivered", &inner.envelope.redelivered)
            .field("content_type", &inner.envelope.message.content_type)
            .field("body_len", &inner.envelope.message.body.len())
            .field("no_ack", &inner.settler.is_none())
            .finish()
    }
}

impl Delivery {
    /// A delivery; `settler` none means it was delivered in no-ack mode. Used by transports.
    pub fn new(message: Message, info: DeliveryInfo, settler: Option<Arc<dyn Settler>>) -> Self {
        let envelope = Envelope {
            message,
            exchange: info.exchange.clone(),
            routing_key: info.routing_key.clone(),
            tag: String::new(),
            redelivered: info.redelivered,
        };
        Delivery {
            inner: Box::new(DeliveryInner {
                envelope: Arc::new(envelope),
                queue: Arc::from(info.queue.as_str()),
                consumer_tag: Arc::from(info.consumer_tag.as_str()),
                delivery_tag: info.delivery_tag,
                info: OnceLock::from(info),
                settler,
                decoder: default_decoder(),
            }),
        }
    }

    /// A delivery of a stored envelope that the transport keeps a reference to (virtual
    /// transports), without copying it. Used by transports.
    pub fn from_envelope(
        envelope: Arc<Envelope>,
        queue: Arc<str>,
        consumer_tag: Arc<str>,
        delivery_tag: u64,
        settler: Option<Arc<dyn Settler>>,
    ) -> Self {
        Delivery {
            inner: Box::new(DeliveryInner {
                envelope,
                queue,
                consumer_tag,
                delivery_tag,
                info: OnceLock::new(),
                settler,
                decoder: default_decoder(),
            }),
        }
    }

    /// Forgets how to settle this delivery (its channel already restored or settled it).
    pub(crate) fn forget_settlement(&mut self) {
        self.inner.settler = None;
    }

    /// Acks at once and turns the delivery into a no-ack one (no-ack consumers take messages
    /// with a lease, so that a buffered message is never lost, and ack as they hand them out).
    pub(crate) async fn ack_for_no_ack(&mut self) -> Result<()> {
        let Some(settler) = self.inner.settler.take() else {
            return Ok(());
        };
        let tag = self.inner.delivery_tag;
        match settler.try_settle(tag, Outcome::Ack) {
            Some(done) => done,
            None => settler.settle(tag, Outcome::Ack).await,
        }
    }

    pub(crate) fn set_decoder(&mut self, decoder: Arc<Decoder>) {
        self.inner.decoder = decoder;
    }

    /// The same delivery, decoded from now on by `decoder`: its registry, accept list and
    /// decompression bound apply to [`decode`](Delivery::decode),
    /// [`decompressed_body`](Delivery::decompressed_body) and
    /// [`check_accept`](Delivery::check_accept). A [`Consumer`](crate::Consumer) sets its own
    /// on every delivery; a delivery taken with [`Channel::get`] has the default one (default
    /// registry and serializers, default bound) until given another.
    #[must_use]
    pub fn with_decoder(mut self, decoder: Arc<Decoder>) -> Self {
        self.set_decoder(decoder);
        self
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.inner.envelope.message
    }
    /// The raw (possibly compressed) body.
    pub fn body(&self) -> &Bytes {
        &self.inner.envelope.message.body
    }
    /// Headers.
    pub fn headers(&self) -> &Headers {
        &self.inner.envelope.message.headers
    }
    /// Properties.
    pub fn properties(&self) -> &Properties {
        &self.inner.envelope.message.properties
    }
    /// Content type of the serialized body.
    pub fn content_type(&self) -> Option<&str> {
        self.inner.envelope.message.content_type.as_deref()
    }
    /// Where it came from and its delivery tag.
    pub fn info(&self) -> &DeliveryInfo {
        let inner = &self.inner;
        inner.info.get_or_init(|| DeliveryInfo {
            exchange: inner.envelope.exchange.clone(),
            routing_key: inner.envelope.routing_key.clone(),
            queue: inner.queue.to_string(),
            redelivered: inner.envelope.redelivered,
            delivery_tag: inner.delivery_tag,
            consumer_tag: inner.consumer_tag.to_string(),
        })
    }
    /// The queue it was taken from.
    pub fn queue(&self) -> &str {
        &self.inner.queue
    }
    /// Channel-scoped delivery tag.
    pub fn delivery_tag(&self) -> u64 {
        self.inner.delivery_tag
    }
    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        &self.inner.envelope.routing_key
    }
    /// The exchange it was published to.
    pub fn exchange(&self) -> &str {
        &self.inner.envelope.exchange
    }
    /// Whether it was delivered before.
    pub fn redelivered(&self) -> bool {
        self.inner.envelope.redelivered
    }
    /// Whether it was delivered in no-ack mode (settling does nothing).
    pub fn is_no_ack(&self) -> bool {
        self.inner.settler.is_none()
    }

    /// Decodes the body into `T`: decompress (bounded), check the accept list, deserialize.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        self.inner.decoder.decode(&self.inner.envelope.message)
    }

    /// The body after decompression.
    pub fn decompressed_body(&self) -> Result<Bytes> {
        self.inner
            .decoder
            .decompressed(&self.inner.envelope.message)
    }

    /// Checks the content type against the consumer's accept list.
    pub fn check_accept(&self) -> Result<()> {
        self.inner.decoder.check(&self.inner.envelope.message)
    }

    /// Acknowledges: the message is done. On AMQP, `Ok` means the ack was sent. On a virtual
    /// transport, `Ok` means the ack is queued and written within moments, in a batch (a
    /// failed write is retried; if it still fails, the channel's `close` reports it and the
    /// message comes back when its lease ends); an ack that cannot wait (its lease ends soon,
    /// or the batch is full) is written before `ack` returns, and an `Err` means it was not.
    pub async fn ack(self) -> Result<(), SettleError> {
        self.settle(Outcome::Ack).await
    }

    /// Rejects: the message is dropped, or dead-lettered if its queue has a dead-letter exchange.
    pub async fn reject(self) -> Result<(), SettleError> {
        self.settle(Outcome::Reject).await
    }

    /// Requeues: the message becomes ready again, marked redelivered.
    pub async fn requeue(self) -> Result<(), SettleError> {
        self.settle(Outcome::Requeue).await
    }

    /// Settles with the given outcome.
    pub async fn settle(mut self, outcome: Outcome) -> Result<(), SettleError> {
        // Taken out so that dropping the delivery afterwards does not requeue it.
        let Some(settler) = self.inner.settler.take() else {
            return Ok(());
        };
        let tag = self.inner.delivery_tag;
        let settled = match settler.try_settle(tag, outcome) {
            Some(done) => done,
            None => settler.settle(tag, outcome).await,
        };
        match settled {
            Ok(()) => Ok(()),
            Err(error) => {
                self.inner.settler = Some(settler);
                Err(SettleError {
                    error,
                    delivery: Box::new(self),
                })
            }
        }
    }

    /// Restarts the message's lease (a consumer still working on it): on transports with a
    /// visibility timeout ([`Capabilities::visibility_timeout`]: Redis, SQLite, memory) the
    /// message counts as taken now, so no consumer restores it to its queue before now + that
    /// consumer's own visibility timeout (see "Visibility and leases" in the architecture
    /// notes). Call it more often than the shortest visibility timeout in use, or let
    /// [`Consumer::consume`](crate::Consumer::consume) do it
    /// ([`lease_heartbeat`](crate::ConsumerBuilder::lease_heartbeat)).
    ///
    /// On AMQP it does nothing and returns `Ok`: the broker holds a delivery until its channel
    /// closes, there is no lease. A no-ack delivery has nothing to extend either (`Ok`).
    ///
    /// Fails with [`ErrorKind::StaleDelivery`] when the lease is gone: the delivery was settled
    /// through another handle, its channel closed, or its lease already ended and the message
    /// went back to its queue (another consumer may have it now: finish or abandon the work,
    /// its ack will be harmless).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> kombu_core::Result<()> {
    /// use futures::StreamExt;
    /// use kombu_core::{Connection, Queue};
    ///
    /// # kombu_core::transport::memory::register();
    /// let conn = Connection::open("memory://doc-extend-lease?visibility_timeout=30").await?;
    /// let mut consumer = conn.consumer([Queue::new("slow")]).build().await?;
    /// conn.producer().routing_key("slow").publish("render").await?;
    /// let Some(Ok(delivery)) = consumer.next().await else { return Ok(()) };
    /// // ... part of a long job ...
    /// delivery.extend_lease().await?; // 30 more seconds before anyone restores it
    /// // ... the rest ...
    /// delivery.ack().await?;
    /// # Ok(()) }
    /// ```
    pub async fn extend_lease(&self) -> Result<()> {
        match &self.inner.settler {
            None => Ok(()),
            Some(settler) => settler.extend_lease(self.inner.delivery_tag).await,
        }
    }

    /// What extends this delivery's lease while someone else owns the delivery (a handler):
    /// its settler, tag and lease length; `None` without a lease.
    pub(crate) fn lease_keeper(&self) -> Option<(Arc<dyn Settler>, u64, Option<Duration>)> {
        let settler = self.inner.settler.as_ref()?;
        let tag = self.inner.delivery_tag;
        Some((settler.clone(), tag, settler.lease_timeout(tag)))
    }

    /// Takes the message out, giving up the ability to settle it here. The message stays
    /// unacked on the broker, holding one prefetch slot, until the channel closes or its
    /// visibility timeout passes; prefer settling.
    pub fn into_message(mut self) -> (Message, DeliveryInfo) {
        let info = self.info().clone();
        self.inner.settler = None;
        let envelope = Arc::clone(&self.inner.envelope);
        drop(self);
        (Arc::unwrap_or_clone(envelope).message, info)
    }
}

/// A delivery dropped without being settled is requeued (marked redelivered), so an early
/// return or `?` in a handler never strands a message or the prefetch slot it holds.
impl Drop for Delivery {
    fn drop(&mut self) {
        let Some(settler) = self.inner.settler.take() else {
            return;
        };
        let tag = self.inner.delivery_tag;
        if let Some(done) = settler.try_settle(tag, Outcome::Requeue) {
            if let Err(error) = done {
                tracing::debug!(tag, error = %format_args!("{error:#}"), "requeue of a dropped delivery failed");
            }
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Err(error) = settler.settle(tag, Outcome::Requeue).await {
                        tracing::debug!(tag, error = %format_args!("{error:#}"), "requeue of a dropped delivery failed");
                    }
                });
            }
            Err(_) => tracing::warn!(
                tag,
                "delivery dropped unsettled outside a tokio runtime: it returns when its \
                 channel closes or its visibility timeout passes"
            ),
        }
    }
}

fn default_decoder() -> Arc<Decoder> {
    static DEFAULT: std::sync::OnceLock<Arc<Decoder>> = std::sync::OnceLock::new();
    DEFAULT.get_or_init(|| Arc::new(Decoder::default())).clone()
}

/// A failed settlement, with the delivery handed back. Its `Display` says which delivery; why
/// is its [`source`](std::error::Error::source), the [`error`](SettleError::error).
#[derive(Debug)]
pub struct SettleError {
    /// Why it failed.
    pub error: Error,
    delivery: Box<Delivery>,
}

impl SettleError {
    /// The delivery, to retry or settle another way.
    pub fn into_delivery(self) -> Delivery {
        *self.delivery
    }
    /// A reference to the delivery.
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }
}

impl fmt::Display for SettleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "settling delivery {} from queue {:?} failed",
            self.delivery.delivery_tag(),
            self.delivery.queue(),
        )
    }
}

impl std::error::Error for SettleError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// An [`ErrorKind::Settlement`] error naming the delivery ([`ErrorKind::StaleDelivery`] when the
/// settlement's error is one), caused by the settlement's error (its
/// [`source`](std::error::Error::source)), recoverable when that one is.
impl From<SettleError> for Error {
    fn from(e: SettleError) -> Self {
        let message = e.to_string();
        let recoverable = e.error.is_recoverable();
        // A stale delivery stays one: callers treat it as a warning.
        let kind = if e.error.kind() == ErrorKind::StaleDelivery {
            ErrorKind::StaleDelivery
        } else {
            ErrorKind::Settlement
        };
        Error::new(kind, message)
            .with_source(e.error)
            .set_recoverable(recoverable)
    }
}
