//! The virtual [`Backend`] over one SQLite database: routing tables, takes with leases,
//! settlement, and waiting for rows written by this process or others.
//!
//! Over 700 lines: each `Backend` method is one SQL transaction written out here; the schema,
//! its migrations and the receipts live apart (`schema.rs`, `receipt.rs`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use kombu_core::transport::virtual_transport::{
    Backend, BackendCapabilities, BindingRow, DeadLetter, Envelope, Fetched, Receipt, StoredQueue,
    TakeMode, Taken, TopologyCache, Unreadable, envelope, poll_until_ready, queue_settings,
};
use kombu_core::transport::{QueueStats, unix_now};
use kombu_core::{Capabilities, Error, ErrorKind, Exchange, ExchangeKind, Headers, Queue, Result};
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::delayed::{
    Sweeper, count_due, delete_due, due_in, insert_delayed, next_due_anywhere, promote_due,
};
use crate::options::Options;
use crate::payload::Payload;
use crate::receipt::{VERSION_MASK, receipt, receipt_row};
use crate::schema::{
    LEASE_PASSED, ensure_queue, insert, open_db, payload_text, queue_id, timestamp_text,
};

/// How long a cached exchange or binding list is used before it is read again (bindings made
/// by other processes take effect within this; this process's own take effect at once).
const TOPOLOGY_TTL: Duration = Duration::from_secs(1);

/// One database file (or one in-memory database) in this process, shared by every connection
/// to it.
#[derive(Debug)]
pub(crate) struct SqliteBackend {
    db: Arc<Mutex<Connection>>,
    label: String,
    pub(crate) options: Options,
    /// Woken by every commit of a put in this process.
    notify: tokio::sync::Notify,
    topology: TopologyCache,
    /// Makes delayed rows visible when due, while this process knows of some.
    sweeper: Arc<Sweeper>,
    /// This backend, for the sweeper task (which must not keep it alive).
    me: Weak<SqliteBackend>,
}

impl Drop for SqliteBackend {
    fn drop(&mut self) {
        self.sweeper.stop();
    }
}

static BACKENDS: std::sync::LazyLock<Mutex<HashMap<PathBuf, Weak<SqliteBackend>>>> =
    std::sync::LazyLock::new(Default::default);

fn sql_error(what: &str, label: &str, err: rusqlite::Error) -> Error {
    let busy = matches!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    );
    let kind = if busy {
        ErrorKind::Timeout
    } else {
        ErrorKind::Broker
    };
    Error::new(kind, format!("sqlite {label}: {what}")).with_source(err)
}

impl SqliteBackend {
    pub(crate) async fn shared(options: Options, label: String) -> Result<Arc<SqliteBackend>> {
        let key = match &options.path {
            Some(p) => std::path::absolute(p).map_err(|e| {
                Error::new(ErrorKind::Connection, format!("sqlite {label}: bad path"))
                    .with_source(e)
            })?,
            None => PathBuf::from(":memory:"),
        };
        // A missing directory is a configuration mistake, not an unreachable broker: retrying
        // cannot help, so it is not recoverable.
        if let Some(dir) = key.parent().filter(|_| options.path.is_some())
            && !dir.is_dir()
        {
            return Err(Error::config(format!(
                "sqlite {label}: the directory {} does not exist",
                dir.display()
            )));
        }
        if let Some(existing) = BACKENDS.lock().get(&key).and_then(Weak::upgrade) {
            return Ok(existing);
        }
        let opts = options.clone();
        let db = tokio::task::spawn_blocking(move || open_db(&opts))
            .await
            .map_err(|e| Error::new(ErrorKind::Broker, "sqlite open task failed").with_source(e))?
            .map_err(|e| {
                Error::new(
                    ErrorKind::Connection,
                    format!("sqlite {label}: cannot open"),
                )
                .with_source(e)
            })?;
        let backend = Arc::new_cyclic(|me| SqliteBackend {
            db: Arc::new(Mutex::new(db)),
            label,
            options,
            notify: tokio::sync::Notify::new(),
            topology: TopologyCache::new(TOPOLOGY_TTL),
            sweeper: Arc::default(),
            me: me.clone(),
        });
        {
            let mut map = BACKENDS.lock();
            // Another task may have opened the same file meanwhile: use one backend per file.
            if let Some(existing) = map.get(&key).and_then(Weak::upgrade) {
                return Ok(existing);
            }
            map.retain(|_, w| w.strong_count() > 0);
            map.insert(key, Arc::downgrade(&backend));
        }
        // Rows delayed by processes gone (or by others): this one keeps time for them too.
        if let Some(due) = backend
            .run("find delayed messages", |conn| next_due_anywhere(conn))
            .await?
        {
            backend.sweeper.schedule(backend.me.clone(), due);
        }
        Ok(backend)
    }

