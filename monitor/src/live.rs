//! Live updates: each task and worker change as a server-sent event (`GET /api/live`), and
//! the last ten minutes of throughput and latency, second by second
//! (`GET /api/stats/series`), for the page's live table and charts.
//!
//! Bounded whatever the event rate: one broadcast channel of [`CAPACITY`] messages (a client
//! that falls behind is told how many it missed, `event: lagged`, and goes on from the
//! newest), at most [`MAX_CLIENTS`] streams at once, and [`WINDOW`] one-second buckets.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::State as Shared;
use axum::http::StatusCode;
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use futures::stream;
use parking_lot::Mutex;
use serde_json::{Map, Value as Json, json};
use tokio::sync::broadcast;

use crate::State;
use crate::api::{error, json};
use crate::metrics::TaskSeen;

/// Messages held for slow clients.
const CAPACITY: usize = 1024;
/// Live streams at once.
pub(crate) const MAX_CLIENTS: usize = 64;
/// Seconds of series kept.
const WINDOW: usize = 600;

/// One second of task events.
#[derive(Debug, Clone, Default, PartialEq)]
struct Bucket {
    second: i64,
    received: u32,
    succeeded: u32,
    failed: u32,
    /// Sum and count of `runtime` of the tasks that ended.
    runtime: (f64, u32),
    /// Sum and count of the waits between `received` and `started`.
    wait: (f64, u32),
}

/// The live side of the monitor.
#[derive(Debug)]
pub(crate) struct Live {
    sender: broadcast::Sender<(&'static str, Arc<str>)>,
    clients: AtomicUsize,
    buckets: Mutex<VecDeque<Bucket>>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            sender: broadcast::channel(CAPACITY).0,
            clients: AtomicUsize::new(0),
            buckets: Mutex::new(VecDeque::with_capacity(WINDOW)),
        }
    }
}

impl Live {
    fn send(&self, kind: &'static str, body: &Json) {
        // Nobody listening is fine.
        if self.sender.receiver_count() > 0 {
            let _ = self.sender.send((kind, Arc::from(body.to_string())));
        }
    }

    /// A task event applied to the history, seen at `now` (the monitor's clock).
    pub(crate) fn task(&self, uuid: &str, seen: &TaskSeen, now: f64) {
        self.send(
            "task",
            &json!({
                "uuid": uuid,
                "event": seen.kind,
                "name": seen.name,
                "worker": seen.worker,
                "runtime": seen.runtime,
                "received": seen.received,
                "started": seen.started,
            }),
        );
        let second = now.floor() as i64;
        let mut buckets = self.buckets.lock();
        if buckets.back().is_none_or(|b| b.second < second) {
            buckets.push_back(Bucket {
                second,
                ..Bucket::default()
            });
        }
        // An event of an earlier second (a slow batch) counts in the latest.
        let Some(bucket) = buckets.back_mut() else {
            return;
        };
        match seen.kind.as_str() {
            "task-received" => bucket.received += 1,
            "task-succeeded" => bucket.succeeded += 1,
            "task-failed" => bucket.failed += 1,
            _ => {}
        }
        if let Some(runtime) = seen.runtime.filter(|r| r.is_finite() && *r >= 0.0) {
            bucket.runtime.0 += runtime;
            bucket.runtime.1 += 1;
        }
        if seen.kind == "task-started"
            && let (Some(received), Some(started)) = (seen.received, seen.started)
            && started >= received
        {
            bucket.wait.0 += started - received;
            bucket.wait.1 += 1;
        }
        while buckets
            .front()
            .is_some_and(|b| b.second <= second - WINDOW as i64)
        {
            buckets.pop_front();
        }
    }

    /// A worker event.
    pub(crate) fn worker(&self, kind: &str, hostname: &str, fields: &Map<String, Json>) {
        self.send(
            "worker",
            &json!({
                "event": kind,
                "hostname": hostname,
                "active": fields.get("active"),
                "processed": fields.get("processed"),
                "loadavg": fields.get("loadavg"),
                "freq": fields.get("freq"),
            }),
        );
    }

