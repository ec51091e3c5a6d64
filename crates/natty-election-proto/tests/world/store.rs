//! The driver's KV side as the world runs it: what natty-election's `store.rs` does for each
//! request the machine asks for, as a chain of KV operations (each one a round trip through
//! the simulated network). Keep it in step with `store.rs`: this is the model of it.

use std::time::Duration;

use natty_election_proto::{Holder, Reply, Request, Term};

use crate::sim::TTL;

use crate::kv::{Lease, Op, Res, Value};

/// What the driver of one candidate remembers about the bucket (`LeaseStore`).
#[derive(Debug, Clone)]
pub(crate) struct Store {
    pub(crate) slot: usize,
    pub(crate) instance: u64,
    /// The epoch of the bucket as we know it.
    pub(crate) known_epoch: u64,
}

/// The next thing a request in flight does.
#[derive(Debug)]
pub(crate) enum Next {
    /// Send this operation.
    Op(Op),
    /// Done: the machine's reply.
    Reply(Reply),
    /// Set-up done: the bucket is ready; contest only after `wait` (a bucket younger than a
    /// TTL, by its age on the server's clock).
    Prepared { wait: Duration },
    /// Set-up failed: try again later.
    Retry,
}

/// A request's chain of operations, and where it is.
#[derive(Debug)]
pub(crate) enum Prog {
    /// `prepare`: status, create the bucket if missing, epoch.
    Prepare { created: bool, stage: u8 },
    /// `Request::Create`.
    Create { stage: u8, epoch: u64, rev: u64 },
    /// `Request::Renew` / `Fence` (`fence`) / `Reclaim` (`reclaim`).
    Write {
        reclaim: bool,
        /// The revision the write is conditioned on.
        base: u64,
        stage: u8,
        epoch: u64,
        new_rev: u64,
    },
    /// `Request::Resign`.
    Resign { rev: u64, tries: u8, stage: u8 },
}

impl Store {
    fn lease(&self, term: Option<u64>, epoch: u64) -> Lease {
        Lease {
            slot: self.slot,
            instance: self.instance,
            term,
            epoch,
        }
    }

    /// The program for `request` and its first operation. `held`: the term we lead in.
    pub(crate) fn start(&self, request: Request, held: Option<Term>, fence: bool) -> (Prog, Op) {
        match request {
            Request::Create { make_bucket } => {
                let prog = Prog::Create {
                    // awaiting the bucket's creation (10) or the key's (2)
                    stage: if make_bucket { 10 } else { 2 },
                    epoch: self.known_epoch,
                    rev: 0,
                };
                let op = if make_bucket {
                    Op::CreateBucket
                } else {
                    Op::Create {
                        value: self.lease(None, self.known_epoch),
                    }
                };
                (prog, op)
            }
            Request::Renew { revision } | Request::Fence { revision } => {
                let term = held.unwrap_or_default();
                let value = self.lease(Some(term.revision), term.epoch);
                let fence = fence && matches!(request, Request::Fence { .. });
                let op = if fence {
                    Op::Fence {
                        rev: revision,
                        value,
                    }
                } else {
                    Op::Update {
                        rev: revision,
                        value,
                    }
                };
                (
                    Prog::Write {
                        reclaim: false,
                        base: revision,
                        stage: 0,
                        epoch: term.epoch,
                        new_rev: 0,
                    },
                    op,
                )
            }
            Request::Reclaim { revision } => (
                Prog::Write {
                    reclaim: true,
                    base: revision,
                    stage: 0,
                    epoch: self.known_epoch,
                    new_rev: 0,
                },
                Op::Update {
                    rev: revision,
                    value: self.lease(None, self.known_epoch),
                },
            ),
            Request::Resign { revision } => (
                Prog::Resign {
                    rev: revision,
                    tries: 0,
                    stage: 0,
                },
                Op::Delete { rev: revision },
            ),
        }
    }

    /// The set-up's program and first operation.
    pub(crate) fn prepare() -> (Prog, Op) {
        (
            Prog::Prepare {
                created: false,
                stage: 0,
            },
            Op::Info,
        )
    }

    /// Who holds the key (`read_holder`), from a read's answer.
    fn holder(&mut self, res: &Res) -> (Option<Holder>, Option<u64>) {
        match res {
            Res::Got(Some((rev, Value::Lease(l)))) => {
                let ours = (l.instance == self.instance).then_some(*rev);
                let holder = Holder::new(format!("n{}", l.slot), l.term_at(*rev));
                (Some(holder), ours)
            }
            _ => (None, None),
        }
    }

