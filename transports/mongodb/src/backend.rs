//! The virtual [`Backend`] over one MongoDB database: kombu's collections, leased takes,
//! settlement, fanout through the capped broadcast collection, and waiting.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kombu_core::transport::virtual_transport::{
    Backend, BackendCapabilities, BindingRow, DeadLetter, DeathReason, Envelope, Fetched, Receipt,
    StoredQueue, TakeMode, TopologyCache, envelope, poll_until_ready,
};
use kombu_core::transport::{QueueStats, unix_now};
use kombu_core::{Capabilities, Error, Exchange, LinkWatch, Queue, Result};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Bson, DateTime, Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};
use parking_lot::Mutex;

use crate::database::MongoDatabase;
use crate::delayed::{date_of, due_id, due_in};
use crate::documents::{
    self, DUE, EXPIRE_AT, PAYLOAD, PRIORITY, Payload, QUEUE, TAKE, TAKEN_AT, delayed, leased,
    message_document, read_payload, receipt_ids, restore_update,
};
use crate::errors::{Op, driver_error, is_link_loss};
use crate::fanout::Fanout;
use crate::link::Link;
use crate::options::Options;
use crate::topology::QueueSpec;
use crate::watch::Waker;

/// How long a cached exchange or binding list is used before it is read again (bindings made
/// by other processes take effect within this; this process's own take effect at once).
const TOPOLOGY_TTL: Duration = Duration::from_secs(1);

/// Longest wait on the change stream before a waiter looks again (a lease that passes
/// changes nothing in the store, so no event announces it).
const LOOK_AGAIN: Duration = Duration::from_secs(1);

/// MongoDB's "collection already exists".
const NAMESPACE_EXISTS: i32 = 48;

/// One database of one server (or replica set), shared by the channels of a connection.
#[derive(Debug)]
pub(crate) struct MongoBackend {
    pub(crate) messages: Collection<Document>,
    pub(crate) routing: Collection<Document>,
    pub(crate) broadcast: Collection<Document>,
    pub(crate) queues: Collection<Document>,
    pub(crate) exchanges: Collection<Document>,
    pub(crate) options: Options,
    label: String,
    pub(crate) topology: TopologyCache,
    /// Queue → its arguments, as read at the instant.
    pub(crate) specs: Mutex<HashMap<String, (Instant, Arc<QueueSpec>)>>,
    /// Queue → when its passed leases were last restored, and with which timeout.
    pub(crate) sweeps: Mutex<HashMap<String, (Instant, Duration)>>,
    /// Takes whose reply was lost: returned to their queues by the next take that gets
    /// through (their documents are leased under these take ids).
    pub(crate) lost_takes: Mutex<Vec<(String, ObjectId)>>,
    /// The link state and the losses found so far (see [`Backend::epoch`]).
    link: Arc<Link>,
    pub(crate) waker: Arc<Waker>,
    pub(crate) fanout: Arc<Fanout>,
    /// This backend, for the timekeeper of delayed messages (which must not keep it alive).
    pub(crate) me: Weak<MongoBackend>,
}

impl Drop for MongoBackend {
    fn drop(&mut self) {
        self.waker.delays.stop();
    }
}

impl MongoBackend {
    /// Connects, and makes what kombu makes on connect: the capped broadcast collection and
    /// kombu's indexes (TTL ones with `ttl`).
    pub(crate) async fn connect(options: Options, label: String) -> Result<Arc<MongoBackend>> {
        let link = Arc::new(Link::default());
        let opened = MongoDatabase::open_with(&options, label.clone(), |client_options| {
            client_options.sdam_event_handler = Some(Link::handler(&link));
        })
        .await?;
        let db = opened.database().clone();
        let backend = Arc::new_cyclic(|me| MongoBackend {
            messages: db.collection(&options.messages),
            routing: db.collection(&options.routing),
            broadcast: db.collection(&options.broadcast),
            queues: db.collection(&options.queues),
            exchanges: db.collection(&options.exchanges()),
            topology: TopologyCache::new(TOPOLOGY_TTL),
            specs: Mutex::default(),
            sweeps: Mutex::default(),
            lost_takes: Mutex::default(),
            link,
            waker: Arc::default(),
            fanout: Arc::default(),
            me: me.clone(),
            label,
            options,
        });
        backend.prepare(&db).await?;
        // Delayed messages stored by processes gone (or by others): this one keeps time for
        // them too.
        backend.adopt_delayed().await?;
        Ok(backend)
    }

