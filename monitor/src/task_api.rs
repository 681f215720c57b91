//! Flower's endpoints that send a task or write its result: `/api/task/send-task/<name>`,
//! `/api/task/async-apply/<name>`, `/api/task/apply/<name>` (send, then wait for the result)
//! and `/api/task/abort/<id>`. Each refuses in read-only mode first, as Flower does.
//!
//! Flower's async-apply and apply call a task its own Python app registers, and answer 404
//! for any other; the monitor has no task code, so both send by name, as send-task does.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, State as Shared};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::NaiveDateTime;
use kombu_celery::{Celery, ResultMeta, TaskOptions};
use serde_json::{Map, Value as Json, json};

use crate::State;
use crate::api::{error, json};
use crate::control_api::{read_only, unavailable};

/// Flower's (Python's `strptime`) format of an `eta` or `expires` date, `%Y-%m-%d
/// %H:%M:%S.%f` (the fraction of 1 to 6 digits required), read as UTC (Celery's default time
/// zone).
const DATE_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.f";

/// How long `/api/task/apply` waits when the caller names no `timeout`: Flower waits without
/// end; here until the caller goes away (the wait ends with its connection) or a day passes.
const APPLY_WAIT: Duration = Duration::from_secs(24 * 3600);

/// What a caller asks to send: the task's arguments, its options and (apply only) how long
/// to wait for the result.
struct Request {
    args: Json,
    kwargs: Json,
    options: TaskOptions,
    timeout: Option<Duration>,
}

/// A date in Flower's format, as a time.
fn date(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let (_, fraction) = text.rsplit_once('.')?;
    if !(1..=6).contains(&fraction.len()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let at = NaiveDateTime::parse_from_str(text, DATE_FORMAT).ok()?;
    let nanos = at.and_utc().timestamp_nanos_opt()?;
    let nanos = u64::try_from(nanos).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_nanos(nanos))
}

/// A number or a numeral.
fn number(value: &Json) -> Option<f64> {
    match value {
        Json::String(text) => text.trim().parse::<f64>().ok(),
        other => other.as_f64(),
    }
}

/// Seconds as a number or a numeral; out of range is `None`, not a panic.
fn seconds(value: &Json) -> Option<Duration> {
    number(value).and_then(|s| Duration::try_from_secs_f64(s).ok())
}

/// Apply's `timeout` as Celery's `get` reads it: none for `0` (wait as long as it takes),
/// at once for a negative one.
fn wait_for(value: &Json) -> Option<Option<Duration>> {
    match number(value)? {
        0.0 => Some(None),
        s if s < 0.0 => Some(Some(Duration::ZERO)),
        s => Duration::try_from_secs_f64(s).ok().map(Some),
    }
}

