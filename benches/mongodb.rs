//! MongoDB transport throughput against the official `mongodb` driver doing the bare work of
//! the same operations (the ceiling) and against Python kombu
//! (`../shared/bench/kombu_baseline.py --mongo-url`), in the same run, on the server at
//! `KOMBU_BENCH_MONGODB_URL` (default `mongodb://127.0.0.1:27018`).
//!
//! ```text
//! cargo bench --bench mongodb                  # 1,000 messages per row
//! cargo bench --bench mongodb -- 500           # fewer
//! KOMBU_BENCH_MONGODB_PREFETCH=500 cargo bench --bench mongodb   # another prefetch (default 100)
//! KOMBU_BENCH_MONGODB_OPTIONS=change_streams=false cargo bench --bench mongodb   # kombu-rs's URL only
//! ```
//!
//! Messages are kombu's benchmark body, `{"id": N, "payload": "x" * 64}` as JSON, which
//! kombu-rs wraps in kombu's envelope and stores as kombu's document
//! `{payload: <envelope JSON>, queue, priority}`; the raw rows write documents of the same
//! shape (the payload is an envelope kombu-rs wrote, read back once before the rounds). Every
//! round of every side runs in a fresh database, dropped afterwards, with the index kombu makes
//! (`queue, priority, _id`); five rounds, alternating the sides, medians. Rows:
//! - publish in batches of 100: `producer.publish_batch` / one `insert_many` of 100 prebuilt
//!   documents;
//! - consume with ack, prefetch P: build a consumer, decode and ack every message, close it
//!   (which writes the last acks) / the least a crash-safe take needs, in a loop: a `find` of up
//!   to P ready documents sorted by `priority, _id`, an `update_many` that leases them under a
//!   take id (kombu-rs's fields: `queue` set to the leased queue, the take time and id), a
//!   `delete_many` of them (the ack), no decoding.
//!
//! A line after the table gives the takes: how long kombu-rs's consumer waited for a delivery
//! not yet at hand, against the driver's `find` + `update_many` and `delete_many`.
//!
//! The server's operation counters (`serverStatus.opcounters`) are read around each phase: the
//! second table gives the operations per 100 messages, the round trips each side made.
//!
//! Python kombu (the same number of messages) publishes one by one (`insert_one` per message, its
//! only mode) and consumes with `find_one_and_delete` per message, without a lease.

mod support;

use std::time::Instant;

use futures::TryStreamExt;
use kombu::{Connection, Queue, StreamExt};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Document, doc};
use mongodb::{Client, Collection, IndexModel};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Payload {
    id: u64,
    payload: String,
}

/// Documents a publish batch holds (both sides).
const BATCH: usize = 100;

/// A wait of kombu-rs's consumer this long or longer is counted as waiting for a take.
const TAKE_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

/// The median of durations, in milliseconds (0 for none).
fn median_ms(mut xs: Vec<std::time::Duration>) -> f64 {
    xs.sort();
    xs.get(xs.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// Rounds of each side.
const ROUNDS: usize = 5;

fn server() -> String {
    std::env::var("KOMBU_BENCH_MONGODB_URL").unwrap_or_else(|_| "mongodb://127.0.0.1:27018".into())
}

fn prefetch() -> u16 {
    std::env::var("KOMBU_BENCH_MONGODB_PREFETCH")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(100)
}

/// A database name no other round uses.
fn fresh_db(side: &str) -> String {
    format!("kombu_bench_{side}_{}", uuid::Uuid::new_v4().simple())
}

/// The server's URL with `db` as its database (any path it had is replaced; options kept).
fn db_url(db: &str) -> String {
    let url = server();
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b.to_owned(), format!("?{q}")),
        None => (url, String::new()),
    };
    let hosts_at = base.find("://").map_or(0, |i| i + 3);
    let hosts_end = base[hosts_at..]
        .find('/')
        .map_or(base.len(), |i| hosts_at + i);
    format!("{}/{db}{query}", &base[..hosts_end])
}

/// [`db_url`] with `KOMBU_BENCH_MONGODB_OPTIONS` (kombu's transport options, e.g.
/// `change_streams=false`) added to the query: kombu-rs's URL.
fn kombu_url(db: &str) -> String {
    let url = db_url(db);
    match std::env::var("KOMBU_BENCH_MONGODB_OPTIONS") {
        Ok(options) if !options.is_empty() => {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}{options}")
        }
        _ => url,
    }
}

