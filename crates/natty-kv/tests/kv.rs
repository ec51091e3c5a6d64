//! natty-kv against a real NATS server: the Go natty KV suite's behaviours, and beyond.
//! `#[ignore]`d so a plain `cargo test` needs no Docker; `cargo xtask integration` runs them.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use std::time::{Duration, Instant};

use natty_core::ConnectOptions;
use natty_kv::{BucketConfig, ErrorKind, EventKind, Kv, Storage};
use natty_testkit::{NatsCluster, init_tracing, wait_for};

mod common;
use common::{bucket, next_event, setup};

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn get_returns_the_value_and_never_creates_a_bucket() -> anyhow::Result<()> {
    let (_nats, kv) = setup().await?;
    let b = bucket();
    assert_eq!(kv.get(&b, "k").await?, None);
    let err = kv.status(&b).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::BucketNotFound,
        "get must not create {b}: {err}"
    );

    let rev = kv.put(&b, "k", "v1".into()).await?;
    let entry = kv.get(&b, "k").await?.expect("written");
    assert_eq!(entry.value, "v1");
    assert_eq!(entry.revision, rev);
    assert_eq!(entry.key, "k");
    assert!(entry.created.elapsed().unwrap_or_default() < Duration::from_secs(60));
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn create_bucket_validates_and_refuses_an_existing_bucket() -> anyhow::Result<()> {
    let (_nats, kv) = setup().await?;
    let cases = [
        (
            BucketConfig::new(""),
            ErrorKind::InvalidName,
            "must not be empty",
        ),
        (
            BucketConfig::new("bad bucket name"),
            ErrorKind::InvalidName,
            "A-Z a-z 0-9",
        ),
        (
            BucketConfig::new("test").replicas(0),
            ErrorKind::InvalidConfig,
            "greater than 0",
        ),
    ];
    for (cfg, kind, text) in cases {
        let err = kv.create_bucket(cfg.clone()).await.unwrap_err();
        assert_eq!(err.kind(), kind, "{cfg:?}: {err}");
        assert!(err.to_string().contains(text), "{err}");
    }
    let b = bucket();
    kv.create_bucket(BucketConfig::new(&b).description("made by a test"))
        .await?;
    let err = kv.create_bucket(BucketConfig::new(&b)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BucketExists, "{err}");
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn create_auto_creates_works_on_existing_and_refuses_existing_keys() -> anyhow::Result<()> {
    let (nats, kv) = setup().await?;
    // Auto-creates, with the Kv's default TTL (the Go suite's "should use TTL").
    let client = ConnectOptions::new([nats.url()]).connect().await?;
    let ttl_kv = Kv::with_defaults(client, BucketConfig::default().ttl(Duration::from_secs(10)));
    let b = bucket();
    ttl_kv.create(&b, "k", "v".into()).await?;
    assert_eq!(kv.get(&b, "k").await?.unwrap().value, "v");
    assert_eq!(kv.status(&b).await?.ttl, Some(Duration::from_secs(10)));

    // Works on an existing bucket.
    let b2 = bucket();
    kv.create_bucket(BucketConfig::new(&b2).ttl(Duration::from_secs(10)))
        .await?;
    kv.create(&b2, "k", "v".into()).await?;
    assert_eq!(kv.get(&b2, "k").await?.unwrap().value, "v");

    // Errors when the key exists, and leaves it alone.
    let err = kv.create(&b2, "k", "other".into()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyExists, "{err}");
    assert!(err.to_string().contains("wrong last sequence"), "{err}");
    assert_eq!(kv.get(&b2, "k").await?.unwrap().value, "v");

    // A deleted key can be created again.
    kv.delete(&b2, "k").await?;
    kv.create(&b2, "k", "again".into()).await?;
    assert_eq!(kv.get(&b2, "k").await?.unwrap().value, "again");
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn put_auto_creates_and_a_bucket_ttl_expires_keys() -> anyhow::Result<()> {
    let (nats, kv) = setup().await?;
    let b = bucket();
    kv.put(&b, "k", "v".into()).await?;
    assert_eq!(kv.get(&b, "k").await?.unwrap().value, "v");

    let client = ConnectOptions::new([nats.url()]).connect().await?;
    let ttl_kv = Kv::with_defaults(client, BucketConfig::default().ttl(Duration::from_secs(1)));
    let b = bucket();
    ttl_kv.put(&b, "k", "v".into()).await?;
    let written = Instant::now();
    wait_for("the key to expire", Duration::from_secs(5), || async {
        kv.get(&b, "k").await.ok().flatten().is_none().then_some(())
    })
    .await?;
    assert!(
        written.elapsed() >= Duration::from_millis(900),
        "expired too early"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn status_reports_the_bucket_config() -> anyhow::Result<()> {
    let (_nats, kv) = setup().await?;
    let b = bucket();
    kv.create_bucket(
        BucketConfig::new(&b)
            .ttl(Duration::from_secs(30))
            .history(5)
            .storage(Storage::Memory)
            .description("status test"),
    )
    .await?;
    kv.put(&b, "a", "1".into()).await?;
    let status = kv.status(&b).await?;
    assert_eq!(status.bucket, b);
    assert_eq!(status.ttl, Some(Duration::from_secs(30)));
    assert_eq!(status.history, 5);
    assert_eq!(status.storage, Storage::Memory);
    assert_eq!(status.description, "status test");
    assert_eq!(status.replicas, 1);
    assert!(status.per_key_ttl);
    assert_eq!(status.values, 1);

    // ensure_bucket: same config is fine, another TTL is a mismatch naming both values.
    kv.ensure_bucket(
        BucketConfig::new(&b)
            .ttl(Duration::from_secs(30))
            .history(5)
            .storage(Storage::Memory),
    )
    .await?;
    let err = kv
        .ensure_bucket(
            BucketConfig::new(&b)
                .ttl(Duration::from_secs(10))
                .history(5)
                .storage(Storage::Memory),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BucketConfigMismatch);
    assert!(
        err.to_string().contains("30s") && err.to_string().contains("10s"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn delete_removes_a_key_and_is_a_no_op_when_missing() -> anyhow::Result<()> {
    let (_nats, kv) = setup().await?;
    let b = bucket();
    kv.put(&b, "k", "v".into()).await?;
    kv.delete(&b, "k").await?;
    assert_eq!(kv.get(&b, "k").await?, None);
    kv.delete(&b, "k").await?;
    kv.delete(&b, "never-there").await?;
    let missing = bucket();
    kv.delete(&missing, "k").await?;
    assert_eq!(
        kv.status(&missing).await.unwrap_err().kind(),
        ErrorKind::BucketNotFound
    );
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn keys_lists_all_none_or_fails_for_a_missing_bucket() -> anyhow::Result<()> {
    let (_nats, kv) = setup().await?;
    let b = bucket();
    kv.create_bucket(BucketConfig::new(&b)).await?;
    assert_eq!(kv.keys(&b).await?, Vec::<String>::new());
    let mut want: Vec<String> = (0..13).map(|i| format!("key.{i}")).collect();
    for k in &want {
        kv.put(&b, k, "x".into()).await?;
    }
    kv.put(&b, "gone", "x".into()).await?;
    kv.delete(&b, "gone").await?;
    want.sort();
    assert_eq!(kv.keys(&b).await?, want);
    let err = kv.keys(&bucket()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BucketNotFound, "{err}");
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn watches_see_puts_updates_and_deletes() -> anyhow::Result<()> {
    let (_nats, kv) = setup().await?;
    let b = bucket();
    kv.put(&b, "existing", "0".into()).await?;
    let mut all = kv.watch_bucket(&b).await?;
    let mut one = kv.watch_key(&b, "k").await?;
    let t = Duration::from_secs(5);

    let first = next_event(&mut all, t).await?;
    assert_eq!(
        (first.key.as_str(), first.kind),
        ("existing", EventKind::Put)
    );

    let r1 = kv.put(&b, "k", "1".into()).await?;
    kv.update(&b, "k", "2".into(), r1).await?;
    kv.delete(&b, "k").await?;
    for (want_kind, want_value) in [
        (EventKind::Put, "1"),
        (EventKind::Put, "2"),
        (EventKind::Delete, ""),
    ] {
        for watch in [&mut all, &mut one] {
            let e = next_event(watch, t).await?;
            assert_eq!(
                (e.key.as_str(), e.kind, &e.value[..]),
                ("k", want_kind, want_value.as_bytes())
            );
        }
    }
    let err = kv.watch_bucket(&bucket()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BucketNotFound);
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn refresh_is_revision_checked_and_errors_on_missing() -> anyhow::Result<()> {
    let (_nats, kv) = setup().await?;
    let b = bucket();
    let err = kv.refresh(&b, "k").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BucketNotFound, "{err}");
    kv.create_bucket(BucketConfig::new(&b)).await?;
    let err = kv.refresh(&b, "k").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyNotFound, "{err}");

    let r1 = kv.put(&b, "k", "mine".into()).await?;
    let r2 = kv.refresh(&b, "k").await?;
    assert!(r2 > r1);
    assert_eq!(kv.get(&b, "k").await?.unwrap().value, "mine");

    // A refresh of what we read earlier loses to a newer write, and leaves it.
    let read = kv.get(&b, "k").await?.unwrap();
    kv.put(&b, "k", "theirs".into()).await?;
    let err = kv.refresh_entry(&b, &read).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RevisionMismatch, "{err}");
    assert_eq!(kv.get(&b, "k").await?.unwrap().value, "theirs");

    // And never resurrects a deleted key.
    let read = kv.get(&b, "k").await?.unwrap();
    kv.delete(&b, "k").await?;
    assert_eq!(
        kv.refresh_entry(&b, &read).await.unwrap_err().kind(),
        ErrorKind::RevisionMismatch
    );
    assert_eq!(
        kv.refresh(&b, "k").await.unwrap_err().kind(),
        ErrorKind::KeyNotFound
    );
    assert_eq!(kv.get(&b, "k").await?, None);
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn update_and_delete_if_with_a_stale_revision_fail_and_leave_the_key() -> anyhow::Result<()> {
    let (_nats, kv) = setup().await?;
    let b = bucket();
    let r1 = kv.put(&b, "k", "1".into()).await?;
    let r2 = kv.update(&b, "k", "2".into(), r1).await?;
    let err = kv.update(&b, "k", "3".into(), r1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RevisionMismatch, "{err}");
    let err = kv.delete_if(&b, "k", r1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RevisionMismatch, "{err}");
    let entry = kv.get(&b, "k").await?.unwrap();
    assert_eq!((entry.value, entry.revision), ("2".into(), r2));
    kv.delete_if(&b, "k", r2).await?;
    assert_eq!(kv.get(&b, "k").await?, None);
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn per_key_ttl_runs_from_the_last_refresh_and_watchers_see_expiry() -> anyhow::Result<()> {
    let (_nats, kv) = setup().await?;
    let b = bucket();
    let ttl = Duration::from_secs(2);
    kv.create_with_ttl(&b, "lease", "me".into(), ttl).await?;
    assert_eq!(kv.get(&b, "lease").await?.unwrap().ttl, Some(ttl));
    let mut watch = kv.watch_key(&b, "lease").await?;
    assert_eq!(next_event(&mut watch, ttl).await?.kind, EventKind::Put);

    let mut last_refresh = Instant::now();
    for _ in 0..3 {
        tokio::time::sleep(ttl / 2).await;
        kv.refresh(&b, "lease").await?;
        last_refresh = Instant::now();
        assert_eq!(next_event(&mut watch, ttl).await?.kind, EventKind::Put);
    }
    // 3 s after creation with a 2 s TTL: only the refreshes kept it.
    let entry = kv.get(&b, "lease").await?.expect("refreshed key is alive");
    assert_eq!(entry.ttl, Some(ttl), "refresh keeps the per-key TTL");

    let expired = next_event(&mut watch, ttl + Duration::from_secs(2)).await?;
    assert_eq!(expired.kind, EventKind::Expired, "{expired:?}");
    let after = last_refresh.elapsed();
    assert!(
        after >= ttl - Duration::from_millis(100),
        "expired {after:?} after the last refresh"
    );
    assert!(
        after <= ttl + Duration::from_secs(1),
        "expired only {after:?} after the last refresh"
    );
    assert_eq!(kv.get(&b, "lease").await?, None);
    // Once expired it can be created again.
    kv.create_with_ttl(&b, "lease", "next".into(), ttl).await?;
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn per_key_ttl_is_refused_rather_than_dropped() -> anyhow::Result<()> {
    let (_nats, kv) = setup().await?;
    let b = bucket();
    kv.create_bucket(BucketConfig::new(&b).per_key_ttl(false))
        .await?;
    let err = kv
        .create_with_ttl(&b, "k", "v".into(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert_eq!(
        kv.get(&b, "k").await?,
        None,
        "nothing stored without its TTL"
    );
    for bad in [Duration::from_millis(500), Duration::from_millis(1500)] {
        let err = kv
            .create_with_ttl(&b, "k", "v".into(), bad)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    }
    for (bucket, key) in [("bad bucket", "k"), ("ok", "bad key"), ("ok", "a..b")] {
        let err = kv.put(bucket, key, "v".into()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidName, "{err}");
        assert!(
            err.to_string()
                .contains(if bucket == "ok" { key } else { bucket }),
            "{err}"
        );
    }
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_bucket_deleted_by_another_client_is_recreated_by_the_next_put() -> anyhow::Result<()> {
    let (nats, kv) = setup().await?;
    let other = Kv::new(ConnectOptions::new([nats.url()]).connect().await?);
    let b = bucket();
    kv.put(&b, "k", "1".into()).await?;
    other.delete_bucket(&b).await?;
    other.delete_bucket(&b).await?; // no-op when missing
    assert_eq!(kv.get(&b, "k").await?, None);
    kv.put(&b, "k", "2".into()).await?;
    assert_eq!(other.get(&b, "k").await?.unwrap().value, "2");
    // And through the cache path of a write that does not create: it says the bucket is gone.
    other.delete_bucket(&b).await?;
    let err = kv.update(&b, "k", "3".into(), 1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BucketNotFound, "{err}");
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_watch_survives_a_server_restart() -> anyhow::Result<()> {
    let (nats, kv) = setup().await?;
    let b = bucket();
    kv.put(&b, "before", "1".into()).await?;
    let mut watch = kv.watch_bucket(&b).await?;
    assert_eq!(
        next_event(&mut watch, Duration::from_secs(5)).await?.key,
        "before"
    );

    nats.restart().await?;
    // Writes succeed again once the client has reconnected.
    wait_for(
        "a put after the restart",
        Duration::from_secs(30),
        || async { kv.put(&b, "after", "2".into()).await.ok() },
    )
    .await?;
    let e = next_event(&mut watch, Duration::from_secs(30)).await?;
    assert_eq!((e.key.as_str(), e.kind), ("after", EventKind::Put));
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn cas_conflicts_on_a_replicated_bucket_are_revision_mismatches() -> anyhow::Result<()> {
    init_tracing();
    let cluster = NatsCluster::start(3).await?;
    let client = ConnectOptions::new(cluster.urls()).connect().await?;
    let kv = Kv::with_defaults(client, BucketConfig::default().replicas(3));
    let b = bucket();
    let r1 = kv.create(&b, "k", "1".into()).await?;
    assert_eq!(kv.status(&b).await?.replicas, 3);
    let r2 = kv.update(&b, "k", "2".into(), r1).await?;
    let err = kv.update(&b, "k", "x".into(), r1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RevisionMismatch, "R3 update: {err}");
    let err = kv.delete_if(&b, "k", r1).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::RevisionMismatch,
        "R3 delete_if: {err}"
    );
    let err = kv.create(&b, "k", "x".into()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyExists, "R3 create: {err}");
    assert_eq!(kv.get(&b, "k").await?.unwrap().revision, r2);
    Ok(())
}

/// The stream leader's last message of `key` (value or marker): sequence, payload, headers.
async fn last_at_leader(
    js: &async_nats::jetstream::Context,
    bucket: &str,
    key: &str,
) -> anyhow::Result<Option<(u64, bytes::Bytes, async_nats::HeaderMap)>> {
    let stream = js.get_stream(format!("KV_{bucket}")).await?;
    match stream
        .get_last_raw_message_by_subject(&format!("$KV.{bucket}.{key}"))
        .await
    {
        Ok(m) => Ok(Some((m.sequence, m.payload, m.headers))),
        Err(e) if e.to_string().contains("10037") || e.to_string().contains("no message") => {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// A conditional write whose first answer is lost (held by a proxy) and whose retry reaches
/// the server after the bucket's duplicate window: the retry is not de-duplicated and fails
/// its compare-and-set against the first attempt's own revision. Before the fix `update`
/// reported `RevisionMismatch` and `create` `KeyExists` for writes that were stored; now the
/// first attempt's revision is returned. A key that expired in between (short bucket TTL,
/// which also shortens the duplicate window) is never a `RevisionMismatch` either.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_retry_past_the_duplicate_window_is_not_a_false_conflict() -> anyhow::Result<()> {
    let (nats, direct) = setup().await?;
    let raw = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let proxy = common::Proxy::start(format!("127.0.0.1:{}", nats.port())).await?;
    let kv = Kv::new(
        ConnectOptions::new([proxy.url()])
            .request_timeout(Duration::from_secs(2))
            .connect()
            .await?,
    );
    let b = bucket();
    direct.create_bucket(BucketConfig::new(&b)).await?;
    // A duplicate window (1 s) shorter than one request timeout (2 s), as a short bucket TTL
    // makes it; changed behind natty's back.
    let mut config = raw
        .get_stream(format!("KV_{b}"))
        .await?
        .cached_info()
        .config
        .clone();
    config.duplicate_window = Duration::from_secs(1);
    raw.update_stream(config).await?;

    let r0 = direct.put(&b, "k", "v0".into()).await?;
    assert_eq!(
        kv.get(&b, "k").await?.unwrap().revision,
        r0,
        "bucket cached"
    );
    proxy.hold_until_sent(&format!("$KV.{b}.k "), 2);
    let updated = kv.update(&b, "k", "mine".into(), r0).await;
    assert!(!proxy.holding(), "the update was retried");
    let (seq, value, _) = last_at_leader(&raw, &b, "k").await?.unwrap();
    assert_eq!(value.as_ref(), b"mine", "the first attempt was stored");
    assert_eq!(
        updated.map_err(|e| e.kind()),
        Ok(seq),
        "update reports the stored revision"
    );

    proxy.hold_until_sent(&format!("$KV.{b}.fresh "), 2);
    let created = kv.create(&b, "fresh", "mine".into()).await;
    assert!(!proxy.holding(), "the create was retried");
    let (seq, value, _) = last_at_leader(&raw, &b, "fresh").await?.unwrap();
    assert_eq!(value.as_ref(), b"mine");
    assert_eq!(
        created.map_err(|e| e.kind()),
        Ok(seq),
        "create reports the stored revision"
    );

    // A 1 s bucket TTL: the duplicate window is 1 s too, and the stored write has expired
    // when the retry arrives. Whatever natty answers, it is not "someone else wrote".
    let short = bucket();
    direct
        .create_bucket(BucketConfig::new(&short).ttl(Duration::from_secs(1)))
        .await?;
    let r0 = direct.put(&short, "k", "v0".into()).await?;
    assert!(kv.status(&short).await.is_ok());
    proxy.hold_until_sent(&format!("$KV.{short}.k "), 2);
    let updated = kv.update(&short, "k", "mine".into(), r0).await;
    assert!(!proxy.holding(), "the update was retried");
    match updated {
        Ok(rev) => {
            let m = raw
                .get_stream(format!("KV_{short}"))
                .await?
                .get_raw_message(rev)
                .await?;
            assert_eq!(m.payload.as_ref(), b"mine", "Ok names our revision");
        }
        Err(e) => assert_ne!(e.kind(), ErrorKind::RevisionMismatch, "{e}"),
    }
    Ok(())
}

/// The per-key-TTL flag of a cached bucket goes stale when the bucket is re-created behind
/// natty's back. Before the fix `create_with_ttl` refused with `Unsupported` from the cache
/// although the new bucket has per-key TTL; the other way round, the server's refusal stands
/// and the key is not stored without its TTL.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn per_key_ttl_writes_ask_the_server_not_a_stale_cache() -> anyhow::Result<()> {
    let (nats, kv) = setup().await?;
    let other = Kv::new(ConnectOptions::new([nats.url()]).connect().await?);
    let b = bucket();
    kv.create_bucket(BucketConfig::new(&b).per_key_ttl(false))
        .await?;
    kv.put(&b, "k", "v".into()).await?;
    other.delete_bucket(&b).await?;
    wait_for("the bucket re-created", Duration::from_secs(10), || async {
        other.create_bucket(BucketConfig::new(&b)).await.ok()
    })
    .await?;
    let ttl = Duration::from_secs(30);
    kv.create_with_ttl(&b, "a", "1".into(), ttl).await?;
    assert_eq!(other.get(&b, "a").await?.unwrap().ttl, Some(ttl));

    other.delete_bucket(&b).await?;
    wait_for("the bucket re-created", Duration::from_secs(10), || async {
        other
            .create_bucket(BucketConfig::new(&b).per_key_ttl(false))
            .await
            .ok()
    })
    .await?;
    let err = kv
        .create_with_ttl(&b, "b", "1".into(), ttl)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert_eq!(
        other.get(&b, "b").await?,
        None,
        "never stored without its TTL"
    );
    kv.create_with_ttl(&b, "c", "1".into(), ttl)
        .await
        .unwrap_err();
    Ok(())
}

/// Adversarial read, "changed behind our back": a bucket re-configured without direct get
/// after natty cached it. Before the fix every read asked the (now absent) direct-get
/// responders again with the stale cached handle, got "no responders" until the deadline
/// and failed with `TimedOut` after 10 s; now the bucket looked up on the 503 is used.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_read_uses_the_bucket_as_it_is_not_a_stale_direct_get_flag() -> anyhow::Result<()> {
    let (nats, kv) = setup().await?;
    let raw = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let b = bucket();
    let rev = kv.put(&b, "k", "v".into()).await?;
    let mut config = raw
        .get_stream(format!("KV_{b}"))
        .await?
        .cached_info()
        .config
        .clone();
    config.allow_direct = false;
    raw.update_stream(config).await?;
    let started = Instant::now();
    let got = kv.get(&b, "k").await?.map(|e| e.revision);
    assert_eq!(got, Some(rev));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered at once, not after the retry deadline: {:?}",
        started.elapsed()
    );
    Ok(())
}

/// Adversarial read, "panics": a `Kv` that retries "forever" (`retry_for(Duration::MAX)`)
/// must not overflow an `Instant`. Before the fix `keys` and `create` panicked
/// (`Instant + Duration::MAX`).
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_huge_retry_for_does_not_panic() -> anyhow::Result<()> {
    let (_nats, kv) = setup().await?;
    let kv = kv.retry_for(Duration::MAX);
    let b = bucket();
    kv.create(&b, "k", "v".into()).await?;
    assert_eq!(
        kv.create(&b, "k", "v".into()).await.unwrap_err().kind(),
        ErrorKind::KeyExists
    );
    assert_eq!(kv.keys(&b).await?, ["k"]);
    Ok(())
}

/// Adversarial read, "reconnect replay": the connection drops while `keys_stream` lists a
/// bucket. async-nats re-created the listing's consumer from the next revision, which
/// delivers values overwritten or deleted before the listing started: before the fix a key
/// deleted long ago was listed as live.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_reconnect_during_a_key_listing_lists_no_deleted_key() -> anyhow::Result<()> {
    use futures::StreamExt;
    let (nats, kv) = setup().await?;
    let b = bucket();
    kv.create_bucket(BucketConfig::new(&b).history(2)).await?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let n = 3000;
    // Per i: a live key, then a key that is written and deleted right after.
    for chunk in 0..n / 500 {
        let mut acks = Vec::new();
        for i in chunk * 500..(chunk + 1) * 500 {
            acks.push(js.publish(format!("$KV.{b}.live{i}"), "v".into()).await?);
            acks.push(js.publish(format!("$KV.{b}.dead{i}"), "v".into()).await?);
            let mut del = async_nats::HeaderMap::new();
            del.insert("KV-Operation", "DEL");
            acks.push(
                js.publish_with_headers(format!("$KV.{b}.dead{i}"), del, "".into())
                    .await?,
            );
        }
        for ack in acks {
            ack.await?;
        }
    }
    let listing = kv.keys_stream(&b).await?;
    futures::pin_mut!(listing);
    let mut keys = Vec::new();
    let mut reconnect = None;
    while let Some(key) = tokio::time::timeout(Duration::from_secs(30), listing.next()).await? {
        keys.push(key?);
        if keys.len() == 200 {
            let client = kv.client().nats().clone();
            reconnect = Some(tokio::spawn(async move { client.force_reconnect().await }));
        }
    }
    reconnect.unwrap().await??;
    let dead: Vec<_> = keys.iter().filter(|k| k.starts_with("dead")).collect();
    assert!(
        dead.is_empty(),
        "{} deleted keys listed, e.g. {:?}",
        dead.len(),
        dead.first()
    );
    assert_eq!(keys.len(), n, "every live key once");
    Ok(())
}
