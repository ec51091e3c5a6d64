//! [`Natty`]: one handle over one connection with the Go `INatty` surface.

#[cfg(any(feature = "stream", feature = "election"))]
use std::future::Future;
#[cfg(feature = "stream")]
use std::{collections::HashMap, sync::Arc};

#[cfg(any(feature = "kv", feature = "stream"))]
use bytes::Bytes;
use natty_core::{Client, ConnectOptions};
#[cfg(feature = "stream")]
use tokio::sync::Mutex;

/// One connection and everything natty does on it. Cheap to clone.
///
/// | Go `INatty` | here |
/// |---|---|
/// | `Consume` | [`consume`](Self::consume) |
/// | `Publish` / `DeletePublisher` | [`publish`](Self::publish) / [`delete_publisher`](Self::delete_publisher) |
/// | `CreateStream` / `DeleteStream` | [`create_stream`](Self::create_stream) / [`delete_stream`](Self::delete_stream) |
/// | `CreateConsumer` / `DeleteConsumer` | [`create_consumer`](Self::create_consumer) / [`delete_consumer`](Self::delete_consumer) |
/// | `Get` `Create` `Put` `Delete` `Keys` `Refresh` `Status` | same names |
/// | `CreateBucket` / `DeleteBucket` | same names |
/// | `WatchBucket` / `WatchKey` | same names |
/// | `AsLeader` / `HaveLeader` / `GetLeader` | [`as_leader`](Self::as_leader) / [`have_leader`](Self::have_leader) / [`get_leader`](Self::get_leader) |
#[derive(Debug, Clone)]
pub struct Natty {
    client: Client,
    #[cfg(feature = "kv")]
    kv: natty_kv::Kv,
    #[cfg(feature = "stream")]
    publishers: Arc<Mutex<HashMap<String, Arc<natty_stream::BatchPublisher>>>>,
}

impl Natty {
    /// Connects (see [`ConnectOptions`]).
    pub async fn connect(options: ConnectOptions) -> Result<Self, natty_core::Error> {
        Ok(Self::new(options.connect().await?))
    }

    /// A handle over an existing connection.
    pub fn new(client: Client) -> Self {
        Self {
            #[cfg(feature = "kv")]
            kv: natty_kv::Kv::new(client.clone()),
            client,
            #[cfg(feature = "stream")]
            publishers: Arc::default(),
        }
    }

    /// The connection.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Flushes every publisher, closes them, and drains the connection.
    pub async fn close(&self) {
        #[cfg(feature = "stream")]
        {
            let publishers: Vec<_> = self.publishers.lock().await.drain().collect();
            for (subject, p) in publishers {
                match p.close().await {
                    Ok(report) if !report.failed.is_empty() => tracing::error!(
                        %subject,
                        failed = report.failed.len(),
                        "messages not stored at close (take the publisher's error channel to get them)"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::error!(%subject, error = %e, "closing publisher"),
                }
            }
        }
        let _ = self.client.drain().await;
    }
}

#[cfg(feature = "stream")]
impl Natty {
    /// Runs `handler` on every message of the durable consumer until `cancel` fires (Go
    /// `Consume`).
    pub async fn consume<H, Fut>(
        &self,
        cancel: natty_stream::CancellationToken,
        stream: &str,
        durable: &str,
        options: natty_stream::ConsumeOptions,
        handler: H,
    ) -> Result<natty_stream::ConsumerStats, natty_stream::Error>
    where
        H: Fn(natty_stream::Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), natty_stream::HandlerError>> + Send + 'static,
    {
        natty_stream::Consumer::new(self.client.clone(), stream, durable, options)?
            .consume(cancel, handler)
            .await
    }

    /// Queues a message on the batched publisher for `subject` (created on first use), like Go
    /// `Publish`. [`flush`](Self::flush) or [`close`](Self::close) wait for the acks.
    pub async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), natty_stream::Error> {
        self.publisher(subject).await?.send(subject, payload).await
    }

    /// The batched publisher used for `subject` (take its error channel here).
    pub async fn publisher(
        &self,
        subject: &str,
    ) -> Result<Arc<natty_stream::BatchPublisher>, natty_stream::Error> {
        let mut map = self.publishers.lock().await;
        if let Some(p) = map.get(subject) {
            return Ok(p.clone());
        }
        let p = Arc::new(natty_stream::BatchPublisher::new(
            self.client.clone(),
            natty_stream::BatchConfig::default(),
        )?);
        map.insert(subject.to_owned(), p.clone());
        Ok(p)
    }

    /// Waits until every queued message of every publisher is acked or handed back.
    pub async fn flush(&self) -> Result<(), natty_stream::Error> {
        let publishers: Vec<_> = self.publishers.lock().await.values().cloned().collect();
        for p in publishers {
            p.flush().await?;
        }
        Ok(())
    }

    /// Closes and forgets the publisher for `subject` (Go `DeletePublisher`); whether there
    /// was one. Its messages are flushed first; failures are in the report.
    pub async fn delete_publisher(&self, subject: &str) -> Option<natty_stream::CloseReport> {
        let p = self.publishers.lock().await.remove(subject)?;
        p.close().await.ok()
    }

    /// Creates the stream, or checks a present one (Go `CreateStream`).
    pub async fn create_stream(
        &self,
        config: &natty_stream::StreamConfig,
    ) -> Result<(), natty_stream::Error> {
        natty_stream::ensure_stream(&self.client, config).await
    }

