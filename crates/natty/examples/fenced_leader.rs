//! Fenced writes: a leader's writes that the server refuses once it is deposed.
//!
//! Two candidates; the leader writes `balance` with `Leadership::put` (one atomic batch with
//! its lease, server 2.12+). It hands over; its successor writes; then the old leader's
//! `Leadership` — standing in for a leader that was paused mid-write — tries once more, and
//! the server refuses: `Deposed`. The key, read with a plain `Kv::get`, keeps the successor's
//! value.
//!
//! `NATS_URL=nats://127.0.0.1:4222 cargo run -p natty --example fenced_leader`
#![allow(clippy::print_stdout, reason = "an example prints what it does")]

use std::time::Duration;

use natty::election::ErrorKind;
use natty::{CancellationToken, ConnectOptions, ElectionConfig, Leadership, Natty};
use tokio::sync::mpsc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let bucket = format!("fenced_{}", std::process::id());
    let natty = Natty::connect(ConnectOptions::new([url])).await?;
    let (elected_tx, mut elected) = mpsc::unbounded_channel::<(&str, Leadership)>();
    let mut candidates = Vec::new();
    for node in ["alpha", "beta"] {
        let election = natty
            .election(ElectionConfig::new(&bucket, "ledger", node).ttl(Duration::from_secs(3)))?;
        let cancel = CancellationToken::new();
        let tx = elected_tx.clone();
        let (e, c) = (election.clone(), cancel.clone());
        let task = tokio::spawn(async move {
            e.run(c, move |lead: Leadership| {
                let tx = tx.clone();
                async move {
                    let lost = lead.lost.clone();
                    let _ = tx.send((node, lead));
                    lost.cancelled().await;
                }
            })
            .await
        });
        candidates.push((node, election, cancel, task));
    }
    let next = async |rx: &mut mpsc::UnboundedReceiver<(&'static str, Leadership)>| {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("no leader"))
    };

    let (first, old) = next(&mut elected).await?;
    old.put("balance", "100").await?;
    println!("{first} leads (term {}) and wrote balance = 100", old.term);

    // The leader hands over (a pause past its lease would do the same, only slower).
    let idx = candidates
        .iter()
        .position(|c| c.0 == first)
        .expect("a candidate");
    let (_, election, cancel, task) = candidates.remove(idx);
    cancel.cancel();
    task.await??;
    let (second, new) = next(&mut elected).await?;
    new.put("balance", "250").await?;
    println!("{second} leads (term {}) and wrote balance = 250", new.term);

    match old.put("balance", "90").await {
        Err(e) if e.kind() == ErrorKind::Deposed => println!("{first}'s late write: {e}"),
        other => anyhow::bail!("a deposed leader's write must be refused, got {other:?}"),
    }
    let stored = natty
        .kv()
        .get(&bucket, &election.fenced_key("balance"))
        .await?;
    let value = stored.map(|e| String::from_utf8_lossy(&e.value).into_owned());
    println!("balance, read with Kv::get: {value:?}");
    anyhow::ensure!(value.as_deref() == Some("250"));

    for (_, _, cancel, task) in candidates {
        cancel.cancel();
        task.await??;
    }
    Ok(())
}
