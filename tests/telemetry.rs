//! Tracing across services and metrics (`kombu_core::telemetry`, `kombu_core::metrics`), on
//! memory, Redis and AMQP:
//!
//! - one trace crosses producer → broker → consumer: the `traceparent` header a publish writes
//!   names its `send` span, and the `receive` span of the stream and the `process` span of the
//!   handler loop are children of it (the same trace id, the send span as parent), with the
//!   OpenTelemetry messaging attributes;
//! - a `traceparent` the application set is left as it is and joined;
//! - the counters and the handler histogram after publishes, deliveries and a dead letter;
//! - the worker runs each handler in its message's `process` span (no `receive` span) and
//!   times it.
//!
//! One process-wide subscriber (an OpenTelemetry layer over an in-memory exporter) and one
//! metrics recorder serve every test; each test finds its own spans and series by its queue's
//! unique name.

use std::sync::OnceLock;
use std::time::Duration;

use kombu::{Connection, Delivery, Queue, StreamExt, Value};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use opentelemetry::trace::{SpanId, SpanKind, TraceContextExt, TraceId, TracerProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

/// The in-memory span exporter behind the process-wide subscriber.
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("kombu-tests")));
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        exporter
    })
}

/// The snapshotter of the process-wide metrics recorder.
fn metrics() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("one global recorder");
        snapshotter
    })
}

