//! A Celery worker in Rust: typed async functions registered by their Celery task names run
//! the task messages Python (or Rust) sends, side by side with Python workers on the same
//! queues, and store their results where Celery's clients read them.
//!
//! - **Messages**: protocol 2 and protocol 1 ([`TaskRequest`](crate::TaskRequest)). A message that is no task
//!   message, or names a task this worker does not have, is dead-lettered (to the queue's
//!   dead-letter exchange, else `<queue>.dlq`, see [`kombu_core::dead_letter`]) instead of
//!   dropped as Celery drops it.
//! - **`eta` / `countdown`** without holding the prefetch window: a task due more than a
//!   second from now goes back through the transport's delayed delivery (the stores' delay
//!   mechanism; on RabbitMQ kombu's native delayed delivery, as Celery 5.5+ does, through
//!   the topic exchange [`ETA_EXCHANGE`] each worker queue is bound to) and is acked; a task
//!   due sooner waits in the worker, holding no concurrency slot.
//! - **`expires`**: an expired task is not run; its result is REVOKED
//!   (`TaskRevokedError('expired')`).
//! - **Time limits**: a message's `timelimit`, else the task's [`TaskSettings`]: past the
//!   hard limit the task is dropped and fails with `TimeLimitExceeded`; the soft limit is
//!   [`TaskContext::soft_time_limit_exceeded`].
//! - **Retries**: a task returning [`Retry`] is sent again (same id, `retries` + 1, `eta` its
//!   countdown from now) and stored as RETRY, until its `max_retries`; then it fails.
//! - **Acks**: early by default, as Celery (acked when it starts); late
//!   ([`WorkerBuilder::acks_late`], [`TaskSettings::acks_late`]) after it ran, whatever the
//!   outcome, so a worker killed mid-task leaves the message to another.
//! - **Concurrency**: at most [`WorkerBuilder::concurrency`] tasks at once; the consumer
//!   prefetches `concurrency × prefetch_multiplier` messages (Celery's
//!   `worker_prefetch_multiplier`, default 4). Per-task [`RateLimit`]s.
//! - **Results and states**: SUCCESS, FAILURE, RETRY, REVOKED (STARTED with
//!   [`TaskSettings::track_started`]) to a [`ResultBackend`], or to the caller's reply queue
//!   for `rpc://` ([`WorkerBuilder::rpc_results`]).
//! - **Canvas**: after a success the message's `link` callbacks and the next task of its
//!   `chain` are sent with the result (parent and root ids set) before the result is stored;
//!   one that cannot be sent fails the task. Such a step may be a chain (unrolled), a group
//!   (its members get the result first) or a chord (its header tasks get it; the steps after
//!   it ride on its body), as Celery's canvas writes them. After a failure the rest of its chain fails with
//!   it (Celery's `_fail_chain`) and its `link_error` errbacks are sent with the task id. Chords: a header task's result is counted in a
//!   backend that joins chords (Redis, in Celery's layout) and the last one in sends the body;
//!   with the others (SQL, memory) the worker runs Celery's [`CHORD_UNLOCK`] task.
//! - **Stop**: [`WorkerHandle::stop`] or SIGINT / SIGTERM ([`Worker::run_until_signal`]):
//!   nothing new starts, tasks waiting go back to their queues, running ones get the
//!   shutdown timeout; past it late-acked ones go back too and early-acked ones fail with
//!   `WorkerLostError`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kombu_core::Result<()> {
//! use kombu_celery::worker::{TaskContext, TaskFail, Worker};
//! use kombu_celery::{Celery, Task};
//! use kombu_core::Connection;
//!
//! const ADD: Task<(i64, i64), i64> = Task::new("tasks.add");
//!
//! # kombu_core::transport::memory::register();
//! let conn = Connection::open("memory://doc-celery-worker").await?;
//! let worker = Worker::builder(&conn)
//!     .concurrency(4)
//!     .task(ADD, |(x, y), _ctx: TaskContext| async move { Ok::<_, TaskFail>(x + y) })
//!     .build()?;
//! let handle = worker.handle();
//! let running = tokio::spawn(worker.run());
//! Celery::new(&conn).call(&ADD, (2, 3)).await?;
//! while handle.stats().succeeded < 1 {
//!     tokio::time::sleep(std::time::Duration::from_millis(5)).await;
//! }
//! handle.stop();
//! running.await.expect("the worker's task")?;
//! # Ok(()) }
//! ```

