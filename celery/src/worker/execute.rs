//! One task message's life in the worker: expiry, eta, rate limit, a concurrency slot, the
//! ack, the run under its time limits, then its result, retry or canvas.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use futures::FutureExt;
use kombu_core::transport::Outgoing;
use kombu_core::{Delivery, Message, Value};
use serde_json::{Value as Json, json};

use super::next::send;
use super::state::Phase;
use super::task::{Retry, TaskContext, TaskFail};
use super::{Results, Shared};
use crate::backend::RpcResultBackend;
use crate::events::{EventKind, fields};
use crate::repr::{args_repr, kwargs_repr, value_repr};
use crate::request::TaskRequest;
use crate::result::{ResultMeta, State, TaskFailure};

/// A task due within this long waits in the worker; later ones go back through the
/// transport's delayed delivery (RabbitMQ's counts whole seconds).
const HOLD_AT_MOST: Duration = Duration::from_secs(1);

/// Where a message stands once the task has run.
struct Call {
    request: Arc<TaskRequest>,
    message: Message,
    queue: String,
    /// When it started.
    started: tokio::time::Instant,
}

/// Why a task is not run.
#[derive(Clone, Copy)]
enum Why {
    /// Its `expires` passed.
    Expired,
    /// Remote control revoked it.
    Revoked,
    /// Remote control terminated it while it ran (with this signal).
    Terminated(i32),
}

/// Whether the request is not to run: expired, or revoked by remote control.
fn revoked(shared: &Shared, request: &TaskRequest) -> Option<Why> {
    if shared.revoked.lock().contains(&request.id) {
        return Some(Why::Revoked);
    }
    request.expired().then_some(Why::Expired)
}

/// Celery's `delivery_info` of a request.
fn delivery_info(delivery: &Delivery) -> Json {
    json!({
        "exchange": delivery.exchange(),
        "routing_key": delivery.routing_key(),
        "priority": delivery.properties().priority.unwrap_or(0),
        "redelivered": delivery.redelivered(),
    })
}

/// The `task-received` event of a request.
fn received(shared: &Shared, request: &TaskRequest) {
    let iso = |at: &Option<chrono::DateTime<chrono::FixedOffset>>| {
        at.map_or(Json::Null, |at| json!(at.to_rfc3339()))
    };
    shared.events.task(
        EventKind::TaskReceived,
        fields([
            ("uuid", json!(request.id)),
            ("name", json!(request.task)),
            ("args", json!(args_repr(&request.args))),
            ("kwargs", json!(kwargs_repr(&request.kwargs))),
            ("root_id", json!(request.root_id)),
            ("parent_id", json!(request.parent_id)),
            ("retries", json!(request.retries)),
            ("eta", iso(&request.eta)),
            ("expires", iso(&request.expires)),
        ]),
    );
}

