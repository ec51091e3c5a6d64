//! Reading many messages of a bucket with an ordered consumer: a key's history, the key list.

use std::{collections::HashSet, time::Duration};

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, ReplayPolicy, push},
    stream::{ConsumerError, ConsumerErrorKind},
};
use futures::{Stream, StreamExt};
use natty_core::error::{codes, is_transient};
use tracing::debug;

use crate::{
    Error, ErrorKind, Kv,
    bucket::Bucket,
    entry::{self, Event, EventKind},
    error::from_request,
    retry::{Deadline, Outcome},
};

/// How long a key listing waits for more after the server said "nothing pending" early.
const GRACE: Duration = Duration::from_millis(500);

/// An ordered push consumer on the bucket's stream, its creation retried like every other
/// request (503 / no leader, timeouts) until `deadline`.
async fn consumer(
    kv: &Kv,
    b: &Bucket,
    filter: String,
    deliver_policy: DeliverPolicy,
    headers_only: bool,
    context: &str,
    deadline: &Deadline,
) -> Result<push::Ordered, Error> {
    let mut attempts = deadline.attempts();
    loop {
        let failure = match ordered(
            b,
            push::OrderedConfig {
                deliver_subject: kv.client.nats().new_inbox(),
                filter_subject: filter.clone(),
                deliver_policy,
                replay_policy: ReplayPolicy::Instant,
                headers_only,
                ..Default::default()
            },
            context,
        )
        .await
        {
            Outcome::Done(result) => return result.map(|(_, messages)| messages),
            Outcome::Retry(e) | Outcome::Unavailable(e) => e,
        };
        if !attempts.pause(&failure).await {
            return Err(failure);
        }
    }
}

/// One attempt to create an ordered push consumer and subscribe to it: its messages and the
/// number of messages it had to deliver when created. Answers that say nothing (503 while the
/// stream or the cluster elects a leader, no responders, timeouts, a broken connection) are
/// `Retry`; a missing stream is `BucketNotFound`; any other answer of the JetStream API
/// (consumer limit, permissions of the account, JetStream disabled) is final.
pub(crate) async fn ordered(
    b: &Bucket,
    config: push::OrderedConfig,
    context: &str,
) -> Outcome<(u64, push::Ordered)> {
    let consumer = match b.stream.create_consumer(config).await {
        Ok(consumer) => consumer,
        Err(e) => return consumer_failure(e, context),
    };
    let pending = consumer.cached_info().num_pending;
    match consumer.messages().await {
        Ok(messages) => Outcome::Done(Ok((pending, messages))),
        Err(e) => Outcome::Retry(Error::with_source(
            ErrorKind::TimedOut,
            context.to_owned(),
            e,
        )),
    }
}

fn consumer_failure<T>(e: ConsumerError, context: &str) -> Outcome<T> {
    let code = match e.kind() {
        ConsumerErrorKind::JetStream(js) => Some((js.code(), js.error_code().0)),
        _ => None,
    };
    match (e.kind(), code) {
        (_, Some((_, codes::STREAM_NOT_FOUND))) => Outcome::Done(Err(Error::with_source(
            ErrorKind::BucketNotFound,
            context.to_owned(),
            e,
        ))),
        (_, Some((503, _) | (_, codes::TEMPORARILY_UNAVAILABLE)))
        | (ConsumerErrorKind::TimedOut | ConsumerErrorKind::Request, _) => Outcome::Retry(
            Error::with_source(ErrorKind::TimedOut, context.to_owned(), e),
        ),
        _ if is_transient(&e) => Outcome::Retry(Error::with_source(
            ErrorKind::TimedOut,
            context.to_owned(),
            e,
        )),
        _ => Outcome::Done(Err(from_request(e, context.to_owned()))),
    }
}

/// Every stored message of a key, oldest first (the key is known to have at least one).
pub(crate) async fn history(
    kv: &Kv,
    b: &Bucket,
    key: &str,
    deadline: Deadline,
) -> Result<Vec<Event>, Error> {
    let context = format!("reading the history of key {key:?} in bucket {:?}", b.name);
    let mut messages = consumer(
        kv,
        b,
        b.subject(key),
        DeliverPolicy::All,
        false,
        &context,
        &deadline,
    )
    .await?;
    let mut events = Vec::new();
    loop {
        let next = tokio::time::timeout_at(deadline.at(), messages.next())
            .await
            .map_err(|_| timed_out(&context, kv))?;
        let message = match next {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(from_request(e, context)),
            None => {
                return Err(Error::new(
                    ErrorKind::Other,
                    format!("{context}: consumer ended"),
                ));
            }
        };
        let pending = message.info().map(|i| i.pending).unwrap_or_default();
        if let Some(event) = entry::event_of(&message, &b.name) {
            events.push(event);
        }
        if pending == 0 {
            return Ok(events);
        }
    }
}

