//! The checks: from what every process printed (and what the streams hold), that nothing was
//! lost and no two leaders acted at once. Each is a [`Check`]; the run passes when all do.

use std::collections::{BTreeMap, HashMap, HashSet};

use natty_chaos::{DEAD_LETTER_EVERY, Event, Line};
use natty_testkit::procs::Term;

use crate::{
    faults::{Fault, deploys::Fleet},
    workload::{AfterRun, Outcome, Record},
    world::{Samples, TTL_NS},
};

pub(crate) mod group;
pub(crate) mod rolling;

/// One named check and its verdict.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    pub(crate) name: String,
    pub(crate) passed: bool,
    /// What was counted, and the first violations if any.
    pub(crate) detail: String,
}

impl Check {
    pub(crate) fn new(name: impl Into<String>, passed: bool, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            passed,
            detail: detail.into(),
        }
    }
}

/// Everything the checks read.
pub(crate) struct Evidence<'a> {
    pub(crate) lines: &'a [Line],
    pub(crate) unreadable: &'a [String],
    pub(crate) faults: &'a [Fault],
    pub(crate) outcome: &'a Outcome,
    pub(crate) after: &'a AfterRun,
    /// The rolling deploys' processes and what was done to them.
    pub(crate) fleet: &'a Fleet,
    pub(crate) samples: &'a Samples,
    /// Killed processes (`Line::proc`) and when they were seen dead.
    pub(crate) deaths: &'a HashMap<String, u64>,
    pub(crate) cluster_healthy: bool,
    /// The end of the judged period (mono ns).
    pub(crate) now: u64,
}

/// Every check, in report order: the election's, the leader's recovery, the numbered
/// messages', the cluster's, the group's, the soak, the rolling deploys'.
pub(crate) fn checks(e: &Evidence<'_>) -> Vec<Check> {
    let mut checks = election_checks(e.lines, e.unreadable);
    checks.extend(recovery_checks(e.lines, e.faults));
    checks.extend(stream_checks(e.outcome, &e.after.dead_records));
    checks.push(Check::new(
        "cluster healthy after the run",
        e.cluster_healthy,
        "",
    ));
    checks.extend(group::checks(&group::Input {
        lines: e.lines,
        outcome: &e.outcome.group,
        deaths: e.deaths,
        faults: e.faults,
        now: e.now,
    }));
    checks.push(soak_check(e.samples));
    checks.extend(rolling::checks(&rolling::Input {
        lines: e.lines,
        outcome: &e.outcome.rolling,
        given_up: &e.after.given_up,
        fleet: e.fleet,
        durables_left: &e.after.durables_left,
        others_left: e.after.others_left,
        now: e.now,
    }));
    checks
}