    /// Runs `f` with the database on tokio's blocking pool.
    pub(crate) async fn run<T, F>(&self, what: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let db = self.db.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut conn = db.lock();
            f(&mut conn)
        })
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Broker,
                format!("sqlite {}: {what}: task failed", self.label),
            )
            .with_source(e)
        })?;
        result.map_err(|e| sql_error(what, &self.label, e))
    }

    /// Makes every delayed row due now visible (in every queue), wakes this process's
    /// waiting consumers when there were some; returns the earliest due time left.
    pub(crate) async fn sweep_due(&self) -> Result<Option<f64>> {
        let (promoted, left) = self
            .run("make delayed messages visible", |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let promoted = promote_due(&tx, None, unix_now())?;
                let left = next_due_anywhere(&tx)?;
                tx.commit()?;
                Ok((promoted, left))
            })
            .await?;
        if promoted > 0 {
            self.notify.notify_waiters();
        }
        Ok(left)
    }

    fn forget_topology(&self) {
        self.topology.clear();
    }

    /// Reads an exchange's record (no cache).
    async fn read_exchange(&self, name: &str) -> Result<Option<Exchange>> {
        let key = name.to_owned();
        let row = self
            .run("look up exchange", move |conn| {
                conn.prepare_cached(
                    "SELECT type, durable, auto_delete, arguments FROM kombu_rs_exchange WHERE name = ?1",
                )?
                .query_row([&key], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, bool>(1)?,
                        r.get::<_, bool>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                })
                .optional()
            })
            .await?;
        let Some((kind, durable, auto_delete, arguments)) = row else {
            return Ok(None);
        };
        let kind: ExchangeKind = kind.parse()?;
        let mut exchange = Exchange::new(name, kind);
        exchange.durable = durable;
        exchange.auto_delete = auto_delete;
        exchange.arguments = serde_json::from_str(&arguments).map_err(|e| {
            Error::new(ErrorKind::Protocol, "stored exchange arguments").with_source(e)
        })?;
        Ok(Some(exchange))
    }
}

/// A row a take found.
struct Row {
    id: i64,
    payload: Payload,
    redelivered: bool,
    /// The row's version after the take.
    version: i64,
}

/// Settings recorded in `kombu_rs_queue` (an unreadable record reads as none recorded, so a
/// redeclaration fails naming every setting).
fn parse_settings(stored: Option<String>) -> Option<Headers> {
    stored.map(|text| serde_json::from_str(&text).unwrap_or_default())
}

#[async_trait]
impl Backend for SqliteBackend {
    fn capabilities(&self) -> BackendCapabilities {
        let mut c = Capabilities::none();
        c.persistent = true;
        c.shared_between_processes = true;
        c.visibility_timeout = true;
        // A publish to a queue nobody declared creates it (kombu's SQLAlchemy transport does).
        c.implicit_queues = true;
        c.delayed_delivery = true;
        c.peek = true;
        let mut backend = BackendCapabilities::new(c);
        backend.transport = "sqlite";
        backend
    }

