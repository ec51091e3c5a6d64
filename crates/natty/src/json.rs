//! Typed payloads on the handle (feature `serde`): JSON publish, reads, writes and watches.

#[cfg(any(feature = "stream", feature = "kv"))]
use crate::Natty;

#[cfg(feature = "stream")]
impl Natty {
    /// Queues `value` as JSON (with `Content-Type: application/json`) on the handle's batch
    /// publisher, like [`publish`](Self::publish). `Encode` when it cannot be serialized.
    /// Decode on the consuming side with [`Message::json`](natty_stream::Message::json).
    pub async fn publish_json<T: serde::Serialize + ?Sized>(
        &self,
        subject: &str,
        value: &T,
    ) -> Result<(), natty_stream::Error> {
        self.publisher()?.send_json(subject, value).await
    }
}

#[cfg(feature = "kv")]
impl Natty {
    /// The key's value decoded from JSON, with its revision ([`natty_kv::Kv::get_json`]).
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<(T, u64)>, natty_kv::Error> {
        self.kv().get_json(bucket, key).await
    }

    /// Writes `value` as JSON ([`natty_kv::Kv::put_json`]).
    pub async fn put_json<T: serde::Serialize + ?Sized>(
        &self,
        bucket: &str,
        key: &str,
        value: &T,
    ) -> Result<u64, natty_kv::Error> {
        self.kv().put_json(bucket, key, value).await
    }

    /// Writes `value` as JSON only if the key is absent ([`natty_kv::Kv::create_json`]).
    pub async fn create_json<T: serde::Serialize + ?Sized>(
        &self,
        bucket: &str,
        key: &str,
        value: &T,
    ) -> Result<u64, natty_kv::Error> {
        self.kv().create_json(bucket, key, value).await
    }

    /// Watches a bucket with values decoded from JSON ([`natty_kv::Kv::watch_bucket_json`]).
    pub async fn watch_bucket_json<T: serde::de::DeserializeOwned>(
        &self,
        bucket: &str,
    ) -> Result<natty_kv::JsonWatch<T>, natty_kv::Error> {
        self.kv().watch_bucket_json(bucket).await
    }

    /// Watches a key with values decoded from JSON ([`natty_kv::Kv::watch_key_json`]).
    pub async fn watch_key_json<T: serde::de::DeserializeOwned>(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<natty_kv::JsonWatch<T>, natty_kv::Error> {
        self.kv().watch_key_json(bucket, key).await
    }
}
