//! The Redis result backend's waits share one PUB/SUB connection: 50 clients waiting at once
//! are 50 subscriptions on one connection, each woken by its own result, and every channel is
//! unsubscribed once its last waiter is done. Every connection of the backend killed
//! mid-wait: the waits subscribe again on a new one, and storing reconnects.
//!
//! Each test connects as a Redis user of its own (`ACL SETUSER`), so it finds and kills its
//! own connections only, beside the other tests on the same server.

use std::sync::Arc;
use std::time::Duration;

use kombu_celery::backend::{RedisResultBackend, ResultBackend};
use kombu_celery::{ResultMeta, State};
use kombu_test_support::brokers;
use serde_json::json;

/// A Redis user for one test (removed when dropped), and the backend's URL as that user.
struct User {
    name: String,
    admin: redis::aio::MultiplexedConnection,
}

impl User {
    async fn new(url: &str) -> (User, String) {
        let name = format!("celery-waits-{}", uuid::Uuid::new_v4().simple());
        let base = url.split('?').next().expect("a URL").to_owned();
        let client = redis::Client::open(base).expect("client");
        let mut admin = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&name)
            .arg("on")
            .arg(">secret")
            .arg("~*")
            .arg("&*")
            .arg("+@all")
            .query_async(&mut admin)
            .await
            .expect("ACL SETUSER");
        let as_user = url.replacen("redis://", &format!("redis://{name}:secret@"), 1);
        (User { name, admin }, as_user)
    }

    /// `sub=` of each of this user's PUB/SUB connections.
    async fn subscriptions(&mut self) -> Vec<usize> {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut self.admin)
            .await
            .expect("CLIENT LIST");
        let user = format!("user={}", self.name);
        list.lines()
            .filter(|line| line.split(' ').any(|kv| kv == user))
            .filter_map(|line| {
                line.split(' ')
                    .find_map(|kv| kv.strip_prefix("sub="))
                    .and_then(|n| n.parse().ok())
            })
            .collect()
    }

    /// Closes every connection of this user.
    async fn kill_connections(&mut self) -> i64 {
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("USER")
            .arg(&self.name)
            .query_async(&mut self.admin)
            .await
            .expect("CLIENT KILL")
    }

    async fn drop_user(mut self) {
        let _: Result<i64, _> = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(&self.name)
            .query_async(&mut self.admin)
            .await;
    }
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `waiters` waits, by a backend connected as a user of this test's own, all subscribed
/// (on one connection); `None` when Redis is not there.
async fn waiting(
    test: &'static str,
    waiters: usize,
) -> Option<(User, Arc<RedisResultBackend>, Vec<String>, Vec<Wait>)> {
    let broker = brokers::broker("redis", test)?;
    let (mut user, url) = User::new(&broker.url).await;
    let backend = Arc::new(
        RedisResultBackend::connect(&url)
            .await
            .expect("the backend"),
    );
    let ids: Vec<String> = (0..waiters)
        .map(|i| format!("{test}-{i}-{}", uuid::Uuid::new_v4()))
        .collect();
    let waits = ids
        .iter()
        .map(|id| {
            let backend = backend.clone();
            let id = id.clone();
            tokio::spawn(async move { backend.wait(&id, Duration::from_secs(30)).await })
        })
        .collect();
    // All on one connection (a connection each would be many with one channel apiece).
    until("one connection with every channel", async || {
        user.subscriptions().await == vec![waiters]
    })
    .await;
    Some((user, backend, ids, waits))
}

type Wait = tokio::task::JoinHandle<kombu_core::Result<ResultMeta>>;

/// Stores result `i` for the `i`th id; each wait ends with its own.
async fn store_and_check(backend: &RedisResultBackend, ids: &[String], waits: Vec<Wait>) {
    for (i, id) in ids.iter().enumerate() {
        backend
            .store(&ResultMeta::success(id.as_str(), json!(i)))
            .await
            .expect("store");
    }
    for (i, wait) in waits.into_iter().enumerate() {
        let meta = wait.await.expect("the wait's task").expect("the wait");
        assert_eq!(
            (meta.state, meta.result),
            (State::Success, json!(i)),
            "each by its own"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_wait_shares_one_subscription_connection() {
    let Some((mut user, backend, ids, waits)) = waiting("celery-redis-waits", 50).await else {
        return;
    };
    store_and_check(&backend, &ids, waits).await;
    // The last waiter of each channel unsubscribed it; the connection stays for the next.
    // (A connection without channels leaves PUB/SUB mode: listed with none, or not at all.)
    until("every channel unsubscribed", async || {
        user.subscriptions().await.iter().all(|&n| n == 0)
    })
    .await;
    assert_eq!(backend.subscription_connections_opened(), 1);
    user.drop_user().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_and_stores_outlive_their_connections_killed() {
    let Some((mut user, backend, ids, waits)) = waiting("celery-redis-waits-kill", 7).await else {
        return;
    };
    // The data connection and the subscription connection both.
    assert!(
        user.kill_connections().await >= 2,
        "both connections killed"
    );
    // Stored after the kill: the store reconnects, the waits subscribe again on a new
    // connection (or read the key when they do).
    store_and_check(&backend, &ids, waits).await;
    assert_eq!(
        backend.subscription_connections_opened(),
        2,
        "the waits opened a new subscription connection"
    );
    user.drop_user().await;
}
