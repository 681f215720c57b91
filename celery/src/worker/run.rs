//! A worker's run: its queues declared and consumed, its events and mailbox started, task
//! messages handed to [`execute`](super::execute) until it stops, then the wind-down.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kombu_core::{Consumer, Delivery, Result};
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

use super::consumers::{Consumers, declare};
use super::eventer::{self, HEARTBEAT_FREQ, WorkerEvents};
use super::{
    ABORT_GRACE, CHORD_UNLOCK, ETA_EXCHANGE, QueueChange, QueueInfo, REJECT_BACKOFF, Registered,
    Results, Shared, TaskSettings, WorkerBuilder, WorkerHandle, chord, default_hostname, execute,
    heartbeat, pidbox, pool, state,
};
use crate::client::{Celery, DEFAULT_QUEUE};
use crate::clock::LamportClock;
use crate::events::{EventDispatcher, EventKind};
use crate::request::TaskRequest;
use crate::result::{ResultMeta, State, TaskFailure};

/// How long the worker waits for its last task events to go out.
const EVENTS_GRACE: Duration = Duration::from_secs(5);

pub(super) async fn run(builder: WorkerBuilder, handle: WorkerHandle) -> Result<()> {
    let mut queues = builder.queues;
    if queues.is_empty() {
        queues.push(DEFAULT_QUEUE.to_owned());
    }
    let conn = builder.conn;
    let caps = conn.capabilities();
    let amqp = conn.messaging_system() == "rabbitmq";
    let infos: Vec<QueueInfo> = queues.iter().map(|q| QueueInfo::named(q)).collect();
    for info in &infos {
        declare(&conn, info).await?;
    }
    let hostname: Arc<str> = builder.hostname.unwrap_or_else(default_hostname).into();
    let prefetch = builder
        .concurrency
        .max(builder.autoscale.map_or(0, |(max, _)| max))
        .saturating_mul(usize::from(builder.prefetch_multiplier));
    let prefetch16 = u16::try_from(prefetch).unwrap_or(u16::MAX);
    let mut consumers = Consumers::new(&conn, prefetch16);
    consumers.start(queues.clone()).await?;
    let mut client = Celery::builder(&conn)
        .default_queue(queues[0].as_str())
        .origin(hostname.to_string());
    for (pattern, queue) in builder.routes {
        client = client.route(pattern, queue);
    }
    let client = Arc::new(client.build());
    let mut tasks = builder.tasks;
    if let Results::Backend(backend) = &builder.results {
        // Celery's builtin, for chords on backends that do not join them (SQL).
        tasks.entry(CHORD_UNLOCK.to_owned()).or_insert_with(|| {
            Registered::new(
                Box::new(chord::ChordUnlock {
                    backend: backend.clone(),
                    client: client.clone(),
                }),
                // Acked late: stopped midway, it comes back (it stores nothing, so a lost
                // one would leave the chord's body unsent).
                TaskSettings::new()
                    .max_retries(None)
                    .ignore_result(true)
                    .acks_late(true),
            )
        });
    }
    let clock = LamportClock::new();
    let events_on = builder
        .events
        .unwrap_or(conn.messaging_system() != "sqlite");
    let dispatcher =
        events_on.then(|| EventDispatcher::with_clock(&conn, hostname.to_string(), clock.clone()));
    let (events, event_queue) = WorkerEvents::new(dispatcher.clone(), builder.task_events);
    let (queue_changes, mut changes) = mpsc::unbounded_channel();
    let pool = pool::Pool::new(builder.concurrency, builder.autoscale);
    let shared = Arc::new(Shared {
        client,
        producer: conn.producer(),
        tasks,
        results: builder.results,
        acks_late: builder.acks_late,
        permits: Semaphore::new(pool.size()),
        pool,
        stop: handle.control.stop.subscribe(),
        abort: handle.control.abort.subscribe(),
        control: handle.control.clone(),
        eta_exchange: if amqp { ETA_EXCHANGE } else { "" },
        can_delay: caps.delayed_delivery,
        leases: caps.visibility_timeout,
        lease_heartbeat: conn
            .url()
            .query_seconds("visibility_timeout")
            .ok()
            .flatten()
            .map_or(Duration::from_secs(60), |vt| {
                (vt / 3).max(Duration::from_millis(100))
            }),
        hostname,
        conn: conn.clone(),
        clock,
        requests: Arc::new(state::Requests::default()),
        revoked: Mutex::new(state::Revoked::default()),
        events,
        queues: Mutex::new(infos),
        queue_changes,
        totals: Mutex::new(HashMap::new()),
        started: Instant::now(),
        prefetch,
    });
    // Beside the loop: the event flusher, the heartbeat, the mailbox, the autoscaler.
    let mut background = JoinSet::new();
    let mut flusher = None;
    if let (Some(dispatcher), Some(queue)) = (dispatcher, event_queue) {
        let (closing, closed) = oneshot::channel();
        flusher = Some((
            closing,
            tokio::spawn(eventer::flush(dispatcher, queue, closed)),
        ));
        heartbeat(&shared, EventKind::WorkerOnline).await;
        let beating = shared.clone();
        background.spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_FREQ);
            tick.tick().await;
            loop {
                tick.tick().await;
                heartbeat(&beating, EventKind::WorkerHeartbeat).await;
            }
        });
    }
    if builder.remote_control {
        match pidbox::listen(&conn, &shared.hostname).await {
            Ok(mailbox) => {
                background.spawn(pidbox::serve(shared.clone(), mailbox));
                if matches!(conn.messaging_system(), "rabbitmq" | "redis") {
                    background.spawn(pidbox::mingle(shared.clone()));
                }
            }
            Err(error) => tracing::warn!(
                error = %format_args!("{error:#}"),
                hostname = %shared.hostname,
                "remote control is off: the mailbox could not be opened (is another node \
                 of this name running?)"
            ),
        }
    }
    if builder.autoscale.is_some() {
        background.spawn(pool::autoscaler(shared.clone()));
    }
    tracing::info!(queues = ?queues, hostname = %shared.hostname, "Celery worker ready");
    let stop = execute::stopped(handle.control.stop.subscribe());
    tokio::pin!(stop);
    let mut running = JoinSet::new();
    let mut failed = None;
    loop {
        tokio::select! {
            biased;
            () = &mut stop => break,
            Some(joined) = running.join_next(), if !running.is_empty() => {
                ended(&shared, &consumers, joined).await;
                consumers.sweep().await;
            }
            Some(change) = changes.recv() => change_queues(&shared, &mut consumers, change).await,
            item = consumers.next() => match item {
                None => break,
                Some((at, Ok(delivery))) => match TaskRequest::from_delivery(&delivery) {
                    Ok(request) if shared.tasks.contains_key(&request.task) => {
                        shared.control.counters.received.fetch_add(1, Ordering::Relaxed);
                        let token = consumers.token(at);
                        running.spawn(execute::execute(shared.clone(), delivery, request, token));
                    }
                    Ok(request) => {
                        if let Some(consumer) = consumers.consumer(at)
                            && let Some(failed) = not_registered(&shared, consumer, delivery, request).await
                        {
                            // Stored and announced aside: a slow backend does not hold the queues.
                            running.spawn(async move {
                                failed.await;
                                None
                            });
                        }
                    }
                    Err(error) => {
                        let reason = format!("not a Celery task message: {error:#}");
                        if let Some(consumer) = consumers.consumer(at) {
                            reject(&shared, consumer, delivery, reason).await;
                        }
                    }
                },
                Some((at, Err(refused))) => {
                    let handled = match consumers.consumer(at) {
                        Some(consumer) => consumer.handle(refused).await.map(|_| ()),
                        None => Ok(()),
                    };
                    if let Err(error) = handled {
                        failed = Some(error.context("the Celery worker's consumer"));
                        break;
                    }
                }
            }
        }
    }
    handle.stop();
    // Waiting tasks put their messages back at once; running ones get the shutdown timeout.
    let wound_down = tokio::time::timeout(builder.shutdown_timeout, async {
        while let Some(joined) = running.join_next().await {
            ended(&shared, &consumers, joined).await;
        }
    })
    .await;
    if wound_down.is_err() {
        tracing::warn!(
            left = running.len(),
            "tasks still running at the shutdown timeout are stopped: early-acked ones \
             fail (WorkerLostError), late-acked ones go back to their queues"
        );
        handle.control.abort.send_replace(true);
        let settled = tokio::time::timeout(ABORT_GRACE, async {
            while let Some(joined) = running.join_next().await {
                ended(&shared, &consumers, joined).await;
            }
        })
        .await;
        if settled.is_err() {
            running.shutdown().await;
        }
    }
    let closed = consumers.close().await;
    background.shutdown().await;
    if let Some((closing, mut flushing)) = flusher {
        let _ = closing.send(());
        if tokio::time::timeout(EVENTS_GRACE, &mut flushing)
            .await
            .is_err()
        {
            flushing.abort();
            tracing::warn!("the last task events were not all sent");
        }
        let offline = heartbeat(&shared, EventKind::WorkerOffline);
        if tokio::time::timeout(EVENTS_GRACE, offline).await.is_err() {
            tracing::warn!("worker-offline was not sent");
        }
    }
    match failed {
        Some(error) => Err(error),
        None => closed,
    }
}

