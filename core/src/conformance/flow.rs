//! Flow: several consumers, several producers, batches and several queues per consumer, each
//! message once.

use std::collections::{BTreeSet, HashSet};

use futures::StreamExt;
use tokio::time::timeout;

use super::Ctx;
use super::fixtures::*;
use crate::Queue;
use crate::error::{Error, Result};

/// Competing consumers: two consumers on separate connections share one queue; of 200
/// messages each gets distinct ones and together they get all, none twice.
pub async fn competing_consumers(ctx: Ctx) -> Result<()> {
    let conn_a = open(&ctx).await?;
    let conn_b = ctx.connect().await?;
    let conn_p = ctx.connect().await?;
    let q = Queue::new(ctx.name("q"));
    let mut a = conn_a.consumer([q.clone()]).prefetch(10).build().await?;
    let mut b = conn_b.consumer([q.clone()]).prefetch(10).build().await?;
    let producer = conn_p.producer().routing_key(q.name.clone());
    publish_all(&producer, 0..200u32).await?;
    let mut seen: [BTreeSet<u32>; 2] = [BTreeSet::new(), BTreeSet::new()];
    {
        let mut both = futures::stream::select(
            a.by_ref().map(|item| (0usize, item)),
            b.by_ref().map(|item| (1usize, item)),
        );
        for _ in 0..200 {
            let (who, item) = match timeout(ctx.patience, both.next()).await {
                Ok(Some(x)) => x,
                Ok(None) => panic!("consumers ended"),
                Err(_) => panic!(
                    "only {} of 200 messages within {:?}",
                    seen[0].len() + seen[1].len(),
                    ctx.patience
                ),
            };
            let d = item.map_err(Error::from)?;
            let n = d.decode::<u32>()?;
            assert!(
                !seen[0].contains(&n) && !seen[1].contains(&n),
                "message {n} delivered twice"
            );
            seen[who].insert(n);
            d.ack().await?;
        }
    }
    assert_quiet(&mut a, QUIET, "no duplicates for a").await;
    assert_quiet(&mut b, QUIET, "no duplicates for b").await;
    let all: BTreeSet<u32> = seen[0].union(&seen[1]).copied().collect();
    assert_eq!(all, (0..200).collect::<BTreeSet<u32>>());
    Ok(())
}

/// Concurrent producers: 10 tasks (half sharing one connection, half with their own) publish
/// 100 messages each at the same time while a consumer runs; all 1,000 arrive exactly once.
pub async fn concurrent_producers(ctx: Ctx) -> Result<()> {
    let (conn, q) = scenario_queue(&ctx).await?;
    let mut consumer = conn.consumer([q.clone()]).prefetch(50).build().await?;
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..10u32 {
        let ctx = ctx.clone();
        let shared = conn.clone();
        let queue = q.name.clone();
        tasks.spawn(async move {
            let conn = if p % 2 == 0 {
                ctx.connect().await?
            } else {
                shared
            };
            let producer = conn.producer().routing_key(queue);
            for n in 0..100u32 {
                producer.publish(&[p, n]).await?;
            }
            Ok::<(), Error>(())
        });
    }
    let mut seen = HashSet::new();
    for _ in 0..1000 {
        let d = next_delivery(&mut consumer, ctx.patience).await;
        let pn: [u32; 2] = d.decode()?;
        assert!(seen.insert(pn), "message {pn:?} delivered twice");
        d.ack().await?;
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("a producer task panicked")?; // ok: a conformance assertion
    }
    assert_quiet(&mut consumer, QUIET, "exactly 1,000").await;
    for p in 0..10u32 {
        for n in 0..100u32 {
            assert!(seen.contains(&[p, n]), "message {p}/{n} missing");
        }
    }
    Ok(())
}

/// Batch publish: [`Producer::publish_batch`](crate::Producer::publish_batch) of 500 values
/// delivers all of them, once each, in publish order (one producer, one consumer: FIFO).
pub async fn batch_fifo(ctx: Ctx) -> Result<()> {
    let (conn, q) = scenario_queue(&ctx).await?;
    let mut consumer = conn.consumer([q.clone()]).build().await?;
    let values: Vec<u32> = (0..500).collect();
    conn.producer()
        .routing_key(q.name.clone())
        .publish_batch(values.iter())
        .await?;
    let mut got = Vec::with_capacity(values.len());
    for _ in 0..values.len() {
        let d = next_delivery(&mut consumer, ctx.patience).await;
        got.push(d.decode::<u32>()?);
        d.ack().await?;
    }
    assert_eq!(got, values, "batch messages arrive once each, in order");
    assert_quiet(&mut consumer, QUIET, "exactly 500").await;
    Ok(())
}

/// One consumer of several queues receives from all of them, each delivery naming the queue it
/// came from, and a busy queue does not starve the others.
pub async fn multi_queue_consumer(ctx: Ctx) -> Result<()> {
    let conn = open(&ctx).await?;
    let busy = Queue::new(ctx.name("busy"));
    let quiet = Queue::new(ctx.name("quiet"));
    conn.declare_queue(&busy).await?;
    conn.declare_queue(&quiet).await?;
    for i in 0..50u32 {
        conn.producer()
            .routing_key(busy.name.clone())
            .publish(&format!("busy-{i}"))
            .await?;
    }
    conn.producer()
        .routing_key(quiet.name.clone())
        .publish(&"quiet-0")
        .await?;
    let mut consumer = conn
        .consumer([busy.clone(), quiet.clone()])
        .prefetch(1)
        .build()
        .await?;
    let mut seen = Vec::new();
    for _ in 0..51 {
        let d = next_delivery(&mut consumer, ctx.patience).await;
        let body = d.decode::<String>()?;
        let expected_queue = if body.starts_with("busy") {
            &busy.name
        } else {
            &quiet.name
        };
        assert_eq!(&d.info().queue, expected_queue, "{body} names its queue");
        seen.push(body);
        d.ack().await?;
    }
    let position = seen
        .iter()
        .position(|b| b == "quiet-0")
        .expect("the quiet queue's message arrived"); // ok: a conformance assertion
    assert!(
        position < 50,
        "the quiet queue waited for the busy one to drain (position {position})"
    );
    assert_quiet(&mut consumer, QUIET, "each message once").await;
    Ok(())
}
