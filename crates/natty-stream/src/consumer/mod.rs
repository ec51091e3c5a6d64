//! [`Consumer`]: a durable pull consumer driven by a handler (Go natty `Consume`).
//!
//! - `options.rs`: [`ConsumeOptions`] and their validation.
//! - `pull.rs`: one pull request, watched by its heartbeat (natty's pull loop; async-nats'
//!   `Batch` goes deaf after an idle heartbeat).
//! - `health.rs`: is the durable still there; back-off with jitter; one warning per change.
//! - `settle.rs`: the handler on one message, then ack / nak / dead-letter / term.
//! - `ledger.rs`: handler failures per message in a KV bucket (the delivery limit counts them).
//! - `ordered.rs`: per-key order, which waiting message may start next.
//! - `handover.rs`: an exclusive consumer's start and stop put unfinished messages back in order.
//! - `gap.rs`: an exclusive consumer ordered by key runs nothing past a delivery that never
//!   arrived.
//! - `stats.rs`: counters.

mod gap;
mod handover;
mod health;
mod ledger;
mod options;
mod ordered;
mod pull;
mod settle;
mod stats;

use std::{
    collections::VecDeque,
    future::Future,
    pin::{Pin, pin},
    sync::Arc,
    time::Duration,
};

use async_nats::jetstream::{self, AckKind, consumer::pull::Config as PullConfig};
use futures::{FutureExt, StreamExt, stream::FuturesUnordered};
use natty_core::{Client, names};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

pub use options::ConsumeOptions;
pub use ordered::OrderKey;
pub use settle::{Action, ConsumeError};
pub use stats::ConsumerStats;

use self::{
    gap::{Deliveries, Delivery, ResetFailed},
    health::{Durable, Health, Lookup, Presence, StreamFacts},
    ledger::Ledger,
    ordered::{Arrival, Keys},
    pull::{Pull, PullEvent},
    settle::{Known, Outcome, Settings, Shared},
    stats::Counters,
};
use crate::{Error, ErrorKind, HandlerError, Message, error::from_core};

/// Metadata key on the durable holding natty's delivery limit (the server's is unlimited).
pub(crate) const MAX_DELIVER_METADATA: &str = "natty.max_deliver";

/// A durable consumer to run a handler on. Cheap to clone; clones share counters.
#[derive(Debug, Clone)]
pub struct Consumer {
    client: Client,
    stream: String,
    durable: String,
    options: ConsumeOptions,
    stats: Arc<Counters>,
}

impl Consumer {
    /// A consumer of the durable `durable` on `stream` (create it with
    /// [`ensure_consumer`](crate::ensure_consumer)).
    pub fn new(
        client: Client,
        stream: &str,
        durable: &str,
        options: ConsumeOptions,
    ) -> Result<Self, Error> {
        names::stream(stream).map_err(from_core)?;
        names::consumer(durable).map_err(from_core)?;
        options.validate()?;
        Ok(Self {
            client,
            stream: stream.to_owned(),
            durable: durable.to_owned(),
            options,
            stats: Arc::default(),
        })
    }

    /// Counters and last activity.
    pub fn stats(&self) -> ConsumerStats {
        self.stats.snapshot()
    }

