//! The SQLite transport for kombu-rs: durable queues in one file, shared between processes and
//! with Python kombu's SQLAlchemy transport (`sqla+sqlite:///same.db`).
//!
//! URLs: `sqlite:///absolute/path.db`, `sqlite://relative.db`, `sqlite://:memory:` (one
//! database per process), and `sqla+sqlite://` / `sqlalchemy+sqlite://` as aliases that read
//! the path as SQLAlchemy (so Python kombu) does: `sqla+sqlite:///relative.db`,
//! `sqla+sqlite:////absolute/path.db`. The same URL string opens the same file on both sides.
//!
//! A publish through the default exchange to a queue that no one declared (in any process,
//! Rust or Python) creates it in `kombu_queue` and stores the message, as Python kombu's
//! SQLAlchemy transport does; with `mandatory` it fails as unroutable instead. A queue exists
//! when it has a row in `kombu_queue` (whoever made it); `queue_size` and `purge` of one that
//! does not fail with `NotFound`.
//! Options in the query string:
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `visibility_timeout` | `3600` | seconds after which a message taken by a consumer that died (killed, not closed) becomes visible again |
//! | `polling_interval` | `0.2` | longest pause, in seconds, between two looks for rows written by other processes when idle |
//! | `busy_timeout` | `30` | seconds a statement waits for another process's write lock before failing |
//! | `synchronous` | `normal` | SQLite's `synchronous` pragma: `normal` (safe against process crashes) or `full` (also against power loss) |
//!
//! # Layout and how it meets Python kombu
//!
//! Messages live in kombu's tables, `kombu_queue (id, name)` and `kombu_message (id, visible,
//! timestamp, payload, version, queue_id)`, created with exactly the DDL SQLAlchemy emits, the
//! kombu JSON envelope in `payload`. kombu-rs adds two columns with defaults, so Python's
//! inserts still work: `lease_until` (a Unix time, `NULL`) and `redelivered` (`0`). And two
//! tables of its own, `kombu_rs_exchange` and `kombu_rs_binding` (and `kombu_rs_queue` for
//! queue arguments), so that exchanges and bindings declared in one process route publishes in
//! every other (Python kombu keeps them per connection, in memory). Each process caches what
//! it read of them for a second: a binding made by another process routes this process's
//! publishes within a second; its own declarations take effect at once.
//!
//! * Taking a message sets `visible = 0` (as kombu does) plus a lease, `lease_until = now +
//!   visibility_timeout`. Acking **deletes** the row; kombu leaves its acked rows invisible
//!   forever, which kombu-rs ignores like any invisible row without a lease.
//! * A lease that passes makes the row visible again (marked redelivered), so a consumer killed
//!   with messages in hand loses none. Rows a Python consumer took have no lease and stay
//!   invisible, as kombu expects.
//! * Order: `timestamp, id` like kombu (new rows have a `NULL` timestamp); a restored row gets
//!   its `NULL` timestamp back, so it returns to its place near the head.
//! * The database runs in WAL mode with a busy timeout; takes run in `BEGIN IMMEDIATE`
//!   transactions, so concurrent consumers in any process never take the same row.
//!
//! Every SQLite call runs on tokio's blocking pool, never on the async executor's threads.
//! Consumers in this process wake as soon as a publish commits; rows written by other
//! processes are noticed by polling, fast after activity and backing off to
//! `polling_interval` when idle.
//!
//! Not supported (declared in the capabilities, so the conformance suite skips them):
//! priorities, message and queue TTL, max length and dead-lettering.
#![deny(missing_docs, unsafe_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Once, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use kombu_core::virtual_transport::{
    Backend, BindingRow, DeadLetter, Envelope, Fetched, Receipt, TakeMode, Taken, TopologyCache,
    VirtualConnection, envelope,
};
use kombu_core::{
    BrokerConnection, BrokerUrl, Capabilities, Error, ErrorKind, Exchange, ExchangeKind, Queue,
    Result, Transport, register_transport,
};
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

