//! [`Consumer`]: deliveries from one or more queues, as a stream or through a handler.
//!
//! A consumer has a channel of its own. Dropping it (or [`Consumer::close`]) returns every
//! delivery it has not settled to its queue, marked redelivered; so does dropping a single
//! [`Delivery`] without settling it.
//!
//! Before a delivery is handed out, its content type is checked against the accept list. A
//! message that is not accepted is not lost and never panics anything: the stream yields a
//! [`ConsumeError`] that carries the delivery; [`Consumer::handle`] settles it with the
//! consumer's [`ErrorAction`] policy (default: dead-letter it, see [`crate::dead_letter`]), or
//! it can be requeued or inspected by hand. The handler style ([`Consumer::consume`],
//! [`Consumer::consume_as`]) applies the policy by itself, to bodies that do not decode too.
//! An entry a virtual transport could not read at all was already moved to `<queue>.dlq`: it
//! arrives as an [`ErrorKind::DeadLettered`](crate::ErrorKind::DeadLettered) item, and the
//! consumer goes on.
//!
//! A [`StopHandle`] ([`Consumer::stop_handle`]) stops a consumer from another task: its stream
//! ends, its handler loop lets the handler in flight finish within the
//! [`shutdown_timeout`](ConsumerBuilder::shutdown_timeout) and closes it, and everything it
//! took and did not settle goes back to its queue at once.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kombu_core::Result<()> {
//! use futures::StreamExt;
//! use kombu_core::{Connection, Queue};
//!
//! # kombu_core::transport::memory::register();
//! let conn = Connection::open("memory://doc-consumer").await?;
//! let mut consumer = conn.consumer([Queue::new("jobs")]).prefetch(10).accept(["json"]).build().await?;
//! conn.producer().routing_key("jobs").publish(&vec![1, 2, 3]).await?;
//!
//! let Some(delivery) = consumer.next().await else { return Ok(()) };
//! let delivery = delivery?;
//! let numbers: Vec<u32> = delivery.decode()?;
//! assert_eq!(numbers, [1, 2, 3]);
//! delivery.ack().await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::channel::{Channel, ConsumeOptions, Decoder, Delivery, DeliveryStream};
use crate::connection::Connection;
use crate::entity::Queue;
use crate::error::{Error, Result};
use crate::metrics;
use crate::telemetry::{self, Consuming};

mod heartbeat;
mod policy;
mod shutdown;
use heartbeat::Heartbeat;
pub use policy::Handled;
pub use shutdown::{DEFAULT_SHUTDOWN_TIMEOUT, StopHandle, shutdown_signal};
use shutdown::{Ran, StopSignal};

/// What to do with a delivery that could not be decoded or is not accepted (a poison
/// message). Nothing is ever dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorAction {
    /// Move it aside (the default): to its queue's dead-letter exchange where the queue was
    /// declared with one, else to the queue `<queue>.dlq` (declared on first use), with the
    /// [`dead_letter`](crate::dead_letter) headers. See [`Consumer::dead_letter`].
    #[default]
    DeadLetter,
    /// Put it back at the tail of its queue for another try, counting the tries in the
    /// [`REDELIVERIES`](crate::dead_letter::REDELIVERIES) header; past the consumer's
    /// [`max_redeliveries`](ConsumerBuilder::max_redeliveries) it is dead-lettered.
    Requeue,
    /// Stop consuming and return the error; the message stays in its queue.
    Stop,
}

/// How many times [`ErrorAction::Requeue`] puts a message back before dead-lettering it.
pub const DEFAULT_MAX_REDELIVERIES: u32 = 3;

type ErrorHook = Arc<dyn Fn(&Error, &Delivery) -> ErrorAction + Send + Sync>;

/// Builds a [`Consumer`]; from `Connection::consumer`.
pub struct ConsumerBuilder {
    conn: Connection,
    queues: Vec<Queue>,
    options: ConsumeOptions,
    decoder: Decoder,
    declare: bool,
    on_error: Option<ErrorHook>,
    action: ErrorAction,
    max_redeliveries: u32,
    accept_names: Option<Vec<String>>,
    heartbeat: Heartbeat,
    shutdown_timeout: Duration,
}

impl fmt::Debug for ConsumerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerBuilder")
            .field("queues", &self.queues)
            .field("options", &self.options)
            .field("declare", &self.declare)
            .finish()
    }
}

