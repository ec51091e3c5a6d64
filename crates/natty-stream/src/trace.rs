//! Per-message spans, and trace-context propagation through message headers (feature `otel`).
//!
//! The publish path writes the span's context into the message's headers; the consumer reads
//! it back and makes its per-message span continue that trace, so one trace runs from the
//! publisher's request through the handler in another process. The codec is the
//! application's own propagator, `opentelemetry::global::get_text_map_propagator` (W3C trace
//! context, baggage, B3, a vendor's, or a composite of them: whatever the application
//! installed with `global::set_text_map_propagator`); natty only adapts async-nats headers to
//! its `Injector` / `Extractor` traits (no library does that for async-nats). natty itself
//! depends on the `opentelemetry` API crate only, never on the SDK.
//!
//! The per-message spans are `debug`-level: with `debug` off for `natty_stream` they are
//! never built. OpenTelemetry messaging attributes (`messaging.system = nats`, destination,
//! operation, message id, delivery count) are their fields; `otel.kind` / `otel.name` are read
//! by `tracing-opentelemetry`.

use async_nats::jetstream;
use tracing::{Span, debug_span, field};

/// The span a handler runs in: one per delivery (a child of the publisher's span when the
/// message carries a trace context and feature `otel` is on).
pub(crate) fn process_span(m: &jetstream::Message, durable: &str) -> Span {
    let span = debug_span!(
        "natty.stream.process",
        otel.name = field::Empty,
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %m.subject,
        messaging.consumer.group.name = durable,
        messaging.message.id = field::Empty,
        messaging.nats.stream = field::Empty,
        messaging.nats.stream.sequence = field::Empty,
        messaging.nats.message.delivery_count = field::Empty,
    );
    // Nothing more (not even the reply subject parsed) when the span is off.
    if span.is_disabled() {
        return span;
    }
    if let Ok(info) = m.info() {
        span.record(
            "otel.name",
            field::display(format_args!("process {}", info.stream)),
        );
        span.record("messaging.nats.stream", info.stream);
        span.record("messaging.nats.stream.sequence", info.stream_sequence);
        span.record("messaging.nats.message.delivery_count", info.delivered);
    }
    if let Some(id) = m
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
    {
        span.record("messaging.message.id", id.as_str());
    }
    #[cfg(feature = "otel")]
    if let Some(headers) = &m.headers {
        otel::continue_trace(&span, headers);
    }
    span
}

/// The span of one message handed to a batch publisher (its trace context goes with the
/// message).
pub(crate) fn send_span(subject: &str) -> Span {
    debug_span!(
        "natty.stream.send",
        otel.name = %format_args!("send {subject}"),
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.type = "send",
        messaging.operation.name = "send",
        messaging.destination.name = subject,
    )
}

#[cfg(feature = "otel")]
pub(crate) use otel::{inject_headers, inject_pairs};

