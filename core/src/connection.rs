//! [`Connection`]: a broker chosen by URL.
//!
//! `Connection::open(url)` picks the transport from the URL scheme. Several URLs separated by
//! `;` are failover alternatives, tried in order until one connects. A connection is cheap to
//! clone: clones share the broker connection, the default channel (used by producers) and the
//! cache of declared entities. Consumers open channels of their own, so dropping a consumer
//! returns its unsettled messages without touching anyone else's.
//!
//! The URL is never shown with its password: [`Connection::url`] displays it masked.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use kombu_serializers::Registry;
use parking_lot::Mutex;

use crate::capabilities::Capabilities;
use crate::channel::Channel;
use crate::consumer::ConsumerBuilder;
use crate::entity::{Binding, Exchange, Queue};
use crate::error::{Error, ErrorKind, Result};
use crate::link::LinkWatch;
use crate::producer::Producer;
use crate::transport::{BrokerConnection, transport_for};
use crate::url::BrokerUrl;

/// A connection to a broker, chosen by URL.
///
/// [`Connection::open`] picks the transport from the URL scheme (`memory://`, and whatever
/// transports are installed: `sqlite://`, `redis://`, `amqp://`, ...). Several URLs separated
/// by `;` are failover alternatives, tried in order until one connects. A connection is cheap to
/// clone: clones share the broker connection, the default channel (used by producers) and the
/// cache of declared entities. Consumers open channels of their own, so dropping a consumer
/// returns its unsettled messages without touching anyone else's. The URL is never shown with
/// its password: [`Connection::url`] displays it masked.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> kombu_core::Result<()> {
/// use futures::StreamExt;
/// use kombu_core::{Connection, Exchange, ExchangeKind, Queue};
///
/// # kombu_core::transport::memory::register();
/// let conn = Connection::open("memory://u:secret@doc-connection-type").await?;
/// assert_eq!(conn.url().to_string(), "memory://u:**@doc-connection-type");
///
/// // Entities as AMQP has them; redeclaring an identical one is fine.
/// let alerts = Exchange::new("alerts", ExchangeKind::Fanout);
/// conn.declare_queue(&Queue::new("pager").exchange(alerts.clone())).await?;
/// conn.declare_queue(&Queue::new("audit").exchange(alerts.clone())).await?;
///
/// conn.producer().exchange(alerts).publish("disk full").await?;
/// assert_eq!(conn.queue_size("pager").await?, 1);
/// assert_eq!(conn.queue_size("audit").await?, 1);
///
/// let mut pager = conn.consumer([Queue::new("pager")]).build().await?;
/// if let Some(Ok(delivery)) = pager.next().await {
///     assert_eq!(delivery.decode::<String>()?, "disk full");
///     delivery.ack().await?;
/// }
/// assert_eq!(conn.purge("audit").await?, 1);
/// pager.close().await?;
/// conn.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    url: BrokerUrl,
    alternates: Vec<BrokerUrl>,
    broker: Arc<dyn BrokerConnection>,
    default_channel: Arc<dyn Channel>,
    registry: Registry,
    declared: Mutex<HashSet<String>>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.inner.url)
            .field("alternates", &self.inner.alternates)
            .finish()
    }
}

impl Connection {
    /// Connects to the first reachable URL of a `;`-separated list, with the default serializer
    /// registry.
    pub async fn open(url: &str) -> Result<Connection> {
        Connection::open_with(url, Registry::default()).await
    }

