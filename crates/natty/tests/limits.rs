//! Protocol limits on the facade's write paths: a message or key the server would refuse (by
//! closing the shared connection) is a typed error at once, nothing sent, and every other user
//! of the connection carries on.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use std::{sync::atomic::Ordering, time::Duration};

use futures::StreamExt;
use natty::{BucketConfig, ConnectOptions, Natty, StreamConfig};
use natty_testkit::{Nats, ServerOptions, init_tracing, unique_name};

/// The servers' `max_payload` here: small, so a message over it is cheap.
const MAX_PAYLOAD: usize = 64 * 1024;

async fn small_payload_server() -> anyhow::Result<Nats> {
    Nats::start_with(ServerOptions {
        config: Some(format!("max_payload: {MAX_PAYLOAD}\n")),
        ..Default::default()
    })
    .await
}

fn connects(natty: &Natty) -> u64 {
    natty
        .client()
        .nats()
        .statistics()
        .connects
        .load(Ordering::Relaxed)
}

/// `f` must fail within 3 s (today's failures took 10 s to 58 s, reconnecting meanwhile).
async fn refused_at_once<T: std::fmt::Debug, E: std::fmt::Display>(
    what: &str,
    f: impl Future<Output = Result<T, E>>,
) -> E {
    match tokio::time::timeout(Duration::from_secs(3), f).await {
        Ok(Err(e)) => e,
        Ok(Ok(v)) => panic!("{what}: accepted ({v:?}), should be refused before sending"),
        Err(_) => panic!("{what}: not refused at once (still waiting after 3 s)"),
    }
}

/// A watch on the same connection sees a write made after the refusals: it never blipped.
async fn watch_sees(
    natty: &Natty,
    watch: &mut natty::kv::Watch,
    bucket: &str,
    value: &str,
) -> anyhow::Result<()> {
    natty.put(bucket, "probe", value.to_owned().into()).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let event = tokio::time::timeout_at(deadline, watch.next())
            .await
            .map_err(|_| anyhow::anyhow!("the watch on the shared connection went deaf"))?;
        let event = event.ok_or_else(|| anyhow::anyhow!("the watch ended"))??;
        if event.value.as_ref() == value.as_bytes() {
            return Ok(());
        }
    }
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn an_oversized_publish_through_the_facade_is_refused_at_once() -> anyhow::Result<()> {
    init_tracing();
    let nats = small_payload_server().await?;
    let natty = Natty::connect(ConnectOptions::new([nats.url()])).await?;
    let id = unique_name("l").replace('-', "_");
    let stream = format!("S_{id}");
    natty
        .create_stream(StreamConfig::new(&stream, [format!("{stream}.>")]))
        .await?;
    let bucket = format!("b_{id}");
    natty.create_bucket(BucketConfig::new(&bucket)).await?;
    let mut watch = natty.watch_key(&bucket, "probe").await?;
    watch_sees(&natty, &mut watch, &bucket, "before").await?;
    let before = connects(&natty);

    let subject = format!("{stream}.x");
    natty.publish(&subject, "fits".into()).await?;
    let e = refused_at_once(
        "max_payload + 1",
        natty.publish(&subject, vec![0; MAX_PAYLOAD + 1].into()),
    )
    .await;
    assert_eq!(e.kind(), natty::stream::ErrorKind::TooLarge, "{e}");
    // The facade's publisher adds a `Nats-Msg-Id`: a payload of exactly max_payload no longer fits.
    let e = refused_at_once(
        "max_payload with natty's header",
        natty.publish(&subject, vec![0; MAX_PAYLOAD].into()),
    )
    .await;
    assert_eq!(e.kind(), natty::stream::ErrorKind::TooLarge, "{e}");
    let long = format!("{stream}.{}", "k".repeat(5_000));
    let e = refused_at_once("5,000-byte subject", natty.publish(&long, "x".into())).await;
    assert_eq!(e.kind(), natty::stream::ErrorKind::TooLarge, "{e}");

    let stats = tokio::time::timeout(Duration::from_secs(10), natty.flush()).await??;
    assert_eq!((stats.queued, stats.acked, stats.failed), (1, 1, 0));
    assert_eq!(
        connects(&natty),
        before,
        "the shared connection was never lost"
    );
    watch_sees(&natty, &mut watch, &bucket, "after").await?;
    natty.close().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn kv_writes_over_the_limits_are_refused_at_once() -> anyhow::Result<()> {
    init_tracing();
    let nats = small_payload_server().await?;
    let natty = Natty::connect(ConnectOptions::new([nats.url()])).await?;
    let id = unique_name("k").replace('-', "_");
    let bucket = format!("b_{id}");
    natty
        .create_bucket(BucketConfig::new(&bucket).per_key_ttl(true))
        .await?;
    let mut watch = natty.watch_key(&bucket, "probe").await?;
    watch_sees(&natty, &mut watch, &bucket, "before").await?;
    let before = connects(&natty);
    let kv = natty.kv();
    let big = || bytes::Bytes::from(vec![7; MAX_PAYLOAD + 1]);
    let rev = natty.put(&bucket, "k", "small".into()).await?;

    let e = refused_at_once("put", natty.put(&bucket, "k", big())).await;
    assert_eq!(e.kind(), natty::kv::ErrorKind::TooLarge, "{e}");
    let e = refused_at_once("create", natty.create(&bucket, "new", big())).await;
    assert_eq!(e.kind(), natty::kv::ErrorKind::TooLarge, "{e}");
    let e = refused_at_once("update", kv.update(&bucket, "k", big(), rev)).await;
    assert_eq!(e.kind(), natty::kv::ErrorKind::TooLarge, "{e}");
    let e = refused_at_once(
        "create_with_ttl",
        natty.create_with_ttl(&bucket, "ttl", big(), Duration::from_secs(60)),
    )
    .await;
    assert_eq!(e.kind(), natty::kv::ErrorKind::TooLarge, "{e}");
    let long_key = "k".repeat(5_000);
    let e = refused_at_once(
        "put with a 5,000-byte key",
        natty.put(&bucket, &long_key, "v".into()),
    )
    .await;
    assert_eq!(e.kind(), natty::kv::ErrorKind::TooLarge, "{e}");
    assert!(
        e.to_string().len() < 600,
        "the key is not printed whole: {e}"
    );

    // A value of exactly max_payload is stored by a put (no headers), but its refresh adds the
    // revision condition and a message id: refused, and the value stays as it was.
    let full = bytes::Bytes::from(vec![9; MAX_PAYLOAD]);
    let rev = natty.put(&bucket, "full", full.clone()).await?;
    let e = refused_at_once("refresh", natty.refresh(&bucket, "full")).await;
    assert_eq!(e.kind(), natty::kv::ErrorKind::TooLarge, "{e}");
    let entry = natty.get(&bucket, "full").await?.unwrap();
    assert_eq!((entry.revision, entry.value.len()), (rev, MAX_PAYLOAD));

    // A refused put to a bucket that does not exist creates nothing.
    let fresh = format!("fresh_{id}");
    refused_at_once("put to a new bucket", natty.put(&fresh, "k", big())).await;
    let e = natty
        .status(&fresh)
        .await
        .expect_err("no bucket was created");
    assert_eq!(e.kind(), natty::kv::ErrorKind::BucketNotFound, "{e}");

    assert_eq!(
        connects(&natty),
        before,
        "the shared connection was never lost"
    );
    watch_sees(&natty, &mut watch, &bucket, "after").await?;
    Ok(())
}
