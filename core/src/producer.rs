//! [`Producer`]: publish typed values or raw bytes.
//!
//! A producer has defaults (exchange, routing key, serializer, compression, entities to declare
//! first); each publish may override them through [`Producer::message`]:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kombu_core::Result<()> {
//! use std::time::Duration;
//! use kombu_core::{Connection, Exchange, Queue};
//!
//! # kombu_core::transport::memory::register();
//! let conn = Connection::open("memory://doc-producer").await?;
//! let orders = Exchange::topic("orders");
//! let producer = conn
//!     .producer()
//!     .exchange(orders.clone())
//!     .declare(Queue::new("eu-orders").exchange(orders).routing_key("eu.#"))
//!     .compression("zlib");
//!
//! producer.message(&serde_json::json!({"id": 1}))
//!     .routing_key("eu.fr")
//!     .priority(5)
//!     .header("source", "doc")
//!     .expiration(Duration::from_secs(60))
//!     .correlation_id("req-1")
//!     .send()
//!     .await?;
//! assert_eq!(conn.queue_size("eu-orders").await?, 1);
//! # Ok(()) }
//! ```

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tracing::Instrument;

use crate::channel::Outgoing;
use crate::connection::Connection;
use crate::entity::{Exchange, Queue};
use crate::error::Result;
use crate::message::{COMPRESSION_HEADER, DeliveryMode, Message, Properties};
use crate::retry::{OnRetry, RetryEvent, RetryPolicy, report};
use crate::value::{Headers, Value};

/// An entity a producer declares before its first publish.
// A producer holds a handful of these, made once; boxing the queue would only complicate the
// public variants.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Declaration {
    /// An exchange.
    Exchange(Exchange),
    /// A queue (with its exchange and bindings).
    Queue(Queue),
}

impl From<Exchange> for Declaration {
    fn from(e: Exchange) -> Self {
        Declaration::Exchange(e)
    }
}

impl From<Queue> for Declaration {
    fn from(q: Queue) -> Self {
        Declaration::Queue(q)
    }
}

/// Publishes messages: typed values (any `T: Serialize`, JSON unless another serializer is
/// named) or raw bytes.
///
/// Made by `Connection::producer`. A producer carries defaults (exchange, routing key,
/// serializer, compression, delivery mode, entities to declare before the first publish), which
/// each publish may override through [`Producer::message`]. It is cheap to clone; clones share
/// the connection's default channel.
///
/// A publish returns once the broker has the message: confirmed where the transport confirms
/// (AMQP with publisher confirms), committed to the store otherwise. On the default exchange
/// (no [`exchange`](Producer::exchange)) the routing key names the queue.
///
/// ## Retries
///
/// A publish (with the declarations it makes first) runs under a [`RetryPolicy`]: the
/// connection's ([`ConnectionBuilder::retry_policy`](crate::ConnectionBuilder::retry_policy)),
/// else [`RetryPolicy::default`] (unlimited retries within 30 s). Only recoverable errors (a
/// lost or refused connection, a timeout) are retried, and only those after which the broker
/// certainly does not have the message: an error marked
/// [`outcome_unknown`](crate::Error::outcome_unknown) (the bytes may have reached the broker)
/// is returned, not retried, so a publish is never silently duplicated.
/// [`retry_unknown(true)`](Producer::retry_unknown) retries those too (at least once, with
/// possible duplicates); [`retry(false)`](Producer::retry) turns retries off. Per transport:
///
/// | transport | a failed publish |
/// |---|---|
/// | memory | cannot fail on the broker's side (nothing to retry) |
/// | SQLite | a transaction commits or not: a busy or locked database (the transaction did not commit) is retried safely; any other failure, an I/O error reported by `COMMIT` included (the one case whose outcome SQLite leaves open), is not recoverable and not retried |
/// | Redis | a command whose reply was lost (the connection dropped or timed out after it may have been sent) has an unknown outcome: not retried by default; an error the server answered is not recoverable |
/// | AMQP | the transport itself publishes again, within `recover_timeout`, what a lost connection interrupted before its frames were written; a publish whose confirm never came has an unknown outcome, not retried by default; a broker nack or an unroutable return is not recoverable |
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> kombu_core::Result<()> {
/// use kombu_core::{Connection, Queue};
/// use serde::Serialize;
///
/// #[derive(Serialize)]
/// struct Invoice { id: u32, total_cents: u64 }
///
/// # kombu_core::transport::memory::register();
/// let conn = Connection::open("memory://doc-producer-type").await?;
/// let producer = conn.producer().routing_key("invoices").declare(Queue::new("invoices"));
///
/// // One message with the producer's defaults, one with per-message options.
/// producer.publish(&Invoice { id: 1, total_cents: 1250 }).await?;
/// producer.message(&Invoice { id: 2, total_cents: 99 }).priority(9).header("tenant", "acme").send().await?;
///
/// // Many at once: one broker round trip where the transport allows it.
/// let batch = (3..=5)
///     .map(|id| producer.message(&Invoice { id, total_cents: 0 }).build())
///     .collect::<kombu_core::Result<Vec<_>>>()?;
/// producer.send_batch(batch).await?;
/// assert_eq!(conn.queue_size("invoices").await?, 5);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Producer {
    conn: Connection,
    exchange: Option<Exchange>,
    routing_key: String,
    serializer: String,
    compression: Option<String>,
    delivery_mode: Option<DeliveryMode>,
    declarations: Arc<Vec<Declaration>>,
    declared: Arc<tokio::sync::OnceCell<()>>,
    retry: Option<RetryPolicy>,
    on_retry: Option<OnRetry>,
}

