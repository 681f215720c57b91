//! The Redis transport for kombu-rs, sharing queues with Python kombu and Celery on the same
//! Redis: kombu's key layout, with taking a message and recording it as unacked in one atomic
//! step.
//!
//! URLs: `redis://[user:password@]host[:port][/db]`, `rediss://…` (TLS: the server's
//! certificate is verified against the system's roots, or `ssl_ca_certs=<PEM file>`;
//! `ssl_cert_reqs=none` turns verification off, which is kombu's default for a bare
//! `rediss://`; `ssl_certfile` + `ssl_keyfile` for a client certificate), and
//! `redis+socket:///path/to/redis.sock` and `unix:///path/to/redis.sock` (Unix socket,
//! `?virtual_host=<db>` or `?db=<db>`, credentials as `user:password@` before the path) and
//! `sentinel://` (below). Transport options in the query string, as kombu users
//! know them:
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `visibility_timeout` | `3600` | seconds after delivery before an unacked message is restored |
//! | `priority_steps` | `0,3,6,9` | priority buckets; **lower numbers are consumed first**, as in kombu |
//! | `sep` | `\x06\x16` | separator of priority keys and binding members |
//! | `global_keyprefix` | empty | prefix of every key |
//! | `unacked_key`, `unacked_index_key`, `unacked_mutex_key` | `unacked`, `unacked_index`, `unacked_mutex` | kombu's ack-emulation keys |
//! | `polling_interval` | `1` | seconds between looks at the lists when an idle consumer cannot block on the server (Redis before 6.2, more than 128 lists, a blocking connection down) |
//! | `fanout_prefix` | `true` (`/{db}.`) | PUB/SUB topic prefix of fanout exchanges; `false` for none, or a string |
//! | `fanout_patterns` | `true` | append `/<routing key>` to fanout topics (kombu's default) |
//!
//! # Layout (kombu's, `kombu/transport/redis.py`)
//!
//! * Queue `q` is the list `q` (priority bucket 0) and `q\x06\x16<n>` for the other steps;
//!   publishers `LPUSH` the JSON envelope, consumers take from the right, bucket 0 first.
//! * Bindings: the set `_kombu.binding.<exchange>` with members
//!   `<routing_key>\x06\x16<pattern>\x06\x16<queue>` (the pattern is kombu's regex for topic
//!   bindings, the binding arguments as JSON for headers bindings, empty otherwise).
//! * Unacked messages: the hash `unacked` (delivery tag → `[envelope, exchange, routing_key]`)
//!   and the sorted set `unacked_index` (delivery tag → delivery time), restored after the
//!   visibility timeout by whichever consumer (Python or Rust) sweeps first, under
//!   `unacked_mutex`.
//! * Exchange types are kept in the hash `_kombu_rs.exchanges` (kombu keeps them in process
//!   memory); an exchange found only by its binding set is taken as direct.
//! * A queue exists (`queue_exists`, so mandatory publishes and the size of a missing queue)
//!   when kombu-rs declared it, one of its lists exists, or a binding table names it: Python
//!   kombu and Celery record nothing else for a queue, and an empty queue has no list. Tables
//!   are read in the order most likely to find it: the one named after the queue (Celery's
//!   default exchange for a queue has its name), those of the exchanges kombu-rs knows, and
//!   only then every `_kombu.binding.*` (`SCAN … COUNT 1000`). A key of such a name that is not
//!   a set is passed over. A queue found bound is taken to exist for 5 seconds without looking
//!   again, unless it is deleted or unbound through the same connection.
//!
//! kombu pops a message and records it as unacked in a later command, so a crash in between
//! loses it. Here one Lua script pops up to `prefetch` messages and writes their `unacked` and
//! `unacked_index` entries, in kombu's format, atomically: a killed consumer's messages are
//! always in `unacked` and come back after the visibility timeout, restored by kombu-rs or by
//! Python kombu. Each entry is keyed by the take (a token and a number), not by the message's
//! `delivery_tag` as kombu keys its own: a message restored and taken again gets a new entry,
//! so a late ack of an earlier take removes nothing. Its value names the default exchange
//! and the queue (`[envelope, "", "<queue>"]`), so whoever restores it, Python kombu's sweep
//! included, puts it back in the queue it came from. Acks are `HDEL` + `ZREM`, as kombu's,
//! queued and written in batches in the background (see `AckQueue`).
//!
//! # Waiting
//!
//! Idle consumers block on the server: a dedicated connection per list they wait on sends
//! `BLMOVE <list> <list> LEFT LEFT`, which returns when anyone (kombu-rs or Python kombu)
//! pushes, and leaves the list exactly as it was (it pops the newest element and pushes it
//! straight back, in one atomic step). See the `watch` module for the details and the limits
//! (at most 128 watched lists per connection; before Redis 6.2, polling every
//! `polling_interval`).
//!
//! A lease can be extended (`unacked_index` moves forward). Scores are written as `deadline −
//! visibility_timeout`, which is the delivery time for an ordinary lease, so a Python sweeper
//! configured with the same `visibility_timeout` restores a message exactly when its lease
//! ends.
//!
//! * Fanout exchanges go over PUB/SUB as in kombu: a publish is one `PUBLISH` to
//!   `<global_keyprefix><fanout_prefix><exchange>[/<routing key>]` (`fanout_prefix` defaults
//!   to `/{db}.`, `fanout_patterns` to on); a queue of this process bound to a fanout
//!   exchange subscribes to the binding's topic (`#` as Redis's `*`) when it is bound, and its
//!   consumers get what arrives from then on. At-most-once, like kombu's: nothing is stored.
//!   With kombu's default `fanout_patterns=true` a binding only gets messages published with
//!   its own routing key (an empty key only empty keys); `fanout_patterns=false` gives AMQP's
//!   fanout, where every bound queue gets every message (Python consumers must use the same
//!   setting).
//!
//! * Queue expiry (`x-expires`): as kombu does, a connection that declared a queue with an
//!   expiry refreshes its lists' `PEXPIRE` after every publish and every take, so a queue
//!   nobody uses disappears with its messages. Binding tables follow kombu 5.7: a binding of
//!   an expiring queue raises its exchange's deadline in `_kombu.binding_deadlines` (at least
//!   an hour, or twice `x-expires`, by the server's clock), consumers of the queue refresh it
//!   every third of that, and sweep tables whose deadline passed (at most every minute) unless
//!   `_kombu.binding_permanent.<exchange>` still lists a binding of a queue that does not
//!   expire.
//!
//! * `sentinel://host:26379[/db]?master_name=<name>` asks that sentinel for the master's
//!   address and connects to it (user and password from the URL are the master's). Several
//!   sentinels are `;`-separated URLs, tried in turn as failover alternatives.
//!
//! Priorities follow kombu's buckets, not AMQP's order: the `priorities` capability is off,
//! `priority_buckets` on.
#![deny(missing_docs, unsafe_code)]

