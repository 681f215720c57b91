//! Retry policies applied: `Connection::ensure`, connecting and declaring under a policy,
//! publishes retried by default except when the broker may already have the message.

mod flaky;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use flaky::Failure;
use kombu_core::{Connection, Error, ErrorKind, Queue, RetryPolicy};

/// Fast waits, so that the tests do not sleep long (real time: the memory transport's tasks
/// run on it).
fn quick() -> RetryPolicy {
    RetryPolicy::default()
        .interval_start(Duration::from_millis(1))
        .interval_step(Duration::from_millis(1))
        .interval_max(Duration::from_millis(5))
        .jitter(0.0)
}

#[tokio::test]
async fn ensure_retries_recoverable_errors_and_reports_each_retry() {
    flaky::install();
    let conn = Connection::open("memory://ensure-recoverable")
        .await
        .unwrap();
    let mut tries = 0;
    let mut seen = Vec::new();
    let value = conn
        .ensure_with(
            &quick().max_retries(Some(5)),
            |event| seen.push((event.attempt, event.error.kind())),
            || {
                tries += 1;
                let n = tries;
                async move {
                    match n {
                        1 => Err(Error::new(ErrorKind::Connection, "lost")),
                        2 => Err(Error::new(ErrorKind::Timeout, "slow")),
                        _ => Ok(n * 10),
                    }
                }
            },
        )
        .await
        .unwrap();
    assert_eq!(value, 30);
    assert_eq!(
        seen,
        [(1, ErrorKind::Connection), (2, ErrorKind::Timeout)],
        "one callback per retry, none for the success"
    );
}

#[tokio::test]
async fn ensure_does_not_retry_a_fatal_error_or_one_of_unknown_outcome() {
    flaky::install();
    let conn = Connection::open("memory://ensure-fatal").await.unwrap();
    let fatal = || Error::new(ErrorKind::AccessRefused, "denied");
    let config = || Error::config("bad option");
    let unknown = || Error::new(ErrorKind::Connection, "reply lost").with_outcome_unknown();
    let cases: [(&dyn Fn() -> Error, bool, u32); 4] = [
        (&fatal, false, 1),
        (&config, true, 1),
        (&unknown, false, 1),
        // Opted in: retried until the limit (1 try + 3 retries).
        (&unknown, true, 4),
    ];
    for (make, retry_unknown, expected_tries) in cases {
        let policy = quick().max_retries(Some(3)).retry_unknown(retry_unknown);
        let mut tries = 0;
        let mut callbacks = 0;
        let result: kombu_core::Result<()> = conn
            .ensure_with(
                &policy,
                |_| callbacks += 1,
                || {
                    tries += 1;
                    let error = make();
                    async move { Err(error) }
                },
            )
            .await;
        let err = result.expect_err("never succeeds");
        let expected = make();
        assert_eq!(err.kind(), expected.kind());
        assert_eq!(
            tries, expected_tries,
            "{expected} (retry_unknown={retry_unknown})"
        );
        assert_eq!(callbacks, expected_tries - 1);
    }
}

#[tokio::test(start_paused = true)]
async fn ensure_gives_up_at_the_deadline() {
    // The clock is paused: the memory transport is not used past opening.
    flaky::install();
    let conn = Connection::open("memory://ensure-deadline").await.unwrap();
    let policy = RetryPolicy::default()
        .interval_start(Duration::from_secs(1))
        .interval_step(Duration::ZERO)
        .jitter(0.0)
        .deadline(Some(Duration::from_millis(2500)));
    let started = tokio::time::Instant::now();
    let mut tries = 0;
    let result: kombu_core::Result<()> = conn
        .ensure(&policy, || {
            tries += 1;
            async { Err(Error::new(ErrorKind::Connection, "down")) }
        })
        .await;
    assert_eq!(result.expect_err("gives up").kind(), ErrorKind::Connection);
    assert_eq!(
        tries, 3,
        "tries at 0, 1 and 2 s; a third retry would start after 2.5 s"
    );
    assert!(started.elapsed() < Duration::from_millis(2500));
}

#[tokio::test]
async fn a_publish_refused_before_the_broker_had_it_is_retried_by_default() {
    flaky::install();
    let faults = flaky::faults("publish-refused");
    let conn = Connection::open("flaky://publish-refused").await.unwrap();
    conn.declare_queue(&Queue::new("jobs")).await.unwrap();
    faults.fail("publish", 3, Failure::Refused);
    let retries = Arc::new(AtomicU32::new(0));
    let seen = retries.clone();
    let producer = conn
        .producer()
        .routing_key("jobs")
        .retry_policy(quick())
        .on_retry(move |_| {
            seen.fetch_add(1, Ordering::SeqCst);
        });
    producer.publish("hello").await.unwrap();
    assert_eq!(faults.tries("publish"), 4);
    assert_eq!(retries.load(Ordering::SeqCst), 3);
    assert_eq!(conn.queue_size("jobs").await.unwrap(), 1, "stored once");

    // The default policy, untouched, retries too.
    assert!(conn.producer().policy().is_some());
    faults.fail("publish", 1, Failure::Refused);
    conn.producer()
        .routing_key("jobs")
        .publish("again")
        .await
        .unwrap();
    assert_eq!(conn.queue_size("jobs").await.unwrap(), 2);

    // Batches as well.
    faults.fail("publish", 2, Failure::Refused);
    producer.publish_batch(["a", "b"]).await.unwrap();
    assert_eq!(conn.queue_size("jobs").await.unwrap(), 4);
}

