//! Deployment details against the real server: ACL users, and queue expiry.

use std::time::Duration;

use kombu_core::{Connection, ErrorKind, Queue};

fn server_up() -> bool {
    let up = redis::Client::open("redis://127.0.0.1:6379/0")
        .and_then(|c| c.get_connection())
        .is_ok();
    if !up {
        let why = "no Redis on 127.0.0.1:6379";
        if std::env::var_os("KOMBU_TEST_REQUIRE").is_some() {
            panic!("{why}; KOMBU_TEST_REQUIRE is set, so this is a failure");
        }
        eprintln!("skipped: {why}");
    }
    up
}

fn prefix() -> String {
    format!("server-{}:", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn acl_users_connect_with_their_password_and_are_refused_without_it() {
    if !server_up() {
        return;
    }
    kombu_redis::register();
    let pfx = prefix();
    let user = format!("kombu-{}", uuid::Uuid::new_v4().simple());
    let client = redis::Client::open("redis://127.0.0.1:6379/0").expect("client");
    let mut admin = client.get_connection().expect("admin connection");
    // A user that may only touch this test's keys and channels, and run what kombu-rs runs.
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(">s3cret/pass")
        .arg(format!("~{pfx}*"))
        .arg(format!("&{pfx}*"))
        .arg("+@all")
        .query(&mut admin)
        .expect("create the ACL user");

    let url = format!("redis://{user}:s3cret%2Fpass@127.0.0.1:6379/0?global_keyprefix={pfx}");
    let conn = Connection::open(&url).await.expect("the ACL user connects");
    conn.declare_queue(&Queue::new("q")).await.expect("declare");
    conn.producer()
        .routing_key("q")
        .publish("hi")
        .await
        .expect("publish");
    assert_eq!(conn.queue_size("q").await.expect("size"), 1);

    let wrong = format!("redis://{user}:nope@127.0.0.1:6379/0?global_keyprefix={pfx}");
    let err = Connection::open(&wrong)
        .await
        .expect_err("a wrong password");
    assert_eq!(err.kind(), ErrorKind::AccessRefused, "{err}");
    assert!(!err.to_string().contains("nope"), "{err}");

    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query(&mut admin)
        .expect("remove the ACL user");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{pfx}*"))
        .query(&mut admin)
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(keys).query(&mut admin);
    }
}

#[tokio::test]
async fn a_queue_with_an_expiry_disappears_when_unused() {
    if !server_up() {
        return;
    }
    kombu_redis::register();
    let pfx = prefix();
    let url = format!("redis://127.0.0.1:6379/0?global_keyprefix={pfx}");
    let conn = Connection::open(&url).await.expect("connect");
    let q = Queue::new("short-lived").expires(Duration::from_millis(300));
    conn.declare_queue(&q).await.expect("declare");
    conn.producer()
        .routing_key("short-lived")
        .publish("soon gone")
        .await
        .expect("publish");
    let client = redis::Client::open("redis://127.0.0.1:6379/0").expect("client");
    let mut raw = client.get_connection().expect("connection");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{pfx}short-lived"))
        .query(&mut raw)
        .expect("pttl");
    assert!(
        ttl > 0 && ttl <= 300,
        "the list expires with the queue (PTTL {ttl})"
    );
    // Bounded wait for the server to expire it.
    let mut gone = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let exists: i64 = redis::cmd("EXISTS")
            .arg(format!("{pfx}short-lived"))
            .query(&mut raw)
            .expect("exists");
        if exists == 0 {
            gone = true;
            break;
        }
    }
    assert!(gone, "the unused queue's list expired");
    assert_eq!(conn.queue_size("short-lived").await.expect("size"), 0);
}

#[tokio::test]
async fn sentinel_urls_find_the_master() {
    if !server_up() {
        return;
    }
    let sentinel_up = redis::Client::open("redis://127.0.0.1:26379")
        .and_then(|c| c.get_connection())
        .is_ok();
    if !sentinel_up {
        let why = "no Redis Sentinel on 127.0.0.1:26379 (scripts/test starts one)";
        if std::env::var_os("KOMBU_TEST_REQUIRE").is_some() {
            panic!("{why}; KOMBU_TEST_REQUIRE is set, so this is a failure");
        }
        eprintln!("skipped: {why}");
        return;
    }
    kombu_redis::register();
    let pfx = prefix();
    // The first sentinel of the list is down: failover moves on to the live one.
    let url = format!(
        "sentinel://127.0.0.1:1/0?master_name=kombu-test&global_keyprefix={pfx};\
         sentinel://127.0.0.1:26379/0?master_name=kombu-test&global_keyprefix={pfx}"
    );
    let conn = Connection::open(&url).await.expect("through the sentinel");
    conn.declare_queue(&Queue::new("via-sentinel"))
        .await
        .expect("declare");
    conn.producer()
        .routing_key("via-sentinel")
        .publish("found the master")
        .await
        .expect("publish");
    // The message is on the master the sentinel named (6379).
    let direct = Connection::open(&format!("redis://127.0.0.1:6379/0?global_keyprefix={pfx}"))
        .await
        .expect("direct");
    assert_eq!(direct.queue_size("via-sentinel").await.expect("size"), 1);
    direct.purge("via-sentinel").await.expect("purge");

    let err = Connection::open("sentinel://127.0.0.1:26379/0?master_name=no-such-master")
        .await
        .expect_err("an unknown master");
    assert!(err.to_string().contains("no-such-master"), "{err}");
    assert!(
        Connection::open("sentinel://127.0.0.1:26379/0")
            .await
            .is_err()
    );
}

