//! [`Natty`]: one handle over one connection with the Go `INatty` surface.

use std::fmt;
#[cfg(any(feature = "stream", feature = "election"))]
use std::future::Future;
#[cfg(feature = "stream")]
use std::sync::{Arc, Mutex};

#[cfg(any(feature = "kv", feature = "stream"))]
use bytes::Bytes;
use natty_core::{Client, ConnectOptions};

/// One connection and everything natty does on it. Cheap to clone.
///
/// | Go `INatty` | here |
/// |---|---|
/// | `Consume` | [`consume`](Self::consume)`(cancel, Consume::new(stream, durable), handler)` |
/// | `Publish` / `DeletePublisher` | [`publish`](Self::publish) + [`flush`](Self::flush) / [`delete_publisher`](Self::delete_publisher) |
/// | `CreateStream` / `DeleteStream` | [`create_stream`](Self::create_stream) / [`delete_stream`](Self::delete_stream) |
/// | `CreateConsumer` / `DeleteConsumer` | [`create_consumer`](Self::create_consumer) / [`delete_consumer`](Self::delete_consumer) |
/// | `Get` `Create` `Put` `Delete` `Keys` `Refresh` `Status` | same names |
/// | `CreateBucket` / `DeleteBucket` | same names |
/// | `WatchBucket` / `WatchKey` | same names |
/// | `AsLeader` / `HaveLeader` / `GetLeader` | [`as_leader`](Self::as_leader) / [`have_leader`](Self::have_leader)`(bucket, key, node)` / [`get_leader`](Self::get_leader)`(bucket, key)` |
///
/// Configurations are passed by value everywhere (`StreamConfig`, `ConsumerConfig`,
/// `BucketConfig`, `ElectionConfig`, `ConsumeOptions`), as built by their builders.
/// [`Natty::builder`] sets what a handle does beyond connecting (bucket defaults, the
/// publisher's configuration, a JetStream domain, a connection-event hook).
#[derive(Debug, Clone)]
pub struct Natty {
    client: Client,
    #[cfg(feature = "kv")]
    kv: natty_kv::Kv,
    /// The one batch publisher behind [`publish`](Self::publish) (started on first use), for
    /// every subject: it routes per stream itself, and holds its failures for `flush`.
    #[cfg(feature = "stream")]
    publishing: Arc<Mutex<Option<Arc<natty_stream::BatchPublisher>>>>,
    /// The configuration of that publisher.
    #[cfg(feature = "stream")]
    publisher_config: natty_stream::BatchConfig,
}

/// Which durable consumer [`Natty::consume`] reads, and how (Go `Consume`'s consumer
/// configuration).
///
/// ```
/// # #[cfg(feature = "stream")] {
/// use natty::{Consume, ConsumeOptions};
/// let what = Consume::new("ORDERS", "billing")
///     .options(ConsumeOptions::default().concurrency(8).dead_letter("dlq.orders"));
/// # let _ = what; }
/// ```
#[cfg(feature = "stream")]
#[derive(Debug, Clone)]
#[non_exhaustive]
#[must_use]
pub struct Consume {
    /// The stream.
    pub stream: String,
    /// The durable consumer (created with [`Natty::create_consumer`]).
    pub durable: String,
    /// Batch, concurrency, retry delays, dead-letter subject, error channel.
    pub options: natty_stream::ConsumeOptions,
}

#[cfg(feature = "stream")]
impl Consume {
    /// The durable consumer `durable` on `stream`, with the default options.
    pub fn new(stream: impl Into<String>, durable: impl Into<String>) -> Self {
        Self {
            stream: stream.into(),
            durable: durable.into(),
            options: natty_stream::ConsumeOptions::default(),
        }
    }

    /// How to consume.
    pub fn options(mut self, options: natty_stream::ConsumeOptions) -> Self {
        self.options = options;
        self
    }
}

/// What [`Natty::close`] did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct CloseReport {
    /// The publisher's final report (`None`: nothing was published).
    #[cfg(feature = "stream")]
    pub publisher: Option<natty_stream::CloseReport>,
}

/// Why [`Natty::close`] failed. The connection is drained in every case.
#[derive(Debug)]
#[non_exhaustive]
pub enum CloseError {
    /// Messages were not stored: the publisher's report, each of them in `failed`.
    #[cfg(feature = "stream")]
    NotStored(natty_stream::CloseReport),
    /// The publisher itself failed (its task panicked); `failed` holds the messages it had
    /// handed back before.
    #[cfg(feature = "stream")]
    Publisher {
        /// What went wrong.
        error: natty_stream::Error,
        /// Messages handed back before it failed.
        failed: Vec<natty_stream::FailedMessage>,
    },
    /// Draining the connection failed.
    Drain(natty_core::Error),
}

