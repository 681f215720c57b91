//! The store-only broker contract, [`Backend`], and the data it exchanges with core.
//!
//! Twelve required methods, each one logical broker operation; the rest are provided with a
//! default that is correct for a plain store, and a backend overrides one only to do the same
//! thing faster or natively. What every backend used to repeat lives in core's virtual
//! channel instead: the comparison of a redeclared queue or exchange with the stored one (and
//! its `PreconditionFailed`), the coalescing of acks into [`Backend::ack_many`] batches, and the
//! settlement of messages the backend handed over outright ([`Receipt::Unleased`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::capabilities::Capabilities;
use crate::entity::{Exchange, Queue};
use crate::error::{Error, ErrorKind, Result};
use crate::link::LinkWatch;
use crate::transport::QueueStats;
use crate::transport::virtual_transport::{
    BindingRow, DeadLetter, Envelope, Fetched, Receipt, TakeMode,
};
use crate::url::BrokerUrl;
use crate::value::{Headers, Value};

/// Longest pause of the provided [`Backend::wait`] (a plain poll) before the consumer looks
/// again.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Messages taken per round by the provided [`Backend::purge`].
const PURGE_BATCH: usize = 1024;

/// What a backend stores and enforces, and how core should drive it: the transport's
/// [`Capabilities`] (routing ones are core's and ignored) plus performance knobs that only the
/// virtual channel reads, kept out of the public [`Capabilities`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackendCapabilities {
    /// What the backend stores and enforces (priorities, TTL, leases, persistence, ...).
    pub features: Capabilities,
    /// How many times an idle consumer looks again, yielding to the runtime in between, before
    /// it calls [`Backend::wait`]. Only for in-process backends, where a look costs no I/O: a
    /// steady stream of publishes then costs no thread wake-up per message. Default 0.
    pub idle_spins: u32,
    /// The backend carries fanout exchanges itself (kombu's Redis PUB/SUB): a publish to a
    /// fanout exchange with at least one binding goes once to [`Backend::publish_fanout`]
    /// instead of into each bound queue, and the backend hands what it receives to consumers
    /// of the bound queues through [`Backend::get_many`], with [`Receipt::Unleased`].
    /// Default off.
    pub native_fanout: bool,
    /// The transport's name (`redis`, `sqlite`, ...), written in the `x-kombu-transport`
    /// header of the dead letters core makes of unreadable entries. Default empty.
    pub transport: &'static str,
}

impl BackendCapabilities {
    /// A backend with these features, no idle spins and no native fanout.
    pub const fn new(features: Capabilities) -> Self {
        BackendCapabilities {
            features,
            idle_spins: 0,
            native_fanout: false,
            transport: "",
        }
    }
}

/// A queue as a backend knows it: what [`Backend::queue`] returns.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StoredQueue {
    /// The settings it was declared with, exactly as [`queue_settings`] made them; `None` when
    /// the queue exists without a record of them (made by a publish, or by a client that
    /// records none, such as Python kombu).
    pub settings: Option<Headers>,
    /// Its ready messages (not those taken and unsettled), as AMQP's `declare-ok` counts.
    pub messages: u64,
}

impl StoredQueue {
    /// A queue with these settings and this many ready messages.
    pub fn new(settings: Option<Headers>, messages: u64) -> Self {
        StoredQueue { settings, messages }
    }
}

/// The settings a queue declaration records and a redeclaration must match: its
/// x-arguments ([`Queue::declare_arguments`]) plus `kombu-rs:durable`, `kombu-rs:exclusive`
/// and `kombu-rs:auto_delete`. Backends store this table as it is (the stores persist it as
/// JSON, in the format earlier versions wrote) and hand it back in [`StoredQueue::settings`];
/// core compares it with the requested one.
pub fn queue_settings(queue: &Queue) -> Headers {
    let mut settings = queue.declare_arguments();
    for (flag, on) in [
        ("durable", queue.durable),
        ("exclusive", queue.exclusive),
        ("auto_delete", queue.auto_delete),
    ] {
        settings.insert(format!("kombu-rs:{flag}"), Value::Bool(on));
    }
    settings
}

