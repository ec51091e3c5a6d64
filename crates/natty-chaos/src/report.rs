//! The report: `report.md` (what ran, the faults, each check's verdict, the schedule and
//! diagnostics) and `lines.jsonl` (every process line) in the output directory; the markdown
//! is printed too.

#![allow(clippy::print_stdout, reason = "the orchestrator prints its report")]

use std::{
    collections::{BTreeMap, HashSet},
    fmt::Write as _,
    path::Path,
};

use natty_chaos::{Event, Line};

use crate::{
    faults::{Fault, FaultKind, deploys::Fleet},
    judge::Check,
    workload::{Record, group, is_numbered, rolling},
    world::{CANDIDATES, CONSUMERS, TTL_SECS},
};

/// What the report shows.
pub(crate) struct Report<'a> {
    pub(crate) minutes: f64,
    pub(crate) seed: u64,
    /// Numbered messages published.
    pub(crate) total: u64,
    pub(crate) checks: &'a [Check],
    pub(crate) faults: &'a [Fault],
    /// When the faults started (mono ns): times in the report are from here.
    pub(crate) start: u64,
    pub(crate) notes: &'a [String],
    pub(crate) lines: &'a [Line],
    pub(crate) dead_records: &'a [Record],
    pub(crate) fleet: &'a Fleet,
}

