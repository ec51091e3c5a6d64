//! An open fast-ingest batch (ADR-50, through jetstream-extra) and the messages in it that no
//! flow ack has covered yet.
//!
//! In gap mode Fail everything up to the last flow ack is stored. When a batch fails — a
//! per-message rejection (the server abandons the batch on it), a restart, a stream that
//! stopped allowing batches — the acks that came with the failure are not trusted: every
//! message not settled before it is handed to the pump as the batch's *tail*, and the pump
//! re-sends the tail one message at a time (its one re-send path), each with its own ack,
//! under the same `Nats-Msg-Id`s so those the batch did store come back as duplicates.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use tokio::time::Instant;

use async_nats::jetstream::{self, message::OutboundMessage};
use jetstream_extra::batch_publish_fast::{
    FastPublishError, FastPublishErrorKind, FastPublishExt, FastPublisher, GapMode,
};

use super::Outgoing;
use crate::{Error, ErrorKind};

/// A failed batch: why, and every message it did not settle.
#[derive(Debug)]
pub(super) struct FastFailure {
    pub(super) stream: Arc<str>,
    pub(super) error: Error,
    pub(super) tail: VecDeque<(u64, Outgoing)>,
}

/// One open batch to one stream.
#[derive(Debug)]
pub(super) struct FastBatch {
    pub(super) stream: Arc<str>,
    publisher: FastPublisher,
    pending: VecDeque<(u64, Outgoing)>,
}

impl FastBatch {
    pub(super) fn open(
        js: &jetstream::Context,
        stream: Arc<str>,
        ack_timeout: Duration,
    ) -> Result<Self, Error> {
        // Flow 500 with 3 outstanding acks: measured here 1.45x pipelined at 128 B; the
        // crate's default (flow 100) was slower than pipelining.
        let publisher = js
            .fast_publish()
            .flow(500)
            .max_outstanding_acks(3)
            .ack_timeout(ack_timeout)
            .gap_mode(GapMode::Fail)
            .build()
            .map_err(|e| fast_error(e, &stream, "opening a fast-ingest batch"))?;
        Ok(Self {
            stream,
            publisher,
            pending: VecDeque::new(),
        })
    }

    /// Sends `m` in the batch. On an error the batch is done: turn it into its failure.
    pub(super) async fn add(&mut self, mut m: Outgoing) -> Result<(), Error> {
        m.attempts += 1;
        let message = OutboundMessage {
            subject: m.subject.clone(),
            payload: m.payload.clone(),
            headers: Some(m.headers()),
        };
        match self.publisher.add_message(message).await {
            Ok(ack) => {
                self.pending.push_back((ack.batch_sequence, m));
                Ok(())
            }
            Err(e) => {
                self.pending.push_back((u64::MAX, m));
                Err(fast_error(e, &self.stream, "adding to a fast-ingest batch"))
            }
        }
    }

    /// Hands every message the flow acks have covered to `done` (call after a successful
    /// [`add`](Self::add) only: acks that arrive with a failure are not trusted).
    pub(super) fn settle(&mut self, mut done: impl FnMut(&str, Outgoing)) {
        let acked = self.publisher.last_ack_sequence();
        while self.pending.front().is_some_and(|(seq, _)| *seq <= acked) {
            if let Some((_, m)) = self.pending.pop_front() {
                done(&self.stream, m);
            }
        }
    }

    /// Commits the batch: every message in it is stored, or it failed.
    pub(super) async fn commit(self) -> Result<VecDeque<(u64, Outgoing)>, FastFailure> {
        let Self {
            stream,
            publisher,
            pending,
        } = self;
        match publisher.close().await {
            Ok(_) => Ok(pending),
            Err(e) => Err(FastFailure {
                error: fast_error(e, &stream, "committing a fast-ingest batch"),
                stream,
                tail: pending,
            }),
        }
    }

    /// The batch failed with `error`: everything not settled is its tail. Each message was
    /// sent (or may have been) unless the server refused the batch at its very start.
    pub(super) fn fail(self, error: Error) -> FastFailure {
        let refused_at_start = error.kind() == ErrorKind::Unsupported && self.publisher.size() <= 1;
        let mut tail = self.pending;
        for (_, m) in &mut tail {
            m.maybe_stored |= !refused_at_start;
        }
        FastFailure {
            stream: self.stream,
            error,
            tail,
        }
    }
}

impl FastFailure {
    /// Marks the tail as possibly stored (a commit that failed may have stored any of it).
    pub(super) fn maybe_stored(mut self) -> Self {
        for (_, m) in &mut self.tail {
            m.maybe_stored = true;
        }
        self
    }
}

/// Fast batches failing one after another: while a stream has no leader every new batch is
/// refused at once (a 503), so without a pause the pump opened — and logged — one batch per
/// message (~1,500 warnings in half a second in a chaos run). An *episode* runs from the first
/// failed batch to the next batch the server accepts: only its first failure is a warning,
/// and after a failure for want of a leader no new batch opens before a pause that doubles
/// from `backoff_base` up to `backoff_max` (the pump publishes one by one meanwhile).
#[derive(Debug, Default)]
pub(super) struct FastTrouble {
    /// Batches failed in this episode (0: none).
    failures: u32,
    /// Consecutive no-leader failures: they set the pause.
    unavailable: u32,
    paused_until: Option<Instant>,
}

