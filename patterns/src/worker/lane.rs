//! One route's loop: its consumer, its bound, the tasks of its attempts, what they hand back
//! (dead letters), and its part of a graceful stop.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use kombu_core::{ConsumeError, Consumer, Delivery, Handled};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use super::attempt::{self, Settings, ToLane};
use super::control::{Count, WorkerHandle};
use super::handler::Runner;
use super::job::JobContext;

/// One route at run time.
pub(crate) struct Lane {
    pub(crate) queue: String,
    pub(crate) consumer: Consumer,
    pub(crate) runner: Box<dyn Runner>,
    pub(crate) settings: Arc<Settings>,
    /// The route's bound.
    pub(crate) permits: Arc<Semaphore>,
    /// The worker's bound, shared by every lane.
    pub(crate) worker_permits: Arc<Semaphore>,
    pub(crate) from_tasks: mpsc::UnboundedReceiver<ToLane>,
    pub(crate) handle: WorkerHandle,
    pub(crate) shutdown_timeout: Duration,
}

/// The attempts in flight, polled by the lane itself (no task per message: a spawn and a
/// cross-thread wake per message cost more than a no-op handler). A handler with CPU-heavy
/// work spawns it (`tokio::task::spawn_blocking`) to use more cores.
type Attempts = FuturesUnordered<BoxFuture<'static, ()>>;

/// What woke the loop.
enum Event {
    Stop,
    FromTask(ToLane),
    Reaped,
    Permit(OwnedSemaphorePermit),
    Item(Option<Result<Delivery, ConsumeError>>),
}

/// Returns once `stop` says stopped (never, should its sender be gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|stopped| *stopped).await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl Lane {
    /// Takes and handles messages until the worker stops or the consumer fails, then winds
    /// down: the attempts in flight get the shutdown timeout, what they hand back is settled,
    /// and the consumer is closed (its prefetched messages go back to the queue).
    pub(crate) async fn run(mut self) -> kombu_core::Result<()> {
        let mut tasks = Attempts::new();
        let mut stop = self.handle.stop.subscribe();
        let outcome = self.take(&mut tasks, &mut stop).await;
        if outcome.is_err() {
            // The other lanes stop too: the worker returns this error.
            self.handle.stop();
        }
        self.wind_down(&mut tasks).await;
        let closed = self.consumer.close().await;
        outcome.and(closed)
    }

    async fn take(
        &mut self,
        tasks: &mut Attempts,
        stop: &mut watch::Receiver<bool>,
    ) -> kombu_core::Result<()> {
        let mut permit: Option<OwnedSemaphorePermit> = None;
        loop {
            if permit.is_none() {
                permit = self.permits.clone().try_acquire_owned().ok();
            }
            let event = match permit.is_some() {
                true => tokio::select! {
                    biased;
                    () = stopped(stop) => Event::Stop,
                    Some(message) = self.from_tasks.recv() => Event::FromTask(message),
                    Some(()) = tasks.next(), if !tasks.is_empty() => Event::Reaped,
                    item = self.consumer.next() => Event::Item(item),
                },
                false => tokio::select! {
                    biased;
                    () = stopped(stop) => Event::Stop,
                    Some(message) = self.from_tasks.recv() => Event::FromTask(message),
                    Some(()) = tasks.next(), if !tasks.is_empty() => Event::Reaped,
                    Ok(p) = self.permits.clone().acquire_owned() => Event::Permit(p),
                },
            };
            match event {
                Event::Stop => return Ok(()),
                Event::FromTask(message) => self.settle_handed_back(message).await,
                Event::Reaped => {}
                Event::Permit(p) => permit = Some(p),
                Event::Item(None) => {
                    tracing::warn!(queue = %self.queue, "the consumer's stream ended");
                    return Ok(());
                }
                Event::Item(Some(Err(refused))) => self.refused(refused).await?,
                Event::Item(Some(Ok(delivery))) => {
                    let worker_permit = loop {
                        if let Ok(p) = self.worker_permits.clone().try_acquire_owned() {
                            break p;
                        }
                        tokio::select! {
                            biased;
                            // The delivery is dropped: back to its queue.
                            () = stopped(stop) => return Ok(()),
                            // This lane's own attempts may hold the worker's permits.
                            Some(()) = tasks.next(), if !tasks.is_empty() => {}
                            Ok(p) = self.worker_permits.clone().acquire_owned() => break p,
                        }
                    };
                    let Some(route_permit) = permit.take() else {
                        continue; // never: a delivery is only taken with a permit
                    };
                    let context = JobContext::shared(Arc::new(delivery));
                    let work = self.runner.start(context.clone());
                    tasks.push(Box::pin(attempt::run(
                        self.settings.clone(),
                        work,
                        context,
                        (route_permit, worker_permit),
                    )));
                }
            }
        }
    }

    /// Lets the attempts in flight finish within the shutdown timeout (past it they are
    /// dropped, and their deliveries go back to the queue), settling what they hand back.
    async fn wind_down(&mut self, tasks: &mut Attempts) {
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        while !tasks.is_empty() {
            tokio::select! {
                biased;
                Some(message) = self.from_tasks.recv() => self.settle_handed_back(message).await,
                Some(()) = tasks.next() => {}
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
        while let Ok(message) = self.from_tasks.try_recv() {
            self.settle_handed_back(message).await;
        }
    }

    /// Settles what a task handed back, through the consumer's dead-letter path and error
    /// policy. A failure leaves the message in its queue (the delivery is dropped unsettled).
    async fn settle_handed_back(&mut self, message: ToLane) {
        let counters = &self.settings.counters;
        let done = match message {
            ToLane::DeadLetter(delivery, reason) => self
                .consumer
                .dead_letter(delivery, reason)
                .await
                .map(Handled::DeadLettered),
            ToLane::Refused(delivery, error) => {
                self.consumer
                    .handle(ConsumeError {
                        error,
                        delivery: Some(delivery),
                    })
                    .await
            }
        };
        match done {
            Ok(Handled::DeadLettered(_)) => counters.add(Count::DeadLettered),
            Ok(Handled::Requeued { .. }) => counters.add(Count::Requeued),
            Ok(_) => {}
            Err(error) => tracing::error!(
                queue = %self.queue,
                error = %format_args!("{error:#}"),
                "could not dead-letter or requeue a message: it stays in its queue"
            ),
        }
    }

    /// A refused delivery (not accepted), or an entry the transport moved aside: the
    /// consumer's policy. A broker error the consumer gave up on is returned.
    async fn refused(&mut self, refused: ConsumeError) -> kombu_core::Result<()> {
        let with_delivery = refused.delivery.is_some();
        match self.consumer.handle(refused).await {
            Ok(Handled::DeadLettered(_)) => self.settings.counters.add(Count::DeadLettered),
            Ok(Handled::Requeued { .. }) => self.settings.counters.add(Count::Requeued),
            Ok(_) => {}
            Err(error) if with_delivery => tracing::error!(
                queue = %self.queue,
                error = %format_args!("{error:#}"),
                "could not settle a refused message: it stays in its queue"
            ),
            Err(error) => return Err(error.context(format!("consuming queue {:?}", self.queue))),
        }
        Ok(())
    }
}
