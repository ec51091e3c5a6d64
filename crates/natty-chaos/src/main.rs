//! natty-chaos: elections and streams on a 3-node JetStream cluster under a seeded schedule of
//! faults — frozen and killed leaders, killed consumers, killed and partitioned nodes, the
//! durable deleted and re-created, the dead-letter subject uncaptured for a while, and idle
//! spans longer than the consumers' heartbeat and pull expiry — then checks, from what every
//! process printed, that nothing was lost and no two leaders acted at once. Run it through `cargo xtask chaos [--minutes N] [--seed S]`.
#![allow(clippy::print_stdout, reason = "the orchestrator prints its report")]

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write as _,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use natty::{BatchConfig, BatchPublisher, ConsumerConfig, StreamConfig};
use natty_chaos::{DEAD_LETTER_EVERY, Event, Line, Lines, init_logs, mono_ns};
use natty_testkit::{
    NatsCluster,
    group::owned_at,
    procs::{Term, sibling_binary, signal},
    proxy::Proxy,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::process::{Child, Command};

const TTL_SECS: u64 = 2;
const TTL_NS: u64 = TTL_SECS * 1_000_000_000;
const CANDIDATES: usize = 5;
const CONSUMERS: usize = 2;

mod group;

/// What a child process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Candidate,
    Consumer,
    /// A consumer group member (natty-group's `group_member` example).
    Member,
}

struct Proc {
    name: String,
    kind: Kind,
    child: Child,
    incarnation: u32,
}

impl Proc {
    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The tag of its lines (`Line::proc`).
    fn tag(&self) -> String {
        format!("{}#{}", self.name, self.incarnation)
    }
}

struct World {
    servers: String,
    lines: Lines,
    procs: Vec<Proc>,
    bin_dir: PathBuf,
    /// Each member's way to the servers: a proxy per node, kept across its incarnations, cut
    /// to cut the member off the network.
    proxies: HashMap<String, Vec<Proxy>>,
    /// When each killed process (`Line::proc`) was seen dead.
    deaths: HashMap<String, u64>,
}

impl World {
    async fn spawn(&mut self, name: &str, kind: Kind, incarnation: u32) -> anyhow::Result<()> {
        let cmd = if kind == Kind::Member {
            let servers = self.proxies[name]
                .iter()
                .map(Proxy::url)
                .collect::<Vec<_>>()
                .join(",");
            let mut c = Command::new(sibling_binary("group_member", true)?);
            c.args(["--server", &servers, "--member", name])
                .args(["--group", group::NAME, "--stream", group::STREAM])
                .args(["--prefix", group::PREFIX])
                .args(["--partitions", &group::PARTITIONS.to_string()])
                .args(["--ttl", &TTL_SECS.to_string()])
                .args(["--ack-wait", &group::ACK_WAIT_SECS.to_string()])
                .args([
                    "--concurrency",
                    "4",
                    "--batch",
                    "50",
                    "--handler-us",
                    "2000",
                ])
                .args(["--replicas", "3"]);
            // Each take-over says where the new owner's durable starts and from which.
            if std::env::var_os("RUST_LOG").is_none() {
                c.env("RUST_LOG", "warn,natty_group::durables=info");
            }
            c
        } else if kind == Kind::Candidate {
            let mut c = Command::new(self.bin_dir.join("chaos-candidate"));
            c.args([
                "--server",
                &self.servers,
                "--node",
                name,
                "--ttl",
                &TTL_SECS.to_string(),
            ]);
            // Every other candidate drops its `run` future on SIGTERM instead of cancelling.
            if name
                .trim_start_matches('c')
                .parse::<usize>()
                .is_ok_and(|i| i % 2 == 1)
            {
                c.arg("--drop-on-term");
            }
            if std::env::var_os("CHAOS_UNSAFE_CANDIDATES").is_some() {
                c.arg("--unsafe-skip-validity-check");
            }
            c
        } else {
            let mut c = Command::new(self.bin_dir.join("chaos-consumer"));
            c.args(["--server", &self.servers, "--id", name]);
            c
        };
        let child = self.lines.spawn(cmd, &format!("{name}#{incarnation}"))?;
        self.procs.push(Proc {
            name: name.to_owned(),
            kind,
            child,
            incarnation,
        });
        Ok(())
    }

    /// The candidate that leads now, by the lines: its last `elected` after which it printed
    /// no `lost`/`exit`.
    fn leader(&self) -> Option<usize> {
        let mut state: HashMap<String, bool> = HashMap::new();
        for l in self.lines.all() {
            match l.event {
                Event::Elected { .. } => {
                    state.insert(l.proc, true);
                }
                Event::Lost { .. } | Event::Exit { .. } => {
                    state.insert(l.proc, false);
                }
                _ => {}
            }
        }
        self.procs
            .iter()
            .position(|p| p.kind == Kind::Candidate && state.get(&p.tag()) == Some(&true))
    }

    async fn signal(&self, idx: usize, sig: &str) -> anyhow::Result<()> {
        if let Some(pid) = self.procs[idx].pid() {
            // (a process that has just exited cannot be signalled: not a failure here)
            let _ = signal(pid, sig).await;
        }
        Ok(())
    }

    async fn kill_and_respawn(&mut self, idx: usize, pause: Duration) -> anyhow::Result<String> {
        self.signal(idx, "-KILL").await?;
        let mut p = self.procs.remove(idx);
        let _ = p.child.wait().await;
        self.deaths.insert(p.tag(), mono_ns());
        tokio::time::sleep(pause).await;
        let name = p.name.clone();
        self.spawn(&p.name, p.kind, p.incarnation + 1).await?;
        Ok(name)
    }
}

#[derive(Debug, Clone)]
struct Fault {
    kind: &'static str,
    target: String,
    /// The process it hit (`Line::proc`), for member faults; empty otherwise.
    proc: String,
    start_ns: u64,
    end_ns: u64,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

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
    let Args { minutes, seed, out } = <Args as clap::Parser>::parse();
    init_logs();
    let runtime = tokio::runtime::Runtime::new()?;
    let passed = runtime.block_on(run(minutes, seed, &out))?;
    anyhow::ensure!(
        passed,
        "chaos checks failed: see {}/report.md",
        out.display()
    );
    Ok(())
}

