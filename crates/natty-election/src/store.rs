//! The KV side of the election: the bucket (`prepare`), the lease requests the machine asks
//! for (`execute`), the watch on the key and what its events mean (`watched`), and what the
//! lease key holds (`read_holder`, `read_leader`). The driver (`driver.rs`) is the select loop
//! around it and the public `Election` API.
//!
//! Every lease request is conditioned (create-if-absent, update/delete at a revision); a
//! bucket that vanished is never silently re-created by a lease request that may then lead
//! (see [`Request::Create`]); the bucket epoch of a [`Term`] is checked after each write that
//! starts a term.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use natty_kv::{BucketConfig, Kv};
use tracing::{debug, error, info, warn};

use crate::{
    ElectionConfig, Error, ErrorKind, Term,
    error::from_kv,
    fence::{self, Op},
    lease::{Lease, now_ms},
    machine::{Holder, Reply, Request},
};

/// A lease request in flight, yielding its outcome for the machine.
pub(crate) type InFlight = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// A fenced write in flight: its outcome for the machine, and what to tell the caller when
/// that is more than the reply says (why it failed).
pub(crate) type FenceFlight = Pin<Box<dyn Future<Output = (Reply, Option<Error>)> + Send>>;

/// A watch being re-created, and whether its bucket is a re-created one (an epoch newer than
/// we knew).
pub(crate) type Rewatch = Pin<Box<dyn Future<Output = Option<(natty_kv::Watch, bool)>> + Send>>;

/// What the watch on the lease key saw, for the machine.
#[derive(Debug)]
pub(crate) enum Watched {
    /// Written by this holder, at this revision.
    Written(Holder, u64),
    /// Written by someone who is not a candidate (not a lease), at `revision`.
    Taken {
        /// The write's revision.
        revision: u64,
    },
    /// The bucket was deleted and created again.
    Recreated,
    /// Deleted, purged or expired at `revision`.
    Gone {
        /// The marker's revision.
        revision: u64,
    },
}

/// The election's bucket and lease key.
#[derive(Debug, Clone)]
pub(crate) struct LeaseStore {
    /// Re-creates the bucket with the election's configuration if it vanishes (the lease
    /// requests guard against that; see `execute`).
    kv: Kv,
    config: ElectionConfig,
    instance: u64,
    per_key_ttl: bool,
    /// The epoch of the bucket as we know it (see [`Term`]), refreshed when re-created.
    known_epoch: Arc<AtomicU64>,
    /// Set when the bucket was re-created in a way we must not lead on.
    refused: Arc<Mutex<Option<Error>>>,
}

impl LeaseStore {
    /// A watch on the lease key.
    pub(crate) async fn watch(&self) -> Result<natty_kv::Watch, Error> {
        self.kv
            .watch_key(&self.config.bucket, &self.config.key)
            .await
            .map_err(from_kv)
    }

    /// What a watch event on the key means for the machine; `None` for a value that is not a
    /// lease (ignored). A holder's newer bucket epoch is adopted (see `adopt_epoch`).
    pub(crate) fn watched(&self, event: &natty_kv::Event) -> Option<Watched> {
        match event.kind {
            natty_kv::EventKind::Put => {
                let Some(lease) = Lease::decode(&event.value) else {
                    // Someone who is not a candidate wrote the key: whoever held it lost it.
                    return Some(Watched::Taken {
                        revision: event.revision,
                    });
                };
                // A leader elected in a newer bucket epoch vetted that epoch (it waited out
                // any older leader): adopt it, so our next create does not mistake it for a
                // re-creation.
                self.adopt_epoch(lease.epoch);
                let term = lease.term_at(event.revision);
                Some(Watched::Written(
                    Holder::new(lease.node, term),
                    event.revision,
                ))
            }
            // The bucket was deleted and created again: nothing in it tells whether the old
            // leader still works.
            natty_kv::EventKind::BucketRecreated => Some(Watched::Recreated),
            _ => Some(Watched::Gone {
                revision: event.revision,
            }),
        }
    }

    /// Adopts a newer bucket epoch seen in a holder's lease: a leader elected in it vetted it
    /// (it waited out any older leader), so our next create must not mistake it for a
    /// re-creation.
    pub(crate) fn adopt_epoch(&self, epoch: u64) {
        self.known_epoch.fetch_max(epoch, Ordering::Relaxed);
    }

