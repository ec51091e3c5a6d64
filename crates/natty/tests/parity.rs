//! Every Go `INatty` method has a working `Natty` equivalent: each is called here against a
//! real server and its effect checked.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use std::time::Duration;

use futures::StreamExt;
use natty::stream::DeliverFrom;
use natty::{
    BucketConfig, CancellationToken, ConnectOptions, Consume, ConsumerConfig, ElectionConfig,
    EventKind, Natty, StreamConfig,
};
use natty_testkit::{Nats, init_tracing, unique_name, wait_for};

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn every_inatty_method_works() -> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start().await?;
    let natty = Natty::connect(ConnectOptions::new([nats.url()])).await?;
    let id = unique_name("p").replace('-', "_");

    // CreateStream / CreateConsumer / Publish / Consume / DeletePublisher
    let stream = format!("S_{id}");
    let subject = format!("{stream}.x");
    natty
        .create_stream(StreamConfig::new(&stream, [format!("{stream}.>")]))
        .await?;
    natty
        .create_consumer(ConsumerConfig::new(&stream, "c"))
        .await?;
    // The same durable asked to start elsewhere: refused by the server (error code 10012),
    // reported as a mismatch.
    let err = natty
        .create_consumer(ConsumerConfig::new(&stream, "c").deliver_from(DeliverFrom::New))
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        natty::stream::ErrorKind::ConfigMismatch,
        "{err}"
    );
    for i in 0..10 {
        natty.publish(&subject, i.to_string().into()).await?;
    }
    natty.flush().await?;
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let cancel = CancellationToken::new();
    let consume = {
        let (n, g, c, s) = (natty.clone(), got.clone(), cancel.clone(), stream.clone());
        tokio::spawn(async move {
            n.consume(c, Consume::new(s, "c"), move |m| {
                let g = g.clone();
                async move {
                    g.lock().unwrap().push(m.payload);
                    Ok(())
                }
            })
            .await
        })
    };
    wait_for("10 consumed", Duration::from_secs(10), || async {
        (got.lock().unwrap().len() == 10).then_some(())
    })
    .await?;
    cancel.cancel();
    assert_eq!(consume.await??.acked, 10);
    let report = natty
        .delete_publisher()
        .await?
        .expect("a publisher existed");
    assert_eq!(report.stats.acked, 10);
    assert!(natty.delete_publisher().await?.is_none());

    // DeleteConsumer / DeleteStream (and no-ops when missing)
    natty.delete_consumer(&stream, "c").await?;
    natty.delete_consumer(&stream, "c").await?;
    natty.delete_stream(&stream).await?;
    natty.delete_stream(&stream).await?;
    assert!(
        natty
            .client()
            .jetstream()
            .get_stream(&stream)
            .await
            .is_err()
    );

    // CreateBucket / Put / Get / Create / Keys / Refresh / Status / WatchKey / WatchBucket / Delete / DeleteBucket
    let bucket = format!("b_{id}");
    natty
        .create_bucket(BucketConfig::new(&bucket).ttl(Duration::from_secs(60)))
        .await?;
    let mut watch_bucket = natty.watch_bucket(&bucket).await?;
    let mut watch_key = natty.watch_key(&bucket, "k").await?;
    natty.put(&bucket, "k", "1".into()).await?;
    assert_eq!(natty.get(&bucket, "k").await?.unwrap().value, "1");
    assert!(natty.create(&bucket, "k", "2".into()).await.is_err());
    natty.create(&bucket, "k2", "2".into()).await?;
    assert_eq!(
        natty.keys(&bucket).await?,
        vec!["k".to_owned(), "k2".to_owned()]
    );
    let before = natty.get(&bucket, "k").await?.unwrap().revision;
    assert!(natty.refresh(&bucket, "k").await? > before);
    assert_eq!(
        natty.status(&bucket).await?.ttl,
        Some(Duration::from_secs(60))
    );
    natty.delete(&bucket, "k").await?;
    assert_eq!(natty.get(&bucket, "k").await?, None);
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let e = tokio::time::timeout(Duration::from_secs(5), watch_key.next())
            .await?
            .unwrap()?;
        kinds.push(e.kind);
    }
    assert_eq!(kinds, [EventKind::Put, EventKind::Put, EventKind::Delete]);
    let first = tokio::time::timeout(Duration::from_secs(5), watch_bucket.next())
        .await?
        .unwrap()?;
    assert_eq!((first.key.as_str(), first.kind), ("k", EventKind::Put));
    natty.delete_bucket(&bucket).await?;
    assert!(natty.status(&bucket).await.is_err());

    // AsLeader / HaveLeader / GetLeader
    let ebucket = format!("e_{id}");
    let cancel = CancellationToken::new();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let leader = {
        let (n, c, k) = (natty.clone(), cancel.clone(), calls.clone());
        let cfg = ElectionConfig::new(&ebucket, "job", "me").ttl(Duration::from_secs(2));
        tokio::spawn(async move {
            n.as_leader(c, cfg, Duration::from_millis(20), move |_term| {
                let k = k.clone();
                async move {
                    k.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
            .await
        })
    };
    wait_for("as_leader calls", Duration::from_secs(5), || async {
        (calls.load(std::sync::atomic::Ordering::Relaxed) >= 3).then_some(())
    })
    .await?;
    assert!(natty.have_leader(&ebucket, "job", "me").await?);
    assert!(!natty.have_leader(&ebucket, "job", "someone-else").await?);
    assert_eq!(natty.get_leader(&ebucket, "job").await?.unwrap().node, "me");
    cancel.cancel();
    leader.await??;
    // Resigned on cancel: nobody leads.
    assert_eq!(natty.get_leader(&ebucket, "job").await?, None);
    natty.close().await?;
    Ok(())
}

/// A first write creates the bucket with the builder's defaults: replicas, history, storage.
async fn check_bucket_defaults(urls: Vec<String>, replicas: usize) -> anyhow::Result<()> {
    let natty = Natty::builder(ConnectOptions::new(urls))
        .bucket_defaults(
            BucketConfig::new("ignored")
                .replicas(replicas)
                .history(5)
                .storage(natty::kv::Storage::Memory),
        )
        .connect()
        .await?;
    let bucket = unique_name("d").replace('-', "_");
    natty.put(&bucket, "k", "v".into()).await?;
    let status = natty.status(&bucket).await?;
    assert_eq!(
        (status.replicas, status.history, status.storage),
        (replicas, 5, natty::kv::Storage::Memory),
        "{status:?}"
    );
    natty.delete_bucket(&bucket).await?;
    natty.close().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn bucket_defaults_make_an_r1_bucket_with_the_configured_history() -> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start().await?;
    check_bucket_defaults(vec![nats.url()], 1).await
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn bucket_defaults_make_an_r3_bucket_on_a_cluster() -> anyhow::Result<()> {
    init_tracing();
    let cluster = natty_testkit::NatsCluster::start(3).await?;
    cluster.wait_meta_leader().await?;
    check_bucket_defaults(cluster.urls(), 3).await
}
