//! `BatchPublisher` at its edges, against a real NATS server: concurrent senders and `flush`,
//! one bad message in a fast batch, a stream re-configured under the publisher, retries near
//! the duplicate window, streams that never ack, and message ids across restarts.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use std::{collections::HashSet, sync::Arc, time::Duration};

use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use natty_core::{Client, ConnectOptions};
use natty_stream::{
    BatchConfig, BatchPublisher, ErrorKind, PublishMode, StreamConfig, ensure_stream,
};
use natty_testkit::{Nats, init_tracing, unique_name};

fn number(payload: &[u8]) -> u64 {
    u64::from_be_bytes(payload[..8].try_into().unwrap())
}

/// Every message in the stream, as numbers.
async fn stored_numbers(client: &Client, stream: &str) -> anyhow::Result<Vec<u64>> {
    let stream = client.jetstream().get_stream(stream).await?;
    let total = stream.cached_info().state.messages;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await?;
    let mut messages = consumer.messages().await?.take(usize::try_from(total)?);
    let mut out = Vec::new();
    while let Some(m) = messages.next().await {
        out.push(number(&m?.payload));
    }
    Ok(out)
}

async fn stored_count(client: &Client, stream: &str) -> anyhow::Result<u64> {
    Ok(client
        .jetstream()
        .get_stream(stream)
        .await?
        .info()
        .await?
        .state
        .messages)
}

fn assert_once_each(stored: &[u64]) {
    let distinct: HashSet<u64> = stored.iter().copied().collect();
    assert_eq!(distinct.len(), stored.len(), "a message was stored twice");
}

