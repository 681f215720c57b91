//! Failover URLs on AMQP against the shared RabbitMQ: a dead first alternative is passed over
//! and the URL in use is the live one; `failover_strategy=shuffle` (an option the transport
//! accepts on its URLs) opens either of two live alternatives.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use kombu_core::{Connection, FailoverStrategy, Queue, RetryPolicy};

/// The shared broker's URL with `?connect_timeout=2` (and the separator for more options), or
/// `None` when it is down and not required.
fn live_url() -> Option<String> {
    kombu_amqp::register();
    if !common::broker_up("failover") {
        return None;
    }
    let base = common::base_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}connect_timeout=2"))
}

#[tokio::test]
async fn a_dead_first_alternative_is_passed_over_and_the_url_in_use_says_so() {
    let Some(live) = tokio::task::spawn_blocking(live_url).await.ok().flatten() else {
        return;
    };
    let list = format!("amqp://guest:guest@127.0.0.1:1/?connect_timeout=1;{live}");
    let conn = Connection::open(&list).await.expect("the second URL");
    let in_use = conn.url();
    assert_ne!(in_use.port(), Some(1), "{in_use}");
    assert_eq!(in_use.expose(), conn.alternates()[1].expose());
    let q = Queue::new(format!("failover-{}", uuid::Uuid::new_v4().simple()));
    conn.declare_queue(&q).await.expect("declare");
    conn.producer()
        .routing_key(q.name.clone())
        .publish("via the second URL")
        .await
        .expect("publish");
    assert_eq!(conn.queue_size(&q.name).await.expect("size"), 1);
    conn.delete_queue(&q.name).await.expect("delete");
    conn.close().await.expect("close");

    // Under a retry policy: found in the first round, no retry.
    let conn = Connection::builder(&list)
        .retry_policy(RetryPolicy::default().max_retries(Some(1)))
        .on_retry(|event| panic!("no retry expected: {}", event.error))
        .open()
        .await
        .expect("the second URL");
    assert_ne!(conn.url().port(), Some(1));
    conn.close().await.expect("close");

    // Every alternative dead: retried by the policy, then a recoverable error.
    let err = Connection::builder(
        "amqp://127.0.0.1:1/?connect_timeout=1;amqp://127.0.0.1:2/?connect_timeout=1",
    )
    .retry_policy(
        RetryPolicy::default()
            .max_retries(Some(1))
            .interval_start(Duration::from_millis(10)),
    )
    .open()
    .await
    .expect_err("nothing listens");
    assert!(err.is_recoverable(), "{err}");
}

#[tokio::test]
async fn shuffle_opens_either_live_alternative() {
    let Some(live) = tokio::task::spawn_blocking(live_url).await.ok().flatten() else {
        return;
    };
    // The same broker under two names: which one was opened shows in the URL in use.
    let other = live.replacen("127.0.0.1", "localhost", 1);
    assert_ne!(other, live, "KOMBU_TEST_AMQP_URL names 127.0.0.1");
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