mod chord;
mod commands;
mod consumers;
mod eventer;
mod execute;
mod next;
mod pidbox;
mod pool;
mod rate;
mod run;
mod state;
mod task;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kombu_core::{Connection, Error, ErrorKind, Result};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::backend::ResultBackend;
use crate::client::{Celery, Task};
use crate::clock::LamportClock;
use crate::events::EventKind;

pub use chord::CHORD_UNLOCK;
pub use eventer::HEARTBEAT_FREQ;
pub use pool::KEEPALIVE as AUTOSCALE_KEEPALIVE;
pub use rate::RateLimit;
pub use task::{
    DEFAULT_MAX_RETRIES, DEFAULT_RETRY_DELAY, Reject, Retry, TaskContext, TaskFail, TaskSettings,
};

use task::{Handler, Typed};

/// Celery's `worker_prefetch_multiplier` default.
pub const DEFAULT_PREFETCH_MULTIPLIER: u16 = 4;
/// How long a stopped worker lets its running tasks finish by default.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// The topic exchange through which a worker on RabbitMQ sends a task back to its queue when
/// due: each worker queue is bound to it with `#.<queue>`, and kombu's native delayed
/// delivery (`celery_delayed_*`) delivers to it.
pub const ETA_EXCHANGE: &str = "kombu_rs.celery.eta";
/// How long tasks stopped at the shutdown timeout get to record how they ended.
const ABORT_GRACE: Duration = Duration::from_secs(5);
/// How long the worker waits after it could not dead-letter a message (which then comes back).
const REJECT_BACKOFF: Duration = Duration::from_secs(1);

/// A registered task.
pub(crate) struct Registered {
    pub(crate) handler: Box<dyn Handler>,
    pub(crate) settings: TaskSettings,
    /// Its limits now (remote control changes them).
    limits: Mutex<Limits>,
}

/// A task's limits as they stand.
#[derive(Debug, Clone)]
struct Limits {
    /// The limit as given (`10/m`) and its bucket.
    rate: Option<(String, Arc<rate::Bucket>)>,
    hard: Option<Duration>,
    soft: Option<Duration>,
}

impl Registered {
    fn new(handler: Box<dyn Handler>, settings: TaskSettings) -> Registered {
        let limits = Limits {
            rate: settings
                .rate_limit
                .map(|limit| (limit.to_string(), Arc::new(rate::Bucket::new(limit)))),
            hard: settings.time_limit,
            soft: settings.soft_time_limit,
        };
        Registered {
            handler,
            settings,
            limits: Mutex::new(limits),
        }
    }

    /// Its rate limit's bucket, if it has one.
    pub(crate) fn bucket(&self) -> Option<Arc<rate::Bucket>> {
        self.limits.lock().rate.as_ref().map(|(_, b)| b.clone())
    }

    /// Its hard and soft time limits.
    pub(crate) fn time_limits(&self) -> (Option<Duration>, Option<Duration>) {
        let limits = self.limits.lock();
        (limits.hard, limits.soft)
    }

    /// A new rate limit, with its text (`None`: none).
    pub(crate) fn set_rate(&self, limit: Option<(RateLimit, String)>) {
        self.limits.lock().rate = limit.map(|(l, text)| (text, Arc::new(rate::Bucket::new(l))));
    }

    /// New time limits (`None`: none).
    pub(crate) fn set_time_limits(&self, hard: Option<Duration>, soft: Option<Duration>) {
        let mut limits = self.limits.lock();
        limits.hard = hard;
        limits.soft = soft;
    }

