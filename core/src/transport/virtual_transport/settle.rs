//! Pending deliveries of a virtual channel and their settlement: acks go to the channel's
//! batch ([`AckBatch`](crate::transport::virtual_transport::acks::AckBatch)), rejects and requeues to
//! [`Backend::reject`], and messages the backend no longer holds (a dead letter that could not
//! be republished, a [`Receipt::Unleased`] delivery) are put back by core itself.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::channel::{Delivery, Outcome, Settler};
use crate::error::{Error, ErrorKind, Result};
use crate::transport::virtual_transport::acks::LEASE_MARGIN;
use crate::transport::virtual_transport::channel::Shared;
use crate::transport::virtual_transport::{Backend, DeadLetter, Envelope, Receipt, Taken};

/// A delivery handed out and not yet settled.
pub(super) struct Pending {
    pub(super) queue: Arc<str>,
    pub(super) receipt: Receipt,
    pub(super) inflight: Arc<InFlight>,
    /// When the backend gives the message to someone else (its lease ends): the take or the
    /// last extension, plus `lease`.
    pub(super) deadline: Option<Instant>,
    /// The visibility timeout it was taken with (`None`: no lease end).
    pub(super) lease: Option<Duration>,
    /// A rejected message the backend already gave up but that could be neither
    /// dead-lettered nor returned to its queue (the broker refused both): held here until a
    /// retried settlement or the channel's close puts it somewhere.
    pub(super) orphan: Option<DeadLetter>,
    /// The message of a [`Receipt::Unleased`] delivery: the backend holds nothing of it, so a
    /// requeue or restore puts this back in its queue.
    pub(super) unleased: Option<Arc<Envelope>>,
}

/// Unsettled deliveries of one consumer, for prefetch.
#[derive(Debug, Default)]
pub(super) struct InFlight {
    pub(super) count: AtomicUsize,
    pub(super) released: Notify,
}

impl InFlight {
    pub(super) fn release(&self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.released.notify_one();
    }
}

/// Returns unsettled deliveries to their queues (the order given: newest first).
pub(super) async fn restore_all(backend: &dyn Backend, pending: Vec<(u64, Pending)>) {
    for (_, p) in pending {
        if let Err(error) = restore_one(backend, &p).await {
            tracing::warn!(queue = %p.queue, %error, "could not restore an unsettled message");
        }
    }
}

/// Returns one unsettled delivery to its queue.
pub(super) async fn restore_one(backend: &dyn Backend, p: &Pending) -> Result<()> {
    match (&p.orphan, &p.unleased) {
        (Some(dead), _) => put_back(backend, &p.queue, dead.envelope.clone()).await,
        (None, Some(envelope)) => put_back(backend, &p.queue, Envelope::clone(envelope)).await,
        (None, None) => backend.reject(&p.queue, &p.receipt, true).await.map(drop),
    }
}

/// Returns a message the backend no longer holds to its queue, marked redelivered.
async fn put_back(backend: &dyn Backend, queue: &str, mut envelope: Envelope) -> Result<()> {
    envelope.redelivered = true;
    backend.put(queue, envelope).await.map(drop)
}

fn not_pending(delivery_tag: u64) -> Error {
    Error::new(
        ErrorKind::Settlement,
        format!(
            "delivery {delivery_tag} is not pending on this channel (already settled, or the \
             channel closed and the message was restored)"
        ),
    )
}

/// The error of an extension of a delivery this channel no longer holds.
fn stale_lease(delivery_tag: u64) -> Error {
    Error::new(
        ErrorKind::StaleDelivery,
        format!(
            "the lease of delivery {delivery_tag} is gone (settled, its channel closed, or its \
             visibility timeout passed and the message went back to its queue)"
        ),
    )
}

