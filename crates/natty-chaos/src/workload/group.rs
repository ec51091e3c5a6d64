//! The consumer group's workload: member processes (natty-group's `group_member` example, each
//! reaching the servers through its own proxies) consume an R3 stream of keyed, numbered
//! messages while members are frozen, killed and cut off the network among the other faults
//! (judged in `judge/group.rs`).

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use futures::StreamExt;
use natty::{BatchConfig, BatchPublisher, GroupConfig};
use natty_chaos::{Event, Line};

use crate::world::TTL_NS;

/// The group's name (durables `chaosg_p<i>_<epoch>_<revision>`, buckets `chaosg_leases`,
/// `chaosg_members`).
pub(crate) const NAME: &str = "chaosg";
/// Its stream, R3.
pub(crate) const STREAM: &str = "CHAOS_GROUP";
/// Messages are on `chaosg.<partition>.<key>`.
pub(crate) const PREFIX: &str = "chaosg";
pub(crate) const PARTITIONS: u32 = 6;
pub(crate) const MEMBERS: usize = 3;
/// Short, so that what a frozen, killed or cut-off member held comes back within the run.
pub(crate) const ACK_WAIT_SECS: u64 = 4;
pub(crate) const KEYS: usize = 40;
/// A round of one message per key, this often.
const ROUND: Duration = Duration::from_millis(250);
/// How long after a member fault ended a partition must be owned again: the member's lease
/// and membership expire at most TTL after its last renew (itself before the fault), server
/// expiry fires within ~0.5 s of that (NATS-NOTES, "TTLs"), the survivors see the membership
/// expire by their watch (or their 1 s recount) and win the lease with one KV create; 2 s
/// covers that on two loaded cores, the same slack the leader check gives a new leader. The
/// process suite measures 2.0–2.3 s from a kill, without other faults.
pub(crate) const REOWN_BOUND_NS: u64 = TTL_NS + 2_000_000_000;

fn config() -> GroupConfig {
    GroupConfig::new(NAME, STREAM, PREFIX, PARTITIONS, "publisher")
}

pub(crate) fn key(k: usize) -> String {
    format!("key-{k}")
}

/// What the group's publisher published and the stream holds.
pub(crate) struct Outcome {
    pub(crate) published: u64,
    /// Handed back by the publisher: (key, number).
    pub(crate) failed: HashSet<(String, u64)>,
    /// Key → its numbers in stream order.
    pub(crate) stored: BTreeMap<String, Vec<u64>>,
}

/// Publishes rounds of one message per key (numbered per key from 0, the number as text)
/// every [`ROUND`] for `span`. Returns how many were published and the ones handed back.
pub(crate) async fn publish(
    client: natty::Client,
    span: Duration,
) -> anyhow::Result<(u64, HashSet<(String, u64)>)> {
    let config = config();
    let publisher = BatchPublisher::new(client, BatchConfig::default().max_attempts(30))?;
    let rounds = (span.as_nanos() / ROUND.as_nanos()).max(1) as u64;
    let mut pace = tokio::time::interval(ROUND);
    for n in 0..rounds {
        pace.tick().await;
        for k in 0..KEYS {
            publisher
                .send(&config.subject_for(&key(k))?, n.to_string().into())
                .await?;
        }
    }
    let report = publisher.close().await?;
    let failed = report
        .failed
        .iter()
        .filter_map(|f| Some((f.subject.rsplit('.').next()?.to_owned(), parse(&f.payload)?)))
        .collect();
    Ok((rounds * KEYS as u64, failed))
}

fn parse(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(payload).ok()?.parse().ok()
}

/// What the stream holds: key → its numbers in stream order.
pub(crate) async fn stored(client: &natty::Client) -> anyhow::Result<BTreeMap<String, Vec<u64>>> {
    let stream = client.jetstream().get_stream(STREAM).await?;
    let total = stream.cached_info().state.messages;
    let consumer = stream
        .create_consumer(natty::async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await?;
    let mut messages = consumer.messages().await?.take(usize::try_from(total)?);
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    while let Some(m) = messages.next().await {
        let m = m?;
        let key = m.subject.rsplit('.').next().unwrap_or_default().to_owned();
        out.entry(key)
            .or_default()
            .push(parse(&m.payload).unwrap_or(u64::MAX));
    }
    Ok(out)
}

/// A line of one of this group's members (`m<i>#<n>`).
pub(crate) fn is_member(l: &Line) -> bool {
    l.proc.starts_with('m')
}

/// Distinct (key, number) handled so far.
fn handled(lines: &[Line]) -> HashSet<(&str, u64)> {
    lines
        .iter()
        .filter(|l| is_member(l))
        .filter_map(|l| match &l.event {
            Event::Handled { key, n, .. } => Some((key.as_str(), *n)),
            _ => None,
        })
        .collect()
}

/// How many partitions are owned by someone, by the lines so far.
pub(crate) fn owned(lines: &[Line]) -> usize {
    natty_testkit::group::owned_at(lines, u64::MAX)
        .iter()
        .filter(|(proc, _)| proc.starts_with('m'))
        .flat_map(|(_, partitions)| partitions)
        .collect::<HashSet<_>>()
        .len()
}

/// Whether every stored message was handled.
pub(crate) fn all_handled(lines: &[Line], stored: &BTreeMap<String, Vec<u64>>) -> bool {
    let handled = handled(lines);
    stored
        .iter()
        .all(|(k, ns)| ns.iter().all(|n| handled.contains(&(k.as_str(), *n))))
}
