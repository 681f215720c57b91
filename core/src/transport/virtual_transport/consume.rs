//! Consuming through the virtual channel: consumer streams (prefetch, round robin over
//! queues, idle spins and waits) and `get`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;

use crate::channel::{ConsumeOptions, Delivery, DeliveryStream};
use crate::error::{Error, Result};
use crate::retry::{Delays, OnRetry, RetryEvent, RetryPolicy};
use crate::transport::virtual_transport::TakeMode;
use crate::transport::virtual_transport::channel::Shared;
use crate::transport::virtual_transport::settle::{InFlight, Pending, restore_all, restore_one};

/// Most messages taken in one backend call when prefetch does not bound it.
const MAX_BATCH: usize = 256;
/// Longest a consumer waits in one backend `wait` before looking again.
const IDLE_WAIT: Duration = Duration::from_secs(1);

impl Shared {
    pub(super) fn consume(
        self: &Arc<Self>,
        queues: &[String],
        options: &ConsumeOptions,
    ) -> Result<DeliveryStream> {
        if queues.is_empty() {
            return Err(Error::config("a consumer needs at least one queue"));
        }
        let consumer_tag = if options.consumer_tag.is_empty() {
            format!(
                "ctag-{}.{}",
                self.id,
                self.next_consumer.fetch_add(1, Ordering::Relaxed)
            )
        } else {
            options.consumer_tag.clone()
        };
        let state = ConsumerState {
            shared: self.clone(),
            queues: queues.to_vec(),
            names: queues.iter().map(|q| Arc::from(q.as_str())).collect(),
            next_queue: 0,
            prefetch: usize::from(options.prefetch),
            // No-ack consumers take with a lease too, and ack as they hand out, so messages
            // taken into the buffer go back if the consumer is dropped.
            lease: options.visibility_timeout.or(self.default_visibility),
            no_ack: options.no_ack,
            consumer_tag: consumer_tag.into(),
            buffer: VecDeque::new(),
            notices: VecDeque::new(),
            inflight: Arc::new(InFlight::default()),
            spins: 0,
            retry: options.retry.clone(),
            on_retry: options.on_retry.clone(),
            failing: None,
            epoch: self.backend.epoch(),
        };
        // Fused: polling the stream again after it ended yields `None`, not a panic.
        Ok(Box::pin(
            futures::stream::unfold(state, |mut state| async move {
                state.next().await.map(|item| (item, state))
            })
            .fuse(),
        ))
    }

    pub(super) async fn get(
        self: &Arc<Self>,
        queue: &str,
        no_ack: bool,
    ) -> Result<Option<Delivery>> {
        // Taken with a lease even for no-ack (acked once handed out, as consumers do), so an
        // unreadable entry is never in neither place on its way to `<queue>.dlq`.
        let mode = TakeMode::Lease(self.default_visibility);
        let name: Arc<str> = Arc::from(queue);
        // Unreadable entries are moved aside (logged, reported only there: `get` returns
        // messages) and the next is taken; the bound only keeps a queue full of them from
        // holding the caller forever.
        for _ in 0..MAX_BATCH {
            let fetched = self.backend.get_many(queue, 1, mode).await?;
            let inflight = Arc::new(InFlight::default());
            let mut out = VecDeque::with_capacity(1);
            // Registered before dead-lettering, so a dead-letter failure cannot strand it.
            self.register(
                &name,
                fetched.taken,
                Some(&inflight),
                self.default_visibility,
                &Arc::from(""),
                &mut out,
            );
            self.dead_letter(fetched.dead).await?;
            let set_aside = !fetched.unreadable.is_empty();
            self.set_aside_unreadable(queue, fetched.unreadable).await?;
            if let Some(mut delivery) = out.pop_front() {
                if no_ack {
                    delivery.ack_for_no_ack().await?;
                }
                return Ok(Some(delivery));
            }
            if !set_aside {
                break;
            }
        }
        Ok(None)
    }
}