/// The server's operation counters.
#[derive(Clone, Copy, Default)]
struct Ops {
    insert: f64,
    query: f64,
    update: f64,
    delete: f64,
    getmore: f64,
    /// Every command, the ones above included.
    command: f64,
}

impl Ops {
    async fn read(client: &Client) -> Ops {
        let status = client
            .database("admin")
            .run_command(doc! { "serverStatus": 1 })
            .await
            .expect("serverStatus");
        let counters = status.get_document("opcounters").expect("opcounters");
        let get = |k: &str| {
            counters
                .get(k)
                .and_then(|v| v.as_i64().or_else(|| v.as_i32().map(i64::from)))
                .unwrap_or(0) as f64
        };
        Ops {
            insert: get("insert"),
            query: get("query"),
            update: get("update"),
            delete: get("delete"),
            getmore: get("getmore"),
            command: get("command"),
        }
    }

    /// What ran between `self` and `later` (the `serverStatus` that read `later` left out),
    /// per 100 messages of `n`; `command` becomes the other commands (neither an insert, a
    /// query, an update, a delete nor a getmore).
    fn per_100(self, later: Ops, n: u64) -> Ops {
        let k = 100.0 / n as f64;
        let d = |a: f64, b: f64| b - a;
        let (insert, query, update, delete, getmore) = (
            d(self.insert, later.insert),
            d(self.query, later.query),
            d(self.update, later.update),
            d(self.delete, later.delete),
            d(self.getmore, later.getmore),
        );
        let other =
            d(self.command, later.command) - 1.0 - insert - query - update - delete - getmore;
        Ops {
            insert: insert * k,
            query: query * k,
            update: update * k,
            delete: delete * k,
            getmore: getmore * k,
            command: other.max(0.0) * k,
        }
    }

    fn total(&self) -> f64 {
        self.insert + self.query + self.update + self.delete + self.getmore + self.command
    }
}

struct Figures {
    publish: f64,
    consume: f64,
    /// kombu-rs: the median wait of `next()` for a delivery not yet at hand (waits over
    /// [`TAKE_WAIT`]); raw: the median `find` + `update_many` of a take. Milliseconds.
    take_ms: f64,
    /// kombu-rs: how many such waits; raw: the takes.
    takes: f64,
    /// Raw: the median `delete_many` of a take, milliseconds; 0 for kombu-rs (its acks are
    /// written in the background).
    ack_ms: f64,
    publish_ops: Ops,
    consume_ops: Ops,
}

async fn monitor() -> Client {
    Client::with_uri_str(server()).await.expect("client")
}

fn values(n: u64) -> Vec<Payload> {
    (0..n)
        .map(|id| Payload {
            id,
            payload: support::payload_text(),
        })
        .collect()
}

async fn ours(n: u64, prefetch: u16) -> Figures {
    let monitor = monitor().await;
    let db = fresh_db("rs");
    let conn = Connection::open(&kombu_url(&db)).await.expect("open");
    let q = Queue::new("bench_q");
    conn.declare_queue(&q).await.expect("declare");
    let producer = conn.producer().routing_key("bench_q");
    let values = values(n);

    let before = Ops::read(&monitor).await;
    let publish = support::publish_batches(&producer, &values).await;
    let publish_ops = before.per_100(Ops::read(&monitor).await, n);
    assert_eq!(conn.queue_size("bench_q").await.expect("size"), n);

    let before = Ops::read(&monitor).await;
    let start = Instant::now();
    let mut consumer = conn
        .consumer([q])
        .prefetch(prefetch)
        .build()
        .await
        .expect("consumer");
    let mut seen = vec![false; n as usize];
    let mut waits = Vec::new();
    for _ in 0..n {
        let asked = Instant::now();
        let d = consumer.next().await.expect("message").expect("delivery");
        let waited = asked.elapsed();
        if waited >= TAKE_WAIT {
            waits.push(waited);
        }
        let v: Payload = d.decode().expect("decode");
        assert!(
            !std::mem::replace(&mut seen[v.id as usize], true),
            "duplicate {}",
            v.id
        );
        d.ack().await.expect("ack");
    }
    consumer.close().await.expect("close");
    let consume = support::rate(n, start.elapsed());
    let consume_ops = before.per_100(Ops::read(&monitor).await, n);

    let left = monitor
        .database(&db)
        .collection::<Document>("messages")
        .count_documents(doc! {})
        .await
        .expect("count");
    assert_eq!(left, 0, "every ack written");
    conn.close().await.expect("close");
    monitor.database(&db).drop().await.expect("drop");
    Figures {
        publish,
        consume,
        takes: waits.len() as f64,
        take_ms: median_ms(waits),
        ack_ms: 0.0,
        publish_ops,
        consume_ops,
    }
}

