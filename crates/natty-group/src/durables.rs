//! A partition's durables: one per owner term, `<name>_p<i>_<epoch>_<revision>`.
//!
//! Why not one durable that every owner reads: the server cannot tell an old owner's requests
//! from the new owner's on a shared durable. A member frozen past its lease keeps a pull
//! request open, and the server hands that request messages the new owner needs (they come
//! back `ack_wait` later, behind later messages of their key); a reset the old owner gave up
//! on can still be applied in the middle of the new owner's run (a replay from the ack floor).
//! Both were seen in the chaos scenario.
//!
//! So a new owner creates its own durable, starting right after the ack floor of the newest
//! earlier one (the previous owner's), and then deletes every earlier one: the server itself
//! refuses whatever an old owner still has in flight — a deleted consumer delivers nothing,
//! and resets or acks addressed to it change nothing of the new owner's. What the previous
//! owner had not acknowledged (in flight at a hand-over, stranded in a pull, a killed
//! member's) comes first and in stream order; what it acknowledged after its first unfinished
//! message runs again (at-least-once). Delivery counts restart with each durable.
//!
//! `<name>_p<i>` (no term) is the partition's initial durable, made by
//! [`ConsumerGroup::ensure`](crate::ConsumerGroup::ensure) (or by a natty before per-term
//! durables): it counts as the oldest term and is where the first owner starts.
//!
//! Written by hand: neither the server nor async-nats fences a durable by an owner's term.

use std::time::Duration;

use futures::StreamExt;
use natty_core::{Client, async_nats::jetstream};
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
/// How soon the partition's durables are listed again when none was found.
const LIST_AGAIN: Duration = Duration::from_millis(100);

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

/// The stream's consumers that are partition durables of this group: (partition, term, name).
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
        .map_err(|e| stream_error(format!("reading stream {:?}", config.stream), e))
}

/// The durables of `partition`: (term, name).
async fn of_partition(
    stream: &jetstream::stream::Stream,
    config: &GroupConfig,
    partition: u32,
) -> Result<Vec<(Term, String)>, Error> {
    Ok(list(stream, config)
        .await?
        .into_iter()
        .filter(|(p, _, _)| *p == partition)
        .map(|(_, t, n)| (t, n))
        .collect())
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

/// Makes the durable of `partition` for the term of `lead`, from where the newest earlier
/// one's owner left off, and deletes the earlier ones. Returns its name. A `Stream` error when
/// a durable of a later term exists or the lease is no longer valid (this member is stale),
/// or the server could not be asked (then retry).
pub(crate) async fn take_over(
    client: &Client,
    config: &GroupConfig,
    partition: u32,
    lead: &Leadership,
) -> Result<String, Error> {
    let term = lead.term;
    let stream = get_stream(client, config).await?;
    let ours = name(config, partition, term);
    let mut durables = of_partition(&stream, config, partition).await?;
    if durables.is_empty() {
        // `ensure()` made one and a take-over deletes only after creating its own, so none is
        // rare: a name the listing skipped (async-nats pages by offset, and other partitions'
        // durables are being deleted). Look again before starting from the beginning.
        tokio::time::sleep(LIST_AGAIN).await;
        durables = of_partition(&stream, config, partition).await?;
        if durables.is_empty() {
            warn!(
                partition,
                "no durable of the partition found: starting from the stream's beginning"
            );
        }
    }
    if let Some((later, n)) = durables.iter().find(|(t, _)| *t > term) {
        return Err(superseded(partition, term, *later, n));
    }
    let previous = durables
        .iter()
        .filter(|(t, _)| *t < term)
        .max_by_key(|(t, _)| *t);
    if !durables.iter().any(|(t, _)| *t == term) {
        let from = match previous {
            Some((_, n)) => DeliverFrom::Sequence(resume_from(&stream, n).await?),
            None => DeliverFrom::All,
        };
        // A member frozen since its listing must not create a durable behind its successor.
        if !lead.is_valid() {
            return Err(Error::new(
                ErrorKind::Stream,
                format!(
                    "partition {partition}: the lease of term {term} ended during the take-over"
                ),
            ));
        }
        let cfg = ConsumerConfig::new(&config.stream, &ours)
            .filter_subjects([config.filter(partition)])
            .ack_wait(config.ack_wait)
            .deliver_from(from);
        ensure_consumer(client, &cfg).await.map_err(from_stream)?;
        info!(partition, %term, durable = %ours, previous = ?previous.map(|(_, n)| n), ?from, "partition durable created where the previous owner left off");
        // Had the create been held up (a freeze, a reconnect) until a successor listed, the
        // successor would neither start from it nor delete it: look, and withdraw if so.
        if let Some((later, n)) = of_partition(&stream, config, partition)
            .await?
            .iter()
            .find(|(t, _)| *t > term)
        {
            let _ = stream.delete_consumer(&ours).await;
            return Err(superseded(partition, term, *later, n));
        }
    }
    // Only now: had we crashed in between, the next owner would still find where to start.
    for (t, n) in durables.iter().filter(|(t, _)| *t < term) {
        match stream.delete_consumer(n).await {
            Ok(_) => debug!(partition, durable = %n, term = %t, "earlier owner's durable deleted"),
            Err(e) => {
                warn!(partition, durable = %n, error = %e, "deleting an earlier owner's durable failed; the next owner deletes it")
            }
        }
    }
    Ok(ours)
}

/// Where the next owner's durable starts after durable `name`
/// ([`resume_sequence`]: after its ack floor, never below its own start — see
/// tests/group.rs `an_owner_that_handled_nothing_hands_over_where_it_started`), read from it
/// once it has a leader and the acks already sent to it have been applied (both waits bounded).
async fn resume_from(stream: &jetstream::stream::Stream, name: &str) -> Result<u64, Error> {
    let read = || async {
        stream
            .consumer_info(name)
            .await
            .map_err(|e| stream_error(format!("reading durable {name:?}"), e))
    };
    let no_leader = || {
        Error::new(
            ErrorKind::Stream,
            format!("durable {name:?} has no leader: its ack floor is unknown"),
        )
    };
    // A replicated durable without a leader (just created, or electing one) gives no answer.
    let mut info = read().await?;
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
    resume_sequence(&info).ok_or_else(no_leader)
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
}