impl FastTrouble {
    /// A batch failed at `now`; `unavailable`: for want of a stream leader. Returns whether this
    /// failure starts an episode (log it as a warning; the rest of the episode at debug).
    pub(super) fn failed(
        &mut self,
        now: Instant,
        unavailable: bool,
        base: Duration,
        max: Duration,
    ) -> bool {
        self.failures = self.failures.saturating_add(1);
        if unavailable {
            let exp = self.unavailable.min(16);
            self.unavailable = self.unavailable.saturating_add(1);
            let pause = base.saturating_mul(1 << exp).min(max);
            self.paused_until = now.checked_add(pause);
        }
        self.failures == 1
    }

    /// The server accepted a batch: the episode (if any) is over. Returns how many batches
    /// failed in it.
    pub(super) fn accepted(&mut self) -> Option<u32> {
        let failures = std::mem::take(&mut self.failures);
        self.unavailable = 0;
        self.paused_until = None;
        (failures > 0).then_some(failures)
    }

    /// Until when no new batch may open (`None`: it may now).
    pub(super) fn paused(&self, now: Instant) -> Option<Instant> {
        self.paused_until.filter(|until| *until > now)
    }
}

/// Whether a fast-batch failure is the stream answering with no responders (503): it has no
/// leader right now (an election, a partition) — transient, worth a back-off, not a storm of
/// new batches.
pub(super) fn unavailable(error: &Error) -> bool {
    error
        .cause()
        .and_then(|c| c.downcast_ref::<FastPublishError>())
        .is_some_and(empty_reply)
}

/// jetstream-extra 0.3 parses every reply on the batch inbox as JSON and ignores its status:
/// a 503 "no responders" (no stream leader to take the batch) has no body, so it comes back
/// as a serialization error at line 1, column 0 of an empty payload. Nothing else the server
/// sends there is empty. (A workaround for the library, written by hand: it keeps no status.)
fn empty_reply(e: &FastPublishError) -> bool {
    e.kind() == FastPublishErrorKind::Serialization
        && std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<serde_json::Error>())
            .is_some_and(|j| j.is_eof() && j.line() == 1 && j.column() == 0)
}

fn fast_error(e: FastPublishError, stream: &str, what: &str) -> Error {
    let kind = match e.kind() {
        FastPublishErrorKind::Timeout => ErrorKind::TimedOut,
        FastPublishErrorKind::NotEnabled => ErrorKind::Unsupported,
        _ => ErrorKind::Other,
    };
    let context = if empty_reply(&e) {
        format!(
            "{what} to stream {stream:?}: no responders (an empty 503 reply): the stream has no \
             leader right now (an election, a partition); retried after a pause"
        )
    } else {
        format!("{what} to stream {stream:?}")
    };
    Error::with_source(kind, context, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_error(payload: &[u8]) -> FastPublishError {
        let e = serde_json::from_slice::<serde_json::Value>(payload).unwrap_err();
        FastPublishError::with_source(FastPublishErrorKind::Serialization, e)
    }

    #[test]
    fn one_warning_per_episode_and_a_doubling_pause_while_the_stream_has_no_leader() {
        let (base, max) = (Duration::from_millis(50), Duration::from_millis(300));
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = FastTrouble::default();
        assert_eq!(t.paused(t0), None);
        // (at, no leader, starts an episode, paused until)
        let table = [
            (0, true, true, Some(ms(50))),
            (50, true, false, Some(ms(150))),
            (150, true, false, Some(ms(350))),
            (350, true, false, Some(ms(650))), // capped at 300 ms
            (650, false, false, None),         // a timeout: no new pause
        ];
        for (at, no_leader, starts, until) in table {
            assert_eq!(t.failed(ms(at), no_leader, base, max), starts, "at {at}");
            assert_eq!(t.paused(ms(at)), until, "at {at}");
        }
        assert_eq!(t.paused(ms(649)), Some(ms(650)));
        assert_eq!(t.accepted(), Some(5));
        assert_eq!(t.paused(ms(0)), None);
        assert_eq!(t.accepted(), None);
        // A new episode warns again and starts from the base pause.
        assert!(t.failed(ms(1000), true, base, max));
        assert_eq!(t.paused(ms(1000)), Some(ms(1050)));
    }

    #[test]
    fn an_empty_reply_is_a_stream_without_a_leader() {
        // What jetstream-extra 0.3 makes of a 503 status reply (no body) on the batch inbox,
        // seen ~1,500 times in a row after a partition healed (chaos, seed 7).
        let e = fast_error(parse_error(b""), "CHAOS", "adding to a fast-ingest batch");
        assert!(unavailable(&e), "{e}");
        assert!(e.to_string().contains("no leader"), "{e}");
        let table = [
            fast_error(parse_error(b"{\"type\":"), "S", "adding"),
            fast_error(parse_error(b"garbage"), "S", "adding"),
            fast_error(
                FastPublishError::new(FastPublishErrorKind::Timeout),
                "S",
                "adding",
            ),
            fast_error(
                FastPublishError::new(FastPublishErrorKind::FlowError),
                "S",
                "adding",
            ),
        ];
        for e in table {
            assert!(!unavailable(&e), "{e}");
        }
    }
}