/// The brokers these tests run on: memory, and the real brokers Redis and AMQP (required in
/// CI through `KOMBU_TEST_REQUIRE`).
fn brokers(test: &str) -> Vec<kombu_test_support::brokers::Broker> {
    let brokers: Vec<_> = kombu_test_support::brokers::every(test)
        .into_iter()
        .filter(|b| matches!(b.transport, "memory" | "redis" | "amqp"))
        .collect();
    assert!(brokers.iter().any(|b| b.transport == "memory"));
    brokers
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

/// The finished spans whose `messaging.destination.name` is `queue`, by name.
fn spans_of(queue: &str) -> Vec<SpanData> {
    exporter()
        .get_finished_spans()
        .expect("finished spans")
        .into_iter()
        .filter(|s| attribute(s, "messaging.destination.name").as_deref() == Some(queue))
        .collect()
}

fn one<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let found: Vec<&SpanData> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one span {name:?} among {spans:#?}");
    found[0]
}

/// The trace and span ids of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), checking
/// its shape.
fn parse_traceparent(delivery: &Delivery) -> (TraceId, SpanId) {
    let Some(Value::String(header)) = delivery.headers().get("traceparent") else {
        panic!("no traceparent string header in {:?}", delivery.headers());
    };
    let parts: Vec<&str> = header.split('-').collect();
    assert_eq!(parts.len(), 4, "{header}");
    assert_eq!(parts[0], "00", "{header}");
    assert_eq!(parts[1].len(), 32, "{header}");
    assert_eq!(parts[2].len(), 16, "{header}");
    assert_eq!(parts[3], "01", "sampled: {header}");
    let trace_id = TraceId::from_hex(parts[1]).expect("a hex trace id");
    let span_id = SpanId::from_hex(parts[2]).expect("a hex span id");
    assert_ne!(trace_id, TraceId::INVALID, "{header}");
    assert_ne!(span_id, SpanId::INVALID, "{header}");
    (trace_id, span_id)
}

/// Publishes under an application span, takes the message from the stream, then publishes
/// again and takes it through the handler loop; checks the header and the three spans.
async fn one_trace_crosses(url: &str, system: &str) {
    exporter();
    let conn = Connection::open(url).await.expect("open");
    assert_eq!(conn.messaging_system(), system);
    let queue = unique("trace");
    conn.declare_queue(&Queue::new(queue.as_str()))
        .await
        .expect("declare");
    let producer = conn.producer().routing_key(queue.as_str());

    // Stream style: the receive span.
    producer
        .message(&"first")
        .correlation_id("req-1")
        .message_id("m-1")
        .send()
        .instrument(tracing::info_span!("checkout"))
        .await
        .expect("publish");
    let mut consumer = conn
        .consumer([Queue::new(queue.as_str())])
        .build()
        .await
        .expect("consumer");
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery in time")
        .expect("the stream goes on")
        .expect("accepted");
    let (trace_id, span_id) = parse_traceparent(&delivery);
    let remote = delivery.trace_context();
    assert_eq!(remote.span().span_context().trace_id(), trace_id);
    assert!(remote.span().span_context().is_remote());
    delivery.ack().await.expect("ack");
    consumer.close().await.expect("close");

    // Handler style: the process span, around the handler.
    producer
        .publish(&"second")
        .instrument(tracing::info_span!("checkout"))
        .await
        .expect("publish");
    let consumer = conn
        .consumer([Queue::new(queue.as_str())])
        .build()
        .await
        .expect("consumer");
    let stop = consumer.stop_handle();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen_in = seen.clone();
    tokio::time::timeout(
        Duration::from_secs(10),
        consumer.consume(move |delivery| {
            let stop = stop.clone();
            let seen = seen_in.clone();
            async move {
                *seen.lock().expect("lock") = Some(parse_traceparent(&delivery));
                // The handler runs inside the process span: the trace it sees is the producer's.
                let current =
                    tracing_opentelemetry::OpenTelemetrySpanExt::context(&tracing::Span::current());
                let (trace_id, _) = parse_traceparent(&delivery);
                assert_eq!(current.span().span_context().trace_id(), trace_id);
                delivery.ack().await?;
                stop.stop();
                Ok(())
            }
        }),
    )
    .await
    .expect("the handler loop ends in time")
    .expect("the handler loop");
    let (trace_2, span_2) = seen.lock().expect("lock").expect("the handler ran");
    assert_ne!(
        trace_2, trace_id,
        "two publishes under two root spans: two traces"
    );

    let spans = spans_of(&queue);
    let sends: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == format!("send {queue}"))
        .collect();
    assert_eq!(sends.len(), 2, "{spans:#?}");
    let receive = one(&spans, &format!("receive {queue}"));
    let process = one(&spans, &format!("process {queue}"));
    for (send_trace, send_span, consumer_span) in
        [(trace_id, span_id, receive), (trace_2, span_2, process)]
    {
        let send = sends
            .iter()
            .find(|s| s.span_context.span_id() == send_span)
            .expect("the traceparent names a send span");
        assert_eq!(send.span_context.trace_id(), send_trace);
        assert_eq!(send.span_kind, SpanKind::Producer);
        assert_ne!(
            send.parent_span_id,
            SpanId::INVALID,
            "the send span is a child of the application's span"
        );
        assert_eq!(consumer_span.span_kind, SpanKind::Consumer);
        assert_eq!(consumer_span.span_context.trace_id(), send_trace);
        assert_eq!(consumer_span.parent_span_id, send_span);
        assert!(consumer_span.parent_span_is_remote);
        assert_eq!(
            attribute(consumer_span, "messaging.system").as_deref(),
            Some(system)
        );
    }
    let send = sends
        .iter()
        .find(|s| s.span_context.span_id() == span_id)
        .expect("first send");
    for (key, value) in [
        ("messaging.system", system),
        ("messaging.operation.type", "send"),
        ("messaging.operation.name", "publish"),
        ("messaging.rabbitmq.destination.routing_key", queue.as_str()),
        ("messaging.message.id", "m-1"),
        ("messaging.message.conversation_id", "req-1"),
        ("messaging.message.body.size", "7"), // "first" as JSON
    ] {
        assert_eq!(attribute(send, key).as_deref(), Some(value), "{key}");
    }
    assert!(
        send.attributes
            .iter()
            .any(|kv| kv.key.as_str() == "messaging.message.body.size"
                && kv.value == opentelemetry::Value::I64(7)),
        "the body size is an integer attribute"
    );
    assert_eq!(
        attribute(receive, "messaging.operation.type").as_deref(),
        Some("receive")
    );
    assert_eq!(
        attribute(process, "messaging.operation.type").as_deref(),
        Some("process")
    );
    assert_eq!(
        attribute(receive, "messaging.message.conversation_id").as_deref(),
        Some("req-1")
    );
    conn.delete_queue(&queue).await.expect("delete");
}

#[tokio::test]
async fn one_trace_crosses_producer_broker_consumer() {
    for broker in brokers("telemetry-trace") {
        let system = match broker.transport {
            "amqp" => "rabbitmq",
            other => other,
        };
        one_trace_crosses(&broker.url, system).await;
    }
}