    /// Why the election must stop (a re-created bucket that does not fit), once.
    pub(crate) fn take_refusal(&self) -> Option<Error> {
        self.refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// A new watch on the key after `pause`; `None` if it could not be made (yet).
    pub(crate) fn rewatch(&self, pause: Duration) -> Rewatch {
        let (kv, bucket, key, known_epoch) = (
            self.kv.clone(),
            self.config.bucket.clone(),
            self.config.key.clone(),
            self.known_epoch.clone(),
        );
        Box::pin(async move {
            tokio::time::sleep(pause).await;
            let watch = match kv.watch_key(&bucket, &key).await {
                Ok(w) => w,
                Err(e) => {
                    debug!(error = %e, "re-creating the lease watch");
                    return None;
                }
            };
            // The watch ended because the bucket was deleted: if it is back, it is a new one
            // unless an election in it already taught us its epoch (a leader who waited).
            let recreated = is_new_bucket(&kv, &bucket, &key, &known_epoch).await?;
            Some((watch, recreated))
        })
    }

    /// Whether the bucket is a re-created one nobody has vetted yet (see `is_new_bucket`);
    /// `None` if that cannot be read now.
    pub(crate) fn recheck(&self) -> Pin<Box<dyn Future<Output = Option<bool>> + Send>> {
        let (kv, bucket, key, known_epoch) = (
            self.kv.clone(),
            self.config.bucket.clone(),
            self.config.key.clone(),
            self.known_epoch.clone(),
        );
        Box::pin(async move { is_new_bucket(&kv, &bucket, &key, &known_epoch).await })
    }

    /// Makes sure the bucket exists and suits the election (per-key TTL on server 2.11+, else
    /// the bucket's own TTL is the lease TTL) and reads its epoch; also says how long to wait
    /// before contesting: a bucket younger than a TTL (we created it, or someone re-created it
    /// just now) may have been deleted under a leader that still works, so nobody contests in
    /// it before it is a TTL old.
    pub(crate) async fn prepare(
        kv: &Kv,
        config: &ElectionConfig,
        instance: u64,
    ) -> Result<(Self, Duration), Error> {
        let c = config;
        let per_key_ttl = kv
            .client()
            .server_version()
            .is_some_and(|v| v.at_least(2, 11));
        // Fenced writes are atomic batches in this bucket (server 2.12+).
        let atomic = kv.client().supports(natty_core::Feature::AtomicBatch);
        let wanted = BucketConfig::new(&c.bucket)
            .replicas(c.replicas)
            .description(c.description.clone())
            .per_key_ttl(per_key_ttl)
            .atomic_writes(atomic);
        let wanted = if per_key_ttl {
            wanted
        } else {
            wanted.ttl(c.ttl)
        };
        let mut created = false;
        let status = match kv.status(&c.bucket).await {
            Ok(status) => status,
            Err(e) if e.kind() == natty_kv::ErrorKind::BucketNotFound => {
                match kv.create_bucket(wanted.clone()).await {
                    Ok(()) => created = true,
                    // Another candidate may have created it first; the status below tells.
                    Err(e) => debug!(error = %e, "creating the election bucket"),
                }
                kv.status(&c.bucket).await.map_err(from_kv)?
            }
            Err(e) => return Err(from_kv(e)),
        };
        let per_key_ttl = check_fits(c, per_key_ttl, &status)?;
        let kv = Kv::with_defaults(kv.client().clone(), wanted);
        let (epoch, age) = bucket_age(&kv, &c.bucket)
            .await
            .map_err(from_kv)?
            .unwrap_or((0, None));
        // Its age by the server's clock (`ts - created`); unknown, assume it is new.
        let wait = if created {
            c.ttl
        } else {
            age.map_or(c.ttl, |age| c.ttl.saturating_sub(age))
        };
        debug!(per_key_ttl, epoch, ?age, ?wait, "election bucket ready");
        Ok((
            Self {
                kv,
                config: config.clone(),
                instance,
                per_key_ttl,
                known_epoch: Arc::new(AtomicU64::new(epoch)),
                refused: Arc::default(),
            },
            wait,
        ))
    }

    /// The KV request for a lease request, as a future that yields its outcome. `held` is
    /// the term we lead in and since when (ms since the Unix epoch), for a renew.
    pub(crate) fn execute(&self, request: Request, held: Option<(Term, u64)>) -> InFlight {
        let kv = self.kv.clone();
        let known_epoch = self.known_epoch.clone();
        let refused = self.refused.clone();
        let per_key_ttl = self.per_key_ttl;
        let c = self.config.clone();
        let instance = self.instance;
        let machine = c.machine();
        // A renew must not wait past the next renew; other requests get the client's timeout.
        let limit = match request {
            Request::Renew { .. } => machine.renew_interval,
            _ => kv.client().request_timeout(),
        };
        Box::pin(async move {
            let lease = |term: Option<u64>, epoch: u64, since_ms: u64| Lease {
                node: c.node_name.clone(),
                instance,
                term,
                epoch,
                since_ms,
            };
            let attempt = async {
                match request {
                    Request::Create { make_bucket } => {
                        if make_bucket {
                            // A TTL after the bucket was found missing: nobody can still
                            // work under its old lease, so re-create it and take its epoch.
                            match kv.create_bucket(kv.defaults().with_name(&c.bucket)).await {
                                Err(e) if e.kind() != natty_kv::ErrorKind::BucketExists => {
                                    return Err(e);
                                }
                                Ok(()) => info!("re-created the election bucket"),
                                Err(_) => {}
                            }
                            let Some(epoch) = bucket_epoch(&kv, &c.bucket).await? else {
                                return Ok(Reply::BucketGone);
                            };
                            // Someone may have re-created it with a shorter TTL or without
                            // per-key TTL: never lead with a lease shorter than we believe.
                            let status = kv.status(&c.bucket).await?;
                            let fits = check_fits(&c, per_key_ttl, &status).and_then(|pk| {
                                if pk == per_key_ttl {
                                    Ok(())
                                } else {
                                    Err(Error::new(
                                        ErrorKind::BucketTtlMismatch,
                                        format!(
                                            "electing on key {:?} in bucket {:?}: the bucket was \
                                             re-created without per-key TTL",
                                            c.key, c.bucket
                                        ),
                                    ))
                                }
                            });
                            if let Err(e) = fits {
                                error!(error = %e, "refusing to lead on the re-created bucket");
                                *refused
                                    .lock()
                                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
                                return Ok(Reply::Failed);
                            }
                            known_epoch.store(epoch, Ordering::Relaxed);
                        }
                        let epoch = known_epoch.load(Ordering::Relaxed);
                        let value = lease(None, epoch, now_ms()).encode();
                        // If the bucket vanished, this create re-creates it (natty-kv's
                        // auto-create); the epoch check below then says so, and we do not
                        // lead: a follower must not lead while the old leader may still work.
                        let created = if per_key_ttl {
                            kv.create_with_ttl(&c.bucket, &c.key, value, c.ttl).await
                        } else {
                            kv.create(&c.bucket, &c.key, value).await
                        }?;
                        if !same_epoch(&kv, &c.bucket, epoch).await? {
                            return Ok(Reply::BucketGone);
                        }
                        Ok(Reply::Created {
                            revision: created,
                            epoch,
                        })
                    }
                    // (A fence is sent by `execute_fence`; without writes it is a renew.)
                    Request::Renew { revision } | Request::Fence { revision } => {
                        let (term, since_ms) = held.unwrap_or_default();
                        let value = lease(Some(term.revision), term.epoch, since_ms).encode();
                        let updated = if per_key_ttl {
                            kv.update_with_ttl(&c.bucket, &c.key, value, revision, c.ttl)
                                .await
                        } else {
                            kv.update(&c.bucket, &c.key, value, revision).await
                        }?;
                        Ok(Reply::Updated {
                            revision: updated,
                            epoch: term.epoch,
                        })
                    }
                    Request::Reclaim { revision } => {
                        let epoch = known_epoch.load(Ordering::Relaxed);
                        let value = lease(None, epoch, now_ms()).encode();
                        let updated = if per_key_ttl {
                            kv.update_with_ttl(&c.bucket, &c.key, value, revision, c.ttl)
                                .await
                        } else {
                            kv.update(&c.bucket, &c.key, value, revision).await
                        }?;
                        if !same_epoch(&kv, &c.bucket, epoch).await? {
                            return Ok(Reply::BucketGone);
                        }
                        Ok(Reply::Updated {
                            revision: updated,
                            epoch,
                        })
                    }
                    Request::Resign { revision } => {
                        let mut revision = revision;
                        // If a renew of ours landed unseen, the key is ours at a later
                        // revision: resign that one (twice at most).
                        for _ in 0..2 {
                            match kv.delete_if(&c.bucket, &c.key, revision).await {
                                Err(e) if e.kind() == natty_kv::ErrorKind::RevisionMismatch => {
                                    match read_holder(&kv, &c, instance, Some(revision + 1)).await {
                                        (_, Some(ours)) => revision = ours,
                                        _ => break,
                                    }
                                }
                                other => return other.map(|()| Reply::Resigned),
                            }
                        }
                        Ok(Reply::Resigned)
                    }
                }
            };
            match tokio::time::timeout(limit, attempt).await {
                Ok(Ok(input)) => input,
                // A write answered "no responders" (503) also reads as `BucketNotFound`, yet a
                // replicated stream electing its leader answers that for seconds: only the
                // stream API saying "stream not found" means the bucket is gone.
                Ok(Err(e)) if e.kind() == natty_kv::ErrorKind::BucketNotFound => {
                    match bucket_epoch(&kv, &c.bucket).await {
                        Ok(None) => {
                            warn!(error = %e, ?request, "the election bucket is gone");
                            Reply::BucketGone
                        }
                        _ => {
                            warn!(error = %e, ?request, "election request failed (the bucket exists)");
                            Reply::Failed
                        }
                    }
                }
                Ok(Err(e))
                    if matches!(
                        e.kind(),
                        natty_kv::ErrorKind::RevisionMismatch | natty_kv::ErrorKind::KeyExists
                    ) =>
                {
                    // Never older than the conflict: past the revision it was conditioned on.
                    let floor = conditioned(request).map(|r| r + 1);
                    let (holder, ours) = read_holder(&kv, &c, instance, floor).await;
                    if let Some(h) = &holder {
                        // (see the watch: a holder's newer epoch was vetted by its election)
                        known_epoch.fetch_max(h.term.epoch, Ordering::Relaxed);
                    }
                    Reply::Conflict { holder, ours }
                }
                Ok(Err(e)) => {
                    warn!(error = %e, ?request, "election request failed");
                    Reply::Failed
                }
                Err(_) => {
                    warn!(?request, ?limit, "election request timed out");
                    Reply::Failed
                }
            }
        })
    }
}

impl LeaseStore {
    /// Why a fenced write of `ops` cannot be sent, if it cannot: bad keys, too many writes,
    /// too large, or a server without atomic batches (`Unsupported`, its version named).
    pub(crate) fn check_fence(&self, ops: &[Op]) -> Result<(), Error> {
        let client = self.kv.client();
        let feature = natty_core::Feature::AtomicBatch;
        if !client.supports(feature) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "fenced writes in bucket {:?} need {feature}; the server is {}",
                    self.config.bucket,
                    client.server_version_text()
                ),
            ));
        }
        let max_payload = client.nats().server_info().max_payload;
        fence::check(ops, &self.config.key, max_payload)
    }

    /// The fenced write `ops` as one atomic batch, the lease re-written conditioned on
    /// `revision` (see `fence.rs`). `held` as for [`execute`](Self::execute). The reply is
    /// the machine's (a renew's); the error, if any, is the caller's.
    pub(crate) fn execute_fence(
        &self,
        revision: u64,
        held: Option<(Term, u64)>,
        ops: Vec<Op>,
    ) -> FenceFlight {
        let kv = self.kv.clone();
        let known_epoch = self.known_epoch.clone();
        let c = self.config.clone();
        let instance = self.instance;
        let ttl = self.per_key_ttl.then_some(c.ttl);
        // Like a renew, it must not wait past the next renew.
        let limit = c.machine().renew_interval;
        Box::pin(async move {
            let (term, since_ms) = held.unwrap_or_default();
            let lease = Lease {
                node: c.node_name.clone(),
                instance,
                term: Some(term.revision),
                epoch: term.epoch,
                since_ms,
            }
            .encode();
            let js = kv.client().jetstream().clone();
            let batch = || fence::Batch {
                bucket: &c.bucket,
                lease_key: &c.key,
                lease: lease.clone(),
                revision,
                ttl,
                ops: &ops,
            };
            let attempt = async {
                match batch().commit(&js, limit).await {
                    // A bucket made before natty allowed atomic writes: allow them, once.
                    Err(e) if fence::is_not_enabled(&e) => {
                        kv.allow_atomic_writes(&c.bucket).await?;
                        Ok(batch().commit(&js, limit).await)
                    }
                    other => Ok(other),
                }
            };
            let unknown = || Some(fence::unknown(term, &format!("no answer within {limit:?}")));
            match tokio::time::timeout(limit, attempt).await {
                Ok(Ok(Ok(revision))) => (
                    Reply::Updated {
                        revision,
                        epoch: term.epoch,
                    },
                    None,
                ),
                Ok(Ok(Err(e))) if fence::is_refused(&e) => {
                    let (holder, ours) = read_holder(&kv, &c, instance, Some(revision + 1)).await;
                    if let Some(h) = &holder {
                        known_epoch.fetch_max(h.term.epoch, Ordering::Relaxed);
                    }
                    (Reply::Conflict { holder, ours }, None)
                }
                Ok(Ok(Err(e))) if fence::outcome_unknown(&e) => {
                    warn!(error = %e, "fenced write unanswered");
                    (Reply::Failed, unknown())
                }
                Ok(Ok(Err(e))) => {
                    // Refused for another reason (nothing applied): a deleted bucket means
                    // the lease is gone with it.
                    if fence::is_no_responders(&e)
                        && matches!(bucket_epoch(&kv, &c.bucket).await, Ok(None))
                    {
                        return (Reply::BucketGone, None);
                    }
                    warn!(error = %e, "fenced write refused");
                    let (kind, why) = if fence::is_not_enabled(&e) {
                        (
                            ErrorKind::Unsupported,
                            "the bucket does not allow atomic batches",
                        )
                    } else if fence::is_no_responders(&e) {
                        (
                            ErrorKind::Other,
                            "no responder for the bucket (its stream electing a leader?); retry",
                        )
                    } else {
                        (ErrorKind::Other, "refused by the server")
                    };
                    let error = Error::with_source(
                        kind,
                        format!("fenced write of term {term} was not applied: {why}"),
                        e,
                    );
                    (Reply::Failed, Some(error))
                }
                Ok(Err(e)) => (Reply::Failed, Some(from_kv(e))),
                Err(_) => (Reply::Failed, unknown()),
            }
        })
    }
}

