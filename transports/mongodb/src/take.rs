//! Takes: leasing a batch of ready documents, returning takes whose outcome is unknown,
//! sweeping for passed leases, turning what was taken into deliveries, dead letters and
//! unreadable entries, and telling a waiter whether a take would find anything.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use kombu_core::Result;
use kombu_core::transport::unix_now;
use kombu_core::transport::virtual_transport::{
    DeadLetter, DeathReason, Envelope, Fetched, Receipt, TakeMode, Taken, Unreadable,
};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Bson, DateTime, Document, doc};

use crate::backend::MongoBackend;
use crate::documents::{
    DELAYED_PREFIX, DUE, EXPIRE_AT, PRIORITY, Payload, QUEUE, TAKE, TAKEN_AT, delayed, leased,
    read_payload, receipt, restore_update,
};
use crate::errors::Op;
use crate::topology::QueueSpec;

/// How often a queue is swept for passed leases: a tenth of the sweeping take's visibility
/// timeout, within these bounds (a lease is restored at most a tenth of its timeout late; the
/// 3,600 s default sweeps every 5 s, not on every take: the sweep is an `update_many` the
/// server answers by scanning the queue's leases).
const SWEEP_EVERY: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));

/// How many times a take tries again when other consumers won every candidate.
const LEASE_ATTEMPTS: usize = 3;

impl MongoBackend {
    /// Returns to their queues the documents of takes whose outcome is unknown (an error
    /// after the lease update was sent): they come back now, not at the end of the visibility
    /// timeout. A take that leased nothing returns nothing.
    pub(crate) async fn return_lost_takes(&self) -> Result<()> {
        let takes: Vec<(String, ObjectId)> = std::mem::take(&mut *self.lost_takes.lock());
        if takes.is_empty() {
            return Ok(());
        }
        let mut by_queue: HashMap<&str, Vec<ObjectId>> = HashMap::new();
        for (queue, take) in &takes {
            by_queue.entry(queue).or_default().push(*take);
        }
        for (queue, ids) in by_queue {
            // kombu's index serves the leased queue; the take ids pick this process's.
            let restored = self
                .messages
                .update_many(
                    doc! { QUEUE: leased(queue), TAKE: { "$in": ids } },
                    restore_update(queue),
                )
                .await;
            if let Err(e) = restored {
                self.lost_takes.lock().extend(takes.iter().cloned());
                return Err(self.err("return takes whose reply was lost", Op::Write)(e));
            }
        }
        self.waker.wake();
        Ok(())
    }

    /// Restores `queue`'s leases taken (or extended) at least `visibility` ago, unless a
    /// sweep with a timeout at most as long ran within a tenth of it ([`SWEEP_EVERY`]).
    async fn restore_passed(&self, queue: &str, visibility: Duration) -> Result<()> {
        if !self.sweep_due(queue, visibility) {
            return Ok(());
        }
        let cutoff = unix_now() - visibility.as_secs_f64();
        let restored = self
            .messages
            .update_many(
                doc! { QUEUE: leased(queue), TAKEN_AT: { "$lte": cutoff } },
                restore_update(queue),
            )
            .await
            .map_err(self.err("restore passed leases", Op::Write))?;
        self.sweeps
            .lock()
            .insert(queue.to_owned(), (Instant::now(), visibility));
        if restored.modified_count > 0 {
            tracing::debug!(
                queue,
                count = restored.modified_count,
                "mongodb: passed leases restored"
            );
        }
        Ok(())
    }

    /// Whether a take of `queue` with this visibility timeout sweeps for passed leases: no
    /// sweep with a timeout at most as long ran within a tenth of it.
    fn sweep_due(&self, queue: &str, visibility: Duration) -> bool {
        let every = (visibility / 10).clamp(SWEEP_EVERY.0, SWEEP_EVERY.1);
        !self
            .sweeps
            .lock()
            .get(queue)
            .is_some_and(|(at, timeout)| at.elapsed() < every && *timeout <= visibility)
    }

