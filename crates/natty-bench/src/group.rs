//! Consumer-group throughput: a group of 1, 2 or 4 members against one consumer ordered by key
//! (the way to keep per-key order without a group), on the same messages.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use natty::{
    CancellationToken, Client, ConnectOptions, ConsumeOptions, Consumer, ConsumerConfig,
    ConsumerGroup, GroupConfig, Kv, StreamConfig,
};

use crate::workloads::Rate;

/// Partitions of the benchmark group.
pub(crate) const PARTITIONS: u32 = 12;
/// Keys the messages are spread over.
const KEYS: u64 = 500;
/// Handlers at once per consumer: each partition's, and the single consumer's.
const CONCURRENCY: usize = 8;

/// A stream `name` holding `n` messages over [`KEYS`] keys, published to the partition
/// subjects the group reads (`<prefix>.<partition>.<key>`), so both sides read the same.
pub(crate) async fn fill(client: &Client, name: &str, n: u64) -> anyhow::Result<()> {
    natty::stream::delete_stream(client, name).await?;
    let prefix = name.to_lowercase();
    natty::stream::ensure_stream(client, &StreamConfig::new(name, [format!("{prefix}.>")])).await?;
    let config = GroupConfig::new("sizing", name, &prefix, PARTITIONS, "filler");
    let subjects: Vec<String> = (0..KEYS)
        .map(|k| config.subject_for(&format!("key-{k}")))
        .collect::<Result<_, _>>()?;
    let js = client.jetstream();
    let mut acks = std::collections::VecDeque::new();
    for i in 0..n {
        let subject = subjects[usize::try_from(i % KEYS)?].clone();
        acks.push_back(js.publish(subject, i.to_be_bytes().to_vec().into()).await?);
        if acks.len() >= 4096
            && let Some(ack) = acks.pop_front()
        {
            ack.await?;
        }
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}

/// `members` members of a fresh group (tasks with a connection each, TTL 2 s) consume the
/// stream; messages per second from their start until every one was handled (joining and
/// balancing included: a fixed cost of a few hundred milliseconds).
pub(crate) async fn members(
    url: &str,
    stream: &str,
    n: u64,
    members: usize,
) -> anyhow::Result<Rate> {
    let name = format!("{stream}_g{members}_{}", std::process::id());
    let base = GroupConfig::new(&name, stream, stream.to_lowercase(), PARTITIONS, "unset")
        .ttl(Duration::from_secs(2))
        .consume(
            ConsumeOptions::default()
                .concurrency(CONCURRENCY)
                .batch(500),
        );
    let handled = Arc::new(AtomicU64::new(0));
    let cancel = CancellationToken::new();
    let start = Instant::now();
    let mut tasks = Vec::new();
    let mut admin = None;
    for i in 0..members {
        let client = ConnectOptions::new([url]).connect().await?;
        admin.get_or_insert_with(|| client.clone());
        let mut config = base.clone();
        config.member = format!("m{i}");
        let group = ConsumerGroup::new(client, config)?;
        let (k, h) = (cancel.clone(), handled.clone());
        tasks.push(tokio::spawn(async move {
            group
                .join(k.clone(), move |_, _| {
                    let (k, h) = (k.clone(), h.clone());
                    async move {
                        if h.fetch_add(1, Ordering::Relaxed) + 1 >= n {
                            k.cancel();
                        }
                        Ok(())
                    }
                })
                .await
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed();
    let got = handled.load(Ordering::Relaxed);
    anyhow::ensure!(got >= n, "the group handled {got} of {n}");
    if let Some(client) = admin {
        cleanup(&client, &base).await?;
    }
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// One consumer, ordered by the key token, with the same concurrency as each partition's.
pub(crate) async fn single(client: &Client, stream: &str, n: u64) -> anyhow::Result<Rate> {
    let durable = "single";
    natty::stream::delete_consumer(client, stream, durable).await?;
    natty::stream::ensure_consumer(client, &ConsumerConfig::new(stream, durable)).await?;
    let consumer = Consumer::new(
        client.clone(),
        stream,
        durable,
        ConsumeOptions::default()
            .concurrency(CONCURRENCY)
            .batch(500)
            .ordered_by_subject_token(2),
    )?;
    let cancel = CancellationToken::new();
    let handled = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let (k, h) = (cancel.clone(), handled.clone());
    let stats = consumer
        .consume(cancel, move |_| {
            let (k, h) = (k.clone(), h.clone());
            async move {
                if h.fetch_add(1, Ordering::Relaxed) + 1 >= n {
                    k.cancel();
                }
                Ok(())
            }
        })
        .await?;
    let elapsed = start.elapsed();
    anyhow::ensure!(stats.acked >= n, "acked {} of {n}", stats.acked);
    natty::stream::delete_consumer(client, stream, durable).await?;
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// Deletes a run's durables and buckets (`<name>_leases`, `<name>_members`), so runs do not
/// add up on the server.
async fn cleanup(client: &Client, config: &GroupConfig) -> anyhow::Result<()> {
    ConsumerGroup::new(client.clone(), config.clone())?
        .delete_durables()
        .await?;
    let kv = Kv::new(client.clone());
    let name = &config.name;
    for bucket in [format!("{name}_leases"), format!("{name}_members")] {
        kv.delete_bucket(&bucket).await?;
    }
    Ok(())
}
