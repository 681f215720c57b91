//! The beat's stores on their real servers: on Redis (a key prefix of the test's own) and in
//! a SQLite file, two beats of one schedule send each run once, a new leader continues where
//! the old one stopped, and a beat whose lease ran out cannot record (so cannot send). The
//! tasks go to a real broker and are read back by their ids.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use kombu_celery::beat::{
    AmqpStore, Beat, BeatStore, Entry, MemoryStore, RedisStore, Run, Schedule, SqliteStore, run_id,
};
use kombu_celery::{Celery, TaskRequest};
use kombu_core::{Connection, ErrorKind, Queue};
use kombu_test_support::brokers;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("a time")
        .with_timezone(&Utc)
}

/// The entry both beats run: `tasks.tick(7)` every 10 s to `queue`.
fn tick_every_ten_seconds(queue: &str) -> Vec<Entry> {
    vec![
        Entry::new(
            "tick",
            "tasks.tick",
            Schedule::Every(Duration::from_secs(10)),
        )
        .args(vec![serde_json::json!(7)])
        .queue(queue),
    ]
}

/// The task ids of runs `k` of that entry, due `10 × k` s after `start`.
fn run_ids(name: &str, start: DateTime<Utc>, ks: std::ops::RangeInclusive<i64>) -> Vec<String> {
    ks.map(|k| run_id(name, "tick", start + chrono::Duration::seconds(10 * k)))
        .collect()
}

/// The `n` task ids waiting in `queue` (and that no more come).
async fn ids_in(conn: &Connection, queue: &str, n: usize) -> Vec<String> {
    let mut consumer = conn
        .consumer([Queue::new(queue)])
        .build()
        .await
        .expect("a consumer");
    let mut ids = Vec::new();
    while ids.len() < n {
        let Ok(Some(Ok(delivery))) =
            tokio::time::timeout(Duration::from_secs(5), consumer.next()).await
        else {
            break;
        };
        let request = TaskRequest::from_delivery(&delivery).expect("a task message");
        assert_eq!(request.task, "tasks.tick");
        assert_eq!(request.args, [serde_json::json!(7)]);
        ids.push(request.id);
        delivery.ack().await.expect("ack");
    }
    // Nothing more.
    let more = tokio::time::timeout(Duration::from_millis(300), consumer.next()).await;
    assert!(more.is_err(), "no more tasks than runs");
    consumer.close().await.expect("close");
    ids
}

async fn two_beats_one_store(make: impl Fn() -> Arc<dyn BeatStore>, broker: &str, tag: &str) {
    let conn = Connection::open(broker).await.expect("open");
    let queue = format!("beat-{tag}-{}", uuid::Uuid::new_v4().simple());
    let name = format!("s-{}", uuid::Uuid::new_v4().simple());
    let entries = || tick_every_ten_seconds(&queue);
    let ttl = Duration::from_millis(600);
    let mut a = Beat::new(&name, entries(), make(), Celery::new(&conn)).lease_ttl(ttl);
    let mut b = Beat::new(&name, entries(), make(), Celery::new(&conn)).lease_ttl(ttl);
    let start = utc("2026-01-01T00:00:00Z");
    let mut now = start;
    for _ in 0..8 {
        a.tick(now).await.expect("a ticks");
        b.tick(now).await.expect("b ticks");
        now += chrono::Duration::seconds(5);
    }
    assert!(a.is_leader() != b.is_leader(), "one leader");
    let mut ids = ids_in(&conn, &queue, 3).await;
    let want = run_ids(&name, start, 1..=3);
    assert_eq!(ids, want, "each run once, by its id");
    // The leader dies (its lease runs out): the other continues where it stopped.
    let (leader, follower) = if a.is_leader() {
        (a, &mut b)
    } else {
        (b, &mut a)
    };
    drop(leader);
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    follower.tick(now).await.expect("takes over");
    assert!(follower.is_leader());
    follower
        .tick(now + chrono::Duration::seconds(10))
        .await
        .expect("sends");
    ids = ids_in(&conn, &queue, 2).await;
    let want = run_ids(&name, start, 4..=5);
    assert_eq!(ids, want, "no run skipped, none repeated");
    // A beat whose lease ran out cannot record.
    let store = make();
    store.release(follower.owner()).await.expect("release");
    assert!(
        store
            .lease("old", Duration::from_millis(200))
            .await
            .expect("lease")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        store
            .lease("new", Duration::from_secs(5))
            .await
            .expect("lease")
    );
    let refused = store
        .record(
            "old",
            "tick",
            Run {
                scheduled: now,
                sent: false,
            },
        )
        .await
        .expect_err("the old holder");
    assert_eq!(refused.kind(), ErrorKind::PreconditionFailed);
    conn.delete_queue(&queue).await.expect("delete");
}

