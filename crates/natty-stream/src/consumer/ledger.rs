//! The failure ledger: how many times a message's handler failed, kept in a JetStream KV bucket
//! so the count survives a restart of the process.
//!
//! natty's delivery limit counts *handler failures*, not server deliveries: the server's
//! delivery count also goes up for natty's own hand-backs (a graceful stop naks what was pulled
//! but not started, a handler cut off by the stop deadline, messages stranded in an abandoned
//! pull, a crash after a pull), and a message handed back often enough would be given up on
//! without its handler ever running.
//!
//! - Written only on the failure path: a handler that succeeds costs nothing here. A failure
//!   reads the count (unless already known) and writes it plus one.
//! - Read when a message arrives with a server delivery count above 1 (it may have failed
//!   before); a first delivery is assumed to have no failures (after a reset of the durable it
//!   may have some: they are read when it fails again, so it runs once more at most).
//! - Keyed by the stream's name and creation time (a re-created stream starts its sequences
//!   over), the consumer's identity ([`ConsumeOptions::identity`](super::ConsumeOptions::identity),
//!   stable across re-created durables) and the stream sequence.
//! - Bounded: entries expire [`MAX_AGE`] after their last failure (history 1). A count that
//!   expired starts over — more runs, never fewer.
//! - Fail safe: when the bucket cannot be opened, read or written, nothing is given up on for
//!   want of a count (the message is retried with a delay), and each cause is warned about once
//!   until it works again.

use std::{
    sync::{Mutex, PoisonError},
    time::Duration,
};

use async_nats::jetstream::{self, kv, stream::StorageType};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// The bucket, shared by every natty consumer of the account.
pub(crate) const BUCKET: &str = "natty_failures";

/// How long a failure count is kept after its last failure: twice the longest retry delay
/// natty accepts (24 h), so a count is never forgotten between two tries.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(2 * 24 * 3600);

/// After the bucket could not be opened, how long before trying again (failures meanwhile are
/// retried without a count, not given up on).
const REOPEN_AFTER: Duration = Duration::from_secs(5);

/// What went wrong, for one warning per cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Open,
    Read,
    Write,
}

impl Cause {
    fn index(self) -> usize {
        self as usize
    }
}

/// Where a message's count lives: stream, its creation time, the consumer's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Place {
    prefix: String,
}

impl Place {
    /// `created`: the stream's creation time (Unix nanoseconds).
    pub(super) fn new(stream: &str, created: i128, identity: &str) -> Self {
        Self {
            prefix: format!("{}.{created}.{}", escape(stream), escape(identity)),
        }
    }

    fn key(&self, seq: u64) -> String {
        format!("{}.{seq}", self.prefix)
    }
}

/// A key token made only of `[A-Za-z0-9_-]`: other bytes become `=XX` (hex), so two names never
/// share a token (`=` itself is escaped).
fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    if out.is_empty() {
        out.push('=');
    }
    out
}

#[derive(Debug)]
struct State {
    store: Option<kv::Store>,
    /// No open attempt before this (after one failed).
    next_open: Option<Instant>,
    /// Causes warned about since they last worked.
    warned: [bool; 3],
}

/// The ledger of one consumer run; cheap when nothing fails (opened on first use).
#[derive(Debug)]
pub(super) struct Ledger {
    js: jetstream::Context,
    state: Mutex<State>,
    /// Serialises opening the bucket (one create for many failing messages at once).
    opening: tokio::sync::Mutex<()>,
}

