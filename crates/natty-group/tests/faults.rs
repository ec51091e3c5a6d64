//! natty-group when things go wrong behind its back (REVIEW.md): its membership bucket
//! deleted, a lease taken while a resign's stop is under way, the client closed, the stream
//! deleted, a take-over the server refuses, and more than a page of consumers on the stream
//! while others delete theirs.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

mod common;

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Judge, Member, member, publish};
use futures::{StreamExt, TryStreamExt};
use natty_core::{Client, ConnectOptions, async_nats::jetstream};
use natty_group::{CancellationToken, ConsumerGroup, GroupConfig, GroupEvent, Partition};
use natty_kv::Kv;
use natty_stream::{
    ConsumeOptions, ConsumerConfig, HandlerError, Message, StreamConfig, ensure_consumer,
    ensure_stream,
};
use natty_testkit::{Nats, init_tracing, unique_name, wait_for};

const TTL: Duration = Duration::from_secs(2);

/// A stream `<NAME>` on `<name>.>` and a group config on it.
async fn stream_and_group(
    client: &Client,
    prefix: &str,
    partitions: u32,
) -> anyhow::Result<GroupConfig> {
    let stream = unique_name(prefix).replace('-', "_");
    let subjects = stream.to_lowercase();
    ensure_stream(
        client,
        &StreamConfig::new(&stream, [format!("{subjects}.>")]),
    )
    .await?;
    Ok(GroupConfig::new(
        format!("{stream}_g"),
        &stream,
        &subjects,
        partitions,
        "unset",
    )
    .ttl(TTL))
}

fn owned(members: &[&Member]) -> usize {
    members.iter().map(|m| m.group.owned().len()).sum()
}

/// Item 12: the membership bucket deleted while three members run is created again by the
/// next announcement — with the group's TTL, not natty-kv's defaults (no TTL: a member that
/// dies after that would be counted forever, its partitions never moving). A member killed
/// then has its partitions owned again within 2 × TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_deleted_members_bucket_comes_back_with_the_groups_ttl() -> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start().await?;
    let url = nats.url();
    let client = ConnectOptions::new([url.clone()]).connect().await?;
    let config = stream_and_group(&client, "GM", 12).await?;
    let judge = Arc::new(Judge::default());
    let a = member(&url, &config, "a", judge.clone()).await?;
    let b = member(&url, &config, "b", judge.clone()).await?;
    let c = member(&url, &config, "c", judge.clone()).await?;
    wait_for("4/4/4", Duration::from_secs(20), || async {
        ([&a, &b, &c].iter().all(|m| m.group.owned().len() == 4)).then_some(())
    })
    .await?;

    // Someone deletes the membership bucket; the members announce themselves into a new one.
    let kv = Kv::new(client.clone());
    let bucket = format!("{}_members", config.name);
    kv.delete_bucket(&bucket).await?;
    wait_for(
        "the members in the bucket again",
        Duration::from_secs(10),
        || async {
            let keys = kv.keys(&bucket).await.ok()?;
            (keys == ["a", "b", "c"]).then_some(())
        },
    )
    .await?;

    // c dies: its key expires (the bucket's TTL), a and b take its partitions.
    let killed = Instant::now();
    c.task.abort();
    let _ = c.task.await;
    let reowned = wait_for("12 owned by a and b", TTL * 10, || async {
        (owned(&[&a, &b]) == 12).then(|| killed.elapsed())
    })
    .await;
    let status = kv.status(&bucket).await?;
    for m in [a, b] {
        m.cancel.cancel();
        m.task.await??;
    }
    let reowned = reowned?;
    eprintln!("members bucket deleted, then a member killed: re-owned in {reowned:?}");
    assert_eq!(
        status.ttl,
        Some(TTL),
        "the bucket came back without the group's TTL"
    );
    assert!(
        reowned <= TTL * 2,
        "the killed member's partitions re-owned after {reowned:?}, over 2 x TTL"
    );
    Ok(())
}

