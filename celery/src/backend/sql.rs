//! Celery's SQL result backend on SQLite (`db+sqlite://`; `celery/backends/database/`): the
//! tables `celery_taskmeta` and `celery_tasksetmeta` as Celery 5.7's SQLAlchemy models create
//! them (created here when missing, the same columns, so either side may come first), the
//! result as the serialized JSON bytes in `result`, `date_done` as SQLAlchemy writes a naive
//! UTC `DATETIME`. Waiting polls, as Celery's own `AsyncResult.get` does on this backend.
//! Rows are removed after `result_expires` by [`SqlResultBackend::cleanup`] (Celery's
//! `backend_cleanup` task).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{NaiveDateTime, Utc};
use kombu_core::{Error, ErrorKind, Result};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde_json::Value as Json;

use super::{DEFAULT_RESULT_EXPIRES, ResultBackend};
use crate::result::{ResultMeta, State};

/// Celery's tables (the DDL SQLAlchemy emits for its models on SQLite).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS celery_taskmeta (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    task_id VARCHAR(155),
    status VARCHAR(50),
    result BLOB,
    date_done DATETIME,
    traceback TEXT,
    children BLOB,
    name VARCHAR(155),
    args BLOB,
    kwargs BLOB,
    worker VARCHAR(155),
    retries INTEGER,
    queue VARCHAR(155),
    stamps BLOB,
    UNIQUE (task_id)
);
CREATE INDEX IF NOT EXISTS ix_celery_taskmeta_date_done ON celery_taskmeta (date_done);
CREATE TABLE IF NOT EXISTS celery_tasksetmeta (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    taskset_id VARCHAR(155),
    result BLOB,
    date_done DATETIME,
    UNIQUE (taskset_id)
);
CREATE INDEX IF NOT EXISTS ix_celery_tasksetmeta_date_done ON celery_tasksetmeta (date_done);
";

/// SQLAlchemy's text of a naive UTC `DATETIME` on SQLite.
const DATETIME: &str = "%Y-%m-%d %H:%M:%S%.6f";

/// Celery's `db+sqlite://` result backend.
pub struct SqlResultBackend {
    db: Arc<Mutex<Connection>>,
    path: PathBuf,
    expires: Duration,
}

impl std::fmt::Debug for SqlResultBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlResultBackend")
            .field("path", &self.path)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

fn sql_error(what: &str, e: rusqlite::Error) -> Error {
    Error::new(ErrorKind::Broker, format!("sqlite result backend: {what}")).with_source(e)
}

impl SqlResultBackend {
    /// Opens (creating what is missing) the backend at `url`: `db+sqlite:///relative.db` or
    /// `db+sqlite:////absolute/path.db`, as SQLAlchemy reads them.
    pub async fn open(url: &str) -> Result<SqlResultBackend> {
        let Some(rest) = url.strip_prefix("db+sqlite://") else {
            return Err(Error::new(
                ErrorKind::InvalidUrl,
                format!("not a db+sqlite:// result backend URL: {url}"),
            ));
        };
        let path = PathBuf::from(rest.strip_prefix('/').unwrap_or(rest));
        let open_path = path.clone();
        let conn = tokio::task::spawn_blocking(move || -> rusqlite::Result<Connection> {
            let conn = Connection::open(&open_path)?;
            conn.busy_timeout(Duration::from_secs(30))?;
            conn.execute_batch(SCHEMA)?;
            Ok(conn)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Broker, "the sqlite open task failed").with_source(e))?
        .map_err(|e| sql_error(&format!("cannot open {}", path.display()), e))?;
        Ok(SqlResultBackend {
            db: Arc::new(Mutex::new(conn)),
            path,
            expires: DEFAULT_RESULT_EXPIRES,
        })
    }

    /// How long results are kept by [`cleanup`](Self::cleanup) (default a day).
    pub fn result_expires(mut self, expires: Duration) -> Self {
        self.expires = expires;
        self
    }

