//! What the lease key holds: who leads, in which term, since when.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::Term;

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
