//! # kombu
//!
//! A messaging library in the spirit of Python's kombu: one [`Producer`] / [`Consumer`] /
//! [`Connection`] API over interchangeable brokers, chosen by URL, with serializers and
//! compression composed on top. It speaks kombu's and Celery's wire formats, so a Rust service
//! and a Python one can share a broker.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kombu::Result<()> {
//! use kombu::{Connection, Exchange, Queue, StreamExt};
//!
//! let conn = Connection::open("memory://facade-doc").await?;
//! let tasks = Exchange::topic("tasks");
//! let queue = Queue::new("reports").exchange(tasks.clone()).routing_key("report.*");
//! let mut consumer = conn.consumer([queue]).build().await?;
//!
//! conn.producer().exchange(tasks).routing_key("report.daily").publish(&"build it").await?;
//!
//! let Some(delivery) = consumer.next().await else { return Ok(()) };
//! let delivery = delivery?;
//! assert_eq!(delivery.decode::<String>()?, "build it");
//! delivery.ack().await?;
//! # Ok(()) }
//! ```
//!
//! ## Transports
//!
//! The URL scheme picks the transport; application code does not change. Several URLs separated
//! by `;` are failover alternatives, tried in order. Each transport is a cargo feature of this
//! crate (all on by default) and is installed the first time a [`Connection`] is opened through
//! this crate (or by [`install`]).
//!
//! | scheme | feature | crate | the broker |
//! |---|---|---|---|
//! | `memory://`, `memory://NAME`; `memory+record://NAME` (registered by [`testing::Recorder`]) | `memory` | `kombu-core` | in this process only; routing, acks, priorities, TTL and dead-letters emulated by core; the `record` form logs every publish, delivery and settlement for tests |
//! | `sqlite:///abs/path.db`, `sqlite://relative.db`, `sqlite://:memory:`, `sqla+sqlite://`, `sqlalchemy+sqlite://` | `sqlite` | `kombu-sqlite` | a SQLite file in Python kombu's SQLAlchemy layout, shared between processes; leases survive a killed consumer |
//! | `redis://`, `rediss://` (TLS), `redis+socket://`, `unix://`, `sentinel://` | `redis` | `kombu-redis` | Redis in Python kombu's key layout; crash-safe takes, kombu's priority buckets, fanout over PUB/SUB |
//! | `amqp://`, `amqps://` (TLS), `pyamqp://` | `amqp` | `kombu-amqp` | RabbitMQ (AMQP 0-9-1 on lapin): the broker routes; publisher confirms, recovery after a restart |
//! | `mongodb://`, `mongodb+srv://` | `mongodb` | `kombu-mongodb` | MongoDB in Python kombu's collections; leased takes survive a killed consumer, change streams, fanout through a capped collection |
//!
//! What a transport can and cannot do is data: [`Connection::capabilities`] returns its
//! [`Capabilities`].
//!
//! Crates that use `kombu-core` directly call [`install`] (or `kombu_core::transport::memory::register`,
//! or a transport crate's own `register` function) once before opening connections.
//!
//! ## Two audiences
//!
//! The crate root is what an application uses. What a transport author uses (the channel
//! contract, the virtual `Backend`, the scheme registry) is under [`transport`].
//!
//! ## Where to start
//!
//! - [`Connection`]: open a broker by URL, declare entities, make producers and consumers.
//! - [`Producer`]: publish typed values or bytes, one by one or in batches.
//! - [`Consumer`]: a stream of [`Delivery`]s, or a handler loop with an error policy.
//! - [`Delivery`]: decode, then settle exactly once (`ack`, `reject`, `requeue`).
//! - [`serializers`]: serializers, compression, accept lists and signing, as kombu names them.
//! - [`Connection::builder`], [`Connection::ensure`], [`RetryPolicy`], [`FailoverStrategy`]:
//!   retries (publishes retry by default; see [`Producer`]) and failover;
//!   [`ConnectionPool`] and [`ProducerPool`]: bounded pools for many publishing tasks.
//! - [`Error`] and [`ErrorKind`]: what failed and whether retrying makes sense.
//! - [`worker`]: a worker runtime (kombu's `ConsumerMixin`): typed async handlers per queue,
//!   bounded concurrency, timeouts, retries with backoff, dead letters, graceful stop.
//! - [`testing`]: a recording broker for a service's unit tests (`memory+record://NAME`): what
//!   it published and consumed, how it settled each delivery, waits with a timeout on tokio's
//!   (pausable) clock.
//! - [`simple`]: [`SimpleQueue`](simple::SimpleQueue) and [`SimpleBuffer`](simple::SimpleBuffer),
//!   kombu's `put` / `get(timeout)` queues, declared as Python kombu declares them.
//! - [`rpc`]: [`RpcClient`](rpc::RpcClient) and [`RpcServer`](rpc::RpcServer), request/reply
//!   over `reply_to` and `correlation_id` (direct reply-to on RabbitMQ), kombu's `send_reply`
//!   shape.
//! - [`telemetry`] and [`metrics`]: spans with OpenTelemetry's messaging attributes around
//!   every publish and delivery, the W3C `traceparent` / `tracestate` carried in message
//!   headers with the feature `opentelemetry` (off by default; `examples/tracing.rs`), and
//!   counters of messages published, consumed and dead-lettered through the `metrics` facade.

