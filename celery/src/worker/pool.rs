//! The worker's concurrency as remote control changes it: `pool_grow` / `pool_shrink`, and
//! an autoscaler between a minimum and a maximum (`--autoscale`, the `autoscale` command)
//! that grows with the tasks the worker holds and shrinks back after [`KEEPALIVE`] with
//! fewer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Value as Json, json};
use tokio::time::Instant;

use super::Shared;
use super::state::Phase;

/// How long the autoscaler keeps slots it no longer needs (Celery's `AUTOSCALE_KEEPALIVE`).
pub const KEEPALIVE: Duration = Duration::from_secs(30);
/// The most slots the pool takes (a bound on what remote control may ask for).
pub(crate) const MAX_SIZE: usize = 10_000;
/// How often the autoscaler looks.
const TICK: Duration = Duration::from_secs(1);

/// The concurrency now and the autoscaler's range.
#[derive(Debug)]
pub(crate) struct Pool {
    size: AtomicUsize,
    /// The concurrency the worker was built with.
    pub(crate) initial: usize,
    /// `(max, min)` when autoscaling.
    range: Mutex<Option<(usize, usize)>>,
    /// When the autoscaler last needed every slot it has.
    busy_at: Mutex<Instant>,
}

impl Pool {
    /// A pool of `concurrency` slots, autoscaled within `range` (`(max, min)`: it starts at
    /// `min`) when given.
    pub(crate) fn new(concurrency: usize, range: Option<(usize, usize)>) -> Pool {
        let size = range.map_or(concurrency, |(_, min)| min.max(1));
        Pool {
            size: AtomicUsize::new(size),
            initial: concurrency,
            range: Mutex::new(range),
            busy_at: Mutex::new(Instant::now()),
        }
    }

    /// Tasks that may run at once now.
    pub(crate) fn size(&self) -> usize {
        self.size.load(Ordering::Relaxed)
    }

    /// `pool_grow` / `pool_shrink` by `n` (never below one slot); refused while autoscaling.
    pub(crate) fn resize(&self, shared: &Arc<Shared>, grow: bool, n: usize) -> Result<(), ()> {
        if self.range.lock().is_some() {
            return Err(());
        }
        let now = self.size();
        let target = match grow {
            true => now.saturating_add(n).min(MAX_SIZE),
            false => now.saturating_sub(n).max(1),
        };
        self.apply(shared, target);
        Ok(())
    }

    /// The `autoscale` command: a new range, returned; `None` when not autoscaling.
    pub(crate) fn autoscale(
        &self,
        shared: &Arc<Shared>,
        max: Option<usize>,
        min: Option<usize>,
    ) -> Option<(usize, usize)> {
        let (max, min) = {
            let mut range = self.range.lock();
            let (old_max, old_min) = (*range)?;
            let max = max.unwrap_or(old_max).clamp(1, MAX_SIZE);
            let min = min.unwrap_or(old_min).min(max);
            *range = Some((max, min));
            (max, min)
        };
        self.apply(shared, self.size().clamp(min.max(1), max));
        Some((max, min))
    }

    /// The autoscaler's part of `stats`, when autoscaling.
    pub(crate) fn stats(&self, shared: &Shared) -> Option<Json> {
        let (max, min) = (*self.range.lock())?;
        Some(json!({
            "max": max,
            "min": min,
            "current": self.size(),
            "qty": held(shared),
        }))
    }

    /// Moves the concurrency to `target` slots: more permits at once, fewer as running
    /// tasks give theirs back.
    fn apply(&self, shared: &Arc<Shared>, target: usize) {
        let target = target.clamp(1, MAX_SIZE);
        let now = self.size.swap(target, Ordering::Relaxed);
        if target > now {
            shared.permits.add_permits(target - now);
        } else if target < now {
            let take = u32::try_from(now - target).unwrap_or(u32::MAX);
            let shared = shared.clone();
            tokio::spawn(async move {
                if let Ok(permits) = shared.permits.acquire_many(take).await {
                    permits.forget();
                }
            });
        }
    }
}

/// Tasks the worker holds: running and waiting for a slot.
fn held(shared: &Shared) -> usize {
    shared
        .requests
        .count(|p| matches!(p, Phase::Active { .. } | Phase::Reserved))
}

/// Grows the pool to the tasks held (up to the maximum) and, after [`KEEPALIVE`] with fewer,
/// shrinks it back (down to the minimum), until the worker stops.
pub(crate) async fn autoscaler(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            () = super::execute::stopped(shared.stop.clone()) => return,
            _ = tick.tick() => {}
        }
        let pool = &shared.pool;
        let Some((max, min)) = *pool.range.lock() else {
            return;
        };
        let qty = held(&shared);
        let size = pool.size();
        if qty >= size {
            *pool.busy_at.lock() = Instant::now();
            if qty > size && size < max {
                tracing::info!(from = size, to = qty.min(max), "autoscale: growing");
                pool.apply(&shared, qty.min(max));
            }
        } else if size > min && pool.busy_at.lock().elapsed() >= KEEPALIVE {
            let target = qty.max(min).max(1);
            tracing::info!(from = size, to = target, "autoscale: shrinking");
            pool.apply(&shared, target);
        }
    }
}