/// Whether the bucket's configuration gives the lease at least the TTL the election believes
/// in; returns whether per-key TTL is in use. `BucketTtlMismatch` naming both values if not.
fn check_fits(
    c: &ElectionConfig,
    per_key_ttl_supported: bool,
    status: &natty_kv::BucketStatus,
) -> Result<bool, Error> {
    let per_key_ttl = per_key_ttl_supported && status.per_key_ttl;
    let fits = if per_key_ttl {
        status.ttl.is_none_or(|t| t >= c.ttl)
    } else {
        status.ttl == Some(c.ttl)
    };
    if fits {
        return Ok(per_key_ttl);
    }
    Err(Error::new(
        ErrorKind::BucketTtlMismatch,
        format!(
            "electing on key {:?} in bucket {:?}: bucket exists with ttl {}, election asked for {:?}{}",
            c.key,
            c.bucket,
            status
                .ttl
                .map_or_else(|| "none".to_owned(), |t| format!("{t:?}")),
            c.ttl,
            if per_key_ttl {
                ""
            } else {
                " (and the bucket has no per-key TTL)"
            }
        ),
    ))
}

/// The bucket's epoch: its stream's creation time (ns since the Unix epoch, the server's
/// clock); `None` when the bucket does not exist.
async fn bucket_epoch(kv: &Kv, bucket: &str) -> Result<Option<u64>, natty_kv::Error> {
    match kv
        .client()
        .jetstream()
        .get_stream(format!("KV_{bucket}"))
        .await
    {
        Ok(stream) => Ok(Some(
            u64::try_from(stream.cached_info().created.unix_timestamp_nanos()).unwrap_or(0),
        )),
        Err(e) if natty_core::error::jetstream_code(&e) == Some(STREAM_NOT_FOUND) => Ok(None),
        Err(e) => Err(natty_kv::Error::with_source(
            natty_kv::ErrorKind::Other,
            format!("reading the stream of bucket {bucket:?}"),
            e,
        )),
    }
}