impl ConsumerBuilder {
    pub(crate) fn new(conn: Connection, queues: Vec<Queue>) -> Self {
        let decoder = Decoder {
            registry: conn.registry().clone(),
            ..Decoder::default()
        };
        let options = ConsumeOptions {
            on_retry: conn.on_retry().cloned(),
            ..ConsumeOptions::default()
        };
        ConsumerBuilder {
            conn,
            queues,
            options,
            decoder,
            declare: true,
            on_error: None,
            action: ErrorAction::default(),
            max_redeliveries: DEFAULT_MAX_REDELIVERIES,
            accept_names: None,
            heartbeat: Heartbeat::Auto,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }

    /// How long a stopped consumer lets the handler in flight finish (default
    /// [`DEFAULT_SHUTDOWN_TIMEOUT`]); past it the handler is dropped and its delivery goes back
    /// to its queue. See [`StopHandle`].
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Most unsettled deliveries held at once (default 100; 0 = unbounded).
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.options.prefetch = prefetch;
        self
    }

    /// Deliveries are settled as they are taken (at-most-once).
    pub fn no_ack(mut self, no_ack: bool) -> Self {
        self.options.no_ack = no_ack;
        self
    }

    /// Accepted serializers, by name (`json`) or content type (`application/json`).
    pub fn accept<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.accept_names = Some(names.into_iter().map(|s| s.as_ref().to_owned()).collect());
        self
    }

    /// Visibility timeout of this consumer's deliveries (where the transport has one).
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.options.visibility_timeout = Some(timeout);
        self
    }

    /// How often [`Consumer::consume`] and [`Consumer::consume_as`] extend the lease of the
    /// delivery whose handler is running ([`Delivery::extend_lease`]), so a slow handler's
    /// message is not restored to its queue and handed to another consumer while it still
    /// runs. Default: a third of the delivery's visibility timeout, on transports with leases
    /// (Redis, SQLite, memory with a timeout); nothing on AMQP, whose broker holds a delivery
    /// until its channel closes. `Duration::ZERO` turns it off. Extensions stop once the
    /// handler settles the delivery. The stream style ([`Consumer`] as a `Stream`) extends
    /// nothing by itself: call [`Delivery::extend_lease`].
    pub fn lease_heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = Heartbeat::every(interval);
        self
    }

    /// How the consumer waits for its broker after a lost connection before it looks again
    /// (default [`RetryPolicy::forever`](crate::RetryPolicy::forever): as long as it takes);
    /// once the policy gives up, the stream hands out the error. See
    /// [`ConsumeOptions::retry`](crate::transport::ConsumeOptions#structfield.retry).
    pub fn retry(mut self, policy: crate::RetryPolicy) -> Self {
        self.options.retry = policy;
        self
    }

    /// Calls `callback` before each of those retries (for logs and metrics). Default: the
    /// connection's own callback
    /// ([`ConnectionBuilder::on_retry`](crate::ConnectionBuilder::on_retry)), if it has one.
    pub fn on_retry<F>(mut self, callback: F) -> Self
    where
        F: Fn(&crate::RetryEvent<'_>) + Send + Sync + 'static,
    {
        self.options.on_retry = Some(crate::retry::OnRetry::new(callback));
        self
    }

    /// Bound on a decompressed body (default
    /// [`DEFAULT_MAX_DECOMPRESSED_SIZE`](kombu_serializers::DEFAULT_MAX_DECOMPRESSED_SIZE)).
    pub fn max_decompressed_size(mut self, bytes: usize) -> Self {
        self.decoder.max_decompressed_size = bytes;
        self
    }

    /// Consumer tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.options.consumer_tag = tag.into();
        self
    }

    /// Whether to declare the queues first (default true).
    pub fn declare(mut self, declare: bool) -> Self {
        self.declare = declare;
        self
    }

    /// What to do with each delivery that is not accepted or cannot be decoded (default:
    /// [`ErrorAction::DeadLetter`]). An [`on_error`](Self::on_error) hook decides instead.
    pub fn error_action(mut self, action: ErrorAction) -> Self {
        self.action = action;
        self
    }

    /// How many times [`ErrorAction::Requeue`] puts a message back before it is dead-lettered
    /// (default [`DEFAULT_MAX_REDELIVERIES`]).
    pub fn max_redeliveries(mut self, max: u32) -> Self {
        self.max_redeliveries = max;
        self
    }

    /// Called for each delivery that is not accepted or cannot be decoded (in
    /// [`Consumer::consume_as`]); returns what to do with it. Default: the
    /// [`error_action`](Self::error_action).
    pub fn on_error<F>(mut self, hook: F) -> Self
    where
        F: Fn(&Error, &Delivery) -> ErrorAction + Send + Sync + 'static,
    {
        self.on_error = Some(Arc::new(hook));
        self
    }

    /// Declares the queues (unless turned off), opens a channel and starts consuming.
    pub async fn build(mut self) -> Result<Consumer> {
        if let Some(names) = &self.accept_names {
            self.decoder.accept = Some(self.decoder.registry.accept(names)?);
        }
        if self.declare {
            for q in &self.queues {
                self.conn.maybe_declare_queue(q).await?;
            }
        }
        let channel = self.conn.channel().await?;
        let names: Vec<String> = self.queues.iter().map(|q| q.name.clone()).collect();
        let stream = channel.consume(&names, &self.options).await?;
        Ok(Consumer {
            system: self.conn.messaging_system(),
            handling: false,
            conn: self.conn,
            channel,
            stream: SyncStream::new(stream),
            decoder: Arc::new(self.decoder),
            queues: names,
            declared: self.queues,
            on_error: self.on_error,
            action: self.action,
            max_redeliveries: self.max_redeliveries,
            heartbeat: self.heartbeat,
            stop: Arc::new(StopSignal::default()),
            shutdown_timeout: self.shutdown_timeout,
        })
    }
}

