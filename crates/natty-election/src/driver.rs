//! [`Election`]: the tokio driver that runs the [`machine`](crate::machine) against natty-kv.
//!
//! It loops like quinn's `drive_timer`: `select!` over cancellation, the machine's timeout,
//! the one KV request in flight, and the watch on the lease key, feeding each result back.
//! Time is `tokio::time::Instant`, so tests with paused time run faster than real time.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use futures::{FutureExt, StreamExt};
use natty_kv::{BucketConfig, EventKind, Kv};
use tokio::{sync::broadcast, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::{
    ElectionConfig, Error, ErrorKind, Term,
    error::from_kv,
    lease::{Lease, instance_id, now_ms},
    machine::{Action, Event, Holder, Input, Machine, State},
};

/// What the work function gets while this node leads.
#[derive(Debug, Clone)]
pub struct Leadership {
    /// The term: strictly increasing across leaders of this key, even across the bucket's
    /// deletion and re-creation. Use it as a *fencing token*: pass it along with every write
    /// the leader makes to another system, and have that system reject a term lower than the
    /// highest it has seen ([`Term`] says how to compare). Then a leader that was paused past
    /// its lease (GC, SIGSTOP, VM migration) cannot overwrite its successor's work.
    pub term: Term,
    /// Fires the moment leadership is lost (a renew conflict, the renew deadline passing, the
    /// key deleted) or the election is cancelled. Work must stop when it fires.
    pub lost: CancellationToken,
    /// This node's name.
    pub node: String,
    shared: Arc<Shared>,
}

impl Leadership {
    /// Whether this term's lease is still valid *now*, by the local monotonic clock. Check it
    /// right before each side effect: after a process pause (GC, SIGSTOP) the work can wake up
    /// before the driver has had a chance to fire `lost`; this check cannot be late.
    pub fn is_valid(&self) -> bool {
        !self.lost.is_cancelled()
            && self
                .shared
                .leading
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_some_and(|l| l.term == self.term && Instant::now().into_std() < l.deadline)
    }
}

/// The current leader, as stored in the lease key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The leader's node name.
    pub node: String,
    /// Its term.
    pub term: Term,
    /// When its term began (its clock).
    pub since: SystemTime,
}

/// Election events for subscribers: `Elected`, `Lost` (with a reason), `Following`.
pub type ElectionEvent = Event;

#[derive(Debug, Clone, Copy)]
struct Leading {
    term: Term,
    deadline: std::time::Instant,
}

#[derive(Debug)]
pub(crate) struct Shared {
    leading: Mutex<Option<Leading>>,
    /// Set while a `run` of this `Election` (or a clone) is in progress.
    running: std::sync::atomic::AtomicBool,
    events: broadcast::Sender<ElectionEvent>,
}

/// A leader election on one KV key. Cheap to clone (clones share state).
///
/// ```no_run
/// # async fn example(client: natty_core::Client) -> Result<(), natty_election::Error> {
/// use natty_election::{Election, ElectionConfig};
/// use tokio_util::sync::CancellationToken;
///
/// let election = Election::new(
///     natty_kv::Kv::new(client),
///     ElectionConfig::new("elections", "report-job", "node-1"),
/// )?;
/// let cancel = CancellationToken::new();
/// election
///     .run(cancel.clone(), |leadership| async move {
///         // Runs only while this node leads; stop when `lost` fires.
///         leadership.lost.cancelled().await;
///     })
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Election {
    kv: Kv,
    config: ElectionConfig,
    instance: u64,
    shared: Arc<Shared>,
}

/// The leader's work task. Dropping it (the `run` future was dropped: `select!`, `timeout`,
/// an aborted task) fires `lost` and aborts the task at once: work never outlives its `run`.
struct Job {
    term: Term,
    lost: CancellationToken,
    handle: JoinHandle<()>,
    shared: Arc<Shared>,
}

