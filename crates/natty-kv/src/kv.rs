//! [`Kv`]: the public key/value operations. Buckets and their cache live in
//! [`bucket`](crate::bucket), the write path in [`write`](crate::write), reads in
//! [`read`](crate::read).

use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use natty_core::{Client, names};
use tracing::{Instrument, debug, info_span};

use crate::{
    BucketConfig, BucketStatus, Error, ErrorKind,
    bucket::{Buckets, not_found},
    config::validate_key_ttl,
    entry::{self, Entry, Event, EventKind, KeyTtl},
    error::{from_core, from_request, server_code},
    expiry::Base,
    read::{ReadFrom, key_not_found},
    retry::Deadline,
    scan,
    watch::{Start, Watch},
    write::{IfMissing, Op, Write},
    written::{Floor, Written},
};

/// How long an operation keeps retrying answers that say nothing (timeouts, 503 during a
/// stream-leader election) by default.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(10);

/// Key/value operations on JetStream KV buckets. Cheap to clone (clones share the bucket cache).
///
/// Buckets are created on demand by `put`/`create` with the `Kv`'s default configuration;
/// reads never create one. Handles are cached, and a bucket deleted behind our back is
/// noticed: the next write re-creates it, the next read reports it missing.
///
/// On a replicated bucket, answers that say nothing — 503 / no responders while the bucket's
/// stream elects a leader, timeouts while a node is down — are retried for
/// [`retry_for`](Self::retry_for) (10 s by default), then reported as `TimedOut`; a bucket is
/// reported missing only when the stream info API says so. [`get`](Self::get) may be answered
/// by any replica (fast, but a follower can lag a write by a few milliseconds); every read that
/// a write is based on (`delete`, `refresh`, `create` over a deleted key) asks the stream
/// leader.
///
/// ```no_run
/// # async fn example(client: natty_core::Client) -> Result<(), natty_kv::Error> {
/// use natty_kv::{BucketConfig, Kv};
/// let kv = Kv::with_defaults(client, BucketConfig::default().history(5));
/// let rev = kv.put("config", "feature.x", "on".into()).await?;
/// let entry = kv.get("config", "feature.x").await?.expect("just written");
/// assert_eq!(entry.revision, rev);
/// // Only delete it if nobody changed it since we read it:
/// kv.delete_if("config", "feature.x", entry.revision).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Kv {
    pub(crate) client: Client,
    pub(crate) defaults: BucketConfig,
    pub(crate) buckets: Buckets,
    pub(crate) retry_for: Duration,
    /// The revisions this handle (and its clones) wrote, per key.
    pub(crate) written: Written,
}

impl Kv {
    /// A `Kv` whose auto-created buckets use [`BucketConfig::default`].
    pub fn new(client: Client) -> Self {
        Self::with_defaults(client, BucketConfig::default())
    }

    /// A `Kv` whose auto-created buckets use `defaults` (its name, if any, is replaced by the
    /// bucket's).
    pub fn with_defaults(client: Client, defaults: BucketConfig) -> Self {
        Self {
            buckets: Buckets::new(client.clone()),
            client,
            defaults,
            retry_for: DEFAULT_RETRY_FOR,
            written: Written::default(),
        }
    }

    /// How long each operation retries answers that say nothing (timeouts, no responders
    /// during a stream-leader election) before it fails with `TimedOut`. Default 10 s; a
    /// leader election after a node loss takes a few seconds.
    #[must_use]
    pub fn retry_for(mut self, patience: Duration) -> Self {
        self.retry_for = patience;
        self
    }

    /// The connection this `Kv` uses.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The configuration used for auto-created buckets.
    pub fn defaults(&self) -> &BucketConfig {
        &self.defaults
    }

