//! The loss audit: reads a stream and reports, per publisher instance, the messages it numbered
//! that the stream does not hold, the ones it holds twice, and the ones stored out of order.
//!
//! It needs nothing extra on the wire: every message a [`BatchPublisher`](crate::BatchPublisher)
//! (and so `Natty::publish`) sends without an id of the application's carries a `Nats-Msg-Id`
//! of `[<id_prefix>-]<instance>-<n>` — `instance` random per publisher, `n` counting from 1 in
//! the order `send` queued the messages. A number is taken only when the message is queued, so a
//! refused or cancelled `send` leaves no gap. The audit reads headers only (an ordered consumer
//! with `headers_only`), so it costs the stream's headers, not its payloads.
//!
//! What a finding means:
//! - **missing** `a-b`: the publisher queued these and the stream does not hold them. Either the
//!   publisher handed them back to the application as failed (its error channel, `flush`'s or
//!   `close`'s report), or they were removed (the stream's retention limits, a purge or delete),
//!   or the server lost them after acknowledging them. Only numbers between the lowest and the
//!   highest read are judged: a lost tail, or messages before the audited range, are not seen.
//! - **duplicates**: stored twice — a retry after the stream's duplicate window, or a
//!   re-published message.
//! - **out of order**: stored after a higher number of the same publisher (a retry stored
//!   late); nothing is lost.
//!
//! No library of the NATS ecosystem offers this, so it is natty's own code; the arithmetic is
//! [`Tally`] (no I/O), which a handler can also feed to watch for gaps as it consumes.

mod tally;

use std::{fmt, ops::RangeInclusive, time::Duration};

use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use futures::StreamExt;
use natty_core::{Client, names};
use tracing::{Instrument, debug, info, info_span, warn};

pub use tally::{EXAMPLES, PublisherAudit, Repeat, Tally, parse_generated};

use crate::{
    Error, ErrorKind,
    admin::{get_stream, other},
    error::from_core,
};

/// What to read: the whole stream by default.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    filter_subject: Option<String>,
    from_sequence: Option<u64>,
    idle_timeout: Duration,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            filter_subject: None,
            from_sequence: None,
            idle_timeout: Duration::from_secs(10),
        }
    }
}

impl AuditOptions {
    /// Only the messages of these subjects (a subject filter, wildcards allowed).
    #[must_use]
    pub fn filter_subject(mut self, filter: impl Into<String>) -> Self {
        self.filter_subject = Some(filter.into());
        self
    }

    /// Start at this stream sequence (default: the first the stream holds).
    #[must_use]
    pub fn from_sequence(mut self, sequence: u64) -> Self {
        self.from_sequence = Some(sequence);
        self
    }

    /// How long to wait for the next message before giving up (default 10 s): `TimedOut`.
    #[must_use]
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    fn validate(&self) -> Result<(), Error> {
        if let Some(f) = &self.filter_subject {
            names::subject_filter(f).map_err(from_core)?;
        }
        if self.from_sequence == Some(0) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "from_sequence must be at least 1",
            ));
        }
        if self.idle_timeout.is_zero() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "idle_timeout must not be zero",
            ));
        }
        Ok(())
    }
}

/// What [`audit_stream`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    /// The stream read.
    pub stream: String,
    /// The stream sequences read (first and last message read; `None` for none).
    pub sequences: Option<RangeInclusive<u64>>,
    /// Messages read.
    pub messages: u64,
    /// Messages without an id natty generated (the application's own `Nats-Msg-Id`, or none,
    /// e.g. from another client): not judged.
    pub unnumbered: u64,
    /// One entry per publisher instance, by name.
    pub publishers: Vec<PublisherAudit>,
}

impl AuditReport {
    /// Messages missing, over every publisher.
    pub fn missing(&self) -> u64 {
        self.publishers
            .iter()
            .map(PublisherAudit::missing_count)
            .sum()
    }

    /// Repeats stored, over every publisher.
    pub fn duplicates(&self) -> u64 {
        self.publishers.iter().map(|p| p.duplicates).sum()
    }

    /// Messages stored out of order, over every publisher.
    pub fn out_of_order(&self) -> u64 {
        self.publishers.iter().map(|p| p.out_of_order).sum()
    }

    /// Nothing missing and nothing stored twice (out-of-order messages are allowed).
    pub fn is_clean(&self) -> bool {
        self.missing() == 0 && self.duplicates() == 0
    }
}

