//! [`ConsumerGroup`]: partitions leased by natty-election, balanced across live members.
//!
//! Each member runs a controller loop:
//! - it announces itself in `<name>_members` (a key per member, the bucket's TTL the group's,
//!   re-written every `ttl / 3`; expiry markers tell the others when a member dies) and
//!   keeps the live members from its watch of that bucket (members.rs);
//! - with N members alive, its fair share is ⌈P / N⌉: while it owns fewer, it is a candidate
//!   in every partition's election it does not own (a follower watching the lease takes a
//!   resigned or expired partition within milliseconds); at its share it stops contesting;
//!   above it, it resigns its highest partitions so the others can take them;
//! - a partition it wins is consumed with per-key order from a durable of its own term
//!   (`<name>_p<i>_<epoch>_<revision>`, filtered on `<prefix>.<i>.>`, started from the
//!   previous owner's ack floor; the earlier durables are deleted: durables.rs), until the
//!   lease is resigned — then the consumer stops (handlers finish, acks are flushed)
//!   *before* the lease is released, so the next owner never overlaps with it — or lost
//!   (expired, taken, also while a resign's stop is under way): then the consumer is
//!   dropped at once;
//! - what fails and is retried is recorded as a [`Problem`] ([`ConsumerGroup::health`],
//!   [`GroupEvent::Failing`], metrics); what cannot heal (a closed client, the stream gone
//!   past its grace period) ends `join` with an error.

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use natty_core::{Client, async_nats};
use natty_election::{Election, Leadership, Term};
use natty_kv::{BucketStatus, EventKind, Kv, Watch};
use natty_stream::{Consumer, ConsumerConfig, HandlerError, Message, ensure_consumer};
use tokio::{
    sync::{Notify, broadcast},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{
    Area, Error, ErrorKind, GroupConfig, Health, Problem, durables,
    error::{from_election, from_kv, from_stream},
    health::Problems,
    members::Roster,
    obs,
};

/// The partition a handler runs for, and the lease term it holds it under: a fencing token
/// for anything the handler writes elsewhere (reject writes with a lower term for the same
/// partition). Equal when index and term are.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Partition {
    /// The partition, `0..partitions`.
    pub index: u32,
    /// The lease term.
    pub term: Term,
    lease: Leadership,
}

impl Partition {
    /// Whether this member still owns the partition under [`term`](Self::term) *now*: its
    /// lease is valid by the local clock and the partition is not being handed over
    /// ([`Leadership::is_valid`](natty_election::Leadership::is_valid)). Check it right before
    /// each side effect: a member paused past its lease (GC, SIGSTOP) wakes up with handlers
    /// mid-way before it has noticed, while a successor may already own the partition; this
    /// check cannot be late. When it is `false`, return an error: the message is not acked
    /// and goes to the partition's next owner. A pause *between* the check and the side
    /// effect is not covered: fence writes elsewhere with the term.
    pub fn is_owned(&self) -> bool {
        self.lease.is_valid()
    }
}

impl PartialEq for Partition {
    fn eq(&self, other: &Self) -> bool {
        (self.index, self.term) == (other.index, other.term)
    }
}

impl Eq for Partition {}

/// What a member observed: ownership changes, membership, failures.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupEvent {
    /// This member won `partition` and starts consuming it.
    Acquired {
        /// The partition.
        partition: u32,
        /// Its lease term.
        term: Term,
        /// When: before its consumer started (an event is read later than it happened).
        at: Instant,
    },
    /// This member stopped consuming `partition` (its handlers finished or were aborted, its
    /// acks flushed); the lease is released next (or has expired).
    Released {
        /// The partition.
        partition: u32,
        /// The lease term it held.
        term: Term,
        /// When: after its consumer stopped, before the lease is given up.
        at: Instant,
    },
    /// This member owns more than its fair share and resigns `partition` (rebalance).
    Resigning {
        /// The partition.
        partition: u32,
    },
    /// The live members changed.
    Members {
        /// Members alive (this one included).
        count: usize,
        /// ⌈partitions / count⌉.
        fair_share: usize,
    },
    /// Something failed and is retried: the problem as it is now (also in
    /// [`ConsumerGroup::health`]).
    Failing(Problem),
    /// A problem ended: its area succeeded again.
    Recovered {
        /// What had failed.
        area: Area,
        /// Its partition, for a partition's problem.
        partition: Option<u32>,
    },
}

#[derive(Debug)]
struct Shared {
    owned: Mutex<BTreeMap<u32, Term>>,
    events: broadcast::Sender<GroupEvent>,
    changed: Notify,
    members: AtomicUsize,
    fair_share: AtomicUsize,
    joined: AtomicBool,
    problems: Mutex<Problems>,
    /// Cleared once the server refuses fenced writes: take-overs then list (durables.rs).
    fences: AtomicBool,
}

