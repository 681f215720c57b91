//! Whether a queue exists, on a dedicated Redis with many unrelated keys (a Celery deployment
//! keeps its results in the same database): a queue only Python kombu or Celery bound is found
//! in the likely binding tables without a SCAN of the keyspace, a SCAN, when one is needed,
//! takes few round trips, and keys that are not kombu's binding sets are passed over. The
//! server's own command counters (`INFO commandstats`) say what was sent; the server is this
//! test's alone.

use std::collections::HashMap;

use kombu_core::{Connection, Exchange, ExchangeKind};

mod support;

/// A global key prefix with glob metacharacters, which SCAN patterns must escape.
const PREFIX: &str = "k13[1]*:";
const SEP: &str = "\x06\x16";

/// `INFO commandstats` as command → calls, without `info` itself.
fn command_calls(admin: &mut redis::Connection) -> HashMap<String, u64> {
    let text: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(admin)
        .expect("INFO commandstats");
    text.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            let calls: u64 = calls.parse().ok()?;
            (name != "info").then(|| (name.to_owned(), calls))
        })
        .collect()
}

/// What was sent between two readings of [`command_calls`].
fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> HashMap<String, u64> {
    after
        .iter()
        .map(|(name, calls)| (name.clone(), calls - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, calls)| *calls > 0)
        .collect()
}

fn member(routing_key: &str, queue: &str) -> String {
    format!("{routing_key}{SEP}{SEP}{queue}")
}

fn table(exchange: &str) -> String {
    format!("{PREFIX}_kombu.binding.{exchange}")
}

#[tokio::test]
async fn queues_bound_by_python_are_found_cheaply_among_many_keys() {
    let Some(server) = support::start(&[]) else {
        return;
    };
    kombu_redis::register();
    let port = server.port;
    let admin = redis::Client::open(format!("redis://127.0.0.1:{port}/0")).expect("client");
    let mut admin = admin.get_connection().expect("admin connection");

    // 20,000 unrelated keys, in and out of the prefix.
    for batch in 0..20 {
        let mut pipe = redis::pipe();
        for i in 0..1000 {
            let n = batch * 1000 + i;
            if n % 2 == 0 {
                pipe.set(format!("{PREFIX}celery-task-meta-{n}"), "{}")
                    .ignore();
            } else {
                pipe.set(format!("other-{n}"), "x").ignore();
            }
        }
        let () = pipe.query(&mut admin).expect("fill the database");
    }
    // What Python kombu and Celery write: a queue bound to the exchange named after it
    // (Celery's `celery`), a queue bound to an exchange nobody told kombu-rs about, and one
    // bound to an exchange kombu-rs declared.
    let () = redis::pipe()
        .sadd(table("celery"), member("celery", "celery"))
        .ignore()
        .sadd(table("tasks"), member("jobs", "jobs"))
        .ignore()
        .sadd(table("known"), member("k", "via-known"))
        .ignore()
        // A table with a member that is not UTF-8 beside a good one.
        .sadd(table("binary"), &[b"\xff\x06\x16\x06\x16\xfe".as_slice()])
        .ignore()
        .sadd(table("binary"), member("b", "bin-q"))
        .ignore()
        // Keys named like binding tables that are not sets, one of them where the probe
        // for a queue named `missing` looks first.
        .set(table("broken"), "not a set")
        .ignore()
        .set(table("missing"), "not a set either")
        .ignore()
        .query(&mut admin)
        .expect("write bindings");

    let url = format!(
        "redis://127.0.0.1:{port}/0?global_keyprefix={}",
        PREFIX
            .replace('[', "%5B")
            .replace(']', "%5D")
            .replace('*', "%2A")
    );
    let conn = Connection::open(&url).await.expect("connect");
    conn.declare_exchange(&Exchange::new("known", ExchangeKind::Direct))
        .await
        .expect("declare an exchange");

    // Celery's case: found in the table named after the queue, with a few commands and no
    // SCAN.
    let before = command_calls(&mut admin);
    assert!(conn.queue_exists("celery").await.expect("queue_exists"));
    let sent = delta(&before, &command_calls(&mut admin));
    assert_eq!(sent.get("scan"), None, "{sent:?}");
    assert!(sent.values().sum::<u64>() <= 6, "{sent:?}");

    // Found once, it is not looked up again at once.
    let before = command_calls(&mut admin);
    assert!(conn.queue_exists("celery").await.expect("queue_exists"));
    let sent = delta(&before, &command_calls(&mut admin));
    assert!(sent.is_empty(), "{sent:?}");

    // Bound to an exchange kombu-rs knows: no SCAN either.
    let before = command_calls(&mut admin);
    assert!(conn.queue_exists("via-known").await.expect("queue_exists"));
    let sent = delta(&before, &command_calls(&mut admin));
    assert_eq!(sent.get("scan"), None, "{sent:?}");

    // Bound only where nothing points: found by a SCAN of few steps (without COUNT, one per
    // ten keys: some two thousand here).
    let before = command_calls(&mut admin);
    assert!(conn.queue_exists("jobs").await.expect("queue_exists"));
    let sent = delta(&before, &command_calls(&mut admin));
    let scans = sent.get("scan").copied().unwrap_or(0);
    assert!((1..=100).contains(&scans), "{sent:?}");
    assert!(conn.queue_exists("bin-q").await.expect("queue_exists"));

    // Nowhere: not found, with as few steps, and the keys that are not sets are no error.
    let before = command_calls(&mut admin);
    assert!(!conn.queue_exists("missing").await.expect("queue_exists"));
    let sent = delta(&before, &command_calls(&mut admin));
    let scans = sent.get("scan").copied().unwrap_or(0);
    assert!((1..=100).contains(&scans), "{sent:?}");

    // Deleting a queue removes it from the tables (found through the escaped prefix) and
    // from what this connection remembers.
    assert!(conn.queue_exists("jobs").await.expect("queue_exists"));
    conn.delete_queue("jobs").await.expect("delete");
    let still: bool = redis::cmd("SISMEMBER")
        .arg(table("tasks"))
        .arg(member("jobs", "jobs"))
        .query(&mut admin)
        .expect("SISMEMBER");
    assert!(!still, "the binding is gone from Python's table");
    assert!(!conn.queue_exists("jobs").await.expect("queue_exists"));
    assert!(conn.queue_exists("celery").await.expect("queue_exists"));
    conn.close().await.expect("close");
}
