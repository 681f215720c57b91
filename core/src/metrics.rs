//! Metrics: how many messages were published, consumed and dead-lettered, and how long handlers
//! ran, through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! kombu records to whatever recorder the application installs (a Prometheus exporter, a
//! StatsD one, `metrics-util`'s `DebuggingRecorder` in tests); without one, nothing is
//! recorded and nothing is spent: each record point first asks whether a recorder is in force
//! (a thread-local read and an atomic load, about 2 ns) and builds no key, label or clock
//! reading otherwise. That is why metrics have no cargo feature of their own: off, they cost
//! what a feature check would, and on, they need no rebuild. [`set_recording`] turns them off
//! (or on) by hand.
//!
//! | name | kind | labels | recorded |
//! |---|---|---|---|
//! | [`MESSAGES_PUBLISHED`] | counter | `transport`, `destination` | each message a producer published (after the broker took it) |
//! | [`MESSAGES_CONSUMED`] | counter | `transport`, `queue` | each delivery a consumer handed out (refused ones included) |
//! | [`MESSAGES_DEAD_LETTERED`] | counter | `transport`, `queue` | each message moved aside: by a consumer's error policy, or by the transport (an unreadable entry) |
//! | [`HANDLER_DURATION`] | histogram, seconds | `queue`, `outcome` (`ok`/`error`) | each handler run by [`Consumer::consume`](crate::Consumer::consume), [`Consumer::consume_as`](crate::Consumer::consume_as) and kombu-patterns' worker |
//!
//! `transport` is the OpenTelemetry `messaging.system` of the connection
//! ([`Connection::messaging_system`](crate::Connection::messaging_system): `rabbitmq`, `redis`,
//! `sqlite`, `mongodb`, `memory`); `destination` is the exchange published to, or the queue
//! for the default exchange (the routing key names it). Code that runs handlers of its own (a
//! worker runtime) records through the same functions, so the names stay one set:
//! [`record_published`], [`record_consumed`], [`record_dead_lettered`], [`record_handler`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kombu_core::Result<()> {
//! use std::time::Duration;
//! use kombu_core::metrics;
//!
//! // Once, at start-up, after installing a recorder: units and help texts for exporters.
//! metrics::describe();
//! // What a worker does around each handler it runs.
//! metrics::record_handler("jobs", Duration::from_millis(12), true);
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

/// Counter: messages a producer published, once the broker took them. Labels
/// [`LABEL_TRANSPORT`], [`LABEL_DESTINATION`].
pub const MESSAGES_PUBLISHED: &str = "kombu_messages_published_total";
/// Counter: deliveries a consumer handed out (refused ones included). Labels
/// [`LABEL_TRANSPORT`], [`LABEL_QUEUE`].
pub const MESSAGES_CONSUMED: &str = "kombu_messages_consumed_total";
/// Counter: messages moved aside to a dead-letter exchange or `<queue>.dlq`. Labels
/// [`LABEL_TRANSPORT`], [`LABEL_QUEUE`] (the queue they were taken from).
pub const MESSAGES_DEAD_LETTERED: &str = "kombu_messages_dead_lettered_total";
/// Histogram, in seconds: how long a handler ran on one delivery. Labels [`LABEL_QUEUE`],
/// [`LABEL_OUTCOME`].
pub const HANDLER_DURATION: &str = "kombu_handler_duration_seconds";

/// Label: the OpenTelemetry `messaging.system` of the connection (`rabbitmq`, `redis`, ...).
pub const LABEL_TRANSPORT: &str = "transport";
/// Label: the exchange published to, or the queue when published through the default exchange.
pub const LABEL_DESTINATION: &str = "destination";
/// Label: the queue a message was taken from.
pub const LABEL_QUEUE: &str = "queue";
/// Label: how a handler ended, [`OUTCOME_OK`] or [`OUTCOME_ERROR`].
pub const LABEL_OUTCOME: &str = "outcome";
/// [`LABEL_OUTCOME`] of a handler that returned `Ok`.
pub const OUTCOME_OK: &str = "ok";
/// [`LABEL_OUTCOME`] of a handler that returned an error.
pub const OUTCOME_ERROR: &str = "error";