    /// Runs `handler` on every message until `cancel` fires (Go `Consume`). `Ok(())` acks,
    /// a retryable [`HandlerError`] naks with a delay growing with the failure count, a
    /// permanent one (or a retryable one at the delivery limit) dead-letters and terminates.
    /// Running handlers, and pulled messages waiting for a handler slot, are kept alive with
    /// in-progress acks every `ack_wait / 3`; a handler running longer than
    /// [`ConsumeOptions::handler_timeout`] is cancelled and counts as a retryable failure.
    ///
    /// The delivery limit ([`ConsumerConfig::max_deliver`](crate::ConsumerConfig::max_deliver))
    /// counts *handler failures*, not deliveries: a message is given up on only after its
    /// handler ran and failed that many times. Messages natty hands back itself (a stop, a
    /// handler cut off by the stop deadline, messages stranded in an abandoned pull, a crash)
    /// are delivered again without counting. Failures are counted in the KV bucket
    /// `natty_failures` (created on the first failure, with the consumed stream's replicas;
    /// entries expire two days after their last failure), keyed by stream, the consumer's
    /// [`identity`](ConsumeOptions::identity) and stream sequence, so the count survives a
    /// restart of the process. It is written only when a handler fails and read only for a
    /// redelivered message, so handlers that succeed cost nothing. If the bucket cannot be
    /// used (no permission, an outage), failed messages are retried with a delay and never
    /// given up on for the limit (fail safe), with one warning per cause. A message that
    /// kills the process while its handler runs is not a counted failure: it comes back
    /// after `ack_wait` every time (see [`ConsumerStats::redelivered`]). Every give-up is
    /// logged at `warn` with subject, sequence, deliveries, failures and reason.
    ///
    /// A pull that misses two heartbeats is re-issued. If the durable or its stream is
    /// deleted, `consume` backs off (with jitter, one warning) and carries on if it is
    /// re-created within [`ConsumeOptions::consumer_gone_grace`]; otherwise it returns
    /// `ConsumerNotFound` (or `StreamNotFound`) once running handlers finished.
    ///
    /// # Stopping
    ///
    /// On cancel, within [`ConsumeOptions::stop_timeout`] (default 15 s):
    /// 1. It stops pulling: the open pull request's inbox is unsubscribed. What the server
    ///    pushed into it that had not arrived yet is redelivered after `ack_wait` (an
    ///    [`exclusive`](ConsumeOptions::exclusive) consumer puts it back at once, step 4).
    /// 2. Messages pulled but not started are handed back (nak'ed: redelivered at once, to the
    ///    durable's next reader). With [`ordered_by_key`](ConsumeOptions::ordered_by_key) they
    ///    are instead started in key order until the deadline, and kept alive while they wait.
    /// 3. Running handlers finish and are acked. At the deadline the ones still running are
    ///    cancelled (their futures dropped) and their messages handed back, as is anything
    ///    still waiting.
    /// 4. Acks are flushed to the server (bounded by the client's request timeout); an
    ///    exclusive consumer then resets the durable to its ack floor if the server sent
    ///    messages that never arrived (a few seconds at most).
    ///
    /// Nothing handed back counts against the delivery limit. The stats are returned.
    ///
    /// Cancel safety: dropping the future instead stops every handler at its next await and
    /// abandons in-flight messages, which the server redelivers after `ack_wait`
    /// (at-least-once either way; not counted as failures either).
    pub async fn consume<H, Fut>(
        &self,
        cancel: CancellationToken,
        handler: H,
    ) -> Result<ConsumerStats, Error>
    where
        H: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let span =
            info_span!("natty.stream.consume", stream = %self.stream, durable = %self.durable);
        self.run(cancel, Arc::new(handler)).instrument(span).await
    }

    async fn run<H, Fut>(
        &self,
        cancel: CancellationToken,
        handler: Arc<H>,
    ) -> Result<ConsumerStats, Error>
    where
        H: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let mut health = Health::new(
            self.client.jetstream().clone(),
            &self.stream,
            &self.durable,
            self.options.consumer_gone_grace,
        );
        // Transient trouble at start (timeouts, 503 during an election) is waited out within
        // the grace period, like later on; cancel ends the wait.
        let Durable {
            mut consumer,
            stream: mut facts,
        } = tokio::select! {
            () = cancel.cancelled() => return Ok(self.stats()),
            found = health.open() => found?,
        };
        if self.options.exclusive {
            handover::resume(&mut consumer).await;
        }
        // Exclusive and ordered by key: the consumer sequence expected next, to see a
        // delivery that never arrived (gap.rs); `resync`: one did, reset before pulling again.
        let mut deliveries =
            (self.options.exclusive && self.options.ordered.is_some()).then(|| {
                let last = consumer.cached_info().delivered.consumer_sequence;
                Deliveries::after(last)
            });
        let mut resync = false;
        let mut last_reset: Option<Instant> = None;
        let mut settings = settings_of(&consumer, facts, &self.stream, &self.durable);
        let mut keepalive = keepalive_ticker(settings.keepalive);
        let shared = Arc::new(Shared {
            js: self.client.jetstream().clone(),
            stream: self.stream.clone(),
            durable: self.durable.clone(),
            identity: self
                .options
                .identity
                .clone()
                .unwrap_or_else(|| self.durable.clone()),
            // A defaulted identity counts failures per incarnation of the durable: one deleted
            // and re-created to reprocess starts from none (it would otherwise give up at once
            // on what the old one failed). An explicit identity spans durables on purpose.
            ledger_identity: match &self.options.identity {
                Some(identity) => identity.clone(),
                None => format!(
                    "{}@{}",
                    self.durable,
                    consumer.cached_info().created.unix_timestamp_nanos()
                ),
            },
            options: self.options.clone(),
            stats: self.stats.clone(),
            ledger: Ledger::new(self.client.jetstream().clone()),
            abandon: CancellationToken::new(),
        });
        let o = &self.options;
        // Pulled messages waiting for a handler slot; ordered by key: in key order (handlers
        // always run as tasks then).
        let mut waiting = match o.ordered.clone() {
            Some(key) => Queue::Keyed(Box::new(Keys::new(key))),
            None => Queue::Fifo(VecDeque::new()),
        };
        let mut running: FuturesUnordered<Running> = FuturesUnordered::new();
        let inline_mode = o.concurrency == 1 && !waiting.ordered();
        let mut inline = pin!(None);
        let mut pull: Option<Pull> = None;
        // When set, no pull is issued before this instant (back-off after a problem), and the
        // durable is looked up first.
        let mut hold: Option<Instant> = None;
        // The durable being looked up (after the hold), alongside everything else.
        let mut checking: Option<Lookup> = None;
        // The last pull was refused for its configuration (409 Exceeded MaxRequest...).
        let mut refused_for_config = false;
        // Ordered by key: the durable's ack floor is read now and then, and the acked
        // sequences remembered at or below it forgotten (ordered.rs).
        let mut prune = tokio::time::interval_at(Instant::now() + PRUNE_EVERY, PRUNE_EVERY);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reading_floor: Option<FloorRead> = None;
        // While a back-off holds, the connection is watched: once it is back after being down
        // (a server restart), the durable is looked up at once instead of after the rest of a
        // back-off that grew during the outage.
        let nats = self.client.nats().clone();
        let mut connection_watch = tokio::time::interval(CONNECTION_WATCH);
        connection_watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_down = false;
        // Exclusive consumers: the highest consumer sequence that arrived, and how many
        // messages were handed back at stop (see handover.rs).
        let mut last_delivery = 0u64;
        let mut handed_back = 0u64;
        info!("consuming");
        let outcome = loop {
            // Start handlers while there are free slots. One at a time (concurrency 1) the
            // handler is polled right here, in order, without a task or an allocation, and
            // most handlers finish on their first poll.
            while let Some(w) = (if inline_mode {
                inline.is_none()
            } else {
                running.len() < o.concurrency
            })
            .then(|| waiting.pick(Instant::now()))
            .flatten()
            {
                let (key, known, seq, pos) = (w.key, w.known, w.seq, w.pos);
                let work = shared
                    .clone()
                    .process(w.message, handler.clone(), settings, known);
                if inline_mode {
                    inline.set(Some(work));
                    if run_slot(inline.as_mut()).now_or_never().is_none() {
                        break;
                    }
                    inline.set(None);
                } else {
                    running.push(spawn_handler(work, key, seq, pos));
                }
            }
            if resync
                && pull.is_none()
                && hold.is_none()
                && let Some(t) = last_reset.filter(|t| t.elapsed() < gap::RESET_INTERVAL)
            {
                // Missing again right after a reset: not at once again (no hot loop).
                hold = Some(t + gap::RESET_INTERVAL);
            }
            if resync && pull.is_none() && hold.is_none() {
                last_reset = Some(Instant::now());
                let reset = tokio::select! {
                    () = cancel.cancelled() => break Ok(()),
                    r = gap::reset(&mut consumer) => r,
                };
                match reset {
                    Ok(d) => {
                        deliveries = Some(d);
                        resync = false;
                    }
                    Err(ResetFailed::Transient(e)) => {
                        hold = Some(health.trouble(format!(
                            "resetting the durable after missing deliveries: {e}"
                        )));
                    }
                    Err(ResetFailed::Refused) => {
                        // Logged; looking for gaps would only drop messages from now on.
                        deliveries = None;
                        resync = false;
                    }
                }
            }
            if pull.is_none() && waiting.len() <= o.batch / 2 && hold.is_none() {
                let (n, expires, heartbeat) = settings.pull_size(o, waiting.len());
                match Pull::start(
                    self.client.nats(),
                    self.client.jetstream(),
                    &consumer,
                    n,
                    expires,
                    heartbeat,
                )
                .await
                {
                    Ok(p) => pull = Some(p),
                    Err(e) => {
                        hold = Some(health.trouble(format!("pull request failed: {e}")));
                    }
                }
            }
            // A retry held for its key (ordered by key) becomes due.
            let next_due = waiting.next_due().filter(|_| running.len() < o.concurrency);
            tokio::select! {
                biased;
                () = cancel.cancelled() => break Ok(()),
                Some(done) = running.next(), if !running.is_empty() => {
                    if let Some(done) = done {
                        waiting.finished(done);
                    }
                }
                () = sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {}
                _ = run_slot(inline.as_mut()), if inline.is_some() => inline.set(None),
                event = next_event(&mut pull) => {
                    let Some(p) = pull.as_mut() else { continue };
                    // A pull that ended at once and empty is trouble, not health: judged
                    // first, so a server answering every pull with an immediate 408 does
                    // not reset the back-off each time.
                    let early = matches!(event, PullEvent::Done)
                        && p.ended_early(settings.pull_size(o, 0).1);
                    if p.alive() && !early {
                        health.healthy();
                        refused_for_config = false;
                    }
                    match event {
                        PullEvent::Message(m) => {
                            if self
                                .take_in([m], &mut waiting, &mut last_delivery, &mut deliveries)
                                .await
                            {
                                if let Some(p) = pull.take() {
                                    p.close().await;
                                }
                                resync = true;
                            }
                        }
                        PullEvent::Done => {
                            if early {
                                hold = Some(health.trouble("pull ended at once, empty".to_owned()));
                            }
                            pull = None;
                        }
                        PullEvent::Stalled => {
                            health.stalled(o.heartbeat * 2);
                            Counters::add(&self.stats.repulls);
                            let ready = p.ready();
                            pull = None;
                            resync |= self
                                .take_in(ready, &mut waiting, &mut last_delivery, &mut deliveries)
                                .await;
                        }
                        PullEvent::Refused(status) => {
                            Counters::add(&self.stats.repulls);
                            // Refused for its configuration (a push durable; a limit the
                            // pull exceeds even after the durable was looked up again and
                            // the pull clamped to it): retrying cannot help.
                            if refused_by_config(&status) {
                                if refused_for_config || status.contains("push based") {
                                    pull = None;
                                    break Err(Error::new(
                                        ErrorKind::ConfigMismatch,
                                        format!(
                                            "consuming {:?} on stream {:?}: the server refuses \
                                             the pull: {status}",
                                            self.durable, self.stream
                                        ),
                                    ));
                                }
                                refused_for_config = true;
                            }
                            let ready = p.ready();
                            pull = None;
                            resync |= self
                                .take_in(ready, &mut waiting, &mut last_delivery, &mut deliveries)
                                .await;
                            hold = Some(health.trouble(format!("pull ended by the server: {status}")));
                        }
                    }
                }
                _ = keepalive.tick(), if !waiting.is_empty() => {
                    waiting.keep_alive(settings.keepalive).await;
                }
                _ = prune.tick(), if reading_floor.is_none()
                    && matches!(&waiting, Queue::Keyed(k) if k.remembered() > 0) =>
                {
                    let c = consumer.clone();
                    reading_floor = Some(Box::pin(async move {
                        match c.get_info().await {
                            Ok(info) => Some(info.ack_floor.stream_sequence),
                            Err(e) => {
                                debug!(error = %e, "reading the ack floor failed: acked sequences kept");
                                None
                            }
                        }
                    }));
                }
                floor = poll_floor(&mut reading_floor) => {
                    reading_floor = None;
                    if let (Some(floor), Queue::Keyed(keys)) = (floor, &mut waiting) {
                        keys.forget_acked_through(floor);
                    }
                }
                () = sleep_until(hold.unwrap_or_else(Instant::now)), if hold.is_some() && checking.is_none() => {
                    checking = Some(Box::pin(health.check()));
                }
                _ = connection_watch.tick(), if hold.is_some() => {
                    let up = nats.connection_state() == async_nats::connection::State::Connected;
                    if !up {
                        was_down = true;
                    } else if std::mem::take(&mut was_down) {
                        // A lookup sent while the connection was going down is never
                        // answered: it would hold the consumer until its request timeout
                        // (seen: 8.8 s after a server restart). Dropped for a fresh one.
                        debug!("reconnected: looking the durable up now");
                        checking = None;
                        hold = Some(Instant::now());
                    }
                }
                found = poll_check(&mut checking) => {
                    checking = None;
                    match health.judge(found) {
                        Presence::Here(c) => {
                            let Durable { consumer: c, stream: f } = *c;
                            // A durable created again (or its stream: sequences start over)
                            // has nothing in common with what this run acked.
                            if (c.cached_info().created != consumer.cached_info().created
                                || f != facts)
                                && let Queue::Keyed(keys) = &mut waiting
                            {
                                keys.forget_acked();
                                // A floor read of the earlier durable means nothing here.
                                reading_floor = None;
                            }
                            (consumer, facts) = (c, f);
                            settings = settings_of(&consumer, facts, &self.stream, &self.durable);
                            keepalive = keepalive_ticker(settings.keepalive);
                            hold = None;
                        }
                        Presence::Wait(until) => hold = Some(until),
                        Presence::Gone(e) => break Err(e),
                    }
                }
            }
        };
        // Stop pulling: what already arrived joins the waiting ones. Past a gap nothing is
        // taken: not counted in `last_delivery`, so the exclusive consumer's stop puts it back
        // (handover.rs).
        if let Some(mut p) = pull.take() {
            let ready = p.ready();
            self.take_in(ready, &mut waiting, &mut last_delivery, &mut deliveries)
                .await;
            p.close().await;
        }
        let deadline = Instant::now() + o.stop_timeout;
        info!(
            running = running.len() + usize::from(inline.is_some()),
            pulled = waiting.len(),
            stop_timeout = ?o.stop_timeout,
            "stopping"
        );
        // Not ordered: what waits for a slot is handed back at once. Ordered by key: the
        // server does not redeliver nak'ed messages in the order they were nak'ed (measured:
        // three naks in stream order came back second, third, first), so handing them back
        // would let the next reader run a key out of order: pulled messages go on starting in
        // key order until the deadline, kept alive while they wait. Either way, at the
        // deadline the handlers still running are cancelled and everything left is handed
        // back (nak'ed, not counted as a failure; an exclusive next reader gets it first and
        // in order, see handover.rs).
        if !waiting.ordered() {
            for w in waiting.drain() {
                shared.hand_back(&w.message).await;
                handed_back += 1;
            }
        }
        let mut abandoned = false;
        loop {
            if !abandoned && waiting.ordered() {
                while running.len() < o.concurrency {
                    let Some(w) = waiting.pick(Instant::now()) else {
                        break;
                    };
                    let work =
                        shared
                            .clone()
                            .process(w.message, handler.clone(), settings, w.known);
                    running.push(spawn_handler(work, w.key, w.seq, w.pos));
                }
            }
            if running.is_empty() && inline.is_none() {
                break;
            }
            let next_due = waiting
                .next_due()
                .filter(|_| !abandoned && running.len() < o.concurrency);
            tokio::select! {
                biased;
                Some(done) = running.next(), if !running.is_empty() => {
                    if let Some(done) = done {
                        handed_back += u64::from(matches!(done.outcome, Outcome::HandedBack));
                        waiting.finished(done);
                    }
                }
                outcome = run_slot(inline.as_mut()), if inline.is_some() => {
                    inline.set(None);
                    handed_back += u64::from(matches!(outcome, Some(Outcome::HandedBack)));
                }
                () = sleep_until(next_due.unwrap_or(deadline)), if next_due.is_some() => {}
                _ = keepalive.tick(), if !waiting.is_empty() => {
                    waiting.keep_alive(settings.keepalive).await;
                }
                () = sleep_until(deadline), if !abandoned => {
                    abandoned = true;
                    info!(
                        running = running.len() + usize::from(inline.is_some()),
                        "stop deadline: cancelling the handlers still running, handing back \
                         their messages"
                    );
                    shared.abandon.cancel();
                }
            }
        }
        // Not started by the deadline, or held for a retry (ordered by key): handed back.
        for w in waiting.drain() {
            shared.hand_back(&w.message).await;
            handed_back += 1;
        }
        // Acks are fire-and-forget publishes: make sure they left before we report done. The
        // wait is bounded: during an outage flush waits for the reconnect, and cancel must
        // still return (the server redelivers unacked messages after ack_wait).
        let bound = self.client.request_timeout();
        match tokio::time::timeout(bound, self.client.nats().flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "flushing acks"),
            Err(_) => warn!(
                ?bound,
                "flushing acks timed out (no connection?): unsent acks' messages come back \
                 after ack_wait"
            ),
        }
        if o.exclusive && outcome.is_ok() {
            handover::put_back(&mut consumer, last_delivery, handed_back).await;
        }
        let stats = self.stats();
        match outcome {
            Ok(()) => {
                info!(?stats, "consumer stopped");
                Ok(stats)
            }
            Err(e) => {
                warn!(error = %e, ?stats, "consumer gone: stopped");
                Err(e)
            }
        }
    }

    /// Takes arriving messages in, in order (see [`queue`]). Exclusive and ordered by key
    /// (`deliveries` set): at a gap in the consumer sequence, the message that shows it and
    /// the rest are dropped, not run (gap.rs); returns whether that happened.
    async fn take_in(
        &self,
        messages: impl IntoIterator<Item = jetstream::Message>,
        waiting: &mut Queue,
        last_delivery: &mut u64,
        deliveries: &mut Option<Deliveries>,
    ) -> bool {
        for m in messages {
            // (Metadata parsed a second time in this mode only.)
            if let Some(d) = deliveries.as_mut()
                && let Ok(info) = m.info()
                && let Delivery::Gap { expected, got } = d.arrived(info.consumer_sequence)
            {
                warn!(
                    expected,
                    got,
                    subject = %m.subject,
                    stream_sequence = info.stream_sequence,
                    "deliveries never arrived: nothing after them runs; the durable is reset \
                     to its ack floor so they come again first"
                );
                Counters::add(&self.stats.gaps);
                return true;
            }
            let seq = self.received(&m, last_delivery);
            queue(waiting, m, seq, &self.stats).await;
        }
        false
    }

    /// Counts an arrived message and returns its stream sequence (0 if its metadata does not
    /// parse); `last_delivery` keeps the highest consumer sequence seen. The metadata is parsed
    /// here once per message (parsing it showed in the consume profile).
    fn received(&self, m: &jetstream::Message, last_delivery: &mut u64) -> u64 {
        Counters::add(&self.stats.delivered);
        crate::obs::consumed(m);
        self.stats.touch();
        let Ok(info) = m.info() else { return 0 };
        *last_delivery = (*last_delivery).max(info.consumer_sequence);
        if info.delivered > 1 {
            Counters::add(&self.stats.redelivered);
        }
        info.stream_sequence
    }
}

