//! [`RedisBackend`]: the virtual transport's [`Backend`] over Redis, in kombu's layout. Taking
//! messages (one Lua script pops them and records them as unacked), publishing, settling,
//! sizes and waiting live here; the other concerns in their own modules.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kombu_core::transport::virtual_transport::{
    Backend, BackendCapabilities, BindingRow, DeadLetter, Envelope, Fetched, Receipt, StoredQueue,
    TakeMode, Taken, TopologyCache, Unreadable, envelope, poll_until_ready,
};
use kombu_core::transport::{QueueStats, unix_now};
use kombu_core::{BrokerUrl, Capabilities, Error, ErrorKind, Exchange, LinkWatch, Queue, Result};
use parking_lot::Mutex;
use redis::AsyncCommands;

use crate::connect::{self, redis_error};
use crate::delayed::Mover;
use crate::fanout::Fanout;
use crate::options::Options;
use crate::reconnect::{Alternative, Link, dead_connection, maybe_written};
use crate::scripts::{
    PUT_DELAYED, REFRESH_BINDING, RESTORE, SET_ASIDE, SLICE, SWEEP_BINDINGS, TAKE, UNLOCK,
};
use crate::topology::{ExpiringBindings, TOPOLOGY_TTL};
use crate::unacked::field_of;
use crate::watch;

/// One connection's backend: a multiplexed connection for commands, a client for the
/// dedicated ones (PUB/SUB, blocking waits), and this process's view of the topology.
pub(crate) struct RedisBackend {
    /// The multiplexed connection every command goes over ([`RedisBackend::conn`]), replaced
    /// when it breaks.
    pub(crate) link: Link,
    /// Opens the dedicated connections (PUB/SUB, blocking waits).
    pub(crate) client: redis::Client,
    /// What the URL asked for.
    pub(crate) options: Options,
    /// The masked URL, naming this connection in errors and logs.
    pub(crate) label: String,
    /// [`TAKE`].
    pub(crate) take: redis::Script,
    /// [`RESTORE`].
    pub(crate) restore: redis::Script,
    /// [`UNLOCK`].
    pub(crate) unlock: redis::Script,
    /// [`SET_ASIDE`].
    pub(crate) set_aside: redis::Script,
    /// [`SLICE`].
    pub(crate) slice: redis::Script,
    /// Exchanges and bindings read, for [`TOPOLOGY_TTL`].
    pub(crate) topology: TopologyCache,
    /// Queues found in a binding table, and when (taken to exist for `topology::BOUND_TTL`).
    pub(crate) bound: Mutex<HashMap<String, Instant>>,
    /// Whether `SCAN` takes `TYPE` (Redis 6 and later); off after the server refused it.
    pub(crate) scan_type: std::sync::atomic::AtomicBool,
    /// When this connection last swept for expired leases, and with which visibility timeout.
    pub(crate) last_sweep: Mutex<Option<(Instant, Duration)>>,
    /// Wakes this connection's idle consumers: its own publishes and restores, fanout
    /// messages received.
    pub(crate) wake: Arc<tokio::sync::Notify>,
    /// Blocking waits for what other connections push.
    pub(crate) watchers: watch::Watchers,
    /// The PUB/SUB task of fanout subscriptions, started by the first fanout binding.
    pub(crate) listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Fanout subscriptions and what arrived for them.
    pub(crate) fanout: Arc<Fanout>,
    /// `x-expires` (ms) of queues declared through this connection: their lists get a
    /// `PEXPIRE` after every publish and take, as kombu does, so an unused queue disappears.
    pub(crate) expiring: Mutex<HashMap<String, u64>>,
    /// Bindings of those queues made through this connection, `(exchange, member)`, which
    /// consumers of the queue keep alive as kombu 5.7 does (binding deadlines), and when they
    /// were last refreshed.
    pub(crate) expiring_bindings: Mutex<HashMap<String, ExpiringBindings>>,
    /// When this connection last swept overdue binding tables.
    pub(crate) bindings_swept: Mutex<Option<Instant>>,
    /// [`REFRESH_BINDING`].
    pub(crate) refresh_binding: redis::Script,
    /// [`SWEEP_BINDINGS`].
    pub(crate) sweep_bindings: redis::Script,
    /// [`PUT_DELAYED`].
    pub(crate) put_delayed: redis::Script,
    /// Moves due delayed messages to their queues while this connection has consumers.
    pub(crate) mover: Mover,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.label)
            .finish_non_exhaustive()
    }
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        if let Some(task) = self.listener.lock().take() {
            task.abort();
        }
    }
}