impl Ledger {
    pub(super) fn new(js: jetstream::Context) -> Self {
        Self {
            js,
            state: Mutex::new(State {
                store: None,
                next_open: None,
                warned: [false; 3],
            }),
            opening: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The failures recorded for stream sequence `seq`; `None` when the ledger cannot tell.
    pub(super) async fn failures(&self, place: &Place, seq: u64, replicas: usize) -> Option<u64> {
        let store = self.store(replicas).await?;
        let key = place.key(seq);
        match store.get(key.as_str()).await {
            Ok(None) => {
                self.worked(Cause::Read);
                Some(0)
            }
            Ok(Some(value)) => match std::str::from_utf8(&value)
                .ok()
                .and_then(|v| v.parse().ok())
            {
                Some(n) => {
                    self.worked(Cause::Read);
                    Some(n)
                }
                None => {
                    self.failed(
                        Cause::Read,
                        &format!("key {key:?} holds {value:?}, not a count"),
                    );
                    None
                }
            },
            Err(e) => {
                self.failed(Cause::Read, &e.to_string());
                self.forget(&store);
                None
            }
        }
    }

    /// Records that `seq` failed `failures` times in all; whether it was stored.
    pub(super) async fn record(
        &self,
        place: &Place,
        seq: u64,
        failures: u64,
        replicas: usize,
    ) -> bool {
        let Some(store) = self.store(replicas).await else {
            return false;
        };
        match store.put(place.key(seq), failures.to_string().into()).await {
            Ok(_) => {
                self.worked(Cause::Write);
                true
            }
            Err(e) => {
                self.failed(Cause::Write, &e.to_string());
                self.forget(&store);
                false
            }
        }
    }

    /// The bucket, opened (created if missing, with `replicas` like the consumed stream) on
    /// first use; `None` while it cannot be opened.
    async fn store(&self, replicas: usize) -> Option<kv::Store> {
        if let Some(store) = self.lock().store.clone() {
            return Some(store);
        }
        let _opening = self.opening.lock().await;
        {
            let state = self.lock();
            if let Some(store) = state.store.clone() {
                return Some(store);
            }
            if state.next_open.is_some_and(|t| Instant::now() < t) {
                return None;
            }
        }
        match open(&self.js, replicas).await {
            Ok(store) => {
                self.worked(Cause::Open);
                let mut state = self.lock();
                state.store = Some(store.clone());
                state.next_open = None;
                Some(store)
            }
            Err(e) => {
                self.failed(Cause::Open, &e);
                self.lock().next_open = Some(Instant::now() + REOPEN_AFTER);
                None
            }
        }
    }

    /// After a read or write failed: open the bucket again next time (it may have been deleted
    /// and is then created again, with natty's configuration).
    fn forget(&self, store: &kv::Store) {
        let mut state = self.lock();
        if state.store.as_ref().is_some_and(|s| s.name == store.name) {
            state.store = None;
        }
    }

    fn failed(&self, cause: Cause, error: &str) {
        let first = !std::mem::replace(&mut self.lock().warned[cause.index()], true);
        if first {
            warn!(
                bucket = BUCKET,
                ?cause,
                error,
                "failure ledger unusable: failed messages are retried without counting (none \
                 is given up on for the delivery limit) until it works again"
            );
        } else {
            debug!(
                bucket = BUCKET,
                ?cause,
                error,
                "failure ledger still unusable"
            );
        }
    }

    fn worked(&self, cause: Cause) {
        if std::mem::replace(&mut self.lock().warned[cause.index()], false) {
            info!(bucket = BUCKET, ?cause, "failure ledger usable again");
        }
    }
}

async fn open(js: &jetstream::Context, replicas: usize) -> Result<kv::Store, String> {
    if let Ok(store) = js.get_key_value(BUCKET).await {
        return Ok(store);
    }
    let config = kv::Config {
        bucket: BUCKET.to_owned(),
        description: "natty: handler failures per message, for consumers' delivery limits"
            .to_owned(),
        history: 1,
        max_age: MAX_AGE,
        storage: StorageType::File,
        num_replicas: replicas.max(1),
        ..Default::default()
    };
    match js.create_key_value(config).await {
        Ok(store) => {
            info!(bucket = BUCKET, replicas, "failure ledger bucket created");
            Ok(store)
        }
        // Created meanwhile by another consumer (or with another configuration): use it.
        Err(create) => js
            .get_key_value(BUCKET)
            .await
            .map_err(|get| format!("creating bucket {BUCKET:?}: {create}; opening it: {get}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_and_names_never_collide() {
        let table = [
            ("ORDERS", "billing", "ORDERS.7.billing.42"),
            ("a.b", "c", "a=2Eb.7.c.42"),
            ("a", "b.c", "a.7.b=2Ec.42"),
            ("a=2E", "x", "a=3D2E.7.x.42"),
            ("ü", "", "=C3=BC.7.=.42"),
        ];
        for (stream, identity, want) in table {
            let key = Place::new(stream, 7, identity).key(42);
            assert_eq!(key, want);
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=.".contains(&b)),
                "{key}"
            );
        }
    }
}
