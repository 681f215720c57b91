//! The cost of publish retries: publishes one by one with the producer's default retry policy
//! against the same producer with `retry(false)`, on the memory transport and on Redis
//! (127.0.0.1:6379, `KOMBU_BENCH_REDIS_URL` to change), in alternating rounds of the same run.
//!
//! ```text
//! cargo bench --bench retry                  # 20,000 publishes per round
//! cargo bench --bench retry -- 5000          # fewer
//! ```
//!
//! With retries on, each publish clones its prepared message once (the copy a retry would
//! send) and runs inside the policy's loop; nothing else differs. Prints publishes per second,
//! the median of five rounds per side, and the ratio on / off.

use std::time::Instant;

use kombu::{Connection, Producer, Queue};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUNDS: usize = 5;

async fn round(producer: &Producer, conn: &Connection, n: u64) -> f64 {
    let started = Instant::now();
    for id in 0..n {
        producer.publish(&id).await.expect("publish");
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    conn.purge("retry_bench").await.expect("purge");
    rate
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn compare(name: &str, url: &str, n: u64) {
    let conn = match Connection::open(url).await {
        Ok(conn) => conn,
        Err(e) => {
            println!("{name:<8} skipped: {e}");
            return;
        }
    };
    conn.declare_queue(&Queue::new("retry_bench"))
        .await
        .expect("declare");
    let on = conn.producer().routing_key("retry_bench");
    let off = on.clone().retry(false);
    // Warm up both.
    round(&on, &conn, n / 10).await;
    round(&off, &conn, n / 10).await;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        with.push(round(&on, &conn, n).await);
        without.push(round(&off, &conn, n).await);
    }
    let (with, without) = (median(with), median(without));
    println!(
        "{name:<8} retry on {with:>10.0}/s   retry off {without:>10.0}/s   on/off {:.3}",
        with / without
    );
    let _ = conn.delete_queue("retry_bench").await;
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let redis = std::env::var("KOMBU_BENCH_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let prefix = uuid::Uuid::new_v4().simple();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        println!("{n} publishes one by one per round, median of {ROUNDS} alternating rounds");
        compare("memory", "memory://retry-bench", n).await;
        compare(
            "redis",
            &format!("{redis}?global_keyprefix=retry-bench-{prefix}:"),
            n,
        )
        .await;
    });
}
