//! A partition's durables: one per owner term, `<name>_p<i>_<epoch>_<revision>`.
//!
//! Why not one durable that every owner reads: the server cannot tell an old owner's requests
//! from the new owner's on a shared durable. A member frozen past its lease keeps a pull
//! request open, and the server hands that request messages the new owner needs (they come
//! back `ack_wait` later, behind later messages of their key); a reset the old owner gave up
//! on can still be applied in the middle of the new owner's run (a replay from the ack floor).
//! Both were seen in the chaos scenario.
//!
//! So a new owner creates its own durable, starting right after the ack floor of the previous
//! owner's, and then deletes the earlier ones: the server itself refuses whatever an old owner
//! still has in flight — a deleted consumer delivers nothing, and resets or acks addressed to
//! it change nothing of the new owner's. What the previous owner had not acknowledged (in
//! flight at a hand-over, stranded in a pull, a killed member's) comes first and in stream
//! order; what it acknowledged after its first unfinished message runs again (at-least-once).
//! Delivery counts restart with each durable.
//!
//! **Finding the previous owner's durable by name, not in a listing.** The consumer listing
//! pages 1,024 names at a time by offset: while other take-overs (or anyone) delete consumers,
//! a page shifts and a name is skipped — the whole partition replayed, or an old durable left
//! forever. So each partition's lease carries a *pointer*: the fenced key `durable` of the
//! partition's election (`p<i>.fenced.durable` in `<name>_leases`), written only by the lease
//! holder and refused by the server once it is deposed (natty-election's fenced writes). It
//! names the partition's current durable and the earlier ones still to delete. A take-over:
//! 1. reads the pointer from the leases stream's leader (not a replica that may lag);
//! 2. writes it again listing its own durable-to-be among those to delete — stopped after
//!    this, the next owner deletes it and starts from the same place;
//! 3. creates its durable after the ack floor of the one the pointer names;
//! 4. deletes the ones listed, writes the pointer naming its own durable (the previous one
//!    listed for deletion), then deletes the previous one (a delete that fails stays listed
//!    for the next owner).
//!
//! No pointer yet (a new group, a leases bucket deleted since, durables made by a natty before
//! pointers), the durable it names deleted behind the group's back, or a server without fenced
//! writes (before 2.12): the initial durable is looked up by name, and only then the stream's
//! consumers are listed (twice, the union taken).
//!
//! `<name>_p<i>` (no term) is the partition's initial durable, made by
//! [`ConsumerGroup::ensure`](crate::ConsumerGroup::ensure) while the partition has no pointer:
//! it counts as the oldest term and is where the first owner starts.
//!
//! Written by hand: neither the server nor async-nats fences a durable by an owner's term.

use std::{
    collections::BTreeSet,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use bytes::Bytes;
use futures::StreamExt;
use natty_core::{
    Client, Feature,
    async_nats::jetstream::{
        self,
        context::{ConsumerInfoErrorKind, GetStreamErrorKind},
        stream::LastRawMessageErrorKind,
    },
    error::{codes, jetstream_code},
};
use natty_election::{Leadership, Term};
use natty_stream::{ConsumerConfig, DeliverFrom, ensure_consumer, resume_sequence};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::{Error, ErrorKind, GroupConfig, error::from_stream};

/// How long to wait for the previous owner's acks, already sent, to be applied before its ack
/// floor is read (read earlier, they would run again).
const ACKS_APPLIED: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(10);
/// How long a durable without a leader is asked again before the take-over is retried.
const LEADER: Duration = Duration::from_secs(2);
/// How soon the partition's durables are listed again (a second listing, its union taken).
const LIST_AGAIN: Duration = Duration::from_millis(100);
/// The fenced key of a partition's lease that names its durables (see the module's doc).
pub(crate) const POINTER_KEY: &str = "durable";
/// Most durables a pointer lists for deletion (each a delete that failed): bounded.
const MAX_LISTED: usize = 32;
/// The server's "consumer not found".
const CONSUMER_NOT_FOUND: u64 = 10014;

/// The durable of `partition` for the owner of `term`.
pub(crate) fn name(config: &GroupConfig, partition: u32, term: Term) -> String {
    format!(
        "{}_{}_{}",
        config.durable(partition),
        term.epoch,
        term.revision
    )
}

/// The term a durable of `partition` belongs to (`Term(0, 0)` for the initial one), or `None`
/// for any other consumer.
pub(crate) fn term_of(config: &GroupConfig, partition: u32, consumer: &str) -> Option<Term> {
    let base = config.durable(partition);
    let rest = consumer.strip_prefix(base.as_str())?;
    if rest.is_empty() {
        return Some(Term::new(0, 0));
    }
    let (epoch, revision) = rest.strip_prefix('_')?.split_once('_')?;
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    Some(Term::new(number(epoch)?, number(revision)?))
}

fn stream_error(what: String, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::with_source(ErrorKind::Stream, what, e)
}

/// A partition's pointer: the durable its owner consumes, and earlier ones to delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Pointer {
    /// The durable the partition's owner consumes (or, while a take-over runs, the one it
    /// starts from); `None` when the partition starts from the stream's beginning.
    pub(crate) current: Option<String>,
    /// Durables of earlier terms (or one being created) to delete.
    pub(crate) delete: Vec<String>,
}

