//! `/metrics`: Flower's six metric families (the same names, types, labels, help and
//! buckets, updated on the same events), and the queues' lengths, which Flower lacks (Flower
//! #1173), in the OpenMetrics text format.

use parking_lot::Mutex;

use crate::broker::QueueReport;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Label pairs, in the order Flower declares them.
type Labels = Vec<(&'static str, String)>;

/// Flower's default runtime buckets (Python's `Histogram.DEFAULT_BUCKETS`).
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// A task event as the metrics see it, after the task's state took it in.
#[derive(Debug, Clone)]
pub(crate) struct TaskSeen {
    /// The event's type (`task-received`, ...).
    pub(crate) kind: String,
    /// The event's `hostname`.
    pub(crate) worker: String,
    /// The event's `name`, else the task's, else empty.
    pub(crate) name: String,
    /// The event's `runtime`.
    pub(crate) runtime: Option<f64>,
    /// The task's `received` and `started`, and whether it has an `eta`.
    pub(crate) received: Option<f64>,
    pub(crate) started: Option<f64>,
    pub(crate) eta: bool,
}

/// The metric families and their registry.
pub(crate) struct Metrics {
    registry: Registry,
    events: Family<Labels, Counter>,
    runtime: Family<Labels, Histogram>,
    prefetch_time: Family<Labels, Gauge<f64, AtomicU64>>,
    prefetched: Family<Labels, Gauge>,
    online: Family<Labels, Gauge>,
    executing: Family<Labels, Gauge>,
    queue_messages: Family<Labels, Gauge>,
    queue_unacked: Family<Labels, Gauge>,
    queue_oldest: Family<Labels, Gauge<f64, AtomicU64>>,
    /// Serialises encoding (the registry is read whole).
    encoding: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::default();
        let events = Family::<Labels, Counter>::default();
        let runtime = Family::<Labels, Histogram>::new_with_constructor(
            (|| Histogram::new(BUCKETS)) as fn() -> Histogram,
        );
        let prefetch_time = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let prefetched = Family::<Labels, Gauge>::default();
        let online = Family::<Labels, Gauge>::default();
        let executing = Family::<Labels, Gauge>::default();
        let queue_messages = Family::<Labels, Gauge>::default();
        let queue_unacked = Family::<Labels, Gauge>::default();
        let queue_oldest = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        registry.register("flower_events", "Number of events", events.clone());
        registry.register(
            "flower_task_runtime_seconds",
            "Task runtime",
            runtime.clone(),
        );
        registry.register(
            "flower_task_prefetch_time_seconds",
            "The time the task spent waiting at the celery worker to be executed.",
            prefetch_time.clone(),
        );
        registry.register(
            "flower_worker_prefetched_tasks",
            "Number of tasks of given type prefetched at a worker",
            prefetched.clone(),
        );
        registry.register(
            "flower_worker_online",
            "Worker online status",
            online.clone(),
        );
        registry.register(
            "flower_worker_number_of_currently_executing_tasks",
            "Number of tasks currently executing at a worker",
            executing.clone(),
        );
        registry.register(
            "kombu_queue_messages",
            "Messages ready in the queue (the queues the workers consume and --queue names)",
            queue_messages.clone(),
        );
        registry.register(
            "kombu_queue_unacked_messages",
            "Messages delivered and not yet acknowledged (where the transport tells)",
            queue_unacked.clone(),
        );
        registry.register(
            "kombu_queue_oldest_message_age_seconds",
            "Age of the queue's oldest ready message: the store's record, else how long the \
             monitor has seen it at the head (absent where neither is known)",
            queue_oldest.clone(),
        );
        Metrics {
            registry,
            events,
            runtime,
            prefetch_time,
            prefetched,
            online,
            executing,
            queue_messages,
            queue_unacked,
            queue_oldest,
            encoding: Mutex::new(()),
        }
    }

    /// A task event (Flower's `observe_task`).
    pub(crate) fn task(&self, seen: &TaskSeen) {
        let worker_task = vec![("worker", seen.worker.clone()), ("task", seen.name.clone())];
        self.events
            .get_or_create(&vec![
                ("worker", seen.worker.clone()),
                ("type", seen.kind.clone()),
                ("task", seen.name.clone()),
            ])
            .inc();
        if let Some(runtime) = seen.runtime.filter(|r| *r != 0.0) {
            self.runtime.get_or_create(&worker_task).observe(runtime);
        }
        let Some(received) = seen.received.filter(|_| !seen.eta) else {
            return;
        };
        match (seen.kind.as_str(), seen.started) {
            ("task-received", _) => {
                self.prefetched.get_or_create(&worker_task).inc();
            }
            ("task-started", Some(started)) => {
                self.prefetch_time
                    .get_or_create(&worker_task)
                    .set(started - received);
                self.prefetched.get_or_create(&worker_task).dec();
            }
            ("task-succeeded" | "task-failed", Some(_)) => {
                self.prefetch_time.get_or_create(&worker_task).set(0.0);
            }
            ("task-revoked" | "task-rejected", None) => {
                self.prefetched.get_or_create(&worker_task).dec();
            }
            _ => {}
        }
    }

    /// A worker event (Flower's `observe_worker`).
    pub(crate) fn worker(&self, kind: &str, worker: &str, active: Option<i64>) {
        let labels = vec![("worker", worker.to_owned())];
        match kind {
            "worker-online" | "worker-heartbeat" => {
                self.online.get_or_create(&labels).set(1);
            }
            "worker-offline" => {
                self.online.get_or_create(&labels).set(0);
            }
            _ => {}
        }
        if kind == "worker-heartbeat"
            && let Some(active) = active
        {
            self.executing.get_or_create(&labels).set(active);
        }
    }

    /// The queues now (the gauges of queues no longer listed are dropped; a figure the
    /// transport cannot tell has no sample).
    pub(crate) fn queues(&self, queues: &[QueueReport]) {
        self.queue_messages.clear();
        self.queue_unacked.clear();
        self.queue_oldest.clear();
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        // A queue that could not be read has no samples, rather than zeros.
        for queue in queues.iter().filter(|q| q.error.is_none()) {
            let labels = vec![("queue", queue.name.clone())];
            self.queue_messages
                .get_or_create(&labels)
                .set(count(queue.stats.ready));
            if let Some(unacked) = queue.stats.unacked {
                self.queue_unacked
                    .get_or_create(&labels)
                    .set(count(unacked));
            }
            if let Some((age, _)) = queue.oldest_age {
                self.queue_oldest.get_or_create(&labels).set(age);
            }
        }
    }

    /// The text exposition.
    pub(crate) fn encode(&self) -> String {
        let _one = self.encoding.lock();
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