    /// Deletes a stream; a no-op when missing.
    pub async fn delete_stream(&self, name: &str) -> Result<(), natty_stream::Error> {
        natty_stream::delete_stream(&self.client, name).await
    }

    /// Creates or updates a durable consumer (Go `CreateConsumer`).
    pub async fn create_consumer(
        &self,
        config: &natty_stream::ConsumerConfig,
    ) -> Result<(), natty_stream::Error> {
        natty_stream::ensure_consumer(&self.client, config).await
    }

    /// Deletes a durable consumer; a no-op when missing.
    pub async fn delete_consumer(
        &self,
        stream: &str,
        durable: &str,
    ) -> Result<(), natty_stream::Error> {
        natty_stream::delete_consumer(&self.client, stream, durable).await
    }
}

#[cfg(feature = "kv")]
impl Natty {
    /// The key/value layer (all of [`natty_kv::Kv`]).
    pub fn kv(&self) -> &natty_kv::Kv {
        &self.kv
    }

    /// The key's value, if any (Go `Get`); never creates the bucket.
    pub async fn get(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<natty_kv::Entry>, natty_kv::Error> {
        self.kv.get(bucket, key).await
    }

    /// Writes only if absent (Go `Create`); creates the bucket.
    pub async fn create(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
    ) -> Result<u64, natty_kv::Error> {
        self.kv.create(bucket, key, value).await
    }

    /// Like `create`, with a per-key TTL.
    pub async fn create_with_ttl(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        ttl: std::time::Duration,
    ) -> Result<u64, natty_kv::Error> {
        self.kv.create_with_ttl(bucket, key, value, ttl).await
    }

    /// Writes (Go `Put`); creates the bucket.
    pub async fn put(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, natty_kv::Error> {
        self.kv.put(bucket, key, value).await
    }

    /// Deletes; a no-op when missing (Go `Delete`).
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<(), natty_kv::Error> {
        self.kv.delete(bucket, key).await
    }

    /// Deletes only at this revision.
    pub async fn delete_if(
        &self,
        bucket: &str,
        key: &str,
        revision: u64,
    ) -> Result<(), natty_kv::Error> {
        self.kv.delete_if(bucket, key, revision).await
    }

    /// Creates a bucket (Go `CreateBucket`).
    pub async fn create_bucket(
        &self,
        config: natty_kv::BucketConfig,
    ) -> Result<(), natty_kv::Error> {
        self.kv.create_bucket(config).await
    }

    /// Deletes a bucket; a no-op when missing (Go `DeleteBucket`).
    pub async fn delete_bucket(&self, bucket: &str) -> Result<(), natty_kv::Error> {
        self.kv.delete_bucket(bucket).await
    }

    /// Watches a bucket (Go `WatchBucket`).
    pub async fn watch_bucket(&self, bucket: &str) -> Result<natty_kv::Watch, natty_kv::Error> {
        self.kv.watch_bucket(bucket).await
    }

    /// Watches a key (Go `WatchKey`).
    pub async fn watch_key(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<natty_kv::Watch, natty_kv::Error> {
        self.kv.watch_key(bucket, key).await
    }

    /// Lists keys (Go `Keys`).
    pub async fn keys(&self, bucket: &str) -> Result<Vec<String>, natty_kv::Error> {
        self.kv.keys(bucket).await
    }

    /// Safe refresh (Go `Refresh`).
    pub async fn refresh(&self, bucket: &str, key: &str) -> Result<u64, natty_kv::Error> {
        self.kv.refresh(bucket, key).await
    }

    /// Bucket status (Go `Status`).
    pub async fn status(&self, bucket: &str) -> Result<natty_kv::BucketStatus, natty_kv::Error> {
        self.kv.status(bucket).await
    }
}

#[cfg(feature = "election")]
impl Natty {
    /// An election handle (for `run`, `subscribe`, `is_leader`).
    pub fn election(
        &self,
        config: natty_election::ElectionConfig,
    ) -> Result<natty_election::Election, natty_election::Error> {
        natty_election::Election::new(self.kv.clone(), config)
    }

    /// Calls `f(term)` every `interval` while this node leads, until `cancel` (Go `AsLeader`).
    pub async fn as_leader<F, Fut>(
        &self,
        cancel: natty_election::CancellationToken,
        config: natty_election::ElectionConfig,
        interval: std::time::Duration,
        f: F,
    ) -> Result<(), natty_election::Error>
    where
        F: FnMut(natty_election::Term) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        self.election(config)?.run_every(cancel, interval, f).await
    }

    /// Whether `node` holds the lease `bucket`/`key` now (Go `HaveLeader`).
    pub async fn have_leader(
        &self,
        node: &str,
        bucket: &str,
        key: &str,
    ) -> Result<bool, natty_election::Error> {
        Ok(self
            .get_leader(bucket, key)
            .await?
            .is_some_and(|l| l.node == node))
    }

    /// The current leader of `bucket`/`key` (Go `GetLeader`).
    pub async fn get_leader(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<natty_election::LeaderInfo>, natty_election::Error> {
        self.election(natty_election::ElectionConfig::new(bucket, key, "observer"))?
            .leader()
            .await
    }
}
