//! Exchanges, bindings and queue records, kept where Python kombu looks for them: binding
//! tables (`_kombu.binding.<exchange>`, with kombu 5.7's deadlines for the tables of expiring
//! queues), plus kombu-rs's registries of exchange types and queue arguments. Also whether a
//! queue exists (declared, has a list, or is bound in any table) and routing by what is
//! stored now.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kombu_core::transport::virtual_transport::{
    Backend, BindingRow, StoredQueue, queue_settings, router,
};
use kombu_core::{Error, ErrorKind, Exchange, ExchangeKind, Headers, Queue, Result};
use redis::AsyncCommands;

use crate::backend::RedisBackend;
use crate::keys::{glob_escape, member_queue};
use kombu_core::transport::virtual_transport::router::kombu_topic_pattern;

/// A binding table of an expiring queue lives at least this long past its last refresh
/// (kombu's `MIN_BINDING_TTL`), or twice the queue's `x-expires` if that is longer.
const MIN_BINDING_TTL_MS: u64 = 60 * 60 * 1000;
/// Seconds between two sweeps of overdue binding tables (kombu's `BINDING_SWEEP_INTERVAL`).
const BINDING_SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The bindings of an expiring queue made through one connection, `(exchange, member)`, and
/// when their tables' deadlines were last pushed on.
pub(crate) type ExpiringBindings = (Vec<(String, String)>, Option<Instant>);

/// How long exchanges and bindings read from Redis are used without reading them again.
pub(crate) const TOPOLOGY_TTL: Duration = Duration::from_secs(1);
/// How long a queue found in a binding table is taken to exist without looking again.
const BOUND_TTL: Duration = Duration::from_secs(5);
/// The `COUNT` of each `SCAN` step for binding tables (Redis's default, 10, costs a round trip
/// per ten keys of the whole database).
const SCAN_COUNT: usize = 1000;
/// Binding tables read per round trip.
const TABLES_PER_READ: usize = 256;

impl RedisBackend {
    /// Adds `member` to `exchange`'s binding table and pushes the table's deadline to its TTL
    /// from now (for a queue expiring after `expires_ms`).
    async fn refresh_binding_table(
        &self,
        exchange: &str,
        member: &str,
        expires_ms: u64,
    ) -> Result<()> {
        let ttl = expires_ms.saturating_mul(2).max(MIN_BINDING_TTL_MS);
        let mut conn = self.conn().await?;
        let _: () = self
            .refresh_binding
            .key(self.options.binding_key(exchange))
            .key(self.options.binding_deadlines_key())
            .arg(member)
            .arg(exchange)
            .arg(ttl)
            .invoke_async(&mut conn)
            .await
            .map_err(self.err("refresh a binding table's deadline"))?;
        Ok(())
    }

    /// What a consumer of an expiring queue does for binding tables, as kombu 5.7: refreshes
    /// the queue's bindings every third of their TTL, and sweeps overdue tables (anyone's)
    /// at most every [`BINDING_SWEEP_EVERY`].
    pub(crate) async fn binding_upkeep(&self, queue: &str, expires_ms: u64) -> Result<()> {
        let ttl = Duration::from_millis(expires_ms.saturating_mul(2).max(MIN_BINDING_TTL_MS));
        let due: Vec<(String, String)> = match self.expiring_bindings.lock().get(queue) {
            Some((rows, refreshed)) if refreshed.is_none_or(|t| t.elapsed() >= ttl / 3) => {
                rows.clone()
            }
            _ => Vec::new(),
        };
        // Refreshed first, so that a sweep never deletes this connection's own tables.
        for (exchange, member) in &due {
            self.refresh_binding_table(exchange, member, expires_ms)
                .await?;
        }
        // Marked only once done, so that a failed refresh is tried again at the next take.
        if !due.is_empty()
            && let Some((_, refreshed)) = self.expiring_bindings.lock().get_mut(queue)
        {
            *refreshed = Some(Instant::now());
        }
        let sweep = {
            let mut swept = self.bindings_swept.lock();
            let due = swept.is_none_or(|t| t.elapsed() >= BINDING_SWEEP_EVERY);
            if due {
                *swept = Some(Instant::now());
            }
            due
        };
        if sweep {
            let mut conn = self.conn().await?;
            let removed: i64 = self
                .sweep_bindings
                .key(self.options.binding_deadlines_key())
                .arg(self.options.binding_key(""))
                .arg(self.options.binding_permanent_key(""))
                .arg(100)
                .invoke_async(&mut conn)
                .await
                .map_err(self.err("sweep overdue binding tables"))?;
            if removed > 0 {
                self.forget_topology();
            }
        }
        Ok(())
    }

