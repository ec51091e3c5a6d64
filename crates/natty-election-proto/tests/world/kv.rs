//! The simulated KV bucket: one stream of records with compare-and-set on the last sequence
//! of a subject, per-key TTL with expiry markers (and the server race where an expiry marker
//! wipes a write acked just before it), deletion and re-creation (a new epoch, revisions
//! from 1 again), and replicas that lag (a read may see an older state, unless it asks for
//! a revision it must be at least at).

use std::time::Duration;

use natty_election_proto::{Instant, Term};

/// What the lease key holds (natty-election's `Lease`, with the machine's slot as node name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lease {
    /// The node (world slot).
    pub(crate) slot: usize,
    /// The process (a restart is a new one).
    pub(crate) instance: u64,
    /// The term's revision, once known.
    pub(crate) term: Option<u64>,
    /// The epoch the writer believed the bucket had.
    pub(crate) epoch: u64,
}

impl Lease {
    /// The term of this lease stored at `revision`.
    pub(crate) fn term_at(&self, revision: u64) -> Term {
        Term::new(self.epoch, self.term.unwrap_or(revision))
    }
}

/// A value of the lease key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    /// A lease.
    Lease(Lease),
    /// Something else, written by someone who is not a candidate.
    Other,
}

/// One message on the lease key's subject: a value, or a delete/expiry marker (`None`).
#[derive(Debug, Clone)]
pub(crate) struct Rec {
    /// Its sequence (the key's revision).
    pub(crate) seq: u64,
    /// Its value; `None` for a marker.
    pub(crate) value: Option<Value>,
}

/// The election's bucket.
#[derive(Debug)]
pub(crate) struct Bucket {
    /// Its creation time (server clock, ns): the epoch.
    pub(crate) epoch: u64,
    /// When it was created.
    pub(crate) created: Instant,
    /// The stream's last sequence (all subjects).
    pub(crate) seq: u64,
    /// Per-key TTL (limit markers) on.
    pub(crate) per_key_ttl: bool,
    /// The lease key's messages, oldest first.
    pub(crate) lease: Vec<Rec>,
    /// The lease key's value expires when its last message is this old.
    pub(crate) expiry: Vec<(u64, Instant)>,
    /// Revisions whose expiry marker will wipe the write that replaced them (the server race
    /// of `docs/upstream/ttl-marker-wipes-acked-write.md`).
    pub(crate) wiped: Vec<u64>,
}

impl Bucket {
    fn last(&self) -> Option<&Rec> {
        self.lease.last()
    }

    /// The key's last sequence (0: never written).
    pub(crate) fn last_seq(&self) -> u64 {
        self.last().map_or(0, |r| r.seq)
    }

    /// The key's current value and revision.
    pub(crate) fn current(&self) -> Option<(u64, Value)> {
        self.last()
            .and_then(|r| r.value.clone().map(|v| (r.seq, v)))
    }

    /// The key as a replica `lag` messages behind sees it.
    fn as_of(&self, seq: u64) -> Option<(u64, Value)> {
        self.lease
            .iter()
            .rev()
            .find(|r| r.seq <= seq)
            .and_then(|r| r.value.clone().map(|v| (r.seq, v)))
    }

    fn append(&mut self, value: Option<Value>) -> u64 {
        self.seq += 1;
        self.lease.push(Rec {
            seq: self.seq,
            value,
        });
        self.seq
    }
}

/// A KV operation, as the driver sends it.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// Stream info: the bucket's epoch and age.
    Info,
    /// Create the bucket (per-key TTL on).
    CreateBucket,
    /// Create the lease key if absent (or deleted); creates the bucket if missing (natty-kv's
    /// auto-create).
    Create { value: Lease },
    /// Write the lease key conditioned on its last revision being `rev`.
    Update { rev: u64, value: Lease },
    /// Delete the lease key conditioned on `rev`.
    Delete { rev: u64 },
    /// Read the lease key (from any replica), never older than `at_least` if given.
    Get { at_least: Option<u64> },
    /// A fenced write: the leader's writes and the lease re-written conditioned on `rev`, all
    /// or nothing.
    Fence { rev: u64, value: Lease },
}

