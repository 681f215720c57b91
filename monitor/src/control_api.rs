//! Flower's steering endpoints of remote control: worker control (`/api/worker/...`), revoke,
//! rate and time limits (sending tasks: [`task_api`](crate::task_api)). Each refuses in
//! read-only mode first, as Flower does, and answers with Flower's messages.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State as Shared};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use kombu_celery::control::{Broadcast, Control};
use serde_json::{Map, Value as Json, json};

use crate::State;
use crate::api::{error, json};

/// How long a control call waits for the worker's reply (Celery's default).
const REPLY_TIMEOUT: Duration = Duration::from_secs(1);

/// Tornado's arguments of a POST: the query string's and a form body's, the last one winning,
/// stripped.
pub(crate) fn arguments(query: Option<&str>, body: &[u8]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let pairs = serde_urlencoded::from_str::<Vec<(String, String)>>(query.unwrap_or_default())
        .unwrap_or_default()
        .into_iter()
        .chain(serde_urlencoded::from_bytes::<Vec<(String, String)>>(body).unwrap_or_default());
    for (key, value) in pairs {
        out.insert(key, value.trim().to_owned());
    }
    out
}

/// A 403 whose text body says why (Flower writes these as HTML).
fn refused(text: String) -> Response {
    (
        StatusCode::FORBIDDEN,
        [(header::CONTENT_TYPE, "text/html; charset=UTF-8")],
        text,
    )
        .into_response()
}

/// Flower's refusal of a steering call in read-only mode.
pub(crate) fn read_only(state: &State) -> Option<Response> {
    state
        .read_only
        .then(|| error(StatusCode::FORBIDDEN, "Read only mode is enabled"))
}

/// Whether Flower would know the worker: it answered an inspect.
async fn known(state: &State, worker: &str) -> bool {
    !worker.is_empty() && state.inspected.lock().await.contains_key(worker)
}

fn unknown_worker(worker: &str) -> Response {
    error(StatusCode::NOT_FOUND, format!("Unknown worker '{worker}'"))
}

pub(crate) fn unavailable(e: &kombu_core::Error) -> Response {
    tracing::warn!(error = %e, "monitor: a control call failed");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "Broker or result backend unavailable",
    )
}

/// Sends `method` to `worker` and waits for its reply: `Ok(ok text)` or `Err(reason)`.
async fn call(
    state: &State,
    worker: &str,
    method: &str,
    arguments: Map<String, Json>,
) -> kombu_core::Result<Result<Json, String>> {
    let control = Control::new(&state.conn);
    let options = Broadcast::new().destination(worker).timeout(REPLY_TIMEOUT);
    let replies = control.broadcast(method, arguments, &options).await?;
    let reply = replies
        .into_iter()
        .find(|(node, _)| node == worker)
        .map(|(_, payload)| payload);
    Ok(match reply {
        Some(payload) if payload.get("ok").is_some() => Ok(payload["ok"].clone()),
        Some(payload) => Err(payload
            .get("error")
            .and_then(Json::as_str)
            .unwrap_or("Unknown reason")
            .to_owned()),
        None => Err("Unknown reason".to_owned()),
    })
}

fn integer(
    args: &HashMap<String, String>,
    name: &str,
    default: Option<i64>,
) -> Result<i64, Response> {
    match args.get(name) {
        None => default
            .ok_or_else(|| error(StatusCode::BAD_REQUEST, format!("Missing argument {name}"))),
        Some(text) => text.parse().map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                format!("Invalid argument '{text}' of type 'int'"),
            )
        }),
    }
}

fn required<'a>(args: &'a HashMap<String, String>, name: &str) -> Result<&'a str, Response> {
    match args.get(name).map(String::as_str) {
        Some(value) if !value.is_empty() => Ok(value),
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            format!("Missing argument {name}"),
        )),
    }
}

