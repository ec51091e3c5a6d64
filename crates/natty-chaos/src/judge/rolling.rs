//! The rolling deploys' checks: nothing given up on unless its handler ran, nothing lost,
//! per-key order and single owners in the group, every graceful stop within its deadline, a
//! crashed member's partitions owned again after the members bucket was deleted, and the
//! group's take-overs right with more than 1,024 consumers on its stream.

use std::collections::{BTreeMap, HashMap, HashSet};

use natty_chaos::{Event, Line};
use natty_testkit::group::{GroupRun, describe, judge, ownership};

use super::Check;
use crate::{
    faults::deploys::{Fleet, Stop},
    workload::rolling::{
        GROUP, GROUP_STREAM, GiveUp, MAX_DELIVER, Outcome, PARTITIONS, STREAM, UNRELATED,
        is_member, is_plain,
    },
    world::TTL_NS,
};

/// How long a graceful stop may take: the stop deadline natty is to keep (issue 24 item 2;
/// the consumer option does not exist yet, the children cannot pass it), plus the process's
/// own exit (the group's leave, the connection's close).
pub(crate) const STOP_DEADLINE_MS: u64 = 3_000;
const STOP_SLACK_MS: u64 = 2_000;
/// A crashed member's partitions must be owned again within this (issue 24 item 12).
const REOWN_NS: u64 = 2 * TTL_NS;
/// A message first handled this long before a take-over and run again by it was not left
/// unfinished by the previous owner: the take-over started before the previous durable's ack
/// floor (a skipped durable: the partition replayed from the start).
const REPLAY_AGE_NS: u64 = 20_000_000_000;

/// What the rolling checks read.
pub(crate) struct Input<'a> {
    /// Every line; the rolling processes' are picked by their names (`p*`, `r*`).
    pub(crate) lines: &'a [Line],
    pub(crate) outcome: &'a Outcome,
    pub(crate) given_up: &'a [GiveUp],
    pub(crate) fleet: &'a Fleet,
    /// The group's durables left on its stream at the end, and the other consumers there.
    pub(crate) durables_left: &'a [String],
    pub(crate) others_left: usize,
    pub(crate) now: u64,
}

pub(crate) fn checks(i: &Input<'_>) -> Vec<Check> {
    let members: Vec<Line> = i.lines.iter().filter(|l| is_member(l)).cloned().collect();
    let o = i.outcome;
    // Handler runs per (stream, sequence): every line of a run, failed or not.
    let mut runs: HashMap<(&str, u64), usize> = HashMap::new();
    let group_seq: HashMap<(&str, u64), u64> = o
        .group_seqs
        .iter()
        .map(|(seq, (k, n))| ((k.as_str(), *n), *seq))
        .collect();
    for l in i.lines {
        let run = match &l.event {
            Event::Processed { seq, .. } if is_plain(l) => Some((STREAM, *seq)),
            Event::Failed { seq, .. } if is_plain(l) => Some((STREAM, *seq)),
            Event::Failed { seq, .. } if is_member(l) => Some((GROUP_STREAM, *seq)),
            Event::Handled { key, n, .. } if is_member(l) => group_seq
                .get(&(key.as_str(), *n))
                .map(|seq| (GROUP_STREAM, *seq)),
            _ => None,
        };
        if let Some(run) = run {
            *runs.entry(run).or_default() += 1;
        }
    }
    vec![
        given_up_unseen(i.given_up, &runs),
        lost(i.lines, o, &members),
        group_order(&members, o, i),
        stops(&i.fleet.stops),
        reowned_after_crash(&members, i.fleet),
        take_overs(&members, i),
    ]
}

