//! Rolling deploys: the consumers and the group members of the rolling workload
//! (`workload/rolling.rs`) restarted one after the other every [`RESTART_EVERY`], as a deploy
//! does — the replacement started first, then the old process stopped gracefully (SIGTERM)
//! and timed from the signal to its exit. Meanwhile the group's members bucket is deleted once
//! and, once the members have re-announced themselves ([`CRASH_AFTER`]), the member owning the
//! most partitions crashes (SIGKILL) instead of stopping; and the unrelated consumers on the
//! group's stream are deleted and re-created all along, so the pages of a consumer listing
//! shift under the group's take-overs.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    time::Duration,
};

use futures::StreamExt;
use natty::{CancellationToken, async_nats::jetstream::consumer::pull};
use natty_chaos::{Event, Lines, mono_ns};
use natty_testkit::{
    group::owned_at,
    procs::{sibling_binary, signal},
};
use tokio::{process::Command, task::JoinHandle};

use crate::{
    workload::rolling::{
        self, BATCH, CONCURRENCY, CONSUMERS, DEAD_LETTER, DURABLE, FAIL_EVERY, GROUP,
        GROUP_CONCURRENCY, GROUP_PREFIX, GROUP_STREAM, HANDLER_MS, MEMBERS, ORDERED_CONCURRENCY,
        ORDERED_DURABLE, ORDERED_HANDLER_MS, PARTITIONS, STOP_TIMEOUT, STREAM, UNRELATED,
    },
    world::{Kind, Proc, TTL_SECS, World},
};

/// One process restarted this often (plain consumers and members in turn).
const RESTART_EVERY: Duration = Duration::from_secs(2);
/// How long a stopping process is waited for before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(30);
/// How long a replacement may take to print `ready`.
const READY_WAIT: Duration = Duration::from_secs(15);
/// How long after the members bucket was deleted a member crashes: its members announce
/// themselves again (re-creating the bucket) within a TTL.
const CRASH_AFTER: Duration = Duration::from_secs(3 * TTL_SECS);
/// One unrelated consumer deleted and another created this often.
const CHURN_EVERY: Duration = Duration::from_millis(250);

/// A graceful stop, timed from the outside: SIGTERM sent → the process exited.
#[derive(Debug, Clone)]
pub(crate) struct Stop {
    /// The process (`Line::proc`).
    pub(crate) proc: String,
    pub(crate) signalled_ns: u64,
    pub(crate) exited_ns: u64,
    /// What went wrong: it had exited before it was asked to, exited with an error, or did
    /// not exit within [`STOP_WAIT`] (then it was killed).
    pub(crate) error: Option<String>,
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
    /// Which messages failed once: one directory per durable (the group's: per stream).
    fail_dirs: [PathBuf; 3],
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
        let fail_dirs = ["queue", "ordered", "group"].map(|d| out.join("fail-once").join(d));
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
        let t0 = mono_ns();
        make_unrelated(&client).await?;
        eprintln!(
            "chaos: {UNRELATED} unrelated consumers made in {:.1} s; rolling deploys start",
            (mono_ns() - t0) as f64 / 1e9
        );
        let mut consumers: Vec<(String, Kind)> = (0..CONSUMERS)
            .map(|i| (format!("p{i}"), Kind::Rolling))
            .collect();
        consumers.push(("o0".to_owned(), Kind::RollingOrdered));
        for (name, kind) in &consumers {
            self.spawn(name, *kind, 0)?;
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
            let crash_due = bucket_deleted.filter(|deleted| {
                self.crash.is_none()
                    && mono_ns() >= deleted + u64::try_from(CRASH_AFTER.as_nanos()).unwrap_or(0)
            });
            let (name, kind) = if tick.is_multiple_of(2) {
                consumers[(tick / 2) % consumers.len()].clone()
            } else if crash_due.is_some() {
                (self.busiest_member(), Kind::RollingMember)
            } else {
                (format!("r{}", (tick / 2) % MEMBERS), Kind::RollingMember)
            };
            let crash = crash_due.filter(|_| kind == Kind::RollingMember);
            self.roll(&name, kind, crash).await?;
            tick += 1;
        }
        self.churned = churn.await??;
        Ok(self)
    }

    /// The member (its name) that owns the most partitions now, by the lines.
    fn busiest_member(&self) -> String {
        let owned = self.lines.with(|all| owned_at(all, u64::MAX));
        self.procs
            .iter()
            .filter(|p| p.kind == Kind::RollingMember)
            .max_by_key(|p| owned.get(&p.tag()).map_or(0, HashSet::len))
            .map_or_else(|| "r0".to_owned(), |p| p.name.clone())
    }

    fn command(&self, name: &str, kind: Kind, incarnation: u32) -> anyhow::Result<Command> {
        let mut c = Command::new(sibling_binary("chaos-consumer", false)?);
        c.args(["--server", &self.servers])
            .args(["--batch", &BATCH.to_string()])
            .args(["--fail-once-every", &FAIL_EVERY.to_string()])
            .args(["--stop-timeout-ms", &STOP_TIMEOUT.as_millis().to_string()]);
        let handler_ms = if kind == Kind::RollingOrdered {
            ORDERED_HANDLER_MS
        } else {
            HANDLER_MS
        };
        c.args(["--handler-ms", &handler_ms.to_string()]);
        if kind == Kind::RollingMember {
            // A new member name per incarnation, as a deploy's new pods have.
            c.args(["--id", &format!("{name}-{incarnation}")])
                .args(["--concurrency", &GROUP_CONCURRENCY.to_string()])
                .args(["--dead-letter", DEAD_LETTER])
                .arg("--fail-dir")
                .arg(&self.fail_dirs[2])
                .args(["group", "--group", GROUP, "--stream", GROUP_STREAM])
                .args(["--prefix", GROUP_PREFIX])
                .args(["--partitions", &PARTITIONS.to_string()])
                .args(["--ttl", &TTL_SECS.to_string()])
                .args(["--ack-wait", &rolling::ACK_WAIT_SECS.to_string()]);
        } else if kind == Kind::RollingOrdered {
            c.args(["--id", name])
                .args(["--concurrency", &ORDERED_CONCURRENCY.to_string()])
                .arg("--fail-dir")
                .arg(&self.fail_dirs[1])
                .args(["durable", "--stream", STREAM, "--durable", ORDERED_DURABLE])
                .args(["--ordered-by-token", "1"]);
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
    if let Ok(Some(status)) = p.child.try_wait() {
        return Stop {
            proc: p.tag(),
            signalled_ns,
            exited_ns: signalled_ns,
            error: Some(format!("had exited before it was asked to ({status})")),
        };
    }
    if let Some(pid) = p.pid() {
        let _ = signal(pid, "-TERM").await;
    }
    let waited = tokio::time::timeout(STOP_WAIT, p.child.wait()).await;
    let exited_ns = mono_ns();
    let error = match waited {
        Ok(Ok(status)) if status.success() => None,
        Ok(Ok(status)) => Some(format!("exited with {status}")),
        Ok(Err(e)) => Some(format!("waiting for it failed: {e}")),
        Err(_) => {
            let _ = p.child.kill().await;
            Some(format!("did not exit within {STOP_WAIT:?}: killed"))
        }
    };
    Stop {
        proc: p.tag(),
        signalled_ns,
        exited_ns,
        error,
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
