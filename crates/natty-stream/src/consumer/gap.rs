//! Exclusive consumers ordered by key: a delivery that never arrived must not be overtaken by
//! its key's later messages.
//!
//! Deliveries go missing on the way: a re-pull after missed heartbeats unsubscribes the old
//! inbox, and whatever the server had already written to it is dropped when it arrives; a
//! cluster node dying loses what it was forwarding. The server sends a missing delivery again
//! only after `ack_wait`, behind later messages of its key that this consumer has run
//! meanwhile. Its key is unknown (it never arrived), so nothing may run past it.
//!
//! Every delivery of a durable carries the durable's delivery (consumer) sequence, one higher
//! than the previous delivery's. A consumer that is the durable's only reader
//! ([`ConsumeOptions::exclusive`](super::ConsumeOptions::exclusive)) receives every one of
//! them, so a jump says deliveries were lost in between. Then the delivery that showed the
//! gap and everything after it is dropped (not run, not acked), the pull is closed, and the
//! durable is reset to its ack floor (ADR-60, server 2.14+), which delivers everything
//! unacknowledged again, first and in stream order: the missing messages come back before
//! their key's later ones. What this consumer still holds (waiting or running) or acked
//! already is recognised when it comes again ([`Keys`](super::ordered::Keys)): not queued
//! twice, not run again.
//!
//! A consumer sequence lower than expected means the durable's deliveries started over (a
//! reset, here or by someone else; the durable created again): taken as the new baseline.

use std::time::Duration;

use async_nats::jetstream::{consumer::PullConsumer, stream::ConsumerResetErrorKind};
use tracing::{info, warn};

/// Resets at most this often (a gap seen again right after one waits for the rest).
pub(super) const RESET_INTERVAL: Duration = Duration::from_secs(1);

/// The consumer sequence expected next.
#[derive(Debug, Default)]
pub(super) struct Deliveries {
    /// `None`: not known yet (the next delivery sets it).
    next: Option<u64>,
}

/// What an arriving delivery says.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Delivery {
    /// The next one (or the first seen, or the first after deliveries started over).
    InOrder,
    /// Deliveries `expected..got` never arrived.
    Gap { expected: u64, got: u64 },
}

impl Deliveries {
    /// The last delivery the server made was `last` (from the durable's info): the next one
    /// is expected one higher.
    pub(super) fn after(last: u64) -> Self {
        Self {
            next: Some(last + 1),
        }
    }

    /// A delivery with consumer sequence `seq` arrived (0: unknown, taken as in order).
    pub(super) fn arrived(&mut self, seq: u64) -> Delivery {
        if seq == 0 {
            return Delivery::InOrder;
        }
        match self.next {
            Some(expected) if seq > expected => {
                // Not moved on: the next delivery after the reset sets the baseline again.
                self.next = None;
                Delivery::Gap { expected, got: seq }
            }
            _ => {
                self.next = Some(seq + 1);
                Delivery::InOrder
            }
        }
    }
}

/// Why a reset did not happen.
pub(super) enum ResetFailed {
    /// May work if tried again (a timeout, no connection).
    Transient(String),
    /// Will not work (a server before 2.14, the durable gone, refused); logged.
    Refused,
}

/// Resets the durable to its ack floor after a gap; returns what to expect next.
pub(super) async fn reset(consumer: &mut PullConsumer) -> Result<Deliveries, ResetFailed> {
    match consumer.reset(None).await {
        Ok(r) => {
            info!(
                reset_to = r.reset_seq,
                "deliveries went missing: durable reset to its ack floor, so they come again \
                 before their key's later messages"
            );
            Ok(Deliveries::after(r.info.delivered.consumer_sequence))
        }
        Err(e) => match e.kind() {
            ConsumerResetErrorKind::TimedOut | ConsumerResetErrorKind::Request => {
                Err(ResetFailed::Transient(e.to_string()))
            }
            _ => {
                warn!(
                    error = %e,
                    "deliveries went missing and resetting the durable was refused (server \
                     before 2.14?); they come back after ack_wait, possibly behind later \
                     messages of their key"
                );
                Err(ResetFailed::Refused)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::{Deliveries, Delivery};

    #[test]
    fn a_jump_in_the_consumer_sequence_is_a_gap_and_a_step_back_a_new_baseline() {
        let mut d = Deliveries::after(10);
        assert_eq!(d.arrived(11), Delivery::InOrder);
        assert_eq!(d.arrived(12), Delivery::InOrder);
        assert_eq!(
            d.arrived(15),
            Delivery::Gap {
                expected: 13,
                got: 15
            }
        );
        // Unknown until the next delivery (after the reset) sets it.
        assert_eq!(d.arrived(40), Delivery::InOrder);
        assert_eq!(
            d.arrived(42),
            Delivery::Gap {
                expected: 41,
                got: 42
            }
        );
        // Deliveries started over (a reset by someone else, the durable created again).
        let mut d = Deliveries::after(100);
        assert_eq!(d.arrived(1), Delivery::InOrder);
        assert_eq!(d.arrived(2), Delivery::InOrder);
        // No metadata: nothing to judge.
        assert_eq!(d.arrived(0), Delivery::InOrder);
        assert_eq!(d.arrived(3), Delivery::InOrder);
        // Not known yet: the first delivery sets it.
        let mut d = Deliveries::default();
        assert_eq!(d.arrived(7), Delivery::InOrder);
        assert_eq!(d.arrived(8), Delivery::InOrder);
    }
}