impl fmt::Display for AuditReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = match &self.sequences {
            Some(r) => format!("sequences {}-{}", r.start(), r.end()),
            None => "no messages".to_owned(),
        };
        writeln!(
            f,
            "stream {}: {range}, {} messages, {} publishers, {} without a natty id",
            self.stream,
            self.messages,
            self.publishers.len(),
            self.unnumbered
        )?;
        writeln!(
            f,
            "missing {}, duplicated {}, out of order {}: {}",
            self.missing(),
            self.duplicates(),
            self.out_of_order(),
            if self.is_clean() {
                "clean"
            } else {
                "NOT CLEAN"
            }
        )?;
        for p in &self.publishers {
            writeln!(
                f,
                "  {}: {} messages, numbers {}-{}",
                p.publisher,
                p.messages,
                p.numbers.start(),
                p.numbers.end()
            )?;
            if !p.missing.is_empty() {
                writeln!(
                    f,
                    "    missing {}: {}",
                    p.missing_count(),
                    tally::Ranges(&p.missing)
                )?;
            }
            if p.duplicates > 0 {
                let examples: Vec<String> = p
                    .duplicate_examples
                    .iter()
                    .map(|r| format!("{}@{}", r.number, r.sequence))
                    .collect();
                writeln!(
                    f,
                    "    duplicated {} (number@sequence): {}",
                    p.duplicates,
                    examples.join(", ")
                )?;
            }
            if p.out_of_order > 0 {
                writeln!(f, "    out of order {}", p.out_of_order)?;
            }
        }
        Ok(())
    }
}

/// Reads `stream` (headers only) up to the last message it held when the audit started, and
/// reports per publisher what is missing, duplicated and out of order (see the
/// [module docs](self)). Errors: `InvalidName` / `InvalidConfig` (nothing sent),
/// `StreamNotFound`, `TimedOut` when no message came for `idle_timeout`.
pub async fn audit_stream(
    client: &Client,
    stream: &str,
    options: AuditOptions,
) -> Result<AuditReport, Error> {
    names::stream(stream).map_err(from_core)?;
    options.validate()?;
    let span = info_span!("natty.stream.audit", stream);
    read(client, stream, options).instrument(span).await
}

async fn read(client: &Client, name: &str, options: AuditOptions) -> Result<AuditReport, Error> {
    let mut stream = get_stream(client.jetstream(), name).await?;
    let state = stream
        .info()
        .await
        .map_err(|e| other(e, &format!("reading stream {name:?}")))?
        .state
        .clone();
    let mut report = AuditReport {
        stream: name.to_owned(),
        sequences: None,
        messages: 0,
        unnumbered: 0,
        publishers: Vec::new(),
    };
    let from = options.from_sequence.unwrap_or(state.first_sequence.max(1));
    let last = state.last_sequence;
    if state.messages == 0 || from > last {
        return Ok(report);
    }
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: options.filter_subject.clone().unwrap_or_default(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            headers_only: true,
            ..Default::default()
        })
        .await
        .map_err(|e| other(e, &format!("reading stream {name:?}")))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| other(e, &format!("reading stream {name:?}")))?;
    let mut tally = Tally::new();
    let mut first_read = None;
    let mut last_read = 0;
    loop {
        let next = tokio::time::timeout(options.idle_timeout, messages.next()).await;
        let message = match next {
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::TimedOut,
                    format!(
                        "auditing stream {name:?}: no message for {:?} after sequence {last_read} \
                         (reading up to {last})",
                        options.idle_timeout
                    ),
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                // The ordered consumer re-creates itself after most failures; one it reports
                // is worth a line, not the audit.
                warn!(error = %e, "reading the stream");
                continue;
            }
            Ok(Some(Ok(m))) => m,
        };
        let (sequence, pending) = match message.info() {
            Ok(i) => (i.stream_sequence, i.pending),
            Err(e) => {
                warn!(error = %e, "a message without JetStream metadata");
                continue;
            }
        };
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str());
        tally.observe(sequence, id);
        first_read.get_or_insert(sequence);
        last_read = sequence;
        if tally.messages().is_multiple_of(100_000) {
            debug!(read = tally.messages(), sequence, "auditing");
        }
        if sequence >= last || pending == 0 {
            break;
        }
    }
    let (publishers, unnumbered) = tally.finish();
    report.messages = publishers.iter().map(|p| p.messages).sum::<u64>() + unnumbered;
    report.unnumbered = unnumbered;
    report.publishers = publishers;
    report.sequences = first_read.map(|f| f..=last_read);
    if report.is_clean() {
        info!(
            messages = report.messages,
            publishers = report.publishers.len(),
            "audit: clean"
        );
    } else {
        warn!(
            messages = report.messages,
            missing = report.missing(),
            duplicates = report.duplicates(),
            "audit: messages missing or stored twice"
        );
    }
    Ok(report)
}
