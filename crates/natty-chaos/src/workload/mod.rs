//! What the children work on: numbered messages on `CHAOS` (consumed by the `chaos-consumer`s,
//! every [`DEAD_LETTER_EVERY`]th refused for good), the consumer group's keyed messages
//! ([`group`]) and the rolling deploys' backlog ([`rolling`]); publishing them during the run,
//! waiting for them to be handled after it, and reading back what the streams hold.

use std::{collections::HashSet, sync::Arc, time::Duration};

use futures::StreamExt;
use natty::{BatchConfig, BatchPublisher};
use natty_chaos::{DEAD_LETTER_EVERY, Event, Lines, mono_ns};
use tokio::task::JoinHandle;

use crate::world::{DEAD_LETTER_STREAM, STREAM};

pub(crate) mod group;
pub(crate) mod rolling;

/// A line of a consumer of the numbered messages (`k<i>#<n>`).
pub(crate) fn is_numbered(l: &natty_chaos::Line) -> bool {
    l.proc.starts_with('k')
}

/// The publishers, running.
pub(crate) struct Publishing {
    /// Numbered messages to publish.
    pub(crate) total: u64,
    publisher: Arc<BatchPublisher>,
    failures: tokio::sync::mpsc::UnboundedReceiver<natty::stream::FailedMessage>,
    numbered: JoinHandle<anyhow::Result<()>>,
    group: JoinHandle<anyhow::Result<GroupPublished>>,
    rolling: JoinHandle<anyhow::Result<rolling::Outcome>>,
}

/// What the group's publisher published: how many, and the (key, number) handed back.
type GroupPublished = (u64, HashSet<(String, u64)>);

/// What was published, stored and handled, once every publisher finished and the children
/// drained.
pub(crate) struct Outcome {
    pub(crate) total: u64,
    /// Numbers handed back on the error channel (or in the close report).
    pub(crate) failed: HashSet<u64>,
    pub(crate) stored: Vec<u64>,
    /// Every `processed` number, in line order (a number twice: processed twice).
    pub(crate) processed: Vec<u64>,
    pub(crate) group: group::Outcome,
    pub(crate) rolling: rolling::Outcome,
}

impl Publishing {
    /// Starts both publishers, paced over the first 70% of a run of `duration`.
    pub(crate) fn start(
        client: &natty::Client,
        duration: Duration,
        minutes: f64,
    ) -> anyhow::Result<Self> {
        let total: u64 = ((20_000.0 * minutes) as u64).clamp(5_000, 200_000);
        let publisher = Arc::new(BatchPublisher::new(
            client.clone(),
            BatchConfig::default().max_attempts(30),
        )?);
        let failures = publisher
            .take_errors()
            .ok_or_else(|| anyhow::anyhow!("error channel"))?;
        let span = duration.mul_f64(0.7);
        let numbered = tokio::spawn(publish_numbered(publisher.clone(), total, span));
        let group = tokio::spawn(group::publish(client.clone(), span));
        let rolling = tokio::spawn(rolling::publish(client.clone(), span));
        Ok(Self {
            total,
            publisher,
            failures,
            numbered,
            group,
            rolling,
        })
    }