impl Shared {
    fn owned(&self) -> BTreeMap<u32, Term> {
        self.owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn send(&self, event: GroupEvent) {
        let _ = self.events.send(event);
    }

    fn problems(&self) -> MutexGuard<'_, Problems> {
        self.problems.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A failure that is retried: recorded, counted, sent as an event.
    fn failed(&self, config: &GroupConfig, area: Area, partition: Option<u32>, error: &Error) {
        self.failed_since(config, area, partition, error, Instant::now());
    }

    /// As [`failed`](Self::failed), for a failure that began at `began` (noticed after a
    /// wait).
    fn failed_since(
        &self,
        config: &GroupConfig,
        area: Area,
        partition: Option<u32>,
        error: &Error,
        began: Instant,
    ) {
        let problem = self.problems().failed(
            area,
            partition,
            error.kind(),
            error.to_string(),
            Instant::now(),
            began,
        );
        obs::failed(config, area);
        self.send(GroupEvent::Failing(problem));
        self.changed.notify_one();
    }

    /// `area` (of `partition`) succeeded.
    fn recovered(&self, area: Area, partition: Option<u32>) {
        if self.problems().recovered(area, partition) {
            info!(%area, partition, "recovered");
            self.send(GroupEvent::Recovered { area, partition });
        }
    }

    /// When a failure reported after `after` (any, if `None`) first found the stream
    /// missing.
    fn stream_missing_since(&self, after: Option<Instant>) -> Option<Instant> {
        self.problems()
            .current(Instant::now())
            .iter()
            .filter(|p| p.kind == ErrorKind::StreamNotFound && after.is_none_or(|a| p.last > a))
            .map(|p| p.since)
            .min()
    }
}

/// A consumer group: join it from every process; each partition is consumed by one live
/// member at a time, with per-key order, and partitions spread evenly over the members.
/// Cheap to clone (clones share ownership state and events); join once per process.
///
/// ```no_run
/// # async fn example(client: natty_core::Client) -> Result<(), natty_group::Error> {
/// use natty_group::{ConsumerGroup, GroupConfig};
/// use tokio_util::sync::CancellationToken;
///
/// let group = ConsumerGroup::new(
///     client,
///     GroupConfig::new("billing", "ORDERS", "orders", 12, "node-1"),
/// )?;
/// // Publishers put the partition in the subject:
/// let subject = group.config().subject_for("customer-42")?; // "orders.<p>.customer-42"
/// # let _ = subject;
/// let cancel = CancellationToken::new();
/// group
///     .join(cancel, |partition, message| async move {
///         // One key at a time, in stream order; `partition.term` fences side effects.
///         let _ = (partition, message);
///         Ok(())
///     })
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ConsumerGroup {
    client: Client,
    kv: Kv,
    config: GroupConfig,
    shared: Arc<Shared>,
}

/// A partition's election task: a candidate, or the owner.
struct Slot {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Drop for Slot {
    /// Backstop when `join` is dropped: the election's run is dropped, which fires `lost`
    /// and aborts the partition's consumer (REVIEW.md: drop, not cancel).
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Marks a partition owned while the consumer runs; released on drop, also when the work is
/// aborted.
struct Owned {
    shared: Arc<Shared>,
    config: GroupConfig,
    partition: u32,
    term: Term,
    /// Fired when this member gives the partition up.
    resigned: CancellationToken,
    /// Why it is released (metric label), when not as `resigned` says (resigned or lost).
    reason: Option<&'static str>,
}

impl Owned {
    fn new(
        shared: Arc<Shared>,
        config: GroupConfig,
        partition: u32,
        term: Term,
        resigned: CancellationToken,
    ) -> Self {
        shared
            .owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(partition, term);
        info!(partition, %term, "partition acquired: consuming");
        shared.send(GroupEvent::Acquired {
            partition,
            term,
            at: Instant::now(),
        });
        shared.changed.notify_one();
        Self {
            shared,
            config,
            partition,
            term,
            resigned,
            reason: None,
        }
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let (partition, term) = (self.partition, self.term);
        let mut owned = self
            .shared
            .owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if owned.get(&partition) == Some(&term) {
            owned.remove(&partition);
        }
        drop(owned);
        let reason = self.reason.unwrap_or(if self.resigned.is_cancelled() {
            "resigned"
        } else {
            "lost"
        });
        info!(partition, %term, reason, "partition released: consumer stopped");
        obs::released(&self.config, reason);
        self.shared.send(GroupEvent::Released {
            partition,
            term,
            at: Instant::now(),
        });
        self.shared.changed.notify_one();
    }
}

/// Marks the group joined while `join` runs (also when its future is dropped).
struct Joined<'a>(&'a Shared);

impl Drop for Joined<'_> {
    fn drop(&mut self) {
        self.0.joined.store(false, Ordering::Relaxed);
        self.0.members.store(0, Ordering::Relaxed);
        self.0.fair_share.store(0, Ordering::Relaxed);
    }
}

/// The first pause before the membership watch is made again after it ended, doubling up
/// to [`REWATCH_MAX`].
const REWATCH: Duration = Duration::from_millis(200);
const REWATCH_MAX: Duration = Duration::from_secs(2);
/// How often a stream reported missing is looked up again.
const STREAM_CHECK: Duration = Duration::from_secs(1);
/// How often a resigning owner reads its lease when it could not watch it.
const LEASE_CHECK: Duration = Duration::from_millis(250);

impl ConsumerGroup {
    /// A group handle. Checks the configuration — also what the other crates would refuse
    /// later: the consume options, the partitions' leases, the membership bucket
    /// (`InvalidConfig` / `InvalidName`, nothing sent).
    pub fn new(client: Client, config: GroupConfig) -> Result<Self, Error> {
        config.validate()?;
        let kv = Kv::new(client.clone());
        // The membership bucket is the group's: re-created by an announcement (deleted
        // behind our back), it gets the group's TTL, not natty-kv's defaults — without it a
        // member that dies would be counted forever.
        kv.own_bucket(config.members_config()).map_err(from_kv)?;
        let (events, _) = broadcast::channel(256);
        Ok(Self {
            kv,
            client,
            shared: Arc::new(Shared {
                owned: Mutex::new(BTreeMap::new()),
                events,
                changed: Notify::new(),
                members: AtomicUsize::new(0),
                fair_share: AtomicUsize::new(0),
                joined: AtomicBool::new(false),
                problems: Mutex::new(Problems::new(config.ttl)),
                fences: AtomicBool::new(true),
            }),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// The partitions this member consumes now, with their lease terms.
    pub fn owned(&self) -> BTreeMap<u32, Term> {
        self.shared.owned()
    }

    /// Live members as last counted (0 before `join`).
    pub fn members(&self) -> usize {
        self.shared.members.load(Ordering::Relaxed)
    }

    /// This member's state: owned partitions, members, and what is failing and retried
    /// (a take-over the server refuses, a lease bucket made with another TTL, announcements
    /// that fail...). `join` keeps running through these; it returns an error only for what
    /// cannot heal.
    pub fn health(&self) -> Health {
        Health {
            joined: self.shared.joined.load(Ordering::Relaxed),
            members: self.members(),
            fair_share: self.shared.fair_share.load(Ordering::Relaxed),
            owned: self.owned(),
            problems: self.shared.problems().current(Instant::now()),
        }
    }

    /// Events from now on (a slow subscriber misses some: `Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<GroupEvent> {
        self.shared.events.subscribe()
    }

    /// Who owns each partition, as stored in the leases (any member can ask): partition →
    /// member name, `None` while unowned.
    pub async fn owners(&self) -> Result<Vec<Option<String>>, Error> {
        let mut owners = Vec::new();
        for p in 0..self.config.partitions {
            let leader = self.election(p)?.leader().await.map_err(from_election)?;
            owners.push(leader.map(|l| l.node));
        }
        Ok(owners)
    }

    /// Messages not yet delivered per partition (the pending count of each partition's
    /// current durable — the one its pointer names, else the newest one listed): the lag.
    pub async fn lag(&self) -> Result<Vec<u64>, Error> {
        let stream = durables::get_stream(&self.client, &self.config).await?;
        let mut listed: Option<BTreeMap<u32, (Term, String)>> = None;
        let mut lag = Vec::new();
        for p in 0..self.config.partitions {
            let pointed = durables::read_pointer(&self.client, &self.config, p)
                .await
                .ok()
                .flatten()
                .and_then(|ptr| ptr.current);
            let durable = match pointed {
                Some(d) => d,
                None => {
                    if listed.is_none() {
                        let mut newest: BTreeMap<u32, (Term, String)> = BTreeMap::new();
                        for (p, term, name) in durables::list(&stream, &self.config).await? {
                            if newest.get(&p).is_none_or(|(t, _)| *t < term) {
                                newest.insert(p, (term, name));
                            }
                        }
                        listed = Some(newest);
                    }
                    let Some((_, d)) = listed.as_ref().and_then(|l| l.get(&p)).cloned() else {
                        return Err(Error::new(
                            ErrorKind::Stream,
                            format!("partition {p} has no durable: call ensure() or join() first"),
                        ));
                    };
                    d
                }
            };
            let info = stream.consumer_info(&durable).await.map_err(|e| {
                Error::with_source(
                    ErrorKind::Stream,
                    format!("reading consumer {durable:?}"),
                    e,
                )
            })?;
            lag.push(info.num_pending);
        }
        Ok(lag)
    }

    /// Deletes every durable of the group (all partitions, all terms) and returns how many:
    /// the group starts from the stream's beginning again at the next `join`. Only while no
    /// member runs (a running owner's consumer ends when its durable is deleted).
    pub async fn delete_durables(&self) -> Result<usize, Error> {
        let stream = durables::get_stream(&self.client, &self.config).await?;
        let found = durables::list(&stream, &self.config).await?;
        for (p, _, name) in &found {
            stream.delete_consumer(name).await.map_err(|e| {
                Error::with_source(
                    ErrorKind::Stream,
                    format!("deleting durable {name:?} of partition {p}"),
                    e,
                )
            })?;
        }
        info!(deleted = found.len(), "group durables deleted");
        Ok(found.len())
    }

    /// Creates each partition's initial durable where the partition has none yet (the first
    /// owner starts from it), and the membership bucket. Idempotent; `join` calls it.
    /// `InvalidConfig` for a work-queue stream (not supported); `StreamNotFound` when the
    /// stream does not exist.
    pub async fn ensure(&self) -> Result<(), Error> {
        self.ensure_all().await.map(drop)
    }

    /// [`ensure`](Self::ensure), returning the membership bucket's status.
    /// What `join` needs before it can take part: the stream, the initial durables, the
    /// members bucket and its watch. Trouble that may heal (a timeout, no JetStream leader
    /// during a node fault) is retried for the consume options' `consumer_gone_grace`, like
    /// later on; anything else, or trouble past the grace, is `join`'s error. `None`: cancelled.
    async fn start(
        &self,
        cancel: &CancellationToken,
    ) -> Result<Option<(BucketStatus, Watch)>, Error> {
        let grace = self.config.consume.consumer_gone_grace;
        let since = tokio::time::Instant::now();
        let mut backoff =
            natty_core::retry::RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(2))
                .backoff();
        loop {
            let attempt = async {
                let status = self.ensure_all().await?;
                let watch = self
                    .kv
                    .watch_bucket(&self.config.members_bucket())
                    .await
                    .map_err(from_kv)?
                    .with_caught_up_events();
                Ok::<_, Error>((status, watch))
            };
            let failed = tokio::select! {
                () = cancel.cancelled() => return Ok(None),
                started = attempt => match started {
                    Ok(started) => return Ok(Some(started)),
                    Err(e) => e,
                },
            };
            if !natty_core::error::is_transient(&failed) || since.elapsed() >= grace {
                return Err(failed);
            }
            let pause = backoff.next_delay();
            warn!(error = %failed, retry_in = ?pause, "joining: trouble that may heal, retrying");
            tokio::select! {
                () = cancel.cancelled() => return Ok(None),
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn ensure_all(&self) -> Result<BucketStatus, Error> {
        let stream = durables::get_stream(&self.client, &self.config).await?;
        if stream.cached_info().config.retention
            == async_nats::jetstream::stream::RetentionPolicy::WorkQueue
        {
            // A take-over creates the next owner's durable before it deletes the previous one
            // (so a crash in between loses no position), which a work-queue stream refuses.
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "consumer group {:?}: stream {:?} is a work-queue stream; groups need \
                     limits or interest retention",
                    self.config.name, self.config.stream
                ),
            ));
        }
        // A partition that had an owner has a pointer naming its durable; only the others
        // may need their initial durable, which a listing tells.
        let pointed: Vec<(u32, bool)> = futures::stream::iter(0..self.config.partitions)
            .map(|p| async move {
                let pointer = durables::read_pointer(&self.client, &self.config, p).await;
                (p, matches!(pointer, Ok(Some(ptr)) if ptr.current.is_some()))
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let unpointed: Vec<u32> = pointed
            .into_iter()
            .filter_map(|(p, pointed)| (!pointed).then_some(p))
            .collect();
        if !unpointed.is_empty() {
            let existing: std::collections::BTreeSet<u32> = durables::list(&stream, &self.config)
                .await?
                .into_iter()
                .map(|(p, _, _)| p)
                .collect();
            for p in unpointed.into_iter().filter(|p| !existing.contains(p)) {
                let cfg = ConsumerConfig::new(&self.config.stream, self.config.durable(p))
                    .filter_subjects([self.config.filter(p)])
                    .ack_wait(self.config.ack_wait);
                ensure_consumer(&self.client, &cfg)
                    .await
                    .map_err(from_stream)?;
            }
        }
        self.kv
            .ensure_bucket(self.config.members_config())
            .await
            .map_err(from_kv)
    }

    fn election(&self, partition: u32) -> Result<Election, Error> {
        Election::new(self.kv.clone(), self.config.lease_config(partition)).map_err(from_election)
    }

    /// Joins the group until `cancel` fires, consuming the partitions this member is handed
    /// with `handler` (per key: one at a time, in stream order; `Ok` acks, errors retry as
    /// in [`ConsumeOptions::ordered_by_key`](natty_stream::ConsumeOptions::ordered_by_key)).
    ///
    /// On cancel the member leaves: it removes its membership (the others start contesting at
    /// once), stops its consumers (handlers finish, acks flushed) and then resigns each
    /// lease, so its partitions are re-owned within milliseconds. Dropping the future instead
    /// aborts the consumers at their next await; the leases then move after the TTL.
    ///
    /// What may heal is retried and shown in [`health`](Self::health) (and as events and
    /// metrics). Errors — after leaving as on cancel — for what cannot: `Closed` (the NATS
    /// client was closed or drained), `StreamNotFound` (the stream is missing at the start,
    /// or was deleted and not re-created within the consume options' `consumer_gone_grace`);
    /// at the start also the errors of [`ensure`](Self::ensure) and a membership bucket
    /// made with another TTL.
    pub async fn join<H, Fut>(&self, cancel: CancellationToken, handler: H) -> Result<(), Error>
    where
        H: Fn(Partition, Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let span =
            info_span!("natty.group", group = %self.config.name, member = %self.config.member);
        self.run(cancel, Arc::new(handler)).instrument(span).await
    }

    #[allow(
        clippy::too_many_lines,
        reason = "one controller loop: its select arms read best together"
    )]
    async fn run<H, Fut>(&self, cancel: CancellationToken, handler: Arc<H>) -> Result<(), Error>
    where
        H: Fn(Partition, Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let Some((status, watch)) = self.start(&cancel).await? else {
            return Ok(());
        };
        let c = &self.config;
        let bucket = c.members_bucket();
        let mut watch = Some(watch);
        self.shared.joined.store(true, Ordering::Relaxed);
        let _joined = Joined(&self.shared);
        let mut roster = Roster::new(&c.member, c.ttl, expiry_seen(&status, c.ttl));
        let mut mismatch = None;
        if let Some(revision) = self.announce(mismatch.as_ref()).await {
            roster.announced(revision);
        }
        // Count once the members there are now are known, not before (bounded).
        self.catch_up(&mut watch, &mut roster).await;
        let mut rewatch = watch.is_none().then(tokio::time::Instant::now);
        let mut rewatch_pause = REWATCH;
        let mut announce =
            tokio::time::interval_at(tokio::time::Instant::now() + c.ttl / 3, c.ttl / 3);
        announce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut slots: HashMap<u32, Slot> = HashMap::new();
        let mut last_reported = 0;
        // The stream reported missing: since when, when to look again, when last found.
        let mut stream_gone: Option<Instant> = None;
        let mut stream_check: Option<tokio::time::Instant> = None;
        let mut stream_found: Option<Instant> = None;
        info!(partitions = c.partitions, "joined");
        let fatal = loop {
            slots.retain(|_, s| !s.task.is_finished());
            let now = Instant::now();
            let count = roster.count(now);
            let owned = self.shared.owned();
            let fair = usize::try_from(c.partitions)
                .unwrap_or(usize::MAX)
                .div_ceil(count.max(1));
            self.shared.members.store(count, Ordering::Relaxed);
            self.shared.fair_share.store(fair, Ordering::Relaxed);
            obs::counts(c, count, owned.len());
            if count != last_reported {
                last_reported = count;
                info!(members = count, fair_share = fair, "members changed");
                self.shared.send(GroupEvent::Members {
                    count,
                    fair_share: fair,
                });
            }
            if owned.len() > fair {
                // Above the fair share: resign the highest partitions, others take them.
                for p in owned.keys().rev().take(owned.len() - fair) {
                    if let Some(s) = slots.get(p).filter(|s| !s.cancel.is_cancelled()) {
                        info!(
                            partition = p,
                            owned = owned.len(),
                            fair_share = fair,
                            "rebalance: resigning"
                        );
                        self.shared.send(GroupEvent::Resigning { partition: *p });
                        s.cancel.cancel();
                    }
                }
            } else if owned.len() < fair {
                for p in 0..c.partitions {
                    if let std::collections::hash_map::Entry::Vacant(v) = slots.entry(p) {
                        debug!(partition = p, "contesting");
                        v.insert(self.contest(p, handler.clone())?);
                    }
                }
            } else {
                // At the fair share: stop contesting the others' partitions.
                for (p, s) in &slots {
                    if !owned.contains_key(p) && !s.cancel.is_cancelled() {
                        debug!(partition = p, "at the fair share: no longer contesting");
                        s.cancel.cancel();
                    }
                }
            }
            if stream_gone.is_none()
                && let Some(since) = self.shared.stream_missing_since(stream_found)
            {
                stream_gone = Some(since);
                stream_check = Some(tokio::time::Instant::now());
            }
            tokio::select! {
                () = cancel.cancelled() => break None,
                () = self.shared.changed.notified() => {}
                event = next_event(&mut watch) => match event {
                    Some(Ok(e)) => {
                        roster.apply(&e.key, e.kind, e.revision, Instant::now());
                        if e.kind == EventKind::BucketRecreated {
                            warn!("membership bucket deleted and created again: announcing at once");
                            mismatch = self.check_members_bucket(&mut roster).await;
                            if let Some(revision) = self.announce(mismatch.as_ref()).await {
                                roster.announced(revision);
                            }
                        }
                    }
                    Some(Err(e)) => {
                        warn!(error = %e, "membership watch failed");
                        self.shared.failed(c, Area::Membership, None, &from_kv(e));
                    }
                    None => {
                        warn!("membership watch ended (its bucket was deleted?): creating the bucket and the watch again");
                        watch = None;
                        rewatch = Some(tokio::time::Instant::now());
                    }
                },
                () = sleep_until(rewatch) => {
                    // The announcement creates the bucket again, with the group's settings
                    // (`own_bucket`): members that do not announce themselves again within
                    // a TTL are gone.
                    roster.forget_announcements();
                    let announced = self.announce(mismatch.as_ref()).await;
                    match self.kv.watch_bucket(&bucket).await {
                        Ok(w) => {
                            info!("membership watch re-established");
                            if let Some(revision) = announced {
                                roster.announced(revision);
                            }
                            watch = Some(w);
                            rewatch = None;
                            rewatch_pause = REWATCH;
                            roster.unconfirm(Instant::now());
                            mismatch = self.check_members_bucket(&mut roster).await;
                        }
                        Err(e) => {
                            warn!(error = %e, retry_in = ?rewatch_pause, "watching the membership bucket failed");
                            self.shared.failed(c, Area::Membership, None, &from_kv(e));
                            rewatch = Some(tokio::time::Instant::now() + rewatch_pause);
                            rewatch_pause = (rewatch_pause * 2).min(REWATCH_MAX);
                        }
                    }
                }
                () = sleep_until(roster.next_deadline().map(tokio::time::Instant::from_std)) => {}
                _ = announce.tick() => {
                    if let Some(e) = self.closed_client().await {
                        break Some(e);
                    }
                    if watch.is_some() && roster.unseen() {
                        warn!("the membership watch did not deliver this member's last announcement (its bucket gone?): watching again");
                        watch = None;
                        rewatch = Some(tokio::time::Instant::now());
                    } else if let Some(revision) = self.announce(mismatch.as_ref()).await
                        && roster.announced(revision)
                        && watch.is_some()
                    {
                        warn!(revision, "the membership bucket was created again (its revisions started over): watching it again");
                        watch = None;
                        rewatch = Some(tokio::time::Instant::now());
                    }
                }
                () = sleep_until(stream_check) => {
                    match durables::get_stream(&self.client, c).await {
                        Ok(_) => {
                            info!("the stream is there");
                            stream_gone = None;
                            stream_check = None;
                            stream_found = Some(Instant::now());
                            self.shared.recovered(Area::Stream, None);
                        }
                        Err(e) if e.kind() == ErrorKind::StreamNotFound => {
                            let since = stream_gone.unwrap_or_else(Instant::now);
                            let grace = c.consume.consumer_gone_grace;
                            warn!(error = %e, missing_for = ?since.elapsed(), ?grace, "the stream is missing");
                            self.shared.failed_since(c, Area::Stream, None, &e, since);
                            if since.elapsed() >= grace {
                                break Some(Error::with_source(
                                    ErrorKind::StreamNotFound,
                                    format!(
                                        "consumer group {:?}: stream {:?} was deleted and not \
                                         re-created within {grace:?}",
                                        c.name, c.stream
                                    ),
                                    e,
                                ));
                            }
                            stream_check = Some(tokio::time::Instant::now() + STREAM_CHECK);
                        }
                        Err(e) => {
                            if let Some(e) = self.closed_client().await {
                                break Some(e);
                            }
                            debug!(error = %e, "looking up the stream failed");
                            stream_check = Some(tokio::time::Instant::now() + STREAM_CHECK);
                        }
                    }
                }
            }
        };
        // Leave: membership first, so the others contest while our consumers stop.
        match &fatal {
            None => {
                info!(owned = ?self.shared.owned().keys().collect::<Vec<_>>(), "leaving: resigning every partition");
            }
            Some(e) => {
                warn!(error = %e, owned = ?self.shared.owned().keys().collect::<Vec<_>>(), "leaving the group: it cannot go on");
            }
        }
        if let Err(e) = self.kv.delete(&bucket, &c.member).await {
            warn!(error = %e, "removing the membership key; it expires after the TTL");
        }
        for s in slots.values() {
            s.cancel.cancel();
        }
        for (_, mut s) in slots.drain() {
            let _ = (&mut s.task).await;
        }
        obs::counts(c, 0, 0);
        info!("left the group");
        fatal.map_or(Ok(()), Err)
    }

    /// Reads the membership watch until it has delivered the current members (at most a
    /// TTL).
    async fn catch_up(&self, watch: &mut Option<Watch>, roster: &mut Roster) {
        let deadline = tokio::time::Instant::now() + self.config.ttl;
        while let Some(w) = watch.as_mut() {
            match tokio::time::timeout_at(deadline, w.next()).await {
                Ok(Some(Ok(e))) if e.kind == EventKind::CaughtUp => return,
                Ok(Some(Ok(e))) => roster.apply(&e.key, e.kind, e.revision, Instant::now()),
                Ok(Some(Err(e))) => {
                    warn!(error = %e, "membership watch failed while reading the members");
                    return;
                }
                Ok(None) => {
                    *watch = None;
                    return;
                }
                Err(_) => {
                    warn!(ttl = ?self.config.ttl, "the membership watch did not deliver the members within a TTL: counting what it has");
                    return;
                }
            }
        }
    }

    /// Checks the membership bucket's settings (after it was created again): one without
    /// the group's TTL (someone else's) expires nobody, so members not heard from are then
    /// dropped by their silence, and it is reported. Returns the mismatch, if any.
    async fn check_members_bucket(&self, roster: &mut Roster) -> Option<Error> {
        let bucket = self.config.members_bucket();
        match self.kv.status(&bucket).await {
            Ok(status) => {
                roster.set_markers(expiry_seen(&status, self.config.ttl));
                (status.ttl != Some(self.config.ttl)).then(|| {
                    let e = Error::new(
                        ErrorKind::Kv,
                        format!(
                            "membership bucket {bucket:?} has ttl {:?}, the group's is {:?} \
                             (created again by someone else?): members that stop are \
                             noticed by their silence, not by expiry",
                            status.ttl, self.config.ttl
                        ),
                    );
                    warn!(error = %e, "membership bucket not as the group made it");
                    e
                })
            }
            Err(e) => {
                debug!(error = %e, "reading the membership bucket's settings");
                None
            }
        }
    }

    /// Writes this member's key (returns the revision stored); a failure (or a `mismatch` of
    /// the bucket's settings) is a membership problem until an announcement succeeds in a
    /// bucket as the group made it.
    async fn announce(&self, mismatch: Option<&Error>) -> Option<u64> {
        let owned = self.shared.owned().len();
        match self
            .kv
            .put(
                &self.config.members_bucket(),
                &self.config.member,
                owned.to_string().into(),
            )
            .await
        {
            Ok(revision) => {
                match mismatch {
                    Some(e) => self.shared.failed(&self.config, Area::Membership, None, e),
                    None => self.shared.recovered(Area::Membership, None),
                }
                Some(revision)
            }
            Err(e) => {
                warn!(error = %e, "announcing membership failed; retrying on the next beat");
                self.shared
                    .failed(&self.config, Area::Membership, None, &from_kv(e));
                None
            }
        }
    }

    /// `Closed` when the NATS client is closed for good (drained or closed), not just
    /// reconnecting: nothing can heal that. (async-nats 0.48 has no closed state to ask — its
    /// connection state stays `Connected` after a close —; a subscribe fails with `Other`
    /// only when the connection handler is gone. A subscribe costs no round trip.)
    async fn closed_client(&self) -> Option<Error> {
        let nats = self.client.nats();
        let closed = nats
            .subscribe(nats.new_inbox())
            .await
            .is_err_and(|e| e.kind() == async_nats::client::SubscribeErrorKind::Other);
        closed.then(|| {
            Error::new(
                ErrorKind::Closed,
                format!(
                    "consumer group {:?}: the NATS client is closed",
                    self.config.name
                ),
            )
        })
    }

    /// Starts the election of `partition`: a candidate now, the owner if it wins.
    fn contest<H, Fut>(&self, partition: u32, handler: Arc<H>) -> Result<Slot, Error>
    where
        H: Fn(Partition, Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let election = self.election(partition)?;
        let cancel = CancellationToken::new();
        let owner = Owner {
            client: self.client.clone(),
            kv: self.kv.clone(),
            election: election.clone(),
            config: self.config.clone(),
            shared: self.shared.clone(),
            partition,
            resigned: cancel.clone(),
        };
        let (config, shared) = (self.config.clone(), self.shared.clone());
        let ttl = self.config.ttl;
        let token = cancel.clone();
        let task = tokio::spawn(
            async move {
                let result = election
                    .run(token, move |lead: Leadership| {
                        owner.clone().consume(lead, handler.clone())
                    })
                    .await;
                if let Err(e) = result {
                    // A configuration the election refuses (e.g. a lease bucket with another
                    // TTL): the slot ends and would be contested again at once. Wait a TTL
                    // first, so the refusal is not a hot loop.
                    warn!(partition, error = %e, retry_in = ?ttl, "partition election ended with an error");
                    shared.failed(&config, Area::Lease, Some(partition), &from_election(e));
                    tokio::time::sleep(ttl).await;
                }
                shared.changed.notify_one();
            }
            .instrument(info_span!("natty.group.partition", partition)),
        );
        Ok(Slot { cancel, task })
    }
}

/// Whether expiry of the membership bucket's keys is seen by its watch: the group's TTL and
/// per-key TTL markers (server 2.11+).
fn expiry_seen(status: &BucketStatus, ttl: Duration) -> bool {
    status.per_key_ttl && status.ttl == Some(ttl)
}

/// The watch's next event; never ready without a watch.
async fn next_event(watch: &mut Option<Watch>) -> Option<<Watch as futures::Stream>::Item> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// How soon a failed take-over of a partition's durable is tried again (while the lease
/// holds), doubling up to [`TAKE_OVER_RETRY_MAX`].
const TAKE_OVER_RETRY: Duration = Duration::from_millis(250);
const TAKE_OVER_RETRY_MAX: Duration = Duration::from_secs(4);

/// What a partition's owner works with.
#[derive(Clone)]
struct Owner {
    client: Client,
    kv: Kv,
    election: Election,
    config: GroupConfig,
    shared: Arc<Shared>,
    partition: u32,
    /// Fired when this member gives the partition up (rebalance, leave).
    resigned: CancellationToken,
}

impl Owner {
    /// The owner's work: take the partition's durable over for this term, then consume it
    /// until the lease is lost or resigned.
    ///
    /// Resigned, the lease is still ours until this returns (bounded by the election): the
    /// consumer stops gracefully (handlers finish, acks flushed); the next owner starts its
    /// own durable from this one's ack floor. Lost otherwise (expired, taken, deleted) — also
    /// when that happens *during* a resign's graceful stop —: the next owner may already
    /// have started, so the consumer is dropped at once — handlers aborted; the next owner
    /// deletes this term's durable, which ends whatever of ours the server still holds.
    async fn consume<H, Fut>(self, lead: Leadership, handler: Arc<H>)
    where
        H: Fn(Partition, Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let (partition, config) = (self.partition, &self.config);
        let term = lead.term;
        let won = Instant::now();
        let mut owned = Owned::new(
            self.shared.clone(),
            config.clone(),
            partition,
            term,
            self.resigned.clone(),
        );
        self.shared.recovered(Area::Lease, Some(partition));
        let lost = lead.lost.clone();
        // This term's own durable, starting where the previous owner left off (durables.rs).
        // Retried with back-off while the lease holds (during a cluster fault the server may
        // not answer); a name the server refuses cannot get better: the partition is given up.
        let mut retry_in = TAKE_OVER_RETRY;
        let durable = loop {
            let attempt = tokio::select! {
                () = lost.cancelled() => return,
                r = durables::take_over(&self.client, config, partition, &lead, &self.shared.fences) => r,
            };
            match attempt {
                Ok(d) => break d,
                Err(e) if matches!(e.kind(), ErrorKind::InvalidName | ErrorKind::InvalidConfig) => {
                    warn!(partition, %term, error = %e, "the partition's durable cannot be created: giving the partition up");
                    self.shared
                        .failed(config, Area::TakeOver, Some(partition), &e);
                    owned.reason = Some("failed");
                    return;
                }
                Err(e) => {
                    warn!(partition, %term, error = %e, ?retry_in, "taking over the partition's durable failed");
                    self.shared
                        .failed(config, Area::TakeOver, Some(partition), &e);
                }
            }
            tokio::select! {
                () = lost.cancelled() => return,
                () = tokio::time::sleep(retry_in) => {}
            }
            retry_in = (retry_in * 2).min(TAKE_OVER_RETRY_MAX);
        };
        self.shared.recovered(Area::TakeOver, Some(partition));
        obs::took_over(config, won.elapsed());
        // The key is what follows `<prefix>.<partition>.` in the subject.
        let skip = config.prefix_tokens() + 1;
        // Failure counts and dead letters are keyed by the partition, not by this term's
        // durable: counted failures carry over to the next owner, and a message dead-lettered
        // by one owner (killed before its `+TERM`, or handed back behind an earlier message)
        // has the same dead-letter id at the next — stored once.
        let options = config
            .consume
            .clone()
            .identity(config.durable(partition))
            // This term's durable has one reader, this owner: a jump in the consumer
            // sequence is a lost delivery, and the consumer re-fetches it before anything
            // later of its key runs (issue 24 item 3).
            .exclusive(true)
            .ordered_by_key(move |m: &Message| {
                m.subject.splitn(skip + 1, '.').nth(skip).map(str::to_owned)
            });
        let consumer = match Consumer::new(self.client.clone(), &config.stream, &durable, options) {
            Ok(c) => c,
            Err(e) => {
                warn!(partition, error = %e, "cannot consume the partition");
                self.shared
                    .failed(config, Area::Consumer, Some(partition), &from_stream(e));
                owned.reason = Some("failed");
                return;
            }
        };
        let at = Partition {
            index: partition,
            term,
            lease: lead,
        };
        let stop = CancellationToken::new();
        let consuming = consumer.consume(stop.clone(), move |m| handler(at.clone(), m));
        tokio::pin!(consuming);
        let ended = tokio::select! {
            ended = &mut consuming => ended,
            () = lost.cancelled() => {
                if !self.resigned.is_cancelled() {
                    warn!(partition, %term, "partition lease lost: consumer dropped, handlers aborted");
                    return;
                }
                // Resigned: a graceful stop — unless the lease turns out lost meanwhile (or
                // already was: a loss that raced the resign). Then the successor may be
                // reading: dropped at once, as for any loss.
                stop.cancel();
                tokio::select! {
                    ended = &mut consuming => ended,
                    why = self.lease_lost(term) => {
                        warn!(partition, %term, %why, "partition lease lost during its resign: consumer dropped, handlers aborted");
                        owned.reason = Some("lost");
                        return;
                    }
                }
            }
        };
        match ended {
            Ok(stats) => {
                debug!(partition, ?stats, "partition consumer stopped");
            }
            Err(e) => {
                warn!(partition, error = %e, "partition consumer failed: resigning the partition");
                let e = from_stream(e);
                // A consumer ends with a missing stream only after its grace period.
                let began = if e.kind() == ErrorKind::StreamNotFound {
                    Instant::now()
                        .checked_sub(config.consume.consumer_gone_grace)
                        .unwrap_or_else(Instant::now)
                } else {
                    Instant::now()
                };
                self.shared
                    .failed_since(config, Area::Consumer, Some(partition), &e, began);
                owned.reason = Some("failed");
            }
        }
    }

