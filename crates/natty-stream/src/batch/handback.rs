//! Where a [`BatchPublisher`](super::BatchPublisher)'s failed messages wait to be taken, and
//! the accounting that lets a strict flush ([`flush_all`](super::BatchPublisher::flush_all))
//! say that nothing queued before it was lost.
//!
//! - **Held, bounded.** Until the error channel is taken, failures are held here for
//!   `flush_all` and `close`; at most `capacity` of them, then `send` waits (back-pressure) and
//!   `try_send` says `Full` until a flush, a close or `take_errors` takes them. Memory stays
//!   bounded by `capacity` plus what was already queued or in flight.
//! - **Each failure returned once, none unaccounted.** A strict flush covers every message
//!   numbered up to its *mark* (the last message the pump had taken when the flush reached it).
//!   When it ends it takes the held failures it covers; a failure it covers that someone else
//!   took meanwhile (an overlapping flush, a close, the error channel) is counted as *returned
//!   elsewhere*. So a strict flush returns `Ok` only if every message queued before it was
//!   stored, or its failure was handed out before the flush began.
//! - **Cancel-safe.** The flush takes its failures itself, under the lock, after the pump said
//!   its mark is done: a `flush_all` dropped at any point leaves them held for the next one.

use std::{
    collections::VecDeque,
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use tokio::sync::mpsc;
use tracing::warn;

use super::FailedMessage;

/// A strict flush under way.
#[derive(Debug)]
struct Watch {
    id: u64,
    /// The last message number it covers (`None` until the pump took its command: every
    /// number given so far is at most the mark to come).
    mark: Option<u64>,
    /// Failures it covers that were handed out elsewhere while it ran.
    elsewhere: u64,
}

impl Watch {
    fn covers(&self, seq: u64) -> bool {
        self.mark.is_none_or(|mark| seq <= mark)
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Failures not taken yet, with their message numbers, in the order they failed.
    held: VecDeque<(u64, FailedMessage)>,
    /// The error channel once taken: failures go there instead of being held.
    channel: Option<mpsc::UnboundedSender<FailedMessage>>,
    /// Whether `take_errors` has handed the channel out (once).
    channel_taken: bool,
    watches: Vec<Watch>,
    next_id: u64,
}

impl Inner {
    /// `seqs` were handed out (taken or sent) by someone other than `except`.
    fn handed_out(&mut self, seqs: impl Iterator<Item = u64> + Clone, except: Option<u64>) {
        for w in &mut self.watches {
            if Some(w.id) != except {
                w.elsewhere += seqs.clone().filter(|&s| w.covers(s)).count() as u64;
            }
        }
    }
}

/// The failed messages of one publisher: held (bounded) or sent to the taken error channel.
#[derive(Debug)]
pub(super) struct Handback {
    inner: Mutex<Inner>,
    /// `inner.held.len()`, readable without the lock (checked on every send).
    held: AtomicUsize,
    capacity: usize,
    /// A refused sender warned about it (once per episode).
    warned: AtomicBool,
}

/// What a strict flush took: its failures, and how many of the failures it covers were handed
/// out elsewhere while it ran.
#[derive(Debug, Default)]
pub(super) struct Taken {
    pub(super) failed: Vec<FailedMessage>,
    pub(super) elsewhere: u64,
}

impl Handback {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::default(),
            held: AtomicUsize::new(0),
            capacity,
            warned: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Failures held now.
    pub(super) fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Whether a new message may be queued now (fewer than `capacity` failures held).
    pub(super) fn has_room(&self) -> bool {
        self.held() < self.capacity
    }

    /// Hands back the failure of message `seq` (the pump).
    pub(super) fn give(&self, seq: u64, failed: FailedMessage) {
        let mut inner = self.lock();
        let failed = match &inner.channel {
            Some(channel) => match channel.send(failed) {
                Ok(()) => {
                    inner.handed_out(std::iter::once(seq), None);
                    return;
                }
                // The receiver was dropped: hold it, for a flush or `close`.
                Err(mpsc::error::SendError(failed)) => failed,
            },
            None => failed,
        };
        inner.held.push_back((seq, failed));
        self.held.store(inner.held.len(), Ordering::Release);
    }

    /// The error channel (once): held failures move into it first.
    pub(super) fn take_channel(&self) -> Option<mpsc::UnboundedReceiver<FailedMessage>> {
        let mut inner = self.lock();
        if inner.channel_taken {
            return None;
        }
        inner.channel_taken = true;
        let (tx, rx) = mpsc::unbounded_channel();
        let held = std::mem::take(&mut inner.held);
        inner.handed_out(held.iter().map(|(seq, _)| *seq), None);
        for (_, failed) in held {
            let _ = tx.send(failed);
        }
        inner.channel = Some(tx);
        self.set_held(&inner);
        Some(rx)
    }

    /// Every failure held, taken now (`close`, or a failed flush).
    pub(super) fn take_all(&self) -> Vec<FailedMessage> {
        let mut inner = self.lock();
        let held = std::mem::take(&mut inner.held);
        inner.handed_out(held.iter().map(|(seq, _)| *seq), None);
        self.set_held(&inner);
        held.into_iter().map(|(_, failed)| failed).collect()
    }

    /// A strict flush begins: its id.
    pub(super) fn watch(&self) -> u64 {
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        inner.watches.push(Watch {
            id,
            mark: None,
            elsewhere: 0,
        });
        id
    }

    /// The pump took flush `id`'s command: it covers messages up to `mark`.
    pub(super) fn set_mark(&self, id: u64, mark: u64) {
        if let Some(w) = self.lock().watches.iter_mut().find(|w| w.id == id) {
            w.mark = Some(mark);
        }
    }

    /// Flush `id` is done (its mark is): takes the held failures it covers and ends its watch.
    pub(super) fn finish(&self, id: u64) -> Taken {
        let mut inner = self.lock();
        let Some(i) = inner.watches.iter().position(|w| w.id == id) else {
            return Taken::default();
        };
        let watch = inner.watches.swap_remove(i);
        let (mine, rest): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut inner.held)
            .into_iter()
            .partition(|(seq, _)| watch.covers(*seq));
        inner.held = rest;
        inner.handed_out(mine.iter().map(|(seq, _)| *seq), None);
        self.set_held(&inner);
        Taken {
            failed: mine.into_iter().map(|(_, failed)| failed).collect(),
            elsewhere: watch.elsewhere,
        }
    }

    /// Flush `id` was dropped before it finished: its watch ends, the failures stay held.
    pub(super) fn forget(&self, id: u64) {
        self.lock().watches.retain(|w| w.id != id);
    }

    fn set_held(&self, inner: &Inner) {
        let held = inner.held.len();
        self.held.store(held, Ordering::Release);
        if held < self.capacity {
            self.warned.store(false, Ordering::Release);
        }
    }

    /// A sender was refused for want of room: one warning per episode (until a take).
    pub(super) fn warn_full(&self) {
        if !self.warned.swap(true, Ordering::AcqRel) {
            warn!(
                held = self.held(),
                capacity = self.capacity,
                "the publisher holds as many failed messages as it may: sends fail with Full \
                 until a flush_all, close or take_errors takes them"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::{Handback, Taken};
    use crate::{Error, ErrorKind, FailedMessage, Stored};

    fn failed(n: u64) -> FailedMessage {
        FailedMessage {
            subject: "s".into(),
            payload: Bytes::from(n.to_be_bytes().to_vec()),
            headers: Vec::new(),
            msg_id: n.to_string(),
            attempts: 1,
            stored: Stored::No,
            error: Error::new(ErrorKind::Other, "test"),
        }
    }

    fn numbers(t: &Taken) -> Vec<u64> {
        t.failed.iter().map(|f| f.msg_id.parse().unwrap()).collect()
    }

    #[test]
    fn a_strict_flush_takes_what_it_covers_and_counts_what_others_took() {
        let h = Handback::new(100);
        h.give(1, failed(1));
        let a = h.watch();
        let b = h.watch();
        h.give(3, failed(3));
        h.set_mark(a, 4);
        h.set_mark(b, 10);
        h.give(7, failed(7));
        // B ends first (its task ran first): it takes all three, A learns two of its were taken.
        let tb = h.finish(b);
        assert_eq!((numbers(&tb), tb.elsewhere), (vec![1, 3, 7], 0));
        let ta = h.finish(a);
        assert_eq!((numbers(&ta), ta.elsewhere), (vec![], 2));
        assert_eq!(h.held(), 0);
    }

    #[test]
    fn failures_after_the_mark_stay_for_the_next_flush() {
        let h = Handback::new(100);
        let a = h.watch();
        h.set_mark(a, 2);
        h.give(2, failed(2));
        h.give(3, failed(3));
        let t = h.finish(a);
        assert_eq!((numbers(&t), t.elsewhere), (vec![2], 0));
        assert_eq!(h.held(), 1);
        // A flush dropped half-way leaves them held; close takes them.
        let c = h.watch();
        h.forget(c);
        assert_eq!(h.take_all().len(), 1);
    }

    #[test]
    fn the_error_channel_takes_what_was_held_and_counts_for_open_flushes() {
        let h = Handback::new(100);
        h.give(1, failed(1));
        let a = h.watch();
        let mut rx = h.take_channel().expect("first take");
        assert!(h.take_channel().is_none(), "once");
        h.give(2, failed(2));
        assert_eq!(h.held(), 0);
        assert_eq!(rx.try_recv().unwrap().msg_id, "1");
        assert_eq!(rx.try_recv().unwrap().msg_id, "2");
        let t = h.finish(a);
        assert_eq!((numbers(&t), t.elsewhere), (vec![], 2));
        // A dropped receiver: failures are held again, not lost.
        drop(rx);
        h.give(3, failed(3));
        assert_eq!(h.take_all().len(), 1);
    }

    #[test]
    fn room_is_back_after_a_take() {
        let h = Handback::new(2);
        h.give(1, failed(1));
        assert!(h.has_room());
        h.give(2, failed(2));
        assert!(!h.has_room());
        assert_eq!(h.take_all().len(), 2);
        assert!(h.has_room());
    }
}