async fn setup(prefix: &str) -> anyhow::Result<(Nats, Client, String)> {
    init_tracing();
    let nats = Nats::start().await?;
    let client = ConnectOptions::new([nats.url()]).connect().await?;
    let name = unique_name(prefix).replace('-', "_");
    Ok((nats, client, name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn flush_waits_for_every_send_made_before_it_by_concurrent_tasks() -> anyhow::Result<()> {
    let (_nats, client, name) = setup("CONC").await?;
    // Two streams, one taking fast ingest and one pipelined, so that messages are not all
    // acknowledged in the order they were queued.
    let (fast, slow) = (format!("{name}_F"), format!("{name}_P"));
    ensure_stream(
        &client,
        &StreamConfig::new(&fast, [format!("{fast}.>")]).allow_batched(true),
    )
    .await?;
    ensure_stream(&client, &StreamConfig::new(&slow, [format!("{slow}.>")])).await?;
    let publisher = Arc::new(BatchPublisher::new(client.clone(), BatchConfig::default())?);
    const TASKS: u64 = 8;
    const EACH: u64 = 20_000;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let stream = if t % 2 == 0 { &fast } else { &slow };
        let (publisher, subject) = (publisher.clone(), format!("{stream}.t{t}"));
        let js_stream = client.jetstream().get_stream(stream).await?;
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                let n = t * EACH + i;
                publisher
                    .send(&subject, n.to_be_bytes().to_vec().into())
                    .await?;
                if i % 5_000 == 4_999 {
                    // Flushed while the other tasks go on sending: this task's messages so far
                    // must all be stored, the last one included.
                    publisher.flush().await?;
                    let last = js_stream.get_last_raw_message_by_subject(&subject).await?;
                    assert_eq!(
                        number(&last.payload),
                        n,
                        "flush returned before {subject} #{i} was stored"
                    );
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    publisher.flush().await?;
    // Read right after flush: everything sent before it must be stored by now.
    let stored = stored_count(&client, &fast).await? + stored_count(&client, &slow).await?;
    assert_eq!(
        stored,
        TASKS * EACH,
        "flush returned before its messages were stored"
    );
    let report = publisher.close().await?;
    assert!(report.failed.is_empty(), "{:?}", report.failed.first());
    Ok(())
}

/// A fast-ingest stream that refuses messages over 1 KiB.
async fn small_message_fast_stream(client: &Client, name: &str) -> anyhow::Result<()> {
    client
        .jetstream()
        .create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec![format!("{name}.>")],
            max_message_size: 1024,
            allow_batch_publish: true,
            ..Default::default()
        })
        .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn an_oversized_message_fails_alone_in_a_fast_ingest_batch() -> anyhow::Result<()> {
    let (_nats, client, name) = setup("BIG").await?;
    small_message_fast_stream(&client, &name).await?;
    let publisher = BatchPublisher::new(
        client.clone(),
        BatchConfig::default()
            .mode(PublishMode::FastIngest)
            .ack_timeout(Duration::from_secs(2)),
    )?;
    const N: u64 = 3_000;
    const BAD: u64 = 1_500;
    let subject = format!("{name}.x");
    for i in 0..N {
        let mut payload = i.to_be_bytes().to_vec();
        if i == BAD {
            payload.resize(4096, 0);
        }
        publisher.send(&subject, payload.into()).await?;
    }
    let report = tokio::time::timeout(Duration::from_secs(60), publisher.close()).await??;
    eprintln!("{:?}", report.stats);
    let failed: Vec<u64> = report.failed.iter().map(|f| number(&f.payload)).collect();
    assert_eq!(
        failed,
        [BAD],
        "only the oversized message fails: {:?}",
        report.failed.first()
    );
    let f = &report.failed[0];
    assert_eq!(f.error.kind(), ErrorKind::Rejected, "{}", f.error);
    assert!(
        f.attempts <= 2,
        "a refusal is not retried: {} attempts",
        f.attempts
    );
    assert_eq!(f.stored, natty_stream::Stored::No);
    let stored = stored_numbers(&client, &name).await?;
    assert_once_each(&stored);
    assert_eq!(stored.len() as u64, N - 1, "every neighbour stored");
    assert!(!stored.contains(&BAD));
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn auto_mode_falls_back_to_pipelined_when_a_stream_stops_allowing_batches()
-> anyhow::Result<()> {
    let (_nats, client, name) = setup("FALLBACK").await?;
    ensure_stream(
        &client,
        &StreamConfig::new(&name, [format!("{name}.>")]).allow_batched(true),
    )
    .await?;
    let publisher = BatchPublisher::new(
        client.clone(),
        BatchConfig::default().ack_timeout(Duration::from_secs(2)),
    )?;
    let subject = format!("{name}.x");
    for i in 0..500u64 {
        publisher
            .send(&subject, i.to_be_bytes().to_vec().into())
            .await?;
    }
    publisher.flush().await?;
    let js = client.jetstream();
    let mut config = js.get_stream(&name).await?.info().await?.config.clone();
    config.allow_batch_publish = false;
    js.update_stream(config).await?;
    for i in 500..1_000u64 {
        publisher
            .send(&subject, i.to_be_bytes().to_vec().into())
            .await?;
    }
    let report = tokio::time::timeout(Duration::from_secs(60), publisher.close()).await??;
    assert!(
        report.failed.is_empty(),
        "{} failed: {:?}",
        report.failed.len(),
        report.failed.first()
    );
    let stored = stored_numbers(&client, &name).await?;
    assert_once_each(&stored);
    assert_eq!(stored.len(), 1_000);
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn retries_never_outlive_the_duplicate_window() -> anyhow::Result<()> {
    let (nats, client, name) = setup("WINDOW").await?;
    // The outage lasts longer than this window: a message whose ack was lost in the restart
    // must not be re-sent once the stream would no longer recognise it.
    ensure_stream(
        &client,
        &StreamConfig::new(&name, [format!("{name}.>")]).duplicate_window(Duration::from_secs(1)),
    )
    .await?;
    let publisher = BatchPublisher::new(
        client.clone(),
        BatchConfig::default().ack_timeout(Duration::from_millis(500)),
    )?;
    const N: u64 = 30_000;
    let subject = format!("{name}.x");
    let restart = async {
        while publisher.stats().acked < N / 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Killed with acks in flight, and down for longer than the window.
        nats.kill().await?;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        nats.start_again().await
    };
    let send = async {
        for i in 0..N {
            publisher
                .send(&subject, i.to_be_bytes().to_vec().into())
                .await?;
        }
        anyhow::Ok(())
    };
    let (sent, restarted) = tokio::join!(send, restart);
    sent?;
    restarted?;
    let report = tokio::time::timeout(Duration::from_secs(120), publisher.close()).await??;
    eprintln!("{:?}, {} handed back", report.stats, report.failed.len());
    let stored = stored_numbers(&client, &name).await?;
    assert_once_each(&stored);
    for f in &report.failed {
        assert_eq!(f.stored, natty_stream::Stored::Maybe, "{}", f.error);
    }
    let accounted: HashSet<u64> = stored
        .iter()
        .copied()
        .chain(report.failed.iter().map(|f| number(&f.payload)))
        .collect();
    assert_eq!(
        accounted.len() as u64,
        N,
        "every message stored or handed back"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn ensure_stream_compares_the_duplicate_window() -> anyhow::Result<()> {
    let (_nats, client, name) = setup("DUPWIN").await?;
    let config = StreamConfig::new(&name, [format!("{name}.>")]);
    ensure_stream(&client, &config).await?;
    let err = ensure_stream(
        &client,
        &config.clone().duplicate_window(Duration::from_secs(30)),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConfigMismatch, "{err}");
    assert!(err.to_string().contains("duplicate_window"), "{err}");
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_stream_that_never_acks_is_refused() -> anyhow::Result<()> {
    let (_nats, client, name) = setup("NOACK").await?;
    client
        .jetstream()
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            no_ack: true,
            ..Default::default()
        })
        .await?;
    let err = ensure_stream(&client, &StreamConfig::new(&name, [format!("{name}.>")]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConfigMismatch, "{err}");
    assert!(err.to_string().contains("no_ack"), "{err}");

    let publisher = BatchPublisher::new(
        client.clone(),
        BatchConfig::default().ack_timeout(Duration::from_millis(300)),
    )?;
    publisher.send(&format!("{name}.x"), "x".into()).await?;
    let report = tokio::time::timeout(Duration::from_secs(30), publisher.close()).await??;
    assert_eq!(report.failed.len(), 1);
    let f = &report.failed[0];
    assert_eq!(f.error.kind(), ErrorKind::ConfigMismatch, "{}", f.error);
    assert!(f.error.to_string().contains("no_ack"), "{}", f.error);
    assert_eq!(f.stored, natty_stream::Stored::No);
    assert_eq!(
        stored_count(&client, &name).await?,
        0,
        "refused before sending"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_fixed_id_prefix_never_reuses_an_id_after_a_restart() -> anyhow::Result<()> {
    let (_nats, client, name) = setup("IDS").await?;
    ensure_stream(&client, &StreamConfig::new(&name, [format!("{name}.>")])).await?;
    // The same service, started twice inside the duplicate window.
    for run in 0..2u64 {
        let publisher = BatchPublisher::new(
            client.clone(),
            BatchConfig::default().id_prefix("orders-service"),
        )?;
        publisher
            .send(&format!("{name}.x"), run.to_be_bytes().to_vec().into())
            .await?;
        let report = publisher.close().await?;
        assert!(report.failed.is_empty());
        assert_eq!(
            report.stats.duplicates, 0,
            "run {run}: taken for a duplicate"
        );
    }
    assert_eq!(
        stored_count(&client, &name).await?,
        2,
        "the second run's message was dropped"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn an_outage_pushes_back_on_senders_instead_of_piling_up_retries() -> anyhow::Result<()> {
    let (nats, client, name) = setup("OUTAGE").await?;
    ensure_stream(&client, &StreamConfig::new(&name, [format!("{name}.>")])).await?;
    let publisher = BatchPublisher::new(
        client.clone(),
        BatchConfig::default()
            .queue_capacity(100)
            .max_in_flight(100)
            .ack_timeout(Duration::from_millis(300)),
    )?;
    let subject = format!("{name}.x");
    publisher
        .send(&subject, 0u64.to_be_bytes().to_vec().into())
        .await?;
    publisher.flush().await?;
    nats.pause().await?;
    // For 3 s (ten ack timeouts) of outage, queue whatever the publisher takes.
    let mut accepted = 1u64;
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        match publisher.try_send(&subject, accepted.to_be_bytes().to_vec().into()) {
            Ok(()) => accepted += 1,
            Err(e) if e.kind() == ErrorKind::Full => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    nats.unpause().await?;
    // Held at most: the queue (100) plus in flight and waiting to retry (100), plus the first.
    assert!(
        accepted <= 201,
        "{accepted} messages taken during the outage: retries pile up without bound"
    );
    let report = tokio::time::timeout(Duration::from_secs(60), publisher.close()).await??;
    let stored = stored_numbers(&client, &name).await?;
    assert_once_each(&stored);
    assert_eq!(
        stored.len() as u64 + report.failed.len() as u64,
        accepted,
        "every message stored or handed back"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_fast_stream_deleted_under_the_publisher_hands_its_messages_back_promptly()
-> anyhow::Result<()> {
    // A batch to a subject no stream answers gets an empty 503, read as "no leader": the
    // publisher pauses new batches but must still judge every message (one by one) and hand
    // it back, not hold the queue for a pause per message.
    let (_nats, client, name) = setup("GONE").await?;
    ensure_stream(
        &client,
        &StreamConfig::new(&name, [format!("{name}.>")]).allow_batched(true),
    )
    .await?;
    let publisher = BatchPublisher::new(
        client.clone(),
        BatchConfig::default()
            .mode(PublishMode::FastIngest)
            .ack_timeout(Duration::from_secs(2)),
    )?;
    let subject = format!("{name}.x");
    for i in 0..100u64 {
        publisher
            .send(&subject, i.to_be_bytes().to_vec().into())
            .await?;
    }
    publisher.flush().await?;
    client.jetstream().delete_stream(&name).await?;
    const N: u64 = 2_000;
    for i in 100..100 + N {
        publisher
            .send(&subject, i.to_be_bytes().to_vec().into())
            .await?;
    }
    let report = tokio::time::timeout(Duration::from_secs(30), publisher.close()).await??;
    eprintln!("{:?}", report.stats);
    assert_eq!(report.failed.len() as u64, N, "{:?}", report.failed.first());
    for f in &report.failed {
        assert_eq!(f.error.kind(), ErrorKind::NoStreamForSubject, "{}", f.error);
    }
    Ok(())
}

/// `flush_all`, the strict flush (the facade's `flush` delegates to it): `Ok` only if every
/// message queued before it was stored; otherwise each failure comes back once, or is counted
/// when another flush (or the error channel) took it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn flush_all_returns_each_failure_once_and_never_ok_over_a_lost_message() -> anyhow::Result<()>
{
    let (_nats, client, name) = setup("FA").await?;
    ensure_stream(&client, &StreamConfig::new(&name, [format!("{name}.>")])).await?;
    let publisher = Arc::new(BatchPublisher::new(client.clone(), BatchConfig::default())?);
    let good = format!("{name}.ok");

    // One flush: the failures are its own.
    for i in 0..50u64 {
        publisher
            .send(&good, i.to_be_bytes().to_vec().into())
            .await?;
    }
    for i in 100..105u64 {
        publisher
            .send("nowhere.at.all", i.to_be_bytes().to_vec().into())
            .await?;
    }
    let e = publisher
        .flush_all()
        .await
        .expect_err("five were not stored");
    let mut failed: Vec<u64> = e.failed.iter().map(|f| number(&f.payload)).collect();
    failed.sort_unstable();
    assert_eq!(failed, [100, 101, 102, 103, 104]);
    assert_eq!(e.returned_elsewhere, 0);
    assert!(e.error.is_none(), "{e}");
    let stats = publisher
        .flush_all()
        .await
        .expect("returned once: the next flush is clean");
    assert_eq!((stats.failed, stats.held), (5, 0));

    // Overlapping flushes: across all of them each failure comes back exactly once, and a
    // flush that returns an error says why (its own failures, or those taken elsewhere). (A
    // flush may return Ok over its task's failure only if another flush took it before this one
    // began: the handback's unit tests pin that accounting down deterministically.)
    const TASKS: u64 = 16;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let publisher = publisher.clone();
        let good = good.clone();
        tasks.push(tokio::spawn(async move {
            publisher
                .send("nowhere.at.all", (10_000 + t).to_be_bytes().to_vec().into())
                .await?;
            for i in 0..20u64 {
                publisher
                    .send(&good, (1_000 + t * 100 + i).to_be_bytes().to_vec().into())
                    .await?;
            }
            match publisher.flush_all().await {
                Ok(_) => anyhow::Ok(Vec::new()),
                Err(e) => {
                    assert!(
                        !e.failed.is_empty() || e.returned_elsewhere > 0,
                        "an error that names nothing: {e}"
                    );
                    assert!(e.error.is_none(), "{e}");
                    Ok(e.failed.iter().map(|f| number(&f.payload)).collect())
                }
            }
        }));
    }
    let mut returned = Vec::new();
    for task in tasks {
        returned.extend(task.await??);
    }
    // A failure still held (its message failed after every flush's mark) comes from the next.
    if let Err(e) = publisher.flush_all().await {
        returned.extend(e.failed.iter().map(|f| number(&f.payload)));
    }
    returned.sort_unstable();
    let want: Vec<u64> = (10_000..10_000 + TASKS).collect();
    assert_eq!(returned, want, "each failure returned exactly once");

    // Once the error channel is taken, failures go there, and a strict flush counts them.
    let mut channel = publisher.take_errors().expect("first take");
    publisher
        .send("nowhere.at.all", 7u64.to_be_bytes().to_vec().into())
        .await?;
    let e = publisher.flush_all().await.expect_err("not stored");
    assert!(e.failed.is_empty(), "{e}");
    assert_eq!(e.returned_elsewhere, 1, "{e}");
    let f = channel.recv().await.unwrap();
    assert_eq!(number(&f.payload), 7);
    let stored = stored_numbers(&client, &name).await?;
    assert_once_each(&stored);
    assert_eq!(stored.len() as u64, 50 + TASKS * 20);
    let report = publisher.close().await?;
    assert!(report.failed.is_empty());
    Ok(())
}

/// The failures held for `flush_all` are bounded: at `max_held_failures`, `send` and
/// `try_send` say `Full` at once (nothing queued; a sender waiting would wait for ever when it
/// is the task that flushes) until a flush takes them.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn held_failures_are_bounded_and_refuse_senders_until_a_flush() -> anyhow::Result<()> {
    let (_nats, client, _name) = setup("HB").await?;
    let publisher =
        BatchPublisher::new(client.clone(), BatchConfig::default().max_held_failures(5))?;
    for i in 0..5u64 {
        publisher
            .send("nowhere.at.all", i.to_be_bytes().to_vec().into())
            .await?;
    }
    publisher.flush().await?;
    assert_eq!(publisher.stats().held, 5);
    let e = publisher
        .try_send("nowhere.at.all", "x".into())
        .expect_err("held failures at the bound");
    assert_eq!(e.kind(), ErrorKind::Full, "{e}");
    let e = tokio::time::timeout(
        Duration::from_secs(5),
        publisher.send("nowhere.at.all", "x".into()),
    )
    .await
    .expect("send does not wait for a flush")
    .expect_err("held failures at the bound");
    assert_eq!(e.kind(), ErrorKind::Full, "{e}");
    let e = publisher.flush_all().await.expect_err("five not stored");
    assert_eq!(e.failed.len(), 5);
    publisher
        .send("nowhere.at.all", 5u64.to_be_bytes().to_vec().into())
        .await?;
    let report = publisher.close().await?;
    assert_eq!(report.failed.len(), 1, "the sixth comes back from close");
    assert_eq!(number(&report.failed[0].payload), 5);
    Ok(())
}
