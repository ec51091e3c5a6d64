//! An idle BatchPublisher and an idle Consumer burn no CPU (the Go library's idle publisher
//! burned most of a core), nor does a consumer whose durable was deleted. Its own test binary,
//! and its tests take turns (`ONE_AT_A_TIME`), so no other test shares the process's CPU time.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use std::time::Duration;

use natty_core::ConnectOptions;
use natty_stream::{
    BatchConfig, BatchPublisher, CancellationToken, ConsumeOptions, Consumer, ConsumerConfig,
    ErrorKind, StreamConfig, delete_consumer, ensure_consumer, ensure_stream,
};
use natty_testkit::{Nats, init_tracing, unique_name};

/// CPU is measured per process: the tests of this binary run one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// User + system CPU time of this process, from /proc/self/stat (clock ticks of 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn idle_publisher_and_consumer_use_no_cpu() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    init_tracing();
    let nats = Nats::start().await?;
    let client = ConnectOptions::new([nats.url()]).connect().await?;
    let stream = unique_name("IDLE").replace('-', "_");
    ensure_stream(
        &client,
        &StreamConfig::new(&stream, [format!("{stream}.>")]),
    )
    .await?;
    ensure_consumer(&client, &ConsumerConfig::new(&stream, "idle")).await?;
    let publisher = BatchPublisher::new(client.clone(), BatchConfig::default())?;
    publisher
        .send(&format!("{stream}.x"), "warm-up".into())
        .await?;
    publisher.flush().await?;
    let consumer = Consumer::new(client.clone(), &stream, "idle", ConsumeOptions::default())?;
    let cancel = CancellationToken::new();
    let (c, k) = (consumer.clone(), cancel.clone());
    let task = tokio::spawn(async move { c.consume(k, |_| async { Ok(()) }).await });
    while consumer.stats().acked < 1 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let before = cpu_time();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = cpu_time() - before;
    eprintln!("CPU used while idle for 3 s: {used:?}");
    assert!(
        used <= Duration::from_millis(60),
        "idle publisher + consumer used {used:?} of CPU in 3 s"
    );

    cancel.cancel();
    task.await??;
    publisher.close().await?;
    Ok(())
}

/// A deleted durable used to make `consume` re-pull once per round trip, warning each time,
/// forever. Now: quiet back-off, then `ConsumerNotFound` once the grace period is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_deleted_consumer_ends_consume_with_consumer_not_found_without_spinning()
-> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    init_tracing();
    let nats = Nats::start().await?;
    let client = ConnectOptions::new([nats.url()]).connect().await?;
    let stream = unique_name("GONE").replace('-', "_");
    ensure_stream(
        &client,
        &StreamConfig::new(&stream, [format!("{stream}.>")]),
    )
    .await?;
    ensure_consumer(&client, &ConsumerConfig::new(&stream, "gone")).await?;
    let grace = Duration::from_secs(4);
    let options = ConsumeOptions::default()
        .heartbeat(Duration::from_secs(1))
        .consumer_gone_grace(grace);
    let consumer = Consumer::new(client.clone(), &stream, "gone", options)?;
    let task = tokio::spawn(async move {
        consumer
            .consume(CancellationToken::new(), |_| async { Ok(()) })
            .await
    });
    tokio::time::sleep(Duration::from_secs(2)).await;

    let before = cpu_time();
    let deleted = std::time::Instant::now();
    delete_consumer(&client, &stream, "gone").await?;
    let ended = tokio::time::timeout(grace + Duration::from_secs(10), task).await;
    let waited = deleted.elapsed();
    let used = cpu_time() - before;
    eprintln!("consume ended {waited:?} after the delete, using {used:?} of CPU: {ended:?}");
    let err = match ended {
        Ok(joined) => joined?.expect_err("consume must fail when its consumer is gone"),
        Err(_) => panic!("consume still running {waited:?} after its consumer was deleted"),
    };
    assert_eq!(err.kind(), ErrorKind::ConsumerNotFound, "{err}");
    assert!(
        waited >= grace,
        "gave up after {waited:?}, before the grace period"
    );
    assert!(
        used <= Duration::from_millis(150),
        "used {used:?} of CPU in {waited:?} while the consumer was gone"
    );
    Ok(())
}
