//! Tracing: the spans kombu opens around publishes and deliveries, named and attributed after
//! OpenTelemetry's semantic conventions for messaging, and (feature `opentelemetry`) the W3C
//! trace context they carry in message headers, so one trace crosses producer → broker →
//! consumer. Metrics are in [`crate::metrics`].
//!
//! ## Spans
//!
//! Every span is a [`tracing`] span at `INFO`, target [`SPAN_TARGET`] (filter them with
//! `kombu_core::messaging=off`, or `=info` to keep them under a quieter crate-wide level).
//! Without a subscriber, or with one that filters them out, a span costs one check of a
//! cached callsite and none of its fields is computed.
//!
//! | span | opened by | `otel.kind` | `messaging.operation.type` |
//! |---|---|---|---|
//! | `send` | [`Publish::send`](crate::Publish::send), [`Producer::publish`](crate::Producer::publish) and friends, [`Producer::send_batch`](crate::Producer::send_batch) (one span per batch) | `producer` | `send` |
//! | `receive` | the [`Consumer`](crate::Consumer) stream, for each delivery it hands out (an instant) | `consumer` | `receive` |
//! | `process` | [`Consumer::consume`](crate::Consumer::consume), [`Consumer::consume_as`](crate::Consumer::consume_as): around each handler run; [`Consumer::process_span`](crate::Consumer::process_span) for a stream's own loop | `consumer` | `process` |
//!
//! Fields (the attribute names of the OpenTelemetry semantic conventions v1.42.0, messaging
//! status "Development"; `tracing-opentelemetry` turns each field into an attribute and
//! `otel.name` / `otel.kind` into the span's name and kind):
//!
//! | field | value |
//! |---|---|
//! | `otel.name` | `send <destination>`, `receive <queue>`, `process <queue>` |
//! | `messaging.system` | [`messaging_system`]: `rabbitmq` (AMQP), `redis`, `sqlite`, `mongodb`, `memory` |
//! | `messaging.operation.type` | `send`, `receive`, `process` |
//! | `messaging.operation.name` | `publish`, `receive`, `process` |
//! | `messaging.destination.name` | publishing: the exchange, or the queue when publishing through the default exchange (RabbitMQ's conventions leave it empty there; the queue says more); consuming: the queue |
//! | `messaging.rabbitmq.destination.routing_key` | the routing key, when not empty (every transport routes as AMQP does) |
//! | `messaging.rabbitmq.message.delivery_tag` | consuming: the delivery tag |
//! | `messaging.message.id` | the `message_id` property, when set |
//! | `messaging.message.conversation_id` | the `correlation_id` property, when set |
//! | `messaging.message.body.size` | the body as sent (after compression), in bytes |
//! | `messaging.batch.message_count` | a batch publish: how many messages |
//!
//! ## Trace context in headers (feature `opentelemetry`)
//!
//! With the feature on, a publish writes the OpenTelemetry context of its `send` span (or, when
//! that span is filtered out, of the current span) into the message's headers, through the
//! global text-map propagator (`opentelemetry::global::set_text_map_propagator`; until one is
//! set, W3C Trace Context's): `traceparent` and, when there is trace state, `tracestate`. A
//! message whose headers already carry [`TRACEPARENT`] keeps them as they are. Headers are
//! plain strings, so Python kombu and Celery carry them on unchanged, on every transport (AMQP
//! field tables included). On delivery, the context is read back
//! (`Delivery::trace_context`) and made the parent of the
//! `receive` and `process` spans, which so join the producer's trace. Without the feature
//! nothing is written or read, and headers set by others pass through untouched.
//!
//! The spans reach OpenTelemetry through a `tracing_opentelemetry` layer in the application's
//! subscriber; `examples/tracing.rs` prints one trace from both sides.

use tracing::Span;

use crate::channel::{Delivery, Outgoing};
use crate::url::BrokerUrl;

/// The target of every span kombu opens (for filters: `kombu_core::messaging=off`).
pub const SPAN_TARGET: &str = "kombu_core::messaging";

/// The header carrying the W3C `traceparent` (feature `opentelemetry`).
pub const TRACEPARENT: &str = "traceparent";

/// The header carrying the W3C `tracestate` (feature `opentelemetry`).
pub const TRACESTATE: &str = "tracestate";

