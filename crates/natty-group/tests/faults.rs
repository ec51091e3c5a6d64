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
use natty_group::{
    Area, CancellationToken, ConsumerGroup, ErrorKind, GroupConfig, GroupEvent, Partition,
};
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

/// Item 11: a closed client cannot heal: `join` ends with `Closed` (not warnings forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn join_ends_with_closed_when_the_client_is_closed() -> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start().await?;
    let url = nats.url();
    let client = ConnectOptions::new([url.clone()]).connect().await?;
    let config = stream_and_group(&client, "GC", 2).await?;
    let own = ConnectOptions::new([url]).connect().await?;
    let group = ConsumerGroup::new(own.clone(), config)?;
    let joined = {
        let group = group.clone();
        tokio::spawn(async move {
            group
                .join(
                    CancellationToken::new(),
                    |_p: Partition, _m: Message| async { Ok::<(), HandlerError>(()) },
                )
                .await
        })
    };
    wait_for("both partitions owned", Duration::from_secs(30), || async {
        (group.owned().len() == 2).then_some(())
    })
    .await?;
    own.drain().await?;
    let ended = tokio::time::timeout(Duration::from_secs(40), joined).await;
    let result = ended
        .map_err(|_| anyhow::anyhow!("join still running 40 s after the client was closed"))??;
    assert_eq!(result.map_err(|e| e.kind()).err(), Some(ErrorKind::Closed));
    assert!(!group.health().joined);
    Ok(())
}

/// Item 11: the stream deleted and created again within the grace period is waited out (the
/// group consumes the new stream); deleted for good, `join` ends with `StreamNotFound` once
/// the grace period (the consume options' `consumer_gone_grace`) is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn join_ends_with_stream_not_found_when_the_stream_stays_deleted() -> anyhow::Result<()> {
    const GRACE: Duration = Duration::from_secs(4);
    init_tracing();
    let nats = Nats::start().await?;
    let url = nats.url();
    let client = ConnectOptions::new([url.clone()]).connect().await?;
    let config = stream_and_group(&client, "GD", 2)
        .await?
        .consume(ConsumeOptions::default().consumer_gone_grace(GRACE));
    let judge = Arc::new(Judge::default());
    let m = member(&url, &config, "a", judge.clone()).await?;
    wait_for("both partitions owned", Duration::from_secs(30), || async {
        (m.group.owned().len() == 2).then_some(())
    })
    .await?;
    publish(&client, &config, 4, 0, 5).await?;
    wait_for("20 handled", Duration::from_secs(10), || async {
        (judge.handled.load(Ordering::SeqCst) >= 20).then_some(())
    })
    .await?;

    // Deleted and created again at once: waited out; the new stream's messages are handled.
    let js = client.jetstream();
    js.delete_stream(&config.stream).await?;
    ensure_stream(
        &client,
        &StreamConfig::new(&config.stream, [format!("{}.>", config.subject_prefix)]),
    )
    .await?;
    publish(&client, &config, 4, 100, 105).await?;
    wait_for(
        "the new stream's 20 handled",
        GRACE * 2 + TTL * 4,
        || async { (judge.handled.load(Ordering::SeqCst) >= 40).then_some(()) },
    )
    .await?;
    assert!(
        !m.task.is_finished(),
        "join ended although the stream came back"
    );

    // Deleted for good: join ends with StreamNotFound after the grace period.
    let deleted = Instant::now();
    js.delete_stream(&config.stream).await?;
    let ended = tokio::time::timeout(GRACE * 3 + TTL * 4, m.task).await;
    let result = ended
        .map_err(|_| anyhow::anyhow!("join still running long after the stream was deleted"))??;
    let took = deleted.elapsed();
    eprintln!("stream deleted for good: join ended after {took:?} (grace {GRACE:?})");
    assert_eq!(
        result.map_err(|e| e.kind()).err(),
        Some(ErrorKind::StreamNotFound)
    );
    assert!(
        took >= GRACE,
        "join gave up after {took:?}, before the grace period"
    );
    Ok(())
}

/// Item 11: a take-over the server refuses (here: the stream's consumer limit) is retried —
/// and visible with its cause in `health()` and as an event, not only in a log line; once the
/// limit is raised it recovers and the partition is consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_refused_take_over_is_visible_with_its_cause_until_it_recovers() -> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start().await?;
    let url = nats.url();
    let client = ConnectOptions::new([url.clone()]).connect().await?;
    let stream = unique_name("GT").replace('-', "_");
    let prefix = stream.to_lowercase();
    let js = client.jetstream();
    // One consumer at most: the partition's initial durable; the owner's own is refused.
    js.create_stream(jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{prefix}.>")],
        max_consumers: 1,
        ..Default::default()
    })
    .await?;
    let config = GroupConfig::new(format!("{stream}_g"), &stream, &prefix, 1, "unset").ttl(TTL);
    let judge = Arc::new(Judge::default());
    let m = member(&url, &config, "a", judge.clone()).await?;
    let mut events = m.group.subscribe();
    let problem = wait_for("a take-over problem", Duration::from_secs(30), || async {
        m.group
            .health()
            .problems
            .into_iter()
            .find(|p| p.area == Area::TakeOver && p.partition == Some(0))
    })
    .await?;
    eprintln!("visible: {problem:?}");
    assert!(
        problem.error.contains("maximum consumers"),
        "the cause is not named: {}",
        problem.error
    );
    assert!(!m.group.health().is_healthy());
    let failing = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(GroupEvent::Failing(p)) = events.recv().await
                && p.area == Area::TakeOver
            {
                return p;
            }
        }
    })
    .await?;
    assert!(failing.failures >= 1);

    // The limit raised: the next attempt succeeds, the problem ends, messages are handled.
    let mut info = js.get_stream(&stream).await?.info().await?.config.clone();
    info.max_consumers = -1;
    js.update_stream(info).await?;
    publish(&client, &config, 2, 0, 5).await?;
    wait_for("10 handled", Duration::from_secs(20), || async {
        (judge.handled.load(Ordering::SeqCst) >= 10).then_some(())
    })
    .await?;
    wait_for("healthy again", Duration::from_secs(5), || async {
        m.group.health().is_healthy().then_some(())
    })
    .await?;
    m.cancel.cancel();
    m.task.await??;
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

