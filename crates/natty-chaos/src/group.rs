//! The consumer-group scenario: member processes (natty-group's `group_member` example, each
//! reaching the servers through its own proxies) consume an R3 stream of keyed, numbered
//! messages while members are frozen, killed and cut off the network among the other faults;
//! the checks come from natty-testkit's group judge on the members' lines.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

use futures::StreamExt;
use natty::{BatchConfig, BatchPublisher, GroupConfig};
use natty_chaos::{Event, Line};
use natty_testkit::group::{GroupRun, describe, judge};

use super::{Fault, TTL_NS};

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
const KEYS: usize = 40;
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

fn key(k: usize) -> String {
    format!("key-{k}")
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

/// Distinct (key, number) handled so far.
pub(crate) fn handled(lines: &[Line]) -> HashSet<(&str, u64)> {
    lines
        .iter()
        .filter_map(|l| match &l.event {
            Event::Handled { key, n, .. } => Some((key.as_str(), *n)),
            _ => None,
        })
        .collect()
}

/// How many partitions are owned by someone, by the lines so far.
pub(crate) fn owned(lines: &[Line]) -> usize {
    natty_testkit::group::owned_at(lines, u64::MAX)
        .values()
        .flatten()
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

/// A member fault: frozen, killed or cut off.
pub(crate) fn is_member_fault(f: &Fault) -> bool {
    f.kind.ends_with(" member")
}

/// What the group checks read.
pub(crate) struct Input<'a> {
    pub(crate) lines: &'a [Line],
    pub(crate) published: u64,
    pub(crate) failed: &'a HashSet<(String, u64)>,
    pub(crate) stored: &'a BTreeMap<String, Vec<u64>>,
    pub(crate) deaths: &'a HashMap<String, u64>,
    pub(crate) faults: &'a [Fault],
    pub(crate) now: u64,
}

/// The group's named checks: `(name, passed, detail)`.
pub(crate) fn checks(i: &Input<'_>) -> Vec<(String, bool, String)> {
    let mut checks = Vec::new();
    let member_faults: Vec<&Fault> = i.faults.iter().filter(|f| is_member_fault(f)).collect();
    // A re-run belongs to a member fault if it began while the fault lasted or within
    // ack_wait + TTL + 2 s of its end (the next owner resumes from the ack floor then).
    let window = (ACK_WAIT_SECS * 1_000_000_000) + REOWN_BOUND_NS;
    let after_fault = |_p: u32, at: u64| {
        member_faults
            .iter()
            .any(|f| at >= f.start_ns && at <= f.end_ns + window)
    };
    let v = judge(&GroupRun {
        lines: i.lines,
        expected: i.stored,
        deaths: i.deaths,
        now: i.now,
        partition_of: &|key| natty::group::partition_of(key, PARTITIONS),
        after_fault: &after_fault,
    });

    let stored_count: usize = i.stored.values().map(Vec::len).sum();
    let stored_set: HashSet<(&str, u64)> = i
        .stored
        .iter()
        .flat_map(|(k, ns)| ns.iter().map(move |n| (k.as_str(), *n)))
        .collect();
    let unexplained = (0..i.published / KEYS as u64)
        .flat_map(|n| (0..KEYS).map(move |k| (key(k), n)))
        .filter(|(k, n)| {
            !stored_set.contains(&(k.as_str(), *n)) && !i.failed.contains(&(k.clone(), *n))
        })
        .count();
    checks.push((
        "group: every published message stored (or handed back) and handled".into(),
        unexplained == 0 && v.missing.is_empty() && stored_count > 0,
        format!(
            "{} published, {stored_count} stored ({} distinct), {} handed back, {unexplained} \
             unexplained; {} distinct handled in {} handler runs, {} never handled{}",
            i.published,
            stored_set.len(),
            i.failed.len(),
            v.distinct,
            v.handler_runs,
            v.missing.len(),
            v.missing
                .first()
                .map_or_else(String::new, |(k, n)| format!(" (first: {k} {n})"))
        ),
    ));
    checks.push((
        "group: per-key order (each owner's run strictly increasing; first handlings in stream order)".into(),
        v.order.is_empty() && v.unexpected.is_empty(),
        format!(
            "order broken: {}; unexpected: {}; re-runs by a next owner (resumed from the ack \
             floor): {} after member faults (kill/freeze/cut), {} otherwise",
            describe(&v.order),
            describe(&v.unexpected),
            v.reruns_after_fault,
            v.reruns_otherwise
        ),
    ));
    checks.push((
        "group: a partition's owners never act at once (handled spans of its terms, at their ownership checks, do not overlap)".into(),
        v.span_overlaps.is_empty() && v.unchecked == 0,
        format!(
            "{} terms handled; overlaps: {}; largest gap from an ownership check to its line \
             {:.1} ms; {} lines without a check; ownership believed past a successor's start \
             (frozen/cut members noticing late, no handling then): {}",
            v.terms,
            describe(&v.span_overlaps),
            v.max_check_gap_ns as f64 / 1e6,
            v.unchecked,
            v.interval_overlaps.len()
        ),
    ));
    checks.push((
        "group: nothing handled outside the member's own ownership of that term (none after its release)".into(),
        v.outside.is_empty() && v.ownership_errors.is_empty(),
        format!(
            "outside: {} ({} after the release); ownership lines inconsistent: {}",
            describe(&v.outside),
            v.after_release,
            describe(&v.ownership_errors)
        ),
    ));

    // Re-owned after each member fault: every partition the member held when the fault
    // began is owned under a new term within the bound, or still held by it (the fault was
    // shorter than its lease) and the member running again by then.
    let mut details = Vec::new();
    let mut late = Vec::new();
    for f in &member_faults {
        let (t0, bound) = (f.start_ns, f.start_ns + REOWN_BOUND_NS);
        let mut held: BTreeMap<u32, natty_testkit::procs::Term> = BTreeMap::new();
        let mut own: Vec<&Line> = i
            .lines
            .iter()
            .filter(|l| l.proc == f.proc && l.mono_ns <= t0)
            .collect();
        own.sort_by_key(|l| l.mono_ns);
        for l in own {
            match natty_testkit::group::ownership(l) {
                Some((p, term, true)) => {
                    held.insert(p, term);
                }
                Some((p, _, false)) => {
                    held.remove(&p);
                }
                None => {}
            }
        }
        let mut worst: Option<u64> = None;
        let (mut kept, mut reowned) = (0, 0);
        for (p, term) in &held {
            let moved = i
                .lines
                .iter()
                .filter(|l| l.mono_ns > t0)
                .filter(|l| matches!(natty_testkit::group::ownership(l), Some((q, t, true)) if q == *p && t != *term))
                .map(|l| l.mono_ns - t0)
                .min();
            let released_by_bound = i.lines.iter().any(|l| {
                l.proc == f.proc
                    && l.mono_ns <= bound
                    && matches!(natty_testkit::group::ownership(l), Some((q, t, false)) if q == *p && t == *term)
            });
            let still_held = f.kind != "kill member" && f.end_ns <= bound && !released_by_bound;
            match moved {
                Some(d) if t0 + d <= bound => {
                    reowned += 1;
                    worst = worst.max(Some(d));
                }
                _ if still_held => kept += 1,
                _ => late.push(format!(
                    "{} {} at {:.1}s: partition {p} {}",
                    f.kind,
                    f.target,
                    (t0 - i.faults.first().map_or(t0, |f| f.start_ns)) as f64 / 1e9,
                    moved.map_or_else(
                        || "never re-owned".into(),
                        |d| format!("re-owned after {:.1}s", d as f64 / 1e9)
                    )
                )),
            }
        }
        details.push(format!(
            "{} {} ({:.1}s): held {}, re-owned {reowned} (slowest {}), kept {kept}",
            f.kind,
            f.target,
            (f.end_ns - f.start_ns) as f64 / 1e9,
            held.len(),
            worst.map_or_else(|| "-".into(), |d| format!("{:.1}s", d as f64 / 1e9)),
        ));
    }
    checks.push((
        format!(
            "group: a member's partitions owned again within TTL + 2 s of each member fault ({} faults)",
            member_faults.len()
        ),
        late.is_empty(),
        if late.is_empty() {
            details.join("; ")
        } else {
            format!("late: {}; all: {}", late.join("; "), details.join("; "))
        },
    ));
    checks
}
