//! [`Celery`], the client: sends tasks as Celery's `send_task` / `apply_async` do.

use std::collections::HashSet;
use std::marker::PhantomData;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use kombu_core::{
    Connection, DeliveryMode, Error, ErrorKind, Exchange, Producer, Queue, Result, Value,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value as Json};

use crate::backend::ResultBackend;
use crate::message::{Fields, Signature, When, into_args, task_message};
use crate::result::{State, TaskError, outcome};

/// Celery's default queue (and its direct exchange and routing key): `task_default_queue`.
pub const DEFAULT_QUEUE: &str = "celery";

/// A task declared once in Rust by its Celery name, with the types of its arguments (a tuple,
/// sent as the positional arguments) and of its result, so calls are checked at compile time.
///
/// ```
/// use kombu_celery::Task;
///
/// /// Python: `@app.task(name="tasks.add") def add(x, y): return x + y`
/// const ADD: Task<(i64, i64), i64> = Task::new("tasks.add");
/// assert_eq!(ADD.name(), "tasks.add");
/// ```
pub struct Task<Args, Output> {
    name: &'static str,
    _types: PhantomData<fn(Args) -> Output>,
}

impl<Args, Output> Task<Args, Output> {
    /// The task registered as `name` by the workers.
    pub const fn new(name: &'static str) -> Self {
        Task {
            name,
            _types: PhantomData,
        }
    }

    /// Its registered name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl<Args, Output> Clone for Task<Args, Output> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<Args, Output> Copy for Task<Args, Output> {}

impl<Args, Output> std::fmt::Debug for Task<Args, Output> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task").field("name", &self.name).finish()
    }
}

/// A task sent: its id, and the type of its result.
pub struct Sent<Output> {
    id: String,
    _output: PhantomData<fn() -> Output>,
}

impl<Output> Sent<Output> {
    /// The task of id `id` (Celery's `AsyncResult(id)`), its result read as `Output`.
    pub fn new(id: impl Into<String>) -> Self {
        Sent {
            id: id.into(),
            _output: PhantomData,
        }
    }

    /// The task id (Celery's `AsyncResult.id`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its state in `backend` now (PENDING when the backend knows nothing of it).
    pub async fn state(&self, backend: &dyn ResultBackend) -> Result<State> {
        Ok(backend.meta(&self.id).await?.state)
    }
}

impl<Output: DeserializeOwned> Sent<Output> {
    /// Celery's `AsyncResult.get(timeout)`: waits up to `timeout` for the task to be ready in
    /// `backend` (no polling where the backend can notify), then its value, or the exception
    /// it raised ([`TaskError::Failed`]), its revocation, or [`TaskError::TimedOut`].
    pub async fn get(
        &self,
        backend: &dyn ResultBackend,
        timeout: Duration,
    ) -> std::result::Result<Output, TaskError> {
        let meta = backend.wait(&self.id, timeout).await?;
        if !meta.state.is_ready() {
            return Err(TaskError::TimedOut {
                task_id: self.id.clone(),
                state: meta.state,
            });
        }
        outcome(meta)
    }
}

impl<Output> std::fmt::Debug for Sent<Output> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sent").field("id", &self.id).finish()
    }
}

/// `apply_async`'s options: where a task goes and what its message says. All optional.
#[derive(Debug, Clone, Default)]
pub struct TaskOptions {
    pub(crate) queue: Option<String>,
    pub(crate) priority: Option<u8>,
    reply_to: Option<String>,
    pub(crate) fields: Fields,
}

impl TaskOptions {
    /// No options: the default queue, a fresh id, no eta or expiry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The task id (default: a fresh UUID4).
    pub fn task_id(mut self, id: impl Into<String>) -> Self {
        self.fields.task_id = Some(id.into());
        self
    }

    /// The queue (declared as Celery declares a missing one: durable, with a direct exchange
    /// and routing key of its name); default: the client's routes, else its default queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Run no sooner than `delay` after the send (Celery's `countdown`: written as an `eta`).
    pub fn countdown(mut self, delay: Duration) -> Self {
        self.fields.eta = Some(When::In(delay));
        self
    }

    /// Run no sooner than `at` (Celery's `eta`).
    pub fn eta(mut self, at: SystemTime) -> Self {
        self.fields.eta = Some(When::At(DateTime::<Utc>::from(at)));
        self
    }

