//! [`ConsumerStats`]: counters shared by a consumer's clones.

use std::{
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

/// Counters and liveness of a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStats {
    /// Messages received.
    pub delivered: u64,
    /// Messages acknowledged.
    pub acked: u64,
    /// Messages nak'ed for redelivery.
    pub naked: u64,
    /// Failed messages held by natty for a retry in place (the consumer orders by key).
    pub held: u64,
    /// Messages terminated.
    pub termed: u64,
    /// Messages sent to the dead-letter subject.
    pub dead_lettered: u64,
    /// Messages received that had been delivered before.
    pub redelivered: u64,
    /// Ordered by key: messages this consumer had already handled and acknowledged that the
    /// server delivered again (a reset of the durable; possibly a consumer-leader failover), acked
    /// again without running the handler.
    pub replays_skipped: u64,
    /// Pull requests re-issued after a stall or error.
    pub repulls: u64,
    /// Exclusive and ordered by key: times deliveries went missing on the way (a gap in the
    /// consumer sequence); each time, nothing after the gap ran and the durable was reset to
    /// its ack floor, so they came again first.
    pub gaps: u64,
    /// Error reports dropped because the error channel was full.
    pub errors_dropped: u64,
    /// When the last message arrived.
    pub last_activity: Option<SystemTime>,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) delivered: AtomicU64,
    pub(super) acked: AtomicU64,
    pub(super) naked: AtomicU64,
    pub(super) held: AtomicU64,
    pub(super) termed: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    pub(super) redelivered: AtomicU64,
    pub(super) replays_skipped: AtomicU64,
    pub(super) repulls: AtomicU64,
    pub(super) gaps: AtomicU64,
    pub(super) errors_dropped: AtomicU64,
    last_activity: Mutex<Option<SystemTime>>,
}

impl Counters {
    pub(super) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn touch(&self) {
        *self
            .last_activity
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(SystemTime::now());
    }

    pub(super) fn snapshot(&self) -> ConsumerStats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ConsumerStats {
            delivered: l(&self.delivered),
            acked: l(&self.acked),
            naked: l(&self.naked),
            held: l(&self.held),
            termed: l(&self.termed),
            dead_lettered: l(&self.dead_lettered),
            redelivered: l(&self.redelivered),
            replays_skipped: l(&self.replays_skipped),
            repulls: l(&self.repulls),
            gaps: l(&self.gaps),
            errors_dropped: l(&self.errors_dropped),
            last_activity: *self
                .last_activity
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        }
    }
}
