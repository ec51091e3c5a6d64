//! Key/value: put, get, a compare-and-set that loses, a per-key TTL that expires, and a watch.
//!
//! `NATS_URL=nats://127.0.0.1:4222 cargo run -p natty --example kv`
#![allow(clippy::print_stdout, reason = "an example prints what it does")]

use std::time::{Duration, Instant};

use futures::StreamExt;
use natty::{ConnectOptions, EventKind, Natty, kv::ErrorKind};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let natty = Natty::connect(ConnectOptions::new([url])).await?;
    let bucket = format!("demo_{}", std::process::id());

    let rev = natty.put(&bucket, "feature.x", "on".into()).await?;
    let entry = natty
        .get(&bucket, "feature.x")
        .await?
        .expect("just written");
    println!(
        "put feature.x=on (revision {rev}); get -> {:?}",
        std::str::from_utf8(&entry.value)?
    );

    natty
        .kv()
        .update(&bucket, "feature.x", "off".into(), entry.revision)
        .await?;
    match natty
        .kv()
        .update(&bucket, "feature.x", "stale".into(), entry.revision)
        .await
    {
        Err(e) if e.kind() == ErrorKind::RevisionMismatch => {
            println!("a second update on the old revision is refused: {e}");
        }
        other => anyhow::bail!("expected a revision mismatch, got {other:?}"),
    }

    let mut watch = natty.watch_key(&bucket, "session").await?;
    let written = Instant::now();
    natty
        .create_with_ttl(&bucket, "session", "token".into(), Duration::from_secs(1))
        .await?;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("watch ended"))??;
        println!(
            "watch: {:?} {} (after {:?})",
            event.kind,
            event.key,
            written.elapsed()
        );
        if event.kind == EventKind::Expired {
            break;
        }
    }
    println!("keys now: {:?}", natty.keys(&bucket).await?);
    natty.delete_bucket(&bucket).await?;
    natty.close().await?;
    Ok(())
}
