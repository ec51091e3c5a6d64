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

fn fast_error(e: FastPublishError, stream: &str, what: &str) -> Error {
    let kind = match e.kind() {
        FastPublishErrorKind::Timeout => ErrorKind::TimedOut,
        FastPublishErrorKind::NotEnabled => ErrorKind::Unsupported,
        _ => ErrorKind::Other,
    };
    Error::with_source(kind, format!("{what} to stream {stream:?}"), e)
}
