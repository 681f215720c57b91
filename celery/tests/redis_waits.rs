//! The Redis result backend's waits share one PUB/SUB connection: 50 clients waiting at once
//! are 50 subscriptions on one connection, each woken by its own result, and every channel is
//! unsubscribed once its last waiter is done.

use std::sync::Arc;
use std::time::Duration;

use kombu_celery::ResultMeta;
use kombu_celery::State;
use kombu_celery::backend::{RedisResultBackend, ResultBackend};
use kombu_test_support::brokers;
use serde_json::json;

const WAITERS: usize = 50;

/// `CLIENT LIST TYPE pubsub`: the number of channels of each subscribed connection.
async fn subscribed_counts(conn: &mut redis::aio::MultiplexedConnection) -> Vec<usize> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(conn)
        .await
        .expect("CLIENT LIST");
    list.lines()
        .filter_map(|line| {
            line.split(' ')
                .find_map(|kv| kv.strip_prefix("sub="))
                .and_then(|n| n.parse().ok())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_wait_shares_one_subscription_connection() {
    let Some(broker) = brokers::broker("redis", "celery-redis-waits") else {
        return;
    };
    let backend = Arc::new(
        RedisResultBackend::connect(&broker.url)
            .await
            .expect("the backend"),
    );
    let ids: Vec<String> = (0..WAITERS)
        .map(|i| format!("wait-{i}-{}", uuid::Uuid::new_v4()))
        .collect();
    let waits: Vec<_> = ids
        .iter()
        .map(|id| {
            let backend = backend.clone();
            let id = id.clone();
            tokio::spawn(async move { backend.wait(&id, Duration::from_secs(30)).await })
        })
        .collect();

    let base = broker.url.split('?').next().expect("a URL").to_owned();
    let client = redis::Client::open(base).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    // All 50 on one connection (before: a connection each, one channel apiece).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !subscribed_counts(&mut conn).await.contains(&WAITERS) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no connection with {WAITERS} subscriptions: {:?}",
            subscribed_counts(&mut conn).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    for (i, id) in ids.iter().enumerate() {
        backend
            .store(&ResultMeta::success(id.as_str(), json!(i)))
            .await
            .expect("store");
    }
    for (i, wait) in waits.into_iter().enumerate() {
        let meta = wait.await.expect("the wait's task").expect("the wait");
        assert_eq!(meta.state, State::Success);
        assert_eq!(meta.result, json!(i), "each waiter woken by its own result");
    }
    // The last waiter of each channel unsubscribed it.
    let key = backend.key(&ids[0]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let counts: Vec<redis::Value> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("PUBSUB NUMSUB");
        if matches!(counts.get(1), Some(redis::Value::Int(0))) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} still subscribed: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_survive_their_connection_killed() {
    const SEVEN: usize = 7;
    let Some(broker) = brokers::broker("redis", "celery-redis-waits-kill") else {
        return;
    };
    let backend = Arc::new(
        RedisResultBackend::connect(&broker.url)
            .await
            .expect("the backend"),
    );
    let ids: Vec<String> = (0..SEVEN)
        .map(|i| format!("kill-{i}-{}", uuid::Uuid::new_v4()))
        .collect();
    let waits: Vec<_> = ids
        .iter()
        .map(|id| {
            let backend = backend.clone();
            let id = id.clone();
            tokio::spawn(async move { backend.wait(&id, Duration::from_secs(30)).await })
        })
        .collect();
    let base = broker.url.split('?').next().expect("a URL").to_owned();
    let client = redis::Client::open(base).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    // Our connection: the one with seven channels (an id nobody else's list would match).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let id = loop {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut conn)
            .await
            .expect("CLIENT LIST");
        let ours = list
            .lines()
            .find(|l| l.split(' ').any(|kv| kv == format!("sub={SEVEN}")));
        if let Some(line) = ours {
            break line
                .split(' ')
                .find_map(|kv| kv.strip_prefix("id="))
                .expect("an id")
                .to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no connection with {SEVEN} channels"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&id)
        .query_async(&mut conn)
        .await
        .expect("CLIENT KILL");
    // Stored after the kill: the waiters subscribe again on a new connection, or read it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (i, id) in ids.iter().enumerate() {
        backend
            .store(&ResultMeta::success(id.as_str(), json!(i)))
            .await
            .expect("store");
    }
    for (i, wait) in waits.into_iter().enumerate() {
        let meta = wait.await.expect("the wait's task").expect("the wait");
        assert_eq!((meta.state, meta.result), (State::Success, json!(i)));
    }
}
