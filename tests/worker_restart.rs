//! The worker across a broker restart: a Redis server of the test's own (`RedisServer`: its own
//! port, an append-only file fsynced at every write) is killed with SIGKILL while a worker
//! handles its queue, and started again on the same port. The worker must go on by itself:
//! every message published (before, and after the restart) is handled at least once, and
//! `Worker::run` is still running, then stops cleanly. Deliveries taken before the kill and not
//! acked come back by the consumer's restore on reconnect, or after the visibility timeout
//! (5 s here); a delivery whose ack was lost is handled twice (at least once, not exactly).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kombu::worker::{JobContext, Worker};
use kombu::{Connection, Queue};
use kombu_test_support::faults::{self, RedisServer};
use kombu_test_support::until;

/// This test's server port (16380-16402 are other fault tests').
const PORT: u16 = 16410;
/// Messages before the kill, and after the restart.
const BEFORE: u32 = 400;
const AFTER: u32 = 200;
/// Every wait gives up after this long.
const PATIENCE: Duration = Duration::from_secs(90);

/// Publishes `ids`, each batch again until the server takes it (it may be down).
async fn publish(conn: &Connection, ids: std::ops::Range<u32>) {
    let producer = conn.producer().routing_key("jobs");
    let ids: Vec<u32> = ids.collect();
    for chunk in ids.chunks(50) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while let Err(error) = producer.publish_batch(chunk).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "publishing failed for too long: {error:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_goes_on_after_its_redis_server_restarts() {
    if !faults::can_run("worker-restart", "redis", false, &["redis-server"]) {
        return;
    }
    let mut server = tokio::task::spawn_blocking(|| RedisServer::start(PORT))
        .await
        .expect("start redis-server");
    let url = format!("{}?visibility_timeout=5&socket_timeout=2", server.url());
    let conn = Connection::open(&url).await.expect("open");
    conn.declare_queue(&Queue::new("jobs"))
        .await
        .expect("declare");

    let seen = Arc::new(Mutex::new(HashSet::new()));
    let seen_in = seen.clone();
    let worker = Worker::builder(&conn)
        .concurrency(8)
        .handle("jobs", move |id: u32, _: JobContext| {
            let seen = seen_in.clone();
            async move {
                // Slow enough that the kill finds handlers in flight and messages queued.
                tokio::time::sleep(Duration::from_millis(10)).await;
                seen.lock().expect("not poisoned").insert(id);
                Ok(())
            }
        })
        .build()
        .expect("worker");
    let handle = worker.handle();
    let running = tokio::spawn(worker.run());

    publish(&conn, 0..BEFORE).await;
    until("a quarter handled before the kill", PATIENCE, || {
        seen.lock().expect("not poisoned").len() >= (BEFORE / 4) as usize
    })
    .await;
    let seen_in = seen.clone();
    let (server, at_kill) = tokio::task::spawn_blocking(move || {
        server.sigkill();
        let at_kill = seen_in.lock().expect("not poisoned").len();
        std::thread::sleep(Duration::from_millis(500));
        server.start_again();
        (server, at_kill)
    })
    .await
    .expect("restart redis-server");
    assert!(
        at_kill < BEFORE as usize,
        "the kill came after every message was handled ({at_kill})"
    );
    publish(&conn, BEFORE..BEFORE + AFTER).await;

    until("every message handled", PATIENCE, || {
        seen.lock().expect("not poisoned").len() == (BEFORE + AFTER) as usize
    })
    .await;
    assert!(
        !running.is_finished(),
        "the worker ended by itself across the restart: {:?}",
        handle.stats()
    );
    let stats = handle.stats();
    eprintln!("worker across a Redis restart: {at_kill} handled at the kill; {stats:?}");
    assert!(stats.handled >= u64::from(BEFORE + AFTER), "{stats:?}");
    handle.stop();
    tokio::time::timeout(PATIENCE, running)
        .await
        .expect("the worker stops in time")
        .expect("joined")
        .expect("the worker ends without an error");
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .expect("stop redis-server");
}
