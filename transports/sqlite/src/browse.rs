//! Looking at a queue without taking from it: its stats (ready rows, rows kombu-rs leased) and
//! its ready messages in the order takes hand them out.

use kombu_core::Result;
use kombu_core::transport::virtual_transport::{Envelope, dead_letter_envelope, envelope};
use kombu_core::transport::{QueueStats, unix_now};
use rusqlite::{TransactionBehavior, params};

use crate::backend::SqliteBackend;
use crate::delayed::count_due;
use crate::payload::Payload;
use crate::schema::queue_id;

impl SqliteBackend {
    /// A queue's ready rows (due delayed ones included) and the rows kombu-rs leased;
    /// `None` when the queue does not exist.
    pub(crate) async fn stats(&self, name: &str) -> Result<Option<QueueStats>> {
        let name = name.to_owned();
        let counts = self
            .run("queue stats", move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
                let Some(id) = queue_id(&tx, &name)? else {
                    return Ok(None);
                };
                // Ready rows, and leased ones: taken by kombu-rs (a take time or an earlier
                // version's lease end). Delayed rows are neither until due, and rows Python
                // kombu took are never acked nor deleted by it: not counted.
                let (ready, taken): (i64, i64) = tx
                    .prepare_cached(
                        "SELECT COALESCE(SUM(visible = 1), 0), \
                         COALESCE(SUM(visible = 0 AND due_at IS NULL \
                         AND (taken_at IS NOT NULL OR lease_until IS NOT NULL)), 0) \
                         FROM kombu_message WHERE queue_id = ?1",
                    )?
                    .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))?;
                let due = count_due(&tx, id, unix_now())?;
                tx.commit()?;
                Ok(Some((ready.unsigned_abs() + due, taken.unsigned_abs())))
            })
            .await?;
        // The store keeps no time of a put (kombu's `timestamp` is written at a take).
        Ok(counts.map(|(ready, taken)| QueueStats::new(ready).unacked(taken)))
    }

    /// Up to `limit` ready rows of `queue` in take order, none taken.
    pub(crate) async fn peek_queue(&self, queue: &str, limit: usize) -> Result<Vec<Envelope>> {
        let name = queue.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // As a take: a dead-letter queue's rows are not bounded (see `get_many`).
        let max_payload = if queue.ends_with(kombu_core::dead_letter::DLQ_SUFFIX) {
            i64::MAX
        } else {
            i64::try_from(self.options.max_payload_size).unwrap_or(i64::MAX)
        };
        let rows = self
            .run("peek", move |conn| {
                let Some(id) = queue_id(conn, &name)? else {
                    return Ok(Vec::new());
                };
                // In take order; an oversize payload is not read.
                let mut stmt = conn.prepare_cached(
                    "SELECT CASE WHEN octet_length(payload) > ?3 THEN NULL ELSE payload END, \
                     redelivered, octet_length(payload) > ?3 \
                     FROM kombu_message \
                     WHERE queue_id = ?1 AND visible = 1 ORDER BY timestamp, id LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![id, limit, max_payload], |r| {
                    let oversize = r.get::<_, Option<bool>>(2)?.unwrap_or(false);
                    Ok((
                        Payload::read(r.get_ref(0)?, oversize, max_payload),
                        r.get::<_, Option<bool>>(1)?.unwrap_or(false),
                    ))
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|(payload, redelivered)| {
                let decoded = match payload.unreadable {
                    Some(reason) => Err(reason),
                    None => envelope::decode(&payload.bytes).map_err(|e| e.to_string()),
                };
                match decoded {
                    Ok(mut env) => {
                        env.redelivered |= redelivered;
                        env
                    }
                    Err(reason) => {
                        dead_letter_envelope(queue, "sqlite", &reason, payload.bytes.into())
                    }
                }
            })
            .collect())
    }
}
