//! Which stream takes a subject, and how to send to it: the pump's routing table, owned by
//! the pump alone (no lock). Streams are listed once, and again on a miss at most every few
//! seconds, so routing a message costs one map lookup, not a request.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_nats::jetstream;
use futures::StreamExt;
use tokio::time::Instant;
use tracing::debug;

use super::PublishMode;
use crate::ErrorKind;

/// How long a listing is trusted before a miss may list again.
const RELIST_AFTER: Duration = Duration::from_secs(5);
/// Routing decisions kept per subject (the map is cleared beyond it: subjects are user data).
const MAX_CACHED: usize = 10_000;

/// How one message is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route {
    /// One publish, one ack; the stream that captures the subject, if one is known.
    Pipelined(Option<Arc<str>>),
    /// Into the open fast-ingest batch of this stream.
    Fast(Arc<str>),
    /// Not at all: handed back with this error kind and reason.
    Refused(ErrorKind, Arc<str>),
}

#[derive(Debug)]
struct StreamRoute {
    name: Arc<str>,
    subjects: Vec<String>,
    batched: bool,
    no_ack: bool,
    duplicate_window: Duration,
}

/// The routing table.
#[derive(Debug)]
pub(super) struct Routes {
    mode: PublishMode,
    fast_capable: bool,
    streams: Vec<StreamRoute>,
    listed: Option<Instant>,
    /// Decisions per subject (cleared when the stream list changes; bounded).
    cache: HashMap<String, Route>,
    /// The last decision, checked before the map (a publisher usually sends to few subjects
    /// in a row: a compare instead of a hash per message).
    last: Option<(String, Route)>,
}

impl Routes {
    pub(super) fn new(mode: PublishMode, fast_capable: bool) -> Self {
        Self {
            mode,
            fast_capable,
            streams: Vec::new(),
            listed: None,
            cache: HashMap::new(),
            last: None,
        }
    }

    /// How to send to `subject`.
    pub(super) async fn route(&mut self, js: &jetstream::Context, subject: &str) -> Route {
        if let Some((last, route)) = &self.last
            && last == subject
        {
            return route.clone();
        }
        if let Some(route) = self.cache.get(subject) {
            let route = route.clone();
            self.last = Some((subject.to_owned(), route.clone()));
            return route;
        }
        let (mode, fast_capable) = (self.mode, self.fast_capable);
        if mode == PublishMode::FastIngest && !fast_capable {
            return Route::Refused(
                ErrorKind::Unsupported,
                "fast ingest needs nats-server 2.14 or later".into(),
            );
        }
        let Some(stream) = self.find(js, subject).await else {
            // No known stream: pipelined (its ack will say), and not cached: the stream may
            // appear later.
            return Route::Pipelined(None);
        };
        let route = if stream.no_ack {
            Route::Refused(
                ErrorKind::ConfigMismatch,
                format!(
                    "stream {:?} has no_ack set: it never acknowledges, so nothing could tell \
                     whether a message was stored",
                    stream.name
                )
                .into(),
            )
        } else {
            match (mode, stream.batched && fast_capable) {
                (PublishMode::Pipelined, _) | (PublishMode::Auto, false) => {
                    Route::Pipelined(Some(stream.name.clone()))
                }
                (_, true) => Route::Fast(stream.name.clone()),
                (_, false) => Route::Refused(
                    ErrorKind::Unsupported,
                    format!(
                        "stream {:?} does not allow batched publishing (allow_batched)",
                        stream.name
                    )
                    .into(),
                ),
            }
        };
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
            self.last = None;
        }
        self.cache.insert(subject.to_owned(), route.clone());
        self.last = Some((subject.to_owned(), route.clone()));
        route
    }

    /// The duplicate window of the stream that captures `subject`, if one is known.
    pub(super) async fn duplicate_window(
        &mut self,
        js: &jetstream::Context,
        subject: &str,
    ) -> Option<Duration> {
        self.find(js, subject).await.map(|s| s.duplicate_window)
    }

    /// The stream known to capture `subject`, without listing streams (for metric labels on
    /// the cold paths: retries, failures).
    pub(super) fn known_stream(&self, subject: &str) -> Option<Arc<str>> {
        self.index_of(subject).map(|i| self.streams[i].name.clone())
    }

    /// `stream` refused a batch as not enabled: it no longer allows batches.
    pub(super) fn stop_batching(&mut self, stream: &str) {
        for s in &mut self.streams {
            if &*s.name == stream {
                s.batched = false;
            }
        }
        self.cache.clear();
        self.last = None;
    }

    async fn find(&mut self, js: &jetstream::Context, subject: &str) -> Option<&StreamRoute> {
        let stale = self.listed.is_none_or(|t| t.elapsed() > RELIST_AFTER);
        if self.index_of(subject).is_none() && stale {
            self.list(js).await;
        }
        self.index_of(subject).map(|i| &self.streams[i])
    }

    fn index_of(&self, subject: &str) -> Option<usize> {
        self.streams
            .iter()
            .position(|s| s.subjects.iter().any(|f| subject_matches(f, subject)))
    }

    async fn list(&mut self, js: &jetstream::Context) {
        let mut streams = Vec::new();
        let mut list = js.streams();
        while let Some(info) = list.next().await {
            match info {
                Ok(info) => streams.push(StreamRoute {
                    name: info.config.name.as_str().into(),
                    subjects: info.config.subjects.clone(),
                    batched: info.config.allow_batch_publish,
                    no_ack: info.config.no_ack,
                    duplicate_window: info.config.duplicate_window,
                }),
                Err(e) => {
                    debug!(error = %e, "listing streams for routing failed; keeping the last list");
                    // Try again on the next miss after the usual pause, not on every message.
                    self.listed = Some(Instant::now());
                    return;
                }
            }
        }
        self.streams = streams;
        self.listed = Some(Instant::now());
        self.cache.clear();
        self.last = None;
    }
}

/// NATS subject matching: `*` matches one token, `>` the rest (one token or more).
pub(super) fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}