/// [`two_beats_one_store`] with a connection of its own (from `connect`) for each beat and for
/// the checks after, as beats on different machines.
async fn two_beats_apart(connect: impl AsyncFn() -> Arc<dyn BeatStore>, broker: &str, tag: &str) {
    let mut stores = Vec::new();
    for _ in 0..3 {
        stores.push(connect().await);
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    two_beats_one_store(
        || stores[next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % stores.len()].clone(),
        broker,
        tag,
    )
    .await;
}

/// The lease's rules on a store of a fresh schedule, with `connect` giving a connection of its
/// own for each instance: of six asking at once, one gets it; a record after the lease ran out
/// is refused though no one took it; a released lease is free at once.
async fn lease_rules<S: BeatStore + 'static>(connect: impl AsyncFn() -> S) {
    let mut stores = Vec::new();
    for _ in 0..6 {
        stores.push(Arc::new(connect().await));
    }
    let asks = stores.iter().enumerate().map(|(i, store)| {
        let store = store.clone();
        tokio::spawn(async move { store.lease(&format!("b{i}"), Duration::from_secs(5)).await })
    });
    let won: Vec<bool> = futures::future::join_all(asks)
        .await
        .into_iter()
        .map(|r| r.expect("joined").expect("lease"))
        .collect();
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "one holder: {won:?}");
    let holder = format!("b{}", won.iter().position(|w| *w).unwrap_or_default());
    let other = &stores[(won.iter().position(|w| *w).unwrap_or_default() + 1) % 6];
    let run = Run {
        scheduled: utc("2026-01-01T00:00:00Z"),
        sent: false,
    };
    other
        .record(&holder, "tick", run)
        .await
        .expect("the holder records");
    // Renewed to a short lease that runs out; no one takes it; the record is refused.
    assert!(
        other
            .lease(&holder, Duration::from_millis(200))
            .await
            .expect("renew")
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let refused = other
        .record(&holder, "tick", run)
        .await
        .expect_err("a lease that ran out");
    assert_eq!(refused.kind(), ErrorKind::PreconditionFailed);
    // Taken again, released: free for another at once.
    assert!(
        other
            .lease(&holder, Duration::from_secs(30))
            .await
            .expect("take")
    );
    assert!(
        !other
            .lease("x", Duration::from_secs(30))
            .await
            .expect("held")
    );
    other.release(&holder).await.expect("release");
    assert!(
        other
            .lease("x", Duration::from_secs(30))
            .await
            .expect("free")
    );
    assert_eq!(other.runs().await.expect("runs").get("tick"), Some(&run));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_rules_on_redis_sqlite_and_memory() {
    let Some(broker) = brokers::broker("redis", "beat-lease") else {
        return;
    };
    let name = format!("l-{}", uuid::Uuid::new_v4().simple());
    lease_rules(async || {
        RedisStore::connect(&broker.url, &name)
            .await
            .expect("redis")
    })
    .await;
    let dir = std::env::temp_dir().join(format!("kombu-rs-beat-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let path = dir.join("beat.state.db");
    lease_rules(async || SqliteStore::open(&path, "l").expect("sqlite")).await;
    let _ = std::fs::remove_dir_all(&dir);
    let memory = Arc::new(MemoryStore::new());
    lease_rules(async || SharedMemory(memory.clone())).await;
}

/// One [`MemoryStore`] behind several handles (as instances sharing it).
#[derive(Debug)]
struct SharedMemory(Arc<MemoryStore>);

#[async_trait::async_trait]
impl BeatStore for SharedMemory {
    async fn lease(&self, owner: &str, ttl: Duration) -> kombu_core::Result<bool> {
        self.0.lease(owner, ttl).await
    }
    async fn release(&self, owner: &str) -> kombu_core::Result<()> {
        self.0.release(owner).await
    }
    async fn runs(&self) -> kombu_core::Result<std::collections::HashMap<String, Run>> {
        self.0.runs().await
    }
    async fn record(&self, owner: &str, entry: &str, run: Run) -> kombu_core::Result<()> {
        self.0.record(owner, entry, run).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_beats_share_a_redis_store() {
    kombu_redis::register();
    let Some(broker) = brokers::broker("redis", "beat") else {
        return;
    };
    let connect = async || {
        let store = RedisStore::connect(&broker.url, "shared")
            .await
            .expect("redis");
        Arc::new(store) as Arc<dyn BeatStore>
    };
    two_beats_apart(connect, &broker.url, "redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_beats_share_a_sqlite_file() {
    kombu_core::transport::memory::register();
    let dir = std::env::temp_dir().join(format!("kombu-rs-beat-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let path = dir.join("beat.state.db");
    let broker = format!("memory://beat-{}", uuid::Uuid::new_v4().simple());
    // A connection of its own for each beat, as two processes on one machine.
    two_beats_one_store(
        || Arc::new(SqliteStore::open(&path, "shared").expect("sqlite")),
        &broker,
        "sqlite",
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_beats_share_rabbitmq() {
    kombu_amqp::register();
    let Some(broker) = brokers::broker("amqp", "beat") else {
        return;
    };
    let conn = Connection::open(&broker.url).await.expect("open");
    let queue = format!("beat-amqp-{}", uuid::Uuid::new_v4().simple());
    let name = format!("s-{}", uuid::Uuid::new_v4().simple());
    let entries = || tick_every_ten_seconds(&queue);
    let store_a = Arc::new(AmqpStore::connect(&broker.url, &name).await.expect("a"));
    let store_b = Arc::new(AmqpStore::connect(&broker.url, &name).await.expect("b"));
    let mut a = Beat::new(&name, entries(), store_a.clone(), Celery::new(&conn));
    let mut b = Beat::new(&name, entries(), store_b.clone(), Celery::new(&conn));
    let start = utc("2026-01-01T00:00:00Z");
    let mut now = start;
    for _ in 0..8 {
        a.tick(now).await.expect("a ticks");
        b.tick(now).await.expect("b ticks");
        now += chrono::Duration::seconds(5);
    }
    assert!(a.is_leader() && !b.is_leader(), "the first to ask leads");
    let ids = ids_in(&conn, &queue, 3).await;
    let want = run_ids(&name, start, 1..=3);
    assert_eq!(ids, want, "each run once, by its id");
    // The leader's connection goes (a crash closes it too): the other takes over where the
    // leader stopped, and the old one can no longer record.
    store_a.close().await.expect("close");
    let refused = store_a
        .record(
            "a",
            "tick",
            Run {
                scheduled: now,
                sent: false,
            },
        )
        .await
        .expect_err("no lease, no record");
    assert_eq!(refused.kind(), ErrorKind::PreconditionFailed);
    b.tick(now).await.expect("takes over");
    assert!(b.is_leader());
    b.tick(now + chrono::Duration::seconds(10))
        .await
        .expect("sends");
    let ids = ids_in(&conn, &queue, 2).await;
    let want = run_ids(&name, start, 4..=5);
    assert_eq!(ids, want, "no run skipped, none repeated");
    store_b.close().await.expect("close");
    conn.delete_queue(&queue).await.expect("delete");
    conn.delete_queue(&format!("kombu_rs.beat.{name}.runs"))
        .await
        .expect("delete");
}

#[cfg(feature = "mongodb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_beats_share_a_mongodb_store() {
    use kombu_celery::beat::MongoStore;
    kombu_mongodb::register();
    let Some(broker) = brokers::broker("mongodb", "beat") else {
        return;
    };
    let connect = async || {
        let store = MongoStore::connect(&broker.url, "shared")
            .await
            .expect("mongodb");
        Arc::new(store) as Arc<dyn BeatStore>
    };
    two_beats_apart(connect, &broker.url, "mongodb").await;
    // The document is where the docs say, with the runs under their entry names.
    let db = kombu_mongodb::MongoDatabase::open(&broker.url)
        .await
        .expect("the database");
    let doc = db
        .database()
        .collection::<mongodb::bson::Document>("kombu_rs.beat")
        .find_one(mongodb::bson::doc! { "_id": "shared" })
        .await
        .expect("read")
        .expect("the beat's document");
    assert_eq!(doc.get_str("owner").expect("owner"), "new");
    let tick = doc
        .get_document("runs")
        .and_then(|runs| runs.get_document("tick"))
        .expect("the run of tick");
    assert!(tick.get_bool("sent").expect("sent"));
}

#[cfg(feature = "mongodb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_rules_on_mongodb() {
    use kombu_celery::beat::MongoStore;
    let Some(broker) = brokers::broker("mongodb", "beat-lease") else {
        return;
    };
    lease_rules(async || {
        MongoStore::connect(&broker.url, "l")
            .await
            .expect("mongodb")
    })
    .await;
    // A document whose lease was cleared by hand (no owner, no expiry): free, its runs kept.
    let db = kombu_mongodb::MongoDatabase::open(&broker.url)
        .await
        .expect("the database");
    db.database()
        .collection::<mongodb::bson::Document>("kombu_rs.beat")
        .insert_one(mongodb::bson::doc! {
            "_id": "cleared",
            "runs": { "tick": { "scheduled": "2026-01-01T00:00:00+00:00", "sent": true } },
        })
        .await
        .expect("insert");
    let store = MongoStore::connect(&broker.url, "cleared")
        .await
        .expect("mongodb");
    assert!(
        store
            .lease("a", Duration::from_secs(5))
            .await
            .expect("lease")
    );
    let runs = store.runs().await.expect("runs");
    assert_eq!(
        runs.get("tick"),
        Some(&Run {
            scheduled: utc("2026-01-01T00:00:00Z"),
            sent: true
        })
    );
}
