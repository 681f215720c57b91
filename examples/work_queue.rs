//! Competing workers: two workers share one queue, and each of the jobs published to it is
//! done exactly once, by one of them.
//!
//! ```text
//! cargo run --example work_queue
//! KOMBU_URL=redis://127.0.0.1:6379/0 cargo run --example work_queue
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kombu::worker::{JobContext, JobError, Worker};
use kombu::{Connection, Queue};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Job {
    id: u32,
}

const JOBS: u32 = 20;
const QUEUE: &str = "work-queue-example";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("KOMBU_URL").unwrap_or_else(|_| "memory://".to_owned());
    let conn = Connection::open(&url).await?;
    println!("connected to {}", conn.url());
    conn.declare_queue(&Queue::new(QUEUE)).await?;
    conn.purge(QUEUE).await?; // a clean start on a broker an earlier run used

    // Who did which job.
    let done: Arc<Mutex<HashMap<u32, Vec<&'static str>>>> = Arc::default();
    let mut workers = Vec::new();
    for name in ["worker-a", "worker-b"] {
        // Each worker has its own connection, as two processes would.
        let own = Connection::open(&url).await?;
        let done = done.clone();
        let worker = Worker::builder(&own)
            .concurrency(2)
            .handle(QUEUE, move |job: Job, _ctx: JobContext| {
                let done = done.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(20)).await; // the work
                    let mut done = done.lock().map_err(|_| JobError::retry("lock poisoned"))?;
                    done.entry(job.id).or_default().push(name);
                    Ok(())
                }
            })
            .build()?;
        let handle = worker.handle();
        workers.push((name, handle, tokio::spawn(worker.run())));
    }

    let producer = conn.producer().routing_key(QUEUE);
    for id in 0..JOBS {
        producer.publish(&Job { id }).await?;
    }
    println!("published {JOBS} jobs");

    // Wait until every job is done (at most 30 s), then stop both workers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while workers
        .iter()
        .map(|(_, h, _)| h.stats().handled)
        .sum::<u64>()
        < u64::from(JOBS)
    {
        if tokio::time::Instant::now() > deadline {
            return Err("the jobs were not done within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (name, handle, running) in workers {
        handle.stop();
        running.await??;
        println!("{name} did {} jobs", handle.stats().handled);
    }

    let done = done.lock().map_err(|_| "lock poisoned")?.clone();
    let once = (0..JOBS).all(|id| done.get(&id).is_some_and(|by| by.len() == 1));
    println!("every job done exactly once: {once}");
    if !once {
        return Err(format!("jobs done: {done:?}").into());
    }
    conn.delete_queue(QUEUE).await?;
    Ok(())
}
