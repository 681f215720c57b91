//! Chords on the worker's side: a header task's result counted in a backend that joins chords
//! (Redis), and Celery's `celery.chord_unlock` task for the others (SQL).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value as Json};

use super::task::{Handler, Retry, TaskContext, TaskFail, TaskFuture};
use super::{Results, Shared};
use crate::Signature;
use crate::backend::{ChordSupport, ResultBackend};
use crate::client::Celery;
use crate::request::TaskRequest;
use crate::result::{ResultMeta, State, TaskFailure};

/// Celery's chord unlock task: polls a chord's header results, then sends its body.
pub const CHORD_UNLOCK: &str = "celery.chord_unlock";
/// How often `celery.chord_unlock` looks again by default (Celery's
/// `result_chord_retry_interval`).
const UNLOCK_INTERVAL: Duration = Duration::from_secs(1);

/// After a header task of a chord stored `meta`: counts it where the backend joins chords,
/// and sends the body (or stores its failure) when this was the last one in.
pub(crate) async fn part_return(
    shared: &Shared,
    request: &TaskRequest,
    meta: &ResultMeta,
    priority: Option<u8>,
) {
    let (Some(body), Some(group)) = (&request.chord, &request.group) else {
        return;
    };
    join(
        shared,
        body,
        group,
        request.group_index,
        meta,
        request,
        priority,
    )
    .await;
}

/// Counts `meta` as the part at `index` of chord `group` with `body`, and completes the chord
/// when it was the last (a header task's own result, or one its failed chain passed on).
pub(crate) async fn join(
    shared: &Shared,
    body: &Signature,
    group: &str,
    index: Option<u32>,
    meta: &ResultMeta,
    request: &TaskRequest,
    priority: Option<u8>,
) {
    let Results::Backend(backend) = &shared.results else {
        return;
    };
    if backend.chord_support() != ChordSupport::Join {
        return;
    }
    let ready = match backend.chord_part_return(group, index, meta).await {
        Ok(Some(ready)) => ready,
        Ok(None) => return,
        Err(error) => {
            tracing::error!(
                error = %format_args!("{error:#}"),
                group = %group,
                "counting a chord's part failed: its body may never be sent"
            );
            return;
        }
    };
    match backend.chord_claim(&ready).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(group = %group, "a chord's claim went to another worker: it sends the body");
            return;
        }
        // Still ours most likely (claimed moments ago): at least once rather than never.
        Err(error) => tracing::warn!(
            error = %format_args!("{error:#}"),
            group = %group,
            "renewing a chord's claim failed: the body is sent all the same"
        ),
    }
    complete(
        backend.as_ref(),
        &shared.client,
        body,
        &ready.parts,
        request,
        priority,
    )
    .await;
    if let Err(error) = backend.chord_done(&ready).await {
        tracing::warn!(error = %format_args!("{error:#}"), group = %group, "clearing a chord failed");
    }
}

/// Sends `body` with the header's values, or stores its failure when a header task failed
/// (Celery's `ChordError`).
async fn complete(
    backend: &dyn ResultBackend,
    client: &Celery,
    body: &Signature,
    parts: &[ResultMeta],
    parent: &TaskRequest,
    priority: Option<u8>,
) {
    if let Some(bad) = parts
        .iter()
        .find(|p| matches!(p.state, State::Failure | State::Revoked))
    {
        let cause = bad
            .failure_of()
            .map_or_else(|| bad.state.to_string(), |f| f.to_string());
        let reason = format!("Dependency {} raised {cause}", bad.task_id);
        chord_error(backend, body, reason).await;
        return;
    }
    let values = parts.iter().map(|p| p.result.clone()).collect();
    let sent = client
        .send_signature(
            body,
            Some(Json::Array(values)),
            parent,
            Vec::new(),
            priority,
        )
        .await;
    if let Err(error) = sent {
        tracing::error!(
            error = %format_args!("{error:#}"),
            chord_body = %body.task,
            "sending a chord's body failed"
        );
        // As Celery: the chord's result is the error, not a PENDING that never ends.
        chord_error(backend, body, format!("Callback error: {error:#}")).await;
    }
}

