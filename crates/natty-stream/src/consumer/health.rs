//! Is the durable still there? Back-off with jitter and one log line per change of state
//! (REVIEW.md: hot loops, deleted behind our back).

use std::{future::Future, time::Duration};

use async_nats::jetstream::{
    self,
    consumer::pull::Config as PullConfig,
    context::{ConsumerInfoError, ConsumerInfoErrorKind},
};
use natty_core::retry::{Backoff, RetryPolicy};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::{
    Error, ErrorKind,
    admin::get_stream,
    error::{CONSUMER_NOT_FOUND, server_code},
};

/// The durable's handle, and what the failure ledger needs to know of its stream.
pub(super) struct Durable {
    pub(super) consumer: jetstream::consumer::Consumer<PullConfig>,
    pub(super) stream: StreamFacts,
}

/// The consumed stream's creation time (Unix nanoseconds: a re-created stream starts its
/// sequences over) and replica count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StreamFacts {
    pub(super) created: i128,
    pub(super) replicas: usize,
}

/// A lookup of the durable in flight.
pub(super) type Lookup = std::pin::Pin<Box<dyn Future<Output = Result<Durable, Error>> + Send>>;

/// Pauses between look-ups: from about 100 ms, doubling up to 5 s, with jitter (natty's one
/// retry policy).
const BACKOFF: RetryPolicy = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(5));

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Healthy,
    Stalled,
    Troubled,
    Gone,
}

/// The outcome of looking the durable up.
pub(super) enum Presence {
    /// It is there (possibly re-created): its current handle.
    Here(Box<Durable>),
    /// Missing or unreachable: look again at this instant.
    Wait(Instant),
    /// Missing for longer than the grace period.
    Gone(Error),
}

#[derive(Debug)]
pub(super) struct Health {
    js: jetstream::Context,
    stream: String,
    durable: String,
    grace: Duration,
    state: State,
    backoff: Backoff,
    gone_since: Option<Instant>,
}

impl Health {
    pub(super) fn new(
        js: jetstream::Context,
        stream: &str,
        durable: &str,
        grace: Duration,
    ) -> Self {
        Self {
            js,
            stream: stream.to_owned(),
            durable: durable.to_owned(),
            grace,
            state: State::Healthy,
            backoff: BACKOFF.backoff(),
            gone_since: None,
        }
    }

    /// The durable at start. Missing (or not a pull consumer, or the client closed) is an
    /// error at once; a transient failure (timeout, no responders during an election) is
    /// retried with back-off until the grace period is over (REVIEW.md: the server says 503).
    pub(super) async fn open(&mut self) -> Result<Durable, Error> {
        let started = Instant::now();
        loop {
            let e = match self.check().await {
                Ok(durable) => {
                    self.backoff.reset();
                    return Ok(durable);
                }
                Err(e) => e,
            };
            let waited = started.elapsed();
            if !transient(e.kind()) || waited >= self.grace {
                return Err(e);
            }
            if self.state == State::Healthy {
                warn!(error = %e, grace = ?self.grace, "looking up the durable failed at start: retrying");
                self.state = State::Troubled;
            } else {
                debug!(error = %e, "looking up the durable failed again");
            }
            tokio::time::sleep(self.next_backoff().min(self.grace - waited)).await;
        }
    }

    /// A pull was answered: all is well again.
    pub(super) fn healthy(&mut self) {
        if self.state != State::Healthy {
            info!(was = ?self.state, "pulling again");
        }
        self.state = State::Healthy;
        self.backoff.reset();
        self.gone_since = None;
    }

    /// Two heartbeats missed: the pull is re-issued at once (a stall is rate-limited by the
    /// heartbeat itself).
    pub(super) fn stalled(&mut self, silent_for: Duration) {
        if self.state == State::Stalled {
            debug!(?silent_for, "pull still stalled: re-issuing");
        } else {
            warn!(?silent_for, "pull stalled (no heartbeat): re-issuing it");
        }
        self.state = State::Stalled;
    }

    /// A pull failed or was refused: when to look the durable up (after a back-off).
    pub(super) fn trouble(&mut self, what: String) -> Instant {
        if matches!(self.state, State::Healthy | State::Stalled) {
            warn!(problem = %what, "pull failed: backing off and checking the durable");
            self.state = State::Troubled;
        } else {
            debug!(problem = %what, "pull failed again");
        }
        Instant::now() + self.next_backoff()
    }

