//! What a transport author uses: the native contract, the scheme registry, and what a
//! transport hands to core.
//!
//! Applications need none of this (the crate root has their API). A transport whose broker
//! routes (AMQP) implements [`Channel`] and [`Settler`] and builds each
//! [`Delivery`](crate::Delivery) with [`Delivery::new`](crate::Delivery::new) or
//! [`Delivery::from_envelope`](crate::Delivery::from_envelope); a broker that only stores
//! implements [`virtual_transport::Backend`] instead.
//!
//! A transport crate implements [`Transport`] (connect to a URL) and [`BrokerConnection`] (a live
//! connection that opens channels), and registers itself for its URL schemes with
//! [`register_transport`]. [`Connection::open`](crate::Connection::open) looks the URL's scheme
//! up here. Nothing is registered until someone registers it: the `kombu` facade registers
//! every transport it was built with, memory included; a user of `kombu-core` alone calls
//! [`memory::register`] or a transport crate's `register`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use parking_lot::RwLock;

use crate::capabilities::Capabilities;
use crate::error::Result;
use crate::link::{LinkReporter, LinkWatch};
use crate::url::BrokerUrl;

pub use crate::channel::{
    Channel, ConsumeOptions, Decoder, DeliveryStream, Outcome, Outgoing, QueueStats, Settler,
};
pub use crate::message::Envelope;
pub mod memory;
pub mod virtual_transport;

/// A kind of broker: knows how to connect to URLs of its schemes.
#[async_trait]
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// Short name (`memory`, `redis`, `amqp`).
    fn name(&self) -> &'static str;
    /// The URL schemes it answers to; for `a+b://` schemes, the part before `+`.
    fn schemes(&self) -> &'static [&'static str];
    /// Connects. Errors are [`ErrorKind::Connection`](crate::ErrorKind::Connection) when the
    /// broker cannot be reached, so failover moves on to the next URL.
    async fn connect(&self, url: &BrokerUrl) -> Result<Arc<dyn BrokerConnection>>;

    /// Connects to `url`, one of the failover `alternates` (all of them, in order, `url`
    /// among them), so that a transport that reconnects by itself after the connection drops
    /// can move on to the others in turn. The default ignores them and calls
    /// [`Transport::connect`].
    async fn connect_with_alternates(
        &self,
        url: &BrokerUrl,
        alternates: &[BrokerUrl],
    ) -> Result<Arc<dyn BrokerConnection>> {
        let _ = alternates;
        self.connect(url).await
    }

    /// As [`Transport::connect_with_alternates`], with the
    /// [`FailoverStrategy`](crate::FailoverStrategy) the connection was opened with, for a
    /// transport that moves to another alternative by itself after a loss: it tries them in
    /// the strategy's order ([`FailoverStrategy::order`](crate::FailoverStrategy::order)). The
    /// default ignores the strategy.
    async fn connect_failover(
        &self,
        url: &BrokerUrl,
        alternates: &[BrokerUrl],
        strategy: crate::FailoverStrategy,
    ) -> Result<Arc<dyn BrokerConnection>> {
        let _ = strategy;
        self.connect_with_alternates(url, alternates).await
    }
}

/// A live connection to a broker. Cheap to share; channels are multiplexed over it.
#[async_trait]
pub trait BrokerConnection: Send + Sync + fmt::Debug + 'static {
    /// What the broker can do.
    fn capabilities(&self) -> Capabilities;
    /// Opens a new channel.
    async fn channel(&self) -> Result<Arc<dyn Channel>>;
    /// Closes the connection.
    async fn close(&self) -> Result<()>;

    /// Whether the connection is up, reconnecting or lost for good. The default (a transport
    /// that cannot lose its broker) is always [`LinkState::Connected`](crate::LinkState::Connected).
    fn link(&self) -> LinkWatch {
        LinkReporter::new().subscribe()
    }

    /// The failover URL in use now, when the transport may have moved to another one after a
    /// loss; `None` (the default) = the one it was opened with.
    fn url_in_use(&self) -> Option<BrokerUrl> {
        None
    }
}

type Registry = HashMap<String, Arc<dyn Transport>>;

static TRANSPORTS: LazyLock<RwLock<Registry>> = LazyLock::new(|| RwLock::new(HashMap::new()));

/// Registers a transport for each of its schemes, replacing an earlier one for the same scheme.
pub fn register_transport(transport: Arc<dyn Transport>) {
    let mut map = TRANSPORTS.write();
    for scheme in transport.schemes() {
        map.insert((*scheme).to_owned(), transport.clone());
    }
}

/// The transport for a URL: by its full scheme, else by the part before `+`.
pub fn transport_for(url: &BrokerUrl) -> Option<Arc<dyn Transport>> {
    let map = TRANSPORTS.read();
    map.get(url.scheme())
        .or_else(|| map.get(url.transport()))
        .cloned()
}

/// Every registered scheme, sorted.
pub fn registered_schemes() -> Vec<String> {
    let mut schemes: Vec<String> = TRANSPORTS.read().keys().cloned().collect();
    schemes.sort();
    schemes
}

/// Seconds since the Unix epoch, as Python's `time.time()` gives them: the clock kombu's
/// stores write into their records (Redis unacked scores, SQLite timestamps). A clock before
/// the epoch reads as 0.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
