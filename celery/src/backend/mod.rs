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
mod rpc;
mod sql;

pub use memory::MemoryResultBackend;
pub use redis::RedisResultBackend;
pub use rpc::RpcResultBackend;
pub use sql::SqlResultBackend;

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
}
