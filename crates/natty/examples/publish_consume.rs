//! Publish 1,000 messages through the batched publisher, consume them with a durable consumer,
//! and show that every one arrived exactly once.
//!
//! `NATS_URL=nats://127.0.0.1:4222 cargo run -p natty --example publish_consume`
#![allow(clippy::print_stdout, reason = "an example prints what it does")]

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use natty::{CancellationToken, ConnectOptions, Consume, ConsumerConfig, Natty, StreamConfig};

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
    let stream = format!("DEMO_{}", std::process::id());
    let subject = format!("{stream}.orders");
    natty
        .create_stream(StreamConfig::new(&stream, [format!("{stream}.>")]))
        .await?;
    natty
        .create_consumer(ConsumerConfig::new(&stream, "billing"))
        .await?;

    const N: u32 = 1000;
    let started = Instant::now();
    for i in 0..N {
        natty.publish(&subject, format!("order {i}").into()).await?;
    }
    natty.flush().await?; // every message acknowledged by the stream
    println!(
        "published {N} messages in {:?} (batched, all acknowledged)",
        started.elapsed()
    );

    let seen = Arc::new(Mutex::new(HashSet::new()));
    let cancel = CancellationToken::new();
    let consumer = {
        let (natty, seen, cancel, stream) =
            (natty.clone(), seen.clone(), cancel.clone(), stream.clone());
        tokio::spawn(async move {
            natty
                .consume(cancel, Consume::new(stream, "billing"), move |m| {
                    let seen = seen.clone();
                    async move {
                        seen.lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .insert(m.payload);
                        Ok(())
                    }
                })
                .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .len()
        < N as usize
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "not all messages arrived in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    let stats = consumer.await??;
    println!(
        "consumed {} distinct messages: delivered {}, acked {}, redelivered {}",
        seen.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len(),
        stats.delivered,
        stats.acked,
        stats.redelivered
    );
    anyhow::ensure!(stats.acked == u64::from(N), "acked {} of {N}", stats.acked);
    natty.delete_stream(&stream).await?;
    natty.close().await?;
    Ok(())
}
