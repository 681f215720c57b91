//! AMQP transport throughput against bare lapin doing the same work (the ceiling) and against
//! Python kombu on py-amqp (`../shared/bench/kombu_baseline.py --only amqp`, without confirms,
//! and `benches/python/kombu_confirmed_publish.py` with them; medians of 3 runs each), in the
//! same run, on RabbitMQ at 127.0.0.1:5672 (`KOMBU_BENCH_AMQP_URL` to change).
//!
//! ```text
//! cargo bench --bench amqp                  # 20,000 messages per row
//! cargo bench --bench amqp -- 5000          # fewer
//! ```
//!
//! Messages are kombu's benchmark body, `{"id": N, "payload": "x" * 64}` as JSON, persistent,
//! to a durable queue through a direct exchange, as Python's baseline does. Bare lapin does the
//! same work: it encodes each body with serde_json, sets the same properties (content type,
//! encoding, delivery mode 2), and on consume decodes each body and acks it. Every row runs on
//! a fresh queue. Rows:
//! - publish with confirms, one by one: each publish waits for its confirm;
//! - publish with confirms, batches of 100: a batch is published, then its confirms awaited
//!   (kombu-rs queues a batch's frames before waiting for any write);
//! - publish without confirms, one by one (what Python kombu does by default);
//! - consume + ack, prefetch 100: decode and ack every message. kombu-rs records each ack and
//!   sends them coalesced (`basic.ack` with `multiple`), without waiting for the writes;
//!   bare lapin is measured both awaiting each ack and spawning each ack.

mod support;

use std::time::Instant;

use futures::StreamExt as _;
use kombu::{Connection, Exchange, Queue};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Payload {
    id: u64,
    payload: String,
}

/// The server URL as kombu writes it (`pyamqp://`, the default vhost as `//`).
fn server_for_python() -> String {
    server()
        .replacen("amqp://", "pyamqp://", 1)
        .replace("/%2f", "//")
        .replace("/%2F", "//")
}

