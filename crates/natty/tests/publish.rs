//! `Natty::publish` / `flush` / `close`: no failure dropped, one background publisher.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use std::{collections::HashSet, time::Duration};

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

/// A producer that never flushes while every message fails (here: no stream captures its
/// subject; in life, an outage past the retries) must not hold failures without bound: the
/// facade keeps at most a queue's worth for `flush`, then `publish` says `Full` at once — in
/// one task that also flushes (a wait there would be for ever) — and every message still comes
/// back exactly once.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn failures_held_for_flush_are_bounded() -> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start().await?;
    const QUEUE: usize = 100;
    const IN_FLIGHT: usize = 10;
    let natty = Natty::builder(ConnectOptions::new([nats.url()]))
        .publisher(
            natty::stream::BatchConfig::default()
                .queue_capacity(QUEUE)
                .max_in_flight(IN_FLIGHT),
        )
        .connect()
        .await?;
    const N: u64 = 3_000;
    let mut returned = HashSet::new();
    let mut refusals = 0;
    let collect = |e: natty::stream::FlushError, returned: &mut HashSet<u64>| {
        assert_eq!(e.returned_elsewhere, 0, "one flush at a time");
        for f in e.failed {
            let n = u64::from_be_bytes(f.payload.as_ref().try_into().unwrap());
            assert!(returned.insert(n), "message {n} returned twice");
        }
    };
    for i in 0..N {
        loop {
            let sent = tokio::time::timeout(
                Duration::from_secs(30),
                natty.publish("nowhere.at.all", i.to_be_bytes().to_vec().into()),
            )
            .await
            .expect("publish never waits for a flush only this task would make");
            match sent {
                Ok(()) => break,
                Err(e) if e.kind() == natty::stream::ErrorKind::Full => {
                    refusals += 1;
                    // Held: at most a queue's worth, plus what was queued or in flight when
                    // the bound was reached.
                    let held = natty.publisher()?.stats().held;
                    let bound = (QUEUE + QUEUE + IN_FLIGHT) as u64;
                    assert!(held <= bound, "{held} held (bound {bound})");
                    if let Err(e) = natty.flush().await {
                        collect(e, &mut returned);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    if let Err(e) = natty.flush().await {
        collect(e, &mut returned);
    }
    assert!(refusals > 0, "the bound was never reached");
    assert_eq!(returned.len() as u64, N, "every message came back once");
    natty.close().await?;
    Ok(())
}
