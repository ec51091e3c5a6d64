//! Per-key order ([`ConsumeOptions::ordered_by_key`](super::ConsumeOptions::ordered_by_key)):
//! which waiting message may start next.
//!
//! Waiting messages sit in arrival (stream) order. A message may start when no handler runs
//! for its key and no earlier waiting message of its key is held back (a failed message
//! waiting for its retry delay is put back at the front, so it blocks its key's later
//! messages until it is handled or given up on). Memory: the keys and sequences of held
//! messages (at most `batch` waiting plus `concurrency` running), nothing per key once its
//! messages are settled, and the sequences of the messages acked above the durable's ack
//! floor — at most the last [`REMEMBERED`] (about 1.5 MB); those at or below the floor are
//! forgotten when the floor is read (every [`PRUNE_EVERY`](super::PRUNE_EVERY) while any are
//! remembered): a reset replays from the floor, never below it.
//!
//! A message acked by this consumer that the server delivers again is acked again without
//! running its handler: a reset of the durable (ADR-60; a late one from a previous reader)
//! replays from the ack floor with a delivery count of 1, and so may a consumer-leader
//! failover that lost recorded deliveries (not seen in our runs); handling those again would
//! run a key's earlier messages after its later ones within one run. Only sequences known to be acked are skipped, so nothing is lost: a
//! replay older than the last [`REMEMBERED`] acks runs again (at-least-once).

use std::{
    collections::{HashSet, VecDeque},
    fmt,
    sync::Arc,
};

use async_nats::jetstream;
use tokio::time::Instant;
use tracing::debug;

use super::Waiting;
use crate::Message;

/// A message's key, or `None`.
type KeyFn = dyn Fn(&Message) -> Option<String> + Send + Sync;

/// The key messages are ordered by; messages with the same key are handled one at a time, in
/// stream order. `None`: no key, the message is ordered with nothing.
#[derive(Clone)]
pub struct OrderKey {
    f: Arc<KeyFn>,
    what: String,
}

impl OrderKey {
    /// The key is computed by `key_fn`.
    pub fn from_fn<F>(key_fn: F) -> Self
    where
        F: Fn(&Message) -> Option<String> + Send + Sync + 'static,
    {
        Self {
            f: Arc::new(key_fn),
            what: "a function".to_owned(),
        }
    }

    /// The key is subject token `index` (0-based: in `orders.eu.42`, token 2 is `42`);
    /// a subject with fewer tokens has no key.
    pub fn subject_token(index: usize) -> Self {
        Self {
            f: Arc::new(move |m: &Message| m.subject.split('.').nth(index).map(str::to_owned)),
            what: format!("subject token {index}"),
        }
    }

    /// The key is the first value of header `name`; a message without it has no key.
    pub fn header(name: impl Into<String>) -> Self {
        let name = name.into();
        Self {
            what: format!("header {name:?}"),
            f: Arc::new(move |m: &Message| m.header(&name).map(str::to_owned)),
        }
    }

    pub(super) fn of(&self, m: &Message) -> Option<String> {
        (self.f)(m)
    }
}

impl fmt::Debug for OrderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OrderKey({})", self.what)
    }
}

/// How many acked sequences are remembered to recognise a replay.
pub(super) const REMEMBERED: usize = 1 << 16;

/// Which keys are busy, which sequences are held, and which were acked lately.
#[derive(Debug)]
pub(super) struct Keys {
    key: OrderKey,
    /// Keys with a handler running.
    running: HashSet<Arc<str>>,
    /// Stream sequences waiting or running: a redelivery of one of them is not queued twice.
    held: HashSet<u64>,
    /// The last [`REMEMBERED`] stream sequences acked, and the order they were acked in.
    acked: HashSet<u64>,
    acked_order: VecDeque<u64>,
}

/// What to do with an arriving message.
pub(super) enum Arrival {
    /// Queue it.
    Queue(Waiting),
    /// Already held (waiting or running): nothing to do.
    Held,
    /// Already handled and acked by this consumer: ack it again, do not run it.
    Replay(jetstream::Message),
}

impl Keys {
    pub(super) fn new(key: OrderKey) -> Self {
        Self {
            key,
            running: HashSet::new(),
            held: HashSet::new(),
            acked: HashSet::new(),
            acked_order: VecDeque::new(),
        }
    }

