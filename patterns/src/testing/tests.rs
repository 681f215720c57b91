//! The recorder on the memory transport: publishes, deliveries and each settlement recorded;
//! waits under paused time.

use std::time::Duration;

use futures::StreamExt;
use kombu_core::{Connection, Error, ErrorKind, Exchange, Queue, Result};
use serde::{Deserialize, Serialize};

use super::{Recorder, Settlement};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u32,
}

fn fail(what: impl Into<String>) -> Error {
    Error::new(ErrorKind::Protocol, what)
}

/// `Ok` when `cond` holds, else an error saying `what` (tests here return `Result`).
fn check(cond: bool, what: impl Into<String>) -> Result<()> {
    if cond { Ok(()) } else { Err(fail(what)) }
}

async fn next(consumer: &mut kombu_core::Consumer) -> Result<kombu_core::Delivery> {
    match consumer.next().await {
        Some(Ok(delivery)) => Ok(delivery),
        Some(Err(e)) => Err(e.error),
        None => Err(fail("the consumer stream ended")),
    }
}

#[tokio::test]
async fn records_every_publish_with_where_it_went() -> Result<()> {
    let rec = Recorder::new();
    let conn = rec.connect().await?;
    let orders = Exchange::topic("orders");
    conn.declare_queue(
        &Queue::new("eu")
            .exchange(orders.clone())
            .routing_key("order.eu.*"),
    )
    .await?;
    conn.producer()
        .exchange(orders.clone())
        .message(&Order { id: 1 })
        .routing_key("order.eu.fr")
        .header("country", "fr")
        .send()
        .await?;
    conn.producer()
        .routing_key("audit")
        .publish(&"plain")
        .await?;
    let batch = [Order { id: 2 }, Order { id: 3 }];
    let producer = conn.producer().exchange(orders);
    let outgoing = batch
        .iter()
        .map(|o| producer.message(o).routing_key("order.us.ny").build())
        .collect::<Result<Vec<_>>>()?;
    producer.send_batch(outgoing).await?;

    let all = rec.published();
    check(
        all.len() == 4,
        format!("4 publishes recorded, not {}", all.len()),
    )?;
    let Some(first) = all.first() else {
        return Err(fail("nothing recorded"));
    };
    check(
        first.exchange == "orders" && first.routing_key == "order.eu.fr",
        format!("{first:?}"),
    )?;
    check(first.header_str("country") == Some("fr"), "the header")?;
    check(
        first.content_type() == Some("application/json"),
        "the content type",
    )?;
    check(first.decode::<Order>()? == Order { id: 1 }, "the body")?;

    check(rec.published_to("audit").len() == 1, "one to audit")?;
    check(rec.published_on("orders").len() == 3, "three on orders")?;
    check(
        rec.published_on("").len() == 1,
        "one on the default exchange",
    )?;
    let us: Vec<Order> = rec.published_values("order.us.ny")?;
    check(us == batch, format!("the batch decoded: {us:?}"))?;
    rec.assert_published("order.us.ny", &Order { id: 3 })?;

    let missing = rec.assert_published("order.us.ny", &Order { id: 9 });
    let Err(error) = missing else {
        return Err(fail("an order never published was found"));
    };
    check(error.kind() == ErrorKind::NotFound, format!("{error}"))?;
    check(
        error.to_string().contains("Order { id: 2 }"),
        format!("the error lists what was published: {error}"),
    )?;
    // The consumer-side copy is untouched by recording: both orders.us messages are unrouted
    // (no queue binds order.us.*), the eu one waits.
    check(
        conn.queue_size("eu").await? == 1,
        "the broker routed as usual",
    )
}

