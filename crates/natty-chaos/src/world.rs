//! The world the faults hit: a 3-node cluster, its streams and the durable, and the child
//! processes (election candidates, consumers, group members) with the lines they print.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use natty::{ConsumerConfig, StreamConfig};
use natty_chaos::{Event, Lines, mono_ns};
use natty_testkit::{
    NatsCluster,
    procs::{sibling_binary, signal},
    proxy::Proxy,
};
use tokio::process::{Child, Command};

use crate::workload::{group, rolling};

/// Lease TTL of the election and of the group, in seconds.
pub(crate) const TTL_SECS: u64 = 2;
pub(crate) const TTL_NS: u64 = TTL_SECS * 1_000_000_000;
pub(crate) const CANDIDATES: usize = 5;
pub(crate) const CONSUMERS: usize = 2;
/// The election's bucket (deleted now and then) and key.
pub(crate) const ELECTION_BUCKET: &str = "chaos_el";
/// The numbered messages' stream, its durable and the dead-letter stream.
pub(crate) const STREAM: &str = "CHAOS";
pub(crate) const DURABLE: &str = "workers";
pub(crate) const DEAD_LETTER_STREAM: &str = "CHAOS_DL";

/// What a child process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An election candidate (natty-election's `candidate` example).
    Candidate,
    /// A consumer of the numbered messages (`chaos-consumer`).
    Consumer,
    /// A consumer group member (natty-group's `group_member` example).
    Member,
    /// A plain consumer of the rolling deploys (`chaos-consumer durable`, `faults/deploys.rs`).
    Rolling,
    /// The rolling deploys' consumer ordered by key (`chaos-consumer durable --ordered-by-token`).
    RollingOrdered,
    /// A group member of the rolling deploys (`chaos-consumer group`).
    RollingMember,
}

pub(crate) struct Proc {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) child: Child,
    pub(crate) incarnation: u32,
}

impl Proc {
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The tag of its lines (`Line::proc`).
    pub(crate) fn tag(&self) -> String {
        format!("{}#{}", self.name, self.incarnation)
    }
}

/// RSS samples per process incarnation (`Line::proc`): (mono ns, KiB).
pub(crate) type Samples = BTreeMap<String, Vec<(u64, u64)>>;

pub(crate) struct World {
    pub(crate) cluster: NatsCluster,
    /// A client of the orchestrator's own (admin requests, publishing, reading back).
    pub(crate) client: natty::Client,
    /// The servers' URLs, comma-separated.
    pub(crate) servers: String,
    pub(crate) lines: Lines,
    pub(crate) procs: Vec<Proc>,
    /// Each member's way to the servers: a proxy per node, kept across its incarnations, cut
    /// to cut the member off the network.
    pub(crate) proxies: HashMap<String, Vec<Proxy>>,
    /// When each killed process (`Line::proc`) was seen dead.
    pub(crate) deaths: HashMap<String, u64>,
    /// RSS of every child, sampled by [`sample_rss`](Self::sample_rss).
    pub(crate) samples: Samples,
}

/// The numbered messages' durable, as made at the start and re-made after each deletion.
pub(crate) fn durable() -> ConsumerConfig {
    ConsumerConfig::new(STREAM, DURABLE)
        .ack_wait(Duration::from_secs(5))
        .max_deliver(None)
}

