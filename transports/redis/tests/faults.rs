//! Redis under faults (the conformance suite's fault mode, `kombu_core::conformance::faults`),
//! on servers of the test's own (`kombu-test-support`'s `RedisServer`: its own port, an
//! append-only file written with `appendfsync always`), never the shared one on 6379:
//!
//! - `server_killed_and_restarted_loses_no_stored_message`: while messages are published and
//!   consumed with acks, the server is killed with SIGKILL and started again on the same port
//!   with its append-only file; every message whose publish returned (stored, fsynced) must
//!   arrive, and the consumer and the publisher's connection must resume by themselves;
//! - `link_cut_and_restored_loses_no_stored_message`: the server runs inside a network
//!   namespace of the test's own (`Netns`), the clients on the host; the link is cut both ways
//!   without a reset for longer than the socket timeout (`socket_timeout=2`), then restored.
//!
//! The publisher retries a failed batch itself (the fault mode does not rely on any built-in
//! retry). A batch published again may arrive twice, and so may a delivery taken before the
//! fault whose ack was lost. Deliveries taken before the fault and not acked come back by the
//! consumer's own restore on reconnect or, at the latest, after the visibility timeout (10 s
//! here). 2,000 messages in CI, 10,000 with `KOMBU_SOAK=1` (`scripts/soak faults`). Needs
//! root (`ip netns`) and `nft` for the partition, as `scripts/test` installs them. Every wait
//! is bounded; the numbers are printed, not asserted.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kombu_test_support::faults::{self, FaultPlan, Netns, RedisServer};

/// The restart test's server port.
const RESTART_PORT: u16 = 16380;
/// The partition test's server port (inside its namespace).
const PARTITION_PORT: u16 = 16381;
/// How long the killed server stays down.
const DOWN: Duration = Duration::from_millis(500);
/// How long the link stays cut: past the socket timeout.
const CUT: Duration = Duration::from_secs(5);
/// The URL options of both tests.
const OPTIONS: &str = "?visibility_timeout=10&socket_timeout=2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_and_restarted_loses_no_stored_message() {
    if !faults::can_run("restart", "redis", false, &["redis-server"]) {
        return;
    }
    kombu_redis::register();
    let server = tokio::task::spawn_blocking(|| RedisServer::start(RESTART_PORT))
        .await
        .expect("start redis-server");
    let url = format!("{}{OPTIONS}", server.url());
    let server = Arc::new(Mutex::new(server));
    let plan = FaultPlan::from_env();
    for round in 1..=faults::rounds() {
        let server = server.clone();
        let name = format!("redis SIGKILL+restart #{round}");
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
        .expect("stop redis-server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_cut_and_restored_loses_no_stored_message() {
    if !faults::can_run(
        "partition",
        "redis",
        true,
        &["redis-server", "ip", "ss", "nft"],
    ) {
        return;
    }
    kombu_redis::register();
    let (netns, server) = tokio::task::spawn_blocking(|| {
        let netns = Netns::create();
        let server = RedisServer::start_in(&netns, PARTITION_PORT);
        (netns, server)
    })
    .await
    .expect("start redis-server in its namespace");
    let url = format!("{}{OPTIONS}", server.url());
    let netns = Arc::new(netns);
    let plan = FaultPlan::from_env();
    for round in 1..=faults::rounds() {
        let name = format!("redis partition #{round}");
        let before = Arc::new(Mutex::new(Vec::new()));
        let (report, after) = {
            let netns = netns.clone();
            let at_end = netns.clone();
            let before = before.clone();
            faults::run_then(
                &name,
                &url,
                &plan,
                move || {
                    *before.lock().expect("before") = netns.connections_to(PARTITION_PORT);
                    netns.cut();
                    std::thread::sleep(CUT);
                    netns.restore();
                    Instant::now()
                },
                move || at_end.connections_to(PARTITION_PORT),
            )
            .await
        };
        eprintln!("{report}");
        assert_eq!(report.lost, 0);
        let before = before.lock().expect("before").clone();
        eprintln!("{name}: connections before the cut {before:?}, after {after:?}");
        assert!(!before.is_empty(), "the clients were connected at the cut");
    }
    tokio::task::spawn_blocking(move || {
        drop(server);
        drop(netns);
    })
    .await
    .expect("stop redis-server");
}