    /// Not worth running past `after` from the send: a worker then stores REVOKED (Celery's
    /// numeric `expires`; the message's AMQP expiration too).
    pub fn expires_in(mut self, after: Duration) -> Self {
        self.fields.expires = Some(When::In(after));
        self
    }

    /// Not worth running past `at`.
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.fields.expires = Some(When::At(DateTime::<Utc>::from(at)));
        self
    }

    /// The message priority (0-255; on Redis, 0 is taken first, as kombu's priority buckets).
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Retries so far (a task re-sending itself for a retry counts one more).
    pub fn retries(mut self, retries: u32) -> Self {
        self.fields.retries = retries;
        self
    }

    /// The first task of the workflow (default: this task).
    pub fn root_id(mut self, id: impl Into<String>) -> Self {
        self.fields.root_id = Some(id.into());
        self
    }

    /// The task that sends this one.
    pub fn parent_id(mut self, id: impl Into<String>) -> Self {
        self.fields.parent_id = Some(id.into());
        self
    }

    /// Its group and its place in it.
    pub fn group(mut self, group_id: impl Into<String>, index: u32) -> Self {
        self.fields.group_id = Some(group_id.into());
        self.fields.group_index = Some(index);
        self
    }

    /// The hard time limit, seconds.
    pub fn time_limit(mut self, seconds: f64) -> Self {
        self.fields.time_limit = Some(seconds);
        self
    }

    /// The soft time limit, seconds.
    pub fn soft_time_limit(mut self, seconds: f64) -> Self {
        self.fields.soft_time_limit = Some(seconds);
        self
    }

    /// The name logs and events show instead of the task's.
    pub fn shadow(mut self, name: impl Into<String>) -> Self {
        self.fields.shadow = Some(name.into());
        self
    }

    /// Whether the worker stores no result (default: unsaid, `null`, as Celery's `send_task`
    /// by name writes it: the worker's task decides).
    pub fn ignore_result(mut self, ignore: bool) -> Self {
        self.fields.ignore_result = Some(ignore);
        self
    }

    /// Runs `callback` with the result on success (Celery's `link`); may be given again.
    pub fn link(mut self, callback: Signature) -> Self {
        self.fields.link.push(callback);
        self
    }

    /// Runs `errback` on failure (Celery's `link_error`); may be given again.
    pub fn link_error(mut self, errback: Signature) -> Self {
        self.fields.link_error.push(errback);
        self
    }

    /// The tasks to run after this one, each with the previous one's result, first to last
    /// (written in Celery's reverse order).
    pub fn chain(mut self, next: impl IntoIterator<Item = Signature>) -> Self {
        let mut next: Vec<Signature> = next.into_iter().collect();
        next.reverse();
        self.fields.chain = next;
        self
    }

    /// The reply queue (Celery's `reply_to`, where the `rpc://` result backend replies);
    /// default empty.
    pub fn reply_to(mut self, queue: impl Into<String>) -> Self {
        self.reply_to = Some(queue.into());
        self
    }

    /// A header of the application's, put at the top level beside Celery's.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.fields.headers.insert(key.into(), value.into());
        self
    }
}

/// Sends tasks to Celery workers (Python's or this crate's) over a kombu-rs connection.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> kombu_core::Result<()> {
/// use std::time::Duration;
/// use kombu_celery::{Celery, Task, TaskOptions};
///
/// const ADD: Task<(i64, i64), i64> = Task::new("tasks.add");
///
/// # kombu_core::transport::memory::register();
/// let conn = kombu_core::Connection::open("memory://doc-celery").await?;
/// let celery = Celery::new(&conn);
/// let sent = celery.call(&ADD, (2, 3)).await?;
/// println!("sent {}", sent.id());
/// // By name, with options:
/// celery
///     .send_task("tasks.add", (4, 5), (), TaskOptions::new().countdown(Duration::from_secs(10)))
///     .await?;
/// assert_eq!(conn.queue_size("celery").await?, 2);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Celery {
    conn: Connection,
    /// Publishes every task (one producer: its retry policy and declarations are set once).
    producer: Producer,
    default_queue: String,
    routes: Vec<(String, String)>,
    origin: String,
    pub(crate) reply_to: Option<String>,
    declared: Mutex<HashSet<String>>,
    /// Sends `task-sent` events, when asked.
    sent_events: Option<crate::events::EventDispatcher>,
}

