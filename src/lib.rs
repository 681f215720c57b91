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
//! The URL scheme picks the transport; application code does not change. Each transport is a
//! cargo feature of this crate (all on by default) and is installed the first time a
//! [`Connection`] is opened through this crate (or by [`install`]).
//!
//! | scheme | feature | crate |
//! |---|---|---|
//! | `memory://`, `memory://NAME` | `memory` | `kombu-core` |
//! | `amqp://`, `amqps://`, `pyamqp://` | `amqp` | `kombu-amqp` |
//!
//! Crates that use `kombu-core` directly call [`install`] (or a transport crate's own
//! `register` function) once before opening connections.

#![deny(missing_docs, missing_debug_implementations, unsafe_code)]

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
/// It dereferences to [`kombu_core::Connection`], whose methods (`producer`, `consumer`,
/// `declare_queue`, ...) it offers.
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

    #[tokio::test]
    async fn failover_skips_nothing_when_first_works() {
        let conn = Connection::open("memory://first;memory://second")
            .await
            .unwrap();
        assert_eq!(conn.url().host(), Some("first"));
        assert_eq!(conn.alternates().len(), 2);
    }
}
