//! [`Connection`]: a broker chosen by URL.
//!
//! `Connection::open(url)` picks the transport from the URL scheme. Several URLs separated by
//! `;` are failover alternatives, tried in the order of their
//! [`FailoverStrategy`] until one connects; [`Connection::builder`]
//! opens under a [`RetryPolicy`], which also covers declarations, and
//! [`Connection::ensure`] runs any operation under one. A connection is cheap to
//! clone: clones share the broker connection, the default channel (used by producers) and the
//! cache of declared entities. Consumers open channels of their own, so dropping a consumer
//! returns its unsettled messages without touching anyone else's.
//!
//! The URL is never shown with its password: [`Connection::url`] displays it masked.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use kombu_serializers::Registry;
use parking_lot::Mutex;

use crate::capabilities::Capabilities;
use crate::channel::Channel;
use crate::connection_builder::ConnectionBuilder;
use crate::consumer::ConsumerBuilder;
use crate::entity::{Binding, Exchange, Queue};
use crate::error::Result;
use crate::failover::FailoverStrategy;
use crate::link::LinkWatch;
use crate::producer::Producer;
use crate::retry::{OnRetry, RetryEvent, RetryPolicy, report};
use crate::transport::BrokerConnection;
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
    /// The OpenTelemetry `messaging.system` of the URL's transport.
    system: &'static str,
    alternates: Vec<BrokerUrl>,
    broker: Arc<dyn BrokerConnection>,
    default_channel: Arc<dyn Channel>,
    registry: Registry,
    declared: Mutex<HashSet<String>>,
    strategy: FailoverStrategy,
    retry: Option<RetryPolicy>,
    on_retry: Option<OnRetry>,
}

/// So that what takes `&impl AsRef<Connection>` (the patterns of `kombu-patterns`) takes core's
/// connection as well as the facade's.
impl AsRef<Connection> for Connection {
    fn as_ref(&self) -> &Connection {
        self
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.inner.url)
            .field("alternates", &self.inner.alternates)
            .field("strategy", &self.inner.strategy)
            .field("retry", &self.inner.retry)
            .finish()
    }
}

impl Connection {
    /// Connects to the first reachable URL of a `;`-separated list (in the order of the first
    /// URL's `failover_strategy` option: round-robin unless `shuffle`), trying each once, with
    /// the default serializer registry. [`Connection::builder`] opens under a retry policy.
    pub async fn open(url: &str) -> Result<Connection> {
        ConnectionBuilder::new(url).open().await
    }

    /// Like [`Connection::open`], with a serializer registry of your own (extra serializers or
    /// compressors).
    pub async fn open_with(url: &str, registry: Registry) -> Result<Connection> {
        ConnectionBuilder::new(url).registry(registry).open().await
    }

    /// Starts a connection with options: a retry policy for connecting, declaring and
    /// publishing, a failover strategy, a registry. See [`ConnectionBuilder`].
    pub fn builder(url: &str) -> ConnectionBuilder {
        ConnectionBuilder::new(url)
    }

