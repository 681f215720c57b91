//! What a registered task is: its settings, the context it runs with, how it fails or asks
//! to be retried, and the type-erased handler the worker calls.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value as Json};
use tokio::time::Instant;

use super::rate::RateLimit;
use crate::request::TaskRequest;
use crate::result::TaskFailure;

/// Celery's `Task.max_retries` default.
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// Celery's `Task.default_retry_delay`: three minutes.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(180);

/// A task's own settings, as Celery's task attributes (`@app.task(time_limit=..., ...)`);
/// a message's `timelimit` header wins over the limits here.
#[derive(Debug, Clone)]
pub struct TaskSettings {
    pub(crate) params: Vec<String>,
    pub(crate) time_limit: Option<Duration>,
    pub(crate) soft_time_limit: Option<Duration>,
    pub(crate) rate_limit: Option<RateLimit>,
    pub(crate) acks_late: Option<bool>,
    pub(crate) max_retries: Option<u32>,
    pub(crate) retry_delay: Duration,
    pub(crate) ignore_result: bool,
    pub(crate) track_started: bool,
}

impl Default for TaskSettings {
    fn default() -> Self {
        TaskSettings {
            params: Vec::new(),
            time_limit: None,
            soft_time_limit: None,
            rate_limit: None,
            acks_late: None,
            max_retries: Some(DEFAULT_MAX_RETRIES),
            retry_delay: DEFAULT_RETRY_DELAY,
            ignore_result: false,
            track_started: false,
        }
    }
}

impl TaskSettings {
    /// Celery's defaults: no limits, the worker's acks, 3 retries 180 s apart.
    pub fn new() -> Self {
        Self::default()
    }

    /// The names of the positional parameters, so that keyword arguments
    /// (`add.delay(x=2, y=3)`, `add.s(y=3)`) fill them: without names, a call with keyword
    /// arguments fails with Python's `TypeError`.
    pub fn params<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.params = names.into_iter().map(Into::into).collect();
        self
    }

    /// The hard time limit (Celery's `time_limit`): past it the task is dropped (at its next
    /// `.await`: CPU-bound code between awaits is not interrupted) and fails with
    /// `celery.exceptions.TimeLimitExceeded`.
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = Some(limit);
        self
    }

    /// The soft time limit (Celery's `soft_time_limit`): past it
    /// [`TaskContext::soft_time_limit_exceeded`] resolves, so the task can clean up and fail
    /// with [`TaskFailure::soft_time_limit`].
    pub fn soft_time_limit(mut self, limit: Duration) -> Self {
        self.soft_time_limit = Some(limit);
        self
    }

    /// At most this many starts of the task per worker (Celery's `rate_limit`, a token bucket
    /// of one); tasks over it wait in the worker without holding a concurrency slot.
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Acknowledge after the task ran (`true`, Celery's `acks_late`) or before (`false`);
    /// default: the worker's [`WorkerBuilder::acks_late`](super::WorkerBuilder::acks_late).
    pub fn acks_late(mut self, late: bool) -> Self {
        self.acks_late = Some(late);
        self
    }

    /// Retries allowed to [`Retry`] (default [`DEFAULT_MAX_RETRIES`]; `None`: no bound).
    pub fn max_retries(mut self, max: Option<u32>) -> Self {
        self.max_retries = max;
        self
    }

    /// The countdown of a [`Retry`] that names none (default [`DEFAULT_RETRY_DELAY`]).
    pub fn default_retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    /// Store no result (Celery's `ignore_result`); a message's `ignore_result` header set to
    /// `true` does the same for one call.
    pub fn ignore_result(mut self, ignore: bool) -> Self {
        self.ignore_result = ignore;
        self
    }

    /// Store STARTED when the task starts (Celery's `track_started`).
    pub fn track_started(mut self, track: bool) -> Self {
        self.track_started = track;
        self
    }
}

/// What a running task knows of its call: the request (id, retries, root and parent, ...),
/// its soft time limit, and how to ask for a retry.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub(crate) request: Arc<TaskRequest>,
    pub(crate) soft_deadline: Option<Instant>,
    pub(crate) hostname: Arc<str>,
}

