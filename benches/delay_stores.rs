//! Delayed delivery on the stores (SQLite, MongoDB): how late a delayed message arrives when
//! 1,000 are published a second.
//!
//! ```text
//! cargo bench --bench delay_stores                 # 5 s of publishing per transport
//! cargo bench --bench delay_stores -- 10           # 10 s
//! KOMBU_BENCH_MONGODB_URL=mongodb://127.0.0.1:27204 cargo bench --bench delay_stores
//! ```
//!
//! One publisher sends a message every millisecond (when a publish takes longer, the next
//! follows at once: the rate achieved is reported) with a delay of 100 to 500 ms (by
//! message, so due times do not follow publish order), its body the time it is due (the
//! send time plus the delay, Unix nanoseconds). One consumer in the same process, prefetch
//! 100, acks each and records its lateness: the time it arrived minus the time it was due.
//! Rows: p50, p99 and the largest lateness, the messages lost (none expected) and the
//! publish rate achieved. SQLite in a fresh file in the temp directory; MongoDB in a fresh
//! database on the server at `KOMBU_BENCH_MONGODB_URL` (default `mongodb://127.0.0.1:27018`;
//! the row is left out when none answers).

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kombu::{Connection, Queue, StreamExt};

/// Publishes a second.
const RATE: u64 = 1_000;

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

/// The figures of one transport.
struct Row {
    sent: u64,
    received: u64,
    publish_rate: f64,
    lateness: Vec<Duration>,
}

async fn run(url: &str, seconds: u64) -> Row {
    let conn = Connection::open(url).await.expect("open");
    let queue = Queue::new(format!("delay_bench_{}", std::process::id()));
    conn.declare_queue(&queue).await.expect("declare");
    let n = RATE * seconds;

    let consumer_conn = conn.clone();
    let consumer_queue = queue.clone();
    let consumer = tokio::spawn(async move {
        let mut consumer = consumer_conn
            .consumer([consumer_queue])
            .prefetch(100)
            .build()
            .await
            .expect("consume");
        let mut lateness = Vec::with_capacity(n as usize);
        // Long enough for the last delay and a slow store; a guard, not a figure.
        let patience = Duration::from_secs(30);
        while (lateness.len() as u64) < n {
            let Ok(Some(delivery)) = tokio::time::timeout(patience, consumer.next()).await else {
                break;
            };
            let delivery = delivery.expect("a delivery");
            let arrived = unix_nanos();
            let due: u64 = delivery.decode().expect("a due time");
            lateness.push(Duration::from_nanos(arrived.saturating_sub(due)));
            delivery.ack().await.expect("ack");
        }
        lateness
    });

    let producer = conn.producer().routing_key(queue.name.clone());
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = std::time::Instant::now();
    for i in 0..n {
        tick.tick().await;
        let delay = Duration::from_millis(100 + (i * 37) % 400);
        let due = unix_nanos() + delay.as_nanos() as u64;
        producer
            .message(&due)
            .delay(delay)
            .send()
            .await
            .expect("publish delayed");
    }
    let publish_rate = support::rate(n, started.elapsed());
    let mut lateness = consumer.await.expect("the consumer task");
    lateness.sort_unstable();
    conn.delete_queue(&queue.name).await.expect("delete");
    Row {
        sent: n,
        received: lateness.len() as u64,
        publish_rate,
        lateness,
    }
}

async fn mongodb_server() -> Option<String> {
    let url = std::env::var("KOMBU_BENCH_MONGODB_URL")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27018".to_owned());
    let url = url.trim_end_matches('/').to_owned();
    let host = url.trim_start_matches("mongodb://");
    let reachable =
        std::net::TcpStream::connect_timeout(&host.parse().ok()?, Duration::from_millis(500))
            .is_ok();
    reachable.then_some(url)
}

fn print_row(name: &str, row: &Row) {
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    println!(
        "| {name} | {} | {} | {} | {} | {} | {} |",
        support::grouped(row.sent as f64),
        ms(support::percentile(&row.lateness, 0.5)),
        ms(support::percentile(&row.lateness, 0.99)),
        ms(row.lateness.last().copied().unwrap_or_default()),
        row.sent - row.received,
        support::grouped(row.publish_rate),
    );
}

fn main() {
    let seconds: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    kombu::install();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "delayed delivery, {} delayed messages/s for {seconds} s (delays 100-500 ms): lateness",
        RATE
    );
    println!("| transport | messages | p50 | p99 | max | lost | publish/s |");
    println!("|---|---|---|---|---|---|---|");
    rt.block_on(async {
        let path =
            std::env::temp_dir().join(format!("kombu-rs-bench-delay-{}.db", std::process::id()));
        let row = run(&format!("sqlite://{}", path.display()), seconds).await;
        print_row("sqlite", &row);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        match mongodb_server().await {
            Some(server) => {
                let database = format!("delay_bench_{}", std::process::id());
                let url = format!("{server}/{database}");
                let row = run(&url, seconds).await;
                print_row("mongodb", &row);
                if let Ok(client) = mongodb::Client::with_uri_str(&server).await {
                    let _ = client.database(&database).drop().await;
                }
            }
            None => println!("(mongodb: no server at KOMBU_BENCH_MONGODB_URL)"),
        }
    });
}