pub(crate) async fn execute(
    shared: Arc<Shared>,
    delivery: Delivery,
    request: TaskRequest,
    consumer: Arc<()>,
) -> Option<Refused> {
    let Some(task) = shared.tasks.get(&request.task) else {
        return None; // checked before the spawn
    };
    let counters = &shared.control.counters;
    if let Some(why) = revoked(&shared, &request) {
        let reply = delivery_reply(&delivery);
        revoke(
            &shared,
            &request,
            &reply,
            task.settings.ignore_result,
            None,
            why,
        )
        .await;
        settle(delivery, true).await;
        return None;
    }
    received(&shared, &request);
    let request = Arc::new(request);
    let tracked = shared
        .requests
        .track(request.clone(), delivery_info(&delivery));
    // The eta: back through the transport's delayed delivery, or a short wait here.
    if let Some(eta) = request.eta {
        let wait = (eta.with_timezone(&Utc) - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        if wait > HOLD_AT_MOST && shared.can_delay {
            let message = delivery.message().clone();
            match publish_later(&shared, delivery.queue(), message, wait).await {
                Ok(()) => {
                    tracing::debug!(id = %request.id, ?wait, "not due yet: delayed");
                    settle(delivery, true).await;
                    return None;
                }
                Err(error) => tracing::warn!(
                    error = %format_args!("{error:#}"),
                    "a task not due yet could not be delayed: it waits in the worker"
                ),
            }
        }
        if !wait.is_zero() {
            tracked.set(Phase::Scheduled {
                eta: eta.to_rfc3339(),
            });
            if !hold(&shared, &delivery, wait).await {
                settle(delivery, false).await;
                return None;
            }
            tracked.set(Phase::Reserved);
        }
    }
    if let Some(bucket) = task.bucket() {
        let wait = bucket.take();
        if !wait.is_zero() && !hold(&shared, &delivery, wait).await {
            settle(delivery, false).await;
            return None;
        }
    }
    // Waiting for a slot keeps the lease alive, so no other worker is given the message.
    let waiting = async {
        tokio::select! {
            permit = shared.permits.acquire() => permit.ok(),
            () = stopped(shared.stop.clone()) => None,
        }
    };
    let permit = match shared.leases {
        true => keep_lease(&shared, &delivery, waiting).await,
        false => waiting.await,
    };
    let Some(_permit) = permit else {
        settle(delivery, false).await;
        return None;
    };
    let reply = delivery_reply(&delivery);
    // Celery's `task_inherit_parent_priority` is off by default: what a task sends has the
    // priority its signature gives.
    let priority = None;
    let call = Call {
        request,
        message: delivery.message().clone(),
        queue: delivery.queue().to_owned(),
        started: tokio::time::Instant::now(),
    };
    let request = &call.request;
    let settings = &task.settings;
    let ignore = settings.ignore_result
        || matches!(
            call.message.headers.get("ignore_result"),
            Some(Value::Bool(true))
        );
    // It may have expired or been revoked while it waited for its eta, its rate or a slot.
    if let Some(why) = revoked(&shared, request) {
        revoke(&shared, request, &reply, ignore, priority, why).await;
        settle(delivery, true).await;
        return None;
    }
    let acks_late = settings.acks_late.unwrap_or(shared.acks_late);
    let late = match acks_late {
        true => Some(delivery),
        false => {
            if let Err(error) = delivery.ack().await {
                tracing::warn!(
                    error = %format_args!("{:#}", kombu_core::Error::from(error)),
                    id = %call.request.id,
                    "acking a task before its run failed: it is not run here (it comes back)"
                );
                return None;
            }
            None
        }
    };
    counters.started.fetch_add(1, Ordering::Relaxed);
    *shared
        .totals
        .lock()
        .entry(request.task.clone())
        .or_insert(0) += 1;
    tracked.set(Phase::Active {
        time_start: crate::events::now(),
        acknowledged: late.is_none(),
    });
    shared.events.task(
        EventKind::TaskStarted,
        fields([("uuid", json!(request.id))]),
    );
    if settings.track_started && !ignore {
        let mut meta = ResultMeta::pending(request.id.as_str());
        meta.state = State::Started;
        meta.result = json!({"pid": std::process::id(), "hostname": &*shared.hostname});
        store(&shared, &reply, &meta).await;
    }
    let limit = |from_message: Option<f64>, own: Option<Duration>| {
        from_message
            .filter(|s| *s > 0.0)
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .or(own)
    };
    let (own_hard, own_soft) = task.time_limits();
    let hard = limit(request.time_limit.0, own_hard);
    let soft = limit(request.time_limit.1, own_soft);
    let ctx = TaskContext {
        request: request.clone(),
        soft_deadline: soft.and_then(|s| tokio::time::Instant::now().checked_add(s)),
        hostname: shared.hostname.clone(),
    };
    // The handler is called inside the guard too: a panic before its future is a failure.
    let guarded = AssertUnwindSafe(async {
        match task
            .handler
            .call(request.args.clone(), request.kwargs.clone(), ctx)
        {
            Ok(future) => future.await,
            Err(failure) => Err(TaskFail::Failed(failure)),
        }
    })
    .catch_unwind();
    let run = async {
        let outcome = match hard {
            Some(limit) => match tokio::time::timeout(limit, guarded).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    return Err(TaskFail::Failed(TaskFailure {
                        exc_type: "TimeLimitExceeded".into(),
                        exc_module: "celery.exceptions".into(),
                        exc_message: vec![json!(limit.as_secs_f64())],
                        traceback: None,
                    }));
                }
            },
            None => guarded.await,
        };
        outcome.unwrap_or_else(|panic| {
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned());
            Err(TaskFail::Failed(TaskFailure::new(
                "builtins",
                "RuntimeError",
                format!("the task panicked: {text}"),
            )))
        })
    };
    let work = async {
        match (&late, shared.leases) {
            (Some(delivery), true) => keep_lease(&shared, delivery, run).await,
            _ => run.await,
        }
    };
    let mut terminate = tracked.terminate.clone();
    // Past the shutdown timeout the worker aborts what still runs; remote control may
    // terminate it.
    let outcome = tokio::select! {
        outcome = work => outcome,
        signal = async { terminate.wait_for(Option::is_some).await.ok().and_then(|s| *s) } => {
            let Some(signal) = signal else {
                return None; // the worker is gone
            };
            tracing::warn!(task = %request.task, id = %request.id, signal, "terminated by remote control");
            revoke(&shared, request, &reply, ignore, priority, Why::Terminated(signal)).await;
            if let Some(delivery) = late {
                settle(delivery, true).await;
            }
            return None;
        }
        () = stopped(shared.abort.clone()) => {
            match late {
                // Late acks: the message goes back for another worker.
                Some(delivery) => settle(delivery, false).await,
                None => {
                    let lost = TaskFailure::new(
                        "celery.exceptions",
                        "WorkerLostError",
                        "the worker stopped before the task ended (its shutdown timeout)",
                    );
                    failed(&shared, &call, &reply, lost, ignore, priority).await;
                }
            }
            return None;
        }
    };
    let reject = match outcome {
        Ok(value) => {
            succeeded(&shared, &call, &reply, value, ignore, priority).await;
            None
        }
        Err(TaskFail::Failed(failure)) => {
            failed(&shared, &call, &reply, failure, ignore, priority).await;
            None
        }
        Err(TaskFail::Retry(retry)) => {
            retried(&shared, &call, &reply, retry, settings, ignore, priority).await;
            None
        }
        Err(TaskFail::Ignore) => {
            tracing::debug!(task = %request.task, id = %request.id, "ignored");
            None
        }
        // As Celery: a rejection for good is the task's failure first.
        Err(TaskFail::Reject(reject)) => {
            if !reject.requeue {
                failed(&shared, &call, &reply, reject.failure(), ignore, priority).await;
            }
            Some(reject)
        }
    };
    let Some(delivery) = late else {
        if reject.is_some_and(|r| r.requeue) {
            tracing::warn!(
                task = %request.task,
                id = %request.id,
                "the task rejected its message with requeue, but acked it before its run \
                 (acks_late is off): it is not run again"
            );
        }
        return None;
    };
    match reject {
        None => {
            settle(delivery, true).await;
            None
        }
        Some(reject) if reject.requeue => {
            settle(delivery, false).await;
            shared.events.task(
                EventKind::TaskRejected,
                fields([("uuid", json!(request.id)), ("requeue", json!(true))]),
            );
            None
        }
        Some(reject) => Some(Refused {
            reason: format!(
                "rejected by task {:?} (id {}): {}",
                request.task,
                request.id,
                reject.reason.as_deref().unwrap_or("no reason given")
            ),
            task_id: request.id.clone(),
            delivery,
            token: consumer,
        }),
    }
}