/// Item 15: a member leaving resigns its partition, and the consumer stops gracefully (its
/// running handler may finish). If the lease is lost meanwhile — here the lease key deleted,
/// as by another process — that is a loss: the consumer is dropped at once, its handler
/// aborted, not allowed to finish while a successor may be reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_lease_lost_during_a_resign_drops_the_consumer_at_once() -> anyhow::Result<()> {
    const HANDLER: Duration = Duration::from_secs(2);
    init_tracing();
    let nats = Nats::start().await?;
    let url = nats.url();
    let client = ConnectOptions::new([url.clone()]).connect().await?;
    // A long TTL: the election lets a resigning owner's work run ttl / 8 (2.5 s) at most.
    let config = stream_and_group(&client, "GR", 1)
        .await?
        .ttl(Duration::from_secs(20));
    let group = ConsumerGroup::new(ConnectOptions::new([url]).connect().await?, config.clone())?;
    let (started, resigning, finished) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let cancel = CancellationToken::new();
    let joined = {
        let (group, cancel) = (group.clone(), cancel.clone());
        let (started, resigning, finished) = (started.clone(), resigning.clone(), finished.clone());
        tokio::spawn(async move {
            group
                .join(cancel, move |p: Partition, _m: Message| {
                    let (started, resigning, finished) =
                        (started.clone(), resigning.clone(), finished.clone());
                    async move {
                        started.store(true, Ordering::SeqCst);
                        let until = Instant::now() + HANDLER;
                        while Instant::now() < until {
                            if !p.is_owned() {
                                resigning.store(true, Ordering::SeqCst);
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        finished.store(true, Ordering::SeqCst);
                        Ok::<(), HandlerError>(())
                    }
                })
                .await
        })
    };
    wait_for("partition 0 owned", Duration::from_secs(30), || async {
        (group.owned().len() == 1).then_some(())
    })
    .await?;
    let mut events = group.subscribe();
    publish(&client, &config, 1, 0, 1).await?;
    wait_for("the handler running", Duration::from_secs(10), || async {
        started.load(Ordering::SeqCst).then_some(())
    })
    .await?;
    // The member leaves: the partition is resigned, its handler may finish...
    cancel.cancel();
    wait_for("the resign under way", Duration::from_secs(5), || async {
        resigning.load(Ordering::SeqCst).then_some(())
    })
    .await?;
    // ... until the lease is taken from it.
    let taken = Instant::now();
    Kv::new(client.clone())
        .delete(&format!("{}_leases", config.name), "p0")
        .await?;
    let released = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(GroupEvent::Released { .. }) = events.recv().await {
                return taken.elapsed();
            }
        }
    })
    .await?;
    joined.await??;
    let finished = finished.load(Ordering::SeqCst);
    eprintln!(
        "lease taken during a resign: consumer released {released:?} later, handler finished: {finished}"
    );
    assert!(
        !finished,
        "the handler ran to its end after the lease was taken ({released:?} to release)"
    );
    assert!(
        released < Duration::from_secs(1),
        "the consumer stopped {released:?} after its lease was taken"
    );
    Ok(())
}

/// The consumer names of `stream`, from a listing nobody disturbs.
async fn consumer_names(client: &Client, stream: &str) -> anyhow::Result<BTreeSet<String>> {
    let s = client.jetstream().get_stream(stream).await?;
    Ok(s.consumer_names().try_collect().await?)
}

