//! natty-chaos: elections and streams on a 3-node JetStream cluster under a seeded schedule of
//! faults — frozen and killed leaders, killed consumers, killed and partitioned nodes, the
//! durable deleted and re-created, the dead-letter subject uncaptured for a while, and idle
//! spans longer than the consumers' heartbeat and pull expiry — while rolling deploys restart
//! consumers and group members over a backlog; then checks, from what every process printed
//! and what the server recorded, that nothing was lost or given up on unseen and no two
//! leaders acted at once. Run it through `cargo xtask chaos [--minutes N] [--seed S]`.
//!
//! Where things are: [`world`] (the cluster, the streams, the child processes), [`workload`]
//! (what is published and consumed), [`faults`] (the schedule, and the rolling deploys in
//! `faults/deploys.rs`), [`judge`] (the checks), [`report`] (`target/chaos/report.md`).

use std::{path::PathBuf, time::Duration};

use natty_chaos::{init_logs, mono_ns};

mod faults;
mod judge;
mod report;
mod workload;
mod world;

/// Faults on a 3-node cluster, then checks (run it through `cargo xtask chaos`).
#[derive(Debug, clap::Parser)]
#[command(name = "natty-chaos")]
struct Args {
    /// How long the fault schedule runs.
    #[arg(long, default_value_t = 1.0)]
    minutes: f64,
    /// Seed of the fault schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where report.md goes.
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    init_logs();
    let passed = tokio::runtime::Runtime::new()?.block_on(run(&args))?;
    anyhow::ensure!(
        passed,
        "chaos checks failed: see {}/report.md",
        args.out.display()
    );
    Ok(())
}

async fn run(args: &Args) -> anyhow::Result<bool> {
    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    eprintln!(
        "chaos: {} min, seed {}: starting a 3-node cluster",
        args.minutes, args.seed
    );
    let mut world = world::World::start().await?;
    let (client, lines) = (world.client.clone(), world.lines.clone());
    let deploys = faults::deploys::Deploys::start(&world, &args.out, duration.mul_f64(0.4))?;
    let publishing = workload::Publishing::start(&client, duration, args.minutes)?;
    // Faults start once a leader works and every group partition is owned.
    world.ready().await?;
    let mut schedule = faults::Schedule::new(args.seed);
    let end = schedule.start + u64::try_from(duration.as_nanos())?;
    schedule.run(&mut world, end).await?;
    let mut fleet = deploys.finish().await?;

    eprintln!("chaos: faults over, healing and draining");
    let cluster_healthy = world.cluster.wait_meta_leader().await.is_ok();
    let outcome = publishing.finish(&client, &lines).await?;
    tokio::join!(world.stop_all(), fleet.stop_all());
    let after = workload::read_back(&client).await?;
    let all = lines.all();
    let checks = judge::checks(&judge::Evidence {
        lines: &all,
        unreadable: &lines.unreadable(),
        faults: &schedule.faults,
        outcome: &outcome,
        after: &after,
        fleet: &fleet,
        samples: &world.samples,
        deaths: &world.deaths,
        cluster_healthy,
        now: mono_ns(),
    });
    report::Report {
        minutes: args.minutes,
        seed: args.seed,
        total: outcome.total,
        checks: &checks,
        faults: &schedule.faults,
        start: schedule.start,
        notes: &schedule.notes.all(),
        lines: &all,
        dead_records: &after.dead_records,
        fleet: &fleet,
    }
    .write(&args.out)?;
    Ok(checks.iter().all(|c| c.passed))
}
