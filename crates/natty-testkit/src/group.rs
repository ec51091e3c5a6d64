//! The consumer-group judge, shared by natty-group's process suite and natty-chaos: from the
//! members' JSON lines ([`Event::PartitionOwned`], [`Event::PartitionReleased`],
//! [`Event::Handled`]) it rebuilds who owned which partition when, and checks every message
//! handled, per-key order as Kafka gives it, and that no partition was acted on by two owners
//! at once. It returns what it found; the caller decides what fails.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::procs::{Event, Line, Term};

/// A line's ownership change: (partition, term, owned (`true`) or released).
pub fn ownership(l: &Line) -> Option<(u32, Term, bool)> {
    match l.event {
        Event::PartitionOwned { partition, term } => Some((partition, term, true)),
        Event::PartitionReleased { partition, term } => Some((partition, term, false)),
        _ => None,
    }
}

/// Who owns what at `at` by the lines (every ownership line stamped up to `at`, replayed in
/// stamp order): process (`Line::proc`) → partitions. A process that died keeps what it held.
pub fn owned_at(lines: &[Line], at: u64) -> BTreeMap<String, HashSet<u32>> {
    let mut changes: Vec<(u64, &str, u32, bool)> = lines
        .iter()
        .filter(|l| l.mono_ns <= at)
        .filter_map(|l| ownership(l).map(|(p, _, own)| (l.mono_ns, l.proc.as_str(), p, own)))
        .collect();
    changes.sort_by_key(|c| c.0);
    let mut owned: BTreeMap<String, HashSet<u32>> = BTreeMap::new();
    for (_, proc, p, own) in changes {
        let set = owned.entry(proc.to_owned()).or_default();
        if own {
            set.insert(p);
        } else {
            set.remove(&p);
        }
    }
    owned
}

/// What the judge reads.
#[allow(
    missing_debug_implementations,
    reason = "holds closures; only passed to `judge`"
)]
pub struct GroupRun<'a> {
    /// Every line the members printed (`proc` identifies an incarnation).
    pub lines: &'a [Line],
    /// The messages that must be handled: key → its numbers in stream order.
    pub expected: &'a BTreeMap<String, Vec<u64>>,
    /// Processes that died (SIGKILL) and when: their open ownership intervals end there.
    pub deaths: &'a HashMap<String, u64>,
    /// The end of the judged period: open intervals of the others end here.
    pub now: u64,
    /// The partition of a key.
    pub partition_of: &'a dyn Fn(&str) -> u32,
    /// Whether a message of `partition` handled again at `start_ns` follows a member fault
    /// (kill, freeze, network cut): how re-runs are counted.
    pub after_fault: &'a dyn Fn(u32, u64) -> bool,
}

/// What the judge found. Each `Vec<String>` lists violations (empty: the check passed), at
/// most [`SHOWN`] described, the length being the count.
#[derive(Debug, Default)]
pub struct GroupVerdict {
    /// Handled lines.
    pub handler_runs: usize,
    /// Distinct (key, number) handled.
    pub distinct: usize,
    /// Expected messages never handled: (key, number).
    pub missing: Vec<(String, u64)>,
    /// Handled messages that were not expected, or in another partition than their key's.
    pub unexpected: Vec<String>,
    /// Per-key order broken: within one owner's run (a term of one process) a key's numbers
    /// not strictly increasing, or a message handled for the first time before an earlier
    /// one of its key.
    pub order: Vec<String>,
    /// Messages handled again by a next owner (it resumes from the ack floor): after a member
    /// fault, and otherwise (clean hand-overs, node faults).
    pub reruns_after_fault: u64,
    /// See [`reruns_after_fault`](Self::reruns_after_fault).
    pub reruns_otherwise: u64,
    /// Ownership lines that do not add up: owned twice, released without owning, released
    /// under another term.
    pub ownership_errors: Vec<String>,
    /// Ownership intervals (`partition-owned` → `partition-released`, or death) of one
    /// partition that overlap: a member that *believed* it owned a partition another had
    /// taken (a frozen or cut-off member notices late). Not by itself two owners acting.
    pub interval_overlaps: Vec<String>,
    /// Handled lines outside their own process's interval for that partition and term.
    pub outside: Vec<String>,
    /// Of `outside`: handled after that process's release of the term.
    pub after_release: usize,
    /// Two owners acting at once: the handled spans of two terms of one partition overlap,
    /// each handled line taken at its ownership check (`checked_ns`; its own stamp if 0).
    pub span_overlaps: Vec<String>,
    /// Terms that handled something.
    pub terms: usize,
    /// The largest gap from an ownership check to its handled line.
    pub max_check_gap_ns: u64,
    /// Handled lines without a recorded check.
    pub unchecked: usize,
}

