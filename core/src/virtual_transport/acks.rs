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
//! An ack whose lease ends within [`LEASE_MARGIN`] is not queued but written at once, so a
//! message acked in time is never restored because its ack was still waiting here (the
//! backend restores a message whose lease passed). If the process dies with acks queued,
//! those messages come back when their leases end: at-least-once, as when a consumer dies
//! before acking.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::error::Result;
use crate::virtual_transport::{Backend, Receipt};

/// Longest an ack waits in the batch before a background task writes it.
pub(super) const ACK_WINDOW: Duration = Duration::from_millis(1);
/// Acks in a batch at which the next settlement writes it and waits.
pub(super) const ACK_BATCH: usize = 256;
/// An ack of a lease that ends sooner than this is written at once, not queued.
pub(super) const LEASE_MARGIN: Duration = Duration::from_secs(1);

/// One channel's queued acks.
pub(super) struct AckBatch {
    backend: Arc<dyn Backend>,
    /// Settled acks not yet written, in settlement order.
    queued: Mutex<Vec<(Arc<str>, Receipt)>>,
    /// One writer at a time, so a flush returns only once everything queued before it is
    /// written (by it or by the writer it waited for).
    writing: tokio::sync::Mutex<()>,
    /// A background write is scheduled.
    scheduled: AtomicBool,
}

impl std::fmt::Debug for AckBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckBatch")
            .field("queued", &self.queued.lock().len())
            .finish_non_exhaustive()
    }
}

impl AckBatch {
    pub(super) fn new(backend: Arc<dyn Backend>) -> Self {
        AckBatch {
            backend,
            queued: Mutex::new(Vec::new()),
            writing: tokio::sync::Mutex::new(()),
            scheduled: AtomicBool::new(false),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queued.lock().is_empty()
    }

    /// Whether the batch is full: the next ack must be written with [`AckBatch::push_and_flush`].
    pub(super) fn is_full(&self) -> bool {
        self.queued.lock().len() >= ACK_BATCH
    }

    /// Queues an ack and makes sure a background write follows within [`ACK_WINDOW`]. False
    /// (and nothing queued) outside a tokio runtime, where nothing could write it later.
    pub(super) fn push(self: &Arc<Self>, queue: Arc<str>, receipt: Receipt) -> bool {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        self.queued.lock().push((queue, receipt));
        if !self.scheduled.swap(true, Ordering::AcqRel) {
            let batch = self.clone();
            handle.spawn(async move {
                tokio::time::sleep(ACK_WINDOW).await;
                // Cleared before the write takes the batch: an ack queued after this point
                // schedules another write, one queued before is in this one.
                batch.scheduled.store(false, Ordering::Release);
                // Logged by `flush`; nobody to hand the error to.
                let _ = batch.flush().await;
            });
        }
        true
    }

    /// Queues an ack and writes the whole batch now. On `Err` the batch, this ack included,
    /// is dropped (logged): retrying the settlement queues the ack again.
    pub(super) async fn push_and_flush(&self, queue: Arc<str>, receipt: Receipt) -> Result<()> {
        self.queued.lock().push((queue, receipt));
        self.flush().await
    }

    /// Writes every queued ack, one [`Backend::ack_many`] per queue. A failed write is logged
    /// and its acks dropped (those messages come back when their leases end); the first
    /// error is returned once everything else is written.
    pub(super) async fn flush(&self) -> Result<()> {
        // Taken even with nothing queued: a write in progress must end before this returns.
        let _turn = self.writing.lock().await;
        let mut failed = None;
        loop {
            let queued = std::mem::take(&mut *self.queued.lock());
            if queued.is_empty() {
                return failed.map_or(Ok(()), Err);
            }
            for (queue, receipts) in per_queue(queued) {
                if let Err(error) = self.backend.ack_many(&queue, &receipts).await {
                    tracing::warn!(
                        %queue,
                        count = receipts.len(),
                        %error,
                        "acks not written; those messages come back when their leases end"
                    );
                    failed.get_or_insert(error);
                }
            }
        }
    }
}

/// Groups acks by queue, queues in the order of their first ack, receipts in settlement order.
fn per_queue(queued: Vec<(Arc<str>, Receipt)>) -> Vec<(Arc<str>, Vec<Receipt>)> {
    let mut groups: Vec<(Arc<str>, Vec<Receipt>)> = Vec::new();
    for (queue, receipt) in queued {
        match groups.iter_mut().find(|(q, _)| *q == queue) {
            Some((_, receipts)) => receipts.push(receipt),
            None => groups.push((queue, vec![receipt])),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_are_grouped_per_queue_in_order() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let groups = per_queue(vec![
            (a.clone(), Receipt::Id(1)),
            (b.clone(), Receipt::Id(2)),
            (a.clone(), Receipt::Id(3)),
        ]);
        assert_eq!(
            groups,
            vec![
                (a, vec![Receipt::Id(1), Receipt::Id(3)]),
                (b, vec![Receipt::Id(2)])
            ]
        );
    }
}