    /// Waits for the publishers, then (120 s at most) for the children to process every
    /// stored number, dead-letter every refused one and handle every group message, and for
    /// the rolling deploys' processes to handle every message of theirs.
    pub(crate) async fn finish(
        mut self,
        client: &natty::Client,
        lines: &Lines,
    ) -> anyhow::Result<Outcome> {
        self.numbered.await??;
        let report = self.publisher.close().await?;
        let mut failed: HashSet<u64> = report.failed.iter().map(|f| number(&f.payload)).collect();
        while let Ok(f) = self.failures.try_recv() {
            failed.insert(number(&f.payload));
        }
        let stored = stored_numbers(client, STREAM).await?;
        let (group_published, group_failed) = self.group.await??;
        let group_stored = group::stored(client).await?;
        let mut rolling = self.rolling.await??;
        rolling::stored(client, &mut rolling).await?;
        let stored_set: HashSet<u64> = stored.iter().copied().collect();
        let refused = stored_set
            .iter()
            .filter(|n| *n % DEAD_LETTER_EVERY == 0)
            .count();
        let drain_deadline = mono_ns() + 120_000_000_000;
        let processed = loop {
            let dead = client
                .jetstream()
                .get_stream(DEAD_LETTER_STREAM)
                .await
                .map(|s| s.cached_info().state.messages)
                .unwrap_or(0);
            let processed: Vec<u64> = lines.with(|all| {
                all.iter()
                    .filter(|l| is_numbered(l))
                    .filter_map(|l| match l.event {
                        Event::Processed { n, .. } => Some(n),
                        _ => None,
                    })
                    .collect()
            });
            let set: HashSet<u64> = processed.iter().copied().collect();
            let all_dead = usize::try_from(dead).unwrap_or(0) >= refused;
            let group_done = lines.with(|all| group::all_handled(all, &group_stored));
            let rolling_done = lines.with(|all| rolling.all_handled(all));
            if (stored_set.is_subset(&set) && all_dead && group_done && rolling_done)
                || mono_ns() > drain_deadline
            {
                break processed;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        Ok(Outcome {
            total: self.total,
            failed,
            stored,
            processed,
            group: group::Outcome {
                published: group_published,
                failed: group_failed,
                stored: group_stored,
            },
            rolling,
        })
    }
}

/// Publishes `total` numbered messages paced over `span`, with now and then a quiet spell
/// longer than the consumers' heartbeat (1 s) and pull expiry (5 s): an idle consumer must
/// not go deaf.
async fn publish_numbered(
    publisher: Arc<BatchPublisher>,
    total: u64,
    span: Duration,
) -> anyhow::Result<()> {
    let pace = Duration::from_nanos((span.as_nanos() / u128::from(total)) as u64);
    let start = tokio::time::Instant::now();
    for i in 0..total {
        publisher
            .send("chaos.n", i.to_be_bytes().to_vec().into())
            .await?;
        if i % 3000 == 2999 {
            tokio::time::sleep(Duration::from_secs(2 + (i / 3000) % 6)).await;
        }
        if i % 100 == 0 {
            tokio::time::sleep_until(start + pace * u32::try_from(i).unwrap_or(u32::MAX)).await;
        }
    }
    Ok(())
}

/// What the streams say once every process stopped.
pub(crate) struct AfterRun {
    /// The numbered messages' dead letters.
    pub(crate) dead_records: Vec<Record>,
    /// The rolling deploys' give-ups (advisories and dead letters).
    pub(crate) given_up: Vec<rolling::GiveUp>,
    /// The rolling group's durables left on its stream, and the other consumers there.
    pub(crate) durables_left: Vec<String>,
    pub(crate) others_left: usize,
}

/// Reads what [`AfterRun`] holds.
pub(crate) async fn read_back(client: &natty::Client) -> anyhow::Result<AfterRun> {
    let (durables_left, others_left) = rolling::consumers(client).await?;
    Ok(AfterRun {
        dead_records: stored_records(client, DEAD_LETTER_STREAM).await?,
        given_up: rolling::given_up(client).await?,
        durables_left,
        others_left,
    })
}

/// A stored message: its number, when it was stored (unix ns) and its `Natty-Deliveries`.
pub(crate) struct Record {
    pub(crate) n: u64,
    pub(crate) stored_unix_ns: i128,
    pub(crate) deliveries: String,
}

/// Every message of `stream`, in stream order.
async fn stored_records(client: &natty::Client, stream: &str) -> anyhow::Result<Vec<Record>> {
    let stream = client.jetstream().get_stream(stream).await?;
    let total = stream.cached_info().state.messages;
    let consumer = stream
        .create_consumer(natty::async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await?;
    let mut messages = consumer.messages().await?.take(usize::try_from(total)?);
    let mut out = Vec::new();
    while let Some(m) = messages.next().await {
        let m = m?;
        out.push(Record {
            n: number(&m.payload),
            stored_unix_ns: m
                .info()
                .map(|i| i.published.unix_timestamp_nanos())
                .unwrap_or(0),
            deliveries: m
                .headers
                .as_ref()
                .and_then(|h| h.get("Natty-Deliveries"))
                .map(|v| v.to_string())
                .unwrap_or_default(),
        });
    }
    Ok(out)
}

/// The number a numbered message carries (`u64::MAX` if it is not one).
pub(crate) fn number(payload: &[u8]) -> u64 {
    payload
        .try_into()
        .map(u64::from_be_bytes)
        .unwrap_or(u64::MAX)
}

async fn stored_numbers(client: &natty::Client, stream: &str) -> anyhow::Result<Vec<u64>> {
    Ok(stored_records(client, stream)
        .await?
        .into_iter()
        .map(|r| r.n)
        .collect())
}
