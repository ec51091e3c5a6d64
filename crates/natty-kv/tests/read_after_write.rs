//! Reads that never go back (issue 25 item 10): `get_at_least` and a handle's reads of its own
//! writes, on a real 3-node cluster whose follower lags because it is paused (`docker pause`)
//! while a write is acknowledged by the other two. Judged against what a plain direct get (any
//! replica, the old path) answers at the same moment.
//! `#[ignore]`d so a plain `cargo test` needs no Docker; `cargo xtask integration` runs them.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use std::time::Duration;

use bytes::Bytes;
use natty_core::ConnectOptions;
use natty_kv::{BucketConfig, Kv};
use natty_testkit::{Nats, NatsCluster, init_tracing};

mod common;
use common::{bucket, judge, stream_leader};

/// A direct get of the key's last message, sent as async-nats sends it (any replica; no
/// floor): the revision it answers, `None` for no message.
async fn raw_direct_get(
    client: &async_nats::Client,
    bucket: &str,
    key: &str,
    body: &str,
) -> anyhow::Result<Option<u64>> {
    let reply = client
        .request(
            format!("$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.{key}"),
            Bytes::from(body.to_owned()),
        )
        .await?;
    if reply.status.is_some_and(|s| s.as_u16() == 404) {
        return Ok(None);
    }
    if let Some(status) = reply.status.filter(|s| s.as_u16() != 200) {
        anyhow::bail!("direct get answered {status} {:?}", reply.description);
    }
    let seq = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Sequence"))
        .ok_or_else(|| anyhow::anyhow!("no Nats-Sequence header"))?;
    Ok(Some(seq.as_str().parse()?))
}

/// What nats-server does with `min_last_seq` (ADR "JetStream Read-after-Write"): the feature
/// was removed from 2.12 before its release (nats-server#7285); this records that the pinned
/// server still ignores it, which is why natty checks the floor itself. If this fails, the
/// server implements it: natty keeps working (it handles `412`), and its docs can say so.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn the_pinned_server_ignores_min_last_seq() -> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start().await?;
    let kv = Kv::new(ConnectOptions::new([nats.url()]).connect().await?);
    let b = bucket();
    let rev = kv.put(&b, "k", "v".into()).await?;
    let raw = async_nats::connect(nats.url()).await?;
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        raw_direct_get(
            &raw,
            &b,
            "k",
            &format!(r#"{{"min_last_seq":{}}}"#, rev + 1000),
        ),
    )
    .await;
    assert!(
        matches!(answer, Ok(Ok(Some(r))) if r == rev),
        "a direct get with min_last_seq above the stream's last sequence answered {answer:?}: \
         the server implements read-after-write now"
    );
    // natty's floor holds anyway: the leader answers, the revision is the key's last.
    let entry = kv.get_at_least(&b, "k", rev + 1000).await?.unwrap();
    assert_eq!(entry.revision, rev);
    Ok(())
}

/// A follower paused while a write is acknowledged (by the leader and the other follower) is
/// behind that write when it resumes: a plain direct get sent to it at that moment can answer
/// the previous revision. `get_at_least(revision)` never does, and neither do the writing
/// handle's own `get`s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn reads_are_never_older_than_their_floor_on_a_lagging_follower() -> anyhow::Result<()> {
    init_tracing();
    let cluster = NatsCluster::start(3).await?;
    cluster.wait_meta_leader().await?;
    let b = bucket();
    let js = judge(cluster.node(0).url()).await?;
    let setup = Kv::new(ConnectOptions::new(cluster.urls()).connect().await?);
    setup
        .create_bucket(BucketConfig::new(&b).replicas(3))
        .await?;
    let leader = stream_leader(&js, &b).await?;
    let leader_i = cluster.index_of(&leader).unwrap();
    let follower = (0..3).find(|&i| i != leader_i).unwrap();
    let lagging = cluster.node(follower);
    // The writer talks to the leader; the readers to the follower that will lag.
    let writer = Kv::new(
        ConnectOptions::new([cluster.node(leader_i).url()])
            .connect()
            .await?,
    );
    let reader = Kv::new(
        ConnectOptions::new([lagging.url()])
            .request_timeout(Duration::from_secs(20))
            .connect()
            .await?,
    );
    let raw = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(20)))
        .connect(lagging.url())
        .await?;
    // The same handle writes (through the lagging follower) and reads: its own writes.
    let own = Kv::new(
        ConnectOptions::new([lagging.url()])
            .request_timeout(Duration::from_secs(20))
            .connect()
            .await?,
    );
    let own_rev = own.put(&b, "own", "0".into()).await?;
    reader.get(&b, "k").await?; // the bucket is cached: no lookup while the follower is paused
    let mut floor = own_rev;

    let (mut stale_raw, mut trials) = (0, 0);
    let mut violations = Vec::new();
    for i in 0..25 {
        let key = "k";
        let before = writer.put(&b, key, format!("{i}a").into()).await?;
        // Let every replica apply `before`, so a stale answer is exactly `before`.
        tokio::time::sleep(Duration::from_millis(200)).await;
        lagging.pause().await?;
        let rev = writer.put(&b, key, format!("{i}b").into()).await?;
        let raw_read = {
            let (raw, b) = (raw.clone(), b.clone());
            tokio::spawn(async move { raw_direct_get(&raw, &b, key, "").await })
        };
        let floored = {
            let (reader, b) = (reader.clone(), b.clone());
            tokio::spawn(async move { reader.get_at_least(&b, key, rev).await })
        };
        let own_read = {
            let (own, b) = (own.clone(), b.clone());
            tokio::spawn(async move { own.get(&b, "own").await })
        };
        // The requests wait in the paused server's socket; it reads them as it resumes,
        // before (or while) it applies what it missed.
        tokio::time::sleep(Duration::from_millis(100)).await;
        lagging.unpause().await?;
        trials += 1;
        if raw_read.await??.is_some_and(|r| r < rev) {
            stale_raw += 1;
        }
        match floored.await? {
            Ok(Some(e)) if e.revision >= rev => {}
            other => violations.push(format!("get_at_least({rev}): {other:?}")),
        }
        match own_read.await? {
            Ok(Some(e)) if e.revision >= floor => {}
            other => violations.push(format!("own get (floor {floor}): {other:?}")),
        }
        // The own handle writes again (through the follower, now resumed).
        floor = own.put(&b, "own", format!("{i}").into()).await?;
        match own.get(&b, "own").await {
            Ok(Some(e)) if e.revision >= floor => {}
            other => violations.push(format!("own get right after put {floor}: {other:?}")),
        }
        let _ = before;
    }
    eprintln!(
        "{trials} trials: a plain direct get on the lagging follower answered an older revision \
         {stale_raw} times"
    );
    assert!(
        violations.is_empty(),
        "{} reads older than their floor: {violations:?}",
        violations.len()
    );
    Ok(())
}
