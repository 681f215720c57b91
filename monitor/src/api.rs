//! Flower's HTTP API over the monitor's state: the same paths, parameters, status codes and
//! JSON (see the crate docs for what is served so far).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State as Shared};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{Local, NaiveDateTime, TimeZone};
use serde_json::{Map, Value as Json};

use crate::history::{SortKey, TaskQuery};
use crate::{State, broker_api, control_api, pyjson, task_api};

pub(crate) fn router(state: Arc<State>) -> Router {
    Router::new()
        .route(
            "/healthcheck",
            get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=UTF-8")], "OK") }),
        )
        .route("/", get(crate::page::index))
        .route("/static/monitor.js", get(crate::page::script))
        .route("/static/monitor.css", get(crate::page::style))
        .route("/api/monitor/workers", get(crate::page::workers))
        .route("/metrics", get(metrics))
        .route("/api/queues/length", get(queue_lengths))
        .route("/api/live", get(crate::live::stream))
        .route("/api/stats/series", get(crate::live::series))
        .route("/api/broker/queues", get(broker_api::queues))
        .route(
            "/api/broker/queues/{name}/messages",
            get(broker_api::messages).post(broker_api::take_and_requeue),
        )
        .route("/api/broker/queues/{name}/replay", post(broker_api::replay))
        .route("/api/tasks", get(tasks))
        .route("/api/task/types", get(task_types))
        .route("/api/task/result/{id}", get(task_result))
        .route("/api/task/info/", get(task_info_empty))
        .route("/api/task/info/{*id}", get(task_info))
        .route("/api/workers", get(workers))
        .route("/api/worker/shutdown/{worker}", post(control_api::shutdown))
        .route("/api/worker/{group}/{action}/{worker}", post(worker_action))
        .route("/api/task/revoke/{id}", post(control_api::revoke))
        .route("/api/task/{kind}/{name}", post(task_post))
        .route(
            "/api/openapi.json",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    include_str!("openapi.json"),
                )
            }),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "Not Found") })
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn(etag))
        .with_state(state)
}