/// Stores `ChordError(reason)` as the result of the chord's body.
async fn chord_error(backend: &dyn ResultBackend, body: &Signature, reason: String) {
    let failure = TaskFailure::new("celery.exceptions", "ChordError", reason);
    let Some(body_id) = body.options.get("task_id").and_then(Json::as_str) else {
        tracing::error!(chord_body = %body.task, "a chord failed, and its body has no id to store it under");
        return;
    };
    let mut meta = ResultMeta::failure(body_id, State::Failure, &failure);
    meta.group_id = body
        .options
        .get("group_id")
        .and_then(Json::as_str)
        .map(str::to_owned);
    if let Err(error) = backend.store(&meta).await {
        tracing::error!(error = %format_args!("{error:#}"), "storing a chord's failure failed");
    }
    // The steps after the body fail with it.
    if let Some(Json::Array(rest)) = body.options.get("chain") {
        for step in rest {
            if let Some(id) = step.pointer("/options/task_id").and_then(Json::as_str) {
                let meta = ResultMeta::failure(id, State::Failure, &failure);
                if let Err(error) = backend.store(&meta).await {
                    tracing::error!(error = %format_args!("{error:#}"), "storing a chain's failure failed");
                }
            }
        }
    }
}

/// `celery.chord_unlock(group_id, callback, interval=None, max_retries=None, result=[...])`:
/// retries itself every `interval` until every header task is ready.
pub(crate) struct ChordUnlock {
    pub(crate) backend: Arc<dyn ResultBackend>,
    pub(crate) client: Arc<Celery>,
}

impl Handler for ChordUnlock {
    fn call(
        &self,
        args: Vec<Json>,
        mut kwargs: Map<String, Json>,
        ctx: TaskContext,
    ) -> Result<TaskFuture, TaskFailure> {
        let mut args = args.into_iter();
        let group = args
            .next()
            .or_else(|| kwargs.remove("group_id"))
            .and_then(|g| g.as_str().map(str::to_owned))
            .ok_or_else(|| TaskFailure::type_error("celery.chord_unlock: no group_id"))?;
        let callback = args
            .next()
            .or_else(|| kwargs.remove("callback"))
            .ok_or_else(|| TaskFailure::type_error("celery.chord_unlock: no callback"))?;
        let callback: Signature = serde_json::from_value(callback).map_err(|e| {
            TaskFailure::type_error(format!("celery.chord_unlock: the callback: {e}"))
        })?;
        let interval = kwargs
            .get("interval")
            .and_then(Json::as_f64)
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .unwrap_or(UNLOCK_INTERVAL);
        let max_retries = kwargs
            .get("max_retries")
            .and_then(Json::as_u64)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        // Each header result as Celery's `AsyncResult.as_tuple()`: [[id, parent], null].
        let ids: Vec<String> = match kwargs.get("result") {
            Some(Json::Array(items)) => items
                .iter()
                .map(|r| {
                    r.pointer("/0/0")
                        .and_then(Json::as_str)
                        .map(str::to_owned)
                        .ok_or_else(|| {
                            // A nested group's tuple: not a task this unlock can wait for.
                            TaskFailure::type_error(format!(
                                "celery.chord_unlock: a header result of another shape: {r}"
                            ))
                        })
                })
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(TaskFailure::type_error(
                    "celery.chord_unlock: no header results (result=[...])",
                ));
            }
        };
        let backend = self.backend.clone();
        let client = self.client.clone();
        Ok(Box::pin(async move {
            let mut parts = Vec::with_capacity(ids.len());
            for id in &ids {
                let meta = backend.meta(id).await.map_err(|e| {
                    TaskFail::Retry(
                        Retry::default()
                            .countdown(interval)
                            .max_retries(max_retries)
                            .exc(TaskFailure::new(
                                "kombu.exceptions",
                                "OperationalError",
                                format!("{e:#}"),
                            )),
                    )
                })?;
                if !meta.state.is_ready() {
                    tracing::debug!(%group, pending = %id, "chord not ready: unlock again later");
                    return Err(TaskFail::Retry(
                        Retry::default()
                            .countdown(interval)
                            .max_retries(max_retries),
                    ));
                }
                parts.push(meta);
            }
            complete(
                backend.as_ref(),
                &client,
                &callback,
                &parts,
                ctx.request(),
                None,
            )
            .await;
            Ok(Json::Null)
        }))
    }
}