/// Adds or cancels a queue (`add_consumer`, `cancel_consumer`).
async fn change_queues(shared: &Shared, consumers: &mut Consumers, change: QueueChange) {
    match change {
        QueueChange::Add {
            queue,
            exchange,
            exchange_type,
            routing_key,
        } => {
            if consumers.consumes(&queue) {
                return;
            }
            let info = QueueInfo {
                exchange: exchange.unwrap_or_else(|| queue.clone()),
                exchange_type: exchange_type.unwrap_or_else(|| "direct".to_owned()),
                routing_key: routing_key.unwrap_or_else(|| queue.clone()),
                name: queue,
            };
            let started = match declare(&shared.conn, &info).await {
                Ok(()) => consumers.start(vec![info.name.clone()]).await,
                Err(error) => Err(error),
            };
            match started {
                Ok(()) => {
                    tracing::info!(queue = %info.name, "remote control: consuming a queue more");
                    shared.queues.lock().push(info);
                }
                Err(error) => tracing::error!(
                    error = %format_args!("{error:#}"),
                    queue = %info.name,
                    "add_consumer: the queue could not be consumed"
                ),
            }
        }
        QueueChange::Cancel(queue) => match consumers.cancel(&queue).await {
            Ok(true) => {
                tracing::info!(%queue, "remote control: no longer consuming a queue");
                shared.queues.lock().retain(|q| q.name != queue);
            }
            Ok(false) => {}
            Err(error) => {
                // Its consumer is retired; the queues it read besides could not get theirs.
                shared.queues.lock().retain(|q| consumers.consumes(&q.name));
                tracing::error!(
                    error = %format_args!("{error:#}"),
                    %queue,
                    "cancel_consumer: the other queues of its consumer could not be restarted"
                );
            }
        },
    }
}

