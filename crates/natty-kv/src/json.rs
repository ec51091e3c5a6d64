//! Typed values (feature `serde`): read, write and watch keys holding JSON.
//!
//! A value that does not decode is never dropped: [`DecodeError`] says which key and revision
//! failed and keeps the raw bytes; reads and typed watches return it as the source of an
//! [`ErrorKind::Decode`] error, and a typed watch goes on with the next change.

use std::{
    fmt,
    marker::PhantomData,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use futures::Stream;
use serde::{Serialize, de::DeserializeOwned};

use crate::{Entry, Error, ErrorKind, Event, EventKind, Kv, Watch};

/// A stored value that is not the JSON expected: which key and revision, the raw bytes, and
/// serde's error.
#[derive(Debug)]
#[non_exhaustive]
pub struct DecodeError {
    /// The key.
    pub key: String,
    /// The revision whose value failed to decode.
    pub revision: u64,
    /// The raw value, exactly as stored.
    pub value: Bytes,
    /// What serde_json reported (line, column, what was expected).
    pub source: serde_json::Error,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "decoding the JSON value of key `{}` (revision {}, {} bytes): {}",
            self.key,
            self.revision,
            self.value.len(),
            self.source
        )
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn decode<T: DeserializeOwned>(key: &str, revision: u64, value: &Bytes) -> Result<T, DecodeError> {
    serde_json::from_slice(value).map_err(|source| DecodeError {
        key: key.to_owned(),
        revision,
        value: value.clone(),
        source,
    })
}

fn decode_in<T: DeserializeOwned>(
    bucket: &str,
    key: &str,
    revision: u64,
    value: &Bytes,
) -> Result<T, Error> {
    decode(key, revision, value).map_err(|e| {
        Error::with_source(
            ErrorKind::Decode,
            format!("reading key `{key}` in bucket `{bucket}`"),
            e,
        )
    })
}

fn encode<T: Serialize + ?Sized>(bucket: &str, key: &str, value: &T) -> Result<Bytes, Error> {
    serde_json::to_vec(value).map(Bytes::from).map_err(|e| {
        Error::with_source(
            ErrorKind::Encode,
            format!("encoding the value for key `{key}` in bucket `{bucket}` as JSON"),
            e,
        )
    })
}

impl Entry {
    /// The value decoded from JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        decode(&self.key, self.revision, &self.value)
    }
}

impl Event {
    /// The value written, decoded from JSON (meaningful for [`EventKind::Put`] only).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        decode(&self.key, self.revision, &self.value)
    }
}

impl Kv {
    /// The key's current value decoded from JSON, with its revision (for `update` /
    /// `delete_if`); `None` as for [`get`](Self::get). A value that does not decode is a
    /// `Decode` error whose source is a [`DecodeError`] with the raw bytes.
    ///
    /// ```no_run
    /// # async fn example(kv: natty_kv::Kv) -> Result<(), natty_kv::Error> {
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Config { replicas: u32 }
    ///
    /// kv.put_json("settings", "app", &Config { replicas: 3 }).await?;
    /// if let Some((config, revision)) = kv.get_json::<Config>("settings", "app").await? {
    ///     # let _ = (config.replicas, revision);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<(T, u64)>, Error> {
        let Some(entry) = self.get(bucket, key).await? else {
            return Ok(None);
        };
        let value = decode_in(bucket, key, entry.revision, &entry.value)?;
        Ok(Some((value, entry.revision)))
    }

    /// Writes `value` as JSON, like [`put`](Self::put). `Encode` when it cannot be
    /// serialized; nothing is written then.
    pub async fn put_json<T: Serialize + ?Sized>(
        &self,
        bucket: &str,
        key: &str,
        value: &T,
    ) -> Result<u64, Error> {
        let bytes = encode(bucket, key, value)?;
        self.put(bucket, key, bytes).await
    }

    /// Writes `value` as JSON only if the key does not exist, like [`create`](Self::create).
    pub async fn create_json<T: Serialize + ?Sized>(
        &self,
        bucket: &str,
        key: &str,
        value: &T,
    ) -> Result<u64, Error> {
        let bytes = encode(bucket, key, value)?;
        self.create(bucket, key, bytes).await
    }

    /// Writes `value` as JSON only if the key is still at `revision`, like
    /// [`update`](Self::update).
    pub async fn update_json<T: Serialize + ?Sized>(
        &self,
        bucket: &str,
        key: &str,
        value: &T,
        revision: u64,
    ) -> Result<u64, Error> {
        let bytes = encode(bucket, key, value)?;
        self.update(bucket, key, bytes, revision).await
    }

    /// [`watch_bucket`](Self::watch_bucket) with values decoded from JSON.
    pub async fn watch_bucket_json<T: DeserializeOwned>(
        &self,
        bucket: &str,
    ) -> Result<JsonWatch<T>, Error> {
        Ok(JsonWatch::new(bucket, self.watch_bucket(bucket).await?))
    }

    /// [`watch_key`](Self::watch_key) with values decoded from JSON.
    pub async fn watch_key_json<T: DeserializeOwned>(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<JsonWatch<T>, Error> {
        Ok(JsonWatch::new(bucket, self.watch_key(bucket, key).await?))
    }
}