    /// An attribute `inspect registered` shows, when set.
    pub(crate) fn attribute(&self, name: &str) -> Option<String> {
        let limits = self.limits.lock();
        let seconds = |d: Option<Duration>| d.map(|d| d.as_secs_f64().to_string());
        match name {
            "rate_limit" => limits.rate.as_ref().map(|(text, _)| text.clone()),
            "time_limit" => seconds(limits.hard),
            "soft_time_limit" => seconds(limits.soft),
            "acks_late" => self
                .settings
                .acks_late
                .map(|b| if b { "True" } else { "False" }.to_owned()),
            "max_retries" => self.settings.max_retries.map(|n| n.to_string()),
            "ignore_result" => Some(
                if self.settings.ignore_result {
                    "True"
                } else {
                    "False"
                }
                .to_owned(),
            ),
            _ => None,
        }
    }
}

/// Where results go.
#[derive(Clone)]
pub(crate) enum Results {
    /// Nowhere (Celery without a result backend).
    None,
    /// A result store.
    Backend(Arc<dyn ResultBackend>),
    /// `rpc://`: to each task's `reply_to`, correlated by its id.
    Rpc,
}

/// Configures a [`Worker`]; from [`Worker::builder`].
pub struct WorkerBuilder {
    conn: Connection,
    queues: Vec<String>,
    routes: Vec<(String, String)>,
    tasks: HashMap<String, Registered>,
    results: Results,
    concurrency: usize,
    prefetch_multiplier: u16,
    acks_late: bool,
    hostname: Option<String>,
    shutdown_timeout: Duration,
    events: Option<bool>,
    task_events: bool,
    remote_control: bool,
    autoscale: Option<(usize, usize)>,
}

impl fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut tasks: Vec<&String> = self.tasks.keys().collect();
        tasks.sort();
        f.debug_struct("WorkerBuilder")
            .field("queues", &self.queues)
            .field("tasks", &tasks)
            .field("concurrency", &self.concurrency)
            .field("prefetch_multiplier", &self.prefetch_multiplier)
            .field("acks_late", &self.acks_late)
            .field("hostname", &self.hostname)
            .field("events", &self.events)
            .field("task_events", &self.task_events)
            .field("remote_control", &self.remote_control)
            .field("autoscale", &self.autoscale)
            .finish()
    }
}