    /// Like [`Connection::open`], with a serializer registry of your own (extra serializers or
    /// compressors).
    pub async fn open_with(url: &str, registry: Registry) -> Result<Connection> {
        let alternates = BrokerUrl::parse_failover(url)?;
        let mut last_error = None;
        for (i, candidate) in alternates.iter().enumerate() {
            let Some(transport) = transport_for(candidate) else {
                return Err(Error::new(
                    ErrorKind::InvalidUrl,
                    format!(
                        "no transport for scheme {:?} in {candidate} (registered: {}); enable \
                         the matching feature of the kombu crate",
                        candidate.scheme(),
                        crate::transport::registered_schemes().join(", ")
                    ),
                ));
            };
            match transport
                .connect_with_alternates(candidate, &alternates)
                .await
            {
                Ok(broker) => {
                    let default_channel = broker.channel().await?;
                    return Ok(Connection {
                        inner: Arc::new(Inner {
                            url: candidate.clone(),
                            alternates,
                            broker,
                            default_channel,
                            registry,
                            declared: Mutex::new(HashSet::new()),
                        }),
                    });
                }
                Err(e) if e.is_recoverable() => {
                    // The last one's error is returned: logging it too would say it twice.
                    if i + 1 < alternates.len() {
                        tracing::warn!(url = %candidate, error = %format_args!("{e:#}"), "broker unreachable, trying the next URL");
                    }
                    last_error = Some(e.context(format!("connect to {candidate}")));
                }
                Err(e) => return Err(e.context(format!("connect to {candidate}"))),
            }
        }
        Err(last_error
            .unwrap_or_else(|| Error::new(ErrorKind::Connection, "no broker URL could be used")))
    }

    /// The URL in use (displays masked): the one opened, or the failover alternative the
    /// transport moved to after losing it.
    pub fn url(&self) -> BrokerUrl {
        self.inner
            .broker
            .url_in_use()
            .unwrap_or_else(|| self.inner.url.clone())
    }

    /// Whether the connection is up, reconnecting or lost for good, as a watch channel (see
    /// [`LinkState`](crate::LinkState)).
    pub fn link(&self) -> LinkWatch {
        self.inner.broker.link()
    }

    /// Every failover URL, the one in use included.
    pub fn alternates(&self) -> &[BrokerUrl] {
        &self.inner.alternates
    }

    /// What the broker can do.
    pub fn capabilities(&self) -> Capabilities {
        self.inner.broker.capabilities()
    }

    /// The serializer registry of this connection.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// A new channel of its own.
    pub async fn channel(&self) -> Result<Arc<dyn Channel>> {
        self.inner.broker.channel().await
    }

    /// The channel shared by this connection's producers and entity operations.
    pub fn default_channel(&self) -> &Arc<dyn Channel> {
        &self.inner.default_channel
    }

    /// A producer on the default channel, publishing to the default exchange.
    pub fn producer(&self) -> Producer {
        Producer::new(self)
    }

    /// Starts building a consumer of `queues` (declared when it starts, unless turned off).
    pub fn consumer<I>(&self, queues: I) -> ConsumerBuilder
    where
        I: IntoIterator,
        I::Item: Into<Queue>,
    {
        ConsumerBuilder::new(self.clone(), queues.into_iter().map(Into::into).collect())
    }

    /// Declares an exchange.
    pub async fn declare_exchange(&self, exchange: &Exchange) -> Result<()> {
        self.inner
            .default_channel
            .declare_exchange(exchange)
            .await?;
        self.remember(exchange_key(exchange));
        Ok(())
    }

    /// Declares a queue with its exchange and bindings.
    pub async fn declare_queue(&self, queue: &Queue) -> Result<()> {
        self.inner.default_channel.declare_queue(queue).await?;
        self.remember(queue_key(queue));
        Ok(())
    }

    /// Declares an exchange unless this connection already declared an identical one (kombu's
    /// `maybe_declare`: a cache, not a retry). Producers and consumers declare through it.
    pub async fn maybe_declare_exchange(&self, exchange: &Exchange) -> Result<()> {
        if self.is_declared(&exchange_key(exchange)) {
            return Ok(());
        }
        self.declare_exchange(exchange).await
    }

    /// Declares a queue unless this connection already declared an identical one (kombu's
    /// `maybe_declare`: a cache, not a retry). Producers and consumers declare through it.
    pub async fn maybe_declare_queue(&self, queue: &Queue) -> Result<()> {
        if self.is_declared(&queue_key(queue)) {
            return Ok(());
        }
        self.declare_queue(queue).await
    }

    /// Binds a queue to an exchange.
    pub async fn bind(&self, queue: &str, binding: &Binding) -> Result<()> {
        self.inner.default_channel.bind(queue, binding).await
    }