    /// The answer to the operation in flight: what comes next.
    pub(crate) fn step(&mut self, prog: &mut Prog, res: Res) -> Next {
        match prog {
            Prog::Prepare { created, stage } => match (*stage, res) {
                (0, Res::Info(Some((epoch, age)))) => {
                    self.known_epoch = epoch;
                    Next::Prepared {
                        wait: TTL.saturating_sub(age),
                    }
                }
                (0, Res::Info(None)) => {
                    *stage = 1;
                    Next::Op(Op::CreateBucket)
                }
                (1, r) => {
                    *created = r == Res::Done;
                    *stage = 2;
                    Next::Op(Op::Info)
                }
                (2, Res::Info(Some((epoch, age)))) => {
                    self.known_epoch = epoch;
                    Next::Prepared {
                        wait: if *created {
                            TTL
                        } else {
                            TTL.saturating_sub(age)
                        },
                    }
                }
                _ => Next::Retry,
            },
            Prog::Create { stage, epoch, rev } => match (*stage, res) {
                (10, Res::Done | Res::Exists) => {
                    *stage = 1;
                    Next::Op(Op::Info)
                }
                (1, Res::Info(None)) => Next::Reply(Reply::BucketGone),
                (1, Res::Info(Some((e, _)))) => {
                    self.known_epoch = e;
                    *epoch = e;
                    *stage = 2;
                    Next::Op(Op::Create {
                        value: self.lease(None, e),
                    })
                }
                (2, Res::Rev(r)) => {
                    *rev = r;
                    *stage = 3;
                    Next::Op(Op::Info)
                }
                (2, Res::Conflict(_)) => {
                    *stage = 4;
                    Next::Op(Op::Get { at_least: None })
                }
                (3, Res::Info(now)) => {
                    if now.map(|(e, _)| e) == Some(*epoch) {
                        Next::Reply(Reply::Created {
                            revision: *rev,
                            epoch: *epoch,
                        })
                    } else {
                        Next::Reply(Reply::BucketGone)
                    }
                }
                (4, r) => Next::Reply(self.conflict(&r)),
                _ => Next::Reply(Reply::Failed),
            },
            Prog::Write {
                reclaim,
                base,
                stage,
                epoch,
                new_rev,
            } => match (*stage, res) {
                (0, Res::Rev(r)) if *reclaim => {
                    *new_rev = r;
                    *stage = 1;
                    Next::Op(Op::Info)
                }
                (0, Res::Rev(r)) => Next::Reply(Reply::Updated {
                    revision: r,
                    epoch: *epoch,
                }),
                (0, Res::Conflict(_)) => {
                    *stage = 2;
                    // (never older than the conflict: past the conditioned revision)
                    Next::Op(Op::Get {
                        at_least: Some(*base + 1),
                    })
                }
                (0, Res::NoBucket) => {
                    *stage = 3;
                    Next::Op(Op::Info)
                }
                (1, Res::Info(now)) => {
                    if now.map(|(e, _)| e) == Some(*epoch) {
                        Next::Reply(Reply::Updated {
                            revision: *new_rev,
                            epoch: *epoch,
                        })
                    } else {
                        Next::Reply(Reply::BucketGone)
                    }
                }
                (2, r) => Next::Reply(self.conflict(&r)),
                (3, Res::Info(None)) => Next::Reply(Reply::BucketGone),
                _ => Next::Reply(Reply::Failed),
            },
            Prog::Resign { rev, tries, stage } => match (*stage, res) {
                (0, Res::Done) => Next::Reply(Reply::Resigned),
                (0, Res::Conflict(_)) if *tries < 1 => {
                    *stage = 1;
                    Next::Op(Op::Get { at_least: None })
                }
                (0, Res::Conflict(_)) => Next::Reply(Reply::Resigned),
                (0, Res::NoBucket) => {
                    *stage = 2;
                    Next::Op(Op::Info)
                }
                (1, r) => match self.holder(&r) {
                    (_, Some(ours)) => {
                        *rev = ours;
                        *tries += 1;
                        *stage = 0;
                        Next::Op(Op::Delete { rev: ours })
                    }
                    _ => Next::Reply(Reply::Resigned),
                },
                (2, Res::Info(None)) => Next::Reply(Reply::BucketGone),
                _ => Next::Reply(Reply::Failed),
            },
        }
    }

    /// A conflict's reply, from the read that followed it.
    fn conflict(&mut self, read: &Res) -> Reply {
        let (holder, ours) = self.holder(read);
        if let Some(h) = &holder {
            // (a holder's newer epoch was vetted by its election)
            self.known_epoch = self.known_epoch.max(h.term.epoch);
        }
        Reply::Conflict { holder, ours }
    }
}
