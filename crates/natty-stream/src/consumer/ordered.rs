//! Per-key order ([`ConsumeOptions::ordered_by_key`](super::ConsumeOptions::ordered_by_key)):
//! which waiting message may start next.
//!
//! A message may start when no handler runs for its key and no earlier waiting message of its
//! key is held back (a failed message waiting for its retry delay goes back to the front of
//! its key, so it blocks its key's later messages until it is handled or given up on). Among
//! the messages that may start, the one that arrived first goes first.
//!
//! Cost per event: O(log n) in the waiting messages. Each key has its own queue; only a key's
//! head is a candidate, in an ordered map by arrival position (due now) or a heap by due time
//! (a retry not yet due). Candidates are not removed when they go stale (their key started
//! running, a retry went in front of them): a stale one is skipped when it comes up, and every
//! event adds at most one, so skipping costs O(log n) amortised.
//!
//! Memory: the waiting messages (at most `batch`) and the keys and sequences of the running
//! ones, nothing per key once its messages are settled, and the sequences of the messages
//! acked above the durable's ack floor — at most the last [`REMEMBERED`] (about 1.5 MB); those
//! at or below the floor are forgotten when the floor is read (every
//! [`PRUNE_EVERY`](super::PRUNE_EVERY) while any are remembered): a reset replays from the
//! floor, never below it.
//!
//! A message acked by this consumer that the server delivers again is acked again without
//! running its handler: a reset of the durable (ADR-60; a late one from a previous reader)
//! replays from the ack floor with a delivery count of 1, and so may a consumer-leader
//! failover that lost recorded deliveries (not seen in our runs); handling those again would
//! run a key's earlier messages after its later ones within one run. Only sequences known to
//! be acked are skipped, so nothing is lost: a replay older than the last [`REMEMBERED`] acks
//! runs again (at-least-once).

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque},
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

/// What the key order needs to know of a waiting item.
pub(super) trait Lane {
    /// Its arrival position (unique; a retry keeps its own).
    fn pos(&self) -> u64;
    /// Its key (`None`: ordered with nothing).
    fn key(&self) -> Option<&Arc<str>>;
    /// Not started before this (a retry's delay).
    fn not_before(&self) -> Option<Instant>;
}

impl Lane for Waiting {
    fn pos(&self) -> u64 {
        self.pos
    }

    fn key(&self) -> Option<&Arc<str>> {
        self.key.as_ref()
    }

    fn not_before(&self) -> Option<Instant> {
        self.not_before
    }
}

/// Waiting items in key order, and which keys are busy.
#[derive(Debug)]
pub(super) struct Lanes<T> {
    /// Keys with a handler running.
    running: HashSet<Arc<str>>,
    /// The next arrival position.
    next_pos: u64,
    /// Items waiting.
    len: usize,
    /// Each key's waiting items, by position (no entry for a key with none waiting).
    queues: HashMap<Arc<str>, VecDeque<T>>,
    /// Waiting items without a key, by position.
    keyless: BTreeMap<u64, T>,
    /// Candidates due now: position and key (possibly stale).
    ready: BTreeMap<u64, Option<Arc<str>>>,
    /// Candidates not due yet, earliest first (possibly stale).
    later: BinaryHeap<Reverse<Later>>,
}

/// A candidate not due yet: when it is due, its position and its key.
type Later = (Instant, u64, Option<Arc<str>>);

impl<T: Lane> Lanes<T> {
    pub(super) fn new() -> Self {
        Self {
            running: HashSet::new(),
            next_pos: 0,
            len: 0,
            queues: HashMap::new(),
            keyless: BTreeMap::new(),
            ready: BTreeMap::new(),
            later: BinaryHeap::new(),
        }
    }

    /// Items waiting.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// A position for an arriving item (after every earlier one).
    pub(super) fn next_pos(&mut self) -> u64 {
        let pos = self.next_pos;
        self.next_pos += 1;
        pos
    }

    /// Queues an item in its place (by position); the head of an idle key (or a keyless item)
    /// becomes a candidate.
    pub(super) fn push(&mut self, item: T) {
        self.len += 1;
        let (pos, not_before) = (item.pos(), item.not_before());
        let Some(k) = item.key().cloned() else {
            self.keyless.insert(pos, item);
            self.candidate(pos, None, not_before);
            return;
        };
        let q = self.queues.entry(k.clone()).or_default();
        let at = q.partition_point(|x| x.pos() < pos);
        q.insert(at, item);
        if at == 0 && !self.running.contains(&k) {
            self.candidate(pos, Some(k), not_before);
        }
    }

    fn candidate(&mut self, pos: u64, key: Option<Arc<str>>, not_before: Option<Instant>) {
        match not_before {
            Some(t) => self.later.push(Reverse((t, pos, key))),
            None => {
                self.ready.insert(pos, key);
            }
        }
    }

    /// Takes the item that may start now and arrived first, marking its key running.
    pub(super) fn pick(&mut self, now: Instant) -> Option<T> {
        while let Some(Reverse((t, ..))) = self.later.peek()
            && *t <= now
        {
            if let Some(Reverse((_, pos, key))) = self.later.pop() {
                self.ready.insert(pos, key);
            }
        }
        while let Some((pos, key)) = self.ready.pop_first() {
            let Some(k) = key else {
                if let Some(item) = self.keyless.remove(&pos) {
                    self.len -= 1;
                    return Some(item);
                }
                continue;
            };
            if self.running.contains(&k) {
                continue;
            }
            let Some(q) = self.queues.get_mut(&k) else {
                continue;
            };
            match q.front() {
                Some(h) if h.pos() == pos && h.not_before().is_none_or(|t| t <= now) => {}
                _ => continue,
            }
            let item = q.pop_front();
            if q.is_empty() {
                self.queues.remove(&k);
            }
            self.running.insert(k);
            self.len -= 1;
            return item;
        }
        None
    }

