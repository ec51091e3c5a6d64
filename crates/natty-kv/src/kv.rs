//! [`Kv`]: the key/value operations, over a cache of bucket handles.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use async_nats::{
    HeaderMap,
    jetstream::{self, context::GetStreamErrorKind, kv, stream::DirectGetErrorKind},
};
use bytes::Bytes;
use futures::TryStreamExt;
use natty_core::{Client, names};
use tracing::{Instrument, debug, info_span};

use crate::{
    BucketConfig, Error, ErrorKind, Storage,
    config::validate_key_ttl,
    entry::{self, Entry, EventKind},
    error::{codes, from_core, from_publish, from_request, server_code},
    watch::Watch,
};

/// How long delete/expiry markers stay in a bucket with per-key TTL (they tell watchers and
/// `create` that a key is gone; after this they are removed too).
const MARKER_TTL: Duration = Duration::from_secs(60);

/// What natty caches about a bucket.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    pub(crate) name: String,
    pub(crate) stream: jetstream::stream::Stream,
    pub(crate) per_key_ttl: bool,
    pub(crate) allow_direct: bool,
}

impl Bucket {
    fn from_stream(name: &str, stream: jetstream::stream::Stream) -> Self {
        let info = stream.cached_info();
        Self {
            name: name.to_owned(),
            per_key_ttl: info.config.allow_message_ttl,
            allow_direct: info.config.allow_direct,
            stream,
        }
    }

    fn subject(&self, key: &str) -> String {
        format!("$KV.{}.{key}", self.name)
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

/// Key/value operations on JetStream KV buckets. Cheap to clone (clones share the bucket cache).
///
/// Buckets are created on demand by `put`/`create` with the `Kv`'s default configuration;
/// reads never create one. Handles are cached, and a bucket deleted behind our back is
/// noticed: the next write re-creates it, the next read reports it missing.
///
/// ```no_run
/// # async fn example(client: natty_core::Client) -> Result<(), natty_kv::Error> {
/// use natty_kv::{BucketConfig, Kv};
/// let kv = Kv::with_defaults(client, BucketConfig::new("-").history(5));
/// let rev = kv.put("config", "feature.x", "on".into()).await?;
/// let entry = kv.get("config", "feature.x").await?.expect("just written");
/// assert_eq!(entry.revision, rev);
/// // Only delete it if nobody changed it since we read it:
/// kv.delete_if("config", "feature.x", entry.revision).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Kv {
    client: Client,
    defaults: BucketConfig,
    buckets: Arc<Mutex<HashMap<String, Bucket>>>,
}

impl Kv {
    /// A `Kv` whose auto-created buckets use [`BucketConfig::new`]'s defaults.
    pub fn new(client: Client) -> Self {
        Self::with_defaults(client, BucketConfig::new("-"))
    }

    /// A `Kv` whose auto-created buckets use `defaults` (its name is replaced by the bucket's).
    pub fn with_defaults(client: Client, defaults: BucketConfig) -> Self {
        Self {
            client,
            defaults,
            buckets: Arc::default(),
        }
    }

    /// The connection this `Kv` uses.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The configuration used for auto-created buckets.
    pub fn defaults(&self) -> &BucketConfig {
        &self.defaults
    }

    // ---- reads -------------------------------------------------------------------------

    /// The key's current value; `None` when the key or the bucket does not exist (a missing
    /// bucket is not created), or the key was deleted, purged or expired.
    pub async fn get(&self, bucket: &str, key: &str) -> Result<Option<Entry>, Error> {
        validate(bucket, key)?;
        let span = info_span!("natty.kv.get", bucket, key);
        async {
            let Some(b) = self.bucket(bucket, false).await? else {
                return Ok(None);
            };
            match self.last_message(&b, key).await {
                Err(e) if e.kind() == ErrorKind::BucketNotFound => {
                    self.evict(bucket);
                    Ok(None)
                }
                other => other.map(|m| m.and_then(|m| decode_entry(key, m))),
            }
        }
        .instrument(span)
        .await
    }