/// Whether the bucket is newer than `known_epoch` and nobody vetted it: a lease of its epoch
/// in the key was written by a leader who waited a TTL in it (its epoch is then adopted).
/// `None` if that cannot be read now (or the bucket is missing).
async fn is_new_bucket(kv: &Kv, bucket: &str, key: &str, known_epoch: &AtomicU64) -> Option<bool> {
    let epoch = bucket_epoch(kv, bucket).await.ok()??;
    let vetted = match kv.get(bucket, key).await {
        Ok(Some(entry)) => Lease::decode(&entry.value).is_some_and(|l| l.epoch >= epoch),
        Ok(None) => false,
        Err(_) => return None,
    };
    if vetted {
        known_epoch.fetch_max(epoch, Ordering::Relaxed);
    }
    Some(epoch > known_epoch.load(Ordering::Relaxed))
}

/// The bucket's epoch (as [`bucket_epoch`]) and its age by the server's clock (the stream
/// info's `ts - created`; `None` if the server does not say); `None` when the bucket does not
/// exist.
async fn bucket_age(
    kv: &Kv,
    bucket: &str,
) -> Result<Option<(u64, Option<Duration>)>, natty_kv::Error> {
    let failed = |e: &dyn std::fmt::Display| {
        natty_kv::Error::new(
            natty_kv::ErrorKind::Other,
            format!("reading the stream of bucket {bucket:?}: {e}"),
        )
    };
    let info: serde_json::Value = kv
        .client()
        .jetstream()
        .request(format!("STREAM.INFO.KV_{bucket}"), &())
        .await
        .map_err(|e| failed(&e))?;
    if let Some(error) = info.get("error") {
        if error.get("err_code").and_then(serde_json::Value::as_u64) == Some(STREAM_NOT_FOUND) {
            return Ok(None);
        }
        return Err(failed(error));
    }
    let time = |field: &str| {
        info.get(field)
            .and_then(serde_json::Value::as_str)
            .and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
    };
    let Some(created) = time("created") else {
        return Err(failed(&"no creation time in the stream info"));
    };
    let epoch = u64::try_from(created.unix_timestamp_nanos()).unwrap_or(0);
    let age = time("ts").map(|ts| Duration::try_from(ts - created).unwrap_or(Duration::ZERO));
    Ok(Some((epoch, age)))
}