/// The JSON body of a send: `args`, `kwargs` and the options `queue`, `task_id`,
/// `priority`, `countdown` (seconds), `eta` (a date), `expires` (seconds or a date), and for
/// apply `timeout` (seconds). Flower's answers to what it refuses.
fn request(body: &[u8], apply: bool) -> Result<Request, Response> {
    let body: Json = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?
    };
    let Json::Object(mut body) = body else {
        return Err(error(StatusCode::BAD_REQUEST, "invalid options"));
    };
    let args = body.remove("args").unwrap_or_else(|| json!([]));
    if !args.is_array() {
        return Err(error(StatusCode::BAD_REQUEST, "args must be an array"));
    }
    let kwargs = body.remove("kwargs").unwrap_or_else(|| json!({}));
    // Only apply waits; Flower hands a send's `timeout` to Celery, which ignores it.
    let timeout = match body.remove("timeout").filter(|_| apply) {
        None | Some(Json::Null) => None,
        Some(value) => {
            wait_for(&value).ok_or_else(|| error(StatusCode::BAD_REQUEST, "Invalid timeout"))?
        }
    };
    // Celery: a countdown wins over an eta, wherever it stands.
    let countdown = body.remove("countdown");
    let invalid = || error(StatusCode::BAD_REQUEST, "Invalid option");
    let mut options = TaskOptions::new();
    for (key, value) in &body {
        options = match (key.as_str(), value) {
            ("queue", Json::String(q)) => options.queue(q.as_str()),
            ("task_id", Json::String(id)) => options.task_id(id.as_str()),
            ("priority", Json::Number(p)) => match p.as_u64().and_then(|p| u8::try_from(p).ok()) {
                Some(p) => options.priority(p),
                None => return Err(invalid()),
            },
            ("eta", Json::String(at)) => options.eta(date(at).ok_or_else(invalid)?),
            ("expires", Json::String(at)) if at.trim().parse::<f64>().is_err() => {
                options.expires_at(date(at).ok_or_else(invalid)?)
            }
            ("expires", _) => options.expires_in(seconds(value).ok_or_else(invalid)?),
            ("eta", _) => return Err(invalid()),
            _ => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!("Unsupported option '{key}'"),
                ));
            }
        };
    }
    if let Some(countdown) = countdown {
        options = options.countdown(seconds(&countdown).ok_or_else(invalid)?);
    }
    Ok(Request {
        args,
        kwargs,
        options,
        timeout,
    })
}

/// Adds a finished task's outcome as Flower does: `result` (a failure's exception as its
/// Python repr), and `traceback` for a failure.
pub(crate) fn add_outcome(out: &mut Map<String, Json>, meta: &ResultMeta) {
    let result = match meta.failure_of() {
        Some(failure) => Json::from(failure.repr()),
        None => meta.result.clone(),
    };
    out.insert("result".into(), result);
    if meta.state == kombu_celery::State::Failure {
        out.insert(
            "traceback".into(),
            meta.traceback.clone().map_or(Json::Null, Json::from),
        );
    }
}

/// The refusal of a call that needs the result backend when there is none (Flower: an empty
/// 503).
pub(crate) fn no_backend() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "No result backend: start the monitor with --backend",
    )
}

/// Sends task `name` as `body` asks (read-only mode refused first): its id and, for apply,
/// how long to wait.
async fn send(
    state: &State,
    name: &str,
    body: &[u8],
    apply: bool,
) -> Result<(String, Option<Duration>), Response> {
    if let Some(refusal) = read_only(state) {
        return Err(refusal);
    }
    if apply && state.results.is_none() {
        return Err(no_backend());
    }
    let sent = request(body, apply)?;
    let celery = Celery::new(&state.conn);
    match celery
        .send_task(name, sent.args, sent.kwargs, sent.options)
        .await
    {
        Ok(id) => Ok((id, sent.timeout)),
        Err(e) => Err(unavailable(&e)),
    }
}

/// `POST /api/task/send-task/<name>` and `/api/task/async-apply/<name>`:
/// `{"task-id": id}`, and with a result backend the state read right after the send.
pub(crate) async fn send_task(
    Shared(state): Shared<Arc<State>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let id = match send(&state, &name, &body, false).await {
        Ok((id, _)) => id,
        Err(refusal) => return refusal,
    };
    match &state.results {
        None => json(&json!({ "task-id": id })),
        Some(backend) => match backend.meta(&id).await {
            Ok(meta) => json(&json!({ "task-id": id, "state": meta.state.as_str() })),
            Err(e) => unavailable(&e),
        },
    }
}