    /// The handler of an item of `key` ended: the key may run again; `retry` (its item back
    /// for a retry after its delay) goes in front of the key's others.
    pub(super) fn done(&mut self, key: Option<&Arc<str>>, retry: Option<T>) {
        if let Some(k) = key {
            self.running.remove(k);
        }
        if let Some(item) = retry {
            self.push(item);
        }
        let Some(k) = key else { return };
        if self.running.contains(k) {
            return;
        }
        if let Some(h) = self.queues.get(k).and_then(VecDeque::front) {
            let (pos, not_before) = (h.pos(), h.not_before());
            self.candidate(pos, Some(k.clone()), not_before);
        }
    }

    /// When the earliest retry not yet due is (possibly a stale one: an early wake-up).
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.later.peek().map(|Reverse((t, ..))| *t)
    }

    /// The waiting item of `key` that `matches`.
    pub(super) fn find_mut(
        &mut self,
        key: Option<&Arc<str>>,
        matches: impl Fn(&T) -> bool,
    ) -> Option<&mut T> {
        match key {
            Some(k) => self.queues.get_mut(k)?.iter_mut().find(|i| matches(i)),
            None => self.keyless.values_mut().find(|i| matches(i)),
        }
    }

    /// Every waiting item, in no particular order.
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> + Send
    where
        T: Send,
    {
        self.queues
            .values_mut()
            .flat_map(|q| q.iter_mut())
            .chain(self.keyless.values_mut())
    }

    /// Takes every waiting item out, in arrival order.
    pub(super) fn drain(&mut self) -> Vec<T> {
        let mut all: Vec<T> = self
            .queues
            .drain()
            .flat_map(|(_, q)| q)
            .chain(std::mem::take(&mut self.keyless).into_values())
            .collect();
        all.sort_unstable_by_key(Lane::pos);
        self.ready.clear();
        self.later.clear();
        self.len = 0;
        all
    }
}

/// Per-key order of the waiting messages, which sequences are held, and which were acked
/// lately.
#[derive(Debug)]
pub(super) struct Keys {
    key: OrderKey,
    lanes: Lanes<Waiting>,
    /// Stream sequences waiting or running: a redelivery of one of them is not queued twice.
    held: HashSet<u64>,
    /// The last [`REMEMBERED`] stream sequences acked, and the order they were acked in.
    acked: HashSet<u64>,
    acked_order: VecDeque<u64>,
}

/// What became of an arriving message.
pub(super) enum Arrival {
    /// Queued.
    Queued,
    /// Already held (waiting or running): nothing to do.
    Held,
    /// Already handled and acked by this consumer: ack it again, do not run it (boxed: rare,
    /// and large next to the others).
    Replay(Box<jetstream::Message>),
}

impl Keys {
    pub(super) fn new(key: OrderKey) -> Self {
        Self {
            key,
            lanes: Lanes::new(),
            held: HashSet::new(),
            acked: HashSet::new(),
            acked_order: VecDeque::new(),
        }
    }

    /// Messages waiting.
    pub(super) fn len(&self) -> usize {
        self.lanes.len()
    }

    /// An arriving message: queued with its key; `Held` if its sequence is already held (the
    /// server redelivered it while we still hold the earlier delivery, e.g. after a missed
    /// in-progress ack: a waiting one takes the newer delivery's handle, in place); `Replay`
    /// if this consumer acked it already.
    pub(super) fn arrive(&mut self, m: jetstream::Message, seq: u64) -> Arrival {
        if seq != 0 && self.acked.contains(&seq) {
            debug!(
                seq,
                "replay of a message already handled and acked: not run again"
            );
            return Arrival::Replay(Box::new(m));
        }
        let key: Option<Arc<str>> = self.key.of(&Message::from_jetstream(&m)).map(Arc::from);
        if seq != 0 && !self.held.insert(seq) {
            debug!(
                seq,
                "redelivery of a message already held: not queued twice"
            );
            if let Some(w) = self.lanes.find_mut(key.as_ref(), |w| w.seq == seq) {
                w.message = m;
            }
            return Arrival::Held;
        }
        let mut w = Waiting::new(m, seq);
        w.key = key;
        w.pos = self.lanes.next_pos();
        self.lanes.push(w);
        Arrival::Queued
    }

    /// Takes the waiting message that may start now and arrived first, marking its key
    /// running.
    pub(super) fn pick(&mut self, now: Instant) -> Option<Waiting> {
        self.lanes.pick(now)
    }

    /// A handler finished: its key may run again. `settled`: the message is done with (acked,
    /// given up on, or abandoned), not held for a retry; `acked`: it was handled and acked;
    /// `retry`: the message back for a retry after its delay.
    pub(super) fn finished(
        &mut self,
        key: Option<&Arc<str>>,
        seq: u64,
        settled: bool,
        acked: bool,
        retry: Option<Waiting>,
    ) {
        self.lanes.done(key, retry);
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

    /// When the earliest retry not yet due is (possibly early).
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.lanes.next_due()
    }

    /// Every waiting message, in no particular order.
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Waiting> + Send {
        self.lanes.iter_mut()
    }

    /// Takes every waiting message out, in arrival order.
    pub(super) fn drain(&mut self) -> Vec<Waiting> {
        let all = self.lanes.drain();
        for w in &all {
            self.held.remove(&w.seq);
        }
        all
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
}

#[cfg(test)]
mod tests;