impl WorkerBuilder {
    /// Consumes `queue` too (default: only [`DEFAULT_QUEUE`](crate::DEFAULT_QUEUE), `celery`); the first queue
    /// given is where the tasks this worker sends (a chain's next, callbacks, retries of
    /// tasks from elsewhere) go unless their signature names one. Declared as Celery declares
    /// its queues (durable, a direct exchange and routing key of its name).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queues.push(queue.into());
        self
    }

    /// Sends the tasks `pattern` names (an exact name, or a glob with `*`) to `queue` when
    /// this worker sends them (a chain's next task, a callback, a chord's body) and their
    /// signature names no queue: Celery's `task_routes`, as [`CeleryBuilder::route`].
    ///
    /// [`CeleryBuilder::route`]: crate::CeleryBuilder::route
    pub fn route(mut self, pattern: impl Into<String>, queue: impl Into<String>) -> Self {
        self.routes.push((pattern.into(), queue.into()));
        self
    }

    /// Registers `task` (its Celery name, argument and result types) with `run`, called with
    /// the positional arguments as `Args` (a tuple) and the [`TaskContext`]; Celery's
    /// default settings.
    pub fn task<Args, Output, F, Fut>(self, task: Task<Args, Output>, run: F) -> Self
    where
        Args: DeserializeOwned + Send + 'static,
        Output: Serialize + Send + 'static,
        F: Fn(Args, TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Output, TaskFail>> + Send + 'static,
    {
        self.task_with(task, TaskSettings::default(), run)
    }

    /// [`task`](Self::task) with its own settings (limits, rate, acks, retries, parameter
    /// names for keyword arguments).
    pub fn task_with<Args, Output, F, Fut>(
        mut self,
        task: Task<Args, Output>,
        settings: TaskSettings,
        run: F,
    ) -> Self
    where
        Args: DeserializeOwned + Send + 'static,
        Output: Serialize + Send + 'static,
        F: Fn(Args, TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Output, TaskFail>> + Send + 'static,
    {
        let handler = Typed {
            name: task.name(),
            params: settings.params.clone(),
            func: run,
            _types: std::marker::PhantomData,
        };
        self.tasks.insert(
            task.name().to_owned(),
            Registered::new(Box::new(handler), settings),
        );
        self
    }

    /// Stores results and states in `backend` (Celery's `result_backend`); default: none.
    pub fn result_backend(mut self, backend: impl ResultBackend + 'static) -> Self {
        self.results = Results::Backend(Arc::new(backend));
        self
    }

    /// [`result_backend`](Self::result_backend) shared with others.
    pub fn shared_result_backend(mut self, backend: Arc<dyn ResultBackend>) -> Self {
        self.results = Results::Backend(backend);
        self
    }

    /// Sends results as Celery's `rpc://` backend does: to each task's `reply_to` queue, with
    /// its id as correlation id (tasks without a `reply_to` keep no result).
    pub fn rpc_results(mut self) -> Self {
        self.results = Results::Rpc;
        self
    }

    /// Tasks running at once (default: the number of CPUs, as Celery's; at least 1).
    pub fn concurrency(mut self, tasks: usize) -> Self {
        self.concurrency = tasks.max(1);
        self
    }

    /// Messages prefetched per concurrency slot (default [`DEFAULT_PREFETCH_MULTIPLIER`], at
    /// least 1).
    pub fn prefetch_multiplier(mut self, multiplier: u16) -> Self {
        self.prefetch_multiplier = multiplier.max(1);
        self
    }

    /// Acknowledge each task after it ran instead of when it starts (Celery's
    /// `task_acks_late`; default `false`); a task's own setting wins.
    pub fn acks_late(mut self, late: bool) -> Self {
        self.acks_late = late;
        self
    }

    /// The worker's name (default `celery@<host>`, as Celery's).
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.hostname = Some(name.into());
        self
    }

    /// How long a stopped worker lets its running tasks finish (default
    /// [`DEFAULT_SHUTDOWN_TIMEOUT`]); past it they are stopped: late-acked ones go back to
    /// their queues, early-acked ones fail with `WorkerLostError` (Celery's warm shutdown
    /// waits without a bound: give a long timeout for long tasks).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Sends task events (`task-received`, `-started`, `-succeeded`, ...) as Celery's
    /// `-E` / `worker_send_task_events` does (default `false`; the `enable_events` command
    /// turns them on while it runs). See [`crate::events`].
    pub fn task_events(mut self, on: bool) -> Self {
        self.task_events = on;
        self
    }

    /// Whether the worker sends events at all: `worker-online`, a `worker-heartbeat` every
    /// [`HEARTBEAT_FREQ`], `worker-offline`, and task events when on. Default: on, except on
    /// SQLite (as Celery sends none over its SQL transport).
    pub fn events(mut self, on: bool) -> Self {
        self.events = Some(on);
        self
    }

    /// Whether the worker listens to remote control (`celery inspect`, `celery control`,
    /// [`crate::control`]) on its mailbox `<hostname>.celery.pidbox` (default `true`, as
    /// Celery's `worker_enable_remote_control`).
    pub fn remote_control(mut self, on: bool) -> Self {
        self.remote_control = on;
        self
    }

    /// Scales the concurrency between `min` and `max` with the tasks the worker holds
    /// (Celery's `--autoscale=max,min`): it starts at `min`, grows to the tasks waiting, and
    /// shrinks back after [`AUTOSCALE_KEEPALIVE`] with fewer; the `autoscale` command
    /// changes the range. The prefetch stays `max × prefetch_multiplier`.
    pub fn autoscale(mut self, max: usize, min: usize) -> Self {
        let max = max.clamp(1, pool::MAX_SIZE);
        self.autoscale = Some((max, min.min(max)));
        self
    }

    /// The worker; fails without a task.
    pub fn build(self) -> Result<Worker> {
        if self.tasks.is_empty() {
            return Err(Error::new(
                ErrorKind::Config,
                "a Celery worker needs at least one task (WorkerBuilder::task)",
            ));
        }
        let (stop, _) = watch::channel(false);
        let (abort, _) = watch::channel(false);
        Ok(Worker {
            handle: WorkerHandle {
                control: Arc::new(Control {
                    stop,
                    abort,
                    counters: Counters::default(),
                }),
            },
            builder: self,
        })
    }
}

