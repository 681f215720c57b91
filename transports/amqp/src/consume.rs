//! Consuming on an AMQP channel: subscriptions on the lapin channel in use, lapin deliveries as
//! kombu deliveries with their settler, and a consumer stream that subscribes again by itself
//! after the connection recovered.

use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::{self, BoxStream, SelectAll};
use kombu_core::transport::{ConsumeOptions, DeliveryStream, Envelope, Outcome, Settler};
use kombu_core::{Delivery, Error, ErrorKind, Result, RetryEvent};
use lapin::options::{BasicConsumeOptions, BasicQosOptions};

use crate::connection::no_arguments;
use crate::error::{is_connection_loss, map};
use crate::lapin_channel::{Inner, RETRY_PAUSE, Slot};
use crate::mapping::{MAX_HEADER_DEPTH, drop_deep, short_string, to_message_cut};
use crate::settle::Settlements;

/// How often a consumer waiting to subscribe again looks whether its channel was closed.
const CLOSE_CHECK: Duration = Duration::from_millis(100);
/// How often a consumer waiting for deliveries looks whether its channel is still open.
const STALE_CHECK: Duration = Duration::from_secs(1);

/// Whether a consumer subscribes again after `error`: a lost connection or channel (or an
/// operation that timed out), on a connection that is open and recovers.
fn resumable(inner: &Inner, error: &Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::Connection | ErrorKind::Closed | ErrorKind::Timeout
    ) && !inner.shared.is_closing()
        && inner.shared.options().recover
}

