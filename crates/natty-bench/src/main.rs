//! natty-bench: natty and hand-written raw async-nats, side by side in one run, alternately,
//! with ratios (run it through `cargo xtask bench [--quick]`).
#![allow(clippy::print_stdout, reason = "a benchmark prints its report")]

mod group;
mod memory;
mod report;
mod workloads;

use std::{future::Future, path::PathBuf, time::Duration};

use natty::stream::PublishMode;
use report::{Failover, Results, Target, Workload, median, percentile};

struct Sizes {
    pairs: usize,
    publish_n: u64,
    consume_n: u64,
    kv_ops: usize,
    resign_trials: usize,
    crash_trials: usize,
    memory_n: u64,
}

const FULL: Sizes = Sizes {
    pairs: 3,
    publish_n: 200_000,
    consume_n: 200_000,
    kv_ops: 5_000,
    resign_trials: 20,
    crash_trials: 10,
    memory_n: 1_000_000,
};
const QUICK: Sizes = Sizes {
    pairs: 1,
    publish_n: 20_000,
    consume_n: 20_000,
    kv_ops: 300,
    resign_trials: 3,
    crash_trials: 1,
    memory_n: 50_000,
};
const CRASH_TTL: Duration = Duration::from_secs(2);

/// natty and raw async-nats side by side (run it through `cargo xtask bench [--quick]`).
#[derive(Debug, clap::Parser)]
#[command(name = "natty-bench")]
struct Args {
    /// Small N, one pair, targets not judged (CI).
    #[arg(long)]
    quick: bool,
    /// Where report.md, report.svg and results.json go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Run only these parts (comma-separated, e.g. `--only latency,kv`); the report shows
    /// only what ran.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
    #[command(subcommand)]
    child: Option<Child>,
}

/// The parts `--only` can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// `Natty::publish`'s default path (`Auto`) against raw pipelined.
    Default,
    Publish,
    Fast,
    Consume,
    /// Publish-to-handler latency at a low fixed rate with idle gaps.
    Latency,
    Kv,
    /// Fenced writes (`Leadership::put`) against a raw KV put.
    Fenced,
    Election,
    /// Consumer groups of 1, 2 and 4 members against one consumer ordered by key.
    Group,
    Memory,
    /// The default publish path and consume again, built with natty's observability features
    /// off (this binary) and on (natty-bench-obs): the ratios side by side.
    Features,
}

#[derive(Debug, clap::Subcommand)]
enum Child {
    /// The child process of the memory workload.
    #[command(hide = true)]
    Memory { url: String, n: u64 },
    /// The features workloads alone, printed as JSON (this binary's build's ratios).
    #[command(hide = true)]
    Ratios {
        url: String,
        #[arg(long)]
        quick: bool,
    },
}

/// natty's observability features in this build.
const FEATURES: &str = if cfg!(feature = "observability") {
    "metrics, otel and serde compiled in"
} else {
    "metrics, otel and serde off (not compiled in)"
};

fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    match args.child {
        Some(Child::Memory { url, n }) => {
            let result = runtime.block_on(memory::run(&url, n))?;
            println!("{}", serde_json::to_string(&result)?);
            return Ok(());
        }
        Some(Child::Ratios { url, quick }) => {
            let s = if quick { QUICK } else { FULL };
            let ratios = runtime.block_on(feature_ratios(&url, &s))?;
            println!("{}", serde_json::to_string(&ratios)?);
            return Ok(());
        }
        None => {}
    }
    let (quick, out) = (args.quick, args.out);
    let only = args.only;
    runtime.block_on(async {
        let server = match std::env::var("NATS_URL") {
            Ok(url) => (None, url),
            Err(_) => {
                let nats = natty_testkit::Nats::start().await?;
                let url = nats.url();
                (Some(nats), url)
            }
        };
        let results = run(&server.1, quick, &only).await?;
        let md = report::write(&out, &results)?;
        println!("{md}");
        println!(
            "wrote {}/report.md, report.svg, results.json",
            out.display()
        );
        drop(server);
        anyhow::Ok(())
    })
}

fn judged(quick: bool, text: String, met: bool) -> Target {
    Target {
        text,
        met: (!quick).then_some(met),
    }
}

async fn pairs<F, G, FutF, FutG>(
    label: &str,
    n: usize,
    mut natty_run: F,
    mut raw_run: G,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)>