/// A message its task rejected for good, handed back to the run loop to be dead-lettered
/// through the consumer it came from.
pub(crate) struct Refused {
    pub(crate) delivery: Delivery,
    pub(crate) reason: String,
    pub(crate) task_id: String,
    /// The token of the consumer it came from, which is not closed while this lives.
    pub(crate) token: Arc<()>,
}

/// The `reply_to` and `correlation_id` of a delivery (where `rpc://` results go).
pub(crate) fn delivery_reply(delivery: &Delivery) -> (String, String) {
    let props = delivery.properties();
    (
        props.reply_to.clone().unwrap_or_default(),
        props.correlation_id.clone().unwrap_or_default(),
    )
}

/// A task not run (expired or revoked) or stopped (terminated): REVOKED
/// (`TaskRevokedError('expired' | 'revoked' | 'terminated')`), announced `task-revoked`.
async fn revoke(
    shared: &Shared,
    request: &TaskRequest,
    reply: &(String, String),
    ignore: bool,
    priority: Option<u8>,
    why: Why,
) {
    let (reason, terminated, signum, expired) = match why {
        Why::Expired => ("expired", false, Json::Null, true),
        Why::Revoked => ("revoked", false, Json::Null, false),
        Why::Terminated(signal) => ("terminated", true, json!(signal), false),
    };
    shared.events.task(
        EventKind::TaskRevoked,
        fields([
            ("uuid", json!(request.id)),
            ("terminated", json!(terminated)),
            ("signum", signum),
            ("expired", json!(expired)),
        ]),
    );
    let failure = TaskFailure::new("celery.exceptions", "TaskRevokedError", reason);
    let mut meta = ResultMeta::failure(request.id.as_str(), State::Revoked, &failure);
    meta.group_id = request.group.clone();
    meta.parent_id = request.parent_id.clone();
    if !ignore {
        store(shared, reply, &meta).await;
    }
    super::chord::part_return(shared, request, &meta, priority).await;
    tracing::info!(task = %request.task, id = %request.id, reason, "revoked");
    shared
        .control
        .counters
        .revoked
        .fetch_add(1, Ordering::Relaxed);
}

