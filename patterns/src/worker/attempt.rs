//! One attempt at one message, in a task of its own: the handler under its timeout, with the
//! lease kept alive, then the settlement: ack, retry (republish with [`RETRIES_HEADER`] + 1
//! after the backoff, then ack), requeue, or hand to the lane for dead-lettering.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use kombu_core::transport::Outgoing;
use kombu_core::{Delivery, ErrorKind, Producer, Value};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::Backoff;
use super::control::{Count, Counters};
use super::handler::Attempt;
use super::job::{self, FailureKind, JobContext, RETRIES_HEADER};

/// What a lane's attempts share: the route's settings and the way back to the lane.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) timeout: Option<Duration>,
    pub(crate) max_retries: u32,
    pub(crate) backoff: Backoff,
    /// How often a running handler's lease is extended; `None`: never.
    pub(crate) heartbeat: Option<Duration>,
    /// Publishes retries (under the connection's retry policy).
    pub(crate) producer: Producer,
    /// Whether the transport can say a publish reached no queue.
    pub(crate) mandatory: bool,
    /// Whether a retry's backoff is the transport's delayed publish: on transports whose
    /// delayed messages core routes at publish time (virtual ones with `delayed_delivery`),
    /// so the default exchange works. RabbitMQ's native layout needs a topic exchange as the
    /// destination, so there the worker holds the message instead.
    pub(crate) native_delay: bool,
    pub(crate) counters: Arc<Counters>,
    /// To the lane, which owns the consumer that dead-letters.
    pub(crate) to_lane: mpsc::UnboundedSender<ToLane>,
}

/// What only the lane (the owner of the consumer) can do with a delivery.
#[derive(Debug)]
pub(crate) enum ToLane {
    /// Dead-letter it with this reason.
    DeadLetter(Delivery, String),
    /// It did not decode: the consumer's error policy decides.
    Refused(Delivery, kombu_core::Error),
}

/// Runs the attempt `work` at the message `context` holds, then settles the message. The
/// permits are given back as soon as the handler is done.
pub(crate) async fn run(
    settings: Arc<Settings>,
    work: BoxFuture<'static, Attempt>,
    context: JobContext,
    permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
) {
    let delivery = context.arc().clone();
    let guarded = guard(work, settings.timeout);
    let attempt = keep_lease(&delivery, settings.heartbeat, guarded).await;
    drop(permits);
    drop(context);
    let delivery = match Arc::try_unwrap(delivery) {
        Ok(delivery) => delivery,
        Err(_shared) => {
            tracing::warn!(
                "a job context outlived its handler: the message cannot be settled and goes \
                 back to its queue once the last clone is dropped"
            );
            settings.counters.add(Count::Failed);
            return;
        }
    };
    settle(&settings, delivery, attempt).await;
}

/// The handler under its timeout, a panic caught as a failure.
async fn guard(work: BoxFuture<'static, Attempt>, timeout: Option<Duration>) -> Attempt {
    let caught = AssertUnwindSafe(work).catch_unwind();
    let outcome = match timeout {
        None => caught.await,
        Some(limit) => match tokio::time::timeout(limit, caught).await {
            Ok(outcome) => outcome,
            Err(_) => {
                return Attempt::Failed(
                    FailureKind::Retry,
                    format!("the handler ran longer than its timeout ({limit:?})"),
                );
            }
        },
    };
    outcome.unwrap_or_else(|panic| {
        let text = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_owned());
        Attempt::Failed(FailureKind::Retry, format!("the handler panicked: {text}"))
    })
}

/// Runs `work`, extending `delivery`'s lease every `interval` meanwhile (until the lease is
/// gone).
async fn keep_lease<F: std::future::Future>(
    delivery: &Delivery,
    interval: Option<Duration>,
    work: F,
) -> F::Output {
    let Some(interval) = interval else {
        return work.await;
    };
    let beat = async {
        loop {
            tokio::time::sleep(interval).await;
            match delivery.extend_lease().await {
                Ok(()) => {}
                Err(error) if error.kind() == ErrorKind::StaleDelivery => {
                    tracing::debug!(%error, "lease heartbeat stops: the lease is gone");
                    return std::future::pending::<()>().await;
                }
                Err(error) => tracing::warn!(
                    error = %format_args!("{error:#}"),
                    "could not extend a lease; trying again at the next beat"
                ),
            }
        }
    };
    tokio::pin!(work);
    tokio::pin!(beat);
    match futures::future::select(work, beat).await {
        futures::future::Either::Left((done, _)) => done,
        futures::future::Either::Right(((), work)) => work.await,
    }
}

