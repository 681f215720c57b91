//! Acks written behind the consumer's back: queued by `ack`, written in batches by one
//! background task (kombu's `HDEL unacked` + `ZREM unacked_index`, one transaction per batch).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kombu_core::Result;
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;

use crate::connect::redis_error;

/// Acks waiting to be written: `ack` returns once its ack is queued, and one pipeline writes
/// every queued ack (one round trip for many), in the background while the consumer goes on.
/// A sweep for overdue leases, `size`, `purge`, `wait`, a restore and a channel's close write
/// the queued acks first, so this process never restores or counts a message it acked (a take
/// need not: an acked message is in `unacked`, out of every list). If the process dies with
/// acks still queued, those messages come back after the visibility timeout (at-least-once, as when a consumer dies before acking).
pub(crate) struct AckQueue {
    /// Fields of `unacked` (one per take) whose messages were settled.
    pending: Mutex<Vec<String>>,
    flushing: tokio::sync::Mutex<()>,
    /// Whether the background writer runs.
    running: AtomicBool,
    conn: MultiplexedConnection,
    /// `unacked` and `unacked_index`.
    keys: [String; 2],
    label: String,
}

impl AckQueue {
    /// An empty queue writing to `unacked` and `unacked_index` (`keys`) over `conn`; `label`
    /// (the masked URL) names the connection in errors and logs.
    pub(crate) fn new(conn: MultiplexedConnection, keys: [String; 2], label: String) -> AckQueue {
        AckQueue {
            pending: Mutex::new(Vec::new()),
            flushing: tokio::sync::Mutex::new(()),
            running: AtomicBool::new(false),
            conn,
            keys,
            label,
        }
    }

    /// Queues the ack of one `unacked` field and returns how many are queued; the caller
    /// starts the writer ([`spawn_flusher`]) or flushes.
    pub(crate) fn push(&self, field: String) -> usize {
        let mut pending = self.pending.lock();
        pending.push(field);
        pending.len()
    }

    /// Queues the acks of several fields (the caller starts the writer).
    pub(crate) fn extend(&self, fields: impl IntoIterator<Item = String>) {
        self.pending.lock().extend(fields);
    }

    /// Writes every queued ack (waiting for a flush already in progress first).
    pub(crate) async fn flush(&self) -> Result<()> {
        let _turn = self.flushing.lock().await;
        loop {
            let batch = std::mem::take(&mut *self.pending.lock());
            if batch.is_empty() {
                return Ok(());
            }
            self.write(&batch).await?;
        }
    }

    /// kombu's ack (`HDEL unacked`, `ZREM unacked_index`) for a batch, in one transaction.
    async fn write(&self, batch: &[String]) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for chunk in batch.chunks(1000) {
            pipe.hdel(&self.keys[0], chunk)
                .ignore()
                .zrem(&self.keys[1], chunk)
                .ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| redis_error(&self.label, "ack", e))
    }
}

/// Writes queued acks in the background until none are left.
pub(crate) fn spawn_flusher(acks: Arc<AckQueue>) {
    if acks.running.swap(true, Ordering::AcqRel) {
        return;
    }
    tokio::spawn(async move {
        loop {
            if let Err(err) = acks.flush().await {
                tracing::warn!(url = %acks.label, error = %err, "acks not written; those messages will be redelivered after the visibility timeout");
            }
            acks.running.store(false, Ordering::Release);
            // An ack queued after the last drain but before `running` was cleared.
            if acks.pending.lock().is_empty() || acks.running.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    });
}
