//! Task results as Celery stores them (`celery-protocol.md` §3): states, the result document,
//! a failure's exception, and [`TaskError`], how waiting for a result ends when it is not a
//! success.

use std::fmt;

use chrono::Utc;
use serde_json::{Map, Value as Json, json};

use crate::message::isoformat;

/// A task's state (`celery.states`); Celery allows custom names too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Unknown to the backend: not run yet, or its result expired.
    Pending,
    /// A worker took it.
    Received,
    /// It runs (only stored with `task_track_started`).
    Started,
    /// It failed and will be retried.
    Retry,
    /// A worker rejected it.
    Rejected,
    /// It returned a result.
    Success,
    /// It raised an exception.
    Failure,
    /// It was revoked, or expired before it ran.
    Revoked,
    /// A custom state.
    Other(String),
}

impl State {
    /// The name Celery stores.
    pub fn as_str(&self) -> &str {
        match self {
            State::Pending => "PENDING",
            State::Received => "RECEIVED",
            State::Started => "STARTED",
            State::Retry => "RETRY",
            State::Rejected => "REJECTED",
            State::Success => "SUCCESS",
            State::Failure => "FAILURE",
            State::Revoked => "REVOKED",
            State::Other(name) => name,
        }
    }

    /// The state a stored name stands for.
    pub fn parse(name: &str) -> State {
        match name {
            "PENDING" => State::Pending,
            "RECEIVED" => State::Received,
            "STARTED" => State::Started,
            "RETRY" => State::Retry,
            "REJECTED" => State::Rejected,
            "SUCCESS" => State::Success,
            "FAILURE" => State::Failure,
            "REVOKED" => State::Revoked,
            other => State::Other(other.to_owned()),
        }
    }

    /// Whether the task is done for good (SUCCESS, FAILURE, REVOKED: Celery's `READY_STATES`).
    pub fn is_ready(&self) -> bool {
        matches!(self, State::Success | State::Failure | State::Revoked)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An exception as Celery's JSON results carry it: Python re-raises it from these.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFailure {
    /// The exception class (`ValueError`).
    pub exc_type: String,
    /// Its module (`builtins`).
    pub exc_module: String,
    /// Its arguments (`["boom"]`).
    pub exc_message: Vec<Json>,
    /// The formatted traceback, when the worker gave one.
    pub traceback: Option<String>,
}

impl TaskFailure {
    /// Python's repr of the exception (`ValueError('boom')`), as Celery's events and Flower
    /// show it. Celery's `Reject` has a repr of its own: `reject requeue=False: reason`.
    pub fn repr(&self) -> String {
        if self.exc_module == "celery.exceptions" && self.exc_type == "Reject" {
            let reason = match self.exc_message.first() {
                Some(Json::String(text)) => text.clone(),
                Some(Json::Null) | None => "None".to_owned(),
                Some(other) => crate::repr::value_repr(other),
            };
            let requeue = match self.exc_message.get(1) {
                Some(Json::Bool(true)) => "True",
                _ => "False",
            };
            return format!("reject requeue={requeue}: {reason}");
        }
        let args: Vec<String> = self
            .exc_message
            .iter()
            .map(crate::repr::value_repr)
            .collect();
        format!("{}({})", self.exc_type, args.join(", "))
    }

    /// A failure of type `exc_type` from `exc_module` with `message` as its one argument.
    pub fn new(exc_module: &str, exc_type: &str, message: impl Into<String>) -> Self {
        TaskFailure {
            exc_type: exc_type.to_owned(),
            exc_module: exc_module.to_owned(),
            exc_message: vec![Json::String(message.into())],
            traceback: None,
        }
    }

    fn from_json(value: &Json, traceback: Option<String>) -> TaskFailure {
        let text = |key: &str| {
            value
                .get(key)
                .and_then(Json::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let exc_message = match value.get("exc_message") {
            Some(Json::Array(args)) => args.clone(),
            Some(Json::Null) | None => Vec::new(),
            Some(other) => vec![other.clone()],
        };
        TaskFailure {
            exc_type: text("exc_type"),
            exc_module: text("exc_module"),
            exc_message,
            traceback,
        }
    }

    fn to_json(&self) -> Json {
        json!({
            "exc_type": self.exc_type,
            "exc_message": self.exc_message,
            "exc_module": self.exc_module,
        })
    }
}

impl fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let args: Vec<String> = self
            .exc_message
            .iter()
            .map(|a| match a {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        write!(f, "{}: {}", self.exc_type, args.join(", "))
    }
}

impl std::error::Error for TaskFailure {}

/// A task's result document: what a worker stores and a client reads.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ResultMeta {
    /// The task id.
    pub task_id: String,
    /// Its state.
    pub state: State,
    /// The return value; for FAILURE, RETRY and REVOKED the exception document.
    pub result: Json,
    /// The formatted traceback of a failure.
    pub traceback: Option<String>,
    /// Result tuples of the subtasks it started.
    pub children: Json,
    /// When it became ready (ISO 8601, UTC), for ready states.
    pub date_done: Option<String>,
    /// Its group, when it belonged to one.
    pub group_id: Option<String>,
    /// The task that sent it, when one did.
    pub parent_id: Option<String>,
}

impl ResultMeta {
    /// What a backend says of a task it knows nothing of.
    pub fn pending(task_id: impl Into<String>) -> Self {
        ResultMeta {
            task_id: task_id.into(),
            state: State::Pending,
            result: Json::Null,
            traceback: None,
            children: Json::Null,
            date_done: None,
            group_id: None,
            parent_id: None,
        }
    }