/// `POST /api/worker/<action>/<worker>`.
pub(crate) async fn worker_control(
    Shared(state): Shared<Arc<State>>,
    Path((action, worker)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    if let Some(refusal) = read_only(&state) {
        return refusal;
    }
    if !known(&state, &worker).await {
        return unknown_worker(&worker);
    }
    let args = arguments(query.as_deref(), &body);
    let outcome: Result<(String, Map<String, Json>, String, String), Response> = (|| {
        Ok(match action.as_str() {
            "pool/grow" | "pool/shrink" => {
                let n = integer(&args, "n", Some(1))?;
                let (method, verb, failing) = match action.as_str() {
                    "pool/grow" => ("pool_grow", "Growing", "grow"),
                    _ => ("pool_shrink", "Shrinking", "shrink"),
                };
                (
                    method.to_owned(),
                    Map::from_iter([("n".to_owned(), json!(n))]),
                    format!("{verb} '{worker}' worker's pool by {n}"),
                    format!("Failed to {failing} '{worker}' worker's pool"),
                )
            }
            "pool/autoscale" => {
                let min = integer(&args, "min", None)?;
                let max = integer(&args, "max", None)?;
                (
                    "autoscale".to_owned(),
                    Map::from_iter([
                        ("min".to_owned(), json!(min)),
                        ("max".to_owned(), json!(max)),
                    ]),
                    format!("Autoscaling '{worker}' worker (min={min}, max={max})"),
                    format!("Failed to autoscale '{worker}' worker"),
                )
            }
            "pool/restart" => (
                "pool_restart".to_owned(),
                Map::from_iter([("reload".to_owned(), json!(false))]),
                format!("Restarting '{worker}' worker's pool"),
                format!("Failed to restart the '{worker}' pool"),
            ),
            "queue/add-consumer" | "queue/cancel-consumer" => {
                let queue = required(&args, "queue")?.to_owned();
                let (method, failing) = match action.as_str() {
                    "queue/add-consumer" => (
                        "add_consumer",
                        format!("Failed to add '{queue}' consumer to '{worker}' worker"),
                    ),
                    _ => (
                        "cancel_consumer",
                        format!("Failed to cancel '{queue}' consumer from '{worker}' worker"),
                    ),
                };
                (
                    method.to_owned(),
                    Map::from_iter([("queue".to_owned(), json!(queue))]),
                    String::new(),
                    failing,
                )
            }
            _ => return Err(error(StatusCode::NOT_FOUND, "Not Found")),
        })
    })();
    let (method, arguments, message, failing) = match outcome {
        Ok(parts) => parts,
        Err(response) => return response,
    };
    match call(&state, &worker, &method, arguments).await {
        Err(e) => unavailable(&e),
        Ok(Err(reason)) => refused(format!("{failing}: {reason}")),
        // The consumer commands answer with the worker's own words.
        Ok(Ok(ok)) if message.is_empty() => json(&json!({ "message": ok })),
        Ok(Ok(_)) => json(&json!({ "message": message })),
    }
}

/// `POST /api/worker/shutdown/<worker>`: a cast, no reply.
pub(crate) async fn shutdown(
    Shared(state): Shared<Arc<State>>,
    Path(worker): Path<String>,
) -> Response {
    if let Some(refusal) = read_only(&state) {
        return refusal;
    }
    if !known(&state, &worker).await {
        return unknown_worker(&worker);
    }
    let control = Control::new(&state.conn);
    match control
        .cast("shutdown", Map::new(), Some(vec![worker.clone()]))
        .await
    {
        Ok(()) => json(&json!({ "message": "Shutting down!" })),
        Err(e) => unavailable(&e),
    }
}

/// `POST /api/task/revoke/<id>`: a cast to every worker.
pub(crate) async fn revoke(
    Shared(state): Shared<Arc<State>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    if let Some(refusal) = read_only(&state) {
        return refusal;
    }
    let args = arguments(query.as_deref(), &body);
    let terminate = match crate::api::boolean(&args, "terminate") {
        Ok(terminate) => terminate,
        Err(response) => return response,
    };
    let signal = args
        .get("signal")
        .cloned()
        .unwrap_or_else(|| "SIGTERM".to_owned());
    let mut arguments = Map::new();
    arguments.insert("task_id".into(), json!(id));
    arguments.insert("terminate".into(), json!(terminate));
    arguments.insert("signal".into(), json!(signal));
    let control = Control::new(&state.conn);
    match control.cast("revoke", arguments, None).await {
        Ok(()) => json(&json!({ "message": format!("Revoked '{id}'") })),
        Err(e) => unavailable(&e),
    }
}

/// `POST /api/task/rate-limit/<name>` and `/api/task/timeout/<name>`.
pub(crate) async fn task_limit(
    Shared(state): Shared<Arc<State>>,
    Path((kind, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    if let Some(refusal) = read_only(&state) {
        return refusal;
    }
    let args = arguments(query.as_deref(), &body);
    let worker = match required(&args, "workername") {
        Ok(w) => w.to_owned(),
        Err(r) => return r,
    };
    let (method, arguments, failing) = if kind == "rate-limit" {
        let limit = match required(&args, "ratelimit") {
            Ok(l) => l.to_owned(),
            Err(r) => return r,
        };
        let mut arguments = Map::new();
        arguments.insert("task_name".into(), json!(name));
        arguments.insert("rate_limit".into(), json!(limit));
        ("rate_limit", arguments, "Failed to set rate limit")
    } else {
        let mut arguments = Map::new();
        arguments.insert("task_name".into(), json!(name));
        for key in ["hard", "soft"] {
            let value = match args.get(key).filter(|v| !v.is_empty()) {
                None => Json::Null,
                Some(text) => match text.parse::<f64>() {
                    Ok(v) => json!(v),
                    Err(_) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            format!("Invalid argument '{text}' of type 'float'"),
                        );
                    }
                },
            };
            arguments.insert(key.into(), value);
        }
        ("time_limit", arguments, "Failed to set timeouts")
    };
    if !known(&state, &worker).await {
        return unknown_worker(&worker);
    }
    match call(&state, &worker, method, arguments).await {
        Err(e) => unavailable(&e),
        Ok(Err(reason)) => refused(format!("{failing}: '{reason}'")),
        Ok(Ok(ok)) => json(&json!({ "message": ok })),
    }
}