    /// Declares `config` the configuration of bucket `config.name`, owned by the caller: when
    /// a `put` or `create` of this `Kv` (or of a clone) creates that bucket — because it does
    /// not exist yet, or was deleted behind our back — it is created with `config`, not with
    /// the [`defaults`](Self::defaults). For a component that owns a bucket's settings: a
    /// membership bucket re-created without its TTL would keep a dead member forever.
    /// Registering again replaces the configuration. Checks `config` (`InvalidConfig` /
    /// `InvalidName`); nothing is sent.
    ///
    /// ```no_run
    /// # async fn example(client: natty_core::Client) -> Result<(), natty_kv::Error> {
    /// use std::time::Duration;
    /// use natty_kv::{BucketConfig, Kv};
    /// let kv = Kv::new(client);
    /// kv.own_bucket(BucketConfig::new("members").ttl(Duration::from_secs(10)))?;
    /// // Deleted by someone meanwhile? Re-created with the 10 s TTL, not the defaults.
    /// kv.put("members", "node-1", "alive".into()).await?;
    /// # Ok(()) }
    /// ```
    pub fn own_bucket(&self, config: BucketConfig) -> Result<(), Error> {
        config.validate()?;
        debug!(bucket = %config.name, "bucket configuration owned by the caller");
        self.buckets.own(config);
        Ok(())
    }

    fn deadline(&self) -> Deadline {
        Deadline::after(self.retry_for)
    }

    // Reads.

    /// The key's current value; `None` when the key or the bucket does not exist (a missing
    /// bucket is not created), or the key was deleted, purged or expired.
    ///
    /// Answered by any replica of a replicated bucket, but never older than this handle's own
    /// last write to the key: a replica that has not applied that write yet is not believed,
    /// the stream leader answers instead. A write by another process acknowledged a few
    /// milliseconds ago can be missed; pass its revision to
    /// [`get_at_least`](Self::get_at_least) when you know it. The handle remembers its writes
    /// to a few thousand keys in a few dozen buckets; beyond that it forgets the oldest, and
    /// their reads ask the stream leader more often, never answer older.
    pub async fn get(&self, bucket: &str, key: &str) -> Result<Option<Entry>, Error> {
        validate(bucket, key)?;
        let span = info_span!("natty.kv.get", bucket, key);
        crate::obs::timed(
            "get",
            bucket,
            self.get_inner(bucket, key, None).instrument(span),
        )
        .await
    }

    /// The key's current value, never older than revision `min_revision` (read-after-write:
    /// pass the revision a write returned, yours or one another process told you about).
    /// `None` when the key or the bucket does not exist, or the key was deleted, purged or
    /// expired.
    ///
    /// Any replica that has applied `min_revision` answers (as fast as [`get`](Self::get));
    /// one that lags behind it is not believed, and the stream leader answers instead, so
    /// the answer is never older than `min_revision`. When the stream holds nothing of the
    /// key at `min_revision` or later (the revision belongs to another key, or the key was
    /// not written since), the stream leader's answer is the key's current value.
    ///
    /// Works with every server version: the floor is checked by natty against the revision
    /// of the message a replica returns. (nats-server's own `min_last_seq`, from the ADR
    /// "JetStream Read-after-Write", is sent too, but the servers released so far ignore it.)
    pub async fn get_at_least(
        &self,
        bucket: &str,
        key: &str,
        min_revision: u64,
    ) -> Result<Option<Entry>, Error> {
        validate(bucket, key)?;
        let span = info_span!("natty.kv.get_at_least", bucket, key, min_revision);
        crate::obs::timed(
            "get",
            bucket,
            self.get_inner(bucket, key, Some(min_revision))
                .instrument(span),
        )
        .await
    }

    async fn get_inner(
        &self,
        bucket: &str,
        key: &str,
        min_revision: Option<u64>,
    ) -> Result<Option<Entry>, Error> {
        let Some(b) = self.buckets.find(bucket, &self.deadline()).await? else {
            return Ok(None);
        };
        let from = self.read_from(&b, key, min_revision);
        match self.last_message(&b, key, from).await {
            Err(e) if e.kind() == ErrorKind::BucketNotFound => Ok(None),
            other => other.map(|m| m.and_then(|m| entry::decode(key, m))),
        }
    }

