//! A group fed by a publisher that knows nothing of natty: a raw async-nats JetStream publish
//! to the un-partitioned subject `<in>.<key>`, and a stream whose subject transform
//! (`{{partition(12,1)}}`, nats-server's own) puts the partition in the subject. Each message
//! must reach the member that owns natty's partition of its key, in per-key order — natty's
//! key → partition mapping is the server's. (async-nats through natty-core's re-export: the
//! same crate, none of natty's code on the publishing side.)
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use natty_core::ConnectOptions;
use natty_core::async_nats::{
    self,
    jetstream::{self, stream::SubjectTransform},
};
use natty_group::{
    CancellationToken, ConsumerGroup, GroupConfig, HandlerError, Message, Partition,
};
use natty_testkit::{Nats, init_tracing, unique_name, wait_for};

const P: u32 = 12;
const KEYS: usize = 200;
const PER_KEY: u64 = 5;

/// What a member's handler saw: (key, number, partition handling it, partition token of the
/// subject, member).
type Seen = Arc<Mutex<Vec<(String, u64, u32, u32, String)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_raw_publish_to_the_unpartitioned_subject_reaches_the_right_member_in_key_order()
-> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start().await?;
    let url = nats.url();
    let stream = unique_name("GI").replace('-', "_");
    let input = format!("{}_in", stream.to_lowercase());
    let prefix = format!("{}_p", stream.to_lowercase());

    // Set up and fed with async-nats alone, as a Go or Python service would.
    let raw = jetstream::new(async_nats::connect(&url).await?);
    raw.create_stream(jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{input}.*"), format!("{prefix}.>")],
        subject_transform: Some(SubjectTransform {
            source: format!("{input}.*"),
            destination: format!("{prefix}.{{{{partition({P},1)}}}}.{{{{wildcard(1)}}}}"),
        }),
        ..Default::default()
    })
    .await?;

    let config = GroupConfig::new(format!("{stream}_g"), &stream, &prefix, P, "unset")
        .ttl(Duration::from_secs(2));
    let seen: Seen = Arc::default();
    let cancel = CancellationToken::new();
    let (mut members, mut groups) = (Vec::new(), Vec::new());
    for name in ["a", "b"] {
        let mut cfg = config.clone();
        cfg.member = name.to_owned();
        let group = ConsumerGroup::new(ConnectOptions::new([url.clone()]).connect().await?, cfg)?;
        groups.push(group.clone());
        let (seen, cancel) = (seen.clone(), cancel.clone());
        let task = tokio::spawn(async move {
            group
                .join(cancel, move |p: Partition, m: Message| {
                    let seen = seen.clone();
                    let me = name.to_owned();
                    async move {
                        let mut tokens = m.subject.rsplit('.');
                        let key = tokens.next().unwrap().to_owned();
                        let token: u32 = tokens.next().unwrap().parse().unwrap();
                        let n = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
                        seen.lock().unwrap().push((key, n, p.index, token, me));
                        Ok::<(), HandlerError>(())
                    }
                })
                .await
        });
        members.push(task);
    }

    wait_for("6/6", Duration::from_secs(30), || async {
        groups
            .iter()
            .all(|g| g.owned().len() == P as usize / 2)
            .then_some(())
    })
    .await?;

    // Published in order per key, each acknowledged (stored) before the key's next.
    for n in 0..PER_KEY {
        let mut acks = Vec::new();
        for k in 0..KEYS {
            acks.push(
                raw.publish(format!("{input}.key-{k}"), n.to_string().into())
                    .await?,
            );
        }
        for ack in acks {
            ack.await?;
        }
    }
    let total = KEYS * usize::try_from(PER_KEY)?;
    wait_for("every message handled", Duration::from_secs(60), || async {
        (seen.lock().unwrap().len() >= total).then_some(())
    })
    .await?;
    cancel.cancel();
    for task in members {
        task.await??;
    }

    let seen = seen.lock().unwrap();
    let mut per_key: HashMap<&str, Vec<u64>> = HashMap::new();
    let mut members_seen: HashMap<&str, usize> = HashMap::new();
    let mut moved = 0;
    for (key, n, partition, token, member) in seen.iter() {
        let natty = natty_group::partition_of(key, P);
        // The server's transform chose the subject's partition; natty's mapping must agree.
        if *token != natty {
            moved += 1;
        }
        assert_eq!(
            *partition, *token,
            "{key}: handled by a partition not its subject's"
        );
        per_key.entry(key).or_default().push(*n);
        *members_seen.entry(member).or_default() += 1;
    }
    assert_eq!(
        moved, 0,
        "{moved} messages: the server's partition(12,1) differs from natty_group::partition_of"
    );
    assert_eq!(per_key.len(), KEYS);
    for (key, got) in &per_key {
        // A member may hand a partition over (a second member joining) and the next owner
        // re-run from the ack floor: first deliveries must still be in order.
        let mut next = 0;
        for n in got {
            assert!(*n <= next, "{key}: {n} handled before {next}: {got:?}");
            if *n == next {
                next += 1;
            }
        }
        assert_eq!(next, PER_KEY, "{key}: {got:?}");
    }
    assert_eq!(
        members_seen.len(),
        2,
        "both members handled: {members_seen:?}"
    );
    Ok(())
}