/// The OpenTelemetry `messaging.system` of a broker URL: `rabbitmq` for AMQP (the value the
/// conventions list), and the transport's own name for the others, which the list does not
/// have (`redis`, `sqlite`, `mongodb`, `memory`); `unknown` for a scheme no transport
/// registered.
///
/// ```
/// use kombu_core::{BrokerUrl, telemetry::messaging_system};
///
/// kombu_core::transport::memory::register();
/// assert_eq!(messaging_system(&BrokerUrl::parse("memory://x")?), "memory");
/// # Ok::<(), kombu_core::Error>(())
/// ```
pub fn messaging_system(url: &BrokerUrl) -> &'static str {
    match crate::transport::transport_for(url).map(|t| t.name()) {
        Some("amqp") => "rabbitmq",
        Some(name) => name,
        None => "unknown",
    }
}

/// Where a publish goes, for spans and metrics: the exchange, or the queue (the routing key)
/// through the default exchange.
pub(crate) fn destination(outgoing: &Outgoing) -> &str {
    if outgoing.exchange.is_empty() {
        &outgoing.routing_key
    } else {
        &outgoing.exchange
    }
}

/// A count as an `i64`: `tracing-opentelemetry` records signed integers as OpenTelemetry
/// integers, and unsigned ones as strings.
fn int<N: TryInto<i64>>(n: N) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// The `send` span of a publish of `count` messages, `first` among them.
pub(crate) fn send_span(system: &'static str, first: &Outgoing, count: usize) -> Span {
    let destination = destination(first);
    let message = &first.message;
    tracing::info_span!(
        target: SPAN_TARGET,
        "send",
        otel.name = %format_args!("send {destination}"),
        otel.kind = "producer",
        messaging.system = system,
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = destination,
        messaging.rabbitmq.destination.routing_key =
            Some(first.routing_key.as_str()).filter(|k| !k.is_empty()),
        messaging.message.id = message.properties.message_id.as_deref(),
        messaging.message.conversation_id = message.properties.correlation_id.as_deref(),
        messaging.message.body.size = int(message.body.len()),
        messaging.batch.message_count = (count > 1).then(|| int(count)),
    )
}

/// A publish under way: what to count once the broker took it.
#[derive(Debug)]
pub(crate) struct Published {
    system: &'static str,
    /// Messages per destination, in order; only when metrics are recorded.
    counts: Vec<(String, u64)>,
}

impl Published {
    /// Opens the `send` span of `batch`, writes its trace context into each message (feature
    /// `opentelemetry`), and notes what to count. The span is for the caller to run the
    /// publish in.
    pub(crate) fn start(system: &'static str, batch: &mut [Outgoing]) -> (Span, Published) {
        let span = match batch.first() {
            Some(first) => send_span(system, first, batch.len()),
            None => Span::none(),
        };
        let mut counts: Vec<(String, u64)> = Vec::new();
        let recording = crate::metrics::is_recording();
        for outgoing in batch.iter_mut() {
            inject(&span, &mut outgoing.message.headers);
            if recording {
                let destination = destination(outgoing);
                match counts.last_mut() {
                    Some((last, n)) if last == destination => *n += 1,
                    _ => counts.push((destination.to_owned(), 1)),
                }
            }
        }
        (span, Published { system, counts })
    }

    /// Counts the messages as published.
    pub(crate) fn done(self) {
        for (destination, n) in &self.counts {
            crate::metrics::record_published(self.system, destination, *n);
        }
    }
}

/// What a consumer span covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Consuming {
    /// A delivery handed out by the stream.
    Receive,
    /// A handler running on a delivery.
    Process,
}

/// The `receive` or `process` span of a delivery, child of the producer's context when the
/// message carries one (feature `opentelemetry`).
pub(crate) fn consumer_span(system: &'static str, delivery: &Delivery, what: Consuming) -> Span {
    let queue = delivery.queue();
    let message = delivery.message();
    let operation = match what {
        Consuming::Receive => "receive",
        Consuming::Process => "process",
    };
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "consume",
        otel.name = %format_args!("{operation} {queue}"),
        otel.kind = "consumer",
        messaging.system = system,
        messaging.operation.type = operation,
        messaging.operation.name = operation,
        messaging.destination.name = queue,
        messaging.rabbitmq.destination.routing_key =
            Some(delivery.routing_key()).filter(|k| !k.is_empty()),
        messaging.rabbitmq.message.delivery_tag = int(delivery.delivery_tag()),
        messaging.message.id = message.properties.message_id.as_deref(),
        messaging.message.conversation_id = message.properties.correlation_id.as_deref(),
        messaging.message.body.size = int(message.body.len()),
    );
    #[cfg(feature = "opentelemetry")]
    if !span.is_disabled() {
        otel::set_remote_parent(&span, delivery);
    }
    span
}