use std::fmt;
use std::sync::{Arc, Once};

/// `next()` and friends for the [`Consumer`] stream.
pub use futures::StreamExt;
pub use kombu_core::{
    Binding, BrokerUrl, COMPRESSION_HEADER, Capabilities, ConsumeError, Consumer, ConsumerBuilder,
    DEFAULT_MAX_REDELIVERIES, DeadLettered, Declaration, Delays, Delivery, DeliveryInfo,
    DeliveryMode, Error, ErrorAction, ErrorKind, Exchange, ExchangeKind, Handled, HeaderMatch,
    Headers, LinkState, LinkWatch, Message, Producer, Properties, Publish, Queue, Result,
    RetryEvent, RetryPolicy, SettleError, StopHandle, Value, dead_letter, metrics, telemetry,
};
pub use kombu_core::{FailoverStrategy, PooledConnection, PooledProducer, ProducerPool};
pub use resilience::{ConnectionBuilder, ConnectionPool};

mod resilience;
pub use kombu_patterns::{rpc, simple, worker};
pub use kombu_serializers as serializers;

/// Celery's task protocol (feature `celery`): send tasks to Celery workers and read the task
/// messages Celery sends; see [`kombu_celery`].
#[cfg(feature = "celery")]
pub use kombu_celery as celery;

/// A recording broker for a service's unit tests, which opens its URL with this crate's
/// [`Connection`] like any broker's:
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> kombu::Result<()> {
/// use std::time::Duration;
/// use kombu::testing::{Recorder, Settlement};
/// use kombu::{Connection, Queue, StreamExt};
///
/// let rec = Recorder::new();
/// // The service under test opens the recorder's URL (from its configuration, say).
/// let service = Connection::open(&rec.url()).await?;
/// let mut inbox = service.consumer([Queue::new("greetings")]).build().await?;
/// service.producer().routing_key("greetings").publish(&"hello").await?;
/// if let Some(delivery) = inbox.next().await {
///     delivery?.ack().await?;
/// }
///
/// rec.assert_published("greetings", &"hello".to_owned())?;
/// let handled = rec.wait_settled("greetings", Duration::from_secs(5)).await?;
/// assert_eq!(handled.settlement, Settlement::Acked);
/// // Nothing else comes: under paused time this returns at once, in no real time.
/// assert!(rec.next_published(Duration::from_secs(60)).await.is_ok()); // the one above
/// assert!(rec.next_published(Duration::from_secs(60)).await.is_err());
/// # Ok(()) }
/// ```
pub use kombu_patterns::testing;

/// What a transport author uses: the native [`Channel`](transport::Channel) contract and its
/// [`Settler`](transport::Settler), the store-only
/// [`Backend`](transport::virtual_transport::Backend) under
/// [`virtual_transport`](transport::virtual_transport), [`Transport`](transport::Transport) and
/// [`register_transport`](transport::register_transport), and what a transport hands to core
/// ([`Outgoing`](transport::Outgoing), [`Envelope`](transport::Envelope),
/// [`Delivery::from_envelope`]). Applications need none of it; the few application calls that
/// reach down here ([`Connection::channel`], [`Producer::send_batch`]) say so.
pub mod transport {
    pub use kombu_core::transport::*;
}

/// Registers every transport this crate was built with for its URL schemes. Idempotent;
/// [`Connection::open`] calls it.
pub fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Every transport registers here, each behind its feature.
        #[cfg(feature = "memory")]
        kombu_core::transport::memory::register();
        #[cfg(feature = "sqlite")]
        kombu_sqlite::register();
        #[cfg(feature = "redis")]
        kombu_redis::register();
        #[cfg(feature = "amqp")]
        kombu_amqp::register();
        #[cfg(feature = "mongodb")]
        kombu_mongodb::register();
    });
}