/// The driver's consume loop (see the crate docs): messages a second, and each take's
/// `find` + `update_many` and `delete_many` durations.
async fn raw_consume(
    messages: &Collection<Document>,
    n: u64,
    prefetch: u16,
) -> (f64, Vec<std::time::Duration>, Vec<std::time::Duration>) {
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64()
    };
    let start = Instant::now();
    let mut got = 0;
    let (mut take_times, mut ack_times) = (Vec::new(), Vec::new());
    while got < n {
        let asked = Instant::now();
        let taken: Vec<Document> = messages
            .find(doc! { "queue": "bench_q" })
            .sort(doc! { "priority": 1, "_id": 1 })
            .limit(i64::from(prefetch))
            .await
            .expect("find")
            .try_collect()
            .await
            .expect("find");
        let ids: Vec<ObjectId> = taken
            .iter()
            .map(|d| d.get_object_id("_id").expect("_id"))
            .collect();
        let take = ObjectId::new();
        let taken_at = unix_now();
        messages
            .update_many(
                doc! { "_id": { "$in": &ids }, "queue": "bench_q" },
                doc! {
                    "$set": {
                        "queue": "kombu_rs.leased:bench_q",
                        "kombu_rs_taken_at": taken_at,
                        "kombu_rs_take": take,
                    },
                },
            )
            .await
            .expect("update_many");
        take_times.push(asked.elapsed());
        let acking = Instant::now();
        let ack = doc! { "_id": { "$in": &ids }, "kombu_rs_take": take };
        messages.delete_many(ack).await.expect("delete_many");
        ack_times.push(acking.elapsed());
        got += ids.len() as u64;
    }
    (support::rate(n, start.elapsed()), take_times, ack_times)
}

async fn raw(n: u64, prefetch: u16, payload: &str, priority: i32) -> Figures {
    let monitor = monitor().await;
    let db = fresh_db("raw");
    let client = Client::with_uri_str(db_url(&db)).await.expect("client");
    let messages: Collection<Document> = client.database(&db).collection("messages");
    messages
        .create_index(
            IndexModel::builder()
                .keys(doc! { "queue": 1, "priority": 1, "_id": 1 })
                .build(),
        )
        .await
        .expect("index");
    let docs: Vec<Document> = (0..n)
        .map(|_| doc! { "payload": payload, "queue": "bench_q", "priority": priority })
        .collect();

    let before = Ops::read(&monitor).await;
    let start = Instant::now();
    for chunk in docs.chunks(BATCH) {
        messages.insert_many(chunk).await.expect("insert_many");
    }
    let publish = support::rate(n, start.elapsed());
    let publish_ops = before.per_100(Ops::read(&monitor).await, n);

    let before = Ops::read(&monitor).await;
    let (consume, take_times, ack_times) = raw_consume(&messages, n, prefetch).await;
    let consume_ops = before.per_100(Ops::read(&monitor).await, n);
    monitor.database(&db).drop().await.expect("drop");

    Figures {
        publish,
        consume,
        takes: take_times.len() as f64,
        take_ms: median_ms(take_times),
        ack_ms: median_ms(ack_times),
        publish_ops,
        consume_ops,
    }
}

/// The payload and stored priority of the document kombu-rs writes for one benchmark message.
async fn kombu_document() -> (String, i32) {
    let db = fresh_db("shape");
    let conn = Connection::open(&db_url(&db)).await.expect("open");
    conn.declare_queue(&Queue::new("bench_q"))
        .await
        .expect("declare");
    conn.producer()
        .routing_key("bench_q")
        .publish(&Payload {
            id: 0,
            payload: support::payload_text(),
        })
        .await
        .expect("publish");
    conn.close().await.expect("close");
    let client = monitor().await;
    let stored = client
        .database(&db)
        .collection::<Document>("messages")
        .find_one(doc! { "queue": "bench_q" })
        .await
        .expect("find")
        .expect("the published document");
    client.database(&db).drop().await.expect("drop");
    (
        stored.get_str("payload").expect("payload").to_owned(),
        stored.get_i32("priority").expect("priority"),
    )
}

