//! The machine: [`Machine`], its inputs and outputs.

use alloc::{collections::VecDeque, format, string::String};
use core::time::Duration;

use crate::{Instant, Term};

/// The smallest safety margin accepted: the driver wakes at most every 10 ms while work runs,
/// and work that ignores `lost` is aborted half a margin before the lease can expire, so a
/// margin below twice that granularity could let work outlive the lease.
pub const MIN_MARGIN: Duration = Duration::from_millis(20);

/// Timing of an election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MachineConfig {
    /// How long the lease lives on the server without a renew.
    pub ttl: Duration,
    /// How often the leader renews (default `ttl / 3`).
    pub renew_interval: Duration,
    /// Safety margin: work stops `margin` before the lease could expire (default
    /// `max(ttl / 10, 100 ms)`).
    pub margin: Duration,
    /// How often a follower re-contests when no watch event arrives (default `ttl / 3`).
    pub poll_interval: Duration,
    /// How soon to retry after a failed request (default `min(renew_interval / 2, 250 ms)`).
    pub retry_interval: Duration,
}

impl MachineConfig {
    /// Defaults derived from `ttl`.
    pub fn new(ttl: Duration) -> Self {
        let renew_interval = ttl / 3;
        Self {
            ttl,
            renew_interval,
            margin: (ttl / 10).max(Duration::from_millis(100)),
            poll_interval: ttl / 3,
            retry_interval: (renew_interval / 2).min(Duration::from_millis(250)),
        }
    }

    /// With another renew interval.
    #[must_use]
    pub fn renew_interval(mut self, interval: Duration) -> Self {
        self.renew_interval = interval;
        self.retry_interval = (interval / 2).min(Duration::from_millis(250));
        self
    }

    /// With another safety margin.
    #[must_use]
    pub fn margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }

    /// With another follower poll interval.
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Why this timing is unsafe, if it is.
    pub fn check(&self) -> Result<(), String> {
        if self.margin < MIN_MARGIN {
            return Err(format!(
                "margin {:?} must be at least {MIN_MARGIN:?} (work that ignores `lost` is \
                 aborted half a margin before the lease can expire)",
                self.margin
            ));
        }
        if self.ttl < Duration::from_secs(1) {
            return Err(format!("ttl must be at least 1s, got {:?}", self.ttl));
        }
        if self.margin >= self.ttl {
            return Err(format!(
                "margin {:?} must be shorter than ttl {:?}",
                self.margin, self.ttl
            ));
        }
        if self.renew_interval.is_zero() || self.renew_interval >= self.ttl - self.margin {
            return Err(format!(
                "renew_interval {:?} must be greater than zero and less than ttl - margin ({:?} - {:?})",
                self.renew_interval, self.ttl, self.margin
            ));
        }
        if self.poll_interval.is_zero() || self.retry_interval.is_zero() {
            return Err("poll and retry intervals must be greater than zero".into());
        }
        Ok(())
    }
}

/// Who holds the key, as far as a follower knows.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holder {
    /// The leader's node name.
    pub node: String,
    /// Its term.
    pub term: Term,
}

impl Holder {
    /// The holder `node` in `term`.
    pub fn new(node: impl Into<String>, term: Term) -> Self {
        Self {
            node: node.into(),
            term,
        }
    }
}

/// The outcome of the [`Request`] in flight, fed back with [`Machine::on_reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
// Not `#[non_exhaustive]`: every driver must handle every variant (a new one is a
// breaking change on purpose).
pub enum Reply {
    /// The create succeeded: the key is ours at `revision` (our term).
    Created {
        /// The new key's revision.
        revision: u64,
        /// The bucket's epoch (see [`Term`]), the same before and after the create.
        epoch: u64,
    },
    /// The renew or reclaim succeeded; the key is now at `revision`.
    Updated {
        /// The key's new revision.
        revision: u64,
        /// The bucket's epoch (see [`Term`]): a reclaim's new term is (`epoch`, `revision`).
        epoch: u64,
    },
    /// The create found the key held, or the renew/reclaim found another revision.
    Conflict {
        /// The holder, if the driver could read it.
        holder: Option<Holder>,
        /// Set when the key still holds *our own* write (this instance's), at this revision:
        /// an earlier request whose reply was lost did land. Nobody else has the key.
        ours: Option<u64>,
    },
    /// The request failed without an answer (timeout, connection loss): its effect is unknown.
    Failed,
    /// The request found the bucket missing (deleted): the lease is gone with it.
    BucketGone,
    /// The resign finished (deleted, or the key was no longer ours).
    Resigned,
}

