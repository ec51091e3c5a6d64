//! `Natty::publish` / `flush` / `close`: no failure dropped, one background publisher.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use natty::{ConnectOptions, Natty, StreamConfig};
use natty_testkit::{Nats, init_tracing, unique_name};

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn flush_returns_the_message_no_stream_captured() -> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start().await?;
    let natty = Natty::connect(ConnectOptions::new([nats.url()])).await?;
    let id = unique_name("f").replace('-', "_");
    let stream = format!("S_{id}");
    natty
        .create_stream(StreamConfig::new(&stream, [format!("{stream}.>")]))
        .await?;
    natty
        .publish(&format!("{stream}.ok"), "kept".into())
        .await?;
    natty.publish("nowhere.at.all", "lost?".into()).await?;
    let err = natty
        .flush()
        .await
        .expect_err("flush said Ok over a message that was not stored");
    assert_eq!(err.failed.len(), 1, "{err}");
    let failed = &err.failed[0];
    assert_eq!(failed.subject, "nowhere.at.all");
    assert_eq!(failed.payload, "lost?");
    assert_eq!(
        failed.error.kind(),
        natty::stream::ErrorKind::NoStreamForSubject
    );
    assert_eq!(failed.stored, natty::stream::Stored::No);
    // Returned once: the next flush is clean, and so is close.
    natty.flush().await?;
    natty
        .publish("nowhere.at.all", "lost at close?".into())
        .await?;
    match natty.close().await {
        Err(natty::CloseError::NotStored(report)) => {
            assert_eq!(report.failed.len(), 1);
            assert_eq!(report.failed[0].payload, "lost at close?");
        }
        other => panic!("close must return the message not stored: {other:?}"),
    }
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn many_subjects_share_one_publisher() -> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start().await?;
    let natty = Natty::connect(ConnectOptions::new([nats.url()])).await?;
    let id = unique_name("m").replace('-', "_");
    let stream = format!("S_{id}");
    natty
        .create_stream(StreamConfig::new(&stream, [format!("{stream}.>")]))
        .await?;
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    for i in 0..10_000 {
        natty.publish(&format!("{stream}.s{i}"), "x".into()).await?;
    }
    natty.flush().await.unwrap();
    let after = metrics.num_alive_tasks();
    assert!(
        after <= before + 3,
        "10,000 subjects left {} more tasks alive",
        after - before
    );
    Ok(())
}