/// The state of a key listing.
struct Listing {
    messages: Option<push::Ordered>,
    seen: HashSet<String>,
    kv: Kv,
    bucket: Bucket,
    context: String,
    /// Deliver up to this revision (the stream's last one when the consumer said "nothing
    /// pending"), waiting at most [`GRACE`] for each message.
    upto: Option<u64>,
    grace: bool,
    /// The client's connect count when the consumer was made.
    connects_at_open: u64,
    /// The consumer sequence the next message of our consumer has.
    next_consumer_sequence: u64,
}

impl Listing {
    /// (Re)starts the listing's consumer: the last message of every key. Keys already
    /// yielded are skipped by `seen`.
    async fn open(&mut self) -> Result<(), Error> {
        self.connects_at_open = connects(&self.kv);
        self.next_consumer_sequence = 1;
        self.upto = None;
        self.grace = false;
        self.messages = Some(
            consumer(
                &self.kv,
                &self.bucket,
                format!("$KV.{}.>", self.bucket.name),
                DeliverPolicy::LastPerSubject,
                true,
                &self.context,
                &Deadline::after(self.kv.retry_for),
            )
            .await?,
        );
        Ok(())
    }

    /// Whether `message` comes from a consumer that async-nats re-created by itself (after
    /// a reconnect or a sequence gap): it starts from the next revision, where values that
    /// were overwritten or deleted before the listing started come again.
    fn replaced(&mut self, message: &jetstream::Message) -> bool {
        let Ok(info) = message.info() else {
            return false;
        };
        if connects(&self.kv) != self.connects_at_open
            || info.consumer_sequence != self.next_consumer_sequence
        {
            return true;
        }
        self.next_consumer_sequence += 1;
        false
    }
}

fn connects(kv: &Kv) -> u64 {
    kv.client
        .nats()
        .statistics()
        .connects
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// The live keys of a bucket whose `b` was just looked up (its cached info is fresh).
pub(crate) async fn keys(
    kv: &Kv,
    b: Bucket,
) -> Result<impl Stream<Item = Result<String, Error>> + use<>, Error> {
    let context = format!("listing keys of bucket {:?}", b.name);
    let empty = b.stream.cached_info().state.messages == 0;
    let mut state = Listing {
        messages: None,
        seen: HashSet::new(),
        kv: kv.clone(),
        bucket: b,
        context,
        upto: None,
        grace: false,
        connects_at_open: 0,
        next_consumer_sequence: 1,
    };
    if !empty {
        state.open().await?;
    }
    Ok(futures::stream::unfold(state, |mut state| async move {
        loop {
            let messages = state.messages.as_mut()?;
            let next = if state.grace {
                match tokio::time::timeout(GRACE, messages.next()).await {
                    Ok(next) => next,
                    Err(_) => return None,
                }
            } else {
                messages.next().await
            };
            let message = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    state.messages = None;
                    return Some((Err(from_request(e, state.context.clone())), state));
                }
                None => {
                    state.messages = None;
                    let err = Error::new(
                        ErrorKind::Other,
                        format!("{}: consumer ended", state.context),
                    );
                    return Some((Err(err), state));
                }
            };
            if state.replaced(&message) {
                debug!("async-nats re-created the listing's consumer; starting it over");
                if let Err(e) = state.open().await {
                    state.messages = None;
                    return Some((Err(e), state));
                }
                continue;
            }
            let info = message.info().ok();
            let pending = info.as_ref().map(|i| i.pending).unwrap_or_default();
            let revision = info.as_ref().map(|i| i.stream_sequence).unwrap_or_default();
            if pending == 0 && state.upto.is_none() {
                // Values that replaced the skipped last values of keys rewritten during the
                // listing come after the point where the server says "nothing pending": go on
                // to the stream's last revision now. Every such value is stored by then.
                let last = match state.bucket.stream.get_info().await {
                    Ok(info) => info.state.last_sequence,
                    Err(e) => {
                        state.messages = None;
                        return Some((Err(from_request(e, state.context.clone())), state));
                    }
                };
                state.upto = Some(last);
                state.grace = true;
            }
            if state.upto.is_some_and(|upto| revision >= upto) {
                state.messages = None;
            }
            let live = entry::kind_of(message.headers.as_ref()) == EventKind::Put;
            let key = entry::key_of(message.subject.as_str(), &state.bucket.name).to_owned();
            if live && state.seen.insert(key.clone()) {
                return Some((Ok(key), state));
            }
            state.messages.as_ref()?;
        }
    }))
}

fn timed_out(context: &str, kv: &Kv) -> Error {
    Error::new(
        ErrorKind::TimedOut,
        format!("{context}: not finished after {:?}", kv.retry_for),
    )
}