    /// Resolves (with the reason) once the lease of `term` is seen lost while its consumer
    /// stops after a resign: the lease key holds another term or nothing, or its bucket is
    /// gone. Pending while the lease is ours.
    async fn lease_lost(&self, term: Term) -> String {
        let (bucket, key) = (self.config.lease_bucket(), format!("p{}", self.partition));
        // The watch first, then the read: a change between the two is not missed.
        let mut watch = match self.kv.watch_key(&bucket, &key).await {
            Ok(w) => Some(w),
            Err(e) if e.kind() == natty_kv::ErrorKind::BucketNotFound => {
                return "the lease bucket is gone".to_owned();
            }
            Err(e) => {
                debug!(error = %e, "watching the lease during a resign: checking its time only");
                None
            }
        };
        if let Some(why) = self.held_by_other(term).await {
            return why;
        }
        // (The lease's time needs no watching here: the election aborts this work half its
        // margin before the lease could expire.)
        let mut tick = tokio::time::interval(LEASE_CHECK);
        loop {
            tokio::select! {
                event = next_event(&mut watch) => match event {
                    Some(Ok(e)) => match e.kind {
                        EventKind::Put => {
                            if let Some(why) = self.held_by_other(term).await {
                                return why;
                            }
                        }
                        EventKind::Delete | EventKind::Purge | EventKind::Expired => {
                            return format!("the lease key was removed ({:?})", e.kind);
                        }
                        EventKind::BucketRecreated => {
                            return "the lease bucket was created again".to_owned();
                        }
                        _ => {}
                    },
                    Some(Err(e)) if e.kind() == natty_kv::ErrorKind::BucketNotFound => {
                        return "the lease bucket was deleted".to_owned();
                    }
                    Some(Err(e)) => debug!(error = %e, "lease watch during a resign"),
                    None => return "the lease bucket was deleted".to_owned(),
                },
                // Without a watch: the key is read now and then.
                _ = tick.tick(), if watch.is_none() => {
                    if let Some(why) = self.held_by_other(term).await {
                        return why;
                    }
                }
            }
        }
    }

    /// Why the lease key does not hold `term` any more, if it does not (a read that fails
    /// says nothing).
    async fn held_by_other(&self, term: Term) -> Option<String> {
        match self.election.leader().await {
            Ok(Some(l)) if l.term == term => None,
            Ok(Some(l)) => Some(format!("taken by {:?} in term {}", l.node, l.term)),
            Ok(None) => Some("the lease key is gone".to_owned()),
            Err(e) => {
                debug!(error = %e, "reading the lease during a resign");
                None
            }
        }
    }
}
