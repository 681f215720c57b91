//! The in-process memory transport.
//!
//! `memory://` is one broker shared by the whole process; `memory://NAME` is a separate broker
//! per name (tests use a fresh name each for isolation). A broker lives as long as the process,
//! like kombu's memory transport, so a message published on one connection is there for the next.
//!
//! It implements everything the virtual channel can use: priorities (`max_priority`), message and
//! queue TTL, `max_length` (drop-head), dead-lettering, visibility timeouts and restore of
//! unsettled messages, delayed delivery ([`Publish::delay`](crate::Publish::delay)). Consumers
//! wake on publish, and when a delayed message falls due; nothing polls. Time follows tokio's
//! clock, so tests under `tokio::time::pause()` exercise TTLs, timeouts and delays in no real
//! time.
//!
//! URL options: `visibility_timeout` (seconds, fractions allowed) for consumers that set none.
//!
//! Over 700 lines: one backend, every operation of the `Backend` contract on its in-process
//! queues (ready levels, leases) in one place; the delayed messages are in `delayed.rs`.
//!
//! It registers like any other transport: the `kombu` crate does it (feature `memory`); a user
//! of `kombu-core` alone calls [`register`] once.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kombu_core::Result<()> {
//! use kombu_core::{Connection, Queue};
//!
//! kombu_core::transport::memory::register();
//! let conn = Connection::open("memory://doc-memory").await?;
//! conn.declare_queue(&Queue::new("jobs")).await?;
//! conn.producer().routing_key("jobs").publish(&"hello").await?;
//! assert_eq!(conn.queue_size("jobs").await?, 1);
//! # Ok(()) }
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::capabilities::Capabilities;
use crate::entity::{Exchange, Queue};
use crate::error::{Error, Result};
use crate::transport::virtual_transport::{
    Backend, BackendCapabilities, BindingRow, DeadLetter, DeathReason, Envelope, Fetched, Receipt,
    StoredQueue, TakeMode, Taken, VirtualConnection, queue_settings,
};
use crate::transport::{BrokerConnection, QueueStats, Transport};
use crate::url::BrokerUrl;

mod browse; // queue stats and peeks
mod delayed;
use delayed::Delayed;

/// Registers the `memory` URL scheme (idempotent).
pub fn register() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| crate::transport::register_transport(Arc::new(MemoryTransport)));
}

/// The memory transport (`memory://`, `memory://NAME`).
#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryTransport;

static BROKERS: LazyLock<Mutex<HashMap<String, Arc<MemoryBackend>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

impl MemoryTransport {
    /// The process-wide backend for a broker name (`""` for `memory://`).
    pub fn backend(name: &str) -> Arc<MemoryBackend> {
        BROKERS
            .lock()
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(MemoryBackend::new()))
            .clone()
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    fn name(&self) -> &'static str {
        "memory"
    }
    fn schemes(&self) -> &'static [&'static str] {
        &["memory"]
    }
    async fn connect(&self, url: &BrokerUrl) -> Result<Arc<dyn BrokerConnection>> {
        let name = url.host().unwrap_or_default().to_owned();
        let visibility = url.query_seconds("visibility_timeout")?;
        Ok(Arc::new(VirtualConnection::new(
            MemoryTransport::backend(&name),
            visibility,
        )))
    }
}

/// One in-process broker: exchanges, bindings, queues.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    exchanges: RwLock<HashMap<String, Exchange>>,
    bindings: RwLock<HashMap<String, Arc<[BindingRow]>>>,
    /// Read on every publish, fetch and ack by both sides of a busy queue: a lock-free
    /// snapshot, replaced whole by the rare declare and delete (under `declaring`).
    queues: ArcSwap<FxHashMap<String, Arc<MemQueue>>>,
    declaring: Mutex<()>,
    next_receipt: AtomicU64,
}

#[derive(Debug)]
struct MemQueue {
    spec: Queue,
    /// Ready messages. Publishers and fetching consumers lock this...
    ready: Mutex<Ready>,
    /// ...and settlement locks only this, so acks never contend with publishes.
    leases: Mutex<Leases>,
    /// `ready.count`, readable without the lock: an idle consumer looking again costs the
    /// publisher nothing.
    ready_len: AtomicUsize,
    notify: Notify,
    /// Consumers inside `wait` on this queue; puts only notify when there is one.
    waiters: AtomicUsize,
    /// Messages published with a delay, until due.
    delayed: Mutex<Delayed>,
    /// `delayed.len()`, readable without the lock: a queue with none costs a take nothing.
    delayed_len: AtomicUsize,
}

