//! The rolling deploys' checks: nothing given up on unless its handler ran, nothing lost,
//! per-key order and single owners in the group, every graceful stop within its deadline, a
//! crashed member's partitions owned again after the members bucket was deleted, and the
//! group's take-overs right with more than 1,024 consumers on its stream.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

use natty_chaos::{Event, Line};
use natty_testkit::group::{GroupRun, describe, judge, ownership};

use super::Check;
use crate::{
    faults::deploys::{Fleet, Stop},
    workload::rolling::{
        DURABLE, GROUP, GROUP_STREAM, GiveUp, MAX_DELIVER, ORDERED_DURABLE, Outcome, PARTITIONS,
        STOP_TIMEOUT, STREAM, UNRELATED, is_member, is_ordered, is_plain, read_in_order,
    },
    world::TTL_NS,
};
use natty_chaos::CONSUMER_REQUEST_TIMEOUT;

/// What a graceful stop (SIGTERM to exit) may take beyond the stop deadline the processes
/// are given ([`STOP_TIMEOUT`]), in server round trips, each bounded by the children's request
/// timeout: a consumer settles the handler runs that ended right at the deadline (a failure is
/// written to the failure ledger) and flushes its acks; a group member also removes its
/// membership before and resigns its leases after. Then the process exits (closes its
/// connection) within [`EXIT`].
const CONSUMER_ROUND_TRIPS: u32 = 2;
const MEMBER_ROUND_TRIPS: u32 = 4;
const EXIT: Duration = Duration::from_secs(1);
/// The group's delivery limit: its durables use natty's default.
const GROUP_MAX_DELIVER: i64 = 5;
/// A crashed member's partitions must be owned again within this (issue 24 item 12).
const REOWN_NS: u64 = 2 * TTL_NS;
/// A message first handled this long before a take-over and run again by it was not left
/// unfinished by the previous owner: the take-over started before the previous durable's ack
/// floor (a skipped durable: the partition replayed from the start).
const REPLAY_AGE_NS: u64 = 20_000_000_000;

/// What the rolling checks read.
pub(crate) struct Input<'a> {
    /// Every line; the rolling processes' are picked by their names (`p*`, `o*`, `r*`).
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
    // Handler runs and failures per (durable, sequence) (per stream for the group, whose
    // durables change with each owner).
    let mut runs: HashMap<(&str, u64), Runs> = HashMap::new();
    let group_seq: HashMap<(&str, u64), u64> = o
        .group_seqs
        .iter()
        .map(|(seq, (k, n))| ((k.as_str(), *n), *seq))
        .collect();
    for l in i.lines {
        let failed = matches!(l.event, Event::Failed { .. });
        let run = match &l.event {
            Event::Processed { seq, .. } | Event::Failed { seq, .. } if is_plain(l) => {
                Some((DURABLE, *seq))
            }
            Event::Processed { seq, .. } | Event::Failed { seq, .. } if is_ordered(l) => {
                Some((ORDERED_DURABLE, *seq))
            }
            Event::Failed { seq, .. } if is_member(l) => Some((GROUP_STREAM, *seq)),
            Event::Handled { key, n, .. } if is_member(l) => group_seq
                .get(&(key.as_str(), *n))
                .map(|seq| (GROUP_STREAM, *seq)),
            _ => None,
        };
        if let Some(run) = run {
            let r = runs.entry(run).or_default();
            r.runs += 1;
            r.failures += usize::from(failed);
        }
    }
    let given_up = GivenUp::new(i.given_up, &runs);
    vec![
        given_up.unseen(),
        given_up.early(),
        lost(i.lines, o, &members),
        group_order(&members, o, i),
        stops(&i.fleet.stops),
        exits(&i.fleet.stops),
        reowned_after_crash(&members, i.fleet),
        take_overs(&members, i),
    ]
}

/// A message's handler runs and failures, by the lines.
#[derive(Debug, Default, Clone, Copy)]
struct Runs {
    runs: usize,
    failures: usize,
}

/// The give-ups (terminated, over the server's limit, dead-lettered), each with its runs.
struct GivenUp<'a> {
    all: Vec<(&'a GiveUp, Runs)>,
    /// How many of each kind, and of how many messages.
    summary: String,
}

impl<'a> GivenUp<'a> {
    fn new(given_up: &'a [GiveUp], runs: &HashMap<(&str, u64), Runs>) -> Self {
        let mut by_how: BTreeMap<&str, usize> = BTreeMap::new();
        let mut distinct = HashSet::new();
        let all: Vec<(&GiveUp, Runs)> = given_up
            .iter()
            .map(|g| {
                *by_how.entry(g.how).or_default() += 1;
                let scope = if g.stream == STREAM {
                    g.consumer.as_str()
                } else {
                    GROUP_STREAM
                };
                distinct.insert((scope, g.seq));
                (g, runs.get(&(scope, g.seq)).copied().unwrap_or_default())
            })
            .collect();
        let summary = format!(
            "{} give-ups of {} messages ({})",
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
            }
        );
        Self { all, summary }
    }

    /// The give-ups `bad` picks, described (the first five).
    fn list(&self, bad: impl Fn(&GiveUp, Runs) -> bool) -> (usize, String) {
        let picked: Vec<String> = self
            .all
            .iter()
            .filter(|(g, r)| bad(g, *r))
            .map(|(g, r)| {
                format!(
                    "{} seq {} ({}, {} deliveries, {} runs, {} failed{})",
                    g.stream,
                    g.seq,
                    g.how,
                    g.deliveries,
                    r.runs,
                    r.failures,
                    if g.consumer.is_empty() {
                        String::new()
                    } else {
                        format!(", {}", g.consumer)
                    }
                )
            })
            .collect();
        let shown = picked
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ");
        (
            picked.len(),
            if shown.is_empty() {
                shown
            } else {
                format!(": {shown}")
            },
        )
    }

    /// Nothing given up on without its handler having run.
    fn unseen(&self) -> Check {
        let (n, first) = self.list(|_, r| r.runs == 0);
        Check::new(
            "rolling: nothing given up on without its handler running",
            n == 0,
            format!("{}; {n} without a handler run{first}", self.summary),
        )
    }

    /// Nothing given up on before its handler failed as often as the delivery limit: here
    /// nothing at all, every message failing at most once.
    fn early(&self) -> Check {
        let limit = |g: &GiveUp| {
            if g.stream == STREAM {
                MAX_DELIVER
            } else {
                GROUP_MAX_DELIVER
            }
        };
        let (n, first) = self.list(|g, r| i64::try_from(r.failures).unwrap_or(i64::MAX) < limit(g));
        Check::new(
            format!(
                "rolling: nothing given up on before its handler failed max_deliver times \
                 ({MAX_DELIVER} on {STREAM}, {GROUP_MAX_DELIVER} in the group; every message \
                 fails at most once)"
            ),
            n == 0,
            format!("{}; {n} before{first}", self.summary),
        )
    }
}

