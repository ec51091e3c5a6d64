//! A consumer group of three members in one process (in production: one per process, each
//! with its own member name). Orders for 50 customers are published to
//! `orders.<partition>.<customer>`; each customer's orders are handled one at a time and in
//! order, customers in parallel, the 12 partitions spread 4/4/4. Then one member leaves and
//! the other two take its partitions over.
//!
//! `NATS_URL=nats://127.0.0.1:4222 cargo run -p natty --features group --example consumer_group`
#![allow(clippy::print_stdout, reason = "an example prints what it does")]

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use natty::{
    BatchConfig, BatchPublisher, CancellationToken, ConnectOptions, ConsumeOptions, ConsumerGroup,
    GroupConfig, StreamConfig,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let id = std::process::id();
    let stream = format!("ORDERS_{id}");
    let prefix = format!("orders_{id}");
    let client = ConnectOptions::new([url.clone()]).connect().await?;
    natty::stream::ensure_stream(
        &client,
        &StreamConfig::new(&stream, [format!("{prefix}.>")]),
    )
    .await?;
    let config = GroupConfig::new(format!("billing_{id}"), &stream, &prefix, 12, "unset")
        .ttl(Duration::from_secs(3))
        .consume(ConsumeOptions::default().concurrency(8));

    let handled = Arc::new(AtomicU64::new(0));
    let mut members = Vec::new();
    for name in ["alpha", "beta", "gamma"] {
        let mut cfg = config.clone();
        cfg.member = name.to_owned();
        let group = ConsumerGroup::new(ConnectOptions::new([url.clone()]).connect().await?, cfg)?;
        let cancel = CancellationToken::new();
        let (g, c, n) = (group.clone(), cancel.clone(), handled.clone());
        let task = tokio::spawn(async move {
            g.join(c, move |partition, message| {
                let n = n.clone();
                async move {
                    // `partition.term` is a fencing token for writes elsewhere.
                    let _ = (partition.term, message.payload);
                    n.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            })
            .await
        });
        members.push((name, group, cancel, task));
    }

    let publisher = BatchPublisher::new(client.clone(), BatchConfig::default())?;
    for order in 0..100 {
        for customer in 0..50 {
            let subject = config.subject_for(&format!("customer-{customer}"))?;
            publisher
                .send(&subject, format!("order {order}").into())
                .await?;
        }
    }
    publisher.close().await?;
    while handled.load(Ordering::Relaxed) < 5_000 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (name, group, ..) in &members {
        println!("{name} owns {:?}", group.owned().keys().collect::<Vec<_>>());
    }

    let (name, _, cancel, task) = members.remove(0);
    cancel.cancel();
    task.await??;
    println!("{name} left");
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (name, group, ..) in &members {
        println!("{name} owns {:?}", group.owned().keys().collect::<Vec<_>>());
    }
    for (_, _, cancel, task) in members {
        cancel.cancel();
        task.await??;
    }
    natty::stream::delete_stream(&client, &stream).await?;
    Ok(())
}
