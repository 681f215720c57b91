//! kombu's SQLAlchemy layout (`kombu_queue`, `kombu_message`) plus kombu-rs's own tables:
//! opening a database creates them, adds kombu-rs's columns to an older `kombu_message`, and
//! the helpers here read and write rows as Python kombu does.

use std::time::{Duration, Instant};

use kombu_core::transport::unix_now;
use kombu_core::transport::virtual_transport::{Envelope, envelope};
use kombu_core::{Error, ErrorKind, Result};
use rusqlite::{Connection, OptionalExtension, params};

use crate::options::Options;

/// kombu's `timestamp` column format (`datetime.now()` through SQLAlchemy), in UTC.
pub(crate) fn timestamp_text() -> String {
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

/// Restores by the visibility rule (the take time plus the restorer's timeout), or, for a
/// row an earlier kombu-rs took (`lease_until` and no `taken_at`), by its recorded lease end.
/// `?2` is now minus the restorer's visibility timeout, `?3` now.
pub(crate) const LEASE_PASSED: &str = "((taken_at IS NOT NULL AND taken_at <= ?2) OR \
     (taken_at IS NULL AND lease_until IS NOT NULL AND lease_until <= ?3))";

/// Converts leases recorded by earlier kombu-rs versions (`lease_until`, a lease end) to the
/// visibility rule's take time: the `timestamp` the take wrote (UTC text, as every kombu-rs
/// take writes it), else the lease end minus this opener's visibility timeout (the lease then
/// ends when it would have for a restorer with that timeout). Rows Python kombu took have
/// neither and stay as they are (no lease).
fn convert_lease_ends(tx: &Connection, visibility: f64) -> rusqlite::Result<usize> {
    tx.execute(
        "UPDATE kombu_message SET taken_at = COALESCE(\
             (julianday(timestamp) - 2440587.5) * 86400.0, lease_until - ?1), \
         lease_until = NULL \
         WHERE visible = 0 AND lease_until IS NOT NULL AND taken_at IS NULL",
        [visibility],
    )
}

/// Puts the database in WAL mode. The pragma fails at once ("database is locked") while
/// another process writes in rollback-journal mode (Python kombu's SQLAlchemy transport
/// creating its tables, say): SQLite calls no busy handler for it. So it is tried again,
/// backing off, for as long as the busy timeout.
fn set_wal(conn: &Connection, patience: Duration) -> rusqlite::Result<()> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        // Returns the mode as a row.
        match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0)) {
            Ok(_mode) => return Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && started.elapsed() < patience =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
}

pub(crate) fn open_db(options: &Options) -> rusqlite::Result<Connection> {
    let mut conn = match &options.path {
        Some(path) => Connection::open(path)?,
        None => Connection::open_in_memory()?,
    };
    conn.busy_timeout(options.busy_timeout)?;
    if options.path.is_some() {
        set_wal(&conn, options.busy_timeout)?;
    }
    conn.execute_batch(if options.synchronous_full {
        "PRAGMA synchronous=FULL;"
    } else {
        "PRAGMA synchronous=NORMAL;"
    })?;
    // Schema changes take the write lock once, so concurrent first opens do not race: at the
    // start (IMMEDIATE), since a deferred transaction that read and then writes after another
    // process committed fails at once in WAL mode (SQLITE_BUSY_SNAPSHOT; the busy timeout does
    // not apply), which failed a process's open now and then when several started together.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
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
    if !columns.iter().any(|c| c == "taken_at") {
        tx.execute_batch("ALTER TABLE kombu_message ADD COLUMN taken_at REAL")?;
    }
    // Every open: a process of an earlier version may still be taking from this file.
    convert_lease_ends(&tx, options.visibility_timeout.as_secs_f64())?;
    if !columns.iter().any(|c| c == "due_at") {
        tx.execute_batch("ALTER TABLE kombu_message ADD COLUMN due_at REAL")?;
    }
    if !columns.iter().any(|c| c == "redelivered") {
        tx.execute_batch(
            "ALTER TABLE kombu_message ADD COLUMN redelivered INTEGER NOT NULL DEFAULT 0",
        )?;
    }
    tx.execute_batch(
        "CREATE INDEX IF NOT EXISTS ix_kombu_rs_message_queue ON kombu_message (queue_id, visible, timestamp, id);
         CREATE INDEX IF NOT EXISTS ix_kombu_rs_message_due ON kombu_message (queue_id, due_at) WHERE due_at IS NOT NULL;
         CREATE INDEX IF NOT EXISTS ix_kombu_rs_message_due_all ON kombu_message (due_at) WHERE due_at IS NOT NULL;",
    )?;
    tx.commit()?;
    Ok(conn)
}

