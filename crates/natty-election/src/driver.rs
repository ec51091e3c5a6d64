//! [`Election`]: the tokio driver that runs the [`machine`](crate::machine) against natty-kv.
//!
//! It loops like quinn's `drive_timer`: `select!` over cancellation, the machine's timeout,
//! the one KV request in flight, the work task and the watch on the lease key, feeding each
//! result back. The KV side (bucket, lease requests) is in `store.rs`.
//! Time is `tokio::time::Instant`, so tests with paused time run faster than real time.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use futures::{FutureExt, StreamExt};
use natty_core::retry::RetryPolicy;
use natty_kv::Kv;
use tokio::{sync::broadcast, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::{
    ElectionConfig, Error, ErrorKind, Term,
    clock::Clock,
    fence,
    lease::{instance_id, now_ms},
    machine::{self, Event, FenceQueue, Machine, Request, State, Verdict, Work},
    store::{self, FenceFlight, LeaseStore, Rewatch, Watched},
};

/// Pauses between attempts to set the election up during an outage: from about 100 ms,
/// doubling up to 2 s, with jitter (natty's one retry policy).
const SET_UP_RETRY: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(2));

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
    /// Where fenced writes go: the driver of the run that elected us (`fence.rs`).
    pub(crate) fences: fence::Sender,
}

impl Leadership {
    /// Whether this term's lease is still valid *now*, by the local clock (one that counts
    /// through a host suspend on Linux: `CLOCK_BOOTTIME`). Check it
    /// right before each side effect: after a process pause (GC, SIGSTOP) the work can wake up
    /// before the driver has had a chance to fire `lost`; this check cannot be late.
    pub fn is_valid(&self) -> bool {
        !self.lost.is_cancelled()
            && self
                .shared
                .leading
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_some_and(|l| l.term == self.term && l.clock.now() < l.deadline)
    }
}

/// The current leader, as stored in the lease key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
    deadline: machine::Instant,
    /// The clock `deadline` is read on (the run's).
    clock: Clock,
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
struct NotLeadingOnDrop<'a>(&'a Shared, &'a ElectionConfig);

