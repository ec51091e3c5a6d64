//! Trace propagation (feature `otel`) against a real NATS server, read through OpenTelemetry's
//! in-memory exporter: one trace runs from a request span in one client, through the publish
//! (single and batched), to the handler in a second client on its own connection — carried by
//! the application's global propagator (here W3C trace context, baggage and a vendor's own
//! header), not one natty picked.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use std::time::Duration;

use natty_core::ConnectOptions;
use natty_stream::{
    BatchConfig, BatchPublisher, CancellationToken, ConsumeOptions, Consumer, ConsumerConfig,
    Message, Publisher, StreamConfig, ensure_consumer, ensure_stream,
};
use natty_testkit::{Nats, unique_name};
use opentelemetry::{
    Context, KeyValue,
    baggage::BaggageExt,
    global,
    propagation::{
        Extractor, Injector, TextMapCompositePropagator, TextMapPropagator, text_map_propagator,
    },
    trace::{SpanKind, TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{
    propagation::{BaggagePropagator, TraceContextPropagator},
    trace::{InMemorySpanExporter, SdkTracerProvider, SpanData},
};
use tracing::{Instrument, info_span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{Layer, filter::LevelFilter, layer::SubscriberExt};

/// A vendor's propagator, as an application may install beside W3C's: it writes the trace id
/// in a header of its own.
#[derive(Debug)]
struct VendorPropagator(Vec<String>);

impl VendorPropagator {
    const HEADER: &str = "x-vendor-trace";

    fn new() -> Self {
        Self(vec![Self::HEADER.to_owned()])
    }
}

impl TextMapPropagator for VendorPropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let sc = cx.span().span_context().clone();
        if sc.is_valid() {
            injector.set(Self::HEADER, sc.trace_id().to_string());
        }
    }

    fn extract_with_context(&self, cx: &Context, _extractor: &dyn Extractor) -> Context {
        cx.clone()
    }

    fn fields(&self) -> text_map_propagator::FieldIter<'_> {
        text_map_propagator::FieldIter::new(&self.0)
    }
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name:?} in {:?}", names(spans)))
}

fn names(spans: &[SpanData]) -> Vec<&str> {
    spans.iter().map(|s| &*s.name).collect()
}