impl Producer {
    /// A producer publishing JSON to the default exchange (`Connection::producer`).
    pub(crate) fn new(conn: &Connection) -> Self {
        Producer {
            conn: conn.clone(),
            exchange: None,
            routing_key: String::new(),
            serializer: "json".to_owned(),
            compression: None,
            delivery_mode: None,
            declarations: Arc::new(Vec::new()),
            declared: Arc::new(tokio::sync::OnceCell::new()),
            retry: Some(conn.retry_policy().cloned().unwrap_or_default()),
            on_retry: conn.on_retry().cloned(),
        }
    }

    fn reset_declared(mut self) -> Self {
        self.declared = Arc::new(tokio::sync::OnceCell::new());
        self
    }

    /// Publishes to this exchange (declared before the first publish).
    pub fn exchange(mut self, exchange: Exchange) -> Self {
        self.exchange = Some(exchange);
        self.reset_declared()
    }

    /// Default routing key.
    pub fn routing_key(mut self, key: impl Into<String>) -> Self {
        self.routing_key = key.into();
        self
    }

    /// Default serializer by name (`json`, `raw`, `text`, or any registered).
    pub fn serializer(mut self, name: impl Into<String>) -> Self {
        self.serializer = name.into();
        self
    }

    /// Default compression by name or alias (`zlib`, ...).
    pub fn compression(mut self, name: impl Into<String>) -> Self {
        self.compression = Some(name.into());
        self
    }

    /// Default delivery mode.
    pub fn delivery_mode(mut self, mode: DeliveryMode) -> Self {
        self.delivery_mode = Some(mode);
        self
    }

    /// Declares this entity before the first publish (once per connection).
    pub fn declare(mut self, entity: impl Into<Declaration>) -> Self {
        Arc::make_mut(&mut self.declarations).push(entity.into());
        self.reset_declared()
    }