impl TaskContext {
    /// The task message as the worker read it (Celery's `self.request`).
    pub fn request(&self) -> &TaskRequest {
        &self.request
    }

    /// The task id.
    pub fn id(&self) -> &str {
        &self.request.id
    }

    /// Retries so far (`self.request.retries`): 0 on the first run.
    pub fn retries(&self) -> u32 {
        self.request.retries
    }

    /// The worker's name (`self.request.hostname`).
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// A retry of this task (Celery's `self.retry()`): return it as the task's error,
    /// `Err(ctx.retry().countdown(...).into())`.
    pub fn retry(&self) -> Retry {
        Retry::default()
    }

    /// Resolves once the soft time limit has passed (never, without one): `select!` on it
    /// to stop early.
    pub async fn soft_time_limit_exceeded(&self) {
        match self.soft_deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    /// Whether the soft time limit has passed.
    pub fn is_past_soft_time_limit(&self) -> bool {
        self.soft_deadline.is_some_and(|at| Instant::now() >= at)
    }
}

/// A task's request to run again later (Celery's `Task.retry`): the same task id, one more
/// retry counted, its `eta` the countdown from now. Once the retries allowed are used up the
/// task fails instead, with `exc` when given, else `celery.exceptions.MaxRetriesExceededError`.
#[derive(Debug, Clone, Default)]
pub struct Retry {
    pub(crate) countdown: Option<Duration>,
    pub(crate) max_retries: Option<Option<u32>>,
    pub(crate) exc: Option<TaskFailure>,
}

impl Retry {
    /// Run again this long from now (default: the task's `default_retry_delay`).
    pub fn countdown(mut self, countdown: Duration) -> Self {
        self.countdown = Some(countdown);
        self
    }

    /// The retries allowed for this call (`None`: no bound), instead of the task's.
    pub fn max_retries(mut self, max: Option<u32>) -> Self {
        self.max_retries = Some(max);
        self
    }

    /// The exception that caused it: stored with the RETRY state, and the task's failure once
    /// no retry is left.
    pub fn exc(mut self, exc: TaskFailure) -> Self {
        self.exc = Some(exc);
        self
    }
}

/// A task's refusal of its message (Celery's `Reject(reason, requeue)`).
///
/// As in Celery, it acts on the message only when the task acks late
/// ([`TaskSettings::acks_late`]); an early-acked message is gone by the time the task runs.
/// - Without requeue: the task fails with `celery.exceptions.Reject` (stored, `task-failed`,
///   errbacks and chain as any failure) and, acked late, its message is dead-lettered (to
///   `<queue>.dlq`; Celery's broker would drop it) and `task-rejected` is sent.
/// - With requeue: nothing is stored; acked late, its message goes back to its queue, to be
///   run again, and `task-rejected` (requeue true) is sent. Acked early, the run just ends.
#[derive(Debug, Clone, Default)]
pub struct Reject {
    pub(crate) reason: Option<String>,
    pub(crate) requeue: bool,
}

impl Reject {
    /// A rejection for `reason`, without requeue.
    pub fn new(reason: impl Into<String>) -> Self {
        Reject {
            reason: Some(reason.into()),
            requeue: false,
        }
    }

    /// Put the message back in its queue instead of dead-lettering it.
    pub fn requeue(mut self, requeue: bool) -> Self {
        self.requeue = requeue;
        self
    }

    /// The failure a rejection without requeue stores: `Reject(reason, False)`, which Python
    /// reads back as `celery.exceptions.Reject`.
    pub(crate) fn failure(&self) -> TaskFailure {
        TaskFailure {
            exc_type: "Reject".into(),
            exc_module: "celery.exceptions".into(),
            exc_message: vec![
                self.reason.clone().map_or(Json::Null, Json::String),
                Json::Bool(self.requeue),
            ],
            traceback: None,
        }
    }
}

/// How a task ends when it does not return a value.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TaskFail {
    /// It raised this exception: state FAILURE, the errbacks run, a chain stops.
    Failed(TaskFailure),
    /// It asked to be run again ([`TaskContext::retry`]).
    Retry(Retry),
    /// It refused its message ([`Reject`]).
    Reject(Reject),
    /// Celery's `Ignore`: the run ends with no state stored and no event sent; a late-acked
    /// message is acked.
    Ignore,
}

