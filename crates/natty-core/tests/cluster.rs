//! The 3-node cluster harness: a client keeps doing JetStream requests after a node dies.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use std::time::Duration;

use async_nats::jetstream::stream;
use natty_core::ConnectOptions;
use natty_testkit::{NatsCluster, init_tracing, wait_for};

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn jetstream_survives_the_loss_of_the_connected_node() -> anyhow::Result<()> {
    init_tracing();
    let cluster = NatsCluster::start(3).await?;
    let client = ConnectOptions::new(cluster.urls())
        .request_timeout(Duration::from_secs(3))
        .connect()
        .await?;
    let js = client.jetstream();
    js.create_stream(stream::Config {
        name: "ORDERS".into(),
        subjects: vec!["orders.>".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await?;
    js.publish("orders.1", "one".into()).await?.await?;

    // Kill the very node this client talks to.
    let connected = client.nats().server_info().server_name;
    let victim = cluster
        .index_of(&connected)
        .expect("connected to a cluster node");
    cluster.node(victim).kill().await?;

    // JetStream requests go on through the other two (after the client reconnects and the
    // stream's raft group elects a new leader if it lost its own).
    let ack = wait_for(
        "a publish acked by the surviving nodes",
        Duration::from_secs(30),
        || {
            let js = js.clone();
            async move { js.publish("orders.2", "two".into()).await.ok()?.await.ok() }
        },
    )
    .await?;
    assert_eq!(ack.stream, "ORDERS");
    assert_ne!(client.nats().server_info().server_name, connected);
    let mut stream = js.get_stream("ORDERS").await?;
    assert!(stream.info().await?.state.messages >= 2);
    Ok(())
}
