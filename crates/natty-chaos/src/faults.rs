//! The seeded fault schedule: one fault at a time, each followed by TTL + 2.5 s of quiet so
//! every recovery is judged alone. Every third fault hits a consumer group member (frozen,
//! killed, cut off, in turn); the others are drawn from a weighted roll.

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use natty_chaos::mono_ns;
use natty_testkit::group::owned_at;
use rand::{Rng, SeedableRng, rngs::StdRng};

pub(crate) mod deploys;

use crate::world::{
    DEAD_LETTER_STREAM, DURABLE, ELECTION_BUCKET, Kind, STREAM, TTL_SECS, World, durable,
};

/// What a fault did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FaultKind {
    /// The leader SIGSTOPped for 0.5 to 3 TTLs.
    FreezeLeader,
    /// The leader stopped gracefully (SIGTERM), its server paused half the time.
    StopLeader,
    /// ... and it did not exit within TTL + 3 s (then it was killed).
    StopLeaderHung,
    /// The election bucket deleted behind everyone's back.
    DeleteBucket,
    KillLeader,
    KillFollower,
    /// A consumer of the numbered messages SIGKILLed.
    KillConsumer,
    /// A cluster node killed for 3 to 6 s.
    KillNode,
    /// The numbered messages' durable deleted and re-created from its ack floor.
    DeleteDurable,
    /// The dead-letter subject captured by no stream for a while.
    DeadLetterUncaptured,
    /// A cluster node cut off the network for 3 to 6 s.
    PartitionNode,
    FreezeMember,
    KillMember,
    /// A member cut off the network (its proxies), the others and the cluster carry on.
    CutMember,
}