/// A delivery that could not be handed out as good, with the delivery when there is one. Its
/// `Display` says which delivery; why is its [`source`](std::error::Error::source), the
/// [`error`](ConsumeError::error).
#[derive(Debug)]
pub struct ConsumeError {
    /// What went wrong.
    pub error: Error,
    /// The delivery that is not accepted (none for broker errors).
    pub delivery: Option<Delivery>,
}

impl fmt::Display for ConsumeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.delivery {
            Some(d) => write!(
                f,
                "message {} from queue {:?} refused",
                d.delivery_tag(),
                d.queue(),
            ),
            None => f.write_str("consuming failed"),
        }
    }
}

impl std::error::Error for ConsumeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<ConsumeError> for Error {
    fn from(e: ConsumeError) -> Self {
        e.error
    }
}

/// Deliveries from one or more queues, as a [`Stream`](futures::Stream) or through a handler
/// ([`Consumer::consume_as`]).
///
/// Made by `Connection::consumer` and [`ConsumerBuilder::build`]. A consumer has a channel of
/// its own. Dropping it (or [`Consumer::close`]) returns every delivery it has not settled to
/// its queue, marked redelivered; so does dropping a single [`Delivery`] without settling it.
///
/// Before a delivery is handed out, its content type is checked against the accept list. A
/// message that is not accepted is not lost and never panics anything: the stream yields a
/// [`ConsumeError`] that carries the delivery, for [`Consumer::handle`] (the consumer's
/// [`ErrorAction`] policy, default: dead-letter) or to be requeued or inspected by hand. The
/// handler style applies the policy by itself.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> kombu_core::Result<()> {
/// use futures::StreamExt;
/// use kombu_core::{Connection, Queue};
///
/// # kombu_core::transport::memory::register();
/// let conn = Connection::open("memory://doc-consumer-type").await?;
/// let mut consumer = conn
///     .consumer([Queue::new("emails"), Queue::new("sms")]) // declared unless .declare(false)
///     .prefetch(20) // at most 20 unsettled deliveries at once
///     .accept(["json"])
///     .build()
///     .await?;
/// conn.producer().routing_key("sms").publish("call me").await?;
///
/// while let Some(delivery) = consumer.next().await {
///     match delivery {
///         Ok(delivery) => {
///             assert_eq!(delivery.queue(), "sms");
///             let text: String = delivery.decode()?;
///             assert_eq!(text, "call me");
///             delivery.ack().await?;
///             break;
///         }
///         // Refused (not in the accept list), or already moved aside by the transport: the
///         // policy settles it (dead-lettered by default) and the loop goes on.
///         Err(refused) => {
///             consumer.handle(refused).await?;
///         }
///     }
/// }
/// consumer.close().await?;
/// # Ok(()) }
/// ```
pub struct Consumer {
    conn: Connection,
    channel: Arc<dyn Channel>,
    stream: SyncStream,
    decoder: Arc<Decoder>,
    queues: Vec<String>,
    /// The queues as given (their dead-letter exchanges route poison messages).
    declared: Vec<Queue>,
    on_error: Option<ErrorHook>,
    action: ErrorAction,
    max_redeliveries: u32,
    heartbeat: Heartbeat,
    /// Set by a [`StopHandle`]: the stream ends, the handler loop winds down.
    stop: Arc<StopSignal>,
    /// How long a stopped handler loop lets its handler finish.
    shutdown_timeout: Duration,
    /// The connection's `messaging.system`, for spans and metrics.
    system: &'static str,
    /// Set by the handler loops: each delivery gets a `process` span around its handler
    /// instead of the stream's `receive` span.
    handling: bool,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("queues", &self.queues)
            .field("channel", &self.channel)
            .finish()
    }
}

