//! Looking at a queue without taking from it: its stats (ready and leased documents, and when
//! the oldest ready one was stored, from its `ObjectId`) and its ready messages in take order.

use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use kombu_core::Result;
use kombu_core::transport::QueueStats;
use kombu_core::transport::virtual_transport::{Envelope, dead_letter_envelope};
use mongodb::bson::{Bson, DateTime, Document, doc};

use crate::backend::MongoBackend;
use crate::documents::{EXPIRE_AT, PRIORITY, Payload, QUEUE, leased, read_payload};
use crate::errors::Op;

/// When a document was stored, from its `_id` when that is an `ObjectId` (the driver's and
/// Python kombu's default); `None` for another `_id`.
fn stored_at(document: &Document) -> Option<SystemTime> {
    match document.get("_id")? {
        Bson::ObjectId(id) => {
            let millis = u64::try_from(id.timestamp().timestamp_millis()).ok()?;
            SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(millis))
        }
        _ => None,
    }
}

/// The ready documents of `queue` a take would hand out: not expired (a take dead-letters
/// those).
fn live(queue: &str) -> Document {
    doc! {
        QUEUE: queue,
        "$or": [
            { EXPIRE_AT: { "$exists": false } },
            { EXPIRE_AT: { "$gt": DateTime::now() } },
        ],
    }
}

impl MongoBackend {
    /// A queue's stats; `None` when it exists nowhere.
    pub(crate) async fn stats(&self, queue: &str) -> Result<Option<QueueStats>> {
        let Some(stored) = self.queue_record(queue, None).await? else {
            return Ok(None);
        };
        let unacked = self
            .messages
            .count_documents(doc! { QUEUE: leased(queue) })
            .await
            .map_err(self.err("count leased messages", Op::Read))?;
        // The oldest stored, not the first to be taken (priorities come first).
        let oldest = self
            .messages
            .find_one(live(queue))
            .sort(doc! { "_id": 1 })
            .projection(doc! { "_id": 1 })
            .await
            .map_err(self.err("find the oldest message", Op::Read))?;
        Ok(Some(
            QueueStats::new(stored.messages)
                .unacked(unacked)
                .oldest(oldest.as_ref().and_then(stored_at)),
        ))
    }

    /// Up to `limit` ready documents of `queue`, in take order (priority, then `_id`).
    pub(crate) async fn peek_queue(&self, queue: &str, limit: usize) -> Result<Vec<Envelope>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let found: Vec<Document> = self
            .messages
            .find(live(queue))
            .sort(doc! { PRIORITY: 1, "_id": 1 })
            .limit(limit)
            .await
            .map_err(self.err("read a queue's messages", Op::Read))?
            .try_collect()
            .await
            .map_err(self.err("read a queue's messages", Op::Read))?;
        // As a take: a dead-letter queue's documents are not bounded.
        let max = match queue.ends_with(kombu_core::dead_letter::DLQ_SUFFIX) {
            true => u64::MAX,
            false => self.options.max_payload_size,
        };
        Ok(found
            .iter()
            .map(|document| match read_payload(document, max) {
                Payload::Envelope(envelope) => Envelope::clone(&envelope),
                Payload::Unreadable(raw, reason) => {
                    dead_letter_envelope(queue, "mongodb", &reason, raw)
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::oid::ObjectId;

    #[test]
    fn an_object_id_tells_when_its_document_was_stored() {
        let now = SystemTime::now();
        let at = stored_at(&doc! { "_id": ObjectId::new() }).expect("an ObjectId's time");
        let off = now.duration_since(at).unwrap_or_else(|e| e.duration());
        assert!(off < Duration::from_secs(2), "{off:?}");
        assert_eq!(stored_at(&doc! { "_id": "text" }), None);
        assert_eq!(stored_at(&doc! {}), None);
    }
}