    /// The last stored message of a key (a value or a delete/purge/expiry marker).
    async fn last_message(
        &self,
        b: &Bucket,
        key: &str,
    ) -> Result<Option<jetstream::message::StreamMessage>, Error> {
        let subject = b.subject(key);
        let context = || format!("reading key {key:?} in bucket {:?}", b.name);
        if b.allow_direct {
            match b.stream.direct_get_last_for_subject(subject).await {
                Ok(m) => Ok(Some(m)),
                Err(e) => match e.kind() {
                    DirectGetErrorKind::NotFound => Ok(None),
                    DirectGetErrorKind::TimedOut => Err(from_request(e, context())),
                    DirectGetErrorKind::ErrorResponse(status, _) if status.as_u16() == 503 => {
                        // No responders: the stream is gone.
                        Err(Error::with_source(ErrorKind::BucketNotFound, context(), e))
                    }
                    _ => Err(from_request(e, context())),
                },
            }
        } else {
            match b.stream.get_last_raw_message_by_subject(&subject).await {
                Ok(m) => Ok(Some(m)),
                Err(e) => {
                    use jetstream::stream::LastRawMessageErrorKind as K;
                    match e.kind() {
                        K::NoMessageFound => Ok(None),
                        K::JetStream(js) if js.code() == 404 => Ok(None),
                        _ => Err(from_request(e, context())),
                    }
                }
            }
        }
    }

    /// Every live key in the bucket (sorted); empty for an empty bucket; `BucketNotFound` when
    /// the bucket does not exist.
    pub async fn keys(&self, bucket: &str) -> Result<Vec<String>, Error> {
        names::bucket(bucket).map_err(from_core)?;
        let span = info_span!("natty.kv.keys", bucket);
        async {
            let b = self.require_bucket(bucket).await?;
            let context = || format!("listing keys of bucket {bucket:?}");
            let mut keys: Vec<String> = self
                .store(&b)
                .keys()
                .await
                .map_err(|e| from_request(e, context()))?
                .try_collect()
                .await
                .map_err(|e| from_request(e, context()))?;
            keys.sort();
            Ok(keys)
        }
        .instrument(span)
        .await
    }

    /// The bucket's configuration and state; `BucketNotFound` when it does not exist.
    pub async fn status(&self, bucket: &str) -> Result<BucketStatus, Error> {
        names::bucket(bucket).map_err(from_core)?;
        let span = info_span!("natty.kv.status", bucket);
        async {
            let b = self.require_bucket(bucket).await?;
            let mut stream = b.stream.clone();
            let info = stream.info().await.map_err(|e| {
                let err = from_request(e, format!("reading the status of bucket {bucket:?}"));
                if err.kind() == ErrorKind::BucketNotFound {
                    self.evict(bucket);
                }
                err
            })?;
            let c = &info.config;
            Ok(BucketStatus {
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
            })
        }
        .instrument(span)
        .await
    }

    /// Watches every key of the bucket: first the current value of each key, then every change.
    /// The watch resumes by itself after a reconnect or server restart.
    pub async fn watch_bucket(&self, bucket: &str) -> Result<Watch, Error> {
        names::bucket(bucket).map_err(from_core)?;
        let b = self.require_bucket(bucket).await?;
        Watch::start(self.client.clone(), b, format!("$KV.{bucket}.>")).await
    }

    /// Watches one key (or a pattern like `users.*`): its current value, then every change.
    pub async fn watch_key(&self, bucket: &str, key: &str) -> Result<Watch, Error> {
        names::bucket(bucket).map_err(from_core)?;
        names::key_filter(key).map_err(from_core)?;
        let b = self.require_bucket(bucket).await?;
        Watch::start(self.client.clone(), b, format!("$KV.{bucket}.{key}")).await
    }

    // ---- writes ------------------------------------------------------------------------