/// The names of the connections blocked in `BLMOVE` right now.
fn blocked_watchers(admin: &mut redis::Connection) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(admin)
        .expect("client list");
    list.lines()
        .filter(|l| l.contains(" cmd=blmove ") && l.contains(" flags=b "))
        .filter_map(|l| {
            l.split(' ')
                .find_map(|f| f.strip_prefix("name="))
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test]
async fn idle_consumers_block_on_the_server_and_leave_the_list_as_it_was() {
    use futures::StreamExt;
    use kombu_core::transport::virtual_transport::{Envelope, envelope};

    if !server_up() {
        return;
    }
    kombu_redis::register();
    let pfx = prefix();
    // A polling interval far beyond the test: only a blocking wait can be what wakes.
    let url = format!("redis://127.0.0.1:6379/0?global_keyprefix={pfx}&polling_interval=3600");
    let conn = Connection::open(&url).await.expect("open");
    conn.declare_queue(&Queue::new("q")).await.expect("declare");
    let mut consumer = conn
        .consumer([Queue::new("q")])
        .build()
        .await
        .expect("consumer");
    let mut next = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < 3 {
            let delivery = consumer
                .next()
                .await
                .expect("open stream")
                .expect("delivery");
            got.push(delivery.body().to_vec());
            delivery.ack().await.expect("ack");
        }
        got
    });

    // The idle consumer's watcher blocks on the queue's list (one per priority bucket).
    let client = redis::Client::open("redis://127.0.0.1:6379/0").expect("client");
    let mut admin = client.get_connection().expect("admin connection");
    let name = format!("kombu-rs:watch:{pfx}q");
    let mut waited = 0;
    while !blocked_watchers(&mut admin).contains(&name) {
        waited += 1;
        assert!(waited < 500, "no connection blocked in BLMOVE on {pfx}q");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(50), &mut next)
            .await
            .is_err(),
        "nothing to deliver yet"
    );

    // Three messages pushed in one command by another client (as Python kombu would push
    // them): the watcher's BLMOVE pops the newest and puts it back, so they arrive in order.
    let bodies: Vec<Vec<u8>> = (1..=3)
        .map(|n| {
            let message = kombu_core::Message::new(format!("m{n}"));
            envelope::encode(&Envelope::new(message, String::new(), "q".into()))
        })
        .collect();
    let _: i64 = redis::cmd("LPUSH")
        .arg(format!("{pfx}q"))
        .arg(&bodies)
        .query(&mut admin)
        .expect("lpush");
    let got = tokio::time::timeout(Duration::from_secs(30), next)
        .await
        .expect("the blocked consumer wakes")
        .expect("consumer task");
    assert_eq!(got, [b"m1".to_vec(), b"m2".to_vec(), b"m3".to_vec()]);
    let left: i64 = redis::cmd("LLEN")
        .arg(format!("{pfx}q"))
        .query(&mut admin)
        .expect("llen");
    assert_eq!(left, 0);
}

