//! Looking at a queue without taking from it: its stats (ready and leased messages) and its
//! ready messages in the order takes hand them out.

use tokio::time::Instant;

use super::MemoryBackend;
use crate::error::Result;
use crate::transport::QueueStats;
use crate::transport::virtual_transport::{Backend, Envelope};

impl MemoryBackend {
    /// A queue's ready count and leased messages; `None` when it does not exist.
    pub(super) async fn stats(&self, name: &str) -> Result<Option<QueueStats>> {
        let Some(stored) = self.queue(name, None).await? else {
            return Ok(None);
        };
        let unacked = self
            .with_queue(name, |q| q.leases.lock().unacked.len() as u64)
            .unwrap_or(0);
        // The store keeps no wall-clock time of a put.
        Ok(Some(QueueStats::new(stored.messages).unacked(unacked)))
    }

    /// Up to `limit` ready, unexpired messages of `queue`, in take order.
    pub(super) fn peek_queue(&self, queue: &str, limit: usize) -> Vec<Envelope> {
        let now = Instant::now();
        self.with_queue(queue, |q| {
            let ready = q.ready.lock();
            // Takes pop the highest level first, each from its front.
            ready
                .levels
                .iter()
                .rev()
                .flat_map(|level| level.iter())
                .filter(|s| s.expires_at.is_none_or(|at| at > now))
                .take(limit)
                .map(|s| Envelope::clone(&s.envelope))
                .collect()
        })
        .unwrap_or_default()
    }
}