/// The JSON envelope as stored in the lists.
pub(crate) fn payload(env: &Envelope) -> Vec<u8> {
    envelope::encode(env)
}

/// The priority that picks a message's list (bucket).
pub(crate) fn priority_of(env: &Envelope) -> u8 {
    env.message.properties.priority.unwrap_or(0)
}

/// Envelopes longer than this are read from the server in pieces of this size rather than in
/// the reply of the take (4 MiB): a reply of tens of MiB made the client hold it two or three
/// times over while reading it.
const LARGE_ENTRY: usize = 4 << 20;

impl RedisBackend {
    /// Connects to the first of `alternatives` (see [`connect::open`]) and sets up the backend
    /// for its options; the others are where a lost connection may go next, in `strategy`'s
    /// order.
    pub(crate) async fn connect_to(
        alternatives: Vec<Alternative>,
        strategy: kombu_core::FailoverStrategy,
    ) -> Result<RedisBackend> {
        let Some((options, label, _)) = alternatives.first().cloned() else {
            return Err(Error::config("redis: no URL to connect to"));
        };
        let (client, conn) = connect::open(&options, &label).await?;
        let link = Link::new(conn, alternatives, strategy);
        let watchers =
            watch::Watchers::new(client.clone(), label.clone(), options.polling_interval);
        let wake = Arc::new(tokio::sync::Notify::new());
        let mover = Mover::new(
            client.clone(),
            label.clone(),
            options.polling_interval,
            (options.delayed_key(), options.delayed_unreadable_key()),
            wake.clone(),
        );
        Ok(RedisBackend {
            watchers,
            link,
            client,
            options,
            label,
            take: redis::Script::new(TAKE),
            restore: redis::Script::new(RESTORE),
            unlock: redis::Script::new(UNLOCK),
            set_aside: redis::Script::new(SET_ASIDE),
            slice: redis::Script::new(SLICE),
            topology: TopologyCache::new(TOPOLOGY_TTL),
            bound: Mutex::new(HashMap::new()),
            scan_type: std::sync::atomic::AtomicBool::new(true),
            last_sweep: Mutex::new(None),
            wake,
            listener: Mutex::new(None),
            fanout: Arc::new(Fanout::default()),
            expiring: Mutex::new(HashMap::new()),
            expiring_bindings: Mutex::new(HashMap::new()),
            bindings_swept: Mutex::new(None),
            refresh_binding: redis::Script::new(REFRESH_BINDING),
            sweep_bindings: redis::Script::new(SWEEP_BINDINGS),
            put_delayed: redis::Script::new(PUT_DELAYED),
            mover,
        })
    }