/// A consumer's failing run of backend calls.
struct Outage {
    since: tokio::time::Instant,
    delays: Delays,
    attempt: u32,
}

/// One consumer's loop state.
struct ConsumerState {
    shared: Arc<Shared>,
    queues: Vec<String>,
    /// The same names, shared by every pending entry.
    names: Vec<Arc<str>>,
    next_queue: usize,
    prefetch: usize,
    /// Visibility timeout of this consumer's leases.
    lease: Option<Duration>,
    no_ack: bool,
    consumer_tag: Arc<str>,
    /// Taken but not yet handed out; already pending (so a close restores them).
    buffer: VecDeque<Delivery>,
    /// Reports of unreadable entries moved to their dead-letter queue, handed out before the
    /// next delivery.
    notices: VecDeque<Error>,
    inflight: Arc<InFlight>,
    /// Empty looks since the last message.
    spins: u32,
    /// How to wait for the broker after a recoverable failure.
    retry: RetryPolicy,
    /// Sees each of those retries.
    on_retry: Option<OnRetry>,
    /// Since the first failure of the current outage: when it began and the waits left.
    failing: Option<Outage>,
    /// The backend's [`epoch`](crate::transport::virtual_transport::Backend::epoch) when the
    /// buffer was last filled.
    epoch: u64,
}