where
    F: FnMut() -> FutF,
    G: FnMut() -> FutG,
    FutF: Future<Output = anyhow::Result<f64>>,
    FutG: Future<Output = anyhow::Result<f64>>,
{
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..n {
        a.push(natty_run().await?);
        b.push(raw_run().await?);
        eprintln!("{label} pair {}: natty {:.0}, raw {:.0}", i + 1, a[i], b[i]);
    }
    Ok((a, b))
}

/// p50 and p99 latencies of natty and raw, one entry per pair of runs.
#[derive(Debug, Default)]
struct LatencyPairs {
    p50: (Vec<f64>, Vec<f64>),
    p99: (Vec<f64>, Vec<f64>),
}

impl LatencyPairs {
    /// Records one pair of runs' latencies.
    fn push(&mut self, natty: &[f64], raw: &[f64]) {
        self.p50.0.push(percentile(natty, 0.5));
        self.p50.1.push(percentile(raw, 0.5));
        self.p99.0.push(percentile(natty, 0.99));
        self.p99.1.push(percentile(raw, 0.99));
    }

    /// The p50 workload (with `target`) and the p99 one, named by `name("p50")` / `name("p99")`.
    fn workloads(
        self,
        name: impl Fn(&str) -> String,
        target: Option<(f64, bool, bool)>,
        quick: bool,
    ) -> [Workload; 2] {
        let (a, b) = self.p50;
        let (a99, b99) = self.p99;
        [
            workload(&name("p50"), "µs", a, b, target, quick),
            workload(&name("p99"), "µs", a99, b99, None, quick),
        ]
    }
}

fn workload(
    name: &str,
    unit: &'static str,
    natty: Vec<f64>,
    raw: Vec<f64>,
    target: Option<(f64, bool, bool)>,
    quick: bool,
) -> Workload {
    // For msg/s the ratio is natty/raw; for latencies too (so lower is better there).
    let ratios: Vec<f64> = natty.iter().zip(&raw).map(|(a, b)| a / b).collect();
    let median_ratio = median(&ratios);
    let target = target.map(|(bound, at_least, _)| {
        let met = if at_least {
            median_ratio >= bound
        } else {
            median_ratio <= bound
        };
        judged(
            quick,
            format!("{} {bound} x raw", if at_least { ">=" } else { "<=" }),
            met,
        )
    });
    Workload {
        name: name.to_owned(),
        unit,
        natty,
        raw,
        ratios,
        median_ratio,
        target,
    }
}

