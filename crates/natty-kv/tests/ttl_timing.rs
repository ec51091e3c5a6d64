//! When does the server expire a per-key TTL, measured: never before the write's stored
//! timestamp + TTL, nor before the client's send time + TTL (what the election's self-fencing
//! relies on: a leader trusts its lease until `sent + ttl - margin`). Also a write conditioned
//! on the key's revision that lands right at the previous write's expiry: if the server acks
//! it *after* that expiry, the expiry marker may wipe it (measured; see `renew_at_expiry_trials`).
//! On one server (R1) and on a 3-node cluster (R3). `#[ignore]`d: needs Docker.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    reason = "in a test a panic is the failure report; durations in ms for the report"
)]

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use natty_core::ConnectOptions;
use natty_kv::{BucketConfig, EventKind, Kv};
use natty_testkit::{Nats, NatsCluster, init_tracing};

mod common;
use common::bucket;

/// The TTL the election uses by default in the chaos run.
const TTL: Duration = Duration::from_secs(2);

/// Re-writes at expiry per key (6 keys at once).
const TRIALS: usize = 20;

/// Signed milliseconds `a - b`.
fn ms(a: SystemTime, b: SystemTime) -> f64 {
    match a.duration_since(b) {
        Ok(d) => d.as_secs_f64() * 1000.0,
        Err(e) => -e.duration().as_secs_f64() * 1000.0,
    }
}

/// One key, `trials` times: write it with `TTL`, wait for its expiry marker on a watch;
/// returns, per trial, (marker ts - (write ts + TTL), marker ts - (client send + TTL)) in ms.
/// Negative = the server expired it early.
async fn expiry_trials(kv: Kv, b: String, key: String, trials: usize) -> Vec<(f64, f64)> {
    let mut watch = kv.watch_key(&b, &key).await.unwrap();
    let mut out = Vec::new();
    for _ in 0..trials {
        let sent = SystemTime::now();
        let rev = kv.create_with_ttl(&b, &key, "v".into(), TTL).await.unwrap();
        let mut written = None;
        loop {
            let e = tokio::time::timeout(TTL * 3, watch.next())
                .await
                .expect("an expiry within 3 x TTL")
                .unwrap()
                .unwrap();
            if e.revision == rev && e.kind == EventKind::Put {
                written = Some(e.created);
            } else if e.revision > rev && e.kind != EventKind::Put {
                let w = written.expect("the write before its marker");
                let (by_ts, by_sent) = (ms(e.created, w + TTL), ms(e.created, sent + TTL));
                out.push((by_ts, by_sent));
                break;
            }
        }
    }
    out
}

/// One key, `trials` times: write it with `TTL`, then re-write it conditioned on that
/// revision at (its server timestamp + TTL + offset), offset swept over [-30 ms, +10 ms).
/// When the server acks the re-write, the key must stay live (no marker after it) until the
/// re-write's own timestamp + TTL — unless it raced the old write's expiry: measured, the
/// server (2.15.1, R3 and R1) may ack a re-write that arrives at the old write's expiry and
/// then wipe it with the old write's expiry marker (a rollup; see
/// docs/upstream/ttl-marker-wipes-acked-write.md). Returns (acked re-writes, for each wiped
/// one: when its ack came, in ms after the old write's ts + TTL).
async fn renew_at_expiry_trials(
    kv: Kv,
    b: String,
    key: String,
    trials: usize,
    seed: u64,
) -> (usize, Vec<f64>) {
    let mut watch = kv.watch_key(&b, &key).await.unwrap();
    let (mut acked, mut wiped) = (0, Vec::new());
    for i in 0..trials {
        let rev = kv.create_with_ttl(&b, &key, "v".into(), TTL).await.unwrap();
        let written = loop {
            let e = watch.next().await.unwrap().unwrap();
            if e.revision == rev {
                break e.created;
            }
        };
        let offset_us = ((seed + i as u64 * 7919) % 40_000) as i64 - 30_000;
        let at = if offset_us >= 0 {
            written + TTL + Duration::from_micros(offset_us as u64)
        } else {
            written + TTL - Duration::from_micros((-offset_us) as u64)
        };
        if let Ok(wait) = at.duration_since(SystemTime::now()) {
            tokio::time::sleep(wait).await;
        }
        let renew_sent = SystemTime::now();
        // Sent raw: natty's `update_with_ttl` now detects and reports this race (issue 25 item
        // 12, `expiry_race.rs`); this measures the server.
        let renewed = raw_update(&kv, &b, &key, rev).await;
        let acked_at = SystemTime::now();
        let Ok(rev2) = renewed else {
            // Too late: expired first. Wait for the marker so the next trial starts clean.
            loop {
                let e = tokio::time::timeout(TTL * 3, watch.next())
                    .await
                    .expect("the marker")
                    .unwrap()
                    .unwrap();
                if e.revision > rev && e.kind != EventKind::Put {
                    break;
                }
            }
            continue;
        };
        acked += 1;
        // The re-write is live until its own ts + TTL: any marker after it must come later.
        let mut rewritten = None;
        loop {
            let e = tokio::time::timeout(TTL * 3, watch.next())
                .await
                .expect("the re-write's expiry within 3 x TTL")
                .unwrap()
                .unwrap();
            if e.revision == rev2 {
                rewritten = Some(e.created);
            } else if e.revision > rev2 && e.kind != EventKind::Put {
                let r = rewritten.unwrap_or(e.created);
                let early = ms(r + TTL, e.created);
                if early > 0.0 {
                    eprintln!(
                        "wiped: re-write sent {:.1} ms, acked {:.1} ms after the old write's \
                         ts + ttl; marker {:.1} ms after it; re-write seen: {}",
                        ms(renew_sent, written + TTL),
                        ms(acked_at, written + TTL),
                        ms(e.created, written + TTL),
                        rewritten.is_some()
                    );
                    wiped.push(ms(acked_at, written + TTL));
                }
                break;
            }
        }
    }
    (acked, wiped)
}