impl From<TaskFailure> for TaskFail {
    fn from(failure: TaskFailure) -> Self {
        TaskFail::Failed(failure)
    }
}

impl From<Retry> for TaskFail {
    fn from(retry: Retry) -> Self {
        TaskFail::Retry(retry)
    }
}

impl From<Reject> for TaskFail {
    fn from(reject: Reject) -> Self {
        TaskFail::Reject(reject)
    }
}

impl fmt::Display for TaskFail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskFail::Failed(e) => write!(f, "{e}"),
            TaskFail::Retry(r) => write!(f, "retry requested (countdown {:?})", r.countdown),
            TaskFail::Reject(r) => write!(
                f,
                "message rejected (requeue {}): {}",
                r.requeue,
                r.reason.as_deref().unwrap_or("no reason given")
            ),
            TaskFail::Ignore => write!(f, "ignored"),
        }
    }
}

impl TaskFailure {
    /// Python's `ValueError(message)`.
    pub fn value_error(message: impl Into<String>) -> Self {
        TaskFailure::new("builtins", "ValueError", message)
    }

    /// Python's `TypeError(message)`: how a call with arguments of the wrong shape fails.
    pub fn type_error(message: impl Into<String>) -> Self {
        TaskFailure::new("builtins", "TypeError", message)
    }

    /// Celery's `SoftTimeLimitExceeded`, for a task stopping at its soft time limit.
    pub fn soft_time_limit() -> Self {
        TaskFailure::new(
            "celery.exceptions",
            "SoftTimeLimitExceeded",
            "SoftTimeLimitExceeded()",
        )
    }
}

pub(crate) type TaskFuture = Pin<Box<dyn Future<Output = Result<Json, TaskFail>> + Send>>;

/// A registered task with its types erased.
pub(crate) trait Handler: Send + Sync {
    /// Starts the task with the message's arguments, or says why they do not fit it.
    fn call(
        &self,
        args: Vec<Json>,
        kwargs: Map<String, Json>,
        ctx: TaskContext,
    ) -> Result<TaskFuture, TaskFailure>;
}

pub(crate) struct Typed<Args, Output, F> {
    pub(crate) name: &'static str,
    pub(crate) params: Vec<String>,
    pub(crate) func: F,
    pub(crate) _types: std::marker::PhantomData<fn(Args) -> Output>,
}

impl<Args, Output, F, Fut> Handler for Typed<Args, Output, F>
where
    Args: DeserializeOwned + Send + 'static,
    Output: Serialize + Send + 'static,
    F: Fn(Args, TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Output, TaskFail>> + Send + 'static,
{
    fn call(
        &self,
        mut args: Vec<Json>,
        mut kwargs: Map<String, Json>,
        ctx: TaskContext,
    ) -> Result<TaskFuture, TaskFailure> {
        // Keyword arguments fill the named parameters after the positional ones.
        for name in self.params.iter().skip(args.len()) {
            match kwargs.remove(name) {
                Some(value) => args.push(value),
                None => break,
            }
        }
        if let Some(name) = kwargs.keys().next() {
            return Err(TaskFailure::type_error(format!(
                "{}() got an unexpected keyword argument '{name}'",
                self.name
            )));
        }
        let value = match args.is_empty() {
            // `()` reads from `null`, a tuple from an array.
            true => serde_json::from_value::<Args>(Json::Null)
                .or_else(|_| serde_json::from_value::<Args>(Json::Array(Vec::new()))),
            false => serde_json::from_value::<Args>(Json::Array(args)),
        }
        .map_err(|e| {
            TaskFailure::type_error(format!("{}(): the arguments do not fit: {e}", self.name))
        })?;
        let future = (self.func)(value, ctx);
        let name = self.name;
        Ok(Box::pin(async move {
            let output = future.await?;
            serde_json::to_value(output).map_err(|e| {
                TaskFail::Failed(TaskFailure::new(
                    "kombu.exceptions",
                    "EncodeError",
                    format!("{name}: the result does not serialize: {e}"),
                ))
            })
        }))
    }
}