impl Pointer {
    /// `<current or ->[ <to delete>...]`: consumer names hold no spaces.
    fn encode(&self) -> Bytes {
        let mut text = self.current.clone().unwrap_or_else(|| "-".to_owned());
        for n in &self.delete {
            text.push(' ');
            text.push_str(n);
        }
        Bytes::from(text)
    }

    /// The pointer in `raw`, keeping only names of durables of `partition`: a damaged or
    /// foreign value never makes a take-over delete someone else's consumer. `None` when the
    /// value is not a pointer of this partition.
    fn decode(config: &GroupConfig, partition: u32, raw: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(raw).ok()?;
        let ours = |n: &str| term_of(config, partition, n).is_some();
        let mut tokens = text.split_ascii_whitespace();
        let current = match tokens.next()? {
            "-" => None,
            n if ours(n) => Some(n.to_owned()),
            _ => return None,
        };
        let delete = tokens
            .filter(|n| ours(n))
            .take(MAX_LISTED)
            .map(str::to_owned)
            .collect();
        Some(Self { current, delete })
    }
}

/// The names in `names`, each once, in order, at most [`MAX_LISTED`], without `except`.
fn listed<'a>(names: impl IntoIterator<Item = &'a String>, except: &[&str]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    names
        .into_iter()
        .filter(|n| !except.contains(&n.as_str()) && seen.insert(n.as_str()))
        .take(MAX_LISTED)
        .cloned()
        .collect()
}

/// The subject of `partition`'s pointer in the leases bucket's stream (natty-kv's layout,
/// ADR-8: `$KV.<bucket>.<key>`; the key as natty-election names fenced keys).
fn pointer_subject(config: &GroupConfig, partition: u32) -> String {
    format!(
        "$KV.{}.p{partition}.fenced.{POINTER_KEY}",
        config.lease_bucket()
    )
}

