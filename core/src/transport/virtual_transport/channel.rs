//! The virtual channel: a [`Channel`] over any [`Backend`].
//!
//! This file holds the channel's state and its [`Channel`] implementation, which delegates to
//! the files beside it: `declare` (entities, and the one comparison of a redeclaration with
//! what is stored), `publish` (routing and dead-lettering), `consume` (consumer streams,
//! prefetch and `get`), `settle` (pending deliveries and their settlement) and `acks` (acks
//! coalesced into [`Backend::ack_many`] batches).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tokio::sync::Notify;

use crate::capabilities::Capabilities;
use crate::channel::{Channel, ConsumeOptions, Delivery, DeliveryStream, Outgoing, QueueStats};
use crate::entity::{Binding, Exchange, Queue};
use crate::error::{Error, Result};
use crate::message::Envelope;
use crate::transport::virtual_transport::Backend;
use crate::transport::virtual_transport::acks::AckBatch;
use crate::transport::virtual_transport::settle::{Pending, restore_all};

static CHANNEL_IDS: AtomicU64 = AtomicU64::new(1);

/// A [`Channel`] over a virtual [`Backend`]. Dropping it returns every unsettled delivery to
/// its queue and writes the acks it still holds.
pub struct VirtualChannel {
    pub(super) shared: Arc<Shared>,
}

impl fmt::Debug for VirtualChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtualChannel")
            .field("id", &self.shared.id)
            .field("backend", &self.shared.backend)
            .finish()
    }
}

/// What a channel's consumers, deliveries and settlements share.
pub(super) struct Shared {
    pub(super) id: u64,
    pub(super) backend: Arc<dyn Backend>,
    /// The transport's capabilities: the backend's plus routing and what core adds.
    pub(super) capabilities: Capabilities,
    /// [`BackendCapabilities::idle_spins`](crate::transport::virtual_transport::BackendCapabilities).
    pub(super) idle_spins: u32,
    /// [`BackendCapabilities::native_fanout`](crate::transport::virtual_transport::BackendCapabilities).
    pub(super) native_fanout: bool,
    /// [`BackendCapabilities::transport`](crate::transport::virtual_transport::BackendCapabilities).
    pub(super) transport: &'static str,
    pub(super) default_visibility: Option<Duration>,
    pub(super) next_tag: AtomicU64,
    pub(super) next_consumer: AtomicU64,
    pub(super) pending: Mutex<FxHashMap<u64, Pending>>,
    /// Acks settled but not yet written.
    pub(super) acks: Arc<AckBatch>,
    /// Woken when the channel closes, so idle consumers end at once.
    pub(super) closing: Notify,
    pub(super) closed: AtomicBool,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtualChannelState")
            .field("id", &self.id)
            .finish()
    }
}

impl VirtualChannel {
    /// A channel over `backend`. `default_visibility` is the visibility timeout of consumers
    /// that do not set one (none: leases never expire by themselves).
    pub fn new(backend: Arc<dyn Backend>, default_visibility: Option<Duration>) -> Self {
        let acks = Arc::new(AckBatch::new(backend.clone()));
        VirtualChannel::with_acks(backend, default_visibility, acks)
    }

    /// A channel that queues its acks in `acks`, a batch its connection shares with its other
    /// channels and writes when it closes.
    pub(super) fn with_acks(
        backend: Arc<dyn Backend>,
        default_visibility: Option<Duration>,
        acks: Arc<AckBatch>,
    ) -> Self {
        let profile = backend.capabilities();
        let mut capabilities = profile.features;
        capabilities.direct = true;
        capabilities.topic = true;
        capabilities.fanout = true;
        capabilities.headers = true;
        capabilities.restore_on_drop = true;
        capabilities.mandatory = true;
        VirtualChannel {
            shared: Arc::new(Shared {
                id: CHANNEL_IDS.fetch_add(1, Ordering::Relaxed),
                acks,
                backend,
                capabilities,
                idle_spins: profile.idle_spins,
                native_fanout: profile.native_fanout,
                transport: profile.transport,
                default_visibility,
                next_tag: AtomicU64::new(1),
                next_consumer: AtomicU64::new(1),
                pending: Mutex::new(FxHashMap::default()),
                closing: Notify::new(),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// The backend under this channel.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.shared.backend
    }
}

impl Drop for VirtualChannel {
    fn drop(&mut self) {
        let pending = self.shared.shut();
        if pending.is_empty() && self.shared.acks.is_empty() {
            // A failure not reported was logged; nobody to hand it to.
            self.shared.acks.forget(self.shared.id);
            return;
        }
        let backend = self.shared.backend.clone();
        let acks = self.shared.acks.clone();
        let owner = self.shared.id;
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    restore_all(&*backend, pending).await;
                    // A failure was logged by the batch; nobody to hand it to.
                    acks.flush().await;
                    acks.forget(owner);
                });
            }
            Err(_) => tracing::warn!(
                count = pending.len(),
                "virtual channel dropped outside a tokio runtime: unsettled (and acked but \
                 unwritten) messages return only when their visibility timeout passes"
            ),
        }
    }
}

impl Shared {
    /// Marks the channel closed and takes every pending delivery, newest first (restoring
    /// to the head in that order keeps the original order). Their prefetch slots are released,
    /// so a consumer stream waiting for one wakes up, sees the channel closed and ends.
    pub(super) fn shut(&self) -> Vec<(u64, Pending)> {
        self.closed.store(true, Ordering::Release);
        let mut pending: Vec<(u64, Pending)> = self.pending.lock().drain().collect();
        for (_, p) in &pending {
            p.inflight.release();
        }
        self.closing.notify_waiters();
        pending.sort_by_key(|(tag, _)| std::cmp::Reverse(*tag));
        pending
    }