/// Options of a [`Celery`] client; from [`Celery::builder`].
#[derive(Debug)]
pub struct CeleryBuilder {
    conn: Connection,
    default_queue: String,
    routes: Vec<(String, String)>,
    origin: Option<String>,
    reply_to: Option<String>,
    sent_events: bool,
}

impl CeleryBuilder {
    /// The queue of tasks no route names (Celery's `task_default_queue`, default `celery`).
    pub fn default_queue(mut self, queue: impl Into<String>) -> Self {
        self.default_queue = queue.into();
        self
    }

    /// Sends the tasks `pattern` names to `queue`, as Celery's `task_routes`: an exact name,
    /// or a glob where `*` stands for any text (`tasks.*`). Routes are tried in the order given.
    pub fn route(mut self, pattern: impl Into<String>, queue: impl Into<String>) -> Self {
        self.routes.push((pattern.into(), queue.into()));
        self
    }

    /// The `origin` header (default `gen<pid>@<host>`, as Celery's clients write it).
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// The `reply_to` of every task it sends (where the `rpc://` result backend's results
    /// come: [`RpcResultBackend::reply_to`](crate::backend::RpcResultBackend::reply_to));
    /// a task's own [`TaskOptions::reply_to`] wins. Default empty.
    pub fn reply_to(mut self, queue: impl Into<String>) -> Self {
        self.reply_to = Some(queue.into());
        self
    }

    /// Sends a `task-sent` event for each task (Celery's `task_send_sent_event`; default
    /// `false`), as node `gen<pid>@<host>` (or the [`origin`](Self::origin)): monitors then
    /// show tasks from the moment they are sent (PENDING). See [`crate::events`].
    pub fn send_sent_events(mut self, on: bool) -> Self {
        self.sent_events = on;
        self
    }

    /// The client.
    pub fn build(self) -> Celery {
        let origin = self.origin.unwrap_or_else(default_origin);
        Celery {
            producer: self.conn.producer(),
            sent_events: self
                .sent_events
                .then(|| crate::events::EventDispatcher::new(&self.conn, origin.clone())),
            conn: self.conn,
            default_queue: self.default_queue,
            routes: self.routes,
            origin,
            reply_to: self.reply_to,
            declared: Mutex::new(HashSet::new()),
        }
    }
}

/// `gen<pid>@<hostname>`.
fn default_origin() -> String {
    format!("gen{}@{}", std::process::id(), hostname())
}

/// The machine's host name (`localhost` when it cannot be read).
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Whether `name` matches the glob `pattern` (`*`: any text).
fn glob(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return pattern == name;
    };
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty(); // no `*`: the whole name matched
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

impl Celery {
    /// A client with Celery's defaults (queue `celery`, no routes).
    pub fn new(conn: &impl AsRef<Connection>) -> Celery {
        Self::builder(conn).build()
    }

    /// A client with options.
    pub fn builder(conn: &impl AsRef<Connection>) -> CeleryBuilder {
        CeleryBuilder {
            conn: conn.as_ref().clone(),
            default_queue: DEFAULT_QUEUE.to_owned(),
            routes: Vec::new(),
            origin: None,
            sent_events: false,
            reply_to: None,
        }
    }

    /// The queue a task of `name` goes to without an explicit one.
    pub fn queue_of(&self, name: &str) -> &str {
        self.routes
            .iter()
            .find(|(pattern, _)| glob(pattern, name))
            .map_or(self.default_queue.as_str(), |(_, queue)| queue.as_str())
    }

    /// Sends `task` with `args`; the typed [`call`](Self::call_with) with no options.
    pub async fn call<Args: Serialize, Output: DeserializeOwned>(
        &self,
        task: &Task<Args, Output>,
        args: Args,
    ) -> Result<Sent<Output>> {
        self.call_with(task, args, TaskOptions::new()).await
    }

    /// Sends `task` with `args` (a tuple: the positional arguments) and `options`.
    pub async fn call_with<Args: Serialize, Output: DeserializeOwned>(
        &self,
        task: &Task<Args, Output>,
        args: Args,
        options: TaskOptions,
    ) -> Result<Sent<Output>> {
        let id = self.send_task(task.name(), args, (), options).await?;
        Ok(Sent::new(id))
    }

