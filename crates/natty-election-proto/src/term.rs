//! [`Term`]: the fencing token.

use core::fmt;

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
/// by more than the time between deletion and re-creation. The election never leads in a
/// bucket sooner than a TTL after the bucket it replaced was gone.
///
/// ```
/// use natty_election_proto::Term;
/// let old = Term::new(1_700_000_000_000_000_000, 5_000);
/// let after_re_creation = Term::new(1_700_000_100_000_000_000, 1);
/// assert!(after_re_creation > old);
/// assert!(after_re_creation.as_u128() > old.as_u128());
/// assert_eq!(Term::from_u128(old.as_u128()), old);
/// assert_eq!(old.to_string(), "1700000000000000000.5000");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
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
    #[allow(
        clippy::cast_possible_truncation,
        reason = "the two halves of the u128, each exactly 64 bits"
    )]
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