    pub(super) fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::closed("the channel is closed"))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Channel for VirtualChannel {
    fn capabilities(&self) -> &Capabilities {
        &self.shared.capabilities
    }

    async fn declare_exchange(&self, exchange: &Exchange) -> Result<()> {
        self.shared.check_open()?;
        self.shared.declare_exchange(exchange).await
    }

    async fn delete_exchange(&self, name: &str) -> Result<()> {
        self.shared.check_open()?;
        self.shared.backend.delete_exchange(name).await
    }

    async fn exchange_exists(&self, name: &str) -> Result<bool> {
        self.shared.check_open()?;
        if name.is_empty() {
            return Ok(true);
        }
        Ok(self.shared.backend.exchange(name, None).await?.is_some())
    }

    async fn declare_queue(&self, queue: &Queue) -> Result<()> {
        self.shared.check_open()?;
        self.shared.declare_queue(queue).await
    }

    async fn bind(&self, queue: &str, binding: &Binding) -> Result<()> {
        self.shared.check_open()?;
        self.shared.bind(queue, binding).await
    }

    async fn unbind(&self, queue: &str, binding: &Binding) -> Result<()> {
        self.shared.check_open()?;
        self.shared.unbind(queue, binding).await
    }

    async fn queue_exists(&self, queue: &str) -> Result<bool> {
        self.shared.check_open()?;
        self.shared.backend.queue_exists(queue).await
    }

    async fn queue_size(&self, queue: &str) -> Result<u64> {
        self.shared.check_open()?;
        self.shared.queue_size(queue).await
    }

    async fn queue_stats(&self, queue: &str) -> Result<QueueStats> {
        self.shared.check_open()?;
        self.shared.queue_stats(queue).await
    }

    async fn peek(&self, queue: &str, limit: usize) -> Result<Vec<Envelope>> {
        self.shared.check_open()?;
        self.shared.peek(queue, limit).await
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        self.shared.check_open()?;
        self.shared.purge(queue).await
    }

    async fn delete_queue(&self, queue: &str) -> Result<u64> {
        self.shared.check_open()?;
        // Ordering only: acks queued before are written first.
        self.shared.acks.flush().await;
        self.shared.backend.delete_queue(queue).await
    }

    async fn publish(&self, outgoing: Outgoing) -> Result<()> {
        self.shared.check_open()?;
        self.shared.publish(outgoing).await
    }

    async fn publish_batch(&self, batch: Vec<Outgoing>) -> Result<()> {
        self.shared.check_open()?;
        self.shared.publish_batch(batch).await
    }

    async fn consume(&self, queues: &[String], options: &ConsumeOptions) -> Result<DeliveryStream> {
        self.shared.check_open()?;
        self.shared.consume(queues, options)
    }

    async fn get(&self, queue: &str, no_ack: bool) -> Result<Option<Delivery>> {
        self.shared.check_open()?;
        self.shared.get(queue, no_ack).await
    }

    async fn close(&self) -> Result<()> {
        let pending = self.shared.shut();
        restore_all(&*self.shared.backend, pending).await;
        self.shared.acks.flush_owned(self.shared.id).await
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::transport::memory::MemoryBackend;

    #[tokio::test]
    async fn close_ends_a_stream_waiting_at_its_prefetch_limit() {
        let backend = Arc::new(MemoryBackend::new());
        let channel = VirtualChannel::new(backend.clone(), None);
        channel.declare_queue(&Queue::new("q")).await.unwrap();
        for body in ["m1", "m2"] {
            let outgoing = Outgoing {
                exchange: String::new(),
                routing_key: "q".into(),
                message: crate::Message::new(body),
                mandatory: false,
                delay: None,
            };
            channel.publish(outgoing).await.unwrap();
        }
        let options = ConsumeOptions {
            prefetch: 1,
            ..ConsumeOptions::default()
        };
        let mut stream = channel.consume(&["q".into()], &options).await.unwrap();
        let held = stream.next().await.unwrap().unwrap();
        // At the prefetch limit: the stream now waits for a slot.
        let waiting = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
        assert!(waiting.is_err(), "prefetch 1 allows one delivery");
        channel.close().await.unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
        assert!(
            matches!(next, Ok(None)),
            "the stream ends once its channel closes"
        );
        let stored = backend.queue("q", None).await.unwrap().unwrap();
        assert_eq!(stored.messages, 2, "both messages are back");
        assert!(
            held.ack().await.is_err(),
            "a delivery of a closed channel is not pending"
        );
    }

    /// An ack waits in the channel's batch only for a moment: written by the background
    /// task well before the lease ends, the message is not restored when it does.
    #[tokio::test(start_paused = true)]
    async fn a_queued_ack_is_written_before_its_lease_ends() {
        let backend = Arc::new(MemoryBackend::new());
        let channel = VirtualChannel::new(backend.clone(), Some(Duration::from_secs(5)));
        channel.declare_queue(&Queue::new("q")).await.unwrap();
        let outgoing = Outgoing::new("", "q", crate::Message::new("m"));
        channel.publish(outgoing).await.unwrap();
        let delivery = channel.get("q", false).await.unwrap().unwrap();
        delivery.ack().await.unwrap();
        assert!(
            !channel.shared.acks.is_empty(),
            "the ack is queued, not written"
        );
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(channel.shared.acks.is_empty(), "written within the window");
        assert!(
            channel.get("q", false).await.unwrap().is_none(),
            "an acked message is not restored when its lease ends"
        );
    }
}