    /// An arriving message: to queue with its key; `Held` if its sequence is already held (the
    /// server redelivered it while we still hold the earlier delivery, e.g. after a missed
    /// in-progress ack: a waiting one takes the newer delivery's handle, in place); `Replay`
    /// if this consumer acked it already.
    pub(super) fn arrive(
        &mut self,
        m: jetstream::Message,
        seq: u64,
        waiting: &mut VecDeque<Waiting>,
    ) -> Arrival {
        if seq != 0 && self.acked.contains(&seq) {
            debug!(
                seq,
                "replay of a message already handled and acked: not run again"
            );
            return Arrival::Replay(m);
        }
        if seq != 0 && !self.held.insert(seq) {
            debug!(
                seq,
                "redelivery of a message already held: not queued twice"
            );
            if let Some(w) = waiting.iter_mut().find(|w| w.seq == seq) {
                w.message = m;
            }
            return Arrival::Held;
        }
        let key = self.key.of(&Message::from_jetstream(&m)).map(Arc::from);
        let mut w = Waiting::new(m, seq);
        w.key = key;
        Arrival::Queue(w)
    }

    /// Takes the first waiting message that may start now, marking its key running.
    pub(super) fn pick(
        &mut self,
        waiting: &mut VecDeque<Waiting>,
        now: Instant,
    ) -> Option<Waiting> {
        let i = self.choose(waiting.iter().map(|w| (w.key.as_ref(), w.not_before)), now)?;
        waiting.remove(i)
    }

    /// The index of the first of `queue` (key, not before) that may start now; marks its key
    /// running.
    fn choose<'a>(
        &mut self,
        queue: impl Iterator<Item = (Option<&'a Arc<str>>, Option<Instant>)>,
        now: Instant,
    ) -> Option<usize> {
        // Keys blocked by an earlier waiting message (a retry not yet due); rarely non-empty.
        let mut blocked: Vec<&Arc<str>> = Vec::new();
        for (i, (key, not_before)) in queue.enumerate() {
            let due = not_before.is_none_or(|t| t <= now);
            match key {
                None if due => return Some(i),
                None => {}
                Some(k) if self.running.contains(k) || blocked.contains(&k) => {}
                Some(k) if !due => blocked.push(k),
                Some(k) => {
                    self.running.insert(k.clone());
                    return Some(i);
                }
            }
        }
        None
    }

    /// A handler finished: its key may run again. `settled`: the message is done with (acked,
    /// given up on, or abandoned), not held for a retry; `acked`: it was handled and acked.
    pub(super) fn finished(
        &mut self,
        key: Option<&Arc<str>>,
        seq: u64,
        settled: bool,
        acked: bool,
    ) {
        if let Some(k) = key {
            self.running.remove(k);
        }
        if settled {
            self.held.remove(&seq);
        }
        if acked && seq != 0 && self.acked.insert(seq) {
            self.acked_order.push_back(seq);
            if self.acked_order.len() > REMEMBERED
                && let Some(old) = self.acked_order.pop_front()
            {
                self.acked.remove(&old);
            }
        }
    }

    /// How many acked sequences are remembered.
    pub(super) fn remembered(&self) -> usize {
        self.acked.len()
    }

    /// Forgets the acked sequences at or below the durable's ack floor `floor`: the server
    /// never delivers those again (a reset goes back to the floor, not below it). Returns how
    /// many were forgotten.
    pub(super) fn forget_acked_through(&mut self, floor: u64) -> usize {
        let before = self.acked.len();
        self.acked.retain(|s| *s > floor);
        self.acked_order.retain(|s| *s > floor);
        let forgotten = before - self.acked.len();
        debug!(
            floor,
            forgotten,
            remembered = self.acked.len(),
            "acked sequences at or below the ack floor forgotten"
        );
        forgotten
    }

    /// Forgets the acked sequences (the durable or its stream was created again).
    pub(super) fn forget_acked(&mut self) {
        debug!(
            forgotten = self.acked.len(),
            "durable created again: acked sequences forgotten"
        );
        self.acked.clear();
        self.acked_order.clear();
    }

    /// When the earliest held retry is due.
    pub(super) fn next_due(waiting: &VecDeque<Waiting>) -> Option<Instant> {
        waiting.iter().filter_map(|w| w.not_before).min()
    }
}

#[cfg(test)]
mod tests;