/// The server's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Res {
    /// Stream info: `None` when the bucket does not exist.
    Info(Option<(u64, Duration)>),
    /// Done (bucket created, key deleted).
    Done,
    /// The bucket already exists.
    Exists,
    /// Written at this revision.
    Rev(u64),
    /// The condition failed: the key's last revision is this ("wrong last sequence: N").
    Conflict(u64),
    /// No such bucket (a 503 the driver confirmed with the stream API).
    NoBucket,
    /// The key as a replica had it.
    Got(Option<(u64, Value)>),
}

/// What happened on the server that the world must act on.
#[derive(Debug, Clone)]
pub(crate) enum Effect {
    /// The lease key got a new message (watchers see it).
    Wrote(Rec),
    /// A message on the key expires at this instant (unless replaced first).
    ExpireAt { epoch: u64, seq: u64, at: Instant },
    /// A fenced write landed, conditioned on `on` (the record it replaced).
    Fenced {
        on: Option<Rec>,
        value: Lease,
        at: Instant,
    },
    /// The bucket was created (a new epoch).
    Created,
}

/// The server.
#[derive(Debug, Default)]
pub(crate) struct Server {
    pub(crate) bucket: Option<Bucket>,
    pub(crate) last_epoch: u64,
    /// Replicas may lag by up to this many messages.
    pub(crate) max_lag: u64,
}

/// A conditional write this close to its base revision's expiry may be acked and then wiped.
pub(crate) const WIPE_WINDOW: Duration = Duration::from_millis(40);

impl Server {
    /// Creates the bucket (an epoch later than any before).
    pub(crate) fn create_bucket(&mut self, now: Instant, effects: &mut Vec<Effect>) -> bool {
        if self.bucket.is_some() {
            return false;
        }
        let epoch = (u64::try_from(now.as_duration().as_nanos()).unwrap_or(u64::MAX))
            .max(self.last_epoch + 1);
        self.last_epoch = epoch;
        self.bucket = Some(Bucket {
            epoch,
            created: now,
            seq: 0,
            per_key_ttl: true,
            lease: Vec::new(),
            expiry: Vec::new(),
            wiped: Vec::new(),
        });
        effects.push(Effect::Created);
        true
    }

    /// Someone else writes another key of the bucket (another election): a sequence used.
    pub(crate) fn put_other_key(&mut self, now: Instant, effects: &mut Vec<Effect>) {
        self.create_bucket(now, effects);
        if let Some(b) = &mut self.bucket {
            b.seq += 1;
        }
    }

    /// Someone else writes the lease key (a non-lease value, a blind put).
    pub(crate) fn put_lease_key(&mut self, now: Instant, value: Value, effects: &mut Vec<Effect>) {
        self.create_bucket(now, effects);
        if let Some(b) = &mut self.bucket {
            b.append(Some(value));
            effects.push(Effect::Wrote(b.lease[b.lease.len() - 1].clone()));
        }
    }

    /// Someone deletes the lease key (a blind delete).
    pub(crate) fn delete_lease_key(&mut self, _now: Instant, effects: &mut Vec<Effect>) {
        if let Some(b) = &mut self.bucket
            && b.current().is_some()
        {
            b.append(None);
            effects.push(Effect::Wrote(b.lease[b.lease.len() - 1].clone()));
        }
    }

    /// Deletes the bucket.
    pub(crate) fn delete_bucket(&mut self) -> bool {
        self.bucket.take().is_some()
    }

    /// The expiry of revision `seq` of epoch `epoch` is due now.
    pub(crate) fn expire(
        &mut self,
        epoch: u64,
        seq: u64,
        _now: Instant,
        effects: &mut Vec<Effect>,
    ) {
        let Some(b) = &mut self.bucket else { return };
        if b.epoch != epoch {
            return;
        }
        let last = b.last_seq();
        // The last value expires; or the write acked right at its base's expiry is wiped.
        let wipes = b.wiped.contains(&seq);
        if (last == seq && b.current().is_some()) || wipes {
            b.append(None);
            effects.push(Effect::Wrote(b.lease[b.lease.len() - 1].clone()));
        }
    }

