//! Issue 25 item 13: listings, history and watches retry a 503 / timeout at consumer creation
//! like every other KV call (a stream-leader election on a 3-node cluster), and a watch that
//! cannot resume for good ends with a typed error item instead of retrying forever with a log
//! line. `#[ignore]`d: needs Docker.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use std::time::Duration;

use async_nats::jetstream::stream;
use futures::StreamExt;
use natty_core::ConnectOptions;
use natty_kv::{BucketConfig, Kv};
use natty_testkit::{Nats, NatsCluster, init_tracing};

mod common;
use common::{bucket, judge, stream_leader};

/// A watch whose consumer is lost while another consumer takes the stream's only consumer
/// slot cannot resume: it ends with the server's refusal, not a silent retry loop.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_watch_that_cannot_resume_ends_with_an_error() -> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start().await?;
    let b = bucket();
    let js = judge(nats.url()).await?;
    // A bucket whose stream takes one consumer only (as an operator's limit would).
    js.create_stream(stream::Config {
        name: format!("KV_{b}"),
        subjects: vec![format!("$KV.{b}.>")],
        max_consumers: 1,
        max_messages_per_subject: 1,
        allow_direct: true,
        allow_rollup: true,
        deny_delete: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await?;
    let kv = Kv::new(ConnectOptions::new([nats.url()]).connect().await?);
    kv.put(&b, "k", "v".into()).await?;
    let mut watch = kv.watch_bucket(&b).await?;
    assert_eq!(watch.next().await.unwrap()?.key, "k");
    // Take the watch's consumer away and fill the slot before it notices (missed heartbeats,
    // 10 s).
    let mut stream = js.get_stream(format!("KV_{b}")).await?;
    let names: Vec<String> = stream
        .consumer_names()
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    for name in names {
        stream.delete_consumer(&name).await?;
    }
    stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("filler".into()),
            ..Default::default()
        })
        .await?;
    let _ = stream.info().await?;
    let ended = tokio::time::timeout(Duration::from_secs(45), async {
        loop {
            match watch.next().await {
                Some(Ok(event)) => eprintln!("event {event:?}"),
                Some(Err(e)) => return Some(e),
                None => return None,
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("the watch neither resumed nor ended within 45 s"))?;
    let error = ended.expect("an error item before the end");
    eprintln!("the watch ended with: {error}");
    assert!(
        error.to_string().contains("10026") || error.to_string().contains("maximum consumers"),
        "{error}"
    );
    let after = tokio::time::timeout(Duration::from_secs(5), watch.next()).await;
    assert!(
        matches!(after, Ok(None)),
        "the watch goes on after its error: {after:?}"
    );
    Ok(())
}

/// Right after the bucket's stream leader is killed, `keys`, `history` and `watch_key` wait
/// for the new leader (within `retry_for`) instead of failing on the first 503 / timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn listings_history_and_watches_ride_out_a_stream_leader_election() -> anyhow::Result<()> {
    init_tracing();
    let cluster = NatsCluster::start(3).await?;
    cluster.wait_meta_leader().await?;
    let b = bucket();
    let kv = Kv::new(
        ConnectOptions::new(cluster.urls())
            .request_timeout(Duration::from_secs(2))
            .connect()
            .await?,
    )
    .retry_for(Duration::from_secs(30));
    kv.create_bucket(BucketConfig::new(&b).replicas(3).history(5))
        .await?;
    for i in 0..5 {
        kv.put(&b, "k", format!("{i}").into()).await?;
    }
    let mut failures = Vec::new();
    for round in 0..3 {
        let js = judge(cluster.node(round).url()).await?;
        let leader = stream_leader(&js, &b).await?;
        let node = cluster.node(cluster.index_of(&leader).unwrap());
        node.kill().await?;
        let (keys, history, watch) =
            tokio::join!(kv.keys(&b), kv.history(&b, "k"), kv.watch_key(&b, "k"));
        match keys {
            Ok(keys) if keys == ["k"] => {}
            other => failures.push(format!("round {round}: keys: {other:?}")),
        }
        match history {
            Ok(h) if h.len() == 5 => {}
            other => failures.push(format!("round {round}: history: {other:?}")),
        }
        match watch {
            Ok(mut w) => match tokio::time::timeout(Duration::from_secs(30), w.next()).await {
                Ok(Some(Ok(e))) if e.key == "k" => {}
                other => failures.push(format!("round {round}: watch event: {other:?}")),
            },
            Err(e) => failures.push(format!("round {round}: watch: {e}")),
        }
        node.start_again().await?;
        cluster.wait_meta_leader().await?;
        // Let the restarted node catch up before the next round.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    assert!(failures.is_empty(), "{failures:#?}");
    Ok(())
}
