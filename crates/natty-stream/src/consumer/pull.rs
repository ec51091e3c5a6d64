//! One pull request on its own inbox, watched by its heartbeat.
//!
//! natty's own pull loop instead of async-nats' `Batch`: in async-nats 0.48 (and still 0.51)
//! `Batch::poll_next` answers an idle heartbeat with `Poll::Pending` after it has taken the
//! heartbeat out of the subscription, so nothing wakes the task when the next message lands:
//! it waits for the batch's client-side timer (`expires` + 5 s). See
//! `docs/upstream/async-nats-batch-heartbeat.md`. Here every status is read in a loop, and
//! two missed heartbeats are reported as [`PullEvent::Stalled`].
//!
//! One subscription per request: dropping a `Pull` unsubscribes its inbox, and the server
//! forgets a waiting request whose reply subject has no interest, so a re-issued pull
//! replaces the old one instead of adding to it.

use std::{pin::Pin, time::Duration};

use async_nats::{
    StatusCode, Subscriber,
    jetstream::{self, consumer::pull},
};
use futures::{FutureExt, StreamExt};
use tokio::time::{Instant, Sleep};
use tracing::debug;

/// What a pull produced.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "moved once per message; boxing would cost an allocation per message"
)]
pub(super) enum PullEvent {
    /// A message.
    Message(jetstream::Message),
    /// The request is over as it should be: expired (408) or every message asked for came.
    Done,
    /// Two heartbeats in a row did not come.
    Stalled,
    /// The server ended the request with this status (409 consumer deleted, leadership
    /// change, limits; 503 no responders: the consumer or stream may be gone).
    Refused(String),
}

pub(super) struct Pull {
    sub: Subscriber,
    js: jetstream::Context,
    remaining: usize,
    delivered: usize,
    heartbeat: Duration,
    started: Instant,
    /// When anything last came on the inbox; the watchdog is moved up to it lazily, when it
    /// fires, so a busy pull costs no timer update per message.
    last_seen: Instant,
    watchdog: Pin<Box<Sleep>>,
    alive: bool,
}

impl std::fmt::Debug for Pull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pull")
            .field("remaining", &self.remaining)
            .field("alive", &self.alive)
            .finish_non_exhaustive()
    }
}

impl Pull {
    /// Subscribes a fresh inbox and asks `consumer` for up to `n` messages.
    pub(super) async fn start(
        client: &async_nats::Client,
        js: &jetstream::Context,
        consumer: &jetstream::consumer::Consumer<pull::Config>,
        n: usize,
        expires: Duration,
        heartbeat: Duration,
    ) -> Result<Self, async_nats::Error> {
        let inbox = client.new_inbox();
        let sub = client.subscribe(inbox.clone()).await?;
        let request = pull::BatchConfig {
            batch: n,
            expires: Some(expires),
            idle_heartbeat: heartbeat,
            ..Default::default()
        };
        consumer.request_batch(request, inbox.into()).await?;
        let now = Instant::now();
        Ok(Self {
            sub,
            js: js.clone(),
            remaining: n,
            delivered: 0,
            heartbeat,
            started: now,
            last_seen: now,
            watchdog: Box::pin(tokio::time::sleep_until(now + heartbeat * 2)),
            alive: false,
        })
    }

    /// Whether the server has answered this request (a message, heartbeat or expiry).
    pub(super) fn alive(&self) -> bool {
        self.alive
    }

    /// Whether the request ended empty well before its expiry: something is off (a server
    /// that answers every pull at once must not make a hot loop).
    pub(super) fn ended_early(&self, expires: Duration) -> bool {
        self.delivered == 0 && self.started.elapsed() < expires / 2
    }

    /// The next event. Cancel safe: nothing is lost when the future is dropped.
    pub(super) async fn next(&mut self) -> PullEvent {
        loop {
            if self.remaining == 0 {
                return PullEvent::Done;
            }
            let message = tokio::select! {
                biased;
                message = self.sub.next() => message,
                () = &mut self.watchdog => {
                    let deadline = self.last_seen + self.heartbeat * 2;
                    if deadline <= Instant::now() {
                        return PullEvent::Stalled;
                    }
                    self.watchdog.as_mut().reset(deadline);
                    continue;
                }
            };
            let Some(message) = message else {
                return PullEvent::Refused("subscription closed".to_owned());
            };
            if let Some(e) = self.classify(message) {
                return e;
            }
        }
    }

    /// Messages that already arrived, without waiting (used before dropping the pull).
    pub(super) fn ready(&mut self) -> Vec<jetstream::Message> {
        let mut out = Vec::new();
        while self.remaining > 0
            && let Some(Some(message)) = self.sub.next().now_or_never()
        {
            if let Some(PullEvent::Message(m)) = self.classify(message) {
                out.push(m);
            }
        }
        out
    }

    /// Unsubscribes the inbox now, ahead of whatever the caller sends next (dropping a `Pull`
    /// unsubscribes from a spawned task, which may come after): a message nak'ed at stop
    /// must not be redelivered to this dying request.
    pub(super) async fn close(mut self) {
        if let Err(e) = self.sub.unsubscribe().await {
            debug!(error = %e, "unsubscribing a pull");
        }
    }

    fn classify(&mut self, message: async_nats::Message) -> Option<PullEvent> {
        let status = message.status.unwrap_or(StatusCode::OK);
        // The server took the request: it delivers, beats or expires it.
        self.alive |= [
            StatusCode::OK,
            StatusCode::IDLE_HEARTBEAT,
            StatusCode::TIMEOUT,
        ]
        .contains(&status);
        self.last_seen = Instant::now();
        match status {
            StatusCode::OK => {
                self.remaining -= 1;
                self.delivered += 1;
                Some(PullEvent::Message(jetstream::Message {
                    message,
                    context: self.js.clone(),
                }))
            }
            StatusCode::IDLE_HEARTBEAT => None,
            StatusCode::TIMEOUT | StatusCode::NOT_FOUND => Some(PullEvent::Done),
            other => Some(PullEvent::Refused(format!(
                "{other}{}",
                message
                    .description
                    .map(|d| format!(" {d}"))
                    .unwrap_or_default()
            ))),
        }
    }
}