    /// kombu's `_create_broadcast` and `_ensure_indexes`, plus the index of leased documents.
    async fn prepare(&self, db: &mongodb::Database) -> Result<()> {
        if let Err(e) = db
            .create_collection(&self.options.broadcast)
            .capped(true)
            .size(self.options.capped_queue_size)
            .await
        {
            let exists = matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == NAMESPACE_EXISTS);
            if !exists {
                return Err(driver_error(
                    &self.label,
                    "create the broadcast collection",
                    Op::Write,
                    e,
                ));
            }
        }
        let index = |keys: Document| IndexModel::builder().keys(keys).build();
        // With kombu's `background=True`: a server that keeps the option (SecantusDB) refuses
        // the same index with other options (IndexKeySpecsConflict), so either side would
        // fail to connect after the other.
        #[allow(deprecated)] // the driver's `background`: ignored by MongoDB since 4.2
        let background = IndexOptions::builder().background(true).build();
        self.messages
            .create_index(
                IndexModel::builder()
                    .keys(doc! { QUEUE: 1, PRIORITY: 1, "_id": 1 })
                    .options(background)
                    .build(),
            )
            .await
            .map_err(self.err("create the messages index", Op::Write))?;
        self.broadcast
            .create_index(index(doc! { QUEUE: 1 }))
            .await
            .map_err(self.err("create the broadcast index", Op::Write))?;
        self.routing
            .create_index(index(doc! { "queue": 1, "exchange": 1 }))
            .await
            .map_err(self.err("create the routing index", Op::Write))?;
        if self.options.ttl {
            let ttl_index = || {
                IndexModel::builder()
                    .keys(doc! { EXPIRE_AT: 1 })
                    .options(IndexOptions::builder().expire_after(Duration::ZERO).build())
                    .build()
            };
            for collection in [&self.messages, &self.routing, &self.queues] {
                collection
                    .create_index(ttl_index())
                    .await
                    .map_err(self.err("create a TTL index", Op::Write))?;
            }
        }
        Ok(())
    }

    /// `timeout`, or less: until the earliest due time of a delayed message of `queues`.
    async fn until_next_due(&self, queues: &[String], timeout: Duration) -> Result<Duration> {
        Ok(match self.next_due(queues).await? {
            Some(due) => timeout.min(Duration::from_secs_f64((due - unix_now()).max(0.0))),
            None => timeout,
        })
    }

    /// Maps a driver error of operation `what`. (A lost connection does not raise the epoch
    /// here: leases live in the store and survive it; the epoch counts the outages the
    /// driver's monitoring sees, see `link.rs`.)
    pub(crate) fn err(
        &self,
        what: &'static str,
        op: Op,
    ) -> impl FnOnce(mongodb::error::Error) -> Error + '_ {
        move |e| driver_error(&self.label, what, op, e)
    }
}

#[async_trait]
impl Backend for MongoBackend {
    fn capabilities(&self) -> BackendCapabilities {
        let mut c = Capabilities::none();
        c.persistent = true;
        c.shared_between_processes = true;
        c.visibility_timeout = true;
        c.implicit_queues = true;
        c.priorities = true;
        c.message_ttl = true;
        c.dead_lettering = true;
        c.delayed_delivery = true;
        c.peek = true;
        let mut backend = BackendCapabilities::new(c);
        // Fanout through the capped broadcast collection, as kombu carries it.
        backend.native_fanout = true;
        backend.transport = "mongodb";
        backend
    }