/// Item 13: more than a page (1,024) of other consumers on the stream, around the group's
/// durables in name order, while someone keeps deleting and creating theirs (pages of an
/// offset listing shift); members join and leave. Every take-over must find the previous
/// owner's durable — nothing run again — and no earlier term's durable may be left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn take_overs_find_the_previous_durable_among_1100_consumers() -> anyhow::Result<()> {
    const P: u32 = 12;
    const KEYS: usize = 50;
    const BEFORE: usize = 1018;
    const AFTER: usize = 82;
    const CHURN: usize = 24;
    init_tracing();
    let nats = Nats::start().await?;
    let url = nats.url();
    let client = ConnectOptions::new([url.clone()]).connect().await?;
    let stream = unique_name("GL").replace('-', "_");
    let prefix = stream.to_lowercase();
    // nats-server 2.15 limits a stream to 1,000 consumers unless it sets its own limit.
    client
        .jetstream()
        .create_stream(jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{prefix}.>")],
            max_consumers: 2_000,
            ..Default::default()
        })
        .await?;
    // Other consumers: `a_*` sort before the group's durables (`m*`), `z_*` after, so that
    // the group's sit across the first page's end.
    let other = {
        let (client, stream, prefix) = (client.clone(), stream.clone(), prefix.clone());
        move |name: String| {
            let (client, stream, prefix) = (client.clone(), stream.clone(), prefix.clone());
            async move {
                ensure_consumer(
                    &client,
                    &ConsumerConfig::new(&stream, name)
                        .filter_subjects([format!("{prefix}.other")]),
                )
                .await
            }
        }
    };
    let names: Vec<String> = (0..BEFORE)
        .map(|i| format!("a_{i:05}"))
        .chain((0..AFTER).map(|i| format!("z_{i:05}")))
        .collect();
    futures::stream::iter(names.into_iter().map(&other))
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    let group_name = format!("m{}", prefix.replace('-', "_"));
    let config = GroupConfig::new(&group_name, &stream, &prefix, P, "unset").ttl(TTL);

    // Someone else deletes and creates consumers all along, CHURN at a time.
    let stop = CancellationToken::new();
    let churned = Arc::new(AtomicU64::new(0));
    let churn = {
        let (stop, churned, client, stream) = (
            stop.clone(),
            churned.clone(),
            client.clone(),
            stream.clone(),
        );
        let other = other.clone();
        tokio::spawn(async move {
            let mut next = BEFORE;
            let mut oldest = 0;
            while !stop.is_cancelled() {
                let s = client.jetstream().get_stream(&stream).await.unwrap();
                let doomed: Vec<String> = (oldest..oldest + CHURN)
                    .map(|i| format!("a_{i:05}"))
                    .collect();
                futures::stream::iter(doomed.into_iter().map(|n| {
                    let s = s.clone();
                    async move {
                        let _ = s.delete_consumer(&n).await;
                    }
                }))
                .buffer_unordered(CHURN)
                .for_each(|()| async {})
                .await;
                oldest += CHURN;
                let born: Vec<String> = (next..next + CHURN).map(|i| format!("a_{i:05}")).collect();
                futures::stream::iter(born.into_iter().map(&other))
                    .buffer_unordered(CHURN)
                    .for_each(|_| async {})
                    .await;
                next += CHURN;
                churned.fetch_add(CHURN as u64, Ordering::Relaxed);
            }
        })
    };

    let judge = Arc::new(Judge::default());
    let round = |from: u64| {
        let (client, config) = (client.clone(), config.clone());
        async move { publish(&client, &config, KEYS, from, from + 10).await }
    };
    round(0).await?;
    // Members join and leave: a; a+b; b; b+c; c; c+d (each change hands partitions over).
    let mut present: Vec<(String, Member)> = Vec::new();
    let steps = [
        ("a", true),
        ("b", true),
        ("a", false),
        ("c", true),
        ("b", false),
        ("d", true),
    ];
    // Consumer listings asked of the server (a plain subscriber sees the API requests),
    // counted from the first hand-over on: by then each partition's durable has a name to be
    // found by.
    let listings = Arc::new(AtomicU64::new(0));
    let mut listing_requests = client
        .nats()
        .subscribe(format!("$JS.API.CONSUMER.*.{stream}"))
        .await?;
    let counting = {
        let listings = listings.clone();
        tokio::spawn(async move {
            while let Some(m) = listing_requests.next().await {
                if m.subject.starts_with("$JS.API.CONSUMER.NAMES.")
                    || m.subject.starts_with("$JS.API.CONSUMER.LIST.")
                {
                    listings.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    for (i, (name, joins)) in steps.into_iter().enumerate() {
        if i == 1 {
            listings.store(0, Ordering::SeqCst);
        }
        if joins {
            present.push((
                name.to_owned(),
                member(&url, &config, name, judge.clone()).await?,
            ));
        } else {
            let at = present.iter().position(|(n, _)| n == name).unwrap();
            let (_, m) = present.remove(at);
            m.cancel.cancel();
            m.task.await??;
        }
        let n = present.len();
        let want = usize::try_from(P).unwrap().div_ceil(n);
        wait_for("balanced", Duration::from_secs(30), || async {
            let counts: Vec<usize> = present.iter().map(|(_, m)| m.group.owned().len()).collect();
            (counts.iter().sum::<usize>() == P as usize && counts.iter().all(|c| *c <= want))
                .then_some(())
        })
        .await?;
        round(10 * (i as u64 + 1)).await?;
        let total = u64::try_from(KEYS).unwrap() * (10 * (i as u64 + 2));
        wait_for("all handled", Duration::from_secs(30), || async {
            (judge.handled.load(Ordering::SeqCst) >= total).then_some(())
        })
        .await?;
    }
    stop.cancel();
    churn.await?;
    let listed = listings.load(Ordering::SeqCst);
    counting.abort();
    let left = consumer_names(&client, &stream).await?;
    for (_, m) in present {
        m.cancel.cancel();
        m.task.await??;
    }
    let again = judge.check(KEYS, 70);
    let ours: Vec<&String> = left
        .iter()
        .filter(|n| n.starts_with(&format!("{group_name}_p")))
        .collect();
    eprintln!(
        "{} other consumers churned; {listed} listings; {again} messages run again; the group's durables: {ours:?}",
        churned.load(Ordering::Relaxed)
    );
    assert_eq!(
        listed, 0,
        "take-overs listed the stream's consumers {listed} times (pages shift while others delete)"
    );
    assert_eq!(again, 0, "messages run again after clean hand-overs");
    assert_eq!(
        ours.len(),
        P as usize,
        "one durable per partition expected: {ours:?}"
    );
    Ok(())
}
