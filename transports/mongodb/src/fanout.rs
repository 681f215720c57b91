//! Fanout exchanges as kombu carries them: a publish inserts one document
//! `{payload, queue: <exchange>}` into the capped broadcast collection; every queue of this
//! process bound to the exchange reads it through a tailable cursor. What a cursor reads waits
//! here for the queue's consumers (at-most-once, as in kombu: nothing of it is kept in the
//! store once read).
//!
//! One tail task per exchange serves the queues bound to it in this process. A new tail
//! skips what the collection held when the bind that started it was made (kombu skips the
//! same: its cursor's offset is counted in the bind), so a publish made after the bind
//! returned is read even when the task starts later; a tail reopened
//! after its cursor died (MongoDB kills a tailable cursor whose query matched nothing yet,
//! and one whose position was overwritten) resumes after the last document it read, or from
//! the oldest one left when that was overwritten (everything left is newer then). What is
//! skipped is known by identity (the ids present before the cursor opens), never by count,
//! so documents the capped collection overwrites meanwhile shift nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::Collection;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::CursorType;
use parking_lot::Mutex;

use crate::documents::QUEUE;
use crate::watch::Waker;

/// Most messages kept for one fanout queue before the oldest are dropped (a queue bound in
/// this process that nobody consumes must not grow without bound).
const FANOUT_BUFFER: usize = 100_000;

/// The fanout queues of this process and what their tails read.
#[derive(Debug, Default)]
pub(crate) struct Fanout {
    /// Queue → the fanout exchanges it is bound to.
    queues: Mutex<HashMap<String, Vec<String>>>,
    /// Documents read for each queue, oldest first.
    buffers: Mutex<HashMap<String, VecDeque<Document>>>,
    /// Exchange → its tail task.
    tails: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    /// Notified on every fanout publish through this process: a tail waiting to reopen a
    /// cursor that died (no document of its exchange yet) reopens at once.
    kick: Arc<tokio::sync::Notify>,
}

impl Drop for Fanout {
    fn drop(&mut self) {
        for (_, task) in self.tails.lock().drain() {
            task.abort();
        }
    }
}

impl Fanout {
    /// A fanout publish through this process: tails waiting to reopen look now.
    pub(crate) fn published(&self) {
        self.kick.notify_waiters();
    }

    /// Whether `queue` is bound to a fanout exchange in this process.
    pub(crate) fn is_fanout_queue(&self, queue: &str) -> bool {
        self.queues.lock().contains_key(queue)
    }

    /// Whether any of `queues` has a document waiting.
    pub(crate) fn any_ready(&self, queues: &[String]) -> bool {
        let buffers = self.buffers.lock();
        queues
            .iter()
            .any(|q| buffers.get(q).is_some_and(|b| !b.is_empty()))
    }

    /// Takes up to `max` documents read for `queue`, oldest first.
    pub(crate) fn take(&self, queue: &str, max: usize) -> Vec<Document> {
        let mut buffers = self.buffers.lock();
        let Some(buffer) = buffers.get_mut(queue) else {
            return Vec::new();
        };
        let n = max.min(buffer.len());
        buffer.drain(..n).collect()
    }

    /// How many documents wait for `queue`.
    pub(crate) fn len(&self, queue: &str) -> usize {
        self.buffers.lock().get(queue).map_or(0, VecDeque::len)
    }

    /// Drops what waits for `queue`; how many there were.
    pub(crate) fn purge(&self, queue: &str) -> usize {
        self.buffers
            .lock()
            .get_mut(queue)
            .map_or(0, |b| std::mem::take(b).len())
    }

    /// Binds `queue` to the fanout `exchange` in this process and starts the exchange's tail
    /// if none runs, positioned after the exchange's documents present now.
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        queue: &str,
        exchange: &str,
        broadcast: &Collection<Document>,
        waker: &Arc<Waker>,
        pause: Duration,
    ) {
        {
            let mut queues = self.queues.lock();
            let exchanges = queues.entry(queue.to_owned()).or_default();
            if !exchanges.iter().any(|e| e == exchange) {
                exchanges.push(exchange.to_owned());
            }
        }
        let running = |tails: &HashMap<String, tokio::task::JoinHandle<()>>| {
            tails.get(exchange).is_some_and(|t| !t.is_finished())
        };
        if running(&self.tails.lock()) {
            return;
        }
        // Where the tail starts, read before the bind returns (the task may start later, after
        // a publish the caller makes next). Unknown when the read fails: the tail skips what
        // it finds when it starts.
        let start = present(broadcast, &doc! { QUEUE: exchange })
            .await
            .ok()
            .map(|ids| ids.last().cloned());
        let mut tails = self.tails.lock();
        if running(&tails) {
            return;
        }
        let task = tokio::spawn(tail(
            Arc::downgrade(self),
            Arc::downgrade(waker),
            broadcast.clone(),
            exchange.to_owned(),
            pause,
            start,
            self.kick.clone(),
        ));
        tails.insert(exchange.to_owned(), task);
    }

    /// Unbinds `queue` from `exchange` (every exchange with `None`) in this process; a tail
    /// no queue needs stops.
    pub(crate) fn unsubscribe(&self, queue: &str, exchange: Option<&str>) {
        let mut queues = self.queues.lock();
        if let Some(exchanges) = queues.get_mut(queue) {
            exchanges.retain(|e| exchange.is_some_and(|x| x != e));
            if exchanges.is_empty() {
                queues.remove(queue);
                self.buffers.lock().remove(queue);
            }
        }
        let needed: Vec<String> = queues.values().flatten().cloned().collect();
        drop(queues);
        self.tails.lock().retain(|exchange, task| {
            let keep = needed.contains(exchange);
            if !keep {
                task.abort();
            }
            keep
        });
    }

    /// The exchange was deleted: no queue of this process reads it any more.
    pub(crate) fn forget_exchange(&self, exchange: &str) {
        let queues: Vec<String> = self
            .queues
            .lock()
            .iter()
            .filter(|(_, exchanges)| exchanges.iter().any(|e| e == exchange))
            .map(|(q, _)| q.clone())
            .collect();
        for queue in queues {
            self.unsubscribe(&queue, Some(exchange));
        }
    }

    /// Hands a document read from `exchange`'s tail to every queue of this process bound
    /// to it.
    fn deliver(&self, exchange: &str, document: &Document) {
        let targets: Vec<String> = self
            .queues
            .lock()
            .iter()
            .filter(|(_, exchanges)| exchanges.iter().any(|e| e == exchange))
            .map(|(q, _)| q.clone())
            .collect();
        let mut buffers = self.buffers.lock();
        for queue in targets {
            let buffer = buffers.entry(queue.clone()).or_default();
            if buffer.len() >= FANOUT_BUFFER {
                buffer.pop_front();
                tracing::warn!(%queue, "mongodb fanout buffer full: oldest message dropped");
            }
            buffer.push_back(document.clone());
        }
    }
}