#[tokio::test]
async fn records_deliveries_and_how_each_was_settled() -> Result<()> {
    let rec = Recorder::new();
    let conn = rec.connect().await?;
    let mut consumer = conn
        .consumer([Queue::new("jobs")])
        .prefetch(10)
        .build()
        .await?;
    let producer = conn.producer().routing_key("jobs");
    for id in 1..=3 {
        producer.publish(&Order { id }).await?;
    }
    next(&mut consumer).await?.ack().await?;
    next(&mut consumer).await?.requeue().await?;
    let third = next(&mut consumer).await?;
    check(
        third.decode::<Order>()? == Order { id: 3 },
        "the third order",
    )?;
    third.reject().await?;
    let again = next(&mut consumer).await?;
    check(again.redelivered(), "the requeued one comes back marked")?;
    let pending = rec.consumed_from("jobs");
    check(
        pending.last().map(|c| &c.settlement) == Some(&Settlement::Pending),
        "an unsettled delivery is pending",
    )?;
    again.ack().await?;

    let seen: Vec<(u32, Settlement, bool)> = rec
        .consumed()
        .iter()
        .map(|c| {
            Ok((
                c.decode::<Order>()?.id,
                c.settlement.clone(),
                c.info.redelivered,
            ))
        })
        .collect::<Result<_>>()?;
    let expected = vec![
        (1, Settlement::Acked, false),
        (2, Settlement::Requeued, false),
        (3, Settlement::Rejected, false),
        (2, Settlement::Acked, true),
    ];
    check(seen == expected, format!("{seen:?}"))?;
    consumer.close().await
}

#[tokio::test]
async fn a_dropped_delivery_is_recorded_as_requeued_and_comes_back() -> Result<()> {
    let rec = Recorder::new();
    let conn = rec.connect().await?;
    let mut consumer = conn.consumer([Queue::new("drops")]).build().await?;
    conn.producer().routing_key("drops").publish(&1).await?;
    drop(next(&mut consumer).await?);
    let dropped = rec.wait_settled("drops", Duration::from_secs(5)).await?;
    check(
        dropped.settlement == Settlement::Requeued,
        format!("{dropped:?}"),
    )?;
    let again = next(&mut consumer).await?;
    check(again.redelivered(), "redelivered")?;
    again.ack().await?;
    consumer.close().await
}

#[tokio::test]
async fn dead_letters_are_recorded_as_such() -> Result<()> {
    let rec = Recorder::new();
    let conn = rec.connect().await?;
    // A reject on a queue with a dead-letter exchange dead-letters.
    let dlx = Exchange::fanout("dead");
    conn.declare_queue(&Queue::new("dead-letters").exchange(dlx.clone()))
        .await?;
    let with_dlx = Queue::new("payments").dead_letter_exchange("dead");
    let mut consumer = conn.consumer([with_dlx]).build().await?;
    conn.producer()
        .routing_key("payments")
        .publish(&Order { id: 7 })
        .await?;
    next(&mut consumer).await?.reject().await?;
    let rejected = rec.wait_settled("payments", Duration::from_secs(5)).await?;
    check(
        rejected.settlement
            == Settlement::DeadLettered {
                reason: "rejected".into(),
            },
        format!("{rejected:?}"),
    )?;
    check(
        conn.queue_size("dead-letters").await? == 1,
        "the broker dead-lettered it",
    )?;
    consumer.close().await?;

    // A message the consumer refuses goes to <queue>.dlq through its error policy.
    let mut picky = conn
        .consumer([Queue::new("strict")])
        .accept(["json"])
        .build()
        .await?;
    conn.producer()
        .routing_key("strict")
        .serializer("yaml")
        .publish(&"not json")
        .await?;
    match picky.next().await {
        Some(Err(refused)) => {
            picky.handle(refused).await?;
        }
        other => return Err(fail(format!("expected a refused delivery, got {other:?}"))),
    }
    let refused = rec.wait_settled("strict", Duration::from_secs(5)).await?;
    let Settlement::DeadLettered { reason } = &refused.settlement else {
        return Err(fail(format!("{refused:?}")));
    };
    check(
        reason.contains("accept"),
        format!("the consumer's reason: {reason}"),
    )?;
    let copy = rec
        .wait_published("strict.dlq", Duration::from_secs(5))
        .await?;
    check(
        copy.dead_letter_reason() == Some(reason.as_str()),
        format!("{copy:?}"),
    )?;
    picky.close().await
}

