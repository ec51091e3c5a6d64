//! Rolling deploys: the plain consumers and the group members of the rolling workload
//! (`workload/rolling.rs`) restarted one after the other every [`RESTART_EVERY`], as a deploy
//! does — the replacement started first, then the old process stopped gracefully (SIGTERM)
//! and timed from the signal to its exit. Meanwhile the group's members bucket is deleted once
//! (and the next member "restart" is a crash, SIGKILL), and the unrelated consumers on the
//! group's stream are deleted and re-created all along, so the pages of a consumer listing
//! shift under the group's take-overs.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use futures::StreamExt;
use natty::{CancellationToken, async_nats::jetstream::consumer::pull};
use natty_chaos::{Event, Lines, mono_ns};
use natty_testkit::procs::{sibling_binary, signal};
use tokio::{process::Command, task::JoinHandle};

use crate::{
    workload::rolling::{
        self, BATCH, CONCURRENCY, CONSUMERS, DEAD_LETTER, DURABLE, FAIL_EVERY, GROUP,
        GROUP_CONCURRENCY, GROUP_PREFIX, GROUP_STREAM, HANDLER_MS, MEMBERS, PARTITIONS, STREAM,
        UNRELATED,
    },
    world::{Kind, Proc, TTL_SECS, World},
};

/// One process restarted this often (plain consumers and members in turn).
const RESTART_EVERY: Duration = Duration::from_secs(2);
/// How long a stopping process is waited for before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(30);
/// How long a replacement may take to print `ready`.
const READY_WAIT: Duration = Duration::from_secs(15);
/// One unrelated consumer deleted and another created this often.
const CHURN_EVERY: Duration = Duration::from_millis(250);

/// A graceful stop, timed from the outside: SIGTERM sent → the process exited.
#[derive(Debug, Clone)]
pub(crate) struct Stop {
    /// The process (`Line::proc`).
    pub(crate) proc: String,
    pub(crate) signalled_ns: u64,
    pub(crate) exited_ns: u64,
    /// Whether it exited by itself within [`STOP_WAIT`] (else it was killed then).
    pub(crate) exited: bool,
}

/// The crash after the members bucket was deleted.
#[derive(Debug, Clone)]
pub(crate) struct Crash {
    /// When the members bucket was deleted.
    pub(crate) bucket_deleted_ns: u64,
    /// The member killed (`Line::proc`) and when it was seen dead.
    pub(crate) proc: String,
    pub(crate) killed_ns: u64,
}

/// The rolling workload's processes and what the deploys did to them.
pub(crate) struct Fleet {
    lines: Lines,
    servers: String,
    fail_dirs: [PathBuf; 2],
    pub(crate) procs: Vec<Proc>,
    pub(crate) stops: Vec<Stop>,
    /// Processes killed (`Line::proc`) and when they were seen dead.
    pub(crate) deaths: HashMap<String, u64>,
    pub(crate) crash: Option<Crash>,
    pub(crate) restarts: usize,
    /// Unrelated consumers deleted and created during the run.
    pub(crate) churned: usize,
}

/// The deploys, running in their own task.
pub(crate) struct Deploys {
    task: JoinHandle<anyhow::Result<Fleet>>,
    stop: CancellationToken,
}

impl Deploys {
    /// Makes the unrelated consumers on the group's stream, starts the rolling workload's
    /// processes and then restarts them until [`finish`](Self::finish); the members bucket is deleted
    /// `delete_after` into the restarts.
    pub(crate) fn start(
        world: &World,
        out: &std::path::Path,
        delete_after: Duration,
    ) -> anyhow::Result<Self> {
        let fail_dirs = [out.join("fail-once/plain"), out.join("fail-once/group")];
        for dir in &fail_dirs {
            let _ = std::fs::remove_dir_all(dir);
            std::fs::create_dir_all(dir)?;
        }
        let stop = CancellationToken::new();
        let fleet = Fleet {
            lines: world.lines.clone(),
            servers: world.servers.clone(),
            fail_dirs,
            procs: Vec::new(),
            stops: Vec::new(),
            deaths: HashMap::new(),
            crash: None,
            restarts: 0,
            churned: 0,
        };
        let task = tokio::spawn(fleet.run(world.client.clone(), delete_after, stop.clone()));
        Ok(Self { task, stop })
    }

