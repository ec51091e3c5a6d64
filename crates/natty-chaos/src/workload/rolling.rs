//! The rolling-deploys workload: bursts of backlog on two streams, read by processes that a
//! deploy restarts one after the other (`faults/deploys.rs`), some of whose handler runs fail
//! once, transiently:
//! - `ROLL`: numbered messages (8 bytes, big-endian) on `roll.<n % 16>`, read through two
//!   durables with `max_deliver` 2: [`DURABLE`] (every key) by [`CONSUMERS`] plain consumers
//!   (a queue), and [`ORDERED_DURABLE`] (a quarter of the keys) by one consumer ordered by key
//!   (the last subject token) with slower handlers;
//! - `ROLL_GROUP`: keyed messages (the number within the key, as text) read by a consumer
//!   group of [`MEMBERS`] over [`PARTITIONS`] partitions, with more than 1,024 unrelated
//!   consumers on the stream ([`UNRELATED`]).
//!
//! What the server gave up on is captured from the outside: its advisories
//! (`MSG_TERMINATED`, `MAX_DELIVERIES`) in the stream `ROLL_ADVISORIES`, and the group's dead
//! letters in `ROLL_DL`.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

use futures::StreamExt;
use natty::{BatchConfig, BatchPublisher, ConsumerConfig, GroupConfig, StreamConfig};

use natty_chaos::{Event, Line};

use super::number;

/// The plain consumers' stream (subjects `roll.>`), durable and its delivery limit.
pub(crate) const STREAM: &str = "ROLL";
pub(crate) const DURABLE: &str = "roll_workers";
pub(crate) const ORDERED_DURABLE: &str = "roll_ordered";
pub(crate) const MAX_DELIVER: i64 = 2;
pub(crate) const CONSUMERS: usize = 2;
/// Keys of the numbered messages (`roll.<n % PLAIN_KEYS>`), and how many of them (the first)
/// the ordered durable reads.
const PLAIN_KEYS: u64 = 16;
const ORDERED_KEYS: u64 = 4;
/// The group: its name, stream (subjects `rollg.>`), partitions, members, keys.
pub(crate) const GROUP: &str = "rollg";
pub(crate) const GROUP_STREAM: &str = "ROLL_GROUP";
pub(crate) const GROUP_PREFIX: &str = "rollg";
pub(crate) const PARTITIONS: u32 = 8;
pub(crate) const MEMBERS: usize = 3;
const KEYS: usize = 24;
/// `ack_wait` of the plain durable and of the group's durables.
pub(crate) const ACK_WAIT_SECS: u64 = 5;
/// Where the group's given-up messages go (stream `ROLL_DL`).
pub(crate) const DEAD_LETTER: &str = "roll-dl.group";
pub(crate) const DEAD_LETTER_STREAM: &str = "ROLL_DL";
/// The server's give-up advisories for both streams.
pub(crate) const ADVISORIES: &str = "ROLL_ADVISORIES";
/// Consumers on the group's stream that are not the group's (`other_<i>`: listed before the
/// group's own, so a paged listing that shifts skips the group's).
pub(crate) const UNRELATED: usize = 1_100;
/// Every message whose stream sequence is divisible by this fails once.
pub(crate) const FAIL_EVERY: u64 = 7;
/// Messages held per consumer (per partition in the group), handlers at once, and how long
/// each runs: a full batch takes 200 × 50 ms / concurrency to run.
pub(crate) const BATCH: usize = 200;
pub(crate) const CONCURRENCY: usize = 2;
pub(crate) const ORDERED_CONCURRENCY: usize = 2;
pub(crate) const GROUP_CONCURRENCY: usize = 1;
pub(crate) const HANDLER_MS: u64 = 50;
/// The ordered consumer's handlers: a full batch takes 200 × 100 ms / 2 = 10 s to run.
pub(crate) const ORDERED_HANDLER_MS: u64 = 100;
/// The deadline of every rolling process's graceful stop (`ConsumeOptions::stop_timeout`):
/// shorter than a full batch takes to run (above), so a stop that ran the batch to the end
/// instead of handing back what it could not finish shows.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// A backlog published at once this often: numbered messages, and rounds of one per key.
const BURST_EVERY: Duration = Duration::from_secs(30);
const BURST: u64 = 1_200;
const BURST_ROUNDS: u64 = 60;
/// Between bursts, a round per key and a numbered message this often.
const TRICKLE: Duration = Duration::from_millis(500);