use std::collections::HashMap;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kombu_core::transport::unix_now;
use kombu_core::virtual_transport::{
    Backend, BindingRow, DeadLetter, Envelope, Fetched, Receipt, TakeMode, Taken, TopologyCache,
    VirtualConnection, envelope,
};
use kombu_core::{
    BrokerConnection, BrokerUrl, Capabilities, Error, Exchange, Queue, Result, Transport,
    register_transport,
};
use parking_lot::Mutex;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

mod acks;
mod connect;
mod fanout;
mod keys;
mod options;
mod scripts;
mod topology;
mod unacked;
mod watch;

use crate::acks::{AckQueue, spawn_flusher};
use crate::connect::redis_error;
use crate::fanout::{Fanout, is_fanout_receipt};
use crate::options::Options;
use crate::scripts::{REFRESH_BINDING, RESTORE, SWEEP_BINDINGS, TAKE, UNLOCK};
use crate::topology::{ExpiringBindings, TOPOLOGY_TTL};
use crate::unacked::field_of;

/// Registers the `redis`, `rediss`, `redis+socket`, `unix` and `sentinel` URL schemes
/// (idempotent).
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| register_transport(Arc::new(RedisTransport)));
}

/// The Redis transport (see the crate documentation).
#[derive(Debug, Default, Clone, Copy)]
pub struct RedisTransport;

