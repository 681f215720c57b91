//! The broker restarts under load (the conformance suite's fault mode,
//! `kombu_core::conformance::faults`): while messages are published with confirms and
//! consumed with acks, a RabbitMQ node of the test's own is killed (SIGKILL to its Erlang VM,
//! no clean shutdown) and started again with its data; in the soak's further rounds
//! (`KOMBU_SOAK_ROUNDS`), every second restart is a clean stop (`rabbitmqctl stop`) instead. Every confirmed message must arrive
//! (a batch whose confirm was lost is published again and may arrive twice, a delivery whose
//! ack was lost comes again), and the consumer and the publisher's connection must resume by
//! themselves.
//!
//! The node is not the shared one on 5672: `kombu-test-support`'s `RabbitNode` runs a second
//! node (its own name, AMQP port 5682, distribution port 25682, data directory and cookie,
//! no plugins), so the other AMQP tests go on undisturbed. 2,000 messages in CI; 10,000 with
//! `KOMBU_SOAK=1` (`scripts/soak faults`). Needs the `rabbitmq-server` package (as
//! `scripts/test` installs it) and root. Every wait is bounded; the numbers are printed, not
//! asserted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kombu_test_support::faults::{self, FaultPlan, RabbitNode};
use parking_lot::Mutex;

/// The AMQP port of the test's node.
const PORT: u16 = 5682;
/// Its Erlang distribution port.
const DIST_PORT: u16 = 25682;
/// How long the node stays down.
const DOWN: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_killed_and_restarted_loses_no_confirmed_message() {
    if !faults::can_run(
        "restart",
        "amqp",
        false,
        &["rabbitmq-server", "rabbitmqctl"],
    ) {
        return;
    }
    kombu_amqp::register();
    let started = Instant::now();
    let node = tokio::task::spawn_blocking(|| RabbitNode::start(PORT, DIST_PORT))
        .await
        .expect("start the node");
    eprintln!("amqp restart: node up after {:.1?}", started.elapsed());
    // A connection notices the kill at once (its socket closes); a short connect timeout
    // keeps each reconnection attempt short while the node is down. The URL lists an
    // unreachable alternate first: the connections fail over to the node, and recovery goes
    // through both in turn while the node is down.
    let url = format!(
        "amqp://guest:guest@127.0.0.1:1/?connect_timeout=1;{}",
        node.url("?connect_timeout=2&heartbeat=5")
    );
    let node = Arc::new(Mutex::new(node));
    let plan = FaultPlan::from_env();
    for round in 1..=faults::rounds() {
        let node = node.clone();
        // Odd rounds kill the node, even ones (in the soak) stop it cleanly.
        let kill = round % 2 == 1;
        let how = if kill { "SIGKILL" } else { "clean stop" };
        let name = format!("amqp node {how}+restart #{round}");
        let report = faults::run(&name, &url, &plan, move || {
            let mut node = node.lock();
            let stopped = Instant::now();
            if kill {
                node.kill();
            } else {
                node.stop();
            }
            std::thread::sleep(DOWN);
            let back = node.start_again(DIST_PORT);
            eprintln!(
                "amqp restart: node down ({how}) and back in {:.1?}",
                stopped.elapsed()
            );
            back
        })
        .await;
        eprintln!("{report}; at {:.1?}", started.elapsed());
        assert_eq!(report.lost, 0);
    }
    let node = Arc::try_unwrap(node).map(Mutex::into_inner);
    tokio::task::spawn_blocking(move || drop(node))
        .await
        .expect("stop the node");
    eprintln!("amqp restart: all done after {:.1?}", started.elapsed());
}
