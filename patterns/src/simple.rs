//! [`SimpleQueue`] and [`SimpleBuffer`]: Python kombu's `kombu.simple`, a queue you `put`
//! values into and `get` them out of, with a timeout, as from a local queue.
//!
//! The declarations are kombu's, so a Python `SimpleQueue` (or `SimpleBuffer`) of the same
//! name on the same broker is the same queue:
//!
//! | | [`SimpleQueue`] (persistent) | [`SimpleBuffer`] (ephemeral) |
//! |---|---|---|
//! | exchange | direct, named like the queue, durable | direct, named like the queue, not durable, auto-delete |
//! | queue | durable, bound with routing key = name | not durable, auto-delete, **exclusive** |
//! | messages | persistent | transient (delivery mode 1) |
//! | `get` | a [`SimpleMessage`] to ack | the value (no-ack: settled when taken) |
//!
//! **Exclusive buffers.** kombu 5 declares a `SimpleBuffer`'s queue `exclusive=True` (and
//! exclusive implies auto-delete), and so does this module. On RabbitMQ an exclusive queue
//! belongs to the connection that declared it: a peer on another connection (a Python process
//! or another Rust one) that declares the same buffer is refused with RESOURCE_LOCKED (405,
//! [`ErrorKind::Locked`]), just as between two Python processes. The virtual transports
//! (Redis, SQLite, MongoDB, memory) record the flag and do not enforce it, as Python kombu's
//! virtual transports. A buffer shared between processes on RabbitMQ is a [`SimpleQueue`]
//! with a queue of your own ([`SimpleBuilder::queue`], kombu's `queue_opts`).
//!
//! **Empty.** Where kombu raises `Empty`, [`get`](SimpleQueue::get) and
//! [`get_nowait`](SimpleQueue::get_nowait) fail with [`ErrorKind::Timeout`], marked not
//! recoverable (an empty queue is an answer, not a broker fault: a retry policy does not
//! repeat it). [`is_empty`] tells that error apart.
//!
//! **Typed.** `get::<T>()` decodes the body with the consumer's accept list
//! ([`SimpleBuilder::accept`]). A message that is not accepted or does not decode into `T` is
//! not lost and does not block the queue: it is dead-lettered (to `<queue>.dlq`, as core's
//! consumers do, see [`kombu_core::dead_letter`]) and `get` fails with
//! [`ErrorKind::DeadLettered`], whose error says where it went; the next `get` takes the next
//! message.
//!
//! **Prefetch.** `get` starts a consumer on first use (as kombu does) with a prefetch of 1
//! (kombu sets none), so an idle `SimpleQueue` holds at most one message back from other
//! consumers of the queue; a message it holds goes back to the queue on
//! [`close`](SimpleQueue::close) or drop.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kombu_core::Result<()> {
//! use std::time::Duration;
//! use kombu_patterns::simple::{SimpleQueue, is_empty};
//!
//! # kombu_core::transport::memory::register();
//! let conn = kombu_core::Connection::open("memory://doc-simple").await?;
//! let mut queue = SimpleQueue::new(&conn, "greetings").await?;
//! queue.put(&"hello").await?;
//! queue.message(&"urgent").header("x-source", "docs").priority(9).send().await?;
//! assert_eq!(queue.qsize().await?, 2);
//!
//! let message = queue.get::<String>(Duration::from_secs(1)).await?;
//! assert_eq!(*message, "hello");
//! message.ack().await?;
//!
//! let urgent = queue.get_nowait::<String>().await?;
//! assert_eq!(urgent.delivery().headers().get("x-source").and_then(|v| v.as_str()), Some("docs"));
//! urgent.ack().await?;
//!
//! let empty = queue.get::<String>(Duration::from_millis(10)).await.unwrap_err();
//! assert!(is_empty(&empty));
//! queue.close().await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use kombu_core::transport::Decoder;
use kombu_core::{
    ConsumeError, Consumer, Delivery, DeliveryMode, Error, ErrorKind, Exchange, Handled, Producer,
    Publish, Queue, Result, SettleError,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::CoreConnection;

/// Whether `error` is the one [`SimpleQueue::get`] and friends return for an empty queue
/// (kombu's `Empty`): [`ErrorKind::Timeout`], not recoverable.
pub fn is_empty(error: &Error) -> bool {
    error.kind() == ErrorKind::Timeout && !error.is_recoverable()
}

fn empty(queue: &str, waited: Option<Duration>) -> Error {
    let message = match waited {
        Some(timeout) => format!("queue {queue:?} is empty: no message within {timeout:?}"),
        None => format!("queue {queue:?} is empty: no message ready"),
    };
    Error::new(ErrorKind::Timeout, message).set_recoverable(false)
}

/// Options of a [`SimpleQueue`] or [`SimpleBuffer`], from [`SimpleQueue::builder`] or
/// [`SimpleBuffer::builder`]; kombu's `SimpleQueue(channel, name, no_ack, queue_opts,
/// queue_args, exchange_opts, serializer, compression, accept)`.
#[derive(Debug, Clone)]
pub struct SimpleBuilder {
    conn: CoreConnection,
    queue: Queue,
    delivery_mode: DeliveryMode,
    no_ack: bool,
    serializer: Option<String>,
    compression: Option<String>,
    accept: Option<Vec<String>>,
    prefetch: u16,
}

impl SimpleBuilder {
    fn new(conn: &CoreConnection, name: &str, buffer: bool) -> Self {
        let exchange = Exchange::direct(name).durable(!buffer).auto_delete(buffer);
        let queue = Queue::new(name)
            .exchange(exchange)
            .routing_key(name)
            .durable(!buffer)
            .auto_delete(buffer)
            .exclusive(buffer);
        SimpleBuilder {
            conn: conn.clone(),
            queue,
            delivery_mode: if buffer {
                DeliveryMode::Transient
            } else {
                DeliveryMode::Persistent
            },
            no_ack: buffer,
            serializer: None,
            compression: None,
            accept: None,
            prefetch: 1,
        }
    }

    /// Uses this queue as it is instead of kombu's declaration (kombu: passing an
    /// `entity.Queue`): values are published to its exchange with its routing key (to the
    /// default exchange with its name when it has no exchange).
    pub fn queue(mut self, queue: Queue) -> Self {
        self.queue = queue;
        self
    }

    /// Serializer of [`put`](SimpleQueue::put) by name (default `json`).
    pub fn serializer(mut self, name: impl Into<String>) -> Self {
        self.serializer = Some(name.into());
        self
    }

    /// Compression of [`put`](SimpleQueue::put) by name or alias (default none).
    pub fn compression(mut self, name: impl Into<String>) -> Self {
        self.compression = Some(name.into());
        self
    }

    /// Serializers `get` accepts, by name or content type (default: the registry's
    /// default-enabled ones).
    pub fn accept<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.accept = Some(names.into_iter().map(|s| s.as_ref().to_owned()).collect());
        self
    }

    /// Settles messages as they are taken (default: `false` for a [`SimpleQueue`]; a
    /// [`SimpleBuffer`] is always no-ack).
    pub fn no_ack(mut self, no_ack: bool) -> Self {
        self.no_ack = no_ack;
        self
    }

    /// How many messages the consumer behind `get` may hold unsettled (default 1).
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// Declares the queue with its exchange and binding (as kombu's constructor does) and
    /// makes the queue.
    pub async fn build(self) -> Result<SimpleQueue> {
        Ok(SimpleQueue {
            base: Base::open(self).await?,
        })
    }

    /// As [`build`](Self::build), as a no-ack [`SimpleBuffer`].
    pub async fn build_buffer(self) -> Result<SimpleBuffer> {
        Ok(SimpleBuffer {
            base: Base::open(self.no_ack(true)).await?,
        })
    }
}