    /// Maps a redis error to kombu's, naming this connection and `what` was being done.
    pub(crate) fn err(&self, what: &str) -> impl FnOnce(redis::RedisError) -> Error + '_ {
        let what = what.to_owned();
        move |e| redis_error(&self.label, &what, e)
    }

    /// Drops what was cached of exchanges, bindings and bound queues.
    pub(crate) fn forget_topology(&self) {
        self.topology.clear();
        self.bound.lock().clear();
    }

    /// Reads the `len` bytes of a large message taken under `field`, a [`LARGE_ENTRY`] piece
    /// at a time, into one buffer of its exact size. `None` when the lease is gone.
    async fn read_large(&self, field: &str, len: usize) -> Result<Option<Vec<u8>>> {
        let mut out = Vec::with_capacity(len);
        let mut conn = self.conn().await?;
        while out.len() < len {
            // The unacked value is `[` + the envelope + a suffix: the envelope starts at byte 2.
            let first = out.len() + 2;
            let last = (out.len() + LARGE_ENTRY).min(len) + 1;
            let piece: Option<Vec<u8>> = self
                .slice
                .key(&self.options.unacked)
                .arg(field)
                .arg(first)
                .arg(last)
                .invoke_async(&mut conn)
                .await
                .map_err(self.err("take a large message"))?;
            match piece {
                Some(piece) if !piece.is_empty() => out.extend_from_slice(&piece),
                _ => return Ok(None),
            }
        }
        Ok(Some(out))
    }
}

#[async_trait]
impl Backend for RedisBackend {
    fn capabilities(&self) -> BackendCapabilities {
        let mut c = Capabilities::none();
        c.persistent = true;
        c.shared_between_processes = true;
        c.visibility_timeout = true;
        c.implicit_queues = true;
        c.priority_buckets = true;
        c.delayed_delivery = true;
        c.peek = true;
        let mut backend = BackendCapabilities::new(c);
        // Fanout exchanges over PUB/SUB, as kombu carries them.
        backend.native_fanout = true;
        backend.transport = "redis";
        backend
    }

    fn link(&self) -> Option<LinkWatch> {
        Some(self.link.watch())
    }

    fn epoch(&self) -> u64 {
        self.link.epoch()
    }

    fn url_in_use(&self) -> Option<BrokerUrl> {
        self.link.url_in_use()
    }

    // Exchanges, queues and bindings: in `topology.rs`.

    async fn exchange(&self, name: &str, declare: Option<&Exchange>) -> Result<Option<Exchange>> {
        match declare {
            Some(exchange) => {
                let stored = self.store_exchange(exchange).await?;
                self.link.declared.lock().exchange(exchange);
                Ok(stored)
            }
            None => {
                // After a reconnection, not before this backend's declarations are back.
                self.link.replayed().await;
                self.read_exchange(name).await
            }
        }
    }

    async fn delete_exchange(&self, name: &str) -> Result<()> {
        self.remove_exchange(name).await?;
        self.link.declared.lock().delete_exchange(name);
        Ok(())
    }

    async fn queue(&self, name: &str, declare: Option<&Queue>) -> Result<Option<StoredQueue>> {
        match declare {
            Some(queue) => {
                let stored = self.store_queue(queue).await?;
                self.link.declared.lock().queue(queue);
                Ok(Some(stored))
            }
            None => self.find_queue(name).await,
        }
    }

    async fn queue_exists(&self, name: &str) -> Result<bool> {
        self.queue_known(name).await
    }

    // Stats and peeks: in `browse.rs`.

    async fn queue_stats(&self, name: &str) -> Result<Option<QueueStats>> {
        self.stats(name).await
    }

    async fn peek(&self, queue: &str, limit: usize) -> Result<Vec<Envelope>> {
        self.peek_queue(queue, limit).await
    }

    async fn delete_queue(&self, queue: &str) -> Result<u64> {
        let removed = self.remove_queue(queue).await?;
        self.link.declared.lock().delete_queue(queue);
        Ok(removed)
    }

    async fn bind(&self, row: &BindingRow) -> Result<()> {
        self.add_binding(row).await?;
        self.link.declared.lock().bind(row);
        Ok(())
    }

    async fn unbind(&self, row: &BindingRow) -> Result<()> {
        self.remove_binding(row).await?;
        self.link.declared.lock().unbind(row);
        Ok(())
    }

    async fn bindings(&self, exchange: &str) -> Result<Arc<[BindingRow]>> {
        // After a reconnection, routing waits for this backend's bindings to be back.
        self.link.replayed().await;
        self.read_bindings(exchange).await
    }

