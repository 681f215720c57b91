//! `kombu monitor`'s engine: it listens to Celery's events on a broker, keeps the task
//! history in SQLite (across restarts when a file, bounded by count and age) and the workers
//! and their inspect replies in memory (bounded by count), asks the workers for their state by remote control, and serves Flower's
//! HTTP API over them, for Python and Rust workers alike.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kombu_core::Result<()> {
//! use kombu_monitor::Monitor;
//!
//! # kombu_core::transport::memory::register();
//! let conn = kombu_core::Connection::open("memory://doc-monitor").await?;
//! let monitor = Monitor::builder(&conn).start().await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| {
//!     kombu_core::Error::new(kombu_core::ErrorKind::Config, "bind").with_source(e)
//! })?;
//! let app = monitor.router(); // serve with axum::serve(listener, app)
//! # drop((listener, app));
//! monitor.stop().await;
//! # Ok(()) }
//! ```
//!
//! What Flower's API returns, this returns, byte for byte where the data are the same:
//! `/api/tasks`, `/api/task/info/<id>`, `/api/task/types`, `/api/workers`, `/healthcheck`, the
//! worker controls (`/api/worker/shutdown|pool/grow|pool/shrink|pool/autoscale|pool/restart|
//! queue/add-consumer|queue/cancel-consumer/<worker>`), `/api/task/revoke|rate-limit|timeout`,
//! `/api/task/send-task|async-apply|apply` (options `queue`, `task_id`, `priority`,
//! `countdown` in seconds, `eta` as a date, `expires` in seconds or as a date; apply waits for
//! the result, at most `timeout` seconds), `/api/task/abort/<id>`, and `/api/queues/length`
//! (on every transport; Flower: Redis and RabbitMQ only). `/metrics` has Flower's six families (same names, labels, help, buckets,
//! updated on the same events) and `kombu_queue_messages{queue}`, in the OpenMetrics format. Calls are checked against HTTP Basic users and bearer tokens when
//! any are set; read-only mode refuses every steering call. `/api/task/result/<id>` reads the
//! result backend given to [`MonitorBuilder::result_backend`]. `/api/tasks?search=` takes
//! Flower's query language ([`search`]). Beyond Flower: the broker page's data, messages read
//! without taking them, dead-letter replay, live updates and the page itself at `/`
//! (`docs/ARCHITECTURE.md`, "The monitor").

mod api;
mod broker;
mod broker_api;
mod control_api;
pub mod history;
mod ingest;
mod live;
mod management;
mod metrics;
mod page;
mod pyjson;
pub mod search;
pub mod task;
mod task_api;
pub mod workers;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kombu_core::{Connection, Result};
use parking_lot::Mutex;
use serde_json::{Map, Value as Json};

pub use history::{Applied, History, Limits, SortKey, TaskQuery};
pub use task::Task;
pub use workers::{Worker, Workers};

/// How a monitor is set up; from [`Monitor::builder`].
#[derive(Debug)]
pub struct MonitorBuilder {
    conn: Connection,
    db: Option<PathBuf>,
    limits: Limits,
    max_workers: usize,
    inspect_timeout: Duration,
    read_only: bool,
    queues: Vec<String>,
    broker_api: Option<BrokerApi>,
    auth: Auth,
    results: Option<Arc<dyn kombu_celery::backend::ResultBackend>>,
    url_prefix: Option<String>,
}

/// Who may call the API (`/api/...`; `/healthcheck` and `/metrics` are open, as Flower's).
#[derive(Clone, Default)]
pub(crate) struct Auth {
    /// `user:password` pairs for HTTP Basic.
    pub(crate) basic: Vec<String>,
    /// Bearer tokens.
    pub(crate) tokens: Vec<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets are never shown.
        f.debug_struct("Auth")
            .field("basic", &self.basic.len())
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

/// The management API's URL, which may hold a password: never shown.
#[derive(Clone)]
struct BrokerApi(String);

impl std::fmt::Debug for BrokerApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrokerApi(***)")
    }
}

impl Auth {
    pub(crate) fn is_open(&self) -> bool {
        self.basic.is_empty() && self.tokens.is_empty()
    }
}