impl Report<'_> {
    /// Writes `report.md` and `lines.jsonl` to `out`, and prints the markdown.
    pub(crate) fn write(&self, out: &Path) -> anyhow::Result<()> {
        let md = self.markdown()?;
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join("report.md"), &md)?;
        // Every process line (with `proc` and `mono_ns`), for a post-mortem of a failed check.
        let mut all = String::new();
        for line in self.lines {
            writeln!(all, "{}", serde_json::to_string(line)?)?;
        }
        std::fs::write(out.join("lines.jsonl"), all)?;
        println!("{md}");
        Ok(())
    }

    fn markdown(&self) -> anyhow::Result<String> {
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for f in self.faults {
            *kinds.entry(f.kind.name()).or_default() += 1;
        }
        let count = |k: FaultKind| kinds.get(k.name()).copied().unwrap_or(0);
        let mut md = String::new();
        writeln!(md, "# natty chaos report\n")?;
        writeln!(
            md,
            "{:.1} minutes, seed {}, 3-node cluster (R3 stream and buckets), {CANDIDATES} \
             candidates (TTL {TTL_SECS} s), {CONSUMERS} consumers on one durable, {} numbered \
             messages published; a consumer group of {} members (each through its own proxies) \
             over {} partitions (TTL {TTL_SECS} s, ack_wait {} s) on its own R3 stream.\n",
            self.minutes,
            self.seed,
            self.total,
            group::MEMBERS,
            group::PARTITIONS,
            group::ACK_WAIT_SECS
        )?;
        writeln!(
            md,
            "Rolling deploys meanwhile, over bursts of backlog: {} consumers on a durable \
             (a queue) and one ordered by key on another, both with max_deliver {}, and {} group \
             members over {} partitions ({} unrelated consumers on their stream), every {}th \
             message failing once; {} restarts (the replacement first, then SIGTERM), the \
             members bucket deleted {}, stop deadline {} ms.\n",
            rolling::CONSUMERS,
            rolling::MAX_DELIVER,
            rolling::MEMBERS,
            rolling::PARTITIONS,
            rolling::UNRELATED,
            rolling::FAIL_EVERY,
            self.fleet.restarts,
            self.fleet.crash.as_ref().map_or_else(
                || "never (the run was too short)".to_owned(),
                |c| format!("and then member {} killed", c.proc)
            ),
            rolling::STOP_TIMEOUT.as_millis()
        )?;
        writeln!(md, "## Faults injected\n")?;
        for (k, n) in &kinds {
            writeln!(md, "- {k}: {n}")?;
        }
        let leader_faults = count(FaultKind::FreezeLeader) + count(FaultKind::KillLeader);
        let node_faults = count(FaultKind::KillNode) + count(FaultKind::PartitionNode);
        let member_faults = self
            .faults
            .iter()
            .filter(|f| f.kind.is_member_fault())
            .count();
        writeln!(
            md,
            "\nLeader freezes/kills: {leader_faults}; node faults: {node_faults}; member faults: \
             {member_faults}.\n"
        )?;
        writeln!(
            md,
            "## Checks\n\n| check | verdict | detail |\n|---|---|---|"
        )?;
        for c in self.checks {
            writeln!(
                md,
                "| {} | {} | {} |",
                c.name,
                if c.passed { "pass" } else { "**FAIL**" },
                c.detail
            )?;
        }
        writeln!(
            md,
            "\n## Schedule\n\n| at | fault | target | lasted |\n|---|---|---|---|"
        )?;
        let t0 = self.faults.first().map_or(0, |f| f.start_ns);
        for f in self.faults {
            writeln!(
                md,
                "| {:.1}s | {} | {} | {:.1}s |",
                (f.start_ns - t0) as f64 / 1e9,
                f.kind,
                f.target,
                (f.end_ns - f.start_ns) as f64 / 1e9
            )?;
        }
        writeln!(
            md,
            "\n## Diagnostics\n\nFaults started at CLOCK_MONOTONIC {} ns (times above and below \
             are from there); every process line is in `lines.jsonl` beside this report.\n",
            self.start
        )?;
        for n in self.notes {
            writeln!(md, "- {n}")?;
        }
        writeln!(
            md,
            "\nRepeated processing by 10 s window (a number processed again; first delivery = \
             `delivered` 1):\n\n| from | repeats | of which delivered 1 | numbers | stream seqs \
             |\n|---|---|---|---|---|"
        )?;
        for w in redelivery_windows(self.lines, self.start) {
            writeln!(md, "{w}")?;
        }
        self.dead_lettered_twice(&mut md)?;
        Ok(md)
    }

    /// Numbers dead-lettered more than once: how far apart, at which deliveries.
    fn dead_lettered_twice(&self, md: &mut String) -> anyhow::Result<()> {
        let mut by_n: BTreeMap<u64, Vec<&Record>> = BTreeMap::new();
        for r in self.dead_records {
            by_n.entry(r.n).or_default().push(r);
        }
        let twice: Vec<(u64, f64, String)> = by_n
            .iter()
            .filter(|(_, rs)| rs.len() > 1)
            .map(|(n, rs)| {
                let gap = (rs[rs.len() - 1].stored_unix_ns - rs[0].stored_unix_ns) as f64 / 1e9;
                let deliveries: Vec<&str> = rs.iter().map(|r| r.deliveries.as_str()).collect();
                (*n, gap, deliveries.join("/"))
            })
            .collect();
        if !twice.is_empty() {
            let min = twice.iter().map(|t| t.1).fold(f64::INFINITY, f64::min);
            let max = twice.iter().map(|t| t.1).fold(0.0, f64::max);
            writeln!(
                md,
                "\nDead-lettered more than once: {} numbers, copies {min:.1}s to {max:.1}s \
                 apart; first: {}",
                twice.len(),
                twice
                    .iter()
                    .take(10)
                    .map(|(n, g, d)| format!("{n} ({g:.1}s, deliveries {d})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )?;
        }
        Ok(())
    }
}

/// Table rows: per 10 s window (from `start`), how many `processed` lines repeated a number
/// already processed, how many of those were first deliveries, and their ranges.
fn redelivery_windows(lines: &[Line], start: u64) -> Vec<String> {
    let mut seen: HashSet<u64> = HashSet::new();
    let mut processed: Vec<(u64, u64, u64, u64)> = lines
        .iter()
        .filter(|l| is_numbered(l))
        .filter_map(|l| match l.event {
            Event::Processed {
                n, delivered, seq, ..
            } => Some((l.mono_ns, n, delivered, seq)),
            _ => None,
        })
        .collect();
    processed.sort_by_key(|p| p.0);
    // window -> (repeats, delivered 1, min n, max n, min seq, max seq)
    let mut windows: BTreeMap<i64, (u64, u64, u64, u64, u64, u64)> = BTreeMap::new();
    for (mono, n, delivered, seq) in processed {
        if seen.insert(n) {
            continue;
        }
        let at = (i128::from(mono) - i128::from(start)) / 10_000_000_000;
        let w = windows.entry(i64::try_from(at).unwrap_or(0)).or_insert((
            0,
            0,
            u64::MAX,
            0,
            u64::MAX,
            0,
        ));
        w.0 += 1;
        w.1 += u64::from(delivered == 1);
        w.2 = w.2.min(n);
        w.3 = w.3.max(n);
        w.4 = w.4.min(seq);
        w.5 = w.5.max(seq);
    }
    windows
        .iter()
        .map(|(at, (k, d1, n0, n1, s0, s1))| {
            format!("| {}s | {k} | {d1} | {n0}..={n1} | {s0}..={s1} |", at * 10)
        })
        .collect()
}