/// Acks, retries, requeues, or hands the delivery to its lane.
async fn settle(settings: &Settings, delivery: Delivery, attempt: Attempt) {
    let counters = &settings.counters;
    match attempt {
        Attempt::Done => match delivery.ack().await {
            Ok(()) => counters.add(Count::Handled),
            Err(error) => {
                counters.add(Count::Handled);
                tracing::warn!(
                    error = %format_args!("{:#}", kombu_core::Error::from(error)),
                    "a handled message could not be acked: the broker delivers it again"
                );
            }
        },
        Attempt::Undecodable(error) => lane(settings, ToLane::Refused(delivery, error)),
        Attempt::Failed(kind, reason) => {
            counters.add(Count::Failed);
            let queue = delivery.queue().to_owned();
            match kind {
                FailureKind::Requeue => {
                    tracing::info!(%queue, %reason, "handler asked to requeue the message");
                    requeue(settings, delivery).await;
                }
                FailureKind::Permanent => {
                    let reason = format!("permanent failure: {reason}");
                    lane(settings, ToLane::DeadLetter(delivery, reason));
                }
                FailureKind::Retry => {
                    let retries = job::retries(&delivery);
                    if retries >= settings.max_retries {
                        let reason = format!("{reason} (given up after {retries} retries)");
                        lane(settings, ToLane::DeadLetter(delivery, reason));
                    } else {
                        tracing::info!(%queue, %reason, retries, "handler failed; retrying");
                        retry(settings, delivery, retries).await;
                    }
                }
            }
        }
    }
}

/// Hands a delivery to the lane; if the lane is gone, the delivery is dropped and so returns
/// to its queue.
fn lane(settings: &Settings, message: ToLane) {
    if settings.to_lane.send(message).is_err() {
        tracing::warn!("the worker stopped: the message goes back to its queue");
    }
}

async fn requeue(settings: &Settings, delivery: Delivery) {
    match delivery.requeue().await {
        Ok(()) => settings.counters.add(Count::Requeued),
        Err(error) => tracing::warn!(
            error = %format_args!("{:#}", kombu_core::Error::from(error)),
            "a requeue failed: the message returns when its channel closes or its lease ends"
        ),
    }
}

/// Republishes the message to its queue with one more retry counted, to become visible once
/// its backoff has passed, then acks the original (a failure in between leaves both, never
/// neither). A republish that fails puts the original back as it is. The backoff is the
/// transport's delayed publish where core routes it at publish time (see
/// [`Settings::native_delay`]); elsewhere the message is held here, its lease kept alive, and
/// published when due.
async fn retry(settings: &Settings, delivery: Delivery, retries: u32) {
    let delay = settings.backoff.delay(retries);
    let mut message = delivery.message().clone();
    message.headers.insert(
        RETRIES_HEADER.to_owned(),
        Value::from(i64::from(retries) + 1),
    );
    let out = Outgoing::new("", delivery.queue(), message).mandatory(settings.mandatory);
    let published = match delay.is_zero() {
        true => settings.producer.send_batch(vec![out]).await,
        false if settings.native_delay => {
            match settings
                .producer
                .send_batch(vec![out.clone().delay(delay)])
                .await
            {
                Err(error) if error.kind() == ErrorKind::Unsupported => {
                    tracing::debug!(%error, "no delayed publish here: the retry waits in the worker");
                    hold_then_publish(settings, &delivery, out, delay).await
                }
                done => done,
            }
        }
        false => hold_then_publish(settings, &delivery, out, delay).await,
    };
    match published {
        Ok(()) => {
            settings.counters.add(Count::Retried);
            if let Err(error) = delivery.ack().await {
                tracing::warn!(
                    error = %format_args!("{:#}", kombu_core::Error::from(error)),
                    "a retried message's original could not be acked: it comes back too"
                );
            }
        }
        Err(error) => {
            tracing::error!(
                error = %format_args!("{error:#}"),
                "republishing a message for its retry failed: it goes back to its queue as it is"
            );
            requeue(settings, delivery).await;
        }
    }
}

/// Waits out `delay` keeping the delivery's lease alive, then publishes `out`.
async fn hold_then_publish(
    settings: &Settings,
    delivery: &Delivery,
    out: Outgoing,
    delay: Duration,
) -> kombu_core::Result<()> {
    keep_lease(delivery, settings.heartbeat, tokio::time::sleep(delay)).await;
    settings.producer.send_batch(vec![out]).await
}