/// A lease request: a KV operation on the key. At most one is outstanding at a time; its
/// outcome must be fed back with [`Machine::on_reply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// Not `#[non_exhaustive]`: every driver must handle every variant (a new one is a
// breaking change on purpose).
pub enum Request {
    /// Create the key (only if absent).
    Create {
        /// Create the bucket first if it is missing. Unset, a missing bucket is reported as
        /// [`Reply::BucketGone`] and nothing is created: only after a full TTL without a
        /// bucket may a candidate re-create it, when no old leader can still be working.
        make_bucket: bool,
    },
    /// Re-write the key conditioned on `revision` (we lead with it).
    Renew {
        /// The revision we hold.
        revision: u64,
    },
    /// Re-write the key conditioned on `revision`, our last known revision, to lead again.
    Reclaim {
        /// Our last known revision.
        revision: u64,
    },
    /// A fenced write ([`Machine::on_fence_wanted`]): one atomic batch of the leader's writes
    /// and the key re-written conditioned on `revision` (we lead with it). The server applies
    /// all of it or none; applied, it is also a renew (its reply is handled as one).
    Fence {
        /// The revision we hold.
        revision: u64,
    },
    /// Delete the key conditioned on `revision`.
    Resign {
        /// The revision we hold.
        revision: u64,
    },
}

/// Control of the leader's work. Carry these out before the next [`Request`]: work stops
/// before the key is given up, so the next leader never overlaps with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// Not `#[non_exhaustive]`: every driver must handle every variant (a new one is a
// breaking change on purpose).
pub enum Work {
    /// Start the leader's work for `term`.
    Start {
        /// The term (fencing token).
        term: Term,
    },
    /// Stop the work of `term` now: fire its `lost`, and abort it if it has not ended by
    /// `abort_at` (at the latest `margin / 2` before the lease could expire on the server).
    Stop {
        /// The term.
        term: Term,
        /// Abort work that ignores `lost` at this instant.
        abort_at: Instant,
    },
}

/// Why leadership ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LostReason {
    /// A renew found the key changed: someone else leads.
    Conflict,
    /// No renew succeeded in time; the lease may have expired on the server (self-fenced).
    DeadlineExpired,
    /// The key was deleted or expired under us.
    KeyGone,
    /// We resigned (shutdown).
    Resigned,
    /// The bucket was deleted (a renew found it missing).
    BucketDeleted,
    /// The work panicked: we resigned so that another node can lead.
    WorkPanicked,
    /// The work returned while we led: we resigned so that another node can lead.
    WorkEnded,
}

/// What happened, for subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// We lead in `term`.
    Elected {
        /// The term (fencing token).
        term: Term,
    },
    /// We no longer lead.
    Lost {
        /// The term that ended.
        term: Term,
        /// Why.
        reason: LostReason,
    },
    /// Someone else leads (holder known) or the key's holder is unknown.
    Following {
        /// The leader, if known.
        leader: Option<Holder>,
    },
}

/// Our own last write of the key, while we do not lead: worth a reclaim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Own {
    /// The key's revision that write left.
    pub revision: u64,
    /// When that write was sent, if known: the server cannot expire it before `sent + ttl`.
    pub sent: Option<Instant>,
}

/// The machine's state; each state carries what only it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// Not leading.
    Follower {
        /// Our last write of the key, if the key may still be ours (worth a reclaim).
        own: Option<Own>,
        /// When to contest or reclaim next.
        next_try: Instant,
        /// No contest before this instant, whatever the watch says (after a missing bucket,
        /// or after resigning because the work ended).
        hold_off: Option<Instant>,
        /// The key was seen gone while a request was in flight: contest as soon as it
        /// returns.
        contest_asap: bool,
        /// The bucket was found missing: the next create may re-create it (a TTL later).
        make_bucket: bool,
    },
    /// Leading.
    Leader {
        /// The term (the revision the key was created or reclaimed at, in its bucket epoch).
        term: Term,
        /// The key's current revision (changes with each renew).
        revision: u64,
        /// Work must have stopped by this instant.
        deadline: Instant,
        /// When to renew next.
        renew_at: Instant,
        /// A fenced write waits for the next request (see [`Machine::on_fence_wanted`]).
        fence_wanted: bool,
    },
    /// Work stopped; resigning (or waiting for a renew in flight to resign with the revision
    /// it leaves).
    Resigning {
        /// The revision to resign with.
        revision: u64,
    },
    /// Done.
    Stopped,
}

