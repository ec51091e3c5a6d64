//! [`FenceQueue`]: the leader's fenced writes waiting for their turn, and what becomes of each.

use alloc::{collections::VecDeque, vec::Vec};

use crate::{Holder, Reply, Term};

/// What became of the fenced write whose batch was answered ([`FenceQueue::settle`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Applied, all of it, together with the lease check: tell the caller `Ok`.
    Applied,
    /// Refused: the lease key moved on (someone else holds it, `holder` if known). Nothing
    /// was applied.
    Deposed {
        /// Who holds the key now, if known.
        holder: Option<Holder>,
    },
    /// Refused: the bucket is gone, and the lease with it. Nothing was applied.
    BucketGone,
    /// No verdict from the server (no answer, or one that could not be read): what the
    /// driver knows about the failure decides between "not applied" and "unknown".
    Failed,
}

/// Why [`FenceQueue::push`] handed a write back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The write's term is not the one the machine leads in (or it does not lead).
    NotLeading,
    /// The queue is full; the driver takes more only when [`FenceQueue::has_room`].
    Full,
}

/// The driver's queue of fenced writes (`J`: a write and whoever waits for its answer).
///
/// The policy, in one place:
/// - a write is queued only while the machine leads in the write's term, and only while
///   there is room (`capacity` writes, the one in flight included): the driver stops taking
///   writes from the leader's work when it is full, which is the work's back-pressure;
/// - writes go out one at a time, in order, each as the machine's [`Request::Fence`]
///   (`begin`); when the term ends, queued writes are answered "deposed" unsent (`take_stale`,
///   `end`) and the one in flight "unknown";
/// - a write refused because of a write of ours that landed unseen (the key is still ours,
///   at a later revision) goes again first, on the revision that write left (`settle`).
///
/// [`Request::Fence`]: crate::Request::Fence
///
/// ```
/// use natty_election_proto::{FenceQueue, Reply, Term, Verdict};
///
/// let term = Term::new(1, 7);
/// let mut q = FenceQueue::new(2);
/// q.push(term, "a", Some(term)).unwrap();
/// q.push(term, "b", Some(term)).unwrap();
/// assert!(!q.has_room());
/// assert_eq!(q.begin(), Some(&"a"));
/// let (job, verdict) = q.settle(&Reply::Updated { revision: 8, epoch: 1 }).unwrap();
/// assert_eq!((job, verdict), ("a", Verdict::Applied));
/// assert!(q.wants_fence(), "b waits for its turn");
/// ```
#[derive(Debug)]
pub struct FenceQueue<J> {
    queued: VecDeque<(Term, J)>,
    in_flight: Option<(Term, J)>,
    capacity: usize,
}