    /// Who may answer a read of `key` in `b` that must not be older than `min_revision` nor
    /// than this handle's own last write to the key.
    pub(crate) fn read_from(
        &self,
        b: &crate::bucket::Bucket,
        key: &str,
        min_revision: Option<u64>,
    ) -> ReadFrom {
        let min_revision = min_revision.filter(|&r| r > 0);
        match self.written.floor(b, key) {
            Floor::Unknown => ReadFrom::Leader,
            Floor::At(floor) => ReadFrom::AtLeast(floor.max(min_revision.unwrap_or(0))),
            Floor::None => ReadFrom::at_least(min_revision),
        }
    }

    /// The value of one revision of a key; `None` when that revision is not stored (never
    /// written, or dropped from the history) or is a delete/purge/expiry marker, or belongs to
    /// another key. Answered by the stream leader.
    pub async fn get_revision(
        &self,
        bucket: &str,
        key: &str,
        revision: u64,
    ) -> Result<Option<Entry>, Error> {
        validate(bucket, key)?;
        let span = info_span!("natty.kv.get_revision", bucket, key, revision);
        crate::obs::timed(
            "get_revision",
            bucket,
            async {
                let Some(b) = self.buckets.find(bucket, &self.deadline()).await? else {
                    return Ok(None);
                };
                match self.message_at(&b, revision).await {
                    Ok(Some(m)) if m.subject.as_str() == b.subject(key) => {
                        Ok(entry::decode(key, m))
                    }
                    Ok(_) => Ok(None),
                    Err(e) if e.kind() == ErrorKind::BucketNotFound => Ok(None),
                    Err(e) => Err(e),
                }
            }
            .instrument(span),
        )
        .await
    }

    /// Every stored revision of a key, oldest first: values and delete/purge/expiry markers
    /// (as many as the bucket's `history` keeps). Empty when the key or the bucket does not
    /// exist.
    pub async fn history(&self, bucket: &str, key: &str) -> Result<Vec<Event>, Error> {
        validate(bucket, key)?;
        let span = info_span!("natty.kv.history", bucket, key);
        crate::obs::timed(
            "history",
            bucket,
            async {
                let Some(b) = self.buckets.find(bucket, &self.deadline()).await? else {
                    return Ok(Vec::new());
                };
                let last = match self.last_message(&b, key, ReadFrom::Leader).await {
                    Err(e) if e.kind() == ErrorKind::BucketNotFound => return Ok(Vec::new()),
                    other => other?,
                };
                if last.is_none() {
                    return Ok(Vec::new());
                }
                scan::history(self, &b, key, self.deadline()).await
            }
            .instrument(span),
        )
        .await
    }

    /// Every live key in the bucket, sorted and de-duplicated; empty for an empty bucket;
    /// `BucketNotFound` when the bucket does not exist; `TimedOut` when the listing does not
    /// finish within [`retry_for`](Self::retry_for). For large buckets see
    /// [`keys_stream`](Self::keys_stream).
    pub async fn keys(&self, bucket: &str) -> Result<Vec<String>, Error> {
        names::bucket(bucket).map_err(from_core)?;
        let span = info_span!("natty.kv.keys", bucket);
        crate::obs::timed("keys", bucket, async {
            let mut keys = std::collections::BTreeSet::new();
            let listing = self.keys_stream(bucket).await?;
            futures::pin_mut!(listing);
            let deadline = self.deadline().at();
            loop {
                let next = tokio::time::timeout_at(deadline, futures::StreamExt::next(&mut listing))
                    .await
                    .map_err(|_| {
                        Error::new(
                            ErrorKind::TimedOut,
                            format!(
                                "listing keys of bucket {bucket:?}: not finished after {:?} ({} keys so far)",
                                self.retry_for,
                                keys.len()
                            ),
                        )
                    })?;
                match next {
                    Some(key) => {
                        keys.insert(key?);
                    }
                    None => return Ok(keys.into_iter().collect()),
                }
            }
        }
        .instrument(span))
        .await
    }

