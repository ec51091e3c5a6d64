//! Issue 25 item 12: an update or refresh conditioned on a revision that expires as the write
//! reaches the server can be acknowledged and then removed by that revision's expiry marker
//! (`docs/upstream/ttl-marker-wipes-acked-write.md`). natty must never answer `Ok` for such a
//! write: every `Ok` revision stays live until its own TTL. Swept on a 3-node cluster (where
//! the race was measured), through the handle that wrote the base revision (its own memory
//! decides) and through another handle (the base's server timestamp decides).
//! `#[ignore]`d: needs Docker.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    reason = "in a test a panic is the failure report; offsets in microseconds"
)]

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use natty_core::ConnectOptions;
use natty_kv::{BucketConfig, ErrorKind, EventKind, Kv};
use natty_testkit::{NatsCluster, init_tracing};

mod common;
use common::bucket;

const TTL: Duration = Duration::from_secs(2);
const KEYS: u64 = 12;
const TRIALS: u64 = 15;

#[derive(Debug, Default)]
struct Tally {
    acked: usize,
    /// `Ok` revisions an expiry marker removed before their own TTL: must stay empty.
    wiped_after_ok: Vec<String>,
    /// Reported as expired (`KeyNotFound` / `RevisionMismatch` after the write): the key must
    /// really be gone.
    reported_expired: usize,
    reported_but_live: Vec<String>,
}

/// One key: `TRIALS` times, create it with `TTL`, then update it conditioned on that revision
/// right at its expiry (offset swept over [-5 ms, +15 ms) of its server timestamp + TTL).
async fn trials(writer: Kv, updater: Kv, b: String, key: String, seed: u64) -> Tally {
    let mut watch = writer.watch_key(&b, &key).await.unwrap();
    let mut tally = Tally::default();
    for i in 0..TRIALS {
        let rev = writer
            .create_with_ttl(&b, &key, "v".into(), TTL)
            .await
            .unwrap();
        let written = loop {
            let e = watch.next().await.unwrap().unwrap();
            if e.revision == rev {
                break e.created;
            }
        };
        let offset_us = ((seed + i * 7919) % 20_000) as i64 - 5_000;
        let at = if offset_us >= 0 {
            written + TTL + Duration::from_micros(offset_us as u64)
        } else {
            written + TTL - Duration::from_micros((-offset_us) as u64)
        };
        if let Ok(wait) = at.duration_since(SystemTime::now()) {
            tokio::time::sleep(wait).await;
        }
        let renewed = updater
            .update_with_ttl(&b, &key, "r".into(), rev, TTL)
            .await;
        let answered = SystemTime::now();
        // Follow the key until the marker after the base (and after our write, if stored).
        let mut ours_seen = None;
        let marker = loop {
            let e = tokio::time::timeout(TTL * 4, watch.next())
                .await
                .expect("a marker within 4 x TTL")
                .unwrap()
                .unwrap();
            match (&renewed, e.kind) {
                (Ok(rev2), EventKind::Put) if e.revision == *rev2 => ours_seen = Some(e.created),
                (Ok(rev2), kind) if e.revision > *rev2 && kind != EventKind::Put => break e,
                (Err(_), kind) if e.revision > rev && kind != EventKind::Put => break e,
                _ => {}
            }
        };
        match renewed {
            Ok(rev2) => {
                tally.acked += 1;
                let stored = ours_seen.unwrap_or(answered);
                if marker.created < stored + TTL - Duration::from_millis(50) {
                    tally.wiped_after_ok.push(format!(
                        "{key}: revision {rev2} (sent {offset_us} us after the base's ts + ttl) \
                         answered Ok, removed by marker {} {:?} after it",
                        marker.revision,
                        marker.created.duration_since(stored).unwrap_or_default()
                    ));
                }
            }
            Err(e) if e.kind() == ErrorKind::RevisionMismatch => {
                tally.reported_expired += 1;
                // Expired before or as the write landed: the marker is the key's next event.
                if marker.created > answered + Duration::from_millis(500) {
                    tally
                        .reported_but_live
                        .push(format!("{key}: {e} but the key expired only later"));
                }
            }
            Err(e) => panic!("{key}: unexpected error {e}"),
        }
    }
    tally
}

async fn sweep(kv: &Kv, other: &Kv, b: &str) -> Tally {
    let mut tasks = Vec::new();
    for k in 0..KEYS {
        // Half the keys are updated by the handle that wrote the base, half by another one.
        let updater = if k % 2 == 0 {
            kv.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(trials(
            kv.clone(),
            updater,
            b.to_owned(),
            format!("k{k}"),
            k * 1231,
        )));
    }
    let mut all = Tally::default();
    for t in tasks {
        let t = t.await.unwrap();
        all.acked += t.acked;
        all.wiped_after_ok.extend(t.wiped_after_ok);
        all.reported_expired += t.reported_expired;
        all.reported_but_live.extend(t.reported_but_live);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn an_update_at_its_bases_expiry_is_never_ok_and_then_wiped() -> anyhow::Result<()> {
    init_tracing();
    let cluster = NatsCluster::start(3).await?;
    cluster.wait_meta_leader().await?;
    let kv = Kv::new(ConnectOptions::new(cluster.urls()).connect().await?);
    let other = Kv::new(ConnectOptions::new(cluster.urls()).connect().await?);
    let b = bucket();
    kv.create_bucket(BucketConfig::new(&b).replicas(3).per_key_ttl(true))
        .await?;
    let tally = sweep(&kv, &other, &b).await;
    eprintln!("{tally:#?}");
    assert!(
        tally.wiped_after_ok.is_empty(),
        "{} writes answered Ok were removed by their base's expiry marker: {:?}",
        tally.wiped_after_ok.len(),
        tally.wiped_after_ok
    );
    assert!(
        tally.reported_but_live.is_empty(),
        "{:?}",
        tally.reported_but_live
    );
    assert!(tally.acked > 0 && tally.reported_expired > 0, "{tally:?}");
    Ok(())
}
