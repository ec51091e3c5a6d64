//! The bound of a [`BatchPublisher`](super::BatchPublisher)'s queue, with hysteresis.
//!
//! A bounded channel wakes a waiting sender for every place the pump frees: with the queue
//! full (the pump is the slower side under load) that is one cross-thread wake-up, and often
//! a context switch, per message — measured at 0.22 context switches per message, against
//! 0.04 for raw async-nats. Here a sender that finds the queue full sleeps until it has drained
//! to half, so a busy publisher wakes its senders once per half a queue.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
};

use tokio::sync::Notify;

/// Places in the queue: reserved by senders, freed by the pump.
#[derive(Debug)]
pub(super) struct Gate {
    queued: AtomicUsize,
    capacity: usize,
    /// Senders waiting for room (they are woken once the queue is down to half).
    waiting: AtomicUsize,
    room: Notify,
    closed: AtomicBool,
}

impl Gate {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            queued: AtomicUsize::new(0),
            capacity,
            waiting: AtomicUsize::new(0),
            room: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Reserves a place if there is one now.
    pub(super) fn try_reserve(&self) -> bool {
        if self.queued.fetch_add(1, SeqCst) < self.capacity {
            return true;
        }
        // Full: undo. The undo can be the step that brings the count down to the low mark
        // (the pump freed places meanwhile), so it wakes waiters like a release would.
        self.release();
        false
    }

    /// Waits for a place; `false` once the pump has ended (nothing will free one).
    pub(super) async fn reserve(&self) -> bool {
        if self.is_closed() {
            return false;
        }
        if self.try_reserve() {
            return true;
        }
        self.waiting.fetch_add(1, SeqCst);
        let reserved = loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            // Registered before the check: a release between the check and the await is not
            // lost.
            notified.as_mut().enable();
            if self.is_closed() {
                break false;
            }
            if self.try_reserve() {
                break true;
            }
            notified.await;
        };
        self.waiting.fetch_sub(1, SeqCst);
        reserved
    }

    /// Frees a place (the pump took a message, or a reservation was given up).
    pub(super) fn release(&self) {
        let before = self.queued.fetch_sub(1, SeqCst);
        if before <= self.capacity / 2 + 1 && self.waiting.load(SeqCst) > 0 {
            self.room.notify_waiters();
        }
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(SeqCst)
    }

    /// Closes the gate when the returned guard is dropped (the pump's end, however it ends).
    pub(super) fn close_on_drop(self: &Arc<Self>) -> CloseOnDrop {
        CloseOnDrop(self.clone())
    }
}

/// Closes its [`Gate`] and wakes every waiting sender when dropped.
#[derive(Debug)]
pub(super) struct CloseOnDrop(Arc<Gate>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.closed.store(true, SeqCst);
        self.0.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::Gate;

    #[tokio::test]
    async fn a_full_gate_wakes_its_sender_at_half_and_not_before() {
        let gate = Arc::new(Gate::new(4));
        for _ in 0..4 {
            assert!(gate.try_reserve());
        }
        assert!(!gate.try_reserve(), "full");
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.reserve().await }
        });
        // The sender finds the queue full and waits.
        while gate.waiting.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        gate.release(); // 3 queued: above half
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "woken above the low mark");
        gate.release(); // 2 queued: half
        let reserved = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert!(matches!(reserved, Ok(Ok(true))), "{reserved:?}");
    }

    #[tokio::test]
    async fn a_capacity_of_one_never_strands_a_sender() {
        let gate = Arc::new(Gate::new(1));
        for _ in 0..10_000 {
            assert!(
                tokio::time::timeout(Duration::from_secs(5), gate.reserve())
                    .await
                    .unwrap()
            );
            let g = gate.clone();
            tokio::spawn(async move { g.release() });
        }
    }

    #[tokio::test]
    async fn senders_waiting_on_a_gate_whose_pump_ended_are_refused() {
        let gate = Arc::new(Gate::new(1));
        assert!(gate.try_reserve());
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.reserve().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(gate.close_on_drop());
        let reserved = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert!(matches!(reserved, Ok(Ok(false))), "{reserved:?}");
        assert!(!gate.reserve().await);
    }
}
