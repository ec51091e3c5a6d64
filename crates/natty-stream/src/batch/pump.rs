//! The pump: the one background task of a [`BatchPublisher`](super::BatchPublisher). It owns
//! every piece of publishing state — the acks in flight, the retries, the open fast batch,
//! the routing table, the ledger of unfinished messages — so none of it needs a lock.
//!
//! Order: the pump numbers messages as they arrive, so "everything queued before a flush" is
//! exactly "every number up to the last one taken before the flush command" (senders race to
//! the queue; the queue does not reorder).

use std::{
    collections::VecDeque,
    future::{Future, IntoFuture},
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use async_nats::jetstream::{self, context::PublishErrorKind};
use futures::FutureExt;
use natty_core::retry::RetryPolicy;
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tracing::{debug, info, warn};

use super::{
    BatchConfig, Command, Counters, Outgoing, PublishMode,
    fast::{FastBatch, FastFailure, FastTrouble, unavailable},
    gate::Gate,
    handback::Handback,
    route::{Route, Routes},
};
use crate::{
    Error, ErrorKind,
    error::{from_publish, permanent_code, server_code, too_large},
};

/// How long an open fast batch waits for more messages before it is committed.
const FAST_LINGER: Duration = Duration::from_millis(2);

type AckResult = Result<jetstream::publish::PublishAck, Error>;
/// async-nats' own ack future (already boxed by it: no second box here).
type RawAck = Pin<
    Box<
        dyn Future<
                Output = Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
            > + Send,
    >,
>;

/// A pipelined publish awaiting its ack. Its deadline is checked by the pump's one ack timer
/// (deadlines grow in send order, so only the head's matters): no timer per message.
struct InFlight {
    m: Outgoing,
    /// The ack, or why the publish was not sent.
    ack: Result<RawAck, jetstream::context::PublishError>,
    /// The ack deadline runs from the send, not from when the ack is first polled: the queue
    /// is awaited head first, and a node that dies with thousands of acks owed must cost one
    /// ack timeout, not one per message in turn.
    deadline: Instant,
    /// Since the send, for the ack-latency metric (zero-sized without feature `metrics`).
    timer: crate::obs::Timer,
}

impl InFlight {
    /// The result of this attempt, with the context formatted only for a failure.
    fn result(
        &self,
        ack: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
    ) -> AckResult {
        if let Ok(ack) = &ack {
            crate::obs::acked(&ack.stream, crate::obs::Via::Batch, self.timer);
        }
        ack.map_err(|e| from_publish(e, self.context()))
    }

    fn context(&self) -> String {
        format!(
            "publishing {:?} to {:?} (attempt {})",
            self.m.msg_id,
            self.m.subject.as_str(),
            self.m.attempts
        )
    }
}

/// A message waiting to be sent again.
#[derive(Debug)]
struct Retry {
    at: Instant,
    /// After this instant a re-send could store a second copy (`None`: no limit, nothing of
    /// it may be stored yet).
    cutoff: Option<Instant>,
    error: Error,
    m: Outgoing,
}

/// Which message numbers are still unfinished: a ring of done-flags from the lowest
/// unfinished number (O(1) per message, no allocation once grown).
#[derive(Debug, Default)]
struct Ledger {
    /// Every number below this is finished.
    floor: u64,
    done: VecDeque<bool>,
}

impl Ledger {
    /// Registers the next number (numbers are taken in order, from 1).
    fn open(&mut self, seq: u64) {
        if self.done.is_empty() {
            self.floor = seq;
        }
        self.done.push_back(false);
    }

    fn finish(&mut self, seq: u64) {
        let Some(i) = seq
            .checked_sub(self.floor)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return;
        };
        if let Some(flag) = self.done.get_mut(i) {
            *flag = true;
        }
        while self.done.front() == Some(&true) {
            self.done.pop_front();
            self.floor += 1;
        }
    }

    /// Whether every number up to `mark` is finished.
    fn finished_up_to(&self, mark: u64) -> bool {
        self.done.is_empty() || self.floor > mark
    }
}

enum Step {
    Linger,
    AckTimer,
    Done(RawResult),
    RetryDue,
    Command(Option<Command>),
}