/// `process` continues `send`'s trace in the consumer, with the messaging attributes; the
/// handler's own span is its child.
fn assert_continues(spans: &[SpanData], send: &SpanData, subject: &str, handler: &str) {
    let process = spans
        .iter()
        .find(|s| {
            s.span_kind == SpanKind::Consumer
                && attribute(s, "messaging.destination.name").as_deref() == Some(subject)
        })
        .unwrap_or_else(|| panic!("no consumer span for {subject}: {:?}", names(spans)));
    assert_eq!(
        process.span_context.trace_id(),
        send.span_context.trace_id(),
        "the handler's span is in the publisher's trace"
    );
    assert_eq!(process.parent_span_id, send.span_context.span_id());
    assert!(
        process.parent_span_is_remote,
        "its parent came in the headers"
    );
    assert_eq!(
        attribute(process, "messaging.system").as_deref(),
        Some("nats")
    );
    assert_eq!(
        attribute(process, "messaging.operation.type").as_deref(),
        Some("process")
    );
    assert_eq!(
        attribute(process, "messaging.consumer.group.name").as_deref(),
        Some("workers")
    );
    assert_eq!(
        attribute(process, "messaging.nats.message.delivery_count").as_deref(),
        Some("1")
    );
    let work = named(spans, handler);
    assert_eq!(work.parent_span_id, process.span_context.span_id());
    assert_eq!(work.span_context.trace_id(), send.span_context.trace_id());
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn one_trace_runs_from_publish_to_the_handler_across_two_clients() -> anyhow::Result<()> {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("natty-test"))
        .with_filter(LevelFilter::DEBUG);
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(otel))?;
    // The application's choice of propagators, made once for the process.
    global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
        Box::new(VendorPropagator::new()),
    ]));

    let nats = Nats::start().await?;
    // Two clients, two connections: the publisher's and the consumer's.
    let producer = ConnectOptions::new([nats.url()]).connect().await?;
    let consumer_client = ConnectOptions::new([nats.url()]).connect().await?;
    let stream = unique_name("T").replace('-', "_");
    ensure_stream(
        &producer,
        &StreamConfig::new(&stream, [format!("{stream}.>")]),
    )
    .await?;
    ensure_consumer(&producer, &ConsumerConfig::new(&stream, "workers")).await?;

    let single = format!("{stream}.single");
    let batched = format!("{stream}.batched");
    // The request carries baggage (a tenant), as set by an upstream service.
    let checkout = info_span!("checkout");
    let _ = checkout.set_parent(Context::current_with_baggage([KeyValue::new(
        "tenant", "acme",
    )]));
    let request_trace = async {
        Publisher::new(producer.clone())
            .publish(&single, "one".into())
            .await
            .unwrap();
        tracing::Span::current()
            .context()
            .span()
            .span_context()
            .trace_id()
    }
    .instrument(checkout)
    .await;
    let batch = BatchPublisher::new(producer.clone(), BatchConfig::default())?;
    async { batch.send(&batched, "two".into()).await.unwrap() }
        .instrument(info_span!("bulk import"))
        .await;
    batch.close().await?;

    let consumer = Consumer::new(
        consumer_client,
        &stream,
        "workers",
        ConsumeOptions::default(),
    )?;
    let cancel = CancellationToken::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let task = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            consumer
                .consume(cancel, move |m: Message| {
                    let tx = tx.clone();
                    let name = if m.subject.ends_with("single") {
                        "handle single"
                    } else {
                        "handle batched"
                    };
                    let vendor = m.header(VendorPropagator::HEADER).map(str::to_owned);
                    async move {
                        let span = info_span!("handler work", otel.name = name);
                        let cx = span.context();
                        let trace = cx.span().span_context().trace_id();
                        let tenant = cx.baggage().get("tenant").map(|v| v.to_string());
                        async {}.instrument(span).await;
                        tx.send((name, trace, vendor, tenant)).unwrap();
                        Ok(())
                    }
                })
                .await
        })
    };
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let handled = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await?
            .unwrap();
        seen.push(handled);
    }
    cancel.cancel();
    task.await??;
    let (_, trace, vendor, tenant) = seen
        .iter()
        .find(|(name, ..)| *name == "handle single")
        .unwrap();
    assert_eq!(
        *trace, request_trace,
        "the handler ran in the request's trace"
    );
    assert_eq!(
        vendor.as_deref(),
        Some(&*request_trace.to_string()),
        "the application's own propagator wrote its header"
    );
    assert_eq!(
        tenant.as_deref(),
        Some("acme"),
        "the request's baggage reached the handler"
    );
    for (name, _, vendor, _) in &seen {
        assert!(
            vendor.is_some(),
            "{name}: no {} header",
            VendorPropagator::HEADER
        );
    }

    provider.force_flush()?;
    let spans = exporter.get_finished_spans()?;
    let checkout = named(&spans, "checkout");
    let send_single = named(&spans, &format!("send {single}"));
    assert_eq!(send_single.span_kind, SpanKind::Producer);
    assert_eq!(send_single.parent_span_id, checkout.span_context.span_id());
    assert_continues(&spans, send_single, &single, "handle single");

    let bulk = named(&spans, "bulk import");
    let send_batched = named(&spans, &format!("send {batched}"));
    assert_eq!(send_batched.span_kind, SpanKind::Producer);
    assert_eq!(send_batched.parent_span_id, bulk.span_context.span_id());
    assert_continues(&spans, send_batched, &batched, "handle batched");
    // The batch publisher gives every message a Nats-Msg-Id: it is the message id.
    let process_batched = spans
        .iter()
        .find(|s| {
            s.span_kind == SpanKind::Consumer
                && attribute(s, "messaging.destination.name").as_deref() == Some(&*batched)
        })
        .unwrap();
    assert!(
        attribute(process_batched, "messaging.message.id").is_some_and(|id| !id.is_empty()),
        "{:?}",
        process_batched.attributes
    );
    Ok(())
}
