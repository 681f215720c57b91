//! [`AmqpChannel`]: core's native [`Channel`] on a lapin channel.
//!
//! The lapin channel underneath is opened lazily and replaced when it ends: after a
//! channel-level error (NOT_FOUND, PRECONDITION_FAILED, ACCESS_REFUSED close the AMQP channel)
//! the next operation opens a fresh one, so one failed declaration never makes the connection
//! unusable. After the connection drops, operations wait for the connection to recover and run
//! again (declarations are idempotent; a publish whose confirm never came is published again:
//! at least once, never lost), and consumers subscribe again by themselves.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{self, BoxStream, SelectAll};
use futures::{StreamExt, TryFutureExt};
use kombu_core::{
    Binding, Capabilities, Channel, ConsumeOptions, Delivery, DeliveryStream, Error, ErrorKind,
    Exchange, Outcome, Outgoing, Queue, Result, Settler,
};
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::ShortString;
use lapin::{BasicProperties, Confirmation};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::connection::{
    Declared, SendPending, Shared, bind, capabilities, declarable, declare_exchange,
    declare_queue_only, no_arguments,
};
use crate::error::{is_connection_loss, map};
use crate::mapping::{short_string, to_message, to_properties, to_table};
use crate::settle::{InFlight, Settlements};
use kombu_core::virtual_transport::Envelope;

/// Pause between attempts of an operation interrupted by a lost connection.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// An open lapin channel with the settlements of its deliveries.
#[derive(Clone)]
struct Slot {
    channel: lapin::Channel,
    settlements: Arc<Settlements>,
}

struct Inner {
    shared: Arc<Shared>,
    /// The lapin channel in use, if one is open.
    slot: Mutex<Option<Slot>>,
    /// One opening at a time.
    opening: tokio::sync::Mutex<()>,
    closed: AtomicBool,
    confirms: bool,
    capabilities: Capabilities,
    /// Settlements handed to lapin and not yet written.
    in_flight: Arc<InFlight>,
    /// Publishes without confirms queued and not yet written.
    unwritten: Arc<Unwritten>,
}

/// How long closing a channel waits for its settlements to be written.
const DRAIN: Duration = Duration::from_secs(5);

/// A channel on an AMQP connection: core's [`Channel`] on a lapin channel.
///
/// The lapin channel underneath is opened lazily and replaced when it ends: after a
/// channel-level error (NOT_FOUND, PRECONDITION_FAILED, ACCESS_REFUSED close the AMQP channel)
/// the next operation opens a fresh one, so one failed declaration never makes the connection
/// unusable. After the connection drops, operations wait for the connection to recover and run
/// again (declarations are idempotent; a publish whose confirm never came is published again:
/// at least once, never lost), and consumers subscribe again by themselves. Applications reach
/// it through `kombu::Connection` with an `amqp://` URL rather than by name.
pub struct AmqpChannel {
    inner: Arc<Inner>,
}

impl fmt::Debug for AmqpChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.inner.slot.lock().as_ref().map(|s| s.channel.id());
        f.debug_struct("AmqpChannel")
            .field("channel_id", &id)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .field("confirms", &self.inner.confirms)
            .finish()
    }
}

impl Drop for AmqpChannel {
    fn drop(&mut self) {
        // Unsettled deliveries return to their queues when the AMQP channel closes.
        self.inner.closed.store(true, Ordering::Release);
        let Some(Slot {
            channel,
            settlements,
        }) = self.inner.slot.lock().take()
        else {
            return;
        };
        settlements.flush();
        if channel.status().connected()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let in_flight = self.inner.in_flight.clone();
            let unwritten = self.inner.unwritten.clone();
            handle.spawn(async move {
                unwritten.drain(DRAIN).await;
                in_flight.drain(DRAIN).await;
                if let Err(error) = channel.close(200, "OK".into()).await {
                    tracing::debug!(%error, "closing a dropped AMQP channel failed");
                }
            });
        }
    }
}