/// Every published message stored (or handed back to the publisher), every stored one run
/// successfully at least once.
fn lost(lines: &[Line], o: &Outcome, members: &[Line]) -> Check {
    let processed = |by: fn(&Line) -> bool| -> HashSet<u64> {
        lines
            .iter()
            .filter(|l| by(l))
            .filter_map(|l| match l.event {
                Event::Processed { n, .. } => Some(n),
                _ => None,
            })
            .collect()
    };
    let (queue, in_order) = (processed(is_plain), processed(is_ordered));
    let stored: HashSet<u64> = o.stored.values().copied().collect();
    let unstored = (0..o.published)
        .filter(|n| !stored.contains(n) && !o.failed.contains(n))
        .count();
    let never = stored.iter().filter(|n| !queue.contains(n)).count();
    let never_in_order = stored
        .iter()
        .filter(|n| read_in_order(**n) && !in_order.contains(n))
        .count();
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
        unstored == 0
            && never == 0
            && never_in_order == 0
            && group_never.is_empty()
            && group_unstored == 0,
        format!(
            "{STREAM}: {} published, {} stored, {} handed back, {unstored} unexplained, never \
             processed: {never} on {DURABLE}, {never_in_order} on {ORDERED_DURABLE}; \
             {GROUP_STREAM}: {} published, {group_stored} stored, {} handed \
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

/// The longest a graceful stop of process `proc` (`Line::proc`) may take, SIGTERM to exit.
pub(crate) fn stop_bound(proc: &str) -> Duration {
    let round_trips = if proc.starts_with('r') {
        MEMBER_ROUND_TRIPS
    } else {
        CONSUMER_ROUND_TRIPS
    };
    STOP_TIMEOUT + CONSUMER_REQUEST_TIMEOUT * round_trips + EXIT
}

/// Every graceful stop (SIGTERM to exit) within its bound ([`stop_bound`]).
pub(crate) fn stops(stops: &[Stop]) -> Check {
    let took = |s: &Stop| Duration::from_nanos(s.exited_ns.saturating_sub(s.signalled_ns));
    let ms = |s: &Stop| took(s).as_millis();
    let over: Vec<String> = stops
        .iter()
        .filter(|s| took(s) > stop_bound(&s.proc))
        .map(|s| format!("{} {} ms", s.proc, ms(s)))
        .collect();
    // Per kind of process: how many, median and longest.
    let kinds = [
        ("queue consumers", 'p'),
        ("ordered consumer", 'o'),
        ("group members", 'r'),
    ];
    let per_kind: Vec<String> = kinds
        .iter()
        .map(|(what, prefix)| {
            let mut t: Vec<u128> = stops
                .iter()
                .filter(|s| s.proc.starts_with(*prefix))
                .map(ms)
                .collect();
            t.sort_unstable();
            format!(
                "{what} {} (median {} ms, max {} ms)",
                t.len(),
                t.get(t.len() / 2).copied().unwrap_or(0),
                t.last().copied().unwrap_or(0)
            )
        })
        .collect();
    Check::new(
        format!(
            "rolling: every graceful stop within its deadline (stop_timeout {} ms; SIGTERM to \
             exit at most {} ms for a consumer, {} ms for a group member)",
            STOP_TIMEOUT.as_millis(),
            stop_bound("p").as_millis(),
            stop_bound("r").as_millis(),
        ),
        over.is_empty() && !stops.is_empty(),
        format!(
            "{} stops: {}; {} over{}",
            stops.len(),
            per_kind.join(", "),
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

/// Every process ran until it was asked to stop, and then exited cleanly.
fn exits(stops: &[Stop]) -> Check {
    let bad: Vec<String> = stops
        .iter()
        .filter_map(|s| Some(format!("{} {}", s.proc, s.error.as_ref()?)))
        .collect();
    Check::new(
        "rolling: every process runs until it is asked to stop, then exits cleanly",
        bad.is_empty(),
        format!(
            "{} stopped, {} not cleanly{}",
            stops.len(),
            bad.len(),
            if bad.is_empty() {
                String::new()
            } else {
                format!(
                    ": {}",
                    bad.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
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
        late.is_empty() && !held.is_empty(),
        format!(
            "bucket deleted {:.1} s before {} (the member owning the most partitions) was \
             killed; it held {} partitions; {}",
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