/// Runs Celery tasks; see the [module docs](self).
pub struct Worker {
    builder: WorkerBuilder,
    handle: WorkerHandle,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("builder", &self.builder)
            .finish()
    }
}

/// Stops a running [`Worker`] and reads its counters; cheap to clone.
#[derive(Clone, Debug)]
pub struct WorkerHandle {
    control: Arc<Control>,
}

#[derive(Debug)]
pub(crate) struct Control {
    pub(crate) stop: watch::Sender<bool>,
    /// Set past the shutdown timeout: what still runs ends now.
    pub(crate) abort: watch::Sender<bool>,
    pub(crate) counters: Counters,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) received: AtomicU64,
    pub(crate) started: AtomicU64,
    pub(crate) succeeded: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) revoked: AtomicU64,
    pub(crate) rejected: AtomicU64,
}

/// What a worker has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Task messages taken (each retry and each delayed return counts again).
    pub received: u64,
    /// Tasks started (acked first unless acked late).
    pub started: u64,
    /// Tasks that returned a value.
    pub succeeded: u64,
    /// Tasks that failed (retries used up included).
    pub failed: u64,
    /// Retries sent.
    pub retried: u64,
    /// Tasks not run because they expired.
    pub revoked: u64,
    /// Messages dead-lettered: no task message, or an unregistered task.
    pub rejected: u64,
}

impl WorkerHandle {
    /// Stops the worker (see the module docs).
    pub fn stop(&self) {
        self.control.stop.send_replace(true);
    }

    /// Whether [`stop`](Self::stop) was called.
    pub fn is_stopped(&self) -> bool {
        *self.control.stop.borrow()
    }

    /// The counters now.
    pub fn stats(&self) -> WorkerStats {
        let c = &self.control.counters;
        let read = |n: &AtomicU64| n.load(Ordering::Relaxed);
        WorkerStats {
            received: read(&c.received),
            started: read(&c.started),
            succeeded: read(&c.succeeded),
            failed: read(&c.failed),
            retried: read(&c.retried),
            revoked: read(&c.revoked),
            rejected: read(&c.rejected),
        }
    }
}

/// `celery@<host>`.
fn default_hostname() -> String {
    format!("celery@{}", crate::client::hostname())
}

