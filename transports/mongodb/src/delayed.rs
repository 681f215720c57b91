//! Delayed messages: documents in `messages` under `queue: "kombu_rs.delayed:<queue>"` with
//! their due time (`kombu_rs_due`, a BSON date), moved back to `queue: <queue>` once due.
//!
//! Python kombu's `find_one_and_delete({queue: q})`, `count_documents({queue: q})` and
//! `delete_many({queue: q})` never match one, and kombu's `queue, priority, _id` index serves
//! the look for due ones (the delayed queue's name, then a scan of that queue's delayed
//! documents only). The move is one `update_many` (atomic per document: a process that dies
//! mid-way leaves each document delayed or ready, never neither, never both). A delayed
//! document's `_id` is an `ObjectId` whose time is its due second, so once due it sorts
//! among the messages published around then: the tail of its queue, within that second.
//!
//! Who moves them: every take of the queue when one is due (or at least once a second, for
//! documents other processes delayed), and a timekeeper task in each process that knows of
//! delayed documents (it stored them, found them on connect, or looked at their queue), so
//! Python consumers get them without a kombu-rs consumer of the queue. A change stream's
//! insert of a delayed document tells this process's waiters of its queue to look again.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use kombu_core::Result;
use kombu_core::transport::unix_now;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{DateTime, Document, doc};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::backend::MongoBackend;
use crate::documents::{DELAYED_PREFIX, DUE, QUEUE, delayed};
use crate::errors::Op;

/// How long what a process knows of a queue's delayed documents is trusted before a take
/// looks at the store again (documents other processes delayed, when no change stream told).
const RECHECK: Duration = Duration::from_secs(1);

/// How long a failed move waits before the timekeeper tries again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The latest due time a delay can give (year 2100, in Unix seconds: an `ObjectId`'s time
/// ends in 2106): a delay beyond it is held until then, which is never in practice.
const LATEST_DUE: f64 = 4_102_444_800.0;

/// The due time of a delay starting now, in Unix seconds.
pub(crate) fn due_in(delay: Duration) -> f64 {
    (unix_now() + delay.as_secs_f64()).min(LATEST_DUE)
}

/// A BSON date of a Unix time in seconds.
pub(crate) fn date_of(unix: f64) -> DateTime {
    DateTime::from_millis((unix * 1000.0).ceil() as i64)
}

/// An `ObjectId` whose time is `due`'s second (and whose other bytes are a fresh id's, so
/// unique as any): a due document sorts among the messages published in that second.
pub(crate) fn due_id(due: f64) -> ObjectId {
    let mut bytes = ObjectId::new().bytes();
    let secs = due.max(0.0) as u32;
    bytes[..4].copy_from_slice(&secs.to_be_bytes());
    ObjectId::from_bytes(bytes)
}

/// What this process knows of one queue's delayed documents.
#[derive(Debug, Clone, Copy, Default)]
struct Known {
    /// The earliest due time (Unix seconds) of a document still delayed, as far as known.
    next_due: Option<f64>,
    /// When the store was last looked at; `None`: never, or news since (look again).
    checked: Option<Instant>,
}

/// What this process knows of delayed documents, per queue, and the timekeeper task.
#[derive(Debug, Default)]
pub(crate) struct Delays {
    queues: Mutex<HashMap<String, Known>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Told when an earlier due time becomes known.
    wake: Notify,
}

impl Delays {
    /// Stops the timekeeper (its backend is being dropped).
    pub(crate) fn stop(&self) {
        if let Some(task) = self.task.lock().take() {
            task.abort();
        }
    }

    /// Records a due time of `queue` (a delayed publish of this process).
    pub(crate) fn note(&self, queue: &str, due: f64) {
        let mut queues = self.queues.lock();
        let known = queues.entry(queue.to_owned()).or_default();
        known.next_due = Some(known.next_due.map_or(due, |n| n.min(due)));
        drop(queues);
        self.wake.notify_one();
    }

    /// News of `queue`'s delayed documents (an insert on the change stream, one found due):
    /// the next take or wait looks at the store.
    pub(crate) fn invalidate(&self, queue: &str) {
        self.queues
            .lock()
            .entry(queue.to_owned())
            .or_default()
            .checked = None;
        self.wake.notify_one();
    }

    /// Whether a take of `queue` should move due documents: one is due as far as known, or
    /// what is known is stale.
    fn due_or_stale(&self, queue: &str, now: f64) -> bool {
        self.queues.lock().get(queue).is_none_or(|k| {
            k.next_due.is_some_and(|d| d <= now) || k.checked.is_none_or(|c| c.elapsed() >= RECHECK)
        })
    }

    /// The earliest due time known among `queues`, and those whose knowledge is stale.
    fn earliest(&self, queues: &[String]) -> (Option<f64>, Vec<String>) {
        let known = self.queues.lock();
        let mut earliest: Option<f64> = None;
        let mut stale = Vec::new();
        for q in queues {
            match known.get(q) {
                Some(k) if k.checked.is_some_and(|c| c.elapsed() < RECHECK) => {
                    if let Some(d) = k.next_due {
                        earliest = Some(earliest.map_or(d, |e| e.min(d)));
                    }
                }
                _ => stale.push(q.clone()),
            }
        }
        (earliest, stale)
    }