/// Violations described in full, per list.
pub const SHOWN: usize = 5;

fn note(list: &mut Vec<String>, what: impl FnOnce() -> String) {
    // Keep the count exact, the text short.
    list.push(if list.len() < SHOWN {
        what()
    } else {
        String::new()
    });
}

/// A one-line summary of a violation list: its count and first descriptions.
pub fn describe(list: &[String]) -> String {
    let shown: Vec<&str> = list
        .iter()
        .filter(|s| !s.is_empty())
        .map(String::as_str)
        .collect();
    if list.is_empty() {
        "none".into()
    } else {
        format!("{}: {}", list.len(), shown.join("; "))
    }
}

/// One handler run of a key: (start, n, delivered, partition, proc, term).
type Run<'a> = (u64, u64, u64, u32, &'a str, Term);

/// An ownership interval: (start, end, proc, term).
type Interval = (u64, u64, String, Term);

/// Judges a group run. Order per key, as Kafka's: each owner's run handles a key's messages
/// in strictly increasing order; a next owner may go back (it resumes from the ack floor) but
/// no message is handled for the first time before every earlier one of its key was.
pub fn judge(run: &GroupRun<'_>) -> GroupVerdict {
    let mut v = GroupVerdict::default();
    let lines = run.lines;

    // 1. Ownership intervals per partition, and each term's release.
    let mut intervals: HashMap<u32, Vec<Interval>> = HashMap::new();
    let mut open: HashMap<(&str, u32), (Term, u64)> = HashMap::new();
    let mut released: HashMap<(&str, u32, Term), u64> = HashMap::new();
    let mut sorted: Vec<&Line> = lines.iter().collect();
    sorted.sort_by_key(|l| l.mono_ns);
    for l in &sorted {
        match ownership(l) {
            Some((p, term, true)) => {
                let before = open.insert((&l.proc, p), (term, l.mono_ns));
                if before.is_some() {
                    note(&mut v.ownership_errors, || {
                        format!("{} owned partition {p} twice: {l:?}", l.proc)
                    });
                }
            }
            Some((p, term, false)) => {
                released.insert((&l.proc, p, term), l.mono_ns);
                match open.remove(&(&l.proc, p)) {
                    Some((t, start)) => {
                        if t != term {
                            note(&mut v.ownership_errors, || {
                                format!("released another term than owned: {l:?}")
                            });
                        }
                        intervals.entry(p).or_default().push((
                            start,
                            l.mono_ns,
                            l.proc.clone(),
                            term,
                        ));
                    }
                    None => note(&mut v.ownership_errors, || {
                        format!("released without owning: {l:?}")
                    }),
                }
            }
            None => {}
        }
    }
    for ((proc, p), (term, start)) in open {
        let end = run.deaths.get(proc).copied().unwrap_or(run.now);
        intervals
            .entry(p)
            .or_default()
            .push((start, end, proc.to_owned(), term));
    }
    for (p, list) in &mut intervals {
        list.sort();
        let mut latest: Option<&Interval> = None;
        for i in list.iter() {
            if let Some(prev) = latest
                && prev.1 > i.0
            {
                note(&mut v.interval_overlaps, || {
                    format!("partition {p}: {prev:?} and {i:?}")
                });
            }
            if latest.is_none_or(|prev| i.1 > prev.1) {
                latest = Some(i);
            }
        }
    }

    // 2. Handled lines: inside their own interval; spans of terms (at their checks).
    let handled = || {
        lines.iter().filter_map(|l| match &l.event {
            Event::Handled {
                partition,
                term,
                key,
                n,
                delivered,
                start_ns,
                checked_ns,
            } => Some((
                l,
                *partition,
                *term,
                key.as_str(),
                *n,
                *delivered,
                *start_ns,
                *checked_ns,
            )),
            _ => None,
        })
    };
    // (partition, term) -> (first, last, proc)
    let mut spans: BTreeMap<(u32, Term), (u64, u64, &str)> = BTreeMap::new();
    for (l, partition, term, _, _, _, start_ns, checked_ns) in handled() {
        v.handler_runs += 1;
        let inside = intervals.get(&partition).is_some_and(|list| {
            list.iter().any(|(s, e, proc, t)| {
                proc == &l.proc && *t == term && *s <= start_ns && l.mono_ns <= *e
            })
        });
        if !inside {
            if released
                .get(&(l.proc.as_str(), partition, term))
                .is_some_and(|r| l.mono_ns > *r)
            {
                v.after_release += 1;
            }
            note(&mut v.outside, || format!("{l:?}"));
        }
        let at = if checked_ns > 0 {
            v.max_check_gap_ns = v.max_check_gap_ns.max(l.mono_ns.saturating_sub(checked_ns));
            checked_ns
        } else {
            v.unchecked += 1;
            l.mono_ns
        };
        let span = spans
            .entry((partition, term))
            .or_insert((at, at, l.proc.as_str()));
        span.0 = span.0.min(at);
        span.1 = span.1.max(at);
    }
    v.terms = spans.len();
    let mut by_partition: BTreeMap<u32, Vec<(u64, u64, &str, Term)>> = BTreeMap::new();
    for ((p, term), (first, last, proc)) in &spans {
        by_partition
            .entry(*p)
            .or_default()
            .push((*first, *last, proc, *term));
    }
    for (p, list) in &mut by_partition {
        list.sort();
        let mut latest: Option<(u64, u64, &str, Term)> = None;
        for s in list.iter() {
            if let Some(prev) = latest
                && prev.1 >= s.0
            {
                note(&mut v.span_overlaps, || {
                    format!(
                        "partition {p}: term {:?} ({}) acted until {} and term {:?} ({}) from {}",
                        prev.3, prev.2, prev.1, s.3, s.2, s.0
                    )
                });
            }
            if latest.is_none_or(|prev| s.1 > prev.1) {
                latest = Some(*s);
            }
        }
    }

    // 3. Per key: every expected number handled; first handlings in order; each owner's
    //    run in order.
    let mut per_key: HashMap<&str, Vec<Run<'_>>> = HashMap::new();
    for (l, partition, term, key, n, delivered, start_ns, _) in handled() {
        if (run.partition_of)(key) != partition {
            note(&mut v.unexpected, || {
                format!("key {key} handled in partition {partition}: {l:?}")
            });
        }
        per_key.entry(key).or_default().push((
            start_ns,
            n,
            delivered,
            partition,
            l.proc.as_str(),
            term,
        ));
    }
    let mut distinct: HashSet<(&str, u64)> = HashSet::new();
    for (key, want) in run.expected {
        let position: HashMap<u64, usize> = want.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let mut got = per_key.remove(key.as_str()).unwrap_or_default();
        got.sort_unstable();
        let mut next = 0usize; // the position of the next first handling
        // Per owner's run: the stream position of the last handled (and its number). By
        // position, not number: a publisher that retried under faults stores its numbers out
        // of numeric order, and stream order is what a consumer promises.
        let mut last_in_run: HashMap<(&str, Term), (usize, u64)> = HashMap::new();
        for &(start, n, delivered, partition, proc, term) in &got {
            distinct.insert((key, n));
            if let Some(&at) = position.get(&n)
                && let Some((last_at, last)) = last_in_run.insert((proc, term), (at, n))
                && at <= last_at
            {
                note(&mut v.order, || {
                    format!(
                        "key {key} (partition {partition}): {n} after {last} in one owner's \
                         run ({proc}, term {term:?}), delivery {delivered}"
                    )
                });
            }
            match position.get(&n) {
                Some(&i) if i == next => next += 1,
                Some(&i) if i < next => {
                    if (run.after_fault)(partition, start) {
                        v.reruns_after_fault += 1;
                    } else {
                        v.reruns_otherwise += 1;
                    }
                }
                Some(_) => note(&mut v.order, || {
                    format!(
                        "key {key} (partition {partition}): {n} handled before {} (delivery \
                         {delivered}, {proc})",
                        want[next]
                    )
                }),
                None => note(&mut v.unexpected, || {
                    format!("key {key}: {n} handled, never published")
                }),
            }
        }
        for n in &want[next.min(want.len())..] {
            if !got.iter().any(|r| r.1 == *n) {
                v.missing.push((key.clone(), *n));
            }
        }
    }
    for (key, got) in per_key {
        note(&mut v.unexpected, || {
            format!("key {key}: {} handled, none published", got.len())
        });
    }
    v.distinct = distinct.len();
    v
}