    /// Celery's `send_task(name, args, kwargs, **options)`: writes the protocol 2 message and
    /// publishes it to the task's queue (the default exchange, the queue's name as routing
    /// key, as Celery routes to a direct queue), declaring the queue first as Celery does.
    /// `args` serializes as a JSON array (a tuple, a `Vec`; `()` for none), `kwargs` as an
    /// object (`()` for none). Returns the task id.
    pub async fn send_task(
        &self,
        name: &str,
        args: impl Serialize,
        kwargs: impl Serialize,
        options: TaskOptions,
    ) -> Result<String> {
        let codec = |what: &str, e: serde_json::Error| {
            Error::new(
                ErrorKind::Codec,
                format!("task {name}: {what} do not serialize"),
            )
            .with_source(e)
        };
        let args = into_args(serde_json::to_value(args).map_err(|e| codec("args", e))?);
        let kwargs = match serde_json::to_value(kwargs).map_err(|e| codec("kwargs", e))? {
            Json::Object(map) => map,
            Json::Null => Map::new(),
            other => {
                return Err(Error::new(
                    ErrorKind::Codec,
                    format!("task {name}: kwargs must serialize as an object, not {other}"),
                ));
            }
        };
        let queue = options
            .queue
            .clone()
            .unwrap_or_else(|| self.queue_of(name).to_owned());
        self.declare(&queue).await?;
        let parts = task_message(
            name,
            args,
            kwargs,
            &options.fields,
            Utc::now(),
            &self.origin,
        );
        let sent_headers = match self.sent_events {
            Some(_) => parts.headers.clone(),
            None => Default::default(),
        };
        let mut publish = self
            .producer
            .message(&parts.body)
            .routing_key(queue.as_str())
            .headers(parts.headers)
            .correlation_id(parts.id.as_str())
            .reply_to(
                options
                    .reply_to
                    .clone()
                    .or_else(|| self.reply_to.clone())
                    .unwrap_or_default(),
            )
            .delivery_mode(DeliveryMode::Persistent);
        if let Some(priority) = options.priority {
            publish = publish.priority(priority);
        }
        if let Some(ttl) = parts.expiration {
            publish = publish.expiration(ttl);
        }
        publish.send().await?;
        if let Some(events) = &self.sent_events {
            let header = |key: &str| {
                sent_headers
                    .get(key)
                    .and_then(|v| serde_json::to_value(v).ok())
                    .unwrap_or(Json::Null)
            };
            let fields = crate::events::fields([
                ("uuid", Json::from(parts.id.as_str())),
                ("name", Json::from(name)),
                ("args", header("argsrepr")),
                ("kwargs", header("kwargsrepr")),
                ("retries", header("retries")),
                ("eta", header("eta")),
                ("expires", header("expires")),
                ("queue", Json::from(queue.as_str())),
                ("exchange", Json::from("")),
                ("routing_key", Json::from(queue.as_str())),
                ("root_id", header("root_id")),
                ("parent_id", header("parent_id")),
            ]);
            if let Err(error) = events
                .emit(crate::events::EventKind::TaskSent, fields)
                .await
            {
                tracing::warn!(error = %format_args!("{error:#}"), id = %parts.id, "the task-sent event was not sent");
            }
        }
        Ok(parts.id)
    }

    /// Declares `queue` as Celery declares a queue it routes to (durable, bound to a direct
    /// exchange of its name with its name as key), once per client.
    async fn declare(&self, queue: &str) -> Result<()> {
        let known = self
            .declared
            .lock()
            .map(|set| set.contains(queue))
            .unwrap_or(false);
        if known {
            return Ok(());
        }
        let declaration = Queue::new(queue)
            .exchange(Exchange::direct(queue))
            .routing_key(queue);
        self.conn.declare_queue(&declaration).await?;
        if let Ok(mut set) = self.declared.lock() {
            set.insert(queue.to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn routes_match_exact_names_and_globs() {
        assert!(glob("tasks.add", "tasks.add"));
        assert!(!glob("tasks.add", "tasks.adder"));
        assert!(glob("tasks.*", "tasks.add"));
        assert!(glob("*.add", "tasks.add"));
        assert!(glob("t*s.a*d", "tasks.add"));
        assert!(!glob("video.*", "tasks.add"));
        assert!(glob("*", "anything"));
    }
}
