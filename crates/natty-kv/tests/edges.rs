//! natty-kv at its edges on a real server: races with another writer, TTL headers written by
//! other clients, buckets changed behind natty's back. Judged with raw async-nats reads.
//! `#[ignore]`d so a plain `cargo test` needs no Docker; `cargo xtask integration` runs them.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream;
use natty_core::ConnectOptions;
use natty_kv::{BucketConfig, ErrorKind, Kv};
use natty_testkit::{Nats, init_tracing, unique_name};

async fn setup() -> anyhow::Result<(Nats, Kv, jetstream::Context)> {
    init_tracing();
    let nats = Nats::start().await?;
    let client = ConnectOptions::new([nats.url()]).connect().await?;
    let raw = async_nats::connect(nats.url()).await?;
    Ok((nats, Kv::new(client), jetstream::new(raw)))
}

fn bucket() -> String {
    unique_name("b").replace('-', "_")
}

/// Item 7 of issue 16: a key written with `Nats-TTL: never` (by any client) stays
/// never-expiring when natty refreshes it; before, the refresh dropped the header and the
/// key fell back to the bucket's TTL.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn refresh_keeps_a_never_expiring_key() -> anyhow::Result<()> {
    let (_nats, kv, js) = setup().await?;
    let b = bucket();
    kv.create_bucket(BucketConfig::new(&b).ttl(Duration::from_secs(60)))
        .await?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-TTL", "never");
    js.publish_with_headers(format!("$KV.{b}.k"), headers, "v".into())
        .await?
        .await?;
    kv.refresh(&b, "k").await?;
    let stream = js.get_stream(format!("KV_{b}")).await?;
    let last = stream
        .get_last_raw_message_by_subject(&format!("$KV.{b}.k"))
        .await?;
    assert_eq!(
        last.headers.get("Nats-TTL").map(|v| v.as_str()),
        Some("never"),
        "refresh must write Nats-TTL: never again; headers {:?}",
        last.headers
    );
    Ok(())
}

/// Item 7 of issue 16: on a bucket without direct get, a stream that is gone (404, error code
/// 10059) is a missing bucket, not a missing key.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_deleted_non_direct_bucket_is_bucket_not_found() -> anyhow::Result<()> {
    let (_nats, kv, js) = setup().await?;
    let b = bucket();
    js.create_stream(jetstream::stream::Config {
        name: format!("KV_{b}"),
        subjects: vec![format!("$KV.{b}.>")],
        max_messages_per_subject: 1,
        allow_direct: false,
        allow_rollup: true,
        deny_delete: true,
        ..Default::default()
    })
    .await?;
    kv.put(&b, "k", "v".into()).await?;
    assert_eq!(kv.get(&b, "k").await?.unwrap().value, "v");
    js.delete_stream(format!("KV_{b}")).await?;
    let err = kv.refresh(&b, "k").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BucketNotFound, "{err}");
    Ok(())
}

/// Item 3 of issue 16: a per-key TTL above what the server accepts is `InvalidConfig`.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_key_ttl_above_the_servers_maximum_is_invalid_config() -> anyhow::Result<()> {
    let (_nats, kv, _js) = setup().await?;
    let b = bucket();
    let ttl = Duration::from_secs(9_223_372_037);
    let err = kv
        .create_with_ttl(&b, "k", "v".into(), ttl)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    Ok(())
}

/// Item 3 of issue 16: `create` reports `KeyExists` only when a value is there. One task
/// creates and deletes a key in a loop while another purges the key's subject (removing the
/// delete markers) as fast as it can: the key holds a value only between the creator's own
/// create and delete, so every `create` must succeed.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn create_over_markers_that_come_and_go_never_reports_a_false_conflict() -> anyhow::Result<()>
{
    let (_nats, kv, js) = setup().await?;
    let b = bucket();
    kv.create_bucket(BucketConfig::new(&b)).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let purger = {
        let (stop, b) = (stop.clone(), b.clone());
        tokio::spawn(async move {
            let stream = js.get_stream(format!("KV_{b}")).await?;
            let mut purges = 0u64;
            while !stop.load(Ordering::SeqCst) {
                stream.purge().filter(format!("$KV.{b}.k")).await?;
                purges += 1;
            }
            anyhow::Ok(purges)
        })
    };
    let mut false_conflicts = Vec::new();
    for i in 0..600 {
        match kv.create(&b, "k", i.to_string().into()).await {
            Ok(_) => kv.delete(&b, "k").await?,
            Err(e) => false_conflicts.push(format!("{i}: {e}")),
        }
    }
    stop.store(true, Ordering::SeqCst);
    let purges = purger.await??;
    assert!(purges > 100, "the purger hardly ran ({purges} purges)");
    assert!(
        false_conflicts.is_empty(),
        "{} of 600 creates failed although no value was there (purges: {purges}): {:?}",
        false_conflicts.len(),
        &false_conflicts[..false_conflicts.len().min(5)]
    );
    Ok(())
}

/// Item 6 of issue 16: `keys` lists each live key once, also while other clients keep
/// rewriting keys during the listing.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn keys_are_listed_once_while_they_are_being_rewritten() -> anyhow::Result<()> {
    let (_nats, kv, js) = setup().await?;
    let b = bucket();
    kv.create_bucket(BucketConfig::new(&b)).await?;
    let mut acks = Vec::new();
    for i in 0..3000 {
        acks.push(js.publish(format!("$KV.{b}.k{i:04}"), "v".into()).await?);
    }
    for ack in acks {
        ack.await?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, b, js) = (stop.clone(), b.clone(), js.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                js.publish(format!("$KV.{b}.k{:04}", 2999 - i % 3000), "w".into())
                    .await?
                    .await?;
                i += 1;
            }
            anyhow::Ok(i)
        })
    };
    let mut worst = 0;
    for _ in 0..5 {
        let keys = kv.keys(&b).await?;
        let mut unique = keys.clone();
        unique.dedup();
        worst = worst.max(keys.len() - unique.len());
        let missing: Vec<String> = (0..3000)
            .map(|i| format!("k{i:04}"))
            .filter(|k| unique.binary_search(k).is_err())
            .collect();
        assert!(missing.is_empty(), "keys not listed: {missing:?}");
    }
    stop.store(true, Ordering::SeqCst);
    let writes = writer.await??;
    assert_eq!(
        worst, 0,
        "keys listed twice in one listing ({writes} writes meanwhile)"
    );
    Ok(())
}
