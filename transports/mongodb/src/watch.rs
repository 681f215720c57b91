//! Waiting for messages: a change stream on the `messages` collection where the server has
//! them (a replica set or a sharded cluster), an adaptive poll otherwise (a standalone server,
//! or `change_streams=false`).
//!
//! One watcher task per backend follows the stream and wakes the consumers waiting on the
//! queue of each insert, and of each update that returns a document to its queue (a
//! requeue, a restored lease); takes and acks wake nobody, and a publish to one queue does
//! not wake the consumers of the others. The watcher reopens
//! the stream after an error, backing off; while it is down, waiters poll. A server that
//! refuses change streams (MongoDB's code 40573 on a standalone server) is polled for the
//! life of the backend.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use futures::StreamExt;
use mongodb::Collection;
use mongodb::bson::{Document, doc};
use tokio::sync::Notify;

use crate::delayed::Delays;
use crate::documents::{DELAYED_PREFIX, LEASED_PREFIX};

/// Where the watcher stands.
const IDLE: u8 = 0;
const STARTED: u8 = 1;
const UNSUPPORTED: u8 = 2;

/// Refusals that opening again will not change: MongoDB's "The $changeStream stage is only
/// supported on replica sets" (40573), Unauthorized (13), CommandNotSupported (115).
const REFUSED: &[i32] = &[40573, 13, 115];

/// Wakes the backend's waiting consumers.
#[derive(Debug, Default)]
pub(crate) struct Waker {
    /// Wakes every waiter (the stream opened or closed, takes returned, fanout messages read;
    /// while no stream is open, also every put and restore through this backend).
    pub(crate) notify: Notify,
    /// Wakes the waiters of one queue.
    queues: parking_lot::Mutex<HashMap<String, Arc<Notify>>>,
    /// A change stream is open now: waiters need not poll.
    streaming: AtomicBool,
    state: AtomicU8,
    task: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// What this process knows of delayed documents (news of them comes on the stream).
    pub(crate) delays: Arc<Delays>,
}

impl Drop for Waker {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().take() {
            task.abort();
        }
    }
}

impl Waker {
    /// Whether a change stream is open (waiters wait for it instead of polling).
    pub(crate) fn streaming(&self) -> bool {
        self.streaming.load(Ordering::SeqCst)
    }

    /// Wakes every waiter.
    pub(crate) fn wake(&self) {
        self.notify.notify_waiters();
        for notify in self.queues.lock().values() {
            notify.notify_waiters();
        }
    }

    /// Wakes the waiters of `queue` (and, while no stream is open, every polling waiter).
    pub(crate) fn wake_queue(&self, queue: &str) {
        if let Some(notify) = self.queues.lock().get(queue) {
            notify.notify_waiters();
        }
        if !self.streaming() {
            self.notify.notify_waiters();
        }
    }

    /// What a waiter of `queue` waits on. Entries nobody holds are dropped as others are
    /// made, so the map holds the queues waited on now.
    pub(crate) fn for_queue(&self, queue: &str) -> Arc<Notify> {
        let mut queues = self.queues.lock();
        if let Some(notify) = queues.get(queue) {
            return notify.clone();
        }
        queues.retain(|_, n| Arc::strong_count(n) > 1);
        let notify = Arc::new(Notify::new());
        queues.insert(queue.to_owned(), notify.clone());
        notify
    }