#[derive(Debug)]
struct Stored {
    envelope: Arc<Envelope>,
    expires_at: Option<Instant>,
}

#[derive(Debug)]
struct Unacked {
    stored: Stored,
    /// The take, or the last extension: any take with a visibility timeout restores it once
    /// that long has passed since.
    taken: Instant,
    /// The taker's visibility timeout: when its own lease ends, to wake waiting consumers.
    lease: Option<Duration>,
}

#[derive(Debug, Default)]
struct Ready {
    /// One deque per priority level, lowest first.
    levels: Vec<VecDeque<Stored>>,
    count: usize,
}

#[derive(Debug, Default)]
struct Leases {
    unacked: FxHashMap<u64, Unacked>,
    /// No take (or extension) is older than this: a restorer scans only once this plus its
    /// visibility timeout has passed.
    oldest_take: Option<Instant>,
    /// No taker's own lease ends before this: waiting consumers look again then.
    next_deadline: Option<Instant>,
}

impl Ready {
    fn level_of(&self, priority: Option<u8>) -> usize {
        usize::from(priority.unwrap_or(0)).min(self.levels.len().saturating_sub(1))
    }

    fn push_back(&mut self, stored: Stored) {
        let level = self.level_of(stored.envelope.message.properties.priority);
        if let Some(q) = self.levels.get_mut(level) {
            q.push_back(stored);
            self.count += 1;
        }
    }

    fn push_front(&mut self, stored: Stored) {
        let level = self.level_of(stored.envelope.message.properties.priority);
        if let Some(q) = self.levels.get_mut(level) {
            q.push_front(stored);
            self.count += 1;
        }
    }

    fn pop_front(&mut self) -> Option<Stored> {
        let stored = self.levels.iter_mut().rev().find_map(|q| q.pop_front())?;
        self.count -= 1;
        Some(stored)
    }

    fn clear(&mut self) -> usize {
        for level in &mut self.levels {
            level.clear();
        }
        std::mem::take(&mut self.count)
    }
}

impl Leases {
    fn lease(&mut self, receipt: u64, stored: Stored, taken: Instant, lease: Option<Duration>) {
        self.note_take(taken, lease);
        self.unacked.insert(
            receipt,
            Unacked {
                stored,
                taken,
                lease,
            },
        );
    }

    /// Keeps the scan bounds true after a take or an extension at `taken`.
    fn note_take(&mut self, taken: Instant, lease: Option<Duration>) {
        self.oldest_take = Some(self.oldest_take.map_or(taken, |o| o.min(taken)));
        // A lease too long for the clock never ends by itself.
        if let Some(d) = lease.and_then(|l| taken.checked_add(l)) {
            self.next_deadline = Some(self.next_deadline.map_or(d, |n| n.min(d)));
        }
    }

    /// Takes every lease taken (or extended) at least `visibility` ago, the restorer's own
    /// visibility timeout (none: nothing), oldest receipt last (so pushing each to the front of
    /// the queue keeps the original order).
    fn take_expired(&mut self, now: Instant, visibility: Option<Duration>) -> Vec<Stored> {
        let Some(visibility) = visibility else {
            return Vec::new();
        };
        let passed = |taken: Instant| taken.checked_add(visibility).is_some_and(|d| d <= now);
        if !self.oldest_take.is_some_and(passed) {
            return Vec::new();
        }
        let mut expired: Vec<u64> = self
            .unacked
            .iter()
            .filter(|(_, u)| passed(u.taken))
            .map(|(r, _)| *r)
            .collect();
        expired.sort_unstable_by(|a, b| b.cmp(a));
        let taken = expired
            .iter()
            .filter_map(|r| self.unacked.remove(r))
            .map(|u| u.stored)
            .collect();
        self.oldest_take = self.unacked.values().map(|u| u.taken).min();
        self.next_deadline = self
            .unacked
            .values()
            .filter_map(|u| u.lease.and_then(|l| u.taken.checked_add(l)))
            .min();
        taken
    }
}