    async fn exchange(&self, name: &str, declare: Option<&Exchange>) -> Result<Option<Exchange>> {
        let Some(exchange) = declare else {
            if let Some(found) = self.topology.exchange(name) {
                return Ok(found);
            }
            let found = self.read_exchange(name).await?;
            self.topology.put_exchange(name, found.clone());
            return Ok(found);
        };
        let arguments = serde_json::to_string(&exchange.arguments)
            .map_err(|e| Error::new(ErrorKind::Codec, "exchange arguments").with_source(e))?;
        let (key, kind) = (name.to_owned(), exchange.kind.as_str());
        let (durable, auto_delete) = (exchange.durable, exchange.auto_delete);
        let inserted = self
            .run("declare exchange", move |conn| {
                conn.prepare_cached(
                    "INSERT OR IGNORE INTO kombu_rs_exchange (name, type, durable, auto_delete, arguments) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![key, kind, durable, auto_delete, arguments])
            })
            .await?;
        if inserted > 0 {
            self.forget_topology();
            return Ok(Some(exchange.clone()));
        }
        self.read_exchange(name).await
    }

    async fn delete_exchange(&self, name: &str) -> Result<()> {
        let name = name.to_owned();
        self.run("delete exchange", move |conn| {
            let tx = conn.transaction()?;
            tx.execute("DELETE FROM kombu_rs_exchange WHERE name = ?1", [&name])?;
            tx.execute("DELETE FROM kombu_rs_binding WHERE exchange = ?1", [&name])?;
            tx.commit()
        })
        .await?;
        self.forget_topology();
        Ok(())
    }

    async fn queue(&self, name: &str, declare: Option<&Queue>) -> Result<Option<StoredQueue>> {
        let spec = match declare {
            Some(queue) => Some(
                serde_json::to_string(&queue_settings(queue))
                    .map_err(|e| Error::new(ErrorKind::Codec, "queue arguments").with_source(e))?,
            ),
            None => None,
        };
        let name = name.to_owned();
        let found = self
            .run("declare queue", move |conn| {
                let tx = conn.transaction_with_behavior(if spec.is_some() {
                    TransactionBehavior::Immediate
                } else {
                    TransactionBehavior::Deferred
                })?;
                let id = match &spec {
                    Some(_) => ensure_queue(&tx, &name)?,
                    None => match queue_id(&tx, &name)? {
                        Some(id) => id,
                        None => return Ok(None),
                    },
                };
                let mut stored: Option<String> = tx
                    .prepare_cached("SELECT arguments FROM kombu_rs_queue WHERE name = ?1")?
                    .query_row([&name], |r| r.get(0))
                    .optional()?;
                if let (None, Some(spec)) = (&stored, spec) {
                    tx.execute(
                        "INSERT INTO kombu_rs_queue (name, arguments) VALUES (?1, ?2)",
                        params![name, spec],
                    )?;
                    stored = Some(spec);
                }
                // Delayed rows already due are ready: the next take moves them.
                let ready = tx
                    .prepare_cached(
                        "SELECT COUNT(*) FROM kombu_message WHERE queue_id = ?1 AND visible = 1",
                    )?
                    .query_row([id], |r| r.get::<_, i64>(0))?
                    .unsigned_abs()
                    + count_due(&tx, id, unix_now())?;
                tx.commit()?;
                Ok(Some((stored, ready)))
            })
            .await?;
        Ok(found.map(|(stored, ready)| StoredQueue::new(parse_settings(stored), ready)))
    }

    // Stats and peeks: in `browse.rs`.

    async fn queue_stats(&self, name: &str) -> Result<Option<QueueStats>> {
        self.stats(name).await
    }

    async fn peek(&self, queue: &str, limit: usize) -> Result<Vec<Envelope>> {
        self.peek_queue(queue, limit).await
    }

    async fn queue_exists(&self, name: &str) -> Result<bool> {
        // One query: no count of its messages.
        let name = name.to_owned();
        self.run("find queue", move |conn| {
            Ok(queue_id(conn, &name)?.is_some())
        })
        .await
    }

    async fn delete_queue(&self, queue: &str) -> Result<u64> {
        let name = queue.to_owned();
        let removed = self
            .run("delete queue", move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let mut ready = 0u64;
                if let Some(id) = queue_id(&tx, &name)? {
                    ready = tx.query_row(
                        "SELECT COUNT(*) FROM kombu_message WHERE queue_id = ?1 AND visible = 1",
                        [id],
                        |r| r.get::<_, i64>(0),
                    )?
                    .unsigned_abs()
                        + count_due(&tx, id, unix_now())?;
                    tx.execute("DELETE FROM kombu_message WHERE queue_id = ?1", [id])?;
                    tx.execute("DELETE FROM kombu_queue WHERE id = ?1", [id])?;
                }
                tx.execute("DELETE FROM kombu_rs_binding WHERE queue = ?1", [&name])?;
                tx.execute("DELETE FROM kombu_rs_queue WHERE name = ?1", [&name])?;
                tx.commit()?;
                Ok(ready)
            })
            .await?;
        self.forget_topology();
        Ok(removed)
    }

