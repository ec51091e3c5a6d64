//! Metrics (feature `metrics`) against a real NATS server, read through a `metrics-util`
//! DebuggingRecorder: the leader flag, the term, elections and losses move as leadership passes
//! from one candidate to another, and the lease's KV operations are timed.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

mod common;

use std::time::Duration;

use common::{Candidate, Recorder, config};
use natty_testkit::{Nats, Recorded, init_tracing, unique_name, wait_for};

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn leader_flag_term_elections_and_losses_move() -> anyhow::Result<()> {
    init_tracing();
    let recorded = Recorded::install();
    let nats = Nats::start().await?;
    let rec = Recorder::default();
    let b = unique_name("el").replace('-', "_");
    let labels = |node: &str| format!("bucket={b},key=leader,node={node}");
    let gauge = |name: &str, node: &str| {
        recorded.read(|t| t.gauge(&format!("natty_election_{name},{}", labels(node))))
    };
    let counter = |name: &str, node: &str| {
        recorded.read(|t| t.counter(&format!("natty_election_{name},{}", labels(node))))
    };

    let first = Candidate::start(&nats.url(), config(&b, "leader", "a"), &rec).await?;
    wait_for("a leads", Duration::from_secs(10), || {
        std::future::ready((gauge("leader", "a") == Some(1.0)).then_some(()))
    })
    .await?;
    let second = Candidate::start(&nats.url(), config(&b, "leader", "b"), &rec).await?;
    let term_a = first.election.current_term().unwrap();
    assert_eq!(counter("elections_total", "a"), 1);
    #[allow(clippy::cast_precision_loss, reason = "a small revision")]
    let revision_a = term_a.revision as f64;
    assert_eq!(gauge("term", "a"), Some(revision_a));
    // The follower sees the leader's term and does not lead.
    wait_for("b sees a's term", Duration::from_secs(10), || {
        std::future::ready((gauge("term", "b") == Some(revision_a)).then_some(()))
    })
    .await?;
    assert_eq!(gauge("leader", "b"), Some(0.0));

    // a resigns: one loss (Resigned) for a, b is elected in a higher term.
    first.stop().await?;
    assert_eq!(gauge("leader", "a"), Some(0.0));
    assert_eq!(
        recorded.read(|t| t.counter(&format!(
            "natty_election_losses_total,{},reason=Resigned",
            labels("a")
        ))),
        1
    );
    wait_for("b leads", Duration::from_secs(10), || {
        std::future::ready((gauge("leader", "b") == Some(1.0)).then_some(()))
    })
    .await?;
    assert_eq!(counter("elections_total", "b"), 1);
    assert!(gauge("term", "b").unwrap() > revision_a);
    second.stop().await?;
    assert_eq!(gauge("leader", "b"), Some(0.0));
    assert_eq!(counter("elections_total", "a"), 1, "a was elected once");

    // The lease lives in natty-kv: its operations are timed under the election's bucket.
    let creates =
        recorded.read(|t| t.samples(&format!("natty_kv_op_seconds,op=create,bucket={b}")));
    assert!(creates >= 2, "a's and b's lease creations: {creates}");
    // A dashboard's HELP text and unit: every metric recorded was described (`describe_*`).
    let undescribed = recorded.read(natty_testkit::Totals::undescribed);
    assert_eq!(
        undescribed,
        Vec::<String>::new(),
        "metrics without a description"
    );
    Ok(())
}