pub(crate) fn queue_id(conn: &Connection, name: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT id FROM kombu_queue WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()
}

pub(crate) fn ensure_queue(conn: &Connection, name: &str) -> rusqlite::Result<i64> {
    if let Some(id) = queue_id(conn, name)? {
        return Ok(id);
    }
    conn.prepare_cached("INSERT OR IGNORE INTO kombu_queue (name) VALUES (?1)")?
        .execute([name])?;
    conn.prepare_cached("SELECT id FROM kombu_queue WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
}

pub(crate) fn insert(
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

pub(crate) fn payload_text(env: &Envelope) -> Result<String> {
    String::from_utf8(envelope::encode(env))
        .map_err(|e| Error::new(ErrorKind::Codec, "envelope JSON is not UTF-8").with_source(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ends_of_earlier_versions_become_take_times() -> Result<(), Box<dyn std::error::Error>>
    {
        let path = std::env::temp_dir().join(format!(
            "kombu-rs-migrate-{}.db",
            uuid::Uuid::new_v4().simple()
        ));
        {
            // A file as an earlier version left it: lease ends, no take times.
            let old = Connection::open(&path)?;
            old.execute_batch(SCHEMA)?;
            old.execute_batch(
                "ALTER TABLE kombu_message ADD COLUMN lease_until REAL; \
                 ALTER TABLE kombu_message ADD COLUMN redelivered INTEGER NOT NULL DEFAULT 0; \
                 INSERT INTO kombu_queue (name) VALUES ('q'); \
                 INSERT INTO kombu_message (visible, timestamp, payload, version, queue_id, lease_until) \
                   VALUES (0, '2026-01-02 03:04:05.500000', 'a', 2, 1, 1767326645.5 + 3600); \
                 INSERT INTO kombu_message (visible, timestamp, payload, version, queue_id, lease_until) \
                   VALUES (0, NULL, 'b', 2, 1, 5000.0); \
                 INSERT INTO kombu_message (visible, timestamp, payload, version, queue_id) \
                   VALUES (0, '2026-01-02 03:04:05', 'python took it', 2, 1);",
            )
            ?;
        }
        let url = format!("sqlite://{}?visibility_timeout=10", path.display());
        let options = crate::options::Options::from_url(&kombu_core::BrokerUrl::parse(&url)?)?;
        let conn = open_db(&options)?;
        let rows: Vec<(String, Option<f64>, Option<f64>)> = conn
            .prepare("SELECT payload, taken_at, lease_until FROM kombu_message ORDER BY id")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        // 2026-01-02 03:04:05.5 UTC is 1767323045.5.
        let taken = rows[0].1.ok_or("no take time from the timestamp")?;
        assert!((taken - 1_767_323_045.5).abs() < 0.01, "{rows:?}");
        assert_eq!(rows[0].2, None);
        // No timestamp: the lease end minus the opener's timeout.
        assert_eq!(rows[1].1, Some(4990.0), "{rows:?}");
        // Python's take has no lease, before and after.
        assert_eq!((rows[2].1, rows[2].2), (None, None), "{rows:?}");
        drop(conn);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        Ok(())
    }

    #[test]
    fn an_open_waits_for_a_rollback_mode_writer() -> Result<(), Box<dyn std::error::Error>> {
        let path = std::env::temp_dir().join(format!(
            "kombu-rs-busy-open-{}.db",
            uuid::Uuid::new_v4().simple()
        ));
        // Another process (Python kombu's SQLAlchemy transport) writes in rollback-journal
        // mode: WAL cannot be set until it commits.
        let writer = Connection::open(&path)?;
        writer.execute_batch(
            "CREATE TABLE other (x); BEGIN IMMEDIATE; INSERT INTO other VALUES (1);",
        )?;
        let committer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            writer.execute_batch("COMMIT")
        });
        let url = format!("sqlite://{}?busy_timeout=10", path.display());
        let options = crate::options::Options::from_url(&kombu_core::BrokerUrl::parse(&url)?)?;
        let started = Instant::now();
        let conn = open_db(&options)?;
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "{:?}",
            started.elapsed()
        );
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        assert_eq!(mode, "wal");
        committer
            .join()
            .map_err(|_| "the writer thread panicked")??;
        drop(conn);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
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