/// A pulled message waiting for a handler slot, and when it was last kept alive.
#[derive(Debug)]
struct Waiting {
    message: jetstream::Message,
    /// Its stream sequence (0: unknown).
    seq: u64,
    touched: Instant,
    /// Ordered by key: its key (`None`: none, or not ordered).
    key: Option<Arc<str>>,
    /// A failed message held for a retry: not started before this.
    not_before: Option<Instant>,
    /// Retries held in place and failures counted so far.
    known: Known,
    /// Ordered by key: its arrival position (a retry keeps it).
    pos: u64,
}

impl Waiting {
    fn new(message: jetstream::Message, seq: u64) -> Self {
        Self {
            message,
            seq,
            touched: Instant::now(),
            key: None,
            not_before: None,
            known: Known::default(),
            pos: 0,
        }
    }
}

/// A handler task that ended (spawned handlers only).
struct Finished {
    key: Option<Arc<str>>,
    seq: u64,
    /// Its arrival position (ordered by key).
    pos: u64,
    outcome: Outcome,
}

type Running = Pin<Box<dyn Future<Output = Option<Finished>> + Send>>;

/// A handler as a task, aborted if the consume future is dropped.
fn spawn_handler(
    work: impl Future<Output = Outcome> + Send + 'static,
    key: Option<Arc<str>>,
    seq: u64,
    pos: u64,
) -> Running {
    let task = AbortOnDrop(tokio::spawn(work));
    Box::pin(async move {
        let outcome = task.wait().await.unwrap_or_else(|e| {
            // Panics are caught in `process`; this is an abort.
            warn!(error = %e, "handler task ended abnormally; its message comes back after ack_wait");
            Outcome::Settled
        });
        Some(Finished {
            key,
            seq,
            pos,
            outcome,
        })
    })
}

