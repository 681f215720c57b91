//! One route's loop: its consumer, its bound, the attempts in flight, the dead letters they
//! hand back, and its part of a graceful stop.

use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use kombu_core::{ConsumeError, Consumer, Delivery, ErrorAction, Handled};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::attempt::{DeadLetter, Settings, Start};
use super::control::{Count, WorkerHandle};
use super::handler::{Runner, Running};

/// One route at run time.
pub(crate) struct Lane {
    pub(crate) queue: String,
    pub(crate) consumer: Consumer,
    pub(crate) runner: Box<dyn Runner>,
    pub(crate) settings: Arc<Settings>,
    /// The route's bound: handlers running at once.
    pub(crate) concurrency: usize,
    /// The worker's bound, shared by the lanes, where it bounds more than theirs do.
    pub(crate) worker_permits: Option<Arc<Semaphore>>,
    pub(crate) error_action: ErrorAction,
    pub(crate) handle: WorkerHandle,
    pub(crate) shutdown_timeout: Duration,
}

/// The attempts in flight, polled by the lane itself (no task per message: a spawn and a
/// cross-thread wake per message cost more than a no-op handler). A handler with CPU-heavy
/// work spawns it (`tokio::task::spawn_blocking`) to use more cores.
type Attempts = FuturesUnordered<Running>;

/// What woke the loop.
enum Event {
    Stop,
    Reaped(Option<DeadLetter>),
    Item(Option<Result<Delivery, ConsumeError>>),
}

/// Returns once `stop` says stopped (never, should its sender be gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    if stop.wait_for(|stopped| *stopped).await.is_err() {
        std::future::pending::<()>().await;
    }
}

type Stopping<'a> = Pin<&'a mut (dyn Future<Output = ()> + Send)>;

impl Lane {
    /// Takes and handles messages until the worker stops or the consumer fails, then winds
    /// down: the attempts in flight get the shutdown timeout, the dead letters they hand back
    /// are settled, and the consumer is closed (its prefetched messages go back to the
    /// queue).
    pub(crate) async fn run(mut self) -> kombu_core::Result<()> {
        let mut tasks = Attempts::new();
        let outcome = {
            let stopping = pin!(stopped(self.handle.stop.subscribe()));
            self.take(&mut tasks, stopping).await
        };
        if outcome.is_err() {
            // The other lanes stop too: the worker returns this error.
            self.handle.stop();
        }
        self.wind_down(&mut tasks).await;
        let closed = self.consumer.close().await;
        outcome.and(closed)
    }

