//! Concurrency: one consumer running up to 8 handlers at once (`ConsumeOptions::concurrency`).
//! 40 messages whose handler takes 100 ms finish in about half a second instead of four.
//!
//! `NATS_URL=nats://127.0.0.1:4222 cargo run -p natty --example concurrency`
#![allow(clippy::print_stdout, reason = "an example prints what it does")]

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use natty::{
    CancellationToken, ConnectOptions, Consume, ConsumeOptions, ConsumerConfig, Natty, StreamConfig,
};

const N: usize = 40;
const CONCURRENCY: usize = 8;

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
    let stream = format!("WORK_{}", std::process::id());
    natty
        .create_stream(StreamConfig::new(&stream, [format!("{stream}.>")]))
        .await?;
    natty
        .create_consumer(ConsumerConfig::new(&stream, "workers"))
        .await?;
    for i in 0..N {
        natty
            .publish(&format!("{stream}.jobs"), format!("job {i}").into())
            .await?;
    }
    natty.flush().await?;

    let (running, peak, done) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let consumer = tokio::spawn({
        let (natty, cancel, stream) = (natty.clone(), cancel.clone(), stream.clone());
        let (running, peak, done) = (running.clone(), peak.clone(), done.clone());
        async move {
            natty
                .consume(
                    cancel,
                    Consume::new(&stream, "workers")
                        .options(ConsumeOptions::default().concurrency(CONCURRENCY)),
                    move |_msg| {
                        let (running, peak, done) = (running.clone(), peak.clone(), done.clone());
                        async move {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(100)).await; // the "work"
                            running.fetch_sub(1, Ordering::SeqCst);
                            done.fetch_add(1, Ordering::SeqCst);
                            Ok(())
                        }
                    },
                )
                .await
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.load(Ordering::SeqCst) < N {
        anyhow::ensure!(Instant::now() < deadline, "not all jobs done in 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    cancel.cancel();
    let stats = consumer.await??;
    println!(
        "{N} jobs of 100 ms in {took:?} with concurrency {CONCURRENCY}: at most {} ran at once; {} acked",
        peak.load(Ordering::SeqCst),
        stats.acked
    );
    anyhow::ensure!(peak.load(Ordering::SeqCst) > 1, "handlers never overlapped");
    natty.delete_stream(&stream).await?;
    natty.close().await?;
    Ok(())
}
