//! The loss audit against a real server: a message deleted from the middle of a stream, one
//! stored twice and a foreign publisher are each reported; a clean stream is clean; a refused
//! send leaves no gap in the publisher's numbers.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use natty_core::{Client, ConnectOptions};
use natty_stream::{
    BatchConfig, BatchPublisher, ErrorKind, StreamConfig,
    audit::{AuditOptions, audit_stream},
    ensure_stream,
};
use natty_testkit::{Nats, init_tracing, unique_name};

async fn setup(prefix: &str) -> anyhow::Result<(Nats, Client, String)> {
    init_tracing();
    let nats = Nats::start().await?;
    let client = ConnectOptions::new([nats.url()]).connect().await?;
    let name = unique_name(prefix).replace('-', "_");
    ensure_stream(&client, &StreamConfig::new(&name, [format!("{name}.>")])).await?;
    Ok((nats, client, name))
}

async fn publish(client: &Client, name: &str, n: usize) -> anyhow::Result<()> {
    let publisher = BatchPublisher::new(client.clone(), BatchConfig::default())?;
    for i in 0..n {
        publisher
            .send(&format!("{name}.k{}", i % 7), format!("m{i}").into())
            .await?;
    }
    publisher.close().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs Docker (NATS)"]
async fn a_message_deleted_from_the_middle_is_reported_missing() -> anyhow::Result<()> {
    let (_nats, client, name) = setup("audit_gap").await?;
    publish(&client, &name, 1_000).await?;

    let clean = audit_stream(&client, &name, AuditOptions::default()).await?;
    assert!(clean.is_clean(), "{clean}");
    assert_eq!((clean.messages, clean.publishers.len()), (1_000, 1));
    assert_eq!(clean.publishers[0].numbers, 1..=1_000);

    // The server loses (here: we delete) stream sequences 500 and 700-702.
    let stream = client.jetstream().get_stream(&name).await?;
    for seq in [500, 700, 701, 702] {
        assert!(stream.delete_message(seq).await?);
    }
    let report = audit_stream(&client, &name, AuditOptions::default()).await?;
    assert!(!report.is_clean(), "{report}");
    assert_eq!(report.missing(), 4, "{report}");
    assert_eq!(report.publishers[0].missing, vec![500..=500, 700..=702]);
    assert_eq!(report.duplicates(), 0);
    Ok(())
}

#[tokio::test]
#[ignore = "needs Docker (NATS)"]
async fn a_copy_stored_again_and_foreign_messages_are_told_apart() -> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start().await?;
    let client = ConnectOptions::new([nats.url()]).connect().await?;
    let name = unique_name("audit_dup").replace('-', "_");
    let window = Duration::from_secs(1);
    ensure_stream(
        &client,
        &StreamConfig::new(&name, [format!("{name}.>")]).duplicate_window(window),
    )
    .await?;
    publish(&client, &name, 50).await?;
    // Message 10 published again under its id once the duplicate window has passed (what a
    // retry far too late would do): the stream stores it a second time.
    let stream = client.jetstream().get_stream(&name).await?;
    let tenth = stream.get_raw_message(10).await?;
    let id = tenth
        .headers
        .get(async_nats::header::NATS_MESSAGE_ID)
        .unwrap()
        .to_string();
    let deadline = Instant::now() + window * 10;
    loop {
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        let ack = client
            .jetstream()
            .publish_with_headers(tenth.subject.to_string(), headers, tenth.payload.clone())
            .await?
            .await?;
        if !ack.duplicate {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the duplicate window never passed"
        );
        tokio::time::sleep(window / 4).await;
    }
    // A foreign publisher: a raw publish without natty's ids.
    client
        .jetstream()
        .publish(format!("{name}.foreign"), "raw".into())
        .await?
        .await?;
    let report = audit_stream(&client, &name, AuditOptions::default()).await?;
    assert_eq!((report.messages, report.unnumbered), (52, 1), "{report}");
    assert_eq!(report.duplicates(), 1, "{report}");
    assert_eq!(report.publishers[0].duplicate_examples[0].number, 10);
    assert_eq!(report.missing(), 0);
    assert!(!report.is_clean());
    Ok(())
}

#[tokio::test]
#[ignore = "needs Docker (NATS)"]
async fn a_refused_send_leaves_no_gap() -> anyhow::Result<()> {
    let (_nats, client, name) = setup("audit_refused").await?;
    let publisher = BatchPublisher::new(client.clone(), BatchConfig::default())?;
    let too_big = vec![0u8; client.limits().max_payload() + 1];
    for i in 0..20 {
        publisher
            .send(&format!("{name}.a"), format!("m{i}").into())
            .await?;
        let refused = publisher
            .send(&format!("{name}.a"), too_big.clone().into())
            .await;
        assert_eq!(refused.unwrap_err().kind(), ErrorKind::TooLarge);
    }
    publisher.close().await?;
    let report = audit_stream(&client, &name, AuditOptions::default()).await?;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.publishers[0].numbers, 1..=20, "{report}");
    Ok(())
}

#[tokio::test]
#[ignore = "needs Docker (NATS)"]
async fn bad_options_are_refused_and_a_missing_stream_is_typed() -> anyhow::Result<()> {
    let (_nats, client, name) = setup("audit_bad").await?;
    let e = audit_stream(&client, &name, AuditOptions::default().from_sequence(0))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    let e = audit_stream(&client, "no.such", AuditOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidName);
    let e = audit_stream(&client, "NO_SUCH", AuditOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StreamNotFound);
    let empty = audit_stream(&client, &name, AuditOptions::default()).await?;
    assert!(empty.is_clean() && empty.messages == 0);
    Ok(())
}