impl<J> FenceQueue<J> {
    /// An empty queue holding at most `capacity` writes (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            queued: VecDeque::new(),
            in_flight: None,
            capacity: capacity.max(1),
        }
    }

    /// Whether another write fits.
    pub fn has_room(&self) -> bool {
        self.queued.len() + usize::from(self.in_flight.is_some()) < self.capacity
    }

    /// Writes waiting (not the one in flight).
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    /// Whether no write waits (one may be in flight).
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Whether a write waits for its turn: tell the machine
    /// ([`Machine::on_fence_wanted`](crate::Machine::on_fence_wanted)).
    pub fn wants_fence(&self) -> bool {
        !self.queued.is_empty()
    }

    /// Queues `job` of `term`, the machine leading in `leading`; hands it back if the machine
    /// does not lead in `term` or there is no room.
    pub fn push(&mut self, term: Term, job: J, leading: Option<Term>) -> Result<(), (J, Refusal)> {
        if leading != Some(term) {
            return Err((job, Refusal::NotLeading));
        }
        if !self.has_room() {
            return Err((job, Refusal::Full));
        }
        self.queued.push_back((term, job));
        Ok(())
    }

    /// The queued writes of another term than `leading` (all of them if it does not lead):
    /// never to be sent; answer them "deposed".
    pub fn take_stale(&mut self, leading: Option<Term>) -> Vec<J> {
        if self.queued.iter().all(|(t, _)| Some(*t) == leading) {
            return Vec::new();
        }
        let (keep, stale): (VecDeque<_>, VecDeque<_>) = self
            .queued
            .drain(..)
            .partition(|(t, _)| Some(*t) == leading);
        self.queued = keep;
        stale.into_iter().map(|(_, j)| j).collect()
    }

    /// The machine asked for a [`Request::Fence`](crate::Request::Fence): the write to send
    /// with it, now in flight. `None`: none waits (its caller gave up) — send a renew.
    pub fn begin(&mut self) -> Option<&J> {
        debug_assert!(
            self.in_flight.is_none(),
            "one fenced write in flight at a time"
        );
        self.in_flight = self.queued.pop_front();
        self.in_flight.as_ref().map(|(_, j)| j)
    }

    /// The write in flight, if any.
    pub fn in_flight(&self) -> Option<&J> {
        self.in_flight.as_ref().map(|(_, j)| j)
    }

    /// The reply to the request that carried the write in flight: the write and its verdict.
    /// `None` when no write was in flight, or when it goes again: refused only because a write
    /// of ours landed unseen (`Conflict { ours: Some(_) }`, the key still ours), it is queued
    /// first, for the revision that write left.
    pub fn settle(&mut self, reply: &Reply) -> Option<(J, Verdict)> {
        let (term, job) = self.in_flight.take()?;
        let verdict = match reply {
            Reply::Updated { .. } => Verdict::Applied,
            Reply::Conflict { ours: Some(_), .. } => {
                self.queued.push_front((term, job));
                return None;
            }
            Reply::Conflict { holder, .. } => Verdict::Deposed {
                holder: holder.clone(),
            },
            Reply::BucketGone => Verdict::BucketGone,
            _ => Verdict::Failed,
        };
        Some((job, verdict))
    }

    /// The term ended (or the election stopped): the write in flight, whose outcome is
    /// unknown, and the queued ones, never sent.
    pub fn end(&mut self) -> (Option<J>, Vec<J>) {
        (
            self.in_flight.take().map(|(_, j)| j),
            self.queued.drain(..).map(|(_, j)| j).collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Term = Term::new(1, 7);
    const OLD: Term = Term::new(1, 3);

    fn updated() -> Reply {
        Reply::Updated {
            revision: 9,
            epoch: 1,
        }
    }

    #[test]
    fn only_writes_of_the_term_led_are_queued_and_only_while_there_is_room() {
        let mut q = FenceQueue::new(2);
        assert_eq!(q.push(OLD, 1, Some(T)), Err((1, Refusal::NotLeading)));
        assert_eq!(q.push(T, 1, None), Err((1, Refusal::NotLeading)));
        assert_eq!(q.push(T, 1, Some(T)), Ok(()));
        assert_eq!(q.begin(), Some(&1));
        // The write in flight counts against the room.
        assert_eq!(q.push(T, 2, Some(T)), Ok(()));
        assert!(!q.has_room());
        assert_eq!(q.push(T, 3, Some(T)), Err((3, Refusal::Full)));
        assert_eq!(q.settle(&updated()), Some((1, Verdict::Applied)));
        assert!(q.has_room());
        assert!(q.wants_fence());
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn writes_go_one_at_a_time_in_order() {
        let mut q = FenceQueue::new(8);
        for j in 1..=3 {
            q.push(T, j, Some(T)).unwrap();
        }
        let mut sent = vec![];
        while let Some(j) = q.begin().copied() {
            sent.push(j);
            assert_eq!(q.in_flight(), Some(&j));
            assert_eq!(q.settle(&updated()), Some((j, Verdict::Applied)));
        }
        assert_eq!(sent, [1, 2, 3]);
        assert!(!q.wants_fence());
        assert_eq!(q.settle(&updated()), None, "nothing in flight");
    }

    #[test]
    fn verdicts_follow_the_reply() {
        let holder = Holder::new("b", Term::new(1, 12));
        let cases = [
            (updated(), Some(Verdict::Applied)),
            (
                Reply::Conflict {
                    holder: Some(holder.clone()),
                    ours: None,
                },
                Some(Verdict::Deposed {
                    holder: Some(holder),
                }),
            ),
            (Reply::BucketGone, Some(Verdict::BucketGone)),
            (Reply::Failed, Some(Verdict::Failed)),
            // Refused because our own unseen write moved the key on: it goes again, first.
            (
                Reply::Conflict {
                    holder: None,
                    ours: Some(11),
                },
                None,
            ),
        ];
        for (reply, verdict) in cases {
            let mut q = FenceQueue::new(4);
            q.push(T, 1, Some(T)).unwrap();
            q.push(T, 2, Some(T)).unwrap();
            q.begin();
            assert_eq!(q.settle(&reply).map(|(_, v)| v), verdict, "{reply:?}");
            if verdict.is_none() {
                assert_eq!(q.begin(), Some(&1), "the refused write goes first again");
            } else {
                assert_eq!(q.begin(), Some(&2));
            }
        }
    }

    #[test]
    fn a_term_that_ends_leaves_nothing_queued() {
        let mut q = FenceQueue::new(4);
        q.push(T, 1, Some(T)).unwrap();
        q.push(T, 2, Some(T)).unwrap();
        assert!(q.take_stale(Some(T)).is_empty());
        q.begin();
        // A new term: the queued write of the old one is never sent.
        assert_eq!(q.take_stale(Some(Term::new(1, 20))), vec![2]);
        assert_eq!(q.end(), (Some(1), vec![]));
        q.push(T, 3, Some(T)).unwrap();
        assert_eq!(q.take_stale(None), vec![3]);
        assert_eq!(q.end(), (None, vec![]));
    }
}
