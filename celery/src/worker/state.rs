//! What a running worker knows about its tasks, for remote control: the requests it holds
//! (reserved, waiting for their eta, running), the ids it was told to revoke, and the tasks
//! it took per name.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Value as Json, json};
use tokio::sync::watch;

use crate::request::TaskRequest;

/// Celery's `REVOKES_MAX`: revoked ids kept at most.
pub(crate) const REVOKES_MAX: usize = 50_000;
/// Celery's `REVOKE_EXPIRES`: how long a revoked id is kept.
pub(crate) const REVOKE_EXPIRES: Duration = Duration::from_secs(10_800);

/// Where a held request stands.
#[derive(Debug, Clone)]
pub(crate) enum Phase {
    /// Taken, waiting for a slot or its rate limit (`inspect reserved`).
    Reserved,
    /// Waiting in the worker for its eta (`inspect scheduled`).
    Scheduled { eta: String },
    /// Running since (`inspect active`).
    Active { time_start: f64, acknowledged: bool },
}

/// One request the worker holds.
#[derive(Debug)]
struct Held {
    request: Arc<TaskRequest>,
    delivery_info: Json,
    phase: Phase,
    /// Set to the signal number when the task is to be terminated.
    terminate: watch::Sender<Option<i32>>,
}

/// The requests a worker holds, by a number of their own (a task id may come twice).
#[derive(Debug, Default)]
pub(crate) struct Requests {
    next: AtomicU64,
    held: Mutex<HashMap<u64, Held>>,
}

/// A request's place in [`Requests`]; dropping it forgets the request.
pub(crate) struct Tracked {
    requests: Arc<Requests>,
    key: u64,
    /// Rings with the signal when the task is terminated.
    pub(crate) terminate: watch::Receiver<Option<i32>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.requests.held.lock().remove(&self.key);
    }
}

impl Tracked {
    /// Moves the request to `phase`.
    pub(crate) fn set(&self, phase: Phase) {
        if let Some(held) = self.requests.held.lock().get_mut(&self.key) {
            held.phase = phase;
        }
    }
}

impl Requests {
    /// Holds `request` (reserved) until the returned [`Tracked`] is dropped.
    pub(crate) fn track(
        self: &Arc<Self>,
        request: Arc<TaskRequest>,
        delivery_info: Json,
    ) -> Tracked {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let (terminate, watch) = watch::channel(None);
        self.held.lock().insert(
            key,
            Held {
                request,
                delivery_info,
                phase: Phase::Reserved,
                terminate,
            },
        );
        Tracked {
            requests: self.clone(),
            key,
            terminate: watch,
        }
    }

    /// How many run now.
    pub(crate) fn active(&self) -> usize {
        self.count(|p| matches!(p, Phase::Active { .. }))
    }

    /// The ids of the running requests.
    pub(crate) fn active_ids(&self) -> HashSet<String> {
        self.held
            .lock()
            .values()
            .filter(|h| matches!(h.phase, Phase::Active { .. }))
            .map(|h| h.request.id.clone())
            .collect()
    }

    /// How many `pick` selects.
    pub(crate) fn count(&self, pick: impl Fn(&Phase) -> bool) -> usize {
        self.held.lock().values().filter(|h| pick(&h.phase)).count()
    }

    /// The request infos (Celery's `Request.info`) of those `pick` selects, in the order they
    /// came.
    pub(crate) fn infos(
        &self,
        hostname: &str,
        safe: bool,
        pick: impl Fn(&Phase) -> bool,
    ) -> Vec<(Phase, Json)> {
        let held = self.held.lock();
        let mut keys: Vec<&u64> = held.keys().collect();
        keys.sort();
        keys.into_iter()
            .filter_map(|key| held.get(key))
            .filter(|h| pick(&h.phase))
            .map(|h| (h.phase.clone(), info(h, hostname, safe)))
            .collect()
    }