/// Tornado's ETag: a 200 answer to GET or HEAD carries `Etag: "<SHA-1 of the body>"`, and a
/// request whose `If-None-Match` names it (or `*`) gets 304 with no body.
async fn etag(request: axum::extract::Request, next: Next) -> Response {
    let conditional = matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    let asked = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let response = next.run(request).await;
    let streaming = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"));
    if !conditional || response.status() != StatusCode::OK || streaming {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    use sha1::Digest;
    let digest = sha1::Sha1::digest(&bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let tag = format!("\"{hex}\"");
    let matches = asked.is_some_and(|asked| {
        asked.split(',').any(|candidate| {
            let candidate = candidate.trim();
            candidate == "*" || candidate.trim_start_matches("W/") == tag
        })
    });
    if matches {
        parts.status = StatusCode::NOT_MODIFIED;
        parts.headers.remove(header::CONTENT_TYPE);
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, axum::body::Body::empty());
    }
    if let Ok(value) = header::HeaderValue::from_str(&tag) {
        parts.headers.insert(header::ETAG, value);
    }
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// `/api/worker/pool/<x>/<w>` and `/api/worker/queue/<x>/<w>`.
async fn worker_action(
    shared: Shared<Arc<State>>,
    Path((group, action, worker)): Path<(String, String, String)>,
    query: axum::extract::RawQuery,
    body: axum::body::Bytes,
) -> Response {
    control_api::worker_control(
        shared,
        Path((format!("{group}/{action}"), worker)),
        query,
        body,
    )
    .await
}

/// `POST /api/task/<kind>/<name>`: rate-limit, timeout, send-task, async-apply.
async fn task_post(
    shared: Shared<Arc<State>>,
    Path((kind, name)): Path<(String, String)>,
    query: axum::extract::RawQuery,
    body: axum::body::Bytes,
) -> Response {
    match kind.as_str() {
        "rate-limit" | "timeout" => {
            control_api::task_limit(shared, Path((kind, name)), query, body).await
        }
        "send-task" | "async-apply" => task_api::send_task(shared, Path(name), body).await,
        "apply" => task_api::apply(shared, Path(name), body).await,
        "abort" => task_api::abort(shared, Path(name)).await,
        _ => error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// Checks the caller of `/api/...` and of the page when users or tokens are set: a user's
/// HTTP Basic pair, a bearer token, or a token as a Basic password; otherwise 401 with an
/// empty body (as Flower) asking for HTTP Basic.
async fn authorize(
    Shared(state): Shared<Arc<State>>,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    // The API, and the page itself (so that a browser asks for the password when it opens
    // the page, and sends it with the page's calls).
    let path = request.uri().path();
    if !path.starts_with("/api/") && path != "/" {
        return next.run(request).await;
    }
    if let Some(refusal) = cross_site(&request, state.auth.is_open()) {
        return refusal;
    }
    if state.auth.is_open() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let allowed = match presented.split_once(' ') {
        Some(("Basic", encoded)) => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
                .is_some_and(|pair| {
                    // A user's pair, or a token as the password (any user name): how a
                    // browser, which asks for a user and password only, uses a token.
                    let password = pair
                        .iter()
                        .position(|&b| b == b':')
                        .map_or(&[][..], |colon| &pair[colon + 1..]);
                    state.auth.basic.iter().any(|b| same(b.as_bytes(), &pair))
                        || state
                            .auth
                            .tokens
                            .iter()
                            .any(|t| same(t.as_bytes(), password))
                })
        }
        Some(("Bearer", token)) => {
            let token = token.trim().as_bytes();
            state.auth.tokens.iter().any(|t| same(t.as_bytes(), token))
        }
        _ => false,
    };
    if allowed {
        next.run(request).await
    } else {
        // As Flower with users: a browser then asks for a user and password (with tokens, a
        // token is the password).
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"kombu monitor\"")],
        )
            .into_response()
    }
}

/// Refuses (403, empty body) what a web page of another site could make a browser send: any
/// call of the API that `Sec-Fetch-Site` marks cross-site; a steering call (not GET, HEAD or
/// OPTIONS) marked cross-site (or same-site) by `Sec-Fetch-Site` or whose
/// `Origin` is not the `Host` asked (Flower's check); and, while the API is `open` (no users or
/// tokens), any call addressed to a host that is not loopback (a DNS name rebound to
/// 127.0.0.1 by a page).
fn cross_site(request: &axum::extract::Request, open: bool) -> Option<Response> {
    let headers = request.headers();
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let host = text(header::HOST).unwrap_or_default();
    if open {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
            _ => host,
        };
        let loopback = name == "localhost"
            || name
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Some(StatusCode::FORBIDDEN.into_response());
        }
    }
    let fetch_site = text(header::HeaderName::from_static("sec-fetch-site"));
    // The page calls its own API only: a browser's call from another site is refused, a
    // GET too (a refresh runs an inspect broadcast); a link to the page itself is followed.
    if fetch_site == Some("cross-site") && request.uri().path().starts_with("/api/") {
        return Some(StatusCode::FORBIDDEN.into_response());
    }
    if matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    ) {
        return None;
    }
    if fetch_site.is_some_and(|site| !matches!(site, "same-origin" | "none")) {
        return Some(StatusCode::FORBIDDEN.into_response());
    }
    if let Some(origin) = text(header::ORIGIN) {
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if origin_host != host {
            return Some(StatusCode::FORBIDDEN.into_response());
        }
    }
    None
}

/// Compares secrets in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A JSON body as Flower writes it.
pub(crate) fn json(value: &impl serde::Serialize) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json; charset=UTF-8")],
        pyjson::to_string(value),
    )
        .into_response()
}

/// An error with a plain-text reason, as Flower's `HTTPError(status, reason)`.
pub(crate) fn error(status: StatusCode, reason: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=UTF-8")],
        reason.into(),
    )
        .into_response()
}

