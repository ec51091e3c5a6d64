//! [`Instant`]: the machine's time, passed in by the driver.

use core::{
    fmt,
    ops::{Add, AddAssign, Sub, SubAssign},
    time::Duration,
};

/// A point in time on the driver's monotonic clock, as the time elapsed since an origin the
/// driver chose (e.g. when it started). The machine never reads a clock: every input carries
/// the current `Instant`, and the machine answers with the `Instant`s it must be woken at.
///
/// Arithmetic saturates instead of panicking (`Instant::MAX + 1 s` is `Instant::MAX`; an
/// earlier instant minus a later one is zero), so no input, however large its durations,
/// makes the machine panic.
///
/// ```
/// use std::time::Duration;
/// use natty_election_proto::Instant;
///
/// let t0 = Instant::ZERO;
/// let t1 = t0 + Duration::from_millis(1500);
/// assert_eq!(t1 - t0, Duration::from_millis(1500));
/// assert_eq!(t0 - t1, Duration::ZERO);
/// assert_eq!(Instant::MAX + Duration::from_secs(1), Instant::MAX);
/// assert_eq!(Instant::from_duration(Duration::from_secs(2)).as_duration(), Duration::from_secs(2));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(Duration);

impl Instant {
    /// The driver's origin.
    pub const ZERO: Self = Self(Duration::ZERO);
    /// The latest representable instant.
    pub const MAX: Self = Self(Duration::MAX);

    /// The instant `since_origin` after the driver's origin.
    pub const fn from_duration(since_origin: Duration) -> Self {
        Self(since_origin)
    }

    /// The time since the driver's origin.
    pub const fn as_duration(self) -> Duration {
        self.0
    }

    /// The time from `earlier` to `self`; zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Self) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t+{:?}", self.0)
    }
}

impl Add<Duration> for Instant {
    type Output = Self;

    fn add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(d))
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl Sub<Duration> for Instant {
    type Output = Self;

    fn sub(self, d: Duration) -> Self {
        Self(self.0.saturating_sub(d))
    }
}

impl SubAssign<Duration> for Instant {
    fn sub_assign(&mut self, d: Duration) {
        *self = *self - d;
    }
}

impl Sub for Instant {
    type Output = Duration;

    fn sub(self, earlier: Self) -> Duration {
        self.saturating_duration_since(earlier)
    }
}