pub(super) struct Pump {
    js: jetstream::Context,
    /// The connection, for what its server accepts now (checked before every attempt).
    client: natty_core::Client,
    config: BatchConfig,
    routes: Routes,
    /// Where failed messages go.
    handback: Arc<Handback>,
    stats: Arc<Counters>,
    /// Pipelined publishes awaiting their ack, in send order.
    inflight: VecDeque<InFlight>,
    retries: Vec<Retry>,
    fast: Option<FastBatch>,
    ledger: Ledger,
    /// Messages taken from the queue so far (the last number given).
    received: u64,
    flushes: Vec<(u64, oneshot::Sender<()>)>,
    closes: Vec<oneshot::Sender<()>>,
    /// The time at the top of the current turn of the loop.
    now: Instant,
    /// The queue's bound: a place is freed when a message is taken.
    gate: Option<Arc<Gate>>,
    /// When a message last went into the open fast batch: it is committed once nothing came
    /// for [`FAST_LINGER`] after.
    last_fast_add: Instant,
    /// Fast batches failing in a row: the pause before the next one, one warning per episode.
    fast_trouble: FastTrouble,
}

impl Pump {
    pub(super) fn new(
        js: jetstream::Context,
        client: natty_core::Client,
        config: BatchConfig,
        fast_capable: bool,
        handback: Arc<Handback>,
        stats: Arc<Counters>,
    ) -> Self {
        Self {
            js,
            client,
            routes: Routes::new(config.mode, fast_capable),
            config,
            handback,
            stats,
            inflight: VecDeque::new(),
            retries: Vec::new(),
            fast: None,
            ledger: Ledger::default(),
            received: 0,
            flushes: Vec::new(),
            closes: Vec::new(),
            now: Instant::now(),
            gate: None,
            last_fast_add: Instant::now(),
            fast_trouble: FastTrouble::default(),
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>, gate: Arc<Gate>) {
        // However the task ends (done, panicked, aborted), senders waiting for room are told.
        let _closed = gate.close_on_drop();
        self.gate = Some(gate);
        // Acks come back in publish order (one connection, one stream leader), so a queue
        // awaited at its head does what a FuturesUnordered would, without its per-future
        // bookkeeping: measurably cheaper on the hot path.
        let mut open = true;
        // Two timers for the life of the task, re-armed lazily when they fire (not per message:
        // a timer registration per message showed in the profile): the open fast batch's
        // linger, and the head ack's deadline.
        let linger = tokio::time::sleep(FAST_LINGER);
        let ack_timer = tokio::time::sleep(self.config.ack_timeout);
        tokio::pin!(linger, ack_timer);
        loop {
            self.wake_flushes();
            if !open && self.inflight.is_empty() && self.retries.is_empty() && self.fast.is_none() {
                for c in self.closes.drain(..) {
                    let _ = c.send(());
                }
                debug!("batch publisher task done");
                return;
            }
            let next_retry = self.retries.iter().map(|r| r.at).min();
            let room = self.inflight.len() < self.config.max_in_flight;
            // New messages wait while retries pile up too (an outage): the queue, and so
            // `send`, pushes back instead of the retry list growing without bound.
            let room_for_new = self.room_for_new();
            let fast_open = self.fast.is_some();
            // The select only picks what happened; acting on it (which awaits) comes after,
            // so no borrow of the in-flight queue is held across an await.
            let step = tokio::select! {
                biased;
                result = head(&mut self.inflight), if !self.inflight.is_empty() => {
                    Step::Done(result)
                }
                () = &mut ack_timer, if !self.inflight.is_empty() => Step::AckTimer,
                () = sleep_until(next_retry), if next_retry.is_some() && room => Step::RetryDue,
                command = rx.recv(), if open && room_for_new => Step::Command(command),
                // A fast batch is committed once nothing came for a moment: that acks its tail
                // (flushes wait for it), and an idle batch would be timed out by the server.
                () = &mut linger, if fast_open => Step::Linger,
            };
            self.now = Instant::now();
            match step {
                Step::Linger => {
                    let due = self.last_fast_add + FAST_LINGER;
                    if self.now >= due {
                        self.commit_fast().await;
                    } else {
                        linger.as_mut().reset(due);
                    }
                }
                Step::AckTimer => {
                    // Every head past its deadline times out; then the timer follows the head.
                    while self
                        .inflight
                        .front()
                        .is_some_and(|f| f.deadline <= self.now)
                    {
                        if let Some(f) = self.inflight.pop_front() {
                            let error = Error::new(
                                ErrorKind::TimedOut,
                                format!("{}: no ack within the ack timeout", f.context()),
                            );
                            self.on_result(f.m, Err(error)).await;
                        }
                    }
                    if let Some(head) = self.inflight.front() {
                        ack_timer.as_mut().reset(head.deadline);
                    }
                }
                Step::Done(result) => {
                    if let Some(f) = self.inflight.pop_front() {
                        let result = f.result(result);
                        self.on_result(f.m, result).await;
                    }
                    // Acks already here are taken without going back through the select.
                    while let Some(f) = self.inflight.front_mut() {
                        let Some(ack) = ready_now(&mut f.ack) else {
                            break;
                        };
                        if let Some(f) = self.inflight.pop_front() {
                            let result = f.result(ack);
                            self.on_result(f.m, result).await;
                        }
                    }
                }
                Step::RetryDue => self.retry_due().await,
                Step::Command(Some(command)) => {
                    self.command(command, &mut rx).await;
                    // Take what else is already queued without going back through the select:
                    // one wake-up per burst, not per message.
                    while self.room_for_new() {
                        match rx.try_recv() {
                            Ok(command) => self.command(command, &mut rx).await,
                            Err(_) => break,
                        }
                    }
                }
                Step::Command(None) => open = false,
            }
        }
    }

    fn room_for_new(&self) -> bool {
        self.inflight.len() + self.retries.len() < self.config.max_in_flight
    }

    /// Acts on one command.
    async fn command(&mut self, command: Command, rx: &mut mpsc::UnboundedReceiver<Command>) {
        match command {
            Command::Publish(mut m) => {
                if let Some(gate) = &self.gate {
                    gate.release();
                }
                self.received += 1;
                m.seq = self.received;
                m.first_seen = self.now;
                self.ledger.open(m.seq);
                self.dispatch(m, true).await;
            }
            Command::Flush(tx, watch) => {
                if let Some(id) = watch {
                    self.handback.set_mark(id, self.received);
                }
                self.flushes.push((self.received, tx));
            }
            Command::Close(tx) => {
                self.closes.push(tx);
                // Whatever is still queued behind the close is taken (and published) first;
                // then the queue reports its end and the loop winds down.
                rx.close();
            }
        }
    }

    /// Wakes the flushes whose messages are all done.
    fn wake_flushes(&mut self) {
        let mut i = 0;
        while i < self.flushes.len() {
            if self.ledger.finished_up_to(self.flushes[i].0) {
                let (_, tx) = self.flushes.swap_remove(i);
                let _ = tx.send(());
            } else {
                i += 1;
            }
        }
    }

    /// Sends a message the way its stream takes it (`first`: its first time here, counted as
    /// published).
    async fn dispatch(&mut self, m: Outgoing, first: bool) {
        // Checked on `send` against the server of then; a reconnect since may have brought a
        // server that takes less.
        if let Err(exceeded) =
            self.client
                .limits()
                .check(m.subject.as_str(), m.headers_len, m.payload.len())
        {
            if first {
                crate::obs::published(&self.stream_label(&m), crate::obs::Via::Batch);
            }
            let what = format!("publishing {:?}", m.msg_id);
            return self.give_back(m, too_large(exceeded, &what));
        }
        let route = self.routes.route(&self.js, &m.subject).await;
        if first {
            match &route {
                Route::Fast(stream) | Route::Pipelined(Some(stream)) => {
                    crate::obs::published(stream, crate::obs::Via::Batch);
                }
                Route::Pipelined(None) | Route::Refused(..) => {
                    crate::obs::published(&self.stream_label(&m), crate::obs::Via::Batch);
                }
            }
        }
        match route {
            Route::Fast(_) if m.pipelined => self.publish(m).await,
            Route::Pipelined(_) => self.publish(m).await,
            Route::Fast(stream) => self.fast_add(stream, m).await,
            Route::Refused(kind, why) => {
                let error = Error::new(
                    kind,
                    format!(
                        "publishing {:?} to {:?}: {why}",
                        m.msg_id,
                        m.subject.as_str()
                    ),
                );
                self.give_back(m, error);
            }
        }
    }

    /// Sends one message (in queue order) and queues the future of its ack.
    async fn publish(&mut self, mut m: Outgoing) {
        m.attempts += 1;
        let headers = m.headers();
        let ack = self
            .js
            .publish_with_headers(m.subject.clone(), headers, m.payload.clone())
            .await
            .map(IntoFuture::into_future);
        // (`ack_timeout` is at most a day: no overflow.) The loop's clock is good enough: it
        // is at most one burst old, and the deadline only grows with it.
        let deadline = self.now + self.config.ack_timeout;
        let timer = crate::obs::Timer::start();
        self.inflight.push_back(InFlight {
            m,
            ack,
            deadline,
            timer,
        });
    }

    async fn on_result(&mut self, mut m: Outgoing, result: AckResult) {
        match result {
            Ok(ack) => {
                if ack.duplicate {
                    self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                self.done(m);
            }
            Err(error) => {
                if self.judge(&mut m, &error).await {
                    self.give_back(m, error);
                } else {
                    self.retry_or_give_back(m, error).await;
                }
            }
        }
    }

    /// Reads a failed attempt: marks `m` as possibly stored when the attempt went unanswered,
    /// and says whether the failure is permanent (no retry can fix it).
    async fn judge(&mut self, m: &mut Outgoing, error: &Error) -> bool {
        let publish = error
            .cause()
            .and_then(|c| c.downcast_ref::<jetstream::context::PublishError>());
        let code = error.cause().and_then(|c| server_code(c));
        match (publish.map(jetstream::context::PublishError::kind), code) {
            // The stream answered and refused: not stored by this attempt.
            (
                Some(PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence),
                _,
            ) => true,
            (_, Some(code)) if permanent_code(code) => {
                // Refused for what the message is (too big, bad headers): no attempt of it was
                // ever stored, whatever the attempts before could not tell.
                if matches!(code, 10054 | 10097) {
                    m.maybe_stored = false;
                }
                true
            }
            // Any other answer from the server: refused this time, maybe not next time.
            (_, Some(_)) => false,
            (Some(PublishErrorKind::StreamNotFound), _) => {
                // The server answered the stream-names request: it is up, and if no stream
                // matches, no retry will help.
                let found = self.js.stream_by_subject(m.subject.to_string()).await;
                let none = matches!(&found, Err(e) if e.kind() == jetstream::context::GetStreamByNameErrorKind::NotFound);
                debug!(subject = %m.subject, ?found, none, "is any stream capturing the subject?");
                none
            }
            // Never sent: the client refused it or had no room.
            (Some(PublishErrorKind::MaxAckPending), _) => false,
            // Sent, and no answer (timed out, connection lost): it may be stored.
            _ => {
                m.maybe_stored = true;
                false
            }
        }
    }

    /// Schedules another attempt, unless the attempts are used up or a re-send could come
    /// after the stream's duplicate window (then it could store a second copy).
    async fn retry_or_give_back(&mut self, m: Outgoing, error: Error) {
        if m.attempts >= self.config.max_attempts {
            return self.give_back(m, error);
        }
        // natty's one retry policy: doubling from `backoff_base` up to `backoff_max`, jittered
        // (publishers that failed together do not all re-send at the same instant).
        let delay =
            RetryPolicy::new(self.config.backoff_base, self.config.backoff_max).delay(m.attempts);
        let at = self.now + delay;
        let cutoff = if m.maybe_stored {
            match self.routes.duplicate_window(&self.js, &m.subject).await {
                // A margin of a tenth for the clocks and the wire.
                Some(window) => m.first_seen.checked_add(window - window / 10),
                // No stream known: nothing says how long a retry stays safe.
                None => Some(self.now),
            }
        } else {
            None
        };
        if cutoff.is_some_and(|c| at >= c) {
            return self.give_back_outside_window(m, error);
        }
        debug!(msg_id = %m.msg_id, attempts = m.attempts, ?delay, error = %error, "publish failed, will retry");
        self.retries.push(Retry {
            at,
            cutoff,
            error,
            m,
        });
    }

    fn give_back_outside_window(&mut self, m: Outgoing, error: Error) {
        let error = Error::with_source(
            error.kind(),
            format!(
                "publishing {:?} to {:?}: not retried after {} attempt(s): it may be stored, and \
                 a retry could come after the stream's duplicate window and store a second copy",
                m.msg_id,
                m.subject.as_str(),
                m.attempts
            ),
            error,
        );
        self.give_back(m, error);
    }

    async fn retry_due(&mut self) {
        let now = self.now;
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.retries.len() && self.inflight.len() + due.len() < self.config.max_in_flight
        {
            if self.retries[i].at <= now {
                due.push(self.retries.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|r| r.m.seq);
        for r in due {
            if r.cutoff.is_some_and(|c| now >= c) {
                self.give_back_outside_window(r.m, r.error);
                continue;
            }
            self.stats.retried.fetch_add(1, Ordering::Relaxed);
            crate::obs::retried(&self.stream_label(&r.m), crate::obs::Via::Batch);
            self.dispatch(r.m, false).await;
        }
    }

    /// Adds a message to the open fast batch (opening one if needed).
    async fn fast_add(&mut self, stream: Arc<str>, mut m: Outgoing) {
        self.last_fast_add = self.now;
        if self.fast.as_ref().is_some_and(|f| f.stream != stream) {
            self.commit_fast().await;
        }
        // The last batches failed for want of a stream leader: no new batch before the pause
        // is over. Meanwhile the message goes out on its own (pipelined), judged and retried
        // with back-off like any refused publish — parked instead, a stream that never gets a
        // leader (or was deleted) would let only one message a pause reach that judgement.
        if self.fast.is_none() && self.fast_trouble.paused(self.now).is_some() {
            m.pipelined = true;
            return self.publish(m).await;
        }
        let batch = match self.fast.take() {
            Some(batch) => batch,
            None => match FastBatch::open(&self.js, stream.clone(), self.config.ack_timeout) {
                Ok(batch) => batch,
                Err(error) => {
                    let mut tail = VecDeque::new();
                    tail.push_back((0, m));
                    return self
                        .fast_failed(FastFailure {
                            stream,
                            error,
                            tail,
                        })
                        .await;
                }
            },
        };
        let mut batch = batch;
        match batch.add(m).await {
            Ok(()) => {
                if let Some(failed) = self.fast_trouble.accepted() {
                    info!(stream = %stream, failed, "fast batches accepted again");
                }
                let (ledger, stats) = (&mut self.ledger, &self.stats);
                batch.settle(|stream, m| {
                    crate::obs::acked_since(stream, crate::obs::Via::Batch, m.first_seen);
                    finish(ledger, stats, &m);
                });
                self.fast = Some(batch);
            }
            Err(error) => self.fast_failed(batch.fail(error)).await,
        }
    }

    /// Commits the open batch: acks everything in it, or re-sends its tail.
    async fn commit_fast(&mut self) {
        let Some(batch) = self.fast.take() else {
            return;
        };
        let stream = batch.stream.clone();
        match batch.commit().await {
            Ok(stored) => {
                self.fast_trouble.accepted();
                for (_, m) in stored {
                    crate::obs::acked_since(&stream, crate::obs::Via::Batch, m.first_seen);
                    self.done(m);
                }
            }
            Err(failure) => self.fast_failed(failure.maybe_stored()).await,
        }
    }

    /// The one re-send path for a failed fast batch: its tail goes out one message at a time
    /// (each with its own ack, which says stored, duplicate, or refused — and for which
    /// message), under the usual attempt and duplicate-window limits.
    async fn fast_failed(&mut self, failure: FastFailure) {
        let FastFailure {
            stream,
            error,
            tail,
        } = failure;
        let stopped = error.kind() == ErrorKind::Unsupported;
        let starts_episode = self.fast_trouble.failed(
            self.now,
            unavailable(&error),
            self.config.backoff_base,
            self.config.backoff_max,
        );
        if stopped {
            // The stream no longer allows batches: Auto mode sends to it pipelined from now
            // on; FastIngest mode hands its messages back.
            self.routes.stop_batching(&stream);
        }
        if starts_episode {
            warn!(stream = %stream, unacked = tail.len(), error = %error, "fast batch failed; re-sending its unacknowledged messages one by one (further failures until a batch is accepted are logged at debug)");
        } else {
            debug!(stream = %stream, unacked = tail.len(), error = %error, "fast batch failed again; re-sending its unacknowledged messages one by one");
        }
        for (_, mut m) in tail {
            m.pipelined = true;
            let error = Error::new(error.kind(), error.to_string());
            if stopped && self.config.mode == PublishMode::FastIngest {
                self.give_back(m, error);
            } else {
                self.retry_or_give_back(m, error).await;
            }
        }
    }

    /// The `stream` label of `m`'s metrics: its stream if known, else empty (cold paths only:
    /// a scan of the stream list).
    fn stream_label(&self, m: &Outgoing) -> Arc<str> {
        self.routes
            .known_stream(&m.subject)
            .unwrap_or_else(|| Arc::from(""))
    }

    fn done(&mut self, m: Outgoing) {
        finish(&mut self.ledger, &self.stats, &m);
    }

    fn give_back(&mut self, m: Outgoing, error: Error) {
        warn!(msg_id = %m.msg_id, subject = %m.subject, attempts = m.attempts, maybe_stored = m.maybe_stored, error = %error, "message not stored; handing it back");
        self.ledger.finish(m.seq);
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        crate::obs::failed(&self.stream_label(&m), crate::obs::Via::Batch);
        let seq = m.seq;
        self.handback.give(seq, m.into_failed(error));
    }
}

fn finish(ledger: &mut Ledger, stats: &Counters, m: &Outgoing) {
    stats.acked.fetch_add(1, Ordering::Relaxed);
    ledger.finish(m.seq);
}

type RawResult = Result<jetstream::publish::PublishAck, jetstream::context::PublishError>;

/// The head of the in-flight queue's ack, awaited in place (popped by the caller once it is
/// done).
async fn head(inflight: &mut VecDeque<InFlight>) -> RawResult {
    match inflight.front_mut() {
        Some(InFlight { ack: Ok(ack), .. }) => ack.await,
        Some(InFlight { ack: Err(e), .. }) => Err(take_error(e)),
        None => std::future::pending().await,
    }
}

/// The ack if it is already here (polled once, without registering for a wake-up: the loop's
/// select polls the head again with its own).
fn ready_now(ack: &mut Result<RawAck, jetstream::context::PublishError>) -> Option<RawResult> {
    match ack {
        Ok(ack) => ack.as_mut().now_or_never(),
        Err(e) => Some(Err(take_error(e))),
    }
}

/// A send error, taken out of its slot (the entry is popped right after).
fn take_error(e: &mut jetstream::context::PublishError) -> jetstream::context::PublishError {
    std::mem::replace(
        e,
        jetstream::context::PublishError::new(PublishErrorKind::Other),
    )
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::Ledger;

    #[test]
    fn the_ledger_finishes_out_of_order() {
        let mut l = Ledger::default();
        for seq in 1..=5 {
            l.open(seq);
        }
        assert!(!l.finished_up_to(1));
        l.finish(2);
        l.finish(3);
        assert!(!l.finished_up_to(1), "1 is still open");
        l.finish(1);
        assert!(l.finished_up_to(3));
        assert!(!l.finished_up_to(4));
        l.finish(5);
        l.finish(4);
        assert!(l.finished_up_to(5));
        l.open(6);
        assert!(l.finished_up_to(5) && !l.finished_up_to(6));
        l.finish(6);
        assert!(l.finished_up_to(6));
    }
}
