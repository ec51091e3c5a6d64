//! Three candidates in one process elect a leader; the leader shuts down (and resigns); the
//! hand-over is printed with its duration.
//!
//! `NATS_URL=nats://127.0.0.1:4222 cargo run -p natty --example election`
#![allow(clippy::print_stdout, reason = "an example prints what it does")]

use std::time::{Duration, Instant};

use natty::{CancellationToken, ConnectOptions, ElectionConfig, Natty};
use tokio::sync::mpsc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let bucket = format!("elections_{}", std::process::id());
    let (elected_tx, mut elected) =
        mpsc::unbounded_channel::<(String, natty::election::Term, Instant)>();
    let mut candidates = Vec::new();
    for node in ["alpha", "beta", "gamma"] {
        let natty = Natty::connect(ConnectOptions::new([url.clone()])).await?;
        let election = natty.election(
            ElectionConfig::new(&bucket, "report-job", node).ttl(Duration::from_secs(3)),
        )?;
        let cancel = CancellationToken::new();
        let tx = elected_tx.clone();
        let (e, c) = (election.clone(), cancel.clone());
        let task = tokio::spawn(async move {
            e.run(c, move |lead| {
                let tx = tx.clone();
                let node = node.to_owned();
                async move {
                    let _ = tx.send((node, lead.term, Instant::now()));
                    lead.lost.cancelled().await;
                }
            })
            .await
        });
        candidates.push((node, cancel, task));
    }
    let started = Instant::now();
    let (leader, term, at) = tokio::time::timeout(Duration::from_secs(10), elected.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no leader"))?;
    println!(
        "{leader} leads (term {term}), elected {:?} after the candidates started",
        at - started
    );

    let idx = candidates
        .iter()
        .position(|(n, ..)| *n == leader)
        .expect("a candidate");
    let (_, cancel, task) = candidates.remove(idx);
    let shutdown = Instant::now();
    cancel.cancel();
    task.await??;
    let (next, next_term, at) = tokio::time::timeout(Duration::from_secs(10), elected.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no new leader"))?;
    println!(
        "{leader} shut down and resigned; {next} took over (term {next_term}) {:?} later",
        at - shutdown
    );
    for (_, cancel, task) in candidates {
        cancel.cancel();
        task.await??;
    }
    Ok(())
}