/// An update conditioned on `rev` with `TTL`, published as natty did before it guarded the
/// expiry race: the revision, or an error for a failed compare-and-set.
async fn raw_update(kv: &Kv, b: &str, key: &str, rev: u64) -> anyhow::Result<u64> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Nats-Expected-Last-Subject-Sequence",
        rev.to_string().as_str(),
    );
    headers.insert("Nats-TTL", TTL.as_secs().to_string().as_str());
    let ack = kv
        .client()
        .jetstream()
        .publish_with_headers(format!("$KV.{b}.{key}"), headers, "r".into())
        .await?
        .await?;
    Ok(ack.sequence)
}

fn summary(name: &str, v: &[(f64, f64)]) -> (f64, f64) {
    let min_ts = v.iter().map(|x| x.0).fold(f64::INFINITY, f64::min);
    let max_ts = v.iter().map(|x| x.0).fold(f64::NEG_INFINITY, f64::max);
    let min_sent = v.iter().map(|x| x.1).fold(f64::INFINITY, f64::min);
    eprintln!(
        "{name}: {} expiries; marker - (write ts + ttl): min {min_ts:.1} ms, max {max_ts:.1} ms; \
         marker - (client send + ttl): min {min_sent:.1} ms",
        v.len()
    );
    (min_ts, min_sent)
}

async fn measure(kv: Kv, replicas: usize, name: &str) {
    let b = bucket();
    kv.create_bucket(BucketConfig::new(&b).replicas(replicas).per_key_ttl(true))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for k in 0..6 {
        tasks.push(tokio::spawn(expiry_trials(
            kv.clone(),
            b.clone(),
            format!("k{k}"),
            8,
        )));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let (min_ts, min_sent) = summary(name, &all);
    let mut tasks = Vec::new();
    for k in 0..6 {
        tasks.push(tokio::spawn(renew_at_expiry_trials(
            kv.clone(),
            b.clone(),
            format!("r{k}"),
            TRIALS,
            k * 1231,
        )));
    }
    let (mut acked, mut wiped) = (0, Vec::new());
    for t in tasks {
        let (a, w) = t.await.unwrap();
        acked += a;
        wiped.extend(w);
    }
    eprintln!(
        "{name}: re-writes at the previous write's expiry: {} sent, {acked} acked, {} wiped by a \
         marker before their own ttl (acked {wiped:?} ms after the old write's ts + ttl)",
        6 * TRIALS,
        wiped.len()
    );
    assert!(min_ts >= 0.0, "{name}: expired {min_ts} ms before ts + ttl");
    assert!(
        min_sent >= 0.0,
        "{name}: expired {min_sent} ms before send + ttl"
    );
    // What the election relies on: only a re-write answered at or after the old write's
    // expiry can be wiped (so a reply that arrives before `sent + ttl` of the old write is
    // safe to trust).
    assert!(
        wiped.iter().all(|acked| *acked >= 0.0),
        "{name}: a re-write acked before the old write's expiry was wiped: acks at {wiped:?} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker"]
async fn per_key_ttl_never_expires_early_on_one_server() -> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start().await?;
    let kv = Kv::new(ConnectOptions::new([nats.url()]).connect().await?);
    measure(kv, 1, "R1").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker"]
async fn per_key_ttl_never_expires_early_on_a_cluster() -> anyhow::Result<()> {
    init_tracing();
    let cluster = NatsCluster::start(3).await?;
    cluster.wait_meta_leader().await?;
    let kv = Kv::new(ConnectOptions::new(cluster.urls()).connect().await?);
    measure(kv, 3, "R3").await;
    Ok(())
}