/// The streams, the plain durable and the unrelated consumers' stream.
pub(crate) async fn setup(client: &natty::Client) -> anyhow::Result<()> {
    for (name, subjects) in [
        (STREAM, vec!["roll.>".to_owned()]),
        (GROUP_STREAM, vec![format!("{GROUP_PREFIX}.>")]),
        (DEAD_LETTER_STREAM, vec!["roll-dl.>".to_owned()]),
        (
            ADVISORIES,
            ["MSG_TERMINATED", "MAX_DELIVERIES"]
                .iter()
                .flat_map(|kind| {
                    [STREAM, GROUP_STREAM]
                        .map(|s| format!("$JS.EVENT.ADVISORY.CONSUMER.{kind}.{s}.>"))
                })
                .collect(),
        ),
    ] {
        natty::stream::ensure_stream(client, &StreamConfig::new(name, subjects).replicas(3))
            .await?;
    }
    // Server 2.15 limits a stream to 1,000 consumers unless the stream says otherwise.
    let js = client.jetstream();
    let mut config = js
        .get_stream(GROUP_STREAM)
        .await?
        .cached_info()
        .config
        .clone();
    config.max_consumers = 2 * i32::try_from(UNRELATED)?;
    js.update_stream(&config).await?;
    for (durable, keys) in [(DURABLE, PLAIN_KEYS), (ORDERED_DURABLE, ORDERED_KEYS)] {
        let durable = ConsumerConfig::new(STREAM, durable)
            .filter_subjects((0..keys).map(|k| format!("roll.{k}")))
            .ack_wait(Duration::from_secs(ACK_WAIT_SECS))
            .max_deliver(Some(MAX_DELIVER));
        natty::stream::ensure_consumer(client, &durable).await?;
    }
    Ok(())
}

fn group_config() -> GroupConfig {
    GroupConfig::new(GROUP, GROUP_STREAM, GROUP_PREFIX, PARTITIONS, "publisher")
}

/// What the rolling publisher published, and the streams hold.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) published: u64,
    /// Numbers handed back by the publisher.
    pub(crate) failed: HashSet<u64>,
    /// `ROLL`: stream sequence → number.
    pub(crate) stored: BTreeMap<u64, u64>,
    pub(crate) group_published: u64,
    /// Handed back by the publisher: (key, number).
    pub(crate) group_failed: HashSet<(String, u64)>,
    /// `ROLL_GROUP`: key → its numbers in stream order.
    pub(crate) group_stored: BTreeMap<String, Vec<u64>>,
    /// `ROLL_GROUP`: stream sequence → (key, number).
    pub(crate) group_seqs: HashMap<u64, (String, u64)>,
}

/// Publishes a burst of backlog every [`BURST_EVERY`] and a trickle in between, for `span`.
/// Returns what it published and what was handed back.
pub(crate) async fn publish(client: natty::Client, span: Duration) -> anyhow::Result<Outcome> {
    let publisher = BatchPublisher::new(client, BatchConfig::default().max_attempts(30))?;
    let config = group_config();
    let keys: Vec<String> = (0..KEYS)
        .map(|k| config.subject_for(&format!("key-{k}")))
        .collect::<Result<_, _>>()?;
    let (mut n, mut round) = (0u64, 0u64);
    let start = tokio::time::Instant::now();
    let mut next_burst = start;
    let mut pace = tokio::time::interval(TRICKLE);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while start.elapsed() < span {
        let burst = tokio::time::Instant::now() >= next_burst;
        if burst {
            next_burst += BURST_EVERY;
        }
        let (numbers, rounds) = if burst { (BURST, BURST_ROUNDS) } else { (1, 1) };
        for _ in 0..numbers {
            publisher
                .send(
                    &format!("roll.{}", n % PLAIN_KEYS),
                    n.to_be_bytes().to_vec().into(),
                )
                .await?;
            n += 1;
        }
        for _ in 0..rounds {
            for subject in &keys {
                publisher.send(subject, round.to_string().into()).await?;
            }
            round += 1;
        }
        pace.tick().await;
    }
    let report = publisher.close().await?;
    let mut out = Outcome {
        published: n,
        group_published: round * KEYS as u64,
        ..Outcome::default()
    };
    for f in &report.failed {
        if f.subject.starts_with("roll.") {
            out.failed.insert(number(&f.payload));
        } else if let (Some(key), Some(n)) = (f.subject.rsplit('.').next(), parse(&f.payload)) {
            out.group_failed.insert((key.to_owned(), n));
        }
    }
    Ok(out)
}

impl Outcome {
    /// Whether every stored message was handled successfully by a rolling process.
    pub(crate) fn all_handled(&self, lines: &[Line]) -> bool {
        let (mut processed, mut in_order) = (HashSet::new(), HashSet::new());
        let mut handled = HashSet::new();
        for l in lines {
            match &l.event {
                Event::Processed { n, .. } if is_plain(l) => {
                    processed.insert(*n);
                }
                Event::Processed { n, .. } if is_ordered(l) => {
                    in_order.insert(*n);
                }
                Event::Handled { key, n, .. } if is_member(l) => {
                    handled.insert((key.as_str(), *n));
                }
                _ => {}
            }
        }
        self.stored
            .values()
            .all(|n| processed.contains(n) && (!read_in_order(*n) || in_order.contains(n)))
            && self
                .group_stored
                .iter()
                .all(|(k, ns)| ns.iter().all(|n| handled.contains(&(k.as_str(), *n))))
    }
}

