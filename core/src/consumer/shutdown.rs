//! Graceful shutdown of a [`Consumer`]: a [`StopHandle`] that ends its stream and handler
//! loop, the deadline an in-flight handler gets, and the close that returns what the consumer
//! still holds.
//!
//! Stopping:
//! 1. stops fetching: the stream ends (yields `None`) and the handler loop takes nothing more;
//! 2. lets the handler in flight finish within the
//!    [`shutdown_timeout`](crate::ConsumerBuilder::shutdown_timeout); one that overruns it is
//!    dropped, and its delivery goes back to its queue;
//! 3. closes the consumer's channel: pending acks are written, deliveries taken but not handed
//!    out (the prefetched ones) and those handed out but not settled go back to their queue at
//!    once, marked redelivered (virtual transports restore them; AMQP closes the channel, and
//!    the broker requeues every unacked delivery of it), never after a visibility timeout.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Context;
use std::time::Duration;

use futures::StreamExt;
use futures::task::AtomicWaker;
use tokio::sync::Notify;

use crate::consumer::Consumer;
use crate::error::Result;

/// How long a stopped consumer lets its in-flight handler run by default.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a closing consumer waits for a take already under way to finish, so what it took
/// goes back now rather than after its visibility timeout.
const TAKE_GRACE: Duration = Duration::from_secs(2);

/// Stops a [`Consumer`] from another task (a signal handler, a supervisor); from
/// [`Consumer::stop_handle`]. Cheap to clone; every clone stops the same consumer.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use kombu_core::{Connection, Queue};
///
/// # kombu_core::transport::memory::register();
/// let conn = Connection::open("memory://doc-stop-handle").await?;
/// let consumer = conn
///     .consumer([Queue::new("jobs")])
///     .shutdown_timeout(Duration::from_secs(5)) // the in-flight handler gets 5 s to finish
///     .build()
///     .await?;
/// let stop = consumer.stop_handle();
/// let worker = tokio::spawn(
///     consumer.consume(|delivery| async move { Ok(delivery.ack().await?) }),
/// );
/// conn.producer().routing_key("jobs").publish("work").await?;
///
/// stop.stop(); // e.g. on SIGTERM
/// // The worker returns once stopped: the handler in flight finished, the consumer closed,
/// // and what it had taken and not settled is back in the queue.
/// worker.await??; // a panicked worker is an error here too
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct StopHandle {
    signal: Arc<StopSignal>,
}

impl fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StopHandle")
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

impl StopHandle {
    /// Stops the consumer: its stream ends and its handler loop
    /// ([`Consumer::consume`], [`Consumer::consume_as`]) takes no more deliveries, lets the one
    /// in flight finish within the shutdown timeout, closes the consumer and returns `Ok(())`.
    /// Idempotent.
    pub fn stop(&self) {
        self.signal.stop();
    }

    /// Whether [`stop`](Self::stop) was called.
    pub fn is_stopped(&self) -> bool {
        self.signal.is_stopped()
    }
}

/// The shared state of a consumer's stop: a flag, the waker of the consumer's stream and the
/// tasks waiting for it.
#[derive(Default)]
pub(super) struct StopSignal {
    stopped: AtomicBool,
    waker: AtomicWaker,
    notify: Notify,
}

impl StopSignal {
    fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.waker.wake();
        self.notify.notify_waiters();
    }

    pub(super) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// For the consumer's stream: registers the task to wake, then says whether it is stopped.
    pub(super) fn poll_stopped(&self, cx: &Context<'_>) -> bool {
        self.waker.register(cx.waker());
        self.is_stopped()
    }

    /// Returns once stopped.
    async fn stopped(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        // Registered before the flag is read, so a stop in between is not missed.
        notified.as_mut().enable();
        if self.is_stopped() {
            return;
        }
        notified.await;
    }
}

/// How a handler run under a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ran {
    /// It returned `Ok`.
    Finished,
    /// The consumer was stopped and the handler overran the shutdown timeout: it was dropped.
    Abandoned,
}

impl Consumer {
    /// A handle that stops this consumer from elsewhere (see [`StopHandle`]).
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            signal: self.stop.clone(),
        }
    }

    /// Whether this consumer was stopped (its stream ends; see [`StopHandle`]).
    pub fn is_stopped(&self) -> bool {
        self.stop.is_stopped()
    }

    /// Stops this consumer and closes it gracefully: as [`Consumer::close`], after which
    /// nothing it took is held anywhere.
    pub async fn shutdown(self) -> Result<()> {
        self.stop.stop();
        self.close_gracefully().await
    }

    /// Runs one handler future; once the consumer is stopped it gets the shutdown timeout to
    /// finish, after which it is dropped (its delivery, dropped unsettled, goes back to its
    /// queue, and the close that follows returns anything else it held).
    pub(super) async fn run_handler<Fut>(&self, handler: Fut) -> Result<Ran>
    where
        Fut: Future<Output = Result<()>>,
    {
        tokio::pin!(handler);
        tokio::select! {
            biased;
            done = &mut handler => return done.map(|()| Ran::Finished),
            () = self.stop.stopped() => {}
        }
        match tokio::time::timeout(self.shutdown_timeout, &mut handler).await {
            Ok(done) => done.map(|()| Ran::Finished),
            Err(_) => {
                tracing::warn!(
                    queues = ?self.queues,
                    timeout = ?self.shutdown_timeout,
                    "a handler overran the consumer's shutdown timeout: it is dropped and its \
                     delivery goes back to its queue"
                );
                Ok(Ran::Abandoned)
            }
        }
    }

    /// Closes the channel (acks written, every unsettled delivery back to its queue), then
    /// lets a take that was under way finish on the closed channel, so what it took goes back
    /// now too, and closes again for it.
    pub(super) async fn close_gracefully(mut self) -> Result<()> {
        let closed = self.channel.close().await;
        // On a closed channel a consumer stream ends at once, returning what a take under way
        // brought in (the virtual channel restores it when its stream ends).
        let drained = tokio::time::timeout(TAKE_GRACE, async {
            while self.stream.get_mut().next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::debug!(queues = ?self.queues, "a closed consumer's stream did not end");
        }
        closed
    }
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM: what a service stops on. A signal that
/// cannot be listened to is logged; when neither can, this never resolves.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                return;
            }
            Err(error) => tracing::warn!(%error, "cannot listen to SIGTERM"),
        }
    }
    if let Err(error) = tokio::signal::ctrl_c().await {
        tracing::warn!(%error, "cannot listen to SIGINT either: no signal stops this");
        std::future::pending::<()>().await;
    }
}
