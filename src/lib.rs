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
//! | `memory://`, `memory://NAME` | `memory` | `kombu-core` | in this process only; routing, acks, priorities, TTL and dead-letters emulated by core |
//! | `sqlite:///abs/path.db`, `sqlite://relative.db`, `sqlite://:memory:`, `sqla+sqlite://`, `sqlalchemy+sqlite://` | `sqlite` | `kombu-sqlite` | a SQLite file in Python kombu's SQLAlchemy layout, shared between processes; leases survive a killed consumer |
//! | `redis://`, `rediss://` (TLS), `redis+socket://`, `unix://`, `sentinel://` | `redis` | `kombu-redis` | Redis in Python kombu's key layout; crash-safe takes, kombu's priority buckets, fanout over PUB/SUB |
//! | `amqp://`, `amqps://` (TLS), `pyamqp://` | `amqp` | `kombu-amqp` | RabbitMQ (AMQP 0-9-1 on lapin): the broker routes; publisher confirms, recovery after a restart |
//!
//! What a transport can and cannot do is data: [`Connection::capabilities`](kombu_core::Connection::capabilities)
//! returns its [`Capabilities`].
//!
//! Crates that use `kombu-core` directly call [`install`] (or a transport crate's own
//! `register` function) once before opening connections.
//!
//! ## Where to start
//!
//! - [`Connection`]: open a broker by URL, declare entities, make producers and consumers.
//! - [`Producer`]: publish typed values or bytes, one by one or in batches.
//! - [`Consumer`]: a stream of [`Delivery`]s, or a handler loop with an error policy.
//! - [`Delivery`]: decode, then settle exactly once (`ack`, `reject`, `requeue`).
//! - [`serializers`]: serializers, compression, accept lists and signing, as kombu names them.
//! - [`Error`] and [`ErrorKind`]: what failed and whether retrying makes sense.

use std::ops::Deref;
use std::sync::Once;

/// `next()` and friends for the [`Consumer`] stream.
pub use futures::StreamExt;
pub use kombu_core::{
    Binding, BrokerConnection, BrokerUrl, COMPRESSION_HEADER, Capabilities, Channel, ConsumeError,
    ConsumeOptions, Consumer, ConsumerBuilder, Declaration, Decoder, Delivery, DeliveryInfo,
    DeliveryMode, DeliveryStream, Error, ErrorAction, ErrorKind, Exchange, ExchangeKind,
    HeaderMatch, Headers, Message, Outcome, Outgoing, Producer, Properties, Publish, Queue, Result,
    SettleError, Settler, Transport, Value, memory, transport, virtual_transport,
};
pub use kombu_serializers as serializers;

/// Registers every transport this crate was built with for its URL schemes. Idempotent;
/// [`Connection::open`] calls it.
pub fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // The memory transport lives in kombu-core and is always registered there. Transport
        // crates register here, each behind its feature.
        #[cfg(feature = "sqlite")]
        kombu_sqlite::register();
        #[cfg(feature = "redis")]
        kombu_redis::register();
        #[cfg(feature = "amqp")]
        kombu_amqp::register();
    });
}

/// A connection to a broker chosen by URL, with every enabled transport installed.
///
/// It dereferences to [`kombu_core::Connection`], whose methods ([`producer`], [`consumer`],
/// [`declare_queue`], [`queue_size`], [`purge`], [`close`], ...) it offers. Clones are cheap
/// and share the broker connection; consumers open channels of their own. The URL is never
/// shown with its password ([`url`] displays it masked).
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
///
/// [`producer`]: kombu_core::Connection::producer
/// [`consumer`]: kombu_core::Connection::consumer
/// [`declare_queue`]: kombu_core::Connection::declare_queue
/// [`queue_size`]: kombu_core::Connection::queue_size
/// [`purge`]: kombu_core::Connection::purge
/// [`close`]: kombu_core::Connection::close
/// [`url`]: kombu_core::Connection::url
#[derive(Clone, Debug)]
pub struct Connection(kombu_core::Connection);

impl Connection {
    /// Connects to the first reachable URL of a `;`-separated list.
    pub async fn open(url: &str) -> Result<Connection> {
        install();
        kombu_core::Connection::open(url).await.map(Connection)
    }

    /// Like [`Connection::open`], with a serializer registry of your own.
    pub async fn open_with(url: &str, registry: serializers::Registry) -> Result<Connection> {
        install();
        kombu_core::Connection::open_with(url, registry)
            .await
            .map(Connection)
    }

    /// The core connection.
    pub fn into_inner(self) -> kombu_core::Connection {
        self.0
    }
}

impl Deref for Connection {
    type Target = kombu_core::Connection;
    fn deref(&self) -> &kombu_core::Connection {
        &self.0
    }
}

impl AsRef<kombu_core::Connection> for Connection {
    fn as_ref(&self) -> &kombu_core::Connection {
        &self.0
    }
}

impl From<Connection> for kombu_core::Connection {
    fn from(c: Connection) -> Self {
        c.0
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

    #[tokio::test]
    async fn failover_skips_nothing_when_first_works() {
        let conn = Connection::open("memory://first;memory://second")
            .await
            .unwrap();
        assert_eq!(conn.url().host(), Some("first"));
        assert_eq!(conn.alternates().len(), 2);
    }
}