/// Nothing given up on (terminated, over the server's limit, dead-lettered) without its
/// handler having run.
fn given_up_unseen(given_up: &[GiveUp], runs: &HashMap<(&str, u64), usize>) -> Check {
    let mut by_how: BTreeMap<&str, usize> = BTreeMap::new();
    let mut unseen = Vec::new();
    let mut distinct = HashSet::new();
    for g in given_up {
        *by_how.entry(g.how).or_default() += 1;
        distinct.insert((g.stream.as_str(), g.seq));
        if runs.get(&(g.stream.as_str(), g.seq)).copied().unwrap_or(0) == 0 {
            unseen.push(format!(
                "{} seq {} ({}, {} deliveries{})",
                g.stream,
                g.seq,
                g.how,
                g.deliveries,
                if g.consumer.is_empty() {
                    String::new()
                } else {
                    format!(", {}", g.consumer)
                }
            ));
        }
    }
    Check::new(
        format!(
            "rolling: nothing given up on without its handler running (max_deliver \
             {MAX_DELIVER} on {STREAM}; messages fail at most once)"
        ),
        unseen.is_empty(),
        format!(
            "{} give-ups of {} messages ({}); {} without a handler run{}",
            given_up.len(),
            distinct.len(),
            if by_how.is_empty() {
                "none".to_owned()
            } else {
                by_how
                    .iter()
                    .map(|(how, n)| format!("{n} {how}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            unseen.len(),
            if unseen.is_empty() {
                String::new()
            } else {
                format!(
                    ": {}",
                    unseen
                        .iter()
                        .take(5)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            }
        ),
    )
}

/// Every published message stored (or handed back to the publisher), every stored one run
/// successfully at least once.
fn lost(lines: &[Line], o: &Outcome, members: &[Line]) -> Check {
    let processed: HashSet<u64> = lines
        .iter()
        .filter(|l| is_plain(l))
        .filter_map(|l| match l.event {
            Event::Processed { n, .. } => Some(n),
            _ => None,
        })
        .collect();
    let stored: HashSet<u64> = o.stored.values().copied().collect();
    let unstored = (0..o.published)
        .filter(|n| !stored.contains(n) && !o.failed.contains(n))
        .count();
    let never = stored.iter().filter(|n| !processed.contains(n)).count();
    let handled: HashSet<(&str, u64)> = members
        .iter()
        .filter_map(|l| match &l.event {
            Event::Handled { key, n, .. } => Some((key.as_str(), *n)),
            _ => None,
        })
        .collect();
    let group_stored: usize = o.group_stored.values().map(Vec::len).sum();
    let group_never: Vec<(&str, u64)> = o
        .group_stored
        .iter()
        .flat_map(|(k, ns)| ns.iter().map(move |n| (k.as_str(), *n)))
        .filter(|m| !handled.contains(m))
        .collect();
    let group_unstored = o
        .group_published
        .saturating_sub(group_stored as u64 + o.group_failed.len() as u64);
    Check::new(
        "rolling: nothing lost (every published message stored or handed back, every stored \
         one handled successfully)",
        unstored == 0 && never == 0 && group_never.is_empty() && group_unstored == 0,
        format!(
            "{STREAM}: {} published, {} stored, {} handed back, {unstored} unexplained, {never} \
             never processed; {GROUP_STREAM}: {} published, {group_stored} stored, {} handed \
             back, {group_unstored} unexplained, {} never handled{}",
            o.published,
            stored.len(),
            o.failed.len(),
            o.group_published,
            o.group_failed.len(),
            group_never.len(),
            group_never
                .first()
                .map_or_else(String::new, |(k, n)| format!(" (first: {k} {n})"))
        ),
    )
}

/// The group judge's order and single-owner verdicts on the rolling members' lines.
fn group_order(members: &[Line], o: &Outcome, i: &Input<'_>) -> Check {
    let v = judge(&GroupRun {
        lines: members,
        expected: &o.group_stored,
        deaths: &i.fleet.deaths,
        now: i.now,
        partition_of: &|key| natty::group::partition_of(key, PARTITIONS),
        after_fault: &|_, _| false,
    });
    Check::new(
        "rolling: per-key order in the group and a partition's owners never act at once",
        v.order.is_empty()
            && v.unexpected.is_empty()
            && v.span_overlaps.is_empty()
            && v.outside.is_empty(),
        format!(
            "{} handler runs; order broken: {}; unexpected: {}; overlapping owners: {}; outside \
             ownership: {}; re-runs by a next owner: {}",
            v.handler_runs,
            describe(&v.order),
            describe(&v.unexpected),
            describe(&v.span_overlaps),
            describe(&v.outside),
            v.reruns_otherwise + v.reruns_after_fault
        ),
    )
}

/// Every graceful stop (SIGTERM to exit) within the deadline and the slack.
fn stops(stops: &[Stop]) -> Check {
    let ms = |s: &Stop| (s.exited_ns - s.signalled_ns) / 1_000_000;
    let bound = STOP_DEADLINE_MS + STOP_SLACK_MS;
    let mut sorted: Vec<u64> = stops.iter().map(ms).collect();
    sorted.sort_unstable();
    let over: Vec<String> = stops
        .iter()
        .filter(|s| !s.exited || ms(s) > bound)
        .map(|s| {
            format!(
                "{} {} ms{}",
                s.proc,
                ms(s),
                if s.exited { "" } else { " (killed)" }
            )
        })
        .collect();
    let pct = |p: usize| sorted.get(sorted.len() * p / 100).copied().unwrap_or(0);
    Check::new(
        format!(
            "rolling: every graceful stop within its deadline ({STOP_DEADLINE_MS} ms + \
             {STOP_SLACK_MS} ms to exit)"
        ),
        over.is_empty() && !stops.is_empty(),
        format!(
            "{} stops: median {} ms, 90th {} ms, max {} ms; {} over{}",
            stops.len(),
            pct(50),
            pct(90),
            sorted.last().copied().unwrap_or(0),
            over.len(),
            if over.is_empty() {
                String::new()
            } else {
                format!(
                    ": {}",
                    over.iter().take(8).cloned().collect::<Vec<_>>().join(", ")
                )
            }
        ),
    )
}

/// After the members bucket was deleted, the crashed member's partitions owned again (by a
/// new term) within 2 × TTL of the crash.
fn reowned_after_crash(members: &[Line], fleet: &Fleet) -> Check {
    let name = "rolling: a crashed member's partitions owned again within 2 × TTL, after the \
                group's members bucket was deleted";
    let Some(crash) = &fleet.crash else {
        return Check::new(name, false, "no crash happened: the run was too short");
    };
    let mut own: Vec<&Line> = members
        .iter()
        .filter(|l| l.proc == crash.proc && l.mono_ns <= crash.killed_ns)
        .collect();
    own.sort_by_key(|l| l.mono_ns);
    let mut held = BTreeMap::new();
    for l in own {
        match ownership(l) {
            Some((p, term, true)) => {
                held.insert(p, term);
            }
            Some((p, _, false)) => {
                held.remove(&p);
            }
            None => {}
        }
    }
    let mut late = Vec::new();
    let mut slowest = 0;
    for (p, term) in &held {
        let again = members
            .iter()
            .filter(|l| l.mono_ns > crash.killed_ns)
            .filter(|l| matches!(ownership(l), Some((q, t, true)) if q == *p && t != *term))
            .map(|l| l.mono_ns - crash.killed_ns)
            .min();
        match again {
            Some(d) if d <= REOWN_NS => slowest = slowest.max(d),
            _ => late.push(format!(
                "partition {p} {}",
                again.map_or_else(
                    || "never owned again".to_owned(),
                    |d| format!("owned again after {:.1} s", d as f64 / 1e9)
                )
            )),
        }
    }
    Check::new(
        name,
        late.is_empty(),
        format!(
            "bucket deleted {:.1} s before {} was killed; it held {} partitions; {}",
            (crash.killed_ns - crash.bucket_deleted_ns) as f64 / 1e9,
            crash.proc,
            held.len(),
            if late.is_empty() {
                format!("all owned again, slowest {:.1} s", slowest as f64 / 1e9)
            } else {
                format!("late: {}", late.join(", "))
            }
        ),
    )
}

/// With more than 1,024 consumers on the stream (pages shifting as unrelated ones are deleted
/// and created), every take-over found the previous owner's durable: no old-term durable left
/// at the end, and no take-over re-ran what the previous owners had finished long before.
fn take_overs(members: &[Line], i: &Input<'_>) -> Check {
    let mut per_partition: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
    let prefix = format!("{GROUP}_p");
    for name in i.durables_left {
        let p = name
            .strip_prefix(&prefix)
            .and_then(|r| r.split('_').next())
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or(u32::MAX);
        per_partition.entry(p).or_default().push(name);
    }
    let left_over: Vec<String> = per_partition
        .values()
        .filter(|names| names.len() > 1)
        .map(|names| names.join(" + "))
        .collect();
    // A re-run by another term of a message first handled REPLAY_AGE before it.
    let mut first: HashMap<(&str, u64), (u64, &str)> = HashMap::new();
    let mut handled: Vec<&Line> = members
        .iter()
        .filter(|l| matches!(l.event, Event::Handled { .. }))
        .collect();
    handled.sort_by_key(|l| l.mono_ns);
    let mut replayed = Vec::new();
    for l in handled {
        if let Event::Handled {
            key, n, start_ns, ..
        } = &l.event
        {
            match first.get(&(key.as_str(), *n)) {
                None => {
                    first.insert((key.as_str(), *n), (*start_ns, l.proc.as_str()));
                }
                Some((at, _)) if start_ns.saturating_sub(*at) > REPLAY_AGE_NS => {
                    replayed.push(format!(
                        "{key} {n} by {} {:.1} s after its first run",
                        l.proc,
                        (start_ns - at) as f64 / 1e9
                    ));
                }
                Some(_) => {}
            }
        }
    }
    Check::new(
        format!(
            "rolling: take-overs with more than 1,024 consumers on the stream ({UNRELATED} \
             unrelated, replaced all along): no old-term durable left, no partition replayed"
        ),
        left_over.is_empty() && replayed.is_empty() && i.others_left > 1_024,
        format!(
            "{} group durables and {} other consumers at the end ({} replaced during the run); \
             partitions with more than one durable: {}; re-runs of messages first run over {} s \
             earlier: {}{}",
            i.durables_left.len(),
            i.others_left,
            i.fleet.churned,
            if left_over.is_empty() {
                "none".to_owned()
            } else {
                left_over.join("; ")
            },
            REPLAY_AGE_NS / 1_000_000_000,
            replayed.len(),
            replayed
                .first()
                .map_or_else(String::new, |r| format!(" (first: {r})"))
        ),
    )
}