    fn epoch(&self) -> u64 {
        self.link.epoch.load(Ordering::SeqCst)
    }

    fn link(&self) -> Option<LinkWatch> {
        Some(self.link.watch())
    }

    async fn exchange(&self, name: &str, declare: Option<&Exchange>) -> Result<Option<Exchange>> {
        match declare {
            Some(exchange) => self.store_exchange(exchange).await,
            None => {
                if let Some(found) = self.topology.exchange(name) {
                    return Ok(found);
                }
                let found = self.read_exchange(name).await?;
                self.topology.put_exchange(name, found.clone());
                Ok(found)
            }
        }
    }

    async fn delete_exchange(&self, name: &str) -> Result<()> {
        self.remove_exchange(name).await
    }

    async fn queue(&self, name: &str, declare: Option<&Queue>) -> Result<Option<StoredQueue>> {
        self.queue_record(name, declare).await
    }

    // Stats and peeks: in `browse.rs`.

    async fn queue_stats(&self, name: &str) -> Result<Option<QueueStats>> {
        self.stats(name).await
    }

    async fn peek(&self, queue: &str, limit: usize) -> Result<Vec<Envelope>> {
        self.peek_queue(queue, limit).await
    }

    async fn delete_queue(&self, name: &str) -> Result<u64> {
        let ready = self
            .messages
            .delete_many(doc! { QUEUE: name })
            .await
            .map_err(self.err("delete queue messages", Op::Write))?
            .deleted_count
            + self.fanout.purge(name) as u64;
        self.messages
            .delete_many(doc! { QUEUE: { "$in": [leased(name), delayed(name)] } })
            .await
            .map_err(self.err("delete queue messages", Op::Write))?;
        self.routing
            .delete_many(doc! { "queue": name })
            .await
            .map_err(self.err("delete queue bindings", Op::Write))?;
        self.queues
            .delete_one(doc! { "_id": name })
            .await
            .map_err(self.err("delete queue", Op::Write))?;
        self.fanout.unsubscribe(name, None);
        self.specs.lock().remove(name);
        self.sweeps.lock().remove(name);
        self.topology.clear();
        self.waker.wake();
        Ok(ready)
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

    async fn fresh_bindings(&self, exchange: &str) -> Result<Arc<[BindingRow]>> {
        self.topology.forget_bindings(exchange);
        self.read_bindings(exchange).await
    }

    async fn put_many(&self, items: Vec<(String, Envelope)>) -> Result<Vec<DeadLetter>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let now = DateTime::now();
        let mut specs: HashMap<&str, Arc<QueueSpec>> = HashMap::new();
        let mut docs = Vec::with_capacity(items.len());
        for (queue, env) in &items {
            let spec = match specs.get(queue.as_str()) {
                Some(spec) => spec.clone(),
                None => {
                    let spec = self.spec(queue).await?;
                    specs.insert(queue, spec.clone());
                    spec
                }
            };
            let expire = documents::expire_at(env, spec.message_ttl, now);
            docs.push(message_document(queue, env, expire)?);
        }
        self.messages
            .insert_many(docs)
            .await
            .map_err(self.err("publish", Op::Write))?;
        let mut woken: Vec<&str> = items.iter().map(|(q, _)| q.as_str()).collect();
        woken.sort_unstable();
        woken.dedup();
        for queue in woken {
            self.waker.wake_queue(queue);
        }
        Ok(Vec::new())
    }

    async fn publish_fanout(&self, env: Envelope) -> Result<()> {
        let payload = String::from_utf8(envelope::encode(&env)).map_err(|e| {
            Error::new(kombu_core::ErrorKind::Codec, "envelope JSON is not UTF-8").with_source(e)
        })?;
        self.broadcast
            .insert_one(doc! { PAYLOAD: payload, QUEUE: env.exchange.as_str() })
            .await
            .map_err(self.err("publish to a fanout exchange", Op::Write))?;
        self.fanout.published();
        Ok(())
    }

