//! Acks coalesced by the virtual channel: a settled ack is queued here and written with
//! [`Backend::ack_many`], one call per queue for a whole batch, instead of one broker call per
//! delivery.
//!
//! When a batch is written:
//! - within [`ACK_WINDOW`] of its first ack, by a task spawned then (the time bound);
//! - when it holds [`ACK_BATCH`] acks: the ack that fills it writes it and waits (the size
//!   bound, which also pushes back on a flood of acks);
//! - before the channel counts, purges or deletes a queue, before an idle consumer waits, and
//!   when the channel closes or is dropped.
//!
//! Batches are written by a task of their own, never inside a caller's future: a caller
//! waiting for its acks (a consumer about to wait, `close`) can be dropped or left unpolled
//! (a consumer stream abandoned by a `select!`) without stalling the writes or anyone else
//! waiting for them. If the writer itself is dropped (its runtime shut down), the acks it
//! held go back to the queue and the next ack or flush starts a new writer.
//!
//! A write that fails with a recoverable error is retried under [`ack_retry`] (for up to 30 s,
//! so a broker back within that time gets every ack; a flush waits for the retries). When the retries are exhausted, or the
//! error is not recoverable, the acks are given up, logged at error level: those messages come
//! back when their leases end (at-least-once). A failure belongs to whoever queued the acks
//! (a channel, or a settlement that waits for its own ack) and is reported to it alone: a
//! flush made only for ordering (before a count, a purge, a deletion, an idle wait) never
//! fails.
//!
//! An ack whose lease ends within [`LEASE_MARGIN`] is not queued but written at once, so a
//! message acked in time is not restored because its ack was still waiting here (the backend
//! restores a message whose lease passed). If the process dies with acks queued, those
//! messages come back when their leases end: at-least-once, as when a consumer dies before
//! acking.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::retry::RetryPolicy;
use crate::transport::virtual_transport::{Backend, Receipt};

/// Longest an ack waits in the batch before a background task writes it.
pub(super) const ACK_WINDOW: Duration = Duration::from_millis(1);
/// Acks in a batch at which the next settlement writes it and waits.
pub(super) const ACK_BATCH: usize = 256;
/// An ack of a lease that ends sooner than this is written at once, not queued.
pub(super) const LEASE_MARGIN: Duration = Duration::from_secs(1);
/// How a write that failed with a recoverable error is retried: the default policy (no retry
/// limit, none started more than 30 s after the first try), an outcome-unknown failure
/// included: an ack is idempotent (a receipt already gone is skipped), so writing it twice
/// does no harm.
pub(super) fn ack_retry() -> RetryPolicy {
    RetryPolicy::default().retry_unknown(true)
}

/// Who queued an ack: a channel's id, or a ticket of one waiting settlement.
pub(super) type Owner = u64;

/// One connection's (or one lone channel's) queued acks.
pub(super) struct AckBatch {
    backend: Arc<dyn Backend>,
    state: Mutex<State>,
    /// Woken each time the writer finishes a batch or stops.
    written: Notify,
    /// Tickets of settlements that wait for their own ack (high bit set: never a channel id).
    next_ticket: AtomicU64,
}

/// A queued ack.
struct Entry {
    owner: Owner,
    queue: Arc<str>,
    receipt: Receipt,
}

#[derive(Default)]
struct State {
    /// Settled acks not yet taken by the writer, in settlement order.
    queued: Vec<Entry>,
    /// Acks ever queued.
    pushed: u64,
    /// Acks written (or given up): a flush waits until this reaches what was queued before it.
    done: u64,
    writer: Writer,
    /// Bumped each time a task takes over the writer: a task only ever resets its own.
    epoch: u64,
    /// The last failure of each owner's acks, not yet reported.
    failures: HashMap<Owner, Arc<Error>>,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// No writer task.
    #[default]
    Idle,
    /// A task will start writing after [`ACK_WINDOW`].
    Scheduled,
    /// A task is writing.
    Running,
}

impl std::fmt::Debug for AckBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckBatch")
            .field("queued", &self.state.lock().queued.len())
            .finish_non_exhaustive()
    }
}

impl AckBatch {
    pub(super) fn new(backend: Arc<dyn Backend>) -> Self {
        AckBatch {
            backend,
            state: Mutex::new(State::default()),
            written: Notify::new(),
            next_ticket: AtomicU64::new(1 << 63),
        }
    }

    /// Nothing queued and nothing being written.
    pub(super) fn is_empty(&self) -> bool {
        let state = self.state.lock();
        state.queued.is_empty() && state.done == state.pushed
    }

