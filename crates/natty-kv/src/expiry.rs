//! A conditional write that reaches the server as its base revision expires.
//!
//! On a bucket with expiry markers (per-key TTL / limit markers), the server's expiry of the
//! base revision `r` and a write conditioned on `r` can race: the expiry scan finds `r` to be
//! the key's last message, the write passes its compare-and-set and is acknowledged, and then
//! the expiry marker (a `Nats-Rollup: sub` message) is stored after it and removes it
//! (`docs/upstream/ttl-marker-wipes-acked-write.md`). Seen on nats-server 2.15.1 for writes
//! applied 0 to 10 ms after `r`'s expiry.
//!
//! The race needs the write to be applied after `r`'s expiry has begun. So:
//!
//! 1. Before the write, the earliest instant `r` can expire is found, by this process's clock:
//!    from this handle's own write of `r` (sent at `t` with TTL `d`: not before `t + d`),
//!    else from `r`'s server timestamp and TTL (the key's entry, or `r` read from a replica),
//!    less [`CLOCK_SKEW`] for the difference between the server's clock and ours.
//! 2. A write acknowledged before that instant was applied before `r` could expire: done.
//! 3. Otherwise the write's own server timestamp is compared with `r`'s expiry (both by the
//!    server's clock): stored more than [`APPLY_LAG`] before it, done.
//! 4. Otherwise the key is read at the stream leader once a marker stored right after the
//!    write must be visible ([`SETTLE`] after the acknowledgement): a `MaxAge` marker after our
//!    revision means the key has expired, and the write is reported as not having kept it
//!    (`KeyNotFound` for `refresh`, `RevisionMismatch` for `update` / `refresh_entry`, as if
//!    it had arrived a moment later); anything else means it survived.
//!
//! Only steps 1 and 2 run for a write that is not close to its base's expiry.

use std::time::{Duration, SystemTime};

use async_nats::jetstream::message::StreamMessage;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::{
    Entry, Error, ErrorKind, EventKind, Kv,
    bucket::Bucket,
    entry::{self, KeyTtl},
    read::ReadFrom,
    written::Expiry,
};

/// How far the server's clock may be ahead of ours for step 1 to hold.
pub(crate) const CLOCK_SKEW: Duration = Duration::from_secs(1);
/// How long a replicated stream may take from stamping a write to applying it.
pub(crate) const APPLY_LAG: Duration = Duration::from_millis(250);
/// How long after the acknowledgement a marker stored right after the write is visible at the
/// stream leader.
pub(crate) const SETTLE: Duration = Duration::from_millis(500);

/// When a base revision expires, by the server's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Base {
    /// `None`: it never expires.
    pub(crate) expires: Option<SystemTime>,
}

impl Base {
    /// The base of a refresh: the entry as read.
    pub(crate) fn of_entry(entry: &Entry, b: &Bucket) -> Self {
        let ttl = match entry.key_ttl() {
            Some(KeyTtl::Never) => None,
            Some(KeyTtl::Secs(secs)) => Some(Duration::from_secs(secs)),
            None => bucket_ttl(b),
        };
        Self {
            expires: ttl.and_then(|ttl| entry.created.checked_add(ttl)),
        }
    }

    fn of_message(m: &StreamMessage, b: &Bucket) -> Self {
        let headers = Some(&m.headers);
        let ttl = if entry::never_expires(headers) {
            None
        } else {
            entry::ttl_of(headers).or_else(|| bucket_ttl(b))
        };
        Self {
            expires: ttl.and_then(|ttl| SystemTime::from(m.time).checked_add(ttl)),
        }
    }

    /// The earliest instant of this process's clock at which it can expire.
    fn not_before(self) -> Option<Instant> {
        let expires = self.expires?;
        let now = Instant::now();
        let left = expires
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .saturating_sub(CLOCK_SKEW);
        Some(now.checked_add(left).unwrap_or(now))
    }
}

/// The bucket's TTL, if it has one.
pub(crate) fn bucket_ttl(b: &Bucket) -> Option<Duration> {
    let max_age = b.stream.cached_info().config.max_age;
    (!max_age.is_zero()).then_some(max_age)
}

