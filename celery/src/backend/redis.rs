//! Celery's Redis result backend (`celery/backends/redis.py`; `celery-protocol.md` §3): the
//! document of task `<id>` under `celery-task-meta-<id>`, written with `SETEX` for
//! `result_expires` and published, in the same transaction, on the channel of the key's name;
//! a waiting client subscribes to that channel before it reads the key, so it never polls.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use kombu_core::{BrokerUrl, Error, ErrorKind, Result};
use serde_json::Value as Json;

use super::{DEFAULT_RESULT_EXPIRES, ResultBackend};
use crate::result::{ResultMeta, State};

/// Celery's `redis://` result backend. URL options: `global_keyprefix` (as Celery's
/// `result_backend_transport_options`: `x` becomes the prefix `x_` unless it ends in `:`, `_`,
/// `-` or `.`) and `result_expires` (seconds; `0`: results never expire; default a day).
pub struct RedisResultBackend {
    client: redis::Client,
    conn: redis::aio::MultiplexedConnection,
    prefix: String,
    expires: Option<Duration>,
    label: String,
}

impl std::fmt::Debug for RedisResultBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisResultBackend")
            .field("url", &self.label)
            .field("prefix", &self.prefix)
            .field("expires", &self.expires)
            .finish()
    }
}

fn backend_error(label: &str, what: &str, e: redis::RedisError) -> Error {
    let kind = match e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
        true => ErrorKind::Connection,
        false => ErrorKind::Broker,
    };
    Error::new(kind, format!("redis result backend {label}: {what}")).with_source(e)
}

/// Celery's prefix rule: `x` → `x_`, unless it already ends in a separator.
fn key_prefix(global: &str) -> String {
    match global {
        "" => String::new(),
        p if p.ends_with([':', '_', '-', '.']) => p.to_owned(),
        p => format!("{p}_"),
    }
}

impl RedisResultBackend {
    /// Connects to the backend at `url` (`redis://host:port/db?global_keyprefix=...`).
    pub async fn connect(url: &str) -> Result<RedisResultBackend> {
        let parsed = BrokerUrl::parse(url)?;
        let label = parsed.to_string();
        let prefix = key_prefix(&parsed.query("global_keyprefix").unwrap_or_default());
        let expires = match parsed.query_seconds("result_expires")? {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None => Some(DEFAULT_RESULT_EXPIRES),
        };
        // The redis crate's own URL: the options are ours.
        let plain = url.split_once('?').map_or(url, |(base, _)| base);
        let client = redis::Client::open(plain).map_err(|e| {
            Error::new(
                ErrorKind::InvalidUrl,
                format!("redis result backend {label}"),
            )
            .with_source(e)
        })?;
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| backend_error(&label, "cannot connect", e))?;
        Ok(RedisResultBackend {
            client,
            conn,
            prefix,
            expires,
            label,
        })
    }

    /// The key of `task_id`'s result.
    pub fn key(&self, task_id: &str) -> String {
        format!("{}celery-task-meta-{task_id}", self.prefix)
    }

    fn parse(&self, task_id: &str, raw: &[u8]) -> Result<ResultMeta> {
        let doc: Json = kombu_serializers::from_python_json(raw).map_err(|e| {
            Error::new(
                ErrorKind::Codec,
                format!("the stored result of task {task_id} is not JSON"),
            )
            .with_source(e)
        })?;
        Ok(ResultMeta::from_json(task_id, &doc))
    }
}

#[async_trait]
impl ResultBackend for RedisResultBackend {
    async fn meta(&self, task_id: &str) -> Result<ResultMeta> {
        let mut conn = self.conn.clone();
        let raw: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.key(task_id))
            .query_async(&mut conn)
            .await
            .map_err(|e| backend_error(&self.label, "GET", e))?;
        match raw {
            None => Ok(ResultMeta::pending(task_id)),
            Some(raw) => self.parse(task_id, &raw),
        }
    }

    async fn store(&self, meta: &ResultMeta) -> Result<()> {
        if self.meta(&meta.task_id).await?.state == State::Success {
            return Ok(());
        }
        let key = self.key(&meta.task_id);
        let doc = kombu_serializers::to_python_json(&meta.to_json()).map_err(|e| {
            Error::new(ErrorKind::Codec, "a result document that is not JSON").with_source(e)
        })?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        match self.expires {
            Some(ttl) => pipe
                .cmd("SETEX")
                .arg(&key)
                .arg(ttl.as_secs().max(1))
                .arg(&doc),
            None => pipe.cmd("SET").arg(&key).arg(&doc),
        };
        pipe.cmd("PUBLISH").arg(&key).arg(&doc);
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| backend_error(&self.label, "SETEX and PUBLISH", e))
    }

    async fn wait(&self, task_id: &str, timeout: Duration) -> Result<ResultMeta> {
        let key = self.key(task_id);
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribed before the first read: a result stored in between is published after.
        let mut pubsub = self
            .client
            .get_async_pubsub()
            .await
            .map_err(|e| backend_error(&self.label, "cannot subscribe", e))?;
        pubsub
            .subscribe(&key)
            .await
            .map_err(|e| backend_error(&self.label, "SUBSCRIBE", e))?;
        let mut meta = self.meta(task_id).await?;
        if meta.state.is_ready() {
            return Ok(meta);
        }
        let mut messages = pubsub.on_message();
        loop {
            match tokio::time::timeout_at(deadline, messages.next()).await {
                Err(_) => return Ok(meta),
                Ok(None) => {
                    // The subscription dropped: read the key once more.
                    return self.meta(task_id).await;
                }
                Ok(Some(message)) => {
                    meta = self.parse(task_id, message.get_payload_bytes())?;
                    if meta.state.is_ready() {
                        return Ok(meta);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::key_prefix;

    #[test]
    fn prefixes_follow_celerys_rule() {
        assert_eq!(key_prefix(""), "");
        assert_eq!(key_prefix("app"), "app_");
        assert_eq!(key_prefix("app:"), "app:");
        assert_eq!(key_prefix("app-"), "app-");
        assert_eq!(key_prefix("app."), "app.");
    }
}