impl Drop for NotLeadingOnDrop<'_> {
    fn drop(&mut self) {
        self.0.set_leading(None);
        crate::obs::stopped(self.1);
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
            .filter(|l| l.clock.now() < l.deadline)
            .map(|l| l.term)
    }

    /// The key under which the leader's fenced key `key` ([`Leadership::put`]) is stored in
    /// the election's bucket: `<election key>.fenced.<key>`. Read it with any KV reader, e.g.
    /// `Kv::get(bucket, &election.fenced_key(key))`.
    pub fn fenced_key(&self, key: &str) -> String {
        fence::fenced_key(&self.config.key, key)
    }

    /// The current leader as stored in the lease key, if any (Go `GetLeader`).
    pub async fn leader(&self) -> Result<Option<LeaderInfo>, Error> {
        store::read_leader(&self.kv, &self.config).await
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
        let Some((store, wait, watch)) = self.set_up(&cancel).await? else {
            return Ok(()); // cancelled before the election could start
        };
        let _not_leading = NotLeadingOnDrop(&self.shared, &self.config);
        let mut watch = Some(watch);
        // The machine's time: counts through a host suspend (see `clock.rs`).
        let clock = Clock::new();
        let now = clock.now();
        let mut machine = if wait.is_zero() {
            Machine::new(self.config.machine(), now)
        } else {
            // A bucket younger than a TTL (we created it, or someone re-created it just now):
            // if it was deleted under a leader elsewhere, that leader may work until a TTL
            // after the re-creation.
            info!(
                ?wait,
                "the election bucket is new: contesting once it is a TTL old"
            );
            Machine::contesting_at(self.config.machine(), now, now + wait)
        };
        // The lease request in flight; a fenced write's also says what to tell its caller.
        let mut in_flight: Option<FenceFlight> = None;
        let mut job: Option<Job> = None;
        // Fenced writes from the work, queued until the machine sends them, and the one sent.
        let (fence_tx, mut fence_rx): (fence::Sender, fence::Receiver) =
            tokio::sync::mpsc::unbounded_channel();
        let mut fences = FenceQueue::<fence::Job>::new(usize::MAX);
        let mut term_since_ms = now_ms();
        // Set when the bucket was re-created in a way we must not lead on: run ends with it.
        let mut refusal: Option<Error> = None;
        // The watch, re-created (after a pause) when it ends, e.g. with a deleted bucket.
        let mut rewatch: Option<Rewatch> = None;
        // Whether a re-created bucket the watch reported was vetted by a leader already.
        let mut recheck: Option<std::pin::Pin<Box<dyn Future<Output = Option<bool>> + Send>>> =
            None;
        // Its pauses: about one poll interval first, then up to 1 s (or the poll interval, if
        // longer), jittered so that the candidates of a fleet do not re-watch in step.
        let poll = self.config.machine().poll_interval;
        let mut rewatch_backoff =
            RetryPolicy::new(poll, poll.max(Duration::from_secs(1))).backoff();
        let mut cancelled = false;
        loop {
            // Work first: it stops before the key is given up.
            while let Some(work_control) = machine.poll_work() {
                match work_control {
                    Work::Start { term } => {
                        info!(%term, "elected: starting work");
                        term_since_ms = now_ms();
                        // Published before the work starts, so `is_valid` is true from its
                        // first poll.
                        self.publish_state(&machine, clock);
                        let lost = CancellationToken::new();
                        let handle = tokio::spawn(work(Leadership {
                            term,
                            lost: lost.clone(),
                            node: self.config.node_name.clone(),
                            shared: self.shared.clone(),
                            fences: fence_tx.clone(),
                        }));
                        job = Some(Job {
                            term,
                            lost,
                            handle,
                            shared: self.shared.clone(),
                        });
                    }
                    Work::Stop { term, abort_at } => {
                        // The work may be waiting on a fenced write: answer it before waiting
                        // for the work to end.
                        let (in_flight, queued) = fences.end();
                        if let Some(f) = in_flight {
                            f.answer(Err(fence::unknown(
                                term,
                                "leadership ended while it was in flight",
                            )));
                        }
                        for f in queued {
                            f.deposed("leadership was lost");
                        }
                        if let Some(job) = job.take() {
                            debug_assert_eq!(job.term, term);
                            stop_work(job, clock.tokio_instant(abort_at), &mut fence_rx).await;
                        }
                    }
                }
            }
            // Fenced writes of a term we no longer lead in are refused here, unsent.
            for f in fences.take_stale(machine.term()) {
                f.deposed("leadership was lost");
            }
            if let Some(request) = machine.poll_request() {
                let held = machine.term().map(|t| (t, term_since_ms));
                in_flight = Some(match request {
                    Request::Fence { revision } => match fences.begin() {
                        Some(f) => store.execute_fence(revision, held, f.ops.clone()),
                        // (none waits: its caller stopped waiting; renew)
                        None => Box::pin(
                            store
                                .execute(Request::Renew { revision }, held)
                                .map(|r| (r, None)),
                        ),
                    },
                    request => Box::pin(store.execute(request, held).map(|r| (r, None))),
                });
            }
            while let Some(event) = machine.poll_event() {
                debug!(?event, "election event");
                crate::obs::event(&self.config, &event);
                let _ = self.shared.events.send(event);
            }
            self.publish_state(&machine, clock);
            if machine.is_stopped() {
                break;
            }
            // While work runs, wake at least every half margin: tokio's timers stand still
            // during a host suspend, and the deadline must be noticed soon after a resume.
            // (Not more often than every 10 ms, even with a zero margin: never a busy loop.)
            let timeout = machine.poll_timeout().map(|t| clock.tokio_instant(t));
            let suspend_check = (self.config.machine().margin / 2).max(Duration::from_millis(10));
            let timeout = match (timeout, &job) {
                (Some(t), Some(_)) => Some(t.min(Instant::now() + suspend_check)),
                (t, _) => t,
            };
            tokio::select! {
                biased;
                () = cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                    machine.on_shutdown(clock.now());
                }
                (reply, why) = next(&mut in_flight) => {
                    in_flight = None;
                    if let Some((f, verdict)) = fences.settle(&reply) {
                        settle(f, verdict, why);
                    }
                    machine.on_reply(clock.now(), reply);
                    if fences.wants_fence() {
                        machine.on_fence_wanted(clock.now());
                    }
                    if let Some(e) = store.take_refusal() {
                        refusal = Some(e);
                        cancelled = true;
                        machine.on_shutdown(clock.now());
                    }
                }
                new = next(&mut recheck) => {
                    recheck = None;
                    // (unreadable: the bucket is gone again, and the watch will say so)
                    if new == Some(true) {
                        warn!("the election bucket was re-created: nobody leads in it for a TTL");
                        machine.on_bucket_recreated(clock.now());
                    }
                }
                new_watch = next(&mut rewatch) => {
                    rewatch = None;
                    match new_watch {
                        Some((w, recreated)) => {
                            info!(recreated, "lease watch re-established");
                            watch = Some(w);
                            rewatch_backoff.reset();
                            if recreated {
                                warn!("the election bucket was re-created: nobody leads in it for a TTL");
                                machine.on_bucket_recreated(clock.now());
                            }
                        }
                        None => rewatch = Some(store.rewatch(rewatch_backoff.next_delay())),
                    }
                }
                event = next_event(&mut watch) => {
                    let now = clock.now();
                    match event {
                        Some(Ok(event)) => match store.watched(&event) {
                            Some(Watched::Written(holder, revision)) => {
                                machine.on_key_written(now, holder, revision);
                            }
                            Some(Watched::Taken { revision }) => machine.on_key_taken(now, revision),
                            // A leader's bucket is gone: it stops at once. A follower first
                            // asks whether a leader who waited already leads in the new one.
                            Some(Watched::Recreated) if machine.is_leader(now) => {
                                warn!("the election bucket was re-created: nobody leads in it for a TTL");
                                machine.on_bucket_recreated(now);
                            }
                            Some(Watched::Recreated) => recheck = Some(store.recheck()),
                            Some(Watched::Gone { revision }) => machine.on_key_gone(now, revision),
                            None => {}
                        },
                        Some(Err(e)) => warn!(error = %e, "lease watch error; polling meanwhile"),
                        None => {
                            warn!("lease watch ended (bucket deleted?); polling until it is back");
                            watch = None;
                            rewatch = Some(store.rewatch(rewatch_backoff.next_delay()));
                        }
                    }
                }
                Some(f) = fence_rx.recv() => {
                    if Some(f.term) != machine.term() {
                        f.deposed("leadership was lost");
                    } else if let Err(e) = store.check_fence(&f.ops) {
                        f.answer(Err(e));
                    } else {
                        match fences.push(f.term, f, machine.term()) {
                            Ok(()) => machine.on_fence_wanted(clock.now()),
                            Err((f, _)) => f.deposed("leadership was lost"),
                        }
                    }
                }
                ended = job_end(&mut job) => {
                    // The work ended by itself while we lead: resign so another node can.
                    let term = job.take().map(|j| j.term).unwrap_or_default();
                    let panicked = matches!(&ended, Err(e) if e.is_panic());
                    if panicked {
                        error!(%term, "leader work panicked: resigning");
                    } else {
                        warn!(%term, "leader work returned while leading: resigning");
                    }
                    machine.on_work_ended(clock.now(), term, panicked);
                }
                () = sleep_until(timeout) => {
                    machine.on_timeout(clock.now());
                }
            }
        }
        if let Some(job) = job.take() {
            // Only when the machine stopped without stopping the work first (it never does).
            stop_work(job, Instant::now(), &mut fence_rx).await;
        }
        let (in_flight, queued) = fences.end();
        for f in in_flight.into_iter().chain(queued) {
            f.deposed("the election stopped");
        }
        self.publish_state(&machine, clock);
        info!("election stopped");
        refusal.map_or(Ok(()), Err)
    }

    /// Prepares the bucket and the watch, retrying while the server is unreachable or busy
    /// (a candidate started during an outage joins when it ends); a configuration problem
    /// (TTL mismatch, bad names) is returned at once. `None` if cancelled first.
    async fn set_up(
        &self,
        cancel: &CancellationToken,
    ) -> Result<Option<(LeaseStore, Duration, natty_kv::Watch)>, Error> {
        let mut backoff = SET_UP_RETRY.backoff();
        loop {
            let attempt = async {
                let (store, wait) =
                    LeaseStore::prepare(&self.kv, &self.config, self.instance).await?;
                let watch = store.watch().await?;
                Ok::<_, Error>((store, wait, watch))
            };
            let result = tokio::select! {
                () = cancel.cancelled() => return Ok(None),
                result = attempt => result,
            };
            match result {
                Ok(ready) => return Ok(Some(ready)),
                Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::Other) => {
                    let pause = backoff.next_delay();
                    warn!(error = %e, retry_in = ?pause, "election set-up failed; retrying");
                    tokio::select! {
                        () = cancel.cancelled() => return Ok(None),
                        () = tokio::time::sleep(pause) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn publish_state(&self, machine: &Machine, clock: Clock) {
        let leading = match machine.state() {
            State::Leader { term, deadline, .. } => Some(Leading {
                term: *term,
                deadline: *deadline,
                clock,
            }),
            _ => None,
        };
        self.shared.set_leading(leading);
    }
}

/// Tells a fenced write's caller how it went, from the verdict on its batch (`why`: the
/// error for the caller, when there is more to say).
fn settle(f: fence::Job, verdict: Verdict, why: Option<Error>) {
    match verdict {
        Verdict::Applied => f.answer(Ok(())),
        Verdict::Deposed { holder } => {
            let who = holder.as_ref().map_or_else(
                || "someone else".to_owned(),
                |h| format!("{:?} (term {})", h.node, h.term),
            );
            f.deposed(&format!(
                "the server refused it: the lease was taken by {who}"
            ));
        }
        Verdict::BucketGone => f.deposed("the server refused it: the election's bucket is gone"),
        _ => f.answer(Err(why.unwrap_or_else(|| {
            Error::new(ErrorKind::Other, "fenced write failed; nothing was applied")
        }))),
    }
}

/// The output of the future in `slot`; never ready while the slot is empty.
async fn next<F: Future + Unpin>(slot: &mut Option<F>) -> F::Output {
    match slot {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// The watch's next event; never ready without a watch.
async fn next_event(
    watch: &mut Option<natty_kv::Watch>,
) -> Option<<natty_kv::Watch as futures::Stream>::Item> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

/// How the work task ended; never ready without one.
async fn job_end(job: &mut Option<Job>) -> Result<(), tokio::task::JoinError> {
    match job {
        Some(j) => (&mut j.handle).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Fires the work's `lost` and waits for it to end until `abort_at`; then aborts it. Fenced
/// writes the work sends meanwhile are refused `Deposed` (the work may wait on one).
async fn stop_work(mut job: Job, abort_at: Instant, fences: &mut fence::Receiver) {
    info!(term = %job.term, "stopping work");
    job.fire_lost();
    let term = job.term;
    let ended = async {
        loop {
            tokio::select! {
                ended = &mut job.handle => return ended,
                Some(f) = fences.recv() => f.deposed("leadership was lost"),
            }
        }
    };
    match tokio::time::timeout_at(abort_at, ended).await {
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