#[tokio::test]
async fn a_traceparent_set_by_the_application_is_kept_and_joined() {
    exporter();
    let theirs = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for broker in brokers("telemetry-theirs") {
        let conn = Connection::open(&broker.url).await.expect("open");
        let queue = unique("theirs");
        conn.declare_queue(&Queue::new(queue.as_str()))
            .await
            .expect("declare");
        conn.producer()
            .routing_key(queue.as_str())
            .message(&1)
            .header("traceparent", theirs)
            .header("tracestate", "vendor=abc")
            .send()
            .instrument(tracing::info_span!("ours"))
            .await
            .expect("publish");
        let mut consumer = conn
            .consumer([Queue::new(queue.as_str())])
            .build()
            .await
            .expect("consumer");
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("in time")
            .expect("goes on")
            .expect("accepted");
        assert_eq!(
            delivery.headers().get("traceparent"),
            Some(&Value::from(theirs))
        );
        assert_eq!(
            delivery.headers().get("tracestate"),
            Some(&Value::from("vendor=abc"))
        );
        let remote = delivery.trace_context();
        assert_eq!(
            remote.span().span_context().trace_state().header(),
            "vendor=abc"
        );
        delivery.ack().await.expect("ack");
        consumer.close().await.expect("close");
        let spans = spans_of(&queue);
        let receive = one(&spans, &format!("receive {queue}"));
        assert_eq!(
            receive.span_context.trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex"),
            "{}",
            broker.transport
        );
        assert_eq!(
            receive.parent_span_id,
            SpanId::from_hex("00f067aa0ba902b7").expect("hex")
        );
        conn.delete_queue(&queue).await.expect("delete");
    }
}

/// The value of one series in a snapshot.
fn series<'a>(
    snapshot: &'a [(
        metrics_util::CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        DebugValue,
    )],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a DebugValue> {
    snapshot
        .iter()
        .find(|(key, ..)| {
            let key = key.key();
            key.name() == name
                && labels
                    .iter()
                    .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
        })
        .map(|(.., value)| value)
}

#[tokio::test]
async fn counters_and_the_handler_histogram() {
    let snapshotter = metrics();
    for broker in brokers("telemetry-metrics") {
        let conn = Connection::open(&broker.url).await.expect("open");
        let system = conn.messaging_system();
        let queue = unique("metrics");
        conn.declare_queue(&Queue::new(queue.as_str()))
            .await
            .expect("declare");
        let producer = conn.producer().routing_key(queue.as_str());
        // One the consumer refuses (not JSON: dead-lettered), two it handles.
        producer
            .publish_bytes(&b"<xml/>"[..], "application/xml", "utf-8")
            .await
            .expect("publish");
        producer
            .publish_batch([&1, &2])
            .await
            .expect("publish batch");
        let consumer = conn
            .consumer([Queue::new(queue.as_str())])
            .accept(["json"])
            .build()
            .await
            .expect("consumer");
        let stop = consumer.stop_handle();
        let handled = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let handled_in = handled.clone();
        tokio::time::timeout(
            Duration::from_secs(10),
            consumer.consume_as(move |n: u32, delivery| {
                let stop = stop.clone();
                let handled = handled_in.clone();
                async move {
                    delivery.ack().await?;
                    if handled.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == 2 {
                        stop.stop();
                    }
                    assert!(n == 1 || n == 2);
                    Ok(())
                }
            }),
        )
        .await
        .expect("in time")
        .expect("the handler loop");
        assert_eq!(
            conn.queue_size(&format!("{queue}.dlq"))
                .await
                .expect("size"),
            1
        );

        let snapshot = snapshotter.snapshot().into_vec();
        let transport = ("transport", system);
        assert_eq!(
            series(
                &snapshot,
                kombu::metrics::MESSAGES_PUBLISHED,
                &[transport, ("destination", &queue)]
            ),
            Some(&DebugValue::Counter(3)),
            "{}",
            broker.transport
        );
        assert_eq!(
            series(
                &snapshot,
                kombu::metrics::MESSAGES_CONSUMED,
                &[transport, ("queue", &queue)]
            ),
            Some(&DebugValue::Counter(3)),
            "{}",
            broker.transport
        );
        assert_eq!(
            series(
                &snapshot,
                kombu::metrics::MESSAGES_DEAD_LETTERED,
                &[transport, ("queue", &queue)]
            ),
            Some(&DebugValue::Counter(1)),
            "{}",
            broker.transport
        );
        match series(
            &snapshot,
            kombu::metrics::HANDLER_DURATION,
            &[("queue", &queue), ("outcome", "ok")],
        ) {
            Some(DebugValue::Histogram(samples)) => {
                assert_eq!(samples.len(), 2, "{}", broker.transport);
                assert!(samples.iter().all(|s| s.0 >= 0.0));
            }
            other => panic!("{}: no handler histogram: {other:?}", broker.transport),
        }
        conn.delete_queue(&queue).await.expect("delete");
        conn.delete_queue(&format!("{queue}.dlq"))
            .await
            .expect("delete dlq");
    }
}