#[cfg(test)]
mod tests {
    //! The judge must fail on each violation it claims to catch: synthetic lines per case.
    use super::*;

    fn tm(revision: u64) -> Term {
        Term { epoch: 1, revision }
    }

    fn line(proc: &str, mono_ns: u64, event: Event) -> Line {
        Line {
            node: proc.into(),
            mono_ns,
            event,
            proc: proc.into(),
        }
    }

    fn owned(proc: &str, at: u64, rev: u64) -> Line {
        line(
            proc,
            at,
            Event::PartitionOwned {
                partition: 0,
                term: tm(rev),
            },
        )
    }

    fn released(proc: &str, at: u64, rev: u64) -> Line {
        line(
            proc,
            at,
            Event::PartitionReleased {
                partition: 0,
                term: tm(rev),
            },
        )
    }

    fn handled(proc: &str, at: u64, rev: u64, n: u64) -> Line {
        line(
            proc,
            at,
            Event::Handled {
                partition: 0,
                term: tm(rev),
                key: "k".into(),
                n,
                delivered: 1,
                start_ns: at - 1,
                checked_ns: at,
            },
        )
    }

    fn verdict(lines: &[Line]) -> GroupVerdict {
        verdict_of(lines, vec![0, 1, 2])
    }

    /// `stored`: the key's numbers in stream order.
    fn verdict_of(lines: &[Line], stored: Vec<u64>) -> GroupVerdict {
        let expected: BTreeMap<String, Vec<u64>> = [("k".to_owned(), stored)].into();
        judge(&GroupRun {
            lines,
            expected: &expected,
            deaths: &HashMap::new(),
            now: 1_000,
            partition_of: &|_| 0,
            after_fault: &|_, _| false,
        })
    }