#[tokio::test]
async fn binding_tables_of_expiring_queues_get_deadlines_and_overdue_ones_are_swept() {
    use futures::StreamExt;
    use kombu_core::Exchange;

    if !server_up() {
        return;
    }
    kombu_redis::register();
    let pfx = prefix();
    let url = format!("redis://127.0.0.1:6379/0?global_keyprefix={pfx}");
    let conn = Connection::open(&url).await.expect("open");
    let expiring = Queue::new("eq")
        .exchange(Exchange::direct("x"))
        .routing_key("eq")
        .expires(Duration::from_secs(60));
    conn.declare_queue(&expiring).await.expect("declare");
    let lasting = Queue::new("pq")
        .exchange(Exchange::direct("y"))
        .routing_key("pq");
    conn.declare_queue(&lasting).await.expect("declare");

    let client = redis::Client::open("redis://127.0.0.1:6379/0").expect("client");
    let mut admin = client.get_connection().expect("admin connection");
    let deadlines = format!("{pfx}_kombu.binding_deadlines");
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut admin).expect("time");
    let now_ms = secs * 1000 + micros / 1000;
    // kombu 5.7: at least an hour (twice x-expires when that is longer), server clock.
    let deadline: f64 = redis::cmd("ZSCORE")
        .arg(&deadlines)
        .arg("x")
        .query(&mut admin)
        .expect("the expiring queue's exchange has a deadline");
    let ahead = deadline - now_ms as f64;
    assert!(
        (3_590_000.0..=3_600_000.0).contains(&ahead),
        "deadline {ahead} ms ahead"
    );
    let permanent: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{pfx}_kombu.binding_permanent.y"))
        .query(&mut admin)
        .expect("smembers");
    assert_eq!(permanent, ["pq\x06\x16\x06\x16pq"]);
    let none: i64 = redis::cmd("EXISTS")
        .arg(format!("{pfx}_kombu.binding_permanent.x"))
        .query(&mut admin)
        .expect("exists");
    assert_eq!(none, 0, "an expiring queue's binding is not permanent");

    // Two overdue tables, as stopped consumers leave them: one only expiring queues used
    // (swept), one that a lasting queue still needs (kept).
    let _: () = redis::pipe()
        .sadd(format!("{pfx}_kombu.binding.old"), "k\x06\x16\x06\x16gone")
        .sadd(format!("{pfx}_kombu.binding.keep"), "k\x06\x16\x06\x16kept")
        .sadd(
            format!("{pfx}_kombu.binding_permanent.keep"),
            "k\x06\x16\x06\x16kept",
        )
        .zadd(&deadlines, "old", 1)
        .zadd(&deadlines, "keep", 1)
        .query(&mut admin)
        .expect("set up overdue tables");

    // A consumer of the expiring queue refreshes its tables and sweeps overdue ones.
    let mut consumer = conn.consumer([expiring]).build().await.expect("consumer");
    let idle = tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(30), consumer.next()).await;
    });
    let exists = |admin: &mut redis::Connection, key: String| -> bool {
        redis::cmd("EXISTS")
            .arg(key)
            .query::<i64>(admin)
            .expect("exists")
            == 1
    };
    let mut waited = 0;
    while exists(&mut admin, format!("{pfx}_kombu.binding.old")) {
        waited += 1;
        assert!(waited < 500, "the overdue table was never swept");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(exists(&mut admin, format!("{pfx}_kombu.binding.keep")));
    assert!(exists(&mut admin, format!("{pfx}_kombu.binding.x")));
    let left: Vec<String> = redis::cmd("ZRANGE")
        .arg(&deadlines)
        .arg(0)
        .arg(-1)
        .query(&mut admin)
        .expect("zrange");
    assert_eq!(left, ["x"], "overdue entries leave the deadline set");
    idle.abort();
}

#[tokio::test]
async fn unix_socket_urls_reach_the_server_and_its_database() {
    use futures::StreamExt;

    let Some(sock) = std::env::var_os("KOMBU_TEST_REDIS_SOCKET") else {
        let why = "KOMBU_TEST_REDIS_SOCKET is not set (scripts/test starts a Redis on a socket)";
        if std::env::var_os("KOMBU_TEST_REQUIRE").is_some() {
            panic!("{why}; KOMBU_TEST_REQUIRE is set, so this is a failure");
        }
        eprintln!("skipped: {why}");
        return;
    };
    let sock = sock.to_string_lossy().into_owned();
    kombu_redis::register();
    let pfx = prefix();
    for (url, db) in [
        (
            format!("redis+socket://{sock}?virtual_host=3&global_keyprefix={pfx}"),
            3,
        ),
        (format!("unix://{sock}?db=4&global_keyprefix={pfx}"), 4),
    ] {
        let conn = Connection::open(&url).await.expect("open over the socket");
        conn.declare_queue(&Queue::new("q")).await.expect("declare");
        conn.producer()
            .routing_key("q")
            .publish("over the socket")
            .await
            .expect("publish");
        // The message is in the URL's database, on the socket's server.
        let admin = redis::Client::open(format!("redis+unix://{sock}?db={db}")).expect("client");
        let mut admin = admin.get_connection().expect("admin connection");
        let len: i64 = redis::cmd("LLEN")
            .arg(format!("{pfx}q"))
            .query(&mut admin)
            .expect("llen");
        assert_eq!(len, 1, "{url}");
        let mut consumer = conn
            .consumer([Queue::new("q")])
            .build()
            .await
            .expect("consumer");
        let delivery = consumer.next().await.expect("stream").expect("delivery");
        assert_eq!(
            delivery.decode::<String>().expect("decode"),
            "over the socket"
        );
        delivery.ack().await.expect("ack");
        consumer.close().await.expect("close");
        conn.delete_queue("q").await.expect("delete");
    }
}
