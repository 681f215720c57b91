//! Test helpers the kombu-rs crates' integration tests share, kept out of the libraries:
//! the Python interpreter with kombu and Celery ([`python()`]), Celery workers
//! ([`CeleryWorker`]) and task headers, the messages the Python-interop tests exchange with
//! Python kombu ([`interop`], mirrored by `python/kombu_rs_interop.py`, which the
//! transports' Python scripts import), and child processes that die with the test ([`KillOnDrop`], [`lines`], from
//! kombu-core's conformance suite).
//!
//! [`faults`] runs brokers of a fault test's own (a Redis server, a second RabbitMQ node, a
//! SecantusDB speaking MongoDB's wire protocol, a network namespace to cut them off in) for the
//! restart and partition tests.
//!
//! [`until`] waits for a condition with a bound; [`delayed`] holds the delayed-delivery
//! checks the stores share.
//!
//! [`http`] sends plain HTTP requests to servers on loopback (Flower, the monitor).
//!
//! [`fuzz`] holds the bodies of the fuzz targets (`fuzz/`), which its corpus test runs.
//!
//! A dev-dependency only (`publish = false`).

pub mod brokers;
pub mod delayed;
pub mod faults;
pub mod fuzz;
pub mod http;
pub mod interop;
mod python;

pub use kombu_core::conformance::support::{KillOnDrop, lines};

/// Waits until `done` holds, looking every 10 ms; panics naming `what` once `patience` has
/// passed.
pub async fn until(what: &str, patience: std::time::Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + patience;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
pub use python::{CeleryWorker, await_recorded_task, celery_task_headers, python};