/// The election's safety checks on the candidates' lines: (0) every line printed was read
/// (a line that does not parse is a failure, never a line of zeros), (1) work spans of terms
/// never overlap, (2) no work under a term after that process's `lost` of it, (3) the fenced
/// sink accepted no write issued after a newer term was elected, (4) terms strictly increase
/// in election order.
pub(crate) fn election_checks(lines: &[Line], unreadable: &[String]) -> Vec<Check> {
    let mut checks = Vec::new();
    checks.push(Check::new(
        "every line the processes printed is readable",
        unreadable.is_empty(),
        format!(
            "{} lines, {} unreadable{}",
            lines.len() + unreadable.len(),
            unreadable.len(),
            unreadable
                .first()
                .map_or_else(String::new, |l| format!(", first: {l}"))
        ),
    ));
    let works = || {
        lines.iter().filter_map(|l| match l.event {
            Event::Work { term, checked_ns } => Some((l, term, checked_ns)),
            _ => None,
        })
    };

    // 1. Leadership (acting) intervals never overlap: per term, first to last work line.
    // (first, last, proc, the lease check of the last line); the largest check-to-line gap.
    let mut spans: BTreeMap<Term, (u64, u64, String, u64)> = BTreeMap::new();
    let mut max_gap = 0;
    for (l, term, checked) in works() {
        let t = l.mono_ns;
        if checked > 0 {
            max_gap = max_gap.max(t.saturating_sub(checked));
        }
        let e = spans.entry(term).or_insert((t, t, l.proc.clone(), checked));
        e.0 = e.0.min(t);
        if t >= e.1 {
            e.1 = t;
            e.3 = checked;
        }
    }
    let mut ordered: Vec<_> = spans.iter().collect();
    ordered.sort_by_key(|(_, (s, _, _, _))| *s);
    let overlaps: Vec<String> = ordered
        .windows(2)
        .filter(|w| w[0].1.1 >= w[1].1.0)
        .map(|w| {
            format!(
                "term {:?} ({}) until {} (lease checked valid at {}, {:.1} ms before) overlaps \
                 term {:?} ({}) from {}",
                w[0].0,
                w[0].1.2,
                w[0].1.1,
                w[0].1.3,
                w[0].1.1.saturating_sub(w[0].1.3) as f64 / 1e6,
                w[1].0,
                w[1].1.2,
                w[1].1.0
            )
        })
        .collect();
    checks.push(Check::new(
        "leaders never act at once (work spans of terms do not overlap)",
        overlaps.is_empty(),
        format!(
            "{} terms acted; {}; largest gap from a lease check to its work line {:.1} ms",
            spans.len(),
            overlaps
                .first()
                .cloned()
                .unwrap_or_else(|| "no overlap".into()),
            max_gap as f64 / 1e6
        ),
    ));

    // 2. No work under a term after that node's `lost` of the term.
    let mut lost_at: HashMap<(&str, Term), u64> = HashMap::new();
    for l in lines {
        if let Event::Lost { term } = l.event {
            lost_at.insert((&l.proc, term), l.mono_ns);
        }
    }
    let late = works()
        .filter(|(l, term, _)| {
            lost_at
                .get(&(l.proc.as_str(), *term))
                .is_some_and(|lost| l.mono_ns > *lost)
        })
        .count();
    checks.push(Check::new(
        "no work after `lost`",
        late == 0,
        format!("{late} late work lines"),
    ));

    // 3. Fenced sink: no write accepted from a term issued after a newer term was elected.
    let elected: Vec<(u64, Term)> = lines
        .iter()
        .filter_map(|l| match l.event {
            Event::Elected { term, .. } => Some((l.mono_ns, term)),
            _ => None,
        })
        .collect();
    let sinks: Vec<(Term, bool, u64)> = lines
        .iter()
        .filter_map(|l| match l.event {
            Event::Sink {
                term,
                accepted,
                issued_ns,
            } => Some((term, accepted, issued_ns)),
            _ => None,
        })
        .collect();
    let accepted = sinks.iter().filter(|s| s.1).count();
    let stale = sinks
        .iter()
        .filter(|(term, accepted, issued)| {
            *accepted && elected.iter().any(|(t, e)| e > term && t < issued)
        })
        .count();
    checks.push(Check::new(
        "fenced sink accepted zero stale writes",
        stale == 0,
        format!(
            "{accepted} accepted, {stale} stale accepted, {} refused by the fence",
            sinks.len() - accepted
        ),
    ));

    // 4. Terms strictly increase in election order.
    let mut by_time = elected.clone();
    by_time.sort();
    let decreasing = by_time.windows(2).filter(|w| w[1].1 <= w[0].1).count();
    checks.push(Check::new(
        "terms strictly increase",
        decreasing == 0,
        format!("{} elections, {decreasing} out of order", by_time.len()),
    ));

    checks
}

