//! The driver's clock for the self-fence deadline: tokio's clock (so tests with paused time run
//! faster than real time), but never behind `CLOCK_BOOTTIME` on Linux, which keeps counting
//! while the host is suspended. tokio's clock (`CLOCK_MONOTONIC`) stops during a suspend while
//! the server's TTL does not: read alone, a leader resuming from a suspend longer than its
//! lease would believe its lease still valid.
//!
//! Written by hand: no crate offers a tokio-compatible suspend-aware clock; the boot clock is
//! read through `rustix` (no `unsafe` here).

use std::time::Duration;

use tokio::time::Instant;

use crate::machine;

/// A clock that reads the later of tokio's clock and the boot clock, both measured from the
/// moment it was made. Copy it freely: copies read the same time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    /// tokio's clock and the boot clock read at the same moment.
    tokio_anchor: Instant,
    boot_anchor: Option<Duration>,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Self {
            tokio_anchor: Instant::now(),
            boot_anchor: boot_time(),
        }
    }

    /// Now, as the machine's [`Instant`](machine::Instant): the time since the clock was made.
    pub(crate) fn now(&self) -> machine::Instant {
        self.reading(self.at(Instant::now(), boot_time()))
    }

    /// The machine's reading of the tokio instant `t` on this clock.
    fn reading(&self, t: Instant) -> machine::Instant {
        machine::Instant::from_duration(t.saturating_duration_since(self.tokio_anchor))
    }

    /// The clock's reading when tokio's clock reads `tokio_now` and the boot clock `boot_now`.
    fn at(&self, tokio_now: Instant, boot_now: Option<Duration>) -> Instant {
        match (self.boot_anchor, boot_now) {
            (Some(anchor), Some(boot)) => {
                tokio_now.max(self.tokio_anchor + boot.saturating_sub(anchor))
            }
            _ => tokio_now,
        }
    }

    /// The tokio instant at which this clock reads `t`, if from now on both advance together
    /// (they do unless the host suspends): what to sleep until.
    pub(crate) fn tokio_instant(&self, t: machine::Instant) -> Instant {
        let tokio_now = Instant::now();
        let now = self.reading(self.at(tokio_now, boot_time()));
        tokio_now + t.saturating_duration_since(now)
    }
}

/// `CLOCK_BOOTTIME`: monotonic, and counting while the host is suspended. `None` where there is
/// no such clock.
fn boot_time() -> Option<Duration> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        Some(Duration::new(
            u64::try_from(t.tv_sec).unwrap_or(0),
            u32::try_from(t.tv_nsec).unwrap_or(0),
        ))
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The clock source really is the boot clock: never behind `CLOCK_MONOTONIC` (it is that
    /// plus the time spent suspended), and monotonic itself.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn the_boot_clock_counts_at_least_what_the_monotonic_clock_does() {
        let mono = || {
            let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
            Duration::new(
                u64::try_from(t.tv_sec).unwrap_or(0),
                u32::try_from(t.tv_nsec).unwrap_or(0),
            )
        };
        let before = mono();
        let boot = boot_time().unwrap_or_default();
        assert!(boot >= before, "boot {boot:?} < monotonic {before:?}");
        let mut last = boot;
        for _ in 0..1000 {
            let now = boot_time().unwrap_or_default();
            assert!(now >= last);
            last = now;
        }
    }

    /// A suspend: the boot clock runs on while tokio's clock stands still. The clock reads the
    /// boot clock's time, so a deadline that passed during the suspend has passed.
    #[test]
    fn a_suspend_moves_the_clock_forward_as_the_boot_clock_does() {
        let tokio_anchor = Instant::now();
        let clock = Clock {
            tokio_anchor,
            boot_anchor: Some(Duration::from_secs(100)),
        };
        let suspended = Some(Duration::from_secs(100 + 60));
        assert_eq!(
            clock.at(tokio_anchor + Duration::from_secs(1), suspended),
            tokio_anchor + Duration::from_secs(60)
        );
        // Without a suspend tokio's clock leads (paused time in tests runs ahead of it).
        assert_eq!(
            clock.at(
                tokio_anchor + Duration::from_secs(5),
                Some(Duration::from_secs(101))
            ),
            tokio_anchor + Duration::from_secs(5)
        );
        // No boot clock: tokio's alone.
        let plain = Clock {
            tokio_anchor,
            boot_anchor: None,
        };
        assert_eq!(plain.at(tokio_anchor, suspended), tokio_anchor);
    }

    /// Paused tokio time: the clock follows it, and the tokio instant to sleep until for a
    /// reading is that reading.
    #[tokio::test(start_paused = true)]
    async fn paused_time_drives_the_clock() {
        let clock = Clock::new();
        let start = clock.now();
        tokio::time::advance(Duration::from_secs(3600)).await;
        let now = clock.now();
        // (`start` read the boot clock a few µs after the anchor: it may lead by that.)
        assert!(now - start > Duration::from_secs(3599));
        assert!(now - start <= Duration::from_secs(3600));
        let later = now + Duration::from_secs(5);
        let wake = clock.tokio_instant(later);
        assert_eq!(wake - Instant::now(), Duration::from_secs(5));
        assert_eq!(
            clock.tokio_instant(start),
            Instant::now(),
            "a past reading: at once"
        );
    }
}
