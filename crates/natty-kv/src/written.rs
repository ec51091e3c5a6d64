//! What a [`Kv`](crate::Kv) remembers of its own writes, so that its reads of a key are never
//! older than its own last write to it, in bounded memory.
//!
//! Per bucket (and per incarnation of it: revisions start over when a bucket is deleted and
//! created again), the last revision this handle wrote to each key, and when that revision
//! can expire at the earliest. At most [`MAX_KEYS`] keys and [`MAX_BUCKETS`] buckets are
//! remembered:
//!
//! - a bucket over the key limit forgets the half of its keys with the lowest revisions and
//!   remembers the highest revision it forgot as a floor for every key it does not know: a
//!   read of such a key is then not older than that floor, which is at or above the handle's
//!   last write to it (a read can only become slower, by asking the stream leader, never
//!   older);
//! - a bucket beyond the bucket limit (the one written longest ago) is forgotten whole; its
//!   name is marked in a fixed-size bit set, and reads in a marked bucket that the handle no
//!   longer remembers ask the stream leader. A bucket that shares a bit with it only loses the
//!   fast path.

use std::{
    collections::HashMap,
    hash::{BuildHasher, BuildHasherDefault, DefaultHasher},
    sync::{Arc, Mutex, PoisonError},
    time::SystemTime,
};

use tokio::time::Instant;

use crate::bucket::Bucket;

/// Keys remembered in all buckets together.
pub(crate) const MAX_KEYS: usize = 4096;
/// Buckets remembered.
pub(crate) const MAX_BUCKETS: usize = 64;
/// Bits of the set of forgotten buckets.
const FORGOTTEN_BITS: usize = 256;

/// When a stored revision can expire at the earliest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// It does not expire (no per-key TTL and no bucket TTL, or `Nats-TTL: never`).
    Never,
    /// Not before this instant (by this process's monotonic clock).
    NotBefore(Instant),
}

/// One remembered write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    pub(crate) revision: u64,
    pub(crate) expiry: Expiry,
}

/// How fresh a read of a key must be for this handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Floor {
    /// The handle never wrote the key (as far as it remembers): any replica will do.
    None,
    /// Not older than this revision.
    At(u64),
    /// The handle forgot what it wrote to this bucket: only the stream leader is sure.
    Unknown,
}

/// The memory, shared by a `Kv` and its clones.
#[derive(Debug, Clone, Default)]
pub(crate) struct Written {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    buckets: HashMap<Arc<str>, Writes>,
    keys: usize,
    forgotten: [u64; FORGOTTEN_BITS / 64],
    /// Counts writes, to find the bucket written longest ago.
    clock: u64,
}

#[derive(Debug)]
struct Writes {
    /// The bucket incarnation the revisions belong to.
    created: SystemTime,
    keys: HashMap<String, Mark>,
    /// The highest revision forgotten: the floor of every key not in `keys`.
    floor: u64,
    last_write: u64,
}

impl Written {
    /// Remembers that this handle stored `mark` as `key`'s revision in `b`.
    pub(crate) fn record(&self, b: &Bucket, key: &str, mark: Mark) {
        self.record_in(&b.name, b.created, key, mark);
    }

    fn record_in(&self, bucket: &Arc<str>, created: SystemTime, key: &str, mark: Mark) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.clock += 1;
        let clock = inner.clock;
        let writes = inner
            .buckets
            .entry(bucket.clone())
            .or_insert_with(|| Writes {
                created,
                keys: HashMap::new(),
                floor: 0,
                last_write: clock,
            });
        let mut dropped = 0;
        if writes.created != created {
            // Another incarnation of the bucket: the old one's revisions mean nothing here.
            dropped = writes.keys.len();
            writes.keys.clear();
            writes.floor = 0;
            writes.created = created;
        }
        writes.last_write = clock;
        let added = match writes.keys.get_mut(key) {
            Some(known) => {
                if mark.revision >= known.revision {
                    *known = mark;
                }
                false
            }
            None => {
                writes.keys.insert(key.to_owned(), mark);
                true
            }
        };
        inner.keys = inner.keys - dropped + usize::from(added);
        inner.shrink();
    }

    /// How fresh a read of `key` in `b` must be.
    pub(crate) fn floor(&self, b: &Bucket, key: &str) -> Floor {
        self.floor_in(&b.name, b.created, key)
    }

    fn floor_in(&self, bucket: &str, created: SystemTime, key: &str) -> Floor {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        match inner.buckets.get(bucket) {
            Some(writes) if writes.created != created => Floor::Unknown,
            Some(writes) => match writes.keys.get(key) {
                Some(mark) => Floor::At(mark.revision),
                None if writes.floor > 0 => Floor::At(writes.floor),
                None => Floor::None,
            },
            None if inner.is_forgotten(bucket) => Floor::Unknown,
            None => Floor::None,
        }
    }

    /// What this handle remembers of its write of `revision` to `key` in `b`.
    pub(crate) fn mark(&self, b: &Bucket, key: &str, revision: u64) -> Option<Mark> {
        self.mark_in(&b.name, b.created, key, revision)
    }

    fn mark_in(&self, bucket: &str, created: SystemTime, key: &str, revision: u64) -> Option<Mark> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .buckets
            .get(bucket)
            .filter(|w| w.created == created)
            .and_then(|w| w.keys.get(key))
            .filter(|m| m.revision == revision)
            .copied()
    }

    #[cfg(test)]
    fn remembered(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (inner.buckets.len(), inner.keys)
    }
}

impl Inner {
    fn shrink(&mut self) {
        while self.keys > MAX_KEYS {
            let Some(writes) = self.buckets.values_mut().max_by_key(|w| w.keys.len()) else {
                break;
            };
            let mut revisions: Vec<u64> = writes.keys.values().map(|m| m.revision).collect();
            revisions.sort_unstable();
            let cut = revisions[revisions.len() / 2];
            let before = writes.keys.len();
            writes.keys.retain(|_, m| m.revision > cut);
            writes.floor = writes.floor.max(cut);
            self.keys -= before - writes.keys.len();
        }
        while self.buckets.len() > MAX_BUCKETS {
            let Some(oldest) = self
                .buckets
                .iter()
                .min_by_key(|(_, w)| w.last_write)
                .map(|(name, _)| name.clone())
            else {
                break;
            };
            if let Some(writes) = self.buckets.remove(&oldest) {
                self.keys -= writes.keys.len();
            }
            let bit = bit_of(&oldest);
            self.forgotten[bit / 64] |= 1 << (bit % 64);
        }
    }

    fn is_forgotten(&self, bucket: &str) -> bool {
        let bit = bit_of(bucket);
        self.forgotten[bit / 64] & (1 << (bit % 64)) != 0
    }
}

fn bit_of(bucket: &str) -> usize {
    // A fixed hash (not randomly keyed): the same name always has the same bit.
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(bucket);
    usize::try_from(hash % FORGOTTEN_BITS as u64).unwrap_or_default()
}

#[cfg(test)]
mod tests;