/// `POST /api/task/apply/<name>`: sends the task, waits for its result (at most `timeout`
/// seconds of the body) and answers Flower's `{"task-id", "result", ["traceback"], "state"}`;
/// when the wait ends first, `{"task-id", "state"}`.
pub(crate) async fn apply(
    Shared(state): Shared<Arc<State>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let (id, timeout) = match send(&state, &name, &body, true).await {
        Ok(sent) => sent,
        Err(refusal) => return refusal,
    };
    let Some(backend) = &state.results else {
        return no_backend();
    };
    let meta = match backend.wait(&id, timeout.unwrap_or(APPLY_WAIT)).await {
        Ok(meta) => meta,
        Err(e) => return unavailable(&e),
    };
    let mut out = Map::new();
    out.insert("task-id".into(), Json::from(id));
    if meta.state.is_ready() {
        add_outcome(&mut out, &meta);
    }
    out.insert("state".into(), Json::from(meta.state.as_str()));
    json(&Json::Object(out))
}

/// `POST /api/task/abort/<id>`: stores the state `ABORTED` for the task in the result
/// backend, as Celery's `AbortableAsyncResult.abort` (a task of Celery's `AbortableTask`
/// looks for it; a result already `SUCCESS` is kept); `{"message": "Aborted '<id>'"}`.
pub(crate) async fn abort(Shared(state): Shared<Arc<State>>, Path(id): Path<String>) -> Response {
    if let Some(refusal) = read_only(&state) {
        return refusal;
    }
    let Some(backend) = state.results.clone() else {
        return no_backend();
    };
    let mut meta = ResultMeta::pending(id.as_str());
    meta.state = kombu_celery::State::Other("ABORTED".to_owned());
    match backend.store(&meta).await {
        Ok(()) => json(&json!({ "message": format!("Aborted '{id}'") })),
        Err(e) => unavailable(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flower_dates_are_utc() {
        let since = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).ok();
        assert_eq!(
            date("2026-12-07 10:00:00.250000").and_then(since),
            Some(Duration::from_millis(1_796_637_600_250))
        );
        assert_eq!(
            date("2026-12-07 10:00:00.5").and_then(since),
            Some(Duration::from_millis(1_796_637_600_500))
        );
        // As Python's strptime with `.%f`: the fraction required, six digits at most.
        assert!(date("2026-12-07 10:00:00").is_none());
        assert!(date("2026-12-07 10:00:00.1234567").is_none());
        assert!(date("0000-00-00 00:00:00.0").is_none());
        assert!(date("tomorrow").is_none());
    }

    #[test]
    fn options_read_as_flower() {
        let refused = |body: &str, apply: bool| {
            request(body.as_bytes(), apply)
                .err()
                .map(|r| r.status().as_u16())
        };
        assert_eq!(refused(r#"{"eta": "soon"}"#, false), Some(400));
        // Flower fails on this one with a 500.
        assert_eq!(refused(r#"{"eta": 5}"#, false), Some(400));
        assert_eq!(refused(r#"{"expires": "2026-12-07"}"#, false), Some(400));
        assert_eq!(refused(r#"{"timeout": "x"}"#, true), Some(400));
        assert_eq!(refused(r#"{"args": 3}"#, false), Some(400));
        assert_eq!(refused("[1]", false), Some(400));
        assert_eq!(refused(r#"{"colour": "red"}"#, false), Some(400));
        for fine in [
            r#"{"eta": "2026-12-07 10:00:00.5", "expires": "2026-12-08 10:00:00.000000"}"#,
            r#"{"expires": "30", "countdown": 2}"#,
            r#"{"timeout": 1.5, "queue": "q", "priority": 3}"#,
        ] {
            assert_eq!(refused(fine, true), None, "{fine}");
        }
        // A send's timeout is passed over, as Celery does.
        assert_eq!(refused(r#"{"timeout": 2}"#, false), None);
        let timeout = |body: &str| request(body.as_bytes(), true).ok().and_then(|r| r.timeout);
        assert_eq!(timeout(r#"{"timeout": 0}"#), None, "0: no time limit");
        assert_eq!(timeout(r#"{"timeout": -1}"#), Some(Duration::ZERO));
        assert_eq!(
            timeout(r#"{"timeout": "2.5"}"#),
            Some(Duration::from_millis(2500))
        );
    }
}