/// Whether the bucket writes expiry markers (and so can wipe a write, see the module docs).
pub(crate) fn has_markers(b: &Bucket) -> bool {
    b.stream
        .cached_info()
        .config
        .subject_delete_marker_ttl
        .is_some_and(|ttl| !ttl.is_zero())
}

/// What is known, before a conditional write, about when its base can expire.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Guard {
    /// The earliest instant (our clock) the base can expire.
    not_before: Instant,
    /// The base's expiry by the server's clock, when known (for step 3).
    expires: Option<SystemTime>,
}

/// How a guarded write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The write is stored (or was overwritten since by a later write).
    Kept,
    /// The base's expiry marker removed the write right after it was stored: the key expired.
    Wiped,
}

impl Kv {
    /// Step 1 for a write to `key` in `b` conditioned on `revision`: `None` when the base
    /// cannot expire (or is not stored any more: the write will not pass its
    /// compare-and-set then).
    pub(crate) async fn expiry_guard(
        &self,
        b: &Bucket,
        key: &str,
        revision: u64,
        base: Option<Base>,
    ) -> Result<Option<Guard>, Error> {
        if revision == 0 || !has_markers(b) {
            return Ok(None);
        }
        if let Some(base) = base {
            return Ok(guard_of(base));
        }
        if let Some(mark) = self.written.mark(b, key, revision) {
            return Ok(match mark.expiry {
                Expiry::Never => None,
                Expiry::NotBefore(not_before) => Some(Guard {
                    not_before,
                    expires: None,
                }),
            });
        }
        match self.stored_at(b, revision).await {
            Ok(Some(m)) if m.subject.as_str() == b.subject(key) => {
                Ok(guard_of(Base::of_message(&m, b)))
            }
            Ok(_) => Ok(None),
            // Unknown base: check the write afterwards, whenever it is acknowledged.
            Err(e) => {
                debug!(error = %e, "the base revision could not be read; the write will be checked");
                Ok(Some(Guard {
                    not_before: Instant::now(),
                    expires: None,
                }))
            }
        }
    }

    /// Steps 2 to 4 for `revision`, just acknowledged.
    pub(crate) async fn confirm_kept(
        &self,
        b: &Bucket,
        key: &str,
        revision: u64,
        guard: Guard,
    ) -> Result<Verdict, Error> {
        let acked = Instant::now();
        if acked < guard.not_before {
            return Ok(Verdict::Kept);
        }
        if let Some(expires) = guard.expires
            && let Ok(Some(m)) = self.stored_at(b, revision).await
            && SystemTime::from(m.time)
                .checked_add(APPLY_LAG)
                .is_some_and(|t| t < expires)
        {
            return Ok(Verdict::Kept);
        }
        debug!(
            revision,
            "written as its base revision may have expired: checking it was not wiped"
        );
        tokio::time::sleep_until(acked + SETTLE).await;
        let last = self
            .last_message(b, key, ReadFrom::Leader)
            .await
            .map_err(|e| {
                Error::with_source(
                    ErrorKind::TimedOut,
                    format!(
                        "writing key {key:?} in bucket {:?}: stored as revision {revision} as its \
                         base revision may have expired; whether the base's expiry marker removed \
                         it is unknown",
                        b.name
                    ),
                    e,
                )
            })?;
        match last {
            Some(m)
                if m.sequence > revision
                    && entry::kind_of(Some(&m.headers)) == EventKind::Expired =>
            {
                warn!(
                    revision,
                    marker = m.sequence,
                    "an expiry marker removed the write right after it was stored"
                );
                Ok(Verdict::Wiped)
            }
            Some(m) if m.sequence >= revision => Ok(Verdict::Kept),
            other => Err(Error::new(
                ErrorKind::TimedOut,
                format!(
                    "writing key {key:?} in bucket {:?}: revision {revision} was acknowledged as \
                     its base revision expired, and the stream leader's last message of the key \
                     is {}: whether the write is stored is unknown",
                    b.name,
                    other.map_or_else(|| "none".to_owned(), |m| m.sequence.to_string())
                ),
            )),
        }
    }
}

fn guard_of(base: Base) -> Option<Guard> {
    Some(Guard {
        not_before: base.not_before()?,
        expires: base.expires,
    })
}