async fn run(url: &str, quick: bool, only: &[Part]) -> anyhow::Result<Results> {
    // An empty `--only` runs every part; otherwise only those named, and the report shows
    // only what ran.
    let want = |part: Part| only.is_empty() || only.contains(&part);
    let s = if quick { QUICK } else { FULL };
    let client = natty::ConnectOptions::new([url]).connect().await?;
    let server_version = client
        .server_version()
        .map(|v| v.to_string())
        .unwrap_or_default();
    let fast_ok = client.server_version().is_some_and(|v| v.at_least(2, 14));
    let mut workloads = Vec::new();
    let mut notes = Vec::new();

    for size in [128usize, 4096].into_iter().filter(|_| want(Part::Default)) {
        // The default path: `Auto` on a stream made with natty's defaults (which allow batching
        // on 2.14+), against a careful raw user's pipelined publish.
        let (a, b) = pairs(
            &format!("default publish {size} B"),
            s.pairs,
            || workloads::publish_natty(&client, "BENCH_DEF", s.publish_n, size, PublishMode::Auto),
            || workloads::publish_raw(&client, "BENCH_DEF", s.publish_n, size),
        )
        .await?;
        let bound = if size == 128 { 1.4 } else { 1.1 };
        workloads.push(workload(
            &format!("default publish (Auto) vs raw pipelined {size} B"),
            "msg/s",
            a,
            b,
            Some((bound, true, true)),
            quick,
        ));
    }
    for size in [128usize, 4096].into_iter().filter(|_| want(Part::Publish)) {
        let (a, b) = pairs(
            &format!("publish {size} B"),
            s.pairs,
            || {
                workloads::publish_natty(
                    &client,
                    "BENCH_PUB",
                    s.publish_n,
                    size,
                    PublishMode::Pipelined,
                )
            },
            || workloads::publish_raw(&client, "BENCH_PUB", s.publish_n, size),
        )
        .await?;
        workloads.push(workload(
            &format!("pipelined publish {size} B"),
            "msg/s",
            a,
            b,
            Some((0.97, true, true)),
            quick,
        ));
    }
    if fast_ok && want(Part::Fast) {
        // natty's fast ingest against raw *pipelined* (the target), and raw fast ingest for reference.
        let (a, b) = pairs(
            "fast ingest vs raw pipelined 128 B",
            s.pairs,
            || {
                workloads::publish_natty(
                    &client,
                    "BENCH_FAST",
                    s.publish_n,
                    128,
                    PublishMode::FastIngest,
                )
            },
            || workloads::publish_raw(&client, "BENCH_FAST", s.publish_n, 128),
        )
        .await?;
        workloads.push(workload(
            "fast ingest vs raw pipelined 128 B",
            "msg/s",
            a,
            b,
            Some((1.4, true, true)),
            quick,
        ));
        let (a, b) = pairs(
            "fast ingest vs raw fast ingest 128 B",
            s.pairs,
            || {
                workloads::publish_natty(
                    &client,
                    "BENCH_FAST",
                    s.publish_n,
                    128,
                    PublishMode::FastIngest,
                )
            },
            || workloads::fast_raw(&client, "BENCH_FAST", s.publish_n, 128, true),
        )
        .await?;
        workloads.push(workload(
            "fast ingest vs raw fast ingest with ids 128 B",
            "msg/s",
            a,
            b,
            Some((0.95, true, true)),
            quick,
        ));
        let (a, b) = pairs(
            "fast ingest vs raw fast ingest without ids 128 B",
            s.pairs,
            || {
                workloads::publish_natty(
                    &client,
                    "BENCH_FAST",
                    s.publish_n,
                    128,
                    PublishMode::FastIngest,
                )
            },
            || workloads::fast_raw(&client, "BENCH_FAST", s.publish_n, 128, false),
        )
        .await?;
        workloads.push(workload(
            "fast ingest vs raw fast ingest without ids 128 B",
            "msg/s",
            a,
            b,
            None,
            quick,
        ));
        let ratio = |name: &str| {
            workloads
                .iter()
                .find(|w| w.name == name)
                .map(|w| w.median_ratio)
        };
        if let (Some(with), Some(without)) = (
            ratio("fast ingest vs raw fast ingest with ids 128 B"),
            ratio("fast ingest vs raw fast ingest without ids 128 B"),
        ) {
            notes.push(format!(
                "Fast ingest (the default path on natty's streams): raw fast ingest without \
                 `Nats-Msg-Id` ran {:.2} x raw fast ingest with ids in this run, and natty's \
                 FastIngest {with:.2} x raw with ids. natty sends an id with every message \
                 because its re-sends (after a gap, a timeout or a reconnect) rely on the \
                 server's duplicate window to stay exactly-once; what the ids cost is the \
                 server's bookkeeping of that window, not natty's pipeline.",
                with / without
            ));
        }
    }

    if want(Part::Consume) {
        workloads::fill(&client, "BENCH_CONSUME", s.consume_n).await?;
        for (pull, label) in [
            (
                workloads::RawPull::Messages,
                "consume + ack 128 B vs raw messages()",
            ),
            (
                workloads::RawPull::Fetch,
                "consume + ack 128 B vs raw fetch",
            ),
        ] {
            let (a, b) = pairs(
                label,
                s.pairs,
                || workloads::consume_natty(&client, "BENCH_CONSUME", "natty", s.consume_n),
                || workloads::consume_raw(&client, "BENCH_CONSUME", "raw", s.consume_n, pull),
            )
            .await?;
            workloads.push(workload(
                label,
                "msg/s",
                a,
                b,
                Some((1.0, true, true)),
                quick,
            ));
        }
    }

    if want(Part::Group) {
        group::fill(&client, "BENCH_GROUP", s.consume_n).await?;
        for members in [1usize, 2, 4] {
            let label = format!(
                "consumer group of {members} vs one consumer ordered by key ({} partitions)",
                group::PARTITIONS
            );
            let (a, b) = pairs(
                &label,
                s.pairs,
                || group::members(url, "BENCH_GROUP", s.consume_n, members),
                || group::single(&client, "BENCH_GROUP", s.consume_n),
            )
            .await?;
            workloads.push(workload(&label, "msg/s", a, b, None, quick));
        }
        notes.push(
            "Consumer groups: members are tasks with a connection each, on this machine's \
             cores; each partition and the single consumer run 8 handlers at once (trivial \
             handlers: this measures the group's own cost, not parallel handler time); a \
             group's rate counts from its members' start, so joining and balancing are in it. \
             The \"raw\" column is the single consumer."
                .to_owned(),
        );
    }

    if want(Part::Latency) {
        // Publish-to-handler latency at a low fixed rate, idle gaps longer than the heartbeat.
        let w = workloads::LowRate {
            rate: 200.0,
            per_burst: if quick { 100 } else { 400 },
            bursts: if quick { 2 } else { 3 },
            heartbeat: Duration::from_secs(1),
            gap: Duration::from_millis(3500),
        };
        let (mut p50, mut p99, mut max) = ((vec![], vec![]), (vec![], vec![]), (vec![], vec![]));
        for i in 0..s.pairs {
            let n = workloads::latency_natty(&client, "BENCH_LAT", w).await?;
            let r = workloads::latency_raw(&client, "BENCH_LAT", w).await?;
            for (slot, p) in [(&mut p50, 0.5), (&mut p99, 0.99), (&mut max, 1.0)] {
                slot.0.push(percentile(&n, p));
                slot.1.push(percentile(&r, p));
            }
            eprintln!(
                "latency pair {}: p99 natty {:.0} µs raw {:.0} µs, max natty {:.0} µs",
                i + 1,
                p99.0[i],
                p99.1[i],
                max.0[i]
            );
        }
        let worst = max.0.iter().copied().fold(0.0, f64::max);
        workloads.push(workload(
            "low-rate latency p50",
            "µs",
            p50.0,
            p50.1,
            None,
            quick,
        ));
        workloads.push(workload(
            "low-rate latency p99",
            "µs",
            p99.0,
            p99.1,
            Some((1.2, false, true)),
            quick,
        ));
        let mut w = workload("low-rate latency max", "µs", max.0, max.1, None, quick);
        w.target = Some(judged(quick, "natty max < 1 s".into(), worst < 1e6));
        workloads.push(w);
    }

    // put, get, refresh.
    let mut kv: [LatencyPairs; 3] = Default::default();
    for i in (0..s.pairs).filter(|_| want(Part::Kv)) {
        let n = workloads::kv_natty(&client, "bench_kv_natty", s.kv_ops).await?;
        let r = workloads::kv_raw(&client, "bench_kv_raw", s.kv_ops).await?;
        kv[0].push(&n.0, &r.0);
        kv[1].push(&n.1, &r.1);
        kv[2].push(&n.2, &r.2);
        eprintln!(
            "kv pair {}: put p50 natty {:.0} µs raw {:.0} µs",
            i + 1,
            kv[0].p50.0[i],
            kv[0].p50.1[i]
        );
    }
    if want(Part::Kv) {
        for (pairs, name) in kv.into_iter().zip(["put", "get", "refresh"]) {
            workloads.extend(pairs.workloads(
                |q| format!("KV {name} {q}"),
                Some((1.05, false, true)),
                quick,
            ));
        }
    }

    // Fenced writes: the p50 target is 1.5 x a raw KV put (one atomic batch with the lease).
    // The same batch sent raw (jetstream-extra, no natty) in the same pairs separates
    // natty's cost from the server's.
    let mut fenced = LatencyPairs::default();
    // p50 of the raw atomic batch, per pair.
    let mut batch_p50 = Vec::new();
    for i in (0..s.pairs).filter(|_| want(Part::Fenced)) {
        let n = workloads::fenced_natty(url, s.kv_ops, 1).await?;
        let r = workloads::kv_raw_puts(&client, "bench_fenced_raw", s.kv_ops, 1).await?;
        let a = workloads::atomic_raw(&client, s.kv_ops).await?;
        fenced.push(&n, &r);
        batch_p50.push(percentile(&a, 0.5));
        eprintln!(
            "fenced pair {}: p50 fenced {:.0} µs, raw put {:.0} µs, raw atomic batch {:.0} µs",
            i + 1,
            fenced.p50.0[i],
            fenced.p50.1[i],
            batch_p50[i]
        );
    }
    if want(Part::Fenced) {
        let natty_vs_batch = workload(
            "fenced write p50 (vs the raw atomic batch)",
            "µs",
            fenced.p50.0.clone(),
            batch_p50.clone(),
            None,
            quick,
        );
        let server = workload(
            "raw atomic batch p50, no natty (vs raw KV put)",
            "µs",
            batch_p50,
            fenced.p50.1.clone(),
            None,
            quick,
        );
        let (server_ratio, natty_ratio) = (server.median_ratio, natty_vs_batch.median_ratio);
        workloads.extend(fenced.workloads(
            |q| format!("fenced write {q} (vs raw KV put)"),
            Some((1.5, false, true)),
            quick,
        ));
        workloads.push(natty_vs_batch);
        workloads.push(server);
        // Production elections use R3 buckets: the same comparison on a 3-node cluster (in
        // containers on this host), unless the bench runs against an external server.
        let mut r3 = "(not measured: external server)".to_owned();
        if std::env::var("NATS_URL").is_err() {
            let cluster = natty_testkit::NatsCluster::start(3).await?;
            let url = cluster.node(0).url();
            let client = natty::ConnectOptions::new([url.clone()]).connect().await?;
            let mut pairs = LatencyPairs::default();
            for i in 0..s.pairs {
                let n = workloads::fenced_natty(&url, s.kv_ops, 3).await?;
                let r = workloads::kv_raw_puts(&client, "bench_fenced_raw3", s.kv_ops, 3).await?;
                pairs.push(&n, &r);
                eprintln!(
                    "fenced R3 pair {}: p50 fenced {:.0} µs, raw put {:.0} µs",
                    i + 1,
                    pairs.p50.0[i],
                    pairs.p50.1[i]
                );
            }
            let r3_workloads = pairs.workloads(
                |q| format!("fenced write {q}, R3 cluster (vs raw KV put, R3)"),
                None,
                quick,
            );
            r3 = format!("{:.2} x", r3_workloads[0].median_ratio);
            workloads.extend(r3_workloads);
        }
        notes.push(format!(
            "Fenced writes: a raw atomic batch of the same shape (jetstream-extra, no natty) costs \
             {:.1} x a raw KV put in this run, and natty's fenced write {:.2} x that raw batch: \
             the cost is the server's. nats-server syncs R1 file-backed atomic batches to disk \
             (SyncAlways while staging and committing; nats-server PRs 7298 and 8539), a KV put \
             is not synced (a memory-storage stream, measured once by hand here: batch ~1.2 x put). \
             On a 3-node cluster (R3 buckets, as production elections use) a fenced write \
             cost {} a raw R3 put. What would meet the target on R1: a server that coalesces \
             or skips those syncs.",
            server_ratio, natty_ratio, r3
        ));
    }

    let features = if want(Part::Features) {
        Some(features_run(url, &s, quick).await?)
    } else {
        None
    };

    let failover = if want(Part::Election) {
        Some(election(url, &s, quick).await?)
    } else {
        None
    };
    let (memory, memory_target) = if want(Part::Memory) {
        let (m, t) = memory_run(url, &s, quick).await?;
        (Some(m), Some(t))
    } else {
        (None, None)
    };
    Ok(Results {
        quick,
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        server_version,
        machine: report::Machine::here(),
        server: if std::env::var("NATS_URL").is_ok() {
            format!("external server at {url} (NATS_URL)")
        } else {
            "natty-testkit container on this host, JetStream file storage on an anonymous \
             Docker volume (/data, a host directory, not the overlay layer)"
                .to_owned()
        },
        pairs: s.pairs,
        workloads,
        failover,
        memory,
        memory_target,
        notes,
        features_in_build: FEATURES,
        features,
    })
}

