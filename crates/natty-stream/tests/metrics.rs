//! Metrics (feature `metrics`) against a real NATS server, read back through natty-testkit's
//! recorder: every publish and consume counter moves as the operations run,
//! dead-letter and consumer lag included. The stream is fast-ingest capable (natty's default on
//! a 2.14+ server), so the batch publisher's acks come from fast-ingest flow acks and commits.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use std::{sync::Arc, time::Duration};

use natty_core::ConnectOptions;
use natty_stream::{
    BatchConfig, BatchPublisher, CancellationToken, ConsumeOptions, Consumer, ConsumerConfig,
    HandlerError, Message, Publisher, StreamConfig, ensure_consumer, ensure_stream,
};
use natty_testkit::{Nats, Recorded, init_tracing, unique_name, wait_for};
use tokio::sync::Notify;

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn every_stream_metric_moves_including_dead_letter_and_lag() -> anyhow::Result<()> {
    init_tracing();
    let recorded = Recorded::install();

    let nats = Nats::start().await?;
    let client = ConnectOptions::new([nats.url()]).connect().await?;
    let stream = unique_name("S").replace('-', "_");
    let dlq = format!("{stream}_DLQ");
    ensure_stream(
        &client,
        &StreamConfig::new(&stream, [format!("{stream}.>")]),
    )
    .await?;
    ensure_stream(&client, &StreamConfig::new(&dlq, [format!("{dlq}.>")])).await?;
    ensure_consumer(
        &client,
        &ConsumerConfig::new(&stream, "workers").ack_wait(Duration::from_secs(2)),
    )
    .await?;

    // Five messages: one single publish, four batched; one subject no stream captures.
    let publisher = Publisher::new(client.clone());
    publisher
        .publish(&format!("{stream}.m"), "hold".into())
        .await?;
    assert!(
        publisher
            .publish("nowhere.at.all", "x".into())
            .await
            .is_err()
    );
    let batch = BatchPublisher::new(client.clone(), BatchConfig::default())?;
    for p in ["retry", "bad", "ok", "ok"] {
        batch.send(&format!("{stream}.m"), p.into()).await?;
    }
    batch.flush().await?;

    let release = Arc::new(Notify::new());
    let consumer = Consumer::new(
        client.clone(),
        &stream,
        "workers",
        ConsumeOptions::default()
            .dead_letter(format!("{dlq}.bad"))
            .concurrency(1)
            .batch(1),
    )?;
    let cancel = CancellationToken::new();
    let (r, k) = (release.clone(), cancel.clone());
    let task = tokio::spawn(async move {
        consumer
            .consume(k, move |m: Message| {
                let r = r.clone();
                async move {
                    match (&m.payload[..], m.delivered) {
                        (b"hold", _) => r.notified().await,
                        (b"retry", 1) => {
                            return Err(HandlerError::retry_after(
                                "once",
                                Duration::from_millis(100),
                            ));
                        }
                        (b"bad", _) => return Err(HandlerError::permanent("malformed")),
                        _ => {}
                    }
                    Ok(())
                }
            })
            .await
    });

    // The first message comes with four more pending, the prefetched second with three: the
    // lag gauge (the last pending count seen) shows them.
    let lag = format!("natty_stream_consumer_lag,stream={stream},consumer=workers");
    wait_for(
        "lag (3 or 4: the next message may be prefetched) while the first is held",
        Duration::from_secs(20),
        || {
            std::future::ready({
                let s = recorded.snapshot();
                (s.max_gauge.get(&lag).copied().unwrap_or(0.0) >= 3.0).then_some(())
            })
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}: gauges {:?}", recorded.snapshot().max_gauge))?;
    release.notify_one();
    let labels = format!("stream={stream},consumer=workers");
    wait_for("every message settled", Duration::from_secs(20), || {
        std::future::ready({
            let s = recorded.snapshot();
            (s.counter(&format!("natty_stream_consumer_acked_total,{labels}")) == 3
                && s.counter(&format!(
                    "natty_stream_consumer_dead_lettered_total,{labels}"
                )) == 1)
                .then_some(())
        })
    })
    .await?;

    // A paused server: the batch publisher's attempt times out and is retried.
    let slow = BatchPublisher::new(
        client.clone(),
        BatchConfig::default()
            .ack_timeout(Duration::from_millis(500))
            .backoff(Duration::from_millis(50), Duration::from_millis(200)),
    )?;
    // One message first, so its routing table is listed before the pause.
    slow.send(&format!("{stream}.late"), "early".into()).await?;
    slow.flush().await?;
    nats.pause().await?;
    slow.send(&format!("{stream}.late"), "late".into()).await?;
    wait_for("a retry", Duration::from_secs(20), || {
        std::future::ready({
            let s = recorded.snapshot();
            (s.counter(&format!(
                "natty_stream_publish_retried_total,stream={stream},publisher=batch"
            )) > 0)
                .then_some(())
        })
    })
    .await?;
    nats.unpause().await?;
    slow.flush().await?;
    // A subject no stream captures: handed back as failed.
    batch.send("nowhere.at.all", "x".into()).await?;
    let _ = batch.flush().await; // its failure is handed back on the error channel
    wait_for("a failed batch publish", Duration::from_secs(20), || {
        let s = recorded.snapshot();
        std::future::ready(
            (s.counter("natty_stream_publish_failed_total,stream=,publisher=batch") > 0)
                .then_some(()),
        )
    })
    .await?;
    cancel.cancel();
    task.await??;

    let s = recorded.snapshot();
    let c = |n: &str| s.counter(n);
    // Per stream: "" is a subject no known stream captures.
    let p = |what: &str, stream: &str, via: &str| {
        c(&format!(
            "natty_stream_{what},stream={stream},publisher={via}"
        ))
    };
    assert_eq!(p("published_total", &stream, "single"), 1);
    assert_eq!(p("acked_total", &stream, "single"), 1);
    assert_eq!(p("published_total", "", "single"), 1);
    assert_eq!(p("publish_failed_total", "", "single"), 1);
    // Four batched, then "early" and "late" (retried through the pause): each published and
    // acked once, the fast-ingest acks included.
    assert_eq!(p("published_total", &stream, "batch"), 6);
    assert_eq!(p("acked_total", &stream, "batch"), 6);
    assert_eq!(p("publish_failed_total", &stream, "batch"), 0);
    assert!(p("publish_retried_total", &stream, "batch") >= 1);
    assert_eq!(p("published_total", "", "batch"), 1);
    assert_eq!(p("publish_failed_total", "", "batch"), 1);
    assert!(
        !s.counters
            .keys()
            .any(|k| k.starts_with("natty_stream_acked_total") && k.contains(&dlq)),
        "dead letters are not counted as publishes: {:?}",
        s.counters
    );
    let samples = |via: &str| {
        s.samples
            .get(&format!(
                "natty_stream_publish_ack_seconds,stream={stream},publisher={via}"
            ))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(samples("single"), 1);
    assert_eq!(samples("batch"), 6, "every fast-ingest ack is timed");
    // 6 deliveries (5 + the retry; the late message is consumed or not by cancel time).
    assert!(c(&format!("natty_stream_consumed_total,{labels}")) >= 6);
    // 3 of the first five, then the early/late messages published later.
    assert!(c(&format!("natty_stream_consumer_acked_total,{labels}")) >= 3);
    assert_eq!(
        c(&format!("natty_stream_consumer_nacked_total,{labels}")),
        1
    );
    assert_eq!(
        c(&format!("natty_stream_consumer_termed_total,{labels}")),
        1
    );
    assert_eq!(
        c(&format!(
            "natty_stream_consumer_dead_lettered_total,{labels}"
        )),
        1
    );
    assert!(s.samples[&format!("natty_stream_handler_seconds,{labels}")] >= 6);
    assert!(s.max_gauge[&lag] >= 3.0);
    assert_eq!(
        s.last_gauge.get(&lag).copied().unwrap_or(0.0),
        0.0,
        "caught up: no lag"
    );
    // The batch publisher's queue: messages waited in it, and none wait once flushed.
    assert!(s.max_gauge["natty_stream_publish_queue_depth"] >= 1.0);
    assert_eq!(s.gauge("natty_stream_publish_queue_depth"), Some(0.0));
    // A dashboard's HELP text and unit: every metric recorded was described (`describe_*`).
    assert_eq!(
        s.undescribed(),
        Vec::<String>::new(),
        "metrics without a description"
    );
    Ok(())
}