    /// The series up to `now`: one entry a second for the last [`WINDOW`] seconds (zero where
    /// nothing happened); latencies are means (`null` where no task gave one).
    pub(crate) fn series(&self, now: f64) -> Json {
        let end = now.floor() as i64;
        let start = end - WINDOW as i64 + 1;
        let buckets = self.buckets.lock();
        let mut at = buckets.iter().peekable();
        let (mut seconds, mut received, mut succeeded, mut failed) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut runtime, mut wait) = (Vec::new(), Vec::new());
        let mean = |(sum, n): (f64, u32)| (n > 0).then(|| sum / f64::from(n));
        for second in start..=end {
            while at.peek().is_some_and(|b| b.second < second) {
                at.next();
            }
            let bucket = at.peek().filter(|b| b.second == second);
            seconds.push(second);
            received.push(bucket.map_or(0, |b| b.received));
            succeeded.push(bucket.map_or(0, |b| b.succeeded));
            failed.push(bucket.map_or(0, |b| b.failed));
            runtime.push(bucket.and_then(|b| mean(b.runtime)));
            wait.push(bucket.and_then(|b| mean(b.wait)));
        }
        json!({
            "seconds": seconds,
            "received": received,
            "succeeded": succeeded,
            "failed": failed,
            "runtime": runtime,
            "wait": wait,
        })
    }
}

/// Counts a live client while its stream lives.
struct Client(Arc<State>);

impl Drop for Client {
    fn drop(&mut self) {
        self.0.live.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `GET /api/live`: server-sent events, `task` and `worker` (JSON data), `lagged` (how many
/// a slow client missed); a comment every 15 s keeps proxies from closing it. 503 past
/// [`MAX_CLIENTS`] streams.
pub(crate) async fn stream(Shared(state): Shared<Arc<State>>) -> Response {
    let live = &state.live;
    if live.clients.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
        live.clients.fetch_sub(1, Ordering::AcqRel);
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Too many live streams (at most {MAX_CLIENTS})"),
        );
    }
    let receiver = live.sender.subscribe();
    let client = Client(state.clone());
    let hello = Sse::default().event("hello").data("{}");
    let events = stream::unfold((receiver, client), |(mut receiver, client)| async move {
        let event = match receiver.recv().await {
            Ok((kind, data)) => Sse::default().event(kind).data(&*data),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                Sse::default().event("lagged").data(missed.to_string())
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok::<_, std::convert::Infallible>(event), (receiver, client)))
    });
    let all = futures::StreamExt::chain(stream::once(async move { Ok(hello) }), events);
    axum::response::Sse::new(all)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response()
}

/// `GET /api/stats/series`: [`Live::series`] now.
pub(crate) async fn series(Shared(state): Shared<Arc<State>>) -> Response {
    json(&state.live.series(kombu_core::transport::unix_now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(
        kind: &str,
        runtime: Option<f64>,
        received: Option<f64>,
        started: Option<f64>,
    ) -> TaskSeen {
        TaskSeen {
            kind: kind.to_owned(),
            worker: "w".to_owned(),
            name: "t".to_owned(),
            runtime,
            received,
            started,
            eta: false,
        }
    }

    #[test]
    fn the_series_counts_each_second_and_keeps_ten_minutes() {
        let live = Live::default();
        live.task("a", &seen("task-received", None, Some(99.0), None), 100.2);
        live.task(
            "a",
            &seen("task-started", None, Some(99.0), Some(99.5)),
            100.7,
        );
        live.task("a", &seen("task-succeeded", Some(2.0), None, None), 101.1);
        live.task("b", &seen("task-failed", Some(4.0), None, None), 101.9);
        let series = live.series(101.5);
        let n = series["seconds"].as_array().map(Vec::len);
        assert_eq!(n, Some(WINDOW));
        let last = |k: &str| series[k].as_array().and_then(|a| a.last()).cloned();
        let before = |k: &str| series[k].as_array().map(|a| a[WINDOW - 2].clone());
        assert_eq!(last("seconds"), Some(json!(101)));
        assert_eq!(before("received"), Some(json!(1)));
        assert_eq!(before("wait"), Some(json!(0.5)));
        assert_eq!(last("succeeded"), Some(json!(1)));
        assert_eq!(last("failed"), Some(json!(1)));
        assert_eq!(last("runtime"), Some(json!(3.0)));
        // Ten minutes later the old seconds are gone.
        live.task(
            "c",
            &seen("task-received", None, None, None),
            100.0 + WINDOW as f64 + 5.0,
        );
        assert_eq!(live.buckets.lock().len(), 1);
    }
}