impl Shared {
    /// Registers taken messages (one lock for the batch) and makes their deliveries.
    pub(super) fn register(
        self: &Arc<Self>,
        queue: &Arc<str>,
        taken: Vec<Taken>,
        inflight: Option<&Arc<InFlight>>,
        lease: Option<Duration>,
        consumer_tag: &Arc<str>,
        out: &mut VecDeque<Delivery>,
    ) {
        let now = Instant::now();
        let deadline = lease.and_then(|l| now.checked_add(l));
        if let Some(inflight) = inflight {
            inflight.count.fetch_add(taken.len(), Ordering::AcqRel);
        }
        let mut pending = inflight.map(|_| self.pending.lock());
        for Taken { envelope, receipt } in taken {
            let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
            let settler: Option<Arc<dyn Settler>> = match (&mut pending, inflight) {
                (Some(pending), Some(inflight)) => {
                    let unleased = (receipt == Receipt::Unleased).then(|| envelope.clone());
                    pending.insert(
                        tag,
                        Pending {
                            queue: queue.clone(),
                            receipt,
                            inflight: inflight.clone(),
                            deadline: if unleased.is_some() { None } else { deadline },
                            lease: if unleased.is_some() { None } else { lease },
                            orphan: None,
                            unleased,
                        },
                    );
                    Some(self.clone() as Arc<dyn Settler>)
                }
                _ => None,
            };
            out.push_back(Delivery::from_envelope(
                envelope,
                queue.clone(),
                consumer_tag.clone(),
                tag,
                settler,
            ));
        }
    }

    fn pending_entry(&self, delivery_tag: u64) -> Result<(Arc<str>, Receipt)> {
        match self.pending.lock().get(&delivery_tag) {
            Some(p) => Ok((p.queue.clone(), p.receipt.clone())),
            None => Err(not_pending(delivery_tag)),
        }
    }

    /// The earliest lease end among a consumer's unsettled deliveries.
    pub(super) fn earliest_deadline(&self, inflight: &Arc<InFlight>) -> Option<Instant> {
        self.pending
            .lock()
            .values()
            .filter(|p| Arc::ptr_eq(&p.inflight, inflight))
            .filter_map(|p| p.deadline)
            .min()
    }

    /// Forgets a consumer's deliveries whose lease has ended (the backend hands those messages
    /// out again), freeing their prefetch slots. A late settlement of one fails as not pending.
    pub(super) fn expire_pending(&self, inflight: &Arc<InFlight>, now: Instant) {
        let mut pending = self.pending.lock();
        let expired: Vec<u64> = pending
            .iter()
            .filter(|(_, p)| Arc::ptr_eq(&p.inflight, inflight))
            .filter(|(_, p)| p.deadline.is_some_and(|d| d <= now))
            .map(|(tag, _)| *tag)
            .collect();
        for tag in expired {
            if let Some(p) = pending.remove(&tag) {
                p.inflight.release();
            }
        }
    }

    /// Settles a rejected message the backend has already let go of: dead-letters it (or, if
    /// that fails, returns it to its queue), or on requeue returns it, or on ack drops it. If
    /// the broker refuses everything, the message stays with the delivery for a retry.
    async fn settle_orphan(
        &self,
        delivery_tag: u64,
        queue: &str,
        dead: DeadLetter,
        outcome: Outcome,
    ) -> Result<()> {
        let result = match outcome {
            Outcome::Ack => Ok(()),
            Outcome::Requeue => put_back(&*self.backend, queue, dead.envelope.clone()).await,
            Outcome::Reject => match self.dead_letter(vec![dead.clone()]).await {
                Ok(()) => Ok(()),
                Err(error) => match put_back(&*self.backend, queue, dead.envelope.clone()).await {
                    Ok(()) => {
                        self.settled(delivery_tag);
                        return Err(error.context(
                            "dead-lettering the rejected message failed; it was returned to \
                             its queue",
                        ));
                    }
                    Err(put_error) => Err(error.context(format!(
                        "dead-lettering the rejected message failed, and so did returning it to \
                         its queue ({put_error}); retry the settlement"
                    ))),
                },
            },
        };
        match result {
            Ok(()) => {
                self.settled(delivery_tag);
                Ok(())
            }
            Err(error) => {
                if let Some(p) = self.pending.lock().get_mut(&delivery_tag) {
                    p.orphan = Some(dead);
                }
                Err(error)
            }
        }
    }