/// Item 14: a dead letter's id is stable across owners (`natty-dl:<stream>:<group>_p<i>:<seq>`),
/// so a message dead-lettered by one owner and delivered again to the next (here: the first
/// owner's ack floor held back by an earlier message still running when it left) is stored
/// once, not once per term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_dead_letter_is_stored_once_across_a_hand_over() -> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start().await?;
    let url = nats.url();
    let client = ConnectOptions::new([url.clone()]).connect().await?;
    let dead = unique_name("GDL").replace('-', "_");
    ensure_stream(&client, &StreamConfig::new(&dead, [dead.to_lowercase()])).await?;
    let config = stream_and_group(&client, "GH", 1).await?.consume(
        ConsumeOptions::default()
            .concurrency(4)
            .dead_letter(dead.to_lowercase())
            .stop_timeout(Duration::from_secs(1)),
    );
    // key-0's message blocks in the first owner's term (so its ack floor stays before it);
    // key-1's fails for good in every term.
    let first_term = Arc::new(AtomicBool::new(true));
    let poisoned_runs = Arc::new(AtomicU64::new(0));
    let start = |name: &'static str| {
        let (url, config) = (url.clone(), config.clone());
        let (first_term, poisoned_runs) = (first_term.clone(), poisoned_runs.clone());
        async move {
            let mut cfg = config;
            cfg.member = name.to_owned();
            let group = ConsumerGroup::new(ConnectOptions::new([url]).connect().await?, cfg)?;
            let cancel = CancellationToken::new();
            let task = {
                let (group, cancel) = (group.clone(), cancel.clone());
                tokio::spawn(async move {
                    group
                        .join(cancel, move |_p: Partition, m: Message| {
                            let (first_term, poisoned_runs) =
                                (first_term.clone(), poisoned_runs.clone());
                            async move {
                                if m.subject.ends_with("key-1") {
                                    poisoned_runs.fetch_add(1, Ordering::SeqCst);
                                    return Err(HandlerError::permanent("poisoned"));
                                }
                                if first_term.load(Ordering::SeqCst) {
                                    std::future::pending::<()>().await;
                                }
                                Ok(())
                            }
                        })
                        .await
                })
            };
            anyhow::Ok(Member {
                group,
                cancel,
                task,
            })
        }
    };
    let a = start("a").await?;
    wait_for("partition owned by a", Duration::from_secs(30), || async {
        (a.group.owned().len() == 1).then_some(())
    })
    .await?;
    // Stream sequence 1: key-0, 2: key-1.
    publish(&client, &config, 2, 0, 1).await?;
    let js = client.jetstream();
    let stored = || async {
        js.get_stream(&dead)
            .await
            .ok()?
            .info()
            .await
            .ok()
            .map(|i| i.state.messages)
    };
    wait_for("the first dead letter", Duration::from_secs(20), || async {
        (stored().await? == 1).then_some(())
    })
    .await?;
    // a leaves (key-0's handler is cut off at the stop deadline); b starts from a's ack floor,
    // before key-0: key-1's message comes to b and fails for good again.
    a.cancel.cancel();
    a.task.await??;
    first_term.store(false, Ordering::SeqCst);
    let b = start("b").await?;
    wait_for("key-1 run by b too", Duration::from_secs(30), || async {
        (poisoned_runs.load(Ordering::SeqCst) >= 2).then_some(())
    })
    .await?;
    // b dead-letters it (again) before it terminates it: once the durables' ack floors are
    // past it, whatever b published is stored.
    wait_for(
        "both messages settled by b",
        Duration::from_secs(20),
        || async {
            let s = js.get_stream(&config.stream).await.ok()?;
            let infos: Vec<jetstream::consumer::Info> = s.consumers().try_collect().await.ok()?;
            (!infos.is_empty() && infos.iter().all(|i| i.ack_floor.stream_sequence >= 2))
                .then_some(())
        },
    )
    .await?;
    let count = stored().await.unwrap_or_default();
    b.cancel.cancel();
    b.task.await??;
    assert_eq!(
        count, 1,
        "the message was dead-lettered once per owner: {count} dead letters"
    );
    Ok(())
}
