//! The broker page's endpoints (beyond Flower): the queues with every figure the transport
//! can tell, the messages of a queue read without taking them, the same on AMQP by taking and
//! requeueing (asked for explicitly), and the replay of a queue's dead letters.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, RawQuery, State as Shared};
use axum::http::StatusCode;
use axum::response::Response;
use kombu_core::ErrorKind;
use kombu_core::dead_letter::{dlq_name, replay as replay_dead_letters};
use serde_json::json;

use crate::State;
use crate::api::{argument, error, failed, json};
use crate::broker::{self, QueueReport};
use crate::control_api::{arguments, read_only};

/// Most messages one look at a queue shows.
const MAX_PEEK: usize = 100;

/// `GET /api/broker/queues`: the transport, each queue watched (the workers' and
/// `--queue`'s) with every figure the transport can tell (`null` where it cannot), its
/// dead-letter queue and the workers consuming it; the management API used on AMQP and its
/// error; and in `unreported` what this transport cannot tell, in words.
pub(crate) async fn queues(Shared(state): Shared<Arc<State>>) -> Response {
    match state.broker_report().await {
        Ok(report) => {
            let management = state.management.as_ref().map(|api| {
                json!({
                    "url": api.base(),
                    "error": report.management_error,
                })
            });
            let answered = management.is_some() && report.management_error.is_none();
            json(&json!({
                "transport": state.conn.messaging_system(),
                "queues": report.queues.iter().map(QueueReport::to_json).collect::<Vec<_>>(),
                "management_api": management,
                "unreported": broker::unreported(&state.conn, answered),
            }))
        }
        Err(e) => failed(e),
    }
}

/// The `limit` argument: default 20, at most [`MAX_PEEK`].
fn limit(params: &HashMap<String, String>) -> Result<usize, Response> {
    Ok(count(params, "limit")?.map_or(20, |n: usize| n.min(MAX_PEEK)))
}

/// A whole-number argument (absent or empty: `None`); 400 with Tornado's text otherwise.
fn count<T: std::str::FromStr>(
    params: &HashMap<String, String>,
    name: &str,
) -> Result<Option<T>, Response> {
    match argument(params, name) {
        None | Some("") => Ok(None),
        Some(text) => text.parse::<T>().map(Some).map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                format!("Invalid argument '{text}' of type 'int'"),
            )
        }),
    }
}

fn unknown_queue(name: &str) -> Response {
    error(StatusCode::NOT_FOUND, format!("Unknown queue '{name}'"))
}

/// `GET /api/broker/queues/<name>/messages[?limit=N]`: up to `limit` (default 20, at most
/// 100) of the queue's ready messages in the order consumers get them, none taken; 404 for a
/// queue that exists nowhere; 501 where the transport cannot read a queue without taking
/// from it (AMQP 0-9-1: see [`take_and_requeue`]).
pub(crate) async fn messages(
    Shared(state): Shared<Arc<State>>,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let limit = match limit(&params) {
        Ok(n) => n,
        Err(refusal) => return refusal,
    };
    match state.conn.peek(&name, limit).await {
        Ok(seen) => json(&json!({
            "queue": name,
            "messages": seen
                .iter()
                .map(|e| broker::message_json(&e.message, &e.exchange, &e.routing_key, e.redelivered))
                .collect::<Vec<_>>(),
        })),
        Err(e) if e.kind() == ErrorKind::NotFound => unknown_queue(&name),
        Err(e) if e.kind() == ErrorKind::Unsupported => error(
            StatusCode::NOT_IMPLEMENTED,
            format!(
                "{e:#}; POST with redeliver=yes takes the messages and puts them back, which \
                 marks each one redelivered"
            ),
        ),
        Err(e) => failed(e),
    }
}

