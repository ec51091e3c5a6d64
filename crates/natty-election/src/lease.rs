//! What the lease key holds: who leads, in which term, since when; and the [`Term`].

use std::{
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

/// A leader's term: the fencing token. Strictly increasing across the leaders of one key,
/// even when the bucket is deleted and re-created (its revisions then restart at 1).
///
/// It is the pair (`epoch`, `revision`), compared in that order: `epoch` is when the bucket
/// (its stream) was created, in ns since the Unix epoch by the server's clock; `revision` is
/// the key's revision when the term began. A re-created bucket has a later epoch, so its terms
/// are higher than every term of the bucket before it.
///
/// **How a sink compares it:** keep the highest term seen and reject a write whose term is
/// lower — compare `(epoch, revision)` lexicographically (`Term` is `Ord`), or store
/// [`Term::as_u128`], one number whose order is the same. Equal terms are the same leader.
///
/// Limits: a re-created bucket's epoch is later only if the server's clock did not go back
/// by more than the time between deletion and re-creation. The election itself never
/// re-creates a bucket sooner than a TTL after it found it missing; a bucket deleted and
/// re-created by hand at once relies on the server clock alone.
///
/// ```
/// use natty_election::Term;
/// let old = Term::new(1_700_000_000_000_000_000, 5_000);
/// let after_re_creation = Term::new(1_700_000_100_000_000_000, 1);
/// assert!(after_re_creation > old);
/// assert!(after_re_creation.as_u128() > old.as_u128());
/// assert_eq!(Term::from_u128(old.as_u128()), old);
/// ```
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[non_exhaustive]
pub struct Term {
    /// When the bucket was created (ns since the Unix epoch, the server's clock).
    pub epoch: u64,
    /// The key's revision when the term began.
    pub revision: u64,
}

impl Term {
    /// The term of `revision` in the bucket created at `epoch`.
    pub const fn new(epoch: u64, revision: u64) -> Self {
        Self { epoch, revision }
    }

    /// One number with the same order: `epoch << 64 | revision`.
    pub const fn as_u128(self) -> u128 {
        ((self.epoch as u128) << 64) | self.revision as u128
    }

    /// The inverse of [`as_u128`](Self::as_u128).
    pub const fn from_u128(value: u128) -> Self {
        Self {
            epoch: (value >> 64) as u64,
            revision: value as u64,
        }
    }
}

impl fmt::Display for Term {
    /// `epoch.revision`, e.g. `1700000000000000000.42`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.epoch, self.revision)
    }
}

/// The lease key's value (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Lease {
    /// The leader's node name.
    pub(crate) node: String,
    /// The leading process (random per `Election`): tells our own earlier writes apart from
    /// another process that uses the same node name.
    pub(crate) instance: u64,
    /// The term's revision, once known (the first write of a term cannot know its own
    /// revision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) term: Option<u64>,
    /// The term's epoch (the bucket's creation time, see [`Term`]).
    #[serde(default)]
    pub(crate) epoch: u64,
    /// When the term began, in ms since the Unix epoch.
    pub(crate) since_ms: u64,
}

impl Lease {
    pub(crate) fn encode(&self) -> bytes::Bytes {
        serde_json::to_vec(self).map(Into::into).unwrap_or_default()
    }

    pub(crate) fn decode(value: &[u8]) -> Option<Self> {
        serde_json::from_slice(value).ok()
    }

    /// The term of this lease, stored at `revision`.
    pub(crate) fn term_at(&self, revision: u64) -> Term {
        Term::new(self.epoch, self.term.unwrap_or(revision))
    }

    pub(crate) fn since(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.since_ms)
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A random id for this process's candidacy (no rand dependency for one number).
pub(crate) fn instance_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_round_trip_and_bad_values_are_none() {
        let lease = Lease {
            node: "n1".into(),
            instance: 7,
            term: Some(3),
            epoch: 9,
            since_ms: 1000,
        };
        assert_eq!(Lease::decode(&lease.encode()), Some(lease.clone()));
        let first = Lease {
            term: None,
            ..lease
        };
        assert!(!String::from_utf8_lossy(&first.encode()).contains("term"));
        assert_eq!(Lease::decode(&first.encode()), Some(first));
        assert_eq!(Lease::decode(b"not json"), None);
        assert_eq!(Lease::decode(b""), None);
        assert_ne!(instance_id(), instance_id());
    }
}