    /// `{id: [state, info]}` for the held requests among `ids` (Celery's `query_task`).
    pub(crate) fn query(
        &self,
        ids: &HashSet<String>,
        hostname: &str,
    ) -> serde_json::Map<String, Json> {
        let held = self.held.lock();
        let mut out = serde_json::Map::new();
        for h in held.values().filter(|h| ids.contains(&h.request.id)) {
            let state = match h.phase {
                Phase::Active { .. } => "active",
                Phase::Reserved => "reserved",
                Phase::Scheduled { .. } => "scheduled",
            };
            out.insert(
                h.request.id.clone(),
                json!([state, info(h, hostname, false)]),
            );
        }
        out
    }

    /// Signals the requests among `ids` to terminate (a running one stops; one not started
    /// yet stops as it starts, as Celery's terminate-on-accept); the ids it signalled.
    pub(crate) fn terminate(&self, ids: &HashSet<String>, signal: i32) -> Vec<String> {
        let held = self.held.lock();
        let mut hit = Vec::new();
        for h in held.values() {
            if ids.contains(&h.request.id) {
                h.terminate.send_replace(Some(signal));
                hit.push(h.request.id.clone());
            }
        }
        hit
    }
}

/// Celery's `Request.info(safe)`.
fn info(held: &Held, hostname: &str, safe: bool) -> Json {
    let request = &held.request;
    let (args, kwargs) = match safe {
        true => (
            json!(crate::repr::args_repr(&request.args)),
            json!(crate::repr::kwargs_repr(&request.kwargs)),
        ),
        false => (json!(request.args), json!(request.kwargs)),
    };
    let (time_start, acknowledged) = match held.phase {
        Phase::Active {
            time_start,
            acknowledged,
        } => (json!(time_start), acknowledged),
        _ => (Json::Null, false),
    };
    json!({
        "id": request.id,
        "name": request.task,
        "args": args,
        "kwargs": kwargs,
        "type": request.task,
        "hostname": hostname,
        "time_start": time_start,
        "acknowledged": acknowledged,
        "delivery_info": held.delivery_info,
        "worker_pid": match held.phase {
            Phase::Active { .. } => json!(std::process::id()),
            _ => Json::Null,
        },
    })
}

/// The ids a worker was told to revoke: at most [`REVOKES_MAX`], each for
/// [`REVOKE_EXPIRES`] (Celery's `LimitedSet`).
#[derive(Debug, Default)]
pub(crate) struct Revoked {
    order: VecDeque<(String, Instant)>,
    ids: HashSet<String>,
}

impl Revoked {
    /// Adds `id`.
    pub(crate) fn add(&mut self, id: &str) {
        self.purge();
        if self.ids.insert(id.to_owned()) {
            self.order.push_back((id.to_owned(), Instant::now()));
        }
        while self.order.len() > REVOKES_MAX {
            if let Some((old, _)) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
    }

    /// Whether `id` is revoked.
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// Forgets the ids older than [`REVOKE_EXPIRES`].
    pub(crate) fn purge(&mut self) {
        while let Some((id, at)) = self.order.front() {
            if at.elapsed() < REVOKE_EXPIRES {
                break;
            }
            self.ids.remove(id);
            self.order.pop_front();
        }
    }

    /// The ids, oldest first.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.order.iter().map(|(id, _)| id.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{REVOKES_MAX, Revoked};

    #[test]
    fn the_revoked_set_is_bounded_oldest_out() {
        let mut revoked = Revoked::default();
        for i in 0..=REVOKES_MAX {
            revoked.add(&format!("t{i}"));
        }
        revoked.add("t5");
        assert!(!revoked.contains("t0"));
        assert!(revoked.contains("t1") && revoked.contains(&format!("t{REVOKES_MAX}")));
        assert_eq!(revoked.ids().len(), REVOKES_MAX);
        assert_eq!(
            revoked.ids().iter().filter(|id| *id == "t5").count(),
            1,
            "kept once"
        );
    }
}