/// Settles one delivery through the [`Settlements`] of the lapin channel it came on (which
/// coalesce acks): after that channel ended (closed, or its connection dropped) they refuse, so
/// a stale delivery tag is never applied to another channel's messages.
#[derive(Debug)]
struct ChannelSettler {
    settlements: Arc<Settlements>,
}

fn settled(done: lapin::Result<bool>, delivery_tag: u64, outcome: Outcome) -> Result<()> {
    let done = done.map_err(|e| map(e, format!("settle delivery {delivery_tag} ({outcome:?})")))?;
    if done {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Settlement,
            format!(
                "delivery {delivery_tag} cannot be settled: its AMQP channel ended (the broker \
                 gives the message to another consumer)"
            ),
        ))
    }
}

#[async_trait]
impl Settler for ChannelSettler {
    /// As [`try_settle`](Settler::try_settle): this transport always settles without waiting.
    async fn settle(&self, delivery_tag: u64, outcome: Outcome) -> Result<()> {
        self.try_settle(delivery_tag, outcome).unwrap_or(Ok(()))
    }

    /// Records an ack to send with others, or hands a reject to lapin, without waiting for it
    /// to be written (closing the channel sends and waits); a settlement refused at once (its
    /// channel ended) is an error.
    fn try_settle(&self, delivery_tag: u64, outcome: Outcome) -> Option<Result<()>> {
        Some(match self.settlements.settle(delivery_tag, outcome) {
            None => Ok(()),
            Some(done) => settled(done, delivery_tag, outcome),
        })
    }
}

/// A lapin delivery as a kombu delivery; `settlements` none in no-ack mode.
fn delivery(
    d: lapin::message::Delivery,
    queue: &Arc<str>,
    consumer_tag: &Arc<str>,
    settlements: Option<&Arc<Settlements>>,
) -> Delivery {
    let lapin::message::Delivery {
        delivery_tag,
        exchange,
        routing_key,
        redelivered,
        properties,
        data,
        ..
    } = d;
    let envelope = Envelope {
        message: to_message(data, &properties),
        exchange: exchange.as_str().to_owned(),
        routing_key: routing_key.as_str().to_owned(),
        tag: String::new(),
        redelivered,
    };
    let settler: Option<Arc<dyn Settler>> = settlements.map(|settlements| {
        Arc::new(ChannelSettler {
            settlements: settlements.clone(),
        }) as Arc<dyn Settler>
    });
    Delivery::from_envelope(
        Arc::new(envelope),
        queue.clone(),
        consumer_tag.clone(),
        delivery_tag,
        settler,
    )
}

/// Whether the broker refused with RESOURCE_LOCKED (405: another connection's exclusive queue).
fn is_resource_locked(e: &lapin::Error) -> bool {
    matches!(
        e.kind(),
        lapin::ErrorKind::ProtocolError(p)
            if matches!(
                p.kind(),
                lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::RESOURCELOCKED)
            )
    )
}

/// The outcome of a confirmed publish.
fn confirmation(
    confirmed: lapin::Result<Confirmation>,
    exchange: &str,
    routing_key: &str,
) -> Result<()> {
    let what = || format!("publish to exchange {exchange:?} with routing key {routing_key:?}");
    match confirmed.map_err(|e| map(e, what()))? {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(Error::new(
            ErrorKind::Unroutable,
            format!(
                "{}: returned by the broker ({} {}): no queue is bound to take it",
                what(),
                returned.reply_code,
                returned.reply_text.as_str()
            ),
        )),
        Confirmation::Nack(_) => Err(Error::new(
            ErrorKind::Broker,
            format!("{}: the broker refused it (nack)", what()),
        )),
    }
}

