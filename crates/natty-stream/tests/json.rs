//! Typed payloads (feature `serde`) against a real NATS server: JSON published by both
//! publishers comes back decoded; a malformed payload reaches the handler as a `DecodeError`
//! with its subject and raw bytes, and `.permanent()` dead-letters it.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use natty_core::ConnectOptions;
use natty_stream::{
    BatchConfig, BatchPublisher, CancellationToken, ConsumeOptions, Consumer, ConsumerConfig,
    DecodeError, HandlerError, JSON_CONTENT_TYPE, Message, Publisher, StreamConfig,
    ensure_consumer, ensure_stream,
};
use natty_testkit::{Nats, init_tracing, unique_name, wait_for};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Order {
    id: u64,
    item: String,
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn json_round_trips_through_a_stream_and_a_bad_payload_is_dead_lettered_with_its_bytes()
-> anyhow::Result<()> {
    init_tracing();
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
    ensure_consumer(&client, &ConsumerConfig::new(&stream, "workers")).await?;

    let one = Order {
        id: 1,
        item: "tea".into(),
    };
    let two = Order {
        id: 2,
        item: "milk".into(),
    };
    Publisher::new(client.clone())
        .publish_json(&format!("{stream}.orders"), &one)
        .await?;
    let batch = BatchPublisher::new(client.clone(), BatchConfig::default())?;
    batch.send_json(&format!("{stream}.orders"), &two).await?;
    batch.flush().await?;
    Publisher::new(client.clone())
        .publish(&format!("{stream}.orders"), "{not json".into())
        .await?;

    let decoded = Arc::new(Mutex::new(Vec::<(Order, Option<String>)>::new()));
    let failures = Arc::new(Mutex::new(Vec::<(String, Vec<u8>)>::new()));
    let consumer = Consumer::new(
        client.clone(),
        &stream,
        "workers",
        ConsumeOptions::default().dead_letter(format!("{dlq}.bad")),
    )?;
    let cancel = CancellationToken::new();
    let (d, f, k) = (decoded.clone(), failures.clone(), cancel.clone());
    let task = tokio::spawn(async move {
        consumer
            .consume(k, move |m: Message| {
                let (d, f) = (d.clone(), f.clone());
                async move {
                    let order: Order = m.json().map_err(|e: DecodeError| {
                        f.lock()
                            .unwrap()
                            .push((e.subject.clone(), e.payload.to_vec()));
                        e.permanent()
                    })?;
                    let content_type = m.header("Content-Type").map(str::to_owned);
                    d.lock().unwrap().push((order, content_type));
                    Ok::<_, HandlerError>(())
                }
            })
            .await
    });
    wait_for(
        "two orders and one failure",
        Duration::from_secs(20),
        || async {
            (decoded.lock().unwrap().len() == 2 && failures.lock().unwrap().len() == 1)
                .then_some(())
        },
    )
    .await?;
    cancel.cancel();
    let stats = task.await??;
    let ct = Some(JSON_CONTENT_TYPE.to_owned());
    assert_eq!(*decoded.lock().unwrap(), vec![(one, ct.clone()), (two, ct)]);
    assert_eq!(
        *failures.lock().unwrap(),
        vec![(format!("{stream}.orders"), b"{not json".to_vec())]
    );
    assert_eq!((stats.acked, stats.dead_lettered), (2, 1), "{stats:?}");
    let dead = client
        .jetstream()
        .get_stream(&dlq)
        .await?
        .get_last_raw_message_by_subject(&format!("{dlq}.bad"))
        .await?;
    assert_eq!(dead.payload, "{not json");
    Ok(())
}