/// A leader acts again within TTL + 2 s after each process fault (someone works in the last
/// second of that window). Node faults are held to TTL + 2 s plus the server's own raft
/// election bound (a stream whose leader is cut off elects a new one after 4-9 s, and no
/// client can write to it meanwhile); how long each took is reported.
fn recovery_checks(lines: &[Line], faults: &[Fault]) -> Vec<Check> {
    const RAFT_ELECTION_MAX_NS: u64 = 10_000_000_000;
    let works: Vec<u64> = lines
        .iter()
        .filter(|l| matches!(l.event, Event::Work { .. }))
        .map(|l| l.mono_ns)
        .collect();
    // Any work after `start + TTL` is done under a lease renewed or won after the fault (a
    // lease renewed before it has expired by then), so it shows leadership working again.
    let recovered_after = |start: u64| -> Option<f64> {
        works
            .iter()
            .filter(|t| **t > start + TTL_NS)
            .min()
            .map(|t| (t - start) as f64 / 1e9)
    };
    let acted_by = |start: u64, bound_ns: u64| {
        works
            .iter()
            .any(|t| *t > start + TTL_NS && *t <= start + bound_ns)
    };
    let t0 = faults.first().map_or(0, |f| f.start_ns);
    let describe = |f: &Fault| {
        format!(
            "{} {} at {:.1}s (leader working again {} after it)",
            f.kind,
            f.target,
            (f.start_ns - t0) as f64 / 1e9,
            recovered_after(f.start_ns).map_or_else(|| "never".to_owned(), |s| format!("{s:.1}s"))
        )
    };
    // (Member faults do not touch the election.)
    let process_faults: Vec<&Fault> = faults
        .iter()
        .filter(|f| !f.kind.is_node_fault() && !f.kind.is_member_fault())
        .collect();
    let node_faults: Vec<&Fault> = faults.iter().filter(|f| f.kind.is_node_fault()).collect();
    let late: Vec<String> = process_faults
        .iter()
        .filter(|f| !acted_by(f.start_ns, TTL_NS + 2_000_000_000))
        .map(|f| describe(f))
        .collect();
    let node_late: Vec<String> = node_faults
        .iter()
        .filter(|f| !acted_by(f.start_ns, TTL_NS + 2_000_000_000 + RAFT_ELECTION_MAX_NS))
        .map(|f| describe(f))
        .collect();
    let beyond_ttl: Vec<String> = node_faults
        .iter()
        .filter(|f| !acted_by(f.start_ns, TTL_NS + 2_000_000_000))
        .map(|f| describe(f))
        .collect();
    vec![
        Check::new(
            "a leader acts again within TTL + 2 s of each process fault",
            late.is_empty(),
            if late.is_empty() {
                format!("{} faults", process_faults.len())
            } else {
                format!(
                    "{} of {} late: {}",
                    late.len(),
                    process_faults.len(),
                    late.join("; ")
                )
            },
        ),
        Check::new(
            "a leader acts again within TTL + 2 s + the server's raft election bound (10 s) of each node fault",
            node_late.is_empty(),
            format!(
                "{} node faults; {} beyond TTL + 2 s{}{}",
                node_faults.len(),
                beyond_ttl.len(),
                if beyond_ttl.is_empty() {
                    String::new()
                } else {
                    format!(": {}", beyond_ttl.join("; "))
                },
                if node_late.is_empty() {
                    String::new()
                } else {
                    format!("; beyond the raft bound too: {}", node_late.join("; "))
                }
            ),
        ),
    ]
}

