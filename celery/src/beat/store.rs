//! Where a beat keeps its lease and the runs it recorded: together, so the instance holding
//! the lease is the only one that can record, and a new leader reads where the last one
//! stopped. Recording checks the lease in the same step (a Lua script on Redis, a
//! transaction on SQLite, an update matching only the holder on MongoDB, the lease's own
//! connection on RabbitMQ, a lock in memory): a beat that lost its lease (paused,
//! partitioned) cannot record a run, so it cannot send one, unlike RedBeat's lock (RedBeat
//! #127, #208).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kombu_core::{BrokerUrl, Error, ErrorKind, Result};
use parking_lot::Mutex;

/// The latest run of an entry: its scheduled time and whether it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// When it was due.
    pub scheduled: DateTime<Utc>,
    /// Whether it was sent (`false`: recorded, then the beat stopped before it was sent: it
    /// is sent, with the same task id, when a beat resumes).
    pub sent: bool,
}

impl Run {
    pub(crate) fn to_value(self) -> serde_json::Value {
        serde_json::json!({"scheduled": self.scheduled.to_rfc3339(), "sent": self.sent})
    }

    pub(crate) fn from_value(entry: &str, value: &serde_json::Value) -> Result<Run> {
        let bad = || {
            Error::new(
                ErrorKind::Codec,
                format!("beat state: the run of {entry:?}: {value}"),
            )
        };
        let scheduled = value["scheduled"]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .ok_or_else(bad)?
            .with_timezone(&Utc);
        let sent = value["sent"].as_bool().ok_or_else(bad)?;
        Ok(Run { scheduled, sent })
    }
}

/// The error of a record refused because the lease is held by another instance now.
pub fn lease_lost(name: &str) -> Error {
    Error::new(
        ErrorKind::PreconditionFailed,
        format!("beat {name:?}: the lease is held by another instance; this one stops sending"),
    )
}

/// A beat's lease and runs.
#[async_trait]
pub trait BeatStore: Send + Sync + std::fmt::Debug {
    /// Takes the lease for `owner` for `ttl`, or renews it if `owner` holds it; whether
    /// `owner` holds it now.
    async fn lease(&self, owner: &str, ttl: Duration) -> Result<bool>;
    /// Gives the lease up, if `owner` holds it.
    async fn release(&self, owner: &str) -> Result<()>;
    /// The runs recorded so far, by entry name.
    async fn runs(&self) -> Result<HashMap<String, Run>>;
    /// Records `run` of `entry` if `owner` holds the lease ([`lease_lost`] if not).
    async fn record(&self, owner: &str, entry: &str, run: Run) -> Result<()>;
}

/// A lease holder and until when.
type Holder = Option<(String, std::time::Instant)>;

/// In this process only (tests, a single beat that may forget on restart).
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<(Holder, HashMap<String, Run>)>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

#[async_trait]
impl BeatStore for MemoryStore {
    async fn lease(&self, owner: &str, ttl: Duration) -> Result<bool> {
        let mut state = self.state.lock();
        let now = std::time::Instant::now();
        let free = match &state.0 {
            None => true,
            Some((holder, until)) => holder == owner || *until <= now,
        };
        if free {
            state.0 = Some((owner.to_owned(), now + ttl));
        }
        Ok(free)
    }

    async fn release(&self, owner: &str) -> Result<()> {
        let mut state = self.state.lock();
        if state.0.as_ref().is_some_and(|(holder, _)| holder == owner) {
            state.0 = None;
        }
        Ok(())
    }

    async fn runs(&self) -> Result<HashMap<String, Run>> {
        Ok(self.state.lock().1.clone())
    }

    async fn record(&self, owner: &str, entry: &str, run: Run) -> Result<()> {
        let mut state = self.state.lock();
        let held = state
            .0
            .as_ref()
            .is_some_and(|(holder, until)| holder == owner && *until > std::time::Instant::now());
        if !held {
            return Err(lease_lost("memory"));
        }
        state.1.insert(entry.to_owned(), run);
        Ok(())
    }
}

/// In a SQLite file (the default for one machine: instances on it share the file's lease).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    path: PathBuf,
    name: String,
    conn: Arc<std::sync::Mutex<rusqlite::Connection>>,
}

