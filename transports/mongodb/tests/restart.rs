//! MongoDB under a restart (the conformance suite's fault mode,
//! `kombu_core::conformance::faults`), on a server of the test's own (`kombu-test-support`'s
//! `MongoServer`: SecantusDB on its own port and storage directory), never the shared test
//! server: while messages are published and consumed with acks, the server is killed with
//! SIGKILL and started again on its storage directory. Every message whose publish returned
//! (a journaled write, the transport's default write concern) must arrive, and the consumer and
//! the publisher's connection must resume by themselves (the driver reconnects; an operation
//! during the outage fails as recoverable after `serverSelectionTimeoutMS`).
//!
//! Deliveries taken before the kill and not acked come back after the visibility timeout
//! (5 s here), or at once when the take's reply was lost (the transport returns such takes).
//! 600 messages in CI (the server is a Python stand-in that slows as its collection grows),
//! 2,000 with `KOMBU_SOAK=1`. Every wait is bounded; the numbers are printed, not asserted.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kombu_test_support::faults::{self, FaultPlan, MongoServer};

/// The test's server port.
const PORT: u16 = 27110;
/// How long the killed server stays down: longer than `serverSelectionTimeoutMS`, so operations
/// fail meanwhile and the publisher and the consumer must retry.
const DOWN: Duration = Duration::from_secs(3);
/// The URL options.
const OPTIONS: &str = "?visibility_timeout=5&polling_interval=0.2&serverSelectionTimeoutMS=2000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_and_restarted_loses_no_stored_message() {
    if !MongoServer::can_run("mongodb restart") {
        return;
    }
    kombu_mongodb::register();
    let server = tokio::task::spawn_blocking(|| MongoServer::start(PORT))
        .await
        .expect("start secantusd");
    let url = format!("{}/restart{OPTIONS}", server.url().trim_end_matches('/'));
    let server = Arc::new(Mutex::new(server));
    let soak = std::env::var("KOMBU_SOAK").is_ok_and(|v| !v.is_empty() && v != "0");
    let plan = FaultPlan {
        messages: if soak { 2_000 } else { 600 },
        batch: 50,
        fault_after: if soak { 500 } else { 200 },
        held_back: 100,
        prefetch: 50,
        guard: Duration::from_secs(if soak { 600 } else { 240 }),
    };
    for round in 1..=faults::rounds() {
        let server = server.clone();
        let name = format!("mongodb SIGKILL+restart #{round}");
        let report = faults::run(&name, &url, &plan, move || {
            let mut server = server.lock().expect("server");
            server.sigkill();
            std::thread::sleep(DOWN);
            server.start_again()
        })
        .await;
        eprintln!("{report}");
        assert_eq!(report.lost, 0);
    }
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .expect("stop secantusd");
}
