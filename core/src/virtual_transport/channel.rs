//! The virtual channel: a [`Channel`] over any [`Backend`].

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::StreamExt;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tokio::sync::Notify;

use crate::capabilities::Capabilities;
use crate::channel::{
    Channel, ConsumeOptions, Delivery, DeliveryStream, Outcome, Outgoing, Settler,
};
use crate::entity::{Binding, Exchange, ExchangeKind, Queue};
use crate::error::{Error, ErrorKind, Result};
use crate::value::{Headers, Value};
use crate::virtual_transport::router::route;
use crate::virtual_transport::{
    Backend, BindingRow, DeadLetter, Envelope, Receipt, TakeMode, Taken,
};

/// Most messages taken in one backend call when prefetch does not bound it.
const MAX_BATCH: usize = 256;
/// Longest a consumer waits in one backend `wait` before looking again.
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// Dead-letter hops followed for one message before giving up (a cycle of DLXs).
const MAX_DEAD_LETTER_HOPS: usize = 16;

static CHANNEL_IDS: AtomicU64 = AtomicU64::new(1);

/// A [`Channel`] over a virtual [`Backend`]. Dropping it returns every unsettled delivery to
/// its queue.
pub struct VirtualChannel {
    shared: Arc<Shared>,
}

impl fmt::Debug for VirtualChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtualChannel")
            .field("id", &self.shared.id)
            .field("backend", &self.shared.backend)
            .finish()
    }
}

struct Pending {
    queue: Arc<str>,
    receipt: Receipt,
    inflight: Arc<InFlight>,
    /// When the backend gives the message to someone else (its lease ends).
    deadline: Option<tokio::time::Instant>,
    /// A rejected message the backend already gave up but that could be neither
    /// dead-lettered nor returned to its queue (the broker refused both): held here until a
    /// retried settlement or the channel's close puts it somewhere.
    orphan: Option<DeadLetter>,
}

/// Unsettled deliveries of one consumer, for prefetch.
#[derive(Debug, Default)]
struct InFlight {
    count: AtomicUsize,
    released: Notify,
}

impl InFlight {
    fn release(&self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.released.notify_one();
    }
}

struct Shared {
    id: u64,
    backend: Arc<dyn Backend>,
    capabilities: Capabilities,
    default_visibility: Option<Duration>,
    next_tag: AtomicU64,
    next_consumer: AtomicU64,
    pending: Mutex<FxHashMap<u64, Pending>>,
    /// Woken when the channel closes, so idle consumers end at once.
    closing: Notify,
    closed: AtomicBool,
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
        let mut capabilities = backend.capabilities();
        capabilities.direct = true;
        capabilities.topic = true;
        capabilities.fanout = true;
        capabilities.headers = true;
        capabilities.restore_on_drop = true;
        capabilities.mandatory = true;
        VirtualChannel {
            shared: Arc::new(Shared {
                id: CHANNEL_IDS.fetch_add(1, Ordering::Relaxed),
                backend,
                capabilities,
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
        if pending.is_empty() {
            return;
        }
        let backend = self.shared.backend.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move { restore_all(&*backend, pending).await });
            }
            Err(_) => tracing::warn!(
                count = pending.len(),
                "virtual channel dropped outside a tokio runtime: unsettled messages return \
                 only when their visibility timeout passes"
            ),
        }
    }
}

async fn restore_all(backend: &dyn Backend, pending: Vec<(u64, Pending)>) {
    for (_, p) in pending {
        let restored = match p.orphan {
            Some(dead) => put_back(backend, &p.queue, dead).await,
            None => backend.restore(&p.queue, &p.receipt).await,
        };
        if let Err(error) = restored {
            tracing::warn!(queue = %p.queue, %error, "could not restore an unsettled message");
        }
    }
}

/// Returns a message the backend no longer holds to its queue, marked redelivered.
async fn put_back(backend: &dyn Backend, queue: &str, dead: DeadLetter) -> Result<()> {
    let mut envelope = dead.envelope;
    envelope.redelivered = true;
    backend.put(queue, envelope).await.map(drop)
}