impl MonitorBuilder {
    /// Read task results from this backend (`/api/task/result/<id>`; without one it answers
    /// 503, as Flower).
    pub fn result_backend(
        mut self,
        backend: Arc<dyn kombu_celery::backend::ResultBackend>,
    ) -> Self {
        self.results = Some(backend);
        self
    }

    /// Serve every route under this path (`monitor` or `/monitor/`: `/monitor/api/tasks`), as
    /// Flower's `--url_prefix` for a reverse proxy.
    pub fn url_prefix(mut self, prefix: &str) -> Self {
        let trimmed = prefix.trim_matches('/');
        self.url_prefix = (!trimmed.is_empty()).then(|| format!("/{trimmed}"));
        self
    }

    /// Refuse every call that steers workers or sends tasks (403 `Read only mode is
    /// enabled`, as Flower's `--read_only`).
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Let `user` with `password` call the API (HTTP Basic); may be given several times (an
    /// empty password is ignored). With no user and no token the API is open: serve it on
    /// loopback only (it then answers only requests addressed to a loopback host).
    pub fn basic_auth(mut self, user: &str, password: &str) -> Self {
        if !password.is_empty() {
            self.auth.basic.push(format!("{user}:{password}"));
        }
        self
    }

    /// Let a caller presenting `Authorization: Bearer <token>` call the API, or the token as
    /// an HTTP Basic password with any user name (how a browser opens the page); an empty
    /// token is ignored: it would let anyone in.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        if !token.is_empty() {
            self.auth.tokens.push(token);
        }
        self
    }

    /// Keep the history in this SQLite file (default: in memory, gone on exit).
    pub fn db(mut self, path: impl Into<PathBuf>) -> Self {
        self.db = Some(path.into());
        self
    }

    /// How many tasks and for how long the history keeps them.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// At most this many workers remembered (default 5,000, Flower's).
    pub fn max_workers(mut self, max: usize) -> Self {
        self.max_workers = max;
        self
    }

    /// Watch these queues too (the broker page, `/api/queues/length`, `/metrics`), beside
    /// those the workers say they consume: queues of applications that are not Celery
    /// workers, or of workers not running now.
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues.extend(queues.into_iter().map(Into::into));
        self
    }

    /// RabbitMQ's management API (`http[s]://[user:password@]host:port/api/`, Flower's
    /// `--broker_api`): unacked messages, message rates and head timestamps on the broker
    /// page. Default on AMQP: `http://<broker host>:15672/api/` with the broker's
    /// credentials; unused on other transports.
    pub fn broker_api(mut self, url: &str) -> Self {
        self.broker_api = Some(BrokerApi(url.to_owned()));
        self
    }

    /// How long a remote-control inspect waits for replies (default 1 s, Flower's).
    pub fn inspect_timeout(mut self, timeout: Duration) -> Self {
        self.inspect_timeout = timeout;
        self
    }

    /// Opens the history, starts listening to events, and asks the workers for their state.
    pub async fn start(self) -> Result<Monitor> {
        let management = match (self.conn.messaging_system(), &self.broker_api) {
            ("rabbitmq", Some(api)) => Some(management::Management::at(&api.0, &self.conn.url())?),
            ("rabbitmq", None) => Some(management::Management::beside(&self.conn.url())?),
            _ => None,
        };
        let history = Arc::new(History::open(self.db.as_deref(), self.limits)?);
        let state = Arc::new(State {
            conn: self.conn.clone(),
            history,
            workers: Mutex::new(Workers::new(self.max_workers)),
            inspected: tokio::sync::Mutex::new(Map::new()),
            refreshing: Mutex::new(std::collections::HashSet::new()),
            max_workers: self.max_workers.max(1),
            inspect_timeout: self.inspect_timeout,
            read_only: self.read_only,
            queues: self.queues,
            auth: self.auth,
            metrics: metrics::Metrics::new(),
            results: self.results,
            url_prefix: self.url_prefix,
            heads: broker::HeadWatch::default(),
            management,
            live: live::Live::default(),
            report: tokio::sync::Mutex::new(None),
            inspect_tried: Mutex::new(std::collections::HashMap::new()),
        });
        let ingest = ingest::start(state.clone()).await?;
        let refresh = {
            let state = state.clone();
            tokio::spawn(async move {
                if let Err(error) = state.refresh(None).await {
                    tracing::warn!(%error, "monitor: the first inspect of the workers failed");
                }
            })
        };
        Ok(Monitor {
            state,
            tasks: vec![ingest, refresh],
        })
    }
}