/// What a SimpleQueue and a SimpleBuffer share: kombu's `SimpleBase`.
struct Base {
    conn: CoreConnection,
    queue: Queue,
    producer: Producer,
    consumer: Option<Consumer>,
    decoder: Arc<Decoder>,
    no_ack: bool,
    accept: Option<Vec<String>>,
    prefetch: u16,
}

impl fmt::Debug for Base {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simple")
            .field("queue", &self.queue.name)
            .field("no_ack", &self.no_ack)
            .field("consuming", &self.consumer.is_some())
            .finish()
    }
}

impl Base {
    async fn open(options: SimpleBuilder) -> Result<Base> {
        let SimpleBuilder {
            conn,
            queue,
            delivery_mode,
            no_ack,
            serializer,
            compression,
            accept,
            prefetch,
        } = options;
        // Always, as kombu's Consumer declares on construction: a buffer's auto-delete queue
        // and exchange may have gone since this connection last declared them.
        conn.declare_queue(&queue).await?;
        let mut producer = conn.producer().delivery_mode(delivery_mode);
        producer = match &queue.exchange {
            Some(exchange) if !exchange.is_default() => producer
                .exchange(exchange.clone())
                .routing_key(queue.routing_key.clone()),
            _ => producer.routing_key(queue.name.clone()),
        };
        if let Some(serializer) = serializer {
            producer = producer.serializer(serializer);
        }
        if let Some(compression) = compression {
            producer = producer.compression(compression);
        }
        let mut decoder = Decoder {
            registry: conn.registry().clone(),
            ..Decoder::default()
        };
        if let Some(names) = &accept {
            decoder.accept = Some(decoder.registry.accept(names)?);
        }
        Ok(Base {
            conn,
            queue,
            producer,
            consumer: None,
            decoder: Arc::new(decoder),
            no_ack,
            accept,
            prefetch,
        })
    }