/// Whether the bucket is still the one created at `epoch`. A write to a bucket deleted
/// behind our back may have re-created it (natty-kv's auto-create), or someone re-created
/// it: then the new revision is not a term of `epoch`, and the election treats the bucket
/// as gone (nobody leads for a TTL).
async fn same_epoch(kv: &Kv, bucket: &str, epoch: u64) -> Result<bool, natty_kv::Error> {
    let now = bucket_epoch(kv, bucket).await?;
    if now != Some(epoch) {
        warn!(
            bucket,
            epoch,
            now = ?now,
            "the election bucket was deleted or re-created behind our back"
        );
    }
    Ok(now == Some(epoch))
}

/// JetStream's "stream not found".
const STREAM_NOT_FOUND: u64 = 10059;

/// The current leader as stored in the lease key, if any.
pub(crate) async fn read_leader(
    kv: &Kv,
    c: &ElectionConfig,
) -> Result<Option<crate::LeaderInfo>, Error> {
    let entry = kv.get(&c.bucket, &c.key).await.map_err(from_kv)?;
    Ok(entry.and_then(|e| {
        let lease = Lease::decode(&e.value)?;
        Some(crate::LeaderInfo {
            node: lease.node.clone(),
            term: lease.term_at(e.revision),
            since: lease.since(),
        })
    }))
}

