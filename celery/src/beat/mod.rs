//! A Celery beat: sends tasks on interval, crontab and solar schedules, time-zone aware,
//! without the faults `celery beat` users report (`celery-monitoring.md` §4.8):
//!
//! - **Each run is recorded before it is sent**, under a task id derived from the entry and
//!   the run's scheduled time (a UUID v5): a beat that stops between the record and the send
//!   sends that run, with the same id, when it (or another) resumes; a run recorded as sent
//!   is never sent again. Restarts neither skip a run nor repeat a finished one (celery
//!   #2746, django-celery-beat #459); missed runs follow the entry's [`CatchUp`].
//! - **One leader**: beats of one schedule name share a lease in their [`BeatStore`]; only the
//!   holder records and sends, and a record checks the lease in the same step, so a beat that
//!   lost it (paused, cut off) cannot record a run, nor so start its send (RedBeat #127,
//!   #208); a send is given half the lease at most. Runs are sent at least once: a run
//!   resent after a stop carries the same task id. The runs live with the lease,
//!   so a new leader continues where the old one stopped. [`SqliteStore`] (one machine, or a
//!   SQLite broker's file), [`RedisStore`] (shared through Redis), [`AmqpStore`] (shared
//!   through RabbitMQ: the lease an exclusive queue), `MongoStore` (shared through MongoDB;
//!   feature `mongodb`), [`MemoryStore`] (one process).
//! - **Daylight saving**: see [`Crontab`]: a daily 02:30 job runs once on the night 02:00
//!   becomes 03:00, an hourly job runs every hour once across the night 03:00 becomes 02:00
//!   (celery #1604, #10107).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kombu_core::Result<()> {
//! use std::sync::Arc;
//! use chrono::{TimeZone, Utc};
//! use kombu_celery::Celery;
//! use kombu_celery::beat::{Beat, Entry, MemoryStore, ScheduleFile};
//!
//! # kombu_core::transport::memory::register();
//! let conn = kombu_core::Connection::open("memory://doc-beat").await?;
//! let file = ScheduleFile::parse(r#"
//!     [[entry]]
//!     name = "tick"
//!     task = "tasks.tick"
//!     every = "10s"
//! "#)?;
//! let mut beat = Beat::new(&file.name, file.entries, Arc::new(MemoryStore::new()), Celery::new(&conn));
//! let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("a time");
//! beat.tick(start).await?; // leader now; the entry starts counting
//! beat.tick(start + chrono::Duration::seconds(10)).await?; // due: sent
//! assert_eq!(conn.queue_size("celery").await?, 1);
//! # Ok(()) }
//! ```

mod amqp_store;
mod crontab;
mod entry;
#[cfg(feature = "mongodb")]
mod mongo_store;
mod schedule;
mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use kombu_core::{ErrorKind, Result};

pub use amqp_store::AmqpStore;
pub use crontab::Crontab;
pub use entry::{CatchUp, Entry, ScheduleFile};
#[cfg(feature = "mongodb")]
pub use mongo_store::MongoStore;
pub use schedule::{Schedule, Solar, parse_every};
pub use store::{BeatStore, MemoryStore, RedisStore, Run, SqliteStore, lease_lost};

use crate::{Celery, TaskOptions};

/// With [`CatchUp::Skip`], a run due longer ago than this is missed (recorded, not sent).
pub const GRACE: Duration = Duration::from_secs(60);
/// How long a beat's lease lasts unless renewed (it renews at every tick, at least every
/// third of it).
pub const LEASE_TTL: Duration = Duration::from_secs(30);
/// The longest a running beat sleeps between ticks (so a clock that jumps is noticed).
const MAX_SLEEP: Duration = Duration::from_secs(10);
/// The namespace of run task ids.
const RUN_IDS: uuid::Uuid = uuid::Uuid::from_u128(0x6b0a_5f3e_2c1d_4e8f_9a7b_3c2d_1e0f_a9b8);

/// The task id of `entry`'s run due at `scheduled`, in schedule `name`: the same on every
/// instance and every retry, so a run sent twice is one task id (a worker may drop the
/// second by id).
pub fn run_id(name: &str, entry: &str, scheduled: DateTime<Utc>) -> String {
    let key = format!("{name}/{entry}/{}", scheduled.to_rfc3339());
    uuid::Uuid::new_v5(&RUN_IDS, key.as_bytes()).to_string()
}

/// Sends a run's task.
#[async_trait]
pub trait Sender: Send + Sync {
    /// Sends `entry`'s task with `task_id`, for the run due at `scheduled`.
    async fn send(&self, entry: &Entry, task_id: &str, scheduled: DateTime<Utc>) -> Result<()>;
}