    async fn put_delayed(&self, items: Vec<(String, Envelope)>, delay: Duration) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let due = due_in(delay);
        let due_date = date_of(due);
        let mut specs: HashMap<&str, Arc<QueueSpec>> = HashMap::new();
        let mut docs = Vec::with_capacity(items.len());
        for (queue, env) in &items {
            let spec = match specs.get(queue.as_str()) {
                Some(spec) => spec.clone(),
                None => {
                    let spec = self.spec(queue).await?;
                    specs.insert(queue, spec.clone());
                    spec
                }
            };
            // Its expiration counts from its due time.
            let expire = documents::expire_at(env, spec.message_ttl, due_date);
            let mut doc = message_document(&delayed(queue), env, expire)?;
            doc.insert("_id", due_id(due));
            doc.insert(DUE, due_date);
            docs.push(doc);
        }
        self.messages
            .insert_many(docs)
            .await
            .map_err(self.err("publish delayed", Op::Write))?;
        let mut queues: Vec<&str> = items.iter().map(|(q, _)| q.as_str()).collect();
        queues.sort_unstable();
        queues.dedup();
        for queue in queues {
            self.waker.delays.note(queue, due);
            // Waiting consumers look again, for the new due time.
            self.waker.wake_queue(queue);
        }
        self.keep_time();
        Ok(())
    }

    async fn get_many(&self, queue: &str, max: usize, mode: TakeMode) -> Result<Fetched> {
        self.waker
            .start(self.messages.clone(), self.options.change_streams);
        let mut fetched = Fetched::default();
        self.fanout_deliveries(queue, max, &mut fetched);
        let want = max
            .max(1)
            .saturating_sub(fetched.taken.len() + fetched.unreadable.len());
        if want == 0 {
            return Ok(fetched);
        }
        match self.take_stored(queue, want, mode, &mut fetched).await {
            Ok(()) => Ok(fetched),
            // Fanout messages already read leave the buffer only in a delivery: the error
            // waits for the next take.
            Err(e) if !fetched.taken.is_empty() || !fetched.unreadable.is_empty() => {
                tracing::warn!(queue, error = %e, "mongodb: take failed after fanout messages were read");
                Ok(fetched)
            }
            Err(e) => Err(e),
        }
    }

    async fn ack_many(&self, _queue: &str, receipts: &[Receipt]) -> Result<()> {
        let mut by_take: HashMap<ObjectId, Vec<Bson>> = HashMap::new();
        for r in receipts {
            let (id, take) = receipt_ids(r)?;
            by_take.entry(take).or_default().push(id);
        }
        let mut clauses: Vec<Document> = by_take
            .iter()
            .map(|(take, ids)| doc! { TAKE: take, "_id": { "$in": ids } })
            .collect();
        // One take (the usual batch): its filter alone, no `$or` for the server to plan.
        let filter = match clauses.len() {
            0 => return Ok(()),
            1 => clauses.remove(0),
            _ => doc! { "$or": clauses },
        };
        self.messages
            .delete_many(filter)
            .await
            .map_err(self.err("ack", Op::Write))?;
        Ok(())
    }

    async fn reject(
        &self,
        queue: &str,
        receipt: &Receipt,
        requeue: bool,
    ) -> Result<Option<DeadLetter>> {
        let (id, take) = receipt_ids(receipt)?;
        let filter = doc! { "_id": id, TAKE: take };
        if requeue {
            self.messages
                .update_one(filter, restore_update(queue))
                .await
                .map_err(self.err("requeue", Op::Write))?;
            self.waker.wake_queue(queue);
            return Ok(None);
        }
        // The queue's dead-letter exchange and the message are read before anything is
        // deleted, so no failure after the delete can drop a message its queue dead-letters.
        let spec = self.spec(queue).await?;
        let Some(document) = self
            .messages
            .find_one(filter.clone())
            .await
            .map_err(self.err("read a rejected message", Op::Read))?
        else {
            return Ok(None);
        };
        let dead = match read_payload(&document, u64::MAX) {
            Payload::Envelope(env) => Self::dead_letter(
                &spec,
                queue,
                Arc::unwrap_or_clone(env),
                DeathReason::Rejected,
            ),
            Payload::Unreadable(..) => None,
        };
        match self.messages.delete_one(filter).await {
            Ok(_) => Ok(dead),
            // The delete may have happened: the dead letter is handed on all the same (if it
            // did not, the message also comes back when its lease passes: twice, never lost).
            Err(e) if dead.is_some() && is_link_loss(&e) => {
                tracing::warn!(queue, error = %e, "mongodb: a rejected message's delete may not have happened; dead-lettered anyway");
                Ok(dead)
            }
            Err(e) => Err(self.err("reject", Op::Write)(e)),
        }
    }

    async fn extend_lease(&self, _queue: &str, receipt: &Receipt) -> Result<()> {
        let (id, take) = receipt_ids(receipt)?;
        let extended = self
            .messages
            .update_one(
                doc! { "_id": id, TAKE: take },
                doc! { "$set": { TAKEN_AT: unix_now() } },
            )
            .await
            .map_err(self.err("extend lease", Op::Write))?;
        if extended.matched_count == 0 {
            return Err(Error::new(
                kombu_core::ErrorKind::StaleDelivery,
                format!(
                    "mongodb {}: the lease is gone (the message was settled, or restored and \
                     maybe taken again)",
                    self.label
                ),
            ));
        }
        Ok(())
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        let deleted = self
            .messages
            .delete_many(doc! { QUEUE: queue })
            .await
            .map_err(self.err("purge", Op::Write))?;
        // Delayed messages already due are ready; those not yet due stay.
        let due = self
            .messages
            .delete_many(doc! { QUEUE: delayed(queue), DUE: { "$lte": DateTime::now() } })
            .await
            .map_err(self.err("purge", Op::Write))?;
        Ok(deleted.deleted_count + due.deleted_count + self.fanout.purge(queue) as u64)
    }

    async fn queue_exists(&self, name: &str) -> Result<bool> {
        let declared = self
            .queues
            .find_one(doc! { "_id": name })
            .projection(doc! { "_id": 1 })
            .await
            .map_err(self.err("look up queue", Op::Read))?;
        if declared.is_some() {
            return Ok(true);
        }
        Ok(self.queue_record(name, None).await?.is_some())
    }

    async fn wait(&self, queues: &[String], timeout: Duration) -> Result<()> {
        self.waker
            .start(self.messages.clone(), self.options.change_streams);
        if self.waker.streaming() {
            // The stream wakes this waiter on the next change to one of its queues (or a
            // change for everyone); one look first, for a change made between the consumer's
            // last take and this wait.
            let notifies: Vec<Arc<tokio::sync::Notify>> =
                queues.iter().map(|q| self.waker.for_queue(q)).collect();
            // The wake for everyone is among them, so the list is never empty.
            let mut woken: Vec<_> = std::iter::once(&self.waker.notify)
                .chain(notifies.iter().map(|n| &**n))
                .map(|n| Box::pin(n.notified()))
                .collect();
            for n in &mut woken {
                n.as_mut().enable();
            }
            if self.anything_ready(queues).await? {
                return Ok(());
            }
            let timeout = self.until_next_due(queues, timeout).await?;
            // Leases of other consumers pass without a change: look again within a second.
            let _ =
                tokio::time::timeout(timeout.min(LOOK_AGAIN), futures::future::select_all(woken))
                    .await;
            return Ok(());
        }
        let notified = self.waker.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let timeout = self.until_next_due(queues, timeout).await?;
        let pauses = (Duration::from_millis(5), self.options.polling_interval);
        poll_until_ready(notified, timeout, pauses, || self.anything_ready(queues)).await
    }
}