    fn clean() -> Vec<Line> {
        vec![
            owned("a", 10, 1),
            handled("a", 20, 1, 0),
            handled("a", 30, 1, 1),
            released("a", 40, 1),
            owned("b", 50, 2),
            handled("b", 60, 2, 1), // re-run from the ack floor
            handled("b", 70, 2, 2),
        ]
    }

    #[test]
    fn a_clean_run_passes() {
        let v = verdict(&clean());
        assert!(v.missing.is_empty() && v.unexpected.is_empty() && v.order.is_empty());
        assert!(v.ownership_errors.is_empty() && v.interval_overlaps.is_empty());
        assert!(v.outside.is_empty() && v.span_overlaps.is_empty());
        assert_eq!((v.reruns_otherwise, v.terms, v.distinct), (1, 2, 3));
    }

    #[test]
    fn order_is_stream_order_not_the_numbers_order() {
        // A publisher that retried stored #2 before #1: handling in stream order is in order.
        let lines = vec![
            owned("a", 10, 1),
            handled("a", 20, 1, 0),
            handled("a", 30, 1, 2),
            handled("a", 40, 1, 1),
        ];
        let v = verdict_of(&lines, vec![0, 2, 1]);
        assert!(v.order.is_empty(), "{:?}", v.order);
        assert!(v.missing.is_empty());
        // In numeric order, against the stream's: broken, in the run and in first handlings.
        let lines = vec![
            owned("a", 10, 1),
            handled("a", 20, 1, 0),
            handled("a", 30, 1, 1),
            handled("a", 40, 1, 2),
        ];
        assert!(!verdict_of(&lines, vec![0, 2, 1]).order.is_empty());
        // A run going back in stream order, after the first handlings were all in order.
        let lines = vec![
            owned("a", 10, 1),
            handled("a", 20, 1, 0),
            handled("a", 30, 1, 2),
            handled("a", 40, 1, 1),
            handled("a", 50, 1, 2),
        ];
        let v = verdict_of(&lines, vec![0, 2, 1]);
        assert_eq!(v.order.len(), 1, "{:?}", v.order);
    }

    #[test]
    fn each_violation_is_caught() {
        // A message never handled.
        let mut lines = clean();
        lines.pop();
        assert_eq!(verdict(&lines).missing, vec![("k".to_owned(), 2)]);
        // First handlings out of order.
        let mut lines = clean();
        lines[1] = handled("a", 20, 1, 1);
        lines[2] = handled("a", 30, 1, 0);
        assert!(!verdict(&lines).order.is_empty());
        // One run going backwards.
        let mut lines = clean();
        lines.push(handled("b", 80, 2, 1));
        assert!(!verdict(&lines).order.is_empty());
        // a acts after b took over (a frozen member that did not check): both its interval
        // and its acts overlap b's.
        let mut lines = clean();
        lines.retain(|l| !matches!(l.event, Event::PartitionReleased { .. }));
        lines.push(handled("a", 65, 1, 2));
        lines.push(released("a", 66, 1));
        let v = verdict(&lines);
        assert!(!v.span_overlaps.is_empty() && !v.interval_overlaps.is_empty());
        // Handled after its own release.
        let mut lines = clean();
        lines.push(handled("a", 45, 1, 2));
        let v = verdict(&lines);
        assert_eq!((v.outside.len(), v.after_release), (1, 1));
        // A frozen member that believed it owned (late release) but did not act: intervals
        // overlap, acts do not.
        let mut lines = clean();
        lines[3] = released("a", 55, 1);
        let v = verdict(&lines);
        assert!(!v.interval_overlaps.is_empty() && v.span_overlaps.is_empty());
    }
}
