//! Results kept in the process, for tests and for a worker and its clients in one process.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use kombu_core::Result;
use tokio::sync::Notify;

use super::ResultBackend;
use crate::result::{ResultMeta, State};

/// Task results in memory (nothing expires); clones of an `Arc` of it share them. Waiting is
/// woken by each store, never polled.
#[derive(Debug, Default)]
pub struct MemoryResultBackend {
    results: Mutex<HashMap<String, ResultMeta>>,
    stored: Notify,
}

impl MemoryResultBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The latest state stored for `task_id` (PENDING when none).
    fn latest(&self, task_id: &str) -> ResultMeta {
        self.results
            .lock()
            .ok()
            .and_then(|results| results.get(task_id).cloned())
            .unwrap_or_else(|| ResultMeta::pending(task_id))
    }
}

#[async_trait]
impl ResultBackend for MemoryResultBackend {
    async fn meta(&self, task_id: &str) -> Result<ResultMeta> {
        Ok(self.latest(task_id))
    }

    async fn store(&self, meta: &ResultMeta) -> Result<()> {
        if let Ok(mut results) = self.results.lock() {
            let done = results
                .get(&meta.task_id)
                .is_some_and(|m| m.state == State::Success);
            if !done {
                results.insert(meta.task_id.clone(), meta.clone());
            }
        }
        self.stored.notify_waiters();
        Ok(())
    }

    async fn wait(&self, task_id: &str, timeout: Duration) -> Result<ResultMeta> {
        let deadline = super::deadline(timeout);
        loop {
            let stored = self.stored.notified();
            tokio::pin!(stored);
            stored.as_mut().enable();
            let meta = self.latest(task_id);
            if meta.state.is_ready() {
                return Ok(meta);
            }
            if tokio::time::timeout_at(deadline, stored).await.is_err() {
                return Ok(self.latest(task_id));
            }
        }
    }
}
