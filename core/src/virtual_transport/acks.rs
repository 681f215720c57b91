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
//! waiting for them.
//!
//! An ack whose lease ends within [`LEASE_MARGIN`] is not queued but written at once, so a
//! message acked in time is never restored because its ack was still waiting here (the
//! backend restores a message whose lease passed). If the process dies with acks queued,
//! those messages come back when their leases end: at-least-once, as when a consumer dies
//! before acking.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::error::{Error, ErrorKind, Result};
use crate::virtual_transport::{Backend, Receipt};

/// Longest an ack waits in the batch before a background task writes it.
pub(super) const ACK_WINDOW: Duration = Duration::from_millis(1);
/// Acks in a batch at which the next settlement writes it and waits.
pub(super) const ACK_BATCH: usize = 256;
/// An ack of a lease that ends sooner than this is written at once, not queued.
pub(super) const LEASE_MARGIN: Duration = Duration::from_secs(1);

/// One connection's (or one lone channel's) queued acks.
pub(super) struct AckBatch {
    backend: Arc<dyn Backend>,
    state: Mutex<State>,
    /// Woken each time the writer finishes a batch.
    written: Notify,
}

#[derive(Default)]
struct State {
    /// Settled acks not yet taken by the writer, in settlement order.
    queued: Vec<(Arc<str>, Receipt)>,
    /// Acks ever queued.
    pushed: u64,
    /// Acks written (or failed): a flush waits until this reaches what was queued before it.
    done: u64,
    writer: Writer,
    /// Batches that failed, and what the last one failed with.
    failures: u64,
    last_failure: Option<(ErrorKind, String)>,
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

    /// Queues an ack; a writer task follows within [`ACK_WINDOW`] (outside a tokio runtime,
    /// the next flush writes it).
    pub(super) fn push(self: &Arc<Self>, queue: Arc<str>, receipt: Receipt) {
        let schedule = {
            let mut state = self.state.lock();
            state.queued.push((queue, receipt));
            state.pushed += 1;
            let idle = state.writer == Writer::Idle;
            if idle {
                state.writer = Writer::Scheduled;
            }
            idle
        };
        if schedule && !self.spawn_writer(ACK_WINDOW) {
            // No runtime to write later: the next flush starts the writer.
            self.state.lock().writer = Writer::Idle;
        }
    }

    /// Queues an ack and waits until every queued ack is written. On `Err` the acks of the
    /// failed batch, this one included, are dropped (logged): retrying the settlement queues
    /// the ack again.
    pub(super) async fn push_and_flush(
        self: &Arc<Self>,
        queue: Arc<str>,
        receipt: Receipt,
    ) -> Result<()> {
        {
            let mut state = self.state.lock();
            state.queued.push((queue, receipt));
            state.pushed += 1;
        }
        self.flush().await
    }

    /// Waits until every ack queued before the call is written, starting the writer at once
    /// if it only waits for its window. Fails if a batch failed meanwhile (its acks are
    /// dropped: those messages come back when their leases end).
    pub(super) async fn flush(self: &Arc<Self>) -> Result<()> {
        let (target, failures, start) = {
            let mut state = self.state.lock();
            if state.done >= state.pushed {
                return Ok(());
            }
            let start = state.writer != Writer::Running;
            if start {
                state.writer = Writer::Running;
            }
            (state.pushed, state.failures, start)
        };
        if start && !self.spawn_writer(Duration::ZERO) {
            // No tokio runtime to run a writer task: write here.
            self.write_all().await;
        }
        loop {
            let written = self.written.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            {
                let state = self.state.lock();
                if state.done >= target {
                    if state.failures == failures {
                        return Ok(());
                    }
                    let (kind, message) = state
                        .last_failure
                        .clone()
                        .unwrap_or((ErrorKind::Broker, String::new()));
                    return Err(Error::new(
                        kind,
                        format!(
                            "acks not written ({message}); those messages come back when \
                             their leases end"
                        ),
                    ));
                }
            }
            written.await;
        }
    }