    /// Leases up to `max` ready documents of `queue` under a new take id: one find of the
    /// candidates, one update that moves each (still ready) to the take, and (only when
    /// another consumer got some first) one find of what this take got. When other consumers
    /// won every candidate, it tries again (a few times) with the next ones.
    async fn lease(&self, queue: &str, max: usize) -> Result<(ObjectId, Vec<Document>)> {
        let limit = i64::try_from(max.max(1)).unwrap_or(i64::MAX);
        let take = ObjectId::new();
        for _ in 0..LEASE_ATTEMPTS {
            let candidates: Vec<Document> = self
                .messages
                .find(doc! { QUEUE: queue })
                .sort(doc! { PRIORITY: 1, "_id": 1 })
                .limit(limit)
                .await
                .map_err(self.err("find messages", Op::Read))?
                .try_collect()
                .await
                .map_err(self.err("find messages", Op::Read))?;
            if candidates.is_empty() {
                return Ok((take, candidates));
            }
            // Any BSON `_id`: a bare client may have written strings or numbers.
            let ids: Vec<Bson> = candidates
                .iter()
                .filter_map(|d| d.get("_id").cloned())
                .collect();
            let update = doc! {
                "$set": { QUEUE: leased(queue), TAKEN_AT: unix_now(), TAKE: take },
            };
            let moved = self
                .messages
                .update_many(doc! { "_id": { "$in": &ids }, QUEUE: queue }, update)
                .await
                .map_err(|e| {
                    // The update may have been done, in part or whole: whatever it leased
                    // comes back with the next take that gets through.
                    self.lost_takes.lock().push((queue.to_owned(), take));
                    self.err("take messages", Op::Write)(e)
                })?;
            if moved.modified_count as usize == candidates.len() {
                return Ok((take, candidates));
            }
            if moved.modified_count == 0 {
                // Others took them all between the find and the update: the next ones.
                continue;
            }
            // Another consumer took some of them between the find and the update.
            let ours: Vec<Bson> = self
                .messages
                .find(doc! { "_id": { "$in": &ids }, TAKE: take })
                .projection(doc! { "_id": 1 })
                .await
                .map_err(|e| {
                    self.lost_takes.lock().push((queue.to_owned(), take));
                    self.err("read a take", Op::Read)(e)
                })?
                .try_collect::<Vec<Document>>()
                .await
                .map_err(|e| {
                    self.lost_takes.lock().push((queue.to_owned(), take));
                    self.err("read a take", Op::Read)(e)
                })?
                .into_iter()
                .filter_map(|mut d| d.remove("_id"))
                .collect();
            let kept = candidates
                .into_iter()
                .filter(|d| d.get("_id").is_some_and(|id| ours.contains(id)))
                .collect();
            return Ok((take, kept));
        }
        Ok((take, Vec::new()))
    }

    /// A dead letter of `env` leaving `queue` for `reason`, when the queue has a dead-letter
    /// exchange.
    pub(crate) fn dead_letter(
        spec: &QueueSpec,
        queue: &str,
        env: Envelope,
        reason: DeathReason,
    ) -> Option<DeadLetter> {
        Some(DeadLetter {
            envelope: env,
            queue: queue.to_owned(),
            reason,
            exchange: spec.dead_letter_exchange.clone()?,
            routing_key: spec.dead_letter_routing_key.clone(),
        })
    }

    /// Deletes the documents of one take (`ids`).
    async fn delete_taken(&self, take: ObjectId, ids: &[Bson]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.messages
            .delete_many(doc! { "_id": { "$in": ids }, TAKE: take })
            .await
            .map_err(self.err("delete taken messages", Op::Write))?;
        Ok(())
    }

    /// Fanout documents read for `queue` as deliveries, handed over outright.
    pub(crate) fn fanout_deliveries(&self, queue: &str, max: usize, fetched: &mut Fetched) {
        for document in self.fanout.take(queue, max) {
            match read_payload(&document, self.options.max_payload_size) {
                Payload::Envelope(envelope) => fetched.taken.push(Taken {
                    envelope,
                    receipt: Receipt::Unleased,
                }),
                Payload::Unreadable(raw, reason) => fetched.unreadable.push(Unreadable {
                    raw,
                    reason,
                    receipt: Receipt::Unleased,
                }),
            }
        }
    }

