//! The task history in SQLite: one row per task (its fields as JSON, and the columns the API
//! filters and sorts by), kept across restarts when it is a file, bounded by count and by
//! age whatever the event rate.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kombu_core::{Error, ErrorKind, Result};
use parking_lot::Mutex;
use rusqlite::{OptionalExtension, params};
use serde_json::{Map, Value as Json};

use crate::search::{Document, Query};
use crate::task::Task;

/// How many tasks, and for how long, the history keeps.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// At most this many tasks: the ones least recently changed go first (Flower's
    /// `max_tasks`, 100,000 by default).
    pub max_tasks: u64,
    /// Tasks whose last event is older than this go.
    pub max_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_tasks: 100_000,
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// A task as one event left it (what Flower's metrics read after each event).
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The task's name, if known yet.
    pub name: Option<String>,
    /// When it was received and started, if it was.
    pub received: Option<f64>,
    /// When it started.
    pub started: Option<f64>,
    /// Whether it has an `eta`.
    pub eta: bool,
}

/// A page of tasks, as `/api/tasks` asks for it.
#[derive(Debug, Clone, Default)]
pub struct TaskQuery {
    /// At most this many (`None`: all).
    pub limit: Option<i64>,
    /// Skip this many first.
    pub offset: i64,
    /// Only tasks of this worker (case-insensitive).
    pub worker: Option<String>,
    /// Only tasks of this name (case-insensitive).
    pub name: Option<String>,
    /// Only tasks in this state (case-insensitive).
    pub state: Option<String>,
    /// Only tasks received at or after this (epoch seconds); tasks not received pass.
    pub received_start: Option<f64>,
    /// Only tasks received at or before this; tasks not received pass.
    pub received_end: Option<f64>,
    /// `name`, `state`, `received` or `started`, and whether descending; `None`: the latest
    /// event first.
    pub sort_by: Option<(SortKey, bool)>,
    /// Only tasks this search matches (Flower's query language, [`crate::search`]).
    pub search: Option<Query>,
}

/// What `/api/tasks` sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// The task's name, case-insensitive.
    Name,
    /// Its state.
    State,
    /// When it was received.
    Received,
    /// When it started.
    Started,
}

impl SortKey {
    /// From Flower's `sort_by` (without the `-`).
    pub fn parse(text: &str) -> Option<SortKey> {
        Some(match text {
            "name" => SortKey::Name,
            "state" => SortKey::State,
            "received" => SortKey::Received,
            "started" => SortKey::Started,
            _ => return None,
        })
    }

    fn column(self) -> &'static str {
        match self {
            SortKey::Name => "name_key",
            SortKey::State => "state_key",
            SortKey::Received => "received",
            SortKey::Started => "started",
        }
    }
}

/// The history; see the module docs.
#[derive(Debug)]
pub struct History {
    conn: Mutex<rusqlite::Connection>,
    limits: Limits,
    /// How many tasks it holds (kept here, so the count trim needs no scan).
    count: std::sync::atomic::AtomicU64,
    /// How many task names it remembers.
    types: std::sync::atomic::AtomicU64,
}

fn sql(what: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| Error::new(ErrorKind::Broker, format!("monitor history: {what}")).with_source(e)
}