/// What the handlers share.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) conn: Connection,
    pub(crate) history: Arc<History>,
    pub(crate) workers: Mutex<Workers>,
    /// Flower's inspect cache: node → `{method: reply, ..., "timestamp": t}`.
    pub(crate) inspected: tokio::sync::Mutex<Map<String, Json>>,
    /// The workers being inspected now (one inspect per worker at a time, at most
    /// [`MAX_REFRESHES`] at once).
    refreshing: Mutex<std::collections::HashSet<String>>,
    /// At most this many workers in the inspect cache too.
    max_workers: usize,
    inspect_timeout: Duration,
    pub(crate) read_only: bool,
    /// Queues watched beyond those the workers consume.
    queues: Vec<String>,
    pub(crate) auth: Auth,
    pub(crate) metrics: metrics::Metrics,
    pub(crate) results: Option<Arc<dyn kombu_celery::backend::ResultBackend>>,
    pub(crate) url_prefix: Option<String>,
    /// The head message of each queue and since when (the observed age of the oldest).
    heads: broker::HeadWatch,
    /// RabbitMQ's management API, on AMQP.
    pub(crate) management: Option<management::Management>,
    /// Live updates and the throughput and latency series.
    pub(crate) live: live::Live,
    /// The last broker report and when it was made.
    report: tokio::sync::Mutex<Option<(std::time::Instant, broker::BrokerReport)>>,
    /// When workers missing from the inspect cache were last asked, and how many times.
    inspect_tried: Mutex<std::collections::HashMap<String, (std::time::Instant, u32)>>,
}

/// A worker missing from the inspect cache is asked again after 5 s, then twice as long each
/// time, up to a minute: a worker announces itself (Celery's `worker-online`, its heartbeats)
/// before its mailbox listens, so the first asks can go unanswered.
const INSPECT_FIRST_AGAIN: Duration = Duration::from_secs(5);
const INSPECT_AGAIN: Duration = Duration::from_secs(60);

/// How long after `attempts` unanswered asks a worker is asked again.
fn inspect_again(attempts: u32) -> Duration {
    INSPECT_FIRST_AGAIN
        .saturating_mul(1 << attempts.saturating_sub(1).min(4))
        .min(INSPECT_AGAIN)
}

/// How long a broker report is served again.
const REPORT_FOR: Duration = Duration::from_secs(2);

/// At most this many inspects of single workers run at once (each is 8 broadcasts).
const MAX_REFRESHES: usize = 16;

/// The inspect methods asked of every worker (Flower's), and of one worker when named.
const INSPECT_ALL: [&str; 4] = ["stats", "active_queues", "registered", "conf"];
const INSPECT_ONE: [&str; 4] = ["scheduled", "active", "reserved", "revoked"];

