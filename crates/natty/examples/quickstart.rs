//! The README's quick start: publish three orders, then consume them until Ctrl-C or SIGTERM,
//! and stop cleanly (running handlers finish, acks are flushed, counters are printed).
//!
//! Needs only the `stream` feature.
//!
//! ```text
//! cargo xtask server        # a NATS server with JetStream on nats://127.0.0.1:4222 (or: docker compose up)
//! cargo run -p natty --example quickstart
//! ```
#![allow(clippy::print_stdout, reason = "an example prints what it does")]

use natty::{
    CancellationToken, ConnectOptions, Consume, ConsumerConfig, HandlerError, Natty, StreamConfig,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // natty reports what it retries and gives up on through `tracing`: show its warnings
    // (RUST_LOG=info or debug for more).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();

    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let natty = Natty::connect(ConnectOptions::new([url])).await?;
    natty
        .create_stream(StreamConfig::new("ORDERS", ["orders.>"]))
        .await?;
    natty
        .create_consumer(ConsumerConfig::new("ORDERS", "billing"))
        .await?;

    for i in 1..=3 {
        natty
            .publish("orders.created", format!("order {i}").into())
            .await?; // batched in the background
    }
    natty.flush().await?; // every message acknowledged by the stream
    println!("published 3 orders");

    // Ctrl-C or SIGTERM (what `docker stop` and Kubernetes send) cancels the consumer.
    let cancel: CancellationToken = natty::cancel_on_shutdown_signal()?;

    println!("consuming; press Ctrl-C to stop");
    let stats = natty
        .consume(
            cancel,
            Consume::new("ORDERS", "billing"),
            |msg| async move {
                if msg.payload.is_empty() {
                    // Terminated (and published to the dead-letter subject, if one is set).
                    return Err(HandlerError::permanent("empty order"));
                }
                println!("processing {}", String::from_utf8_lossy(&msg.payload));
                Ok(()) // acked
            },
        )
        .await?;
    println!(
        "stopped cleanly: {} delivered, {} acked",
        stats.delivered, stats.acked
    );
    natty.close().await?;
    Ok(())
}
