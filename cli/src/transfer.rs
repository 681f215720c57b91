//! `kombu move`: at-least-once transfer of a queue's messages between two brokers.
//!
//! Messages are taken (not acked) in chunks, published to the destination as they are (body
//! bytes, content type and encoding, headers, properties), and acked on the source only once
//! the destination publish returned. A failure puts the taken messages back on the source; a
//! crash leaves them leased on the source, to return when the lease passes. Duplicates are
//! possible, loss is not.
//!
//! A recoverable failure (a broker restarting on either side) puts the messages in hand back
//! and tries the chunk again with back-off; an ack the source can no longer apply (the
//! connection it was taken on was lost) is a warning, that message is moved again. SIGINT and
//! SIGTERM stop the move between two chunks.

use anyhow::anyhow;
use kombu::transport::Outgoing;
use kombu::{Delivery, ErrorKind, Queue};

use crate::Outcome;
use crate::cli::{Global, MoveArgs};
use crate::common::{self, Ctx as _};
use crate::consume::stopped_by;
use crate::lifecycle::{self, Backoff, Signals};

/// Messages taken, published and acked per round.
const CHUNK: u64 = 200;

pub async fn run(_global: &Global, args: MoveArgs) -> anyhow::Result<Outcome> {
    // From here on SIGINT and SIGTERM stop the move between two chunks (a second one exits at
    // once).
    let signals = Signals::install();
    let from = common::mask(&args.from);
    let to = common::mask(&args.to);
    let queue = args.queue.clone();
    let exchange = args.to_exchange.clone().unwrap_or_default();
    // Without an exchange, the destination queue of the same name (or --to-routing-key).
    let fixed_key = match (&args.to_exchange, &args.to_routing_key) {
        (_, Some(key)) => Some(key.clone()),
        (None, None) => Some(queue.clone()),
        (Some(_), None) => None,
    };
    if args.from == args.to && exchange.is_empty() && fixed_key.as_deref() == Some(&queue) {
        return Err(anyhow!(
            "--from and --to are the same broker and the messages would go back to queue \
             {queue:?}; give another --to URL, --to-exchange or --to-routing-key"
        ));
    }
    let source = common::connect_via(&args.from, "--from").await?;
    lifecycle::report_link(&source, "source: ");
    // Before anything is created on the destination: a typo moves nothing and says so.
    common::require_queue(&source, &queue, &from, "check the name and the --from URL").await?;
    let destination = common::connect_via(&args.to, "--to").await?;
    lifecycle::report_link(&destination, "destination: ");
    if exchange.is_empty()
        && let Some(key) = &fixed_key
    {
        common::declare_queue_lenient(&destination, &Queue::new(key.clone()))
            .await
            .ctx(format!("cannot declare queue {key:?} on {to}"))?;
    }
    let ready = source
        .queue_size(&queue)
        .await
        .ctx(format!("cannot read queue {queue:?} on {from}"))?;
    let expected = args.count.map_or(ready, |c| c.min(ready));
    let bar = common::progress(Some(expected), "moving");
    let mandatory = destination.capabilities().mandatory;
    let taker = source
        .channel()
        .await
        .ctx(format!("cannot open a channel on {from}"))?;
    let sender = destination.default_channel().clone();
    let target = if exchange.is_empty() {
        format!("queue {:?}", fixed_key.as_deref().unwrap_or(&queue))
    } else {
        format!("exchange {exchange:?}")
    };

    let mut moved = 0u64;
    let mut outcome = Outcome::Done;
    let mut backoff = Backoff::new();
    let taking = format!("cannot take a message from queue {queue:?} on {from}");
    loop {
        if let Some(signal) = signals.received() {
            outcome = stopped_by(signal);
            break;
        }
        let want = match args.count {
            Some(c) if moved >= c => break,
            Some(c) => (c - moved).min(CHUNK),
            None => CHUNK,
        };
        let mut taken: Vec<Delivery> = Vec::new();
        let mut failed = None;
        while (taken.len() as u64) < want {
            match taker.get(&queue, false).await {
                Ok(Some(d)) => taken.push(d),
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            put_back(taken, &mut backoff, &from).await;
            if backoff.retry(&e, &taking).await {
                continue;
            }
            return Err::<(), _>(e).ctx(taking).map(|()| outcome);
        }
        if taken.is_empty() {
            break;
        }
        let batch: Vec<Outgoing> = taken
            .iter()
            .map(|d| {
                Outgoing::new(
                    exchange.clone(),
                    fixed_key
                        .clone()
                        .unwrap_or_else(|| d.routing_key().to_owned()),
                    d.message().clone(),
                )
                .mandatory(mandatory)
            })
            .collect();
        let n = taken.len() as u64;
        let publishing = format!(
            "cannot publish to {target} on {to} ({moved} moved so far; the {n} in hand went back \
             to the source)"
        );
        if let Err(e) = sender.publish_batch(batch).await {
            put_back(taken, &mut backoff, &from).await;
            // A publish whose outcome is unknown may be on the destination already: trying
            // again may move those messages twice, never lose them.
            if backoff.retry(&e, &publishing).await {
                continue;
            }
            return Err::<(), _>(e).ctx(publishing).map(|()| outcome);
        }
        let acking = format!(
            "the destination has the messages but acking them on {from} failed: they may be \
             moved twice"
        );
        let mut stale = 0u64;
        for d in taken {
            match d.ack().await {
                Ok(()) => {}
                // The source gives it again (its connection was lost): moved twice, not lost.
                Err(e)
                    if e.error.kind() == ErrorKind::StaleDelivery || e.error.is_recoverable() =>
                {
                    stale += 1;
                }
                Err(e) => return Err::<(), _>(e).ctx(acking).map(|()| outcome),
            }
        }
        if stale > 0 {
            eprintln!(
                "warning: {stale} message{} on the destination could not be acked on {from} \
                 (the connection they were taken on was lost): the source delivers them again, \
                 and they will be moved twice",
                if stale == 1 { "" } else { "s" }
            );
        }
        backoff.reset();
        moved += n;
        bar.set_position(moved.min(expected));
    }
    bar.finish_and_clear();
    let _ = taker.close().await;
    let stopped = if outcome == Outcome::Done && signals.received().is_none() {
        ""
    } else {
        " (stopped by a signal)"
    };
    println!(
        "moved {moved} message{} from queue {queue:?} on {from} to {target} on {to}{stopped}",
        if moved == 1 { "" } else { "s" }
    );
    Ok(outcome)
}

/// Returns taken messages to the source before the move goes on, so none is left leased
/// behind it: a requeue that fails for a recoverable reason (the source is reconnecting) is
/// tried again under `backoff`. What still cannot be put back (the backoff ran out, or its
/// lease is gone: the source has it back already) is dropped, which asks once more, and
/// otherwise returns when its lease ends.
async fn put_back(taken: Vec<Delivery>, backoff: &mut Backoff, from: &str) {
    let what = format!("cannot put a taken message back on {from}");
    for mut delivery in taken {
        loop {
            match delivery.requeue().await {
                Ok(()) => break,
                Err(e)
                    if e.error.kind() != ErrorKind::StaleDelivery
                        && backoff.retry(&e.error, &what).await =>
                {
                    delivery = e.into_delivery();
                }
                Err(_) => break,
            }
        }
    }
}
