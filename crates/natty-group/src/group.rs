//! [`ConsumerGroup`]: partitions leased by natty-election, balanced across live members.
//!
//! Each member runs a controller loop:
//! - it announces itself in `<name>_members` (a key per member, the bucket's TTL the group's,
//!   re-written every `ttl / 3`; expiry markers tell the others when a member dies);
//! - with N members alive, its fair share is ⌈P / N⌉: while it owns fewer, it is a candidate
//!   in every partition's election it does not own (a follower watching the lease takes a
//!   resigned or expired partition within milliseconds); at its share it stops contesting;
//!   above it, it resigns its highest partitions so the others can take them;
//! - a partition it wins is consumed with per-key order from a durable of its own term
//!   (`<name>_p<i>_<epoch>_<revision>`, filtered on `<prefix>.<i>.>`, started from the
//!   previous owner's ack floor; the earlier durables are deleted: durables.rs), until the
//!   lease is resigned — then the consumer stops (handlers finish, acks are flushed)
//!   *before* the lease is released, so the next owner never overlaps with it — or lost
//!   (expired, taken): then the consumer is dropped at once.

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use natty_core::Client;
use natty_election::{Election, ElectionConfig, Leadership, Term};
use natty_kv::{BucketConfig, Kv};
use natty_stream::{Consumer, ConsumerConfig, HandlerError, Message, ensure_consumer};
use tokio::{
    sync::{Notify, broadcast},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{
    Error, ErrorKind, GroupConfig, durables,
    error::{from_election, from_kv, from_stream},
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

/// What a member observed: ownership changes and membership.
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
}

#[derive(Debug)]
struct Shared {
    owned: Mutex<BTreeMap<u32, Term>>,
    events: broadcast::Sender<GroupEvent>,
    changed: Notify,
    members: AtomicUsize,
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
    partition: u32,
    term: Term,
}

impl Owned {
    fn new(shared: Arc<Shared>, partition: u32, term: Term) -> Self {
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
            partition,
            term,
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
        info!(partition, %term, "partition released: consumer stopped");
        self.shared.send(GroupEvent::Released {
            partition,
            term,
            at: Instant::now(),
        });
        self.shared.changed.notify_one();
    }
}

impl ConsumerGroup {
    /// A group handle. Checks the configuration (`InvalidConfig` / `InvalidName`, nothing
    /// sent).
    pub fn new(client: Client, config: GroupConfig) -> Result<Self, Error> {
        config.validate()?;
        let (events, _) = broadcast::channel(256);
        Ok(Self {
            kv: Kv::new(client.clone()),
            client,
            config,
            shared: Arc::new(Shared {
                owned: Mutex::new(BTreeMap::new()),
                events,
                changed: Notify::new(),
                members: AtomicUsize::new(0),
            }),
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
    /// current durable, the newest owner's): the lag.
    pub async fn lag(&self) -> Result<Vec<u64>, Error> {
        let stream = durables::get_stream(&self.client, &self.config).await?;
        let mut newest: BTreeMap<u32, (Term, String)> = BTreeMap::new();
        for (p, term, name) in durables::list(&stream, &self.config).await? {
            if newest.get(&p).is_none_or(|(t, _)| *t < term) {
                newest.insert(p, (term, name));
            }
        }
        let mut lag = Vec::new();
        for p in 0..self.config.partitions {
            let Some((_, durable)) = newest.get(&p) else {
                return Err(Error::new(
                    ErrorKind::Stream,
                    format!("partition {p} has no durable: call ensure() or join() first"),
                ));
            };
            let info = stream.consumer_info(durable).await.map_err(|e| {
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
    /// `InvalidConfig` for a work-queue stream (not supported).
    pub async fn ensure(&self) -> Result<(), Error> {
        let stream = durables::get_stream(&self.client, &self.config).await?;
        if stream.cached_info().config.retention
            == natty_core::async_nats::jetstream::stream::RetentionPolicy::WorkQueue
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
        let existing: std::collections::BTreeSet<u32> = durables::list(&stream, &self.config)
            .await?
            .into_iter()
            .map(|(p, _, _)| p)
            .collect();
        for p in (0..self.config.partitions).filter(|p| !existing.contains(p)) {
            let cfg = ConsumerConfig::new(&self.config.stream, self.config.durable(p))
                .filter_subjects([self.config.filter(p)])
                .ack_wait(self.config.ack_wait);
            ensure_consumer(&self.client, &cfg)
                .await
                .map_err(from_stream)?;
        }
        self.kv
            .ensure_bucket(
                BucketConfig::new(self.config.members_bucket())
                    .ttl(self.config.ttl)
                    .replicas(self.config.replicas)
                    .description(format!(
                        "natty consumer group {:?}: members",
                        self.config.name
                    )),
            )
            .await
            .map_err(from_kv)?;
        Ok(())
    }

    fn election(&self, partition: u32) -> Result<Election, Error> {
        let c = &self.config;
        Election::new(
            self.kv.clone(),
            ElectionConfig::new(c.lease_bucket(), format!("p{partition}"), &c.member)
                .ttl(c.ttl)
                // A resigned partition's handlers get margin / 2 to finish before they are
                // aborted: a quarter of the TTL, not the election's default tenth.
                .margin(c.ttl / 4)
                .replicas(c.replicas)
                .description(format!(
                    "natty consumer group {:?}: partition leases",
                    c.name
                )),
        )
        .map_err(from_election)
    }

    /// Joins the group until `cancel` fires, consuming the partitions this member is handed
    /// with `handler` (per key: one at a time, in stream order; `Ok` acks, errors retry as
    /// in [`ConsumeOptions::ordered_by_key`](natty_stream::ConsumeOptions::ordered_by_key)).
    ///
    /// On cancel the member leaves: it removes its membership (the others start contesting at
    /// once), stops its consumers (handlers finish, acks flushed) and then resigns each
    /// lease, so its partitions are re-owned within milliseconds. Dropping the future instead
    /// aborts the consumers at their next await; the leases then move after the TTL.
    pub async fn join<H, Fut>(&self, cancel: CancellationToken, handler: H) -> Result<(), Error>
    where
        H: Fn(Partition, Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let span =
            info_span!("natty.group", group = %self.config.name, member = %self.config.member);
        self.run(cancel, Arc::new(handler)).instrument(span).await
    }

    async fn run<H, Fut>(&self, cancel: CancellationToken, handler: Arc<H>) -> Result<(), Error>
    where
        H: Fn(Partition, Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.ensure().await?;
        let c = &self.config;
        let bucket = c.members_bucket();
        let mut watch = self.kv.watch_bucket(&bucket).await.map_err(from_kv)?;
        self.announce().await;
        let mut announce = tokio::time::interval(c.ttl / 3);
        // Fallback to the watch: recount members now and then.
        let mut recount = tokio::time::interval(Duration::from_secs(1).min(c.ttl / 2));
        let mut slots: HashMap<u32, Slot> = HashMap::new();
        let mut count = self.count_members().await;
        let mut last_reported = 0;
        info!(partitions = c.partitions, "joined");
        loop {
            slots.retain(|_, s| !s.task.is_finished());
            let owned = self.shared.owned();
            let fair = usize::try_from(c.partitions)
                .unwrap_or(usize::MAX)
                .div_ceil(count.max(1));
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
            tokio::select! {
                () = cancel.cancelled() => break,
                () = self.shared.changed.notified() => {}
                event = watch.next() => {
                    if event.is_none() {
                        warn!("membership watch ended: re-creating it");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        if let Ok(w) = self.kv.watch_bucket(&bucket).await {
                            watch = w;
                        }
                    }
                    count = self.count_members().await;
                }
                _ = recount.tick() => count = self.count_members().await,
                _ = announce.tick() => self.announce().await,
            }
        }
        // Leave: membership first, so the others contest while our consumers stop.
        info!(owned = ?self.shared.owned().keys().collect::<Vec<_>>(), "leaving: resigning every partition");
        if let Err(e) = self.kv.delete(&bucket, &c.member).await {
            warn!(error = %e, "removing the membership key; it expires after the TTL");
        }
        for s in slots.values() {
            s.cancel.cancel();
        }
        for (_, mut s) in slots.drain() {
            let _ = (&mut s.task).await;
        }
        self.shared.members.store(0, Ordering::Relaxed);
        info!("left the group");
        Ok(())
    }

    async fn announce(&self) {
        let owned = self.shared.owned().len();
        if let Err(e) = self
            .kv
            .put(
                &self.config.members_bucket(),
                &self.config.member,
                owned.to_string().into(),
            )
            .await
        {
            warn!(error = %e, "announcing membership failed; retrying on the next beat");
        }
    }

    /// Live members (this one included even when its key is not visible yet).
    async fn count_members(&self) -> usize {
        let count = match self.kv.keys(&self.config.members_bucket()).await {
            Ok(keys) => keys.len() + usize::from(!keys.contains(&self.config.member)),
            Err(e) => {
                warn!(error = %e, "counting members failed: keeping the last count");
                self.shared.members.load(Ordering::Relaxed).max(1)
            }
        };
        self.shared.members.store(count, Ordering::Relaxed);
        count
    }

    /// Starts the election of `partition`: a candidate now, the owner if it wins.
    fn contest<H, Fut>(&self, partition: u32, handler: Arc<H>) -> Result<Slot, Error>
    where
        H: Fn(Partition, Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let election = self.election(partition)?;
        let cancel = CancellationToken::new();
        let (client, config, shared) = (
            self.client.clone(),
            self.config.clone(),
            self.shared.clone(),
        );
        let work_shared = shared.clone();
        let ttl = self.config.ttl;
        let run = election.clone();
        let token = cancel.clone();
        let resigned = cancel.clone();
        let task = tokio::spawn(
            async move {
                let result = run
                    .run(token, move |lead: Leadership| {
                        consume(
                            client.clone(),
                            config.clone(),
                            work_shared.clone(),
                            partition,
                            lead,
                            resigned.clone(),
                            handler.clone(),
                        )
                    })
                    .await;
                if let Err(e) = result {
                    // A configuration the election refuses (e.g. a lease bucket with another
                    // TTL): the slot ends and would be contested again at once. Wait a TTL
                    // first, so the refusal is not a hot loop.
                    warn!(partition, error = %e, retry_in = ?ttl, "partition election ended with an error");
                    tokio::time::sleep(ttl).await;
                }
                shared.changed.notify_one();
            }
            .instrument(info_span!("natty.group.partition", partition)),
        );
        Ok(Slot { cancel, task })
    }
}

/// How soon a failed take-over of a partition's durable is tried again (while the lease
/// holds), doubling up to [`TAKE_OVER_RETRY_MAX`].
const TAKE_OVER_RETRY: Duration = Duration::from_millis(250);
const TAKE_OVER_RETRY_MAX: Duration = Duration::from_secs(4);

/// The owner's work: take the partition's durable over for this term, then consume it until
/// the lease is lost or resigned (`resigned` fired: this member gives it up).
///
/// Resigned, the lease is still ours until this returns (bounded by the election): the
/// consumer stops gracefully (handlers finish, acks flushed); the next owner starts its own
/// durable from this one's ack floor. Lost otherwise (expired, taken, deleted): the next owner
/// may already have started, so the consumer is dropped at once — handlers aborted; the next
/// owner deletes this term's durable, which ends whatever of ours the server still holds.
async fn consume<H, Fut>(
    client: Client,
    config: GroupConfig,
    shared: Arc<Shared>,
    partition: u32,
    lead: Leadership,
    resigned: CancellationToken,
    handler: Arc<H>,
) where
    H: Fn(Partition, Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    let term = lead.term;
    let _owned = Owned::new(shared, partition, term);
    let lost = lead.lost.clone();
    // This term's own durable, starting where the previous owner left off (durables.rs).
    // Retried with back-off while the lease holds (during a cluster fault the server may not
    // answer); a name the server refuses cannot get better: the partition is given up.
    let mut retry_in = TAKE_OVER_RETRY;
    let durable = loop {
        let attempt = tokio::select! {
            () = lost.cancelled() => return,
            r = durables::take_over(&client, &config, partition, &lead) => r,
        };
        match attempt {
            Ok(d) => break d,
            Err(e) if matches!(e.kind(), ErrorKind::InvalidName | ErrorKind::InvalidConfig) => {
                warn!(partition, %term, error = %e, "the partition's durable cannot be created: giving the partition up");
                return;
            }
            Err(e) => {
                warn!(partition, %term, error = %e, ?retry_in, "taking over the partition's durable failed")
            }
        }
        tokio::select! {
            () = lost.cancelled() => return,
            () = tokio::time::sleep(retry_in) => {}
        }
        retry_in = (retry_in * 2).min(TAKE_OVER_RETRY_MAX);
    };
    // The key is what follows `<prefix>.<partition>.` in the subject.
    let skip = config.prefix_tokens() + 1;
    let options = config.consume.clone().ordered_by_key(move |m: &Message| {
        m.subject.splitn(skip + 1, '.').nth(skip).map(str::to_owned)
    });
    let consumer = match Consumer::new(client, &config.stream, &durable, options) {
        Ok(c) => c,
        Err(e) => {
            warn!(partition, error = %e, "cannot consume the partition");
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
            if !resigned.is_cancelled() {
                warn!(partition, %term, "partition lease lost: consumer dropped, handlers aborted");
                return;
            }
            stop.cancel();
            consuming.await
        }
    };
    match ended {
        Ok(stats) => debug!(partition, ?stats, "partition consumer stopped"),
        Err(e) => {
            warn!(partition, error = %e, "partition consumer failed: resigning the partition")
        }
    }
}