/// What every task of a running worker shares.
pub(crate) struct Shared {
    pub(crate) conn: Connection,
    pub(crate) tasks: HashMap<String, Registered>,
    pub(crate) results: Results,
    pub(crate) client: Arc<Celery>,
    pub(crate) producer: kombu_core::Producer,
    pub(crate) acks_late: bool,
    pub(crate) hostname: Arc<str>,
    pub(crate) permits: Semaphore,
    pub(crate) stop: watch::Receiver<bool>,
    pub(crate) abort: watch::Receiver<bool>,
    pub(crate) control: Arc<Control>,
    /// The exchange a task goes back to its queue through when due (RabbitMQ:
    /// [`ETA_EXCHANGE`]; the stores: the default exchange, routed at publish time).
    pub(crate) eta_exchange: &'static str,
    /// Whether the transport delays at all.
    pub(crate) can_delay: bool,
    /// Whether leases run out (late-acked tasks then keep theirs alive).
    pub(crate) leases: bool,
    /// How often a held message's lease is renewed: a third of the URL's
    /// `visibility_timeout`, else every 60 s.
    pub(crate) lease_heartbeat: Duration,
    /// The node's Lamport clock (events and remote control).
    pub(crate) clock: LamportClock,
    /// The requests it holds (reserved, scheduled, running).
    pub(crate) requests: Arc<state::Requests>,
    /// The ids it was told to revoke.
    pub(crate) revoked: Mutex<state::Revoked>,
    /// Its events.
    pub(crate) events: eventer::WorkerEvents,
    /// Its concurrency.
    pub(crate) pool: pool::Pool,
    /// The queues it consumes now.
    pub(crate) queues: Mutex<Vec<QueueInfo>>,
    /// Queues to add or cancel, for the loop that reads them.
    pub(crate) queue_changes: mpsc::UnboundedSender<QueueChange>,
    /// Tasks started, by name (`stats`' `total`).
    pub(crate) totals: Mutex<HashMap<String, u64>>,
    /// When it started.
    pub(crate) started: Instant,
    /// Messages prefetched per consumer.
    pub(crate) prefetch: usize,
}

/// A queue the worker consumes, as `inspect active_queues` shows it.
#[derive(Debug, Clone)]
pub(crate) struct QueueInfo {
    pub(crate) name: String,
    pub(crate) exchange: String,
    pub(crate) exchange_type: String,
    pub(crate) routing_key: String,
}

impl QueueInfo {
    /// A queue as Celery declares its own: a direct exchange and routing key of its name.
    pub(crate) fn named(name: &str) -> QueueInfo {
        QueueInfo {
            name: name.to_owned(),
            exchange: name.to_owned(),
            exchange_type: "direct".to_owned(),
            routing_key: name.to_owned(),
        }
    }
}

/// A change of the queues the worker consumes (`add_consumer`, `cancel_consumer`).
#[derive(Debug)]
pub(crate) enum QueueChange {
    Add {
        queue: String,
        exchange: Option<String>,
        exchange_type: Option<String>,
        routing_key: Option<String>,
    },
    Cancel(String),
}

/// Sends a `worker-*` event with the worker's figures now.
pub(crate) async fn heartbeat(shared: &Shared, kind: EventKind) {
    let processed = shared.control.counters.started.load(Ordering::Relaxed);
    shared
        .events
        .worker(kind, shared.requests.active(), processed)
        .await;
}

impl Worker {
    /// A worker on `conn` (its queues, tasks and results set on the builder).
    pub fn builder(conn: &impl AsRef<Connection>) -> WorkerBuilder {
        WorkerBuilder {
            conn: conn.as_ref().clone(),
            queues: Vec::new(),
            routes: Vec::new(),
            tasks: HashMap::new(),
            results: Results::None,
            concurrency: std::thread::available_parallelism().map_or(1, usize::from),
            prefetch_multiplier: DEFAULT_PREFETCH_MULTIPLIER,
            acks_late: false,
            hostname: None,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            events: None,
            task_events: false,
            remote_control: true,
            autoscale: None,
        }
    }

    /// Stops it and reads its counters.
    pub fn handle(&self) -> WorkerHandle {
        self.handle.clone()
    }

    /// Declares its queues and runs until stopped ([`WorkerHandle::stop`], or the
    /// `shutdown` command) and wound down, or until a consumer fails for good.
    pub async fn run(self) -> Result<()> {
        run::run(self.builder, self.handle).await
    }

    /// [`run`](Self::run), stopping gracefully on SIGINT (Ctrl-C) or SIGTERM.
    pub async fn run_until_signal(self) -> Result<()> {
        let handle = self.handle();
        let run = self.run();
        tokio::pin!(run);
        tokio::select! {
            done = &mut run => return done,
            () = kombu_core::shutdown_signal() => {
                tracing::info!("signal received: the Celery worker stops");
                handle.stop();
            }
        }
        run.await
    }
}
