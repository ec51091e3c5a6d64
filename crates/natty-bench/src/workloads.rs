//! The workloads, each written twice: through natty, and by hand on raw async-nats (the way a
//! careful user would, per the issue: 4096 acks in flight, fetch-and-ack, ...).

use std::{
    collections::VecDeque,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use futures::StreamExt;
use jetstream_extra::batch_publish_fast::FastPublishExt;
use natty::{
    BatchConfig, BatchPublisher, CancellationToken, Client, ConsumeOptions, Consumer,
    ConsumerConfig, ElectionConfig, Kv, StreamConfig, stream::PublishMode,
};

/// Messages per second.
pub(crate) type Rate = f64;

/// A new stream `name` on `name.>`: batching as asked, or natty's default (`None`).
pub(crate) async fn fresh_stream(
    client: &Client,
    name: &str,
    batched: Option<bool>,
) -> anyhow::Result<()> {
    natty::stream::delete_stream(client, name).await?;
    let mut config = StreamConfig::new(name, [format!("{name}.>")]);
    if let Some(batched) = batched {
        config = config.allow_batched(batched);
    }
    natty::stream::ensure_stream(client, &config).await?;
    Ok(())
}

/// A per-run id prefix as long as natty's (a NUID, as a careful user would make unique ids
/// with): the server's duplicate tracking and storage cost grow with the id's length.
fn id_prefix(client: &Client) -> String {
    client.nats().new_inbox().replace("_INBOX.", "")
}

fn payload(size: usize) -> Bytes {
    Bytes::from(vec![b'x'; size])
}

pub(crate) async fn publish_raw(
    client: &Client,
    stream: &str,
    n: u64,
    size: usize,
) -> anyhow::Result<Rate> {
    fresh_stream(client, stream, Some(false)).await?;
    let js = jetstream::new(client.nats().clone());
    let subject = format!("{stream}.x");
    let body = payload(size);
    let prefix = id_prefix(client);
    let start = Instant::now();
    let mut inflight = VecDeque::with_capacity(4096);
    for i in 0..n {
        if inflight.len() >= 4096 {
            let ack: jetstream::context::PublishAckFuture =
                inflight.pop_front().expect("non-empty");
            ack.await?;
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{prefix}-{i}").as_str());
        inflight.push_back(
            js.publish_with_headers(subject.clone(), headers, body.clone())
                .await?,
        );
    }
    for ack in inflight {
        ack.await?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

pub(crate) async fn publish_natty(
    client: &Client,
    stream: &str,
    n: u64,
    size: usize,
    mode: PublishMode,
) -> anyhow::Result<Rate> {
    // Auto runs on a stream made with natty's defaults (the default path); the explicit
    // modes on a stream that suits them.
    let batched = match mode {
        PublishMode::FastIngest => Some(true),
        PublishMode::Pipelined => Some(false),
        _ => None,
    };
    fresh_stream(client, stream, batched).await?;
    let publisher = BatchPublisher::new(client.clone(), BatchConfig::default().mode(mode))?;
    let subject = format!("{stream}.x");
    let body = payload(size);
    let start = Instant::now();
    for _ in 0..n {
        publisher.send(&subject, body.clone()).await?;
    }
    let report = publisher.close().await?;
    let elapsed = start.elapsed();
    anyhow::ensure!(
        report.failed.is_empty() && report.stats.acked == n,
        "natty lost messages: {:?}",
        report.stats
    );
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// Raw fast ingest (flow 500, 3 outstanding acks, as natty). With `ids`, each message
/// carries a `Nats-Msg-Id`, as a careful user's must for a re-send after a failed batch to be
/// safe (natty's are always there); without, the protocol's bare speed.
pub(crate) async fn fast_raw(
    client: &Client,
    stream: &str,
    n: u64,
    size: usize,
    ids: bool,
) -> anyhow::Result<Rate> {
    fresh_stream(client, stream, Some(true)).await?;
    let js = jetstream::new(client.nats().clone());
    let subject = async_nats::Subject::from(format!("{stream}.x"));
    let body = payload(size);
    let prefix = id_prefix(client);
    let start = Instant::now();
    let mut batch = js
        .fast_publish()
        .flow(500)
        .max_outstanding_acks(3)
        .build()?;
    for i in 0..n {
        if ids {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("{prefix}-{i}").as_str());
            batch
                .add_message(jetstream::message::OutboundMessage {
                    subject: subject.clone(),
                    payload: body.clone(),
                    headers: Some(headers),
                })
                .await?;
        } else {
            batch.add(subject.clone(), body.clone()).await?;
        }
    }
    let ack = batch.close().await?;
    anyhow::ensure!(
        ack.batch_size == n,
        "raw fast batch stored {} of {n}",
        ack.batch_size
    );
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Fills a stream with `n` messages (pipelined, raw) for the consume runs.
pub(crate) async fn fill(client: &Client, stream: &str, n: u64) -> anyhow::Result<()> {
    publish_raw(client, stream, n, 128).await.map(drop)
}

/// How the raw consumer pulls: both are strong raw forms, the bench reports each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RawPull {
    /// `fetch()` batches of 500, each message acked.
    Fetch,
    /// The `messages()` stream (async-nats' continuous pull), each message acked.
    Messages,
}

pub(crate) async fn consume_raw(
    client: &Client,
    stream: &str,
    durable: &str,
    n: u64,
    pull: RawPull,
) -> anyhow::Result<Rate> {
    let js = jetstream::new(client.nats().clone());
    let s = js.get_stream(stream).await?;
    let _ = s.delete_consumer(durable).await;
    let consumer: jetstream::consumer::Consumer<pull::Config> = s
        .create_consumer(pull::Config {
            durable_name: Some(durable.to_owned()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await?;
    let start = Instant::now();
    let mut got = 0u64;
    if pull == RawPull::Messages {
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(500)
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        while got < n {
            let m = messages
                .next()
                .await
                .ok_or_else(|| anyhow::anyhow!("messages() ended after {got}"))?
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            got += 1;
        }
    }
    while got < n {
        let mut batch = consumer
            .fetch()
            .max_messages(500)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
            m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            got += 1;
        }
    }
    client.nats().flush().await?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

pub(crate) async fn consume_natty(
    client: &Client,
    stream: &str,
    durable: &str,
    n: u64,
) -> anyhow::Result<Rate> {
    natty::stream::delete_consumer(client, stream, durable).await?;
    natty::stream::ensure_consumer(
        client,
        &ConsumerConfig::new(stream, durable).max_ack_pending(10_000),
    )
    .await?;
    let consumer = Consumer::new(
        client.clone(),
        stream,
        durable,
        ConsumeOptions::default().batch(500),
    )?;
    let cancel = CancellationToken::new();
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let task = {
        let (c, k, d) = (consumer.clone(), cancel.clone(), done.clone());
        tokio::spawn(async move {
            c.consume(k.clone(), move |_m| {
                let d = d.clone();
                let k = k.clone();
                async move {
                    if d.fetch_add(1, Ordering::Relaxed) + 1 >= n {
                        k.cancel();
                    }
                    Ok(())
                }
            })
            .await
        })
    };
    let stats = task.await??;
    let elapsed = start.elapsed();
    anyhow::ensure!(stats.acked >= n, "acked {} of {n}", stats.acked);
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// The low-rate latency workload: `bursts` bursts of `per_burst` messages at `rate` msg/s,
/// each followed by an idle gap longer than the consumer's heartbeat and pull expiry, so the
/// consumer is idle between them. Publish-to-handler latency per message, in microseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LowRate {
    pub(crate) rate: f64,
    pub(crate) per_burst: usize,
    pub(crate) bursts: usize,
    pub(crate) heartbeat: Duration,
    pub(crate) gap: Duration,
}

/// Payload: the send time, in nanoseconds since `epoch`.
fn stamp(epoch: Instant) -> Bytes {
    let ns = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
    Bytes::copy_from_slice(&ns.to_be_bytes())
}

fn latency_us(epoch: Instant, payload: &[u8]) -> f64 {
    let sent = payload
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_be_bytes);
    let now = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
    now.saturating_sub(sent) as f64 / 1e3
}

/// Sends the bursts, calling `send` per message at the fixed rate.
async fn paced<F, Fut>(w: LowRate, epoch: Instant, mut send: F) -> anyhow::Result<()>
where
    F: FnMut(Bytes) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let period = Duration::from_secs_f64(1.0 / w.rate);
    for _ in 0..w.bursts {
        tokio::time::sleep(w.gap).await;
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for _ in 0..w.per_burst {
            tick.tick().await;
            send(stamp(epoch)).await?;
        }
    }
    Ok(())
}

/// natty: `BatchPublisher` (Auto, on a default stream) into a `Consumer` with heartbeat `w.heartbeat`.
pub(crate) async fn latency_natty(
    client: &Client,
    stream: &str,
    w: LowRate,
) -> anyhow::Result<Vec<f64>> {
    fresh_stream(client, stream, None).await?;
    natty::stream::ensure_consumer(client, &ConsumerConfig::new(stream, "lat")).await?;
    let consumer = Consumer::new(
        client.clone(),
        stream,
        "lat",
        ConsumeOptions::default()
            .heartbeat(w.heartbeat)
            .expires(w.heartbeat * 3),
    )?;
    let total = w.per_burst * w.bursts;
    let epoch = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let task = {
        let (c, k) = (consumer.clone(), cancel.clone());
        tokio::spawn(async move {
            c.consume(k, move |m| {
                let _ = tx.send(latency_us(epoch, &m.payload));
                async { Ok(()) }
            })
            .await
        })
    };
    let publisher = BatchPublisher::new(client.clone(), BatchConfig::default())?;
    let subject = format!("{stream}.x");
    paced(w, epoch, |body| {
        let (p, s) = (&publisher, &subject);
        async move { Ok(p.send(s, body).await?) }
    })
    .await?;
    let report = publisher.close().await?;
    anyhow::ensure!(report.failed.is_empty(), "natty lost messages");
    let out = collect(&mut rx, total).await;
    cancel.cancel();
    task.await??;
    out
}

/// raw: pipelined publish (ack awaited off the send path) into `messages()` with the same heartbeat.
pub(crate) async fn latency_raw(
    client: &Client,
    stream: &str,
    w: LowRate,
) -> anyhow::Result<Vec<f64>> {
    fresh_stream(client, stream, Some(false)).await?;
    let js = jetstream::new(client.nats().clone());
    let consumer: jetstream::consumer::Consumer<pull::Config> = js
        .get_stream(stream)
        .await?
        .create_consumer(pull::Config {
            durable_name: Some("lat".to_owned()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    let total = w.per_burst * w.bursts;
    let epoch = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut messages = consumer
        .stream()
        .heartbeat(w.heartbeat)
        .expires(w.heartbeat * 3)
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let task = tokio::spawn(async move {
        while let Some(m) = messages.next().await {
            // A missed heartbeat is an error item; the stream goes on.
            let Ok(m) = m else { continue };
            let _ = tx.send(latency_us(epoch, &m.payload));
            let _ = m.ack().await;
        }
    });
    let (acks_tx, mut acks_rx) = tokio::sync::mpsc::unbounded_channel();
    let acker = tokio::spawn(async move {
        while let Some(ack) = acks_rx.recv().await {
            let ack: jetstream::context::PublishAckFuture = ack;
            ack.await?;
        }
        anyhow::Ok(())
    });
    let subject = format!("{stream}.x");
    paced(w, epoch, |body| {
        let (js, s, acks) = (&js, subject.clone(), &acks_tx);
        async move {
            let _ = acks.send(js.publish(s, body).await?);
            Ok(())
        }
    })
    .await?;
    drop(acks_tx);
    acker.await??;
    let out = collect(&mut rx, total).await;
    task.abort();
    out
}

async fn collect(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<f64>,
    total: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(us)) => out.push(us),
            _ => anyhow::bail!("received {} of {total} messages", out.len()),
        }
    }
    Ok(out)
}

/// Latencies of `ops` sequential operations, in microseconds: (put, get, refresh).
pub(crate) type KvLatencies = (Vec<f64>, Vec<f64>, Vec<f64>);

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// An empty raw file bucket `bucket` with `replicas` copies (deleted first if it exists).
async fn fresh_raw_bucket(
    client: &Client,
    bucket: &str,
    replicas: usize,
) -> anyhow::Result<(jetstream::Context, jetstream::kv::Store)> {
    let js = jetstream::new(client.nats().clone());
    let _ = js.delete_key_value(bucket).await;
    let store = js
        .create_key_value(jetstream::kv::Config {
            bucket: bucket.to_owned(),
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await?;
    Ok((js, store))
}

/// Latencies of `ops` sequential raw KV puts, in microseconds, on a fresh file bucket with
/// `replicas` copies (the baseline of the fenced writes).
pub(crate) async fn kv_raw_puts(
    client: &Client,
    bucket: &str,
    ops: usize,
    replicas: usize,
) -> anyhow::Result<Vec<f64>> {
    let (js, store) = fresh_raw_bucket(client, bucket, replicas).await?;
    let mut out = Vec::with_capacity(ops);
    for i in 0..ops {
        let t = Instant::now();
        store.put(format!("k{}", i % 100), "value".into()).await?;
        out.push(us(t.elapsed()));
    }
    js.delete_key_value(bucket).await?;
    Ok(out)
}

pub(crate) async fn kv_raw(
    client: &Client,
    bucket: &str,
    ops: usize,
) -> anyhow::Result<KvLatencies> {
    let (_, store) = fresh_raw_bucket(client, bucket, 1).await?;
    let (mut put, mut get, mut refresh) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..ops {
        let key = format!("k{}", i % 100);
        let t = Instant::now();
        store.put(&key, "value".into()).await?;
        put.push(us(t.elapsed()));
        let t = Instant::now();
        let entry = store
            .entry(&key)
            .await?
            .ok_or_else(|| anyhow::anyhow!("missing"))?;
        get.push(us(t.elapsed()));
        // A raw revision-checked refresh: read, then update on that revision.
        let t = Instant::now();
        let e = store
            .entry(&key)
            .await?
            .ok_or_else(|| anyhow::anyhow!("missing"))?;
        store.update(&key, e.value, e.revision).await?;
        refresh.push(us(t.elapsed()));
        let _ = entry;
    }
    Ok((put, get, refresh))
}

pub(crate) async fn kv_natty(
    client: &Client,
    bucket: &str,
    ops: usize,
) -> anyhow::Result<KvLatencies> {
    let kv = Kv::new(client.clone());
    kv.delete_bucket(bucket).await?;
    kv.create_bucket(natty::BucketConfig::new(bucket)).await?;
    let (mut put, mut get, mut refresh) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..ops {
        let key = format!("k{}", i % 100);
        let t = Instant::now();
        kv.put(bucket, &key, "value".into()).await?;
        put.push(us(t.elapsed()));
        let t = Instant::now();
        kv.get(bucket, &key)
            .await?
            .ok_or_else(|| anyhow::anyhow!("missing"))?;
        get.push(us(t.elapsed()));
        let t = Instant::now();
        kv.refresh(bucket, &key).await?;
        refresh.push(us(t.elapsed()));
    }
    Ok((put, get, refresh))
}

/// Latencies of `ops` sequential fenced writes (`Leadership::put`) by the leader of a fresh
/// election, in microseconds.
pub(crate) async fn fenced_natty(
    url: &str,
    ops: usize,
    replicas: usize,
) -> anyhow::Result<Vec<f64>> {
    let client = natty::ConnectOptions::new([url]).connect().await?;
    let bucket = format!("bench_fenced_{}", std::process::id());
    let election = natty::Election::new(
        Kv::new(client),
        ElectionConfig::new(&bucket, "leader", "bench")
            .ttl(Duration::from_secs(3))
            .replicas(replicas),
    )?;
    let cancel = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    let (e, c) = (election.clone(), cancel.clone());
    let task = tokio::spawn(async move {
        e.run(c, move |lead: natty::Leadership| {
            let tx = tx.lock().ok().and_then(|mut t| t.take());
            async move {
                let lost = lead.lost.clone();
                if let Some(tx) = tx {
                    let _ = tx.send(lead);
                }
                lost.cancelled().await;
            }
        })
        .await
    });
    // (The candidate that creates the bucket waits a TTL before its first contest.)
    let lead = tokio::time::timeout(Duration::from_secs(30), rx).await??;
    let mut out = Vec::with_capacity(ops);
    for i in 0..ops {
        let key = format!("k{}", i % 100);
        let t = Instant::now();
        lead.put(key, "value").await?;
        out.push(us(t.elapsed()));
    }
    cancel.cancel();
    task.await??;
    Kv::new(natty::ConnectOptions::new([url]).connect().await?)
        .delete_bucket(&bucket)
        .await?;
    Ok(out)
}

/// Latencies of `ops` raw atomic batches (jetstream-extra, no natty) of a fenced write's shape —
/// one write, then a commit conditioned on its subject's last sequence — on a file-backed
/// stream like an election bucket, in microseconds: the server's own cost of a fenced write.
pub(crate) async fn atomic_raw(client: &Client, ops: usize) -> anyhow::Result<Vec<f64>> {
    use jetstream_extra::batch_publish::BatchPublishExt;
    let js = jetstream::new(client.nats().clone());
    let name = format!("BENCH_ATOMIC_{}", std::process::id());
    let _ = js.delete_stream(&name).await;
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("{name}.>")],
        storage: stream::StorageType::File,
        max_messages_per_subject: 1,
        allow_atomic_publish: true,
        allow_message_ttl: true,
        ..Default::default()
    })
    .await?;
    let mut last = 0;
    let mut out = Vec::with_capacity(ops);
    for i in 0..ops {
        let t = Instant::now();
        let mut batch = js
            .batch_publish()
            .ack_first(false)
            .timeout(Duration::from_secs(5))
            .build();
        batch
            .add(format!("{name}.data.k{}", i % 100), "value".into())
            .await?;
        let lease = jetstream::message::PublishMessage::build()
            .payload("lease".into())
            .expected_last_subject_sequence(last)
            .ttl(Duration::from_secs(10))
            .outbound_message(format!("{name}.lease"));
        last = batch.commit_message(lease).await?.sequence;
        out.push(us(t.elapsed()));
    }
    js.delete_stream(&name).await?;
    Ok(out)
}

/// Time from the leader's shutdown (resign) or crash (its driver gone, no resign) to the new
/// leader's first work, in milliseconds, over `trials` trials with two candidates.
pub(crate) async fn failover(
    url: &str,
    trials: usize,
    ttl: Duration,
    crash: bool,
) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::new();
    let bucket = format!("bench_el_{}", std::process::id());
    for trial in 0..trials {
        let key = format!("{}{trial}", if crash { "crash" } else { "resign" });
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
        let mut runs = Vec::new();
        for node in ["a", "b"] {
            let client = natty::ConnectOptions::new([url]).connect().await?;
            let election = natty::Election::new(
                Kv::new(client),
                ElectionConfig::new(&bucket, &key, node).ttl(ttl),
            )?;
            let cancel = CancellationToken::new();
            let tx = tx.clone();
            let (e, c) = (election.clone(), cancel.clone());
            let task = tokio::spawn(async move {
                e.run(c, move |lead| {
                    let tx = tx.clone();
                    let node = node.to_owned();
                    async move {
                        let _ = tx.send((node, Instant::now()));
                        lead.lost.cancelled().await;
                    }
                })
                .await
            });
            runs.push((node, cancel, task));
        }
        let (leader, _) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("no leader"))?;
        let idx = runs
            .iter()
            .position(|(n, ..)| *n == leader)
            .expect("a candidate");
        let (_, cancel, task) = runs.remove(idx);
        let at = Instant::now();
        if crash {
            task.abort(); // no resign: the lease must expire
        } else {
            cancel.cancel();
        }
        let (_, elected) = tokio::time::timeout(ttl * 3, rx.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("no new leader"))?;
        out.push((elected - at).as_secs_f64() * 1e3);
        let _ = task.await;
        for (_, cancel, task) in runs {
            cancel.cancel();
            let _ = task.await;
        }
    }
    Ok(out)
}