#[async_trait]
impl Sender for Celery {
    async fn send(&self, entry: &Entry, task_id: &str, scheduled: DateTime<Utc>) -> Result<()> {
        let mut options = TaskOptions::new().task_id(task_id);
        if let Some(queue) = &entry.queue {
            options = options.queue(queue.as_str());
        }
        if let Some(at) = entry
            .expires
            .and_then(|expires| std::time::SystemTime::from(scheduled).checked_add(expires))
        {
            options = options.expires_at(at);
        }
        self.send_task(
            &entry.task,
            serde_json::Value::Array(entry.args.clone()),
            serde_json::Value::Object(entry.kwargs.clone()),
            options,
        )
        .await
        .map(|_| ())
    }
}

/// A beat: its entries, its store, what sends; see the [module docs](self).
pub struct Beat {
    name: String,
    entries: Vec<Entry>,
    store: Arc<dyn BeatStore>,
    sender: Arc<dyn Sender>,
    owner: String,
    lease_ttl: Duration,
    /// The runs as recorded, while leader.
    runs: Option<HashMap<String, Run>>,
    /// Where entries never run start counting from.
    bases: HashMap<String, DateTime<Utc>>,
}

impl std::fmt::Debug for Beat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Beat")
            .field("name", &self.name)
            .field("owner", &self.owner)
            .field("entries", &self.entries.len())
            .field("leader", &self.runs.is_some())
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Beat {
    /// A beat of schedule `name` running `entries`, its lease and runs in `store`, sending
    /// through `sender` (a [`Celery`] client).
    pub fn new(
        name: &str,
        entries: Vec<Entry>,
        store: Arc<dyn BeatStore>,
        sender: impl Sender + 'static,
    ) -> Beat {
        Beat {
            name: name.to_owned(),
            entries,
            store,
            sender: Arc::new(sender),
            owner: format!("{}@{}", uuid::Uuid::new_v4(), crate::client::hostname()),
            lease_ttl: LEASE_TTL,
            runs: None,
            bases: HashMap::new(),
        }
    }

    /// How long its lease lasts unless renewed (default [`LEASE_TTL`]).
    pub fn lease_ttl(mut self, ttl: Duration) -> Beat {
        self.lease_ttl = ttl.clamp(
            Duration::from_millis(100),
            Duration::from_secs(366 * 86_400),
        );
        self
    }

    /// Its id in the lease.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Whether it held the lease at its last tick.
    pub fn is_leader(&self) -> bool {
        self.runs.is_some()
    }

    /// Takes or renews the lease and, as leader, sends what is due at `now`; returns when to
    /// tick again. Separate from the clock so tests can drive it through any night.
    pub async fn tick(&mut self, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
        let renew =
            chrono::Duration::from_std(self.lease_ttl / 3).unwrap_or(chrono::Duration::seconds(10));
        let held = match self.store.lease(&self.owner, self.lease_ttl).await {
            Ok(held) => held,
            Err(error) => {
                // Whether it is still ours is unknown: read the runs again when it is.
                self.runs = None;
                return Err(error);
            }
        };
        if !held {
            if self.runs.take().is_some() {
                tracing::warn!(beat = %self.name, "lost the lease: another instance sends now");
            }
            return Ok(now + renew);
        }
        // The runs are read at every tick: another instance may have led in between (this
        // one paused past its lease, then took it back), and its runs must not be sent again.
        let runs = match self.store.runs().await {
            Ok(runs) => runs,
            Err(error) => {
                self.runs = None;
                return Err(error);
            }
        };
        if self.runs.is_none() {
            tracing::info!(beat = %self.name, owner = %self.owner, recorded = runs.len(), "leader: sending");
        }
        self.runs = Some(runs);
        let mut wake = now + renew;
        let mut failed = None;
        for at in 0..self.entries.len() {
            match self.due(at, now).await {
                Ok(Some(next)) => wake = wake.min(next),
                Ok(None) => {}
                Err(error) if error.kind() == ErrorKind::PreconditionFailed => {
                    self.runs = None;
                    return Err(error);
                }
                // One entry that cannot be sent does not hold the others back.
                Err(error) => {
                    tracing::warn!(
                        error = %format_args!("{error:#}"),
                        entry = %self.entries[at].name,
                        "an entry's run was not sent; it is tried again"
                    );
                    failed.get_or_insert(error);
                }
            }
        }
        match failed {
            Some(error) => Err(error),
            None => Ok(wake),
        }
    }

    /// Sends entry `at`'s unsent or due run; its next run after `now`.
    async fn due(&mut self, at: usize, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
        let entry = self.entries[at].clone();
        let recorded = self.runs.as_ref().and_then(|r| r.get(&entry.name)).copied();
        if let Some(run) = recorded.filter(|r| !r.sent) {
            let stale = entry.catch_up == CatchUp::Skip
                && (now - run.scheduled).to_std().unwrap_or_default() > GRACE;
            if stale {
                tracing::info!(entry = %entry.name, scheduled = %run.scheduled, "a run recorded before a stop is past (catch_up = skip)");
                self.record(
                    &entry,
                    Run {
                        scheduled: run.scheduled,
                        sent: true,
                    },
                )
                .await?;
            } else {
                // Recorded, not sent: a beat stopped in between. The same task id again.
                tracing::info!(entry = %entry.name, scheduled = %run.scheduled, "sending a run recorded before a stop");
                self.send(&entry, run.scheduled).await?;
            }
        }
        let base = match recorded {
            Some(run) => run.scheduled,
            // Whole seconds: runs fall on round times.
            None => *self
                .bases
                .entry(entry.name.clone())
                .or_insert_with(|| now.trunc_subsecs(0)),
        };
        let due = last_due(&entry, base, now);
        if let Some(due) = due {
            let go = match entry.catch_up {
                CatchUp::Once => true,
                CatchUp::Skip => (now - due).to_std().unwrap_or_default() <= GRACE,
            };
            // Recorded first: a stop after this sends it on resuming.
            self.record(
                &entry,
                Run {
                    scheduled: due,
                    sent: !go,
                },
            )
            .await?;
            if go {
                self.send(&entry, due).await?;
            } else {
                tracing::info!(entry = %entry.name, scheduled = %due, "missed run skipped (catch_up = skip)");
            }
        }
        Ok(entry
            .schedule
            .next_after(due.unwrap_or(base), entry.timezone))
    }

    async fn record(&mut self, entry: &Entry, run: Run) -> Result<()> {
        self.store.record(&self.owner, &entry.name, run).await?;
        if let Some(runs) = self.runs.as_mut() {
            runs.insert(entry.name.clone(), run);
        }
        Ok(())
    }

    async fn send(&mut self, entry: &Entry, scheduled: DateTime<Utc>) -> Result<()> {
        let id = run_id(&self.name, &entry.name, scheduled);
        // Within the lease: a send that outlasts it could overlap the next leader's resend.
        let sending = self.sender.send(entry, &id, scheduled);
        match tokio::time::timeout(self.lease_ttl / 2, sending).await {
            Ok(sent) => sent.map_err(|e| {
                e.context(format!(
                    "sending {} ({}) due {scheduled}",
                    entry.name, entry.task
                ))
            })?,
            Err(_) => {
                return Err(kombu_core::Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "sending {} due {scheduled}: no answer within half the lease",
                        entry.name
                    ),
                ));
            }
        }
        tracing::info!(entry = %entry.name, task = %entry.task, %id, %scheduled, "sent");
        self.record(
            entry,
            Run {
                scheduled,
                sent: true,
            },
        )
        .await
    }

    /// Ticks on the wall clock until `stop` resolves, then gives the lease up.
    pub async fn run_until(mut self, stop: impl std::future::Future<Output = ()>) -> Result<()> {
        tokio::pin!(stop);
        loop {
            let now = Utc::now();
            let wake = match self.tick(now).await {
                Ok(wake) => wake,
                Err(error) => {
                    tracing::warn!(error = %format_args!("{error:#}"), beat = %self.name, "a tick failed; trying again in a second");
                    now + chrono::Duration::seconds(1)
                }
            };
            let sleep = (wake - Utc::now())
                .to_std()
                .unwrap_or_default()
                .min(MAX_SLEEP);
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = &mut stop => break,
            }
        }
        self.store.release(&self.owner).await
    }

    /// [`run_until`](Self::run_until) SIGINT or SIGTERM.
    pub async fn run_until_signal(self) -> Result<()> {
        self.run_until(kombu_core::shutdown_signal()).await
    }
}

/// The latest run of `entry` due at or before `now` and after `base`.
fn last_due(entry: &Entry, base: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if let Schedule::Every(every) = &entry.schedule {
        let every = chrono::Duration::from_std(*every).ok()?;
        let steps = (now - base)
            .num_milliseconds()
            .checked_div(every.num_milliseconds())?;
        let steps = i32::try_from(steps).ok().filter(|s| *s >= 1)?;
        return every
            .checked_mul(steps)
            .and_then(|d| base.checked_add_signed(d));
    }
    entry
        .schedule
        .last_at_or_before(now, entry.timezone)
        .filter(|due| *due > base)
}

#[cfg(test)]
mod tests;