fn sql_error(what: &str) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| Error::new(ErrorKind::Connection, format!("beat state: {what}")).with_source(e)
}

impl SqliteStore {
    /// Opens (or creates) the state file `path` for the schedule `name`.
    pub fn open(path: impl Into<PathBuf>, name: &str) -> Result<SqliteStore> {
        let path = path.into();
        let conn = rusqlite::Connection::open(&path).map_err(|e| {
            Error::new(
                ErrorKind::Connection,
                format!("beat state file {}", path.display()),
            )
            .with_source(e)
        })?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(sql_error("busy timeout"))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE IF NOT EXISTS kombu_rs_beat_lease (
                 name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL);
             CREATE TABLE IF NOT EXISTS kombu_rs_beat_run (
                 name TEXT NOT NULL, entry TEXT NOT NULL, scheduled TEXT NOT NULL,
                 sent INTEGER NOT NULL, PRIMARY KEY (name, entry));",
        )
        .map_err(sql_error("create tables"))?;
        Ok(SqliteStore {
            path,
            name: name.to_owned(),
            conn: Arc::new(std::sync::Mutex::new(conn)),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection, &str) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn
                .lock()
                .map_err(|_| Error::new(ErrorKind::Connection, "beat state: a poisoned lock"))?;
            f(&mut conn, &name)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Connection, format!("beat state: {e}")))?
    }
}

/// Whether `owner` holds `name`'s lease now (inside a transaction).
fn holds(tx: &rusqlite::Transaction<'_>, name: &str, owner: &str) -> Result<bool> {
    let row: Option<(String, f64)> = tx
        .query_row(
            "SELECT owner, expires FROM kombu_rs_beat_lease WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })
        .map_err(sql_error("read the lease"))?;
    Ok(row.is_some_and(|(holder, until)| holder == owner && until > crate::events::now()))
}

#[async_trait]
impl BeatStore for SqliteStore {
    async fn lease(&self, owner: &str, ttl: Duration) -> Result<bool> {
        let owner = owner.to_owned();
        self.with(move |conn, name| {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(sql_error("begin"))?;
            let now = crate::events::now();
            let taken = tx
                .execute(
                    "INSERT INTO kombu_rs_beat_lease (name, owner, expires) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET owner = ?2, expires = ?3
                     WHERE kombu_rs_beat_lease.owner = ?2 OR kombu_rs_beat_lease.expires <= ?4",
                    rusqlite::params![name, owner, now + ttl.as_secs_f64(), now],
                )
                .map_err(sql_error("take the lease"))?;
            tx.commit().map_err(sql_error("commit"))?;
            Ok(taken > 0)
        })
        .await
    }

    async fn release(&self, owner: &str) -> Result<()> {
        let owner = owner.to_owned();
        self.with(move |conn, name| {
            conn.execute(
                "DELETE FROM kombu_rs_beat_lease WHERE name = ?1 AND owner = ?2",
                [name, owner.as_str()],
            )
            .map_err(sql_error("release the lease"))?;
            Ok(())
        })
        .await
    }

    async fn runs(&self) -> Result<HashMap<String, Run>> {
        self.with(|conn, name| {
            let mut stmt = conn
                .prepare("SELECT entry, scheduled, sent FROM kombu_rs_beat_run WHERE name = ?1")
                .map_err(sql_error("read runs"))?;
            let rows = stmt
                .query_map([name], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(sql_error("read runs"))?;
            let mut out = HashMap::new();
            for row in rows {
                let (entry, scheduled, sent) = row.map_err(sql_error("read a run"))?;
                let scheduled = DateTime::parse_from_rfc3339(&scheduled)
                    .map_err(|e| {
                        Error::new(ErrorKind::Codec, format!("beat state: run of {entry:?}"))
                            .with_source(e)
                    })?
                    .with_timezone(&Utc);
                out.insert(
                    entry,
                    Run {
                        scheduled,
                        sent: sent != 0,
                    },
                );
            }
            Ok(out)
        })
        .await
    }

    async fn record(&self, owner: &str, entry: &str, run: Run) -> Result<()> {
        let (owner, entry) = (owner.to_owned(), entry.to_owned());
        let path = self.path.display().to_string();
        self.with(move |conn, name| {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(sql_error("begin"))?;
            if !holds(&tx, name, &owner)? {
                return Err(lease_lost(&format!("{name} in {path}")));
            }
            tx.execute(
                "INSERT INTO kombu_rs_beat_run (name, entry, scheduled, sent) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name, entry) DO UPDATE SET scheduled = ?3, sent = ?4",
                rusqlite::params![name, entry, run.scheduled.to_rfc3339(), i64::from(run.sent)],
            )
            .map_err(sql_error("record a run"))?;
            tx.commit().map_err(sql_error("commit"))?;
            Ok(())
        })
        .await
    }
}

/// Takes the lease if free or ours (renewing it): 1 if held.
const LEASE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Records a run only while the lease is ours: 1 if recorded.
const RECORD: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  return 1
end
return 0
";

/// Releases the lease if ours.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// On Redis (the broker's, say): the lease a key with a time to live, the runs a hash beside
/// it (`kombu_rs.beat.<name>.lease`, `kombu_rs.beat.<name>.runs`, under the URL's
/// `global_keyprefix`). Several instances on any machines share it.
#[derive(Clone)]
pub struct RedisStore {
    conn: redis::aio::ConnectionManager,
    lease_key: String,
    runs_key: String,
    /// The scripts, hashed once.
    lease: redis::Script,
    record: redis::Script,
    release: redis::Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("lease_key", &self.lease_key)
            .finish_non_exhaustive()
    }
}

fn redis_error(what: &str) -> impl Fn(redis::RedisError) -> Error + '_ {
    move |e| {
        Error::new(
            ErrorKind::Connection,
            format!("beat state on redis: {what}"),
        )
        .with_source(e)
    }
}