impl Job {
    /// Fires `lost`, after the shared state says "not leader": whoever reacts to `lost` and
    /// asks `is_leader()` gets `false` (one source of truth).
    fn fire_lost(&self) {
        {
            let mut leading = self
                .shared
                .leading
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if leading.is_some_and(|l| l.term == self.term) {
                *leading = None;
            }
        }
        self.lost.cancel();
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.fire_lost();
        self.handle.abort();
    }
}

/// Marks the election as running; cleared when `run` ends or its future is dropped.
struct Running<'a>(&'a Shared);

impl<'a> Running<'a> {
    fn claim(shared: &'a Shared) -> Option<Self> {
        use std::sync::atomic::Ordering;
        shared
            .running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            .then_some(Self(shared))
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0
            .running
            .store(false, std::sync::atomic::Ordering::Release);
    }
}

/// Clears the shared "leading" state when `run` ends or its future is dropped, so
/// `is_leader()` reads false from that moment.
struct NotLeadingOnDrop<'a>(&'a Shared);

impl Drop for NotLeadingOnDrop<'_> {
    fn drop(&mut self) {
        self.0.set_leading(None);
    }
}

impl Shared {
    fn set_leading(&self, leading: Option<Leading>) {
        *self
            .leading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = leading;
    }
}

type Op = Pin<Box<dyn Future<Output = Input> + Send>>;