async fn succeeded(
    shared: &Shared,
    call: &Call,
    reply: &(String, String),
    value: Json,
    ignore: bool,
    priority: Option<u8>,
) {
    let request = &call.request;
    // As Celery: callbacks and the chain's next task go out before the result is stored; one
    // that cannot be sent fails the task.
    for callback in &request.callbacks {
        if let Err(error) = send(
            shared,
            callback,
            Some(value.clone()),
            request,
            Vec::new(),
            priority,
        )
        .await
        {
            return failed(shared, call, reply, unsent(&error), ignore, priority).await;
        }
    }
    if let Some((next, rest)) = request.chain.split_last()
        && let Err(error) = send(
            shared,
            next,
            Some(value.clone()),
            request,
            rest.to_vec(),
            priority,
        )
        .await
    {
        return failed(shared, call, reply, unsent(&error), ignore, priority).await;
    }
    shared
        .control
        .counters
        .succeeded
        .fetch_add(1, Ordering::Relaxed);
    let event = fields([
        ("uuid", json!(request.id)),
        ("result", json!(value_repr(&value))),
        ("runtime", json!(call.started.elapsed().as_secs_f64())),
    ]);
    let mut meta = ResultMeta::success(request.id.as_str(), value);
    meta.group_id = request.group.clone();
    meta.parent_id = request.parent_id.clone();
    // As Celery: stored, then announced (a listener may read the result on the event).
    if !ignore {
        store(shared, reply, &meta).await;
    }
    shared.events.task(EventKind::TaskSucceeded, event);
    super::chord::part_return(shared, request, &meta, priority).await;
}

/// The failure of a task whose next task could not be sent.
fn unsent(error: &kombu_core::Error) -> TaskFailure {
    TaskFailure::new(
        "kombu.exceptions",
        "OperationalError",
        format!("sending the next task failed: {error:#}"),
    )
}