    /// Starts the watcher (once), unless change streams are off.
    pub(crate) fn start(self: &Arc<Self>, messages: Collection<Document>, enabled: bool) {
        if !enabled
            || self
                .state
                .compare_exchange(IDLE, STARTED, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
        {
            return;
        }
        let weak = Arc::downgrade(self);
        let task = tokio::spawn(async move { watch(weak, messages).await });
        *self.task.lock() = Some(task);
    }
}

/// Follows the change stream until the backend is gone or the server refuses streams.
async fn watch(waker: std::sync::Weak<Waker>, messages: Collection<Document>) {
    let mut pause = Duration::from_millis(100);
    loop {
        let opened = messages
            .watch()
            // Only what makes a message ready: an insert, or an update that gives a document
            // its `queue` back (a requeue, a restored lease). Takes (which set a leased
            // `queue`) and acks (deletes) wake nobody.
            .pipeline([
                doc! { "$match": { "$or": [
                    { "operationType": "insert" },
                    { "operationType": "replace" },
                    {
                        "operationType": "update",
                        "updateDescription.updatedFields.queue": {
                            "$type": "string",
                            "$not": { "$regex": format!("^{}", LEASED_PREFIX.replace('.', "\\.")) },
                        },
                    },
                ] } },
                // The queue is all a waiter needs: not the inserted document (up to 16 MiB
                // each, to every consumer process).
                doc! { "$project": {
                    "operationType": 1,
                    "ns": 1,
                    "documentKey": 1,
                    "fullDocument.queue": 1,
                    "updateDescription.updatedFields.queue": 1,
                } },
            ])
            .await;
        let mut stream = match opened {
            // Read as plain documents: the projected events lack fields the driver's event
            // type requires.
            Ok(stream) => stream.with_type::<Document>(),
            Err(err) => {
                let Some(w) = waker.upgrade() else { return };
                if let mongodb::error::ErrorKind::Command(command) = err.kind.as_ref()
                    && REFUSED.contains(&command.code)
                {
                    tracing::debug!(error = %err, "mongodb: no change streams on this server; polling");
                    w.state.store(UNSUPPORTED, Ordering::SeqCst);
                    return;
                }
                tracing::debug!(error = %err, "mongodb: change stream not open; polling meanwhile");
                drop(w);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        {
            let Some(w) = waker.upgrade() else { return };
            w.streaming.store(true, Ordering::SeqCst);
            // Whatever happened while no stream was open: let the waiters look.
            w.wake();
        }
        pause = Duration::from_millis(100);
        while let Some(event) = stream.next().await {
            let Some(w) = waker.upgrade() else { return };
            match event {
                Ok(event) => {
                    let queue = event_queue(&event);
                    match queue {
                        // A delayed message stored: its queue's waiters look again, for
                        // its due time.
                        Some(queue) if queue.starts_with(DELAYED_PREFIX) => {
                            let queue = &queue[DELAYED_PREFIX.len()..];
                            w.delays.invalidate(queue);
                            w.wake_queue(queue);
                        }
                        Some(queue) => w.wake_queue(queue),
                        None => w.wake(),
                    }
                }
                Err(err) => {
                    tracing::debug!(error = %err, "mongodb: change stream failed; reopening");
                    break;
                }
            }
        }
        let Some(w) = waker.upgrade() else { return };
        w.streaming.store(false, Ordering::SeqCst);
        w.wake();
        drop(w);
        tokio::time::sleep(pause).await;
    }
}

/// The queue a change event makes a message ready on: an insert's `fullDocument.queue`, an
/// update's `updateDescription.updatedFields.queue` (as the projection keeps them).
fn event_queue(event: &Document) -> Option<&str> {
    event
        .get_document("fullDocument")
        .and_then(|d| d.get_str("queue"))
        .or_else(|_| {
            event
                .get_document("updateDescription")
                .and_then(|u| u.get_document("updatedFields"))
                .and_then(|f| f.get_str("queue"))
        })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_name_their_queue() {
        // As the projected pipeline delivers them (seen from the test server).
        let insert = doc! {
            "_id": { "_data": "x" }, "operationType": "insert",
            "fullDocument": { "queue": "q2" }, "documentKey": { "_id": 2 },
        };
        let update = doc! {
            "_id": { "_data": "y" }, "operationType": "update",
            "updateDescription": { "updatedFields": { "queue": "q" } },
        };
        let replace = doc! { "_id": { "_data": "z" }, "operationType": "replace" };
        assert_eq!(event_queue(&insert), Some("q2"));
        assert_eq!(event_queue(&update), Some("q"));
        assert_eq!(event_queue(&replace), None);
    }
}