pub(crate) fn failed(e: kombu_core::Error) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
}

/// Tornado's `get_argument`: the last value, stripped.
pub(crate) fn argument<'a>(params: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    params.get(name).map(|v| v.trim())
}

/// A Flower integer argument (400 when not one).
fn integer(params: &HashMap<String, String>, name: &str) -> Result<Option<i64>, Response> {
    match argument(params, name) {
        None => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                format!("Invalid argument '{text}' of type 'int'"),
            )
        }),
    }
}

/// A Flower boolean argument (`strtobool`: y, yes, t, true, on, 1 true; n, no, f, false, off,
/// 0 false, in any case; anything else 400).
pub(crate) fn boolean(params: &HashMap<String, String>, name: &str) -> Result<bool, Response> {
    let Some(text) = argument(params, name) else {
        return Ok(false);
    };
    match text.to_lowercase().as_str() {
        "y" | "yes" | "t" | "true" | "on" | "1" => Ok(true),
        "n" | "no" | "f" | "false" | "off" | "0" => Ok(false),
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            format!("Invalid argument '{text}' of type 'bool'"),
        )),
    }
}

/// `YYYY-MM-DD HH:MM` in this host's time zone, as epoch seconds (Flower's `mktime`).
fn local_minute(text: &str) -> Option<f64> {
    let parsed = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M").ok()?;
    let local = Local.from_local_datetime(&parsed).earliest()?;
    Some(local.timestamp() as f64)
}