async fn failed(
    shared: &Shared,
    call: &Call,
    reply: &(String, String),
    failure: TaskFailure,
    ignore: bool,
    priority: Option<u8>,
) {
    let request = &call.request;
    shared
        .control
        .counters
        .failed
        .fetch_add(1, Ordering::Relaxed);
    tracing::warn!(task = %request.task, id = %request.id, failure = %failure, "task failed");
    let mut meta = ResultMeta::failure(request.id.as_str(), State::Failure, &failure);
    meta.group_id = request.group.clone();
    meta.parent_id = request.parent_id.clone();
    // As Celery: stored, then announced.
    if !ignore {
        store(shared, reply, &meta).await;
    }
    shared.events.task(
        EventKind::TaskFailed,
        fields([
            ("uuid", json!(request.id)),
            ("exception", json!(failure.repr())),
            (
                "traceback",
                json!(failure.traceback.clone().unwrap_or_default()),
            ),
        ]),
    );
    super::chord::part_return(shared, request, &meta, priority).await;
    // As Celery's `_fail_chain`: the tasks chained after it fail with it, so whoever waits on
    // the chain's end gets the error instead of a PENDING that never ends.
    for next in request.chain.iter().rev() {
        let Some(id) = next.options.get("task_id").and_then(Json::as_str) else {
            continue;
        };
        let mut meta = ResultMeta::failure(id, State::Failure, &failure);
        meta.group_id = next
            .options
            .get("group_id")
            .and_then(Json::as_str)
            .map(str::to_owned);
        store(shared, &(String::new(), String::new()), &meta).await;
        // A chain that is a chord's header task: its failure is that part's result, or the
        // chord would wait for it for ever.
        if let (Some(body), Some(group)) = (
            next.options
                .get("chord")
                .and_then(|c| serde_json::from_value::<crate::Signature>(c.clone()).ok()),
            meta.group_id.as_deref(),
        ) {
            let index = next
                .options
                .get("group_index")
                .and_then(Json::as_u64)
                .and_then(|i| u32::try_from(i).ok());
            super::chord::join(shared, &body, group, index, &meta, request, priority).await;
        }
    }
    for errback in &request.errbacks {
        let id = Json::String(request.id.clone());
        if let Err(error) = send(shared, errback, Some(id), request, Vec::new(), priority).await {
            tracing::error!(
                error = %format_args!("{error:#}"),
                errback = %errback.task,
                id = %request.id,
                "sending an errback failed"
            );
        }
    }
}

async fn retried(
    shared: &Shared,
    call: &Call,
    reply: &(String, String),
    retry: Retry,
    settings: &super::TaskSettings,
    ignore: bool,
    priority: Option<u8>,
) {
    let request = &call.request;
    let max = retry.max_retries.unwrap_or(settings.max_retries);
    if max.is_some_and(|max| request.retries >= max) {
        let failure = retry.exc.unwrap_or_else(|| {
            TaskFailure::new(
                "celery.exceptions",
                "MaxRetriesExceededError",
                format!(
                    "Can't retry {}[{}] args:{} kwargs:{}",
                    request.task,
                    request.id,
                    Json::Array(request.args.clone()),
                    Json::Object(request.kwargs.clone())
                ),
            )
        });
        failed(shared, call, reply, failure, ignore, priority).await;
        return;
    }
    let countdown = retry.countdown.unwrap_or(settings.retry_delay);
    let sent = match super::next::retry_message(&call.message, &call.request, countdown) {
        Ok(message) => publish_later(shared, &call.queue, message, countdown).await,
        Err(reason) => Err(kombu_core::Error::new(kombu_core::ErrorKind::Codec, reason)),
    };
    match sent {
        Ok(()) => {
            shared
                .control
                .counters
                .retried
                .fetch_add(1, Ordering::Relaxed);
            let failure = retry.exc.unwrap_or_else(|| {
                TaskFailure::new(
                    "celery.exceptions",
                    "Retry",
                    format!("Retry in {}s", countdown.as_secs_f64()),
                )
            });
            let mut meta = ResultMeta::failure(request.id.as_str(), State::Retry, &failure);
            meta.date_done = None;
            meta.group_id = request.group.clone();
            meta.parent_id = request.parent_id.clone();
            if !ignore {
                store(shared, reply, &meta).await;
            }
            shared.events.task(
                EventKind::TaskRetried,
                fields([
                    ("uuid", json!(request.id)),
                    ("exception", json!(failure.repr())),
                    (
                        "traceback",
                        json!(failure.traceback.clone().unwrap_or_default()),
                    ),
                ]),
            );
        }
        Err(error) => {
            let failure = TaskFailure::new(
                "kombu.exceptions",
                "OperationalError",
                format!("the retry could not be sent: {error:#}"),
            );
            failed(shared, call, reply, failure, ignore, priority).await;
        }
    }
}