    async fn fresh_bindings(&self, exchange: &str) -> Result<Arc<[BindingRow]>> {
        self.link.replayed().await;
        self.topology.forget_bindings(exchange);
        self.read_bindings(exchange).await
    }

    async fn put_many(&self, items: Vec<(String, Envelope)>) -> Result<Vec<DeadLetter>> {
        let mut pipe = redis::pipe();
        for (queue, env) in &items {
            pipe.lpush(self.options.list_key(queue, priority_of(env)), payload(env))
                .ignore();
        }
        {
            let expiring = self.expiring.lock();
            if !expiring.is_empty() {
                let mut done = std::collections::HashSet::new();
                for (queue, _) in &items {
                    if let Some(ms) = expiring.get(queue)
                        && done.insert(queue.as_str())
                    {
                        for key in self.options.list_keys(queue) {
                            pipe.cmd("PEXPIRE").arg(key).arg(*ms).ignore();
                        }
                    }
                }
            }
        }
        let mut conn = self.conn().await?;
        let _: () = pipe
            .query_async(&mut conn)
            .await
            .map_err(self.err("publish"))
            .map_err(maybe_written)?;
        // This connection's idle consumers look at once; others' watchers see the push.
        self.wake.notify_waiters();
        Ok(Vec::new())
    }

    async fn put_delayed(&self, items: Vec<(String, Envelope)>, delay: Duration) -> Result<()> {
        // In `delayed.rs`.
        self.store_delayed(items, delay).await
    }

