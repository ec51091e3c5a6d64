//! The batched publisher's failure channel: a message that cannot be stored (here: its subject
//! is captured by no stream) comes back with its payload, instead of being dropped.
//!
//! `NATS_URL=nats://127.0.0.1:4222 cargo run -p natty --example publisher_failures`
#![allow(clippy::print_stdout, reason = "an example prints what it does")]

use std::time::Duration;

use natty::{BatchConfig, BatchPublisher, ConnectOptions, StreamConfig, stream};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let client = ConnectOptions::new([url]).connect().await?;
    let name = format!("EVENTS_{}", std::process::id());
    stream::ensure_stream(&client, &StreamConfig::new(&name, [format!("{name}.>")])).await?;

    let publisher = BatchPublisher::new(
        client.clone(),
        BatchConfig::default()
            .max_attempts(3)
            .ack_timeout(Duration::from_secs(2)),
    )?;
    // Take the channel before sending: from then on every failed message arrives here.
    let mut failures = publisher
        .take_errors()
        .ok_or_else(|| anyhow::anyhow!("failure channel already taken"))?;

    publisher
        .send(&format!("{name}.ok"), "stored".into())
        .await?;
    publisher
        .send("nowhere.captured", "no stream captures this subject".into())
        .await?;
    publisher
        .send(&format!("{name}.ok"), "stored too".into())
        .await?;
    let stats = publisher.flush().await?;
    println!("flushed: {stats:?}");

    let failed = tokio::time::timeout(Duration::from_secs(10), failures.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("failure channel closed"))?;
    println!(
        "handed back: subject {}, payload {:?}, after {} attempt(s): {}",
        failed.subject,
        String::from_utf8_lossy(&failed.payload),
        failed.attempts,
        failed.error
    );
    let report = publisher.close().await?;
    println!("closed: {} more failed", report.failed.len());
    stream::delete_stream(&client, &name).await?;
    client.drain().await?;
    Ok(())
}