    async fn run<T, F>(&self, what: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = db.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut conn)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Broker, "a sqlite task failed").with_source(e))?
        .map_err(|e| sql_error(what, e))
    }

    /// Deletes the results done more than `result_expires` ago, as Celery's
    /// `backend_cleanup`; returns how many.
    pub async fn cleanup(&self) -> Result<u64> {
        let before =
            Utc::now() - chrono::Duration::from_std(self.expires).unwrap_or(chrono::Duration::MAX);
        let before = before.naive_utc().format(DATETIME).to_string();
        self.run("cleanup", move |conn| {
            let n = conn.execute(
                "DELETE FROM celery_taskmeta WHERE date_done < ?1",
                params![before],
            )?;
            conn.execute(
                "DELETE FROM celery_tasksetmeta WHERE date_done < ?1",
                params![before],
            )?;
            Ok(n as u64)
        })
        .await
    }
}

/// A stored `DATETIME` as ISO 8601 with its UTC offset.
fn iso_of(stored: &str) -> String {
    match NaiveDateTime::parse_from_str(stored, DATETIME)
        .or_else(|_| NaiveDateTime::parse_from_str(stored, "%Y-%m-%d %H:%M:%S"))
    {
        Ok(at) => crate::message::isoformat(at.and_utc()),
        Err(_) => stored.to_owned(),
    }
}

#[async_trait]
impl ResultBackend for SqlResultBackend {
    async fn meta(&self, task_id: &str) -> Result<ResultMeta> {
        let id = task_id.to_owned();
        type Row = (
            String,
            Option<Vec<u8>>,
            Option<String>,
            Option<String>,
            Option<Vec<u8>>,
        );
        let row: Option<Row> = self
            .run("read a result", move |conn| {
                conn.query_row(
                    "SELECT status, result, date_done, traceback, children \
                     FROM celery_taskmeta WHERE task_id = ?1",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()
            })
            .await?;
        let Some((status, result, date_done, traceback, children)) = row else {
            return Ok(ResultMeta::pending(task_id));
        };
        let json_of = |bytes: Option<Vec<u8>>| -> Json {
            bytes
                .and_then(|b| kombu_serializers::from_python_json(&b).ok())
                .unwrap_or(Json::Null)
        };
        let mut doc = serde_json::Map::new();
        doc.insert("status".into(), Json::String(status));
        doc.insert("result".into(), json_of(result));
        doc.insert(
            "traceback".into(),
            traceback.map_or(Json::Null, Json::String),
        );
        doc.insert("children".into(), json_of(children));
        doc.insert(
            "date_done".into(),
            date_done.map_or(Json::Null, |d| Json::String(iso_of(&d))),
        );
        Ok(ResultMeta::from_json(task_id, &Json::Object(doc)))
    }

    async fn store(&self, meta: &ResultMeta) -> Result<()> {
        let encode = |v: &Json| {
            kombu_serializers::to_python_json(v).map_err(|e| {
                Error::new(ErrorKind::Codec, "a result that is not JSON").with_source(e)
            })
        };
        let result = encode(&meta.result)?;
        let children = match &meta.children {
            Json::Array(items) if !items.is_empty() => Some(encode(&meta.children)?),
            _ => None,
        };
        let task_id = meta.task_id.clone();
        let status = meta.state.as_str().to_owned();
        let traceback = meta.traceback.clone();
        let done = Utc::now().naive_utc().format(DATETIME).to_string();
        self.run("store a result", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let stored: Option<String> = tx
                .query_row(
                    "SELECT status FROM celery_taskmeta WHERE task_id = ?1",
                    params![task_id],
                    |r| r.get(0),
                )
                .optional()?;
            match stored.as_deref() {
                // A stored SUCCESS is never written over, as Celery's backend.
                Some(s) if s == State::Success.as_str() => return Ok(()),
                Some(_) => {
                    tx.execute(
                        "UPDATE celery_taskmeta SET status = ?2, result = ?3, date_done = ?4, \
                         traceback = ?5, children = ?6 WHERE task_id = ?1",
                        params![task_id, status, result, done, traceback, children],
                    )?;
                }
                None => {
                    tx.execute(
                        "INSERT INTO celery_taskmeta \
                         (task_id, status, result, date_done, traceback, children) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![task_id, status, result, done, traceback, children],
                    )?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn wait(&self, task_id: &str, timeout: Duration) -> Result<ResultMeta> {
        let deadline = super::deadline(timeout);
        let mut pause = Duration::from_millis(20);
        loop {
            let meta = self.meta(task_id).await?;
            if meta.state.is_ready() || tokio::time::Instant::now() >= deadline {
                return Ok(meta);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }
}