    /// Starts a writer task after `delay`; false outside a tokio runtime. A scheduled task
    /// that finds the writer already running (a flush started one) leaves.
    fn spawn_writer(self: &Arc<Self>, delay: Duration) -> bool {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let batch = self.clone();
        handle.spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
                let mut state = batch.state.lock();
                if state.writer != Writer::Scheduled {
                    return;
                }
                state.writer = Writer::Running;
            }
            batch.write_all().await;
        });
        true
    }

    /// The writer: writes batch after batch, one [`Backend::ack_many`] per queue, until none
    /// is queued.
    async fn write_all(&self) {
        loop {
            let (queued, upto) = {
                let mut state = self.state.lock();
                if state.queued.is_empty() {
                    state.writer = Writer::Idle;
                    state.done = state.pushed;
                    drop(state);
                    self.written.notify_waiters();
                    return;
                }
                (std::mem::take(&mut state.queued), state.pushed)
            };
            let mut failed = None;
            for (queue, receipts) in per_queue(queued) {
                if let Err(error) = self.backend.ack_many(&queue, &receipts).await {
                    tracing::warn!(
                        %queue,
                        count = receipts.len(),
                        %error,
                        "acks not written; those messages come back when their leases end"
                    );
                    failed = Some((error.kind(), error.to_string()));
                }
            }
            {
                let mut state = self.state.lock();
                state.done = upto;
                if let Some(failure) = failed {
                    state.failures += 1;
                    state.last_failure = Some(failure);
                }
            }
            self.written.notify_waiters();
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
    use std::time::Duration;

    use async_trait::async_trait;
    use futures::StreamExt;

    use super::*;
    use crate::channel::{Channel, ConsumeOptions, Outgoing};
    use crate::entity::{Exchange, Queue};
    use crate::memory::MemoryBackend;
    use crate::virtual_transport::{
        BackendCapabilities, BindingRow, DeadLetter, Envelope, Fetched, StoredQueue, TakeMode,
        VirtualChannel,
    };

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

    /// The memory backend with acks that take a while to write.
    #[derive(Debug, Default)]
    struct SlowAcks(MemoryBackend);

    #[async_trait]
    impl Backend for SlowAcks {
        fn capabilities(&self) -> BackendCapabilities {
            self.0.capabilities()
        }
        async fn exchange(&self, n: &str, d: Option<&Exchange>) -> Result<Option<Exchange>> {
            self.0.exchange(n, d).await
        }
        async fn delete_exchange(&self, n: &str) -> Result<()> {
            self.0.delete_exchange(n).await
        }
        async fn queue(&self, n: &str, d: Option<&Queue>) -> Result<Option<StoredQueue>> {
            self.0.queue(n, d).await
        }
        async fn delete_queue(&self, n: &str) -> Result<u64> {
            self.0.delete_queue(n).await
        }
        async fn bind(&self, r: &BindingRow) -> Result<()> {
            self.0.bind(r).await
        }
        async fn unbind(&self, r: &BindingRow) -> Result<()> {
            self.0.unbind(r).await
        }
        async fn bindings(&self, e: &str) -> Result<Arc<[BindingRow]>> {
            self.0.bindings(e).await
        }
        async fn put_many(&self, i: Vec<(String, Envelope)>) -> Result<Vec<DeadLetter>> {
            self.0.put_many(i).await
        }
        async fn get_many(&self, q: &str, m: usize, t: TakeMode) -> Result<Fetched> {
            self.0.get_many(q, m, t).await
        }
        async fn ack_many(&self, q: &str, r: &[Receipt]) -> Result<()> {
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.0.ack_many(q, r).await
        }
        async fn reject(&self, q: &str, r: &Receipt, requeue: bool) -> Result<Option<DeadLetter>> {
            self.0.reject(q, r, requeue).await
        }
    }

    /// A consumer stream left unpolled while it waits for its channel's acks to be written
    /// (a `select!` dropped its `next()`) holds nothing that `close` waits for.
    #[tokio::test]
    async fn an_abandoned_stream_does_not_stall_close() {
        let channel = VirtualChannel::new(Arc::new(SlowAcks::default()), None);
        channel.declare_queue(&Queue::new("q")).await.unwrap();
        let outgoing = Outgoing::new("", "q", crate::Message::new("m"));
        channel.publish(outgoing).await.unwrap();
        let mut stream = channel
            .consume(&["q".into()], &ConsumeOptions::default())
            .await
            .unwrap();
        let delivery = stream.next().await.unwrap().unwrap();
        delivery.ack().await.unwrap();
        // Idle: the stream waits for the ack's write, and is then abandoned.
        let idle = tokio::time::timeout(Duration::from_millis(20), stream.next()).await;
        assert!(idle.is_err(), "nothing more to deliver");
        let closed = tokio::time::timeout(Duration::from_secs(5), channel.close()).await;
        assert!(matches!(closed, Ok(Ok(()))), "close stalled: {closed:?}");
    }
}