/// The workloads of the features comparison, with this build's features: median natty/raw
/// ratios of the default publish path (128 B) and of consume + ack (raw: `messages()`).
async fn feature_ratios(url: &str, s: &Sizes) -> anyhow::Result<Vec<(String, f64)>> {
    let client = natty::ConnectOptions::new([url]).connect().await?;
    let (a, b) = pairs(
        "features: default publish 128 B",
        s.pairs,
        || workloads::publish_natty(&client, "BENCH_FEAT", s.publish_n, 128, PublishMode::Auto),
        || workloads::publish_raw(&client, "BENCH_FEAT", s.publish_n, 128),
    )
    .await?;
    let publish = workload("", "msg/s", a, b, None, true).median_ratio;
    workloads::fill(&client, "BENCH_FEAT_CONSUME", s.consume_n).await?;
    let (a, b) = pairs(
        "features: consume + ack 128 B",
        s.pairs,
        || workloads::consume_natty(&client, "BENCH_FEAT_CONSUME", "natty", s.consume_n),
        || {
            workloads::consume_raw(
                &client,
                "BENCH_FEAT_CONSUME",
                "raw",
                s.consume_n,
                workloads::RawPull::Messages,
            )
        },
    )
    .await?;
    let consume = workload("", "msg/s", a, b, None, true).median_ratio;
    Ok(vec![
        (
            "default publish (Auto) vs raw pipelined 128 B".to_owned(),
            publish,
        ),
        ("consume + ack 128 B vs raw messages()".to_owned(), consume),
    ])
}