impl MemQueue {
    fn new(spec: Queue) -> Self {
        let levels = spec.max_priority.map_or(1, |p| usize::from(p) + 1);
        MemQueue {
            spec,
            ready: Mutex::new(Ready {
                levels: (0..levels).map(|_| VecDeque::new()).collect(),
                count: 0,
            }),
            leases: Mutex::new(Leases::default()),
            ready_len: AtomicUsize::new(0),
            notify: Notify::new(),
            waiters: AtomicUsize::new(0),
            delayed: Mutex::new(Delayed::default()),
            delayed_len: AtomicUsize::new(0),
        }
    }

    /// Holds messages until `due`.
    fn hold(&self, due: Instant, envelopes: impl IntoIterator<Item = Envelope>) {
        let mut delayed = self.delayed.lock();
        for envelope in envelopes {
            delayed.hold(due, envelope);
        }
        self.delayed_len.store(delayed.len(), Ordering::SeqCst);
        drop(delayed);
        // A consumer waiting on the queue looks again, for the new due time.
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }

    /// The earliest due time of a held message.
    fn next_due(&self) -> Option<Instant> {
        if self.delayed_len.load(Ordering::SeqCst) == 0 {
            return None;
        }
        self.delayed.lock().next_due()
    }

    /// Moves the delayed messages due by `now` to the tail of the queue.
    fn promote_due(&self, now: Instant, dead: &mut Vec<DeadLetter>) {
        if self.delayed_len.load(Ordering::SeqCst) == 0 {
            return;
        }
        let due = {
            let mut delayed = self.delayed.lock();
            let due = delayed.take_due(now);
            self.delayed_len.store(delayed.len(), Ordering::SeqCst);
            due
        };
        for envelope in due {
            self.put(envelope, now, dead);
        }
    }

    /// Wakes a waiting consumer, if any. A waiter registers (`waiters`) before it checks the
    /// queue under the lock, and a put changes the queue under the lock before it reads
    /// `waiters`, so either the waiter sees the message or the put sees the waiter.
    fn wake_one(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.notify.notify_one();
        }
    }

    /// Returns messages to the head of the queue, marked redelivered.
    fn restore(&self, stored: Vec<Stored>) {
        if stored.is_empty() {
            return;
        }
        let mut ready = self.ready.lock();
        for mut s in stored {
            // Copies the envelope only if a delivery of it is still alive.
            Arc::make_mut(&mut s.envelope).redelivered = true;
            ready.push_front(s);
        }
        self.ready_len.store(ready.count, Ordering::SeqCst);
        drop(ready);
        self.wake_one();
    }

    fn restore_expired_leases(&self, now: Instant, visibility: Option<Duration>) {
        let expired = self.leases.lock().take_expired(now, visibility);
        self.restore(expired);
    }

    fn dead_letter(&self, envelope: Arc<Envelope>, reason: DeathReason) -> Option<DeadLetter> {
        let exchange = self.spec.dead_letter_exchange.clone()?;
        Some(DeadLetter {
            envelope: Arc::unwrap_or_clone(envelope),
            queue: self.spec.name.clone(),
            reason,
            exchange,
            routing_key: self.spec.dead_letter_routing_key.clone(),
        })
    }

    fn put(&self, envelope: Envelope, now: Instant, dead: &mut Vec<DeadLetter>) {
        let ttl = match (
            envelope.message.properties.expiration,
            self.spec.message_ttl,
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let stored = Stored {
            envelope: Arc::new(envelope),
            // A TTL too large for the clock never expires.
            expires_at: ttl.and_then(|t| now.checked_add(t)),
        };
        let mut ready = self.ready.lock();
        ready.push_back(stored);
        if let Some(max) = self.spec.max_length {
            while ready.count as u64 > max {
                // RabbitMQ's default overflow: drop from the head.
                match ready.pop_front() {
                    Some(old) => {
                        dead.extend(self.dead_letter(old.envelope, DeathReason::MaxLength))
                    }
                    None => break,
                }
            }
        }
        self.ready_len.store(ready.count, Ordering::SeqCst);
        drop(ready);
        self.wake_one();
    }
}

impl MemoryBackend {
    /// An empty broker (not registered under any name).
    pub fn new() -> Self {
        MemoryBackend::default()
    }