impl Election {
    /// An election for `config` using `kv`'s connection. Checks the configuration first
    /// (`InvalidConfig` / `InvalidName`, nothing sent).
    pub fn new(kv: Kv, config: ElectionConfig) -> Result<Self, Error> {
        config.validate()?;
        let (events, _) = broadcast::channel(64);
        Ok(Self {
            kv,
            config,
            instance: instance_id(),
            shared: Arc::new(Shared {
                leading: Mutex::new(None),
                running: std::sync::atomic::AtomicBool::new(false),
                events,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ElectionConfig {
        &self.config
    }

    /// Whether this node leads now (by its own lease deadline; Go `HaveLeader`).
    pub fn is_leader(&self) -> bool {
        self.current_term().is_some()
    }

    /// This node's term while it leads (by its own lease deadline), else `None`.
    pub fn current_term(&self) -> Option<Term> {
        self.shared
            .leading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .filter(|l| Instant::now().into_std() < l.deadline)
            .map(|l| l.term)
    }

    /// The current leader as stored in the lease key, if any (Go `GetLeader`).
    pub async fn leader(&self) -> Result<Option<LeaderInfo>, Error> {
        let entry = self
            .kv
            .get(&self.config.bucket, &self.config.key)
            .await
            .map_err(from_kv)?;
        Ok(entry.and_then(|e| {
            let lease = Lease::decode(&e.value)?;
            Some(LeaderInfo {
                node: lease.node.clone(),
                term: lease.term_at(e.revision),
                since: lease.since(),
            })
        }))
    }

    /// Election events from now on. A slow subscriber misses events (`Lagged`) rather than
    /// slowing the election.
    pub fn subscribe(&self) -> broadcast::Receiver<ElectionEvent> {
        self.shared.events.subscribe()
    }

    /// Takes part in the election until `cancel` fires. Each time this node becomes leader,
    /// `work` is called with a [`Leadership`] and its future is spawned. If that future
    /// panics or returns while this node leads, the node resigns so that another can lead
    /// (an [`ElectionEvent::Lost`] with reason `WorkPanicked` / `WorkEnded`), then takes part
    /// again a TTL later (work that keeps failing never makes the election spin). The moment leadership ends, the work's `lost` token fires; work that ignores it
    /// is aborted half the safety margin later (in any case `margin / 2` before the lease
    /// could expire). On cancel, a leader stops its work and then resigns (deletes its key,
    /// conditioned on its revision) so a follower takes over at once. `run` returns within
    /// `ttl` of `cancel` (plus the time the work takes to stop, at most half the margin) even
    /// when the server never answers: past that the key expires on the server by itself.
    ///
    /// Returns an error only for a configuration the election cannot run with (a bucket whose
    /// TTL does not fit, bad names) and `AlreadyRunning` when this `Election` or a clone of
    /// it is already running (clones are one candidate: two runs would both lead); an unreachable or busy server is waited out, and server
    /// trouble later means losing or not gaining leadership, never an error.
    ///
    /// # Dropping instead of cancelling
    ///
    /// Dropping this future (`select!`, `tokio::time::timeout`, aborting the task that polls
    /// it) fires `lost` and aborts the work at once, and [`is_leader`](Self::is_leader) reads
    /// `false` from that moment. But a drop cannot await a request, so it cannot resign: the
    /// key stays until its TTL runs out and followers take over only then (up to `ttl` later).
    /// To hand over fast, fire `cancel` and await `run`.
    pub async fn run<F, Fut>(&self, cancel: CancellationToken, mut work: F) -> Result<(), Error>
    where
        F: FnMut(Leadership) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let span = info_span!(
            "natty.election",
            bucket = %self.config.bucket,
            key = %self.config.key,
            node = %self.config.node_name
        );
        let _running = Running::claim(&self.shared).ok_or_else(|| {
            Error::new(
                ErrorKind::AlreadyRunning,
                format!(
                    "electing on key {:?} in bucket {:?}: this election (or a clone of it) is \
                     already running; clones share one candidacy, so run it once (use another \
                     `Election` for a second candidate)",
                    self.config.key, self.config.bucket
                ),
            )
        })?;
        self.drive(cancel, &mut work).instrument(span).await
    }

    /// The Go `AsLeader` form: while this node leads, call `f(term)` now and then every
    /// `interval`; a call in progress is dropped the moment leadership is lost. A call that
    /// panics is logged and the next one comes on schedule, as in Go.
    pub async fn run_every<F, Fut>(
        &self,
        cancel: CancellationToken,
        interval: Duration,
        f: F,
    ) -> Result<(), Error>
    where
        F: FnMut(Term) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        self.run(cancel, move |lead: Leadership| {
            let mut f = f.clone();
            async move {
                loop {
                    if !lead.is_valid() {
                        return;
                    }
                    let call = std::panic::AssertUnwindSafe(f(lead.term)).catch_unwind();
                    tokio::select! {
                        () = lead.lost.cancelled() => return,
                        result = call => if result.is_err() {
                            error!(term = %lead.term, "run_every: a call panicked; calling again on schedule");
                        }
                    }
                    tokio::select! {
                        () = lead.lost.cancelled() => return,
                        () = tokio::time::sleep(interval) => {}
                    }
                }
            }
        })
        .await
    }

    async fn drive<F, Fut>(&self, cancel: CancellationToken, work: &mut F) -> Result<(), Error>
    where
        F: FnMut(Leadership) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some((kv, per_key_ttl, created, watch)) = self.set_up(&cancel).await? else {
            return Ok(()); // cancelled before the election could start
        };
        let _not_leading = NotLeadingOnDrop(&self.shared);
        let mut watch = Some(watch);
        let now = Instant::now().into_std();
        let mut machine = if created {
            // We created the bucket: if it was deleted under a leader elsewhere, that leader
            // may work until a TTL from now.
            Machine::contesting_at(self.config.machine(), now, now + self.config.ttl)
        } else {
            Machine::new(self.config.machine(), now)
        };
        let mut op: Option<Op> = None;
        let mut job: Option<Job> = None;
        let mut term_since_ms = now_ms();
        // Set when the bucket was re-created in a way we must not lead on: run ends with it.
        let refused: Arc<Mutex<Option<Error>>> = Arc::default();
        let mut refusal: Option<Error> = None;
        // The watch, re-created (after a pause) when it ends, e.g. with a deleted bucket.
        type Rewatch = Pin<Box<dyn Future<Output = Option<natty_kv::Watch>> + Send>>;
        let mut rewatch: Option<Rewatch> = None;
        // The epoch of the bucket as we know it (see `Term`), refreshed when re-created.
        let known_epoch = Arc::new(std::sync::atomic::AtomicU64::new(
            bucket_epoch(&kv, &self.config.bucket)
                .await
                .ok()
                .flatten()
                .unwrap_or(0),
        ));
        let mut cancelled = false;
        loop {
            while let Some(action) = machine.poll_action() {
                match action {
                    Action::StartWork { term } => {
                        info!(%term, "elected: starting work");
                        term_since_ms = now_ms();
                        // Published before the work starts, so `is_valid` is true from its
                        // first poll.
                        self.publish_state(&machine);
                        let lost = CancellationToken::new();
                        let handle = tokio::spawn(work(Leadership {
                            term,
                            lost: lost.clone(),
                            node: self.config.node_name.clone(),
                            shared: self.shared.clone(),
                        }));
                        job = Some(Job {
                            term,
                            lost,
                            handle,
                            shared: self.shared.clone(),
                        });
                    }
                    Action::StopWork { term, abort_at } => {
                        if let Some(job) = job.take() {
                            debug_assert_eq!(job.term, term);
                            stop_work(job, Instant::from_std(abort_at)).await;
                        }
                    }
                    kv_action => {
                        op = Some(self.execute(
                            &kv,
                            kv_action,
                            machine.term().map(|t| (t, term_since_ms)),
                            per_key_ttl,
                            &known_epoch,
                            &refused,
                        ));
                    }
                }
            }
            while let Some(event) = machine.poll_event() {
                debug!(?event, "election event");
                let _ = self.shared.events.send(event);
            }
            self.publish_state(&machine);
            if machine.is_stopped() {
                break;
            }
            let timeout = machine.poll_timeout();
            tokio::select! {
                biased;
                () = cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                    machine.handle(Instant::now().into_std(), Input::Shutdown);
                }
                input = async { op.as_mut().expect("guarded").await }, if op.is_some() => {
                    op = None;
                    machine.handle(Instant::now().into_std(), input);
                    let taken = refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
                    if let Some(e) = taken {
                        refusal = Some(e);
                        cancelled = true;
                        machine.handle(Instant::now().into_std(), Input::Shutdown);
                    }
                }
                new_watch = async { rewatch.as_mut().expect("guarded").await }, if rewatch.is_some() => {
                    rewatch = None;
                    match new_watch {
                        Some(w) => {
                            info!("lease watch re-established");
                            watch = Some(w);
                        }
                        None => rewatch = Some(self.rewatch(&kv, Duration::from_secs(1))),
                    }
                }
                event = async { watch.as_mut().expect("guarded").next().await }, if watch.is_some() => {
                    match event {
                        Some(Ok(event)) => {
                            let input = match event.kind {
                                EventKind::Put => Lease::decode(&event.value).map(|lease| {
                                    // A leader elected in a newer bucket epoch vetted that
                                    // epoch (it waited out any older leader): adopt it, so
                                    // our next create does not mistake it for a re-creation.
                                    known_epoch.fetch_max(lease.epoch, std::sync::atomic::Ordering::Relaxed);
                                    Input::KeyWritten {
                                        holder: Holder {
                                            term: lease.term_at(event.revision),
                                            node: lease.node,
                                        },
                                    }
                                }),
                                _ => Some(Input::KeyGone { revision: event.revision }),
                            };
                            if let Some(input) = input {
                                machine.handle(Instant::now().into_std(), input);
                            }
                        }
                        Some(Err(e)) => warn!(error = %e, "lease watch error; polling meanwhile"),
                        None => {
                            warn!("lease watch ended (bucket deleted?); polling until it is back");
                            watch = None;
                            rewatch = Some(self.rewatch(&kv, self.config.machine().poll_interval));
                        }
                    }
                }
                ended = async { (&mut job.as_mut().expect("guarded").handle).await }, if job.is_some() => {
                    // The work ended by itself while we lead: resign so another node can.
                    let term = job.take().map(|j| j.term).unwrap_or_default();
                    let panicked = matches!(&ended, Err(e) if e.is_panic());
                    if panicked {
                        error!(%term, "leader work panicked: resigning");
                    } else {
                        warn!(%term, "leader work returned while leading: resigning");
                    }
                    machine.handle(Instant::now().into_std(), Input::WorkEnded { term, panicked });
                }
                () = sleep_until(timeout), if timeout.is_some() => {
                    machine.handle_timeout(Instant::now().into_std());
                }
            }
        }
        if let Some(job) = job.take() {
            // Only when the machine stopped without stopping the work first (it never does).
            stop_work(job, Instant::now()).await;
        }
        self.publish_state(&machine);
        info!("election stopped");
        refusal.map_or(Ok(()), Err)
    }

    /// A new watch on the key after `pause`; `None` if it could not be made (yet).
    fn rewatch(
        &self,
        kv: &Kv,
        pause: Duration,
    ) -> Pin<Box<dyn Future<Output = Option<natty_kv::Watch>> + Send>> {
        let (kv, bucket, key) = (
            kv.clone(),
            self.config.bucket.clone(),
            self.config.key.clone(),
        );
        Box::pin(async move {
            tokio::time::sleep(pause).await;
            match kv.watch_key(&bucket, &key).await {
                Ok(w) => Some(w),
                Err(e) => {
                    debug!(error = %e, "re-creating the lease watch");
                    None
                }
            }
        })
    }

    /// Prepares the bucket and the watch, retrying while the server is unreachable or busy
    /// (a candidate started during an outage joins when it ends); a configuration problem
    /// (TTL mismatch, bad names) is returned at once. `None` if cancelled first.
    async fn set_up(
        &self,
        cancel: &CancellationToken,
    ) -> Result<Option<(Kv, bool, bool, natty_kv::Watch)>, Error> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt = async {
                let (kv, per_key_ttl, created) = self.prepare_bucket().await?;
                let watch = kv
                    .watch_key(&self.config.bucket, &self.config.key)
                    .await
                    .map_err(from_kv)?;
                Ok::<_, Error>((kv, per_key_ttl, created, watch))
            };
            let result = tokio::select! {
                () = cancel.cancelled() => return Ok(None),
                result = attempt => result,
            };
            match result {
                Ok(ready) => return Ok(Some(ready)),
                Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::Other) => {
                    warn!(error = %e, retry_in = ?backoff, "election set-up failed; retrying");
                    tokio::select! {
                        () = cancel.cancelled() => return Ok(None),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn publish_state(&self, machine: &Machine) {
        let leading = match machine.state() {
            State::Leader { term, deadline, .. } => Some(Leading {
                term: *term,
                deadline: *deadline,
            }),
            _ => None,
        };
        self.shared.set_leading(leading);
    }

    /// Makes sure the bucket exists and suits the election; returns a `Kv` that re-creates
    /// the bucket with that configuration if it vanishes, and whether per-key TTL is used
    /// (server 2.11+; else the bucket's own TTL is the lease TTL), and whether we created it.
    async fn prepare_bucket(&self) -> Result<(Kv, bool, bool), Error> {
        let c = &self.config;
        let per_key_ttl = self
            .kv
            .client()
            .server_version()
            .is_some_and(|v| v.at_least(2, 11));
        let wanted = BucketConfig::new(&c.bucket)
            .replicas(c.replicas)
            .description(c.description.clone())
            .per_key_ttl(per_key_ttl);
        let wanted = if per_key_ttl {
            wanted
        } else {
            wanted.ttl(c.ttl)
        };
        let mut created = false;
        let status = match self.kv.status(&c.bucket).await {
            Ok(status) => status,
            Err(e) if e.kind() == natty_kv::ErrorKind::BucketNotFound => {
                match self.kv.create_bucket(wanted.clone()).await {
                    Ok(()) => created = true,
                    // Another candidate may have created it first; the status below tells.
                    Err(e) => debug!(error = %e, "creating the election bucket"),
                }
                self.kv.status(&c.bucket).await.map_err(from_kv)?
            }
            Err(e) => return Err(from_kv(e)),
        };
        let per_key_ttl = check_fits(c, per_key_ttl, &status)?;
        debug!(per_key_ttl, "election bucket ready");
        Ok((
            Kv::with_defaults(self.kv.client().clone(), wanted),
            per_key_ttl,
            created,
        ))
    }

    /// The KV request for an action, as a future that yields the machine's input. `held` is
    /// the term we lead in and since when (ms since the Unix epoch), for a renew.
    fn execute(
        &self,
        kv: &Kv,
        action: Action,
        held: Option<(Term, u64)>,
        per_key_ttl: bool,
        known_epoch: &Arc<std::sync::atomic::AtomicU64>,
        refused: &Arc<Mutex<Option<Error>>>,
    ) -> Op {
        use std::sync::atomic::Ordering;
        let kv = kv.clone();
        let known_epoch = known_epoch.clone();
        let refused = refused.clone();
        let c = self.config.clone();
        let instance = self.instance;
        let machine = c.machine();
        // A renew must not wait past the next renew; other requests get the client's timeout.
        let limit = match action {
            Action::Renew { .. } => machine.renew_interval,
            _ => kv.client().request_timeout(),
        };
        Box::pin(async move {
            let lease = |term: Option<u64>, epoch: u64, since_ms: u64| Lease {
                node: c.node_name.clone(),
                instance,
                term,
                epoch,
                since_ms,
            };
            let request = async {
                match action {
                    Action::Create { make_bucket } => {
                        if make_bucket {
                            // A TTL after the bucket was found missing: nobody can still
                            // work under its old lease, so re-create it and take its epoch.
                            match kv.create_bucket(kv.defaults().with_name(&c.bucket)).await {
                                Err(e) if e.kind() != natty_kv::ErrorKind::BucketExists => {
                                    return Err(e);
                                }
                                Ok(()) => info!("re-created the election bucket"),
                                Err(_) => {}
                            }
                            let Some(epoch) = bucket_epoch(&kv, &c.bucket).await? else {
                                return Ok(Input::BucketGone);
                            };
                            // Someone may have re-created it with a shorter TTL or without
                            // per-key TTL: never lead with a lease shorter than we believe.
                            let status = kv.status(&c.bucket).await?;
                            let fits = check_fits(&c, per_key_ttl, &status).and_then(|pk| {
                                if pk == per_key_ttl {
                                    Ok(())
                                } else {
                                    Err(Error::new(
                                        ErrorKind::BucketTtlMismatch,
                                        format!(
                                            "electing on key {:?} in bucket {:?}: the bucket was \
                                             re-created without per-key TTL",
                                            c.key, c.bucket
                                        ),
                                    ))
                                }
                            });
                            if let Err(e) = fits {
                                error!(error = %e, "refusing to lead on the re-created bucket");
                                *refused
                                    .lock()
                                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
                                return Ok(Input::Failed);
                            }
                            known_epoch.store(epoch, Ordering::Relaxed);
                        }
                        let epoch = known_epoch.load(Ordering::Relaxed);
                        let value = lease(None, epoch, now_ms()).encode();
                        // If the bucket vanished, this create re-creates it (natty-kv's
                        // auto-create); the epoch check below then says so, and we do not
                        // lead: a follower must not lead while the old leader may still work.
                        let created = if per_key_ttl {
                            kv.create_with_ttl(&c.bucket, &c.key, value, c.ttl).await
                        } else {
                            kv.create(&c.bucket, &c.key, value).await
                        }?;
                        if !same_epoch(&kv, &c.bucket, epoch).await? {
                            return Ok(Input::BucketGone);
                        }
                        Ok(Input::Created {
                            revision: created,
                            epoch,
                        })
                    }
                    Action::Renew { revision } => {
                        let (term, since_ms) = held.unwrap_or_default();
                        let value = lease(Some(term.revision), term.epoch, since_ms).encode();
                        let updated = if per_key_ttl {
                            kv.update_with_ttl(&c.bucket, &c.key, value, revision, c.ttl)
                                .await
                        } else {
                            kv.update(&c.bucket, &c.key, value, revision).await
                        }?;
                        Ok(Input::Updated {
                            revision: updated,
                            epoch: term.epoch,
                        })
                    }
                    Action::Reclaim { revision } => {
                        let epoch = known_epoch.load(Ordering::Relaxed);
                        let value = lease(None, epoch, now_ms()).encode();
                        let updated = if per_key_ttl {
                            kv.update_with_ttl(&c.bucket, &c.key, value, revision, c.ttl)
                                .await
                        } else {
                            kv.update(&c.bucket, &c.key, value, revision).await
                        }?;
                        if !same_epoch(&kv, &c.bucket, epoch).await? {
                            return Ok(Input::BucketGone);
                        }
                        Ok(Input::Updated {
                            revision: updated,
                            epoch,
                        })
                    }
                    Action::Resign { revision } => {
                        let mut revision = revision;
                        // If a renew of ours landed unseen, the key is ours at a later
                        // revision: resign that one (twice at most).
                        for _ in 0..2 {
                            match kv.delete_if(&c.bucket, &c.key, revision).await {
                                Err(e) if e.kind() == natty_kv::ErrorKind::RevisionMismatch => {
                                    match read_holder(&kv, &c, instance).await {
                                        (_, Some(ours)) => revision = ours,
                                        _ => break,
                                    }
                                }
                                other => return other.map(|()| Input::Resigned),
                            }
                        }
                        Ok(Input::Resigned)
                    }
                    Action::StartWork { .. } | Action::StopWork { .. } => {
                        unreachable!("work actions are handled by the driver")
                    }
                }
            };
            match tokio::time::timeout(limit, request).await {
                Ok(Ok(input)) => input,
                // A write answered "no responders" (503) also reads as `BucketNotFound`, yet a
                // replicated stream electing its leader answers that for seconds: only the
                // stream API saying "stream not found" means the bucket is gone.
                Ok(Err(e)) if e.kind() == natty_kv::ErrorKind::BucketNotFound => {
                    match bucket_epoch(&kv, &c.bucket).await {
                        Ok(None) => {
                            warn!(error = %e, ?action, "the election bucket is gone");
                            Input::BucketGone
                        }
                        _ => {
                            warn!(error = %e, ?action, "election request failed (the bucket exists)");
                            Input::Failed
                        }
                    }
                }
                Ok(Err(e))
                    if matches!(
                        e.kind(),
                        natty_kv::ErrorKind::RevisionMismatch | natty_kv::ErrorKind::KeyExists
                    ) =>
                {
                    let (holder, ours) = read_holder(&kv, &c, instance).await;
                    if let Some(h) = &holder {
                        // (see the watch: a holder's newer epoch was vetted by its election)
                        known_epoch.fetch_max(h.term.epoch, Ordering::Relaxed);
                    }
                    Input::Conflict { holder, ours }
                }
                Ok(Err(e)) => {
                    warn!(error = %e, ?action, "election request failed");
                    Input::Failed
                }
                Err(_) => {
                    warn!(?action, ?limit, "election request timed out");
                    Input::Failed
                }
            }
        })
    }
}

/// Whether the bucket's configuration gives the lease at least the TTL the election believes
/// in; returns whether per-key TTL is in use. `BucketTtlMismatch` naming both values if not.
fn check_fits(
    c: &ElectionConfig,
    per_key_ttl_supported: bool,
    status: &natty_kv::BucketStatus,
) -> Result<bool, Error> {
    let per_key_ttl = per_key_ttl_supported && status.per_key_ttl;
    let fits = if per_key_ttl {
        status.ttl.is_none_or(|t| t >= c.ttl)
    } else {
        status.ttl == Some(c.ttl)
    };
    if fits {
        return Ok(per_key_ttl);
    }
    Err(Error::new(
        ErrorKind::BucketTtlMismatch,
        format!(
            "electing on key {:?} in bucket {:?}: bucket exists with ttl {}, election asked for {:?}{}",
            c.key,
            c.bucket,
            status
                .ttl
                .map_or_else(|| "none".to_owned(), |t| format!("{t:?}")),
            c.ttl,
            if per_key_ttl {
                ""
            } else {
                " (and the bucket has no per-key TTL)"
            }
        ),
    ))
}

/// The bucket's epoch: its stream's creation time (ns since the Unix epoch, the server's
/// clock); `None` when the bucket does not exist.
async fn bucket_epoch(kv: &Kv, bucket: &str) -> Result<Option<u64>, natty_kv::Error> {
    match kv
        .client()
        .jetstream()
        .get_stream(format!("KV_{bucket}"))
        .await
    {
        Ok(stream) => Ok(Some(
            u64::try_from(stream.cached_info().created.unix_timestamp_nanos()).unwrap_or(0),
        )),
        Err(e) if natty_core::error::jetstream_code(&e) == Some(STREAM_NOT_FOUND) => Ok(None),
        Err(e) => Err(natty_kv::Error::with_source(
            natty_kv::ErrorKind::Other,
            format!("reading the stream of bucket {bucket:?}"),
            e,
        )),
    }
}

/// Whether the bucket is still the one created at `epoch`. A write to a bucket deleted
/// behind our back may have re-created it (natty-kv's auto-create), or someone re-created
/// it: then the new revision is not a term of `epoch`, and the election treats the bucket
/// as gone (nobody leads for a TTL).
async fn same_epoch(kv: &Kv, bucket: &str, epoch: u64) -> Result<bool, natty_kv::Error> {
    let now = bucket_epoch(kv, bucket).await?;
    if now != Some(epoch) {
        warn!(
            bucket,
            epoch,
            now = ?now,
            "the election bucket was deleted or re-created behind our back"
        );
    }
    Ok(now == Some(epoch))
}

/// JetStream's "stream not found".
const STREAM_NOT_FOUND: u64 = 10059;

/// Who holds the key now, and its revision if it is this instance's own write.
async fn read_holder(kv: &Kv, c: &ElectionConfig, instance: u64) -> (Option<Holder>, Option<u64>) {
    match kv.get(&c.bucket, &c.key).await {
        Ok(Some(entry)) => match Lease::decode(&entry.value) {
            Some(lease) => {
                let ours = (lease.instance == instance).then_some(entry.revision);
                let holder = Holder {
                    term: lease.term_at(entry.revision),
                    node: lease.node,
                };
                (Some(holder), ours)
            }
            None => (None, None),
        },
        _ => (None, None),
    }
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

/// Fires the work's `lost` and waits for it to end until `abort_at`; then aborts it.
async fn stop_work(mut job: Job, abort_at: Instant) {
    info!(term = %job.term, "stopping work");
    job.fire_lost();
    let term = job.term;
    match tokio::time::timeout_at(abort_at, &mut job.handle).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.is_panic() => error!(%term, "leader work panicked"),
        Ok(Err(_)) => {}
        Err(_) => {
            error!(
                %term,
                "leader work ignored `lost` until half the margin before the lease could expire: aborting it"
            );
            job.handle.abort();
        }
    }
}
