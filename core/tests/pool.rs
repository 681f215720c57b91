//! Connection and producer pools: bounded, timed acquires, reuse, many tasks sharing a few
//! connections, replacement of connections lost for good.

mod flaky;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kombu_core::{
    Connection, ConnectionPool, ErrorKind, LinkState, ProducerPool, Queue, RetryPolicy,
};

#[tokio::test]
async fn the_pool_is_bounded_and_an_acquire_times_out_when_it_is_exhausted() {
    flaky::install();
    let pool =
        ConnectionPool::new("memory://pool-bounded", 2).acquire_timeout(Duration::from_millis(50));
    assert_eq!(
        (pool.max(), pool.size()),
        (2, 0),
        "nothing opened before use"
    );
    let a = pool.acquire().await.unwrap();
    let b = pool.acquire().await.unwrap();
    assert_eq!((pool.in_use(), pool.idle()), (2, 0));
    let err = pool.acquire().await.expect_err("exhausted");
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(err.is_recoverable());
    drop(a);
    assert_eq!((pool.in_use(), pool.idle()), (1, 1));
    let c = pool.acquire().await.unwrap();
    assert_eq!(pool.size(), 2);
    drop((b, c));
    assert_eq!((pool.in_use(), pool.idle()), (0, 2));
}

#[tokio::test]
async fn a_waiting_acquire_gets_the_connection_given_back() {
    flaky::install();
    let faults = flaky::faults("pool-wait");
    let pool = ConnectionPool::new("flaky://pool-wait", 1).acquire_timeout(Duration::from_secs(5));
    let held = pool.acquire().await.unwrap();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire().await.map(|conn| conn.url().to_string()) })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiter.is_finished());
    drop(held);
    assert_eq!(waiter.await.unwrap().unwrap(), "flaky://pool-wait");
    assert_eq!(
        faults.connects.load(Ordering::SeqCst),
        1,
        "reused, not reopened"
    );
}

#[tokio::test]
async fn fifty_tasks_share_four_connections() {
    flaky::install();
    let faults = flaky::faults("pool-fifty");
    let pool =
        ConnectionPool::new("flaky://pool-fifty", 4).acquire_timeout(Duration::from_secs(30));
    let producers = ProducerPool::new(pool.clone())
        .configure(|p| p.routing_key("jobs").declare(Queue::new("jobs")));
    let busiest = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..50)
        .map(|n| {
            let producers = producers.clone();
            let pool = pool.clone();
            let busiest = busiest.clone();
            tokio::spawn(async move {
                let producer = producers.acquire().await?;
                busiest.fetch_max(pool.in_use(), Ordering::SeqCst);
                producer.publish(&n).await?;
                tokio::task::yield_now().await;
                producer.publish(&(n + 1000)).await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let busiest = busiest.load(Ordering::SeqCst);
    assert!((1..=4).contains(&busiest), "{busiest} in use at once");
    let opened = faults.connects.load(Ordering::SeqCst);
    assert!((1..=4).contains(&opened), "{opened} connections opened");
    assert!(pool.size() <= 4);
    let conn = pool.acquire().await.unwrap();
    assert_eq!(conn.queue_size("jobs").await.unwrap(), 100);
    println!("50 tasks: {opened} connections opened, at most {busiest} in use at once");
}

#[tokio::test]
async fn a_connection_lost_for_good_is_replaced() {
    flaky::install();
    let faults = flaky::faults("pool-failed");
    let pool = ConnectionPool::new("flaky://pool-failed", 2);
    drop(pool.acquire().await.unwrap());
    assert_eq!(
        (pool.idle(), faults.connects.load(Ordering::SeqCst)),
        (1, 1)
    );

    // Failed while in use: not given back.
    let held = pool.acquire().await.unwrap();
    assert_eq!(faults.connects.load(Ordering::SeqCst), 1, "healthy: reused");
    flaky::set_link(
        "pool-failed",
        LinkState::Failed {
            error: "gone".into(),
        },
    );
    drop(held);
    assert_eq!(pool.idle(), 0, "a failed connection does not go back");
    flaky::set_link("pool-failed", LinkState::Connected);
    let fresh = pool.acquire().await.unwrap();
    assert_eq!(
        faults.connects.load(Ordering::SeqCst),
        2,
        "a new one in its place"
    );

    // Discarded by its user: replaced as well.
    fresh.discard();
    assert_eq!(pool.size(), 0);
    drop(pool.acquire().await.unwrap());
    assert_eq!(faults.connects.load(Ordering::SeqCst), 3);

    // Idle connections that failed are skipped at acquire.
    let (a, b) = (pool.acquire().await.unwrap(), pool.acquire().await.unwrap());
    drop((a, b));
    assert_eq!(pool.idle(), 2);
    flaky::set_link("pool-failed", LinkState::Closed);
    let before = faults.connects.load(Ordering::SeqCst);
    flaky::set_link("pool-failed", LinkState::Closed);
    // Both idle ones read Closed now; the acquire opens a new one (which reads Closed too,
    // but is given out: a new connection is used as opened).
    let c = pool.acquire().await.unwrap();
    assert_eq!(faults.connects.load(Ordering::SeqCst), before + 1);
    assert_eq!(pool.idle(), 0);
    drop(c);
    flaky::set_link("pool-failed", LinkState::Connected);
}

#[tokio::test]
async fn pools_copy_a_connections_settings_and_close() {
    flaky::install();
    let conn = Connection::builder("memory://pool-copy;memory://pool-copy-spare")
        .retry_policy(RetryPolicy::default().max_retries(Some(2)))
        .open()
        .await
        .unwrap();
    let pool = ConnectionPool::new(&conn, 3);
    let pooled = pool.acquire().await.unwrap();
    assert_eq!(pooled.url().host(), Some("pool-copy"));
    assert_eq!(pooled.alternates().len(), 2);
    assert_eq!(pooled.retry_policy(), conn.retry_policy());
    drop(pooled);
    pool.close().await.unwrap();
    assert_eq!(
        pool.acquire().await.expect_err("closed").kind(),
        ErrorKind::Closed
    );
}