/// A task's run has ended: a message its task rejected for good is dead-lettered through
/// the consumer it came from, and announced `task-rejected`.
async fn ended(
    shared: &Shared,
    consumers: &Consumers,
    joined: std::result::Result<Option<execute::Refused>, tokio::task::JoinError>,
) {
    let refused = match joined {
        Ok(Some(refused)) => refused,
        Ok(None) => return,
        Err(error) => {
            tracing::error!(%error, "a task's run ended abnormally");
            return;
        }
    };
    let execute::Refused {
        delivery,
        reason,
        task_id,
        token,
    } = refused;
    let Some(consumer) = consumers.holding(&token) else {
        // Not expected (the token keeps its consumer open); the message is not dropped.
        tracing::error!(id = %task_id, "a rejected task's consumer is gone: its message goes back");
        if let Err(error) = delivery.requeue().await {
            tracing::warn!(error = %format_args!("{:#}", kombu_core::Error::from(error)), "requeueing it failed: it comes back");
        }
        return;
    };
    if reject(shared, consumer, delivery, reason).await {
        let fields = crate::events::fields([("uuid", json!(task_id)), ("requeue", json!(false))]);
        shared.events.task(EventKind::TaskRejected, fields);
    }
}

/// A task this worker does not know: dead-lettered (Celery drops it); once it is, what is
/// left to do, as Celery's `on_unknown_task`: FAILURE `NotRegistered('name')` stored, then
/// announced `task-failed`.
async fn not_registered(
    shared: &Arc<Shared>,
    consumer: &Consumer,
    delivery: Delivery,
    request: TaskRequest,
) -> Option<impl Future<Output = ()> + Send + 'static> {
    let reply = execute::delivery_reply(&delivery);
    let reason = format!("unregistered task {:?} (id {})", request.task, request.id);
    if !reject(shared, consumer, delivery, reason).await {
        return None;
    }
    let shared = shared.clone();
    Some(async move {
        let failure = TaskFailure {
            exc_type: "NotRegistered".into(),
            exc_module: "celery.exceptions".into(),
            exc_message: vec![json!(request.task)],
            traceback: None,
        };
        let meta = ResultMeta::failure(request.id.as_str(), State::Failure, &failure);
        execute::store(&shared, &reply, &meta).await;
        let fields = crate::events::fields([
            ("uuid", json!(request.id)),
            ("exception", json!(failure.repr())),
        ]);
        shared.events.task(EventKind::TaskFailed, fields);
    })
}

/// Moves a message the worker cannot run aside (dead-lettered), never dropping it; whether
/// it was.
async fn reject(shared: &Shared, consumer: &Consumer, delivery: Delivery, reason: String) -> bool {
    tracing::error!(%reason, queue = %delivery.queue(), "a message this worker does not run");
    match consumer.dead_letter(delivery, reason).await {
        Ok(_) => {
            shared
                .control
                .counters
                .rejected
                .fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(error) => {
            tracing::error!(
                error = %format_args!("{error:#}"),
                "dead-lettering failed: the message stays in its queue"
            );
            // It comes straight back: no hot loop against a broker that refuses.
            tokio::time::sleep(REJECT_BACKOFF).await;
            false
        }
    }
}