    /// Removes a binding.
    pub async fn unbind(&self, queue: &str, binding: &Binding) -> Result<()> {
        self.inner.default_channel.unbind(queue, binding).await
    }

    /// Whether the broker knows a queue: declared by anyone (kombu-rs, Python kombu, a Celery
    /// worker), holding messages, or bound to an exchange. Never creates it. See
    /// [`Channel::queue_exists`] for the contract.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> kombu_core::Result<()> {
    /// use kombu_core::{Connection, Queue};
    ///
    /// # kombu_core::transport::memory::register();
    /// let conn = Connection::open("memory://").await?;
    /// assert!(!conn.queue_exists("jobs").await?);
    /// conn.declare_queue(&Queue::new("jobs")).await?;
    /// assert!(conn.queue_exists("jobs").await?);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn queue_exists(&self, queue: &str) -> Result<bool> {
        self.inner.default_channel.queue_exists(queue).await
    }

    /// Whether the broker knows an exchange (the default exchange `""` always exists), to use
    /// it as it is instead of declaring it. Never creates or changes it. See
    /// [`Channel::exchange_exists`] for the contract.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> kombu_core::Result<()> {
    /// use kombu_core::{Connection, Exchange, ExchangeKind};
    ///
    /// # kombu_core::transport::memory::register();
    /// let conn = Connection::open("memory://doc-exchange-exists").await?;
    /// assert!(conn.exchange_exists("").await?);
    /// assert!(!conn.exchange_exists("logs").await?);
    /// conn.declare_exchange(&Exchange::new("logs", ExchangeKind::Topic)).await?;
    /// assert!(conn.exchange_exists("logs").await?);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn exchange_exists(&self, name: &str) -> Result<bool> {
        self.inner.default_channel.exchange_exists(name).await
    }

    /// Number of ready messages in a queue; [`ErrorKind::NotFound`] when it exists nowhere.
    pub async fn queue_size(&self, queue: &str) -> Result<u64> {
        self.inner.default_channel.queue_size(queue).await
    }

    /// Removes every ready message from a queue; returns how many; [`ErrorKind::NotFound`]
    /// when it exists nowhere.
    pub async fn purge(&self, queue: &str) -> Result<u64> {
        self.inner.default_channel.purge(queue).await
    }

    /// Deletes a queue; returns how many ready messages it held.
    pub async fn delete_queue(&self, queue: &str) -> Result<u64> {
        self.forget(|k| k.starts_with("q\u{0}") && k.split('\u{0}').nth(1) == Some(queue));
        self.inner.default_channel.delete_queue(queue).await
    }

    /// Deletes an exchange.
    pub async fn delete_exchange(&self, name: &str) -> Result<()> {
        self.forget(|k| k.starts_with("x\u{0}") && k.split('\u{0}').nth(1) == Some(name));
        self.inner.default_channel.delete_exchange(name).await
    }

    /// Closes the default channel and the broker connection. Other clones become unusable.
    ///
    /// What the producers have pending is written first: the default channel's close waits for
    /// the publishes it has not seen confirmed or written (AMQP) and for the acks the
    /// connection has queued (virtual transports). The broker connection is closed even when
    /// that fails; the first error is returned.
    pub async fn close(&self) -> Result<()> {
        let channel = self.inner.default_channel.close().await;
        let broker = self.inner.broker.close().await;
        channel.and(broker)
    }

    fn is_declared(&self, key: &str) -> bool {
        self.inner.declared.lock().contains(key)
    }

    fn remember(&self, key: String) {
        self.inner.declared.lock().insert(key);
    }

    fn forget(&self, matches: impl Fn(&str) -> bool) {
        self.inner.declared.lock().retain(|k| !matches(k));
    }
}

fn exchange_key(e: &Exchange) -> String {
    format!("x\u{0}{}\u{0}{e:?}", e.name)
}

fn queue_key(q: &Queue) -> String {
    format!("q\u{0}{}\u{0}{q:?}", q.name)
}

impl From<&str> for Queue {
    fn from(name: &str) -> Self {
        Queue::new(name)
    }
}

impl From<String> for Queue {
    fn from(name: String) -> Self {
        Queue::new(name)
    }
}