    /// Writes `value` whatever the key holds; creates the bucket if missing. Returns the new
    /// revision.
    pub async fn put(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, Error> {
        validate(bucket, key)?;
        self.write(Write::new("put", bucket, key, value), true)
            .await
    }

    /// Writes `value` only if the key does not exist (or was deleted/expired); creates the
    /// bucket if missing. `KeyExists` otherwise.
    pub async fn create(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, Error> {
        validate(bucket, key)?;
        self.create_inner(bucket, key, value, None).await
    }

    /// Like [`create`](Self::create), with a per-key TTL: the key expires `ttl` after its last
    /// write (or [`refresh`](Self::refresh)). Needs server 2.11+ and a bucket with per-key TTL;
    /// `Unsupported` otherwise — the key is never silently stored without its TTL. `ttl` must
    /// be whole seconds, at least 1 s.
    pub async fn create_with_ttl(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<u64, Error> {
        validate(bucket, key)?;
        let secs = validate_key_ttl(ttl)?;
        self.create_inner(bucket, key, value, Some(secs)).await
    }

    async fn create_inner(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        ttl: Option<u64>,
    ) -> Result<u64, Error> {
        let write = Write::new("create", bucket, key, value).expect(0).ttl(ttl);
        match self.write(write.clone(), true).await {
            Err(e) if e.kind() == ErrorKind::RevisionMismatch => {
                // The subject has messages: a live value (exists) or a tombstone we may replace.
                let b = self.require_bucket(bucket).await?;
                match self.last_message(&b, key).await? {
                    Some(m) if entry::kind_of(Some(&m.headers)) != EventKind::Put => {
                        debug!(revision = m.sequence, "re-creating over a tombstone");
                        self.write(write.expect(m.sequence), false)
                            .await
                            .map_err(|e| key_exists_on_conflict(e, bucket, key))
                    }
                    Some(_) => Err(key_exists(bucket, key)),
                    // Gone between the two calls: let the caller retry.
                    None => Err(e),
                }
            }
            other => other,
        }
    }

    /// Writes `value` only if the key's revision is still `expected_revision`;
    /// `RevisionMismatch` otherwise.
    pub async fn update(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        expected_revision: u64,
    ) -> Result<u64, Error> {
        validate(bucket, key)?;
        self.write(
            Write::new("update", bucket, key, value).expect(expected_revision),
            false,
        )
        .await
    }

    /// Like [`update`](Self::update), also setting a per-key TTL (renewing a lease).
    pub async fn update_with_ttl(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        expected_revision: u64,
        ttl: Duration,
    ) -> Result<u64, Error> {
        validate(bucket, key)?;
        let secs = validate_key_ttl(ttl)?;
        self.write(
            Write::new("update", bucket, key, value)
                .expect(expected_revision)
                .ttl(Some(secs)),
            false,
        )
        .await
    }

    /// Re-writes the key's current value, conditioned on the revision just read, keeping its
    /// per-key TTL: the TTL (per-key or bucket) starts again. Never overwrites a newer write
    /// (`RevisionMismatch`) and never resurrects a deleted or expired key (`KeyNotFound`).
    pub async fn refresh(&self, bucket: &str, key: &str) -> Result<u64, Error> {
        validate(bucket, key)?;
        let span = info_span!("natty.kv.refresh", bucket, key);
        async {
            let entry = self
                .get(bucket, key)
                .await?
                .ok_or_else(|| match self.cached(bucket) {
                    Some(_) => Error::new(
                        ErrorKind::KeyNotFound,
                        format!("refreshing key {key:?} in bucket {bucket:?}"),
                    ),
                    None => bucket_not_found(bucket, "refreshing a key"),
                })?;
            self.refresh_entry(bucket, &entry).await
        }
        .instrument(span)
        .await
    }

    /// Re-writes `entry` (as read earlier) conditioned on its revision, keeping its per-key
    /// TTL. `RevisionMismatch` if the key was written, deleted or expired since.
    pub async fn refresh_entry(&self, bucket: &str, entry: &Entry) -> Result<u64, Error> {
        validate(bucket, &entry.key)?;
        let ttl = entry.ttl.map(|t| t.as_secs().max(1));
        self.write(
            Write::new("refresh", bucket, &entry.key, entry.value.clone())
                .expect(entry.revision)
                .ttl(ttl),
            false,
        )
        .await
    }

    /// Deletes the key. A no-op when the bucket or the key does not exist (nothing is
    /// created, no marker written).
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<(), Error> {
        validate(bucket, key)?;
        let span = info_span!("natty.kv.delete", bucket, key);
        async {
            let Some(b) = self.bucket(bucket, false).await? else {
                return Ok(());
            };
            let live = self
                .last_message(&b, key)
                .await?
                .is_some_and(|m| entry::kind_of(Some(&m.headers)) == EventKind::Put);
            if !live {
                return Ok(());
            }
            match self.write(Write::delete(bucket, key, None), false).await {
                Err(e) if e.kind() == ErrorKind::BucketNotFound => Ok(()),
                other => other.map(drop),
            }
        }
        .instrument(span)
        .await
    }

    /// Deletes the key only if its revision is still `expected_revision` (a safe delete:
    /// a leader resigning deletes only its own lease). `RevisionMismatch` otherwise, and the
    /// key is left as it is.
    pub async fn delete_if(
        &self,
        bucket: &str,
        key: &str,
        expected_revision: u64,
    ) -> Result<(), Error> {
        validate(bucket, key)?;
        self.write(Write::delete(bucket, key, Some(expected_revision)), false)
            .await
            .map(drop)
    }

    async fn write(&self, w: Write, auto_create: bool) -> Result<u64, Error> {
        let span = info_span!(
            "natty.kv.write",
            op = w.op,
            bucket = %w.bucket,
            key = %w.key,
            expected = w.expected,
            ttl = w.ttl
        );
        async {
            let b = self.write_bucket(&w, auto_create).await?;
            match self.publish(&b, &w).await {
                Err(e) if e.kind() == ErrorKind::BucketNotFound => {
                    // Deleted behind our back: forget it; a write that may create buckets
                    // creates it again and retries once.
                    self.evict(&w.bucket);
                    if !auto_create {
                        return Err(e);
                    }
                    debug!("bucket vanished, re-creating it");
                    let b = self.write_bucket(&w, true).await?;
                    self.publish(&b, &w).await
                }
                other => other,
            }
        }
        .instrument(span)
        .await
    }

    async fn write_bucket(&self, w: &Write, auto_create: bool) -> Result<Bucket, Error> {
        let Some(b) = self.bucket(&w.bucket, auto_create).await? else {
            return Err(bucket_not_found(&w.bucket, w.op));
        };
        if w.ttl.is_some() && !b.per_key_ttl {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{} key {:?} with a per-key TTL: bucket {:?} has no per-key TTL (needs server 2.11+ \
                     and a bucket created with per_key_ttl; this server is {})",
                    w.op,
                    w.key,
                    w.bucket,
                    self.client
                        .server_version()
                        .map_or_else(|| "of unknown version".to_owned(), |v| v.to_string())
                ),
            ));
        }
        Ok(b)
    }

