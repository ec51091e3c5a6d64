//! natty-group against a real NATS server: members as tasks in one process, each with its own
//! connection. Every message handled, per-key order, never two members handling one
//! partition at once, and the membership changes of the issue: join, clean leave, kill.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

mod common;

use std::{
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use common::{Judge, Member, member, publish};
use natty_core::{Client, ConnectOptions};
use natty_group::{CancellationToken, ConsumerGroup, GroupConfig, Partition};
use natty_stream::{ConsumeOptions, HandlerError, Message, StreamConfig, ensure_stream};
use natty_testkit::{Nats, NatsCluster, init_tracing, unique_name, wait_for};

const P: u32 = 12;
const TTL: Duration = Duration::from_secs(2);

fn counts(members: &[&Member]) -> Vec<usize> {
    members.iter().map(|m| m.group.owned().len()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn members_share_partitions_keep_key_order_and_rebalance() -> anyhow::Result<()> {
    const KEYS: usize = 500;
    init_tracing();
    let nats = Nats::start().await?;
    let url = nats.url();
    let client = ConnectOptions::new([url.clone()]).connect().await?;
    let stream = unique_name("G").replace('-', "_");
    let prefix = stream.to_lowercase();
    ensure_stream(
        &client,
        &StreamConfig::new(&stream, [format!("{prefix}.>")]),
    )
    .await?;
    let config = GroupConfig::new(format!("{stream}_g"), &stream, &prefix, P, "unset")
        .ttl(TTL)
        .consume(ConsumeOptions::default().concurrency(8));
    let judge = Arc::new(Judge::default());

    // Three members; the first 20 messages per key (10,000) while they settle.
    let a = member(&url, &config, "a", judge.clone()).await?;
    let b = member(&url, &config, "b", judge.clone()).await?;
    let c = member(&url, &config, "c", judge.clone()).await?;
    publish(&client, &config, KEYS, 0, 20).await?;
    wait_for("4/4/4", Duration::from_secs(20), || async {
        (counts(&[&a, &b, &c]) == [4, 4, 4]).then_some(())
    })
    .await?;
    wait_for("10,000 handled", Duration::from_secs(60), || async {
        (judge.handled.load(Ordering::SeqCst) >= 10_000).then_some(())
    })
    .await?;

    // A fourth joins while 10,000 more are published: 3/3/3/3 within 2 x TTL.
    let joined = Instant::now();
    let d = member(&url, &config, "d", judge.clone()).await?;
    let publishing = {
        let (client, config) = (client.clone(), config.clone());
        tokio::spawn(async move { publish(&client, &config, KEYS, 20, 40).await })
    };
    wait_for("3/3/3/3", Duration::from_secs(20), || async {
        (counts(&[&a, &b, &c, &d]) == [3, 3, 3, 3]).then_some(())
    })
    .await?;
    let converged = joined.elapsed();
    publishing.await??;
    wait_for("20,000 handled", Duration::from_secs(60), || async {
        (judge.handled.load(Ordering::SeqCst) >= 20_000).then_some(())
    })
    .await?;

    // d leaves cleanly: its partitions are re-owned within 250 ms.
    let left = Instant::now();
    d.cancel.cancel();
    d.task.await??;
    wait_for("12 owned by a, b, c", Duration::from_secs(10), || async {
        (counts(&[&a, &b, &c]).iter().sum::<usize>() == P as usize).then_some(())
    })
    .await?;
    let reowned_after_leave = left.elapsed();
    wait_for("4/4/4 again", Duration::from_secs(20), || async {
        (counts(&[&a, &b, &c]) == [4, 4, 4]).then_some(())
    })
    .await?;

    // c is killed (its future dropped: no resign, leases and membership left to expire).
    let killed = Instant::now();
    c.task.abort();
    let _ = c.task.await;
    // Its handlers were aborted mid-way: they will never leave.
    judge.active.lock().unwrap().retain(|_, (m, _)| m != "c");
    wait_for("12 owned by a and b", Duration::from_secs(20), || async {
        (counts(&[&a, &b]).iter().sum::<usize>() == P as usize).then_some(())
    })
    .await?;
    let reowned_after_kill = killed.elapsed();
    publish(&client, &config, KEYS, 40, 44).await?;
    wait_for("22,000 handled", Duration::from_secs(60), || async {
        (judge.handled.load(Ordering::SeqCst) >= 22_000).then_some(())
    })
    .await?;

    let lag = a.group.lag().await?;
    for m in [a, b] {
        m.cancel.cancel();
        m.task.await??;
    }
    let again = judge.check(KEYS, 44);
    eprintln!(
        "group: 4th member converged to 3/3/3/3 in {converged:?}; a clean leave re-owned in \
         {reowned_after_leave:?}; a kill re-owned in {reowned_after_kill:?}; per-key order \
         held; {again} messages handled again by a next owner; lag {lag:?}"
    );
    assert_eq!(
        judge.two_owners.load(Ordering::SeqCst),
        0,
        "a partition had two owners at once"
    );
    assert!(
        converged <= TTL * 2,
        "3/3/3/3 after {converged:?}, over 2 x TTL"
    );
    assert!(
        reowned_after_leave <= Duration::from_millis(250),
        "a clean leave re-owned after {reowned_after_leave:?}"
    );
    assert!(
        reowned_after_kill <= TTL + Duration::from_secs(1),
        "a kill re-owned after {reowned_after_kill:?}"
    );
    Ok(())
}

/// A member frozen past its lease (here: its whole runtime blocked, as by SIGSTOP or a long
/// GC pause) wakes up with a handler mid-way, before its election driver could notice the
/// loss: `Partition::is_owned` must already say no, by the local clock.
#[tokio::test(flavor = "current_thread")]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn is_owned_turns_false_when_the_lease_expired_during_a_freeze() -> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start().await?;
    let url = nats.url();
    let client = ConnectOptions::new([url.clone()]).connect().await?;
    let stream = unique_name("GF").replace('-', "_");
    let prefix = stream.to_lowercase();
    ensure_stream(
        &client,
        &StreamConfig::new(&stream, [format!("{prefix}.>")]),
    )
    .await?;
    let ttl = Duration::from_secs(1);
    let config = GroupConfig::new(format!("{stream}_g"), &stream, &prefix, 1, "frozen").ttl(ttl);
    let group = ConsumerGroup::new(ConnectOptions::new([url]).connect().await?, config.clone())?;
    // (owned when the handler started, owned after the freeze)
    let seen: Arc<Mutex<Option<(bool, bool)>>> = Arc::default();
    let cancel = CancellationToken::new();
    let joined = {
        let (group, cancel, seen) = (group.clone(), cancel.clone(), seen.clone());
        tokio::spawn(async move {
            group
                .join(cancel, move |p: Partition, _m: Message| {
                    let seen = seen.clone();
                    async move {
                        let before = p.is_owned();
                        if seen.lock().unwrap().is_none() {
                            // Blocks the only runtime thread: nothing else of this member runs.
                            std::thread::sleep(ttl * 3);
                            *seen.lock().unwrap() = Some((before, p.is_owned()));
                        }
                        Ok::<(), HandlerError>(())
                    }
                })
                .await
        })
    };
    wait_for("partition 0 owned", Duration::from_secs(20), || async {
        (group.owned().len() == 1).then_some(())
    })
    .await?;
    publish(&client, &config, 1, 0, 1).await?;
    wait_for(
        "the frozen handler's verdict",
        Duration::from_secs(20),
        || async { *seen.lock().unwrap() },
    )
    .await?;
    let (before, after) = seen.lock().unwrap().unwrap();
    cancel.cancel();
    joined.await??;
    assert!(
        before,
        "is_owned() false in a handler of the partition's owner"
    );
    assert!(
        !after,
        "is_owned() still true after a freeze of 3 x TTL (the lease expired meanwhile)"
    );
    Ok(())
}

/// The consumer names of `stream`.
async fn durables(client: &Client, stream: &str) -> Vec<String> {
    use futures::TryStreamExt as _;
    let Ok(s) = client.jetstream().get_stream(stream).await else {
        return Vec::new();
    };
    s.consumer_names().try_collect().await.unwrap_or_default()
}

/// Each owner term reads its own durable, started from the previous one's ack floor. An
/// owner that handled nothing (its durable never acknowledged anything) must still hand over
/// where it started, not from the partition's beginning: a replicated durable that acked
/// nothing reports an ack floor of 0 (seen in the chaos scenario: a next owner ran a whole
/// partition again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn an_owner_that_handled_nothing_hands_over_where_it_started() -> anyhow::Result<()> {
    const KEYS: usize = 5;
    init_tracing();
    // Replicated: a single server reports a fresh durable's floor right.
    let cluster = NatsCluster::start(3).await?;
    let url = cluster.urls()[0].clone();
    let client = ConnectOptions::new(cluster.urls()).connect().await?;
    let stream = unique_name("GH").replace('-', "_");
    let prefix = stream.to_lowercase();
    ensure_stream(
        &client,
        &StreamConfig::new(&stream, [format!("{prefix}.>")]).replicas(3),
    )
    .await?;
    let config = GroupConfig::new(format!("{stream}_g"), &stream, &prefix, 1, "unset")
        .ttl(TTL)
        .replicas(3);
    let judge = Arc::new(Judge::default());
    publish(&client, &config, KEYS, 0, 20).await?;

    // Owner after owner; each one's durable is the only one left once it took over.
    let mut previous = durables(&client, &stream).await;
    assert_eq!(previous.len(), 0, "before anyone joined: {previous:?}");
    for name in ["a", "b", "c"] {
        let m = member(&url, &config, name, judge.clone()).await?;
        let before = previous.clone();
        previous = wait_for(
            "the new owner's durable",
            Duration::from_secs(10),
            || async {
                let now = durables(&client, &stream).await;
                (now.len() == 1 && m.group.owned().len() == 1 && !before.contains(&now[0]))
                    .then_some(now)
            },
        )
        .await?;
        if name == "a" {
            wait_for("100 handled", Duration::from_secs(20), || async {
                (judge.handled.load(Ordering::SeqCst) >= 100).then_some(())
            })
            .await?;
        }
        if name == "c" {
            // Something new for c to handle: it must start there, not run anything again.
            publish(&client, &config, KEYS, 20, 21).await?;
            wait_for("105 handled", Duration::from_secs(20), || async {
                (judge.handled.load(Ordering::SeqCst) >= 105).then_some(())
            })
            .await?;
        }
        m.cancel.cancel();
        m.task.await??;
    }
    let again = judge.check(KEYS, 21);
    assert_eq!(again, 0, "messages run again after clean hand-overs");
    assert_eq!(judge.handled.load(Ordering::SeqCst), 105);
    Ok(())
}

/// A member frozen past its lease can leave a pull request open on the partition's durable
/// (here: a pull the test opens on the owner's durable and never reads, from a connection of
/// its own). The next owner must get the partition's new messages at once and in order — not
/// `ack_wait` later, after the server handed them to the stale request (seen in the chaos
/// scenario when every owner shared one durable: a reset keeps waiting requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_stale_pull_of_a_previous_owner_takes_nothing_from_the_next() -> anyhow::Result<()> {
    const ACK_WAIT: Duration = Duration::from_secs(20);
    init_tracing();
    let nats = Nats::start().await?;
    let url = nats.url();
    let client = ConnectOptions::new([url.clone()]).connect().await?;
    let stream = unique_name("GS").replace('-', "_");
    let prefix = stream.to_lowercase();
    ensure_stream(
        &client,
        &StreamConfig::new(&stream, [format!("{prefix}.>")]),
    )
    .await?;
    let config = GroupConfig::new(format!("{stream}_g"), &stream, &prefix, 1, "unset")
        .ttl(TTL)
        .ack_wait(ACK_WAIT);
    let judge = Arc::new(Judge::default());
    publish(&client, &config, 1, 0, 10).await?;
    let a = member(&url, &config, "a", judge.clone()).await?;
    wait_for("a handled 10", Duration::from_secs(10), || async {
        (judge.handled.load(Ordering::SeqCst) >= 10).then_some(())
    })
    .await?;
    // a's durable, with a pull request waiting on it that nobody reads (a frozen member's).
    let name_a = wait_for("a's durable", Duration::from_secs(5), || async {
        let now = durables(&client, &stream).await;
        (now.len() == 1).then(|| now[0].clone())
    })
    .await?;
    let stale: natty_core::async_nats::jetstream::consumer::PullConsumer = client
        .jetstream()
        .get_stream(&stream)
        .await?
        .get_consumer(&name_a)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let _stale_pull = stale
        .batch()
        .max_messages(100)
        .expires(ACK_WAIT * 2)
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // a dies (its lease expires after the TTL); b takes the partition over.
    a.task.abort();
    let _ = a.task.await;
    let b = member(&url, &config, "b", judge.clone()).await?;
    wait_for("b owns the partition", TTL * 3, || async {
        (b.group.owned().len() == 1).then_some(())
    })
    .await?;
    publish(&client, &config, 1, 10, 20).await?;
    // Well before ack_wait: nothing may sit with the stale request.
    let all = wait_for("b handled the 10 new ones", ACK_WAIT / 2, || async {
        let order = judge.order.lock().unwrap();
        let runs = order.get("key-0")?;
        (10..20)
            .all(|n| runs.iter().any(|r| r.0 == n))
            .then_some(())
    })
    .await;
    b.cancel.cancel();
    b.task.await??;
    all?;
    judge.check(1, 20);
    Ok(())
}
