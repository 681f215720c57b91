//! Acks as kombu writes them: `HDEL unacked` + `ZREM unacked_index` of a batch of takes, in
//! one transaction. The virtual channel gathers the batches (it coalesces acks and calls
//! `ack_many`); this only writes one.

use kombu_core::Result;

use crate::backend::RedisBackend;

/// Fields removed per `HDEL`/`ZREM` command of a batch.
const FIELDS_PER_COMMAND: usize = 1000;

impl RedisBackend {
    /// Removes takes from `unacked` and `unacked_index` by their fields, in one transaction
    /// (one round trip for the whole batch). A field already gone is skipped.
    pub(crate) async fn remove_unacked(&self, fields: &[String]) -> Result<()> {
        if fields.is_empty() {
            return Ok(());
        }
        let o = &self.options;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for chunk in fields.chunks(FIELDS_PER_COMMAND) {
            pipe.hdel(&o.unacked, chunk)
                .ignore()
                .zrem(&o.unacked_index, chunk)
                .ignore();
        }
        let mut conn = self.conn().await?;
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(self.err("ack"))
            .map_err(crate::reconnect::maybe_written)
    }
}
