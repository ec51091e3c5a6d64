//! Bucket naming, the bucket's stream, and the cache of bucket handles.
//!
//! Whether a bucket exists is decided here and only here, from the stream info API: a 503 or a
//! timeout from a publish or a direct get says nothing about it (a replicated stream answers
//! so while it elects a leader).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use async_nats::jetstream::{self, context::GetStreamErrorKind, kv};
use natty_core::{Client, Feature, error::codes};
use tracing::debug;

use crate::{
    BucketConfig, Error, ErrorKind, Storage,
    error::from_request,
    retry::{Deadline, Outcome},
};

/// The stream behind a bucket.
pub(crate) fn stream_name(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// The subject a key is stored under.
pub(crate) fn subject(bucket: &str, key: &str) -> String {
    format!("$KV.{bucket}.{key}")
}

/// What natty caches about a bucket. Cheap to clone (every key operation takes one from the
/// cache): cloning the stream handle with its full info showed in the put profile.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    pub(crate) name: Arc<str>,
    pub(crate) stream: Arc<jetstream::stream::Stream>,
    pub(crate) per_key_ttl: bool,
    pub(crate) allow_direct: bool,
    /// When the bucket's stream was created: a bucket deleted and created again has another.
    pub(crate) created: SystemTime,
}

impl Bucket {
    fn from_stream(name: &str, stream: jetstream::stream::Stream) -> Self {
        let info = stream.cached_info();
        Self {
            name: Arc::from(name),
            per_key_ttl: info.config.allow_message_ttl,
            allow_direct: info.config.allow_direct,
            created: SystemTime::from(info.created),
            stream: Arc::new(stream),
        }
    }

    pub(crate) fn subject(&self, key: &str) -> String {
        subject(&self.name, key)
    }
}

/// A bucket's configuration and state as the server reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BucketStatus {
    /// Bucket name.
    pub bucket: String,
    /// Description.
    pub description: String,
    /// Entry TTL (`None`: entries never expire).
    pub ttl: Option<Duration>,
    /// Revisions kept per key.
    pub history: i64,
    /// Replicas.
    pub replicas: usize,
    /// Storage.
    pub storage: Storage,
    /// Whether per-key TTL (and expiry markers) is enabled.
    pub per_key_ttl: bool,
    /// Stored messages (values, including history and markers).
    pub values: u64,
    /// Stored bytes.
    pub bytes: u64,
}

impl BucketStatus {
    pub(crate) fn from_info(bucket: &str, info: &jetstream::stream::Info) -> Self {
        let c = &info.config;
        Self {
            bucket: bucket.to_owned(),
            description: c.description.clone().unwrap_or_default(),
            ttl: (!c.max_age.is_zero()).then_some(c.max_age),
            history: c.max_messages_per_subject,
            replicas: c.num_replicas,
            storage: match c.storage {
                jetstream::stream::StorageType::Memory => Storage::Memory,
                jetstream::stream::StorageType::File => Storage::File,
            },
            per_key_ttl: c.allow_message_ttl,
            values: info.state.messages,
            bytes: info.state.bytes,
        }
    }
}

/// Bucket handles a `Kv` keeps (a process using more buckets looks the others up again).
pub(crate) const MAX_CACHED: usize = 1024;

/// The bucket handles a `Kv` (and its clones) knows, and how it asks the server about others.
#[derive(Debug, Clone)]
pub(crate) struct Buckets {
    client: Client,
    cache: Arc<Mutex<HashMap<String, Bucket>>>,
    /// The configurations of the buckets whose owner said so ([`Kv::own_bucket`]): a write
    /// that creates one of them uses it instead of the `Kv`'s defaults.
    ///
    /// [`Kv::own_bucket`]: crate::Kv::own_bucket
    owned: Arc<Mutex<HashMap<String, BucketConfig>>>,
}

impl Buckets {
    pub(crate) fn new(client: Client) -> Self {
        Self {
            client,
            cache: Arc::default(),
            owned: Arc::default(),
        }
    }

    /// Registers `config` as its bucket's own configuration (replacing an earlier one).
    pub(crate) fn own(&self, config: BucketConfig) {
        self.owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(config.name.clone(), config);
    }

    /// The configuration a write creates bucket `name` with: its owner's, else `defaults`
    /// named `name`.
    pub(crate) fn config_for(&self, name: &str, defaults: &BucketConfig) -> BucketConfig {
        self.owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
            .unwrap_or_else(|| defaults.with_name(name))
    }

    pub(crate) fn cached(&self, name: &str) -> Option<Bucket> {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    fn remember(&self, b: &Bucket) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= MAX_CACHED && !cache.contains_key(&*b.name) {
            // Bounded by the bucket names a process uses, not forever: forgetting a handle
            // costs one stream info request the next time.
            if let Some(other) = cache.keys().next().cloned() {
                cache.remove(&other);
            }
        }
        cache.insert(b.name.to_string(), b.clone());
    }

