//! A worker's events, as a Celery worker sends them: `worker-online`, a `worker-heartbeat`
//! every [`HEARTBEAT_FREQ`] and `worker-offline` always (where the transport has events),
//! and its task events when task events are on (`-E`, [`WorkerBuilder::task_events`],
//! the `enable_events` command), in batches of at most [`BUFFER_LIMIT`] under `task.multi`:
//! the task events sent while a batch is being published go in the next one, so a busy
//! worker publishes one message per batch rather than per event.
//!
//! [`WorkerBuilder::task_events`]: super::WorkerBuilder::task_events

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Map, Value as Json, json};
use tokio::sync::mpsc;

use crate::events::{BUFFER_LIMIT, Event, EventDispatcher, EventKind, SW_IDENT, loadavg};

/// Celery's heartbeat interval (`freq`).
pub const HEARTBEAT_FREQ: Duration = Duration::from_secs(2);
/// Task events the flusher sends at once at most (as lists of [`BUFFER_LIMIT`]).
const FLUSH_AT_MOST: usize = 8 * BUFFER_LIMIT;
/// How long the flusher waits for more task events to fill a batch.
const LINGER: Duration = Duration::from_millis(1);
/// Task events waiting to be published at most; past it new ones are dropped (and counted),
/// so a broker that does not take them does not grow the worker's memory.
const QUEUED_AT_MOST: usize = 10_000;

/// The worker's side of its events.
#[derive(Debug)]
pub(crate) struct WorkerEvents {
    /// `None` where the worker sends no events (a transport without them, or turned off).
    dispatcher: Option<EventDispatcher>,
    tasks: AtomicBool,
    queue: Option<mpsc::Sender<Event>>,
    /// Held while an event is stamped and queued, so that events queue in their clocks'
    /// order (tasks on two threads could otherwise stamp 22 and 23 and queue 23 first).
    stamping: parking_lot::Mutex<()>,
    pub(crate) dropped: AtomicU64,
}

impl WorkerEvents {
    /// Events through `dispatcher` (none without one), task events on if `tasks`; the
    /// receiver is for [`flush`].
    pub(crate) fn new(
        dispatcher: Option<EventDispatcher>,
        tasks: bool,
    ) -> (WorkerEvents, Option<mpsc::Receiver<Event>>) {
        let (queue, receiver) = match dispatcher {
            Some(_) => {
                let (tx, rx) = mpsc::channel(QUEUED_AT_MOST);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let events = WorkerEvents {
            dispatcher,
            tasks: AtomicBool::new(tasks),
            queue,
            stamping: parking_lot::Mutex::new(()),
            dropped: AtomicU64::new(0),
        };
        (events, receiver)
    }

    /// Whether the worker sends events at all.
    pub(crate) fn enabled(&self) -> bool {
        self.dispatcher.is_some()
    }

    /// Whether task events are on.
    pub(crate) fn tasks_enabled(&self) -> bool {
        self.dispatcher.is_some() && self.tasks.load(Ordering::Relaxed)
    }

    /// Turns task events on or off; whether they were on before.
    pub(crate) fn set_tasks(&self, on: bool) -> bool {
        self.tasks.swap(on, Ordering::Relaxed)
    }

    /// Queues a task event (if task events are on), stamped now.
    pub(crate) fn task(&self, kind: EventKind, fields: Map<String, Json>) {
        if !self.tasks_enabled() {
            return;
        }
        let (Some(dispatcher), Some(queue)) = (&self.dispatcher, &self.queue) else {
            return;
        };
        // try_send does not wait: the lock is held for a stamp and a push.
        let queued = {
            let _order = self.stamping.lock();
            queue.try_send(dispatcher.event(kind, fields))
        };
        if queued.is_err() && self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!("task events are not published as fast as they come: some are dropped");
        }
    }

    /// Sends a `worker-*` event now.
    pub(crate) async fn worker(&self, kind: EventKind, active: usize, processed: u64) {
        let Some(dispatcher) = &self.dispatcher else {
            return;
        };
        let [one, five, fifteen] = loadavg();
        let fields = crate::events::fields([
            ("freq", json!(HEARTBEAT_FREQ.as_secs_f64())),
            ("active", json!(active)),
            ("processed", json!(processed)),
            ("loadavg", json!([one, five, fifteen])),
            ("sw_ident", json!(SW_IDENT)),
            ("sw_ver", json!(env!("CARGO_PKG_VERSION"))),
            ("sw_sys", json!(sw_sys())),
        ]);
        if let Err(error) = dispatcher.emit(kind.clone(), fields).await {
            tracing::warn!(error = %format_args!("{error:#}"), event = %kind, "a worker event was not sent");
        }
    }
}

/// The system's name as Python's `platform.system()` gives it.
fn sw_sys() -> &'static str {
    match std::env::consts::OS {
        "linux" => "Linux",
        "macos" => "Darwin",
        "windows" => "Windows",
        "freebsd" => "FreeBSD",
        other => other,
    }
}

/// Publishes the queued task events in batches of at most [`BUFFER_LIMIT`], what has queued
/// up meanwhile (several batches in one round trip when behind), until `closing` fires; then
/// what is queued, and it returns.
pub(crate) async fn flush(
    dispatcher: EventDispatcher,
    mut queue: mpsc::Receiver<Event>,
    closing: tokio::sync::oneshot::Receiver<()>,
) {
    let mut batch = Vec::with_capacity(FLUSH_AT_MOST);
    tokio::pin!(closing);
    let mut open = true;
    loop {
        let got = match open {
            true => tokio::select! {
                got = queue.recv_many(&mut batch, FLUSH_AT_MOST) => got,
                _ = &mut closing => {
                    open = false;
                    queue.close();
                    continue;
                }
            },
            false => queue.recv_many(&mut batch, FLUSH_AT_MOST).await,
        };
        if got == 0 {
            return;
        }
        if open && batch.len() < BUFFER_LIMIT {
            // A busy worker's events come a few at a time: a moment's wait gathers them into
            // one message rather than one each.
            tokio::time::sleep(LINGER).await;
            while batch.len() < FLUSH_AT_MOST {
                match queue.try_recv() {
                    Ok(event) => batch.push(event),
                    Err(_) => break,
                }
            }
        }
        if let Err(error) = dispatcher.send_batch(&batch).await {
            tracing::warn!(
                error = %format_args!("{error:#}"),
                events = batch.len(),
                "task events were not sent"
            );
        }
        batch.clear();
    }
}