/// `POST /api/broker/queues/<name>/messages` with `redeliver=yes` (and `limit`): shows up to
/// `limit` messages by taking them one at a time and putting them all back (newest first,
/// so the queue keeps its order), for transports that cannot peek (AMQP 0-9-1). Each
/// message shown is marked redelivered, is unavailable to consumers while it is held, and on
/// a RabbitMQ quorum queue each requeue counts toward the queue's delivery limit: hence a
/// steering call (refused in read-only mode) that must say `redeliver=yes`.
pub(crate) async fn take_and_requeue(
    Shared(state): Shared<Arc<State>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    if let Some(refusal) = read_only(&state) {
        return refusal;
    }
    let params = arguments(query.as_deref(), &body);
    if argument(&params, "redeliver") != Some("yes") {
        return error(
            StatusCode::BAD_REQUEST,
            "Taking messages to show them marks each one redelivered: ask with redeliver=yes",
        );
    }
    let limit = match limit(&params) {
        Ok(n) => n,
        Err(refusal) => return refusal,
    };
    match state.conn.queue_exists(&name).await {
        Ok(true) => {}
        Ok(false) => return unknown_queue(&name),
        Err(e) => return failed(e),
    }
    // In a task of its own: a client that goes away does not stop it half way, with
    // messages taken and not put back in their order.
    let done = tokio::spawn(take_and_put_back(state, name, limit)).await;
    done.unwrap_or_else(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("taking and requeueing failed: {e}"),
        )
    })
}

/// Takes up to `limit` messages of `name` one at a time, then puts them all back.
async fn take_and_put_back(state: Arc<State>, name: String, limit: usize) -> Response {
    let channel = match state.conn.channel().await {
        Ok(channel) => channel,
        Err(e) => return failed(e),
    };
    let mut held = Vec::new();
    let mut failure = None;
    while held.len() < limit {
        match channel.get(&name, false).await {
            Ok(Some(delivery)) => held.push(delivery),
            Ok(None) => break,
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let shown: Vec<_> = held
        .iter()
        .map(|d| broker::message_json(d.message(), d.exchange(), d.routing_key(), d.redelivered()))
        .collect();
    for delivery in held.into_iter().rev() {
        if let Err(e) = delivery.requeue().await
            && failure.is_none()
        {
            failure = Some(e.error);
        }
    }
    let _ = channel.close().await;
    match failure {
        Some(e) => failed(e.context("the messages taken are back in the queue or come back")),
        None => json(&json!({"queue": name, "messages": shown, "requeued": shown.len()})),
    }
}

/// `POST /api/broker/queues/<name>/replay[?count=N]`: moves the queue's dead letters from
/// `<name>.dlq` back to it ([`kombu_core::dead_letter::replay`]); `{"moved",
/// "unreadable", "dead_letter_queue"}`; refused in read-only mode; 404 for a queue that
/// exists nowhere; 503 with the counts and the error when it stopped on a failure.
pub(crate) async fn replay(
    Shared(state): Shared<Arc<State>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    if let Some(refusal) = read_only(&state) {
        return refusal;
    }
    let params = arguments(query.as_deref(), &body);
    let count = match count::<u64>(&params, "count") {
        Ok(n) => n,
        Err(refusal) => return refusal,
    };
    match state.conn.queue_exists(&name).await {
        Ok(true) => {}
        Ok(false) => return unknown_queue(&name),
        Err(e) => return failed(e),
    }
    let dlq = dlq_name(&name);
    // In a task of its own: a client that goes away does not stop it between a publish and
    // its ack.
    let (done, outcome) = {
        let (state, name, dlq) = (state.clone(), name.clone(), dlq.clone());
        match tokio::spawn(
            async move { replay_dead_letters(&state.conn, &name, &dlq, count).await },
        )
        .await
        {
            Ok(result) => result,
            Err(e) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the replay failed: {e}"),
                );
            }
        }
    };
    let body = json!({
        "moved": done.moved,
        "unreadable": done.unreadable,
        "dead_letter_queue": dlq,
    });
    match outcome {
        Ok(()) => json(&body),
        Err(e) => {
            tracing::warn!(error = %e, queue = name, "monitor: replaying dead letters");
            let mut body = body;
            body["error"] = json!(format!("{e:#}"));
            let mut response = json(&body);
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            response
        }
    }
}
