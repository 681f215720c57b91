//! The events' way in: a Celery event receiver on the broker, each event adjusted as Celery's
//! receiver adjusts it, worker events into the workers, task events into the history in
//! batches (one transaction for all that arrived together).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kombu_celery::clock::LamportClock;
use kombu_celery::events::{Event, EventReceiver, utcoffset};
use kombu_core::Result;
use kombu_core::transport::unix_now;
use serde_json::Value as Json;

use crate::State;
use crate::metrics::TaskSeen;

/// At most this many events go into one history transaction.
const BATCH: usize = 512;

/// How long the receiver waits before listening again after its stream failed.
const RETRY: Duration = Duration::from_secs(1);

/// Starts listening (the receiver's queue exists when this returns) and feeding `state`.
pub(crate) async fn start(state: Arc<State>) -> Result<tokio::task::JoinHandle<()>> {
    let receiver = EventReceiver::builder(&state.conn).build().await?;
    Ok(tokio::spawn(run(state, receiver)))
}

async fn run(state: Arc<State>, mut receiver: EventReceiver) {
    let clock = LamportClock::new();
    loop {
        {
            let mut batches = (&mut receiver).ready_chunks(BATCH);
            while let Some(items) = batches.next().await {
                let here = utcoffset();
                let now = unix_now();
                let mut events = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Ok(mut event) => {
                            event.receive(&clock, here, now);
                            events.push(event);
                        }
                        Err(error) => {
                            tracing::warn!(%error, "monitor: an event that could not be read")
                        }
                    }
                }
                take(&state, events).await;
            }
        }
        // The stream ended (the connection gave up): listen again.
        tracing::warn!("monitor: the event stream ended; listening again");
        loop {
            tokio::time::sleep(RETRY).await;
            match EventReceiver::builder(&state.conn).build().await {
                Ok(again) => {
                    receiver = again;
                    break;
                }
                Err(error) => tracing::warn!(%error, "monitor: cannot listen to events"),
            }
        }
    }
}

/// Applies one batch of events.
async fn take(state: &Arc<State>, events: Vec<Event>) {
    // A worker that comes online is asked for its state at once (Flower waits for a refresh).
    for event in &events {
        match (event.kind().as_str(), event.hostname()) {
            ("worker-online", Some(hostname)) => state.refresh_soon(hostname),
            // Online before this monitor listened: asked at its first heartbeat heard.
            ("worker-heartbeat", Some(hostname)) => state.inspect_if_unknown(hostname).await,
            _ => {}
        }
    }
    {
        let mut workers = state.workers.lock();
        for event in &events {
            let (Some(hostname), Some(timestamp)) = (event.hostname(), event.timestamp()) else {
                continue;
            };
            let received = event
                .get("local_received")
                .and_then(Json::as_f64)
                .unwrap_or(0.0);
            workers.apply(
                event.kind().as_str(),
                hostname,
                timestamp,
                received,
                event.fields(),
            );
            if event.kind().as_str().starts_with("worker-") {
                let active = event.get("active").and_then(Json::as_i64);
                state
                    .metrics
                    .worker(event.kind().as_str(), hostname, active);
                state
                    .live
                    .worker(event.kind().as_str(), hostname, event.fields());
            }
        }
    }
    let history = state.history.clone();
    let applied = tokio::task::spawn_blocking(move || {
        let tasks: Vec<&Event> = events
            .iter()
            .filter(|e| e.kind().as_str().starts_with("task-") && e.uuid().is_some())
            .filter(|e| e.hostname().is_some() && e.timestamp().is_some())
            .collect();
        let result = history.apply(
            tasks.iter().filter_map(|event| {
                Some((
                    event.kind().as_str().strip_prefix("task-")?,
                    event.hostname()?,
                    event.timestamp()?,
                    event.fields(),
                ))
            }),
            unix_now(),
        );
        result.map(|applied| {
            tasks
                .iter()
                .zip(applied)
                .map(|(event, task)| {
                    let seen = TaskSeen {
                        kind: event.kind().as_str().to_owned(),
                        worker: event.hostname().unwrap_or_default().to_owned(),
                        name: event
                            .get("name")
                            .and_then(Json::as_str)
                            .filter(|n| !n.is_empty())
                            .map(str::to_owned)
                            .or(task.name)
                            .unwrap_or_default(),
                        runtime: event.get("runtime").and_then(Json::as_f64),
                        received: task.received,
                        started: task.started,
                        eta: task.eta,
                    };
                    (event.uuid().unwrap_or_default().to_owned(), seen)
                })
                .collect::<Vec<_>>()
        })
    })
    .await;
    match applied {
        Ok(Ok(seen)) => {
            let now = unix_now();
            for (uuid, task) in &seen {
                state.metrics.task(task);
                state.live.task(uuid, task, now);
            }
        }
        Ok(Err(error)) => tracing::warn!(%error, "monitor: task events not kept"),
        Err(error) => tracing::warn!(%error, "monitor: task events not kept"),
    }
}