impl World {
    /// Starts the cluster, makes the streams and the durable, and spawns every child.
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let cluster = NatsCluster::start(3).await?;
        let servers = cluster.urls().join(",");
        let client = natty::ConnectOptions::new(cluster.urls())
            .request_timeout(Duration::from_secs(3))
            .connect()
            .await?;
        natty::stream::ensure_stream(&client, &StreamConfig::new(STREAM, ["chaos.>"]).replicas(3))
            .await?;
        natty::stream::ensure_consumer(&client, &durable()).await?;
        natty::stream::ensure_stream(
            &client,
            &StreamConfig::new(DEAD_LETTER_STREAM, ["chaos-dl.>"]).replicas(3),
        )
        .await?;
        // The consumer group's own R3 stream.
        natty::stream::ensure_stream(
            &client,
            &StreamConfig::new(group::STREAM, [format!("{}.>", group::PREFIX)]).replicas(3),
        )
        .await?;
        // The rolling deploys' streams and durable (their processes are theirs to start).
        rolling::setup(&client).await?;
        let mut world = Self {
            cluster,
            client,
            servers,
            lines: Lines::default(),
            procs: Vec::new(),
            proxies: HashMap::new(),
            deaths: HashMap::new(),
            samples: Samples::new(),
        };
        for i in 0..CANDIDATES {
            world.spawn(&format!("c{i}"), Kind::Candidate, 0)?;
        }
        for i in 0..CONSUMERS {
            world.spawn(&format!("k{i}"), Kind::Consumer, 0)?;
        }
        // Members reach the servers through their own proxies.
        for i in 0..group::MEMBERS {
            let name = format!("m{i}");
            let mut proxies = Vec::new();
            for node in world.cluster.nodes() {
                proxies.push(Proxy::start(node.port()).await?);
            }
            world.proxies.insert(name.clone(), proxies);
            world.spawn(&name, Kind::Member, 0)?;
        }
        Ok(world)
    }

    /// The command line of child `name` of `kind`.
    fn command(&self, name: &str, kind: Kind) -> anyhow::Result<Command> {
        Ok(match kind {
            Kind::Member => {
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
            }
            Kind::Candidate => {
                let mut c = Command::new(sibling_binary("candidate", true)?);
                c.args(["--server", &self.servers, "--node", name])
                    .args(["--bucket", ELECTION_BUCKET, "--key", "leader"])
                    .args(["--ttl", &TTL_SECS.to_string(), "--replicas", "3"])
                    // The fenced sink: the key `sink` of the election, written every work
                    // interval by a writer that ignores `lost` (the fence must stop it).
                    .args(["--fenced-key", "sink", "--ping-ms", "1000"]);
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
            }
            Kind::Consumer => {
                let mut c = Command::new(sibling_binary("chaos-consumer", false)?);
                c.args(["--server", &self.servers, "--id", name])
                    .args(["--dead-letter", "chaos-dl.n"])
                    .args([
                        "--refuse-every",
                        &natty_chaos::DEAD_LETTER_EVERY.to_string(),
                    ])
                    .args(["durable", "--stream", STREAM, "--durable", DURABLE]);
                c
            }
            Kind::Rolling | Kind::RollingOrdered | Kind::RollingMember => {
                anyhow::bail!("{name}: the rolling deploys start their own processes")
            }
        })
    }

    pub(crate) fn spawn(&mut self, name: &str, kind: Kind, incarnation: u32) -> anyhow::Result<()> {
        let cmd = self.command(name, kind)?;
        let child = self.lines.spawn(cmd, &format!("{name}#{incarnation}"))?;
        self.procs.push(Proc {
            name: name.to_owned(),
            kind,
            child,
            incarnation,
        });
        Ok(())
    }

    /// Waits (60 s at most) until a leader works and every group partition is owned.
    pub(crate) async fn ready(&self) -> anyhow::Result<()> {
        let ready_by = mono_ns() + 60_000_000_000;
        while !self.lines.any(|l| matches!(l.event, Event::Work { .. })) {
            anyhow::ensure!(mono_ns() < ready_by, "no leader within 60 s of the start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        while self.lines.with(group::owned) < group::PARTITIONS as usize {
            anyhow::ensure!(
                mono_ns() < ready_by,
                "group partitions not all owned within 60 s of the start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// The candidate that leads now, by the lines: its last `elected` after which it printed
    /// no `lost`/`exit`.
    pub(crate) fn leader(&self) -> Option<usize> {
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

    /// The indexes of the children of `kind`.
    pub(crate) fn of_kind(&self, kind: Kind) -> Vec<usize> {
        (0..self.procs.len())
            .filter(|&i| self.procs[i].kind == kind)
            .collect()
    }

    pub(crate) async fn signal(&self, idx: usize, sig: &str) {
        if let Some(pid) = self.procs[idx].pid() {
            // (a process that has just exited cannot be signalled: not a failure here)
            let _ = signal(pid, sig).await;
        }
    }

    /// SIGKILLs child `idx` and starts its next incarnation after `pause`. Returns its name.
    pub(crate) async fn kill_and_respawn(
        &mut self,
        idx: usize,
        pause: Duration,
    ) -> anyhow::Result<String> {
        self.signal(idx, "-KILL").await;
        let mut p = self.procs.remove(idx);
        let _ = p.child.wait().await;
        self.deaths.insert(p.tag(), mono_ns());
        tokio::time::sleep(pause).await;
        self.spawn(&p.name, p.kind, p.incarnation + 1)?;
        Ok(p.name)
    }

    /// SIGTERMs child `idx` and takes it out of the world once it exited, or after `grace`
    /// (then it is killed). Returns it and whether it exited in time.
    pub(crate) async fn stop(&mut self, idx: usize, grace: Duration) -> (Proc, bool) {
        self.signal(idx, "-TERM").await;
        let mut p = self.procs.remove(idx);
        let ended = tokio::time::timeout(grace, p.child.wait()).await.is_ok();
        if !ended {
            eprintln!("{} did not exit within {grace:?} of SIGTERM", p.name);
            let _ = p.child.kill().await;
        }
        (p, ended)
    }

    /// Starts the next incarnation of `p`.
    pub(crate) fn respawn(&mut self, p: &Proc) -> anyhow::Result<()> {
        self.spawn(&p.name, p.kind, p.incarnation + 1)
    }

    /// Samples the RSS of every child.
    pub(crate) fn sample_rss(&mut self) {
        for p in &self.procs {
            if let Some(pid) = p.pid()
                && let Some(kib) = rss_kib(pid)
            {
                self.samples
                    .entry(p.tag())
                    .or_default()
                    .push((mono_ns(), kib));
            }
        }
    }

    /// Stops every child: SIGCONT (a frozen one), SIGTERM, then waits 5 s at most for each.
    pub(crate) async fn stop_all(&mut self) {
        for i in 0..self.procs.len() {
            self.signal(i, "-CONT").await;
            self.signal(i, "-TERM").await;
        }
        for p in &mut self.procs {
            let _ = tokio::time::timeout(Duration::from_secs(5), p.child.wait()).await;
        }
    }
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
