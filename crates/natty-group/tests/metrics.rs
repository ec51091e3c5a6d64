//! The group's metrics (feature `metrics`) against a real NATS server: members and owned
//! partitions, take-overs and their time, releases by reason, failures — and the member count
//! kept from the membership watch, not a key listing per membership event.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

mod common;

use std::{sync::Arc, time::Duration};

use common::{Judge, member};
use natty_core::ConnectOptions;
use natty_group::GroupConfig;
use natty_stream::{StreamConfig, ensure_stream};
use natty_testkit::{Nats, Recorded, init_tracing, unique_name, wait_for};

const TTL: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn members_partitions_take_overs_and_releases_are_counted() -> anyhow::Result<()> {
    init_tracing();
    let recorded = Recorded::install();
    let nats = Nats::start().await?;
    let url = nats.url();
    let client = ConnectOptions::new([url.clone()]).connect().await?;
    let stream = unique_name("GX").replace('-', "_");
    let prefix = stream.to_lowercase();
    ensure_stream(
        &client,
        &StreamConfig::new(&stream, [format!("{prefix}.>")]),
    )
    .await?;
    let group = format!("{stream}_g");
    let config = GroupConfig::new(&group, &stream, &prefix, 4, "unset").ttl(TTL);
    let labels = |m: &str| format!("group={group},member={m}");
    let gauge = |name: &str, m: &str| {
        recorded.read(|t| t.gauge(&format!("natty_group_{name},{}", labels(m))))
    };
    let counter = |name: &str, m: &str| {
        recorded.read(|t| t.counter(&format!("natty_group_{name},{}", labels(m))))
    };

    let judge = Arc::new(Judge::default());
    let a = member(&url, &config, "a", judge.clone()).await?;
    let b = member(&url, &config, "b", judge.clone()).await?;
    let took = || counter("take_overs_total", "a") + counter("take_overs_total", "b");
    let timed = || {
        recorded.read(|t| {
            t.samples(&format!("natty_group_take_over_seconds,{}", labels("a")))
                + t.samples(&format!("natty_group_take_over_seconds,{}", labels("b")))
        })
    };
    // A partition counts as owned from its lease on; its take-over (the durable) is counted
    // when done.
    wait_for(
        "2/2 in the gauges, 4 take-overs",
        Duration::from_secs(20),
        || async {
            (gauge("owned_partitions", "a") == Some(2.0)
                && gauge("owned_partitions", "b") == Some(2.0)
                && took() >= 4
                && u64::try_from(timed()).unwrap() == took())
            .then_some(())
        },
    )
    .await?;
    assert_eq!(gauge("members", "a"), Some(2.0));

    // Membership events keep coming (each member announces every ttl / 3): the count comes
    // from the watch, never from listing the bucket's keys.
    tokio::time::sleep(TTL * 2).await;
    let listings = recorded.read(|t| {
        t.samples(&format!(
            "natty_kv_op_seconds,op=keys,bucket={group}_members"
        ))
    });
    assert_eq!(listings, 0, "members counted by listing the bucket's keys");

    // a leaves: its partitions are released (resigned), b owns all four.
    let resigned = || {
        recorded.read(|t| {
            t.counter(&format!(
                "natty_group_released_total,{},reason=resigned",
                labels("a")
            ))
        })
    };
    let resigned_before = resigned();
    a.cancel.cancel();
    a.task.await??;
    wait_for("b owns 4", Duration::from_secs(20), || async {
        (gauge("owned_partitions", "b") == Some(4.0)).then_some(())
    })
    .await?;
    assert_eq!(gauge("owned_partitions", "a"), Some(0.0));
    assert_eq!(
        resigned() - resigned_before,
        2,
        "a's two partitions resigned"
    );
    wait_for("b counts 1 member", Duration::from_secs(10), || async {
        (gauge("members", "b") == Some(1.0)).then_some(())
    })
    .await?;
    let failures: u64 = ["membership", "lease", "take_over", "consumer", "stream"]
        .iter()
        .map(|area| {
            recorded.read(|t| {
                t.counter(&format!(
                    "natty_group_failures_total,{},area={area}",
                    labels("b")
                ))
            })
        })
        .sum();
    assert_eq!(failures, 0);
    b.cancel.cancel();
    b.task.await??;
    Ok(())
}
