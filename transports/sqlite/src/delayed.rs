//! Delayed messages: rows of `kombu_message` stored with `visible = 0` and a due time
//! (`due_at`, Unix seconds), made visible at the tail of their queue once due.
//!
//! A delayed row is told apart by `due_at` alone: it has no take time (`taken_at`) and no
//! lease end (`lease_until`), so no lease restore ever touches it (those need one of the
//! two), and no receipt names it (ids are never reused: `AUTOINCREMENT`). Python kombu reads
//! only `visible = 1` rows, so it neither takes nor counts one.
//!
//! Making rows due visible is one statement pair in one transaction: each is copied to a
//! fresh row (`visible = 1`, a new id, so it joins the tail of its queue as a publish at that
//! moment would) and deleted. A process that dies at any point leaves each message in exactly
//! one of the two forms. Every kombu-rs take does it for its queue first; and a process that
//! has the file open and knows of rows still delayed (it stored them, or found them on open)
//! does it for every queue when they fall due ([`Sweeper`]), so Python consumers get them
//! without a kombu-rs consumer running.

use std::sync::{Arc, Weak};
use std::time::Duration;

use kombu_core::transport::unix_now;
use parking_lot::Mutex;
use rusqlite::{Connection, params};
use tokio::sync::Notify;

use crate::backend::SqliteBackend;
use crate::schema::LEASE_PASSED;

/// How long a sweep that failed (the database was locked for `busy_timeout`, say) waits
/// before it tries again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The latest due time a delay can give (year 2500, in Unix seconds): a delay beyond it is
/// held until then, which is never in practice.
const LATEST_DUE: f64 = 16_725_225_600.0;

/// The due time of a delay starting now.
pub(crate) fn due_in(delay: Duration) -> f64 {
    (unix_now() + delay.as_secs_f64()).min(LATEST_DUE)
}

/// Stores a delayed row: invisible, with its due time.
pub(crate) fn insert_delayed(
    conn: &Connection,
    queue_id: i64,
    payload: &str,
    redelivered: bool,
    due: f64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO kombu_message \
         (visible, timestamp, payload, version, queue_id, redelivered, due_at) \
         VALUES (0, NULL, ?1, 1, ?2, ?3, ?4)",
    )?
    .execute(params![payload, queue_id, redelivered, due])?;
    Ok(())
}

/// Makes the rows of one queue (`Some(queue_id)`) or of every queue (`None`) that are due by
/// `now` visible at the tail of their queues, earliest due first. Call it inside a write
/// transaction: the copy and the delete commit together. Returns how many.
pub(crate) fn promote_due(
    conn: &Connection,
    queue_id: Option<i64>,
    now: f64,
) -> rusqlite::Result<usize> {
    const COPY: &str = "INSERT INTO kombu_message \
         (visible, timestamp, payload, version, queue_id, redelivered) \
         SELECT 1, NULL, payload, 1, queue_id, redelivered FROM kombu_message";
    let copied = match queue_id {
        Some(id) => {
            let copied = conn
                .prepare_cached(&format!(
                    "{COPY} WHERE queue_id = ?1 AND due_at IS NOT NULL AND due_at <= ?2 \
                     ORDER BY due_at, id"
                ))?
                .execute(params![id, now])?;
            if copied > 0 {
                conn.prepare_cached(
                    "DELETE FROM kombu_message \
                     WHERE queue_id = ?1 AND due_at IS NOT NULL AND due_at <= ?2",
                )?
                .execute(params![id, now])?;
            }
            copied
        }
        None => {
            let copied = conn
                .prepare_cached(&format!(
                    "{COPY} WHERE due_at IS NOT NULL AND due_at <= ?1 ORDER BY due_at, id"
                ))?
                .execute([now])?;
            if copied > 0 {
                conn.prepare_cached(
                    "DELETE FROM kombu_message WHERE due_at IS NOT NULL AND due_at <= ?1",
                )?
                .execute([now])?;
            }
            copied
        }
    };
    Ok(copied)
}

/// The earliest due time of any delayed row in the database.
pub(crate) fn next_due_anywhere(conn: &Connection) -> rusqlite::Result<Option<f64>> {
    conn.prepare_cached("SELECT MIN(due_at) FROM kombu_message WHERE due_at IS NOT NULL")?
        .query_row([], |r| r.get(0))
}

