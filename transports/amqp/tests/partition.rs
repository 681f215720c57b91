//! A network partition under load (the conformance suite's fault mode,
//! `kombu_core::conformance::faults`): a RabbitMQ node of the test's own runs inside a network
//! namespace of the test's own (`kombu-test-support`'s `Netns`, joined to the host by a veth
//! pair); the publisher and the consumer stay on the host. While messages flow, the link is
//! cut both ways without a reset (every packet dropped inside the namespace), for longer than
//! the connections' heartbeat timeout, then restored. The connections notice the silence
//! through AMQP heartbeats (`heartbeat=2`), reconnect once the link is back, and every
//! confirmed message arrives.
//!
//! Needs root (`ip netns`), `nft` (package `nftables`) and `rabbitmq-server`, as
//! `scripts/test` installs them. Every wait is bounded; the numbers are printed, not asserted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kombu_test_support::faults::{self, FaultPlan, Netns, RabbitNode};
use parking_lot::Mutex;

/// The node's AMQP port (inside the namespace).
const PORT: u16 = 5682;
/// Its Erlang distribution port (inside the namespace).
const DIST_PORT: u16 = 25682;
/// How long the link stays cut: past two heartbeats of 2 s, so both sides give up on the
/// connection.
const CUT: Duration = Duration::from_secs(6);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_cut_and_restored_loses_no_confirmed_message() {
    if !faults::can_run(
        "partition",
        "amqp",
        true,
        &["rabbitmq-server", "rabbitmqctl", "ip", "ss", "nft"],
    ) {
        return;
    }
    kombu_amqp::register();
    let (netns, node) = tokio::task::spawn_blocking(|| {
        let netns = Netns::create();
        let node = RabbitNode::start_in(&netns, PORT, DIST_PORT);
        (netns, node)
    })
    .await
    .expect("start the node in its namespace");
    let url = node.url("?heartbeat=2&connect_timeout=2");
    let netns = Arc::new(netns);
    let plan = FaultPlan::from_env();
    for round in 1..=faults::rounds() {
        let name = format!("amqp partition #{round}");
        let before = Arc::new(Mutex::new(Vec::new()));
        let during = Arc::new(Mutex::new(Vec::new()));
        let (report, after) = {
            let netns = netns.clone();
            let at_end = netns.clone();
            let before = before.clone();
            let during = during.clone();
            faults::run_then(
                &name,
                &url,
                &plan,
                move || {
                    *before.lock() = netns.connections_to(PORT);
                    netns.cut();
                    std::thread::sleep(CUT);
                    *during.lock() = netns.connections_to(PORT);
                    netns.restore();
                    Instant::now()
                },
                move || at_end.connections_to(PORT),
            )
            .await
        };
        eprintln!("{report}");
        assert_eq!(report.lost, 0);
        // The clients noticed the dead link and connected again: none of the connections open
        // at the cut is still in use.
        let before = before.lock().clone();
        let during = during.lock().clone();
        eprintln!(
            "{name}: connections before the cut {before:?}, at its end {during:?}, after \
             {after:?}"
        );
        assert!(!before.is_empty(), "the clients were connected at the cut");
        // The heartbeats noticed the silence: the clients gave up their connections during
        // the cut, before any packet could tell them.
        assert!(
            before.iter().all(|c| !during.contains(c)),
            "a connection from before the cut was still open at its end: {during:?}"
        );
        assert!(
            !after.is_empty() && before.iter().all(|c| !after.contains(c)),
            "the clients did not connect again after the cut: {before:?} / {after:?}"
        );
    }
    // The node first, then its namespace.
    tokio::task::spawn_blocking(move || {
        drop(node);
        drop(netns);
    })
    .await
    .expect("stop the node");
}