    /// The loop: one wake-up looks at the stop flag, polls the attempts, and (while the
    /// route has room) the consumer, in that order; a lane about to wait also waits for a
    /// stop.
    async fn take(
        &mut self,
        tasks: &mut Attempts,
        mut stopping: Stopping<'_>,
    ) -> kombu_core::Result<()> {
        loop {
            let event = poll_fn(|cx| {
                if self.handle.is_stopped() {
                    return Poll::Ready(Event::Stop);
                }
                if let Poll::Ready(Some(out)) = tasks.poll_next_unpin(cx) {
                    return Poll::Ready(Event::Reaped(out));
                }
                // An attempt polled just now may have made room.
                if self.settings.running() < self.concurrency
                    && let Poll::Ready(item) = self.consumer.poll_next_unpin(cx)
                {
                    return Poll::Ready(Event::Item(item));
                }
                // Only a lane about to wait needs waking by a stop.
                match stopping.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Event::Stop),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            match event {
                Event::Stop => return Ok(()),
                Event::Reaped(None) => {}
                Event::Reaped(Some(dead)) => self.dead_letter(dead).await,
                Event::Item(None) => {
                    tracing::warn!(queue = %self.queue, "the consumer's stream ended");
                    return Ok(());
                }
                Event::Item(Some(Err(refused))) => self.refused(refused).await?,
                Event::Item(Some(Ok(delivery))) => {
                    let worker_permit = match self.worker_permits.clone() {
                        None => None,
                        Some(permits) => {
                            match self.worker_permit(permits, tasks, stopping.as_mut()).await {
                                // The delivery is dropped: back to its queue.
                                None => return Ok(()),
                                some => some,
                            }
                        }
                    };
                    self.start(delivery, worker_permit, tasks).await?;
                }
            }
        }
    }

    /// Waits for a place among the worker's handlers (this lane's own attempts may hold
    /// them, so they go on meanwhile); `None` once the worker stops.
    async fn worker_permit(
        &mut self,
        permits: Arc<Semaphore>,
        tasks: &mut Attempts,
        mut stopping: Stopping<'_>,
    ) -> Option<OwnedSemaphorePermit> {
        loop {
            if let Ok(permit) = permits.clone().try_acquire_owned() {
                return Some(permit);
            }
            tokio::select! {
                biased;
                () = stopping.as_mut() => return None,
                Some(out) = tasks.next(), if !tasks.is_empty() => {
                    if let Some(dead) = out {
                        self.dead_letter(dead).await;
                    }
                }
                Ok(permit) = permits.clone().acquire_owned() => return Some(permit),
            }
        }
    }

    /// Starts the attempt at `delivery` and polls it once here: a handler that finishes at
    /// once is settled without joining the attempts in flight.
    async fn start(
        &mut self,
        delivery: Delivery,
        worker_permit: Option<OwnedSemaphorePermit>,
        tasks: &mut Attempts,
    ) -> kombu_core::Result<()> {
        let start = Start {
            settings: self.settings.clone(),
            worker_permit,
            span: self.consumer.process_span(&delivery),
        };
        match self.runner.start(delivery, start) {
            Ok(mut attempt) => match futures::poll!(attempt.as_mut()) {
                Poll::Ready(None) => {}
                Poll::Ready(Some(dead)) => self.dead_letter(dead).await,
                Poll::Pending => tasks.push(attempt),
            },
            Err((delivery, error)) => {
                let refused = ConsumeError {
                    error,
                    delivery: Some(delivery),
                };
                self.refused(refused).await?;
            }
        }
        Ok(())
    }

    /// Lets the attempts in flight finish within the shutdown timeout (past it they are
    /// dropped, and their deliveries go back to the queue), settling the dead letters they
    /// hand back.
    async fn wind_down(&mut self, tasks: &mut Attempts) {
        let now = tokio::time::Instant::now();
        // A timeout too far to add waits as long as it takes (thirty years).
        let deadline = now
            .checked_add(self.shutdown_timeout)
            .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400));
        while !tasks.is_empty() {
            tokio::select! {
                biased;
                Some(out) = tasks.next() => {
                    if let Some(dead) = out {
                        self.dead_letter(dead).await;
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(
                        queue = %self.queue,
                        running = tasks.len(),
                        timeout = ?self.shutdown_timeout,
                        "handlers overran the worker's shutdown timeout: they are dropped and \
                         their messages go back to the queue"
                    );
                    tasks.clear();
                }
            }
        }
    }

    /// Dead-letters what an attempt handed back, through the consumer's dead-letter path. A
    /// failure leaves the message in its queue (the delivery is dropped unsettled).
    async fn dead_letter(&mut self, DeadLetter(delivery, reason): DeadLetter) {
        match self.consumer.dead_letter(delivery, reason).await {
            Ok(_) => self.settings.counters.add(Count::DeadLettered),
            Err(error) => tracing::error!(
                queue = %self.queue,
                error = %format_args!("{error:#}"),
                "could not dead-letter a message: it stays in its queue"
            ),
        }
    }

    /// A refused delivery (not accepted, or not decoded into the handler's type), or an entry
    /// the transport moved aside: the consumer's policy. Returned as the worker's error: a
    /// broker error the consumer gave up on, and a refused message under
    /// [`ErrorAction::Stop`] (which stays in its queue).
    async fn refused(&mut self, refused: ConsumeError) -> kombu_core::Result<()> {
        let with_delivery = refused.delivery.is_some();
        match self.consumer.handle(refused).await {
            Ok(Handled::DeadLettered(_)) => self.settings.counters.add(Count::DeadLettered),
            Ok(Handled::Requeued { .. }) => self.settings.counters.add(Count::Requeued),
            Ok(_) => {}
            Err(error) if with_delivery && self.error_action != ErrorAction::Stop => {
                tracing::error!(
                    queue = %self.queue,
                    error = %format_args!("{error:#}"),
                    "could not settle a refused message: it stays in its queue"
                );
            }
            Err(error) => return Err(error.context(format!("consuming queue {:?}", self.queue))),
        }
        Ok(())
    }
}