    /// Looks the durable up; a future that borrows nothing, so the pull loop can keep
    /// serving handlers and keep-alives while it runs. Hand its result to [`Self::judge`].
    pub(super) fn check(&self) -> impl Future<Output = Result<Durable, Error>> + Send + 'static {
        let (js, stream, durable) = (self.js.clone(), self.stream.clone(), self.durable.clone());
        async move {
            match lookup(&js, &stream, &durable).await {
                Err(e) if transient(e.kind()) && closed(&js.client()).await => Err(Error::new(
                    ErrorKind::Closed,
                    format!(
                        "consuming {durable:?} on stream {stream:?}: the NATS client is closed"
                    ),
                )),
                found => found,
            }
        }
    }

    /// What a lookup says about the durable.
    pub(super) fn judge(&mut self, found: Result<Durable, Error>) -> Presence {
        match found {
            Ok(durable) => {
                if self.state == State::Gone {
                    info!("the durable is back: consuming again");
                    self.state = State::Troubled;
                }
                self.gone_since = None;
                Presence::Here(Box::new(durable))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConsumerNotFound | ErrorKind::StreamNotFound
                ) =>
            {
                let now = Instant::now();
                let since = *self.gone_since.get_or_insert(now);
                if self.state != State::Gone {
                    warn!(grace = ?self.grace, error = %e, "the durable is gone: waiting for it to be re-created");
                    self.state = State::Gone;
                }
                if now.duration_since(since) >= self.grace {
                    return Presence::Gone(Error::new(
                        e.kind(),
                        format!(
                            "consuming {:?} on stream {:?}: it was deleted and not re-created \
                             within {:?}",
                            self.durable, self.stream, self.grace
                        ),
                    ));
                }
                Presence::Wait((now + self.next_backoff()).min(since + self.grace))
            }
            Err(e) if !transient(e.kind()) => Presence::Gone(e),
            Err(e) => {
                debug!(error = %e, "looking up the durable failed");
                Presence::Wait(Instant::now() + self.next_backoff())
            }
        }
    }

    /// The next pause (jittered; about twice the last one).
    fn next_backoff(&mut self) -> Duration {
        self.backoff.next_delay()
    }
}

async fn lookup(js: &jetstream::Context, stream: &str, durable: &str) -> Result<Durable, Error> {
    let handle = get_stream(js, stream).await?;
    let info = handle.cached_info();
    let facts = StreamFacts {
        created: info.created.unix_timestamp_nanos(),
        replicas: info.config.num_replicas,
    };
    let consumer = handle.get_consumer(durable).await.map_err(|e| {
        let context = format!("opening consumer {:?} on stream {:?}", durable, stream);
        // async-nats 0.48 maps the server's codes to kinds and drops the code.
        let info_kind = e
            .downcast_ref::<ConsumerInfoError>()
            .map(ConsumerInfoError::kind);
        let kind = match info_kind {
            // async-nats refuses to make a pull handle of a push consumer.
            _ if e.downcast_ref::<std::io::Error>().is_some() => ErrorKind::ConfigMismatch,
            Some(ConsumerInfoErrorKind::NotFound) => ErrorKind::ConsumerNotFound,
            Some(ConsumerInfoErrorKind::StreamNotFound) => ErrorKind::StreamNotFound,
            Some(ConsumerInfoErrorKind::TimedOut) => ErrorKind::TimedOut,
            _ if server_code(&*e) == Some(CONSUMER_NOT_FOUND) => ErrorKind::ConsumerNotFound,
            _ => ErrorKind::Other,
        };
        Error::with_source(kind, context, e)
    })?;
    Ok(Durable {
        consumer,
        stream: facts,
    })
}

/// Whether a failed look-up may succeed later (timeouts, 503s, a lost connection), as opposed
/// to a missing durable, a push durable or a closed client.
fn transient(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::TimedOut | ErrorKind::Other)
}

/// Whether the client is closed for good (drained or closed), not just disconnected: it then
/// refuses every command. A subscribe fails with `Other` only when the connection handler is
/// gone (async-nats 0.48 has no closed state to ask).
async fn closed(client: &async_nats::Client) -> bool {
    client
        .subscribe(client.new_inbox())
        .await
        .is_err_and(|e| e.kind() == async_nats::client::SubscribeErrorKind::Other)
}
