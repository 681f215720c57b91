//! The page: one HTML document, its script and its style sheet, embedded in the binary (no
//! CDN, nothing fetched from elsewhere), reading the same API a script would
//! (`/api/monitor/workers`, `/api/tasks`, `/api/task/info/<id>`, `/api/broker/queues`,
//! `/api/stats/series`) and `/api/live` for live updates.

use std::sync::Arc;

use axum::extract::State as Shared;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value as Json, json};

use crate::State;
use crate::api::json;

const HTML: &str = include_str!("../assets/index.html");
const SCRIPT: &str = include_str!("../assets/monitor.js");
const STYLE: &str = include_str!("../assets/monitor.css");

/// Headers every asset carries: no framing by other sites, no sniffing, only this origin's
/// scripts and styles.
const SECURITY: [(header::HeaderName, &str); 3] = [
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'self'; \
         form-action 'self'",
    ),
];

fn asset(content_type: &'static str, body: impl Into<axum::body::Body>) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body.into()).into_response();
    for (name, value) in SECURITY {
        response
            .headers_mut()
            .insert(name, header::HeaderValue::from_static(value));
    }
    response
}

/// `GET /`: the page, with a `<base>` naming where it is served (`/`, or the URL prefix),
/// so that its relative URLs resolve under the prefix whether or not the address ends in
/// `/`.
pub(crate) async fn index(Shared(state): Shared<Arc<State>>) -> Response {
    let base = format!(
        "<head>\n<base href=\"{}/\">",
        state.url_prefix.as_deref().unwrap_or("")
    );
    asset(
        "text/html; charset=UTF-8",
        HTML.replacen("<head>", &base, 1),
    )
}

/// `GET /static/monitor.js`.
pub(crate) async fn script() -> Response {
    asset("text/javascript; charset=UTF-8", SCRIPT)
}

/// `GET /static/monitor.css`.
pub(crate) async fn style() -> Response {
    asset("text/css; charset=UTF-8", STYLE)
}

/// `GET /api/monitor/workers`: every worker heard of, with what its heartbeats say (online
/// by heartbeat, active, processed, load) and its task events by type (failed included).
pub(crate) async fn workers(Shared(state): Shared<Arc<State>>) -> Response {
    let now = kombu_core::transport::unix_now();
    let workers = state.workers.lock();
    let list: Vec<Json> = workers
        .iter()
        .map(|w| {
            json!({
                "hostname": w.hostname,
                "online": w.alive(now),
                "last_heartbeat": w.heartbeats.last(),
                "freq": w.freq(),
                "active": w.fields.get("active"),
                "processed": w.fields.get("processed"),
                "loadavg": w.fields.get("loadavg"),
                "sw_ident": w.fields.get("sw_ident"),
                "sw_ver": w.fields.get("sw_ver"),
                "failed": w.events.get("task-failed").copied().unwrap_or(0),
                "succeeded": w.events.get("task-succeeded").copied().unwrap_or(0),
            })
        })
        .collect();
    json(&json!({ "workers": list }))
}
