//! Celery's Redis result backend (`celery/backends/redis.py`; `celery-protocol.md` §3): the
//! document of task `<id>` under `celery-task-meta-<id>`, written with `SETEX` for
//! `result_expires` and published, in the same transaction, on the channel of the key's name;
//! a waiting client subscribes to that channel before it reads the key, so it never polls; every
//! wait of one backend shares one PUB/SUB connection (`redis_watch.rs`).

use std::time::Duration;

use async_trait::async_trait;
use kombu_core::{BrokerUrl, Error, ErrorKind, Result};
use serde_json::Value as Json;

use super::redis_watch::Watcher;
use super::{ChordReady, ChordSupport, DEFAULT_RESULT_EXPIRES, ResultBackend};
use crate::result::{ResultMeta, State};

/// Celery's `redis://` result backend. URL options: `global_keyprefix` (as Celery's
/// `result_backend_transport_options`: `x` becomes the prefix `x_` unless it ends in `:`, `_`,
/// `-` or `.`) and `result_expires` (seconds; `0`: results never expire; default a day).
pub struct RedisResultBackend {
    client: redis::Client,
    /// Reconnects by itself after a dropped connection.
    conn: redis::aio::ConnectionManager,
    /// The one PUB/SUB connection every wait shares, opened at the first.
    watcher: tokio::sync::Mutex<Option<std::sync::Arc<Watcher>>>,
    watchers_opened: std::sync::atomic::AtomicUsize,
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
        // Reconnecting after a drop, and patient with a loaded server (the redis crate's
        // default gives up on a reply after 500 ms: a result then lost).
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(RESPONSE_TIMEOUT));
        let conn = redis::aio::ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| backend_error(&label, "cannot connect", e))?;
        Ok(RedisResultBackend {
            client,
            conn,
            watcher: tokio::sync::Mutex::new(None),
            watchers_opened: std::sync::atomic::AtomicUsize::new(0),
            prefix,
            expires,
            label,
        })
    }

    /// How many subscription connections its waits have opened so far (one, unless one
    /// dropped): for tests.
    #[doc(hidden)]
    pub fn subscription_connections_opened(&self) -> usize {
        self.watchers_opened
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `op` on the data connection, once more after a dropped connection (the
    /// connection manager reconnects behind the failed call): every command here may run
    /// twice (reads, `SETEX` of the same document, a `PUBLISH` waiters read once, the chord
    /// scripts that count a part once).
    async fn with_conn<T, F, Fut>(&self, op: F) -> redis::RedisResult<T>
    where
        F: Fn(redis::aio::ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        match op(self.conn.clone()).await {
            Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() => {
                tracing::debug!(error = %e, "the result backend's connection dropped: once more");
                tokio::time::sleep(RESUBSCRIBE_PAUSE).await;
                op(self.conn.clone()).await
            }
            done => done,
        }
    }

    /// The key of `task_id`'s result.
    pub fn key(&self, task_id: &str) -> String {
        format!("{}celery-task-meta-{task_id}", self.prefix)
    }

    /// The shared subscription connection, opened again if it dropped.
    async fn watcher(&self) -> Result<std::sync::Arc<Watcher>> {
        let mut slot = self.watcher.lock().await;
        if let Some(watcher) = slot.as_ref().filter(|w| w.is_alive()) {
            return Ok(watcher.clone());
        }
        self.watchers_opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let watcher = std::sync::Arc::new(
            Watcher::open(&self.client)
                .await
                .map_err(|e| backend_error(&self.label, "cannot subscribe", e))?,
        );
        *slot = Some(watcher.clone());
        Ok(watcher)
    }

    /// The key of group `group_id`'s data, with `suffix` (Celery's `get_key_for_group`).
    fn group_key(&self, group_id: &str, suffix: &str) -> String {
        format!("{}celery-taskset-meta-{group_id}{suffix}", self.prefix)
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
        let key = self.key(task_id);
        let raw: Option<Vec<u8>> = self
            .with_conn(|mut conn| {
                let key = &key;
                async move { redis::cmd("GET").arg(key).query_async(&mut conn).await }
            })
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
        self.with_conn(|mut conn| {
            let pipe = &pipe;
            async move { pipe.query_async::<()>(&mut conn).await }
        })
        .await
        .map_err(|e| backend_error(&self.label, "SETEX and PUBLISH", e))
    }

    fn chord_support(&self) -> ChordSupport {
        ChordSupport::Join
    }

    async fn set_chord_size(&self, group_id: &str, size: usize) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("DEL").arg(self.group_key(group_id, ".c")).ignore();
        let skey = self.group_key(group_id, ".s");
        match self.expires {
            Some(ttl) => pipe
                .cmd("SET")
                .arg(&skey)
                .arg(size)
                .arg("EX")
                .arg(ttl.as_secs().max(1)),
            None => pipe.cmd("SET").arg(&skey).arg(size),
        };
        self.with_conn(|mut conn| {
            let pipe = &pipe;
            async move { pipe.query_async::<()>(&mut conn).await }
        })
        .await
        .map_err(|e| backend_error(&self.label, "setting a chord's size", e))
    }

    async fn chord_part_return(
        &self,
        group_id: &str,
        group_index: Option<u32>,
        meta: &ResultMeta,
    ) -> Result<Option<ChordReady>> {
        let encoded = kombu_serializers::to_python_json(&serde_json::json!([
            1,
            meta.task_id,
            meta.state.as_str(),
            meta.result
        ]))
        .map_err(|e| {
            Error::new(ErrorKind::Codec, "a chord part that is not JSON").with_source(e)
        })?;
        let claim = uuid::Uuid::new_v4().simple().to_string();
        let expires = self.expires.map_or(0, |d| d.as_secs().max(1));
        let score = group_index.map_or_else(|| "+inf".to_owned(), |i| i.to_string());
        let script = redis::Script::new(CHORD_PART_RETURN);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.group_key(group_id, ".j"))
            .key(self.group_key(group_id, ".t"))
            .key(self.group_key(group_id, ".s"))
            .key(self.group_key(group_id, ".d"))
            .key(self.group_key(group_id, ""))
            .key(self.group_key(group_id, ".c"))
            .arg(&meta.task_id)
            .arg(encoded)
            .arg(score)
            .arg(expires)
            .arg(CHORD_CLAIM_SECONDS)
            .arg(&claim);
        // Run again after a lost reply, it counts the part once and finds its own claim.
        let (ready, claimed): (i64, i64) = self
            .with_conn(|mut conn| {
                let invocation = &invocation;
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await
            .map_err(|e| backend_error(&self.label, "counting a chord part", e))?;
        if ready < 0 || claimed == 0 {
            return Ok(None);
        }
        let jkey = self.group_key(group_id, ".j");
        let members: Vec<Vec<u8>> = self
            .with_conn(|mut conn| {
                let jkey = &jkey;
                async move {
                    redis::cmd("ZRANGE")
                        .arg(jkey)
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut conn)
                        .await
                }
            })
            .await
            .map_err(|e| backend_error(&self.label, "reading a chord's results", e))?;
        let mut parts = Vec::with_capacity(members.len());
        for raw in members {
            let part: Json = kombu_serializers::from_python_json(&raw).map_err(|e| {
                Error::new(
                    ErrorKind::Codec,
                    format!("chord {group_id}: a part that is not JSON"),
                )
                .with_source(e)
            })?;
            let text = |i: usize| part.get(i).and_then(Json::as_str).unwrap_or("").to_owned();
            let mut meta = ResultMeta::pending(text(1));
            meta.state = State::parse(&text(2));
            meta.result = part.get(3).cloned().unwrap_or(Json::Null);
            parts.push(meta);
        }
        Ok(Some(ChordReady {
            group_id: group_id.to_owned(),
            parts,
            claim,
        }))
    }

    async fn chord_claim(&self, ready: &ChordReady) -> Result<bool> {
        let gid = ready.group_id.as_str();
        let script = redis::Script::new(CHORD_CLAIM_EXTEND);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.group_key(gid, ".c"))
            .key(self.group_key(gid, ".s"))
            .arg(&ready.claim)
            .arg(CHORD_CLAIM_SECONDS);
        self.with_conn(|mut conn| {
            let invocation = &invocation;
            async move { invocation.invoke_async::<i64>(&mut conn).await }
        })
        .await
        .map(|extended| extended == 1)
        .map_err(|e| backend_error(&self.label, "renewing a chord's claim", e))
    }

    async fn chord_done(&self, ready: &ChordReady) -> Result<()> {
        let gid = ready.group_id.as_str();
        let script = redis::Script::new(CHORD_CLEANUP);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.group_key(gid, ".c"))
            .key(self.group_key(gid, ".j"))
            .key(self.group_key(gid, ".t"))
            .key(self.group_key(gid, ".s"))
            .key(self.group_key(gid, ".d"))
            .arg(&ready.claim)
            .arg(CHORD_DONE_SECONDS);
        self.with_conn(|mut conn| {
            let invocation = &invocation;
            async move { invocation.invoke_async::<i64>(&mut conn).await }
        })
        .await
            .map(|cleared| {
                if cleared == 0 {
                    tracing::warn!(group = %gid, "a chord's claim was lost before its cleanup: its data is left to expire");
                }
            })
            .map_err(|e| backend_error(&self.label, "clearing a chord", e))
    }

    async fn wait(&self, task_id: &str, timeout: Duration) -> Result<ResultMeta> {
        let key = self.key(task_id);
        let deadline = super::deadline(timeout);
        loop {
            // Subscribed before the read: a result stored in between is published after.
            let subscribed = tokio::time::timeout_at(deadline, async {
                let watcher = self.watcher().await?;
                watcher
                    .subscribe(&key)
                    .await
                    .map_err(|e| backend_error(&self.label, "SUBSCRIBE", e))
            })
            .await;
            let mut subscription = match subscribed {
                Ok(Ok(subscription)) => subscription,
                // Its connection had just dropped: subscribe again on a new one.
                Ok(Err(error)) if error.kind() == ErrorKind::Connection => {
                    tracing::debug!(error = %format_args!("{error:#}"), "subscribing again");
                    if tokio::time::Instant::now() >= deadline {
                        return self.meta(task_id).await;
                    }
                    tokio::time::sleep(RESUBSCRIBE_PAUSE).await;
                    continue;
                }
                Ok(Err(error)) => return Err(error),
                Err(_) => return self.meta(task_id).await,
            };
            let mut meta = self.meta(task_id).await?;
            if meta.state.is_ready() {
                return Ok(meta);
            }
            loop {
                match tokio::time::timeout_at(deadline, subscription.latest.changed()).await {
                    // The time is up: what the key says now (a publish may have been missed
                    // while a connection was replaced).
                    Err(_) => return self.meta(task_id).await,
                    // The connection dropped: subscribe again on a new one, then read again.
                    Ok(Err(_)) => break,
                    Ok(Ok(())) => {
                        let doc = subscription.latest.borrow_and_update().clone();
                        if let Some(doc) = doc {
                            meta = self.parse(task_id, &doc)?;
                            if meta.state.is_ready() {
                                return Ok(meta);
                            }
                        }
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return self.meta(task_id).await;
            }
        }
    }
}

/// The pause before subscribing again after a dropped connection.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_millis(50);

/// How long a command may wait for its reply.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the worker that completed a chord holds its claim to send the body (Celery's:
/// twice `result_chord_join_timeout`, 3 s by default).
const CHORD_CLAIM_SECONDS: u64 = 6;
/// How long a finished chord stays marked done, so late copies of its header tasks do not
/// start it again (Celery's: at least 300 s).
const CHORD_DONE_SECONDS: u64 = 300;

/// One header task's result into its chord, in Celery 5.7's layout (`celery/backends/redis.py`):
/// the results in the sorted set `.j` scored by group index, the parts seen in the set `.d`
/// (a part stored twice counts once), the header's size in `.s` and its growth in `.t`, the
/// claim to send the body in `.c` (`done` once sent). Returns the parts in and whether this
/// call claimed the chord; `-1` once the chord is done.
const CHORD_PART_RETURN: &str = r"
local jkey, tkey, skey, dkey, gkey, ckey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local tid, value, score = ARGV[1], ARGV[2], ARGV[3]
local expires, claim_seconds, claim = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
if redis.call('GET', ckey) == 'done' then
  return {-1, 0}
end
local member = tid .. ':' .. score
if redis.call('SISMEMBER', dkey, member) == 0 then
  redis.call('ZADD', jkey, score, value)
  redis.call('SADD', dkey, member)
end
local ready = redis.call('ZCOUNT', jkey, '-inf', '+inf')
if expires > 0 then
  for _, key in ipairs({jkey, tkey, skey, dkey}) do
    redis.call('EXPIRE', key, expires)
  end
  redis.call('EXPIRE', gkey, expires)
end
local size = redis.call('GET', skey)
local grown = redis.call('GET', tkey)
local claimed = 0
if size and ready == tonumber(size) + tonumber(grown or 0) then
  if redis.call('GET', ckey) == claim then
    claimed = 1
  elseif redis.call('SET', ckey, claim, 'NX', 'EX', claim_seconds) then
    claimed = 1
  end
end
return {ready, claimed}
";

/// Renews the claim while its holder still has it, or takes it again if it lapsed while the
/// chord's data is still there (Celery's claim extension before the body is published).
const CHORD_CLAIM_EXTEND: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
end
if not redis.call('GET', KEYS[1]) and redis.call('EXISTS', KEYS[2]) == 1 then
  if redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]), 'NX') then
    return 1
  end
end
return 0
";

/// Clears a chord whose body was sent by the claim's holder, and marks it done.
const CHORD_CLEANUP: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
  redis.call('SET', KEYS[1], 'done', 'EX', tonumber(ARGV[2]))
  return 1
end
return 0
";

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