/// A row per task: its fields as JSON, and what the API filters and sorts on (`*_key`: folded
/// case, `ts_key`: the timestamp or 0, `seen`: when this monitor last heard of it).
const SCHEMA: &str = "
    PRAGMA journal_mode=WAL;
    PRAGMA synchronous=NORMAL;
    CREATE TABLE IF NOT EXISTS task (
        uuid TEXT PRIMARY KEY, name_key TEXT, state_key TEXT, worker_key TEXT, received REAL,
        started REAL, ts_key REAL NOT NULL, parent_id TEXT, touched INTEGER NOT NULL,
        seen REAL NOT NULL, fields TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS task_ts ON task (ts_key, uuid);
    CREATE INDEX IF NOT EXISTS task_touched ON task (touched);
    CREATE INDEX IF NOT EXISTS task_seen ON task (seen);
    CREATE INDEX IF NOT EXISTS task_parent ON task (parent_id);
    CREATE TABLE IF NOT EXISTS task_type (name TEXT PRIMARY KEY);
";

/// At most this many task names are remembered for `/api/task/types`.
const MAX_TYPES: u64 = 10_000;

/// Case folded for the filters and the name and state sorts (Flower compares `casefold()`).
fn fold(text: Option<&str>) -> Option<String> {
    text.map(str::to_lowercase)
}

impl History {
    /// Opens (or creates) the history in the file `path`, or in memory (`None`: gone on exit,
    /// bounded all the same).
    pub fn open(path: Option<&Path>, limits: Limits) -> Result<History> {
        let conn = match path {
            Some(path) => rusqlite::Connection::open(path),
            None => rusqlite::Connection::open_in_memory(),
        }
        .map_err(|e| {
            let place = path.map_or("memory".to_owned(), |p| p.display().to_string());
            Error::new(ErrorKind::Config, format!("monitor history in {place}")).with_source(e)
        })?;
        conn.execute_batch(SCHEMA).map_err(sql("create tables"))?;
        let count: i64 = conn
            .query_row("SELECT COUNT(*) FROM task", [], |r| r.get(0))
            .map_err(sql("count tasks"))?;
        let types: i64 = conn
            .query_row("SELECT COUNT(*) FROM task_type", [], |r| r.get(0))
            .map_err(sql("count task types"))?;
        Ok(History {
            conn: Mutex::new(conn),
            limits,
            count: std::sync::atomic::AtomicU64::new(u64::try_from(count).unwrap_or(0)),
            types: std::sync::atomic::AtomicU64::new(u64::try_from(types).unwrap_or(0)),
        })
    }

    /// Applies task events (`(subject, hostname, timestamp, fields)`) in one transaction, then
    /// trims the history to its limits; returns each task as its event left it, in order
    /// (events without a `uuid` are skipped and have none).
    pub fn apply<'a>(
        &self,
        events: impl IntoIterator<Item = (&'a str, &'a str, f64, &'a Map<String, Json>)>,
        now: f64,
    ) -> Result<Vec<Applied>> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(sql("begin"))?;
        let mut added: u64 = 0;
        let mut applied = Vec::new();
        let mut touched: i64 = tx
            .query_row("SELECT COALESCE(MAX(touched), 0) FROM task", [], |r| {
                r.get(0)
            })
            .map_err(sql("read"))?;
        // Prepared once for the batch.
        let mut read = tx
            .prepare_cached("SELECT fields FROM task WHERE uuid = ?1")
            .map_err(sql("read a task"))?;
        let mut write = tx
            .prepare_cached(
                "INSERT INTO task (uuid, name_key, state_key, worker_key, received, started,
                     ts_key, parent_id, touched, seen, fields)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (uuid) DO UPDATE SET name_key = ?2, state_key = ?3,
                     worker_key = ?4, received = ?5, started = ?6, ts_key = ?7, parent_id = ?8,
                     touched = ?9, seen = ?10, fields = ?11",
            )
            .map_err(sql("write a task"))?;
        let mut name_type = tx
            .prepare_cached("INSERT OR IGNORE INTO task_type (name) VALUES (?1)")
            .map_err(sql("write a task type"))?;
        for (subject, hostname, timestamp, fields) in events {
            let Some(uuid) = fields.get("uuid").and_then(Json::as_str) else {
                continue;
            };
            let stored: Option<String> = read
                .query_row([uuid], |r| r.get(0))
                .optional()
                .map_err(sql("read a task"))?;
            let is_new = stored.is_none();
            let mut task = match stored.and_then(|s| serde_json::from_str::<Json>(&s).ok()) {
                Some(Json::Object(fields)) => Task { fields },
                _ => Task::new(uuid),
            };
            task.apply(subject, hostname, timestamp, fields);
            applied.push(Applied {
                name: task.str("name").map(str::to_owned),
                received: task.f64("received"),
                started: task.f64("started"),
                eta: task.fields.get("eta").is_some_and(|e| !e.is_null()),
            });
            touched += 1;
            let json = serde_json::to_string(&task.fields).map_err(|e| {
                Error::new(ErrorKind::Codec, "monitor history: a task's fields").with_source(e)
            })?;
            write
                .execute(params![
                    uuid,
                    fold(task.str("name")),
                    fold(task.str("state")),
                    fold(task.str("worker")),
                    task.f64("received"),
                    task.f64("started"),
                    task.f64("timestamp").unwrap_or(0.0),
                    task.str("parent_id"),
                    touched,
                    now,
                    json,
                ])
                .map_err(sql("write a task"))?;
            if is_new {
                added += 1;
            }
            // A task's name comes (or changes) only with an event that carries one.
            if fields.contains_key("name")
                && let Some(name) = task.str("name")
                && self.types.load(Ordering::Relaxed) < MAX_TYPES
            {
                let new = name_type
                    .execute([name])
                    .map_err(sql("write a task type"))?;
                self.types.fetch_add(new as u64, Ordering::Relaxed);
            }
        }
        drop((read, write, name_type));
        // Old ones go by when this monitor last heard of them (a sender's skewed clock does
        // not age its tasks out on arrival), then the least recently changed beyond the count.
        let cutoff = now - self.limits.max_age.as_secs_f64();
        let aged = tx
            .execute("DELETE FROM task WHERE seen < ?1", [cutoff])
            .map_err(sql("drop old tasks"))?;
        let held = self
            .count
            .load(Ordering::Relaxed)
            .saturating_add(added)
            .saturating_sub(aged as u64);
        let excess = held.saturating_sub(self.limits.max_tasks);
        let trimmed = if excess > 0 {
            tx.execute(
                "DELETE FROM task WHERE uuid IN
                 (SELECT uuid FROM task ORDER BY touched LIMIT ?1)",
                [i64::try_from(excess).unwrap_or(i64::MAX)],
            )
            .map_err(sql("trim the history"))?
        } else {
            0
        };
        tx.commit().map_err(sql("commit"))?;
        self.count
            .store(held.saturating_sub(trimmed as u64), Ordering::Relaxed);
        Ok(applied)
    }

    /// One task and its children's ids.
    pub fn task(&self, uuid: &str) -> Result<Option<(Task, Vec<String>)>> {
        let conn = self.conn.lock();
        let stored: Option<String> = conn
            .query_row("SELECT fields FROM task WHERE uuid = ?1", [uuid], |r| {
                r.get(0)
            })
            .optional()
            .map_err(sql("read a task"))?;
        let Some(Json::Object(fields)) = stored.and_then(|s| serde_json::from_str(&s).ok()) else {
            return Ok(None);
        };
        let children = children(&conn, uuid)?;
        Ok(Some((Task { fields }, children)))
    }

    /// A page of tasks, each with its children's ids.
    pub fn tasks(&self, query: &TaskQuery) -> Result<Vec<(Task, Vec<String>)>> {
        if query.limit.is_some_and(|l| l <= 0) {
            return Ok(Vec::new());
        }
        let mut sql_text = String::from("SELECT fields, uuid FROM task WHERE 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        for (column, value) in [
            ("worker", &query.worker),
            ("name", &query.name),
            ("state", &query.state),
        ] {
            if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
                args.push(value.to_lowercase().into());
                sql_text.push_str(&format!(" AND {column}_key = ?{}", args.len()));
            }
        }
        if let Some(start) = query.received_start {
            args.push(start.into());
            sql_text.push_str(&format!(
                " AND (received IS NULL OR received >= ?{})",
                args.len()
            ));
        }
        if let Some(end) = query.received_end {
            args.push(end.into());
            sql_text.push_str(&format!(
                " AND (received IS NULL OR received <= ?{})",
                args.len()
            ));
        }
        match query.sort_by {
            None => sql_text.push_str(" ORDER BY ts_key DESC, uuid DESC"),
            Some((key, descending)) => {
                let column = key.column();
                let dir = if descending { "DESC" } else { "ASC" };
                sql_text.push_str(&format!(
                    " ORDER BY ({column} IS NOT NULL) {dir}, {column} {dir}, uuid {dir}"
                ));
            }
        }
        // A search is matched here, on the rows in order, so the page is cut after it.
        let search = query.search.as_ref().filter(|q| **q != Query::All);
        if search.is_none() {
            args.push(query.limit.unwrap_or(-1).into());
            sql_text.push_str(&format!(" LIMIT ?{}", args.len()));
            args.push(query.offset.max(0).into());
            sql_text.push_str(&format!(" OFFSET ?{}", args.len()));
        }
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(&sql_text).map_err(sql("query tasks"))?;
        let mut rows = stmt
            .query(rusqlite::params_from_iter(args))
            .map_err(sql("query tasks"))?;
        let (mut out, mut skipped) = (Vec::new(), 0);
        while let Some(row) = rows.next().map_err(sql("read tasks"))? {
            let fields: String = row.get(0).map_err(sql("read tasks"))?;
            let Ok(Json::Object(fields)) = serde_json::from_str(&fields) else {
                continue;
            };
            if let Some(search) = search {
                if !search.matches(&Document::of(&fields)) {
                    continue;
                }
                if skipped < query.offset.max(0) {
                    skipped += 1;
                    continue;
                }
            }
            let uuid: String = row.get(1).map_err(sql("read tasks"))?;
            out.push((Task { fields }, children(&conn, &uuid)?));
            if search.is_some() && query.limit.is_some_and(|l| out.len() as i64 >= l) {
                break;
            }
        }
        Ok(out)
    }

    /// The task names seen, sorted (kept when their tasks go, as Flower keeps them).
    pub fn types(&self) -> Result<Vec<String>> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare("SELECT name FROM task_type ORDER BY name")
            .map_err(sql("read task types"))?;
        stmt.query_map([], |r| r.get(0))
            .map_err(sql("read task types"))?
            .collect::<std::result::Result<_, _>>()
            .map_err(sql("read task types"))
    }

    /// How many tasks it holds.
    pub fn len(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether it holds no task.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn children(conn: &rusqlite::Connection, uuid: &str) -> Result<Vec<String>> {
    let mut stmt = conn
        .prepare_cached("SELECT uuid FROM task WHERE parent_id = ?1 ORDER BY uuid")
        .map_err(sql("read children"))?;
    stmt.query_map([uuid], |r| r.get(0))
        .map_err(sql("read children"))?
        .collect::<std::result::Result<_, _>>()
        .map_err(sql("read children"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(value: Json) -> Map<String, Json> {
        match value {
            Json::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn bounded_by_count_and_age_and_kept_in_a_file() {
        let dir = std::env::temp_dir().join(format!("kombu-monitor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory");
        let path = dir.join("h.db");
        let limits = Limits {
            max_tasks: 3,
            max_age: Duration::from_secs(100),
        };
        let history = History::open(Some(&path), limits).expect("open");
        let events: Vec<Map<String, Json>> = (0..5)
            .map(|i| fields(json!({"uuid": format!("t{i}"), "name": "tasks.add", "timestamp": 1000.0 + f64::from(i)})))
            .collect();
        history
            .apply(
                events
                    .iter()
                    .enumerate()
                    .map(|(i, f)| ("received", "w@h", 1000.0 + i as f64, f)),
                1010.0,
            )
            .map(drop)
            .expect("apply");
        assert_eq!(history.len(), 3, "the 3 changed last");
        let ids: Vec<String> = history
            .tasks(&TaskQuery::default())
            .expect("tasks")
            .iter()
            .filter_map(|(t, _)| t.str("uuid").map(str::to_owned))
            .collect();
        assert_eq!(ids, ["t4", "t3", "t2"], "latest first");
        drop(history);
        let again = History::open(Some(&path), limits).expect("reopen");
        assert_eq!(again.len(), 3, "kept across a restart");
        // Old ones go: an event 200 s later leaves only itself.
        let late = fields(json!({"uuid": "late", "timestamp": 1300.0}));
        again
            .apply([("started", "w@h", 1300.0, &late)], 1300.0)
            .map(drop)
            .expect("apply");
        assert_eq!(again.len(), 1);
        assert_eq!(again.types().expect("types"), ["tasks.add"], "names stay");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn filters_and_sorts_as_flower() {
        let history = History::open(None, Limits::default()).expect("open");
        let a = fields(json!({"uuid": "a", "name": "tasks.B"}));
        let b = fields(json!({"uuid": "b", "name": "tasks.a", "parent_id": "a"}));
        let c = fields(json!({"uuid": "c"}));
        history
            .apply(
                [
                    ("received", "one@h", 1.0, &a),
                    ("received", "two@h", 2.0, &b),
                    ("started", "two@h", 3.0, &c),
                ],
                3.0,
            )
            .map(drop)
            .expect("apply");
        let ids = |q: TaskQuery| -> Vec<String> {
            history
                .tasks(&q)
                .expect("tasks")
                .iter()
                .filter_map(|(t, _)| t.str("uuid").map(str::to_owned))
                .collect()
        };
        let by = |key, desc| TaskQuery {
            sort_by: Some((key, desc)),
            ..TaskQuery::default()
        };
        assert_eq!(
            ids(by(SortKey::Name, false)),
            ["c", "b", "a"],
            "none first, then a < b"
        );
        assert_eq!(ids(by(SortKey::Name, true)), ["a", "b", "c"], "none last");
        assert_eq!(
            ids(TaskQuery {
                worker: Some("TWO@h".into()),
                ..TaskQuery::default()
            }),
            ["c", "b"]
        );
        assert_eq!(
            ids(TaskQuery {
                received_start: Some(1.5),
                ..TaskQuery::default()
            }),
            ["c", "b"],
            "not received passes"
        );
        assert_eq!(
            ids(TaskQuery {
                limit: Some(1),
                offset: 1,
                ..TaskQuery::default()
            }),
            ["b"]
        );
        // Case folded beyond ASCII, as Flower's casefold.
        let d = fields(json!({"uuid": "d", "name": "TÂCHE"}));
        history
            .apply([("received", "ünï@h", 4.0, &d)], 4.0)
            .map(drop)
            .expect("apply");
        assert_eq!(
            ids(TaskQuery {
                name: Some("tâche".into()),
                worker: Some("ÜNÏ@h".into()),
                ..TaskQuery::default()
            }),
            ["d"]
        );
        let (_, children) = history.task("a").expect("read").expect("a");
        assert_eq!(children, ["b"]);
    }
}