/// A change seen by a [`JsonWatch`]: the event as stored, and its value decoded.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct JsonEvent<T> {
    /// The change, raw value included.
    pub event: Event,
    /// The decoded value: `Some` for [`EventKind::Put`], `None` for every other kind.
    pub value: Option<T>,
}

/// A [`Watch`] whose put values are decoded from JSON.
///
/// A value that does not decode is yielded as a `Decode` error (its source a [`DecodeError`]
/// with the key, revision and raw bytes) and the watch goes on with the next change. Same
/// guarantees and cancel safety as [`Watch`].
#[derive(Debug)]
pub struct JsonWatch<T> {
    bucket: String,
    inner: Watch,
    _value: PhantomData<fn() -> T>,
}

impl<T> JsonWatch<T> {
    fn new(bucket: &str, inner: Watch) -> Self {
        Self {
            bucket: bucket.to_owned(),
            inner,
            _value: PhantomData,
        }
    }

    /// Also yield [`EventKind::CaughtUp`] events, as [`Watch::with_caught_up_events`].
    #[must_use]
    pub fn with_caught_up_events(mut self) -> Self {
        self.inner = self.inner.with_caught_up_events();
        self
    }
}

impl<T: DeserializeOwned> Stream for JsonWatch<T> {
    type Item = Result<JsonEvent<T>, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        Pin::new(&mut this.inner).poll_next(cx).map(|next| {
            next.map(|item| {
                let event = item?;
                let value = if event.kind == EventKind::Put {
                    Some(decode_in(
                        &this.bucket,
                        &event.key,
                        event.revision,
                        &event.value,
                    )?)
                } else {
                    None
                };
                Ok(JsonEvent { event, value })
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, error::Error as _};

    use super::*;

    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Config {
        replicas: u32,
    }

    #[test]
    fn a_bad_value_names_bucket_key_and_revision_and_keeps_the_bytes() {
        for raw in [&b"{\"replicas\":-1}"[..], b"garbage", b""] {
            let value = Bytes::copy_from_slice(raw);
            let e = decode_in::<Config>("settings", "app", 9, &value).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Decode);
            assert!(e.to_string().contains("`app` in bucket `settings`"), "{e}");
            let d = e
                .cause()
                .and_then(|c| c.downcast_ref::<DecodeError>())
                .expect("the source is a DecodeError");
            assert_eq!((d.key.as_str(), d.revision), ("app", 9));
            assert_eq!(&d.value[..], raw);
            assert!(d.source().is_some());
        }
        let ok = decode_in::<Config>(
            "settings",
            "app",
            1,
            &Bytes::from_static(b"{\"replicas\":3}"),
        );
        assert_eq!(ok.unwrap(), Config { replicas: 3 });
    }

    #[test]
    fn a_value_serde_refuses_is_an_encode_error() {
        let mut map = BTreeMap::new();
        map.insert((1, 2), 3);
        let e = encode("settings", "app", &map).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Encode);
        assert!(e.to_string().contains("`app` in bucket `settings`"), "{e}");
    }
}
