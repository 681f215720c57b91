//! A worker with retries and a dead-letter queue: one job fails twice and then succeeds, on
//! its third attempt; another always fails and, once its retries are used up, ends in the
//! dead-letter queue `payments.dlq` with the error as its reason and the retry count.
//!
//! ```text
//! cargo run --example worker_retries
//! KOMBU_URL=amqp://guest:guest@127.0.0.1:5672// cargo run --example worker_retries
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kombu::worker::{Backoff, JobContext, JobError, RETRIES_HEADER, Worker};
use kombu::{Connection, Queue, StreamExt, dead_letter};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Payment {
    id: u32,
    /// How many attempts fail before one succeeds (`None`: every attempt fails).
    failures: Option<u32>,
}

const QUEUE: &str = "payments";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("KOMBU_URL").unwrap_or_else(|_| "memory://".to_owned());
    let conn = Connection::open(&url).await?;
    println!("connected to {}", conn.url());
    let dlq = dead_letter::dlq_name(QUEUE);
    for queue in [QUEUE, dlq.as_str()] {
        conn.declare_queue(&Queue::new(queue)).await?;
        conn.purge(queue).await?; // a clean start on a broker an earlier run used
    }

    let attempts: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    let seen = attempts.clone();
    let worker = Worker::builder(&conn)
        .max_retries(2) // three attempts in all
        .backoff(Backoff::exponential(
            Duration::from_millis(100),
            Duration::from_secs(1),
        ))
        .handle(QUEUE, move |payment: Payment, ctx: JobContext| {
            let attempts = seen.clone();
            async move {
                let attempt = {
                    let mut attempts = attempts
                        .lock()
                        .map_err(|_| JobError::retry("lock poisoned"))?;
                    let n = attempts.entry(payment.id).or_default();
                    *n += 1;
                    *n
                };
                println!(
                    "payment {}: attempt {attempt} (retries so far: {})",
                    payment.id,
                    ctx.retries()
                );
                match payment.failures {
                    Some(failures) if attempt > failures => {
                        println!("payment {}: done", payment.id);
                        Ok(())
                    }
                    _ => Err(JobError::retry(format!(
                        "card declined for payment {}",
                        payment.id
                    ))),
                }
            }
        })
        .build()?;
    let handle = worker.handle();
    let running = tokio::spawn(worker.run());

    let producer = conn.producer().routing_key(QUEUE);
    producer
        .publish(&Payment {
            id: 1,
            failures: Some(2),
        })
        .await?;
    producer
        .publish(&Payment {
            id: 2,
            failures: None,
        })
        .await?;

    // The dead letter: payment 2, after its last attempt.
    let mut dead = conn.consumer([Queue::new(dlq.clone())]).build().await?;
    let letter = tokio::time::timeout(Duration::from_secs(30), dead.next())
        .await
        .map_err(|_| "no dead letter within 30 s")?
        .ok_or("the dead-letter consumer ended")??;
    let payment: Payment = letter.decode()?;
    let header = |name: &str| letter.headers().get(name).cloned();
    println!(
        "dead-lettered to {dlq}: payment {} after {:?} retries, reason: {:?}",
        payment.id,
        header(RETRIES_HEADER),
        header(dead_letter::REASON),
    );
    letter.ack().await?;
    dead.close().await?;

    // Payment 1 is done too by now, or shortly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while handle.stats().handled < 1 {
        if tokio::time::Instant::now() > deadline {
            return Err("payment 1 was not done within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.stop();
    running.await??;
    let stats = handle.stats();
    println!(
        "handled {}, failed attempts {}, retried {}, dead-lettered {}",
        stats.handled, stats.failed, stats.retried, stats.dead_lettered
    );
    for queue in [QUEUE, dlq.as_str()] {
        conn.delete_queue(queue).await?;
    }
    Ok(())
}