    /// Stops the restarts; returns the fleet, its processes still running.
    pub(crate) async fn finish(self) -> anyhow::Result<Fleet> {
        self.stop.cancel();
        self.task.await?
    }
}

impl Fleet {
    async fn run(
        mut self,
        client: natty::Client,
        delete_after: Duration,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        make_unrelated(&client).await?;
        for i in 0..CONSUMERS {
            self.spawn(&format!("p{i}"), Kind::Rolling, 0)?;
        }
        for i in 0..MEMBERS {
            self.spawn(&format!("r{i}"), Kind::RollingMember, 0)?;
        }
        let churn = tokio::spawn(churn(client.clone(), stop.clone()));
        let delete_at = mono_ns() + u64::try_from(delete_after.as_nanos())?;
        let mut bucket_deleted = None;
        let mut tick = 0usize;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(RESTART_EVERY) => {}
            }
            if bucket_deleted.is_none() && mono_ns() >= delete_at {
                // Behind the members' back, as an operator or a mistaken script would.
                match natty::Kv::new(client.clone())
                    .delete_bucket(&format!("{GROUP}_members"))
                    .await
                {
                    Ok(()) => bucket_deleted = Some(mono_ns()),
                    Err(e) => eprintln!("chaos: deleting the members bucket: {e}; next time"),
                }
            }
            let (name, kind) = if tick.is_multiple_of(2) {
                (format!("p{}", (tick / 2) % CONSUMERS), Kind::Rolling)
            } else {
                (format!("r{}", (tick / 2) % MEMBERS), Kind::RollingMember)
            };
            let crash = kind == Kind::RollingMember && self.crash.is_none();
            let crash = bucket_deleted.filter(|_| crash);
            self.roll(&name, kind, crash).await?;
            tick += 1;
        }
        self.churned = churn.await??;
        Ok(self)
    }

    fn command(&self, name: &str, kind: Kind, incarnation: u32) -> anyhow::Result<Command> {
        let mut c = Command::new(sibling_binary("chaos-consumer", false)?);
        c.args(["--server", &self.servers])
            .args(["--batch", &BATCH.to_string()])
            .args(["--handler-ms", &HANDLER_MS.to_string()])
            .args(["--fail-once-every", &FAIL_EVERY.to_string()]);
        if kind == Kind::RollingMember {
            // A new member name per incarnation, as a deploy's new pods have.
            c.args(["--id", &format!("{name}-{incarnation}")])
                .args(["--concurrency", &GROUP_CONCURRENCY.to_string()])
                .args(["--dead-letter", DEAD_LETTER])
                .arg("--fail-dir")
                .arg(&self.fail_dirs[1])
                .args(["group", "--group", GROUP, "--stream", GROUP_STREAM])
                .args(["--prefix", GROUP_PREFIX])
                .args(["--partitions", &PARTITIONS.to_string()])
                .args(["--ttl", &TTL_SECS.to_string()])
                .args(["--ack-wait", &rolling::ACK_WAIT_SECS.to_string()]);
        } else {
            c.args(["--id", name])
                .args(["--concurrency", &CONCURRENCY.to_string()])
                .arg("--fail-dir")
                .arg(&self.fail_dirs[0])
                .args(["durable", "--stream", STREAM, "--durable", DURABLE]);
        }
        Ok(c)
    }

    fn spawn(&mut self, name: &str, kind: Kind, incarnation: u32) -> anyhow::Result<String> {
        let cmd = self.command(name, kind, incarnation)?;
        let tag = format!("{name}#{incarnation}");
        let child = self.lines.spawn(cmd, &tag)?;
        self.procs.push(Proc {
            name: name.to_owned(),
            kind,
            child,
            incarnation,
        });
        Ok(tag)
    }

    /// Replaces process `name`: its next incarnation started and ready, then the old one
    /// stopped gracefully, or killed if `crash` (the members bucket deleted then).
    async fn roll(&mut self, name: &str, kind: Kind, crash: Option<u64>) -> anyhow::Result<()> {
        let Some(idx) = self.procs.iter().position(|p| p.name == name) else {
            return Ok(());
        };
        let next = self.procs[idx].incarnation + 1;
        let tag = self.spawn(name, kind, next)?;
        let ready_by = mono_ns() + u64::try_from(READY_WAIT.as_nanos())?;
        while !self
            .lines
            .any(|l| l.proc == tag && matches!(l.event, Event::Ready { .. }))
            && mono_ns() < ready_by
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut old = self.procs.remove(idx);
        self.restarts += 1;
        match crash {
            Some(bucket_deleted_ns) => {
                let _ = old.child.kill().await;
                let killed_ns = mono_ns();
                self.deaths.insert(old.tag(), killed_ns);
                self.crash = Some(Crash {
                    bucket_deleted_ns,
                    proc: old.tag(),
                    killed_ns,
                });
            }
            None => self.stops.push(stop(&mut old).await),
        }
        Ok(())
    }

    /// Stops every process gracefully (all signalled at once), each timed.
    pub(crate) async fn stop_all(&mut self) {
        let stops = futures::future::join_all(self.procs.iter_mut().map(stop)).await;
        self.stops.extend(stops);
    }
}