/// RabbitMQ's direct reply-to pseudo-queue.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// A subscription to direct reply-to that failed with PRECONDITION_FAILED: the broker closed
/// the channel because a request went out on it, addressed to direct reply-to, before this
/// consumer was back (an RPC client after a reconnect). Not this consumer's fault: it is
/// worth subscribing again, on a new channel (kind `Closed`).
fn refused_by_a_publish(queues: &[String], error: Error) -> Error {
    match error.kind() == ErrorKind::PreconditionFailed
        && queues.iter().any(|q| q == DIRECT_REPLY_TO)
    {
        true => Error::new(
            ErrorKind::Closed,
            format!(
                "the broker closed the channel before direct reply-to was consumed again: {error:#}"
            ),
        ),
        false => error,
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
            ErrorKind::StaleDelivery,
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
pub(crate) fn delivery(
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
    let (message, cut) = to_message_cut(data, &properties);
    if cut {
        tracing::warn!(
            queue = %queue,
            "a message's headers nest deeper than {MAX_HEADER_DEPTH} levels; the deeper part is left out"
        );
        drop_deep(properties);
    }
    let envelope = Envelope {
        message,
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

impl Inner {
    /// Subscribes to `queues` on the lapin channel in use; returns the subscriptions, the
    /// settlements of that channel and the connection generation they are on (read before
    /// the channel is taken: never newer than the channel's connection).
    pub(crate) async fn subscribe(
        &self,
        queues: &[String],
        options: &ConsumeOptions,
    ) -> Result<(SelectAll<Subscription>, Arc<Settlements>, u64)> {
        self.send_pending_now().await;
        let generation = self.shared.generation();
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
        Ok((all, settlements, generation))
    }
}

/// An item of a subscription: the queue, the consumer tag and the delivery or error.
type SubscriptionItem = (Arc<str>, Arc<str>, lapin::Result<lapin::message::Delivery>);
type Subscription = BoxStream<'static, SubscriptionItem>;

struct ConsumeState {
    inner: Weak<Inner>,
    /// The settlements of the lapin channel the subscriptions are on.
    settlements: Arc<Settlements>,
    queues: Vec<String>,
    options: ConsumeOptions,
    streams: SelectAll<Subscription>,
    /// The connection generation the subscriptions were made on.
    generation: u64,
    done: bool,
}

impl ConsumeState {
    /// After the connection dropped: subscribe again on a recovered connection, as long as
    /// the consumer's retry policy ([`ConsumeOptions::retry`], by default without a deadline)
    /// lets it: each failed try waits the policy's next delay. A connection recovery round
    /// that times out (`recover_timeout`) is one failed try, not the end. `None` once
    /// subscribed again, or when the channel was closed meanwhile; the error (which then ends
    /// the stream) when it is not recoverable, recovery is off, the connection was closed, or
    /// the policy gave up.
    async fn resubscribe(&mut self, cause: Error) -> Option<Error> {
        let since = tokio::time::Instant::now();
        let mut delays = self.options.retry.delays();
        let mut attempt: u32 = 0;
        let mut last = cause;
        loop {
            {
                let inner = self.inner.upgrade()?;
                if inner.is_closed() {
                    return None;
                }
                if !resumable(&inner, &last) {
                    return Some(last);
                }
                match inner.subscribe(&self.queues, &self.options).await {
                    Ok((streams, settlements, generation)) => {
                        tracing::info!(
                            queues = ?self.queues,
                            after = ?since.elapsed(),
                            "AMQP consumer resumed"
                        );
                        self.streams = streams;
                        self.settlements = settlements;
                        self.generation = generation;
                        return None;
                    }
                    Err(e) => last = refused_by_a_publish(&self.queues, e),
                }
                if inner.is_closed() {
                    return None;
                }
                if !resumable(&inner, &last) {
                    return Some(last);
                }
            }
            attempt = attempt.saturating_add(1);
            let Some(delay) = delays.next_within(since.elapsed()) else {
                return Some(last.context("the consumer's retry policy gave up"));
            };
            tracing::warn!(
                queues = ?self.queues,
                attempt,
                ?delay,
                error = %format!("{last:#}"),
                "AMQP consumer lost its broker; subscribing again after a pause"
            );
            if let Some(callback) = &self.options.on_retry {
                callback.call(&RetryEvent {
                    attempt,
                    error: &last,
                    delay,
                });
            }
            // In short steps, so that closing the channel ends the wait soon.
            let now = tokio::time::Instant::now();
            let until = now
                .checked_add(delay)
                .unwrap_or(now + Duration::from_secs(86_400));
            while tokio::time::Instant::now() < until {
                let closed = self.inner.upgrade().is_none_or(|i| i.is_closed());
                if closed {
                    return None;
                }
                let step = until.saturating_duration_since(tokio::time::Instant::now());
                tokio::time::sleep(step.min(CLOSE_CHECK)).await;
            }
        }
    }

    /// The next item of the subscriptions; `None` when their channel is not open at two
    /// checks in a row ([`STALE_CHECK`] apart) while they go on waiting: a subscription whose
    /// channel or connection went away ends with an error, and this is the guard for one that
    /// would not, so that a consumer never waits for ever on a channel that is gone.
    async fn wait(&mut self) -> Option<Option<SubscriptionItem>> {
        let mut strikes = 0;
        loop {
            tokio::select! {
                next = self.streams.next() => return Some(next),
                () = tokio::time::sleep(STALE_CHECK) => {
                    if self.settlements.channel_open() {
                        strikes = 0;
                    } else {
                        strikes += 1;
                        if strikes >= 2 {
                            return None;
                        }
                    }
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
                Poll::Ready(next) => Some(next),
                Poll::Pending => {
                    // Nothing to hand out: acks the broker may be waiting for go now.
                    self.settlements.idle();
                    self.wait().await
                }
            };
            let Some(next) = next else {
                // The channel is gone and lapin's consumer did not end: subscribe again.
                let inner = self.inner.upgrade()?;
                if inner.is_closed() || inner.shared.is_closed() {
                    return None;
                }
                drop(inner);
                tracing::warn!(
                    queues = ?self.queues,
                    "the AMQP consumer's channel ended without its subscription ending; \
                     subscribing again"
                );
                let lost = Error::new(
                    ErrorKind::Connection,
                    "the AMQP consumer's channel ended without its subscription ending",
                );
                if let Some(error) = self.resubscribe(lost).await {
                    self.done = true;
                    return Some((Err(error), self));
                }
                continue;
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
                    // The broker closed the channel (a soft error, maybe of another operation
                    // on it, such as a publish it refused) with the connection up: subscribe
                    // again on a new channel.
                    let channel_gone = !lost && !self.settlements.channel_open();
                    if lost || error.is_recoverable() || channel_gone {
                        let cause = match channel_gone && !error.is_recoverable() {
                            true => Error::new(
                                ErrorKind::Closed,
                                format!("the broker closed the consumer's channel: {error:#}"),
                            ),
                            false => error,
                        };
                        match self.resubscribe(cause).await {
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
                    // Ended on the connection in use, which is up, with the channel open: the
                    // broker cancelled the consumers (their queue went), the end. On a channel
                    // the broker closed (an error of another operation on it, such as a
                    // publish it refused), on a connection replaced since (the watcher may
                    // have recovered already), or on one that is down: subscribe again.
                    let same = inner.shared.generation() == self.generation;
                    let alive = inner.shared.connection_alive();
                    let channel_closed = !self.settlements.channel_open();
                    drop(inner);
                    if same && alive && !channel_closed {
                        return None;
                    }
                    let lost = match same && alive {
                        true => Error::new(
                            ErrorKind::Closed,
                            "the broker closed the consumer's channel",
                        ),
                        false => Error::new(ErrorKind::Connection, "the AMQP connection dropped"),
                    };
                    if let Some(error) = self.resubscribe(lost).await {
                        self.done = true;
                        return Some((Err(error), self));
                    }
                }
            }
        }
    }
}

/// Subscribes to `queues` (again while the connection recovers) and streams their deliveries.
pub(crate) async fn consume(
    inner: &Arc<Inner>,
    queues: &[String],
    options: &ConsumeOptions,
) -> Result<DeliveryStream> {
    if queues.is_empty() {
        return Err(Error::config("consume needs at least one queue"));
    }
    let deadline = inner.deadline();
    let (streams, settlements, generation) = loop {
        match inner.subscribe(queues, options).await {
            Ok(s) => break s,
            Err(e) if inner.retryable(&e, deadline) => {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(e) => return Err(e),
        }
    };
    let state = ConsumeState {
        inner: Arc::downgrade(inner),
        settlements,
        queues: queues.to_vec(),
        options: options.clone(),
        streams,
        generation,
        done: false,
    };
    // Fused: polling the stream again after it ended yields `None`, not a panic.
    Ok(stream::unfold(state, ConsumeState::next).fuse().boxed())
}
