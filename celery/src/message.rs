//! Celery's task message, protocol 2: the headers (every key Celery writes, `null` when
//! unset), the body `[args, kwargs, embed]`, and the properties; and the signatures of its
//! canvas (`link`, `link_error`, `chain`, `chord`). Reference: `celery-protocol.md` §2;
//! checked against what Celery 5.7's own `app.amqp.as_task_v2` builds for the same call
//! (`tests/python_format.rs`).

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use kombu_core::{Headers, Value};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json, json};

use crate::repr;

/// A task call as Celery's canvas writes it (`celery.canvas.Signature` as a dict): what
/// `link`, `link_error`, a chain's next tasks and a chord's body are made of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signature {
    /// The task's registered name.
    pub task: String,
    /// Positional arguments (the parent's result is put first unless `immutable`).
    pub args: Vec<Json>,
    /// Keyword arguments.
    pub kwargs: Map<String, Json>,
    /// `apply_async` options (`task_id`, `queue`, `priority`, ...).
    pub options: Map<String, Json>,
    /// `null`, or `"chain"`, `"group"`, `"chord"` for Celery's composite tasks.
    pub subtask_type: Option<String>,
    /// Whether the parent's result is left out of `args`.
    pub immutable: bool,
}

impl Signature {
    /// A call of `task` with no arguments yet.
    pub fn new(task: impl Into<String>) -> Self {
        Signature {
            task: task.into(),
            args: Vec::new(),
            kwargs: Map::new(),
            options: Map::new(),
            subtask_type: None,
            immutable: false,
        }
    }

    /// Its positional arguments (a value that serializes as a JSON array, e.g. a tuple);
    /// anything else is one argument.
    pub fn args(mut self, args: impl Serialize) -> Self {
        self.args = into_args(serde_json::to_value(args).unwrap_or(Json::Null));
        self
    }

    /// One keyword argument.
    pub fn kwarg(mut self, name: impl Into<String>, value: impl Serialize) -> Self {
        self.kwargs.insert(
            name.into(),
            serde_json::to_value(value).unwrap_or(Json::Null),
        );
        self
    }

    /// Celery's `.si()`: the parent's result is not passed.
    pub fn immutable(mut self) -> Self {
        self.immutable = true;
        self
    }

    /// One `apply_async` option (`queue`, `priority`, `task_id`, ...).
    pub fn option(mut self, name: impl Into<String>, value: impl Serialize) -> Self {
        self.options.insert(
            name.into(),
            serde_json::to_value(value).unwrap_or(Json::Null),
        );
        self
    }
}

impl Signature {
    /// A canvas's list of signatures (a chain's or group's `tasks`, a chord's header):
    /// every one, or the first that does not parse; none when the value is not a list.
    pub(crate) fn list(value: Option<&Json>) -> Result<Vec<Signature>, serde_json::Error> {
        match value {
            Some(Json::Array(items)) => items
                .iter()
                .map(|t| serde_json::from_value(t.clone()))
                .collect(),
            _ => Ok(Vec::new()),
        }
    }
}

/// A JSON value as positional arguments: an array's items, `null` as none, anything else as
/// the one argument.
pub(crate) fn into_args(value: Json) -> Vec<Json> {
    match value {
        Json::Array(items) => items,
        Json::Null => Vec::new(),
        other => vec![other],
    }
}

/// When a task may run (`eta`, `countdown`) or stops being worth running (`expires`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// This long after the send.
    In(Duration),
    /// At this time.
    At(DateTime<Utc>),
}

impl When {
    fn at(self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            When::At(at) => at,
            When::In(after) => chrono::Duration::from_std(after)
                .ok()
                .and_then(|d| now.checked_add_signed(d))
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        }
    }
}

/// Python's `datetime.isoformat()` of a UTC time: microseconds only when not zero, the
/// offset as `+00:00` (`2026-12-07T03:00:10+00:00`, `2026-12-07T03:00:10.500000+00:00`).
pub(crate) fn isoformat(at: DateTime<Utc>) -> String {
    let micros = at.nanosecond() / 1_000 % 1_000_000;
    match micros {
        0 => at.format("%Y-%m-%dT%H:%M:%S+00:00").to_string(),
        _ => format!("{}.{micros:06}+00:00", at.format("%Y-%m-%dT%H:%M:%S")),
    }
}

/// The parts of one task message, before it is published.
#[derive(Debug, Clone)]
pub(crate) struct Parts {
    pub(crate) id: String,
    pub(crate) headers: Headers,
    pub(crate) body: Json,
    /// How long until it expires (the AMQP `expiration` Celery sets), when it does.
    pub(crate) expiration: Option<Duration>,
}