    /// The consumer behind `get`, started on first use.
    async fn consumer(&mut self) -> Result<&mut Consumer> {
        let consumer = match self.consumer.take() {
            Some(consumer) => consumer,
            None => {
                let mut builder = self
                    .conn
                    .consumer([self.queue.clone()])
                    .no_ack(self.no_ack)
                    .prefetch(self.prefetch);
                if let Some(names) = &self.accept {
                    builder = builder.accept(names);
                }
                builder.build().await?
            }
        };
        Ok(self.consumer.insert(consumer))
    }

    /// The next delivery within `timeout`.
    async fn next(&mut self, timeout: Duration) -> Result<Delivery> {
        let name = self.queue.name.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        let consumer = self.consumer().await?;
        let item = match tokio::time::timeout_at(deadline, consumer.next()).await {
            Err(_) => return Err(empty(&name, Some(timeout))),
            Ok(None) => return Err(ended(&name)),
            Ok(Some(item)) => item,
        };
        match item {
            Ok(delivery) => Ok(delivery),
            Err(refused) => Err(self.refused(refused).await),
        }
    }

    /// A delivery ready now: one the consumer holds already, else one taken from the queue
    /// (kombu's `basic_get`).
    async fn next_nowait(&mut self) -> Result<Delivery> {
        if let Some(consumer) = &mut self.consumer
            && let Some(item) = consumer.next().now_or_never()
        {
            return match item {
                None => Err(ended(&self.queue.name)),
                Some(Ok(delivery)) => Ok(delivery),
                Some(Err(refused)) => Err(self.refused(refused).await),
            };
        }
        let got = self
            .conn
            .default_channel()
            .get(&self.queue.name, self.no_ack)
            .await?;
        let Some(delivery) = got else {
            return Err(empty(&self.queue.name, None));
        };
        let delivery = delivery.with_decoder(self.decoder.clone());
        match delivery.check_accept() {
            Ok(()) => Ok(delivery),
            Err(error) => {
                let refused = ConsumeError {
                    error,
                    delivery: Some(delivery),
                };
                Err(self.refused(refused).await)
            }
        }
    }

