//! Issue 25 item 14: a conditional write whose answer is lost while the bucket's stream leader
//! is killed is retried (same `Nats-Msg-Id`); its retry must never be reported
//! `RevisionMismatch` when the first attempt was stored. One writer only, so every
//! `RevisionMismatch` would be false: the writer conditions each update on the revision its
//! previous one returned (or, after a `TimedOut`, on the revision the stream leader holds).
//! History 1, so the new leader cannot find an overwritten message of ours.
//! `#[ignore]`d: needs Docker.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use natty_core::ConnectOptions;
use natty_kv::{BucketConfig, ErrorKind, Kv};
use natty_testkit::{NatsCluster, init_tracing};

mod common;
use common::{bucket, judge, stream_leader};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_retried_update_after_a_leader_change_is_never_a_false_mismatch() -> anyhow::Result<()> {
    init_tracing();
    let cluster = Arc::new(NatsCluster::start(3).await?);
    cluster.wait_meta_leader().await?;
    let b = bucket();
    let kv = Kv::new(
        ConnectOptions::new(cluster.urls())
            .request_timeout(Duration::from_secs(1))
            .connect()
            .await?,
    )
    .retry_for(Duration::from_secs(20));
    kv.create_bucket(BucketConfig::new(&b).replicas(3).history(1))
        .await?;

    let done = Arc::new(AtomicBool::new(false));
    let faults = {
        let (cluster, done, b) = (cluster.clone(), done.clone(), b.clone());
        tokio::spawn(async move {
            let result = async {
                for round in 0..4 {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let js = judge(cluster.node(round % 3).url()).await?;
                    let leader = stream_leader(&js, &b).await?;
                    let node = cluster.node(cluster.index_of(&leader).unwrap());
                    node.kill().await?;
                    tokio::time::sleep(Duration::from_secs(4)).await;
                    node.start_again().await?;
                    cluster.wait_meta_leader().await?;
                }
                tokio::time::sleep(Duration::from_secs(3)).await;
                anyhow::Ok(())
            }
            .await;
            done.store(true, Ordering::SeqCst);
            result
        })
    };

    let (mut ok, mut unknown) = (0usize, 0usize);
    let mut false_mismatches = Vec::new();
    let mut rev = kv.put(&b, "k", "0".into()).await?;
    let mut i = 0u64;
    while !done.load(Ordering::SeqCst) {
        i += 1;
        match kv.update(&b, "k", i.to_string().into(), rev).await {
            Ok(r) => {
                ok += 1;
                rev = r;
            }
            Err(e) if e.kind() == ErrorKind::RevisionMismatch => {
                false_mismatches.push(format!("update {i} on {rev}: {e}"));
                rev = current(&kv, &b).await?;
            }
            Err(e) => {
                unknown += 1;
                eprintln!("update {i}: {e}");
                rev = current(&kv, &b).await?;
            }
        }
    }
    faults.await??;
    eprintln!(
        "{ok} updates Ok, {unknown} unknown outcomes, {} false mismatches",
        false_mismatches.len()
    );
    assert!(
        false_mismatches.is_empty(),
        "{} updates reported RevisionMismatch with no other writer: {false_mismatches:#?}",
        false_mismatches.len()
    );
    assert!(ok > 50, "too few updates went through: {ok}");
    Ok(())
}

/// Two writers race on one key (each reads, then updates conditioned on what it read) while
/// the stream leader is killed and restarted; history 1, so an overwritten write is gone from
/// the store. A judge watches every value stored: an update reported `RevisionMismatch` whose
/// value the judge saw stored is a false conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn racing_writers_across_leader_changes_get_no_false_mismatch() -> anyhow::Result<()> {
    init_tracing();
    let cluster = Arc::new(NatsCluster::start(3).await?);
    cluster.wait_meta_leader().await?;
    let b = bucket();
    let connect = || async {
        anyhow::Ok(
            Kv::new(
                ConnectOptions::new(cluster.urls())
                    .request_timeout(Duration::from_secs(1))
                    .connect()
                    .await?,
            )
            .retry_for(Duration::from_secs(20)),
        )
    };
    let judge_kv = connect().await?;
    judge_kv
        .create_bucket(BucketConfig::new(&b).replicas(3).history(1))
        .await?;
    judge_kv.put(&b, "k", "start".into()).await?;
    let mut watch = judge_kv.watch_key(&b, "k").await?;
    let seen = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let observer = {
        let seen = seen.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            while let Some(event) = watch.next().await {
                if let Ok(e) = event
                    && e.kind == natty_kv::EventKind::Put
                {
                    seen.lock()
                        .unwrap()
                        .insert(String::from_utf8_lossy(&e.value).into_owned());
                }
            }
        })
    };

    let done = Arc::new(AtomicBool::new(false));
    let faults = {
        let (cluster, done, b) = (cluster.clone(), done.clone(), b.clone());
        tokio::spawn(async move {
            let result = async {
                for round in 0..5 {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let js = judge(cluster.node(round % 3).url()).await?;
                    let leader = stream_leader(&js, &b).await?;
                    let node = cluster.node(cluster.index_of(&leader).unwrap());
                    node.kill().await?;
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    node.start_again().await?;
                    cluster.wait_meta_leader().await?;
                }
                tokio::time::sleep(Duration::from_secs(3)).await;
                anyhow::Ok(())
            }
            .await;
            done.store(true, Ordering::SeqCst);
            result
        })
    };
    let mut writers = Vec::new();
    for w in ["a", "b"] {
        let (kv, done, b) = (connect().await?, done.clone(), b.clone());
        writers.push(tokio::spawn(async move {
            let (mut ok, mut mismatches, mut unknown) = (0usize, Vec::new(), 0usize);
            let mut i = 0u64;
            while !done.load(Ordering::SeqCst) {
                i += 1;
                let Ok(Some(entry)) = kv.get(&b, "k").await else {
                    continue;
                };
                let value = format!("{w}{i}");
                match kv
                    .update(&b, "k", value.clone().into(), entry.revision)
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(e) if e.kind() == ErrorKind::RevisionMismatch => {
                        mismatches.push((value, e.to_string()));
                    }
                    Err(_) => unknown += 1,
                }
            }
            (ok, mismatches, unknown)
        }));
    }
    let mut reported = Vec::new();
    let (mut ok, mut unknown) = (0, 0);
    for w in writers {
        let (o, m, u) = w.await?;
        ok += o;
        unknown += u;
        reported.extend(m);
    }
    faults.await??;
    // Let the judge see the last writes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    observer.abort();
    let seen = seen.lock().unwrap().clone();
    let false_mismatches: Vec<_> = reported
        .iter()
        .filter(|(value, _)| seen.contains(value))
        .collect();
    eprintln!(
        "{ok} updates Ok, {} mismatches, {unknown} unknown outcomes, {} values stored, {} false \
         mismatches",
        reported.len(),
        seen.len(),
        false_mismatches.len()
    );
    assert!(
        false_mismatches.is_empty(),
        "updates reported RevisionMismatch although stored: {false_mismatches:#?}"
    );
    assert!(ok > 50, "too few updates went through: {ok}");
    Ok(())
}

/// The key's revision as the stream leader has it (retrying while there is none).
async fn current(kv: &Kv, b: &str) -> anyhow::Result<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match kv.history(b, "k").await {
            Ok(h) if !h.is_empty() => return Ok(h.last().unwrap().revision),
            other if tokio::time::Instant::now() > deadline => {
                anyhow::bail!("no revision of the key: {other:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
