//! Fenced writes with candidate *processes* (examples/candidate.rs `--fenced-key`): a leader
//! frozen with SIGSTOP while it writes is replaced; its successor writes the same key; the
//! frozen leader resumes and its writes — from a task that ignores `lost`, the stale writer
//! fencing exists for — come back `Deposed`, and the key keeps the successor's value. The
//! verdicts come from the JSON lines the candidates print. `#[ignore]`d: `cargo xtask
//! integration` runs it.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use std::time::Duration;

use natty_core::ConnectOptions;
use natty_kv::Kv;
use natty_testkit::{
    Nats, init_tracing,
    procs::{Event, Line, Lines, Term, mono_ns, sibling_binary, signal},
    unique_name, wait_for,
};
use tokio::process::{Child, Command};

const TTL_SECS: u64 = 1;
const ROUNDS: usize = 20;

fn elected_after(l: &Line, after: Option<Term>) -> bool {
    matches!(l.event, Event::Elected { .. }) && l.term() > after
}

fn sink(l: &Line, node: &str, term: Term, accepted: bool) -> bool {
    l.node == node
        && matches!(l.event, Event::Sink { term: t, accepted: a, .. } if t == term && a == accepted)
}

/// Prints what the candidates said (all but their work lines), for a failure's report.
fn dump(lines: &Lines) {
    for l in lines
        .all()
        .iter()
        .filter(|l| !matches!(l.event, Event::Work { .. }))
    {
        eprintln!("{l:?}");
    }
    eprintln!("unreadable: {:?}", lines.unreadable());
}

fn spawn(url: &str, bucket: &str, node: &str, lines: &Lines) -> anyhow::Result<Child> {
    let mut cmd = Command::new(sibling_binary("candidate", true)?);
    cmd.args(["--server", url, "--bucket", bucket, "--key", "leader"])
        .args(["--node", node, "--ttl", &TTL_SECS.to_string()])
        .args(["--work-interval-ms", "20", "--fenced-key", "x"]);
    lines.spawn(cmd, node)
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_frozen_leaders_fenced_writes_are_refused_after_its_successor_wrote() -> anyhow::Result<()>
{
    init_tracing();
    let nats = Nats::start().await?;
    let bucket = unique_name("fenced").replace('-', "_");
    let kv = Kv::new(ConnectOptions::new([nats.url()]).connect().await?);
    let lines = Lines::default();
    let mut procs = std::collections::HashMap::new();
    for n in ["a", "b"] {
        procs.insert(n.to_owned(), spawn(&nats.url(), &bucket, n, &lines)?);
    }
    let pid = |node: &str| procs[node].id().unwrap();
    let stored = "leader.fenced.x";
    let mut stale_accepted = Vec::new();
    // The current leader: the first one, then each round's successor.
    let mut elected = wait_for("a leader", Duration::from_secs(10), || async {
        lines.find(|l| elected_after(l, None))
    })
    .await
    .inspect_err(|_| dump(&lines))?;
    for round in 0..ROUNDS {
        // One of the leader's fenced writes accepted.
        let (node, term) = (elected.node.clone(), elected.term().unwrap());
        wait_for(
            "the leader's fenced write",
            Duration::from_secs(5),
            || async { lines.find(|l| sink(l, &node, term, true)) },
        )
        .await?;

        signal(pid(&node), "-STOP").await?;
        // "After the freeze" starts when the process is stopped, not when the signal was
        // sent: a write issued in between is a live leader's and may be accepted.
        wait_for("the leader stopped", Duration::from_secs(5), || async {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid(&node))).ok()?;
            // The state follows the command name in parentheses: "T" for stopped.
            let state = stat.rsplit_once(") ")?.1.split(' ').next()?;
            (state == "T" || state == "t").then_some(())
        })
        .await?;
        let frozen_at = mono_ns();
        let successor = wait_for("a successor", Duration::from_secs(TTL_SECS + 5), || async {
            lines.find(|l| elected_after(l, Some(term)))
        })
        .await
        .inspect_err(|_| dump(&lines))?;
        let (next, next_term) = (successor.node.clone(), successor.term().unwrap());
        assert_ne!(
            next, node,
            "round {round}: a frozen process cannot be elected"
        );
        wait_for(
            "the successor's fenced write",
            Duration::from_secs(5),
            || async { lines.find(|l| sink(l, &next, next_term, true)) },
        )
        .await?;
        signal(pid(&node), "-CONT").await?;

        // The resumed leader's writer is refused (its loop ends there)...
        wait_for(
            "the stale write refused",
            Duration::from_secs(5),
            || async { lines.find(|l| sink(l, &node, term, false)) },
        )
        .await?;
        // ...and no write it issued after the freeze was accepted.
        stale_accepted.extend(lines.all().into_iter().filter(|l| {
            sink(l, &node, term, true)
                && matches!(l.event, Event::Sink { issued_ns, .. } if issued_ns > frozen_at)
        }));
        // The key holds the successor's value.
        let value = kv.get(&bucket, stored).await?.map(|e| e.value);
        let value = String::from_utf8_lossy(value.as_deref().unwrap_or_default()).into_owned();
        let expected = format!("{next}@{}.{}", next_term.epoch, next_term.revision);
        assert_eq!(
            value, expected,
            "round {round}: the key must hold the successor's value"
        );
        elected = successor;
    }
    assert!(
        stale_accepted.is_empty(),
        "{} stale writes accepted: {stale_accepted:?}",
        stale_accepted.len()
    );
    assert_eq!(lines.unreadable(), Vec::<String>::new());
    for node in ["a", "b"] {
        signal(pid(node), "-TERM").await?;
    }
    Ok(())
}