/// The numbered messages: each stored once (or handed back to the publisher), each processed,
/// each refused one dead-lettered exactly once.
fn stream_checks(o: &Outcome, dead_records: &[Record]) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut counts: HashMap<u64, u32> = HashMap::new();
    for n in &o.stored {
        *counts.entry(*n).or_default() += 1;
    }
    let doubled = counts.values().filter(|c| **c > 1).count();
    let missing: Vec<u64> = (0..o.total).filter(|n| !counts.contains_key(n)).collect();
    let unexplained = missing.iter().filter(|n| !o.failed.contains(n)).count();
    checks.push(Check::new(
        "every published number stored exactly once (or handed back)",
        doubled == 0 && unexplained == 0,
        format!(
            "{} published, {} stored, {doubled} doubled, {} missing ({} handed back on the error \
             channel, {unexplained} unexplained)",
            o.total,
            o.stored.len(),
            missing.len(),
            o.failed.len(),
        ),
    ));
    let processed: HashSet<u64> = o.processed.iter().copied().collect();
    let unprocessed = counts.keys().filter(|n| !processed.contains(n)).count();
    let dup_processed = o.processed.len() - processed.len();
    checks.push(Check::new(
        "every stored number processed at least once",
        unprocessed == 0,
        format!(
            "{} processed, {unprocessed} never processed, {dup_processed} processed more than \
             once (at-least-once redeliveries)",
            processed.len()
        ),
    ));
    let mut dead: HashMap<u64, usize> = HashMap::new();
    for r in dead_records {
        *dead.entry(r.n).or_default() += 1;
    }
    let refused: Vec<u64> = counts
        .keys()
        .copied()
        .filter(|n| n % DEAD_LETTER_EVERY == 0)
        .collect();
    let not_dead = refused.iter().filter(|n| !dead.contains_key(n)).count();
    let dead_twice = dead.values().filter(|c| **c > 1).count();
    let dead_wrongly = dead.keys().filter(|n| *n % DEAD_LETTER_EVERY != 0).count();
    checks.push(Check::new(
        format!(
            "every refused number (divisible by {DEAD_LETTER_EVERY}) dead-lettered exactly once"
        ),
        not_dead == 0 && dead_twice == 0 && dead_wrongly == 0,
        format!(
            "{} refused, {} dead-lettered: {not_dead} missing, {dead_twice} twice, \
             {dead_wrongly} not refused",
            refused.len(),
            dead_records.len()
        ),
    ));
    checks
}

/// Soak: RSS slope per process incarnation that lived long enough.
fn soak_check(samples: &Samples) -> Check {
    let mut slopes = Vec::new();
    for (tag, s) in samples {
        // After a minute of warm-up, a process alive three more minutes is judged on the later
        // half of that time: a step when it first becomes leader (connections, buffers) is
        // warm-up too; a leak keeps growing.
        let warm: Vec<&(u64, u64)> = s
            .iter()
            .filter(|(t, _)| *t >= s[0].0 + 60_000_000_000)
            .collect();
        let long_enough = warm.len() >= 2 && warm[warm.len() - 1].0 - warm[0].0 >= 180_000_000_000;
        let warm: Vec<&(u64, u64)> = if long_enough {
            warm[warm.len() / 2..].to_vec()
        } else {
            Vec::new()
        };
        if warm.len() >= 2 {
            let n = warm.len() as f64;
            let mx = warm.iter().map(|(t, _)| *t as f64 / 60e9).sum::<f64>() / n;
            let my = warm.iter().map(|(_, k)| *k as f64).sum::<f64>() / n;
            let cov: f64 = warm
                .iter()
                .map(|(t, k)| (*t as f64 / 60e9 - mx) * (*k as f64 - my))
                .sum();
            let var: f64 = warm
                .iter()
                .map(|(t, _)| (*t as f64 / 60e9 - mx).powi(2))
                .sum();
            slopes.push((
                tag.clone(),
                if var > 0.0 { cov / var } else { 0.0 },
                warm.last().map_or(0, |w| w.1),
            ));
        }
    }
    let growing = slopes.iter().filter(|s| s.1 > 1024.0).count();
    let peak_kib = samples
        .values()
        .flatten()
        .map(|(_, k)| *k)
        .max()
        .unwrap_or(0);
    Check::new(
        format!(
            "soak: RSS does not grow after warm-up (slope <= 1 MiB/min; peak of any process \
             {peak_kib} KiB)"
        ),
        growing == 0,
        if slopes.is_empty() {
            "run too short to judge (needs a process alive 4 min)".into()
        } else {
            slopes
                .iter()
                .map(|(t, s, k)| format!("{t}: {s:+.0} KiB/min (now {k} KiB)"))
                .collect::<Vec<_>>()
                .join(", ")
        },
    )
}

#[cfg(test)]
mod tests;