/// A connection to a broker chosen by URL, with every enabled transport installed.
///
/// [`Connection::open`] picks the transport from the URL scheme; several URLs separated by `;`
/// are failover alternatives, tried in order until one connects. Clones are cheap and share the
/// broker connection, the default channel (used by producers) and the cache of declared
/// entities; consumers open channels of their own, so dropping a consumer returns its unsettled
/// messages without touching anyone else's. The URL is never shown with its password
/// ([`url`](Connection::url) displays it masked).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> kombu::Result<()> {
/// use kombu::{Connection, Exchange, Queue, StreamExt};
///
/// // Any transport's URL works here; the first of `;`-separated alternatives that connects wins.
/// let conn = Connection::open("memory://doc-connection;memory://doc-connection-spare").await?;
/// assert_eq!(conn.url().host(), Some("doc-connection"));
///
/// // Entities, as AMQP has them (declaring twice is fine).
/// let logs = Exchange::topic("logs");
/// conn.declare_queue(&Queue::new("errors").exchange(logs.clone()).routing_key("*.error")).await?;
///
/// let producer = conn.producer().exchange(logs);
/// producer.message("disk full").routing_key("db.error").send().await?;
/// producer.message("all good").routing_key("db.info").send().await?; // no queue takes it
/// assert_eq!(conn.queue_size("errors").await?, 1);
///
/// let mut consumer = conn.consumer([Queue::new("errors")]).build().await?;
/// if let Some(Ok(delivery)) = consumer.next().await {
///     assert_eq!(delivery.routing_key(), "db.error");
///     delivery.ack().await?;
/// }
/// consumer.close().await?;
/// conn.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Connection(kombu_core::Connection);

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The core connection's form: its URL masked, its alternates.
        fmt::Debug::fmt(&self.0, f)
    }
}

/// The patterns of `kombu-patterns` (re-exported here as modules) take `&impl
/// AsRef<kombu_core::Connection>`: this connection is one.
impl AsRef<kombu_core::Connection> for Connection {
    fn as_ref(&self) -> &kombu_core::Connection {
        &self.0
    }
}

impl Connection {
    /// Connects to the first reachable URL of a `;`-separated list, with the default
    /// serializer registry. Installs this crate's transports first ([`install`]).
    ///
    /// A broker that cannot be reached moves on to the next URL; any other failure (a bad
    /// URL, refused credentials) stops at once. The error of the last URL tried is returned.
    pub async fn open(url: &str) -> Result<Connection> {
        install();
        kombu_core::Connection::open(url).await.map(Connection)
    }

    /// Like [`Connection::open`], with a serializer registry of your own (extra serializers or
    /// compressors).
    pub async fn open_with(url: &str, registry: serializers::Registry) -> Result<Connection> {
        install();
        kombu_core::Connection::open_with(url, registry)
            .await
            .map(Connection)
    }

    /// The URL in use (displays masked): the one opened, or the failover alternative the
    /// transport moved to after losing it.
    pub fn url(&self) -> BrokerUrl {
        self.0.url()
    }