    // Every part a connection is made of; only the builder calls it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_parts(
        url: BrokerUrl,
        alternates: Vec<BrokerUrl>,
        broker: Arc<dyn BrokerConnection>,
        default_channel: Arc<dyn Channel>,
        registry: Registry,
        strategy: FailoverStrategy,
        retry: Option<RetryPolicy>,
        on_retry: Option<OnRetry>,
    ) -> Connection {
        Connection {
            inner: Arc::new(Inner {
                system: crate::telemetry::messaging_system(&url),
                url,
                alternates,
                broker,
                default_channel,
                registry,
                declared: Mutex::new(HashSet::new()),
                strategy,
                retry,
                on_retry,
            }),
        }
    }

    /// The retry policy given to [`ConnectionBuilder::retry_policy`], if any: declarations
    /// run under it, and producers start with it (else with [`RetryPolicy::default`]).
    pub fn retry_policy(&self) -> Option<&RetryPolicy> {
        self.inner.retry.as_ref()
    }

    /// The order in which the failover URLs are tried.
    pub fn failover_strategy(&self) -> FailoverStrategy {
        self.inner.strategy
    }

    pub(crate) fn on_retry(&self) -> Option<&OnRetry> {
        self.inner.on_retry.as_ref()
    }

    /// Runs `op` under `policy` (kombu's `Connection.ensure`): again after each error the
    /// policy retries (recoverable ones, and not those whose outcome is unknown unless
    /// [`RetryPolicy::retry_unknown`] is on), waiting the policy's delays; returns the first
    /// success or the last error. AMQP and Redis reconnect by themselves (a lost connection
    /// is replaced, and what was declared is declared again); memory and SQLite never lose
    /// their store, so there is nothing to reconnect and a recoverable error there (a busy
    /// SQLite file) is simply tried again. `op` is run again as it is, so it should take what
    /// it needs from the connection at each call. Each retry is logged at warn.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> kombu_core::Result<()> {
    /// use kombu_core::{Connection, Queue, RetryPolicy};
    ///
    /// # kombu_core::transport::memory::register();
    /// let conn = Connection::open("memory://doc-ensure").await?;
    /// conn.declare_queue(&Queue::new("jobs")).await?;
    /// let size = conn
    ///     .ensure(&RetryPolicy::default().max_retries(Some(3)), || conn.queue_size("jobs"))
    ///     .await?;
    /// assert_eq!(size, 0);
    /// # Ok(()) }
    /// ```
    pub async fn ensure<T, F, Fut>(&self, policy: &RetryPolicy, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.ensure_with(policy, |_| {}, op).await
    }

    /// As [`Connection::ensure`], calling `on_retry` before each retry (kombu's `errback`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> kombu_core::Result<()> {
    /// use std::time::Duration;
    /// use kombu_core::{Connection, Error, ErrorKind, RetryPolicy};
    ///
    /// # kombu_core::transport::memory::register();
    /// let conn = Connection::open("memory://doc-ensure-with").await?;
    /// let policy = RetryPolicy::default().interval_start(Duration::from_millis(1)).jitter(0.0);
    /// let mut tries = 0;
    /// let mut retries = Vec::new();
    /// let answer = conn
    ///     .ensure_with(
    ///         &policy,
    ///         |event| retries.push(event.attempt),
    ///         || {
    ///             tries += 1;
    ///             let n = tries;
    ///             async move {
    ///                 if n < 3 { Err(Error::new(ErrorKind::Connection, "down")) } else { Ok(42) }
    ///             }
    ///         },
    ///     )
    ///     .await?;
    /// assert_eq!((answer, retries), (42, vec![1, 2]));
    /// # Ok(()) }
    /// ```
    pub async fn ensure_with<T, F, Fut, R>(
        &self,
        policy: &RetryPolicy,
        mut on_retry: R,
        op: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
        R: FnMut(&RetryEvent<'_>),
    {
        policy
            .run(op, |event| {
                report("operation", event, None);
                on_retry(event);
            })
            .await
    }

    /// Runs `op` under the connection's retry policy, if it has one; once otherwise.
    async fn with_policy<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        match &self.inner.retry {
            None => {
                let mut op = op;
                op().await
            }
            Some(policy) => {
                policy
                    .run(op, |event| report(what, event, self.on_retry()))
                    .await
            }
        }
    }

    /// The URL in use (displays masked): the one opened, or the failover alternative the
    /// transport moved to after losing it.
    pub fn url(&self) -> BrokerUrl {
        self.inner
            .broker
            .url_in_use()
            .unwrap_or_else(|| self.inner.url.clone())
    }

    /// The broker's OpenTelemetry `messaging.system` (see
    /// [`telemetry::messaging_system`](crate::telemetry::messaging_system)): `rabbitmq`,
    /// `redis`, `sqlite`, `mongodb`, `memory`. Spans and metrics carry it.
    pub fn messaging_system(&self) -> &'static str {
        self.inner.system
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
        self.with_policy("declare", || {
            self.inner.default_channel.declare_exchange(exchange)
        })
        .await?;
        // As kombu's `can_cache_declaration`: an exchange that may vanish by itself is
        // declared again each time.
        if !exchange.auto_delete {
            self.remember(exchange_key(exchange));
        }
        Ok(())
    }

    /// Declares a queue with its exchange and bindings.
    pub async fn declare_queue(&self, queue: &Queue) -> Result<()> {
        self.with_policy("declare", || {
            self.inner.default_channel.declare_queue(queue)
        })
        .await?;
        // As kombu's `can_cache_declaration`: a queue that may vanish by itself (auto-delete,
        // or expiring) is declared again each time, or a consumer of it after it went would
        // find it missing.
        if !queue.auto_delete && queue.expires.is_none() {
            self.remember(queue_key(queue));
        }
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
        self.with_policy("bind", || self.inner.default_channel.bind(queue, binding))
            .await
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

    /// Number of ready messages in a queue; [`ErrorKind::NotFound`](crate::ErrorKind::NotFound)
    /// when it exists nowhere.
    pub async fn queue_size(&self, queue: &str) -> Result<u64> {
        self.inner.default_channel.queue_size(queue).await
    }

    /// What the broker can tell of a queue (ready messages, and where the transport knows
    /// them unsettled messages, consumers and the oldest message's age):
    /// [`Channel::queue_stats`](crate::transport::Channel::queue_stats).
    pub async fn queue_stats(&self, queue: &str) -> Result<crate::transport::QueueStats> {
        self.inner.default_channel.queue_stats(queue).await
    }

    /// Up to `limit` of a queue's ready messages, without taking them:
    /// [`Channel::peek`](crate::transport::Channel::peek) (unsupported on AMQP).
    pub async fn peek(&self, queue: &str, limit: usize) -> Result<Vec<crate::transport::Envelope>> {
        self.inner.default_channel.peek(queue, limit).await
    }

    /// Removes every ready message from a queue; returns how many;
    /// [`ErrorKind::NotFound`](crate::ErrorKind::NotFound) when it exists nowhere.
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