#[tokio::test]
async fn no_ack_and_get_deliveries_are_recorded() -> Result<()> {
    let rec = Recorder::new();
    let conn = rec.connect().await?;
    conn.declare_queue(&Queue::new("fire")).await?;
    conn.producer().routing_key("fire").publish(&1).await?;
    conn.producer().routing_key("fire").publish(&2).await?;
    let channel = conn.channel().await?;
    let Some(got) = channel.get("fire", false).await? else {
        return Err(fail("get found nothing"));
    };
    got.ack().await?;
    let mut forget = conn
        .consumer([Queue::new("fire")])
        .no_ack(true)
        .build()
        .await?;
    let taken = next(&mut forget).await?;
    check(taken.is_no_ack(), "no-ack")?;
    let settlements: Vec<Settlement> = rec.consumed().into_iter().map(|c| c.settlement).collect();
    check(
        settlements == [Settlement::Acked, Settlement::NoAck],
        format!("{settlements:?}"),
    )?;
    forget.close().await?;
    channel.close().await
}

/// Under paused time a wait that nothing satisfies ends at its tokio deadline at once, and a
/// wait for something that comes later (in tokio time) gets it.
#[tokio::test(start_paused = true)]
async fn waits_follow_tokio_time() -> Result<()> {
    let rec = Recorder::new();
    let conn = rec.connect().await?;
    let started = tokio::time::Instant::now();
    let real = std::time::Instant::now();
    let nothing = rec.next_published(Duration::from_secs(3600)).await;
    let Err(error) = nothing else {
        return Err(fail("a publish came from nowhere"));
    };
    check(error.kind() == ErrorKind::Timeout, format!("{error}"))?;
    check(
        started.elapsed() >= Duration::from_secs(3600),
        "the wait lasted its hour of tokio time",
    )?;
    check(
        real.elapsed() < Duration::from_secs(60),
        format!(
            "an hour of paused time took {:?} of real time",
            real.elapsed()
        ),
    )?;

    let later = conn.clone();
    let publisher = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        later
            .producer()
            .routing_key("late")
            .publish(&Order { id: 5 })
            .await
    });
    let since = tokio::time::Instant::now();
    let late = rec.wait_published("late", Duration::from_secs(60)).await?;
    check(late.decode::<Order>()? == Order { id: 5 }, "the late order")?;
    let waited = since.elapsed();
    check(
        waited >= Duration::from_secs(30) && waited < Duration::from_secs(60),
        format!("woke when it came, after {waited:?} of tokio time"),
    )?;
    publisher
        .await
        .map_err(|e| fail(format!("the publisher task: {e}")))??;

    // A wait returns each publish once.
    let again = rec.next_published(Duration::from_secs(1)).await;
    check(again.is_err(), "the late order was returned already")
}

#[tokio::test]
async fn await_message_takes_from_the_broker_unrecorded() -> Result<()> {
    let rec = Recorder::new();
    let service = rec.connect().await?;
    let waiter = {
        let rec = rec.clone();
        tokio::spawn(async move { rec.await_message("replies", Duration::from_secs(10)).await })
    };
    tokio::task::yield_now().await;
    service.declare_queue(&Queue::new("replies")).await?;
    service
        .producer()
        .routing_key("replies")
        .publish(&Order { id: 8 })
        .await?;
    let delivery = waiter
        .await
        .map_err(|e| fail(format!("the waiting task: {e}")))??;
    check(delivery.decode::<Order>()? == Order { id: 8 }, "the reply")?;
    delivery.ack().await?;
    check(
        rec.consumed().is_empty(),
        "the test's own take is not recorded",
    )?;

    // The test's inputs through broker_url() are not recorded either.
    let input = Connection::open(&rec.broker_url()).await?;
    input.producer().routing_key("replies").publish(&1).await?;
    check(rec.published().len() == 1, "only the service's publish")?;
    check(service.queue_size("replies").await? == 1, "same broker")
}

#[tokio::test]
async fn clear_forgets_and_named_recorders_share() -> Result<()> {
    let name = format!("kombu-record-test-{}", uuid::Uuid::new_v4().simple());
    let rec = Recorder::named(&name);
    let other = Recorder::named(&name);
    check(rec.url() == format!("memory+record://{name}"), rec.url())?;
    let conn = other.connect().await?;
    conn.producer().routing_key("q").publish(&1).await?;
    check(rec.published().len() == 1, "one log per name")?;
    let mut consumer = conn.consumer([Queue::new("q")]).build().await?;
    conn.producer().routing_key("q").publish(&2).await?;
    let before_clear = next(&mut consumer).await?;
    rec.clear();
    check(
        rec.published().is_empty() && rec.consumed().is_empty(),
        "cleared",
    )?;
    // Settling a delivery from before the clear records nothing new.
    before_clear.ack().await?;
    check(
        rec.consumed().is_empty(),
        "nothing recorded for an older delivery",
    )?;
    conn.producer().routing_key("q").publish(&3).await?;
    let after = rec.next_published(Duration::from_secs(1)).await?;
    check(
        after.decode::<i32>()? == 3,
        "the wait starts over after a clear",
    )?;
    consumer.close().await
}