/// Writes the trace context of `span` (else of the current span) into `headers`, unless they
/// carry one already. Nothing without the feature `opentelemetry`.
#[cfg_attr(not(feature = "opentelemetry"), allow(unused_variables))]
pub(crate) fn inject(span: &Span, headers: &mut crate::Headers) {
    #[cfg(feature = "opentelemetry")]
    otel::inject(span, headers);
}

#[cfg(feature = "opentelemetry")]
pub use otel::{extract_context, inject_context};

#[cfg(feature = "opentelemetry")]
mod otel {
    use opentelemetry::Context;
    use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing::Span;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::TRACEPARENT;
    use crate::channel::Delivery;
    use crate::value::{Headers, Value};

    /// Runs `f` with the global propagator, or W3C Trace Context's while none is set (the
    /// global default propagates nothing: it has no fields). `None` only if the global
    /// propagator did not call `f`, which it always does.
    fn with_propagator<T>(f: impl FnOnce(&dyn TextMapPropagator) -> T) -> Option<T> {
        let global_is_set = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.fields().next().is_some()
        });
        if !global_is_set {
            return Some(f(&TraceContextPropagator::new()));
        }
        let mut f = Some(f);
        opentelemetry::global::get_text_map_propagator(|propagator| f.take().map(|f| f(propagator)))
    }

    struct HeaderInjector<'a>(&'a mut Headers);

    impl Injector for HeaderInjector<'_> {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(key.to_owned(), Value::String(value));
        }
    }

    struct HeaderExtractor<'a>(&'a Headers);

    impl Extractor for HeaderExtractor<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            match self.0.get(key) {
                Some(Value::String(s)) => Some(s),
                _ => None,
            }
        }

        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(String::as_str).collect()
        }
    }

    /// Writes `cx` into `headers` with the global propagator (W3C Trace Context while none is
    /// set): `traceparent`, and `tracestate` when there is state. A context without a valid
    /// span writes nothing.
    ///
    /// ```
    /// use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
    /// use kombu_core::{Headers, Value, telemetry};
    ///
    /// let span = SpanContext::new(
    ///     TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736")?,
    ///     SpanId::from_hex("00f067aa0ba902b7")?,
    ///     TraceFlags::SAMPLED,
    ///     true,
    ///     TraceState::default(),
    /// );
    /// let cx = opentelemetry::Context::new().with_remote_span_context(span);
    /// let mut headers = Headers::new();
    /// telemetry::inject_context(&cx, &mut headers);
    /// assert_eq!(
    ///     headers.get(telemetry::TRACEPARENT),
    ///     Some(&Value::from("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"))
    /// );
    /// let back = telemetry::extract_context(&headers);
    /// assert_eq!(back.span().span_context().trace_id(), cx.span().span_context().trace_id());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn inject_context(cx: &Context, headers: &mut Headers) {
        with_propagator(|propagator| {
            propagator.inject_context(cx, &mut HeaderInjector(headers));
        });
    }

    /// Reads the context the producer wrote into `headers` (see [`inject_context`]); a context
    /// without a valid span when there is none.
    pub fn extract_context(headers: &Headers) -> Context {
        with_propagator(|propagator| propagator.extract(&HeaderExtractor(headers)))
            .unwrap_or_default()
    }

    pub(super) fn inject(span: &Span, headers: &mut Headers) {
        if headers.contains_key(TRACEPARENT) {
            return;
        }
        let mut cx = span.context();
        if !cx.span().span_context().is_valid() {
            cx = Span::current().context();
        }
        if cx.span().span_context().is_valid() {
            inject_context(&cx, headers);
        }
    }

    pub(super) fn set_remote_parent(span: &Span, delivery: &Delivery) {
        let cx = delivery.trace_context();
        if cx.span().span_context().is_valid() {
            // Fails only when no OpenTelemetry layer is installed, or the span has started:
            // then there is no trace to join.
            let _ = span.set_parent(cx);
        }
    }

    impl Delivery {
        /// The OpenTelemetry context the producer wrote into this message's headers
        /// (`traceparent`, `tracestate`), read with the global propagator (W3C Trace Context
        /// while none is set); a context without a valid span when the message carries none.
        /// Make it the parent of your own span (`tracing_opentelemetry`'s `set_parent`) to
        /// join the producer's trace; [`Consumer::process_span`](crate::Consumer::process_span)
        /// does so.
        pub fn trace_context(&self) -> Context {
            extract_context(self.headers())
        }
    }
}
