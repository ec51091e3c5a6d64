//! natty's one retry policy: exponential back-off with jitter, used by every retry loop of
//! every natty crate (KV requests during an election, watch re-creation, consumer look-ups,
//! election set-up and lease watches, batch-publish retries).
//!
//! Jitter is always on: after a server restart every client retries at once, and without it
//! they stay in step (a reconnect storm). Each pause is drawn from `[nominal / 2, nominal)`,
//! where the nominal pause starts at [`RetryPolicy::first`] and doubles up to
//! [`RetryPolicy::max`]; no pause is ever longer than `max`.
//!
//! The exponential sequence and its randomness come from the `backon` crate; this module only
//! fixes the policy (factor 2, jitter on, unlimited attempts: the callers bound their loops by
//! deadlines, attempts or cancellation) and halves the bounds so the jittered pause stays under
//! the cap (backon's jitter adds up to one more nominal pause).
//!
//! ```
//! use std::time::Duration;
//! use natty_core::retry::RetryPolicy;
//!
//! let policy = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(2));
//! let mut backoff = policy.backoff();
//! let first = backoff.next_delay();
//! assert!(first >= Duration::from_millis(50) && first < Duration::from_millis(100));
//! for _ in 0..20 {
//!     assert!(backoff.next_delay() <= Duration::from_secs(2));
//! }
//! backoff.reset(); // after a success: start again from `first`
//! assert!(backoff.next_delay() < Duration::from_millis(100));
//! ```

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// How long to wait between attempts: exponential from `first` to `max`, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RetryPolicy {
    first: Duration,
    max: Duration,
}

impl RetryPolicy {
    /// Pauses start at about `first` and double up to `max` (a `max` below `first` is raised
    /// to `first`).
    pub const fn new(first: Duration, max: Duration) -> Self {
        let max = if max.as_nanos() < first.as_nanos() {
            first
        } else {
            max
        };
        Self { first, max }
    }

    /// The nominal first pause.
    pub const fn first(&self) -> Duration {
        self.first
    }

    /// The longest pause.
    pub const fn max(&self) -> Duration {
        self.max
    }

    /// A fresh sequence of pauses for one retry loop.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            policy: *self,
            pauses: self.builder().build(),
        }
    }

    /// The pause before retry number `retry` (1: the first retry) of a loop that keeps no
    /// [`Backoff`] of its own (e.g. one counter per message). Jittered like the sequence.
    pub fn delay(&self, retry: u32) -> Duration {
        // Beyond 64 doublings every pause is `max` already.
        let steps = retry.clamp(1, 64);
        let mut pauses = self.backoff();
        for _ in 1..steps {
            pauses.next_delay();
        }
        pauses.next_delay()
    }

    fn builder(&self) -> ExponentialBuilder {
        ExponentialBuilder::new()
            .with_jitter()
            .with_factor(2.0)
            .with_min_delay(half(self.first))
            .with_max_delay(half(self.max))
            .without_max_times()
    }
}

/// The pauses of one retry loop (see [`RetryPolicy`]). Never runs out.
#[derive(Debug)]
pub struct Backoff {
    policy: RetryPolicy,
    pauses: <ExponentialBuilder as BackoffBuilder>::Backoff,
}

impl Backoff {
    /// The next pause: about twice the last one (up to the policy's `max`), jittered.
    pub fn next_delay(&mut self) -> Duration {
        self.pauses
            .next()
            .unwrap_or(self.policy.max)
            .min(self.policy.max)
    }

    /// Starts again from the first pause (after a success).
    pub fn reset(&mut self) {
        self.pauses = self.policy.builder().build();
    }

    /// The policy this sequence follows.
    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

fn half(d: Duration) -> Duration {
    d / 2
}

#[cfg(test)]
mod tests;