impl State {
    /// A follower with nothing to reclaim that tries next at `next_try`.
    fn follower(next_try: Instant) -> Self {
        Self::Follower {
            own: None,
            next_try,
            hold_off: None,
            contest_asap: false,
            make_bucket: false,
        }
    }

    /// A follower that reclaims `own` at `next_try`.
    fn reclaiming(own: Own, next_try: Instant) -> Self {
        Self::Follower {
            own: Some(own),
            next_try,
            hold_off: None,
            contest_asap: false,
            make_bucket: false,
        }
    }
}

/// The lease request in flight.
#[derive(Debug, Clone, Copy)]
struct Pending {
    request: Request,
    /// When it was asked for (sent).
    sent: Instant,
    /// For a reclaim: when the write it is conditioned on was sent, if known.
    base: Option<Instant>,
}

/// The election state machine. See the [crate docs](crate).
#[derive(Debug)]
pub struct Machine {
    config: MachineConfig,
    state: State,
    /// The lease request in flight.
    pending: Option<Pending>,
    /// A request asked for and not yet polled (at most one: see `pending`).
    request: Option<Request>,
    work: VecDeque<Work>,
    events: VecDeque<Event>,
    /// Set by a shutdown: the machine stops by this instant whatever is in flight (past the
    /// lease's TTL a resign is worth nothing: the key expires by itself).
    stop_by: Option<Instant>,
    /// The holder last reported in a `Following` event (reported again only when it changes).
    known: Option<Option<Holder>>,
}

impl Machine {
    /// A new follower that contests at once (its first request is [`Request::Create`]).
    pub fn new(config: MachineConfig, now: Instant) -> Self {
        Self::contesting_at(config, now, now)
    }

    /// A follower that contests first at `first_try`, whatever the watch says (a candidate
    /// that finds the bucket younger than a TTL waits until it is a TTL old: the bucket may
    /// have been deleted under a leader that still works).
    pub fn contesting_at(config: MachineConfig, now: Instant, first_try: Instant) -> Self {
        let mut machine = Self {
            config,
            // Not before `first_try`, whatever the watch says.
            state: State::Follower {
                own: None,
                next_try: first_try,
                hold_off: (first_try > now).then_some(first_try),
                contest_asap: false,
                make_bucket: false,
            },
            pending: None,
            request: None,
            work: VecDeque::new(),
            events: VecDeque::new(),
            stop_by: None,
            known: None,
        };
        machine.on_timeout(now);
        machine
    }

    /// The current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Whether we lead at `now` (false past the deadline even before the timeout is handled).
    pub fn is_leader(&self, now: Instant) -> bool {
        matches!(self.state, State::Leader { deadline, .. } if now < deadline)
    }

    /// The current term while leading.
    pub fn term(&self) -> Option<Term> {
        match self.state {
            State::Leader { term, .. } => Some(term),
            _ => None,
        }
    }

    /// Whether the machine has finished (after a shutdown).
    pub fn is_stopped(&self) -> bool {
        self.state == State::Stopped
    }

    fn shutting_down(&self) -> bool {
        self.stop_by.is_some()
    }