/// Pulled messages waiting for a handler slot.
enum Queue {
    /// In arrival order.
    Fifo(VecDeque<Waiting>),
    /// Ordered by key (boxed: its maps are large next to a `VecDeque`).
    Keyed(Box<Keys>),
}

impl Queue {
    fn ordered(&self) -> bool {
        matches!(self, Self::Keyed(_))
    }

    fn len(&self) -> usize {
        match self {
            Self::Fifo(q) => q.len(),
            Self::Keyed(k) => k.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next message that may start now.
    fn pick(&mut self, now: Instant) -> Option<Waiting> {
        match self {
            Self::Fifo(q) => q.pop_front(),
            Self::Keyed(k) => k.pick(now),
        }
    }

    /// Ordered by key: when a retry held for its key becomes due.
    fn next_due(&self) -> Option<Instant> {
        match self {
            Self::Fifo(_) => None,
            Self::Keyed(k) => k.next_due(),
        }
    }

    /// Everything waiting, in arrival order.
    fn drain(&mut self) -> Vec<Waiting> {
        match self {
            Self::Fifo(q) => q.drain(..).collect(),
            Self::Keyed(k) => k.drain(),
        }
    }

    /// A handler task ended (ordered by key: its key may run again; a message held for a
    /// retry goes back to the front of its key, where it blocks the key's later messages
    /// until it is due).
    fn finished(&mut self, done: Finished) {
        let Self::Keyed(keys) = self else { return };
        let held = matches!(done.outcome, Outcome::Hold { .. });
        let acked = matches!(done.outcome, Outcome::Acked);
        let retry = match done.outcome {
            Outcome::Hold {
                message,
                delay,
                retries,
                failures,
            } => {
                let mut w = Waiting::new(*message, done.seq);
                w.key = done.key.clone();
                w.known = Known { retries, failures };
                w.not_before = Some(Instant::now() + delay);
                w.pos = done.pos;
                Some(w)
            }
            _ => None,
        };
        keys.finished(done.key.as_ref(), done.seq, !held, acked, retry);
    }

    /// Keeps waiting messages alive: called every `keepalive / 2`, so a waiting message is
    /// touched at most `keepalive` (ack_wait / 3) after it arrived or was last touched.
    async fn keep_alive(&mut self, keepalive: Duration) {
        let now = Instant::now();
        let due = keepalive / 2;
        let all: Box<dyn Iterator<Item = &mut Waiting> + Send> = match self {
            Self::Fifo(q) => Box::new(q.iter_mut()),
            Self::Keyed(k) => Box::new(k.iter_mut()),
        };
        for w in all.filter(|w| w.touched + due <= now) {
            debug!("waiting for a handler slot: in-progress ack");
            let _ = w.message.ack_with(AckKind::Progress).await;
            w.touched = now;
        }
    }
}

/// Queues an arriving message (with its key when ordered by key; a redelivery of one already
/// held is not queued twice, a replay of one already acked is acked again, not run).
async fn queue(waiting: &mut Queue, m: jetstream::Message, seq: u64, stats: &Counters) {
    match waiting {
        Queue::Fifo(q) => q.push_back(Waiting::new(m, seq)),
        Queue::Keyed(keys) => match keys.arrive(m, seq) {
            Arrival::Queued | Arrival::Held => {}
            Arrival::Replay(m) => {
                Counters::add(&stats.replays_skipped);
                if let Err(e) = m.ack().await {
                    debug!(seq, error = %e, "acking a replay again failed; it comes back");
                }
            }
        },
    }
}

/// How often the connection is looked at while a back-off holds the pull loop.
const CONNECTION_WATCH: Duration = Duration::from_millis(100);

/// Runs the handler in the slot to completion (`None` at once when the slot is empty).
async fn run_slot<F: Future>(slot: Pin<&mut Option<F>>) -> Option<F::Output> {
    match slot.as_pin_mut() {
        Some(work) => Some(work.await),
        None => None,
    }
}

async fn poll_check(checking: &mut Option<Lookup>) -> Result<Durable, Error> {
    match checking {
        Some(check) => check.await,
        None => std::future::pending().await,
    }
}

/// How often an ordered consumer that remembers acked sequences reads its durable's ack floor
/// to forget those at or below it (ordered.rs).
pub(crate) const PRUNE_EVERY: Duration = Duration::from_secs(30);

/// A read of the durable's ack floor (stream sequence), `None` when it failed.
type FloorRead = Pin<Box<dyn Future<Output = Option<u64>> + Send>>;

async fn poll_floor(reading: &mut Option<FloorRead>) -> Option<u64> {
    match reading {
        Some(r) => r.await,
        None => std::future::pending().await,
    }
}

fn keepalive_ticker(keepalive: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(keepalive / 2);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

async fn next_event(pull: &mut Option<Pull>) -> PullEvent {
    match pull {
        Some(p) => p.next().await,
        None => std::future::pending().await,
    }
}

/// Keep-alive interval and natty's delivery limit, from the durable's configuration.
fn settings_of(
    consumer: &jetstream::consumer::Consumer<PullConfig>,
    facts: StreamFacts,
    stream: &str,
    durable: &str,
) -> Settings {
    let config = &consumer.cached_info().config;
    let keepalive = (config.ack_wait / 3).max(Duration::from_millis(10));
    let ours = config
        .metadata
        .get(MAX_DELIVER_METADATA)
        .and_then(|v| v.parse::<u64>().ok());
    let max_deliver = match (ours, u64::try_from(config.max_deliver)) {
        (Some(ours), _) => Some(ours),
        (None, Ok(server)) if server > 0 => {
            warn!(
                stream,
                durable,
                max_deliver = server,
                "the durable has a server-side max_deliver (it was not made by natty's \
                 ensure_consumer): a message whose dead-letter publish fails on its last \
                 delivery is dropped by the server; re-run ensure_consumer to fix"
            );
            Some(server)
        }
        _ => None,
    };
    Settings {
        keepalive,
        max_deliver,
        max_batch: usize::try_from(config.max_batch).ok().filter(|n| *n > 0),
        max_expires: (!config.max_expires.is_zero()).then_some(config.max_expires),
        stream: facts,
    }
}

/// Whether a pull was refused for its configuration (409 "Exceeded MaxRequestBatch of 5",
/// "Exceeded MaxRequestExpires of 4s", "Exceeded MaxRequestMaxBytes", "Consumer is push based").
fn refused_by_config(status: &str) -> bool {
    status.contains("Exceeded MaxRequest") || status.contains("push based")
}

/// A spawned handler, aborted if the consume future is dropped (REVIEW.md: drop, not cancel).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn wait(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