/// SIGTERMs `p` and waits for it to exit ([`STOP_WAIT`] at most, then it is killed).
async fn stop(p: &mut Proc) -> Stop {
    let signalled_ns = mono_ns();
    if let Some(pid) = p.pid() {
        let _ = signal(pid, "-TERM").await;
    }
    let exited = tokio::time::timeout(STOP_WAIT, p.child.wait())
        .await
        .is_ok();
    let exited_ns = mono_ns();
    if !exited {
        eprintln!("chaos: {} did not stop within {STOP_WAIT:?}", p.tag());
        let _ = p.child.kill().await;
    }
    Stop {
        proc: p.tag(),
        signalled_ns,
        exited_ns,
        exited,
    }
}

/// An unrelated consumer of the group's stream: R1, in memory, matching nothing.
fn unrelated(i: usize) -> pull::Config {
    let name = format!("other_{i:05}");
    pull::Config {
        durable_name: Some(name.clone()),
        name: Some(name),
        filter_subject: format!("{GROUP_PREFIX}.none.none"),
        num_replicas: 1,
        memory_storage: true,
        ..Default::default()
    }
}

/// Creates the [`UNRELATED`] consumers, 16 requests at a time, each tried up to 5 times (the
/// meta leader may be busy or moving).
async fn make_unrelated(client: &natty::Client) -> anyhow::Result<()> {
    let stream = client.jetstream().get_stream(GROUP_STREAM).await?;
    let made = futures::stream::iter(0..UNRELATED)
        .map(|i| {
            let stream = stream.clone();
            async move {
                let mut tries = 0;
                loop {
                    match stream.create_consumer(unrelated(i)).await {
                        Ok(_) => return Ok(()),
                        Err(e) if tries >= 4 => return Err(e),
                        Err(_) => tries += 1,
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let failed: Vec<String> = made
        .into_iter()
        .filter_map(|r| r.err().map(|e| e.to_string()))
        .collect();
    anyhow::ensure!(
        failed.is_empty(),
        "{} of {UNRELATED} unrelated consumers not created; first: {}",
        failed.len(),
        failed.first().map_or("", String::as_str)
    );
    Ok(())
}

/// Deletes the oldest unrelated consumer and creates a new one every [`CHURN_EVERY`] until
/// `stop`; returns how many it replaced.
async fn churn(client: natty::Client, stop: CancellationToken) -> anyhow::Result<usize> {
    let stream = client.jetstream().get_stream(GROUP_STREAM).await?;
    let mut replaced = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(replaced),
            () = tokio::time::sleep(CHURN_EVERY) => {}
        }
        // (A node fault may refuse either for a while: the next round tries the next pair.)
        let _ = stream
            .delete_consumer(&format!("other_{replaced:05}"))
            .await;
        let _ = stream
            .create_consumer(unrelated(UNRELATED + replaced))
            .await;
        replaced += 1;
    }
}
