//! Reading a task message as a Celery worker does (`celery-protocol.md` §2.6, §2.7): protocol
//! 2 (the task in the headers, the body `[args, kwargs, embed]`) and protocol 1 (no task
//! headers; the body a dict with `task`, `id`, `args`, `kwargs`, ...).

use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};
use kombu_core::{Delivery, Error, ErrorKind, Result, Value};
use serde_json::{Map, Value as Json};

use crate::message::{Signature, into_args};

/// A task message as a worker reads it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TaskRequest {
    /// The protocol it came in: 1 or 2.
    pub protocol: u8,
    /// The task id.
    pub id: String,
    /// The registered task name.
    pub task: String,
    /// Positional arguments.
    pub args: Vec<Json>,
    /// Keyword arguments.
    pub kwargs: Map<String, Json>,
    /// Not before this time (`eta`, or a `countdown` turned into one by the sender).
    pub eta: Option<DateTime<FixedOffset>>,
    /// Not after this time.
    pub expires: Option<DateTime<FixedOffset>>,
    /// Retries so far.
    pub retries: u32,
    /// The first task of its workflow (itself when alone; `None` from protocol 1).
    pub root_id: Option<String>,
    /// The task that sent it.
    pub parent_id: Option<String>,
    /// Its group (or chord header) id.
    pub group: Option<String>,
    /// Its place in the group.
    pub group_index: Option<u32>,
    /// Hard and soft time limits, seconds.
    pub time_limit: (Option<f64>, Option<f64>),
    /// Who sent it (`gen<pid>@<host>` from a client).
    pub origin: Option<String>,
    /// Run on success (`link`).
    pub callbacks: Vec<Signature>,
    /// Run on failure (`link_error`).
    pub errbacks: Vec<Signature>,
    /// The rest of its chain, the next task last.
    pub chain: Vec<Signature>,
    /// The chord body this task is a header task of.
    pub chord: Option<Signature>,
}

fn invalid(what: impl Into<String>) -> Error {
    Error::new(ErrorKind::Codec, what.into()).set_recoverable(false)
}

impl TaskRequest {
    /// Reads `delivery` as a Celery task message of either protocol; fails with
    /// [`ErrorKind::Codec`] when it is none (no task name or id, a body of another shape, a
    /// malformed `eta` or `expires`, as Celery's `InvalidTaskError`).
    pub fn from_delivery(delivery: &Delivery) -> Result<TaskRequest> {
        let body: Json = delivery.decode()?;
        match delivery.headers().get("task") {
            Some(Value::String(task)) => protocol2(task, delivery, body),
            _ => protocol1(body),
        }
    }
}

fn protocol2(task: &str, delivery: &Delivery, body: Json) -> Result<TaskRequest> {
    let headers = delivery.headers();
    let text = |key: &str| match headers.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    let id = text("id").ok_or_else(|| invalid("a Celery task message without an id header"))?;
    let Json::Array(mut parts) = body else {
        return Err(invalid(format!(
            "task {id}: the body of a protocol 2 message is [args, kwargs, embed]"
        )));
    };
    parts.resize(3, Json::Null);
    let embed = parts.pop().unwrap_or(Json::Null);
    let kwargs = object(parts.pop().unwrap_or(Json::Null));
    let args = into_args(parts.pop().unwrap_or(Json::Null));
    let header_json = |key: &str| {
        headers
            .get(key)
            .and_then(|v| serde_json::to_value(v).ok())
            .unwrap_or(Json::Null)
    };
    Ok(TaskRequest {
        protocol: 2,
        task: task.to_owned(),
        args,
        kwargs,
        eta: time(&header_json("eta"), "eta", &id)?,
        expires: time(&header_json("expires"), "expires", &id)?,
        retries: count(&header_json("retries")),
        root_id: text("root_id"),
        parent_id: text("parent_id"),
        group: text("group"),
        group_index: header_json("group_index")
            .as_u64()
            .and_then(|i| u32::try_from(i).ok()),
        time_limit: limits(&header_json("timelimit")),
        origin: text("origin"),
        callbacks: signatures(embed.get("callbacks")),
        errbacks: signatures(embed.get("errbacks")),
        chain: signatures(embed.get("chain")),
        chord: embed
            .get("chord")
            .and_then(|c| serde_json::from_value(c.clone()).ok()),
        id,
    })
}

fn protocol1(body: Json) -> Result<TaskRequest> {
    let Json::Object(body) = body else {
        return Err(invalid(
            "not a Celery task message: no task header, and the body is not a protocol 1 dict",
        ));
    };
    let text = |key: &str| body.get(key).and_then(Json::as_str).map(str::to_owned);
    let task = text("task").ok_or_else(|| invalid("a protocol 1 task message without a task"))?;
    let id = text("id").ok_or_else(|| invalid(format!("task {task}: no id")))?;
    let null = Json::Null;
    let field = |key: &str| body.get(key).unwrap_or(&null);
    Ok(TaskRequest {
        protocol: 1,
        args: into_args(field("args").clone()),
        kwargs: object(field("kwargs").clone()),
        eta: time(field("eta"), "eta", &id)?,
        expires: time(field("expires"), "expires", &id)?,
        retries: count(field("retries")),
        root_id: None,
        parent_id: None,
        group: text("taskset").or_else(|| text("group")),
        group_index: field("group_index")
            .as_u64()
            .and_then(|i| u32::try_from(i).ok()),
        time_limit: limits(field("timelimit")),
        origin: None,
        callbacks: signatures(body.get("callbacks")),
        errbacks: signatures(body.get("errbacks")),
        chain: Vec::new(),
        chord: body
            .get("chord")
            .and_then(|c| serde_json::from_value(c.clone()).ok()),
        task,
        id,
    })
}

fn object(value: Json) -> Map<String, Json> {
    match value {
        Json::Object(map) => map,
        _ => Map::new(),
    }
}

fn count(value: &Json) -> u32 {
    value
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}

fn limits(value: &Json) -> (Option<f64>, Option<f64>) {
    match value.as_array().map(Vec::as_slice) {
        Some([hard, soft, ..]) => (hard.as_f64(), soft.as_f64()),
        _ => (None, None),
    }
}

fn signatures(value: Option<&Json>) -> Vec<Signature> {
    match value {
        Some(Json::Array(items)) => items
            .iter()
            .filter_map(|s| serde_json::from_value(s.clone()).ok())
            .collect(),
        _ => Vec::new(),
    }
}

/// An ISO 8601 time with or without an offset (a naive one is taken as UTC: Celery's default
/// `enable_utc`), or `null`.
fn time(value: &Json, what: &str, id: &str) -> Result<Option<DateTime<FixedOffset>>> {
    let Some(text) = value.as_str() else {
        return Ok(None);
    };
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(Some(at));
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .map(|naive| Some(naive.and_utc().fixed_offset()))
        .map_err(|e| {
            invalid(format!(
                "task {id}: {what} {text:?} is not an ISO 8601 time ({e})"
            ))
        })
}

/// Now, as a request's times are compared with it.
pub(crate) fn now() -> DateTime<FixedOffset> {
    Utc::now().fixed_offset()
}

impl TaskRequest {
    /// Whether its `expires` has passed (a worker then stores REVOKED and does not run it).
    pub fn expired(&self) -> bool {
        self.expires.is_some_and(|at| at <= now())
    }
}