    /// Every live key in the bucket, as a stream (for buckets too large to list at once).
    /// Each key is yielded once; the order is the order of the keys' last writes. The stream
    /// ends when the keys that existed when it started have been listed; it has no deadline of
    /// its own (wrap it in a timeout). It remembers the keys it yielded, to skip duplicates; a
    /// listing cut by a reconnect starts over from the last value of each key (never from
    /// the overwritten values async-nats' re-created consumer would deliver).
    pub async fn keys_stream(
        &self,
        bucket: &str,
    ) -> Result<impl Stream<Item = Result<String, Error>> + use<>, Error> {
        names::bucket(bucket).map_err(from_core)?;
        let b = self
            .buckets
            .lookup(bucket, &self.deadline())
            .await?
            .ok_or_else(|| not_found(bucket, "listing keys"))?;
        scan::keys(self, b).await
    }

    /// The bucket's configuration and state; `BucketNotFound` when it does not exist.
    pub async fn status(&self, bucket: &str) -> Result<BucketStatus, Error> {
        names::bucket(bucket).map_err(from_core)?;
        let span = info_span!("natty.kv.status", bucket);
        async {
            let b = self
                .buckets
                .lookup(bucket, &self.deadline())
                .await?
                .ok_or_else(|| not_found(bucket, "reading the status"))?;
            Ok(BucketStatus::from_info(bucket, b.stream.cached_info()))
        }
        .instrument(span)
        .await
    }

    /// Watches every key of the bucket: first the current value of each key, then every change.
    /// The watch resumes by itself after a reconnect or server restart; see [`Watch`] for what
    /// it guarantees.
    pub async fn watch_bucket(&self, bucket: &str) -> Result<Watch, Error> {
        names::bucket(bucket).map_err(from_core)?;
        self.watch(bucket, format!("$KV.{bucket}.>"), Start::Current)
            .await
    }

    /// Watches one key (or a pattern like `users.*`): its current value, then every change.
    pub async fn watch_key(&self, bucket: &str, key: &str) -> Result<Watch, Error> {
        names::bucket(bucket).map_err(from_core)?;
        names::key_filter(key).map_err(from_core)?;
        self.watch(bucket, format!("$KV.{bucket}.{key}"), Start::Current)
            .await
    }

    /// Watches every key of the bucket from `revision` on (inclusive): every change stored at
    /// that revision or later, in order, then every new change. To resume after the last
    /// revision you processed, pass it plus one. Changes older than the bucket's history (or a
    /// marker removed after its marker TTL) are not replayed.
    pub async fn watch_bucket_from(&self, bucket: &str, revision: u64) -> Result<Watch, Error> {
        names::bucket(bucket).map_err(from_core)?;
        self.watch(bucket, format!("$KV.{bucket}.>"), Start::From(revision))
            .await
    }

    /// Like [`watch_bucket_from`](Self::watch_bucket_from), for one key or pattern.
    pub async fn watch_key_from(
        &self,
        bucket: &str,
        key: &str,
        revision: u64,
    ) -> Result<Watch, Error> {
        names::bucket(bucket).map_err(from_core)?;
        names::key_filter(key).map_err(from_core)?;
        self.watch(bucket, format!("$KV.{bucket}.{key}"), Start::From(revision))
            .await
    }

    async fn watch(&self, bucket: &str, filter: String, start: Start) -> Result<Watch, Error> {
        let span = info_span!("natty.kv.watch_start", bucket, filter = %filter);
        async {
            let b = self
                .buckets
                .require(bucket, "watching", &self.deadline())
                .await?;
            Watch::start(
                self.client.clone(),
                self.buckets.clone(),
                b,
                filter,
                start,
                self.deadline(),
                self.retry_for,
            )
            .await
        }
        .instrument(span)
        .await
    }