    /// The instant at which [`on_timeout`](Self::on_timeout) must be called. After handling
    /// it, the next one is always later (never a busy loop); `None` once stopped.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let own = match self.state {
            State::Leader {
                deadline, renew_at, ..
            } => Some(if self.pending.is_some() {
                deadline
            } else {
                deadline.min(renew_at)
            }),
            State::Follower { next_try, .. } if self.pending.is_none() && !self.shutting_down() => {
                Some(next_try)
            }
            _ => None,
        };
        match (own, self.stop_by) {
            _ if self.is_stopped() => None,
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next change to the leader's work. Drain this before
    /// [`poll_request`](Self::poll_request): work stops before the key is given up.
    #[must_use]
    pub fn poll_work(&mut self) -> Option<Work> {
        self.work.pop_front()
    }

    /// The lease request to send, if one is due. Its outcome goes to
    /// [`on_reply`](Self::on_reply).
    #[must_use]
    pub fn poll_request(&mut self) -> Option<Request> {
        self.request.take()
    }

    /// The next event to report.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Time has passed. In order:
    /// - shutting down and `now` ≥ `shutdown + ttl` → `Stopped`, abandoning what is in flight;
    /// - `Leader` and `now` ≥ its deadline (`sent + ttl - margin`) → [`Work::Stop`],
    ///   [`LostReason::DeadlineExpired`], `Follower` that may reclaim its key;
    /// - with no request in flight: `Leader` with a fenced write wanted → [`Request::Fence`];
    ///   `Leader` past `renew_at` → [`Request::Renew`];
    ///   `Follower` while shutting down → `Resigning` with [`Request::Resign`] if the key may
    ///   still be ours, else `Stopped`; `Resigning` → [`Request::Resign`]; `Follower` past
    ///   `next_try` → [`Request::Reclaim`] of our key, else [`Request::Create`].
    pub fn on_timeout(&mut self, now: Instant) {
        if self.stop_by.is_some_and(|t| now >= t) {
            // Shut down and nothing answered in time: abandon what is in flight.
            self.stop();
            return;
        }
        if let State::Leader {
            term,
            deadline,
            revision,
            ..
        } = self.state
            && now >= deadline
        {
            // Nobody told us we lost, but the lease may be gone on the server: stop now.
            self.lose(term, LostReason::DeadlineExpired, Some(revision), now);
        }
        if self.pending.is_some() {
            return;
        }
        let shutting_down = self.shutting_down();
        match &mut self.state {
            // A fenced write renews too: it goes first.
            State::Leader {
                revision,
                fence_wanted,
                ..
            } if *fence_wanted => {
                *fence_wanted = false;
                let revision = *revision;
                self.request(Request::Fence { revision }, now);
            }
            State::Leader {
                revision, renew_at, ..
            } if now >= *renew_at => {
                let revision = *revision;
                self.request(Request::Renew { revision }, now);
            }
            // Shutting down: resign a key that may still be ours, else stop.
            State::Follower { own, .. } if shutting_down => match *own {
                Some(own) => {
                    self.state = State::Resigning {
                        revision: own.revision,
                    };
                    self.request(
                        Request::Resign {
                            revision: own.revision,
                        },
                        now,
                    );
                }
                None => self.stop(),
            },
            State::Resigning { revision } => {
                let revision = *revision;
                self.request(Request::Resign { revision }, now);
            }
            State::Follower {
                own,
                next_try,
                contest_asap,
                make_bucket,
                ..
            } if now >= *next_try => match *own {
                Some(own) => {
                    let reclaim = Request::Reclaim {
                        revision: own.revision,
                    };
                    self.send(reclaim, now, own.sent);
                }
                None => {
                    *contest_asap = false;
                    let make_bucket = core::mem::take(make_bucket);
                    self.request(Request::Create { make_bucket }, now);
                }
            },
            _ => {}
        }
    }

    /// The outcome of the request in flight (ignored when none is). The deadline is checked
    /// first: a reply arriving after it cannot extend a lease we already stopped trusting.
    ///
    /// | reply | to | in state | becomes |
    /// |---|---|---|---|
    /// | `Created` / `Updated` | `Create` / `Reclaim` | any | `Leader` of (`epoch`, `revision`) with [`Work::Start`], [`Event::Elected`]; shutting down → `Resigning` with [`Request::Resign`]; past the deadline already → `Follower` that reclaims |
    /// | `Updated` | `Reclaim` answered when the revision it is conditioned on may have expired (its send + `ttl - margin / 2`, or its send unknown) | `Follower` | `Follower` that reclaims the new revision at once (the server can wipe such a write) |
    /// | `Updated` | `Renew` | `Leader` | `Leader`, deadline `sent + ttl - margin` |
    /// | `Updated` | `Renew` | `Resigning` | [`Request::Resign`] of the new revision |
    /// | `Updated` | `Renew` | `Follower` (fenced meanwhile) | `Follower` that reclaims the key at once (a new term) |
    /// | `Conflict { ours }` | not `Resign` | `Leader` | `Leader` on that revision, same deadline, renew at once |
    /// | `Conflict { ours }` | not `Resign` | `Resigning` / `Follower` | resign / reclaim that revision |
    /// | `Conflict` | `Renew` | `Leader` | [`Work::Stop`], [`LostReason::Conflict`], `Follower` |
    /// | `Conflict` | `Renew` | `Resigning` | `Stopped` (nothing to resign) |
    /// | `Conflict` | `Create` / `Reclaim` | `Follower` | `Follower` of the holder, next try after the poll interval; shutting down → `Stopped` |
    /// | `Conflict` / `Failed` / `Resigned` | `Resign` | `Resigning` | `Stopped`, or (work ended) `Follower` holding off a TTL |
    /// | `Failed` | `Renew` | `Leader` | `Leader` until the deadline, retry after the retry interval |
    /// | `Failed` | `Renew` | `Resigning` | [`Request::Resign`] of the revision we knew |
    /// | `Failed` | `Create` / `Reclaim` | `Follower` | retry after the retry interval; shutting down → `Stopped` |
    /// | (`Fence`) | | | as `Renew` in every row above |
    /// | `BucketGone` | any | any | shutting down → `Stopped`; else [`LostReason::BucketDeleted`] if leading, `Follower` holding off a TTL, then creating the bucket |
    pub fn on_reply(&mut self, now: Instant, reply: Reply) {
        self.on_timeout(now);
        let Some(pending) = self.pending.take() else {
            return;
        };
        let Pending { request, sent, .. } = pending;
        match reply {
            Reply::Created { revision, epoch } => match request {
                Request::Create { .. } => {
                    self.lead(Term::new(epoch, revision), revision, sent, now);
                }
                // (a reply of another kind than asked: not ours to act on)
                _ => self.pending = Some(pending),
            },
            Reply::Updated { revision, epoch } => match request {
                Request::Renew { .. } | Request::Fence { .. } => {
                    self.renewed(revision, sent, now);
                }
                Request::Reclaim { .. } => {
                    self.reclaimed(Term::new(epoch, revision), revision, pending, now);
                }
                _ => self.pending = Some(pending),
            },
            // Our own write, unless it is the very revision the request was conditioned on
            // (the server just said the key is no longer there: a stale read).
            Reply::Conflict {
                ours: Some(revision),
                ..
            } if !matches!(request, Request::Resign { .. })
                && conditioned(request) != Some(revision) =>
            {
                self.found_our_write(revision, now);
            }
            Reply::Conflict { holder, .. } => match request {
                Request::Renew { .. } | Request::Fence { .. } => match self.state {
                    State::Leader { term, .. } => {
                        self.lose(term, LostReason::Conflict, None, now);
                        self.follow(holder, now);
                    }
                    // Not ours any more: nothing to resign.
                    State::Resigning { .. } => self.resigned(now),
                    _ => {
                        self.forget_own(now);
                        self.follow(holder, now);
                    }
                },
                Request::Create { .. } | Request::Reclaim { .. } if self.shutting_down() => {
                    self.stop();
                }
                Request::Create { .. } | Request::Reclaim { .. } => {
                    self.forget_own(now);
                    self.follow(holder, now);
                }
                Request::Resign { .. } => self.resigned(now),
            },
            Reply::Failed => match request {
                Request::Renew { .. } | Request::Fence { .. } => match &mut self.state {
                    // Keep leading until the deadline; retry soon.
                    State::Leader { renew_at, .. } => {
                        *renew_at = now + self.config.retry_interval;
                    }
                    // Unknown whether it landed: resign with the revision we knew.
                    State::Resigning { revision } => {
                        let revision = *revision;
                        self.request(Request::Resign { revision }, now);
                    }
                    _ => self.retry_soon(now),
                },
                Request::Create { .. } | Request::Reclaim { .. } if self.shutting_down() => {
                    self.stop();
                }
                Request::Create { .. } | Request::Reclaim { .. } => self.retry_soon(now),
                // The resign's effect is unknown; the lease expires by itself at worst.
                Request::Resign { .. } => self.resigned(now),
            },
            Reply::BucketGone if self.shutting_down() => self.stop(),
            Reply::BucketGone => {
                if let State::Leader { term, .. } = self.state {
                    self.lose(term, LostReason::BucketDeleted, None, now);
                }
                // Whoever led may work until its last `sent + ttl - margin`: nobody
                // contests (and re-creates the bucket) before a TTL from now.
                self.hold_off_for_a_ttl(now);
                if let State::Follower { make_bucket, .. } = &mut self.state {
                    *make_bucket = true;
                }
            }
            Reply::Resigned => match request {
                Request::Resign { .. } => self.resigned(now),
                _ => self.pending = Some(pending),
            },
        }
        self.on_timeout(now);
    }

    /// Stop: resign if leading, then end.
    /// - `Leader` → [`Work::Stop`], [`LostReason::Resigned`], `Resigning` with
    ///   [`Request::Resign`] (with a renew in flight, the resign follows its reply with the
    ///   revision it leaves);
    /// - `Follower` with nothing in flight → `Resigning` if the key may still be ours, else
    ///   `Stopped`; with a create/reclaim in flight, its reply decides (a won key is resigned
    ///   at once, no work started).
    ///
    /// Whatever happens next, the machine is `Stopped` by `now + ttl` (past that, the key
    /// expires on the server by itself).
    pub fn on_shutdown(&mut self, now: Instant) {
        self.on_timeout(now);
        if !self.shutting_down() {
            self.stop_by = Some(now + self.config.ttl);
            if let State::Leader { term, revision, .. } = self.state {
                // Work stops before the key is given up, so the next leader never overlaps.
                self.stop_work(term, now);
                self.events.push_back(Event::Lost {
                    term,
                    reason: LostReason::Resigned,
                });
                self.state = State::Resigning { revision };
                if self.pending.is_none() {
                    self.request(Request::Resign { revision }, now);
                }
            }
        }
        self.on_timeout(now);
    }

    /// The work of `term` ended by itself (returned, or `panicked`). Leading in `term` →
    /// [`Work::Stop`], [`LostReason::WorkPanicked`] / [`LostReason::WorkEnded`],
    /// `Resigning` with [`Request::Resign`] (after a renew in flight); once resigned, a
    /// `Follower` that contests again only a TTL later. Another term: nothing.
    pub fn on_work_ended(&mut self, now: Instant, ended: Term, panicked: bool) {
        self.on_timeout(now);
        if let State::Leader { term, revision, .. } = self.state
            && term == ended
        {
            // Leading without working starves everyone: hand the key back.
            self.stop_work(term, now);
            self.events.push_back(Event::Lost {
                term,
                reason: if panicked {
                    LostReason::WorkPanicked
                } else {
                    LostReason::WorkEnded
                },
            });
            self.state = State::Resigning { revision };
            // With a renew in flight, the resign follows its reply.
        }
        self.on_timeout(now);
    }

    /// The watch saw the key deleted, purged or expired at `revision`.
    /// - `Leader` of a term before `revision` → [`Work::Stop`], [`LostReason::KeyGone`],
    ///   `Follower` that contests at once (an older marker means nothing);
    /// - `Follower` → contest at once (right after the request in flight, if any), unless
    ///   holding off after a missing bucket or failed work.
    pub fn on_key_gone(&mut self, now: Instant, revision: u64) {
        self.on_timeout(now);
        let pending = self.pending.is_some();
        match &mut self.state {
            State::Leader { term, .. } if revision > term.revision => {
                // Deleted or expired after we took it: we do not lead any more.
                let term = *term;
                self.lose(term, LostReason::KeyGone, None, now);
                self.contest_now(now);
            }
            // After a missing bucket or failed work, the TTL wait is not shortened.
            State::Follower { hold_off, .. } if hold_off.is_some_and(|t| now < t) => {}
            State::Follower {
                own,
                next_try,
                contest_asap,
                ..
            } => {
                *own = None;
                *next_try = now;
                if pending {
                    *contest_asap = true;
                }
            }
            _ => {}
        }
        self.on_timeout(now);
    }

    /// The leader's work has a fenced write ready. `Leader` → [`Request::Fence`] on the
    /// revision held, at once or right after the request in flight (a fence conditioned on a
    /// revision a renew in flight is replacing would be refused); its reply is handled as a
    /// renew's. Not leading (or shutting down): nothing — the driver answers the write
    /// `Deposed` (it checks [`term`](Self::term)).
    pub fn on_fence_wanted(&mut self, now: Instant) {
        self.on_timeout(now);
        let shutting_down = self.shutting_down();
        if let State::Leader { fence_wanted, .. } = &mut self.state
            && !shutting_down
        {
            *fence_wanted = true;
        }
        self.on_timeout(now);
    }

    /// The watch saw the key written by `holder` at `revision`.
    /// - `Leader`, `revision` above the one it holds, `holder` in another term → someone else
    ///   wrote the key after our last write (a blind put, a leader of a re-created bucket, a
    ///   late write): [`Work::Stop`], [`LostReason::Conflict`], `Follower` of the holder;
    /// - `Follower` → reports it ([`Event::Following`], once per holder);
    /// - otherwise ignored (our own writes carry our term).
    pub fn on_key_written(&mut self, now: Instant, holder: Holder, revision: u64) {
        self.on_timeout(now);
        match self.state {
            State::Leader {
                term,
                revision: held,
                ..
            } if revision > held && holder.term != term => {
                self.lose(term, LostReason::Conflict, None, now);
                self.follow(Some(holder), now);
            }
            State::Follower { .. } => self.report_holder(Some(holder)),
            _ => {}
        }
        self.on_timeout(now);
    }

    /// The key was written by someone who is not a candidate (a value that is no lease) at
    /// `revision`: a `Leader` holding an older revision lost it ([`LostReason::Conflict`]).
    pub fn on_key_taken(&mut self, now: Instant, revision: u64) {
        self.on_timeout(now);
        if let State::Leader {
            term,
            revision: held,
            ..
        } = self.state
            && revision > held
        {
            self.lose(term, LostReason::Conflict, None, now);
            self.follow(None, now);
        }
        self.on_timeout(now);
    }

    /// The bucket was deleted and created again (the watch says so, or the driver found a
    /// bucket younger than it knew). Whoever led in the old bucket may work until its last
    /// `sent + ttl - margin`, and nothing in the new bucket tells: nobody may lead in it for a
    /// TTL from now.
    /// - `Leader` → [`Work::Stop`], [`LostReason::BucketDeleted`];
    /// - any state but `Stopped`/shutting down → `Follower` holding off a TTL, then creating
    ///   (adopting the bucket's epoch);
    /// - shutting down: a leader stops its work and the machine stops (its key is gone with
    ///   the old bucket).
    pub fn on_bucket_recreated(&mut self, now: Instant) {
        self.on_timeout(now);
        if self.is_stopped() {
            return;
        }
        if let State::Leader { term, .. } = self.state {
            self.lose(term, LostReason::BucketDeleted, None, now);
        }
        if self.shutting_down() {
            self.stop();
            return;
        }
        // A request in flight was made for the old bucket: its reply means nothing now.
        self.pending = None;
        self.request = None;
        self.hold_off_for_a_ttl(now);
        if let State::Follower { make_bucket, .. } = &mut self.state {
            *make_bucket = true;
        }
        self.on_timeout(now);
    }

    fn request(&mut self, request: Request, now: Instant) {
        self.send(request, now, None);
    }

    fn send(&mut self, request: Request, now: Instant, base: Option<Instant>) {
        debug_assert!(self.pending.is_none());
        self.pending = Some(Pending {
            request,
            sent: now,
            base,
        });
        self.request = Some(request);
    }

    /// A renew succeeded.
    fn renewed(&mut self, revision: u64, sent: Instant, now: Instant) {
        match &mut self.state {
            State::Leader {
                revision: held,
                deadline,
                renew_at,
                ..
            } => {
                *held = revision;
                *deadline = sent + self.config.ttl - self.config.margin;
                *renew_at = sent + self.config.renew_interval;
            }
            State::Resigning { .. } => self.request(Request::Resign { revision }, now),
            // We fenced while the renew was in flight, yet it landed: the key is ours at
            // `revision`. Reclaim it (new term) right away.
            _ => {
                let own = Own {
                    revision,
                    sent: Some(sent),
                };
                self.state = State::reclaiming(own, now);
            }
        }
    }

    /// A reclaim succeeded. The server may ack a write conditioned on revision r that
    /// reaches it at r's TTL expiry and then wipe it with r's expiry marker (measured:
    /// docs/upstream/ttl-marker-wipes-acked-write.md), after which a follower can take the
    /// key. So the reclaim leads only if answered while the write it is conditioned on cannot
    /// have expired yet (`sent of that write + ttl - margin / 2`: half the margin for clock
    /// rates); else its revision is reclaimed once more (a write conditioned on a revision
    /// that is at most a round trip old, far from its expiry).
    fn reclaimed(&mut self, term: Term, revision: u64, pending: Pending, now: Instant) {
        let in_time = pending
            .base
            .is_some_and(|b| now + self.config.margin / 2 < b + self.config.ttl);
        if in_time || self.shutting_down() {
            self.lead(term, revision, pending.sent, now);
        } else {
            let own = Own {
                revision,
                sent: Some(pending.sent),
            };
            self.state = State::reclaiming(own, now);
        }
    }

    /// A request found the key at `revision`, written by an earlier request of ours whose
    /// reply was lost.
    fn found_our_write(&mut self, revision: u64, now: Instant) {
        match &mut self.state {
            // Our earlier renew landed after all. The deadline stays where the last
            // *confirmed* renew put it (that landed write was sent no earlier), and we renew
            // on the revision it left, at once.
            State::Leader {
                revision: held,
                renew_at,
                ..
            } => {
                // A renew that cannot progress (the same revision found again) pauses.
                *renew_at = if *held == revision {
                    now + self.config.retry_interval
                } else {
                    now
                };
                *held = revision;
            }
            State::Resigning { .. } => {
                self.state = State::Resigning { revision };
                self.request(Request::Resign { revision }, now);
            }
            // Our key, and nobody else's: reclaim it rather than wait out its TTL. When that
            // write was sent is unknown, so the reclaim is confirmed by a second one.
            State::Follower { .. } => {
                self.state = State::reclaiming(
                    Own {
                        revision,
                        sent: None,
                    },
                    now,
                );
            }
            State::Stopped => {}
        }
    }

    fn report_holder(&mut self, holder: Option<Holder>) {
        if self.known.as_ref() != Some(&holder) {
            self.known = Some(holder.clone());
            self.events.push_back(Event::Following { leader: holder });
        }
    }

    fn lead(&mut self, term: Term, revision: u64, sent: Instant, now: Instant) {
        if self.shutting_down() {
            // Won while shutting down: give it straight back, no work started.
            self.state = State::Resigning { revision };
            self.request(Request::Resign { revision }, now);
            return;
        }
        let deadline = sent + self.config.ttl - self.config.margin;
        if now >= deadline {
            // The answer came too late to trust: try to reclaim instead.
            let own = Own {
                revision,
                sent: Some(sent),
            };
            self.state = State::reclaiming(own, now);
            return;
        }
        self.state = State::Leader {
            term,
            revision,
            deadline,
            renew_at: sent + self.config.renew_interval,
            fence_wanted: false,
        };
        self.known = None;
        self.work.push_back(Work::Start { term });
        self.events.push_back(Event::Elected { term });
    }

    /// Work stops now; work that ignores `lost` is aborted half the margin later, and in any
    /// case half the margin before the lease could expire (`sent + ttl - margin / 2`) —
    /// unless the process itself stalled past that instant (a freeze, a GC pause: then it is
    /// told only now, and the work gets a quarter margin to see `lost`; its lease is gone,
    /// which is what the fencing token is for).
    fn stop_work(&mut self, term: Term, now: Instant) {
        let deadline = match self.state {
            State::Leader { deadline, .. } => deadline.min(now),
            _ => now,
        };
        self.work.push_back(Work::Stop {
            term,
            abort_at: (deadline + self.config.margin / 2).max(now + self.config.margin / 4),
        });
    }

    /// Leadership of `term` ends: work stops, and we follow, reclaiming `own` (our revision)
    /// if the key may still be ours.
    fn lose(&mut self, term: Term, reason: LostReason, own: Option<u64>, now: Instant) {
        // Our revision was written by the last confirmed renew/create (sent at
        // `deadline - (ttl - margin)`) or by a later request that landed unseen.
        let sent = match self.state {
            State::Leader { deadline, .. } => {
                Some(deadline - (self.config.ttl - self.config.margin))
            }
            _ => None,
        };
        self.stop_work(term, now);
        self.events.push_back(Event::Lost { term, reason });
        self.state = match own {
            Some(revision) => State::reclaiming(Own { revision, sent }, now),
            None => State::follower(now),
        };
    }

    fn follow(&mut self, holder: Option<Holder>, now: Instant) {
        self.report_holder(holder);
        let poll = self.config.poll_interval;
        if let State::Follower {
            own,
            next_try,
            contest_asap,
            ..
        } = &mut self.state
        {
            *own = None;
            *next_try = if core::mem::take(contest_asap) {
                now
            } else {
                now + poll
            };
        } else {
            self.state = State::follower(now + poll);
        }
    }

    fn forget_own(&mut self, now: Instant) {
        if let State::Follower { own, next_try, .. } = &mut self.state {
            *own = None;
            *next_try = (*next_try).max(now);
        }
    }

    fn contest_now(&mut self, now: Instant) {
        if let State::Follower { next_try, .. } = &mut self.state {
            *next_try = now;
        }
    }

    fn retry_soon(&mut self, now: Instant) {
        if let State::Follower { next_try, .. } = &mut self.state {
            *next_try = now + self.config.retry_interval;
        }
    }

    /// The resign is over (done, or its effect unknown): stop if shutting down. Otherwise
    /// the work ended by itself: follow, and contest again only a TTL later (others,
    /// watching, contest at once), so work that keeps failing never makes a hot loop.
    fn resigned(&mut self, now: Instant) {
        if self.shutting_down() {
            self.stop();
        } else {
            self.pending = None;
            self.hold_off_for_a_ttl(now);
        }
    }

    fn hold_off_for_a_ttl(&mut self, now: Instant) {
        let until = now + self.config.ttl;
        self.state = State::Follower {
            own: None,
            next_try: until,
            hold_off: Some(until),
            contest_asap: false,
            make_bucket: false,
        };
    }

    fn stop(&mut self) {
        self.state = State::Stopped;
        self.pending = None;
        self.request = None;
    }
}

/// The revision a request is conditioned on, if any.
fn conditioned(request: Request) -> Option<u64> {
    match request {
        Request::Create { .. } => None,
        Request::Renew { revision }
        | Request::Reclaim { revision }
        | Request::Fence { revision }
        | Request::Resign { revision } => Some(revision),
    }
}

#[cfg(test)]
mod tests;
