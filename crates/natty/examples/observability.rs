//! Observability: one trace from a request in one client to the handler in another (feature
//! `otel`), and the metrics natty records (feature `metrics`).
//!
//! Spans go to OpenTelemetry through `tracing-opentelemetry`; here they are kept in memory and
//! printed as a tree, where a service would send them to a collector (an OTLP exporter). The
//! metrics go to the `metrics` facade; here a `metrics-util` debugging recorder reads them
//! back, where a service would install a Prometheus or OTLP exporter instead.
//!
//! `NATS_URL=nats://127.0.0.1:4222 cargo run -p natty --features metrics,otel --example observability`
#![allow(clippy::print_stdout, reason = "an example prints what it does")]

use std::{collections::HashMap, time::Duration};

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use natty::{CancellationToken, ConnectOptions, Consume, ConsumerConfig, Natty, StreamConfig};
use opentelemetry::{
    global,
    propagation::TextMapCompositePropagator,
    trace::{SpanId, TracerProvider as _},
};
use opentelemetry_sdk::{
    propagation::{BaggagePropagator, TraceContextPropagator},
    trace::{InMemorySpanExporter, SdkTracerProvider, SpanData},
};
use tracing::{Instrument, info_span};
use tracing_subscriber::{Layer, filter::Targets, layer::SubscriberExt};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Traces: natty's per-message spans are `debug`-level, so the OpenTelemetry layer lets
    // `natty_stream=debug` through (and this program's own spans).
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("observability-example"))
        .with_filter(
            Targets::new()
                .with_target("natty_stream", tracing::Level::DEBUG)
                .with_target("observability", tracing::Level::INFO),
        );
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(otel))?;
    // How trace context travels in headers is the application's choice, made once: natty
    // reads and writes message headers with the global propagator (here W3C trace context
    // and baggage; B3 or a vendor's work the same way). Without one, nothing is propagated.
    global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));
    // Metrics: any `metrics` recorder.
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install()?;

    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    // Two clients on two connections, as two services would be.
    let frontend = Natty::connect(ConnectOptions::new([url.as_str()])).await?;
    let worker = Natty::connect(ConnectOptions::new([url.as_str()])).await?;
    let stream = format!("OBS_{}", std::process::id());
    let subject = format!("{stream}.orders");
    frontend
        .create_stream(StreamConfig::new(&stream, [format!("{stream}.>")]))
        .await?;
    frontend
        .create_consumer(ConsumerConfig::new(&stream, "billing"))
        .await?;

    // A request in the frontend publishes an order (its trace context goes in the headers).
    async {
        frontend
            .publish(&subject, "order 1".into())
            .await
            .map_err(anyhow::Error::from)?;
        frontend.flush().await.map_err(anyhow::Error::from)?;
        anyhow::Ok(())
    }
    .instrument(info_span!("POST /orders"))
    .await?;
    let bucket = format!("obs_{}", std::process::id());
    frontend.put(&bucket, "last-order", "1".into()).await?;

    // The worker handles it inside a span that continues the request's trace.
    let cancel = CancellationToken::new();
    let (done_tx, mut done) = tokio::sync::mpsc::channel(1);
    let consuming = {
        let (worker, cancel, stream) = (worker.clone(), cancel.clone(), stream.clone());
        tokio::spawn(async move {
            worker
                .consume(cancel, Consume::new(stream, "billing"), move |m| {
                    let done = done_tx.clone();
                    async move {
                        async { tokio::time::sleep(Duration::from_millis(5)).await }
                            .instrument(info_span!("charge card", order = %String::from_utf8_lossy(&m.payload)))
                            .await;
                        let _ = done.send(()).await;
                        Ok(())
                    }
                })
                .await
        })
    };
    tokio::time::timeout(Duration::from_secs(30), done.recv())
        .await
        .map_err(|_| anyhow::anyhow!("the order was not handled within 30 s"))?;
    cancel.cancel();
    consuming.await??;
    frontend.delete_stream(&stream).await?;
    frontend.delete_bucket(&bucket).await?;
    frontend.close().await?;
    worker.close().await?;

    provider.force_flush()?;
    let spans = exporter.get_finished_spans()?;
    let request = spans
        .iter()
        .find(|s| s.name == "POST /orders")
        .ok_or_else(|| anyhow::anyhow!("no request span"))?;
    let trace = request.span_context.trace_id();
    let in_trace: Vec<SpanData> = spans
        .iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .cloned()
        .collect();
    println!("trace {trace}, from the request to the handler in the other client:");
    print_tree(&in_trace, SpanId::INVALID, 1);
    anyhow::ensure!(
        in_trace.iter().any(|s| s.name == "charge card"),
        "the handler's span is not in the request's trace"
    );
    println!("\nmetrics:");
    let mut lines: Vec<String> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key().clone();
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={:?}", l.key(), l.value()))
                .collect();
            let value = match value {
                DebugValue::Counter(n) => n.to_string(),
                DebugValue::Gauge(g) => g.0.to_string(),
                DebugValue::Histogram(v) => format!("{} sample(s)", v.len()),
            };
            format!("  {}{{{}}} {value}", key.name(), labels.join(","))
        })
        .collect();
    lines.sort();
    for line in &lines {
        println!("{line}");
    }
    anyhow::ensure!(
        lines
            .iter()
            .any(|l| l.contains("natty_stream_consumer_acked_total")),
        "the consumer's ack was counted"
    );
    Ok(())
}

/// Prints the spans under `parent`, indented (remote parents count as roots' children too).
fn print_tree(spans: &[SpanData], parent: SpanId, depth: usize) {
    let ids: HashMap<SpanId, &SpanData> = spans
        .iter()
        .map(|s| (s.span_context.span_id(), s))
        .collect();
    for s in spans.iter().filter(|s| {
        s.parent_span_id == parent
            || (parent == SpanId::INVALID && !ids.contains_key(&s.parent_span_id))
    }) {
        let attributes: Vec<String> = s
            .attributes
            .iter()
            .filter(|kv| kv.key.as_str().starts_with("messaging."))
            .map(|kv| format!("{}={}", kv.key, kv.value))
            .collect();
        println!(
            "{:indent$}{} [{:?}] {}",
            "",
            s.name,
            s.span_kind,
            attributes.join(" "),
            indent = depth * 2
        );
        print_tree(spans, s.span_context.span_id(), depth + 1);
    }
}