    async fn bind(&self, row: &BindingRow) -> Result<()> {
        let arguments = serde_json::to_string(&row.arguments)
            .map_err(|e| Error::new(ErrorKind::Codec, "binding arguments").with_source(e))?;
        let row = row.clone();
        self.run("bind", move |conn| {
            conn.prepare_cached(
                "INSERT OR IGNORE INTO kombu_rs_binding (exchange, routing_key, queue, arguments) \
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![row.exchange, row.routing_key, row.queue, arguments])?;
            Ok(())
        })
        .await?;
        self.forget_topology();
        Ok(())
    }

    async fn unbind(&self, row: &BindingRow) -> Result<()> {
        let arguments = serde_json::to_string(&row.arguments)
            .map_err(|e| Error::new(ErrorKind::Codec, "binding arguments").with_source(e))?;
        let row = row.clone();
        self.run("unbind", move |conn| {
            conn.prepare_cached(
                "DELETE FROM kombu_rs_binding \
                 WHERE exchange = ?1 AND routing_key = ?2 AND queue = ?3 AND arguments = ?4",
            )?
            .execute(params![row.exchange, row.routing_key, row.queue, arguments])?;
            Ok(())
        })
        .await?;
        self.forget_topology();
        Ok(())
    }

    async fn fresh_bindings(&self, exchange: &str) -> Result<Arc<[BindingRow]>> {
        self.topology.forget_bindings(exchange);
        self.bindings(exchange).await
    }

    async fn bindings(&self, exchange: &str) -> Result<Arc<[BindingRow]>> {
        if let Some(rows) = self.topology.bindings(exchange) {
            return Ok(rows);
        }
        let name = exchange.to_owned();
        let raw = self
            .run("read bindings", move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT routing_key, queue, arguments FROM kombu_rs_binding WHERE exchange = ?1 \
                     ORDER BY rowid",
                )?;
                let rows = stmt.query_map([&name], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        let mut rows = Vec::with_capacity(raw.len());
        for (routing_key, queue, arguments) in raw {
            rows.push(BindingRow {
                exchange: exchange.to_owned(),
                routing_key,
                queue,
                arguments: serde_json::from_str(&arguments).map_err(|e| {
                    Error::new(ErrorKind::Protocol, "stored binding arguments").with_source(e)
                })?,
            });
        }
        let rows: Arc<[BindingRow]> = rows.into();
        self.topology.put_bindings(exchange, rows.clone());
        Ok(rows)
    }

    async fn put_many(&self, items: Vec<(String, Envelope)>) -> Result<Vec<DeadLetter>> {
        self.store(items, None).await?;
        self.notify.notify_waiters();
        Ok(Vec::new())
    }

    async fn get_many(&self, queue: &str, max: usize, mode: TakeMode) -> Result<Fetched> {
        let name = queue.to_owned();
        let limit = i64::try_from(max.max(1)).unwrap_or(i64::MAX);
        // A dead-letter queue holds what core wrote there, among it the dead letters of
        // oversize rows (their bytes in base64, larger still): bounded again, reading one
        // would move it one queue deeper each time.
        let max_payload = if queue.ends_with(kombu_core::dead_letter::DLQ_SUFFIX) {
            i64::MAX
        } else {
            i64::try_from(self.options.max_payload_size).unwrap_or(i64::MAX)
        };
        // The restorer's own visibility timeout (the visibility rule): this take's.
        let visibility = match mode {
            TakeMode::Lease(timeout) => timeout,
            TakeMode::NoAck => Some(self.options.visibility_timeout),
        };
        let rows = self
            .run("take", move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let Some(qid) = queue_id(&tx, &name)? else {
                    return Ok(Vec::new());
                };
                let now = unix_now();
                // Leases that passed (their consumer died or went silent) come back first.
                if let Some(visibility) = visibility {
                    tx.prepare_cached(&format!(
                        "UPDATE kombu_message SET visible = 1, timestamp = NULL, taken_at = NULL, \
                         lease_until = NULL, redelivered = 1 \
                         WHERE queue_id = ?1 AND visible = 0 AND {LEASE_PASSED}"
                    ))?
                    .execute(params![qid, now - visibility.as_secs_f64(), now])?;
                }
                // Delayed rows that fell due join the tail, in this transaction.
                promote_due(&tx, Some(qid), now)?;
                let mut found: Vec<Row> = Vec::new();
                {
                    let mut stmt = tx.prepare_cached(
                        "SELECT id, payload, redelivered, version, octet_length(payload) > ?3 \
                         FROM kombu_message \
                         WHERE queue_id = ?1 AND visible = 1 ORDER BY timestamp, id LIMIT ?2",
                    )?;
                    let rows = stmt.query_map(params![qid, limit, max_payload], |r| {
                        let oversize = r.get::<_, Option<bool>>(4)?.unwrap_or(false);
                        Ok(Row {
                            id: r.get(0)?,
                            payload: Payload::read(r.get_ref(1)?, oversize, max_payload),
                            redelivered: r.get::<_, Option<bool>>(2)?.unwrap_or(false),
                            // The version the take below gives the row.
                            version: r.get::<_, i64>(3)? + 1,
                        })
                    })?;
                    for row in rows {
                        found.push(row?);
                    }
                }
                match mode {
                    TakeMode::NoAck => {
                        let mut del =
                            tx.prepare_cached("DELETE FROM kombu_message WHERE id = ?1")?;
                        for row in &found {
                            del.execute([row.id])?;
                        }
                    }
                    TakeMode::Lease(_) => {
                        // The take time, not a lease end: whoever restores it applies its own
                        // visibility timeout.
                        let stamp = timestamp_text();
                        let mut upd = tx.prepare_cached(
                            "UPDATE kombu_message SET visible = 0, timestamp = ?2, \
                             version = version + 1, taken_at = ?3, lease_until = NULL WHERE id = ?1",
                        )?;
                        for row in &found {
                            upd.execute(params![row.id, stamp, now])?;
                        }
                    }
                }
                tx.commit()?;
                Ok(found)
            })
            .await?;
        let mut fetched = Fetched::default();
        for row in rows {
            let receipt = match mode {
                TakeMode::NoAck => Receipt::Unleased,
                TakeMode::Lease(_) => receipt(row.id, row.version),
            };
            let decoded = match row.payload.unreadable {
                Some(reason) => Err(reason),
                None => envelope::decode(&row.payload.bytes).map_err(|e| e.to_string()),
            };
            match decoded {
                Ok(mut env) => {
                    env.redelivered |= row.redelivered;
                    fetched.taken.push(Taken {
                        envelope: Arc::new(env),
                        receipt,
                    });
                }
                // Not a kombu envelope: taken (leased) like the others; core moves it to the
                // queue's dead-letter queue with `set_aside`.
                Err(reason) => fetched.unreadable.push(Unreadable {
                    raw: row.payload.bytes.into(),
                    reason,
                    receipt,
                }),
            }
        }
        Ok(fetched)
    }

    async fn set_aside(
        &self,
        _queue: &str,
        dlq: &str,
        items: Vec<(Receipt, Envelope)>,
    ) -> Result<Vec<DeadLetter>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let mut rows = Vec::with_capacity(items.len());
        for (receipt, env) in &items {
            let leased = match receipt {
                Receipt::Unleased => None,
                leased => Some(receipt_row(leased)?),
            };
            rows.push((leased, payload_text(env)?, env.redelivered));
        }
        let dlq = dlq.to_owned();
        self.run(
            "move unreadable messages to their dead-letter queue",
            move |conn| {
                // One transaction: each dead letter is stored as its original is deleted, so no
                // moment has it in neither place (nor in both).
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let dlq_id = ensure_queue(&tx, &dlq)?;
                for (leased, payload, redelivered) in &rows {
                    if let Some((id, version)) = leased {
                        // The take's lease, checked as an ack checks it: a row taken again since
                        // (its lease passed) is that take's to settle.
                        let deleted = tx
                            .prepare_cached(
                                "DELETE FROM kombu_message \
                             WHERE id = ?1 AND visible = 0 AND (version & ?3) = ?2",
                            )?
                            .execute(params![id, version, VERSION_MASK])?;
                        if deleted == 0 {
                            continue;
                        }
                    }
                    insert(&tx, dlq_id, payload, *redelivered)?;
                }
                tx.commit()
            },
        )
        .await?;
        self.notify.notify_waiters();
        Ok(Vec::new())
    }