    pub(crate) fn evict(&self, name: &str) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
    }

    /// The bucket from the cache, or else from the server; `None` when it does not exist.
    pub(crate) async fn find(
        &self,
        name: &str,
        deadline: &Deadline,
    ) -> Result<Option<Bucket>, Error> {
        match self.cached(name) {
            Some(b) => Ok(Some(b)),
            None => self.lookup(name, deadline).await,
        }
    }

    /// The bucket; `BucketNotFound` (saying what `op` was) when it does not exist.
    pub(crate) async fn require(
        &self,
        name: &str,
        op: &str,
        deadline: &Deadline,
    ) -> Result<Bucket, Error> {
        self.find(name, deadline)
            .await?
            .ok_or_else(|| not_found(name, op))
    }

    /// The bucket, created with `config` when it does not exist.
    pub(crate) async fn find_or_create(
        &self,
        config: &BucketConfig,
        deadline: &Deadline,
    ) -> Result<Bucket, Error> {
        if let Some(b) = self.find(&config.name, deadline).await? {
            return Ok(b);
        }
        debug!(bucket = %config.name, "auto-creating bucket");
        match self.create(config).await {
            Ok(b) => Ok(b),
            // Someone else created it at the same moment, perhaps with another configuration.
            Err(e) => match self.lookup(&config.name, deadline).await? {
                Some(b) => Ok(b),
                None => Err(e),
            },
        }
    }

    /// Asks the server (the stream info API) whether the bucket exists, retrying answers that
    /// say nothing (timeouts, no leader yet) until `deadline`. The only place that decides a
    /// bucket is gone; it then forgets it.
    pub(crate) async fn lookup(
        &self,
        name: &str,
        deadline: &Deadline,
    ) -> Result<Option<Bucket>, Error> {
        let mut attempt = deadline.attempts();
        loop {
            match self.lookup_once(name).await {
                Outcome::Done(found) => return found,
                Outcome::Retry(e) | Outcome::Unavailable(e) => {
                    if !attempt.pause(&e).await {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// One stream info request.
    pub(crate) async fn lookup_once(&self, name: &str) -> Outcome<Option<Bucket>> {
        let context = || format!("looking up bucket {name:?}");
        match self.client.jetstream().get_stream(stream_name(name)).await {
            Ok(stream) => {
                let b = Bucket::from_stream(name, stream);
                self.remember(&b);
                Outcome::Done(Ok(Some(b)))
            }
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(js)
                    if js.error_code().0 == codes::STREAM_NOT_FOUND =>
                {
                    self.evict(name);
                    Outcome::Done(Ok(None))
                }
                GetStreamErrorKind::JetStream(js) if js.code() == 503 => {
                    Outcome::Retry(from_request(e, context()))
                }
                _ if natty_core::error::is_transient(&e) => {
                    Outcome::Retry(from_request(e, context()))
                }
                _ => Outcome::Done(Err(from_request(e, context()))),
            },
        }
    }

    /// Creates the bucket's stream (`create_bucket` checked first that it does not exist).
    pub(crate) async fn create(&self, config: &BucketConfig) -> Result<Bucket, Error> {
        let per_key_ttl = config.per_key_ttl && self.client.supports(Feature::PerKeyTtl);
        if config.per_key_ttl && !per_key_ttl {
            tracing::warn!(
                bucket = %config.name,
                "server older than 2.11: bucket created without per-key TTL or expiry markers"
            );
        }
        let store = self
            .client
            .jetstream()
            .create_key_value(kv::Config {
                bucket: config.name.clone(),
                description: config.description.clone(),
                history: i64::from(config.history),
                max_age: config.ttl.unwrap_or_default(),
                storage: match config.storage {
                    Storage::File => jetstream::stream::StorageType::File,
                    Storage::Memory => jetstream::stream::StorageType::Memory,
                },
                num_replicas: config.replicas,
                limit_markers: per_key_ttl.then_some(config.marker_ttl),
                ..Default::default()
            })
            .await
            .map_err(|e| from_request(e, format!("creating bucket {:?}", config.name)))?;
        let mut stream = store.stream;
        if config.atomic_writes {
            stream = self.allow_atomic(&config.name, stream).await?;
        }
        let b = Bucket::from_stream(&config.name, stream);
        self.remember(&b);
        Ok(b)
    }
}

impl Buckets {
    /// Caches `stream` as the bucket `name`'s.
    pub(crate) fn remember_stream(&self, name: &str, stream: jetstream::stream::Stream) {
        self.remember(&Bucket::from_stream(name, stream));
    }

    /// Turns on atomic batch writes (`allow_atomic`) on the bucket's stream: async-nats's
    /// key-value config has no such field, so the stream is updated right after its creation
    /// (until then a batch is refused, never half applied). On a server older than 2.12 the
    /// bucket stays as it is, with a warning.
    pub(crate) async fn allow_atomic(
        &self,
        name: &str,
        stream: jetstream::stream::Stream,
    ) -> Result<jetstream::stream::Stream, Error> {
        if !self.client.supports(Feature::AtomicBatch) {
            tracing::warn!(bucket = %name, "server older than 2.12: bucket created without atomic batch writes");
            return Ok(stream);
        }
        let mut config = stream.cached_info().config.clone();
        if config.allow_atomic_publish {
            return Ok(stream);
        }
        config.allow_atomic_publish = true;
        let js = self.client.jetstream();
        js.update_stream(config)
            .await
            .map_err(|e| from_request(e, format!("allowing atomic writes in bucket {name:?}")))?;
        js.get_stream(stream_name(name))
            .await
            .map_err(|e| from_request(e, format!("looking up bucket {name:?}")))
    }
}

/// `BucketNotFound`, saying what was attempted.
pub(crate) fn not_found(bucket: &str, op: &str) -> Error {
    Error::new(
        ErrorKind::BucketNotFound,
        format!("{op} in bucket {bucket:?}"),
    )
}