impl Consumer {
    /// The queues consumed.
    pub fn queues(&self) -> &[String] {
        &self.queues
    }

    /// The consumer's channel.
    pub fn channel(&self) -> &Arc<dyn Channel> {
        &self.channel
    }

    /// Whether this consumer's connection is up, reconnecting or lost for good (see
    /// [`LinkState`](crate::LinkState)).
    pub fn link(&self) -> crate::LinkWatch {
        self.conn.link()
    }

    /// Closes the channel: pending acks are written, and every delivery taken and not settled
    /// (prefetched, or handed out and still held) returns to its queue at once, marked
    /// redelivered.
    pub async fn close(self) -> Result<()> {
        self.close_gracefully().await
    }

    fn action_for(&self, error: &Error, delivery: &Delivery) -> ErrorAction {
        match &self.on_error {
            Some(hook) => hook(error, delivery),
            None => self.action,
        }
    }

    /// Runs `handler` for each delivery until it returns an error (which is returned), the
    /// stream ends, or the consumer is stopped ([`StopHandle`]: the handler in flight gets the
    /// shutdown timeout to finish, then the consumer is closed and `Ok(())` returned). The
    /// handler settles each delivery. Refused deliveries go to the error policy. While a handler
    /// runs, the lease of its delivery is extended ([`ConsumerBuilder::lease_heartbeat`]).
    pub async fn consume<F, Fut>(mut self, mut handler: F) -> Result<()>
    where
        F: FnMut(Delivery) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        self.handling = true;
        while let Some(item) = self.next().await {
            match item {
                Ok(delivery) => {
                    let (span, timing) = self.observe(&delivery);
                    let keeper = heartbeat::keeper(&delivery, self.heartbeat);
                    let handled = heartbeat::run(keeper, handler(delivery)).instrument(span);
                    if self.run_timed(handled, timing).await? == Ran::Abandoned {
                        break;
                    }
                }
                Err(refused) => {
                    self.handle(refused).await?;
                }
            }
        }
        if self.is_stopped() {
            return self.close_gracefully().await;
        }
        Ok(())
    }

    /// Like [`Consumer::consume`] (a stop included), decoding each body into `T` first; bodies
    /// that do not decode go to the error policy instead of the handler.
    pub async fn consume_as<T, F, Fut>(mut self, mut handler: F) -> Result<()>
    where
        T: DeserializeOwned,
        F: FnMut(T, Delivery) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        self.handling = true;
        while let Some(item) = self.next().await {
            let (error, delivery) = match item {
                Ok(delivery) => match delivery.decode::<T>() {
                    Ok(value) => {
                        let (span, timing) = self.observe(&delivery);
                        let keeper = heartbeat::keeper(&delivery, self.heartbeat);
                        let handled =
                            heartbeat::run(keeper, handler(value, delivery)).instrument(span);
                        if self.run_timed(handled, timing).await? == Ran::Abandoned {
                            break;
                        }
                        continue;
                    }
                    Err(error) => (error, delivery),
                },
                Err(refused) => {
                    self.handle(refused).await?;
                    continue;
                }
            };
            self.handle(ConsumeError {
                error,
                delivery: Some(delivery),
            })
            .await?;
        }
        if self.is_stopped() {
            return self.close_gracefully().await;
        }
        Ok(())
    }

    /// The span to process `delivery` in, from a stream's own loop: `process <queue>`, with
    /// the OpenTelemetry messaging attributes, child of the producer's span when the message
    /// carries its trace context (feature `opentelemetry`). The handler loops
    /// ([`Consumer::consume`], [`Consumer::consume_as`]) run each handler in one by themselves.
    /// See [`telemetry`](crate::telemetry).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> kombu_core::Result<()> {
    /// use futures::StreamExt;
    /// use kombu_core::{Connection, Queue};
    /// use tracing::Instrument;
    ///
    /// # kombu_core::transport::memory::register();
    /// let conn = Connection::open("memory://doc-process-span").await?;
    /// let mut consumer = conn.consumer([Queue::new("jobs")]).build().await?;
    /// conn.producer().routing_key("jobs").publish("work").await?;
    /// if let Some(Ok(delivery)) = consumer.next().await {
    ///     let span = consumer.process_span(&delivery);
    ///     async { delivery.ack().await }.instrument(span).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn process_span(&self, delivery: &Delivery) -> tracing::Span {
        telemetry::consumer_span(self.system, delivery, Consuming::Process)
    }

    /// Says that a handler loop of the caller's runs each delivery of this consumer in its
    /// [`process_span`](Consumer::process_span) (as kombu-patterns' worker does): the stream
    /// then records no `receive` span per delivery, as under [`Consumer::consume`].
    pub fn processed_in_spans(&mut self) {
        self.handling = true;
    }

    /// The `process` span of a delivery the handler loop is about to run a handler on, and
    /// its queue and start time when handler durations are recorded.
    fn observe(&self, delivery: &Delivery) -> (tracing::Span, Option<(String, Instant)>) {
        let span = self.process_span(delivery);
        let timing = metrics::is_recording().then(|| (delivery.queue().to_owned(), Instant::now()));
        (span, timing)
    }

    /// [`run_handler`](Consumer::run_handler), recording how long it ran when `timing` says
    /// when it started.
    async fn run_timed<Fut>(&self, handler: Fut, timing: Option<(String, Instant)>) -> Result<Ran>
    where
        Fut: Future<Output = Result<()>>,
    {
        let ran = self.run_handler(handler).await;
        if let Some((queue, started)) = timing {
            let ok = matches!(ran, Ok(Ran::Finished));
            metrics::record_handler(&queue, started.elapsed(), ok);
        }
        ran
    }

    // The error carries the refused delivery by design (it is the stream's item type), so it is
    // as large as a delivery.
    #[allow(clippy::result_large_err)]
    fn prepare(&self, item: Result<Delivery>) -> Result<Delivery, ConsumeError> {
        match item {
            Err(error) => {
                if let Some(record) = error.dead_lettered() {
                    metrics::record_dead_lettered(self.system, &record.queue);
                }
                Err(ConsumeError {
                    error,
                    delivery: None,
                })
            }
            Ok(mut delivery) => {
                delivery.set_decoder(self.decoder.clone());
                metrics::record_consumed(self.system, delivery.queue());
                if !self.handling {
                    // An instant: the delivery is handed out now. Dropped here, it ends here.
                    drop(telemetry::consumer_span(
                        self.system,
                        &delivery,
                        Consuming::Receive,
                    ));
                }
                match delivery.check_accept() {
                    Ok(()) => Ok(delivery),
                    Err(error) => Err(ConsumeError {
                        error,
                        delivery: Some(delivery),
                    }),
                }
            }
        }
    }
}

impl Stream for Consumer {
    type Item = Result<Delivery, ConsumeError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.stop.poll_stopped(cx) {
            return Poll::Ready(None);
        }
        match this.stream.get_mut().poll_next_unpin(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some(this.prepare(item))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The delivery stream, made `Sync` so that `&Consumer` may be held across an await by a task
/// that moves between threads (the handler loops are then `Send`, and can be spawned). Only
/// ever reached through `&mut`: the mutex is never locked.
struct SyncStream(std::sync::Mutex<DeliveryStream>);

impl SyncStream {
    fn new(stream: DeliveryStream) -> Self {
        SyncStream(std::sync::Mutex::new(stream))
    }

    fn get_mut(&mut self) -> &mut DeliveryStream {
        // Never locked, so never poisoned; a poisoned one would hold a usable stream anyway.
        self.0
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
