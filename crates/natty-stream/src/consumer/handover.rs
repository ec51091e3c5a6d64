//! Exclusive consumers ([`ConsumeOptions::exclusive`](super::ConsumeOptions::exclusive)): the
//! durable's next reader gets what an earlier one did not finish first, in stream order — not
//! `ack_wait` later, behind later messages of its key (Kafka's resume from the committed
//! offset; here the ack floor).
//!
//! Written by hand because neither async-nats nor the server offers it. Two ways a reader
//! leaves messages unfinished:
//! - A pull request cannot be cancelled; the client can only unsubscribe its inbox, and the
//!   server goes on sending to it until it has processed the UNSUB. async-nats 0.48 drops what
//!   arrives after its own unsubscribe — `Subscriber::drain` too, which removes the
//!   subscription before the server's PONG (see `docs/upstream/async-nats-subscriber-drain.md`).
//!   [`put_back`]: after a stop (acks flushed), ask the server how far it delivered; if that is
//!   past the last delivery that arrived, reset the durable to its ack floor (ADR-60), which
//!   redelivers everything unacknowledged in stream order.
//! - A reader that was aborted (a group hand-over past its deadline), killed, or that handed
//!   messages back (nak'ed: the server redelivers those in an order of its own).
//!   [`resume`]: before the first pull, anything still waiting for an ack belongs to a reader
//!   that is gone (the option says there is no other), so the durable is reset to its ack
//!   floor.
//!
//! The reset re-runs messages acknowledged after the first unfinished one (a blocked or
//! in-flight key does not stop the others): duplicates rather than order broken, and they
//! arrive with a delivery count of 1. Only correct when no one else reads the durable, hence
//! the option. Handed-back messages alone do not trigger a reset at stop (the next reader's
//! [`resume`] does it, once).

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// How long to wait for the server to apply acks already sent before resetting (a reset
/// before them would redeliver acknowledged messages).
const ACKS_APPLIED: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(10);

/// Puts back what the server sent the stopped consumer but never arrived: `last_delivery` is
/// the highest consumer sequence that arrived, `handed_back` the messages nak'ed at stop.
pub(super) async fn put_back(consumer: &mut PullConsumer, last_delivery: u64, handed_back: u64) {
    let info = match consumer.get_info().await {
        Ok(info) => info,
        Err(e) => {
            warn!(error = %e, "stopped: could not check what the server delivered; anything \
                  outstanding comes back after ack_wait");
            return;
        }
    };
    let missing = info
        .delivered
        .consumer_sequence
        .saturating_sub(last_delivery);
    if missing == 0 {
        debug!(handed_back, "stopped: nothing sent went missing");
        return;
    }
    // Acks are applied by the server asynchronously: wait until only the outstanding ones
    // are pending (bounded; past it, a duplicate is better than a message out of order).
    let outstanding = missing + handed_back;
    let deadline = Instant::now() + ACKS_APPLIED;
    let mut pending = info.num_ack_pending as u64;
    while pending > outstanding && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
        match consumer.get_info().await {
            Ok(i) => pending = i.num_ack_pending as u64,
            Err(e) => debug!(error = %e, "consumer info"),
        }
    }
    reset_to_ack_floor(
        consumer,
        &format!("stopped ({missing} sent but never arrived, {handed_back} handed back)"),
    )
    .await;
}

/// Before the first pull of an exclusive consumer: if a previous reader left messages
/// unacknowledged, reset the durable to its ack floor so they come first, in order.
pub(super) async fn resume(consumer: &mut PullConsumer) {
    let mut pending = match consumer.get_info().await {
        Ok(info) => info.num_ack_pending as u64,
        Err(e) => {
            warn!(error = %e, "could not check for a previous reader's unfinished messages");
            return;
        }
    };
    if pending == 0 {
        return;
    }
    // A previous reader's last acks may still be on their way through the server: wait until
    // the count stops going down (bounded), so they are not run again.
    let deadline = Instant::now() + ACKS_APPLIED;
    while Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
        match consumer.get_info().await {
            Ok(i) if (i.num_ack_pending as u64) < pending => pending = i.num_ack_pending as u64,
            Ok(i) => {
                pending = i.num_ack_pending as u64;
                break;
            }
            Err(e) => debug!(error = %e, "consumer info"),
        }
    }
    if pending == 0 {
        return;
    }
    reset_to_ack_floor(
        consumer,
        &format!("resuming ({pending} left unacknowledged by a previous reader)"),
    )
    .await;
}

/// Resets the durable to its ack floor (ADR-60): everything unacknowledged comes again, first
/// and in stream order. `why` says who asks and what is outstanding, for the log.
async fn reset_to_ack_floor(consumer: &mut PullConsumer, why: &str) {
    match consumer.reset(None).await {
        Ok(r) => info!(
            reset_to = r.reset_seq,
            "{why}: durable reset to its ack floor, so the next reader gets what was not \
             finished first and in order"
        ),
        Err(e) => warn!(
            error = %e,
            "{why}: resetting the durable was refused (server before 2.14?); those messages \
             come back after ack_wait, possibly behind later ones"
        ),
    }
}