/// The revision a lease request is conditioned on, if any.
fn conditioned(request: Request) -> Option<u64> {
    match request {
        Request::Create { .. } => None,
        Request::Renew { revision }
        | Request::Reclaim { revision }
        | Request::Fence { revision }
        | Request::Resign { revision } => Some(revision),
    }
}

/// Who holds the key now, and its revision if it is this instance's own write. With `floor`
/// (after a conflict: past the revision the request was conditioned on), the read is never
/// older than that (natty-kv's `get_at_least`): a lagging replica cannot show a lease the
/// server has just refused to count as current.
async fn read_holder(
    kv: &Kv,
    c: &ElectionConfig,
    instance: u64,
    floor: Option<u64>,
) -> (Option<Holder>, Option<u64>) {
    let read = match floor {
        Some(floor) => kv.get_at_least(&c.bucket, &c.key, floor).await,
        None => kv.get(&c.bucket, &c.key).await,
    };
    match read {
        Ok(Some(entry)) => match Lease::decode(&entry.value) {
            Some(lease) => {
                let ours = (lease.instance == instance).then_some(entry.revision);
                let term = lease.term_at(entry.revision);
                let holder = Holder::new(lease.node, term);
                (Some(holder), ours)
            }
            None => (None, None),
        },
        _ => (None, None),
    }
}