    /// The broker's OpenTelemetry `messaging.system`: `rabbitmq`, `redis`, `sqlite`,
    /// `mongodb`, `memory` (see [`telemetry`]).
    pub fn messaging_system(&self) -> &'static str {
        self.0.messaging_system()
    }

    /// Whether the connection is up, reconnecting or lost for good, as a watch channel (see
    /// [`LinkState`]).
    pub fn link(&self) -> LinkWatch {
        self.0.link()
    }

    /// Every failover URL, the one in use included.
    pub fn alternates(&self) -> &[BrokerUrl] {
        self.0.alternates()
    }

    /// What the broker can do: priorities, TTLs, visibility timeouts, publisher confirms, ...
    pub fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }

    /// The serializer registry of this connection.
    pub fn registry(&self) -> &serializers::Registry {
        self.0.registry()
    }

    /// A producer on the default channel, publishing JSON to the default exchange; set its
    /// exchange, routing key, serializer and compression with its builder methods.
    pub fn producer(&self) -> Producer {
        self.0.producer()
    }

    /// Starts building a consumer of `queues` (names or [`Queue`]s; declared when it starts,
    /// unless turned off).
    pub fn consumer<I>(&self, queues: I) -> ConsumerBuilder
    where
        I: IntoIterator,
        I::Item: Into<Queue>,
    {
        self.0.consumer(queues)
    }

    /// Declares an exchange; redeclaring an identical one succeeds, a different one fails with
    /// [`ErrorKind::PreconditionFailed`].
    pub async fn declare_exchange(&self, exchange: &Exchange) -> Result<()> {
        self.0.declare_exchange(exchange).await
    }

    /// Declares a queue with its exchange and bindings; redeclaring an identical one succeeds,
    /// a different one fails with [`ErrorKind::PreconditionFailed`].
    pub async fn declare_queue(&self, queue: &Queue) -> Result<()> {
        self.0.declare_queue(queue).await
    }

    /// Declares an exchange unless this connection already declared an identical one (kombu's
    /// `maybe_declare`: a cache, not a retry).
    pub async fn maybe_declare_exchange(&self, exchange: &Exchange) -> Result<()> {
        self.0.maybe_declare_exchange(exchange).await
    }

    /// Declares a queue unless this connection already declared an identical one (kombu's
    /// `maybe_declare`: a cache, not a retry).
    pub async fn maybe_declare_queue(&self, queue: &Queue) -> Result<()> {
        self.0.maybe_declare_queue(queue).await
    }

    /// Binds a queue to an exchange.
    pub async fn bind(&self, queue: &str, binding: &Binding) -> Result<()> {
        self.0.bind(queue, binding).await
    }

    /// Removes a binding. Removing a missing binding succeeds.
    pub async fn unbind(&self, queue: &str, binding: &Binding) -> Result<()> {
        self.0.unbind(queue, binding).await
    }

    /// Whether the broker knows a queue: declared by anyone (kombu-rs, Python kombu, a Celery
    /// worker), holding messages, or bound to an exchange. Never creates it.
    pub async fn queue_exists(&self, queue: &str) -> Result<bool> {
        self.0.queue_exists(queue).await
    }

    /// Whether the broker knows an exchange (the default exchange `""` always exists), to use
    /// it as it is instead of declaring it. Never creates or changes it.
    pub async fn exchange_exists(&self, name: &str) -> Result<bool> {
        self.0.exchange_exists(name).await
    }

    /// Number of ready messages in a queue (delivered, unsettled ones not counted);
    /// [`ErrorKind::NotFound`] when it exists nowhere.
    pub async fn queue_size(&self, queue: &str) -> Result<u64> {
        self.0.queue_size(queue).await
    }

    /// Removes every ready message from a queue; returns how many; [`ErrorKind::NotFound`]
    /// when it exists nowhere.
    pub async fn purge(&self, queue: &str) -> Result<u64> {
        self.0.purge(queue).await
    }

    /// Deletes a queue and its bindings; returns how many ready messages it held.
    pub async fn delete_queue(&self, queue: &str) -> Result<u64> {
        self.0.delete_queue(queue).await
    }

    /// Deletes an exchange and its bindings. Deleting a missing exchange succeeds.
    pub async fn delete_exchange(&self, name: &str) -> Result<()> {
        self.0.delete_exchange(name).await
    }

    /// Closes the default channel and the broker connection. Other clones become unusable.
    pub async fn close(&self) -> Result<()> {
        self.0.close().await
    }

    /// A new channel of its own, below the producer and consumer API (for tools and
    /// transport tests; see [`transport::Channel`]).
    pub async fn channel(&self) -> Result<Arc<dyn transport::Channel>> {
        self.0.channel().await
    }

    /// The channel shared by this connection's producers and entity operations, below the
    /// producer and consumer API (see [`transport::Channel`]).
    pub fn default_channel(&self) -> &Arc<dyn transport::Channel> {
        self.0.default_channel()
    }
}

