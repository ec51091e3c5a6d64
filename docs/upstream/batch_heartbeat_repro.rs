//! Minimal reproduction: async-nats pull `Batch` goes deaf after an idle heartbeat.
//! Needs a JetStream server: `nats-server -js` (NATS_URL, default nats://127.0.0.1:4222).
//! Cargo.toml: async-nats = "0.48" (or "0.51"), tokio = { version = "1", features = ["full"] },
//! futures = "0.3".
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), async_nats::Error> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let js = jetstream::new(async_nats::connect(url).await?);
    let stream = js
        .get_or_create_stream(stream::Config {
            name: "REPRO".into(),
            subjects: vec!["repro".into()],
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .get_or_create_consumer(
            "repro",
            pull::Config {
                durable_name: Some("repro".into()),
                ..Default::default()
            },
        )
        .await?;
    let mut batch = consumer
        .batch()
        .max_messages(10)
        .expires(Duration::from_secs(30))
        .heartbeat(Duration::from_secs(1))
        .messages()
        .await?;
    // Publish after 3 s idle: by then the server has sent two idle heartbeats.
    let publisher = js.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        publisher.publish("repro", "hello".into()).await?.await?;
        Ok::<_, async_nats::Error>(())
    });
    let start = Instant::now();
    let next = batch.next().await;
    // Expected: Some(Ok(message)) after ~3 s.
    // Observed: None after ~35 s (expires + 5 s): the message sat in the subscription.
    println!(
        "after {:?}: {:?}",
        start.elapsed(),
        next.map(|r| r.map(|m| m.payload.clone()))
    );
    Ok(())
}