fn server() -> String {
    std::env::var("KOMBU_BENCH_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

#[derive(Clone, Copy)]
struct Figures {
    confirmed_single: f64,
    confirmed_batch: f64,
    unconfirmed: f64,
    consume: f64,
    /// Bare lapin only: acks spawned, not awaited one by one (what kombu-rs does).
    consume_spawned_acks: f64,
    /// RabbitMQ's CPU per message (µs) over the rows above.
    cpu_confirmed_single: f64,
    cpu_confirmed_batch: f64,
    cpu_consume: f64,
}

/// RabbitMQ's CPU (its `beam.smp`), read from `/proc`.
fn server_cpu() -> support::ServerCpu {
    support::ServerCpu::start("beam.smp", "")
}

fn values(n: u64) -> Vec<Payload> {
    (0..n)
        .map(|id| Payload {
            id,
            payload: support::payload_text(),
        })
        .collect()
}

fn names() -> (String, String) {
    let id = uuid::Uuid::new_v4().simple();
    (format!("bench_ex_{id}"), format!("bench_q_{id}"))
}

async fn ours(n: u64) -> Figures {
    let values = values(n);
    let (ex, q) = names();
    let exchange = Exchange::direct(ex.as_str());
    let queue = Queue::new(q.as_str())
        .exchange(exchange.clone())
        .routing_key("bench");
    let conn = Connection::open(&server()).await.expect("open");
    conn.declare_queue(&queue).await.expect("declare");
    let producer = conn
        .producer()
        .exchange(exchange.clone())
        .routing_key("bench");

    let cpu = server_cpu();
    let confirmed_single = support::publish_each(&producer, &values).await;
    let cpu_confirmed_single = cpu.per_message(n);

    let mut consumer = conn
        .consumer([queue.clone()])
        .prefetch(100)
        .build()
        .await
        .expect("consumer");
    let cpu = server_cpu();
    let consume = support::consume_acking::<Payload>(&mut consumer, n).await;
    let cpu_consume = cpu.per_message(n);
    consumer.close().await.expect("close");

    let cpu = server_cpu();
    let confirmed_batch = support::publish_batches(&producer, &values).await;
    let cpu_confirmed_batch = cpu.per_message(n);

    let sep = if server().contains('?') { '&' } else { '?' };
    let unconfirmed_conn = Connection::open(&format!("{}{sep}confirm_publish=false", server()))
        .await
        .expect("open");
    let producer = unconfirmed_conn
        .producer()
        .exchange(exchange.clone())
        .routing_key("bench");
    let unconfirmed = support::publish_each(&producer, &values).await;
    unconfirmed_conn.close().await.expect("close");

    conn.delete_queue(&q).await.expect("delete");
    conn.delete_exchange(&ex).await.expect("delete exchange");
    conn.close().await.expect("close");
    Figures {
        confirmed_single,
        confirmed_batch,
        unconfirmed,
        consume,
        consume_spawned_acks: 0.0,
        cpu_confirmed_single,
        cpu_confirmed_batch,
        cpu_consume,
    }
}

fn properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_delivery_mode(2)
        .with_priority(0)
}

async fn publish_raw(ch: &lapin::Channel, ex: &str, v: &Payload) -> lapin::PublisherConfirm {
    let body = serde_json::to_vec(v).expect("encode");
    ch.basic_publish(
        ex.into(),
        "bench".into(),
        BasicPublishOptions::default(),
        &body,
        properties(),
    )
    .await
    .expect("publish")
}

async fn raw(n: u64) -> Figures {
    let values = values(n);
    let (ex, q) = names();
    let conn = lapin::Connection::connect(&server(), lapin::ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.exchange_declare(
        ex.as_str().into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare exchange");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::durable(),
        FieldTable::default(),
    )
    .await
    .expect("declare queue");
    ch.queue_bind(
        q.as_str().into(),
        ex.as_str().into(),
        "bench".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");

    let cpu = server_cpu();
    let start = Instant::now();
    for v in &values {
        let confirm = publish_raw(&ch, &ex, v).await.await.expect("confirm");
        assert!(confirm.is_ack());
    }
    let confirmed_single = support::rate(n, start.elapsed());
    let cpu_confirmed_single = cpu.per_message(n);

    let cch = conn.create_channel().await.expect("channel");
    cch.basic_qos(100, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = cch
        .basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let cpu = server_cpu();
    let start = Instant::now();
    for _ in 0..n {
        let d = consumer.next().await.expect("message").expect("delivery");
        let _: Payload = serde_json::from_slice(&d.data).expect("decode");
        d.acker.ack(BasicAckOptions::default()).await.expect("ack");
    }
    let consume = support::rate(n, start.elapsed());
    let cpu_consume = cpu.per_message(n);

    let cpu = server_cpu();
    let start = Instant::now();
    for chunk in values.chunks(100) {
        let mut confirms = Vec::with_capacity(chunk.len());
        for v in chunk {
            confirms.push(publish_raw(&ch, &ex, v).await);
        }
        for c in confirms {
            assert!(c.await.expect("confirm").is_ack());
        }
    }
    let confirmed_batch = support::rate(n, start.elapsed());
    let cpu_confirmed_batch = cpu.per_message(n);

    // The batch just published, consumed with acks handed to lapin without awaiting each.
    let start = Instant::now();
    let mut acks = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let d = consumer.next().await.expect("message").expect("delivery");
        let _: Payload = serde_json::from_slice(&d.data).expect("decode");
        let acker = d.acker;
        acks.push(tokio::spawn(async move {
            acker.ack(BasicAckOptions::default()).await
        }));
    }
    for ack in acks {
        ack.await.expect("ack task").expect("ack");
    }
    let consume_spawned_acks = support::rate(n, start.elapsed());
    cch.close(200, "OK".into()).await.expect("close");

    let plain = conn.create_channel().await.expect("channel");
    let start = Instant::now();
    for v in &values {
        publish_raw(&plain, &ex, v).await;
    }
    // Both sides count a publish as done when its frames are handed to the socket.
    let unconfirmed = support::rate(n, start.elapsed());

    ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete");
    conn.close(200, "OK".into()).await.expect("close");
    Figures {
        confirmed_single,
        confirmed_batch,
        unconfirmed,
        consume,
        consume_spawned_acks,
        cpu_confirmed_single,
        cpu_confirmed_batch,
        cpu_consume,
    }
}

fn main() {
    let n = support::messages(20_000);
    kombu::install();
    // Alternate the two sides over three rounds; report medians.
    let (ours_runs, raw_runs) = support::alternate(|| ours(n), || raw(n));
    let med = support::median::<Figures>;
    let py = support::python_rates("amqp", &server_for_python(), n, &[]);
    // Python kombu publishing with confirms (one by one: kombu has no batch publish), fewer
    // messages: each waits for the broker's disk write.
    let py_confirmed = support::python_script(
        "kombu_confirmed_publish.py",
        &[&server_for_python(), &(n / 10).max(100).to_string()],
        "confirmed_publish_rate",
    );

    println!(
        "amqp: {n} messages per row, median of 3 rounds; bare lapin doing the same work; Python kombu (py-amqp; medians of 3 runs) in the same run, with confirms where kombu-rs has them"
    );
    println!();
    println!(
        "| row | kombu-rs | bare lapin | kombu-rs / lapin | Python kombu | kombu-rs / Python |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let row = |name: &str, f: fn(&Figures) -> f64, py: Option<f64>| {
        support::record_row("amqp", name, "msg/s", (&ours_runs, &raw_runs), f, py);
        let o = med(&ours_runs, f);
        let r = med(&raw_runs, f);
        let (p, pr) = match py {
            Some(p) => (
                format!("{} msg/s", support::grouped(p)),
                format!("{:.1}×", o / p),
            ),
            None => ("–".into(), "–".into()),
        };
        println!(
            "| {name} | {} msg/s | {} msg/s | {:.2} | {p} | {pr} |",
            support::grouped(o),
            support::grouped(r),
            o / r
        );
    };
    row(
        "publish with confirms, one by one",
        |f| f.confirmed_single,
        py_confirmed,
    );
    row(
        "publish with confirms, batches of 100 (Python: one by one, it has no batches)",
        |f| f.confirmed_batch,
        py_confirmed,
    );
    row(
        "publish without confirms, one by one",
        |f| f.unconfirmed,
        py.map(|p| p.0),
    );
    row(
        "consume + ack, prefetch 100",
        |f| f.consume,
        py.map(|p| p.1),
    );
    let spawned = "consume + ack, prefetch 100, lapin's acks spawned";
    support::record(
        "amqp",
        spawned,
        "ours",
        "msg/s",
        &ours_runs.iter().map(|f| f.consume).collect::<Vec<_>>(),
    );
    support::record(
        "amqp",
        spawned,
        "raw",
        "msg/s",
        &raw_runs
            .iter()
            .map(|f| f.consume_spawned_acks)
            .collect::<Vec<_>>(),
    );
    let o = med(&ours_runs, |f| f.consume);
    let r = med(&raw_runs, |f| f.consume_spawned_acks);
    println!(
        "| consume + ack, prefetch 100, lapin's acks spawned (not awaited one by one, as kombu-rs) | {} msg/s | {} msg/s | {:.2} | – | – |",
        support::grouped(o),
        support::grouped(r),
        o / r
    );
    // The server's own CPU per message: where both sides are near it, the row is broker-bound.
    let cpu: [support::CpuRow<Figures>; 3] = [
        (
            "server CPU per message: publish with confirms, one by one",
            |f| f.cpu_confirmed_single,
        ),
        (
            "server CPU per message: publish with confirms, batches of 100",
            |f| f.cpu_confirmed_batch,
        ),
        ("server CPU per message: consume + ack", |f| f.cpu_consume),
    ];
    support::cpu_rows("amqp", &cpu, &ours_runs, &raw_runs);
}
