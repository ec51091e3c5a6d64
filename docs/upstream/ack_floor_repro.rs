//! Minimal reproduction: on a replicated stream, a durable created at a start sequence that
//! has acknowledged nothing reports ack floor 0 (expected: start - 1).
//! Needs a 3-node JetStream cluster (NATS_URL, default nats://127.0.0.1:4222); with a single
//! server, set REPLICAS=1 to compare.
//! Cargo.toml: async-nats = "0.48", tokio = { version = "1", features = ["full"] }.
use async_nats::jetstream::{self, consumer, stream};

#[tokio::main]
async fn main() -> Result<(), async_nats::Error> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let replicas: usize = std::env::var("REPLICAS").map_or(3, |r| r.parse().unwrap_or(3));
    let js = jetstream::new(async_nats::connect(&url).await?);
    let _ = js.delete_stream("REPRO_FLOOR").await;
    let s = js
        .create_stream(stream::Config {
            name: "REPRO_FLOOR".into(),
            subjects: vec!["repro.floor.>".into()],
            num_replicas: replicas,
            ..Default::default()
        })
        .await?;
    for i in 0..10 {
        js.publish("repro.floor.x", format!("{i}").into()).await?.await?;
    }
    // A durable that starts after the 10 stored messages: everything before it is not pending,
    // so its ack floor is 10.
    s.create_consumer(consumer::pull::Config {
        durable_name: Some("fresh".into()),
        deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: 11 },
        ack_policy: consumer::AckPolicy::Explicit,
        ..Default::default()
    })
    .await?;
    for attempt in 0..10 {
        let info = s.consumer_info("fresh").await?;
        println!(
            "replicas {replicas}, read {attempt}: ack floor stream seq {} (expected 10), \
             delivered stream seq {}, leader {:?}",
            info.ack_floor.stream_sequence,
            info.delivered.stream_sequence,
            info.cluster.as_ref().and_then(|c| c.leader.clone()),
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    Ok(())
}