impl Inner {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The lapin channel to use: the open one, else a new one (on a recovered connection if
    /// the old one dropped), in confirm mode when confirms are on.
    async fn lapin(&self) -> Result<lapin::Channel> {
        Ok(self.slot().await?.channel)
    }

    /// Fails when this channel was closed.
    fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            return Err(Error::closed("the AMQP channel was closed"));
        }
        Ok(())
    }

    /// Asks whether an entity exists with `ask` (a passive declaration) on a lapin channel of
    /// its own, closed afterwards: the broker's "no" (404) closes the channel it is asked on, so
    /// this channel and its consumers stay untouched. NOT_FOUND is `false`; RESOURCE_LOCKED
    /// (another connection's exclusive queue) is `true`: it exists, it is just not ours.
    async fn exists<F, Fut>(&self, what: String, ask: F) -> Result<bool>
    where
        F: FnOnce(lapin::Channel) -> Fut,
        Fut: Future<Output = lapin::Result<()>>,
    {
        self.check_open()?;
        let (conn, _) = self.shared.connection().await?;
        let ch = conn
            .create_channel()
            .await
            .map_err(|e| map(e, "open an AMQP channel"))?;
        let answer = ask(ch.clone()).await;
        if ch.status().connected() {
            let _ = ch.close(200, "OK".into()).await;
        }
        match answer {
            Ok(()) => Ok(true),
            Err(e) if is_resource_locked(&e) => Ok(true),
            Err(e) => match map(e, what) {
                e if e.kind() == ErrorKind::NotFound => Ok(false),
                e => Err(e),
            },
        }
    }

    /// The open lapin channel with its settlements, else a new one.
    async fn slot(&self) -> Result<Slot> {
        if self.is_closed() {
            return Err(Error::closed("the AMQP channel was closed"));
        }
        if let Some(slot) = self.slot.lock().as_ref()
            && slot.channel.status().connected()
        {
            return Ok(slot.clone());
        }
        let _one = self.opening.lock().await;
        if let Some(slot) = self.slot.lock().as_ref()
            && slot.channel.status().connected()
        {
            return Ok(slot.clone());
        }
        let (conn, _) = self.shared.connection().await?;
        let ch = conn
            .create_channel()
            .await
            .map_err(|e| map(e, "open an AMQP channel"))?;
        if self.confirms {
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| map(e, "enable publisher confirms"))?;
        }
        if self.is_closed() {
            let _ = ch.close(200, "OK".into()).await;
            return Err(Error::closed("the AMQP channel was closed"));
        }
        let slot = Slot {
            settlements: Settlements::new(ch.clone(), self.in_flight.clone()),
            channel: ch,
        };
        *self.slot.lock() = Some(slot.clone());
        Ok(slot)
    }

    /// Whether an operation that failed with `e` is worth running again: the connection or the
    /// channel went away under it (not closed by us), recovery is on and there is time left.
    fn retryable(&self, e: &Error, deadline: Instant) -> bool {
        matches!(
            e.kind(),
            ErrorKind::Connection | ErrorKind::Closed | ErrorKind::Timeout
        ) && !self.is_closed()
            && !self.shared.is_closed()
            && self.shared.options().recover
            && Instant::now() < deadline
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.shared.options().recover_timeout
    }

    /// Runs `op` on the lapin channel, again on a new one when the connection or channel went
    /// away under it.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: Fn(lapin::Channel) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.run_on_slot(|slot| op(slot.channel)).await
    }

    /// Sends what waits before an operation other than a publish: recorded acks (so that a
    /// channel error the operation causes does not drop them), and publishes without confirms
    /// (lapin writes method frames before queued publishes, so a purge or a `get` could
    /// otherwise overtake a publish that already returned).
    async fn send_pending_now(&self) {
        let settlements = self.slot.lock().as_ref().map(|s| s.settlements.clone());
        if let Some(settlements) = settlements {
            settlements.flush();
        }
        self.unwritten.drain(DRAIN).await;
    }

    /// As [`run`](Inner::run), with the lapin channel's settlements too.
    async fn run_on_slot<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: Fn(Slot) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.send_pending_now().await;
        let deadline = self.deadline();
        loop {
            match self.slot().and_then(&op).await {
                Ok(v) => return Ok(v),
                Err(e) if self.retryable(&e, deadline) => {
                    tracing::debug!(error = %e, "AMQP operation interrupted; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Subscribes to `queues` on the lapin channel in use; returns the subscriptions and the
    /// settlements of that channel.
    async fn subscribe(
        &self,
        queues: &[String],
        options: &ConsumeOptions,
    ) -> Result<(SelectAll<Subscription>, Arc<Settlements>)> {
        self.send_pending_now().await;
        let Slot {
            channel: ch,
            settlements,
        } = self.slot().await?;
        if options.prefetch > 0 && !options.no_ack {
            ch.basic_qos(options.prefetch, BasicQosOptions { global: false })
                .await
                .map_err(|e| map(e, format!("set prefetch {}", options.prefetch)))?;
            settlements.limit_batch(options.prefetch);
        }
        let mut all = SelectAll::new();
        for (i, queue) in queues.iter().enumerate() {
            let tag = match (options.consumer_tag.as_str(), queues.len()) {
                ("", _) => String::new(),
                (tag, 1) => tag.to_owned(),
                (tag, _) => format!("{tag}-{i}"),
            };
            let consumer = ch
                .basic_consume(
                    short_string("queue name", queue)?,
                    short_string("consumer tag", &tag)?,
                    BasicConsumeOptions {
                        no_ack: options.no_ack,
                        ..BasicConsumeOptions::default()
                    },
                    no_arguments(),
                )
                .await
                .map_err(|e| map(e, format!("consume from queue {queue:?}")))?;
            let queue: Arc<str> = Arc::from(queue.as_str());
            let tag: Arc<str> = Arc::from(consumer.tag().as_str());
            all.push(
                consumer
                    .map(move |item| (queue.clone(), tag.clone(), item))
                    .boxed(),
            );
        }
        Ok((all, settlements))
    }
}

#[async_trait]
impl SendPending for Inner {
    async fn send_pending(&self) {
        self.send_pending_now().await;
    }
}

type Subscription =
    BoxStream<'static, (Arc<str>, Arc<str>, lapin::Result<lapin::message::Delivery>)>;

struct ConsumeState {
    inner: Weak<Inner>,
    /// The settlements of the lapin channel the subscriptions are on.
    settlements: Arc<Settlements>,
    queues: Vec<String>,
    options: ConsumeOptions,
    streams: SelectAll<Subscription>,
    done: bool,
}

impl ConsumeState {
    /// After the connection dropped: subscribe again on a recovered connection. `None` when
    /// the channel was closed meanwhile or recovery gave up (the error then ends the stream).
    async fn resubscribe(&mut self, cause: Error) -> Option<Error> {
        let inner = self.inner.upgrade()?;
        let deadline = inner.deadline();
        let mut last = cause;
        loop {
            if inner.is_closed() {
                return None;
            }
            if !inner.retryable(&last, deadline) {
                return Some(last);
            }
            match inner.subscribe(&self.queues, &self.options).await {
                Ok((streams, settlements)) => {
                    tracing::info!(queues = ?self.queues, "AMQP consumer resumed");
                    self.streams = streams;
                    self.settlements = settlements;
                    return None;
                }
                Err(e) => {
                    last = e;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    async fn next(mut self) -> Option<(Result<Delivery>, ConsumeState)> {
        loop {
            if self.done {
                return None;
            }
            let next = match futures::poll!(self.streams.next()) {
                Poll::Ready(next) => next,
                Poll::Pending => {
                    // Nothing to hand out: acks the broker may be waiting for go now.
                    self.settlements.idle();
                    self.streams.next().await
                }
            };
            match next {
                Some((queue, tag, Ok(d))) => {
                    let ack_mode = !self.options.no_ack;
                    self.settlements.seen(d.delivery_tag, ack_mode);
                    let settle = ack_mode.then_some(&self.settlements);
                    let d = delivery(d, &queue, &tag, settle);
                    return Some((Ok(d), self));
                }
                Some((queue, _, Err(e))) => {
                    let lost = is_connection_loss(&e);
                    let error = map(e, format!("consume from queue {queue:?}"));
                    let closed = self.inner.upgrade().is_none_or(|i| i.is_closed());
                    if closed {
                        return None;
                    }
                    if lost {
                        match self.resubscribe(error).await {
                            None => continue,
                            Some(error) => {
                                self.done = true;
                                return Some((Err(error), self));
                            }
                        }
                    }
                    self.done = true;
                    return Some((Err(error), self));
                }
                None => {
                    // Every subscription ended: the channel was closed (by us, or by the
                    // broker after a channel error), or the connection dropped.
                    let inner = self.inner.upgrade()?;
                    if inner.is_closed() || inner.shared.is_closed() {
                        return None;
                    }
                    let alive = inner.shared.connection_alive();
                    drop(inner);
                    if alive {
                        return None;
                    }
                    let lost = Error::new(ErrorKind::Connection, "the AMQP connection dropped");
                    if let Some(error) = self.resubscribe(lost).await {
                        self.done = true;
                        return Some((Err(error), self));
                    }
                }
            }
        }
    }
}

impl AmqpChannel {
    pub(crate) async fn open(shared: Arc<Shared>) -> Result<AmqpChannel> {
        let confirms = shared.options().confirm_publish;
        let channel = AmqpChannel {
            inner: Arc::new(Inner {
                shared,
                slot: Mutex::new(None),
                opening: tokio::sync::Mutex::new(()),
                closed: AtomicBool::new(false),
                confirms,
                capabilities: capabilities(confirms),
                in_flight: Arc::default(),
                unwritten: Arc::default(),
            }),
        };
        let pending: Weak<dyn SendPending> =
            Arc::downgrade(&channel.inner) as Weak<dyn SendPending>;
        channel.inner.shared.register(pending);
        channel.inner.run(|_| async { Ok(()) }).await?;
        Ok(channel)
    }

    async fn publish_all(&self, batch: &[Outgoing]) -> Result<()> {
        let inner = &self.inner;
        if inner.shared.is_closing() {
            return Err(Error::closed("the AMQP connection is closing"));
        }
        let mut prepared = Vec::with_capacity(batch.len());
        for o in batch {
            prepared.push((
                short_string("exchange name", &o.exchange)?,
                short_string("routing key", &o.routing_key)?,
                to_properties(&o.message),
            ));
        }
        let deadline = inner.deadline();
        let mut pending: Vec<usize> = (0..batch.len()).collect();
        let mut failure: Option<Error> = None;
        while !pending.is_empty() {
            let mut again = Vec::new();
            let mut interrupted: Option<Error> = None;
            match inner.lapin().await {
                Err(e) => {
                    interrupted = Some(e);
                    again = pending.clone();
                }
                Ok(ch) => {
                    // Each publish's first poll queues its frames, in order: the whole batch is
                    // on its way before any write is waited for (one wake-up, not one each).
                    let mut sends = Vec::with_capacity(pending.len());
                    for &i in &pending {
                        let (exchange, routing_key, properties) = &prepared[i];
                        let mut send =
                            publish_one(&ch, exchange, routing_key, &batch[i], properties.clone());
                        let first = send.as_mut().poll(&mut std::task::Context::from_waker(
                            futures::task::noop_waker_ref(),
                        ));
                        sends.push((i, send, first));
                    }
                    let mut confirms = Vec::with_capacity(sends.len());
                    for (i, send, first) in sends {
                        let sent = match first {
                            Poll::Ready(sent) => sent,
                            // Without confirms, queued is published (see `Unwritten`).
                            Poll::Pending if !inner.confirms => {
                                inner.unwritten.push(send).await;
                                if inner.is_closed() || inner.shared.is_closing() {
                                    // A close that began meanwhile may have drained already.
                                    inner.unwritten.drain(DRAIN).await;
                                }
                                continue;
                            }
                            Poll::Pending => send.await,
                        };
                        match sent {
                            Ok(confirm) => confirms.push((i, confirm)),
                            Err(e) => {
                                again.push(i);
                                interrupted.get_or_insert(e);
                            }
                        }
                    }
                    // Awaited together: one round trip's wait for the whole batch.
                    for (i, confirm) in confirms {
                        let o = &batch[i];
                        if let Err(e) = confirmation(confirm.await, &o.exchange, &o.routing_key) {
                            if inner.retryable(&e, deadline) {
                                again.push(i);
                                interrupted.get_or_insert(e);
                            } else if failure.is_none() {
                                failure = Some(e);
                            }
                        }
                    }
                }
            }
            if let Some(e) = interrupted {
                if !inner.retryable(&e, deadline) {
                    return Err(failure.unwrap_or(e));
                }
                tracing::debug!(error = %e, left = again.len(), "AMQP publish interrupted; publishing again");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            again.sort_unstable();
            pending = again;
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn record(&self, entry: Declared) {
        self.inner.shared.record(entry);
    }
}

/// A publish's frames handed to lapin (on the first poll) and written (when it completes). Owns
/// what it needs, so that a publish without confirms can be left to finish in the background.
fn publish_one(
    ch: &lapin::Channel,
    exchange: &ShortString,
    routing_key: &ShortString,
    o: &Outgoing,
    properties: BasicProperties,
) -> Pin<Box<dyn Future<Output = Result<lapin::PublisherConfirm>> + Send>> {
    let (ch, exchange, routing_key) = (ch.clone(), exchange.clone(), routing_key.clone());
    let body = o.message.body.clone();
    let options = BasicPublishOptions {
        mandatory: o.mandatory,
        immediate: false,
    };
    Box::pin(async move {
        ch.basic_publish(
            exchange.clone(),
            routing_key.clone(),
            options,
            &body,
            properties,
        )
        .await
        .map_err(|e| {
            map(
                e,
                format!(
                    "publish to exchange {:?} with routing key {:?}",
                    exchange.as_str(),
                    routing_key.as_str()
                ),
            )
        })
    })
}

/// Most publishes without confirms whose frames may wait to be written: past it, a publish
/// waits for the oldest writes (backpressure).
const MAX_UNWRITTEN: usize = 256;

/// Publishes without confirms whose frames are queued on the connection and not yet written,
/// oldest first: such a publish returns once its frames are queued (in order), not once they
/// are written, so one-by-one publishing does not wait for lapin's I/O loop each time. Closing
/// or dropping the channel waits for them.
#[derive(Default)]
struct Unwritten {
    writes: Mutex<std::collections::VecDeque<PublishFuture>>,
}

type PublishFuture = Pin<Box<dyn Future<Output = Result<lapin::PublisherConfirm>> + Send>>;

impl Unwritten {
    /// Keeps `write` until it completes; waits while too many are unwritten.
    async fn push(&self, write: PublishFuture) {
        let oldest = {
            let mut writes = self.writes.lock();
            writes.push_back(write);
            // Drop what was written since (in order: frames are written first in, first out).
            let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
            while let Some(front) = writes.front_mut() {
                match front.as_mut().poll(&mut cx) {
                    Poll::Ready(done) => {
                        if let Err(error) = done {
                            tracing::warn!(%error, "a publish without confirms was not written");
                        }
                        writes.pop_front();
                    }
                    Poll::Pending => break,
                }
            }
            if writes.len() > MAX_UNWRITTEN {
                writes.pop_front()
            } else {
                None
            }
        };
        if let Some(oldest) = oldest
            && let Err(error) = oldest.await
        {
            tracing::warn!(%error, "a publish without confirms was not written");
        }
    }

    /// Waits (at most `within`) until every queued publish is written.
    async fn drain(&self, within: Duration) {
        let writes = std::mem::take(&mut *self.writes.lock());
        if writes.is_empty() {
            return;
        }
        match tokio::time::timeout(within, futures::future::join_all(writes)).await {
            Ok(done) => {
                for error in done.into_iter().filter_map(std::result::Result::err) {
                    tracing::warn!(%error, "a publish without confirms was not written");
                }
            }
            Err(_) => tracing::warn!(
                ?within,
                "publishes without confirms still unwritten; going on without them"
            ),
        }
    }
}

#[async_trait]
impl Channel for AmqpChannel {
    fn capabilities(&self) -> &Capabilities {
        &self.inner.capabilities
    }

    async fn declare_exchange(&self, exchange: &Exchange) -> Result<()> {
        self.inner
            .run(|ch| async move { declare_exchange(&ch, exchange).await })
            .await?;
        if declarable(&exchange.name) {
            self.record(Declared::Exchange(exchange.clone()));
        }
        Ok(())
    }

    async fn delete_exchange(&self, name: &str) -> Result<()> {
        let exchange = short_string("exchange name", name)?;
        self.inner
            .run(|ch| {
                let exchange = exchange.clone();
                async move {
                    ch.exchange_delete(exchange, ExchangeDeleteOptions::default())
                        .await
                        .map_err(|e| map(e, format!("delete exchange {name:?}")))
                }
            })
            .await?;
        self.inner.shared.forget(|d| match d {
            Declared::Exchange(e) => e.name == name,
            Declared::Binding(_, b) => b.exchange == name,
            Declared::Queue(_) => false,
        });
        Ok(())
    }

    async fn declare_queue(&self, queue: &Queue) -> Result<()> {
        queue.validate()?;
        if let Some(exchange) = &queue.exchange
            && declarable(&exchange.name)
        {
            self.declare_exchange(exchange).await?;
        }
        self.inner
            .run(|ch| async move { declare_queue_only(&ch, queue).await })
            .await?;
        self.record(Declared::Queue(queue.clone()));
        for binding in queue.bindings() {
            self.bind(&queue.name, &binding).await?;
        }
        Ok(())
    }

    async fn bind(&self, queue: &str, binding: &Binding) -> Result<()> {
        self.inner
            .run(|ch| async move { bind(&ch, queue, binding).await })
            .await?;
        self.record(Declared::Binding(queue.to_owned(), binding.clone()));
        Ok(())
    }

    async fn unbind(&self, queue: &str, binding: &Binding) -> Result<()> {
        let q = short_string("queue name", queue)?;
        let x = short_string("exchange name", &binding.exchange)?;
        let rk = short_string("routing key", &binding.routing_key)?;
        let args = to_table(&binding.arguments);
        let result = self
            .inner
            .run(|ch| {
                let (q, x, rk, args) = (q.clone(), x.clone(), rk.clone(), args.clone());
                async move {
                    ch.queue_unbind(q, x, rk, args).await.map_err(|e| {
                        map(
                            e,
                            format!(
                                "unbind queue {queue:?} from exchange {:?}",
                                binding.exchange
                            ),
                        )
                    })
                }
            })
            .await;
        self.inner
            .shared
            .forget(|d| matches!(d, Declared::Binding(q, b) if q == queue && b == binding));
        match result {
            // A binding whose queue or exchange is gone is gone too.
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    async fn exchange_exists(&self, name: &str) -> Result<bool> {
        if name.is_empty() {
            self.inner.check_open()?;
            return Ok(true);
        }
        // The type is not compared by a passive declaration.
        let exchange = short_string("exchange name", name)?;
        self.inner
            .exists(format!("look up exchange {name:?}"), |ch| async move {
                let options = ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                };
                ch.exchange_declare(
                    exchange,
                    lapin::ExchangeKind::Direct,
                    options,
                    no_arguments(),
                )
                .await
            })
            .await
    }

    async fn queue_exists(&self, queue: &str) -> Result<bool> {
        let name = short_string("queue name", queue)?;
        self.inner
            .exists(format!("look up queue {queue:?}"), |ch| async move {
                let options = QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                };
                ch.queue_declare(name, options, no_arguments())
                    .await
                    .map(drop)
            })
            .await
    }

    async fn queue_size(&self, queue: &str) -> Result<u64> {
        let name = short_string("queue name", queue)?;
        self.inner
            .run(|ch| {
                let name = name.clone();
                async move {
                    let q = ch
                        .queue_declare(
                            name,
                            QueueDeclareOptions {
                                passive: true,
                                ..QueueDeclareOptions::default()
                            },
                            no_arguments(),
                        )
                        .await
                        .map_err(|e| map(e, format!("size of queue {queue:?}")))?;
                    Ok(u64::from(q.message_count()))
                }
            })
            .await
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        let name = short_string("queue name", queue)?;
        self.inner
            .run(|ch| {
                let name = name.clone();
                async move {
                    ch.queue_purge(name, QueuePurgeOptions::default())
                        .await
                        .map(u64::from)
                        .map_err(|e| map(e, format!("purge queue {queue:?}")))
                }
            })
            .await
    }

    async fn delete_queue(&self, queue: &str) -> Result<u64> {
        let name = short_string("queue name", queue)?;
        let deleted = self
            .inner
            .run(|ch| {
                let name = name.clone();
                async move {
                    ch.queue_delete(name, QueueDeleteOptions::default())
                        .await
                        .map(u64::from)
                        .map_err(|e| map(e, format!("delete queue {queue:?}")))
                }
            })
            .await?;
        self.inner.shared.forget(|d| match d {
            Declared::Queue(q) => q.name == queue,
            Declared::Binding(q, _) => q == queue,
            Declared::Exchange(_) => false,
        });
        Ok(deleted)
    }

    async fn publish(&self, outgoing: Outgoing) -> Result<()> {
        self.publish_all(std::slice::from_ref(&outgoing)).await
    }

    async fn publish_batch(&self, batch: Vec<Outgoing>) -> Result<()> {
        self.publish_all(&batch).await
    }

    async fn consume(&self, queues: &[String], options: &ConsumeOptions) -> Result<DeliveryStream> {
        if queues.is_empty() {
            return Err(Error::config("consume needs at least one queue"));
        }
        let deadline = self.inner.deadline();
        let (streams, settlements) = loop {
            match self.inner.subscribe(queues, options).await {
                Ok(s) => break s,
                Err(e) if self.inner.retryable(&e, deadline) => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => return Err(e),
            }
        };
        let state = ConsumeState {
            inner: Arc::downgrade(&self.inner),
            settlements,
            queues: queues.to_vec(),
            options: options.clone(),
            streams,
            done: false,
        };
        // Fused: polling the stream again after it ended yields `None`, not a panic.
        Ok(stream::unfold(state, ConsumeState::next).fuse().boxed())
    }

    async fn get(&self, queue: &str, no_ack: bool) -> Result<Option<Delivery>> {
        let name = short_string("queue name", queue)?;
        let got = self
            .inner
            .run_on_slot(|slot| {
                let name = name.clone();
                async move {
                    let got = slot
                        .channel
                        .basic_get(name, BasicGetOptions { no_ack })
                        .await
                        .map_err(|e| map(e, format!("get from queue {queue:?}")))?;
                    Ok(got.map(|m| (m, slot.settlements)))
                }
            })
            .await?;
        Ok(got.map(|(m, settlements)| {
            settlements.seen(m.delivery.delivery_tag, !no_ack);
            let settle = (!no_ack).then_some(&settlements);
            delivery(m.delivery, &Arc::from(queue), &Arc::from(""), settle)
        }))
    }

    async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        let slot = self.inner.slot.lock().take();
        if let Some(slot) = &slot {
            slot.settlements.flush();
        }
        self.inner.unwritten.drain(DRAIN).await;
        self.inner.in_flight.drain(DRAIN).await;
        if let Some(Slot { channel, .. }) = slot
            && channel.status().connected()
            && let Err(e) = channel.close(200, "OK".into()).await
        {
            // A channel whose connection dropped is closed already.
            if !is_connection_loss(&e) {
                return Err(map(e, "close the AMQP channel"));
            }
        }
        Ok(())
    }
}