#[async_trait]
impl Transport for RedisTransport {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn schemes(&self) -> &'static [&'static str] {
        &["redis", "rediss", "sentinel", "unix"]
    }

    async fn connect(&self, url: &BrokerUrl) -> Result<Arc<dyn BrokerConnection>> {
        let options = Options::from_url(url)?;
        let label = url.masked();
        let backend = RedisBackend::connect(options.clone(), label).await?;
        Ok(Arc::new(VirtualConnection::new(
            Arc::new(backend),
            Some(options.visibility_timeout),
        )))
    }
}

struct RedisBackend {
    conn: MultiplexedConnection,
    client: redis::Client,
    options: Options,
    label: String,
    take: redis::Script,
    restore: redis::Script,
    unlock: redis::Script,
    topology: TopologyCache,
    /// Queues found in a binding table, and when ([`BOUND_TTL`]).
    bound: Mutex<HashMap<String, Instant>>,
    /// Whether `SCAN` takes `TYPE` (Redis 6 and later); off after the server refused it.
    scan_type: std::sync::atomic::AtomicBool,
    last_sweep: Mutex<Option<Instant>>,
    /// Wakes this connection's idle consumers: its own publishes and restores, fanout
    /// messages received.
    wake: Arc<tokio::sync::Notify>,
    /// Blocking waits for what other connections push.
    watchers: watch::Watchers,
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
    acks: Arc<AckQueue>,
    fanout: Arc<Fanout>,
    /// `x-expires` (ms) of queues declared through this connection: their lists get a
    /// `PEXPIRE` after every publish and take, as kombu does, so an unused queue disappears.
    expiring: Mutex<HashMap<String, u64>>,
    /// Bindings of those queues made through this connection, `(exchange, member)`, which
    /// consumers of the queue keep alive as kombu 5.7 does (binding deadlines), and when they
    /// were last refreshed.
    expiring_bindings: Mutex<HashMap<String, ExpiringBindings>>,
    /// When this connection last swept overdue binding tables.
    bindings_swept: Mutex<Option<Instant>>,
    refresh_binding: redis::Script,
    sweep_bindings: redis::Script,
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

impl RedisBackend {
    async fn connect(options: Options, label: String) -> Result<RedisBackend> {
        let (client, conn) = connect::open(&options, &label).await?;
        let acks = Arc::new(AckQueue::new(
            conn.clone(),
            [options.unacked.clone(), options.unacked_index.clone()],
            label.clone(),
        ));
        let watchers =
            watch::Watchers::new(client.clone(), label.clone(), options.polling_interval);
        Ok(RedisBackend {
            watchers,
            acks,
            conn,
            client,
            options,
            label,
            take: redis::Script::new(TAKE),
            restore: redis::Script::new(RESTORE),
            unlock: redis::Script::new(UNLOCK),
            topology: TopologyCache::new(TOPOLOGY_TTL),
            bound: Mutex::new(HashMap::new()),
            scan_type: std::sync::atomic::AtomicBool::new(true),
            last_sweep: Mutex::new(None),
            wake: Arc::new(tokio::sync::Notify::new()),
            listener: Mutex::new(None),
            fanout: Arc::new(Fanout::default()),
            expiring: Mutex::new(HashMap::new()),
            expiring_bindings: Mutex::new(HashMap::new()),
            bindings_swept: Mutex::new(None),
            refresh_binding: redis::Script::new(REFRESH_BINDING),
            sweep_bindings: redis::Script::new(SWEEP_BINDINGS),
        })
    }

    fn err(&self, what: &str) -> impl FnOnce(redis::RedisError) -> Error + '_ {
        let what = what.to_owned();
        move |e| redis_error(&self.label, &what, e)
    }

    fn forget_topology(&self) {
        self.topology.clear();
        self.bound.lock().clear();
    }
}