    async fn ack_many(&self, _queue: &str, receipts: &[Receipt]) -> Result<()> {
        let rows = receipts
            .iter()
            .map(receipt_row)
            .collect::<Result<Vec<(i64, i64)>>>()?;
        self.run("ack", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut delete = tx.prepare_cached(
                    "DELETE FROM kombu_message WHERE id = ?1 AND visible = 0 AND (version & ?3) = ?2",
                )?;
                for (id, version) in &rows {
                    delete.execute(params![id, version, VERSION_MASK])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn reject(
        &self,
        _queue: &str,
        receipt: &Receipt,
        requeue: bool,
    ) -> Result<Option<DeadLetter>> {
        let (id, version) = receipt_row(receipt)?;
        if !requeue {
            self.run("reject", move |conn| {
                conn.prepare_cached(
                    "DELETE FROM kombu_message WHERE id = ?1 AND visible = 0 AND (version & ?3) = ?2",
                )?
                .execute(params![id, version, VERSION_MASK])
                .map(|_| ())
            })
            .await?;
            return Ok(None);
        }
        self.run("restore", move |conn| {
            conn.prepare_cached(
                "UPDATE kombu_message SET visible = 1, timestamp = NULL, taken_at = NULL, \
                 lease_until = NULL, redelivered = 1 \
                 WHERE id = ?1 AND visible = 0 AND (version & ?3) = ?2",
            )?
            .execute(params![id, version, VERSION_MASK])
            .map(|_| ())
        })
        .await?;
        self.notify.notify_waiters();
        Ok(None)
    }

    async fn extend_lease(&self, _queue: &str, receipt: &Receipt) -> Result<()> {
        let (id, version) = receipt_row(receipt)?;
        let extended = self
            .run("extend lease", move |conn| {
                conn.prepare_cached(
                    "UPDATE kombu_message SET taken_at = ?2 WHERE id = ?1 AND visible = 0 \
                     AND taken_at IS NOT NULL AND (version & ?4) = ?3",
                )?
                .execute(params![id, unix_now(), version, VERSION_MASK])
            })
            .await?;
        if extended == 0 {
            return Err(Error::new(
                ErrorKind::StaleDelivery,
                format!(
                    "sqlite {}: the lease is gone (the row was settled, or restored and maybe \
                     taken again)",
                    self.label
                ),
            ));
        }
        Ok(())
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        let name = queue.to_owned();
        self.run("purge", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let Some(id) = queue_id(&tx, &name)? else {
                return Ok(0);
            };
            // The ready rows and the delayed ones already due; those not yet due stay.
            let n = tx.execute(
                "DELETE FROM kombu_message WHERE queue_id = ?1 AND visible = 1",
                [id],
            )? + delete_due(&tx, id, unix_now())?;
            tx.commit()?;
            Ok(n as u64)
        })
        .await
    }

    async fn wait(&self, queues: &[String], timeout: Duration) -> Result<()> {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let first = self.look(queues).await?;
        if first.ready {
            return Ok(());
        }
        // Back by the next due time of a delayed row, whoever stored it.
        let bound = first.next_due;
        let timeout = match bound {
            Some(due) => timeout.min(Duration::from_secs_f64((due - unix_now()).max(0.0))),
            None => timeout,
        };
        // Fast after activity, backing off to the polling interval when idle.
        let pauses = (Duration::from_millis(1), self.options.polling_interval);
        poll_until_ready(notified, timeout, pauses, move || async move {
            let look = self.look(queues).await?;
            // A row delayed meanwhile (by another process) and due earlier: wait again for it.
            Ok(look.ready || look.next_due.is_some_and(|d| bound.is_none_or(|b| d < b)))
        })
        .await
    }

    async fn put_delayed(&self, items: Vec<(String, Envelope)>, delay: Duration) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let due = due_in(delay);
        self.store(items, Some(due)).await?;
        self.sweeper.schedule(self.me.clone(), due);
        // Waiting consumers look again, for the new due time.
        self.notify.notify_waiters();
        Ok(())
    }
}

impl SqliteBackend {
    /// Stores `items` in one transaction: visible now, or delayed until `due` (Unix seconds).
    /// A queue nobody declared (in this process or Python's) is created, as Python kombu's
    /// SQLAlchemy transport creates it.
    async fn store(&self, items: Vec<(String, Envelope)>, due: Option<f64>) -> Result<()> {
        let mut rows = Vec::with_capacity(items.len());
        for (queue, env) in &items {
            rows.push((queue.clone(), payload_text(env)?, env.redelivered));
        }
        let what = match due {
            None => "publish",
            Some(_) => "publish delayed",
        };
        self.run(what, move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut ids: HashMap<String, i64> = HashMap::new();
            for (queue, payload, redelivered) in &rows {
                let id = match ids.get(queue) {
                    Some(id) => *id,
                    None => {
                        let id = ensure_queue(&tx, queue)?;
                        ids.insert(queue.clone(), id);
                        id
                    }
                };
                match due {
                    None => insert(&tx, id, payload, *redelivered)?,
                    Some(due) => insert_delayed(&tx, id, payload, *redelivered, due)?,
                }
            }
            tx.commit()
        })
        .await
    }
}
