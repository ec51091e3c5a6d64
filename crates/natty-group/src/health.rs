//! What a member sees failing: [`Health`], [`Problem`], [`Area`].
//!
//! A failure that may heal (the server not answering, a lease bucket someone configured
//! differently, a take-over refused) is retried, and it is *visible*: in
//! [`ConsumerGroup::health`](crate::ConsumerGroup::health), as a
//! [`GroupEvent::Failing`](crate::GroupEvent::Failing) and in the `natty_group_failures_total`
//! metric — not only in a log line. What cannot heal ends `join` with an error.

use std::{
    collections::BTreeMap,
    fmt,
    time::{Duration, Instant},
};

use natty_election::Term;

use crate::ErrorKind;

/// What failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Area {
    /// Announcing this member or watching the others (`<name>_members`).
    Membership,
    /// A partition's election: its lease bucket refused (e.g. made with another TTL).
    Lease,
    /// Taking a won partition's durable over (the server did not answer, a later term's
    /// durable exists, the lease ended meanwhile).
    TakeOver,
    /// A partition's consumer stopped with an error (its durable or stream gone, the client
    /// closed).
    Consumer,
    /// The stream is missing.
    Stream,
}

impl Area {
    /// Lower-case name (metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Membership => "membership",
            Self::Lease => "lease",
            Self::TakeOver => "take_over",
            Self::Consumer => "consumer",
            Self::Stream => "stream",
        }
    }
}

impl fmt::Display for Area {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something failing now: the latest failure of one area (of one partition), and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Problem {
    /// What failed.
    pub area: Area,
    /// The partition, for a partition's problem.
    pub partition: Option<u32>,
    /// The kind of the latest failure.
    pub kind: ErrorKind,
    /// The latest failure, with its cause.
    pub error: String,
    /// When it started failing (since the last success).
    pub since: Instant,
    /// When it failed last.
    pub last: Instant,
    /// Failures since `since`.
    pub failures: u64,
}

/// A member's state: what it owns, how many members it counts, what is failing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// Whether `join` is running.
    pub joined: bool,
    /// Live members as last counted, this one included (0 when not joined).
    pub members: usize,
    /// ⌈partitions / members⌉ (0 when not joined).
    pub fair_share: usize,
    /// The partitions this member consumes now, with their lease terms.
    pub owned: BTreeMap<u32, Term>,
    /// What is failing: each area (per partition) once, with its latest failure. A problem
    /// goes when its area succeeds again, or when it has not recurred for a while (twice
    /// the TTL, at least 10 s: e.g. another member took the partition over).
    pub problems: Vec<Problem>,
}

impl Health {
    /// Nothing is failing.
    pub fn is_healthy(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The problems a member has now.
#[derive(Debug)]
pub(crate) struct Problems {
    open: BTreeMap<(Area, Option<u32>), Problem>,
    /// How long a problem stays without recurring.
    stale_after: Duration,
}

impl Problems {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            open: BTreeMap::new(),
            stale_after: (ttl * 2).max(Duration::from_secs(10)),
        }
    }

    /// A failure of `area` (of `partition`) at `now`, begun at `began` if it is new (a
    /// failure noticed only after waiting began before); returns the problem as it is now.
    pub(crate) fn failed(
        &mut self,
        area: Area,
        partition: Option<u32>,
        kind: ErrorKind,
        error: String,
        now: Instant,
        began: Instant,
    ) -> Problem {
        let p = self
            .open
            .entry((area, partition))
            .or_insert_with(|| Problem {
                area,
                partition,
                kind,
                error: String::new(),
                since: began.min(now),
                last: now,
                failures: 0,
            });
        p.kind = kind;
        p.error = error;
        p.last = now;
        p.failures += 1;
        p.clone()
    }

    /// `area` (of `partition`) succeeded: whether a problem ended.
    pub(crate) fn recovered(&mut self, area: Area, partition: Option<u32>) -> bool {
        self.open.remove(&(area, partition)).is_some()
    }

    /// The problems not yet stale at `now`, oldest first.
    pub(crate) fn current(&mut self, now: Instant) -> Vec<Problem> {
        let stale_after = self.stale_after;
        self.open
            .retain(|_, p| now.saturating_duration_since(p.last) < stale_after);
        let mut all: Vec<Problem> = self.open.values().cloned().collect();
        all.sort_by_key(|p| p.since);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_counts_its_failures_until_it_recovers_or_goes_stale() {
        let t0 = Instant::now();
        let mut p = Problems::new(Duration::from_secs(2));
        let s = Duration::from_secs(1);
        p.failed(
            Area::TakeOver,
            Some(3),
            ErrorKind::Stream,
            "first".into(),
            t0,
            t0,
        );
        let now = p.failed(
            Area::TakeOver,
            Some(3),
            ErrorKind::Stream,
            "second".into(),
            t0 + s,
            t0 + s,
        );
        assert_eq!(
            (now.failures, now.since, now.error.as_str()),
            (2, t0, "second")
        );
        p.failed(
            Area::Membership,
            None,
            ErrorKind::Kv,
            "announce".into(),
            t0 + s,
            t0 + s,
        );
        let all = p.current(t0 + s);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].area, Area::TakeOver, "oldest first");
        assert!(p.recovered(Area::Membership, None));
        assert!(!p.recovered(Area::Membership, None));
        // Not recurring for 10 s (the floor): gone.
        assert_eq!(p.current(t0 + s + Duration::from_secs(10)).len(), 0);
    }

    #[test]
    fn a_failure_noticed_late_begins_when_the_wait_began() {
        let t0 = Instant::now();
        let mut p = Problems::new(Duration::from_secs(2));
        let later = t0 + Duration::from_secs(30);
        let got = p.failed(
            Area::Consumer,
            Some(0),
            ErrorKind::StreamNotFound,
            "gone".into(),
            later,
            t0,
        );
        assert_eq!(got.since, t0);
    }
}