/// The README's examples, compiled and run as doctests so the README cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_every_installed_scheme_and_masks_passwords() {
        let conn = Connection::open("memory://u:secret@facade-test")
            .await
            .unwrap();
        assert_eq!(conn.url().to_string(), "memory://u:**@facade-test");
        assert!(!format!("{conn:?}").contains("secret"));
        let err = Connection::open("nope://u:secret@h").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidUrl);
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(err.to_string().contains("memory"), "{err}");
    }

    /// The crate docs' transport table names exactly the schemes installed.
    #[test]
    fn crate_docs_list_every_installed_scheme() {
        install();
        let docs = include_str!("lib.rs");
        let table: String = docs
            .lines()
            .skip_while(|l| !l.starts_with("//! ## Transports"))
            .take_while(|l| !l.starts_with("//! ## Where to start"))
            .collect::<Vec<_>>()
            .join("\n");
        for scheme in kombu_core::transport::registered_schemes() {
            // A scheme with a driver part (`sqla+sqlite://`) counts as listing `sqla`.
            assert!(
                table.contains(&format!("`{scheme}://")) || table.contains(&format!("`{scheme}+")),
                "the crate docs' transport table does not list {scheme}://"
            );
        }
    }

    /// A configuration mistake is not worth retrying: a bad URL option, a missing SQLite
    /// directory.
    #[tokio::test]
    async fn configuration_mistakes_are_not_recoverable() {
        let err = Connection::open("memory://bad-option?visibility_timeout=soon")
            .await
            .unwrap_err();
        assert!(!err.is_recoverable(), "{err:#}");
        assert!(
            matches!(err.kind(), ErrorKind::Config | ErrorKind::InvalidUrl),
            "{err:#}"
        );
        #[cfg(feature = "sqlite")]
        {
            let err = Connection::open("sqlite:///nonexistent-dir/for/sure.db")
                .await
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{err:#}");
            assert!(!err.is_recoverable(), "{err:#}");
            assert!(err.to_string().contains("nonexistent-dir"), "{err}");
        }
    }

    /// A serializer's refusal stays a typed source: an application can match it.
    #[tokio::test]
    async fn a_refused_content_type_can_be_matched() {
        use std::error::Error as _;

        let conn = Connection::open("memory://facade-refused").await.unwrap();
        let mut consumer = conn
            .consumer([Queue::new("refused")])
            .accept(["json"])
            .build()
            .await
            .unwrap();
        conn.producer()
            .routing_key("refused")
            .serializer("yaml")
            .publish(&"not json")
            .await
            .unwrap();
        let Some(Err(refused)) = consumer.next().await else {
            panic!("a yaml message was not refused by a json-only consumer");
        };
        let source = refused.error.source().unwrap();
        assert!(matches!(
            source.downcast_ref::<serializers::Error>(),
            Some(serializers::Error::ContentDisallowed { .. })
        ));
        assert!(matches!(
            refused.error.serializer_error(),
            Some(serializers::Error::ContentDisallowed { .. })
        ));
    }

    #[tokio::test]
    async fn failover_skips_nothing_when_first_works() {
        let conn = Connection::open("memory://first;memory://second")
            .await
            .unwrap();
        assert_eq!(conn.url().host(), Some("first"));
        assert_eq!(conn.alternates().len(), 2);
    }
}