impl Shared {
    /// Marks the channel closed and takes every pending delivery, newest first (restoring
    /// to the head in that order keeps the original order). Their prefetch slots are released,
    /// so a consumer stream waiting for one wakes up, sees the channel closed and ends.
    fn shut(&self) -> Vec<(u64, Pending)> {
        self.closed.store(true, Ordering::Release);
        let mut pending: Vec<(u64, Pending)> = self.pending.lock().drain().collect();
        for (_, p) in &pending {
            p.inflight.release();
        }
        self.closing.notify_waiters();
        pending.sort_by_key(|(tag, _)| std::cmp::Reverse(*tag));
        pending
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::closed("the channel is closed"))
        } else {
            Ok(())
        }
    }

    async fn exchange_kind(&self, name: &str) -> Result<ExchangeKind> {
        match self.backend.lookup_exchange(name).await? {
            Some(ex) => Ok(ex.kind),
            None => Err(Error::new(
                ErrorKind::NotFound,
                format!("no exchange {name:?}: declare it before publishing to it"),
            )),
        }
    }

    /// Routes a message: appends a `(queue, envelope)` pair per destination queue to `sink`.
    ///
    /// The default exchange sends to the queue named by the routing key without looking it
    /// up (as kombu does, so a queue that another client declared is reachable); only a
    /// mandatory publish asks whether the queue exists anywhere, once per distinct routing key
    /// of a batch (`known` remembers the answers).
    async fn route(
        &self,
        out: Outgoing,
        sink: &mut Vec<(String, Envelope)>,
        known: &mut FxHashMap<String, bool>,
    ) -> Result<()> {
        let Outgoing {
            exchange,
            routing_key,
            message,
            mandatory,
        } = out;
        if exchange.is_empty() {
            if mandatory && !self.known_queue(&routing_key, known).await? {
                return Err(Error::new(
                    ErrorKind::Unroutable,
                    format!("no queue {routing_key:?} for the default exchange"),
                ));
            }
            sink.push((
                routing_key.clone(),
                Envelope::new(message, exchange, routing_key),
            ));
            return Ok(());
        }
        let kind = self.exchange_kind(&exchange).await?;
        let rows = self.backend.bindings(&exchange).await?;
        let queues = route(kind, &rows, &routing_key, &message.headers);
        let Some((last, others)) = queues.split_last() else {
            if mandatory {
                return Err(Error::new(
                    ErrorKind::Unroutable,
                    format!(
                        "no queue is bound to exchange {exchange:?} for routing key {routing_key:?}"
                    ),
                ));
            }
            tracing::debug!(%exchange, %routing_key, "unroutable message dropped");
            return Ok(());
        };
        let envelope = Envelope::new(message, exchange, routing_key);
        if kind == ExchangeKind::Fanout && self.backend.native_fanout() {
            return self.backend.publish_fanout(envelope).await;
        }
        for queue in others {
            sink.push(((*queue).to_owned(), envelope.clone()));
        }
        sink.push(((*last).to_owned(), envelope));
        Ok(())
    }

    /// Whether a queue exists, asking the backend once per name in `known`.
    async fn known_queue(&self, queue: &str, known: &mut FxHashMap<String, bool>) -> Result<bool> {
        if let Some(&exists) = known.get(queue) {
            return Ok(exists);
        }
        let exists = self.backend.queue_exists(queue).await?;
        known.insert(queue.to_owned(), exists);
        Ok(exists)
    }

    /// A queue's ready count, or [`ErrorKind::NotFound`] when the count is 0 because the queue
    /// exists nowhere.
    fn found(&self, queue: &str, count: u64, exists: bool) -> Result<u64> {
        if count == 0 && !exists {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("no queue {queue:?}: declare it first"),
            ));
        }
        Ok(count)
    }

    /// Stores routed messages: one `put`, or one `put_many` round trip for several.
    async fn store(&self, mut items: Vec<(String, Envelope)>) -> Result<Vec<DeadLetter>> {
        if items.len() > 1 {
            return self.backend.put_many(items).await;
        }
        match items.pop() {
            Some((queue, env)) => self.backend.put(&queue, env).await,
            None => Ok(Vec::new()),
        }
    }

    async fn put_routed(&self, items: Vec<(String, Envelope)>) -> Result<()> {
        let dead = self.store(items).await?;
        self.dead_letter(dead).await
    }

    /// Republishes dead letters to their dead-letter exchanges with an `x-death` record.
    async fn dead_letter(&self, dead: Vec<DeadLetter>) -> Result<()> {
        if dead.is_empty() {
            // The common case, kept out of the (large) future below.
            return Ok(());
        }
        self.dead_letter_all(dead).await
    }

    async fn dead_letter_all(&self, mut dead: Vec<DeadLetter>) -> Result<()> {
        let mut hops = 0;
        while !dead.is_empty() {
            hops += 1;
            if hops > MAX_DEAD_LETTER_HOPS {
                tracing::warn!(
                    count = dead.len(),
                    "dead-letter cycle: messages dropped after {MAX_DEAD_LETTER_HOPS} hops"
                );
                return Ok(());
            }
            let mut routed = Vec::new();
            let mut known = FxHashMap::default();
            for dl in dead.drain(..) {
                let routing_key = dl
                    .routing_key
                    .clone()
                    .unwrap_or_else(|| dl.envelope.routing_key.clone());
                let mut message = dl.envelope.message;
                record_death(
                    &mut message.headers,
                    &dl.queue,
                    dl.reason.as_str(),
                    &dl.envelope.exchange,
                    &dl.envelope.routing_key,
                );
                // A message expired by its own expiration is not expired again on the way.
                message.properties.expiration = None;
                let out = Outgoing {
                    exchange: dl.exchange,
                    routing_key,
                    message,
                    mandatory: false,
                };
                match self.route(out, &mut routed, &mut known).await {
                    Ok(()) => {}
                    Err(error) => {
                        tracing::warn!(queue = %dl.queue, %error, "dead-lettering failed");
                    }
                }
            }
            if routed.is_empty() {
                break;
            }
            dead = self.store(routed).await?;
        }
        Ok(())
    }

    fn take_mode(&self, no_ack: bool, visibility: Option<Duration>) -> TakeMode {
        if no_ack {
            TakeMode::NoAck
        } else {
            TakeMode::Lease(visibility.or(self.default_visibility))
        }
    }

    /// Registers taken messages (one lock for the batch) and makes their deliveries.
    fn register(
        self: &Arc<Self>,
        queue: &Arc<str>,
        taken: Vec<Taken>,
        inflight: Option<&Arc<InFlight>>,
        lease: Option<Duration>,
        consumer_tag: &Arc<str>,
        out: &mut VecDeque<Delivery>,
    ) {
        let now = tokio::time::Instant::now();
        let deadline = lease.and_then(|l| now.checked_add(l));
        if let Some(inflight) = inflight {
            inflight.count.fetch_add(taken.len(), Ordering::AcqRel);
        }
        let mut pending = inflight.map(|_| self.pending.lock());
        for Taken { envelope, receipt } in taken {
            let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
            let settler: Option<Arc<dyn Settler>> = match (&mut pending, inflight) {
                (Some(pending), Some(inflight)) => {
                    pending.insert(
                        tag,
                        Pending {
                            queue: queue.clone(),
                            receipt,
                            inflight: inflight.clone(),
                            deadline,
                            orphan: None,
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
}

/// Appends a RabbitMQ-shaped `x-death` record (count per queue and reason).
fn record_death(headers: &mut Headers, queue: &str, reason: &str, exchange: &str, rk: &str) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut deaths = match headers.remove("x-death") {
        Some(Value::List(list)) => list,
        _ => Vec::new(),
    };
    let existing = deaths.iter_mut().find_map(|d| match d {
        Value::Map(m)
            if m.get("queue").and_then(Value::as_str) == Some(queue)
                && m.get("reason").and_then(Value::as_str) == Some(reason) =>
        {
            Some(m)
        }
        _ => None,
    });
    match existing {
        Some(m) => {
            let count = m.get("count").and_then(Value::as_i64).unwrap_or(0) + 1;
            m.insert("count".into(), Value::Int(count));
            m.insert(
                "time".into(),
                Value::Int(i64::try_from(now).unwrap_or(i64::MAX)),
            );
        }
        None => {
            let mut m = Headers::new();
            m.insert("count".into(), Value::Int(1));
            m.insert("reason".into(), reason.into());
            m.insert("queue".into(), queue.into());
            m.insert("exchange".into(), exchange.into());
            m.insert("routing-keys".into(), Value::List(vec![rk.into()]));
            m.insert(
                "time".into(),
                Value::Int(i64::try_from(now).unwrap_or(i64::MAX)),
            );
            deaths.insert(0, Value::Map(m));
        }
    }
    headers.insert("x-death".into(), Value::List(deaths));
    headers
        .entry("x-first-death-queue".into())
        .or_insert_with(|| queue.into());
    headers
        .entry("x-first-death-reason".into())
        .or_insert_with(|| reason.into());
    headers
        .entry("x-first-death-exchange".into())
        .or_insert_with(|| exchange.into());
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

impl Shared {
    fn pending_entry(&self, delivery_tag: u64) -> Result<(Arc<str>, Receipt)> {
        match self.pending.lock().get(&delivery_tag) {
            Some(p) => Ok((p.queue.clone(), p.receipt.clone())),
            None => Err(not_pending(delivery_tag)),
        }
    }

    /// The earliest lease end among a consumer's unsettled deliveries.
    fn earliest_deadline(&self, inflight: &Arc<InFlight>) -> Option<tokio::time::Instant> {
        self.pending
            .lock()
            .values()
            .filter(|p| Arc::ptr_eq(&p.inflight, inflight))
            .filter_map(|p| p.deadline)
            .min()
    }

    /// Forgets a consumer's deliveries whose lease has ended (the backend hands those messages
    /// out again), freeing their prefetch slots. A late settlement of one fails as not pending.
    fn expire_pending(&self, inflight: &Arc<InFlight>, now: tokio::time::Instant) {
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
            Outcome::Requeue => put_back(&*self.backend, queue, dead.clone()).await,
            Outcome::Reject => match self.dead_letter(vec![dead.clone()]).await {
                Ok(()) => Ok(()),
                Err(error) => match put_back(&*self.backend, queue, dead.clone()).await {
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

    fn settled(&self, delivery_tag: u64) {
        if let Some(p) = self.pending.lock().remove(&delivery_tag) {
            p.inflight.release();
        }
    }
}

#[async_trait]
impl Settler for Shared {
    fn try_settle(&self, delivery_tag: u64, outcome: Outcome) -> Option<Result<()>> {
        if outcome != Outcome::Ack {
            return None;
        }
        let (queue, receipt) = match self.pending.lock().get(&delivery_tag) {
            // A held orphan settles on the async path.
            Some(p) if p.orphan.is_some() => return None,
            Some(p) => (p.queue.clone(), p.receipt.clone()),
            None => return Some(Err(not_pending(delivery_tag))),
        };
        let acked = self.backend.try_ack(&queue, &receipt)?;
        if acked.is_ok() {
            self.settled(delivery_tag);
        }
        Some(acked)
    }

    async fn settle(&self, delivery_tag: u64, outcome: Outcome) -> Result<()> {
        let (queue, receipt) = self.pending_entry(delivery_tag)?;
        let orphan = self
            .pending
            .lock()
            .get_mut(&delivery_tag)
            .and_then(|p| p.orphan.take());
        if let Some(dead) = orphan {
            return self
                .settle_orphan(delivery_tag, &queue, dead, outcome)
                .await;
        }
        match outcome {
            Outcome::Ack => self.backend.ack(&queue, &receipt).await?,
            Outcome::Requeue => self.backend.restore(&queue, &receipt).await?,
            Outcome::Reject => {
                if let Some(dead) = self.backend.reject(&queue, &receipt).await? {
                    return self
                        .settle_orphan(delivery_tag, &queue, dead, outcome)
                        .await;
                }
            }
        }
        self.settled(delivery_tag);
        Ok(())
    }

    async fn extend_lease(&self, delivery_tag: u64, by: Duration) -> Result<()> {
        let (queue, receipt) = self.pending_entry(delivery_tag)?;
        self.backend.extend_lease(&queue, &receipt, by).await
    }
}

#[async_trait]
impl Channel for VirtualChannel {
    fn capabilities(&self) -> &Capabilities {
        &self.shared.capabilities
    }

    async fn declare_exchange(&self, exchange: &Exchange) -> Result<()> {
        self.shared.check_open()?;
        if exchange.is_default() {
            return Ok(());
        }
        if let Some(existing) = self.shared.backend.lookup_exchange(&exchange.name).await?
            && existing.kind != exchange.kind
        {
            return Err(Error::inequivalent(
                format_args!("exchange {:?}", exchange.name),
                [(
                    "type".to_owned(),
                    existing.kind.to_string(),
                    exchange.kind.to_string(),
                )],
            ));
        }
        self.shared.backend.declare_exchange(exchange).await
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
        Ok(self.shared.backend.lookup_exchange(name).await?.is_some())
    }

    async fn declare_queue(&self, queue: &Queue) -> Result<()> {
        self.shared.check_open()?;
        queue.validate()?;
        if let Some(exchange) = &queue.exchange {
            self.declare_exchange(exchange).await?;
        }
        self.shared.backend.declare_queue(queue).await?;
        for binding in queue.bindings() {
            self.bind(&queue.name, &binding).await?;
        }
        Ok(())
    }

    async fn bind(&self, queue: &str, binding: &Binding) -> Result<()> {
        self.shared.check_open()?;
        if binding.exchange.is_empty() {
            return Err(Error::new(
                ErrorKind::AccessRefused,
                "queues cannot be bound to the default exchange",
            ));
        }
        if self
            .shared
            .backend
            .lookup_exchange(&binding.exchange)
            .await?
            .is_none()
        {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("no exchange {:?} to bind to", binding.exchange),
            ));
        }
        self.shared
            .backend
            .bind(&BindingRow {
                exchange: binding.exchange.clone(),
                routing_key: binding.routing_key.clone(),
                queue: queue.to_owned(),
                arguments: binding.arguments.clone(),
            })
            .await
    }

    async fn unbind(&self, queue: &str, binding: &Binding) -> Result<()> {
        self.shared.check_open()?;
        self.shared
            .backend
            .unbind(&BindingRow {
                exchange: binding.exchange.clone(),
                routing_key: binding.routing_key.clone(),
                queue: queue.to_owned(),
                arguments: binding.arguments.clone(),
            })
            .await
    }

    async fn queue_exists(&self, queue: &str) -> Result<bool> {
        self.shared.check_open()?;
        self.shared.backend.queue_exists(queue).await
    }

    async fn queue_size(&self, queue: &str) -> Result<u64> {
        self.shared.check_open()?;
        let count = self.shared.backend.size(queue).await?;
        if count > 0 {
            return Ok(count);
        }
        let exists = self.shared.backend.queue_exists(queue).await?;
        self.shared.found(queue, count, exists)
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        self.shared.check_open()?;
        let count = self.shared.backend.purge(queue).await?;
        if count > 0 {
            return Ok(count);
        }
        let exists = self.shared.backend.queue_exists(queue).await?;
        self.shared.found(queue, count, exists)
    }

    async fn delete_queue(&self, queue: &str) -> Result<u64> {
        self.shared.check_open()?;
        self.shared.backend.delete_queue(queue).await
    }

    async fn publish(&self, outgoing: Outgoing) -> Result<()> {
        self.shared.check_open()?;
        if outgoing.exchange.is_empty() && !outgoing.mandatory {
            // The default exchange: the routing key names the queue. No routing table, no batch.
            let queue = outgoing.routing_key.clone();
            let envelope = Envelope::new(outgoing.message, outgoing.exchange, outgoing.routing_key);
            let dead = self.shared.backend.put(&queue, envelope).await?;
            if dead.is_empty() {
                return Ok(());
            }
            return self.shared.dead_letter(dead).await;
        }
        let mut routed = Vec::with_capacity(1);
        let mut known = FxHashMap::default();
        self.shared.route(outgoing, &mut routed, &mut known).await?;
        self.shared.put_routed(routed).await
    }

    async fn publish_batch(&self, batch: Vec<Outgoing>) -> Result<()> {
        self.shared.check_open()?;
        let mut routed = Vec::with_capacity(batch.len());
        let mut known = FxHashMap::default();
        for outgoing in batch {
            self.shared.route(outgoing, &mut routed, &mut known).await?;
        }
        self.shared.put_routed(routed).await
    }

    async fn consume(&self, queues: &[String], options: &ConsumeOptions) -> Result<DeliveryStream> {
        self.shared.check_open()?;
        if queues.is_empty() {
            return Err(Error::config("a consumer needs at least one queue"));
        }
        let consumer_tag = if options.consumer_tag.is_empty() {
            format!(
                "ctag-{}.{}",
                self.shared.id,
                self.shared.next_consumer.fetch_add(1, Ordering::Relaxed)
            )
        } else {
            options.consumer_tag.clone()
        };
        let state = ConsumerState {
            shared: self.shared.clone(),
            queues: queues.to_vec(),
            names: queues.iter().map(|q| Arc::from(q.as_str())).collect(),
            next_queue: 0,
            prefetch: usize::from(options.prefetch),
            // No-ack consumers take with a lease too, and ack as they hand out, so messages
            // taken into the buffer go back if the consumer is dropped.
            lease: options
                .visibility_timeout
                .or(self.shared.default_visibility),
            no_ack: options.no_ack,
            consumer_tag: consumer_tag.into(),
            buffer: VecDeque::new(),
            inflight: Arc::new(InFlight::default()),
            spins: 0,
        };
        // Fused: polling the stream again after it ended yields `None`, not a panic.
        Ok(Box::pin(
            futures::stream::unfold(state, |mut state| async move {
                state.next().await.map(|item| (item, state))
            })
            .fuse(),
        ))
    }

    async fn get(&self, queue: &str, no_ack: bool) -> Result<Option<Delivery>> {
        self.shared.check_open()?;
        let mode = self.shared.take_mode(no_ack, None);
        let fetched = self.shared.backend.get_many(queue, 1, mode).await?;
        let inflight = (!no_ack).then(|| Arc::new(InFlight::default()));
        let mut out = VecDeque::with_capacity(1);
        // Registered before dead-lettering, so a dead-letter failure cannot strand it.
        self.shared.register(
            &Arc::from(queue),
            fetched.taken,
            inflight.as_ref(),
            self.shared.default_visibility,
            &Arc::from(""),
            &mut out,
        );
        self.shared.dead_letter(fetched.dead).await?;
        Ok(out.pop_front())
    }

    async fn close(&self) -> Result<()> {
        let pending = self.shared.shut();
        restore_all(&*self.shared.backend, pending).await;
        self.shared.backend.flush().await
    }
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
    inflight: Arc<InFlight>,
    /// Empty looks since the last message.
    spins: u32,
}

impl ConsumerState {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        loop {
            if self.shared.closed.load(Ordering::Acquire) {
                return None;
            }
            if let Some(mut delivery) = self.buffer.pop_front() {
                if self.shared.closed.load(Ordering::Acquire) {
                    // A close raced with the pop and already restored it.
                    delivery.forget_settlement();
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
            match self.fetch(want).await {
                Ok(true) => {
                    self.spins = 0;
                    continue;
                }
                Ok(false) if self.spins < self.shared.backend.idle_spins() => {
                    self.spins += 1;
                    tokio::task::yield_now().await;
                }
                Ok(false) => {
                    let closing = self.shared.closing.notified();
                    tokio::pin!(closing);
                    closing.as_mut().enable();
                    if self.shared.closed.load(Ordering::Acquire) {
                        return None;
                    }
                    tokio::select! {
                        waited = self.shared.backend.wait(&self.queues, IDLE_WAIT) => {
                            if let Err(e) = waited {
                                return Some(Err(e));
                            }
                        }
                        () = &mut closing => return None,
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
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

    /// Takes up to `want` messages from the next queue that has some. True if it got any.
    async fn fetch(&mut self, want: usize) -> Result<bool> {
        let n = self.queues.len();
        let mode = TakeMode::Lease(self.lease);
        for i in 0..n {
            let idx = (self.next_queue + i) % n;
            let fetched = {
                let queue = &self.queues[idx];
                self.shared.backend.get_many(queue, want, mode).await?
            };
            let got = !fetched.taken.is_empty();
            if got {
                self.next_queue = (idx + 1) % n;
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
            self.shared.dead_letter(fetched.dead).await?;
            if got {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

impl Drop for ConsumerState {
    fn drop(&mut self) {
        // Deliveries taken but never handed out go back to their queues now.
        if self.buffer.is_empty() {
            return;
        }
        let mut pending = Vec::new();
        {
            let mut map = self.shared.pending.lock();
            for mut delivery in self.buffer.drain(..).rev() {
                delivery.forget_settlement();
                if let Some(p) = map.remove(&delivery.delivery_tag()) {
                    pending.push((delivery.delivery_tag(), p));
                }
            }
        }
        if pending.is_empty() {
            return;
        }
        let backend = self.shared.backend.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { restore_all(&*backend, pending).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::memory::MemoryBackend;

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
        assert_eq!(
            backend.size("q").await.unwrap(),
            2,
            "both messages are back"
        );
        assert!(
            held.ack().await.is_err(),
            "a delivery of a closed channel is not pending"
        );
    }
}