impl State {
    /// `/api/queues/length`'s queues: those the workers consume (from their `active_queues`
    /// replies; `celery` when none answered) and those asked for, sorted, each
    /// `{"name", "messages"}` with the messages ready (queues that exist nowhere are left
    /// out). On RabbitMQ, as Flower, the management API's description of each (every field,
    /// `messages` counting the unacked too), while the API answers.
    pub(crate) async fn queue_lengths(&self) -> Result<Vec<Json>> {
        let names = self.queue_names().await;
        if let Some(management) = &self.management {
            match management.described(&names).await {
                Ok(rows) => return Ok(rows),
                Err(error) => {
                    tracing::warn!(%error, "monitor: queue lengths without the management API");
                }
            }
        }
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            match self.conn.queue_size(&name).await {
                Ok(messages) => out.push(serde_json::json!({"name": name, "messages": messages})),
                Err(e) if e.kind() == kombu_core::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The broker page's queues (those of [`queue_lengths`](Self::queue_lengths)) with what
    /// the transport, and RabbitMQ's management API where there is one, tell of each.
    ///
    /// One report at a time, kept for [`REPORT_FOR`]: a page and `/metrics` scraped by several
    /// Prometheus servers cost the broker one report every two seconds at most.
    pub(crate) async fn broker_report(&self) -> Result<broker::BrokerReport> {
        let mut cached = self.report.lock().await;
        if let Some((at, report)) = cached.as_ref()
            && at.elapsed() < REPORT_FOR
        {
            return Ok(report.clone());
        }
        let queues = self.queue_consumers().await;
        let report =
            broker::report(&self.conn, &self.heads, self.management.as_ref(), &queues).await?;
        *cached = Some((std::time::Instant::now(), report.clone()));
        Ok(report)
    }

    /// The queues the workers consume and those asked for, sorted (`celery` when there are
    /// none).
    async fn queue_names(&self) -> Vec<String> {
        self.queue_consumers()
            .await
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    }

    /// [`queue_names`](Self::queue_names), each with the workers whose `active_queues` name
    /// it (sorted).
    async fn queue_consumers(&self) -> Vec<(String, Vec<String>)> {
        let mut queues: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        {
            let cache = self.inspected.lock().await;
            for (worker, info) in cache.iter() {
                for queue in info["active_queues"].as_array().into_iter().flatten() {
                    if let Some(name) = queue["name"].as_str() {
                        queues
                            .entry(name.to_owned())
                            .or_default()
                            .push(worker.clone());
                    }
                }
            }
        }
        if queues.is_empty() && self.queues.is_empty() {
            queues.insert(kombu_celery::DEFAULT_QUEUE.to_owned(), Vec::new());
        }
        for name in &self.queues {
            queues.entry(name.clone()).or_default();
        }
        queues
            .into_iter()
            .map(|(name, mut workers)| {
                workers.sort();
                workers.dedup();
                (name, workers)
            })
            .collect()
    }

    /// [`refresh_soon`](Self::refresh_soon) of a worker heard from (a heartbeat) that is not
    /// in the inspect cache, again after 5 s, 10 s, 20 s, 40 s, then once a minute: one whose
    /// `worker-online` came before this monitor listened, or before its mailbox listened, is
    /// listed without waiting for a refresh.
    pub(crate) async fn inspect_if_unknown(self: &Arc<Self>, worker: &str) {
        if self.inspected.lock().await.contains_key(worker) {
            return;
        }
        {
            let mut tried = self.inspect_tried.lock();
            let now = std::time::Instant::now();
            let attempts = match tried.get(worker) {
                Some((at, attempts)) if now.duration_since(*at) < inspect_again(*attempts) => {
                    return;
                }
                Some((_, attempts)) => *attempts,
                None => 0,
            };
            // Bounded as the workers are.
            if tried.len() >= self.max_workers {
                tried.retain(|_, (at, _)| now.duration_since(*at) < INSPECT_AGAIN);
            }
            if tried.len() >= self.max_workers {
                return;
            }
            tried.insert(worker.to_owned(), (now, attempts.saturating_add(1)));
        }
        self.refresh_soon(worker);
    }

    /// [`refresh`](Self::refresh) of one worker unless one is running for it, or too many
    /// are; in the background (it ends within the inspect timeout).
    pub(crate) fn refresh_soon(self: &Arc<Self>, worker: &str) {
        {
            let mut running = self.refreshing.lock();
            if running.len() >= MAX_REFRESHES || !running.insert(worker.to_owned()) {
                return;
            }
        }
        let (state, worker) = (self.clone(), worker.to_owned());
        tokio::spawn(async move {
            if let Err(error) = state.refresh(Some(&worker)).await {
                tracing::warn!(%error, worker, "monitor: inspecting a worker failed");
            }
            state.refreshing.lock().remove(&worker);
        });
    }

    /// Asks the workers (or `worker`) for their state and caches the replies as Flower does.
    pub(crate) async fn refresh(&self, worker: Option<&str>) -> Result<()> {
        let control = kombu_celery::control::Control::new(&self.conn);
        let mut options = kombu_celery::control::Broadcast::new().timeout(self.inspect_timeout);
        let mut methods: Vec<&str> = INSPECT_ALL.to_vec();
        if let Some(worker) = worker {
            options = options.destination(worker);
            methods.extend(INSPECT_ONE);
        }
        let asks = methods.iter().map(|method| {
            let mut arguments = Map::new();
            if *method == "active" {
                arguments.insert("safe".into(), true.into());
            }
            let control = &control;
            let options = &options;
            async move { (*method, control.inspect(method, arguments, options).await) }
        });
        let replies = futures::future::join_all(asks).await;
        let mut cache = self.inspected.lock().await;
        let now = kombu_core::transport::unix_now();
        for (method, replies) in replies {
            let replies = match replies {
                Ok(replies) => replies,
                Err(error) => {
                    tracing::warn!(%error, method, "monitor: inspect failed");
                    continue;
                }
            };
            for (node, mut reply) in replies {
                if reply.is_null() || reply.get("error").is_some() {
                    continue;
                }
                if method == "stats" {
                    strip_alternates(&mut reply);
                }
                let entry = cache
                    .entry(node)
                    .or_insert_with(|| Json::Object(Map::new()));
                if let Json::Object(entry) = entry {
                    entry.insert(method.to_owned(), reply);
                    entry.insert("timestamp".into(), now.into());
                }
            }
        }
        // Bounded as the workers are: the least recently answered go.
        while cache.len() > self.max_workers {
            let oldest = cache
                .iter()
                .min_by(|a, b| {
                    let at = |v: &Json| v["timestamp"].as_f64().unwrap_or(0.0);
                    at(a.1).total_cmp(&at(b.1))
                })
                .map(|(node, _)| node.clone());
            match oldest {
                Some(node) => {
                    cache.shift_remove(&node);
                }
                None => break,
            }
        }
        Ok(())
    }
}

/// Flower drops the broker's alternates from `stats`.
fn strip_alternates(stats: &mut Json) {
    if let Some(broker) = stats.get_mut("broker").and_then(Json::as_object_mut) {
        broker.remove("alternates");
    }
    if let Some(broker) = stats
        .get_mut("consumer")
        .and_then(|c| c.get_mut("broker"))
        .and_then(Json::as_object_mut)
    {
        broker.remove("alternates");
    }
}

/// A running monitor: its state and the tasks that feed it.
#[derive(Debug)]
pub struct Monitor {
    state: Arc<State>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Monitor {
    /// A monitor of the workers and tasks on `conn`'s broker.
    pub fn builder(conn: &impl AsRef<Connection>) -> MonitorBuilder {
        MonitorBuilder {
            conn: conn.as_ref().clone(),
            db: None,
            limits: Limits::default(),
            max_workers: 5_000,
            inspect_timeout: Duration::from_secs(1),
            read_only: false,
            queues: Vec::new(),
            broker_api: None,
            auth: Auth::default(),
            results: None,
            url_prefix: None,
        }
    }

    /// The HTTP routes (Flower's API), to serve with `axum::serve`; under `prefix` when one
    /// is set ([`MonitorBuilder::url_prefix`], behind a reverse proxy).
    pub fn router(&self) -> axum::Router {
        let routes = api::router(self.state.clone());
        match self.state.url_prefix.as_deref() {
            // The page is `<prefix>` (its URLs resolve against a `<base>` naming the prefix);
            // `<prefix>/` leads there.
            Some(prefix) => {
                let page = prefix.to_owned();
                axum::Router::new().nest(prefix, routes).route(
                    &format!("{prefix}/"),
                    axum::routing::get(move || async move {
                        axum::response::Redirect::permanent(&page)
                    }),
                )
            }
            None => routes,
        }
    }

    /// Serves [`router`](Self::router) on `listener` until `shutdown` completes.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| {
                kombu_core::Error::new(
                    kombu_core::ErrorKind::Connection,
                    "the monitor's HTTP server",
                )
                .with_source(e)
            })
    }

    /// The task history.
    pub fn history(&self) -> &History {
        &self.state.history
    }

    /// Stops listening.
    pub async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unanswered_worker_is_asked_again_sooner_first() {
        let waits: Vec<u64> = (1..=7).map(|n| inspect_again(n).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 60, 60, 60]);
    }
}