/// What a task message says beyond its name and arguments: [`crate::TaskOptions`]' fields
/// after routing.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fields {
    pub(crate) task_id: Option<String>,
    pub(crate) eta: Option<When>,
    pub(crate) expires: Option<When>,
    pub(crate) retries: u32,
    pub(crate) root_id: Option<String>,
    pub(crate) parent_id: Option<String>,
    pub(crate) group_id: Option<String>,
    pub(crate) group_index: Option<u32>,
    pub(crate) time_limit: Option<f64>,
    pub(crate) soft_time_limit: Option<f64>,
    pub(crate) shadow: Option<String>,
    pub(crate) ignore_result: Option<bool>,
    pub(crate) link: Vec<Signature>,
    pub(crate) link_error: Vec<Signature>,
    pub(crate) chain: Vec<Signature>,
    pub(crate) chord: Option<Signature>,
    pub(crate) headers: Headers,
}

/// The protocol 2 message of `name(*args, **kwargs)` sent at `now` from `origin`.
pub(crate) fn task_message(
    name: &str,
    args: Vec<Json>,
    kwargs: Map<String, Json>,
    fields: &Fields,
    now: DateTime<Utc>,
    origin: &str,
) -> Parts {
    let id = fields
        .task_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let eta = fields.eta.map(|w| w.at(now));
    let expires = fields.expires.map(|w| w.at(now));
    let list_or_null = |v: &[Signature]| match v.is_empty() {
        true => Json::Null,
        false => json!(v),
    };
    // Built as kombu values directly: no JSON document in between on this per-task path.
    let text = |v: &Option<String>| v.as_ref().map_or(Value::Null, |s| Value::from(s.as_str()));
    let time = |t: Option<DateTime<Utc>>| t.map_or(Value::Null, |t| Value::from(isoformat(t)));
    let seconds = |v: Option<f64>| v.map_or(Value::Null, Value::from);
    let mut headers = Headers::new();
    let mut set = |key: &str, value: Value| {
        headers.insert(key.to_owned(), value);
    };
    set("lang", Value::from("py"));
    set("task", Value::from(name));
    set("id", Value::from(id.as_str()));
    set("shadow", text(&fields.shadow));
    set("eta", time(eta));
    set("expires", time(expires));
    set("group", text(&fields.group_id));
    set(
        "group_index",
        fields
            .group_index
            .map_or(Value::Null, |i| Value::Int(i64::from(i))),
    );
    set("retries", Value::Int(i64::from(fields.retries)));
    set(
        "timelimit",
        Value::List(vec![
            seconds(fields.time_limit),
            seconds(fields.soft_time_limit),
        ]),
    );
    set(
        "root_id",
        Value::from(fields.root_id.clone().unwrap_or_else(|| id.clone())),
    );
    set("parent_id", text(&fields.parent_id));
    set("argsrepr", Value::from(repr::args_repr(&args)));
    set("kwargsrepr", Value::from(repr::kwargs_repr(&kwargs)));
    set("origin", Value::from(origin));
    set(
        "ignore_result",
        fields.ignore_result.map_or(Value::Null, Value::from),
    );
    set("replaced_task_nesting", Value::Int(0));
    set("stamped_headers", Value::Null);
    set("stamps", Value::Map(Headers::new()));
    // Custom headers go in at the top level, as apply_async(headers=...) puts them.
    for (key, value) in &fields.headers {
        headers.insert(key.clone(), value.clone());
    }
    let body = json!([
        args,
        kwargs,
        {
            "callbacks": list_or_null(&fields.link),
            "errbacks": list_or_null(&fields.link_error),
            "chain": list_or_null(&fields.chain),
            "chord": fields.chord.as_ref().map_or(Json::Null, |c| json!(c)),
        }
    ]);
    let expiration = expires.map(|at| (at - now).to_std().unwrap_or(Duration::ZERO));
    Parts {
        id,
        headers,
        body,
        expiration,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn times_read_as_pythons_isoformat() {
        let at = Utc.with_ymd_and_hms(2026, 12, 7, 3, 0, 10).single();
        let Some(at) = at else {
            panic!("a valid time");
        };
        assert_eq!(isoformat(at), "2026-12-07T03:00:10+00:00");
        let later = at + chrono::Duration::microseconds(500_000) + chrono::Duration::nanoseconds(7);
        assert_eq!(isoformat(later), "2026-12-07T03:00:10.500000+00:00");
    }
}