#[cfg(feature = "otel")]
mod otel {
    use async_nats::HeaderMap;
    use opentelemetry::{
        global,
        propagation::{Extractor, Injector},
    };
    use tracing::Span;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// Writes into an async-nats header map.
    struct HeaderInjector<'a>(&'a mut HeaderMap);

    impl Injector for HeaderInjector<'_> {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(key, value);
        }
    }

    /// Writes into the `(name, value)` list a batch publisher keeps for every attempt.
    struct PairsInjector<'a>(&'a mut Vec<(String, String)>);

    impl Injector for PairsInjector<'_> {
        fn set(&mut self, key: &str, value: String) {
            self.0.push((key.to_owned(), value));
        }
    }

    /// Reads an async-nats header map; names match whatever their case (NATS headers are
    /// case-preserving, and other clients write `Traceparent`).
    struct HeaderExtractor<'a>(&'a HeaderMap);

    impl Extractor for HeaderExtractor<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0
                .iter()
                .find(|(name, _)| AsRef::<str>::as_ref(*name).eq_ignore_ascii_case(key))
                .and_then(|(_, values)| values.first())
                .map(|v| v.as_str())
        }

        fn keys(&self) -> Vec<&str> {
            self.0
                .iter()
                .map(|(name, _)| AsRef::<str>::as_ref(name))
                .collect()
        }
    }

    /// The context to send: `span`'s, or the caller's current span's when `span` is off.
    fn context_of(span: &Span) -> opentelemetry::Context {
        if span.is_disabled() {
            Span::current().context()
        } else {
            span.context()
        }
    }

    /// The headers the application's propagator writes for `span`, unless `already_set` says
    /// the caller wrote one of them: a context the caller put in the message is kept whole.
    fn propagated(span: &Span, already_set: impl Fn(&str) -> bool) -> Vec<(String, String)> {
        global::get_text_map_propagator(|propagator| {
            if propagator.fields().any(&already_set) {
                return Vec::new();
            }
            let mut pairs = Vec::new();
            propagator.inject_context(&context_of(span), &mut PairsInjector(&mut pairs));
            pairs
        })
    }

    /// Adds the trace context of `span` to `headers`, through the application's propagator
    /// (unless the caller set one of its headers).
    pub(crate) fn inject_headers(span: &Span, headers: &mut HeaderMap) {
        let pairs = propagated(span, |field| HeaderExtractor(headers).get(field).is_some());
        let mut injector = HeaderInjector(headers);
        for (name, value) in pairs {
            injector.set(&name, value);
        }
    }

    /// Adds the trace context of `span` to `pairs`, through the application's propagator
    /// (unless the caller set one of its headers).
    pub(crate) fn inject_pairs(span: &Span, pairs: &mut Vec<(String, String)>) {
        let added = propagated(span, |field| {
            pairs
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case(field))
        });
        pairs.extend(added);
    }

    /// Makes `span` a child of the trace context in `headers` (read with the application's
    /// propagator), if there is a valid one; baggage comes along with it.
    pub(super) fn continue_trace(span: &Span, headers: &HeaderMap) {
        let parent = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
        if opentelemetry::trace::TraceContextExt::span(&parent)
            .span_context()
            .is_valid()
        {
            // Fails only when no OpenTelemetry layer is installed: nothing to continue then.
            let _ = span.set_parent(parent);
        }
    }

    #[cfg(test)]
    mod tests {
        use opentelemetry::propagation::TextMapPropagator;
        use opentelemetry_sdk::propagation::TraceContextPropagator;

        use super::*;

        #[test]
        fn the_adapters_round_trip_a_trace_context_whatever_the_header_case() {
            let mut headers = HeaderMap::new();
            let mut injector = HeaderInjector(&mut headers);
            injector.set(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            );
            injector.set("tracestate", "congo=t61rcWkgMzE".into());
            let ex = HeaderExtractor(&headers);
            assert_eq!(ex.get("TraceParent").map(str::len), Some(55));
            let mut keys = ex.keys();
            keys.sort_unstable();
            assert_eq!(keys, ["traceparent", "tracestate"]);
            let cx = TraceContextPropagator::new().extract(&ex);
            let span = opentelemetry::trace::TraceContextExt::span(&cx);
            let sc = span.span_context();
            assert!(sc.is_valid() && sc.is_remote());
            assert_eq!(
                sc.trace_id().to_string(),
                "0af7651916cd43dd8448eb211c80319c"
            );
            let mut upper = HeaderMap::new();
            upper.insert(
                "Traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            );
            let cx = TraceContextPropagator::new().extract(&HeaderExtractor(&upper));
            assert!(
                opentelemetry::trace::TraceContextExt::span(&cx)
                    .span_context()
                    .is_valid()
            );
            // With W3C trace context as the application's propagator, a caller's own
            // traceparent is kept (nothing added).
            global::set_text_map_propagator(TraceContextPropagator::new());
            let mut pairs = vec![("traceparent".to_owned(), "mine".to_owned())];
            inject_pairs(&Span::none(), &mut pairs);
            assert_eq!(pairs.len(), 1, "a caller's own traceparent is kept");
        }
    }
}