    /// The type of an exchange kombu-rs has no record of, guessed from a member of its
    /// binding set (Python's topic bindings carry kombu's `^...$` regex; direct and fanout
    /// ones no pattern, so both read as direct).
    async fn inferred_kind(&self, exchange: &str) -> Result<ExchangeKind> {
        let mut conn = self.conn().await?;
        let member: Option<String> = conn
            .srandmember(self.options.binding_key(exchange))
            .await
            .map_err(self.err("read bindings"))?;
        let pattern = member
            .as_deref()
            .and_then(|m| m.split(self.options.sep.as_str()).nth(1))
            .unwrap_or_default()
            .to_owned();
        Ok(if pattern.starts_with('^') {
            ExchangeKind::Topic
        } else if pattern.starts_with('{') {
            ExchangeKind::Headers
        } else {
            ExchangeKind::Direct
        })
    }

    /// The queues `exchange` routes `routing_key` to now.
    pub(crate) async fn lookup(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: &Headers,
    ) -> Result<Vec<String>> {
        if exchange.is_empty() {
            return Ok(vec![routing_key.to_owned()]);
        }
        let kind = match self.read_exchange(exchange).await? {
            Some(x) => x.kind,
            None => self.inferred_kind(exchange).await?,
        };
        let rows = self.read_bindings(exchange).await?;
        Ok(router::route(kind, &rows, routing_key, headers)
            .into_iter()
            .map(str::to_owned)
            .collect())
    }