async fn tasks(
    Shared(state): Shared<Arc<State>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let limit = match integer(&params, "limit") {
        Ok(v) => v,
        Err(r) => return r,
    };
    let offset = match integer(&params, "offset") {
        Ok(v) => v.unwrap_or(0).max(0),
        Err(r) => return r,
    };
    let filter = |name: &str| {
        argument(&params, name)
            .filter(|v| *v != "All")
            .map(str::to_owned)
    };
    let sort_by = match argument(&params, "sort_by").filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => {
            let key = text.trim_start_matches('-');
            match SortKey::parse(key) {
                Some(key) => Some((key, text.starts_with('-'))),
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "Invalid sort_by '{text}', expected one of name, received, started, state"
                        ),
                    );
                }
            }
        }
    };
    let mut bounds = [None, None];
    for (slot, name) in bounds.iter_mut().zip(["received_start", "received_end"]) {
        if let Some(text) = argument(&params, name).filter(|t| !t.is_empty()) {
            match local_minute(text) {
                Some(at) => *slot = Some(at),
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "Invalid received_start or received_end, expected format 'YYYY-MM-DD HH:MM'",
                    );
                }
            }
        }
    }
    let search = match params.get("search").map(|s| crate::search::parse(s)) {
        None => None,
        Some(Ok(query)) => Some(query),
        Some(Err(message)) => {
            return (
                StatusCode::BAD_REQUEST,
                json(&serde_json::json!({ "error": message })),
            )
                .into_response();
        }
    };
    let query = TaskQuery {
        limit,
        offset,
        worker: filter("workername"),
        name: filter("taskname"),
        state: filter("state"),
        received_start: bounds[0],
        received_end: bounds[1],
        sort_by,
        search,
    };
    let history = state.history.clone();
    let page = match tokio::task::spawn_blocking(move || history.tasks(&query)).await {
        Ok(Ok(page)) => page,
        Ok(Err(e)) => return failed(e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut out = Map::new();
    for (task, children) in page {
        let uuid = task.str("uuid").unwrap_or_default().to_owned();
        out.insert(uuid, task.to_flower(&children, true));
    }
    json(&Json::Object(out))
}

async fn task_types(Shared(state): Shared<Arc<State>>) -> Response {
    let history = state.history.clone();
    match tokio::task::spawn_blocking(move || history.types()).await {
        Ok(Ok(types)) => json(&serde_json::json!({ "task-types": types })),
        Ok(Err(e)) => failed(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn task_info_empty() -> Response {
    error(StatusCode::NOT_FOUND, "Unknown task ''")
}

async fn task_info(Shared(state): Shared<Arc<State>>, Path(id): Path<String>) -> Response {
    let history = state.history.clone();
    let lookup = id.clone();
    match tokio::task::spawn_blocking(move || history.task(&lookup)).await {
        Ok(Ok(Some((task, children)))) => json(&task.to_flower(&children, false)),
        Ok(Ok(None)) => error(StatusCode::NOT_FOUND, format!("Unknown task '{id}'")),
        Ok(Err(e)) => failed(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn workers(
    Shared(state): Shared<Arc<State>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let worker = argument(&params, "workername")
        .filter(|w| !w.is_empty())
        .map(str::to_owned);
    let (refresh, status) = match (boolean(&params, "refresh"), boolean(&params, "status")) {
        (Ok(refresh), Ok(status)) => (refresh, status),
        (Err(response), _) | (_, Err(response)) => return response,
    };
    if refresh && let Err(e) = state.refresh(worker.as_deref()).await {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Failed to update workers: {e}"),
        );
    }
    if status {
        let now = kombu_core::transport::unix_now();
        let workers = state.workers.lock();
        let alive: Map<String, Json> = workers
            .iter()
            .map(|w| (w.hostname.clone(), Json::Bool(w.alive(now))))
            .collect();
        return json(&Json::Object(alive));
    }
    let cache = state.inspected.lock().await;
    match worker {
        Some(name) => match cache.get(&name) {
            Some(info) => json(&serde_json::json!({ name: info })),
            None => error(StatusCode::NOT_FOUND, format!("Unknown worker '{name}'")),
        },
        None => json(&*cache),
    }
}

/// `GET /api/queues/length`: `{"active_queues": [{"name", "messages"}]}` on every transport
/// (Flower: Redis and RabbitMQ only); on RabbitMQ the management API's queue objects, as
/// Flower's.
async fn queue_lengths(Shared(state): Shared<Arc<State>>) -> Response {
    match state.queue_lengths().await {
        Ok(queues) => json(&serde_json::json!({ "active_queues": queues })),
        Err(e) => failed(e),
    }
}

/// `GET /metrics`: Flower's families and the queues' figures, unauthenticated as Flower's.
async fn metrics(Shared(state): Shared<Arc<State>>) -> Response {
    match state.broker_report().await {
        Ok(report) => state.metrics.queues(&report.queues),
        Err(error) => tracing::warn!(%error, "monitor: the queues for /metrics"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// `GET /api/task/result/<id>[?timeout=S]`: from the result backend (503 without one).
async fn task_result(
    Shared(state): Shared<Arc<State>>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let Some(backend) = state.results.clone() else {
        return task_api::no_backend();
    };
    let timeout = match argument(&params, "timeout") {
        None => None,
        Some(text) => match text.parse::<f64>() {
            Ok(seconds) => std::time::Duration::try_from_secs_f64(seconds)
                .ok()
                .filter(|d| !d.is_zero()),
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("Invalid argument '{text}' of type 'float'"),
                );
            }
        },
    };
    let unavailable = |e: kombu_core::Error| {
        tracing::warn!(error = %e, "monitor: the result backend");
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Broker or result backend unavailable",
        )
    };
    let now = match backend.meta(&id).await {
        Ok(meta) => meta,
        Err(e) => return unavailable(e),
    };
    let mut out = Map::new();
    out.insert("task-id".into(), Json::from(id.as_str()));
    out.insert("state".into(), Json::from(now.state.as_str()));
    // As Flower: with a timeout, the result once ready but the state as first read.
    let ready = match timeout {
        Some(timeout) => match backend.wait(&id, timeout).await {
            Ok(meta) => Some(meta).filter(|m| m.state.is_ready()),
            Err(e) => return unavailable(e),
        },
        None => Some(now).filter(|m| m.state.is_ready()),
    };
    if let Some(meta) = ready {
        task_api::add_outcome(&mut out, &meta);
    }
    json(&Json::Object(out))
}
