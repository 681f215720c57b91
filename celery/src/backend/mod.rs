//! Result backends: where workers store task results in Celery's format and clients read them.
//! [`RedisResultBackend`] is Celery's `redis://` backend, [`RpcResultBackend`] its `rpc://`
//! one (results as messages to the caller's reply queue), [`SqlResultBackend`] its SQL one on
//! SQLite (`db+sqlite://`); [`MemoryResultBackend`] keeps them in the process (tests).

use std::time::Duration;

use async_trait::async_trait;
use kombu_core::Result;

use crate::result::ResultMeta;

mod memory;
mod redis;
mod redis_watch;
mod rpc;
mod sql;

pub use memory::MemoryResultBackend;
pub use redis::RedisResultBackend;
pub use rpc::RpcResultBackend;
pub use sql::SqlResultBackend;

/// `timeout` from now; a wait without a bound (`Duration::MAX`) ends in a year.
pub(crate) fn deadline(timeout: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 86_400))
}

/// Celery's `result_expires` default: results live a day.
pub const DEFAULT_RESULT_EXPIRES: Duration = Duration::from_secs(86_400);

/// A store of task results in Celery's format.
#[async_trait]
pub trait ResultBackend: Send + Sync + std::fmt::Debug {
    /// The result of `task_id` now (PENDING when the backend knows nothing of it).
    async fn meta(&self, task_id: &str) -> Result<ResultMeta>;

    /// Stores `meta` (a stored SUCCESS is never overwritten, as Celery's backends do), and
    /// tells the clients waiting for it.
    async fn store(&self, meta: &ResultMeta) -> Result<()>;

    /// Waits up to `timeout` for `task_id` to be ready (SUCCESS, FAILURE, REVOKED); returns its
    /// result then, or as it is when the time is up.
    async fn wait(&self, task_id: &str, timeout: Duration) -> Result<ResultMeta>;

    /// How chords complete with this backend (default [`ChordSupport::Unlock`]).
    fn chord_support(&self) -> ChordSupport {
        ChordSupport::Unlock
    }

    /// Records that the chord of group `group_id` has `size` header tasks (Celery's
    /// `set_chord_size`, sent before the header's last task); nothing where chords are not
    /// joined in the backend.
    async fn set_chord_size(&self, group_id: &str, size: usize) -> Result<()> {
        let _ = (group_id, size);
        Ok(())
    }

    /// Counts the result `meta` of the header task at `group_index` of chord `group_id`
    /// (Celery's `on_chord_part_return`); once every header task is in, the one call that
    /// claims the chord gets its results to send the body with, then calls
    /// [`chord_done`](Self::chord_done). Where chords are not joined in the backend: `None`.
    async fn chord_part_return(
        &self,
        group_id: &str,
        group_index: Option<u32>,
        meta: &ResultMeta,
    ) -> Result<Option<ChordReady>> {
        let _ = (group_id, group_index, meta);
        Ok(None)
    }

    /// Renews the claim on `ready` just before its body is sent (`false`: the claim was
    /// lost to another worker, which sends the body instead).
    async fn chord_claim(&self, ready: &ChordReady) -> Result<bool> {
        let _ = ready;
        Ok(true)
    }

    /// The body of a claimed chord was sent: its counters go, and late copies of its header
    /// tasks no longer count.
    async fn chord_done(&self, ready: &ChordReady) -> Result<()> {
        let _ = ready;
        Ok(())
    }
}

/// How a result backend completes chords (Celery's `chord`: a group whose results, once all
/// in, are the first argument of a body task).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChordSupport {
    /// The backend counts the header's results as they are stored (Celery's Redis backend:
    /// `celery-taskset-meta-<group>.j` and its siblings); the worker storing the last sends
    /// the body.
    Join,
    /// A `celery.chord_unlock` task polls the header's results until all are ready, then
    /// sends the body (Celery's fallback, used with its SQL backend).
    Unlock,
    /// No chords (Celery's `rpc://`).
    Unsupported,
}

/// A chord whose header tasks are all done, claimed by one worker to send its body.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ChordReady {
    /// The chord's group id.
    pub group_id: String,
    /// The header tasks' results, in header order.
    pub parts: Vec<ResultMeta>,
    /// What proves the claim (a token of the worker's).
    pub claim: String,
}