/// Registers the `sqlite`, `sqla+sqlite` and `sqlalchemy+sqlite` URL schemes (idempotent).
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| register_transport(Arc::new(SqliteTransport)));
}

/// The SQLite transport (see the crate documentation).
#[derive(Debug, Default, Clone, Copy)]
pub struct SqliteTransport;

/// Options parsed from a URL.
#[derive(Debug, Clone, PartialEq)]
struct Options {
    /// `None` for `:memory:`.
    path: Option<PathBuf>,
    visibility_timeout: Duration,
    polling_interval: Duration,
    busy_timeout: Duration,
    synchronous_full: bool,
}

fn seconds(url: &BrokerUrl, key: &str, default: f64) -> Result<Duration> {
    let Some(v) = url.query(key) else {
        return Ok(Duration::from_secs_f64(default));
    };
    v.parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| Error::config(format!("{key}={v:?} is not a number of seconds")))
}

impl Options {
    fn from_url(url: &BrokerUrl) -> Result<Options> {
        let scheme = url.scheme();
        if scheme != "sqlite" && scheme != "sqla+sqlite" && scheme != "sqlalchemy+sqlite" {
            return Err(Error::new(
                ErrorKind::InvalidUrl,
                format!(
                    "{}: the SQLite transport takes sqlite://, sqla+sqlite:// and \
                     sqlalchemy+sqlite:// URLs",
                    url.masked()
                ),
            ));
        }
        let rest = url.rest();
        let mut location = rest.split_once('?').map_or(rest, |(p, _)| p);
        if scheme != "sqlite" {
            // SQLAlchemy's rule: after `sqlite://` one `/` separates, so `sqla+sqlite:///x.db`
            // is the relative `x.db` and `sqla+sqlite:////abs/x.db` the absolute `/abs/x.db`,
            // the same file Python kombu opens for the same URL.
            location = location.strip_prefix('/').unwrap_or(location);
        }
        let path = match location {
            "" | ":memory:" | "/:memory:" => None,
            p => Some(PathBuf::from(p)),
        };
        let synchronous_full = match url.query("synchronous").as_deref() {
            None | Some("normal") => false,
            Some("full") => true,
            Some(other) => {
                return Err(Error::config(format!(
                    "synchronous={other:?}: use normal or full"
                )));
            }
        };
        Ok(Options {
            path,
            visibility_timeout: seconds(url, "visibility_timeout", 3600.0)?,
            polling_interval: seconds(url, "polling_interval", 0.2)?,
            busy_timeout: seconds(url, "busy_timeout", 30.0)?,
            synchronous_full,
        })
    }
}

#[async_trait]
impl Transport for SqliteTransport {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn schemes(&self) -> &'static [&'static str] {
        &["sqlite", "sqla", "sqlalchemy"]
    }

    async fn connect(&self, url: &BrokerUrl) -> Result<Arc<dyn BrokerConnection>> {
        let options = Options::from_url(url)?;
        let label = url.masked();
        let backend = SqliteBackend::shared(options.clone(), label).await?;
        Ok(Arc::new(VirtualConnection::new(
            backend,
            Some(options.visibility_timeout),
        )))
    }
}

/// How long a cached exchange or binding list is used before it is read again (bindings made
/// by other processes take effect within this; this process's own take effect at once).
const TOPOLOGY_TTL: Duration = Duration::from_secs(1);

