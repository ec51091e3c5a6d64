//! Helpers shared by the natty-kv suites.
#![allow(dead_code, unreachable_pub, reason = "each suite uses a part")]

use std::time::Duration;

use futures::StreamExt;
use natty_core::ConnectOptions;
use natty_kv::{Event, Kv, Watch};
use natty_testkit::{Nats, init_tracing, unique_name};

/// A fresh server and a `Kv` connected to it.
pub async fn setup() -> anyhow::Result<(Nats, Kv)> {
    init_tracing();
    let nats = Nats::start().await?;
    let client = ConnectOptions::new([nats.url()]).connect().await?;
    Ok((nats, Kv::new(client)))
}

/// A bucket name unique to this test.
pub fn bucket() -> String {
    unique_name("b").replace('-', "_")
}

/// The next event, or fail after `timeout`.
pub async fn next_event(watch: &mut Watch, timeout: Duration) -> anyhow::Result<Event> {
    Ok(tokio::time::timeout(timeout, watch.next())
        .await
        .map_err(|_| anyhow::anyhow!("no watch event within {timeout:?}"))?
        .ok_or_else(|| anyhow::anyhow!("watch ended"))??)
}
