//! Metrics (feature `metrics`) against a real NATS server, read through a `metrics-util`
//! DebuggingRecorder: every key operation records its latency under its `op` and `bucket`, and
//! its failures under their error kind.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

mod common;

use natty_kv::ErrorKind;
use natty_testkit::Recorded;

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn every_key_operation_is_timed_and_its_errors_counted() -> anyhow::Result<()> {
    let recorded = Recorded::install();
    let (_nats, kv) = common::setup().await?;
    let b = common::bucket();

    let r1 = kv.put(&b, "k", "v1".into()).await?;
    assert!(kv.get(&b, "k").await?.is_some());
    assert!(kv.get_revision(&b, "k", r1).await?.is_some());
    let e = kv.create(&b, "k", "again".into()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyExists);
    let r2 = kv.update(&b, "k", "v2".into(), r1).await?;
    let e = kv.update(&b, "k", "stale".into(), r1).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RevisionMismatch);
    let r3 = kv.refresh(&b, "k").await?;
    assert!(r3 > r2);
    assert_eq!(kv.keys(&b).await?, vec!["k".to_owned()]);
    assert!(!kv.history(&b, "k").await?.is_empty());
    kv.create(&b, "gone", "x".into()).await?;
    kv.delete(&b, "gone").await?;
    let e = kv.refresh(&b, "gone").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyNotFound);
    kv.delete_if(&b, "k", r3).await?;
    kv.purge(&b, "k").await?;
    // Refused before anything is sent: not an operation, not counted.
    assert!(kv.get(&b, "bad key").await.is_err());

    recorded.read(|t| {
        let samples = |op: &str| t.samples(&format!("natty_kv_op_seconds,op={op},bucket={b}"));
        let errors = |op: &str, kind: &str| {
            t.counter(&format!(
                "natty_kv_op_errors_total,op={op},bucket={b},kind={kind}"
            ))
        };
        for (op, n) in [
            ("put", 1),
            ("get", 1),
            ("get_revision", 1),
            ("create", 2),
            ("update", 2),
            ("refresh", 2),
            ("keys", 1),
            ("history", 1),
            ("delete", 1),
            ("delete_if", 1),
            ("purge", 1),
        ] {
            assert_eq!(samples(op), n, "{op}: {:?}", t.samples);
        }
        assert_eq!(errors("create", "KeyExists"), 1);
        assert_eq!(errors("update", "RevisionMismatch"), 1);
        assert_eq!(errors("refresh", "KeyNotFound"), 1);
        let all: u64 = t
            .counters
            .iter()
            .filter(|(k, _)| k.starts_with("natty_kv_op_errors_total"))
            .map(|(_, n)| n)
            .sum();
        assert_eq!(all, 3, "no other errors: {:?}", t.counters);
        assert_eq!(t.undescribed(), Vec::<String>::new(), "HELP text and unit");
    });
    Ok(())
}