    async fn publish(&self, b: &Bucket, w: &Write) -> Result<u64, Error> {
        let mut headers = HeaderMap::new();
        if let Some(expected) = w.expected {
            headers.insert(
                entry::EXPECTED_LAST_SUBJECT_SEQUENCE,
                expected.to_string().as_str(),
            );
        }
        if let Some(ttl) = w.ttl {
            headers.insert(entry::TTL, ttl.to_string().as_str());
        }
        if w.delete {
            headers.insert(entry::KV_OPERATION, "DEL");
        }
        let context = || {
            let cond = w
                .expected
                .map_or(String::new(), |r| format!(" expecting revision {r}"));
            format!("{} key {:?} in bucket {:?}{cond}", w.op, w.key, w.bucket)
        };
        let ack = self
            .client
            .jetstream()
            .publish_with_headers(b.subject(&w.key), headers, w.value.clone())
            .await
            .map_err(|e| from_publish(e, context()))?
            .await
            .map_err(|e| from_publish(e, context()))?;
        debug!(revision = ack.sequence, "written");
        Ok(ack.sequence)
    }

    // ---- buckets -----------------------------------------------------------------------

    /// Creates a bucket; `BucketExists` if it exists already (whatever its configuration).
    pub async fn create_bucket(&self, config: BucketConfig) -> Result<(), Error> {
        config.validate()?;
        let span = info_span!("natty.kv.create_bucket", bucket = %config.name);
        async {
            if self.lookup(&config.name).await?.is_some() {
                return Err(Error::new(
                    ErrorKind::BucketExists,
                    format!("creating bucket {:?}", config.name),
                ));
            }
            self.create_stream(&config).await.map(drop)
        }
        .instrument(span)
        .await
    }