    /// Records what a look at the store found: the earliest due time left in `queue`.
    fn checked(&self, queue: &str, next_due: Option<f64>, at: Instant) {
        let mut queues = self.queues.lock();
        let known = queues.entry(queue.to_owned()).or_default();
        known.next_due = next_due;
        known.checked = Some(at);
    }

    /// The earliest due time of any queue known to hold delayed documents.
    fn next_anywhere(&self) -> Option<(f64, String)> {
        self.queues
            .lock()
            .iter()
            .filter_map(|(q, k)| k.next_due.map(|d| (d, q)))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(d, q)| (d, q.clone()))
    }
}

impl MongoBackend {
    /// Starts the timekeeper when none runs on a live runtime (outside one: the takes move
    /// due documents).
    pub(crate) fn keep_time(&self) {
        let mut task = self.waker.delays.task.lock();
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            *task = Some(runtime.spawn(keep_time(self.me.clone(), self.waker.delays.clone())));
        }
    }

    /// Moves `queue`'s delayed documents that are due back to it when a take should (see
    /// [`Delays`]); then records the earliest due time left.
    pub(crate) async fn promote_if_due(&self, queue: &str) -> Result<()> {
        if self.waker.delays.due_or_stale(queue, unix_now()) {
            self.promote(queue).await?;
        }
        Ok(())
    }

    /// Moves `queue`'s due delayed documents back to it (one `update_many`), wakes its
    /// waiters when some moved, and records the earliest due time left.
    pub(crate) async fn promote(&self, queue: &str) -> Result<()> {
        let at = Instant::now();
        let moved = self
            .messages
            .update_many(
                doc! { QUEUE: delayed(queue), DUE: { "$lte": DateTime::now() } },
                doc! { "$set": { QUEUE: queue }, "$unset": { DUE: "" } },
            )
            .await
            .map_err(self.err("move due delayed messages", Op::Write))?;
        if moved.modified_count > 0 {
            self.waker.wake_queue(queue);
        }
        let left = self.earliest_due(queue).await?;
        self.waker.delays.checked(queue, left, at);
        if left.is_some() {
            self.keep_time();
        }
        Ok(())
    }

    /// The earliest due time (Unix seconds) of `queue`'s delayed documents in the store.
    async fn earliest_due(&self, queue: &str) -> Result<Option<f64>> {
        let first = self
            .messages
            .find_one(doc! { QUEUE: delayed(queue) })
            .sort(doc! { DUE: 1 })
            .projection(doc! { DUE: 1, "_id": 0 })
            .await
            .map_err(self.err("look for delayed messages", Op::Read))?;
        Ok(first
            .and_then(|d: Document| d.get_datetime(DUE).ok().copied())
            .map(|d| d.timestamp_millis() as f64 / 1000.0))
    }

    /// The earliest due time among `queues`, looking at the store for those whose knowledge
    /// is stale: a waiter returns by then.
    pub(crate) async fn next_due(&self, queues: &[String]) -> Result<Option<f64>> {
        let (mut earliest, stale) = self.waker.delays.earliest(queues);
        for queue in stale {
            let at = Instant::now();
            let left = self.earliest_due(&queue).await?;
            self.waker.delays.checked(&queue, left, at);
            if let Some(d) = left {
                earliest = Some(earliest.map_or(d, |e: f64| e.min(d)));
            }
        }
        Ok(earliest)
    }

    /// Adopts the delayed documents already in the store (stored by processes gone, or by
    /// others): the timekeeper moves them when due.
    pub(crate) async fn adopt_delayed(&self) -> Result<()> {
        let pattern = format!("^{}", DELAYED_PREFIX.replace('.', "\\."));
        let names = self
            .messages
            .distinct(QUEUE, doc! { QUEUE: { "$regex": pattern } })
            .await
            .map_err(self.err("look for delayed messages", Op::Read))?;
        for name in names {
            if let Some(queue) = name.as_str().and_then(|n| n.strip_prefix(DELAYED_PREFIX)) {
                let at = Instant::now();
                let left = self.earliest_due(queue).await?;
                self.waker.delays.checked(queue, left, at);
            }
        }
        if self.waker.delays.next_anywhere().is_some() {
            self.keep_time();
        }
        Ok(())
    }
}

/// The timekeeper: sleeps until the earliest known due time, moves that queue's due
/// documents, repeats while any are known; ends when none is, or the backend is dropped. It
/// holds the backend only while it moves documents.
async fn keep_time(backend: Weak<MongoBackend>, delays: Arc<Delays>) {
    loop {
        let Some((due, queue)) = delays.next_anywhere() else {
            // Ends under the task lock, so a `keep_time` meanwhile starts another.
            let mut task = delays.task.lock();
            if delays.next_anywhere().is_none() {
                *task = None;
                return;
            }
            continue;
        };
        let wait = due - unix_now();
        if wait > 0.0 {
            // In steps of at most a minute: the due times are wall-clock times.
            let step = Duration::from_secs_f64(wait.min(60.0));
            tokio::select! {
                // An earlier due time may be known: look again.
                _ = delays.wake.notified() => continue,
                _ = tokio::time::sleep(step) => continue,
            }
        }
        let Some(b) = backend.upgrade() else { return };
        if let Err(e) = b.promote(&queue).await {
            tracing::warn!(queue, error = %e, "mongodb: due delayed messages not moved; trying again");
            drop(b);
            tokio::time::sleep(RETRY_AFTER).await;
        }
    }
}