#[tokio::test]
async fn a_publish_of_unknown_outcome_is_not_retried_unless_asked() {
    flaky::install();
    let faults = flaky::faults("publish-unknown");
    let conn = Connection::open("flaky://publish-unknown").await.unwrap();
    conn.declare_queue(&Queue::new("jobs")).await.unwrap();
    let producer = conn.producer().routing_key("jobs").retry_policy(quick());

    faults.fail("publish", 1, Failure::Unknown);
    let err = producer.publish("once").await.expect_err("not retried");
    assert!(err.outcome_unknown() && err.is_recoverable(), "{err}");
    assert_eq!(faults.tries("publish"), 1);

    let at_least_once = producer.clone().retry_unknown(true);
    faults.fail("publish", 2, Failure::Unknown);
    at_least_once.publish("twice").await.unwrap();
    assert_eq!(faults.tries("publish"), 4);
    assert_eq!(conn.queue_size("jobs").await.unwrap(), 1);

    // A refusal that retrying cannot fix, and retries turned off.
    faults.fail("publish", 1, Failure::Fatal);
    let err = at_least_once.publish("no").await.expect_err("fatal");
    assert_eq!(err.kind(), ErrorKind::AccessRefused);
    assert_eq!(faults.tries("publish"), 5);
    faults.fail("publish", 1, Failure::Refused);
    let err = producer
        .clone()
        .retry(false)
        .publish("off")
        .await
        .expect_err("off");
    assert_eq!(err.kind(), ErrorKind::Connection);
    assert_eq!(faults.tries("publish"), 6);
    assert!(producer.clone().retry(false).policy().is_none());
}

#[tokio::test]
async fn a_producer_declares_under_its_policy_too() {
    flaky::install();
    let faults = flaky::faults("publish-declare");
    let conn = Connection::open("flaky://publish-declare").await.unwrap();
    faults.fail("declare", 2, Failure::Refused);
    conn.producer()
        .routing_key("declared")
        .declare(Queue::new("declared"))
        .retry_policy(quick())
        .publish("x")
        .await
        .unwrap();
    assert_eq!(faults.tries("declare"), 3);
    assert_eq!(conn.queue_size("declared").await.unwrap(), 1);
}

#[tokio::test]
async fn a_connection_with_a_policy_connects_and_declares_under_it() {
    flaky::install();
    let faults = flaky::faults("connect-policy");
    faults.fail("connect", 2, Failure::Refused);
    let retries = Arc::new(AtomicU32::new(0));
    let seen = retries.clone();
    let conn = Connection::builder("flaky://connect-policy")
        .retry_policy(quick().max_retries(Some(5)))
        .on_retry(move |_| {
            seen.fetch_add(1, Ordering::SeqCst);
        })
        .open()
        .await
        .unwrap();
    assert_eq!(faults.tries("connect"), 3);
    assert_eq!(retries.load(Ordering::SeqCst), 2);

    faults.fail("declare", 2, Failure::Refused);
    conn.declare_queue(&Queue::new("q")).await.unwrap();
    assert_eq!(faults.tries("declare"), 3);
    assert_eq!(
        retries.load(Ordering::SeqCst),
        4,
        "the connection's callback sees declares"
    );
    // Producers start with the connection's policy.
    assert_eq!(conn.producer().policy(), conn.retry_policy());

    // Without a policy, open tries once and declares once, as before.
    faults.fail("connect", 1, Failure::Refused);
    let err = Connection::open("flaky://connect-policy")
        .await
        .expect_err("once");
    assert_eq!(err.kind(), ErrorKind::Connection);
    let plain = Connection::open("flaky://connect-policy").await.unwrap();
    faults.fail("declare", 1, Failure::Refused);
    assert!(plain.declare_queue(&Queue::new("q2")).await.is_err());

    // A refused login is not retried.
    faults.fail("connect", 1, Failure::Fatal);
    let tries = faults.tries("connect");
    let err = Connection::builder("flaky://connect-policy")
        .retry_policy(quick())
        .open()
        .await
        .expect_err("fatal");
    assert_eq!(err.kind(), ErrorKind::AccessRefused);
    assert_eq!(faults.tries("connect"), tries + 1);
}

#[tokio::test]
async fn failover_strategy_comes_from_the_url_or_the_builder() {
    flaky::install();
    let conn = Connection::open("memory://fs-a?failover_strategy=shuffle;memory://fs-b")
        .await
        .unwrap();
    assert_eq!(
        conn.failover_strategy(),
        kombu_core::FailoverStrategy::Shuffle
    );
    let conn = Connection::builder("memory://fs-a;memory://fs-b")
        .failover_strategy(kombu_core::FailoverStrategy::Shuffle)
        .open()
        .await
        .unwrap();
    assert_eq!(
        conn.failover_strategy(),
        kombu_core::FailoverStrategy::Shuffle
    );
    let err = Connection::open("memory://fs-a?failover_strategy=sideways")
        .await
        .expect_err("unknown strategy");
    assert_eq!(err.kind(), ErrorKind::InvalidUrl);

    // Shuffle opens either alternative; over many opens, both.
    let mut hosts = std::collections::HashSet::new();
    for _ in 0..64 {
        let conn = Connection::open("memory://fs-a?failover_strategy=shuffle;memory://fs-b")
            .await
            .unwrap();
        hosts.insert(conn.url().host().unwrap_or_default().to_owned());
    }
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    // Round-robin always opens the first that works.
    for _ in 0..8 {
        let conn = Connection::open("memory://fs-a;memory://fs-b")
            .await
            .unwrap();
        assert_eq!(conn.url().host(), Some("fs-a"));
    }
}