/// Whether the ordered durable reads number `n`.
pub(crate) fn read_in_order(n: u64) -> bool {
    n % PLAIN_KEYS < ORDERED_KEYS
}

/// A line of a plain rolling consumer (`p<i>#<n>`).
pub(crate) fn is_plain(l: &Line) -> bool {
    l.proc.starts_with('p')
}

/// A line of the rolling consumer ordered by key (`o<i>#<n>`).
pub(crate) fn is_ordered(l: &Line) -> bool {
    l.proc.starts_with('o')
}

/// A line of a rolling group member (`r<i>#<n>`).
pub(crate) fn is_member(l: &Line) -> bool {
    l.proc.starts_with('r')
}

fn parse(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(payload).ok()?.parse().ok()
}

/// Reads back what both streams hold into `out`.
pub(crate) async fn stored(client: &natty::Client, out: &mut Outcome) -> anyhow::Result<()> {
    for (seq, subject, payload, _) in read(client, STREAM).await? {
        if subject.starts_with("roll.") {
            out.stored.insert(seq, number(&payload));
        }
    }
    for (seq, subject, payload, _) in read(client, GROUP_STREAM).await? {
        let key = subject.rsplit('.').next().unwrap_or_default().to_owned();
        let n = parse(&payload).unwrap_or(u64::MAX);
        out.group_stored.entry(key.clone()).or_default().push(n);
        out.group_seqs.insert(seq, (key, n));
    }
    Ok(())
}

/// A stored message: (stream sequence, subject, payload, headers).
type Stored = (u64, String, bytes::Bytes, Vec<(String, String)>);

/// Every message of `stream`.
async fn read(client: &natty::Client, stream: &str) -> anyhow::Result<Vec<Stored>> {
    let stream = client.jetstream().get_stream(stream).await?;
    let total = stream.cached_info().state.messages;
    let consumer = stream
        .create_consumer(natty::async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await?;
    let mut messages = consumer.messages().await?.take(usize::try_from(total)?);
    let mut out = Vec::new();
    while let Some(m) = messages.next().await {
        let m = m?;
        let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
        let headers = m
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .filter_map(|(k, vs)| Some((k.to_string(), vs.first()?.to_string())))
            .collect();
        out.push((seq, m.subject.to_string(), m.payload.clone(), headers));
    }
    Ok(out)
}

/// A message the server or natty gave up on.
#[derive(Debug, Clone)]
pub(crate) struct GiveUp {
    pub(crate) stream: String,
    pub(crate) consumer: String,
    pub(crate) seq: u64,
    pub(crate) deliveries: u64,
    /// `terminated`, `max deliveries` or `dead-lettered`.
    pub(crate) how: &'static str,
}

/// Every give-up the advisories and the dead-letter stream recorded.
pub(crate) async fn given_up(client: &natty::Client) -> anyhow::Result<Vec<GiveUp>> {
    let mut out = Vec::new();
    for (_, subject, payload, _) in read(client, ADVISORIES).await? {
        let v: serde_json::Value = serde_json::from_slice(&payload)?;
        let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        out.push(GiveUp {
            stream: text("stream"),
            consumer: text("consumer"),
            seq: v["stream_seq"].as_u64().unwrap_or(0),
            deliveries: v["deliveries"].as_u64().unwrap_or(0),
            how: if subject.contains(".MAX_DELIVERIES.") {
                "max deliveries"
            } else {
                "terminated"
            },
        });
    }
    for (_, _, _, headers) in read(client, DEAD_LETTER_STREAM).await? {
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        out.push(GiveUp {
            stream: header("Natty-Original-Stream"),
            consumer: String::new(),
            seq: header("Natty-Stream-Sequence").parse().unwrap_or(0),
            deliveries: header("Natty-Deliveries").parse().unwrap_or(0),
            how: "dead-lettered",
        });
    }
    Ok(out)
}

/// The group's durables on its stream, and how many other consumers are there (read at the
/// end, once nothing changes them any more).
pub(crate) async fn consumers(client: &natty::Client) -> anyhow::Result<(Vec<String>, usize)> {
    let stream = client.jetstream().get_stream(GROUP_STREAM).await?;
    let mut names = stream.consumer_names();
    let (mut group, mut others) = (Vec::new(), 0);
    let prefix = format!("{GROUP}_p");
    while let Some(name) = names.next().await {
        let name = name?;
        if name.starts_with(&prefix) {
            group.push(name);
        } else {
            others += 1;
        }
    }
    Ok((group, others))
}