    /// Settles a [`Receipt::Unleased`] delivery without the backend: an ack or a reject drops
    /// it, a requeue puts it back in its queue.
    async fn settle_unleased(
        &self,
        delivery_tag: u64,
        queue: &str,
        envelope: Arc<Envelope>,
        outcome: Outcome,
    ) -> Result<()> {
        if outcome == Outcome::Requeue {
            let put = put_back(&*self.backend, queue, Envelope::clone(&envelope)).await;
            if let Err(error) = put {
                if let Some(p) = self.pending.lock().get_mut(&delivery_tag) {
                    p.unleased = Some(envelope);
                }
                return Err(error);
            }
        }
        self.settled(delivery_tag);
        Ok(())
    }

    fn settled(&self, delivery_tag: u64) {
        if let Some(p) = self.pending.lock().remove(&delivery_tag) {
            p.inflight.release();
        }
    }
}

#[async_trait]
impl Settler for Shared {
    /// Acks without waiting: queued in the channel's batch, unless the batch is full, the
    /// lease ends soon or the message needs core's own handling (then `None`: `settle` it).
    fn try_settle(&self, delivery_tag: u64, outcome: Outcome) -> Option<Result<()>> {
        if outcome != Outcome::Ack || tokio::runtime::Handle::try_current().is_err() {
            return None;
        }
        let mut pending = self.pending.lock();
        match pending.get(&delivery_tag) {
            None => return Some(Err(not_pending(delivery_tag))),
            // A held orphan settles on the async path.
            Some(p) if p.orphan.is_some() => return None,
            Some(p) if p.unleased.is_some() => {}
            Some(p) => {
                let ends_soon = p
                    .deadline
                    .is_some_and(|d| d <= Instant::now() + LEASE_MARGIN);
                if ends_soon || self.acks.is_full() {
                    return None;
                }
            }
        }
        let p = pending.remove(&delivery_tag)?;
        drop(pending);
        p.inflight.release();
        if p.unleased.is_none() {
            self.acks.push(self.id, p.queue, p.receipt);
        }
        Some(Ok(()))
    }

    async fn settle(&self, delivery_tag: u64, outcome: Outcome) -> Result<()> {
        let (queue, receipt) = self.pending_entry(delivery_tag)?;
        let (orphan, unleased) = match self.pending.lock().get_mut(&delivery_tag) {
            Some(p) => (p.orphan.take(), p.unleased.take()),
            None => (None, None),
        };
        if let Some(dead) = orphan {
            return self
                .settle_orphan(delivery_tag, &queue, dead, outcome)
                .await;
        }
        if let Some(envelope) = unleased {
            return self
                .settle_unleased(delivery_tag, &queue, envelope, outcome)
                .await;
        }
        match outcome {
            Outcome::Ack => self.acks.push_and_flush(queue, receipt).await?,
            Outcome::Requeue => {
                self.backend.reject(&queue, &receipt, true).await?;
            }
            Outcome::Reject => {
                if let Some(dead) = self.backend.reject(&queue, &receipt, false).await? {
                    return self
                        .settle_orphan(delivery_tag, &queue, dead, outcome)
                        .await;
                }
            }
        }
        self.settled(delivery_tag);
        Ok(())
    }

    /// Restarts the lease in the backend (the message counts as taken now) and moves this
    /// channel's own deadline for the delivery (its prefetch slot) to now + its lease.
    async fn extend_lease(&self, delivery_tag: u64) -> Result<()> {
        let (queue, receipt) = self
            .pending_entry(delivery_tag)
            .map_err(|_| stale_lease(delivery_tag))?;
        if receipt == Receipt::Unleased || !self.capabilities.visibility_timeout {
            // Held by this process only, or by a backend without leases until the channel
            // closes: nothing to extend.
            return Ok(());
        }
        self.backend.extend_lease(&queue, &receipt).await?;
        let mut pending = self.pending.lock();
        match pending.get_mut(&delivery_tag) {
            Some(p) => {
                p.deadline = p.lease.and_then(|l| Instant::now().checked_add(l));
                Ok(())
            }
            // Settled or expired while the backend extended it: the extension is moot.
            None => Err(stale_lease(delivery_tag)),
        }
    }

    fn lease_timeout(&self, delivery_tag: u64) -> Option<Duration> {
        if !self.capabilities.visibility_timeout {
            return None;
        }
        self.pending.lock().get(&delivery_tag).and_then(|p| p.lease)
    }
}