async fn run(minutes: f64, seed: u64, out: &std::path::Path) -> anyhow::Result<bool> {
    let mut rng = StdRng::seed_from_u64(seed);
    let duration_ns = (minutes * 60e9) as u64;
    eprintln!("chaos: {minutes} min, seed {seed}: starting a 3-node cluster");
    let cluster = NatsCluster::start(3).await?;
    let servers = cluster.urls().join(",");
    let client = natty::ConnectOptions::new(cluster.urls())
        .request_timeout(Duration::from_secs(3))
        .connect()
        .await?;
    natty::stream::ensure_stream(
        &client,
        &StreamConfig::new("CHAOS", ["chaos.>"]).replicas(3),
    )
    .await?;
    let durable = ConsumerConfig::new("CHAOS", "workers")
        .ack_wait(Duration::from_secs(5))
        .max_deliver(None);
    natty::stream::ensure_consumer(&client, &durable).await?;
    natty::stream::ensure_stream(
        &client,
        &StreamConfig::new("CHAOS_DL", ["chaos-dl.>"]).replicas(3),
    )
    .await?;
    let bin_dir = std::env::current_exe()?
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let mut world = World {
        servers,
        lines: Lines::default(),
        procs: Vec::new(),
        bin_dir,
        proxies: HashMap::new(),
        deaths: HashMap::new(),
    };
    for i in 0..CANDIDATES {
        world.spawn(&format!("c{i}"), Kind::Candidate, 0).await?;
    }
    for i in 0..CONSUMERS {
        world.spawn(&format!("k{i}"), Kind::Consumer, 0).await?;
    }
    // The consumer group: its own R3 stream, members through their proxies, and a paced
    // publisher of keyed, numbered messages.
    natty::stream::ensure_stream(
        &client,
        &StreamConfig::new(group::STREAM, [format!("{}.>", group::PREFIX)]).replicas(3),
    )
    .await?;
    for i in 0..group::MEMBERS {
        let name = format!("m{i}");
        let mut proxies = Vec::new();
        for node in cluster.nodes() {
            proxies.push(Proxy::start(node.port()).await?);
        }
        world.proxies.insert(name.clone(), proxies);
        world.spawn(&name, Kind::Member, 0).await?;
    }

    // The publisher: numbered messages paced over the first 70% of the run.
    let total: u64 = ((20_000.0 * minutes) as u64).clamp(5_000, 200_000);
    let publisher = Arc::new(BatchPublisher::new(
        client.clone(),
        BatchConfig::default().max_attempts(30),
    )?);
    let mut failures = publisher
        .take_errors()
        .ok_or_else(|| anyhow::anyhow!("error channel"))?;
    let publish = {
        let publisher = publisher.clone();
        let pace = Duration::from_nanos(((duration_ns as f64 * 0.7) / total as f64) as u64);
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            for i in 0..total {
                publisher
                    .send("chaos.n", i.to_be_bytes().to_vec().into())
                    .await?;
                // Now and then a quiet spell longer than the consumers' heartbeat (1 s) and
                // pull expiry (5 s): an idle consumer must not go deaf.
                if i % 3000 == 2999 {
                    tokio::time::sleep(Duration::from_secs(2 + (i / 3000) % 6)).await;
                }
                if i % 100 == 0 {
                    tokio::time::sleep_until(start + pace * u32::try_from(i).unwrap_or(u32::MAX))
                        .await;
                }
            }
            anyhow::Ok(())
        })
    };

    // The group's publisher, over the same 70% of the run.
    let group_publish = tokio::spawn(group::publish(
        client.clone(),
        Duration::from_nanos((duration_ns as f64 * 0.7) as u64),
    ));

    // RSS samples of every child, every 2 s.
    let mut samples: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();

    // Faults start once a leader works (the cluster and candidates are up).
    let ready_by = mono_ns() + 60_000_000_000;
    while !world.lines.any(|l| matches!(l.event, Event::Work { .. })) {
        anyhow::ensure!(mono_ns() < ready_by, "no leader within 60 s of the start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ... and every group partition is owned.
    while world.lines.with(group::owned) < group::PARTITIONS as usize {
        anyhow::ensure!(
            mono_ns() < ready_by,
            "group partitions not all owned within 60 s of the start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let start = mono_ns();
    let end = start + duration_ns;
    let mut faults: Vec<Fault> = Vec::new();
    let mut faults_tried: u64 = 0;
    // Diagnostics: the durable's state every second, and what each re-creation read and made.
    let notes = Notes::default();
    let watcher = tokio::spawn(watch_durable(client.clone(), notes.clone(), start));
    let mut rss_due = start;
    while mono_ns() < end {
        // Sample RSS.
        if mono_ns() >= rss_due {
            for p in &world.procs {
                if let Some(pid) = p.pid()
                    && let Some(kib) = rss_kib(pid)
                {
                    samples
                        .entry(format!("{}#{}", p.name, p.incarnation))
                        .or_default()
                        .push((mono_ns(), kib));
                }
            }
            rss_due = mono_ns() + 2_000_000_000;
        }
        let t0 = mono_ns();
        let mut hit = String::new();
        // Every third fault hits a consumer group member: frozen, killed, cut off, in turn.
        let member_slot = faults_tried.is_multiple_of(3);
        let member_kind = (faults_tried / 3) % 3;
        faults_tried += 1;
        let fault = if member_slot {
            // A member that owns partitions now, if any does.
            let owning = world.lines.with(|all| owned_at(all, u64::MAX));
            let mut members: Vec<usize> = (0..world.procs.len())
                .filter(|&i| world.procs[i].kind == Kind::Member)
                .collect();
            if members.iter().any(|&i| {
                owning
                    .get(&world.procs[i].tag())
                    .is_some_and(|p| !p.is_empty())
            }) {
                members.retain(|&i| {
                    owning
                        .get(&world.procs[i].tag())
                        .is_some_and(|p| !p.is_empty())
                });
            }
            let i = members[rng.random_range(0..members.len())];
            hit = world.procs[i].tag();
            let name = world.procs[i].name.clone();
            match member_kind {
                0 => {
                    let hold = Duration::from_millis(rng.random_range(1000..6000)); // 0.5 to 3 x TTL
                    world.signal(i, "-STOP").await?;
                    tokio::time::sleep(hold).await;
                    world.signal(i, "-CONT").await?;
                    Some(("freeze member", name))
                }
                1 => Some((
                    "kill member",
                    world
                        .kill_and_respawn(i, Duration::from_millis(rng.random_range(500..1500)))
                        .await?,
                )),
                _ => {
                    // Through its proxies only: the member alone is cut off, the others and
                    // the cluster carry on.
                    let hold = Duration::from_millis(rng.random_range(3000..6000));
                    for p in &world.proxies[&name] {
                        p.cut();
                    }
                    tokio::time::sleep(hold).await;
                    for p in &world.proxies[&name] {
                        p.restore();
                    }
                    Some(("cut member", name))
                }
            }
        } else {
            let roll = rng.random_range(0..100);
            if roll < 22 {
                match world.leader() {
                    Some(l) => {
                        let hold = Duration::from_millis(rng.random_range(1000..6000)); // 0.5 to 3 x TTL
                        world.signal(l, "-STOP").await?;
                        tokio::time::sleep(hold).await;
                        world.signal(l, "-CONT").await?;
                        Some(("freeze leader", world.procs[l].name.clone()))
                    }
                    None => None,
                }
            } else if roll < 30 {
                // A graceful stop (cancel and resign, or for odd candidates a dropped `run`),
                // with the leader's server paused half the time: shutdown must end regardless.
                match world.leader() {
                    Some(l) => {
                        let pause = rng.random_bool(0.5);
                        let node = cluster.node(rng.random_range(0..3));
                        if pause {
                            node.pause().await?;
                        }
                        world.signal(l, "-TERM").await?;
                        let mut p = world.procs.remove(l);
                        let ended =
                            tokio::time::timeout(Duration::from_secs(TTL_SECS + 3), p.child.wait())
                                .await;
                        if pause {
                            node.unpause().await?;
                        }
                        if ended.is_err() {
                            eprintln!("{} did not exit within TTL + 3 s of SIGTERM", p.name);
                            let _ = p.child.kill().await;
                        }
                        world
                            .spawn(&p.name, Kind::Candidate, p.incarnation + 1)
                            .await?;
                        Some((
                            if ended.is_ok() {
                                "stop leader"
                            } else {
                                "stop leader (hung)"
                            },
                            p.name.clone(),
                        ))
                    }
                    None => None,
                }
            } else if roll < 35 {
                // The election bucket deleted behind everyone's back: re-created after a TTL.
                natty::Kv::new(client.clone())
                    .delete_bucket("chaos_el")
                    .await?;
                Some(("delete bucket", "chaos_el".to_owned()))
            } else if roll < 42 {
                match world.leader() {
                    Some(l) => Some((
                        "kill leader",
                        world
                            .kill_and_respawn(l, Duration::from_millis(rng.random_range(500..1500)))
                            .await?,
                    )),
                    None => None,
                }
            } else if roll < 50 {
                let c: Vec<usize> = (0..world.procs.len())
                    .filter(|&i| {
                        world.procs[i].kind == Kind::Candidate && Some(i) != world.leader()
                    })
                    .collect();
                let i = c[rng.random_range(0..c.len())];
                Some((
                    "kill follower",
                    world
                        .kill_and_respawn(i, Duration::from_millis(500))
                        .await?,
                ))
            } else if roll < 62 {
                let c: Vec<usize> = (0..world.procs.len())
                    .filter(|&i| world.procs[i].kind == Kind::Consumer)
                    .collect();
                let i = c[rng.random_range(0..c.len())];
                Some((
                    "kill consumer",
                    world
                        .kill_and_respawn(i, Duration::from_millis(rng.random_range(200..2000)))
                        .await?,
                ))
            } else if roll < 72 {
                let n = rng.random_range(0..3);
                let node = cluster.node(n);
                node.kill().await?;
                tokio::time::sleep(Duration::from_millis(rng.random_range(3000..6000))).await;
                node.start_again().await?;
                Some(("kill node", node.name().to_owned()))
            } else if roll < 82 {
                // Deleted behind the consumers' back and re-created (from its ack floor, as an
                // operator would) within their grace period: they must carry on.
                // From the ack floor, never below the durable's start, and only when it has a
                // leader (natty's own rule for a durable's replacement).
                let (before, from) = retrying("reading the durable's ack floor", || async {
                    let info = client
                        .jetstream()
                        .get_stream("CHAOS")
                        .await?
                        .consumer_info("workers")
                        .await?
                        .clone();
                    let Some(from) = natty::stream::resume_sequence(&info) else {
                        anyhow::bail!("the durable has no leader: {}", durable_state(&info));
                    };
                    Ok((info, from))
                })
                .await?;
                retrying("deleting the durable", || async {
                    Ok(natty::stream::delete_consumer(&client, "CHAOS", "workers").await?)
                })
                .await?;
                tokio::time::sleep(Duration::from_millis(rng.random_range(1000..5000))).await;
                let again = durable
                    .clone()
                    .deliver_from(natty::stream::DeliverFrom::Sequence(from));
                retrying("re-creating the durable", || async {
                    Ok(natty::stream::ensure_consumer(&client, &again).await?)
                })
                .await?;
                let after = client
                    .jetstream()
                    .get_stream("CHAOS")
                    .await?
                    .consumer_info("workers")
                    .await
                    .map(|i| durable_state(&i))
                    .unwrap_or_else(|e| format!("(info failed: {e})"));
                notes.push(format!(
                "[{:>6.1}s] durable re-created from {}: before deletion {}; after re-creation {}",
                (t0 - start) as f64 / 1e9,
                from,
                durable_state(&before),
                after
            ));
                Some(("delete durable", "workers".to_owned()))
            } else if roll < 90 {
                // The dead-letter subject captured by no stream for a while: refused messages
                // whose dead-letter publish fails must stay and be dead-lettered later.
                let subjects = |subject: &'static str| {
                    let client = client.clone();
                    async move {
                        let js = client.jetstream();
                        let mut config = js
                            .get_stream("CHAOS_DL")
                            .await?
                            .cached_info()
                            .config
                            .clone();
                        config.subjects = vec![subject.to_owned()];
                        js.update_stream(&config).await?;
                        anyhow::Ok(())
                    }
                };
                retrying("uncapturing the dead-letter subject", || {
                    subjects("chaos-dl-off.>")
                })
                .await?;
                tokio::time::sleep(Duration::from_millis(rng.random_range(2000..6000))).await;
                retrying("capturing the dead-letter subject again", || {
                    subjects("chaos-dl.>")
                })
                .await?;
                Some(("dead-letter uncaptured", "CHAOS_DL".to_owned()))
            } else {
                let n = rng.random_range(0..3);
                let node = cluster.node(n);
                node.disconnect().await?;
                tokio::time::sleep(Duration::from_millis(rng.random_range(3000..6000))).await;
                node.reconnect().await?;
                Some(("partition node", node.name().to_owned()))
            }
        };
        if let Some((kind, target)) = fault {
            let f = Fault {
                kind,
                target,
                proc: hit,
                start_ns: t0,
                end_ns: mono_ns(),
            };
            eprintln!(
                "[{:>6.1}s] {} {} ({:.1}s)",
                (t0 - start) as f64 / 1e9,
                f.kind,
                f.target,
                (f.end_ns - t0) as f64 / 1e9
            );
            faults.push(f);
        }
        // Give the system TTL + 2.5 s before the next fault, so each recovery is judged alone.
        tokio::time::sleep(Duration::from_millis(TTL_SECS * 1000 + 2500)).await;
    }
    eprintln!("chaos: faults over, healing and draining");
    watcher.abort();
    let all_nodes_back = cluster.wait_meta_leader().await;

    publish.await??;
    let report = publisher.close().await?;
    let mut failed: HashSet<u64> = report.failed.iter().map(|f| number(&f.payload)).collect();
    while let Ok(f) = failures.try_recv() {
        failed.insert(number(&f.payload));
    }
    let stored = stored_numbers(&client, "CHAOS").await?;
    let (group_published, group_failed) = group_publish.await??;
    let group_stored = group::stored(&client).await?;
    let stored_set: HashSet<u64> = stored.iter().copied().collect();
    let refused = stored_set
        .iter()
        .filter(|n| *n % DEAD_LETTER_EVERY == 0)
        .count();
    // Wait (bounded) for the consumers to process every stored number and dead-letter every
    // refused one.
    let drain_deadline = mono_ns() + 120_000_000_000;
    let processed = loop {
        let dead = client
            .jetstream()
            .get_stream("CHAOS_DL")
            .await
            .map(|s| s.cached_info().state.messages)
            .unwrap_or(0);
        let processed: Vec<u64> = world
            .lines
            .all()
            .iter()
            .filter_map(|l| match l.event {
                Event::Processed { n, .. } => Some(n),
                _ => None,
            })
            .collect();
        let set: HashSet<u64> = processed.iter().copied().collect();
        let all_dead = usize::try_from(dead).unwrap_or(0) >= refused;
        let group_done = world
            .lines
            .with(|all| group::all_handled(all, &group_stored));
        if (stored_set.is_subset(&set) && all_dead && group_done) || mono_ns() > drain_deadline {
            break processed;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for i in 0..world.procs.len() {
        world.signal(i, "-CONT").await?;
        world.signal(i, "-TERM").await?;
    }
    for p in &mut world.procs {
        let _ = tokio::time::timeout(Duration::from_secs(5), p.child.wait()).await;
    }
    let dead_records = stored_records(&client, "CHAOS_DL").await?;
    let dead_lettered: Vec<u64> = dead_records.iter().map(|r| r.n).collect();
    let lines = world.lines.all();
    let unreadable = world.lines.unreadable();
    let group_checks = group::checks(&group::Input {
        lines: &lines,
        published: group_published,
        failed: &group_failed,
        stored: &group_stored,
        deaths: &world.deaths,
        faults: &faults,
        now: mono_ns(),
    });
    let ok = judge(Judge {
        group_checks,
        minutes,
        seed,
        total,
        failed: &failed,
        stored: &stored,
        processed: &processed,
        dead_lettered: &dead_lettered,
        dead_records: &dead_records,
        notes: &notes.all(),
        start,
        lines: &lines,
        unreadable: &unreadable,
        faults: &faults,
        samples: &samples,
        cluster_healthy: all_nodes_back.is_ok(),
        out,
    })?;
    drop(cluster);
    Ok(ok)
}

/// Retries an admin request for up to 30 s: the cluster may still be electing leaders after
/// the previous fault.
async fn retrying<T, F, Fut>(what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("chaos: {what}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.context(what.to_owned())),
        }
    }
}

/// Diagnostic lines for the report (also printed as they happen).
#[derive(Clone, Default)]
struct Notes(Arc<Mutex<Vec<String>>>);

impl Notes {
    fn push(&self, line: String) {
        eprintln!("chaos: {line}");
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(line);
    }

    fn all(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The durable's positions, one line.
fn durable_state(i: &natty::async_nats::jetstream::consumer::Info) -> String {
    format!(
        "created {} deliver {:?}, ack floor {}, delivered {}, pending {}, ack pending {}, leader {:?}",
        i.created,
        i.config.deliver_policy,
        i.ack_floor.stream_sequence,
        i.delivered.stream_sequence,
        i.num_pending,
        i.num_ack_pending,
        i.cluster.as_ref().and_then(|c| c.leader.clone()),
    )
}

/// Reads the durable's state every second and notes each time its ack floor (as
/// `natty::stream::resume_sequence` reads it) or delivered position goes backwards (a re-created durable
/// included: it should start at its old floor).
async fn watch_durable(client: natty::Client, notes: Notes, start: u64) {
    let mut last: Option<(u64, u64, String)> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let info = async {
            let s = client.jetstream().get_stream("CHAOS").await?;
            anyhow::Ok(s.consumer_info("workers").await?.clone())
        };
        let Ok(Ok(info)) = tokio::time::timeout(Duration::from_secs(2), info).await else {
            continue;
        };
        // A leaderless read (positions 0) counts as floor 0, as a backwards step.
        let floor = natty::stream::resume_sequence(&info).map_or(0, |from| from - 1);
        let delivered = info.delivered.stream_sequence;
        if let Some((f, d, was)) = &last
            && (floor < *f || delivered < *d)
        {
            notes.push(format!(
                "[{:>6.1}s] the durable went backwards: was {was}; now {}",
                (mono_ns() - start) as f64 / 1e9,
                durable_state(&info)
            ));
        }
        last = Some((floor, delivered, durable_state(&info)));
    }
}

/// A stored message: its number, when it was stored (unix ns) and its `Natty-Deliveries`.
struct Record {
    n: u64,
    stored_unix_ns: i128,
    deliveries: String,
}

async fn stored_records(client: &natty::Client, stream: &str) -> anyhow::Result<Vec<Record>> {
    let stream = client.jetstream().get_stream(stream).await?;
    let total = stream.cached_info().state.messages;
    let consumer = stream
        .create_consumer(natty::async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await?;
    let mut messages = consumer.messages().await?.take(usize::try_from(total)?);
    let mut out = Vec::new();
    while let Some(m) = messages.next().await {
        let m = m?;
        out.push(Record {
            n: number(&m.payload),
            stored_unix_ns: m
                .info()
                .map(|i| i.published.unix_timestamp_nanos())
                .unwrap_or(0),
            deliveries: m
                .headers
                .as_ref()
                .and_then(|h| h.get("Natty-Deliveries"))
                .map(|v| v.to_string())
                .unwrap_or_default(),
        });
    }
    Ok(out)
}

fn number(payload: &[u8]) -> u64 {
    payload
        .try_into()
        .map(u64::from_be_bytes)
        .unwrap_or(u64::MAX)
}

async fn stored_numbers(client: &natty::Client, stream: &str) -> anyhow::Result<Vec<u64>> {
    Ok(stored_records(client, stream)
        .await?
        .into_iter()
        .map(|r| r.n)
        .collect())
}

struct Judge<'a> {
    /// The consumer group's checks (`group.rs`).
    group_checks: Vec<(String, bool, String)>,
    minutes: f64,
    seed: u64,
    total: u64,
    failed: &'a HashSet<u64>,
    stored: &'a [u64],
    processed: &'a [u64],
    dead_lettered: &'a [u64],
    dead_records: &'a [Record],
    notes: &'a [String],
    /// When the faults started (mono ns): times in the report are from here.
    start: u64,
    lines: &'a [Line],
    unreadable: &'a [String],
    faults: &'a [Fault],
    samples: &'a BTreeMap<String, Vec<(u64, u64)>>,
    cluster_healthy: bool,
    out: &'a std::path::Path,
}

/// The election's safety checks on the candidates' lines: (0) every line printed was read
/// (a line that does not parse is a failure, never a line of zeros), (1) work spans of terms
/// never overlap, (2) no work under a term after that process's `lost` of it, (3) the fenced
/// sink accepted no write issued after a newer term was elected, (4) terms strictly increase
/// in election order. Each is `(name, passed, detail)`.
fn election_checks(lines: &[Line], unreadable: &[String]) -> Vec<(String, bool, String)> {
    let mut checks: Vec<(String, bool, String)> = Vec::new();
    checks.push((
        "every line the processes printed is readable".into(),
        unreadable.is_empty(),
        format!(
            "{} lines, {} unreadable{}",
            lines.len() + unreadable.len(),
            unreadable.len(),
            unreadable
                .first()
                .map_or_else(String::new, |l| format!(", first: {l}"))
        ),
    ));
    let works = || {
        lines.iter().filter_map(|l| match l.event {
            Event::Work { term, checked_ns } => Some((l, term, checked_ns)),
            _ => None,
        })
    };

    // 1. Leadership (acting) intervals never overlap: per term, first to last work line.
    // (first, last, proc, the lease check of the last line); the largest check-to-line gap.
    let mut spans: BTreeMap<Term, (u64, u64, String, u64)> = BTreeMap::new();
    let mut max_gap = 0;
    for (l, term, checked) in works() {
        let t = l.mono_ns;
        if checked > 0 {
            max_gap = max_gap.max(t.saturating_sub(checked));
        }
        let e = spans.entry(term).or_insert((t, t, l.proc.clone(), checked));
        e.0 = e.0.min(t);
        if t >= e.1 {
            e.1 = t;
            e.3 = checked;
        }
    }
    let mut ordered: Vec<_> = spans.iter().collect();
    ordered.sort_by_key(|(_, (s, _, _, _))| *s);
    let overlaps: Vec<String> = ordered
        .windows(2)
        .filter(|w| w[0].1.1 >= w[1].1.0)
        .map(|w| {
            format!(
                "term {:?} ({}) until {} (lease checked valid at {}, {:.1} ms before) overlaps \
                 term {:?} ({}) from {}",
                w[0].0,
                w[0].1.2,
                w[0].1.1,
                w[0].1.3,
                w[0].1.1.saturating_sub(w[0].1.3) as f64 / 1e6,
                w[1].0,
                w[1].1.2,
                w[1].1.0
            )
        })
        .collect();
    checks.push((
        "leaders never act at once (work spans of terms do not overlap)".into(),
        overlaps.is_empty(),
        format!(
            "{} terms acted; {}; largest gap from a lease check to its work line {:.1} ms",
            spans.len(),
            overlaps
                .first()
                .cloned()
                .unwrap_or_else(|| "no overlap".into()),
            max_gap as f64 / 1e6
        ),
    ));

    // 2. No work under a term after that node's `lost` of the term.
    let mut lost_at: HashMap<(&str, Term), u64> = HashMap::new();
    for l in lines {
        if let Event::Lost { term } = l.event {
            lost_at.insert((&l.proc, term), l.mono_ns);
        }
    }
    let late = works()
        .filter(|(l, term, _)| {
            lost_at
                .get(&(l.proc.as_str(), *term))
                .is_some_and(|lost| l.mono_ns > *lost)
        })
        .count();
    checks.push((
        "no work after `lost`".into(),
        late == 0,
        format!("{late} late work lines"),
    ));

    // 3. Fenced sink: no write accepted from a term issued after a newer term was elected.
    let elected: Vec<(u64, Term)> = lines
        .iter()
        .filter_map(|l| match l.event {
            Event::Elected { term, .. } => Some((l.mono_ns, term)),
            _ => None,
        })
        .collect();
    let sinks: Vec<(Term, bool, u64)> = lines
        .iter()
        .filter_map(|l| match l.event {
            Event::Sink {
                term,
                accepted,
                issued_ns,
            } => Some((term, accepted, issued_ns)),
            _ => None,
        })
        .collect();
    let accepted = sinks.iter().filter(|s| s.1).count();
    let stale = sinks
        .iter()
        .filter(|(term, accepted, issued)| {
            *accepted && elected.iter().any(|(t, e)| e > term && t < issued)
        })
        .count();
    checks.push((
        "fenced sink accepted zero stale writes".into(),
        stale == 0,
        format!(
            "{accepted} accepted, {stale} stale accepted, {} refused by the fence",
            sinks.len() - accepted
        ),
    ));

    // 4. Terms strictly increase in election order.
    let mut by_time = elected.clone();
    by_time.sort();
    let decreasing = by_time.windows(2).filter(|w| w[1].1 <= w[0].1).count();
    checks.push((
        "terms strictly increase".into(),
        decreasing == 0,
        format!("{} elections, {decreasing} out of order", by_time.len()),
    ));

    checks
}

fn judge(j: Judge<'_>) -> anyhow::Result<bool> {
    let mut checks: Vec<(String, bool, String)> = Vec::new();
    let lines = j.lines;

    // 0-4. The election's safety checks.
    checks.extend(election_checks(lines, j.unreadable));

    // 5. A leader acts again within TTL + 2 s after each process fault (someone works in the
    //    last second of that window). Node faults are held to TTL + 2 s plus the server's own
    //    raft election bound (a stream whose leader is cut off elects a new one after 4-9 s,
    //    and no client can write to it meanwhile); how long each took is reported.
    let works: Vec<u64> = lines
        .iter()
        .filter(|l| matches!(l.event, Event::Work { .. }))
        .map(|l| l.mono_ns)
        .collect();
    // Any work after `start + TTL` is done under a lease renewed or won after the fault (a
    // lease renewed before it has expired by then), so it shows leadership working again.
    let recovered_after = |start: u64| -> Option<f64> {
        works
            .iter()
            .filter(|t| **t > start + TTL_NS)
            .min()
            .map(|t| (t - start) as f64 / 1e9)
    };
    let acted_by = |start: u64, bound_ns: u64| {
        works
            .iter()
            .any(|t| *t > start + TTL_NS && *t <= start + bound_ns)
    };
    let t0 = j.faults.first().map_or(0, |f| f.start_ns);
    let describe = |f: &Fault| {
        format!(
            "{} {} at {:.1}s (leader working again {} after it)",
            f.kind,
            f.target,
            (f.start_ns - t0) as f64 / 1e9,
            recovered_after(f.start_ns).map_or_else(|| "never".to_owned(), |s| format!("{s:.1}s"))
        )
    };
    // A deleted bucket is re-created as an R3 stream: held to the node bound too.
    let node_fault = |f: &&Fault| f.kind.ends_with("node") || f.kind == "delete bucket";
    // (Member faults do not touch the election.)
    let process_faults: Vec<&Fault> = j
        .faults
        .iter()
        .filter(|f| !node_fault(f) && !group::is_member_fault(f))
        .collect();
    let node_faults: Vec<&Fault> = j.faults.iter().filter(node_fault).collect();
    let late: Vec<String> = process_faults
        .iter()
        .filter(|f| !acted_by(f.start_ns, TTL_NS + 2_000_000_000))
        .map(|f| describe(f))
        .collect();
    checks.push((
        "a leader acts again within TTL + 2 s of each process fault".into(),
        late.is_empty(),
        if late.is_empty() {
            format!("{} faults", process_faults.len())
        } else {
            format!(
                "{} of {} late: {}",
                late.len(),
                process_faults.len(),
                late.join("; ")
            )
        },
    ));
    const RAFT_ELECTION_MAX_NS: u64 = 10_000_000_000;
    let node_late: Vec<String> = node_faults
        .iter()
        .filter(|f| !acted_by(f.start_ns, TTL_NS + 2_000_000_000 + RAFT_ELECTION_MAX_NS))
        .map(|f| describe(f))
        .collect();
    let beyond_ttl: Vec<String> = node_faults
        .iter()
        .filter(|f| !acted_by(f.start_ns, TTL_NS + 2_000_000_000))
        .map(|f| describe(f))
        .collect();
    checks.push((
        "a leader acts again within TTL + 2 s + the server's raft election bound (10 s) of each node fault".into(),
        node_late.is_empty(),
        format!(
            "{} node faults; {} beyond TTL + 2 s{}{}",
            node_faults.len(),
            beyond_ttl.len(),
            if beyond_ttl.is_empty() { String::new() } else { format!(": {}", beyond_ttl.join("; ")) },
            if node_late.is_empty() { String::new() } else { format!("; beyond the raft bound too: {}", node_late.join("; ")) }
        ),
    ));

    // 6-7. Streams.
    let mut counts: HashMap<u64, u32> = HashMap::new();
    for n in j.stored {
        *counts.entry(*n).or_default() += 1;
    }
    let doubled = counts.values().filter(|c| **c > 1).count();
    let missing: Vec<u64> = (0..j.total).filter(|n| !counts.contains_key(n)).collect();
    let unexplained: Vec<&u64> = missing.iter().filter(|n| !j.failed.contains(n)).collect();
    checks.push((
        "every published number stored exactly once (or handed back)".into(),
        doubled == 0 && unexplained.is_empty(),
        format!("{} published, {} stored, {doubled} doubled, {} missing ({} handed back on the error channel, {} unexplained)", j.total, j.stored.len(), missing.len(), j.failed.len(), unexplained.len()),
    ));
    let processed: HashSet<u64> = j.processed.iter().copied().collect();
    let unprocessed = counts.keys().filter(|n| !processed.contains(n)).count();
    let dup_processed = j.processed.len() - processed.len();
    checks.push(("every stored number processed at least once".into(), unprocessed == 0, format!("{} processed, {unprocessed} never processed, {dup_processed} processed more than once (at-least-once redeliveries)", processed.len())));
    let mut dead: HashMap<u64, usize> = HashMap::new();
    for n in j.dead_lettered {
        *dead.entry(*n).or_default() += 1;
    }
    let refused: Vec<u64> = counts
        .keys()
        .copied()
        .filter(|n| n % DEAD_LETTER_EVERY == 0)
        .collect();
    let not_dead = refused.iter().filter(|n| !dead.contains_key(n)).count();
    let dead_twice = dead.values().filter(|c| **c > 1).count();
    let dead_wrongly = dead.keys().filter(|n| *n % DEAD_LETTER_EVERY != 0).count();
    checks.push((
        format!("every refused number (divisible by {DEAD_LETTER_EVERY}) dead-lettered exactly once"),
        not_dead == 0 && dead_twice == 0 && dead_wrongly == 0,
        format!("{} refused, {} dead-lettered: {not_dead} missing, {dead_twice} twice, {dead_wrongly} not refused", refused.len(), j.dead_lettered.len()),
    ));
    checks.push((
        "cluster healthy after the run".into(),
        j.cluster_healthy,
        String::new(),
    ));

    checks.extend(j.group_checks.iter().cloned());

    // Soak: RSS slope per process incarnation that lived long enough.
    let mut slopes = Vec::new();
    for (tag, s) in j.samples {
        // After a minute of warm-up, a process alive three more minutes is judged on the later
        // half of that time: a step when it first becomes leader (connections, buffers) is
        // warm-up too; a leak keeps growing.
        let warm: Vec<&(u64, u64)> = s
            .iter()
            .filter(|(t, _)| *t >= s[0].0 + 60_000_000_000)
            .collect();
        let long_enough = warm.len() >= 2 && warm[warm.len() - 1].0 - warm[0].0 >= 180_000_000_000;
        let warm: Vec<&(u64, u64)> = if long_enough {
            warm[warm.len() / 2..].to_vec()
        } else {
            Vec::new()
        };
        if warm.len() >= 2 {
            let n = warm.len() as f64;
            let mx = warm.iter().map(|(t, _)| *t as f64 / 60e9).sum::<f64>() / n;
            let my = warm.iter().map(|(_, k)| *k as f64).sum::<f64>() / n;
            let cov: f64 = warm
                .iter()
                .map(|(t, k)| (*t as f64 / 60e9 - mx) * (*k as f64 - my))
                .sum();
            let var: f64 = warm
                .iter()
                .map(|(t, _)| (*t as f64 / 60e9 - mx).powi(2))
                .sum();
            slopes.push((
                tag.clone(),
                if var > 0.0 { cov / var } else { 0.0 },
                warm.last().map_or(0, |w| w.1),
            ));
        }
    }
    let growing: Vec<&(String, f64, u64)> = slopes.iter().filter(|s| s.1 > 1024.0).collect();
    let peak_kib = j
        .samples
        .values()
        .flatten()
        .map(|(_, k)| *k)
        .max()
        .unwrap_or(0);
    checks.push((
        format!("soak: RSS does not grow after warm-up (slope <= 1 MiB/min; peak of any process {peak_kib} KiB)"),
        growing.is_empty(),
        if slopes.is_empty() {
            "run too short to judge (needs a process alive 4 min)".into()
        } else {
            slopes
                .iter()
                .map(|(t, s, k)| format!("{t}: {s:+.0} KiB/min (now {k} KiB)"))
                .collect::<Vec<_>>()
                .join(", ")
        },
    ));

    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for f in j.faults {
        *kinds.entry(f.kind).or_default() += 1;
    }
    let mut md = String::new();
    writeln!(md, "# natty chaos report\n")?;
    writeln!(
        md,
        "{:.1} minutes, seed {}, 3-node cluster (R3 stream and buckets), {CANDIDATES} candidates (TTL {TTL_SECS} s), {CONSUMERS} consumers on one durable, {} numbered messages published; a consumer group of {} members (each through its own proxies) over {} partitions (TTL {TTL_SECS} s, ack_wait {} s) on its own R3 stream.\n",
        j.minutes,
        j.seed,
        j.total,
        group::MEMBERS,
        group::PARTITIONS,
        group::ACK_WAIT_SECS
    )?;
    writeln!(md, "## Faults injected\n")?;
    for (k, n) in &kinds {
        writeln!(md, "- {k}: {n}")?;
    }
    let leader_faults =
        kinds.get("freeze leader").unwrap_or(&0) + kinds.get("kill leader").unwrap_or(&0);
    let node_faults =
        kinds.get("kill node").unwrap_or(&0) + kinds.get("partition node").unwrap_or(&0);
    let member_faults = j
        .faults
        .iter()
        .filter(|f| group::is_member_fault(f))
        .count();
    writeln!(
        md,
        "\nLeader freezes/kills: {leader_faults}; node faults: {node_faults}; member faults: {member_faults}.\n"
    )?;
    writeln!(
        md,
        "## Checks\n\n| check | verdict | detail |\n|---|---|---|"
    )?;
    for (name, ok, detail) in &checks {
        writeln!(
            md,
            "| {name} | {} | {detail} |",
            if *ok { "pass" } else { "**FAIL**" }
        )?;
    }
    writeln!(
        md,
        "\n## Schedule\n\n| at | fault | target | lasted |\n|---|---|---|---|"
    )?;
    let t0 = j.faults.first().map_or(0, |f| f.start_ns);
    for f in j.faults {
        writeln!(
            md,
            "| {:.1}s | {} | {} | {:.1}s |",
            (f.start_ns - t0) as f64 / 1e9,
            f.kind,
            f.target,
            (f.end_ns - f.start_ns) as f64 / 1e9
        )?;
    }
    writeln!(
        md,
        "\n## Diagnostics\n\nFaults started at CLOCK_MONOTONIC {} ns (times above and below are from there); every process line is in `lines.jsonl` beside this report.\n",
        j.start
    )?;
    for n in j.notes {
        writeln!(md, "- {n}")?;
    }
    writeln!(
        md,
        "\nRepeated processing by 10 s window (a number processed again; first delivery = `delivered` 1):\n\n| from | repeats | of which delivered 1 | numbers | stream seqs |\n|---|---|---|---|---|"
    )?;
    for w in redelivery_windows(j.lines, j.start) {
        writeln!(md, "{w}")?;
    }
    let mut by_n: BTreeMap<u64, Vec<&Record>> = BTreeMap::new();
    for r in j.dead_records {
        by_n.entry(r.n).or_default().push(r);
    }
    let twice: Vec<(u64, f64, String)> = by_n
        .iter()
        .filter(|(_, rs)| rs.len() > 1)
        .map(|(n, rs)| {
            let gap = (rs[rs.len() - 1].stored_unix_ns - rs[0].stored_unix_ns) as f64 / 1e9;
            let deliveries: Vec<&str> = rs.iter().map(|r| r.deliveries.as_str()).collect();
            (*n, gap, deliveries.join("/"))
        })
        .collect();
    if !twice.is_empty() {
        let min = twice.iter().map(|t| t.1).fold(f64::INFINITY, f64::min);
        let max = twice.iter().map(|t| t.1).fold(0.0, f64::max);
        writeln!(
            md,
            "\nDead-lettered more than once: {} numbers, copies {min:.1}s to {max:.1}s apart; first: {}",
            twice.len(),
            twice
                .iter()
                .take(10)
                .map(|(n, g, d)| format!("{n} ({g:.1}s, deliveries {d})"))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
    }
    std::fs::create_dir_all(j.out)?;
    std::fs::write(j.out.join("report.md"), &md)?;
    // Every process line (with `proc` and `mono_ns`), for a post-mortem of a failed check.
    let mut all = String::new();
    for line in j.lines {
        writeln!(all, "{}", serde_json::to_string(line)?)?;
    }
    std::fs::write(j.out.join("lines.jsonl"), all)?;
    println!("{md}");
    Ok(checks.iter().all(|(_, ok, _)| *ok))
}

/// Table rows: per 10 s window (from `start`), how many `processed` lines repeated a number
/// already processed, how many of those were first deliveries, and their ranges.
fn redelivery_windows(lines: &[Line], start: u64) -> Vec<String> {
    let mut seen: HashSet<u64> = HashSet::new();
    let mut processed: Vec<(u64, u64, u64, u64)> = lines
        .iter()
        .filter_map(|l| match l.event {
            Event::Processed {
                n, delivered, seq, ..
            } => Some((l.mono_ns, n, delivered, seq)),
            _ => None,
        })
        .collect();
    processed.sort_by_key(|p| p.0);
    // window -> (repeats, delivered 1, min n, max n, min seq, max seq)
    let mut windows: BTreeMap<i64, (u64, u64, u64, u64, u64, u64)> = BTreeMap::new();
    for (mono, n, delivered, seq) in processed {
        if seen.insert(n) {
            continue;
        }
        let at = (i128::from(mono) - i128::from(start)) / 10_000_000_000;
        let w = windows.entry(i64::try_from(at).unwrap_or(0)).or_insert((
            0,
            0,
            u64::MAX,
            0,
            u64::MAX,
            0,
        ));
        w.0 += 1;
        w.1 += u64::from(delivered == 1);
        w.2 = w.2.min(n);
        w.3 = w.3.max(n);
        w.4 = w.4.min(seq);
        w.5 = w.5.max(seq);
    }
    windows
        .iter()
        .map(|(at, (k, d1, n0, n1, s0, s1))| {
            format!("| {}s | {k} | {d1} | {n0}..={n1} | {s0}..={s1} |", at * 10)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! The judge certifies the election's safety: it must fail on each violation it claims to
    //! catch. Synthetic candidate lines, one per case.
    #![allow(
        clippy::unwrap_used,
        reason = "in a test a panic is the failure report"
    )]

    use natty_chaos::{Event, Line};
    use natty_testkit::procs::{Lines, Term};

    use super::election_checks;

    fn at(event: Event, proc: &str, mono_ns: u64) -> Line {
        Line {
            node: proc.into(),
            mono_ns,
            event,
            proc: proc.into(),
        }
    }

    fn tm(revision: u64) -> Term {
        Term { epoch: 5, revision }
    }

    fn line(event: &str, proc: &str, revision: u64, mono_ns: u64) -> Line {
        let term = tm(revision);
        let event = match event {
            "elected" => Event::Elected { term, server: None },
            "work" => Event::Work {
                term,
                checked_ns: mono_ns,
            },
            "lost" => Event::Lost { term },
            other => panic!("no such event {other}"),
        };
        at(event, proc, mono_ns)
    }

    fn sink(proc: &str, revision: u64, accepted: bool, issued_ns: u64, mono_ns: u64) -> Line {
        let event = Event::Sink {
            term: tm(revision),
            accepted,
            issued_ns,
        };
        at(event, proc, mono_ns)
    }

    /// The verdict of the check whose name starts with `name`.
    fn verdict(lines: &[Line], name: &str) -> bool {
        election_checks(lines, &[])
            .into_iter()
            .find(|(n, _, _)| n.starts_with(name))
            .unwrap()
            .1
    }

    fn clean() -> Vec<Line> {
        vec![
            line("elected", "a#0", 10, 100),
            line("work", "a#0", 10, 110),
            line("work", "a#0", 10, 200),
            sink("a#0", 10, true, 150, 160),
            line("lost", "a#0", 10, 300),
            line("elected", "b#0", 20, 400),
            line("work", "b#0", 20, 410),
            sink("b#0", 20, true, 420, 430),
            // a late write of the old term, refused by the fence: fine
            sink("a#0", 10, false, 250, 450),
        ]
    }

    #[test]
    fn a_clean_history_passes_every_check() {
        let checks = election_checks(&clean(), &[]);
        assert_eq!(checks.len(), 5);
        for (name, ok, detail) in checks {
            assert!(ok, "{name}: {detail}");
        }
    }

    #[test]
    fn overlapping_terms_fail() {
        let mut lines = clean();
        lines.retain(|l| !matches!(l.event, Event::Lost { .. }));
        lines.push(line("work", "a#0", 10, 415)); // a still works after b started (410)
        assert!(verdict(&lines, "no work after `lost`"));
        assert!(!verdict(&lines, "leaders never act at once"));
    }

    #[test]
    fn work_after_lost_fails() {
        let mut lines = clean();
        lines.push(line("work", "a#0", 10, 301));
        assert!(!verdict(&lines, "no work after `lost`"));
    }

    #[test]
    fn a_stale_sink_write_accepted_fails() {
        let mut lines = clean();
        // issued by term 10 after term 20 was elected, and accepted
        lines.push(sink("a#0", 10, true, 405, 406));
        assert!(!verdict(&lines, "fenced sink accepted zero stale writes"));
    }

    #[test]
    fn terms_going_backwards_fail() {
        let mut lines = clean();
        // after a bucket re-creation with a broken term: epoch 5, revision 1 < 20
        lines.push(line("elected", "c#0", 1, 500));
        assert!(!verdict(&lines, "terms strictly increase"));
        // a re-created bucket's term (later epoch, low revision) is higher: fine
        let mut lines = clean();
        let term = Term {
            epoch: 6,
            revision: 1,
        };
        lines.push(at(Event::Elected { term, server: None }, "c#0", 500));
        assert!(verdict(&lines, "terms strictly increase"));
    }

    #[test]
    fn a_line_without_a_readable_term_is_a_failure_not_term_zero() {
        // Before the typed lines, `as_u64().unwrap_or(0)` read a missing term as 0.
        let printed = Lines::default();
        printed.push_text(
            "a#0",
            r#"{"node":"a","mono_ns":100,"event":"elected","term":{"epoch":5,"revision":10}}"#,
        );
        printed.push_text(
            "b#0",
            r#"{"node":"b","mono_ns":200,"event":"elected","term":"garbage"}"#,
        );
        let checks = election_checks(&printed.all(), &printed.unreadable());
        assert!(!checks[0].1, "{:?}", checks[0]);
        assert!(checks[1..].iter().all(|c| c.1), "{checks:?}");
    }
}