#[async_trait]
impl Backend for RedisBackend {
    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::none();
        c.persistent = true;
        c.shared_between_processes = true;
        c.visibility_timeout = true;
        c.implicit_queues = true;
        c.priority_buckets = true;
        c
    }

    async fn declare_exchange(&self, exchange: &Exchange) -> Result<()> {
        self.store_exchange(exchange).await
    }

    async fn lookup_exchange(&self, name: &str) -> Result<Option<Exchange>> {
        self.read_exchange(name).await
    }

    async fn delete_exchange(&self, name: &str) -> Result<()> {
        self.remove_exchange(name).await
    }

    async fn declare_queue(&self, queue: &Queue) -> Result<()> {
        self.store_queue(queue).await
    }

    async fn delete_queue(&self, queue: &str) -> Result<u64> {
        self.remove_queue(queue).await
    }

    async fn queue_exists(&self, queue: &str) -> Result<bool> {
        self.queue_known(queue).await
    }

    async fn bind(&self, row: &BindingRow) -> Result<()> {
        self.add_binding(row).await
    }

    async fn unbind(&self, row: &BindingRow) -> Result<()> {
        self.remove_binding(row).await
    }

    async fn bindings(&self, exchange: &str) -> Result<Arc<[BindingRow]>> {
        self.read_bindings(exchange).await
    }

    async fn put(&self, queue: &str, envelope: Envelope) -> Result<Vec<DeadLetter>> {
        self.put_many(vec![(queue.to_owned(), envelope)]).await
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
        let mut conn = self.conn.clone();
        let _: () = pipe
            .query_async(&mut conn)
            .await
            .map_err(self.err("publish"))?;
        // This connection's idle consumers look at once; others' watchers see the push.
        self.wake.notify_waiters();
        Ok(Vec::new())
    }

    async fn get_many(&self, queue: &str, max: usize, mode: TakeMode) -> Result<Fetched> {
        // Queued acks need not be written first: what they settle is in `unacked`, out of
        // every list, and the sweep below writes them before it restores anything.
        let mut fetched = Fetched::default();
        if self.fanout.is_fanout_queue(queue) {
            fetched.taken = self.fanout.take_deliveries(queue, max.max(1), &self.label);
            if fetched.taken.len() >= max.max(1) {
                return Ok(fetched);
            }
        }
        let max = max.max(1) - fetched.taken.len();
        self.sweep().await?;
        let o = &self.options;
        let (lease, score) = match mode {
            TakeMode::NoAck => ("0", 0.0),
            TakeMode::Lease(timeout) => {
                let timeout = timeout.unwrap_or(o.visibility_timeout);
                // kombu's score is the delivery time; a lease of another length moves it so
                // that sweepers using the connection's timeout restore it when it ends.
                (
                    "1",
                    unix_now() + timeout.as_secs_f64() - o.visibility_timeout.as_secs_f64(),
                )
            }
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
            .arg(&suffix);
        let mut conn = self.conn.clone();
        let raw: Vec<Vec<u8>> = script
            .invoke_async(&mut conn)
            .await
            .map_err(self.err("take"))?;
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
        let mut unreadable = Vec::new();
        for (n, body) in raw.iter().enumerate() {
            let field = format!("{token}{}", n + 1);
            match envelope::decode(body) {
                Ok(env) => fetched.taken.push(Taken {
                    envelope: Arc::new(env),
                    receipt: Receipt::Key(field),
                }),
                Err(err) => {
                    // Not a kombu envelope: nobody can consume it (kombu fails on it too).
                    // Dropped, so that it does not come back forever.
                    tracing::error!(url = %self.label, %queue, error = %err, body = %String::from_utf8_lossy(body), "unreadable message dropped");
                    unreadable.push(field);
                }
            }
        }
        if !unreadable.is_empty() && lease == "1" {
            self.acks.extend(unreadable);
            spawn_flusher(self.acks.clone());
        }
        Ok(fetched)
    }

    async fn ack(&self, _queue: &str, receipt: &Receipt) -> Result<()> {
        if is_fanout_receipt(receipt) {
            return Ok(()); // nothing in Redis to settle
        }
        let field = field_of(receipt)?;
        let queued = self.acks.push(field.to_owned());
        if queued >= 256 {
            // Keep the queue short under a flood of acks.
            return self.acks.flush().await;
        }
        spawn_flusher(self.acks.clone());
        Ok(())
    }

    /// Queues the ack for the background writer without waiting (the common case of `ack`).
    fn try_ack(&self, _queue: &str, receipt: &Receipt) -> Option<Result<()>> {
        if is_fanout_receipt(receipt) {
            return Some(Ok(())); // nothing in Redis to settle
        }
        let field = match field_of(receipt) {
            Ok(field) => field,
            Err(e) => return Some(Err(e)),
        };
        self.acks.push(field.to_owned());
        spawn_flusher(self.acks.clone());
        Some(Ok(()))
    }

    async fn reject(&self, queue: &str, receipt: &Receipt) -> Result<Option<DeadLetter>> {
        self.ack(queue, receipt).await?;
        Ok(None)
    }

    async fn restore(&self, queue: &str, receipt: &Receipt) -> Result<()> {
        self.acks.flush().await?;
        if self.fanout.restore(queue, receipt)? {
            // Back at the head of this process's buffer for the queue.
            self.wake.notify_waiters();
            return Ok(());
        }
        self.restore_tags(&[field_of(receipt)?.to_owned()], Some(queue), None)
            .await
    }

    async fn extend_lease(&self, _queue: &str, receipt: &Receipt, by: Duration) -> Result<()> {
        self.acks.flush().await?;
        if is_fanout_receipt(receipt) {
            return Ok(()); // held in this process, no lease to extend
        }
        let field = field_of(receipt)?;
        let o = &self.options;
        let score = unix_now() + by.as_secs_f64() - o.visibility_timeout.as_secs_f64();
        let mut conn = self.conn.clone();
        // XX: only a lease this take still holds (a restored message's field is gone).
        let _: i64 = redis::cmd("ZADD")
            .arg(&o.unacked_index)
            .arg("XX")
            .arg(score)
            .arg(field)
            .query_async(&mut conn)
            .await
            .map_err(self.err("extend lease"))?;
        Ok(())
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        self.acks.flush().await?;
        let keys = self.options.list_keys(queue);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for k in &keys {
            pipe.llen(k);
        }
        for k in &keys {
            pipe.del(k).ignore();
        }
        let mut conn = self.conn.clone();
        let lens: Vec<u64> = pipe
            .query_async(&mut conn)
            .await
            .map_err(self.err("purge"))?;
        let buffered = self.fanout.purge(queue);
        Ok(lens.iter().sum::<u64>() + buffered as u64)
    }

    async fn size(&self, queue: &str) -> Result<u64> {
        self.acks.flush().await?;
        let mut pipe = redis::pipe();
        for k in self.options.list_keys(queue) {
            pipe.llen(k);
        }
        let mut conn = self.conn.clone();
        let lens: Vec<u64> = pipe
            .query_async(&mut conn)
            .await
            .map_err(self.err("size"))?;
        Ok(lens.iter().sum::<u64>() + self.fanout.len(queue) as u64)
    }

    async fn flush(&self) -> Result<()> {
        self.acks.flush().await
    }

    fn native_fanout(&self) -> bool {
        true
    }

    async fn publish_fanout(&self, envelope: Envelope) -> Result<()> {
        let topic = self
            .options
            .fanout_topic(&envelope.exchange, &envelope.routing_key);
        let mut conn = self.conn.clone();
        let _: i64 = conn
            .publish(topic, payload(&envelope))
            .await
            .map_err(self.err("publish to a fanout exchange"))?;
        Ok(())
    }

    async fn wait(&self, queues: &[String], timeout: Duration) -> Result<()> {
        self.acks.flush().await?;
        let notified = self.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        self.sweep().await?;
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
        // No blocking wait possible: look every so often, backing off to `polling_interval`.
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.llen(k);
            }
            let mut conn = self.conn.clone();
            let lens: Vec<u64> = pipe
                .query_async(&mut conn)
                .await
                .map_err(self.err("poll"))?;
            if lens.iter().any(|n| *n > 0) || queues.iter().any(|q| self.fanout.len(q) > 0) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            tokio::select! {
                _ = &mut notified => return Ok(()),
                _ = tokio::time::sleep(pause.min(left)) => {}
            }
            pause = (pause * 2).min(self.options.polling_interval.max(Duration::from_millis(5)));
            self.sweep().await?;
        }
    }
}