    /// Takes up to `want` stored messages of `queue` into `fetched` (after returning lost
    /// takes and restoring passed leases).
    pub(crate) async fn take_stored(
        &self,
        queue: &str,
        want: usize,
        mode: TakeMode,
        fetched: &mut Fetched,
    ) -> Result<()> {
        self.return_lost_takes().await?;
        let visibility = match mode {
            TakeMode::Lease(timeout) => timeout,
            TakeMode::NoAck => Some(self.options.visibility_timeout),
        };
        if let Some(visibility) = visibility {
            self.restore_passed(queue, visibility).await?;
        }
        // Delayed messages that fell due join the queue first.
        self.promote_if_due(queue).await?;
        let spec = self.spec(queue).await?;
        self.refresh_queue_expiry(queue, &spec).await?;
        let (take, documents) = self.lease(queue, want).await?;
        if documents.is_empty() {
            return Ok(());
        }
        let now = DateTime::now();
        // A dead-letter queue holds what core wrote there, among it the dead letters of
        // oversize payloads (their bytes in base64, larger still): bounded again, reading one
        // would move it one queue deeper each time.
        let max_payload = if queue.ends_with(kombu_core::dead_letter::DLQ_SUFFIX) {
            u64::MAX
        } else {
            self.options.max_payload_size
        };
        let mut gone = Vec::new();
        let mut dead = Vec::new();
        for document in documents {
            let Some(id) = document.get("_id").cloned() else {
                continue;
            };
            let expired = matches!(document.get(EXPIRE_AT), Some(Bson::DateTime(at)) if *at <= now);
            let payload = read_payload(&document, max_payload);
            let lease = match mode {
                TakeMode::NoAck => Receipt::Unleased,
                TakeMode::Lease(_) => receipt(&id, take),
            };
            match payload {
                Payload::Envelope(env) if expired => {
                    gone.push(id);
                    let env = Arc::unwrap_or_clone(env);
                    dead.extend(Self::dead_letter(&spec, queue, env, DeathReason::Expired));
                }
                Payload::Envelope(envelope) => {
                    if mode == TakeMode::NoAck {
                        gone.push(id);
                    }
                    fetched.taken.push(Taken {
                        envelope,
                        receipt: lease,
                    });
                }
                Payload::Unreadable(raw, reason) => {
                    if mode == TakeMode::NoAck {
                        gone.push(id);
                    }
                    fetched.unreadable.push(Unreadable {
                        raw,
                        reason,
                        receipt: lease,
                    });
                }
            }
        }
        // No-ack takes and expired messages leave the store now. When that fails (or its
        // outcome is unknown) they stay leased where the delete did not happen, and come
        // back when their lease passes: the takes are still delivered (a no-ack message may
        // then arrive twice, never not at all), and the expired ones are dead-lettered by
        // the take that finds them again, not now (no dead letter of a message still stored).
        match self.delete_taken(take, &gone).await {
            Ok(()) => fetched.dead.extend(dead),
            Err(e) => tracing::warn!(
                queue,
                error = %e,
                "mongodb: no-ack or expired messages not deleted; they come back when their lease passes"
            ),
        }
        Ok(())
    }

    /// Whether a message may be ready on one of `queues`: a ready document, a fanout
    /// document read, or a lease that the next take would restore (past the timeout of the
    /// queue's last sweep, else the connection's, and with a sweep due), so a wait never
    /// returns for a lease a take would leave alone (a consumer would spin).
    pub(crate) async fn anything_ready(&self, queues: &[String]) -> Result<bool> {
        if self.fanout.any_ready(queues) {
            return Ok(true);
        }
        let now = unix_now();
        let delayed_queues: Vec<String> = queues.iter().map(|q| delayed(q)).collect();
        let mut clauses = vec![
            doc! { QUEUE: { "$in": queues } },
            // A delayed message due: the next take moves it.
            doc! { QUEUE: { "$in": delayed_queues }, DUE: { "$lte": DateTime::now() } },
        ];
        for queue in queues {
            let timeout = self
                .sweeps
                .lock()
                .get(queue)
                .map_or(self.options.visibility_timeout, |(_, t)| *t);
            if self.sweep_due(queue, timeout) {
                clauses.push(doc! {
                    QUEUE: leased(queue),
                    TAKEN_AT: { "$lte": now - timeout.as_secs_f64() },
                });
            }
        }
        let found = self
            .messages
            .find_one(doc! { "$or": clauses })
            .projection(doc! { "_id": 1, QUEUE: 1 })
            .await
            .map_err(self.err("look for messages", Op::Read))?;
        // A due delayed message (perhaps another process's): the take must look for it.
        if let Some(queue) = found
            .as_ref()
            .and_then(|d| d.get_str(QUEUE).ok())
            .and_then(|q| q.strip_prefix(DELAYED_PREFIX))
        {
            self.waker.delays.invalidate(queue);
        }
        Ok(found.is_some())
    }
}