/// Whether kombu records metrics ([`set_recording`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recording {
    /// Whenever a recorder is in force (the default): a global one
    /// (`metrics::set_global_recorder`) or a thread-local one. The `metrics` crate's no-op
    /// recorder, in force when none was installed, is recognised by being zero-sized, so a
    /// zero-sized recorder of your own needs [`Recording::Always`].
    #[default]
    Auto,
    /// Always, to whatever recorder is in force.
    Always,
    /// Never.
    Never,
}

static RECORDING: AtomicU8 = AtomicU8::new(0);

/// Chooses when kombu records metrics (default [`Recording::Auto`]). Process-wide.
pub fn set_recording(recording: Recording) {
    let raw = match recording {
        Recording::Auto => 0,
        Recording::Always => 1,
        Recording::Never => 2,
    };
    RECORDING.store(raw, Ordering::Relaxed);
}

/// Whether a metric recorded now would reach a recorder (see [`Recording`]). Cheap: callers
/// check it before building labels or reading a clock.
pub fn is_recording() -> bool {
    match RECORDING.load(Ordering::Relaxed) {
        0 => ::metrics::with_recorder(|recorder| std::mem::size_of_val(recorder) != 0),
        1 => true,
        _ => false,
    }
}

/// Registers the unit and a help text of each metric with the recorder in force (call once,
/// after installing it; exporters such as Prometheus print them).
pub fn describe() {
    ::metrics::describe_counter!(
        MESSAGES_PUBLISHED,
        ::metrics::Unit::Count,
        "Messages published, once the broker took them."
    );
    ::metrics::describe_counter!(
        MESSAGES_CONSUMED,
        ::metrics::Unit::Count,
        "Deliveries handed out by consumers."
    );
    ::metrics::describe_counter!(
        MESSAGES_DEAD_LETTERED,
        ::metrics::Unit::Count,
        "Messages moved to a dead-letter exchange or queue."
    );
    ::metrics::describe_histogram!(
        HANDLER_DURATION,
        ::metrics::Unit::Seconds,
        "How long a handler ran on one delivery."
    );
}

/// Counts `count` messages published to `destination` (an exchange, or the queue when
/// published through the default exchange) on `transport` (a `messaging.system`).
pub fn record_published(transport: &'static str, destination: &str, count: u64) {
    if !is_recording() {
        return;
    }
    ::metrics::counter!(
        MESSAGES_PUBLISHED,
        LABEL_TRANSPORT => transport,
        LABEL_DESTINATION => destination.to_owned()
    )
    .increment(count);
}

/// Counts one delivery handed out from `queue` on `transport`.
pub fn record_consumed(transport: &'static str, queue: &str) {
    if !is_recording() {
        return;
    }
    ::metrics::counter!(
        MESSAGES_CONSUMED,
        LABEL_TRANSPORT => transport,
        LABEL_QUEUE => queue.to_owned()
    )
    .increment(1);
}

/// Counts one message of `queue` moved aside on `transport`.
pub fn record_dead_lettered(transport: &'static str, queue: &str) {
    if !is_recording() {
        return;
    }
    ::metrics::counter!(
        MESSAGES_DEAD_LETTERED,
        LABEL_TRANSPORT => transport,
        LABEL_QUEUE => queue.to_owned()
    )
    .increment(1);
}

/// Records how long a handler ran on one delivery of `queue`, and whether it returned `Ok`.
pub fn record_handler(queue: &str, duration: Duration, ok: bool) {
    if !is_recording() {
        return;
    }
    ::metrics::histogram!(
        HANDLER_DURATION,
        LABEL_QUEUE => queue.to_owned(),
        LABEL_OUTCOME => if ok { OUTCOME_OK } else { OUTCOME_ERROR }
    )
    .record(duration.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_noop_recorder_records_nothing_and_an_installed_one_does() {
        // No recorder in this thread and none global in this test binary.
        assert!(!is_recording());
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        ::metrics::with_local_recorder(&recorder, || {
            assert!(is_recording());
            record_consumed("memory", "jobs");
            record_handler("jobs", Duration::from_millis(5), false);
        });
        let counted = snapshotter.snapshot().into_vec();
        assert_eq!(counted.len(), 2, "{counted:?}");
        let names: Vec<&str> = counted.iter().map(|(key, ..)| key.key().name()).collect();
        assert!(names.contains(&MESSAGES_CONSUMED));
        assert!(names.contains(&HANDLER_DURATION));
    }
}