impl ConsumerState {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        loop {
            if self.shared.closed.load(Ordering::Acquire) {
                self.restore_buffer().await;
                return None;
            }
            if let Some(notice) = self.notices.pop_front() {
                return Some(Err(notice));
            }
            if !self.buffer.is_empty() && self.shared.backend.epoch() != self.epoch {
                // Taken on a connection the backend has since replaced: back to their queues
                // now (not when their leases end), then taken again below.
                self.return_buffer().await;
            }
            if let Some(mut delivery) = self.buffer.pop_front() {
                if self.shared.closed.load(Ordering::Acquire) {
                    // A close raced with the pop: it restored what it found pending; what a
                    // take registered after it goes back now.
                    self.buffer.push_front(delivery);
                    self.restore_buffer().await;
                    return None;
                }
                if self.no_ack
                    && let Err(e) = delivery.ack_for_no_ack().await
                {
                    return Some(Err(e));
                }
                return Some(Ok(delivery));
            }
            let held = self.inflight.count.load(Ordering::Acquire);
            let want = if self.prefetch == 0 {
                MAX_BATCH
            } else if self.no_ack {
                // The window bounds the batch; deliveries are acked as they go out.
                self.prefetch.min(MAX_BATCH)
            } else {
                self.prefetch.saturating_sub(held).min(MAX_BATCH)
            };
            if want == 0 {
                self.wait_for_slot().await;
                continue;
            }
            let epoch = self.shared.backend.epoch();
            let fetched = self.fetch(want).await;
            if !matches!(fetched, Fetch::Lost(_)) {
                // What the buffer holds now was taken on this connection.
                self.epoch = epoch;
            }
            match fetched {
                Fetch::Got(true) => {
                    self.recovered();
                    self.spins = 0;
                    continue;
                }
                Fetch::Got(false) if self.spins < self.shared.idle_spins => {
                    self.spins += 1;
                    tokio::task::yield_now().await;
                }
                Fetch::Got(false) => {
                    // Idle: what this channel acked is written before it waits (ordering
                    // only: a failed ack is reported by the channel's `close`, not here).
                    self.shared.acks.flush().await;
                    let waited = {
                        let closing = self.shared.closing.notified();
                        tokio::pin!(closing);
                        closing.as_mut().enable();
                        if self.shared.closed.load(Ordering::Acquire) {
                            return None;
                        }
                        tokio::select! {
                            waited = self.shared.backend.wait(&self.queues, IDLE_WAIT) => waited,
                            () = &mut closing => return None,
                        }
                    };
                    // An outage ends with a take that got something or a wait that worked: an
                    // empty take between failed waits does not restart the policy's count.
                    match waited {
                        Ok(()) => self.recovered(),
                        Err(e) => {
                            if let Some(e) = self.back_off(e).await {
                                return Some(Err(e));
                            }
                        }
                    }
                }
                Fetch::Lost(e) => {
                    if let Some(e) = self.back_off(e).await {
                        return Some(Err(e));
                    }
                }
                Fetch::Failed(e) => return Some(Err(e)),
            }
        }
    }

    /// After a failed backend call: `Some` (the error, for the stream) when it is not
    /// recoverable or the retry policy gave up; else waits the policy's next delay (or until
    /// the channel closes) and returns `None`, so the loop looks again.
    async fn back_off(&mut self, error: Error) -> Option<Error> {
        if !error.is_recoverable() {
            self.failing = None;
            return Some(error);
        }
        let outage = self.failing.get_or_insert_with(|| Outage {
            since: tokio::time::Instant::now(),
            delays: self.retry.delays(),
            attempt: 0,
        });
        outage.attempt = outage.attempt.saturating_add(1);
        let (since, attempt) = (outage.since, outage.attempt);
        let Some(delay) = outage.delays.next_within(since.elapsed()) else {
            self.failing = None;
            return Some(error.context("the consumer's retry policy gave up"));
        };
        tracing::warn!(
            consumer = %self.consumer_tag,
            attempt,
            ?delay,
            error = %format!("{error:#}"),
            "consumer lost its broker; looking again after a pause"
        );
        if let Some(callback) = &self.on_retry {
            callback.call(&RetryEvent {
                attempt,
                error: &error,
                delay,
            });
        }
        let closing = self.shared.closing.notified();
        tokio::pin!(closing);
        closing.as_mut().enable();
        if !self.shared.closed.load(Ordering::Acquire) {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = &mut closing => {}
            }
        }
        None
    }

    /// A backend call succeeded: ends an outage, if there was one.
    fn recovered(&mut self) {
        if let Some(outage) = self.failing.take() {
            tracing::info!(
                consumer = %self.consumer_tag,
                after = ?outage.since.elapsed(),
                "consumer reached its broker again"
            );
        }
    }

    /// Returns every delivery taken into the buffer and not handed out to its queue, as soon
    /// as the backend can be reached: a recoverable failure is waited out under the retry
    /// policy. What cannot be returned (the policy gave up, another error, the channel
    /// closed meanwhile) is logged and comes back when its lease ends.
    async fn return_buffer(&mut self) {
        let mut pending: VecDeque<(u64, Pending)> = self.take_buffer().into();
        if pending.is_empty() {
            return;
        }
        tracing::info!(
            consumer = %self.consumer_tag,
            count = pending.len(),
            "returning deliveries taken before the broker connection was lost"
        );
        while let Some((_, p)) = pending.front() {
            let error = match restore_one(&*self.shared.backend, p).await {
                Ok(()) => {
                    pending.pop_front();
                    continue;
                }
                Err(error) => error,
            };
            let closed = self.shared.closed.load(Ordering::Acquire);
            if !error.is_recoverable() || closed {
                tracing::warn!(queue = %p.queue, %error, "could not return a delivery taken before the loss; it comes back when its lease ends");
                pending.pop_front();
                continue;
            }
            if let Some(error) = self.back_off(error).await {
                tracing::warn!(
                    consumer = %self.consumer_tag,
                    count = pending.len(),
                    %error,
                    "could not return deliveries taken before the loss; they come back when \
                     their leases end"
                );
                return;
            }
        }
    }

    /// After the channel closed: what a take that was under way brought into the buffer goes
    /// back to its queues now, awaited (the close ran before it was registered; the drop of
    /// this state would restore it only in a task of its own, which a runtime shutting down
    /// may never run).
    async fn restore_buffer(&mut self) {
        let pending = self.take_buffer();
        if !pending.is_empty() {
            restore_all(&*self.shared.backend, pending).await;
        }
    }

    /// Empties the buffer, taking its deliveries' pending entries (newest first) and
    /// freeing their prefetch slots.
    fn take_buffer(&mut self) -> Vec<(u64, Pending)> {
        let mut pending = Vec::new();
        let mut map = self.shared.pending.lock();
        for mut delivery in self.buffer.drain(..).rev() {
            delivery.forget_settlement();
            if let Some(p) = map.remove(&delivery.delivery_tag()) {
                p.inflight.release();
                pending.push((delivery.delivery_tag(), p));
            }
        }
        pending
    }

    /// At the prefetch limit: waits until a delivery is settled, or until one of this
    /// consumer's leases ends (the backend then hands that message out again, so its slot is
    /// freed here; nothing waits forever on a delivery that was dropped or kept too long).
    async fn wait_for_slot(&self) {
        let released = self.inflight.released.notified();
        tokio::pin!(released);
        // Register before re-checking, so a release in between is not missed.
        released.as_mut().enable();
        if self.inflight.count.load(Ordering::Acquire) < self.prefetch {
            return;
        }
        match self.shared.earliest_deadline(&self.inflight) {
            None => released.await,
            Some(deadline) => {
                tokio::select! {
                    () = &mut released => {}
                    () = tokio::time::sleep_until(deadline) => {
                        self.shared
                            .expire_pending(&self.inflight, tokio::time::Instant::now());
                    }
                }
            }
        }
    }

    /// Takes up to `want` messages from the next queue that has some: [`Fetch::Got`], true if
    /// it got any. A failed take is [`Fetch::Lost`] (the consumer waits and takes again); a
    /// failure after it (dead-lettering expired messages, setting aside unreadable ones) is
    /// [`Fetch::Failed`], handed out as the stream's item as before.
    async fn fetch(&mut self, want: usize) -> Fetch {
        let n = self.queues.len();
        let mode = TakeMode::Lease(self.lease);
        for i in 0..n {
            let idx = (self.next_queue + i) % n;
            let fetched = {
                let queue = &self.queues[idx];
                match self.shared.backend.get_many(queue, want, mode).await {
                    Ok(fetched) => fetched,
                    Err(error) => return Fetch::Lost(error),
                }
            };
            let got = !fetched.taken.is_empty() || !fetched.unreadable.is_empty();
            if got {
                self.next_queue = (idx + 1) % n;
            }
            if !fetched.taken.is_empty() {
                // Registered before dead-lettering, so a dead-letter failure cannot strand
                // what was taken.
                self.shared.register(
                    &self.names[idx],
                    fetched.taken,
                    Some(&self.inflight),
                    self.lease,
                    &self.consumer_tag,
                    &mut self.buffer,
                );
            }
            if let Err(error) = self.shared.dead_letter(fetched.dead).await {
                return Fetch::Failed(error);
            }
            let set_aside = self
                .shared
                .set_aside_unreadable(&self.queues[idx], fetched.unreadable)
                .await;
            match set_aside {
                Ok(notices) => self.notices.extend(notices),
                Err(error) => return Fetch::Failed(error),
            }
            if got {
                return Fetch::Got(true);
            }
        }
        Fetch::Got(false)
    }
}

/// What [`ConsumerState::fetch`] did.
enum Fetch {
    /// Took something (true) or found every queue empty (false).
    Got(bool),
    /// The take failed.
    Lost(Error),
    /// The take succeeded and what followed it failed.
    Failed(Error),
}

impl Drop for ConsumerState {
    fn drop(&mut self) {
        // Deliveries taken but never handed out go back to their queues now.
        if self.buffer.is_empty() {
            return;
        }
        let pending = self.take_buffer();
        if pending.is_empty() {
            return;
        }
        let backend = self.shared.backend.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { restore_all(&*backend, pending).await });
        }
    }
}