    /// Whether the batch is full: the next ack must be written with
    /// [`AckBatch::push_and_flush`].
    pub(super) fn is_full(&self) -> bool {
        self.state.lock().queued.len() >= ACK_BATCH
    }

    /// Queues an ack of `owner`; a writer task follows within [`ACK_WINDOW`] (outside a tokio
    /// runtime, the next flush writes it). A failure to write it is reported by
    /// [`flush_owned`](Self::flush_owned) of `owner`.
    pub(super) fn push(self: &Arc<Self>, owner: Owner, queue: Arc<str>, receipt: Receipt) {
        let schedule = {
            let mut state = self.state.lock();
            state.queued.push(Entry {
                owner,
                queue,
                receipt,
            });
            state.pushed += 1;
            (state.writer == Writer::Idle).then(|| {
                state.writer = Writer::Scheduled;
                state.epoch += 1;
                state.epoch
            })
        };
        if let Some(epoch) = schedule
            && !self.spawn_writer(ACK_WINDOW, epoch)
        {
            // No runtime to write later: the next flush starts the writer.
            let mut state = self.state.lock();
            if state.epoch == epoch {
                state.writer = Writer::Idle;
            }
        }
    }

    /// Queues an ack and waits until every queued ack is written. Fails only if this ack was
    /// not written (after its retries): the message comes back when its lease ends, and
    /// settling again queues the ack again.
    pub(super) async fn push_and_flush(
        self: &Arc<Self>,
        queue: Arc<str>,
        receipt: Receipt,
    ) -> Result<()> {
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        // Forgets the ticket's failure if this future is dropped before it is reported.
        let forget = Forget {
            batch: self,
            owner: ticket,
        };
        {
            let mut state = self.state.lock();
            state.queued.push(Entry {
                owner: ticket,
                queue,
                receipt,
            });
            state.pushed += 1;
        }
        let result = self.flush_owned(ticket).await;
        drop(forget);
        result
    }

    /// Waits until every ack queued before the call is written or given up. For ordering
    /// only: it never fails (failures are logged, and reported to their owners).
    pub(super) async fn flush(self: &Arc<Self>) {
        let target = self.state.lock().pushed;
        loop {
            let written = self.written.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            let start = {
                let mut state = self.state.lock();
                if state.done >= target {
                    return;
                }
                (state.writer != Writer::Running).then(|| {
                    state.writer = Writer::Running;
                    state.epoch += 1;
                    state.epoch
                })
            };
            if let Some(epoch) = start
                && !self.spawn_writer(Duration::ZERO, epoch)
            {
                // No tokio runtime to run a writer task: write here.
                self.write_all(epoch).await;
                continue;
            }
            written.await;
        }
    }

    /// [`flush`](Self::flush), then reports (and forgets) the failure of `owner`'s acks, if
    /// any were given up since its last report.
    pub(super) async fn flush_owned(self: &Arc<Self>, owner: Owner) -> Result<()> {
        self.flush().await;
        match self.state.lock().failures.remove(&owner) {
            None => Ok(()),
            Some(error) => Err(not_written(error)),
        }
    }

    /// [`flush`](Self::flush), then reports (and forgets) any failure not reported yet (the
    /// connection closing: its channels' failures included).
    pub(super) async fn flush_all(self: &Arc<Self>) -> Result<()> {
        self.flush().await;
        let failures = std::mem::take(&mut self.state.lock().failures);
        match failures.into_values().next() {
            None => Ok(()),
            Some(error) => Err(not_written(error)),
        }
    }

    /// Forgets the unreported failure of `owner` (a channel dropped: it was logged).
    pub(super) fn forget(&self, owner: Owner) {
        self.state.lock().failures.remove(&owner);
    }

    /// Starts a writer task (of `epoch`) after `delay`; false outside a tokio runtime. A
    /// scheduled task that finds another writer has taken over (a flush started one) leaves.
    fn spawn_writer(self: &Arc<Self>, delay: Duration, epoch: u64) -> bool {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let batch = self.clone();
        handle.spawn(async move {
            if !delay.is_zero() {
                let _guard = Stop {
                    batch: &batch,
                    epoch,
                    held: Vec::new(),
                };
                tokio::time::sleep(delay).await;
                let mut state = batch.state.lock();
                if state.writer != Writer::Scheduled || state.epoch != epoch {
                    return;
                }
                state.writer = Writer::Running;
                drop(state);
                // Taken over by `write_all`'s own guard (this one holds nothing).
                std::mem::forget(_guard);
            }
            batch.write_all(epoch).await;
        });
        true
    }