    /// Whether `queue` is the queue part of a member of any binding table
    /// (`_kombu.binding.*`). The likely tables first, each in one round trip: the one named
    /// after the queue (kombu's and Celery's default exchange for a queue has its name), then
    /// those of the exchanges in `exchanges` (kombu-rs's registry). Only then all of them,
    /// found with `SCAN` (a few round trips per hundred thousand keys).
    async fn bound_anywhere(&self, queue: &str, exchanges: &[String]) -> Result<bool> {
        let mut probed = vec![self.options.binding_key(queue)];
        for exchange in exchanges {
            let table = self.options.binding_key(exchange);
            if !probed.contains(&table) {
                probed.push(table);
            }
        }
        for chunk in probed.chunks(TABLES_PER_READ) {
            if self.bound_in(chunk, queue).await? {
                return Ok(true);
            }
        }
        let mut rest = self.binding_tables().await?;
        rest.retain(|t| !probed.contains(t));
        for chunk in rest.chunks(TABLES_PER_READ) {
            if self.bound_in(chunk, queue).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether `queue` is bound in one of `tables` (one round trip).
    async fn bound_in(&self, tables: &[String], queue: &str) -> Result<bool> {
        let sep = &self.options.sep;
        Ok(self
            .read_tables(tables)
            .await?
            .iter()
            .flat_map(|(_, members)| members)
            .any(|member| member_queue(member, sep) == Some(queue)))
    }

    /// The members of binding tables, in one round trip. A table that cannot be read (a key
    /// of that name that is not a set) is left out, and so is a member that is not UTF-8:
    /// neither is kombu's, and neither stops the others being read.
    async fn read_tables(&self, tables: &[String]) -> Result<Vec<(String, Vec<String>)>> {
        if tables.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for table in tables {
            pipe.smembers(table);
        }
        let mut conn = self.conn().await?;
        let replies: Vec<redis::Value> = pipe
            .ignore_errors()
            .query_async(&mut conn)
            .await
            .map_err(self.err("read bindings"))?;
        let mut out = Vec::with_capacity(tables.len());
        for (table, reply) in tables.iter().zip(replies) {
            let items = match reply {
                redis::Value::Array(items) | redis::Value::Set(items) => items,
                other => {
                    tracing::debug!(url = %self.label, %table, reply = ?other, "binding table skipped: not a set");
                    continue;
                }
            };
            let members = items
                .into_iter()
                .filter_map(|item| match item {
                    redis::Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
                    redis::Value::SimpleString(text) => Some(text),
                    _ => None,
                })
                .collect();
            out.push((table.clone(), members));
        }
        Ok(out)
    }

    /// Every binding table (`_kombu.binding.*`) of the database, found with `SCAN … COUNT`
    /// (and `TYPE set` where the server has it, so that only sets come back).
    async fn binding_tables(&self) -> Result<Vec<String>> {
        use std::sync::atomic::Ordering::Relaxed;
        let pattern = format!("{}_kombu.binding.*", glob_escape(&self.options.prefix));
        let mut conn = self.conn().await?;
        let mut cursor: u64 = 0;
        let mut out = Vec::new();
        loop {
            let typed = self.scan_type.load(Relaxed);
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            if typed {
                scan.arg("TYPE").arg("set");
            }
            let step: redis::RedisResult<(u64, Vec<Vec<u8>>)> = scan.query_async(&mut conn).await;
            let (next, keys) = match step {
                Ok(step) => step,
                // Before Redis 6, SCAN has no TYPE: start again without it.
                Err(e)
                    if typed
                        && cursor == 0
                        && e.code() == Some("ERR")
                        && !(e.is_io_error() || e.is_connection_dropped()) =>
                {
                    self.scan_type.store(false, Relaxed);
                    continue;
                }
                Err(e) => return Err(self.err("list binding tables")(e)),
            };
            out.extend(keys.into_iter().filter_map(|k| String::from_utf8(k).ok()));
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        // SCAN may return a key more than once.
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn member(&self, row: &BindingRow, kind: ExchangeKind) -> Result<String> {
        let pattern = match kind {
            ExchangeKind::Topic => kombu_topic_pattern(&row.routing_key),
            ExchangeKind::Headers => serde_json::to_string(&row.arguments)
                .map_err(|e| Error::new(ErrorKind::Codec, "binding arguments").with_source(e))?,
            _ => String::new(),
        };
        let sep = &self.options.sep;
        Ok(format!(
            "{}{sep}{pattern}{sep}{}",
            row.routing_key, row.queue
        ))
    }

    /// Records an exchange's type and flags in kombu-rs's registry unless one of that name is
    /// recorded, and returns the record now stored.
    pub(crate) async fn store_exchange(&self, exchange: &Exchange) -> Result<Option<Exchange>> {
        let spec = serde_json::json!({
            "type": exchange.kind.as_str(),
            "durable": exchange.durable,
            "auto_delete": exchange.auto_delete,
            "arguments": exchange.arguments,
        })
        .to_string();
        let mut conn = self.conn().await?;
        let (added, stored): (bool, String) = redis::pipe()
            .atomic()
            .hset_nx(self.options.exchanges_key(), &exchange.name, &spec)
            .hget(self.options.exchanges_key(), &exchange.name)
            .query_async(&mut conn)
            .await
            .map_err(self.err("declare exchange"))?;
        if added {
            self.forget_topology();
        }
        parse_exchange(&exchange.name, &stored).map(Some)
    }

    /// An exchange from kombu-rs's registry (cached for [`TOPOLOGY_TTL`]); `None` when kombu-rs
    /// never declared it.
    pub(crate) async fn read_exchange(&self, name: &str) -> Result<Option<Exchange>> {
        if let Some(found) = self.topology.exchange(name) {
            return Ok(found);
        }
        let mut conn = self.conn().await?;
        let spec: Option<String> = conn
            .hget(self.options.exchanges_key(), name)
            .await
            .map_err(self.err("look up exchange"))?;
        // `None`: not declared by kombu-rs. Python kombu keeps exchange types in process
        // memory, so its exchanges are unknown here until declared (with any type):
        // publishers declare the exchanges they publish to, as kombu's do.
        let found = spec.map(|spec| parse_exchange(name, &spec)).transpose()?;
        self.topology.put_exchange(name, found.clone());
        Ok(found)
    }

    /// Deletes an exchange's record and its binding table.
    pub(crate) async fn remove_exchange(&self, name: &str) -> Result<()> {
        let mut conn = self.conn().await?;
        let _: () = redis::pipe()
            .hdel(self.options.exchanges_key(), name)
            .ignore()
            .del(self.options.binding_key(name))
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(self.err("delete exchange"))?;
        self.forget_topology();
        Ok(())
    }

    /// Records a queue's settings ([`queue_settings`]) unless some are recorded, remembers
    /// its expiry, and returns what is recorded with its ready count.
    pub(crate) async fn store_queue(&self, queue: &Queue) -> Result<StoredQueue> {
        // kombu writes nothing (a queue is its lists); the settings are kept so that the
        // virtual channel can refuse a conflicting redeclaration as a broker does.
        let spec = serde_json::to_string(&queue_settings(queue))
            .map_err(|e| Error::new(ErrorKind::Codec, "queue arguments").with_source(e))?;
        if let Some(expires) = queue.expires {
            let ms = u64::try_from(expires.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            self.expiring.lock().insert(queue.name.clone(), ms);
        } else {
            // Redeclared without an expiry: no stale TTL applies (as in kombu).
            self.expiring.lock().remove(&queue.name);
            self.expiring_bindings.lock().remove(&queue.name);
        }
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_nx(self.options.queues_key(), &queue.name, &spec)
            .ignore()
            .hget(self.options.queues_key(), &queue.name);
        for key in self.options.list_keys(&queue.name) {
            pipe.llen(key);
        }
        let mut conn = self.conn().await?;
        let reply: Vec<redis::Value> = pipe
            .query_async(&mut conn)
            .await
            .map_err(self.err("declare queue"))?;
        let (stored, messages) = self.record_and_count(&queue.name, reply)?;
        Ok(StoredQueue::new(stored, messages))
    }

    /// A queue's recorded settings and ready count from a reply of `HGET` then one `LLEN` per
    /// list, plus what waits in this process's fanout buffer.
    fn record_and_count(
        &self,
        queue: &str,
        reply: Vec<redis::Value>,
    ) -> Result<(Option<Headers>, u64)> {
        let mut reply = reply.into_iter();
        let stored: Option<String> = match reply.next() {
            Some(value) => redis::from_redis_value(value)
                .map_err(|e| self.err("read queue record")(e.into()))?,
            None => None,
        };
        let mut messages = self.fanout.len(queue) as u64;
        for value in reply {
            let len: u64 =
                redis::from_redis_value(value).map_err(|e| self.err("queue size")(e.into()))?;
            messages += len;
        }
        // Settings that cannot be read count as none recorded: a redeclaration then fails
        // naming every setting.
        let settings = stored.map(|text| serde_json::from_str(&text).unwrap_or_default());
        Ok((settings, messages))
    }

    /// Purges a queue and removes it from the registry and from every binding table; returns
    /// the number of messages purged.
    pub(crate) async fn remove_queue(&self, queue: &str) -> Result<u64> {
        let removed = Backend::purge(self, queue).await?;
        // Remove the queue from every binding table (kombu removes the ones it knows).
        let mut conn = self.conn().await?;
        let tables = self.binding_tables().await?;
        let _: i64 = conn
            .hdel(self.options.queues_key(), queue)
            .await
            .map_err(self.err("delete queue"))?;
        let sep = &self.options.sep;
        let table_prefix = self.options.binding_key("");
        self.expiring_bindings.lock().remove(queue);
        self.bound.lock().remove(queue);
        for chunk in tables.chunks(TABLES_PER_READ) {
            for (table, members) in self.read_tables(chunk).await? {
                let gone: Vec<&String> = members
                    .iter()
                    .filter(|m| member_queue(m, sep) == Some(queue))
                    .collect();
                if gone.is_empty() {
                    continue;
                }
                let exchange = table.strip_prefix(&table_prefix).unwrap_or_default();
                let _: () = redis::pipe()
                    .srem(&table, &gone)
                    .ignore()
                    .srem(self.options.binding_permanent_key(exchange), &gone)
                    .ignore()
                    .query_async(&mut conn)
                    .await
                    .map_err(self.err("unbind"))?;
            }
        }
        self.forget_topology();
        Ok(removed)
    }

    /// A queue's record and ready count, or `None` when it exists nowhere (see
    /// [`queue_known`](Self::queue_known), asked only when it has neither).
    pub(crate) async fn find_queue(&self, queue: &str) -> Result<Option<StoredQueue>> {
        let mut pipe = redis::pipe();
        pipe.hget(self.options.queues_key(), queue);
        for key in self.options.list_keys(queue) {
            pipe.llen(key);
        }
        let mut conn = self.conn().await?;
        let reply: Vec<redis::Value> = pipe
            .query_async(&mut conn)
            .await
            .map_err(self.err("queue size"))?;
        let (settings, messages) = self.record_and_count(queue, reply)?;
        if settings.is_some() || messages > 0 || self.queue_known(queue).await? {
            return Ok(Some(StoredQueue::new(settings, messages)));
        }
        Ok(None)
    }

    /// Whether a queue exists for kombu: recorded, one of its lists exists, or it is bound in
    /// a binding table.
    pub(crate) async fn queue_known(&self, queue: &str) -> Result<bool> {
        // A queue exists when kombu-rs recorded it, one of its lists (priority buckets) exists,
        // or it is bound in one of kombu's binding tables (a queue Python kombu or a Celery
        // worker declared, whose list does not exist while it is empty). One found bound is
        // taken to exist for BOUND_TTL without looking again (unless deleted through here).
        let seen = self.bound.lock().get(queue).copied();
        if seen.is_some_and(|at| at.elapsed() < BOUND_TTL) {
            return Ok(true);
        }
        let mut conn = self.conn().await?;
        let (declared, lists, exchanges): (bool, i64, Vec<Vec<u8>>) = redis::pipe()
            .hexists(self.options.queues_key(), queue)
            .cmd("EXISTS")
            .arg(self.options.list_keys(queue))
            .hkeys(self.options.exchanges_key())
            .query_async(&mut conn)
            .await
            .map_err(self.err("queue exists"))?;
        if declared || lists > 0 {
            return Ok(true);
        }
        let exchanges: Vec<String> = exchanges
            .into_iter()
            .filter_map(|x| String::from_utf8(x).ok())
            .collect();
        let bound = self.bound_anywhere(queue, &exchanges).await?;
        let mut seen = self.bound.lock();
        if bound {
            seen.insert(queue.to_owned(), Instant::now());
        } else {
            seen.remove(queue);
        }
        Ok(bound)
    }

    /// Adds a binding to its exchange's table (with a deadline for an expiring queue's), and
    /// subscribes the queue when the exchange is a fanout.
    pub(crate) async fn add_binding(&self, row: &BindingRow) -> Result<()> {
        let kind = self
            .read_exchange(&row.exchange)
            .await?
            .map_or(ExchangeKind::Direct, |x| x.kind);
        let member = self.member(row, kind)?;
        let mut conn = self.conn().await?;
        let expires = self.expiring.lock().get(&row.queue).copied();
        match expires {
            Some(ms) => {
                // An expiring queue's table gets a deadline that its consumers push on.
                self.refresh_binding_table(&row.exchange, &member, ms)
                    .await?;
                let mut bindings = self.expiring_bindings.lock();
                let entry = bindings.entry(row.queue.clone()).or_default();
                let binding = (row.exchange.clone(), member);
                if !entry.0.contains(&binding) {
                    entry.0.push(binding);
                }
            }
            None => {
                let _: () = redis::pipe()
                    .sadd(self.options.binding_key(&row.exchange), &member)
                    .ignore()
                    .sadd(self.options.binding_permanent_key(&row.exchange), &member)
                    .ignore()
                    .query_async(&mut conn)
                    .await
                    .map_err(self.err("bind"))?;
            }
        }
        self.forget_topology();
        if kind == ExchangeKind::Fanout {
            self.subscribe_fanout(&row.queue, &row.exchange, &row.routing_key)
                .await?;
        }
        Ok(())
    }

    /// Removes a binding from its exchange's table.
    pub(crate) async fn remove_binding(&self, row: &BindingRow) -> Result<()> {
        let kind = self
            .read_exchange(&row.exchange)
            .await?
            .map_or(ExchangeKind::Direct, |x| x.kind);
        let member = self.member(row, kind)?;
        let mut conn = self.conn().await?;
        let _: () = redis::pipe()
            .srem(self.options.binding_key(&row.exchange), &member)
            .ignore()
            .srem(self.options.binding_permanent_key(&row.exchange), &member)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(self.err("unbind"))?;
        if let Some((bindings, _)) = self.expiring_bindings.lock().get_mut(&row.queue) {
            bindings.retain(|(x, m)| !(x == &row.exchange && m == &member));
        }
        self.forget_topology();
        Ok(())
    }

    /// An exchange's bindings as its table holds them (cached for [`TOPOLOGY_TTL`]).
    pub(crate) async fn read_bindings(&self, exchange: &str) -> Result<Arc<[BindingRow]>> {
        if let Some(rows) = self.topology.bindings(exchange) {
            return Ok(rows);
        }
        let mut conn = self.conn().await?;
        let mut members: Vec<String> = conn
            .smembers(self.options.binding_key(exchange))
            .await
            .map_err(self.err("read bindings"))?;
        members.sort();
        let sep = &self.options.sep;
        let mut rows = Vec::with_capacity(members.len());
        for m in members {
            let mut parts = m.splitn(3, sep.as_str());
            let (Some(rk), Some(pattern), Some(queue)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let arguments: Headers = if pattern.starts_with('{') {
                serde_json::from_str(pattern).unwrap_or_default()
            } else {
                Headers::new()
            };
            rows.push(BindingRow {
                exchange: exchange.to_owned(),
                routing_key: rk.to_owned(),
                queue: queue.to_owned(),
                arguments,
            });
        }
        let rows: Arc<[BindingRow]> = rows.into();
        self.topology.put_bindings(exchange, rows.clone());
        Ok(rows)
    }
}

/// An exchange from its record in kombu-rs's registry.
fn parse_exchange(name: &str, spec: &str) -> Result<Exchange> {
    let v: serde_json::Value = serde_json::from_str(spec)
        .map_err(|e| Error::new(ErrorKind::Protocol, "stored exchange").with_source(e))?;
    let kind: ExchangeKind = v["type"].as_str().unwrap_or("direct").parse()?;
    let mut x = Exchange::new(name, kind);
    x.durable = v["durable"].as_bool().unwrap_or(true);
    x.auto_delete = v["auto_delete"].as_bool().unwrap_or(false);
    x.arguments = serde_json::from_value(v["arguments"].clone()).unwrap_or_default();
    Ok(x)
}
