//! Failover URLs on Redis against the shared server: a dead first alternative is passed over,
//! the URL in use is the live one, and `failover_strategy=shuffle` opens either of two live
//! alternatives.

use std::collections::HashSet;

use kombu_core::{Connection, FailoverStrategy, Queue, RetryPolicy};

/// The shared server's URL with a key prefix of this run's own, or `None` (the test passes
/// without it) when it is down and not required.
async fn live_url() -> Option<String> {
    kombu_redis::register();
    let url = std::env::var("KOMBU_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned());
    let up = match redis::Client::open(url.as_str()) {
        Ok(client) => client.get_multiplexed_async_connection().await.is_ok(),
        Err(_) => false,
    };
    if !up {
        let required = std::env::var("KOMBU_TEST_REQUIRE")
            .unwrap_or_default()
            .split(',')
            .any(|r| matches!(r.trim(), "all" | "redis"));
        assert!(
            !required,
            "Redis at {url} is required (KOMBU_TEST_REQUIRE) but down"
        );
        eprintln!("skipped: no Redis at {url}");
        return None;
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    Some(format!(
        "{url}{sep}global_keyprefix=failover-{}:",
        uuid::Uuid::new_v4().simple()
    ))
}

#[tokio::test]
async fn a_dead_first_alternative_is_passed_over() {
    let Some(live) = live_url().await else { return };
    let conn = Connection::open(&format!("redis://127.0.0.1:1/0;{live}"))
        .await
        .expect("the second URL");
    assert_ne!(conn.url().port(), Some(1), "{}", conn.url());
    assert_eq!(conn.alternates().len(), 2);
    conn.declare_queue(&Queue::new("fo"))
        .await
        .expect("declare");
    conn.producer()
        .routing_key("fo")
        .publish("via the second URL")
        .await
        .expect("publish");
    assert_eq!(conn.queue_size("fo").await.expect("size"), 1);
    conn.delete_queue("fo").await.expect("delete");

    // Under a retry policy, the same: one round finds the live one, no retry needed.
    let conn = Connection::builder(&format!("redis://127.0.0.1:1/0;{live}"))
        .retry_policy(RetryPolicy::default().max_retries(Some(2)))
        .on_retry(|event| panic!("no retry expected: {}", event.error))
        .open()
        .await
        .expect("the second URL");
    assert_ne!(conn.url().port(), Some(1));

    // Every alternative dead: the policy's retries, then a recoverable error.
    let err = Connection::builder("redis://127.0.0.1:1/0;redis://127.0.0.1:2/0")
        .retry_policy(
            RetryPolicy::default()
                .max_retries(Some(2))
                .interval_start(std::time::Duration::from_millis(10)),
        )
        .open()
        .await
        .expect_err("nothing listens");
    assert!(err.is_recoverable(), "{err}");
}

#[tokio::test]
async fn shuffle_opens_either_live_alternative() {
    let Some(live) = live_url().await else { return };
    // The same server under two names: which one was opened shows in the URL in use.
    let other = live.replacen("127.0.0.1", "localhost", 1);
    assert_ne!(other, live, "KOMBU_TEST_REDIS_URL names 127.0.0.1");
    let list = format!("{live}&failover_strategy=shuffle;{other}");
    let mut hosts = HashSet::new();
    for _ in 0..32 {
        let conn = Connection::open(&list).await.expect("open");
        assert_eq!(conn.failover_strategy(), FailoverStrategy::Shuffle);
        hosts.insert(conn.url().host().unwrap_or_default().to_owned());
        conn.close().await.expect("close");
        if hosts.len() == 2 {
            break;
        }
    }
    // Each open picks the first with probability 1/2: missing one in 32 opens is 2^-31.
    assert_eq!(hosts.len(), 2, "{hosts:?}");
}