    /// The writer: writes batch after batch, one [`Backend::ack_many`] per queue (retried
    /// under [`ack_retry`] while it fails recoverably), until none is queued.
    async fn write_all(&self, epoch: u64) {
        // Dropped mid-write (the runtime shut down): the acks in hand go back to the queue
        // and the writer is free again.
        let mut stop = Stop {
            batch: self,
            epoch,
            held: Vec::new(),
        };
        loop {
            let upto = {
                let mut state = self.state.lock();
                if state.epoch != epoch {
                    // Another writer took over after this one was given up for stopped.
                    return;
                }
                if state.queued.is_empty() {
                    state.writer = Writer::Idle;
                    state.done = state.pushed;
                    drop(state);
                    self.written.notify_waiters();
                    return;
                }
                stop.held = per_queue(std::mem::take(&mut state.queued));
                state.pushed
            };
            while let Some(group) = stop.held.first() {
                let outcome = self.write_group(group).await;
                let group = stop.held.remove(0);
                if let Err(error) = outcome {
                    let error = Arc::new(error);
                    let mut state = self.state.lock();
                    for owner in group.owners {
                        state.failures.insert(owner, error.clone());
                    }
                }
            }
            self.state.lock().done = upto;
            self.written.notify_waiters();
        }
    }

    /// One queue's acks, retried while the failure is recoverable; the error once given up
    /// (logged).
    async fn write_group(&self, group: &Group) -> Result<()> {
        let policy = ack_retry();
        let started = tokio::time::Instant::now();
        let mut delays = policy.delays();
        loop {
            let error = match self.backend.ack_many(&group.queue, &group.receipts).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            let delay = if policy.retries(&error) {
                delays.next_within(started.elapsed())
            } else {
                None
            };
            match delay {
                Some(delay) if tokio::runtime::Handle::try_current().is_ok() => {
                    tracing::warn!(
                        queue = %group.queue,
                        count = group.receipts.len(),
                        %error,
                        "acks not written; retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
                _ => {
                    tracing::error!(
                        queue = %group.queue,
                        count = group.receipts.len(),
                        %error,
                        "acks not written, given up; those messages come back when their \
                         leases end"
                    );
                    return Err(error);
                }
            }
        }
    }
}

/// The error reported to an owner whose acks were given up; `source` is the backend's error.
fn not_written(error: Arc<Error>) -> Error {
    Error::new(
        error.kind(),
        format!("acks not written ({error}); those messages come back when their leases end"),
    )
    .with_source(error)
}

/// One queue's acks of a batch and who queued them.
#[derive(Debug, PartialEq)]
struct Group {
    queue: Arc<str>,
    receipts: Vec<Receipt>,
    /// The receipt's owner, one per receipt.
    owners: Vec<Owner>,
}

/// Groups acks by queue, queues in the order of their first ack, receipts in settlement order.
fn per_queue(queued: Vec<Entry>) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for entry in queued {
        let group = match groups.iter_mut().position(|g| g.queue == entry.queue) {
            Some(at) => &mut groups[at],
            None => {
                groups.push(Group {
                    queue: entry.queue,
                    receipts: Vec::new(),
                    owners: Vec::new(),
                });
                // Just pushed: never empty.
                let last = groups.len() - 1;
                &mut groups[last]
            }
        };
        group.receipts.push(entry.receipt);
        group.owners.push(entry.owner);
    }
    groups
}

/// Frees the writer of `epoch` if it is dropped before it finishes (its runtime shut down),
/// putting the acks it still held back in the queue.
struct Stop<'a> {
    batch: &'a AckBatch,
    epoch: u64,
    held: Vec<Group>,
}

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        let mut state = self.batch.state.lock();
        if state.epoch != self.epoch || state.writer == Writer::Idle {
            return;
        }
        state.writer = Writer::Idle;
        let mut back: Vec<Entry> = Vec::new();
        for group in self.held.drain(..) {
            let queue = group.queue;
            for (receipt, owner) in group.receipts.into_iter().zip(group.owners) {
                back.push(Entry {
                    owner,
                    queue: queue.clone(),
                    receipt,
                });
            }
        }
        back.append(&mut state.queued);
        state.queued = back;
        drop(state);
        self.batch.written.notify_waiters();
    }
}

/// Forgets a settlement's ticket when its wait ends, reported or not.
struct Forget<'a> {
    batch: &'a AckBatch,
    owner: Owner,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.batch.forget(self.owner);
    }
}
#[cfg(test)]
mod tests;