/// The pointer of `partition`, asked of the leases stream's leader (the message-get API: a
/// direct get may be answered by a replica that has not applied the last take-over's write).
/// `None` when there is none (never written, the bucket missing) or it is not readable.
pub(crate) async fn read_pointer(
    client: &Client,
    config: &GroupConfig,
    partition: u32,
) -> Result<Option<Pointer>, Error> {
    let bucket = config.lease_bucket();
    let context = || format!("reading the durable pointer of partition {partition} in {bucket:?}");
    let stream = match client
        .jetstream()
        .get_stream_no_info(format!("KV_{bucket}"))
        .await
    {
        Ok(s) => s,
        Err(e) if jetstream_code(&e) == Some(codes::STREAM_NOT_FOUND) => return Ok(None),
        Err(e) => return Err(Error::with_source(ErrorKind::Kv, context(), e)),
    };
    let message = match stream
        .get_last_raw_message_by_subject(&pointer_subject(config, partition))
        .await
    {
        Ok(m) => m,
        Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => return Ok(None),
        Err(e)
            if matches!(
                jetstream_code(&e),
                Some(codes::STREAM_NOT_FOUND | codes::NO_MESSAGE_FOUND)
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(Error::with_source(ErrorKind::Kv, context(), e)),
    };
    // A delete or purge marker (`KV-Operation`): no pointer.
    if message.headers.get("KV-Operation").is_some() {
        return Ok(None);
    }
    let pointer = Pointer::decode(config, partition, &message.payload);
    if pointer.is_none() {
        warn!(
            partition,
            value = %String::from_utf8_lossy(&message.payload),
            "the partition's durable pointer is not one: ignored"
        );
    }
    Ok(pointer)
}

/// Writes `pointer`, fenced by the lease: `Ok(false)` when the server has no fenced writes
/// (before 2.12); a `Stream` error when the lease is lost (nothing written) or the outcome is
/// unknown.
async fn write_pointer(
    lead: &Leadership,
    partition: u32,
    pointer: &Pointer,
) -> Result<bool, Error> {
    match lead.put(POINTER_KEY, pointer.encode()).await {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == natty_election::ErrorKind::Unsupported => {
            warn!(partition, error = %e, "fenced writes refused: finding durables by listing");
            Ok(false)
        }
        Err(e) => Err(Error::with_source(
            ErrorKind::Stream,
            format!(
                "partition {partition}: writing its durable pointer under the lease of term {}",
                lead.term
            ),
            e,
        )),
    }
}

/// The stream's consumers that are partition durables of this group: (partition, term, name).
/// A listing pages by offset: while others delete, it can miss names.
pub(crate) async fn list(
    stream: &jetstream::stream::Stream,
    config: &GroupConfig,
) -> Result<Vec<(u32, Term, String)>, Error> {
    let mut names = stream.consumer_names();
    let mut found = Vec::new();
    let prefix = format!("{}_p", config.name);
    while let Some(n) = names.next().await {
        let n = n.map_err(|e| {
            stream_error(
                format!("listing the consumers of stream {:?}", config.stream),
                e,
            )
        })?;
        // `<name>_p<i>...`: the partition is the number right after the group's prefix.
        let Some(i) = n
            .strip_prefix(prefix.as_str())
            .and_then(|r| r.split('_').next())
            .and_then(|i| i.parse::<u32>().ok())
            .filter(|i| *i < config.partitions)
        else {
            continue;
        };
        if let Some(term) = term_of(config, i, &n) {
            found.push((i, term, n));
        }
    }
    Ok(found)
}

pub(crate) async fn get_stream(
    client: &Client,
    config: &GroupConfig,
) -> Result<jetstream::stream::Stream, Error> {
    client
        .jetstream()
        .get_stream(&config.stream)
        .await
        .map_err(|e| {
            let kind = match e.kind() {
                GetStreamErrorKind::JetStream(js)
                    if js.error_code().0 == codes::STREAM_NOT_FOUND =>
                {
                    ErrorKind::StreamNotFound
                }
                _ => ErrorKind::Stream,
            };
            Error::with_source(kind, format!("reading stream {:?}", config.stream), e)
        })
}

/// The durables of `partition` in two listings (their union): (term, name).
async fn listed_twice(
    stream: &jetstream::stream::Stream,
    config: &GroupConfig,
    partition: u32,
) -> Result<Vec<(Term, String)>, Error> {
    let of_partition = |all: Vec<(u32, Term, String)>| {
        all.into_iter()
            .filter(|(p, _, _)| *p == partition)
            .map(|(_, t, n)| (t, n))
    };
    let mut found: BTreeSet<(Term, String)> = of_partition(list(stream, config).await?).collect();
    tokio::time::sleep(LIST_AGAIN).await;
    found.extend(of_partition(list(stream, config).await?));
    Ok(found.into_iter().collect())
}

fn superseded(partition: u32, term: Term, later: Term, name: &str) -> Error {
    Error::new(
        ErrorKind::Stream,
        format!(
            "partition {partition}: durable {name:?} of a later term {later} exists; the lease \
             of term {term} is stale"
        ),
    )
}

fn lease_ended(partition: u32, term: Term) -> Error {
    Error::new(
        ErrorKind::Stream,
        format!("partition {partition}: the lease of term {term} ended during the take-over"),
    )
}

/// Makes the durable of `partition` for the term of `lead`, from where the previous owner
/// left off, and deletes the earlier ones. Returns its name. A `Stream` error when the lease
/// is no longer valid (this member is stale) or the server could not be asked (then retry).
/// `fences` is cleared when the server refuses fenced writes: the take-overs then list.
pub(crate) async fn take_over(
    client: &Client,
    config: &GroupConfig,
    partition: u32,
    lead: &Leadership,
    fences: &AtomicBool,
) -> Result<String, Error> {
    let stream = get_stream(client, config).await?;
    if fences.load(Ordering::Relaxed) && client.supports(Feature::AtomicBatch) {
        match by_pointer(client, &stream, config, partition, lead).await? {
            Some(ours) => return Ok(ours),
            None => fences.store(false, Ordering::Relaxed),
        }
    }
    by_listing(client, &stream, config, partition, lead).await
}

/// The take-over with the partition's pointer (module doc); `None` when the server has no
/// fenced writes (nothing done yet: take over by listing).
async fn by_pointer(
    client: &Client,
    stream: &jetstream::stream::Stream,
    config: &GroupConfig,
    partition: u32,
    lead: &Leadership,
) -> Result<Option<String>, Error> {
    let term = lead.term;
    let ours = name(config, partition, term);
    let initial = config.durable(partition);
    let pointer = read_pointer(client, config, partition).await?;
    if let Some(p) = &pointer
        && p.current.as_deref() == Some(ours.as_str())
        && consumer_info(stream, &ours).await?.is_some()
    {
        // An earlier attempt of this term got as far as its pointer: only deletes are left.
        delete_all(stream, partition, &listed(&p.delete, &[ours.as_str()])).await;
        return Ok(Some(ours));
    }
    let Pointer { current, delete } = pointer.unwrap_or_default();
    let mut delete = listed(&delete, &[ours.as_str()]);
    // Where the previous owner left off: the durable the pointer names...
    let mut previous = None;
    if let Some(n) = current.filter(|n| *n != ours) {
        match resume_from(stream, &n).await? {
            Some(from) => previous = Some((n, from)),
            None => {
                warn!(partition, durable = %n, "the durable the partition's pointer names is gone (deleted behind the group's back): looking for another")
            }
        }
    }
    // ... or one found without it.
    if previous.is_none() {
        previous = unpointed(stream, config, partition, term, &mut delete).await?;
    }
    let previous_name = previous.as_ref().map(|(n, _)| n.clone());
    // 1. Ours announced for deletion before it exists: stopped after this, the next owner
    // deletes it and starts where we would have.
    let intent = Pointer {
        current: previous_name.clone(),
        delete: listed([&ours].into_iter().chain(delete.iter()), &[]),
    };
    if !write_pointer(lead, partition, &intent).await? {
        return Ok(None);
    }
    // 2. Ours, after the previous owner's ack floor (a retry of this term finds it made).
    if consumer_info(stream, &ours).await?.is_none() {
        let from = previous
            .as_ref()
            .map_or(DeliverFrom::All, |(_, from)| DeliverFrom::Sequence(*from));
        // A member frozen since it read the pointer must not create a durable behind its
        // successor (the pointer write above would then have been refused; this is the
        // local check after it).
        if !lead.is_valid() {
            return Err(lease_ended(partition, term));
        }
        create(client, config, partition, &ours, from).await?;
        info!(partition, %term, durable = %ours, previous = ?previous_name, ?from, "partition durable created where the previous owner left off");
    }
    // 3. Earlier terms' leftovers: nobody reads them.
    let keep: Vec<&str> = [Some(ours.as_str()), previous_name.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    let failed = delete_all(stream, partition, &listed(&delete, &keep)).await;
    // 4. The pointer names ours; the previous durable (and the initial one, which a racing
    // `ensure` may have made again) is listed until deleted.
    let done = Pointer {
        current: Some(ours.clone()),
        delete: listed(
            previous_name.iter().chain([&initial]).chain(failed.iter()),
            &[ours.as_str()],
        ),
    };
    if let Err(e) = write_pointer(lead, partition, &done).await {
        if !lead.is_valid() {
            // Refused: a successor took the partition over and does not know ours.
            let _ = delete_one(stream, partition, &ours).await;
        }
        return Err(e);
    }
    delete_all(stream, partition, &done.delete).await;
    Ok(Some(ours))
}

/// The newest durable of `partition` older than `term` when no pointer names one: the initial
/// durable by name, else by listing. The other earlier ones are added to `delete`.
async fn unpointed(
    stream: &jetstream::stream::Stream,
    config: &GroupConfig,
    partition: u32,
    term: Term,
    delete: &mut Vec<String>,
) -> Result<Option<(String, u64)>, Error> {
    let initial = config.durable(partition);
    if let Some(from) = resume_from(stream, &initial).await? {
        return Ok(Some((initial, from)));
    }
    let mut earlier: Vec<(Term, String)> = listed_twice(stream, config, partition)
        .await?
        .into_iter()
        .filter(|(t, _)| *t < term)
        .collect();
    earlier.sort();
    while let Some((_, n)) = earlier.pop() {
        if let Some(from) = resume_from(stream, &n).await? {
            delete.extend(earlier.into_iter().map(|(_, n)| n));
            return Ok(Some((n, from)));
        }
    }
    warn!(
        partition,
        "no durable of the partition found: starting from the stream's beginning"
    );
    Ok(None)
}

/// The take-over by listing the stream's consumers (a server without fenced writes).
async fn by_listing(
    client: &Client,
    stream: &jetstream::stream::Stream,
    config: &GroupConfig,
    partition: u32,
    lead: &Leadership,
) -> Result<String, Error> {
    let term = lead.term;
    let ours = name(config, partition, term);
    let durables = listed_twice(stream, config, partition).await?;
    if let Some((later, n)) = durables.iter().find(|(t, _)| *t > term) {
        return Err(superseded(partition, term, *later, n));
    }
    if !durables.iter().any(|(t, _)| *t == term) {
        let mut earlier: Vec<&(Term, String)> =
            durables.iter().filter(|(t, _)| *t < term).collect();
        earlier.sort();
        let mut from = DeliverFrom::All;
        while let Some((_, n)) = earlier.pop() {
            if let Some(seq) = resume_from(stream, n).await? {
                from = DeliverFrom::Sequence(seq);
                break;
            }
        }
        if matches!(from, DeliverFrom::All) {
            warn!(
                partition,
                "no durable of the partition found: starting from the stream's beginning"
            );
        }
        // A member frozen since its listing must not create a durable behind its successor.
        if !lead.is_valid() {
            return Err(lease_ended(partition, term));
        }
        create(client, config, partition, &ours, from).await?;
        info!(partition, %term, durable = %ours, ?from, "partition durable created where the previous owner left off");
        // Had the create been held up (a freeze, a reconnect) until a successor listed, the
        // successor would neither start from it nor delete it: look, and withdraw if so.
        if let Some((later, n)) = listed_twice(stream, config, partition)
            .await?
            .iter()
            .find(|(t, _)| *t > term)
        {
            let _ = delete_one(stream, partition, &ours).await;
            return Err(superseded(partition, term, *later, n));
        }
    }
    // Only now: had we crashed in between, the next owner would still find where to start.
    let earlier: Vec<String> = durables
        .into_iter()
        .filter(|(t, _)| *t < term)
        .map(|(_, n)| n)
        .collect();
    delete_all(stream, partition, &earlier).await;
    Ok(ours)
}

async fn create(
    client: &Client,
    config: &GroupConfig,
    partition: u32,
    durable: &str,
    from: DeliverFrom,
) -> Result<(), Error> {
    let cfg = ConsumerConfig::new(&config.stream, durable)
        .filter_subjects([config.filter(partition)])
        .ack_wait(config.ack_wait)
        .deliver_from(from);
    ensure_consumer(client, &cfg).await.map_err(from_stream)
}

/// The durable's info; `None` when it does not exist.
async fn consumer_info(
    stream: &jetstream::stream::Stream,
    name: &str,
) -> Result<Option<jetstream::consumer::Info>, Error> {
    match stream.consumer_info(name).await {
        Ok(info) => Ok(Some(info)),
        Err(e)
            if matches!(e.kind(), ConsumerInfoErrorKind::NotFound)
                || jetstream_code(&e) == Some(CONSUMER_NOT_FOUND) =>
        {
            Ok(None)
        }
        Err(e) => Err(stream_error(format!("reading durable {name:?}"), e)),
    }
}

/// Deletes `name`; true when it is gone (also when it was not there).
async fn delete_one(stream: &jetstream::stream::Stream, partition: u32, name: &str) -> bool {
    match stream.delete_consumer(name).await {
        Ok(_) => {
            debug!(partition, durable = %name, "earlier owner's durable deleted");
            true
        }
        Err(e) if jetstream_code(&e) == Some(CONSUMER_NOT_FOUND) => true,
        Err(e) => {
            warn!(partition, durable = %name, error = %e, "deleting an earlier owner's durable failed; the next owner deletes it");
            false
        }
    }
}

/// Deletes each of `names`; returns those that could not be deleted.
async fn delete_all(
    stream: &jetstream::stream::Stream,
    partition: u32,
    names: &[String],
) -> Vec<String> {
    let mut failed = Vec::new();
    for n in names {
        if !delete_one(stream, partition, n).await {
            failed.push(n.clone());
        }
    }
    failed
}

/// Where the next owner's durable starts after durable `name`
/// ([`resume_sequence`]: after its ack floor, never below its own start — see
/// tests/group.rs `an_owner_that_handled_nothing_hands_over_where_it_started`), read from it
/// once it has a leader and the acks already sent to it have been applied (both waits
/// bounded). `None` when the durable does not exist.
async fn resume_from(stream: &jetstream::stream::Stream, name: &str) -> Result<Option<u64>, Error> {
    let read = || async {
        consumer_info(stream, name).await?.ok_or_else(|| {
            Error::new(
                ErrorKind::Stream,
                format!("durable {name:?} was deleted while its ack floor was read"),
            )
        })
    };
    let no_leader = || {
        Error::new(
            ErrorKind::Stream,
            format!("durable {name:?} has no leader: its ack floor is unknown"),
        )
    };
    // A replicated durable without a leader (just created, or electing one) gives no answer.
    let Some(mut info) = consumer_info(stream, name).await? else {
        return Ok(None);
    };
    let deadline = Instant::now() + LEADER;
    while resume_sequence(&info).is_none() {
        if Instant::now() >= deadline {
            return Err(no_leader());
        }
        tokio::time::sleep(POLL * 5).await;
        info = read().await?;
    }
    // A previous owner's last acks may still be on their way through the server: wait until
    // the pending count stops going down.
    let deadline = Instant::now() + ACKS_APPLIED;
    while info.num_ack_pending > 0 && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
        let next = read().await?;
        if resume_sequence(&next).is_none() {
            continue;
        }
        let settled = next.num_ack_pending >= info.num_ack_pending;
        info = next;
        if settled {
            break;
        }
    }
    resume_sequence(&info).map(Some).ok_or_else(no_leader)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_names_carry_the_term_and_parse_back() {
        let c = GroupConfig::new("billing", "ORDERS", "orders", 12, "m");
        let t = Term::new(1_795_797_579_714_675_964, 42);
        let n = name(&c, 1, t);
        assert_eq!(n, "billing_p1_1795797579714675964_42");
        assert_eq!(term_of(&c, 1, &n), Some(t));
        assert_eq!(term_of(&c, 1, "billing_p1"), Some(Term::new(0, 0)));
        // Partition 1's prefix is not partition 10's or 11's.
        assert_eq!(term_of(&c, 1, "billing_p10_5_6"), None);
        assert_eq!(term_of(&c, 1, "billing_p1_5"), None);
        assert_eq!(term_of(&c, 1, "billing_p1_5_x"), None);
        assert_eq!(term_of(&c, 1, "billing_p1_5_6_7"), None);
        assert_eq!(term_of(&c, 1, "other"), None);
    }

    #[test]
    fn pointers_round_trip_and_never_name_a_foreign_consumer() {
        let c = GroupConfig::new("billing", "ORDERS", "orders", 12, "m");
        let p = Pointer {
            current: Some("billing_p3_7_9".to_owned()),
            delete: vec!["billing_p3".to_owned(), "billing_p3_7_2".to_owned()],
        };
        assert_eq!(&p.encode()[..], b"billing_p3_7_9 billing_p3 billing_p3_7_2");
        assert_eq!(Pointer::decode(&c, 3, &p.encode()), Some(p.clone()));
        let none = Pointer {
            current: None,
            delete: vec!["billing_p3_1_1".to_owned()],
        };
        assert_eq!(Pointer::decode(&c, 3, &none.encode()), Some(none));
        // Another partition's, another group's, garbage: never to be acted on.
        assert_eq!(Pointer::decode(&c, 4, &p.encode()), None);
        assert_eq!(Pointer::decode(&c, 3, b"ORDERS_worker"), None);
        assert_eq!(Pointer::decode(&c, 3, b""), None);
        assert_eq!(Pointer::decode(&c, 3, &[0xff, 0xfe]), None);
        let mixed = Pointer::decode(&c, 3, b"- someone_else billing_p3_1_1 billing_p30_1_1");
        assert_eq!(
            mixed,
            Some(Pointer {
                current: None,
                delete: vec!["billing_p3_1_1".to_owned()]
            })
        );
        // Bounded however long the stored list is.
        let long = std::iter::once("-".to_owned())
            .chain((0..500).map(|i| format!("billing_p3_1_{i}")))
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(
            Pointer::decode(&c, 3, long.as_bytes()).map(|p| p.delete.len()),
            Some(MAX_LISTED)
        );
    }

    #[test]
    fn lists_are_deduplicated_bounded_and_skip_what_is_kept() {
        let names: Vec<String> = ["a", "b", "a", "c"].map(str::to_owned).to_vec();
        assert_eq!(listed(&names, &["b"]), ["a", "c"]);
        let many: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        assert_eq!(listed(&many, &[]).len(), MAX_LISTED);
    }
}