impl fmt::Display for CloseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            #[cfg(feature = "stream")]
            Self::NotStored(report) => {
                write!(
                    f,
                    "closing natty: {} message(s) not stored",
                    report.failed.len()
                )?;
                if let Some(first) = report.failed.first() {
                    write!(f, " (first: {:?}: {})", first.subject, first.error)?;
                }
                Ok(())
            }
            #[cfg(feature = "stream")]
            Self::Publisher { error, failed } => write!(
                f,
                "closing natty: the publisher failed ({error}); {} message(s) handed back before",
                failed.len()
            ),
            Self::Drain(e) => write!(f, "closing natty: draining the connection: {e}"),
        }
    }
}

impl std::error::Error for CloseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            #[cfg(feature = "stream")]
            Self::NotStored(_) => None,
            #[cfg(feature = "stream")]
            Self::Publisher { error, .. } => Some(error),
            Self::Drain(e) => Some(e),
        }
    }
}

impl Natty {
    /// Connects (see [`ConnectOptions`]) with the default settings; [`builder`](Self::builder)
    /// for more.
    pub async fn connect(options: ConnectOptions) -> Result<Self, natty_core::Error> {
        Ok(Self::new(options.connect().await?))
    }

    /// Settings beyond the connection: bucket defaults, the publisher's configuration, a
    /// JetStream domain, a connection-event hook. Finish with
    /// [`connect`](crate::NattyBuilder::connect).
    pub fn builder(options: ConnectOptions) -> crate::NattyBuilder {
        crate::NattyBuilder::new(options)
    }

    /// A handle over an existing connection, with the default settings.
    pub fn new(client: Client) -> Self {
        Self::from_parts(
            client,
            #[cfg(feature = "kv")]
            natty_kv::BucketConfig::new("bucket-defaults"),
            #[cfg(feature = "stream")]
            natty_stream::BatchConfig::default(),
        )
    }

    pub(crate) fn from_parts(
        client: Client,
        #[cfg(feature = "kv")] bucket_defaults: natty_kv::BucketConfig,
        #[cfg(feature = "stream")] publisher_config: natty_stream::BatchConfig,
    ) -> Self {
        Self {
            #[cfg(feature = "kv")]
            kv: natty_kv::Kv::with_defaults(client.clone(), bucket_defaults),
            client,
            #[cfg(feature = "stream")]
            publishing: Arc::default(),
            #[cfg(feature = "stream")]
            publisher_config,
        }
    }

    /// The connection.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Closes the publisher (waiting for every ack), then drains the connection.
    ///
    /// `Err(CloseError::NotStored(report))` when any message published through this handle
    /// and not yet returned by [`flush`](Self::flush) was not stored: each one is in
    /// `report.failed`, with its payload and the reason.
    pub async fn close(&self) -> Result<CloseReport, CloseError> {
        #[cfg(feature = "stream")]
        let publisher = self.close_publisher().await;
        let drained = self.client.drain().await;
        #[cfg(feature = "stream")]
        let report = match publisher {
            Ok(Some(report)) if !report.failed.is_empty() => {
                return Err(CloseError::NotStored(report));
            }
            Ok(publisher) => CloseReport { publisher },
            Err(e) => return Err(e),
        };
        #[cfg(not(feature = "stream"))]
        let report = CloseReport::default();
        drained.map_err(CloseError::Drain)?;
        Ok(report)
    }
}

#[cfg(feature = "stream")]
impl Natty {
    /// Runs `handler` on every message of the durable consumer until `cancel` fires (Go
    /// `Consume`).
    pub async fn consume<H, Fut>(
        &self,
        cancel: natty_stream::CancellationToken,
        consumer: Consume,
        handler: H,
    ) -> Result<natty_stream::ConsumerStats, natty_stream::Error>
    where
        H: Fn(natty_stream::Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), natty_stream::HandlerError>> + Send + 'static,
    {
        natty_stream::Consumer::new(
            self.client.clone(),
            &consumer.stream,
            &consumer.durable,
            consumer.options,
        )?
        .consume(cancel, handler)
        .await
    }