impl FaultKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::FreezeLeader => "freeze leader",
            Self::StopLeader => "stop leader",
            Self::StopLeaderHung => "stop leader (hung)",
            Self::DeleteBucket => "delete bucket",
            Self::KillLeader => "kill leader",
            Self::KillFollower => "kill follower",
            Self::KillConsumer => "kill consumer",
            Self::KillNode => "kill node",
            Self::DeleteDurable => "delete durable",
            Self::DeadLetterUncaptured => "dead-letter uncaptured",
            Self::PartitionNode => "partition node",
            Self::FreezeMember => "freeze member",
            Self::KillMember => "kill member",
            Self::CutMember => "cut member",
        }
    }

    /// A fault of the cluster itself: a leader may need the server's raft election bound to act
    /// again (a deleted election bucket is re-created as an R3 stream: held to it too).
    pub(crate) fn is_node_fault(self) -> bool {
        matches!(
            self,
            Self::KillNode | Self::PartitionNode | Self::DeleteBucket
        )
    }

    /// A fault of a consumer group member: frozen, killed or cut off.
    pub(crate) fn is_member_fault(self) -> bool {
        matches!(
            self,
            Self::FreezeMember | Self::KillMember | Self::CutMember
        )
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Fault {
    pub(crate) kind: FaultKind,
    pub(crate) target: String,
    /// The process it hit (`Line::proc`), for member faults; empty otherwise.
    pub(crate) proc: String,
    pub(crate) start_ns: u64,
    pub(crate) end_ns: u64,
}

/// Diagnostic lines for the report (also printed as they happen).
#[derive(Clone, Default)]
pub(crate) struct Notes(Arc<Mutex<Vec<String>>>);

impl Notes {
    pub(crate) fn push(&self, line: String) {
        eprintln!("chaos: {line}");
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(line);
    }

    pub(crate) fn all(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The schedule: its random source and what it did.
pub(crate) struct Schedule {
    rng: StdRng,
    /// When the faults started (mono ns): times in the report are from here.
    pub(crate) start: u64,
    tried: u64,
    pub(crate) faults: Vec<Fault>,
    pub(crate) notes: Notes,
}

impl Schedule {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            start: mono_ns(),
            tried: 0,
            faults: Vec::new(),
            notes: Notes::default(),
        }
    }

    /// Injects faults until `end` (mono ns), sampling the children's RSS every 2 s, with the
    /// durable watched meanwhile.
    pub(crate) async fn run(&mut self, world: &mut World, end: u64) -> anyhow::Result<()> {
        let watcher = tokio::spawn(watch_durable(
            world.client.clone(),
            self.notes.clone(),
            self.start,
        ));
        let mut rss_due = self.start;
        while mono_ns() < end {
            if mono_ns() >= rss_due {
                world.sample_rss();
                rss_due = mono_ns() + 2_000_000_000;
            }
            let t0 = mono_ns();
            // Every third fault hits a consumer group member: frozen, killed, cut off, in turn.
            let member_slot = self.tried.is_multiple_of(3);
            let member_kind = (self.tried / 3) % 3;
            self.tried += 1;
            let (fault, proc) = if member_slot {
                self.member_fault(world, member_kind).await?
            } else {
                (self.other_fault(world, t0).await?, String::new())
            };
            if let Some((kind, target)) = fault {
                let f = Fault {
                    kind,
                    target,
                    proc,
                    start_ns: t0,
                    end_ns: mono_ns(),
                };
                eprintln!(
                    "[{:>6.1}s] {} {} ({:.1}s)",
                    (t0 - self.start) as f64 / 1e9,
                    f.kind,
                    f.target,
                    (f.end_ns - t0) as f64 / 1e9
                );
                self.faults.push(f);
            }
            // Give the system TTL + 2.5 s before the next fault, so each recovery is judged
            // alone.
            tokio::time::sleep(Duration::from_millis(TTL_SECS * 1000 + 2500)).await;
        }
        watcher.abort();
        Ok(())
    }

    /// A member that owns partitions now (any member if none does) frozen, killed or cut off
    /// (`which` 0, 1, 2). Returns the fault and the process it hit.
    async fn member_fault(
        &mut self,
        world: &mut World,
        which: u64,
    ) -> anyhow::Result<(Option<(FaultKind, String)>, String)> {
        let rng = &mut self.rng;
        let owning = world.lines.with(|all| owned_at(all, u64::MAX));
        let owns = |world: &World, i: usize| {
            owning
                .get(&world.procs[i].tag())
                .is_some_and(|p| !p.is_empty())
        };
        let mut members = world.of_kind(Kind::Member);
        if members.iter().any(|&i| owns(world, i)) {
            members.retain(|&i| owns(world, i));
        }
        let i = members[rng.random_range(0..members.len())];
        let hit = world.procs[i].tag();
        let name = world.procs[i].name.clone();
        let fault = match which {
            0 => {
                let hold = Duration::from_millis(rng.random_range(1000..6000)); // 0.5 to 3 x TTL
                world.signal(i, "-STOP").await;
                tokio::time::sleep(hold).await;
                world.signal(i, "-CONT").await;
                (FaultKind::FreezeMember, name)
            }
            1 => {
                let pause = Duration::from_millis(rng.random_range(500..1500));
                (
                    FaultKind::KillMember,
                    world.kill_and_respawn(i, pause).await?,
                )
            }
            _ => {
                let hold = Duration::from_millis(rng.random_range(3000..6000));
                for p in &world.proxies[&name] {
                    p.cut();
                }
                tokio::time::sleep(hold).await;
                for p in &world.proxies[&name] {
                    p.restore();
                }
                (FaultKind::CutMember, name)
            }
        };
        Ok((Some(fault), hit))
    }

    /// One fault of the weighted roll (`None`: it needed a leader and there was none).
    async fn other_fault(
        &mut self,
        world: &mut World,
        t0: u64,
    ) -> anyhow::Result<Option<(FaultKind, String)>> {
        let rng = &mut self.rng;
        let roll = rng.random_range(0..100);
        Ok(if roll < 22 {
            match world.leader() {
                Some(l) => {
                    let hold = Duration::from_millis(rng.random_range(1000..6000)); // 0.5 to 3 x TTL
                    world.signal(l, "-STOP").await;
                    tokio::time::sleep(hold).await;
                    world.signal(l, "-CONT").await;
                    Some((FaultKind::FreezeLeader, world.procs[l].name.clone()))
                }
                None => None,
            }
        } else if roll < 30 {
            // A graceful stop (cancel and resign, or for odd candidates a dropped `run`), with
            // the leader's server paused half the time: shutdown must end regardless.
            match world.leader() {
                Some(l) => {
                    let pause = rng.random_bool(0.5);
                    let node = rng.random_range(0..3);
                    if pause {
                        world.cluster.node(node).pause().await?;
                    }
                    let (p, ended) = world.stop(l, Duration::from_secs(TTL_SECS + 3)).await;
                    if pause {
                        world.cluster.node(node).unpause().await?;
                    }
                    world.respawn(&p)?;
                    let kind = if ended {
                        FaultKind::StopLeader
                    } else {
                        FaultKind::StopLeaderHung
                    };
                    Some((kind, p.name))
                }
                None => None,
            }
        } else if roll < 35 {
            // The election bucket deleted behind everyone's back: re-created after a TTL.
            natty::Kv::new(world.client.clone())
                .delete_bucket(ELECTION_BUCKET)
                .await?;
            Some((FaultKind::DeleteBucket, ELECTION_BUCKET.to_owned()))
        } else if roll < 42 {
            match world.leader() {
                Some(l) => {
                    let pause = Duration::from_millis(rng.random_range(500..1500));
                    Some((
                        FaultKind::KillLeader,
                        world.kill_and_respawn(l, pause).await?,
                    ))
                }
                None => None,
            }
        } else if roll < 50 {
            let leader = world.leader();
            let c: Vec<usize> = world
                .of_kind(Kind::Candidate)
                .into_iter()
                .filter(|&i| Some(i) != leader)
                .collect();
            let i = c[rng.random_range(0..c.len())];
            let name = world
                .kill_and_respawn(i, Duration::from_millis(500))
                .await?;
            Some((FaultKind::KillFollower, name))
        } else if roll < 62 {
            let c = world.of_kind(Kind::Consumer);
            let i = c[rng.random_range(0..c.len())];
            let pause = Duration::from_millis(rng.random_range(200..2000));
            Some((
                FaultKind::KillConsumer,
                world.kill_and_respawn(i, pause).await?,
            ))
        } else if roll < 72 {
            let node = world.cluster.node(rng.random_range(0..3));
            node.kill().await?;
            tokio::time::sleep(Duration::from_millis(rng.random_range(3000..6000))).await;
            node.start_again().await?;
            Some((FaultKind::KillNode, node.name().to_owned()))
        } else if roll < 82 {
            let pause = Duration::from_millis(rng.random_range(1000..5000));
            delete_durable(&world.client, &self.notes, pause, t0 - self.start).await?;
            Some((FaultKind::DeleteDurable, DURABLE.to_owned()))
        } else if roll < 90 {
            let hold = Duration::from_millis(rng.random_range(2000..6000));
            uncapture_dead_letters(&world.client, hold).await?;
            Some((
                FaultKind::DeadLetterUncaptured,
                DEAD_LETTER_STREAM.to_owned(),
            ))
        } else {
            let node = world.cluster.node(rng.random_range(0..3));
            node.disconnect().await?;
            tokio::time::sleep(Duration::from_millis(rng.random_range(3000..6000))).await;
            node.reconnect().await?;
            Some((FaultKind::PartitionNode, node.name().to_owned()))
        })
    }
}

/// The durable deleted behind the consumers' back and re-created `pause` later (from its ack
/// floor, as an operator would) within their grace period: they must carry on. From the ack
/// floor, never below the durable's start, and only when it has a leader (natty's own rule for
/// a durable's replacement). `at`: ns since the faults started, for the note.
async fn delete_durable(
    client: &natty::Client,
    notes: &Notes,
    pause: Duration,
    at: u64,
) -> anyhow::Result<()> {
    let (before, from) = retrying("reading the durable's ack floor", || async {
        let info = client
            .jetstream()
            .get_stream(STREAM)
            .await?
            .consumer_info(DURABLE)
            .await?
            .clone();
        let Some(from) = natty::stream::resume_sequence(&info) else {
            anyhow::bail!("the durable has no leader: {}", durable_state(&info));
        };
        Ok((info, from))
    })
    .await?;
    retrying("deleting the durable", || async {
        Ok(natty::stream::delete_consumer(client, STREAM, DURABLE).await?)
    })
    .await?;
    tokio::time::sleep(pause).await;
    let again = durable().deliver_from(natty::stream::DeliverFrom::Sequence(from));
    retrying("re-creating the durable", || async {
        Ok(natty::stream::ensure_consumer(client, &again).await?)
    })
    .await?;
    let after = client
        .jetstream()
        .get_stream(STREAM)
        .await?
        .consumer_info(DURABLE)
        .await
        .map(|i| durable_state(&i))
        .unwrap_or_else(|e| format!("(info failed: {e})"));
    notes.push(format!(
        "[{:>6.1}s] durable re-created from {}: before deletion {}; after re-creation {}",
        at as f64 / 1e9,
        from,
        durable_state(&before),
        after
    ));
    Ok(())
}

/// The dead-letter subject captured by no stream for `hold`: refused messages whose
/// dead-letter publish fails must stay and be dead-lettered later.
async fn uncapture_dead_letters(client: &natty::Client, hold: Duration) -> anyhow::Result<()> {
    let subjects = |subject: &'static str| {
        let client = client.clone();
        async move {
            let js = client.jetstream();
            let mut config = js
                .get_stream(DEAD_LETTER_STREAM)
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
    tokio::time::sleep(hold).await;
    retrying("capturing the dead-letter subject again", || {
        subjects("chaos-dl.>")
    })
    .await
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
/// `natty::stream::resume_sequence` reads it) or delivered position goes backwards (a
/// re-created durable included: it should start at its old floor).
async fn watch_durable(client: natty::Client, notes: Notes, start: u64) {
    let mut last: Option<(u64, u64, String)> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let info = async {
            let s = client.jetstream().get_stream(STREAM).await?;
            anyhow::Ok(s.consumer_info(DURABLE).await?.clone())
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
