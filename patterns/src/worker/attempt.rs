//! One attempt at one message, polled by its lane: the handler under its timeout, with the
//! lease kept alive, then the settlement: ack, retry (republish with [`RETRIES_HEADER`] + 1
//! after the backoff, then ack), requeue, or back to the lane for dead-lettering.

use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::FutureExt;
use kombu_core::transport::Outgoing;
use kombu_core::{Delivery, ErrorKind, Producer, Value};
use tokio::sync::OwnedSemaphorePermit;

use super::Backoff;
use super::control::{Count, Counters};
use super::handler::Attempt;
use super::job::{self, FailureKind, JobContext, RETRIES_HEADER};

/// What a lane's attempts share: the route's settings and its count of running handlers.
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
    /// The lane's handlers running now (not counting the settlements after them): the lane
    /// takes a message while this is under the route's concurrency. Only the lane's task
    /// polls its attempts, so the lane sees every change before it next looks.
    pub(crate) running: AtomicUsize,
}

impl Settings {
    /// The lane's handlers running now.
    pub(crate) fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }
}

/// Counts a running handler in [`Settings::running`] until dropped.
struct Busy<'a>(&'a AtomicUsize);

impl<'a> Busy<'a> {
    fn enter(running: &'a AtomicUsize) -> Self {
        running.fetch_add(1, Ordering::Relaxed);
        Busy(running)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What only the lane (the owner of the consumer) can do with a delivery: dead-letter it
/// with this reason.
#[derive(Debug)]
pub(crate) struct DeadLetter(pub(crate) Delivery, pub(crate) String);

/// What an attempt starts with, besides its message.
#[derive(Debug)]
pub(crate) struct Start {
    pub(crate) settings: Arc<Settings>,
    /// The worker's bound, where it bounds more than the route's does.
    pub(crate) worker_permit: Option<OwnedSemaphorePermit>,
    /// The `process` span the attempt runs in.
    pub(crate) span: tracing::Span,
}

/// Runs the attempt `work` at the message `context` holds, then settles the message. The
/// handler's place (in the lane's count and the worker's permits) is given back as soon as
/// the handler is done; the handler's duration is recorded when metrics are.
///
/// Most handlers of a busy worker finish at their first poll: only one that does not gets
/// the timers of its timeout and lease heartbeat (in a box: the future of an attempt stays
/// small, and is moved cheaply).
pub(crate) async fn run<F>(
    settings: Arc<Settings>,
    worker_permit: Option<OwnedSemaphorePermit>,
    context: JobContext,
    work: F,
) -> Option<DeadLetter>
where
    F: Future<Output = Attempt>,
{
    let busy = Busy::enter(&settings.running);
    let started = kombu_core::metrics::is_recording().then(Instant::now);
    // A limit too far to add is none.
    let deadline = settings.timeout.and_then(|limit| {
        let at = tokio::time::Instant::now().checked_add(limit)?;
        Some((at, limit))
    });
    let outcome = {
        let mut work = pin!(AssertUnwindSafe(work).catch_unwind());
        match futures::poll!(work.as_mut()) {
            Poll::Ready(outcome) => outcome,
            Poll::Pending => {
                let delivery = context.delivery();
                Box::pin(supervise(work, deadline, settings.heartbeat, delivery)).await
            }
        }
    };
    let attempt = outcome.unwrap_or_else(|panic| panicked(&*panic));
    if let Some(started) = started {
        let ok = matches!(attempt, Attempt::Done);
        kombu_core::metrics::record_handler(context.queue(), started.elapsed(), ok);
    }
    drop(busy);
    drop(worker_permit);
    let delivery = match context.into_delivery() {
        Ok(delivery) => delivery,
        Err(()) => {
            tracing::warn!(
                "a job context outlived its handler: the message cannot be settled and goes \
                 back to its queue once the last clone is dropped"
            );
            settings.counters.add(Count::Failed);
            return None;
        }
    };
    settle(&settings, delivery, attempt).await
}

/// The failed attempt of a handler that panicked with `panic` (retried, as any failure).
pub(crate) fn panicked(panic: &(dyn std::any::Any + Send)) -> Attempt {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned());
    Attempt::Failed(FailureKind::Retry, format!("the handler panicked: {text}"))
}

/// A handler's outcome: its attempt, or the panic it raised.
type Outcome = std::thread::Result<Attempt>;

/// The rest of a handler that did not finish at once: under its deadline (past it, the
/// attempt has failed), with its delivery's lease extended every `heartbeat`.
async fn supervise<W>(
    work: Pin<&mut W>,
    deadline: Option<(tokio::time::Instant, Duration)>,
    heartbeat: Option<Duration>,
    delivery: &Delivery,
) -> Outcome
where
    W: Future<Output = Outcome>,
{
    let leased = keep_lease(delivery, heartbeat, work);
    let Some((at, limit)) = deadline else {
        return leased.await;
    };
    match tokio::time::timeout_at(at, leased).await {
        Ok(outcome) => outcome,
        Err(_) => Ok(Attempt::Failed(
            FailureKind::Retry,
            format!("the handler ran longer than its timeout ({limit:?})"),
        )),
    }
}

/// Runs `work`, extending `delivery`'s lease every `interval` meanwhile (until the lease is
/// gone).
async fn keep_lease<F: Future>(
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
    let work = pin!(work);
    let beat = pin!(beat);
    match futures::future::select(work, beat).await {
        futures::future::Either::Left((done, _)) => done,
        futures::future::Either::Right(((), work)) => work.await,
    }
}

/// Acks, retries or requeues the delivery, or returns it to be dead-lettered by the lane.
async fn settle(settings: &Settings, delivery: Delivery, attempt: Attempt) -> Option<DeadLetter> {
    let counters = &settings.counters;
    let (kind, reason) = match attempt {
        Attempt::Done => {
            counters.add(Count::Handled);
            if let Err(error) = delivery.ack().await {
                tracing::warn!(
                    error = %format_args!("{:#}", kombu_core::Error::from(error)),
                    "a handled message could not be acked: the broker delivers it again"
                );
            }
            return None;
        }
        Attempt::Failed(kind, reason) => (kind, reason),
    };
    counters.add(Count::Failed);
    match kind {
        FailureKind::Requeue => {
            let queue = delivery.queue();
            tracing::info!(%queue, %reason, "handler asked to requeue the message");
            // Boxed, as the retry below: the rare paths keep the attempt's future small.
            Box::pin(requeue(settings, delivery)).await;
            None
        }
        FailureKind::Permanent => {
            Some(DeadLetter(delivery, format!("permanent failure: {reason}")))
        }
        FailureKind::Retry => {
            let retries = job::retries(&delivery);
            if retries >= settings.max_retries {
                let reason = format!("{reason} (given up after {retries} retries)");
                return Some(DeadLetter(delivery, reason));
            }
            let queue = delivery.queue();
            tracing::info!(%queue, %reason, retries, "handler failed; retrying");
            Box::pin(retry(settings, delivery, retries)).await;
            None
        }
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
