//! Helpers shared by the consume suites: a server with a stream and one durable, numbered
//! messages published to it.
#![allow(dead_code, unreachable_pub, reason = "each suite uses a part")]

use natty_core::{Client, ConnectOptions};
use natty_stream::{
    ConsumerConfig, Message, Publisher, StreamConfig, ensure_consumer, ensure_stream,
};
use natty_testkit::{Nats, init_tracing, unique_name};

pub struct Setup {
    pub _nats: Nats,
    pub url: String,
    pub client: Client,
    pub stream: String,
}

/// A server, a stream named from `prefix` capturing `<stream>.>`, and the durable `consumer`
/// makes for it.
pub async fn setup(
    prefix: &str,
    consumer: impl FnOnce(&str) -> ConsumerConfig,
) -> anyhow::Result<Setup> {
    init_tracing();
    let nats = Nats::start().await?;
    let client = ConnectOptions::new([nats.url()]).connect().await?;
    let stream = unique_name(prefix).replace('-', "_");
    ensure_stream(
        &client,
        &StreamConfig::new(&stream, [format!("{stream}.>")]),
    )
    .await?;
    ensure_consumer(&client, &consumer(&stream)).await?;
    Ok(Setup {
        url: nats.url(),
        _nats: nats,
        client,
        stream,
    })
}

/// Publishes `0..n` (as text) to `<stream>.m`.
pub async fn publish_n(s: &Setup, n: u64) -> anyhow::Result<()> {
    let p = Publisher::new(s.client.clone());
    for i in 0..n {
        p.publish(&format!("{}.m", s.stream), i.to_string().into())
            .await?;
    }
    Ok(())
}

/// The number a message of [`publish_n`] carries.
pub fn num(m: &Message) -> u64 {
    std::str::from_utf8(&m.payload).unwrap().parse().unwrap()
}