    /// A success with `value`, done now.
    pub fn success(task_id: impl Into<String>, value: Json) -> Self {
        ResultMeta {
            state: State::Success,
            result: value,
            children: json!([]),
            date_done: Some(isoformat(Utc::now())),
            ..Self::pending(task_id)
        }
    }

    /// A failure (FAILURE, or REVOKED for a revoked or expired task), done now.
    pub fn failure(task_id: impl Into<String>, state: State, failure: &TaskFailure) -> Self {
        ResultMeta {
            state,
            result: failure.to_json(),
            traceback: failure.traceback.clone(),
            children: json!([]),
            date_done: Some(isoformat(Utc::now())),
            ..Self::pending(task_id)
        }
    }

    /// The exception of a failed, retried or revoked task.
    pub fn failure_of(&self) -> Option<TaskFailure> {
        match self.state {
            State::Failure | State::Retry | State::Revoked => {
                Some(TaskFailure::from_json(&self.result, self.traceback.clone()))
            }
            _ => None,
        }
    }

    /// The document Celery stores (`status`, `result`, `traceback`, `children`, `date_done`,
    /// `task_id`, and `group_id` / `parent_id` when set).
    pub fn to_json(&self) -> Json {
        let mut doc = Map::new();
        doc.insert("status".into(), json!(self.state.as_str()));
        doc.insert("result".into(), self.result.clone());
        doc.insert("traceback".into(), json!(self.traceback));
        doc.insert("children".into(), self.children.clone());
        doc.insert("date_done".into(), json!(self.date_done));
        if let Some(group) = &self.group_id {
            doc.insert("group_id".into(), json!(group));
        }
        if let Some(parent) = &self.parent_id {
            doc.insert("parent_id".into(), json!(parent));
        }
        doc.insert("task_id".into(), json!(self.task_id));
        Json::Object(doc)
    }

    /// Reads a stored document (of task `task_id`, should it not say).
    pub fn from_json(task_id: &str, doc: &Json) -> ResultMeta {
        let text = |key: &str| doc.get(key).and_then(Json::as_str).map(str::to_owned);
        ResultMeta {
            task_id: text("task_id").unwrap_or_else(|| task_id.to_owned()),
            state: State::parse(&text("status").unwrap_or_else(|| "PENDING".to_owned())),
            result: doc.get("result").cloned().unwrap_or(Json::Null),
            traceback: text("traceback"),
            children: doc.get("children").cloned().unwrap_or(Json::Null),
            date_done: text("date_done"),
            group_id: text("group_id"),
            parent_id: text("parent_id"),
        }
    }
}

/// How waiting for a task's result ends when it does not end in a value.
#[derive(Debug)]
#[non_exhaustive]
pub enum TaskError {
    /// The task raised this exception (state FAILURE).
    Failed(TaskFailure),
    /// The task was revoked or expired before it ran (state REVOKED).
    Revoked(TaskFailure),
    /// No ready state within the wait; the state it had then.
    TimedOut {
        /// The task id.
        task_id: String,
        /// Its state at the end of the wait.
        state: State,
    },
    /// The result did not decode into the expected type.
    Decode(serde_json::Error),
    /// The result backend failed.
    Backend(kombu_core::Error),
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Failed(e) => write!(f, "the task failed: {e}"),
            TaskError::Revoked(e) => write!(f, "the task was revoked: {e}"),
            TaskError::TimedOut { task_id, state } => {
                write!(f, "task {task_id} is still {state}: no result in time")
            }
            TaskError::Decode(e) => write!(f, "the task's result does not decode: {e}"),
            TaskError::Backend(e) => write!(f, "the result backend failed: {e:#}"),
        }
    }
}

impl std::error::Error for TaskError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TaskError::Failed(e) | TaskError::Revoked(e) => Some(e),
            TaskError::Decode(e) => Some(e),
            TaskError::Backend(e) => Some(e),
            TaskError::TimedOut { .. } => None,
        }
    }
}

impl From<kombu_core::Error> for TaskError {
    fn from(error: kombu_core::Error) -> Self {
        TaskError::Backend(error)
    }
}

/// The value of a ready result `meta`, decoded, or what ended the task.
pub(crate) fn outcome<R: serde::de::DeserializeOwned>(meta: ResultMeta) -> Result<R, TaskError> {
    match meta.state {
        State::Success => serde_json::from_value(meta.result).map_err(TaskError::Decode),
        State::Revoked => Err(TaskError::Revoked(meta.failure_of().unwrap_or_else(|| {
            TaskFailure::new("celery.exceptions", "TaskRevokedError", "revoked")
        }))),
        _ => Err(TaskError::Failed(meta.failure_of().unwrap_or_else(|| {
            TaskFailure::new("celery.exceptions", "CeleryError", meta.state.as_str())
        }))),
    }
}
