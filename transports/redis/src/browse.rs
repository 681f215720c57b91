//! Looking at a queue without taking from it: its stats (ready messages, and the unacked ones
//! its leases name) and its ready messages in the order takes hand them out.

use kombu_core::transport::QueueStats;
use kombu_core::transport::virtual_transport::{Envelope, dead_letter_envelope, envelope};
use kombu_core::{Error, ErrorKind, Result};

use crate::backend::RedisBackend;

/// Fields of `unacked` looked at per script call.
const SCAN_STEP: usize = 1_000;
/// At most this many `unacked` entries are looked at to count a queue's; beyond it the count
/// is not reported (`None`) rather than a part of it.
const SCAN_LIMIT: usize = 200_000;

/// One `HSCAN` step of `KEYS[1]` (`unacked`) from cursor `ARGV[1]`, `ARGV[2]` fields, on the
/// server: returns `{next cursor, fields seen, values ending with ARGV[3]}`, so no message
/// crosses the network. An entry's value ends with its routing key (`, "<key>"]`): kombu-rs
/// writes `[envelope, "", "<queue>"]`, Python kombu `[envelope, "<exchange>", "<routing
/// key>"]`, whose routing key is the queue under Celery's default routing.
const COUNT_LEASES: &str = r#"
local r = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local values, suffix, n = r[2], ARGV[3], 0
local len = #suffix
for i = 2, #values, 2 do
  if string.sub(values[i], -len) == suffix then n = n + 1 end
end
return {r[1], #values / 2, n}
"#;

static COUNT_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(COUNT_LEASES));

/// The end of an `unacked` value naming `queue` as its routing key.
fn lease_suffix(queue: &str) -> String {
    format!(", {}]", serde_json::Value::from(queue))
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

    /// Counts the `unacked` entries of `queue` on the server, a step at a time (`HSCAN` may
    /// return an entry twice while the hash grows: the count is then one high); `None` past
    /// [`SCAN_LIMIT`] entries.
    async fn count_unacked(&self, queue: &str) -> Result<Option<u64>> {
        let mut conn = self.conn().await?;
        let suffix = lease_suffix(queue);
        let (mut cursor, mut seen, mut count) = (String::from("0"), 0usize, 0u64);
        loop {
            let (next, fields, matched): (String, usize, u64) = COUNT_SCRIPT
                .key(&self.options.unacked)
                .arg(&cursor)
                .arg(SCAN_STEP)
                .arg(&suffix)
                .invoke_async(&mut conn)
                .await
                .map_err(self.err("count unacked messages"))?;
            seen += fields;
            count += matched;
            if next == "0" {
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
    use super::lease_suffix;

    #[test]
    fn leases_end_with_their_queue_in_either_format() {
        let suffix = lease_suffix("jobs");
        assert!(r#"["{\"body\": \"x\"}", "", "jobs"]"#.ends_with(&suffix));
        assert!(r#"[{"body": "x"}, "celery", "jobs"]"#.ends_with(&suffix));
        assert!(!r#"[{"body": "x"}, "", "other-jobs"]"#.ends_with(&suffix));
        assert_eq!(lease_suffix("a\"b"), r#", "a\"b"]"#);
    }
}
