//! Dead-lettering: a handler that refuses a message for good (`HandlerError::permanent`), and
//! one that keeps failing until `max_deliver` runs out, both land on a dead-letter subject with
//! the reason in headers — where a second consumer reads them.
//!
//! `NATS_URL=nats://127.0.0.1:4222 cargo run -p natty --example dead_letter`
#![allow(clippy::print_stdout, reason = "an example prints what it does")]

use std::time::Duration;

use natty::{
    CancellationToken, ConnectOptions, Consume, ConsumeOptions, ConsumerConfig, HandlerError,
    Natty, StreamConfig,
};
use tokio::sync::mpsc;

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
    let id = std::process::id();
    let (orders, dead) = (format!("SHOP_{id}"), format!("DEAD_{id}"));
    let dead_subject = format!("dead_{id}.orders");
    // The dead-letter subject must be captured by a stream: its own, so that the orders
    // consumer never sees its own rejects.
    natty
        .create_stream(StreamConfig::new(&orders, [format!("shop_{id}.>")]))
        .await?;
    natty
        .create_stream(StreamConfig::new(&dead, [dead_subject.clone()]))
        .await?;
    natty
        .create_consumer(ConsumerConfig::new(&orders, "billing").max_deliver(Some(3)))
        .await?;
    natty
        .create_consumer(ConsumerConfig::new(&dead, "inspect"))
        .await?;

    for payload in ["order 1", "", "order 3", "flaky"] {
        natty
            .publish(&format!("shop_{id}.created"), payload.into())
            .await?;
    }
    natty.flush().await?;

    let cancel = CancellationToken::new();
    let billing = tokio::spawn({
        let (natty, cancel, orders) = (natty.clone(), cancel.clone(), orders.clone());
        async move {
            natty
                .consume(
                    cancel,
                    Consume::new(&orders, "billing").options(
                        ConsumeOptions::default()
                            .dead_letter(dead_subject)
                            .retry_delay(Duration::from_millis(100), Duration::from_millis(200)),
                    ),
                    |msg| async move {
                        match &msg.payload[..] {
                            b"" => Err(HandlerError::permanent("empty order")),
                            b"flaky" => Err(HandlerError::retry(format!(
                                "downstream unavailable (delivery {})",
                                msg.delivered
                            ))),
                            _ => Ok(()),
                        }
                    },
                )
                .await
        }
    });

    // Read the dead letters: the original payload, and why.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let inspect = tokio::spawn({
        let (natty, cancel, dead) = (natty.clone(), cancel.clone(), dead.clone());
        async move {
            natty
                .consume(cancel, Consume::new(&dead, "inspect"), move |msg| {
                    let tx = tx.clone();
                    async move {
                        let _ = tx.send(msg);
                        Ok(())
                    }
                })
                .await
        }
    });
    for _ in 0..2 {
        let msg = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("dead-letter consumer ended"))?;
        println!(
            "dead letter: {:?} after {} deliveries, because: {}",
            String::from_utf8_lossy(&msg.payload),
            msg.header("Natty-Deliveries").unwrap_or("?"),
            msg.header("Natty-Dead-Letter-Reason").unwrap_or("?"),
        );
    }
    cancel.cancel();
    let stats = billing.await??;
    inspect.await??;
    println!(
        "billing: {} acked, {} naked (retried), {} dead-lettered",
        stats.acked, stats.naked, stats.dead_lettered
    );
    anyhow::ensure!(stats.dead_lettered == 2, "expected 2 dead letters");
    natty.delete_stream(&orders).await?;
    natty.delete_stream(&dead).await?;
    natty.close().await?;
    Ok(())
}
