//! What a read or a watch yields: [`Entry`] and [`Event`], decoded from stored messages.

use std::time::{Duration, SystemTime};

use async_nats::HeaderMap;
use bytes::Bytes;

use crate::config::parse_ttl_header;

/// A key's current value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Entry {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Bytes,
    /// The revision of this value (its stream sequence): pass it to `update`/`delete_if`.
    pub revision: u64,
    /// When this revision was written (server clock).
    pub created: SystemTime,
    /// The per-key TTL this revision was written with, if any.
    pub ttl: Option<Duration>,
    /// Whether this revision was written with `Nats-TTL: never`: it does not expire, not even
    /// with the bucket's TTL ([`Kv::refresh`](crate::Kv::refresh) keeps it so).
    pub never_expires: bool,
}

impl Entry {
    /// The per-key TTL to write again when this entry is refreshed.
    pub(crate) fn key_ttl(&self) -> Option<KeyTtl> {
        if self.never_expires {
            return Some(KeyTtl::Never);
        }
        self.ttl.map(|t| {
            // A TTL written by another client may have a fraction of a second: round up.
            let secs = t.as_secs().saturating_add(u64::from(t.subsec_nanos() > 0));
            KeyTtl::Secs(secs.max(1))
        })
    }
}

/// A per-key TTL as written in the `Nats-TTL` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyTtl {
    /// Expires this many seconds after the write.
    Secs(u64),
    /// Never expires (not even with the bucket's TTL).
    Never,
}

impl KeyTtl {
    pub(crate) fn header_value(self) -> String {
        match self {
            Self::Secs(secs) => secs.to_string(),
            Self::Never => "never".to_owned(),
        }
    }
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// A value was written.
    Put,
    /// The key was deleted (history kept).
    Delete,
    /// The key was purged (history removed).
    Purge,
    /// The key expired (its per-key TTL or the bucket's TTL ran out). Seen only on buckets
    /// with per-key TTL / limit markers (server 2.11+).
    Expired,
    /// Not about a key (empty key, revision 0): the bucket was deleted and created again
    /// behind the watch. Every key of the old bucket is gone; the new bucket's current values
    /// follow.
    BucketRecreated,
    /// Not about a key (empty key): the values that existed when the watch started (or the
    /// bucket was re-created) have all been delivered; `revision` is the last one's. Only
    /// from a watch made with [`Watch::with_caught_up_events`](crate::Watch::with_caught_up_events).
    CaughtUp,
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Event {
    /// The key.
    pub key: String,
    /// What happened.
    pub kind: EventKind,
    /// The value written (empty for delete, purge, expiry).
    pub value: Bytes,
    /// The revision of this change.
    pub revision: u64,
    /// When it was written (server clock).
    pub created: SystemTime,
}

pub(crate) const KV_OPERATION: &str = "KV-Operation";
pub(crate) const MARKER_REASON: &str = "Nats-Marker-Reason";
pub(crate) const TTL: &str = "Nats-TTL";
pub(crate) const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
pub(crate) const ROLLUP: &str = "Nats-Rollup";
pub(crate) const MSG_ID: &str = "Nats-Msg-Id";

/// The kind of a stored KV message, from its headers: the KV operation header written by
/// clients, or the marker reason the server writes for TTL removals (limit markers).
pub(crate) fn kind_of(headers: Option<&HeaderMap>) -> EventKind {
    let Some(headers) = headers else {
        return EventKind::Put;
    };
    if let Some(op) = headers.get(KV_OPERATION) {
        return match op.as_str() {
            "DEL" => EventKind::Delete,
            "PURGE" => EventKind::Purge,
            _ => EventKind::Put,
        };
    }
    match headers.get(MARKER_REASON).map(|v| v.as_str()) {
        Some("MaxAge") => EventKind::Expired,
        Some("Purge") => EventKind::Purge,
        Some("Remove") => EventKind::Delete,
        _ => EventKind::Put,
    }
}

/// The per-key TTL a message was written with.
pub(crate) fn ttl_of(headers: Option<&HeaderMap>) -> Option<Duration> {
    headers
        .and_then(|h| h.get(TTL))
        .and_then(|v| parse_ttl_header(v.as_str()))
        .flatten()
}

/// Whether a message was written with `Nats-TTL: never`.
pub(crate) fn never_expires(headers: Option<&HeaderMap>) -> bool {
    headers
        .and_then(|h| h.get(TTL))
        .and_then(|v| parse_ttl_header(v.as_str()))
        .is_some_and(|ttl| ttl.is_none())
}

/// The entry a stored message holds, if it is a value (not a marker).
pub(crate) fn decode(key: &str, m: async_nats::jetstream::message::StreamMessage) -> Option<Entry> {
    if kind_of(Some(&m.headers)) != EventKind::Put {
        return None;
    }
    Some(Entry {
        key: key.to_owned(),
        ttl: ttl_of(Some(&m.headers)),
        never_expires: never_expires(Some(&m.headers)),
        revision: m.sequence,
        created: SystemTime::from(m.time),
        value: m.payload,
    })
}

/// The event a message delivered by a consumer on the bucket's stream stands for.
pub(crate) fn event_of(message: &async_nats::jetstream::Message, bucket: &str) -> Option<Event> {
    let info = message.info().ok()?;
    let headers = message.headers.as_ref();
    Some(Event {
        key: key_of(message.subject.as_str(), bucket).to_owned(),
        kind: kind_of(headers),
        value: message.payload.clone(),
        revision: info.stream_sequence,
        created: SystemTime::from(info.published),
    })
}

/// The key of a KV subject `$KV.<bucket>.<key>`.
pub(crate) fn key_of<'a>(subject: &'a str, bucket: &str) -> &'a str {
    subject
        .strip_prefix("$KV.")
        .and_then(|s| s.strip_prefix(bucket))
        .and_then(|s| s.strip_prefix('.'))
        .unwrap_or(subject)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, *v);
        }
        h
    }

    #[test]
    fn kinds_from_headers() {
        let cases = [
            (None, EventKind::Put),
            (Some(headers(&[])), EventKind::Put),
            (Some(headers(&[("KV-Operation", "DEL")])), EventKind::Delete),
            (
                Some(headers(&[("KV-Operation", "PURGE")])),
                EventKind::Purge,
            ),
            (
                Some(headers(&[("Nats-Marker-Reason", "MaxAge")])),
                EventKind::Expired,
            ),
            (
                Some(headers(&[("Nats-Marker-Reason", "Purge")])),
                EventKind::Purge,
            ),
            (
                Some(headers(&[("Nats-Marker-Reason", "Remove")])),
                EventKind::Delete,
            ),
            (Some(headers(&[("Nats-TTL", "5")])), EventKind::Put),
        ];
        for (h, want) in cases {
            assert_eq!(kind_of(h.as_ref()), want, "{h:?}");
        }
    }

    #[test]
    fn ttl_and_key_decoding() {
        assert_eq!(
            ttl_of(Some(&headers(&[("Nats-TTL", "5")]))),
            Some(Duration::from_secs(5))
        );
        assert_eq!(ttl_of(Some(&headers(&[("Nats-TTL", "never")]))), None);
        assert_eq!(ttl_of(None), None);
        assert_eq!(key_of("$KV.b.a.b.c", "b"), "a.b.c");
        assert_eq!(key_of("$KV.bucket.k", "bucket"), "k");
    }
}