#[tokio::test]
async fn a_service_on_its_url_with_a_visibility_timeout() -> Result<()> {
    let rec = Recorder::new();
    let conn = Connection::open(&format!("{}?visibility_timeout=30", rec.url())).await?;
    let capabilities = conn.capabilities();
    check(
        capabilities.visibility_timeout,
        "the memory transport's capabilities",
    )?;
    let mut consumer = conn.consumer([Queue::new("slow")]).build().await?;
    conn.producer().routing_key("slow").publish(&1).await?;
    let delivery = next(&mut consumer).await?;
    delivery.extend_lease().await?;
    delivery.ack().await?;
    check(
        rec.consumed().first().map(|c| &c.settlement) == Some(&Settlement::Acked),
        "acked after extending",
    )?;
    consumer.close().await
}

/// The consumer's `ErrorAction::Requeue` publishes a refused message back (then acks it):
/// recorded as requeued; past the limit it is dead-lettered.
#[tokio::test]
async fn a_message_published_back_by_the_error_policy_is_requeued() -> Result<()> {
    let rec = Recorder::new();
    let conn = rec.connect().await?;
    let mut consumer = conn
        .consumer([Queue::new("picky")])
        .accept(["json"])
        .error_action(kombu_core::ErrorAction::Requeue)
        .max_redeliveries(1)
        .build()
        .await?;
    conn.producer()
        .routing_key("picky")
        .serializer("yaml")
        .publish(&"yaml, not json")
        .await?;
    for _ in 0..2 {
        match consumer.next().await {
            Some(Err(refused)) => {
                consumer.handle(refused).await?;
            }
            other => return Err(fail(format!("expected a refused delivery, got {other:?}"))),
        }
    }
    let settlements: Vec<Settlement> = rec
        .consumed_from("picky")
        .into_iter()
        .map(|c| c.settlement)
        .collect();
    let [first, second] = settlements.as_slice() else {
        return Err(fail(format!("two deliveries, not {settlements:?}")));
    };
    check(*first == Settlement::Requeued, format!("{settlements:?}"))?;
    check(
        matches!(second, Settlement::DeadLettered { .. }),
        format!("{settlements:?}"),
    )?;
    consumer.close().await
}

/// A delayed publish is recorded with its delay when the broker takes it; the memory broker
/// holds it by tokio's clock, so a paused test sees it delivered when due.
#[tokio::test(start_paused = true)]
async fn a_delayed_publish_is_recorded_with_its_delay() -> Result<()> {
    let rec = Recorder::new();
    let conn = rec.connect().await?;
    let mut consumer = conn.consumer([Queue::new("later")]).build().await?;
    conn.producer()
        .routing_key("later")
        .message(&Order { id: 4 })
        .delay(Duration::from_secs(90))
        .send()
        .await?;
    let published = rec.next_published(Duration::from_secs(1)).await?;
    check(
        published.delay == Some(Duration::from_secs(90)),
        format!("{published:?}"),
    )?;
    let early = rec.wait_settled("later", Duration::from_secs(60)).await;
    check(early.is_err(), "nothing delivered before it is due")?;
    let started = tokio::time::Instant::now();
    let delivery = next(&mut consumer).await?;
    check(delivery.decode::<Order>()? == Order { id: 4 }, "the order")?;
    delivery.ack().await?;
    let handled = rec.wait_settled("later", Duration::from_secs(1)).await?;
    check(
        handled.settlement == Settlement::Acked,
        format!("{handled:?}"),
    )?;
    check(
        (Duration::from_secs(29)..=Duration::from_secs(31)).contains(&started.elapsed()),
        "delivered when due (90 s after the publish)",
    )?;
    consumer.close().await
}