/// Counts a queue's delayed rows due by `now` (ready for the next take, which moves them).
pub(crate) fn count_due(conn: &Connection, queue_id: i64, now: f64) -> rusqlite::Result<u64> {
    conn.prepare_cached(
        "SELECT COUNT(*) FROM kombu_message \
         WHERE queue_id = ?1 AND due_at IS NOT NULL AND due_at <= ?2",
    )?
    .query_row(params![queue_id, now], |r| r.get::<_, i64>(0))
    .map(i64::unsigned_abs)
}

/// Deletes a queue's delayed rows due by `now` (a purge removes them with the ready rows).
pub(crate) fn delete_due(conn: &Connection, queue_id: i64, now: f64) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "DELETE FROM kombu_message WHERE queue_id = ?1 AND due_at IS NOT NULL AND due_at <= ?2",
    )?
    .execute(params![queue_id, now])
}

/// The state of a look at queues for a waiting consumer: whether a take would find something
/// now, and the earliest due time of a row still delayed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Look {
    pub(crate) ready: bool,
    pub(crate) next_due: Option<f64>,
}

/// The earliest due time among a queue's delayed rows (by name).
pub(crate) fn next_due_of(conn: &Connection, queue: &str) -> rusqlite::Result<Option<f64>> {
    conn.prepare_cached(
        "SELECT MIN(m.due_at) FROM kombu_message m JOIN kombu_queue q ON m.queue_id = q.id \
         WHERE q.name = ?1 AND m.due_at IS NOT NULL",
    )?
    .query_row([queue], |r| r.get(0))
}

/// The process's timekeeper for delayed rows: one task per open database, alive while rows
/// are known to be delayed, that makes them visible when due (in every queue) and wakes this
/// process's waiting consumers.
#[derive(Debug, Default)]
pub(crate) struct Sweeper {
    state: Mutex<SweepState>,
    /// Told when an earlier due time is scheduled.
    wake: Notify,
}