/// The features comparison: this build's ratios, then natty-bench-obs's (the same workloads
/// built with natty's `metrics`, `otel` and `serde`; `cargo xtask bench` builds it and names
/// it in `NATTY_BENCH_OBS`) against the same server.
async fn features_run(url: &str, s: &Sizes, quick: bool) -> anyhow::Result<report::Features> {
    let off = feature_ratios(url, s).await?;
    let obs = std::env::var("NATTY_BENCH_OBS").map_err(|_| {
        anyhow::anyhow!(
            "the features part needs NATTY_BENCH_OBS, the natty-bench binary built with \
             `--features observability` (run it through `cargo xtask bench`)"
        )
    })?;
    let mut cmd = tokio::process::Command::new(obs);
    cmd.args(["ratios", url]);
    if quick {
        cmd.arg("--quick");
    }
    let output = cmd.output().await?;
    anyhow::ensure!(
        output.status.success(),
        "the features-on run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let on: Vec<(String, f64)> = serde_json::from_slice(&output.stdout)
        .map_err(|e| anyhow::anyhow!("features-on run output: {e}"))?;
    Ok(report::Features {
        rows: off
            .into_iter()
            .zip(on)
            .map(|((name, off), (_, on))| (name, off, on))
            .collect(),
    })
}

async fn election(url: &str, s: &Sizes, quick: bool) -> anyhow::Result<Failover> {
    eprintln!(
        "election: {} resign trials, {} crash trials (TTL {CRASH_TTL:?})",
        s.resign_trials, s.crash_trials
    );
    let resign_ms = workloads::failover(url, s.resign_trials, CRASH_TTL, false).await?;
    let crash_ms = workloads::failover(url, s.crash_trials, CRASH_TTL, true).await?;
    let ttl_ms = CRASH_TTL.as_secs_f64() * 1e3;
    let resign_p99 = percentile(&resign_ms, 0.99);
    let crash_max = crash_ms.iter().copied().fold(0.0, f64::max);
    Ok(Failover {
        ttl_ms,
        resign_target: judged(
            quick || resign_ms.is_empty(),
            "p99 < 50 ms".into(),
            resign_p99 < 50.0,
        ),
        crash_target: judged(
            quick || crash_ms.is_empty(),
            format!("every trial <= TTL + 500 ms ({} ms)", ttl_ms + 500.0),
            crash_max <= ttl_ms + 500.0,
        ),
        resign_ms,
        crash_ms,
    })
}

async fn memory_run(
    url: &str,
    s: &Sizes,
    quick: bool,
) -> anyhow::Result<(memory::MemoryResult, Target)> {
    let exe = std::env::current_exe()?;
    let output = tokio::process::Command::new(exe)
        .args(["memory", url, &s.memory_n.to_string()])
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "memory run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let memory: memory::MemoryResult = serde_json::from_slice(&output.stdout)
        .map_err(|e| anyhow::anyhow!("memory run output: {e}"))?;
    let grew = memory
        .peak_rss_bytes
        .saturating_sub(memory.baseline_rss_bytes);
    let memory_target = judged(
        quick,
        "RSS growth under the configured bound".into(),
        grew <= memory.bound_bytes,
    );
    Ok((memory, memory_target))
}
