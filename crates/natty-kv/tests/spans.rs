//! Span levels: a key operation is as frequent as a published message, so its span is
//! `debug`, like natty-stream's per-message spans. An exporter that takes `info` (the usual
//! production filter) must not export every `get`; bucket administration stays `info`.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use std::sync::{Arc, Mutex};

use natty_core::ConnectOptions;
use natty_kv::Kv;
use natty_testkit::{Nats, unique_name};
use tracing::{Level, Subscriber, span};
use tracing_subscriber::{Layer, layer::Context, layer::SubscriberExt, registry::LookupSpan};

/// Every span opened: its name and level.
#[derive(Clone, Default)]
struct Opened(Arc<Mutex<Vec<(&'static str, Level)>>>);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Opened {
    fn on_new_span(&self, attrs: &span::Attributes<'_>, _: &span::Id, _: Context<'_, S>) {
        let meta = attrs.metadata();
        self.0.lock().unwrap().push((meta.name(), *meta.level()));
    }
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn key_operations_are_debug_spans_and_bucket_administration_info() -> anyhow::Result<()> {
    let opened = Opened::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(opened.clone()))?;

    let nats = Nats::start().await?;
    let kv = Kv::new(ConnectOptions::new([nats.url()]).connect().await?);
    let b = unique_name("spans").replace('-', "_");
    let rev = kv.put(&b, "k", "v1".into()).await?;
    kv.get(&b, "k").await?;
    kv.get_revision(&b, "k", rev).await?;
    kv.get_at_least(&b, "k", rev).await?;
    kv.history(&b, "k").await?;
    kv.update(&b, "k", "v2".into(), rev).await?;
    kv.refresh(&b, "k").await?;
    kv.keys(&b).await?;
    kv.delete(&b, "k").await?;
    kv.purge(&b, "k").await?;
    kv.status(&b).await?;
    kv.delete_bucket(&b).await?;

    let opened = opened.0.lock().unwrap().clone();
    let level = |name: &str| {
        let levels: Vec<Level> = opened
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, l)| *l)
            .collect();
        assert!(!levels.is_empty(), "no span {name}: {opened:?}");
        levels
    };
    for name in [
        "natty.kv.get",
        "natty.kv.get_revision",
        "natty.kv.get_at_least",
        "natty.kv.history",
        "natty.kv.keys",
        "natty.kv.write",
        "natty.kv.refresh",
        "natty.kv.delete",
        "natty.kv.purge",
    ] {
        assert!(
            level(name).iter().all(|l| *l == Level::DEBUG),
            "{name} must be a debug span, like a per-message stream span: {:?}",
            level(name)
        );
    }
    for name in ["natty.kv.status", "natty.kv.delete_bucket"] {
        assert!(level(name).iter().all(|l| *l == Level::INFO), "{name}");
    }
    Ok(())
}
