//! natty-kv history operations against a real server: `history`, `get_revision`, `purge`, and
//! the streaming key listing. `#[ignore]`d so a plain `cargo test` needs no Docker.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use futures::TryStreamExt;
use natty_kv::{BucketConfig, EventKind};

mod common;
use common::{bucket, setup};

/// Item 8 of issue 16: a key's stored revisions, one revision, and a purge that removes them.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn history_get_revision_and_purge() -> anyhow::Result<()> {
    let (_nats, kv) = setup().await?;
    let b = bucket();
    assert!(kv.history(&b, "k").await?.is_empty(), "no bucket: empty");
    kv.purge(&b, "k").await?; // no bucket: a no-op that creates nothing
    assert!(kv.status(&b).await.is_err());

    kv.create_bucket(BucketConfig::new(&b).history(10)).await?;
    assert!(kv.history(&b, "k").await?.is_empty(), "no key: empty");
    let r1 = kv.put(&b, "k", "1".into()).await?;
    kv.put(&b, "other", "x".into()).await?;
    let r2 = kv.put(&b, "k", "2".into()).await?;
    kv.delete(&b, "k").await?;
    let r4 = kv.put(&b, "k", "4".into()).await?;

    let h = kv.history(&b, "k").await?;
    let got: Vec<_> = h
        .iter()
        .map(|e| {
            (
                e.kind,
                e.revision,
                String::from_utf8_lossy(&e.value).into_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (EventKind::Put, r1, "1".to_owned()),
            (EventKind::Put, r2, "2".to_owned()),
            (EventKind::Delete, r2 + 1, String::new()),
            (EventKind::Put, r4, "4".to_owned()),
        ]
    );
    assert!(h.iter().all(|e| e.key == "k"));

    let old = kv
        .get_revision(&b, "k", r1)
        .await?
        .expect("kept in history");
    assert_eq!((old.value.as_ref(), old.revision), (b"1".as_ref(), r1));
    assert_eq!(kv.get_revision(&b, "k", r2 + 1).await?, None, "a marker");
    assert_eq!(
        kv.get_revision(&b, "k", r1 + 1).await?,
        None,
        "another key's"
    );
    assert_eq!(kv.get_revision(&b, "k", 1000).await?, None, "never written");

    kv.purge(&b, "k").await?;
    assert_eq!(kv.get(&b, "k").await?, None);
    let h = kv.history(&b, "k").await?;
    assert_eq!(h.len(), 1, "only the purge marker is left: {h:?}");
    assert_eq!(h[0].kind, EventKind::Purge);
    assert_eq!(kv.get_revision(&b, "k", r1).await?, None, "purged");
    assert_eq!(kv.get(&b, "other").await?.unwrap().value, "x");
    kv.purge(&b, "k").await?; // already purged: no new marker
    assert_eq!(kv.history(&b, "k").await?.len(), 1);
    // A purged key can be created again.
    kv.create(&b, "k", "again".into()).await?;
    Ok(())
}

/// Item 6 of issue 16: the streaming key listing.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn keys_stream_lists_live_keys_once() -> anyhow::Result<()> {
    let (_nats, kv) = setup().await?;
    let b = bucket();
    kv.create_bucket(BucketConfig::new(&b).history(5)).await?;
    let empty: Vec<String> = kv.keys_stream(&b).await?.try_collect().await?;
    assert!(empty.is_empty());
    for i in 0..50 {
        kv.put(&b, &format!("k{i:02}"), "1".into()).await?;
        kv.put(&b, &format!("k{i:02}"), "2".into()).await?;
    }
    kv.delete(&b, "k07").await?;
    let mut keys: Vec<String> = kv.keys_stream(&b).await?.try_collect().await?;
    assert_eq!(keys.len(), 49, "{keys:?}");
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 49);
    assert!(!keys.contains(&"k07".to_owned()));
    assert_eq!(kv.keys(&b).await?, keys);
    Ok(())
}
