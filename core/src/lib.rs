//! # kombu-core
//!
//! The core of kombu-rs: the message model, entities, the transport contracts, the virtual
//! router that turns store-only brokers into AMQP-like ones, the in-process memory transport, and
//! the `Connection` / `Producer` / `Consumer` API.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kombu_core::Result<()> {
//! use futures::StreamExt;
//! use kombu_core::{Connection, Exchange, Queue};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct Email { to: String }
//!
//! kombu_core::transport::memory::register();
//! let conn = Connection::open("memory://lib-doc").await?;
//! let queue = Queue::new("emails").exchange(Exchange::direct("mail")).routing_key("email");
//! let mut consumer = conn.consumer([queue]).build().await?;
//!
//! let producer = conn.producer().exchange(Exchange::direct("mail")).routing_key("email");
//! producer.publish(&Email { to: "a@example.com".into() }).await?;
//!
//! let Some(delivery) = consumer.next().await else { return Ok(()) };
//! let delivery = delivery?;
//! assert_eq!(delivery.decode::<Email>()?, Email { to: "a@example.com".into() });
//! delivery.ack().await?;
//! # Ok(()) }
//! ```
//!
//! ## Layout
//!
//! Two audiences, two places:
//!
//! - The crate root is what an application uses: [`Connection`], [`Producer`], [`Consumer`],
//!   [`Delivery`], the entities ([`Exchange`], [`Queue`], [`Binding`]), the message model,
//!   [`Error`] and the [`serializers`].
//! - [`transport`] is what a transport author uses: the native contract
//!   [`Channel`](transport::Channel) with [`Settler`](transport::Settler) (AMQP implements it
//!   directly), [`Transport`](transport::Transport) and
//!   [`register_transport`](transport::register_transport), [`Outgoing`](transport::Outgoing)
//!   and the [`Envelope`](transport::Envelope) a [`Delivery`] reads.
//! - [`transport::virtual_transport`]: the store-only contract
//!   [`Backend`](transport::virtual_transport::Backend);
//!   [`VirtualChannel`](transport::virtual_transport::VirtualChannel) adds routing, envelopes,
//!   prefetch, settlement and redelivery on top. The native path never uses it.
//! - [`transport::memory`]: the memory transport (`memory://`, `memory://NAME`), registered by
//!   [`transport::memory::register`].
//! - `conformance` (feature `conformance`): the behaviour suite every transport runs.
//!
//! ## Tracing and metrics
//!
//! Publishes and deliveries open [`tracing`](https://docs.rs/tracing) spans named and
//! attributed after OpenTelemetry's semantic conventions for messaging ([`telemetry`]); with the
//! feature `opentelemetry`, a publish writes its trace context into the message's headers
//! (W3C `traceparent`, `tracestate`) and the consumer's spans join that trace. Counters of
//! messages published, consumed and dead-lettered, and a histogram of handler durations, go to
//! the application's [`metrics`](https://docs.rs/metrics) recorder ([`metrics`]). Neither
//! costs more than a check when no subscriber or recorder is installed.

mod capabilities;
mod channel;
mod connection;
mod connection_builder;
mod consumer;
pub mod dead_letter;
mod decoder;
mod entity;
mod error;
pub mod failover;
pub mod link;
mod message;
pub mod metrics;
pub mod pool;
mod producer;
mod queue_stats;
pub mod retry;
pub mod telemetry;
pub mod transport;
mod url;
mod value;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use capabilities::Capabilities;
pub use channel::{Delivery, SettleError};
pub use connection::Connection;
pub use connection_builder::ConnectionBuilder;
pub use consumer::{
    ConsumeError, Consumer, ConsumerBuilder, DEFAULT_MAX_REDELIVERIES, DEFAULT_SHUTDOWN_TIMEOUT,
    ErrorAction, Handled, StopHandle, shutdown_signal,
};
pub use dead_letter::DeadLettered;
pub use entity::{Binding, Exchange, ExchangeKind, HeaderMatch, Queue};
pub use error::{Error, ErrorKind, Result};
pub use failover::FailoverStrategy;
pub use link::{LinkReporter, LinkState, LinkWatch};
pub use message::{COMPRESSION_HEADER, DeliveryInfo, DeliveryMode, Message, Properties};
pub use pool::{ConnectionPool, PooledConnection, PooledProducer, ProducerPool};
pub use producer::{Declaration, Producer, Publish};
pub use retry::{Delays, OnRetry, RetryEvent, RetryPolicy};
pub use url::BrokerUrl;
pub use value::{Headers, Value};

pub use kombu_serializers as serializers;