#[tokio::test]
async fn the_worker_runs_each_handler_in_a_process_span_and_times_it() {
    use std::sync::{Arc, Mutex};

    use kombu::worker::{JobContext, JobError, Worker};

    exporter();
    let snapshotter = metrics();
    for broker in brokers("telemetry-worker") {
        let conn = Connection::open(&broker.url).await.expect("open");
        let queue = unique("worker");
        conn.declare_queue(&Queue::new(queue.as_str()))
            .await
            .expect("declare");
        let producer = conn.producer().routing_key(queue.as_str());
        for n in [1u32, 2] {
            producer
                .publish(&n)
                .instrument(tracing::info_span!("enqueue"))
                .await
                .expect("publish");
        }
        // What each handler saw as its current span: (message, trace id, span id).
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen_in = seen.clone();
        let worker = Worker::builder(&conn)
            .handle(queue.as_str(), move |n: u32, ctx: JobContext| {
                let current =
                    tracing_opentelemetry::OpenTelemetrySpanExt::context(&tracing::Span::current());
                let (trace, _) = parse_traceparent(ctx.delivery());
                let ids = current.span().span_context().clone();
                seen_in.lock().expect("not poisoned").push((
                    n,
                    trace,
                    ids.trace_id(),
                    ids.span_id(),
                ));
                let seen = seen_in.clone();
                async move {
                    // Inside the handler's future too (the attempt is instrumented).
                    let current = tracing_opentelemetry::OpenTelemetrySpanExt::context(
                        &tracing::Span::current(),
                    );
                    let ids = current.span().span_context().clone();
                    seen.lock().expect("not poisoned").push((
                        n,
                        trace,
                        ids.trace_id(),
                        ids.span_id(),
                    ));
                    match n {
                        2 => Err(JobError::permanent("two is refused")),
                        _ => Ok(()),
                    }
                }
            })
            .build()
            .expect("worker");
        let handle = worker.handle();
        let running = tokio::spawn(worker.run());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while handle.stats().handled + handle.stats().dead_lettered < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}",
                handle.stats()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        handle.stop();
        running.await.expect("joined").expect("the worker");

        let spans = spans_of(&queue);
        assert!(
            !spans.iter().any(|s| s.name == format!("receive {queue}")),
            "{}: the worker's deliveries have process spans, not receive spans",
            broker.transport
        );
        let process: Vec<&SpanData> = spans
            .iter()
            .filter(|s| s.name == format!("process {queue}"))
            .collect();
        assert_eq!(process.len(), 2, "{}: {spans:#?}", broker.transport);
        let seen = seen.lock().expect("not poisoned").clone();
        assert_eq!(
            seen.len(),
            4,
            "{}: called and polled, twice",
            broker.transport
        );
        for (n, producer_trace, trace, span) in seen {
            // The handler ran inside its message's process span, in the producer's trace.
            assert_eq!(trace, producer_trace, "{} message {n}", broker.transport);
            assert!(
                process
                    .iter()
                    .any(|p| p.span_context.span_id() == span && p.span_context.trace_id() == trace),
                "{}: message {n} ran outside its process span",
                broker.transport
            );
        }

        let snapshot = snapshotter.snapshot().into_vec();
        for outcome in ["ok", "error"] {
            match series(
                &snapshot,
                kombu::metrics::HANDLER_DURATION,
                &[("queue", &queue), ("outcome", outcome)],
            ) {
                Some(DebugValue::Histogram(samples)) => {
                    assert_eq!(samples.len(), 1, "{} {outcome}", broker.transport);
                }
                other => panic!("{}: no {outcome} histogram: {other:?}", broker.transport),
            }
        }
        conn.delete_queue(&queue).await.expect("delete");
        conn.delete_queue(&format!("{queue}.dlq"))
            .await
            .expect("delete dlq");
    }
}