    /// Creates the bucket if missing; if it exists, checks that its TTL, history, storage and
    /// per-key TTL match `config` (`BucketConfigMismatch` naming both values otherwise).
    pub async fn ensure_bucket(&self, config: BucketConfig) -> Result<BucketStatus, Error> {
        config.validate()?;
        let span = info_span!("natty.kv.ensure_bucket", bucket = %config.name);
        async {
            if self.lookup(&config.name).await?.is_none() {
                self.create_stream(&config).await?;
            }
            let status = self.status(&config.name).await?;
            let supported = self.per_key_ttl_supported();
            let mismatches = [
                (
                    "ttl",
                    format!("{:?}", status.ttl),
                    format!("{:?}", config.ttl),
                ),
                (
                    "history",
                    status.history.to_string(),
                    config.history.to_string(),
                ),
                (
                    "storage",
                    format!("{:?}", status.storage),
                    format!("{:?}", config.storage),
                ),
                (
                    "per_key_ttl",
                    status.per_key_ttl.to_string(),
                    (config.per_key_ttl && supported).to_string(),
                ),
            ];
            if let Some((field, have, want)) =
                mismatches.iter().find(|(_, have, want)| have != want)
            {
                return Err(Error::new(
                    ErrorKind::BucketConfigMismatch,
                    format!(
                        "ensuring bucket {:?}: it exists with {field} {have}, asked for {want}",
                        config.name
                    ),
                ));
            }
            Ok(status)
        }
        .instrument(span)
        .await
    }

    /// Deletes the bucket and everything in it; a no-op when it does not exist.
    pub async fn delete_bucket(&self, bucket: &str) -> Result<(), Error> {
        names::bucket(bucket).map_err(from_core)?;
        let span = info_span!("natty.kv.delete_bucket", bucket);
        async {
            self.evict(bucket);
            match self.client.jetstream().delete_key_value(bucket).await {
                Ok(_) => Ok(()),
                Err(e) if server_code(&e) == Some(codes::STREAM_NOT_FOUND) => Ok(()),
                Err(e) => Err(from_request(e, format!("deleting bucket {bucket:?}"))),
            }
        }
        .instrument(span)
        .await
    }

    fn per_key_ttl_supported(&self) -> bool {
        self.client
            .server_version()
            .is_some_and(|v| v.at_least(2, 11))
    }

    /// The bucket, from the cache or the server; created with the defaults when missing and
    /// `create` is set.
    pub(crate) async fn bucket(&self, name: &str, create: bool) -> Result<Option<Bucket>, Error> {
        if let Some(b) = self.cached(name) {
            return Ok(Some(b));
        }
        if let Some(b) = self.lookup(name).await? {
            return Ok(Some(b));
        }
        if !create {
            return Ok(None);
        }
        debug!(bucket = name, "auto-creating bucket");
        match self.create_stream(&self.defaults.with_name(name)).await {
            Ok(b) => Ok(Some(b)),
            // Someone else created it at the same moment, perhaps with another configuration.
            Err(e) => match self.lookup(name).await? {
                Some(b) => Ok(Some(b)),
                None => Err(e),
            },
        }
    }

