//! One trace across a producer and a consumer: kombu's spans exported to standard output through
//! OpenTelemetry, the W3C `traceparent` carried in the message's headers.
//!
//! ```text
//! cargo run --example tracing --features opentelemetry
//! KOMBU_URL=redis://127.0.0.1:6379/0 cargo run --example tracing --features opentelemetry
//! ```
//!
//! The producer publishes an order inside a `place-order` span; kombu opens a `send` span under
//! it and writes its context into the message as `traceparent`. The consumer's handler runs in
//! kombu's `process` span, whose parent is that `send` span: both sides print the same trace
//! id, and the stdout exporter prints the spans (`place-order`, `send ...`, `process ...`,
//! `handle-order`) with their OpenTelemetry messaging attributes. Exits 0 once the order is
//! handled, 1 if the two sides saw different traces.

use kombu::{Connection, Queue};
use opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u32,
    item: String,
}

/// The trace id of the current `tracing` span, as OpenTelemetry sees it.
fn current_trace_id() -> TraceId {
    tracing::Span::current()
        .context()
        .span()
        .span_context()
        .trace_id()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // OpenTelemetry: W3C Trace Context in headers, spans printed to stdout as they end.
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(opentelemetry_stdout::SpanExporter::default())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("kombu-example")));
    tracing::subscriber::set_global_default(subscriber)?;

    let url = std::env::var("KOMBU_URL").unwrap_or_else(|_| "memory://".to_owned());
    let conn = Connection::open(&url).await?;
    println!("connected to {} ({})", conn.url(), conn.messaging_system());
    let queue = format!("tracing-demo-{}", std::process::id());
    conn.declare_queue(&Queue::new(queue.as_str())).await?;

    // Producer side: an application span, and the publish inside it.
    let producer = conn.producer().routing_key(queue.as_str());
    let order = Order {
        id: 42,
        item: "teapot".into(),
    };
    let produced = async {
        let trace_id = current_trace_id();
        producer.publish(&order).await?;
        println!("producer: order {} published in trace {trace_id}", order.id);
        Ok::<_, kombu::Error>(trace_id)
    }
    .instrument(tracing::info_span!("place-order", order.id = order.id))
    .await?;

    // Consumer side: the handler runs in kombu's `process` span, child of the `send` span.
    let consumer = conn.consumer([Queue::new(queue.as_str())]).build().await?;
    let stop = consumer.stop_handle();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    consumer
        .consume_as(move |order: Order, delivery| {
            let stop = stop.clone();
            let seen_tx = seen_tx.clone();
            async move {
                let trace_id = current_trace_id();
                let headers = delivery.headers();
                println!(
                    "consumer: order {} ({}) received in trace {trace_id}, traceparent {:?}",
                    order.id,
                    order.item,
                    headers.get("traceparent")
                );
                async { tracing::info!("handling the order") }
                    .instrument(tracing::info_span!("handle-order"))
                    .await;
                delivery.ack().await?;
                // A closed receiver only means main is gone; nothing to report to.
                let _ = seen_tx.send(trace_id);
                stop.stop();
                Ok(())
            }
        })
        .await?;
    let consumed = seen_rx.recv().await;
    conn.delete_queue(&queue).await?;
    conn.close().await?;
    provider.shutdown()?;

    if consumed == Some(produced) && produced != TraceId::INVALID {
        println!("one trace across producer and consumer: {produced}");
        Ok(())
    } else {
        eprintln!("producer trace {produced}, consumer trace {consumed:?}: not the same");
        std::process::exit(1);
    }
}
