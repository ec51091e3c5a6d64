//! natty-stream publishing against a real NATS server: nothing lost, nothing doubled.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use std::{collections::HashSet, time::Duration};

use futures::StreamExt;
use natty_core::ConnectOptions;
use natty_stream::{
    BatchConfig, BatchPublisher, ErrorKind, PublishMode, Publisher, StreamConfig, ensure_stream,
};
use natty_testkit::{Nats, init_tracing, unique_name};

fn number(payload: &[u8]) -> u64 {
    u64::from_be_bytes(payload.try_into().unwrap())
}

/// Every message in the stream, as numbers.
async fn stored_numbers(client: &natty_core::Client, stream: &str) -> anyhow::Result<Vec<u64>> {
    let stream = client.jetstream().get_stream(stream).await?;
    let total = stream.cached_info().state.messages;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await?;
    let mut messages = consumer.messages().await?.take(usize::try_from(total)?);
    let mut out = Vec::new();
    while let Some(m) = messages.next().await {
        out.push(number(&m?.payload));
    }
    Ok(out)
}

/// Sends `n` numbered messages while the server restarts (once a third has been acked).
async fn send_across_a_restart(
    nats: &Nats,
    publisher: &BatchPublisher,
    subject: &str,
    n: u64,
) -> anyhow::Result<()> {
    let restart = async {
        while publisher.stats().acked < n / 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        nats.restart().await
    };
    let send = async {
        for i in 0..n {
            publisher
                .send(subject, i.to_be_bytes().to_vec().into())
                .await?;
        }
        anyhow::Ok(())
    };
    let (sent, restarted) = tokio::join!(send, restart);
    sent?;
    restarted
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn batch_publish_across_a_server_restart_stores_everything_exactly_once() -> anyhow::Result<()>
{
    init_tracing();
    let nats = Nats::start().await?;
    let client = ConnectOptions::new([nats.url()]).connect().await?;
    let name = unique_name("ORDERS").replace('-', "_");
    ensure_stream(&client, &StreamConfig::new(&name, [format!("{name}.>")])).await?;
    let publisher = BatchPublisher::new(
        client.clone(),
        BatchConfig::default().ack_timeout(Duration::from_secs(2)),
    )?;
    let mut errors = publisher.take_errors().unwrap();
    const N: u64 = 100_000;
    let subject = format!("{name}.created");
    send_across_a_restart(&nats, &publisher, &subject, N).await?;
    let report = publisher.close().await?;
    assert!(
        report.failed.is_empty(),
        "{} failed, e.g. {:?}",
        report.failed.len(),
        report.failed.first()
    );
    assert!(errors.try_recv().is_err(), "nothing on the error channel");
    assert_eq!(report.stats.acked, N, "{:?}", report.stats);
    eprintln!("{:?}", report.stats);

    let stored = stored_numbers(&client, &name).await?;
    assert_eq!(stored.len() as u64, N, "stored exactly N messages");
    let distinct: HashSet<u64> = stored.iter().copied().collect();
    assert_eq!(distinct.len() as u64, N, "no duplicates");
    assert!(
        (0..N).all(|i| distinct.contains(&i)),
        "every number present"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_stream_deleted_mid_run_hands_back_every_unsent_message() -> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start().await?;
    let client = ConnectOptions::new([nats.url()]).connect().await?;
    let name = unique_name("GONE").replace('-', "_");
    ensure_stream(&client, &StreamConfig::new(&name, [format!("{name}.>")])).await?;
    let publisher = BatchPublisher::new(client.clone(), BatchConfig::default())?;
    let mut errors = publisher.take_errors().unwrap();
    const N: u64 = 20_000;
    let subject = format!("{name}.x");
    let delete = async {
        while publisher.stats().acked < 2_000 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        natty_stream::delete_stream(&client, &name).await
    };
    let send = async {
        for i in 0..N {
            publisher
                .send(&subject, i.to_be_bytes().to_vec().into())
                .await?;
        }
        anyhow::Ok(())
    };
    let (sent, deleted) = tokio::join!(send, delete);
    sent?;
    deleted?;
    let report = publisher.close().await?;
    let mut failed = Vec::new();
    while let Ok(f) = errors.try_recv() {
        assert_eq!(f.error.kind(), ErrorKind::NoStreamForSubject, "{}", f.error);
        assert_eq!(f.subject, subject);
        failed.push(number(&f.payload));
    }
    assert!(
        report.failed.is_empty(),
        "failures went to the channel taken"
    );
    assert!(
        !failed.is_empty(),
        "some messages were sent after the delete"
    );
    let distinct: HashSet<u64> = failed.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        failed.len(),
        "each failed message handed back once"
    );
    assert_eq!(
        report.stats.acked + failed.len() as u64,
        N,
        "every message acked or handed back: {:?}",
        report.stats
    );
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_subject_no_stream_captures_is_an_error_for_that_message() -> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start().await?;
    let client = ConnectOptions::new([nats.url()]).connect().await?;
    let err = Publisher::new(client.clone())
        .publish("nowhere.at.all", "x".into())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoStreamForSubject, "{err}");
    assert!(err.to_string().contains("nowhere.at.all"), "{err}");

    let publisher = BatchPublisher::new(client.clone(), BatchConfig::default())?;
    let mut errors = publisher.take_errors().unwrap();
    publisher.send("nowhere.at.all", "lost?".into()).await?;
    publisher.flush().await?;
    let failed = errors.try_recv().expect("the message comes back");
    assert_eq!(failed.payload, "lost?");
    assert_eq!(failed.error.kind(), ErrorKind::NoStreamForSubject);
    assert_eq!(
        failed.attempts, 1,
        "no retries when no stream captures the subject"
    );
    // Bad input is refused before anything is queued.
    assert_eq!(
        publisher
            .send("bad subject", "x".into())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidName
    );
    let report = publisher.close().await?;
    assert_eq!(report.stats.queued, 1);
    assert_eq!(
        publisher.send("a.b", "x".into()).await.unwrap_err().kind(),
        ErrorKind::Closed
    );
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn try_send_says_full_and_close_returns_unclaimed_failures() -> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start().await?;
    let client = ConnectOptions::new([nats.url()]).connect().await?;
    let publisher = BatchPublisher::new(
        client.clone(),
        BatchConfig::default().queue_capacity(1).max_in_flight(1),
    )?;
    let mut full = false;
    for _ in 0..10_000 {
        match publisher.try_send("nowhere.x", "x".into()) {
            Ok(()) => {}
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Full, "{e}");
                full = true;
                break;
            }
        }
    }
    assert!(full, "a queue of one fills up");
    let report = publisher.close().await?;
    assert_eq!(
        report.failed.len() as u64,
        report.stats.queued,
        "never-taken failures come back from close()"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn fast_ingest_stores_exactly_the_sent_messages_across_a_batch_failure() -> anyhow::Result<()>
{
    init_tracing();
    let nats = Nats::start().await?;
    let client = ConnectOptions::new([nats.url()]).connect().await?;
    let name = unique_name("FAST").replace('-', "_");
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
    let mut errors = publisher.take_errors().unwrap();
    const N: u64 = 60_000;
    let subject = format!("{name}.created");
    // The forced failure: the server goes away mid-batch (same storage when it is back).
    send_across_a_restart(&nats, &publisher, &subject, N).await?;
    let report = publisher.close().await?;
    eprintln!("{:?}", report.stats);
    assert!(report.failed.is_empty(), "{:?}", report.failed.first());
    assert!(errors.try_recv().is_err());
    assert!(
        report.stats.retried > 0,
        "the batch failure was not forced: {:?}",
        report.stats
    );

    let stored = stored_numbers(&client, &name).await?;
    let distinct: HashSet<u64> = stored.iter().copied().collect();
    assert_eq!(distinct.len(), stored.len(), "doubled messages");
    assert_eq!(stored.len() as u64, N, "lost messages");
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn fast_ingest_on_a_stream_without_allow_batched_is_unsupported() -> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start().await?;
    let client = ConnectOptions::new([nats.url()]).connect().await?;
    let name = unique_name("SLOW").replace('-', "_");
    ensure_stream(
        &client,
        &StreamConfig::new(&name, [format!("{name}.>")]).allow_batched(false),
    )
    .await?;
    let publisher = BatchPublisher::new(
        client.clone(),
        BatchConfig::default().mode(PublishMode::FastIngest),
    )?;
    publisher.send(&format!("{name}.x"), "x".into()).await?;
    let report = publisher.close().await?;
    assert_eq!(report.failed.len(), 1);
    assert_eq!(
        report.failed[0].error.kind(),
        ErrorKind::Unsupported,
        "{}",
        report.failed[0].error
    );
    assert!(report.failed[0].error.to_string().contains("allow_batched"));
    // Auto mode publishes it the ordinary way.
    let publisher = BatchPublisher::new(client.clone(), BatchConfig::default())?;
    publisher.send(&format!("{name}.x"), "x".into()).await?;
    assert!(publisher.close().await?.failed.is_empty());
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_stream_natty_creates_allows_batching_by_default_so_auto_takes_fast_ingest()
-> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start().await?;
    let client = ConnectOptions::new([nats.url()]).connect().await?;
    let name = unique_name("DEFAULT").replace('-', "_");
    ensure_stream(&client, &StreamConfig::new(&name, [format!("{name}.>")])).await?;
    let info = client
        .jetstream()
        .get_stream(&name)
        .await?
        .cached_info()
        .clone();
    assert!(
        info.config.allow_batch_publish,
        "a stream made with natty's defaults on nats-server 2.14+ must allow batched publishing"
    );
    // FastIngest (which refuses a stream without batching) stores to it.
    let publisher = BatchPublisher::new(
        client.clone(),
        BatchConfig::default().mode(PublishMode::FastIngest),
    )?;
    for i in 0..100u64 {
        publisher
            .send(&format!("{name}.x"), i.to_be_bytes().to_vec().into())
            .await?;
    }
    let report = publisher.close().await?;
    assert!(report.failed.is_empty(), "{:?}", report.failed.first());
    assert_eq!(
        stored_numbers(&client, &name).await?,
        (0..100).collect::<Vec<_>>()
    );
    // An existing stream without batching still satisfies the default (not checked)...
    let plain = format!("{name}_PLAIN");
    ensure_stream(
        &client,
        &StreamConfig::new(&plain, [format!("{plain}.>")]).allow_batched(false),
    )
    .await?;
    ensure_stream(&client, &StreamConfig::new(&plain, [format!("{plain}.>")])).await?;
    // ... but not an explicit requirement.
    let err = ensure_stream(
        &client,
        &StreamConfig::new(&plain, [format!("{plain}.>")]).allow_batched(true),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConfigMismatch, "{err}");
    Ok(())
}

/// The `max_payload` of the servers in the limit tests: small, so a message over it is cheap.
const MAX_PAYLOAD: usize = 64 * 1024;

/// A server that takes at most [`MAX_PAYLOAD`] bytes per message.
async fn small_payload_server() -> anyhow::Result<Nats> {
    Nats::start_with(natty_testkit::ServerOptions {
        config: Some(format!("max_payload: {MAX_PAYLOAD}\n")),
        ..Default::default()
    })
    .await
}

fn connects(client: &natty_core::Client) -> u64 {
    client
        .nats()
        .statistics()
        .connects
        .load(std::sync::atomic::Ordering::Relaxed)
}

fn sent_messages(client: &natty_core::Client) -> u64 {
    client
        .nats()
        .statistics()
        .out_messages
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// Another user of the connection (a plain subscription) still gets what is published to it,
/// on the first connection.
async fn probe(
    client: &natty_core::Client,
    sub: &mut async_nats::Subscriber,
    subject: &str,
) -> anyhow::Result<()> {
    client
        .nats()
        .publish(subject.to_owned(), "ping".into())
        .await?;
    let got = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .map_err(|_| anyhow::anyhow!("the subscription on the shared connection went deaf"))?;
    assert_eq!(got.map(|m| m.payload), Some("ping".into()));
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn an_oversized_publish_is_refused_at_once_and_the_connection_stays_up() -> anyhow::Result<()>
{
    init_tracing();
    let nats = small_payload_server().await?;
    let client = ConnectOptions::new([nats.url()]).connect().await?;
    assert_eq!(
        client.nats().max_payload(),
        MAX_PAYLOAD,
        "the server's INFO"
    );
    let name = unique_name("LIM").replace('-', "_");
    ensure_stream(&client, &StreamConfig::new(&name, [format!("{name}.>")])).await?;
    let probe_subject = format!("probe.{name}");
    let mut sub = client.nats().subscribe(probe_subject.clone()).await?;
    probe(&client, &mut sub, &probe_subject).await?;
    let before = connects(&client);
    let publisher = Publisher::new(client.clone());
    let subject = format!("{name}.x");

    // Exactly max_payload, no headers: it fits, and is stored.
    let ack = publisher
        .publish(&subject, vec![1; MAX_PAYLOAD].into())
        .await?;
    assert_eq!(ack.stream, name);

    let long_subject = format!("{name}.{}", "k".repeat(5_000));
    let over = natty_stream::PublishOptions::default().msg_id("id-1");
    let refused = [
        ("one byte over", subject.clone(), MAX_PAYLOAD + 1, None),
        // Fits alone, not with its `Nats-Msg-Id` header: headers count.
        ("headers counted", subject.clone(), MAX_PAYLOAD, Some(&over)),
        ("5,000-byte subject", long_subject, 10, None),
    ];
    for (what, subject, len, options) in refused {
        let out_before = sent_messages(&client);
        let payload = vec![2; len].into();
        let publish = async {
            match options {
                Some(options) => publisher.publish_with(&subject, payload, options).await,
                None => publisher.publish(&subject, payload).await,
            }
        };
        let result = tokio::time::timeout(Duration::from_secs(3), publish)
            .await
            .map_err(|_| anyhow::anyhow!("{what}: not refused at once"))?;
        let e = result.expect_err(what);
        assert_eq!(e.kind(), ErrorKind::TooLarge, "{what}: {e}");
        assert_eq!(sent_messages(&client), out_before, "{what}: nothing sent");
    }
    assert_eq!(connects(&client), before, "the connection was never lost");
    probe(&client, &mut sub, &probe_subject).await?;
    let stored = client
        .jetstream()
        .get_stream(&name)
        .await?
        .info()
        .await?
        .state
        .messages;
    assert_eq!(stored, 1, "only the message that fits");
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn an_oversized_batch_send_is_refused_at_once_in_every_mode() -> anyhow::Result<()> {
    init_tracing();
    let nats = small_payload_server().await?;
    let client = ConnectOptions::new([nats.url()]).connect().await?;
    let name = unique_name("LIMB").replace('-', "_");
    // natty's streams allow fast-ingest batches: both modes are exercised for real.
    ensure_stream(&client, &StreamConfig::new(&name, [format!("{name}.>")])).await?;
    let probe_subject = format!("probe.{name}");
    let mut sub = client.nats().subscribe(probe_subject.clone()).await?;
    let before = connects(&client);
    // `NATS/1.0\r\n` + `Nats-Msg-Id: fixed-id\r\n` + `\r\n`
    let headers = 10 + "Nats-Msg-Id: fixed-id\r\n".len() + 2;
    for mode in [PublishMode::Pipelined, PublishMode::FastIngest] {
        let publisher = BatchPublisher::new(client.clone(), BatchConfig::default().mode(mode))?;
        let subject = format!("{name}.{mode:?}");
        let fixed = natty_stream::PublishOptions::default().msg_id("fixed-id");
        // Exactly max_payload with the header: it fits.
        publisher
            .send_with(
                &subject,
                vec![1; MAX_PAYLOAD - headers].into(),
                fixed.clone(),
            )
            .await?;
        let refused = [
            ("one byte over with its header", MAX_PAYLOAD - headers + 1),
            (
                "max_payload without room for natty's Nats-Msg-Id",
                MAX_PAYLOAD,
            ),
        ];
        for (what, len) in refused {
            let send = publisher.send_with(&subject, vec![2; len].into(), fixed.clone());
            let result = tokio::time::timeout(Duration::from_secs(3), send)
                .await
                .map_err(|_| anyhow::anyhow!("{mode:?}, {what}: not refused at once"))?;
            let e = result.expect_err(what);
            assert_eq!(e.kind(), ErrorKind::TooLarge, "{mode:?}, {what}: {e}");
            assert!(e.to_string().contains("max_payload"), "{e}");
            // A generated id counts too.
            let e = publisher
                .send(&subject, vec![3; MAX_PAYLOAD].into())
                .await
                .expect_err("a generated Nats-Msg-Id is counted");
            assert_eq!(e.kind(), ErrorKind::TooLarge, "{mode:?}: {e}");
        }
        let report = tokio::time::timeout(Duration::from_secs(30), publisher.close()).await??;
        assert_eq!(
            report.stats.queued, 1,
            "{mode:?}: only the message that fits"
        );
        assert_eq!(report.stats.acked, 1, "{mode:?}: {:?}", report.failed);
        assert!(report.failed.is_empty(), "{mode:?}: {:?}", report.failed);
    }
    assert_eq!(connects(&client), before, "the connection was never lost");
    probe(&client, &mut sub, &probe_subject).await?;
    Ok(())
}