/// Publishes `message` back to `queue`, visible `delay` from now. Its broker-side
/// `expiration` is dropped (RabbitMQ cannot delay a message that expires): the `expires`
/// header still stands, and the worker that takes it revokes it then.
async fn publish_later(
    shared: &Shared,
    queue: &str,
    mut message: Message,
    delay: Duration,
) -> kombu_core::Result<()> {
    message.properties.expiration = None;
    let out = Outgoing::new(shared.eta_exchange, queue, message);
    let out = match shared.can_delay {
        true => out.delay(delay),
        false => out,
    };
    shared.producer.send_batch(vec![out]).await
}

/// Waits `wait` holding the delivery (its lease kept alive), unless the worker stops first:
/// `false` then.
async fn hold(shared: &Shared, delivery: &Delivery, wait: Duration) -> bool {
    let sleep = async {
        match shared.leases {
            true => keep_lease(shared, delivery, tokio::time::sleep(wait)).await,
            false => tokio::time::sleep(wait).await,
        }
    };
    tokio::select! {
        () = sleep => true,
        () = stopped(shared.stop.clone()) => false,
    }
}

/// Resolves once the worker is stopped.
pub(crate) async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Runs `work`, renewing `delivery`'s lease meanwhile.
async fn keep_lease<T>(
    shared: &Shared,
    delivery: &Delivery,
    work: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(work);
    let mut beat = tokio::time::interval(shared.lease_heartbeat);
    beat.tick().await;
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = beat.tick() => {
                if let Err(error) = delivery.extend_lease().await {
                    tracing::debug!(error = %format_args!("{error:#}"), "a task's lease could not be renewed");
                }
            }
        }
    }
}

/// Acks (`true`) or puts back.
async fn settle(delivery: Delivery, ack: bool) {
    let done = match ack {
        true => delivery.ack().await,
        false => delivery.requeue().await,
    };
    if let Err(error) = done {
        tracing::warn!(
            error = %format_args!("{:#}", kombu_core::Error::from(error)),
            "settling a task message failed: it comes back"
        );
    }
}

/// Stores `meta` where the worker's results go.
pub(crate) async fn store(shared: &Shared, reply: &(String, String), meta: &ResultMeta) {
    let stored = match &shared.results {
        Results::None => Ok(()),
        Results::Backend(backend) => backend.store(meta).await,
        Results::Rpc => match reply.0.is_empty() {
            true => Ok(()),
            false => {
                let correlation = match reply.1.is_empty() {
                    true => meta.task_id.as_str(),
                    false => reply.1.as_str(),
                };
                RpcResultBackend::reply(&shared.conn, &reply.0, correlation, meta).await
            }
        },
    };
    if let Err(error) = stored {
        tracing::error!(
            error = %format_args!("{error:#}"),
            id = %meta.task_id,
            state = %meta.state,
            "storing a task's result failed"
        );
    }
}