    /// Moves a refused delivery aside (the consumer's policy: dead-letter) and says where.
    async fn refused(&mut self, refused: ConsumeError) -> Error {
        let consumer = match self.consumer().await {
            Ok(consumer) => consumer,
            Err(error) => return error,
        };
        match consumer.handle(refused).await {
            Ok(Handled::DeadLettered(record)) => Error::from_dead_lettered(record),
            Ok(other) => Error::new(
                ErrorKind::Codec,
                format!(
                    "a message of queue {:?} was refused: {other:?}",
                    self.queue.name
                ),
            ),
            Err(error) => error,
        }
    }

    /// Decodes `delivery` into `T`; one that does not decode is dead-lettered.
    async fn decode<T: DeserializeOwned>(&mut self, delivery: Delivery) -> Result<(T, Delivery)> {
        match delivery.decode::<T>() {
            Ok(value) => Ok((value, delivery)),
            Err(error) => Err(self
                .refused(ConsumeError {
                    error,
                    delivery: Some(delivery),
                })
                .await),
        }
    }

    async fn close(self) -> Result<()> {
        match self.consumer {
            Some(consumer) => consumer.close().await,
            None => Ok(()),
        }
    }
}

fn ended(queue: &str) -> Error {
    Error::new(
        ErrorKind::Closed,
        format!("the consumer of queue {queue:?} ended"),
    )
}

/// A persistent queue to `put` values into and `get` them out of: Python kombu's
/// `kombu.simple.SimpleQueue`, with the same declarations (see the [module](self) docs).
#[derive(Debug)]
pub struct SimpleQueue {
    base: Base,
}

impl SimpleQueue {
    /// kombu's `SimpleQueue(channel, name)`: declares the direct exchange `name`, the durable
    /// queue `name` bound to it with routing key `name`.
    pub async fn new(conn: &impl AsRef<CoreConnection>, name: &str) -> Result<SimpleQueue> {
        Self::builder(conn, name).build().await
    }

    /// A queue with options (serializer, compression, accept list, a queue of your own).
    pub fn builder(conn: &impl AsRef<CoreConnection>, name: &str) -> SimpleBuilder {
        SimpleBuilder::new(conn.as_ref(), name, false)
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.base.queue.name
    }

    /// Publishes `value` (persistent, with the queue's serializer and compression).
    pub async fn put<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        self.base.producer.publish(value).await
    }

    /// Starts a publish of `value` with options of its own: headers, priority, serializer,
    /// compression, expiration; finish it with [`Publish::send`].
    pub fn message<'a, T: Serialize + ?Sized>(&'a self, value: &'a T) -> Publish<'a, T> {
        self.base.producer.message(value)
    }

    /// The next message, decoded into `T`, waiting up to `timeout` for one; settle it
    /// ([`SimpleMessage::ack`]). An empty queue fails with [`ErrorKind::Timeout`] ([`is_empty`]).
    pub async fn get<T: DeserializeOwned>(
        &mut self,
        timeout: Duration,
    ) -> Result<SimpleMessage<T>> {
        let delivery = self.base.next(timeout).await?;
        let (value, delivery) = self.base.decode(delivery).await?;
        Ok(SimpleMessage { value, delivery })
    }

    /// A message ready now, or an [`ErrorKind::Timeout`] error ([`is_empty`]) at once.
    pub async fn get_nowait<T: DeserializeOwned>(&mut self) -> Result<SimpleMessage<T>> {
        let delivery = self.base.next_nowait().await?;
        let (value, delivery) = self.base.decode(delivery).await?;
        Ok(SimpleMessage { value, delivery })
    }

    /// Ready messages in the queue (not those taken and unsettled).
    pub async fn qsize(&self) -> Result<u64> {
        self.base.conn.queue_size(&self.base.queue.name).await
    }

    /// Removes every ready message; returns how many (kombu's `clear`).
    pub async fn clear(&self) -> Result<u64> {
        self.base.conn.purge(&self.base.queue.name).await
    }

    /// Stops consuming: a message taken and not handed out goes back to the queue. The queue
    /// stays.
    pub async fn close(self) -> Result<()> {
        self.base.close().await
    }
}