    async fn get_many(&self, queue: &str, max: usize, mode: TakeMode) -> Result<Fetched> {
        // Due delayed messages reach the lists while this connection has consumers.
        self.mover.touch();
        let mut fetched = Fetched::default();
        if self.fanout.is_fanout_queue(queue) {
            (fetched.taken, fetched.unreadable) = self.fanout.take_deliveries(queue, max.max(1));
            if fetched.taken.len() + fetched.unreadable.len() >= max.max(1) {
                return Ok(fetched);
            }
        }
        let max = max.max(1) - fetched.taken.len() - fetched.unreadable.len();
        let o = &self.options;
        // The restorer's own visibility timeout (the visibility rule): this take's.
        let visibility = match mode {
            TakeMode::Lease(timeout) => timeout,
            TakeMode::NoAck => Some(o.visibility_timeout),
        };
        if let Some(visibility) = visibility {
            self.sweep(visibility).await?;
        }
        let (lease, score) = match mode {
            TakeMode::NoAck => ("0", 0.0),
            // kombu's score: the take time. Whoever sweeps applies its own timeout.
            TakeMode::Lease(_) => ("1", unix_now()),
        };
        let keys = o.list_keys(queue);
        let mut script = self.take.key(&o.unacked);
        script.key(&o.unacked_index);
        for k in &keys {
            script.key(k);
        }
        // Fields are `<token>:<n>`; the token is unique per take. Two UUIDs make every field
        // longer than Redis's `zset-max-listpack-value` (64 bytes), so `unacked_index` is a
        // skip list from its first entry: in the compact listpack form every insert scans the
        // set and parses each score, which made a take of 100 cost about 1 ms on the server.
        let token = format!(
            "{}{}:",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let suffix = format!(", \"\", {}]", serde_json::Value::from(queue));
        script
            .arg(max)
            .arg(score)
            .arg(lease)
            .arg(&token)
            .arg(&suffix)
            .arg(LARGE_ENTRY);
        let mut conn = self.conn().await?;
        let taken: redis::RedisResult<(Vec<Vec<u8>>, Vec<usize>)> =
            script.invoke_async(&mut conn).await;
        let (mut raw, large) = match taken {
            Ok(taken) => taken,
            Err(e) => {
                if lease == "1" && dead_connection(&e) {
                    // The server may have made the take: its leases go back on reconnect.
                    self.link.lost_take(token, max, queue);
                }
                return Err(self.err("take")(e));
            }
        };
        // Large entries come in pieces; one whose lease is gone already (swept back to its
        // queue in between) is not delivered from this take.
        let mut gone = Vec::new();
        for pair in large.chunks_exact(2) {
            let (n, len) = (pair[0], pair[1]);
            let field = format!("{token}{n}");
            let read = match self.read_large(&field, len).await {
                Ok(read) => read,
                Err(error) => {
                    // Nothing of this take reaches the consumer: back to the queue now, not
                    // when the leases end (best effort: the sweep does it otherwise).
                    let fields: Vec<String> =
                        (1..=raw.len()).map(|i| format!("{token}{i}")).collect();
                    if let Err(restore) = self.restore_tags(&fields, Some(queue), None).await {
                        tracing::warn!(url = %self.label, %queue, error = %restore, "a failed take left its messages leased until the sweep");
                    }
                    return Err(error);
                }
            };
            match read {
                Some(bytes) => {
                    if let Some(slot) = raw.get_mut(n - 1) {
                        *slot = bytes;
                    }
                }
                None => gone.push(n),
            }
        }
        // What was taken is in `unacked` now and must reach the consumer: the upkeep of an
        // expiring queue that follows is best effort (it is done again at the next take).
        let expires = self.expiring.lock().get(queue).copied();
        if let Some(ms) = expires {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("PEXPIRE").arg(key).arg(ms).ignore();
            }
            let refreshed: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
            if let Err(err) = refreshed {
                tracing::warn!(url = %self.label, %queue, error = %err, "queue expiry not refreshed");
            }
            if let Err(err) = self.binding_upkeep(queue, ms).await {
                tracing::warn!(url = %self.label, %queue, error = %err, "binding tables not kept up");
            }
        }
        fetched.taken.reserve(raw.len());
        for (n, body) in raw.into_iter().enumerate() {
            if gone.contains(&(n + 1)) {
                continue;
            }
            // Only a lease has a field in `unacked` to settle.
            let receipt = if lease == "1" {
                Receipt::Key(format!("{token}{}", n + 1))
            } else {
                Receipt::Unleased
            };
            match envelope::decode(&body) {
                Ok(env) => fetched.taken.push(Taken {
                    envelope: Arc::new(env),
                    receipt,
                }),
                // Not a kombu envelope (kombu fails on it too): core moves it to the queue's
                // dead-letter queue with `set_aside`; until then it is leased like the others.
                Err(err) => fetched.unreadable.push(Unreadable {
                    raw: body.into(),
                    reason: err.to_string(),
                    receipt,
                }),
            }
        }
        Ok(fetched)
    }

    async fn ack_many(&self, _queue: &str, receipts: &[Receipt]) -> Result<()> {
        let mut fields = Vec::with_capacity(receipts.len());
        for receipt in receipts {
            if *receipt != Receipt::Unleased {
                fields.push(field_of(receipt)?.to_owned());
            }
        }
        self.remove_unacked(&fields).await
    }

    async fn reject(
        &self,
        queue: &str,
        receipt: &Receipt,
        requeue: bool,
    ) -> Result<Option<DeadLetter>> {
        if *receipt == Receipt::Unleased {
            return Ok(None); // nothing in Redis to settle
        }
        let field = field_of(receipt)?.to_owned();
        if requeue {
            self.restore_tags(&[field], Some(queue), None).await?;
        } else {
            self.remove_unacked(&[field]).await?;
        }
        Ok(None)
    }