/// One database file (or one in-memory database) in this process, shared by every connection
/// to it.
#[derive(Debug)]
struct SqliteBackend {
    db: Arc<Mutex<Connection>>,
    label: String,
    options: Options,
    /// Woken by every commit of a put in this process.
    notify: tokio::sync::Notify,
    topology: TopologyCache,
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

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// kombu's `timestamp` column format (`datetime.now()` through SQLAlchemy), in UTC.
fn timestamp_text() -> String {
    let secs = unix_now();
    let whole = secs.floor() as i64;
    let micros = ((secs - whole as f64) * 1e6) as i64;
    let days = whole.div_euclid(86_400);
    let rem = whole.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{micros:06}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kombu_queue (
\tid INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, 
\tname VARCHAR(200), 
\tUNIQUE (name)
);
CREATE TABLE IF NOT EXISTS kombu_message (
\tid INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, 
\tvisible BOOLEAN, 
\ttimestamp DATETIME, 
\tpayload TEXT NOT NULL, 
\tversion SMALLINT NOT NULL, 
\tqueue_id INTEGER, 
\tCONSTRAINT \"FK_kombu_message_queue\" FOREIGN KEY(queue_id) REFERENCES kombu_queue (id)
);
CREATE INDEX IF NOT EXISTS ix_kombu_message_timestamp_id ON kombu_message (timestamp, id);
CREATE INDEX IF NOT EXISTS ix_kombu_message_visible ON kombu_message (visible);
CREATE INDEX IF NOT EXISTS ix_kombu_message_timestamp ON kombu_message (timestamp);
CREATE TABLE IF NOT EXISTS kombu_rs_exchange (
\tname TEXT NOT NULL PRIMARY KEY,
\ttype TEXT NOT NULL,
\tdurable INTEGER NOT NULL DEFAULT 1,
\tauto_delete INTEGER NOT NULL DEFAULT 0,
\targuments TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS kombu_rs_queue (
	name TEXT NOT NULL PRIMARY KEY,
	arguments TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS kombu_rs_binding (
\texchange TEXT NOT NULL,
\trouting_key TEXT NOT NULL,
\tqueue TEXT NOT NULL,
\targuments TEXT NOT NULL DEFAULT '{}',
\tUNIQUE (exchange, routing_key, queue, arguments)
);
";

fn open_db(options: &Options) -> rusqlite::Result<Connection> {
    let conn = match &options.path {
        Some(path) => Connection::open(path)?,
        None => Connection::open_in_memory()?,
    };
    conn.busy_timeout(options.busy_timeout)?;
    if options.path.is_some() {
        // Returns the mode as a row.
        let _mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    }
    conn.execute_batch(if options.synchronous_full {
        "PRAGMA synchronous=FULL;"
    } else {
        "PRAGMA synchronous=NORMAL;"
    })?;
    // Schema changes take the write lock once, so concurrent first opens do not race.
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(SCHEMA)?;
    let mut columns = Vec::new();
    {
        let mut stmt = tx.prepare("PRAGMA table_info(kombu_message)")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(1))?;
        for c in rows {
            columns.push(c?);
        }
    }
    if !columns.iter().any(|c| c == "lease_until") {
        tx.execute_batch("ALTER TABLE kombu_message ADD COLUMN lease_until REAL")?;
    }
    if !columns.iter().any(|c| c == "redelivered") {
        tx.execute_batch(
            "ALTER TABLE kombu_message ADD COLUMN redelivered INTEGER NOT NULL DEFAULT 0",
        )?;
    }
    tx.execute_batch(
        "CREATE INDEX IF NOT EXISTS ix_kombu_rs_message_queue ON kombu_message (queue_id, visible, timestamp, id)",
    )?;
    tx.commit()?;
    Ok(conn)
}

fn queue_id(conn: &Connection, name: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT id FROM kombu_queue WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()
}

fn ensure_queue(conn: &Connection, name: &str) -> rusqlite::Result<i64> {
    if let Some(id) = queue_id(conn, name)? {
        return Ok(id);
    }
    conn.prepare_cached("INSERT OR IGNORE INTO kombu_queue (name) VALUES (?1)")?
        .execute([name])?;
    conn.prepare_cached("SELECT id FROM kombu_queue WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
}

fn insert(
    conn: &Connection,
    queue_id: i64,
    payload: &str,
    redelivered: bool,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO kombu_message (visible, timestamp, payload, version, queue_id, redelivered) \
         VALUES (1, NULL, ?1, 1, ?2, ?3)",
    )?
    .execute(params![payload, queue_id, redelivered])?;
    Ok(())
}

fn payload_text(env: &Envelope) -> Result<String> {
    String::from_utf8(envelope::encode(env))
        .map_err(|e| Error::new(ErrorKind::Codec, "envelope JSON is not UTF-8").with_source(e))
}

/// Bits of a receipt that hold the row's `version` after the take: a row taken again (its
/// lease passed) has another version, so a late settlement of the old take touches nothing.
const VERSION_BITS: u32 = 20;
const VERSION_MASK: i64 = (1 << VERSION_BITS) - 1;

fn receipt(id: i64, version: i64) -> Receipt {
    match u64::try_from(id) {
        Ok(id) if id < (1 << (64 - VERSION_BITS)) => {
            Receipt::Id(id << VERSION_BITS | (version & VERSION_MASK).unsigned_abs())
        }
        _ => Receipt::Key(format!("{id}.{version}")),
    }
}

/// The row id and the version (masked) a receipt names.
fn receipt_row(receipt: &Receipt) -> Result<(i64, i64)> {
    let bad = || Error::new(ErrorKind::Settlement, "not a sqlite receipt");
    match receipt {
        Receipt::Id(packed) => {
            let id = i64::try_from(packed >> VERSION_BITS).map_err(|_| bad())?;
            let version = i64::try_from(packed & VERSION_MASK.unsigned_abs()).map_err(|_| bad())?;
            Ok((id, version))
        }
        Receipt::Key(key) => {
            let (id, version) = key.split_once('.').ok_or_else(bad)?;
            let id = id.parse().map_err(|_| bad())?;
            let version: i64 = version.parse().map_err(|_| bad())?;
            Ok((id, version & VERSION_MASK))
        }
    }
}

impl SqliteBackend {
    async fn shared(options: Options, label: String) -> Result<Arc<SqliteBackend>> {
        let key = match &options.path {
            Some(p) => std::path::absolute(p).map_err(|e| {
                Error::new(ErrorKind::Connection, format!("sqlite {label}: bad path"))
                    .with_source(e)
            })?,
            None => PathBuf::from(":memory:"),
        };
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
        let backend = Arc::new(SqliteBackend {
            db: Arc::new(Mutex::new(db)),
            label,
            options,
            notify: tokio::sync::Notify::new(),
            topology: TopologyCache::new(TOPOLOGY_TTL),
        });
        let mut map = BACKENDS.lock();
        // Another task may have opened the same file meanwhile: use one backend per file.
        if let Some(existing) = map.get(&key).and_then(Weak::upgrade) {
            return Ok(existing);
        }
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(key, Arc::downgrade(&backend));
        Ok(backend)
    }

    /// Runs `f` with the database on tokio's blocking pool.
    async fn run<T, F>(&self, what: &'static str, f: F) -> Result<T>
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

    fn forget_topology(&self) {
        self.topology.clear();
    }
}

#[async_trait]
impl Backend for SqliteBackend {
    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::none();
        c.persistent = true;
        c.shared_between_processes = true;
        c.visibility_timeout = true;
        // A publish to a queue nobody declared creates it (kombu's SQLAlchemy transport does).
        c.implicit_queues = true;
        c
    }

    async fn declare_exchange(&self, exchange: &Exchange) -> Result<()> {
        let arguments = serde_json::to_string(&exchange.arguments)
            .map_err(|e| Error::new(ErrorKind::Codec, "exchange arguments").with_source(e))?;
        let (name, kind) = (exchange.name.clone(), exchange.kind.as_str());
        let (durable, auto_delete) = (exchange.durable, exchange.auto_delete);
        self.run("declare exchange", move |conn| {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO kombu_rs_exchange (name, type, durable, auto_delete, arguments) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![name, kind, durable, auto_delete, arguments])?;
            Ok(())
        })
        .await?;
        self.forget_topology();
        Ok(())
    }

    async fn lookup_exchange(&self, name: &str) -> Result<Option<Exchange>> {
        if let Some(found) = self.topology.exchange(name) {
            return Ok(found);
        }
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
        let found = match row {
            None => None,
            Some((kind, durable, auto_delete, arguments)) => {
                let kind: ExchangeKind = kind.parse()?;
                let mut exchange = Exchange::new(name, kind);
                exchange.durable = durable;
                exchange.auto_delete = auto_delete;
                exchange.arguments = serde_json::from_str(&arguments).map_err(|e| {
                    Error::new(ErrorKind::Protocol, "stored exchange arguments").with_source(e)
                })?;
                Some(exchange)
            }
        };
        self.topology.put_exchange(name, found.clone());
        Ok(found)
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

    async fn declare_queue(&self, queue: &Queue) -> Result<()> {
        let name = queue.name.clone();
        let mut spec = queue.declare_arguments();
        for (flag, on) in [
            ("durable", queue.durable),
            ("exclusive", queue.exclusive),
            ("auto_delete", queue.auto_delete),
        ] {
            spec.insert(format!("kombu-rs:{flag}"), kombu_core::Value::Bool(on));
        }
        let requested = spec;
        let spec = serde_json::to_string(&requested)
            .map_err(|e| Error::new(ErrorKind::Codec, "queue arguments").with_source(e))?;
        let conflict = self
            .run("declare queue", move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                ensure_queue(&tx, &name)?;
                let stored: Option<String> = tx
                    .query_row(
                        "SELECT arguments FROM kombu_rs_queue WHERE name = ?1",
                        [&name],
                        |r| r.get(0),
                    )
                    .optional()?;
                let conflict = match stored {
                    Some(stored) => (stored != spec).then_some(stored),
                    None => {
                        tx.execute(
                            "INSERT INTO kombu_rs_queue (name, arguments) VALUES (?1, ?2)",
                            params![name, spec],
                        )?;
                        None
                    }
                };
                tx.commit()?;
                Ok(conflict)
            })
            .await?;
        if let Some(stored) = conflict {
            // What it was declared with, to name what differs (nothing named if unreadable).
            let has: kombu_core::Headers = serde_json::from_str(&stored).unwrap_or_default();
            return Err(Error::inequivalent_settings(
                format_args!("queue {:?}", queue.name),
                &has,
                &requested,
            ));
        }
        Ok(())
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
                    .unsigned_abs();
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

    async fn queue_exists(&self, queue: &str) -> Result<bool> {
        let name = queue.to_owned();
        self.run("find queue", move |conn| {
            Ok(queue_id(conn, &name)?.is_some())
        })
        .await
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

    async fn put(&self, queue: &str, envelope: Envelope) -> Result<Vec<DeadLetter>> {
        self.put_many(vec![(queue.to_owned(), envelope)]).await
    }

    async fn put_many(&self, items: Vec<(String, Envelope)>) -> Result<Vec<DeadLetter>> {
        let mut rows = Vec::with_capacity(items.len());
        for (queue, env) in &items {
            rows.push((queue.clone(), payload_text(env)?, env.redelivered));
        }
        self.run("publish", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // A queue nobody declared (in this process or Python's) is created, as Python
            // kombu's SQLAlchemy transport creates it.
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
                insert(&tx, id, payload, *redelivered)?;
            }
            tx.commit()
        })
        .await?;
        self.notify.notify_waiters();
        Ok(Vec::new())
    }

    async fn get_many(&self, queue: &str, max: usize, mode: TakeMode) -> Result<Fetched> {
        let name = queue.to_owned();
        let label = self.label.clone();
        let limit = i64::try_from(max.max(1)).unwrap_or(i64::MAX);
        let rows = self
            .run("take", move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let Some(qid) = queue_id(&tx, &name)? else {
                    return Ok(Vec::new());
                };
                let now = unix_now();
                // Leases that passed (their consumer died or went silent) come back first.
                tx.prepare_cached(
                    "UPDATE kombu_message SET visible = 1, timestamp = NULL, lease_until = NULL, \
                     redelivered = 1 \
                     WHERE queue_id = ?1 AND visible = 0 AND lease_until IS NOT NULL AND lease_until < ?2",
                )?
                .execute(params![qid, now])?;
                let mut found: Vec<(i64, String, bool, i64)> = Vec::new();
                {
                    let mut stmt = tx.prepare_cached(
                        "SELECT id, payload, redelivered, version FROM kombu_message \
                         WHERE queue_id = ?1 AND visible = 1 ORDER BY timestamp, id LIMIT ?2",
                    )?;
                    let rows = stmt.query_map(params![qid, limit], |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get::<_, Option<bool>>(2)?.unwrap_or(false),
                            // The version the take below gives the row.
                            r.get::<_, i64>(3)? + 1,
                        ))
                    })?;
                    for row in rows {
                        found.push(row?);
                    }
                }
                match mode {
                    TakeMode::NoAck => {
                        let mut del =
                            tx.prepare_cached("DELETE FROM kombu_message WHERE id = ?1")?;
                        for (id, ..) in &found {
                            del.execute([id])?;
                        }
                    }
                    TakeMode::Lease(timeout) => {
                        let until = timeout.map(|t| now + t.as_secs_f64());
                        let stamp = timestamp_text();
                        let mut upd = tx.prepare_cached(
                            "UPDATE kombu_message SET visible = 0, timestamp = ?2, \
                             version = version + 1, lease_until = ?3 WHERE id = ?1",
                        )?;
                        for (id, ..) in &found {
                            upd.execute(params![id, stamp, until])?;
                        }
                    }
                }
                tx.commit()?;
                Ok(found)
            })
            .await?;
        let mut fetched = Fetched::default();
        for (id, payload, redelivered, version) in rows {
            match envelope::decode(payload.as_bytes()) {
                Ok(mut env) => {
                    env.redelivered |= redelivered;
                    fetched.taken.push(Taken {
                        envelope: Arc::new(env),
                        receipt: receipt(id, version),
                    });
                }
                Err(err) => {
                    // Left invisible without a lease (as kombu leaves what it took), so it
                    // neither blocks the queue nor is lost from the table.
                    tracing::warn!(%label, row = id, error = %err, "unreadable message set aside");
                    if let TakeMode::NoAck = mode {
                        continue;
                    }
                    self.run("set aside", move |conn| {
                        conn.execute(
                            "UPDATE kombu_message SET lease_until = NULL WHERE id = ?1",
                            [id],
                        )
                        .map(|_| ())
                    })
                    .await?;
                }
            }
        }
        Ok(fetched)
    }

    async fn ack(&self, _queue: &str, receipt: &Receipt) -> Result<()> {
        let (id, version) = receipt_row(receipt)?;
        self.run("ack", move |conn| {
            conn.prepare_cached(
                "DELETE FROM kombu_message WHERE id = ?1 AND visible = 0 AND (version & ?3) = ?2",
            )?
            .execute(params![id, version, VERSION_MASK])
            .map(|_| ())
        })
        .await
    }

    async fn reject(&self, queue: &str, receipt: &Receipt) -> Result<Option<DeadLetter>> {
        self.ack(queue, receipt).await?;
        Ok(None)
    }

    async fn restore(&self, _queue: &str, receipt: &Receipt) -> Result<()> {
        let (id, version) = receipt_row(receipt)?;
        self.run("restore", move |conn| {
            conn.prepare_cached(
                "UPDATE kombu_message SET visible = 1, timestamp = NULL, lease_until = NULL, \
                 redelivered = 1 WHERE id = ?1 AND visible = 0 AND (version & ?3) = ?2",
            )?
            .execute(params![id, version, VERSION_MASK])
            .map(|_| ())
        })
        .await?;
        self.notify.notify_waiters();
        Ok(())
    }

    async fn extend_lease(&self, _queue: &str, receipt: &Receipt, by: Duration) -> Result<()> {
        let (id, version) = receipt_row(receipt)?;
        let until = unix_now() + by.as_secs_f64();
        self.run("extend lease", move |conn| {
            conn.prepare_cached(
                "UPDATE kombu_message SET lease_until = ?2 WHERE id = ?1 AND visible = 0 \
                 AND lease_until IS NOT NULL AND (version & ?4) = ?3",
            )?
            .execute(params![id, until, version, VERSION_MASK])
            .map(|_| ())
        })
        .await
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        let name = queue.to_owned();
        self.run("purge", move |conn| {
            let Some(id) = queue_id(conn, &name)? else {
                return Ok(0);
            };
            let n = conn.execute(
                "DELETE FROM kombu_message WHERE queue_id = ?1 AND visible = 1",
                [id],
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn size(&self, queue: &str) -> Result<u64> {
        let name = queue.to_owned();
        self.run("size", move |conn| {
            let Some(id) = queue_id(conn, &name)? else {
                return Ok(0);
            };
            conn.prepare_cached(
                "SELECT COUNT(*) FROM kombu_message WHERE queue_id = ?1 AND visible = 1",
            )?
            .query_row([id], |r| r.get::<_, i64>(0))
            .map(i64::unsigned_abs)
        })
        .await
    }

    async fn wait(&self, queues: &[String], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Fast after activity, backing off to the polling interval when idle.
        let mut pause = Duration::from_millis(1);
        loop {
            let names = queues.to_vec();
            let ready = self
                .run("poll", move |conn| {
                    let now = unix_now();
                    let mut stmt = conn.prepare_cached(
                        "SELECT EXISTS (SELECT 1 FROM kombu_message m JOIN kombu_queue q \
                         ON m.queue_id = q.id WHERE q.name = ?1 AND (m.visible = 1 OR \
                         (m.visible = 0 AND m.lease_until IS NOT NULL AND m.lease_until < ?2)))",
                    )?;
                    for name in &names {
                        if stmt.query_row(params![name, now], |r| r.get::<_, bool>(0))? {
                            return Ok(true);
                        }
                    }
                    Ok(false)
                })
                .await?;
            if ready {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            tokio::select! {
                _ = &mut notified => return Ok(()),
                _ = tokio::time::sleep(pause.min(left)) => {}
            }
            pause = (pause * 2).min(self.options.polling_interval.max(Duration::from_millis(1)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(url: &str) -> Result<Options> {
        Options::from_url(&BrokerUrl::parse(url)?)
    }

    #[test]
    fn urls_name_a_file_or_memory() -> Result<()> {
        assert_eq!(
            options("sqlite:///var/lib/q.db")?.path,
            Some(PathBuf::from("/var/lib/q.db"))
        );
        assert_eq!(
            options("sqlite://relative.db")?.path,
            Some(PathBuf::from("relative.db"))
        );
        assert_eq!(options("sqlite://:memory:")?.path, None);
        // The sqla+ aliases read paths as SQLAlchemy does (and so Python kombu).
        assert_eq!(
            options("sqla+sqlite:///x.db")?.path,
            Some(PathBuf::from("x.db"))
        );
        assert_eq!(
            options("sqla+sqlite:////tmp/x.db")?.path,
            Some(PathBuf::from("/tmp/x.db"))
        );
        assert_eq!(
            options("sqlalchemy+sqlite:////tmp/x.db?visibility_timeout=2.5")?.visibility_timeout,
            Duration::from_millis(2500)
        );
        assert!(options("sqla+postgresql://h/db").is_err());
        assert!(options("sqlite:///x.db?visibility_timeout=soon").is_err());
        assert!(options("sqlite:///x.db?synchronous=off").is_err());
        Ok(())
    }

    #[test]
    fn timestamps_are_kombu_datetime_text() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_724), (2024, 1, 2));
        let t = timestamp_text();
        assert_eq!(t.len(), "2026-11-22 07:56:28.377105".len(), "{t}");
    }
}