/// An ephemeral, no-ack queue: Python kombu's `kombu.simple.SimpleBuffer` (see the
/// [module](self) docs for its declarations, and for what `exclusive` means on RabbitMQ).
/// `get` returns the value itself: the message was settled when it was taken.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> kombu_core::Result<()> {
/// use std::time::Duration;
/// use kombu_patterns::simple::SimpleBuffer;
///
/// # kombu_core::transport::memory::register();
/// let conn = kombu_core::Connection::open("memory://doc-buffer").await?;
/// let mut buffer = SimpleBuffer::new(&conn, "ticks").await?;
/// buffer.put(&1u32).await?;
/// assert_eq!(buffer.get::<u32>(Duration::from_secs(1)).await?, 1);
/// buffer.close().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct SimpleBuffer {
    base: Base,
}

impl SimpleBuffer {
    /// kombu's `SimpleBuffer(channel, name)`: declares the non-durable, auto-delete direct
    /// exchange `name` and the non-durable, auto-delete, exclusive queue `name` bound to it.
    pub async fn new(conn: &impl AsRef<CoreConnection>, name: &str) -> Result<SimpleBuffer> {
        Self::builder(conn, name).build_buffer().await
    }

    /// A buffer with options; finish with [`SimpleBuilder::build_buffer`].
    pub fn builder(conn: &impl AsRef<CoreConnection>, name: &str) -> SimpleBuilder {
        SimpleBuilder::new(conn.as_ref(), name, true)
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.base.queue.name
    }

    /// Publishes `value` (transient, with the buffer's serializer and compression).
    pub async fn put<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        self.base.producer.publish(value).await
    }

    /// Starts a publish of `value` with options of its own; finish it with [`Publish::send`].
    pub fn message<'a, T: Serialize + ?Sized>(&'a self, value: &'a T) -> Publish<'a, T> {
        self.base.producer.message(value)
    }

    /// The next value, waiting up to `timeout` for one; an empty buffer fails with
    /// [`ErrorKind::Timeout`] ([`is_empty`]).
    pub async fn get<T: DeserializeOwned>(&mut self, timeout: Duration) -> Result<T> {
        let delivery = self.base.next(timeout).await?;
        Ok(self.base.decode(delivery).await?.0)
    }

    /// A value ready now, or an [`ErrorKind::Timeout`] error ([`is_empty`]) at once.
    pub async fn get_nowait<T: DeserializeOwned>(&mut self) -> Result<T> {
        let delivery = self.base.next_nowait().await?;
        Ok(self.base.decode(delivery).await?.0)
    }

    /// Ready messages in the buffer.
    pub async fn qsize(&self) -> Result<u64> {
        self.base.conn.queue_size(&self.base.queue.name).await
    }

    /// Removes every ready message; returns how many.
    pub async fn clear(&self) -> Result<u64> {
        self.base.conn.purge(&self.base.queue.name).await
    }

    /// Stops consuming.
    pub async fn close(self) -> Result<()> {
        self.base.close().await
    }
}

/// A value taken from a [`SimpleQueue`] with its delivery, to settle exactly once
/// ([`ack`](Self::ack), [`reject`](Self::reject), [`requeue`](Self::requeue)); dropped
/// unsettled, the message goes back to its queue. Derefs to the value.
#[derive(Debug)]
pub struct SimpleMessage<T> {
    value: T,
    delivery: Delivery,
}

impl<T> SimpleMessage<T> {
    /// The decoded value.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// The delivery: headers, properties, where it came from.
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// The value and the delivery, to settle later.
    pub fn into_parts(self) -> (T, Delivery) {
        (self.value, self.delivery)
    }

    /// Acknowledges: the message is done.
    pub async fn ack(self) -> Result<(), SettleError> {
        self.delivery.ack().await
    }

    /// Rejects: dropped, or dead-lettered if the queue has a dead-letter exchange.
    pub async fn reject(self) -> Result<(), SettleError> {
        self.delivery.reject().await
    }

    /// Puts it back in the queue, marked redelivered.
    pub async fn requeue(self) -> Result<(), SettleError> {
        self.delivery.requeue().await
    }
}

impl<T> Deref for SimpleMessage<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}