/// Reads `exchange`'s broadcast documents for as long as the backend lives, after `start`
/// (the last of the exchange's documents at the bind, `Some(None)` for none; `None`: unknown,
/// skip what is there when the tail starts).
async fn tail(
    fanout: Weak<Fanout>,
    waker: Weak<Waker>,
    broadcast: Collection<Document>,
    exchange: String,
    longest_pause: Duration,
    start: Option<Option<Bson>>,
    kick: Arc<tokio::sync::Notify>,
) {
    // A dead cursor (no document of the exchange yet) is reopened at most this often, unless
    // this process publishes to a fanout exchange meanwhile: many idle fanout exchanges must
    // not keep a server busy.
    let longest_pause = longest_pause.max(Duration::from_secs(1));
    let filter = doc! { QUEUE: exchange.as_str() };
    // The last document read (delivered or skipped), to resume after it.
    let mut last: Option<Bson> = start.clone().flatten();
    let mut first = start.is_none();
    let mut pause = Duration::from_millis(50);
    loop {
        // What the cursor will read that is old, by identity (not by count: the capped
        // collection may overwrite its oldest documents between this read and the cursor's).
        // A capped collection holds few documents (100 kB by default): a list will do.
        let old: Vec<Bson> = match present(&broadcast, &filter).await {
            Ok(ids) if first => ids.into_iter().collect(),
            Ok(ids) => match &last {
                // Up to the last one read; nothing when it was overwritten (then everything
                // left is newer).
                Some(l) => match ids.iter().position(|id| id == l) {
                    Some(p) => ids.into_iter().take(p + 1).collect(),
                    None => Vec::new(),
                },
                None => Vec::new(),
            },
            Err(err) => {
                tracing::debug!(%exchange, error = %err, "mongodb fanout: cannot read the broadcast collection");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(longest_pause);
                continue;
            }
        };
        first = false;
        let opened = broadcast
            .find(filter.clone())
            .cursor_type(CursorType::TailableAwait)
            .max_await_time(Duration::from_secs(1))
            .await;
        if let Ok(mut cursor) = opened {
            loop {
                match cursor.try_next().await {
                    Ok(Some(document)) => {
                        let id = document.get("_id").cloned();
                        if id.as_ref().is_some_and(|id| old.contains(id)) {
                            last = id;
                            continue;
                        }
                        last = id.or(last);
                        let (Some(f), Some(w)) = (fanout.upgrade(), waker.upgrade()) else {
                            return;
                        };
                        f.deliver(&exchange, &document);
                        w.wake();
                        pause = Duration::from_millis(50);
                    }
                    // Dead (nothing matched yet) or invalidated: reopen.
                    Ok(None) => break,
                    Err(err) => {
                        tracing::debug!(%exchange, error = %err, "mongodb fanout: tail failed; reopening");
                        break;
                    }
                }
            }
        }
        if fanout.strong_count() == 0 {
            return;
        }
        let kicked = kick.notified();
        tokio::select! {
            _ = kicked => pause = Duration::from_millis(50),
            _ = tokio::time::sleep(pause) => pause = (pause * 2).min(longest_pause),
        }
    }
}

/// The ids of `exchange`'s documents now in the broadcast collection, oldest first.
async fn present(
    broadcast: &Collection<Document>,
    filter: &Document,
) -> mongodb::error::Result<Vec<Bson>> {
    let docs: Vec<Document> = broadcast
        .find(filter.clone())
        .projection(doc! { "_id": 1 })
        .sort(doc! { "$natural": 1 })
        .await?
        .try_collect()
        .await?;
    Ok(docs
        .into_iter()
        .filter_map(|mut d| d.remove("_id"))
        .collect())
}
