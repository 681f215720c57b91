//! Looking at a queue without taking from it: its stats (ready messages, and the unacked ones
//! its leases name) and its ready messages in the order takes hand them out.

use kombu_core::transport::QueueStats;
use kombu_core::transport::virtual_transport::{Envelope, dead_letter_envelope, envelope};
use kombu_core::{Error, ErrorKind, Result};
use serde::de::IgnoredAny;

use crate::backend::RedisBackend;

/// Fields of `unacked` read per `HSCAN` step.
const SCAN_STEP: usize = 1_000;
/// At most this many `unacked` entries are read to count a queue's; beyond it the count is
/// not reported (`None`) rather than a part of it.
const SCAN_LIMIT: usize = 200_000;

/// The queue an `unacked` entry's message goes back to: kombu-rs writes `["<envelope>", "",
/// "<queue>"]`, Python kombu `[<envelope>, "<exchange>", "<routing key>"]`, whose routing key
/// is the queue under Celery's default routing. `None` for an entry of another shape.
fn lease_queue(value: &[u8]) -> Option<String> {
    let (_, _, key): (IgnoredAny, IgnoredAny, String) = serde_json::from_slice(value).ok()?;
    Some(key)
}

impl RedisBackend {
    /// The ready count of `queue` (every priority bucket) and the number of its unacked
    /// messages (the `unacked` entries naming it); `None` when the queue exists nowhere.
    pub(crate) async fn stats(&self, queue: &str) -> Result<Option<QueueStats>> {
        let Some(stored) = self.find_queue(queue).await? else {
            return Ok(None);
        };
        let stats = QueueStats::new(stored.messages);
        Ok(Some(match self.count_unacked(queue).await? {
            Some(n) => stats.unacked(n),
            None => stats,
        }))
    }

    /// Counts the `unacked` entries of `queue` with `HSCAN`; `None` past [`SCAN_LIMIT`].
    async fn count_unacked(&self, queue: &str) -> Result<Option<u64>> {
        let mut conn = self.conn().await?;
        let mut cursor: u64 = 0;
        let mut seen = 0usize;
        let mut count = 0u64;
        loop {
            let (next, pairs): (u64, Vec<Vec<u8>>) = redis::cmd("HSCAN")
                .arg(&self.options.unacked)
                .arg(cursor)
                .arg("COUNT")
                .arg(SCAN_STEP)
                .query_async(&mut conn)
                .await
                .map_err(self.err("count unacked messages"))?;
            // Field, value, field, value, ...
            for value in pairs.iter().skip(1).step_by(2) {
                seen += 1;
                if lease_queue(value).is_some_and(|q| q == queue) {
                    count += 1;
                }
            }
            if next == 0 {
                return Ok(Some(count));
            }
            if seen >= SCAN_LIMIT {
                return Ok(None);
            }
            cursor = next;
        }
    }

    /// Up to `limit` ready messages of `queue`: bucket by bucket in take order, each from the
    /// end takes pop (the right).
    pub(crate) async fn peek_queue(&self, queue: &str, limit: usize) -> Result<Vec<Envelope>> {
        let mut seen = Vec::new();
        if limit == 0 {
            return Ok(seen);
        }
        let mut conn = self.conn().await?;
        for key in self.options.list_keys(queue) {
            let want = limit - seen.len();
            let end = isize::try_from(want).map_err(|_| {
                Error::new(ErrorKind::Config, format!("cannot peek {limit} messages"))
            })?;
            let mut raw: Vec<Vec<u8>> = redis::cmd("LRANGE")
                .arg(&key)
                .arg(-end)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .map_err(self.err("read a queue's messages"))?;
            raw.reverse();
            for body in raw {
                seen.push(match envelope::decode(&body) {
                    Ok(env) => env,
                    Err(err) => dead_letter_envelope(queue, "redis", &err.to_string(), body.into()),
                });
            }
            if seen.len() >= limit {
                break;
            }
        }
        Ok(seen)
    }
}

#[cfg(test)]
mod tests {
    use super::lease_queue;

    #[test]
    fn leases_name_their_queue_in_either_format() {
        assert_eq!(
            lease_queue(br#"["{\"body\": \"x\"}", "", "jobs"]"#).as_deref(),
            Some("jobs")
        );
        assert_eq!(
            lease_queue(br#"[{"body": "x"}, "celery", "celery"]"#).as_deref(),
            Some("celery")
        );
        assert_eq!(lease_queue(b"not json"), None);
        assert_eq!(lease_queue(br#"["a", "b"]"#), None);
    }
}