#[derive(Debug, Default)]
struct SweepState {
    /// The earliest due time known and not yet swept.
    next: Option<f64>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Sweeper {
    /// Sweeps at `due` (or earlier, if an earlier due time is known), starting the task when
    /// none runs on a live runtime. Outside a tokio runtime it only records the time: the
    /// next take of the queue makes the rows visible.
    pub(crate) fn schedule(self: &Arc<Self>, backend: Weak<SqliteBackend>, due: f64) {
        let mut state = self.state.lock();
        let earlier = state.next.is_none_or(|n| due < n);
        if earlier {
            state.next = Some(due);
        }
        if state.task.as_ref().is_some_and(|t| !t.is_finished()) {
            if earlier {
                self.wake.notify_one();
            }
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            state.task = Some(runtime.spawn(sweep(self.clone(), backend)));
        }
    }

    /// Stops the task (its backend is being dropped).
    pub(crate) fn stop(&self) {
        if let Some(task) = self.state.lock().task.take() {
            task.abort();
        }
    }

    /// The due time to sweep at next; `None` ends the task (under the lock, so a schedule
    /// meanwhile starts another).
    fn next(&self) -> Option<f64> {
        let mut state = self.state.lock();
        if state.next.is_none() {
            state.task = None;
        }
        state.next
    }

    /// Forgets the known due times, before a sweep looks at the database.
    fn start_sweep(&self) {
        self.state.lock().next = None;
    }

    /// Records the earliest due time the sweep left (any scheduled meanwhile stays).
    fn swept(&self, left: Option<f64>) {
        let mut state = self.state.lock();
        state.next = match (state.next, left) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// The sweeper task: sleeps until the next due time, makes due rows visible, repeats while
/// rows are delayed; ends when none is left or the backend is dropped. It holds the backend
/// only while it sweeps.
async fn sweep(sweeper: Arc<Sweeper>, backend: Weak<SqliteBackend>) {
    loop {
        let Some(due) = sweeper.next() else { return };
        let wait = due - unix_now();
        if wait > 0.0 {
            // In steps of at most a minute: the due times are wall-clock times.
            let step = Duration::from_secs_f64(wait.min(60.0));
            tokio::select! {
                // An earlier due time: look again.
                _ = sweeper.wake.notified() => continue,
                _ = tokio::time::sleep(step) => {}
            }
            if step.as_secs_f64() < wait {
                continue;
            }
        }
        let Some(b) = backend.upgrade() else { return };
        sweeper.start_sweep();
        match b.sweep_due().await {
            Ok(left) => sweeper.swept(left),
            Err(e) => {
                tracing::warn!(error = %e, "sqlite: delayed messages not made visible; trying again");
                sweeper.swept(Some(due));
                drop(b);
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
}

impl SqliteBackend {
    /// One look at `queues` for a waiting consumer: a ready row, a lease a take would restore
    /// (by the connection's visibility timeout), or a delayed row due, and else the earliest
    /// due time of a delayed row.
    pub(crate) async fn look(&self, queues: &[String]) -> kombu_core::Result<Look> {
        let names = queues.to_vec();
        // The waiting consumer's own timeout is not known here: the connection's is the
        // usual one, and the consumer looks again within a second anyway.
        let visibility = self.options.visibility_timeout.as_secs_f64();
        self.run("poll", move |conn| {
            let now = unix_now();
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT EXISTS (SELECT 1 FROM kombu_message m JOIN kombu_queue q \
                 ON m.queue_id = q.id WHERE q.name = ?1 AND (m.visible = 1 OR \
                 (m.visible = 0 AND {LEASE_PASSED})))"
            ))?;
            let mut next_due: Option<f64> = None;
            for name in &names {
                if stmt.query_row(params![name, now - visibility, now], |r| {
                    r.get::<_, bool>(0)
                })? {
                    return Ok(Look {
                        ready: true,
                        next_due,
                    });
                }
                if let Some(due) = next_due_of(conn, name)? {
                    if due <= now {
                        return Ok(Look {
                            ready: true,
                            next_due: Some(due),
                        });
                    }
                    next_due = Some(next_due.map_or(due, |n| n.min(due)));
                }
            }
            Ok(Look {
                ready: false,
                next_due,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row as the test reads it: payload, visible, due_at, taken_at, redelivered.
    type RowState = (String, bool, Option<f64>, Option<f64>, bool);

    #[test]
    fn only_due_rows_move_to_fresh_visible_rows() -> Result<(), Box<dyn std::error::Error>> {
        let url = kombu_core::BrokerUrl::parse("sqlite://:memory:")?;
        let conn = crate::schema::open_db(&crate::options::Options::from_url(&url)?)?;
        let q = crate::schema::ensure_queue(&conn, "q")?;
        conn.execute_batch(&format!(
            "INSERT INTO kombu_message (visible, payload, version, queue_id, taken_at) \
               VALUES (0, 'leased', 2, {q}, 1.0); \
             INSERT INTO kombu_message (visible, payload, version, queue_id) \
               VALUES (0, 'python took it', 2, {q}); \
             INSERT INTO kombu_message (visible, payload, version, queue_id) \
               VALUES (1, 'ready', 1, {q});"
        ))?;
        insert_delayed(&conn, q, "later", false, 2000.0)?;
        insert_delayed(&conn, q, "due second", true, 1500.0)?;
        insert_delayed(&conn, q, "due first", false, 1000.0)?;
        assert_eq!(count_due(&conn, q, 1600.0)?, 2);
        assert_eq!(promote_due(&conn, Some(q), 1600.0)?, 2);
        let rows: Vec<RowState> = conn
            .prepare(
                "SELECT payload, visible, due_at, taken_at, redelivered FROM kombu_message \
                 ORDER BY id",
            )?
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let expected = [
            ("leased", false, None, Some(1.0), false),
            ("python took it", false, None, None, false),
            ("ready", true, None, None, false),
            ("later", false, Some(2000.0), None, false),
            // At the tail, earliest due first, as published otherwise.
            ("due first", true, None, None, false),
            ("due second", true, None, None, true),
        ];
        let rows: Vec<_> = rows
            .iter()
            .map(|(p, v, d, t, r)| (p.as_str(), *v, *d, *t, *r))
            .collect();
        assert_eq!(rows, expected);
        assert_eq!(next_due_anywhere(&conn)?, Some(2000.0));
        assert_eq!(next_due_of(&conn, "q")?, Some(2000.0));
        assert_eq!(promote_due(&conn, None, 1600.0)?, 0);
        assert_eq!(delete_due(&conn, q, 2000.0)?, 1);
        assert_eq!(next_due_anywhere(&conn)?, None);
        Ok(())
    }
}