    /// Applies `op` arriving now; `lag` is how far behind the replica that serves a read is,
    /// `wipe` whether a write right at its base's expiry loses the race.
    #[allow(
        clippy::too_many_arguments,
        reason = "the world's dice for this operation"
    )]
    pub(crate) fn apply(
        &mut self,
        op: &Op,
        now: Instant,
        ttl: Duration,
        lag: u64,
        wipe: bool,
        slack: Duration,
        effects: &mut Vec<Effect>,
    ) -> Res {
        match op {
            Op::Info => Res::Info(self.bucket.as_ref().map(|b| (b.epoch, now - b.created))),
            Op::CreateBucket => {
                if self.create_bucket(now, effects) {
                    Res::Done
                } else {
                    Res::Exists
                }
            }
            Op::Create { value } => {
                self.create_bucket(now, effects);
                let b = self.bucket.as_mut().expect("just created");
                if b.current().is_some() {
                    return Res::Conflict(b.last_seq());
                }
                Self::write(b, Value::Lease(value.clone()), now, ttl, slack, effects)
            }
            Op::Update { rev, value } => {
                let Some(b) = self.bucket.as_mut() else {
                    return Res::NoBucket;
                };
                if b.last_seq() != *rev {
                    return Res::Conflict(b.last_seq());
                }
                Self::maybe_wipe(b, *rev, now, wipe);
                Self::write(b, Value::Lease(value.clone()), now, ttl, slack, effects)
            }
            Op::Fence { rev, value } => {
                let Some(b) = self.bucket.as_mut() else {
                    return Res::NoBucket;
                };
                if b.last_seq() != *rev {
                    return Res::Conflict(b.last_seq());
                }
                let on = b.last().cloned();
                Self::maybe_wipe(b, *rev, now, wipe);
                // The leader's writes go first (another subject), then the lease.
                b.seq += 1;
                effects.push(Effect::Fenced {
                    on,
                    value: value.clone(),
                    at: now,
                });
                Self::write(b, Value::Lease(value.clone()), now, ttl, slack, effects)
            }
            Op::Delete { rev } => {
                let Some(b) = self.bucket.as_mut() else {
                    return Res::NoBucket;
                };
                if b.last_seq() != *rev {
                    return Res::Conflict(b.last_seq());
                }
                b.append(None);
                effects.push(Effect::Wrote(b.lease[b.lease.len() - 1].clone()));
                Res::Done
            }
            Op::Get { at_least } => {
                let Some(b) = self.bucket.as_ref() else {
                    return Res::NoBucket;
                };
                let seen = b.seq.saturating_sub(lag).max(at_least.unwrap_or(0));
                Res::Got(b.as_of(seen))
            }
        }
    }

    fn maybe_wipe(b: &mut Bucket, rev: u64, now: Instant, wipe: bool) {
        let due = b.expiry.iter().find(|(s, _)| *s == rev).map(|(_, at)| *at);
        if wipe && due.is_some_and(|at| at > now && at - now < WIPE_WINDOW) {
            b.wiped.push(rev);
        }
    }

    fn write(
        b: &mut Bucket,
        value: Value,
        now: Instant,
        ttl: Duration,
        slack: Duration,
        effects: &mut Vec<Effect>,
    ) -> Res {
        let seq = b.append(Some(value));
        effects.push(Effect::Wrote(b.lease[b.lease.len() - 1].clone()));
        if b.per_key_ttl {
            let at = now + ttl + slack;
            b.expiry.push((seq, at));
            effects.push(Effect::ExpireAt {
                epoch: b.epoch,
                seq,
                at,
            });
        }
        Res::Rev(seq)
    }
}