    fn find(&self, name: &str) -> Option<Arc<MemQueue>> {
        self.queues.load().get(name).cloned()
    }

    /// Runs `f` on a queue without touching any shared counter (no lock, no refcount).
    fn with_queue<R>(&self, name: &str, f: impl FnOnce(&MemQueue) -> R) -> Option<R> {
        self.queues.load().get(name).map(|q| f(q))
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn capabilities(&self) -> BackendCapabilities {
        let mut c = BackendCapabilities::new(Capabilities {
            priorities: true,
            message_ttl: true,
            max_length: true,
            dead_lettering: true,
            visibility_timeout: true,
            restore_on_drop: true,
            publisher_confirms: true,
            delayed_delivery: true,
            tokio_clock: true,
            peek: true,
            ..Capabilities::none()
        });
        // A look at an empty queue costs no I/O: spin a little before sleeping.
        c.idle_spins = 8;
        c.transport = "memory";
        c
    }

    async fn exchange(&self, name: &str, declare: Option<&Exchange>) -> Result<Option<Exchange>> {
        Ok(match declare {
            Some(exchange) => Some(
                self.exchanges
                    .write()
                    .entry(name.to_owned())
                    .or_insert_with(|| exchange.clone())
                    .clone(),
            ),
            None => self.exchanges.read().get(name).cloned(),
        })
    }

    async fn queue_stats(&self, name: &str) -> Result<Option<QueueStats>> {
        self.stats(name).await
    }

    async fn peek(&self, queue: &str, limit: usize) -> Result<Vec<Envelope>> {
        Ok(self.peek_queue(queue, limit))
    }

    async fn delete_exchange(&self, name: &str) -> Result<()> {
        self.exchanges.write().remove(name);
        self.bindings.write().remove(name);
        Ok(())
    }

    async fn queue(&self, name: &str, declare: Option<&Queue>) -> Result<Option<StoredQueue>> {
        let stored = |q: &MemQueue| {
            // Delayed messages now due are ready (the next take moves them).
            let due = match q.delayed_len.load(Ordering::SeqCst) {
                0 => 0,
                _ => q.delayed.lock().count_due(Instant::now()),
            };
            let messages = (q.ready.lock().count + due) as u64;
            StoredQueue::new(Some(queue_settings(&q.spec)), messages)
        };
        let Some(queue) = declare else {
            return Ok(self.with_queue(name, stored));
        };
        let _writer = self.declaring.lock();
        if let Some(existing) = self.with_queue(name, stored) {
            return Ok(Some(existing));
        }
        let mut map = FxHashMap::clone(&self.queues.load());
        map.insert(name.to_owned(), Arc::new(MemQueue::new(queue.clone())));
        self.queues.store(Arc::new(map));
        Ok(Some(StoredQueue::new(Some(queue_settings(queue)), 0)))
    }

    async fn delete_queue(&self, queue: &str) -> Result<u64> {
        let removed = {
            let _writer = self.declaring.lock();
            let mut map = FxHashMap::clone(&self.queues.load());
            let removed = map.remove(queue);
            self.queues.store(Arc::new(map));
            removed
        };
        {
            let mut bindings = self.bindings.write();
            for rows in bindings.values_mut() {
                if rows.iter().any(|r| r.queue == queue) {
                    let kept: Vec<BindingRow> =
                        rows.iter().filter(|r| r.queue != queue).cloned().collect();
                    *rows = kept.into();
                }
            }
        }
        Ok(match removed {
            None => 0,
            Some(q) => {
                let count = q.ready.lock().count as u64;
                q.notify.notify_waiters();
                count
            }
        })
    }

    async fn bind(&self, row: &BindingRow) -> Result<()> {
        let mut bindings = self.bindings.write();
        let rows = bindings
            .entry(row.exchange.clone())
            .or_insert_with(|| Arc::from(Vec::new()));
        if !rows.contains(row) {
            let mut new: Vec<BindingRow> = rows.to_vec();
            new.push(row.clone());
            *rows = new.into();
        }
        Ok(())
    }

    async fn unbind(&self, row: &BindingRow) -> Result<()> {
        let mut bindings = self.bindings.write();
        if let Some(rows) = bindings.get_mut(&row.exchange) {
            let kept: Vec<BindingRow> = rows.iter().filter(|r| *r != row).cloned().collect();
            *rows = kept.into();
        }
        Ok(())
    }

    async fn bindings(&self, exchange: &str) -> Result<Arc<[BindingRow]>> {
        Ok(self
            .bindings
            .read()
            .get(exchange)
            .cloned()
            .unwrap_or_else(|| Arc::from(Vec::new())))
    }

    async fn put(&self, queue: &str, envelope: Envelope) -> Result<Vec<DeadLetter>> {
        let mut dead = Vec::new();
        let stored = self.with_queue(queue, |q| q.put(envelope, Instant::now(), &mut dead));
        if stored.is_none() {
            tracing::debug!(%queue, "message for an undeclared queue dropped");
        }
        Ok(dead)
    }

    async fn put_many(&self, items: Vec<(String, Envelope)>) -> Result<Vec<DeadLetter>> {
        let mut dead = Vec::new();
        let now = Instant::now();
        let queues = self.queues.load();
        for (queue, envelope) in items {
            match queues.get(&queue) {
                Some(q) => q.put(envelope, now, &mut dead),
                None => tracing::debug!(%queue, "message for an undeclared queue dropped"),
            }
        }
        Ok(dead)
    }

    async fn put_delayed(&self, items: Vec<(String, Envelope)>, delay: Duration) -> Result<()> {
        let now = Instant::now();
        // A delay too long for the clock: about thirty years, which is never.
        let due = now
            .checked_add(delay)
            .unwrap_or(now + Duration::from_secs(86_400 * 365 * 30));
        let queues = self.queues.load();
        for (queue, envelope) in items {
            match queues.get(&queue) {
                Some(q) => q.hold(due, [envelope]),
                None => tracing::debug!(%queue, "message for an undeclared queue dropped"),
            }
        }
        Ok(())
    }

    async fn get_many(&self, queue: &str, max: usize, mode: TakeMode) -> Result<Fetched> {
        let mut fetched = Fetched::default();
        let Some(q) = self.find(queue) else {
            return Ok(fetched);
        };
        let now = Instant::now();
        let visibility = match mode {
            TakeMode::Lease(visibility) => visibility,
            // No backend-wide default here: a memory timeout is per connection.
            TakeMode::NoAck => None,
        };
        q.restore_expired_leases(now, visibility);
        q.promote_due(now, &mut fetched.dead);
        if q.ready_len.load(Ordering::SeqCst) == 0 {
            return Ok(fetched);
        }
        let mut taken = Vec::with_capacity(max.min(256));
        let more = {
            let mut ready = q.ready.lock();
            while taken.len() < max {
                let Some(stored) = ready.pop_front() else {
                    break;
                };
                if stored.expires_at.is_some_and(|t| t <= now) {
                    fetched
                        .dead
                        .extend(q.dead_letter(stored.envelope, DeathReason::Expired));
                    continue;
                }
                taken.push(stored);
            }
            q.ready_len.store(ready.count, Ordering::SeqCst);
            ready.count > 0
        };
        if !taken.is_empty() {
            let first = self
                .next_receipt
                .fetch_add(taken.len() as u64, Ordering::Relaxed);
            match mode {
                TakeMode::NoAck => {
                    fetched.taken = taken
                        .into_iter()
                        .zip(first..)
                        .map(|(stored, receipt)| Taken {
                            envelope: stored.envelope,
                            receipt: Receipt::Id(receipt),
                        })
                        .collect();
                }
                TakeMode::Lease(lease) => {
                    let mut leases = q.leases.lock();
                    fetched.taken = taken
                        .into_iter()
                        .zip(first..)
                        .map(|(stored, receipt)| {
                            let envelope = Arc::clone(&stored.envelope);
                            leases.lease(receipt, stored, now, lease);
                            Taken {
                                envelope,
                                receipt: Receipt::Id(receipt),
                            }
                        })
                        .collect();
                }
            }
            if more {
                // Pass the baton: another waiting consumer may take the rest.
                q.wake_one();
            }
        }
        Ok(fetched)
    }

    async fn ack_many(&self, queue: &str, receipts: &[Receipt]) -> Result<()> {
        self.with_queue(queue, |q| {
            let mut leases = q.leases.lock();
            for receipt in receipts {
                if let Receipt::Id(id) = receipt {
                    leases.unacked.remove(id);
                }
            }
        });
        Ok(())
    }

    async fn reject(
        &self,
        queue: &str,
        receipt: &Receipt,
        requeue: bool,
    ) -> Result<Option<DeadLetter>> {
        let (Some(q), Receipt::Id(id)) = (self.find(queue), receipt) else {
            return Ok(None);
        };
        let Some(unacked) = q.leases.lock().unacked.remove(id) else {
            return Ok(None);
        };
        if requeue {
            q.restore(vec![unacked.stored]);
            return Ok(None);
        }
        Ok(q.dead_letter(unacked.stored.envelope, DeathReason::Rejected))
    }

    async fn extend_lease(&self, queue: &str, receipt: &Receipt) -> Result<()> {
        let gone = || {
            Error::new(
                crate::error::ErrorKind::StaleDelivery,
                "the lease is gone: the message was settled or restored to its queue",
            )
        };
        let q = self.find(queue).ok_or_else(gone)?;
        let Receipt::Id(id) = receipt else {
            return Ok(());
        };
        let now = Instant::now();
        let mut leases = q.leases.lock();
        let lease = match leases.unacked.get_mut(id) {
            Some(u) => {
                u.taken = now;
                u.lease
            }
            None => return Err(gone()),
        };
        // The take moved forward: the bounds stay lower bounds.
        leases.note_take(now, lease);
        Ok(())
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        let Some(q) = self.find(queue) else {
            return Ok(0);
        };
        let mut ready = q.ready.lock();
        let purged = ready.clear();
        q.ready_len.store(0, Ordering::SeqCst);
        Ok(purged as u64)
    }

    async fn wait(&self, queues: &[String], timeout: Duration) -> Result<()> {
        let qs: Vec<Arc<MemQueue>> = queues.iter().filter_map(|n| self.find(n)).collect();
        let _registered = WaitGuard::register(&qs);
        let now = Instant::now();
        let mut until = now
            .checked_add(timeout)
            .unwrap_or(now + Duration::from_secs(3600));
        let mut notified = Vec::with_capacity(qs.len());
        for q in &qs {
            let mut n = Box::pin(q.notify.notified());
            n.as_mut().enable();
            notified.push(n);
            if q.ready_len.load(Ordering::SeqCst) > 0 {
                return Ok(());
            }
            if let Some(d) = q.leases.lock().next_deadline {
                until = until.min(d);
            }
            if let Some(due) = q.next_due() {
                if due <= now {
                    return Ok(());
                }
                until = until.min(due);
            }
        }
        if notified.is_empty() {
            tokio::time::sleep_until(until).await;
            return Ok(());
        }
        let _ = tokio::time::timeout_at(until, futures::future::select_all(notified)).await;
        Ok(())
    }
}

/// Counts a consumer as waiting on some queues for as long as it lives.
struct WaitGuard<'a>(&'a [Arc<MemQueue>]);

impl<'a> WaitGuard<'a> {
    fn register(queues: &'a [Arc<MemQueue>]) -> Self {
        for q in queues {
            q.waiters.fetch_add(1, Ordering::SeqCst);
        }
        WaitGuard(queues)
    }
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        for q in self.0 {
            q.waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;

    use crate::{Connection, Queue};

    #[tokio::test]
    async fn huge_durations_mean_never_and_do_not_panic() -> crate::Result<()> {
        super::register();
        let conn = Connection::open("memory://huge-durations").await?;
        let q = Queue::new("q").message_ttl(Duration::MAX);
        conn.declare_queue(&q).await?;
        conn.producer()
            .message(&1)
            .routing_key("q")
            .expiration(Duration::MAX)
            .send()
            .await?;
        let mut consumer = conn
            .consumer([q])
            .visibility_timeout(Duration::MAX)
            .build()
            .await?;
        let d = consumer
            .next()
            .await
            .ok_or_else(|| crate::Error::new(crate::ErrorKind::Broker, "the stream ended"))??;
        d.extend_lease().await?;
        assert_eq!(d.decode::<i32>()?, 1);
        d.ack().await?;
        assert_eq!(conn.queue_size("q").await?, 0);
        Ok(())
    }
}