    async fn extend_lease(&self, _queue: &str, receipt: &Receipt) -> Result<()> {
        if *receipt == Receipt::Unleased {
            return Ok(()); // held in this process, no lease to extend
        }
        let field = field_of(receipt)?;
        let o = &self.options;
        let mut conn = self.conn().await?;
        // XX: only a lease this take still holds (a restored or settled message's field is
        // gone); the score read in the same transaction says whether it was there.
        let (_, score): (i64, Option<f64>) = redis::pipe()
            .atomic()
            .cmd("ZADD")
            .arg(&o.unacked_index)
            .arg("XX")
            .arg(unix_now())
            .arg(field)
            .cmd("ZSCORE")
            .arg(&o.unacked_index)
            .arg(field)
            .query_async(&mut conn)
            .await
            .map_err(self.err("extend lease"))?;
        if score.is_none() {
            return Err(Error::new(
                ErrorKind::StaleDelivery,
                format!(
                    "redis {}: the lease is gone (settled, or restored to its queue)",
                    self.label
                ),
            ));
        }
        Ok(())
    }

    async fn set_aside(
        &self,
        _queue: &str,
        dlq: &str,
        items: Vec<(Receipt, Envelope)>,
    ) -> Result<Vec<DeadLetter>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        // One script: each dead letter is pushed in the same atomic step that takes its
        // original out of `unacked`, so no moment has it in neither place (nor in both).
        let o = &self.options;
        let mut script = self.set_aside.key(&o.unacked);
        script.key(&o.unacked_index);
        for (receipt, env) in &items {
            let field = match receipt {
                Receipt::Unleased => "",
                leased => field_of(leased)?,
            };
            // The list a put of this envelope to `dlq` uses, so it is an ordinary message there.
            script.key(o.list_key(dlq, priority_of(env)));
            script.arg(field).arg(payload(env));
        }
        let mut conn = self.conn().await?;
        let _: i64 = script
            .invoke_async(&mut conn)
            .await
            .map_err(self.err("move unreadable messages to their dead-letter queue"))?;
        self.wake.notify_waiters();
        Ok(Vec::new())
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        let keys = self.options.list_keys(queue);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for k in &keys {
            pipe.llen(k);
        }
        for k in &keys {
            pipe.del(k).ignore();
        }
        let mut conn = self.conn().await?;
        let lens: Vec<u64> = pipe
            .query_async(&mut conn)
            .await
            .map_err(self.err("purge"))?;
        let buffered = self.fanout.purge(queue);
        Ok(lens.iter().sum::<u64>() + buffered as u64)
    }

    async fn publish_fanout(&self, envelope: Envelope) -> Result<()> {
        let topic = self
            .options
            .fanout_topic(&envelope.exchange, &envelope.routing_key);
        let mut conn = self.conn().await?;
        let _: i64 = conn
            .publish(topic, payload(&envelope))
            .await
            .map_err(self.err("publish to a fanout exchange"))
            .map_err(maybe_written)?;
        Ok(())
    }

    async fn wait(&self, queues: &[String], timeout: Duration) -> Result<()> {
        self.mover.touch();
        let notified = self.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        self.sweep(self.options.visibility_timeout).await?;
        if queues.iter().any(|q| self.fanout.len(q) > 0) {
            return Ok(());
        }
        let keys: Vec<String> = queues
            .iter()
            .filter(|q| !self.fanout.is_fanout_queue(q))
            .flat_map(|q| self.options.list_keys(q))
            .collect();
        if self.watchers.wait(&keys, timeout, &mut notified).await {
            return Ok(());
        }
        // No blocking wait possible: look every so often, backing off to `polling_interval`,
        // sweeping expired leases before every look but the first (swept above).
        let mut swept = true;
        let pauses = (Duration::from_millis(5), self.options.polling_interval);
        let keys = &keys;
        poll_until_ready(notified, timeout, pauses, || {
            let sweep = !std::mem::take(&mut swept);
            async move {
                if sweep {
                    self.sweep(self.options.visibility_timeout).await?;
                }
                let mut pipe = redis::pipe();
                for k in keys {
                    pipe.llen(k);
                }
                let mut conn = self.conn().await?;
                let lens: Vec<u64> = pipe
                    .query_async(&mut conn)
                    .await
                    .map_err(self.err("poll"))?;
                Ok(lens.iter().any(|n| *n > 0) || queues.iter().any(|q| self.fanout.len(q) > 0))
            }
        })
        .await
    }
}