    /// Publishes (and declares first) under `policy` instead of the connection's or the
    /// default one. See [Retries](Producer#retries).
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Turns retries off (`false`: each publish is tried once) or back on (`true`: the policy
    /// set before, else [`RetryPolicy::default`]).
    pub fn retry(mut self, retry: bool) -> Self {
        self.retry = match (retry, self.retry) {
            (false, _) => None,
            (true, Some(policy)) => Some(policy),
            (true, None) => Some(self.conn.retry_policy().cloned().unwrap_or_default()),
        };
        self
    }

    /// Whether publishes whose outcome is unknown (the broker may have the message) are
    /// retried too: at least once, with possible duplicates. Off by default; turning it on
    /// turns retries on.
    pub fn retry_unknown(self, retry_unknown: bool) -> Self {
        let mut producer = if retry_unknown {
            self.retry(true)
        } else {
            self
        };
        if let Some(policy) = producer.retry.take() {
            producer.retry = Some(policy.retry_unknown(retry_unknown));
        }
        producer
    }

    /// Calls `callback` before each retry of a publish (for logs and metrics; each retry is
    /// logged at warn besides).
    pub fn on_retry(mut self, callback: impl Fn(&RetryEvent<'_>) + Send + Sync + 'static) -> Self {
        self.on_retry = Some(OnRetry::new(callback));
        self
    }

    /// The policy publishes run under (`None`: retries are off).
    pub fn policy(&self) -> Option<&RetryPolicy> {
        self.retry.as_ref()
    }

    /// Publishes `value` with the producer's defaults.
    pub async fn publish<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        self.message(value).send().await
    }

    /// Publishes raw bytes with the given content type and encoding (no serializer).
    pub async fn publish_bytes(
        &self,
        body: impl Into<Bytes>,
        content_type: &str,
        content_encoding: &str,
    ) -> Result<()> {
        let mut publish = self.message(&());
        publish.body = Body::Raw {
            body: body.into(),
            content_type: kombu_serializers::known(content_type),
            content_encoding: kombu_serializers::known(content_encoding),
        };
        publish.send().await
    }

    /// Publishes many values with the producer's defaults, in as few round trips as the
    /// transport allows.
    pub async fn publish_batch<'v, T, I>(&self, values: I) -> Result<()>
    where
        T: Serialize + ?Sized + 'v,
        I: IntoIterator<Item = &'v T>,
    {
        let batch = values
            .into_iter()
            .map(|v| self.message(v).build())
            .collect::<Result<Vec<_>>>()?;
        self.send_batch(batch).await
    }

    /// Publishes prepared messages (from [`Publish::build`]) in one batch.
    pub async fn send_batch(&self, batch: Vec<Outgoing>) -> Result<()> {
        let Some(policy) = &self.retry else {
            self.ensure_declared().await?;
            return self.conn.default_channel().publish_batch(batch).await;
        };
        policy
            .run(
                || {
                    let batch = batch.clone();
                    async move {
                        self.ensure_declared().await?;
                        self.conn.default_channel().publish_batch(batch).await
                    }
                },
                |event| report("publish", event, self.on_retry.as_ref()),
            )
            .await
    }

    /// Declares what it must, then publishes `outgoing`, under the producer's policy.
    async fn send_one(&self, outgoing: Outgoing) -> Result<()> {
        let Some(policy) = &self.retry else {
            self.ensure_declared().await?;
            return self.conn.default_channel().publish(outgoing).await;
        };
        policy
            .run(
                || {
                    let outgoing = outgoing.clone();
                    async move {
                        self.ensure_declared().await?;
                        self.conn.default_channel().publish(outgoing).await
                    }
                },
                |event| report("publish", event, self.on_retry.as_ref()),
            )
            .await
    }

    /// Starts a publish of `value` with per-message options.
    pub fn message<'a, T: Serialize + ?Sized>(&'a self, value: &'a T) -> Publish<'a, T> {
        Publish {
            producer: self,
            body: Body::Value(value),
            routing_key: None,
            serializer: None,
            compression: None,
            headers: Headers::new(),
            properties: Properties {
                delivery_mode: self.delivery_mode,
                ..Properties::default()
            },
            mandatory: false,
            delay: None,
        }
    }

    async fn ensure_declared(&self) -> Result<()> {
        if self.declared.initialized() {
            return Ok(());
        }
        self.declared
            .get_or_try_init(|| async {
                if let Some(ex) = &self.exchange
                    && !ex.is_default()
                {
                    self.conn.maybe_declare_exchange(ex).await?;
                }
                for d in self.declarations.iter() {
                    match d {
                        Declaration::Exchange(e) => self.conn.maybe_declare_exchange(e).await?,
                        Declaration::Queue(q) => self.conn.maybe_declare_queue(q).await?,
                    }
                }
                Ok::<(), crate::Error>(())
            })
            .await?;
        Ok(())
    }
}

enum Body<'a, T: ?Sized> {
    Value(&'a T),
    Raw {
        body: Bytes,
        content_type: Cow<'static, str>,
        content_encoding: Cow<'static, str>,
    },
}

/// One publish being prepared; finish with [`send`](Publish::send) or [`build`](Publish::build).
pub struct Publish<'a, T: ?Sized> {
    producer: &'a Producer,
    body: Body<'a, T>,
    routing_key: Option<String>,
    serializer: Option<String>,
    compression: Option<String>,
    headers: Headers,
    properties: Properties,
    mandatory: bool,
    delay: Option<Duration>,
}

impl<T: ?Sized> std::fmt::Debug for Publish<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publish")
            .field("routing_key", &self.routing_key)
            .field("serializer", &self.serializer)
            .field("compression", &self.compression)
            .field("headers", &self.headers)
            .field("properties", &self.properties)
            .finish()
    }
}

