//! Retrying the answers that say nothing, within a deadline.
//!
//! During a stream-leader election a replicated bucket answers with 503 / no responders, and
//! requests in flight when a node dies time out. The NATS client ADRs retry such answers; so do
//! we, with a backoff, until the operation's deadline.

use std::time::Duration;

use natty_core::retry::{Backoff, RetryPolicy};
use tokio::time::Instant;
use tracing::debug;

use crate::Error;

/// The pauses between two attempts: from about 50 ms, doubling up to 1 s, with jitter.
const POLICY: RetryPolicy = RetryPolicy::new(Duration::from_millis(50), Duration::from_secs(1));

/// How one attempt ended.
#[derive(Debug)]
pub(crate) enum Outcome<T> {
    /// A final answer (success or an error that retrying cannot change).
    Done(Result<T, Error>),
    /// A timeout or a "try again" answer: nothing known, safe to retry.
    Retry(Error),
    /// No responders (503): either the stream has no leader right now or it is gone; only the
    /// stream info API can tell.
    Unavailable(Error),
}

/// When an operation gives up retrying.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    at: Instant,
}

impl Deadline {
    /// `patience` from now (saturating: a huge patience never overflows).
    pub(crate) fn after(patience: Duration) -> Self {
        let now = Instant::now();
        Self {
            at: now
                .checked_add(patience)
                .unwrap_or(now + Duration::from_secs(86_400 * 365)),
        }
    }

    /// The instant itself.
    pub(crate) fn at(&self) -> Instant {
        self.at
    }

    /// A fresh backoff sequence bounded by this deadline.
    pub(crate) fn attempts(&self) -> Attempts {
        Attempts {
            at: self.at,
            backoff: POLICY.backoff(),
        }
    }
}

/// The pauses between the attempts of one retry loop.
#[derive(Debug)]
pub(crate) struct Attempts {
    at: Instant,
    backoff: Backoff,
}

impl Attempts {
    /// Sleeps before the next attempt; `false` (without sleeping) when that attempt would start
    /// after the deadline. Cancel safe.
    pub(crate) async fn pause(&mut self, last: &Error) -> bool {
        let pause = self.backoff.next_delay();
        let next = Instant::now() + pause;
        if next >= self.at {
            return false;
        }
        debug!(error = %last, retry_in = ?pause, "transient failure, retrying");
        tokio::time::sleep_until(next).await;
        true
    }
}