    /// Queues a message on the handle's batch publisher (started on first use; one for every
    /// subject), like Go `Publish`. [`flush`](Self::flush) or [`close`](Self::close) wait
    /// for the acks and return every message that was not stored.
    ///
    /// `TooLarge` at once, nothing sent, for a message the server would refuse by closing the
    /// connection (over its `max_payload` with natty's `Nats-Msg-Id` header counted, or a
    /// subject longer than its control line allows). Waits (back-pressure) while the queue is
    /// full. `Full` at once, nothing queued, while as many failed messages are held for
    /// `flush` as the publisher keeps
    /// ([`BatchConfig::max_held_failures`](natty_stream::BatchConfig::max_held_failures), by
    /// default its queue capacity): a producer that never flushes during an outage is told to,
    /// instead of running out of memory or waiting for a flush only it would make.
    pub async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), natty_stream::Error> {
        self.publishing()?.send(subject, payload).await
    }

    /// The batch publisher behind [`publish`](Self::publish) (for `send_with`, `try_send`,
    /// `stats`). Its failures come back from [`flush`](Self::flush) and
    /// [`close`](Self::close); taking its error channel (`take_errors`) sends them there
    /// instead, and `flush` then counts them as returned elsewhere.
    pub fn publisher(&self) -> Result<Arc<natty_stream::BatchPublisher>, natty_stream::Error> {
        self.publishing()
    }

    fn publishing(&self) -> Result<Arc<natty_stream::BatchPublisher>, natty_stream::Error> {
        let mut slot = self
            .publishing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(p) = slot.as_ref() {
            return Ok(p.clone());
        }
        let publisher = Arc::new(natty_stream::BatchPublisher::new(
            self.client.clone(),
            self.publisher_config.clone(),
        )?);
        *slot = Some(publisher.clone());
        Ok(publisher)
    }

    fn current_publishing(&self) -> Option<Arc<natty_stream::BatchPublisher>> {
        self.publishing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits until every message published before this call (by any task) is acknowledged,
    /// and returns an error carrying each one that was not stored (subject, payload, reason):
    /// the publisher's [`flush_all`](natty_stream::BatchPublisher::flush_all).
    ///
    /// Each failed message is returned once: when two flushes overlap, the one that finds it
    /// returns it, and the other counts it (`returned_elsewhere`). Cancel-safe: a flush
    /// dropped half-way leaves its failures for the next one.
    pub async fn flush(&self) -> Result<natty_stream::BatchStats, natty_stream::FlushError> {
        let Some(p) = self.current_publishing() else {
            return Ok(natty_stream::BatchStats::default());
        };
        p.flush_all().await
    }

    /// Closes the publisher behind [`publish`](Self::publish) after waiting for its acks
    /// (Go `DeletePublisher`; there is one publisher for every subject). Its report holds
    /// every message not stored and not yet returned by a flush; `None` when there was no
    /// publisher. A later `publish` starts a new one.
    pub async fn delete_publisher(&self) -> Result<Option<natty_stream::CloseReport>, CloseError> {
        self.close_publisher().await
    }

    async fn close_publisher(&self) -> Result<Option<natty_stream::CloseReport>, CloseError> {
        let Some(p) = self.current_publishing() else {
            return Ok(None);
        };
        // Forgotten only once closed: a close that is dropped half-way leaves the (closing)
        // publisher and its failures in place for the next flush or close.
        let closed = p.close().await;
        // Failures held after all (a panicked task's, or handed back after the report).
        let failed = p.take_failed();
        {
            let mut slot = self
                .publishing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if slot.as_ref().is_some_and(|q| Arc::ptr_eq(q, &p)) {
                *slot = None;
            }
        }
        match closed {
            Ok(mut report) => {
                report.failed.extend(failed);
                Ok(Some(report))
            }
            Err(error) => Err(CloseError::Publisher { error, failed }),
        }
    }

    /// Creates the stream, or checks a present one (Go `CreateStream`).
    pub async fn create_stream(
        &self,
        config: natty_stream::StreamConfig,
    ) -> Result<(), natty_stream::Error> {
        natty_stream::ensure_stream(&self.client, &config).await
    }

    /// Deletes a stream; a no-op when missing.
    pub async fn delete_stream(&self, name: &str) -> Result<(), natty_stream::Error> {
        natty_stream::delete_stream(&self.client, name).await
    }

    /// Creates or updates a durable consumer (Go `CreateConsumer`).
    pub async fn create_consumer(
        &self,
        config: natty_stream::ConsumerConfig,
    ) -> Result<(), natty_stream::Error> {
        natty_stream::ensure_consumer(&self.client, &config).await
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

    /// Whether `node` holds the lease `bucket`/`key` now (Go `HaveLeader`). The arguments
    /// come in [`get_leader`](Self::get_leader)'s order, then the node.
    pub async fn have_leader(
        &self,
        bucket: &str,
        key: &str,
        node: &str,
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