impl<'a, T: Serialize + ?Sized> Publish<'a, T> {
    /// Routing key (else the producer's).
    pub fn routing_key(mut self, key: impl Into<String>) -> Self {
        self.routing_key = Some(key.into());
        self
    }
    /// Serializer by name (else the producer's).
    pub fn serializer(mut self, name: impl Into<String>) -> Self {
        self.serializer = Some(name.into());
        self
    }
    /// Compression by name (else the producer's).
    pub fn compression(mut self, name: impl Into<String>) -> Self {
        self.compression = Some(name.into());
        self
    }
    /// Adds a header.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }
    /// Replaces all headers.
    pub fn headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }
    /// Priority (honoured by queues with `max_priority`).
    pub fn priority(mut self, priority: u8) -> Self {
        self.properties.priority = Some(priority);
        self
    }
    /// Per-message time to live.
    pub fn expiration(mut self, ttl: Duration) -> Self {
        self.properties.expiration = Some(ttl);
        self
    }
    /// Delivery mode.
    pub fn delivery_mode(mut self, mode: DeliveryMode) -> Self {
        self.properties.delivery_mode = Some(mode);
        self
    }
    /// Correlation id.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.properties.correlation_id = Some(id.into());
        self
    }
    /// Reply-to queue.
    pub fn reply_to(mut self, queue: impl Into<String>) -> Self {
        self.properties.reply_to = Some(queue.into());
        self
    }
    /// Message id.
    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        self.properties.message_id = Some(id.into());
        self
    }
    /// All properties at once.
    pub fn properties(mut self, properties: Properties) -> Self {
        self.properties = properties;
        self
    }
    /// Fail with [`ErrorKind::Unroutable`](crate::ErrorKind::Unroutable) if no queue takes it.
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    /// Delivers the message `delay` from now instead of at once: until then no consumer sees
    /// it (nor counts it in [`queue_size`](crate::Connection::queue_size)). Where the
    /// transport routes it: at publish time on the stores (memory, Redis, SQLite, MongoDB:
    /// the queues bound then get it), when due on RabbitMQ (kombu's native delayed delivery,
    /// which Celery uses: whole seconds, rounded up, at most 2^28 - 1 s, and only to topic
    /// exchanges and queues bound to `celery_delayed_delivery`; see the AMQP transport). A
    /// zero delay publishes at once. A transport that cannot delay refuses the publish with
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported)
    /// ([`Capabilities::delayed_delivery`](crate::Capabilities::delayed_delivery) says which).
    /// The message's own [`expiration`](Self::expiration) counts from when it is due.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> kombu_core::Result<()> {
    /// use std::time::Duration;
    /// use kombu_core::{Connection, Queue};
    ///
    /// # kombu_core::transport::memory::register();
    /// tokio::time::pause(); // the memory transport follows tokio's clock
    /// let conn = Connection::open("memory://doc-delay").await?;
    /// conn.declare_queue(&Queue::new("reminders")).await?;
    /// let producer = conn.producer().routing_key("reminders");
    /// producer.message("stretch").delay(Duration::from_secs(60)).send().await?;
    /// assert_eq!(conn.queue_size("reminders").await?, 0);
    /// tokio::time::advance(Duration::from_secs(60)).await;
    /// assert_eq!(conn.queue_size("reminders").await?, 1);
    /// # Ok(()) }
    /// ```
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = (!delay.is_zero()).then_some(delay);
        self
    }

    /// Delivers the message at `eta` (a wall-clock time) instead of at once: [`delay`](Self::delay)
    /// by the time from now until then; a time already past publishes at once.
    pub fn eta(self, eta: std::time::SystemTime) -> Self {
        let delay = eta
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO);
        self.delay(delay)
    }

    /// Encodes and compresses; gives the message ready for [`Producer::send_batch`].
    pub fn build(self) -> Result<Outgoing> {
        let producer = self.producer;
        let registry = producer.conn.registry();
        let (body, content_type, content_encoding) = match self.body {
            Body::Value(value) => {
                let serializer = self.serializer.as_deref().unwrap_or(&producer.serializer);
                let encoded = registry.encode(value, serializer)?;
                (encoded.body, encoded.content_type, encoded.content_encoding)
            }
            Body::Raw {
                body,
                content_type,
                content_encoding,
            } => (body, content_type, content_encoding),
        };
        let mut headers = self.headers;
        let body = match self.compression.as_ref().or(producer.compression.as_ref()) {
            None => body,
            Some(name) => {
                let (compressed, ctype) = registry.compress(&body, name)?;
                headers.insert(COMPRESSION_HEADER.to_owned(), Value::String(ctype));
                compressed
            }
        };
        Ok(Outgoing {
            exchange: producer
                .exchange
                .as_ref()
                .map(|e| e.name.clone())
                .unwrap_or_default(),
            routing_key: self
                .routing_key
                .unwrap_or_else(|| producer.routing_key.clone()),
            message: Message {
                body,
                content_type: Some(content_type),
                content_encoding: Some(content_encoding),
                headers,
                properties: self.properties,
            },
            mandatory: self.mandatory,
            delay: self.delay,
        })
    }

    /// Publishes (after declaring the producer's entities, once per connection), under the
    /// producer's retry policy ([Retries](Producer#retries)).
    pub async fn send(self) -> Result<()> {
        let producer = self.producer;
        let outgoing = self.build()?;
        let span = tracing::trace_span!(
            "publish",
            exchange = %outgoing.exchange,
            routing_key = %outgoing.routing_key
        );
        producer.send_one(outgoing).instrument(span).await
    }
}