/// The store-only broker contract: store and take messages, keep the binding table and the
/// reliability state (unacked messages and their leases). Backends do no routing, build no
/// envelopes, compare no declarations and batch no acks: the virtual channel does all that
/// once, for every backend.
///
/// # Visibility: the one rule
///
/// A backend with [`Capabilities::visibility_timeout`] records, for each message taken in
/// [`TakeMode::Lease`], **the time of its take or of its last extension**
/// ([`extend_lease`](Self::extend_lease)), never a lease end. Any consumer may restore it (back
/// to the head of its queue, marked redelivered) once `now >= that time + the restorer's own
/// visibility timeout`: the timeout the restoring take runs with (the `Some` of its
/// [`TakeMode::Lease`]; for a take without one, the backend's configured default). The
/// timeout belongs to whoever looks, not to the message, so a consumer configured with
/// `?visibility_timeout=5` restores what a consumer with the 3,600 s default took and left
/// (kombu's Redis `restore_visible` works so, and Python kombu writes the same take time).
/// A take with `TakeMode::Lease(None)` restores nothing by time. The stores' clock is
/// [`unix_now`](crate::transport::unix_now) (memory: its monotonic clock).
///
/// Every method may be called concurrently from many channels and consumers of one
/// connection, and may block on I/O (it is async: it must not block the executor's thread;
/// run blocking calls on `spawn_blocking`). A broker fault is an `Err` with context, never a
/// panic. A method that finds nothing to act on (an unknown queue, a receipt already settled)
/// succeeds doing nothing unless its contract says otherwise: another client may have got
/// there first.
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// What the backend stores and enforces, and the knobs core reads to drive it. Called
    /// once per channel; must not block.
    fn capabilities(&self) -> BackendCapabilities;

    /// Declares or looks up an exchange. With `declare`, records it if no exchange of that
    /// name is recorded (an existing record is left as it is) and returns the record now
    /// stored; without, only looks it up (`None`: unknown). Other connections (and processes,
    /// for a shared store) must find what was declared. Core compares the returned type with
    /// the requested one. A lookup may be served from a short-lived cache (see
    /// [`TopologyCache`](crate::transport::virtual_transport::TopologyCache)), but a declaration through
    /// this backend must be visible to its next lookup.
    async fn exchange(&self, name: &str, declare: Option<&Exchange>) -> Result<Option<Exchange>>;

    /// Removes an exchange and every binding to it. Idempotent.
    async fn delete_exchange(&self, name: &str) -> Result<()>;

    /// Declares or looks up a queue. With `declare`, creates it if it does not exist, recording
    /// [`queue_settings`] (an existing record is left as it is; a queue that exists without one
    /// gets this one), and applies the arguments the backend enforces (priority levels, TTL,
    /// length, dead-lettering, expiry); without, only looks it up. Returns what is stored, or
    /// `None` when the queue exists nowhere: not declared, holding no message, and named in
    /// no binding the backend can see (Python kombu's included). A lookup never creates the
    /// queue.
    ///
    /// Core calls it to declare (and compares the returned settings with the requested ones,
    /// so a conflicting redeclaration fails once, in core) and for `queue_size` (the returned
    /// count; `None` is `NotFound`). Existence alone is asked through
    /// [`queue_exists`](Self::queue_exists), whose default is this lookup.
    async fn queue(&self, name: &str, declare: Option<&Queue>) -> Result<Option<StoredQueue>>;

    /// Deletes a queue, its messages (ready, and unacked where the backend keeps them per queue;
    /// Redis keeps kombu's one unacked table and restores what a deleted queue left there when
    /// its leases end) and its bindings; returns how many
    /// ready messages it held. Idempotent (0 for a queue that does not exist). Consumers
    /// waiting on it should wake.
    async fn delete_queue(&self, name: &str) -> Result<u64>;

    /// Adds a row to the binding table. Idempotent. The exchange is known to exist (core
    /// checked). Visible to [`bindings`](Self::bindings) through this backend at once.
    async fn bind(&self, row: &BindingRow) -> Result<()>;

    /// Removes a row (all four fields equal) from the binding table. Idempotent.
    async fn unbind(&self, row: &BindingRow) -> Result<()>;

    /// Every binding of an exchange, in a stable order. Called on every routed publish: may be
    /// served from a short-lived cache for a shared store.
    async fn bindings(&self, exchange: &str) -> Result<Arc<[BindingRow]>>;

    /// [`bindings`](Self::bindings) read from the store now, past any cache: asked when a
    /// publish matched no binding, so a binding another process made a moment ago (a Celery
    /// client's reply queue, say) is not missed. The default is `bindings`.
    async fn fresh_bindings(&self, exchange: &str) -> Result<Arc<[BindingRow]>> {
        self.bindings(exchange).await
    }

    /// Stores messages, each in its named queue, in one round trip where the broker allows:
    /// appended at the tail (within its priority level where the backend has priorities,
    /// higher first), in the order given for one queue. A message for a queue that was never
    /// declared may create it (kombu's stores do; say so with
    /// [`Capabilities::implicit_queues`]) or be dropped (memory); it must never reach another
    /// queue. Returns the messages pushed out of full queues (`max_length`) whose queue has a
    /// dead-letter exchange; core republishes them. Consumers waiting on these queues should
    /// wake. When it returns `Ok`, every message is stored (a persistent backend: durably, to
    /// its own standard); on `Err`, any of them may or may not be.
    async fn put_many(&self, items: Vec<(String, Envelope)>) -> Result<Vec<DeadLetter>>;

    /// Takes up to `max` ready messages (at least one is wanted) from one queue, oldest (or
    /// highest priority) first, and never blocks waiting for one: an empty queue gives an
    /// empty [`Fetched`] at once. Leases that passed by [the visibility
    /// rule](Backend#visibility-the-one-rule), with this take's timeout (of this or any client
    /// the backend serves), are restored first, marked redelivered.
    ///
    /// In [`TakeMode::Lease`] each message moves to the unacked state atomically with the take
    /// (a crash between the two must not lose it) until [`ack_many`](Self::ack_many),
    /// [`reject`](Self::reject), or the lease's end. In [`TakeMode::NoAck`] it is removed.
    /// Messages found expired on the way are removed and returned in [`Fetched::dead`] when
    /// their queue dead-letters. A backend may hand over messages it holds for nobody else
    /// (Redis fanout over PUB/SUB) with [`Receipt::Unleased`]; core never settles those here.
    async fn get_many(&self, queue: &str, max: usize, mode: TakeMode) -> Result<Fetched>;

    /// Acks taken messages of one queue: removes them from the unacked state. Core coalesces
    /// acks (a batch per queue, written within a moment, before any lease in it ends, and
    /// before the channel closes), so this is the one ack path; one round trip per call where
    /// the broker allows. A receipt that is already gone (its lease ended and the message was
    /// restored, or it was settled) is skipped without error: a late ack is harmless. On a
    /// recoverable `Err` ([`Error::is_recoverable`], an outcome-unknown one included: acks are
    /// idempotent) core retries the batch under `RetryPolicy::default()` (for up to 30 s);
    /// once it gives up (or on another error) it logs the failure and
    /// reports it to the channel that queued the acks, and those messages come back when
    /// their leases end (at-least-once). So a backend whose takes have no lease end (no
    /// visibility timeout) must not fail here except when the messages are gone anyway: an
    /// unacked message must never be left with no way back.
    async fn ack_many(&self, queue: &str, receipts: &[Receipt]) -> Result<()>;

    /// Settles one taken message negatively. With `requeue`, returns it to the head of its
    /// queue (within its priority level), marked redelivered, and wakes a waiting consumer;
    /// without, removes it and hands it back as a [`DeadLetter`] when its queue has a
    /// dead-letter exchange (core republishes it), else drops it. A receipt that is already
    /// gone is skipped (`Ok(None)`).
    async fn reject(
        &self,
        queue: &str,
        receipt: &Receipt,
        requeue: bool,
    ) -> Result<Option<DeadLetter>>;

    /// Whether a queue exists: [`queue`](Self::queue) without a declaration found it. Asked
    /// by `queue_exists`, by mandatory publishes to the default exchange (once per distinct
    /// queue of a batch), and when `purge` removes nothing. Never creates the queue. Default:
    /// that lookup; a backend overrides it when it can answer without counting messages (a
    /// cache of queues found bound, one query instead of two).
    async fn queue_exists(&self, name: &str) -> Result<bool> {
        Ok(self.queue(name, None).await?.is_some())
    }

    /// What the store can tell of a queue ([`Channel::queue_stats`](crate::transport::Channel::queue_stats)):
    /// its ready count, and what else the store keeps (unacked messages, when the oldest ready
    /// one was stored); `None` when the queue does not exist. Consumers are not known to a
    /// store. Default: [`queue`](Self::queue)'s ready count alone.
    async fn queue_stats(&self, name: &str) -> Result<Option<QueueStats>> {
        Ok(self
            .queue(name, None)
            .await?
            .map(|stored| QueueStats::new(stored.messages)))
    }

    /// Up to `limit` of a queue's ready messages in the order takes would hand them out,
    /// without taking, leasing or moving them ([`Channel::peek`](crate::transport::Channel::peek)).
    /// An entry that is not an envelope is shown as the dead letter it would become
    /// ([`dead_letter_envelope`](crate::transport::virtual_transport::dead_letter_envelope)),
    /// never skipped. A missing queue reads as empty (core then asks whether it exists).
    /// Backends with [`Capabilities::peek`] implement it; the default refuses with
    /// [`ErrorKind::Unsupported`].
    async fn peek(&self, queue: &str, limit: usize) -> Result<Vec<Envelope>> {
        let _ = limit;
        Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "the {} transport cannot read queue {queue:?} without taking from it",
                self.capabilities().transport
            ),
        ))
    }

    /// Stores routed messages to become ready in their queues `delay` from now, in one round
    /// trip where the store allows. Until then a delayed message is invisible: no take returns
    /// it, [`queue`](Self::queue) and the queue size do not count it, and it stays invisible
    /// to Python kombu clients of the same store. Once due it joins the tail of its queue (its
    /// own expiration counting from then) without anyone publishing again, with no loss if the
    /// process that stored it or the one moving it dies (the move is atomic), and a consumer
    /// waiting on the queue wakes for it ([`wait`](Self::wait) returns by the due time).
    /// `Ok` means stored. Backends with
    /// [`Capabilities::delayed_delivery`](crate::Capabilities::delayed_delivery) implement it;
    /// the default refuses with [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported).
    async fn put_delayed(&self, items: Vec<(String, Envelope)>, delay: Duration) -> Result<()> {
        let _ = (items, delay);
        Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "the {} transport cannot delay messages",
                self.capabilities().transport
            ),
        ))
    }

    /// Stores one message ([`put_many`](Self::put_many) with one item, the same contract).
    async fn put(&self, queue: &str, envelope: Envelope) -> Result<Vec<DeadLetter>> {
        self.put_many(vec![(queue.to_owned(), envelope)]).await
    }

    /// Removes every ready message of a queue (not the unacked ones); returns how many, 0 for
    /// a queue that does not exist. Purged messages are not dead-lettered. Default: takes
    /// them in [`TakeMode::NoAck`] batches until the queue is empty; a backend overrides it
    /// with one broker operation.
    async fn purge(&self, queue: &str) -> Result<u64> {
        let mut purged = 0u64;
        loop {
            let fetched = self.get_many(queue, PURGE_BATCH, TakeMode::NoAck).await?;
            let n = fetched.taken.len() + fetched.dead.len();
            purged += n as u64;
            if n == 0 {
                return Ok(purged);
            }
        }
    }

    /// Waits until a message may be ready on one of `queues` (published, restored, or a lease
    /// ending), or `timeout` passes, whichever is first; spurious returns are allowed (the
    /// consumer looks and waits again). It blocks or subscribes where the broker can, and
    /// must wake soon after a put through this backend. Default: a plain poll, sleeping for
    /// the timeout or 50 ms, whichever is shorter, for stores that cannot wait for a write.
    async fn wait(&self, queues: &[String], timeout: Duration) -> Result<()> {
        let _ = queues;
        tokio::time::sleep(timeout.min(POLL_INTERVAL)).await;
        Ok(())
    }

    /// Extends an unacked message's lease: records now as its take time (see
    /// [the visibility rule](Backend#visibility-the-one-rule)), for the receipt's take only (a
    /// message restored and taken again is another lease). Called only when
    /// [`Capabilities::visibility_timeout`] is on. A receipt whose lease is gone (acked,
    /// rejected, or restored to its queue) fails with
    /// [`ErrorKind::StaleDelivery`](crate::ErrorKind::StaleDelivery) and changes nothing.
    /// Default: refused as unsupported, for backends without leases.
    async fn extend_lease(&self, queue: &str, receipt: &Receipt) -> Result<()> {
        let _ = (queue, receipt);
        Err(Error::unsupported(
            "this backend has no visibility timeout to extend",
        ))
    }

    /// Moves unreadable entries of `queue` (taken by [`get_many`](Self::get_many), see
    /// [`Fetched::unreadable`](crate::transport::virtual_transport::Fetched)) to the queue
    /// `dlq`: stores each envelope (core built it: the raw bytes as body, headers saying why) at
    /// the tail of `dlq` and removes the leased original its receipt names. Core has declared
    /// `dlq`. There must be no moment where an entry is in neither place: a backend does both
    /// in one transaction or script where the store allows. Default: [`put_many`](Self::put_many)
    /// first, then [`ack_many`](Self::ack_many) of the leased receipts, so a crash between the
    /// two leaves a copy in both places, never in none. [`Receipt::Unleased`] entries are only
    /// stored. Returns what a `max_length` on `dlq` pushed out, as [`put_many`](Self::put_many).
    async fn set_aside(
        &self,
        queue: &str,
        dlq: &str,
        items: Vec<(Receipt, Envelope)>,
    ) -> Result<Vec<DeadLetter>> {
        let mut receipts = Vec::with_capacity(items.len());
        let mut puts = Vec::with_capacity(items.len());
        for (receipt, envelope) in items {
            if receipt != Receipt::Unleased {
                receipts.push(receipt);
            }
            puts.push((dlq.to_owned(), envelope));
        }
        let pushed_out = self.put_many(puts).await?;
        if !receipts.is_empty() {
            self.ack_many(queue, &receipts).await?;
        }
        Ok(pushed_out)
    }

    /// The state of the backend's link to its broker, for a backend that can lose it and
    /// reconnects (Redis); `None` (the default) for one that cannot lose it (memory, a SQLite
    /// file), whose connection then reads [`LinkState::Connected`](crate::LinkState) forever.
    /// [`VirtualConnection`](crate::transport::virtual_transport::VirtualConnection) hands it
    /// out as the connection's [`link`](crate::transport::BrokerConnection::link).
    fn link(&self) -> Option<LinkWatch> {
        None
    }

    /// How many times the backend has found its connection to the broker lost since it was
    /// made (0 for one that never loses it, the default). Core reads it to tell takes made on
    /// a lost connection: a consumer whose buffer holds deliveries it took before the number
    /// moved returns them to their queues at once and takes again. A backend that reconnects
    /// raises it when it finds the loss, before any take goes over a new connection (so a
    /// take that reconnected first is not taken for a stale one).
    fn epoch(&self) -> u64 {
        0
    }

    /// The failover URL the backend is connected to now, when it may have moved to another
    /// one after a loss; `None` (the default): the one it was opened with. Handed out as the
    /// connection's [`url_in_use`](crate::transport::BrokerConnection::url_in_use).
    fn url_in_use(&self) -> Option<BrokerUrl> {
        None
    }

    /// Publishes to a fanout exchange (the envelope names it and its routing key) when
    /// [`BackendCapabilities::native_fanout`] is on; core calls it only then. Default:
    /// refused as unsupported.
    async fn publish_fanout(&self, envelope: Envelope) -> Result<()> {
        let _ = envelope;
        Err(Error::unsupported(
            "this backend does not carry fanout exchanges itself",
        ))
    }
}