    async fn require_bucket(&self, name: &str) -> Result<Bucket, Error> {
        self.bucket(name, false)
            .await?
            .ok_or_else(|| bucket_not_found(name, "using"))
    }

    fn cached(&self, name: &str) -> Option<Bucket> {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    fn remember(&self, b: &Bucket) {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(b.name.clone(), b.clone());
    }

    pub(crate) fn evict(&self, name: &str) {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
    }

    /// Asks the server for the bucket's stream.
    async fn lookup(&self, name: &str) -> Result<Option<Bucket>, Error> {
        match self
            .client
            .jetstream()
            .get_stream(format!("KV_{name}"))
            .await
        {
            Ok(stream) => {
                let b = Bucket::from_stream(name, stream);
                self.remember(&b);
                Ok(Some(b))
            }
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(js)
                    if js.error_code().0 == codes::STREAM_NOT_FOUND =>
                {
                    self.evict(name);
                    Ok(None)
                }
                _ => Err(from_request(e, format!("looking up bucket {name:?}"))),
            },
        }
    }

    async fn create_stream(&self, config: &BucketConfig) -> Result<Bucket, Error> {
        let per_key_ttl = config.per_key_ttl && self.per_key_ttl_supported();
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
                limit_markers: per_key_ttl.then_some(MARKER_TTL),
                ..Default::default()
            })
            .await
            .map_err(|e| from_request(e, format!("creating bucket {:?}", config.name)))?;
        let b = Bucket::from_stream(&config.name, store.stream);
        self.remember(&b);
        Ok(b)
    }

    fn store(&self, b: &Bucket) -> kv::Store {
        kv::Store {
            name: b.name.clone(),
            stream_name: format!("KV_{}", b.name),
            prefix: format!("$KV.{}.", b.name),
            put_prefix: None,
            use_jetstream_prefix: false,
            stream: b.stream.clone(),
        }
    }
}

fn validate(bucket: &str, key: &str) -> Result<(), Error> {
    names::bucket(bucket).map_err(from_core)?;
    names::key(key).map_err(from_core)?;
    Ok(())
}

fn bucket_not_found(bucket: &str, op: &str) -> Error {
    Error::new(
        ErrorKind::BucketNotFound,
        format!("{op} in bucket {bucket:?}"),
    )
}

fn key_exists(bucket: &str, key: &str) -> Error {
    Error::new(
        ErrorKind::KeyExists,
        format!("creating key {key:?} in bucket {bucket:?} (wrong last sequence)"),
    )
}

fn key_exists_on_conflict(e: Error, bucket: &str, key: &str) -> Error {
    if e.kind() == ErrorKind::RevisionMismatch {
        key_exists(bucket, key)
    } else {
        e
    }
}

fn decode_entry(key: &str, m: jetstream::message::StreamMessage) -> Option<Entry> {
    if entry::kind_of(Some(&m.headers)) != EventKind::Put {
        return None;
    }
    Some(Entry {
        key: key.to_owned(),
        ttl: entry::ttl_of(Some(&m.headers)),
        revision: m.sequence,
        created: SystemTime::from(m.time),
        value: m.payload,
    })
}

/// One write to a key, described once so a retry repeats it exactly.
#[derive(Debug, Clone)]
struct Write {
    op: &'static str,
    bucket: String,
    key: String,
    value: Bytes,
    expected: Option<u64>,
    ttl: Option<u64>,
    delete: bool,
}

impl Write {
    fn new(op: &'static str, bucket: &str, key: &str, value: Bytes) -> Self {
        Self {
            op,
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            value,
            expected: None,
            ttl: None,
            delete: false,
        }
    }

    fn delete(bucket: &str, key: &str, expected: Option<u64>) -> Self {
        Self {
            delete: true,
            expected,
            ..Self::new("delete", bucket, key, Bytes::new())
        }
    }

    fn expect(mut self, revision: u64) -> Self {
        self.expected = Some(revision);
        self
    }

    fn ttl(mut self, ttl: Option<u64>) -> Self {
        self.ttl = ttl;
        self
    }
}