fn main() {
    let n = support::messages(1_000);
    let prefetch = prefetch();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (payload, priority) = rt.block_on(kombu_document());
    drop(rt);
    // Alternate the two sides over five rounds (a publish phase is a fraction of a second on
    // this server, and single rounds swing by ±30%); report medians.
    let (ours_runs, raw_runs) = support::alternate_rounds(
        ROUNDS,
        || ours(n, prefetch),
        || raw(n, prefetch, &payload, priority),
    );
    let pick = support::median::<Figures>;
    let py_db = fresh_db("py");
    let py_url = db_url(&py_db);
    // The same number of messages: Python kombu's take (`find_one_and_delete`, sorted) slows
    // with the collection's size on this server, so a smaller run would flatter it.
    let py = support::python_rates(
        "mongodb",
        &py_url,
        n,
        &["--mongo-url", &py_url, "--mongo-n", &n.to_string()],
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let _ = monitor().await.database(&py_db).drop().await;
        });

    println!(
        "mongodb: {n} messages per row ({} bytes of envelope), median of {ROUNDS} rounds, a fresh database per round; raw = the mongodb driver doing the same operations; Python kombu in the same run",
        payload.len()
    );
    println!();
    println!("| row | kombu-rs | raw driver | kombu-rs / raw | Python kombu | kombu-rs / Python |");
    println!("|---|---:|---:|---:|---:|---:|");
    let row = |name: &str, f: fn(&Figures) -> f64, py: Option<f64>| {
        support::record_row("mongodb", name, "msg/s", (&ours_runs, &raw_runs), f, py);
        let o = pick(&ours_runs, f);
        let r = pick(&raw_runs, f);
        let (p, pr) = match py {
            Some(p) => (support::grouped(p), format!("{:.1}×", o / p)),
            None => ("–".into(), "–".into()),
        };
        println!(
            "| {name} | {} msg/s | {} msg/s | {:.2} | {p} | {pr} |",
            support::grouped(o),
            support::grouped(r),
            o / r
        );
    };
    row("publish, batches of 100", |f| f.publish, py.map(|p| p.0));
    row(
        &format!("consume + ack, prefetch {prefetch}"),
        |f| f.consume,
        py.map(|p| p.1),
    );

    let per_round = |f: fn(&Figures) -> f64| {
        ours_runs
            .iter()
            .zip(&raw_runs)
            .map(|(o, r)| format!("{:.2}", f(o) / f(r)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!();
    println!(
        "kombu-rs / raw round by round: publish {}; consume + ack {}",
        per_round(|f| f.publish),
        per_round(|f| f.consume)
    );
    println!();
    println!(
        "Takes (medians): kombu-rs's consumer waited {:.0} times for a delivery (over {} ms), {:.0} ms each; the driver made {:.0} takes, find + update_many {:.0} ms, delete_many {:.0} ms",
        pick(&ours_runs, |f| f.takes),
        TAKE_WAIT.as_millis(),
        pick(&ours_runs, |f| f.take_ms),
        pick(&raw_runs, |f| f.takes),
        pick(&raw_runs, |f| f.take_ms),
        pick(&raw_runs, |f| f.ack_ms),
    );
    println!();
    println!(
        "Server operations per 100 messages (serverStatus opcounters, medians; other = any other command, the driver's monitoring included):"
    );
    println!();
    println!("| phase | side | insert | query | update | delete | getmore | other | total |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let ops_row = |phase: &str, side: &str, runs: &[Figures], f: fn(&Figures) -> Ops| {
        let m = |g: fn(&Ops) -> f64| support::median(runs, |r| g(&f(r)));
        println!(
            "| {phase} | {side} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            m(|o| o.insert),
            m(|o| o.query),
            m(|o| o.update),
            m(|o| o.delete),
            m(|o| o.getmore),
            m(|o| o.command),
            m(Ops::total),
        );
    };
    ops_row("publish", "kombu-rs", &ours_runs, |f| f.publish_ops);
    ops_row("publish", "raw", &raw_runs, |f| f.publish_ops);
    ops_row("consume + ack", "kombu-rs", &ours_runs, |f| f.consume_ops);
    ops_row("consume + ack", "raw", &raw_runs, |f| f.consume_ops);
}