impl RedisStore {
    /// Connects to `url` (`redis://...`, with `global_keyprefix` if any) for the schedule
    /// `name`.
    pub async fn connect(url: &str, name: &str) -> Result<RedisStore> {
        let parsed = BrokerUrl::parse(url)?;
        let prefix = parsed.query("global_keyprefix").unwrap_or_default();
        let plain = url.split_once('?').map_or(url, |(base, _)| base);
        let client = redis::Client::open(plain).map_err(|e| {
            Error::new(
                ErrorKind::InvalidUrl,
                format!("beat state {}", parsed.masked()),
            )
            .with_source(e)
        })?;
        let conn = redis::aio::ConnectionManager::new(client)
            .await
            .map_err(redis_error("connect"))?;
        Ok(RedisStore {
            conn,
            lease_key: format!("{prefix}kombu_rs.beat.{name}.lease"),
            runs_key: format!("{prefix}kombu_rs.beat.{name}.runs"),
            lease: redis::Script::new(LEASE),
            record: redis::Script::new(RECORD),
            release: redis::Script::new(RELEASE),
        })
    }
}

#[async_trait]
impl BeatStore for RedisStore {
    async fn lease(&self, owner: &str, ttl: Duration) -> Result<bool> {
        let mut conn = self.conn.clone();
        let held: i64 = self
            .lease
            .key(&self.lease_key)
            .arg(owner)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error("take the lease"))?;
        Ok(held == 1)
    }

    async fn release(&self, owner: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .release
            .key(&self.lease_key)
            .arg(owner)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error("release the lease"))?;
        Ok(())
    }

    async fn runs(&self) -> Result<HashMap<String, Run>> {
        let mut conn = self.conn.clone();
        let raw: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&self.runs_key)
            .query_async(&mut conn)
            .await
            .map_err(redis_error("read runs"))?;
        raw.into_iter()
            .map(|(entry, json)| {
                let value: serde_json::Value = serde_json::from_str(&json).map_err(|e| {
                    Error::new(
                        ErrorKind::Codec,
                        format!("beat state: the run of {entry:?}"),
                    )
                    .with_source(e)
                })?;
                let run = Run::from_value(&entry, &value)?;
                Ok((entry, run))
            })
            .collect()
    }

    async fn record(&self, owner: &str, entry: &str, run: Run) -> Result<()> {
        let json = run.to_value().to_string();
        let mut conn = self.conn.clone();
        let recorded: i64 = self
            .record
            .key(&self.lease_key)
            .key(&self.runs_key)
            .arg(owner)
            .arg(entry)
            .arg(json)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error("record a run"))?;
        match recorded {
            1 => Ok(()),
            _ => Err(lease_lost(&self.lease_key)),
        }
    }
}