    // Writes.

    /// Writes `value` whatever the key holds; creates the bucket if missing. Returns the new
    /// revision.
    pub async fn put(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, Error> {
        validate(bucket, key)?;
        crate::obs::timed(
            "put",
            bucket,
            self.write(
                &Write::new(Op::Put, bucket, key, value),
                IfMissing::CreateBucket,
            ),
        )
        .await
    }

    /// Writes `value` only if the key does not exist (or was deleted/expired); creates the
    /// bucket if missing. `KeyExists` otherwise.
    pub async fn create(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, Error> {
        validate(bucket, key)?;
        crate::obs::timed(
            "create",
            bucket,
            self.create_inner(bucket, key, value, None),
        )
        .await
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
        crate::obs::timed(
            "create",
            bucket,
            self.create_inner(bucket, key, value, Some(KeyTtl::Secs(secs))),
        )
        .await
    }

    /// `create` is a write expecting "no message" (revision 0), or, over a delete marker, a
    /// write expecting the marker's revision. Markers come and go (written by deletes, removed
    /// after the marker TTL), so a lost compare-and-set is re-examined at the stream leader
    /// before it is reported: `KeyExists` only when a value is really there.
    async fn create_inner(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        ttl: Option<KeyTtl>,
    ) -> Result<u64, Error> {
        let write = Write::new(Op::Create, bucket, key, value).ttl(ttl);
        let deadline = self.deadline().at();
        let mut expected = 0;
        loop {
            match self
                .write(&write.clone().expect(expected), IfMissing::CreateBucket)
                .await
            {
                Err(e) if e.kind() == ErrorKind::RevisionMismatch => {}
                other => return other,
            }
            let b = self
                .buckets
                .require(bucket, "creating a key", &self.deadline())
                .await?;
            match self.last_message(&b, key, ReadFrom::Leader).await? {
                Some(m) if entry::kind_of(Some(&m.headers)) == EventKind::Put => {
                    return Err(key_exists(bucket, key));
                }
                Some(m) => {
                    debug!(revision = m.sequence, "re-creating over a delete marker");
                    expected = m.sequence;
                }
                None => expected = 0,
            }
            if tokio::time::Instant::now() >= deadline {
                // The key's last message changed under us every round: markers keep coming
                // and going. No value was seen, so this is not a `KeyExists`.
                return Err(Error::new(
                    ErrorKind::TimedOut,
                    format!(
                        "creating key {key:?} in bucket {bucket:?}: its delete markers kept \
                         changing for {:?}",
                        self.retry_for
                    ),
                ));
            }
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
        crate::obs::timed(
            "update",
            bucket,
            self.write(
                &Write::new(Op::Update, bucket, key, value).expect(expected_revision),
                IfMissing::Fail,
            ),
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
        crate::obs::timed(
            "update",
            bucket,
            self.write(
                &Write::new(Op::Update, bucket, key, value)
                    .expect(expected_revision)
                    .ttl(Some(KeyTtl::Secs(secs))),
                IfMissing::Fail,
            ),
        )
        .await
    }

    /// Re-writes the key's current value, conditioned on the revision just read, keeping its
    /// per-key TTL (`never` included): the TTL (per-key or bucket) starts again. Never
    /// overwrites a newer write (`RevisionMismatch`) and never resurrects a deleted or expired
    /// key (`KeyNotFound`, also when the key expired just as the refresh reached the server
    /// and the server's expiry marker removed it right after it was stored).
    ///
    /// The value is read from any replica that is not behind this handle's own last write to
    /// the key (fast); when that read finds no value, or the refresh loses its
    /// compare-and-set, the stream leader is asked again and decides, as if it had been asked
    /// first.
    pub async fn refresh(&self, bucket: &str, key: &str) -> Result<u64, Error> {
        validate(bucket, key)?;
        let span = info_span!("natty.kv.refresh", bucket, key);
        crate::obs::timed(
            "refresh",
            bucket,
            async {
                let b = self
                    .buckets
                    .require(bucket, "refreshing a key", &self.deadline())
                    .await?;
                let from = self.read_from(&b, key, None);
                if from != ReadFrom::Leader {
                    let read = self
                        .last_message(&b, key, from)
                        .await?
                        .and_then(|m| entry::decode(key, m));
                    if let Some(entry) = read {
                        match self.refresh_entry_untimed(bucket, &entry).await {
                            Err(e) if e.kind() == ErrorKind::RevisionMismatch => {
                                debug!(
                                    revision = entry.revision,
                                    "refresh lost its compare-and-set after a replica's read; \
                                     asking the stream leader"
                                );
                            }
                            other => return other,
                        }
                    }
                }
                let entry = self
                    .last_message(&b, key, ReadFrom::Leader)
                    .await?
                    .and_then(|m| entry::decode(key, m))
                    .ok_or_else(|| key_not_found(bucket, key, "refreshing"))?;
                self.refresh_entry_untimed(bucket, &entry).await
            }
            .instrument(span),
        )
        .await
    }

    /// Re-writes `entry` (as read earlier) conditioned on its revision, keeping its per-key
    /// TTL. `RevisionMismatch` if the key was written, deleted or expired since;
    /// `KeyNotFound` if it expired just as the refresh reached the server (the server's expiry
    /// marker removed the refresh right after it was stored).
    pub async fn refresh_entry(&self, bucket: &str, entry: &Entry) -> Result<u64, Error> {
        validate(bucket, &entry.key)?;
        crate::obs::timed("refresh", bucket, self.refresh_entry_untimed(bucket, entry)).await
    }

    async fn refresh_entry_untimed(&self, bucket: &str, entry: &Entry) -> Result<u64, Error> {
        let b = self
            .buckets
            .require(bucket, "refreshing a key", &self.deadline())
            .await?;
        self.write(
            &Write::new(Op::Refresh, bucket, &entry.key, entry.value.clone())
                .expect(entry.revision)
                .ttl(entry.key_ttl())
                .base(Base::of_entry(entry, &b)),
            IfMissing::Fail,
        )
        .await
    }

    /// Deletes the key. A no-op when the bucket or the key does not exist (nothing is
    /// created, no marker written). A key that any replica shows live is deleted at once;
    /// that it is *not* live is believed only from the stream leader, so a key written just
    /// before (by anyone) is deleted even on a replicated bucket.
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<(), Error> {
        validate(bucket, key)?;
        let span = info_span!("natty.kv.delete", bucket, key);
        crate::obs::timed(
            "delete",
            bucket,
            async { self.remove(Write::delete(bucket, key)).await }.instrument(span),
        )
        .await
    }

    /// Purges the key: writes a purge marker and removes the key's earlier revisions (its
    /// history). A no-op when the bucket or the key does not exist.
    pub async fn purge(&self, bucket: &str, key: &str) -> Result<(), Error> {
        validate(bucket, key)?;
        let span = info_span!("natty.kv.purge", bucket, key);
        crate::obs::timed(
            "purge",
            bucket,
            async { self.remove(Write::purge(bucket, key)).await }.instrument(span),
        )
        .await
    }

    /// Writes a delete or purge marker if the key has any message (a purge also clears the
    /// history behind a delete marker) and a value is live or history remains.
    async fn remove(&self, marker: Write) -> Result<(), Error> {
        let Some(b) = self.buckets.find(&marker.bucket, &self.deadline()).await? else {
            return Ok(());
        };
        let needed = |last: &Option<async_nats::jetstream::message::StreamMessage>| match (
            last, marker.op,
        ) {
            (None, _) => false,
            (Some(m), Op::Purge) => entry::kind_of(Some(&m.headers)) != EventKind::Purge,
            (Some(m), _) => entry::kind_of(Some(&m.headers)) == EventKind::Put,
        };
        // Any replica not behind this handle's last write may say a marker is needed (at
        // worst the marker lands on a key deleted a moment ago: a no-op); only the stream
        // leader may say it is not (a replica can lag a value written by someone else).
        let mut from = self.read_from(&b, &marker.key, None);
        loop {
            let last = match self.last_message(&b, &marker.key, from).await {
                Err(e) if e.kind() == ErrorKind::BucketNotFound => return Ok(()),
                other => other?,
            };
            if needed(&last) {
                break;
            }
            if from == ReadFrom::Leader {
                return Ok(());
            }
            from = ReadFrom::Leader;
        }
        match self.write(&marker, IfMissing::Fail).await {
            Err(e) if e.kind() == ErrorKind::BucketNotFound => Ok(()),
            other => other.map(drop),
        }
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
        crate::obs::timed(
            "delete_if",
            bucket,
            self.write(
                &Write::delete(bucket, key).expect(expected_revision),
                IfMissing::Fail,
            ),
        )
        .await
        .map(drop)
    }

    // Buckets.

    /// Creates a bucket; `BucketExists` if it exists already (whatever its configuration).
    pub async fn create_bucket(&self, config: BucketConfig) -> Result<(), Error> {
        config.validate()?;
        let span = info_span!("natty.kv.create_bucket", bucket = %config.name);
        async {
            if self
                .buckets
                .lookup(&config.name, &self.deadline())
                .await?
                .is_some()
            {
                return Err(Error::new(
                    ErrorKind::BucketExists,
                    format!("creating bucket {:?}", config.name),
                ));
            }
            self.buckets.create(&config).await.map(drop)
        }
        .instrument(span)
        .await
    }

    /// Turns on atomic batch writes in an existing bucket (see
    /// [`BucketConfig::atomic_writes`]); nothing to do if they are on. `Unsupported` on a
    /// server older than 2.12, `BucketNotFound` if the bucket does not exist.
    pub async fn allow_atomic_writes(&self, bucket: &str) -> Result<(), Error> {
        names::bucket(bucket).map_err(from_core)?;
        let span = info_span!("natty.kv.allow_atomic_writes", bucket = %bucket);
        async {
            let feature = natty_core::Feature::AtomicBatch;
            if !self.client().supports(feature) {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "atomic writes in bucket {bucket:?} need {feature}; the server is {}",
                        self.client().server_version_text()
                    ),
                ));
            }
            let Some(found) = self.buckets.lookup(bucket, &self.deadline()).await? else {
                return Err(not_found(bucket, "allowing atomic writes"));
            };
            let stream = self
                .buckets
                .allow_atomic(bucket, (*found.stream).clone())
                .await?;
            self.buckets.remember_stream(bucket, stream);
            Ok(())
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
            let deadline = self.deadline();
            if self
                .buckets
                .lookup(&config.name, &deadline)
                .await?
                .is_none()
            {
                self.buckets.find_or_create(&config, &deadline).await?;
            }
            let status = self.status(&config.name).await?;
            let supported = self.client.supports(natty_core::Feature::PerKeyTtl);
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
            self.buckets.evict(bucket);
            match self.client.jetstream().delete_key_value(bucket).await {
                Ok(_) => Ok(()),
                Err(e) if server_code(&e) == Some(natty_core::error::codes::STREAM_NOT_FOUND) => {
                    Ok(())
                }
                Err(e) => Err(from_request(e, format!("deleting bucket {bucket:?}"))),
            }
        }
        .instrument(span)
        .await
    }
}

fn validate(bucket: &str, key: &str) -> Result<(), Error> {
    names::bucket(bucket).map_err(from_core)?;
    names::key(key).map_err(from_core)?;
    Ok(())
}

fn key_exists(bucket: &str, key: &str) -> Error {
    Error::new(
        ErrorKind::KeyExists,
        format!("creating key {key:?} in bucket {bucket:?} (wrong last sequence: it has a value)"),
    )
}
