//! The consumer group's checks, from natty-testkit's group judge on the members' lines.

use std::collections::{BTreeMap, HashMap, HashSet};

use natty_chaos::Line;
use natty_testkit::group::{GroupRun, describe, judge};

use super::Check;
use crate::{
    faults::{Fault, FaultKind},
    workload::group::{ACK_WAIT_SECS, KEYS, Outcome, PARTITIONS, REOWN_BOUND_NS, is_member, key},
};

/// What the group checks read.
pub(crate) struct Input<'a> {
    pub(crate) lines: &'a [Line],
    pub(crate) outcome: &'a Outcome,
    /// Killed processes (`Line::proc`) and when they were seen dead.
    pub(crate) deaths: &'a HashMap<String, u64>,
    pub(crate) faults: &'a [Fault],
    /// The end of the judged period.
    pub(crate) now: u64,
}

/// The group's checks.
pub(crate) fn checks(i: &Input<'_>) -> Vec<Check> {
    let mut checks = Vec::new();
    let (published, failed, stored) = (i.outcome.published, &i.outcome.failed, &i.outcome.stored);
    let member_faults: Vec<&Fault> = i
        .faults
        .iter()
        .filter(|f| f.kind.is_member_fault())
        .collect();
    // A re-run belongs to a member fault if it began while the fault lasted or within
    // ack_wait + TTL + 2 s of its end (the next owner resumes from the ack floor then).
    let window = (ACK_WAIT_SECS * 1_000_000_000) + REOWN_BOUND_NS;
    let after_fault = |_p: u32, at: u64| {
        member_faults
            .iter()
            .any(|f| at >= f.start_ns && at <= f.end_ns + window)
    };
    let lines: Vec<Line> = i.lines.iter().filter(|l| is_member(l)).cloned().collect();
    let v = judge(&GroupRun {
        lines: &lines,
        expected: stored,
        deaths: i.deaths,
        now: i.now,
        partition_of: &|key| natty::group::partition_of(key, PARTITIONS),
        after_fault: &after_fault,
    });

    let stored_count: usize = stored.values().map(Vec::len).sum();
    let stored_set: HashSet<(&str, u64)> = stored
        .iter()
        .flat_map(|(k, ns)| ns.iter().map(move |n| (k.as_str(), *n)))
        .collect();
    let unexplained = (0..published / KEYS as u64)
        .flat_map(|n| (0..KEYS).map(move |k| (key(k), n)))
        .filter(|(k, n)| {
            !stored_set.contains(&(k.as_str(), *n)) && !failed.contains(&(k.clone(), *n))
        })
        .count();
    checks.push(Check::new(
        "group: every published message stored (or handed back) and handled",
        unexplained == 0 && v.missing.is_empty() && stored_count > 0,
        format!(
            "{} published, {stored_count} stored ({} distinct), {} handed back, {unexplained} \
             unexplained; {} distinct handled in {} handler runs, {} never handled{}",
            published,
            stored_set.len(),
            failed.len(),
            v.distinct,
            v.handler_runs,
            v.missing.len(),
            v.missing
                .first()
                .map_or_else(String::new, |(k, n)| format!(" (first: {k} {n})"))
        ),
    ));
    checks.push(Check::new(
        "group: per-key order (each owner's run strictly increasing; first handlings in stream order)",
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
    checks.push(Check::new(
        "group: a partition's owners never act at once (handled spans of its terms, at their ownership checks, do not overlap)",
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
    checks.push(Check::new(
        "group: nothing handled outside the member's own ownership of that term (none after its release)",
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
        let mut own: Vec<&Line> = lines
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
            let moved = lines
                .iter()
                .filter(|l| l.mono_ns > t0)
                .filter(|l| matches!(natty_testkit::group::ownership(l), Some((q, t, true)) if q == *p && t != *term))
                .map(|l| l.mono_ns - t0)
                .min();
            let released_by_bound = lines.iter().any(|l| {
                l.proc == f.proc
                    && l.mono_ns <= bound
                    && matches!(natty_testkit::group::ownership(l), Some((q, t, false)) if q == *p && t == *term)
            });
            let still_held =
                f.kind != FaultKind::KillMember && f.end_ns <= bound && !released_by_bound;
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
    checks.push(Check::new(
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
