use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use super::{Keys, OrderKey};
use crate::Message;

fn message(subject: &str, headers: &[(&str, &str)]) -> Message {
    Message {
        subject: subject.to_owned(),
        payload: bytes::Bytes::new(),
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        delivered: 1,
        stream_sequence: 1,
        consumer_sequence: 1,
        published: std::time::SystemTime::UNIX_EPOCH,
        pending: 0,
        stream: "S".to_owned(),
        consumer: "C".to_owned(),
    }
}

#[test]
fn keys_come_from_subject_tokens_headers_or_a_function() {
    let m = message("orders.eu.42", &[("Order-Key", "abc")]);
    let table: [(OrderKey, Option<&str>); 5] = [
        (OrderKey::subject_token(2), Some("42")),
        (OrderKey::subject_token(0), Some("orders")),
        (OrderKey::subject_token(3), None),
        (OrderKey::header("order-key"), Some("abc")),
        (
            OrderKey::from_fn(|m| Some(m.subject.to_uppercase())),
            Some("ORDERS.EU.42"),
        ),
    ];
    for (key, want) in table {
        assert_eq!(key.of(&m).as_deref(), want, "{key:?}");
    }
    assert_eq!(OrderKey::header("missing").of(&m), None);
}

type Item = (Option<Arc<str>>, Option<Instant>);

fn choose(keys: &mut Keys, queue: &[Item], now: Instant) -> Option<usize> {
    keys.choose(queue.iter().map(|(k, t)| (k.as_ref(), *t)), now)
}

fn k(s: &str) -> Option<Arc<str>> {
    Some(Arc::from(s))
}

#[test]
fn a_key_runs_one_message_at_a_time_in_queue_order() {
    let now = Instant::now();
    let mut keys = Keys::new(OrderKey::subject_token(1));
    let mut queue: Vec<Item> = vec![(k("a"), None), (k("a"), None), (k("b"), None), (None, None)];
    // a#1 starts; a#2 must wait for it, b and the keyless one may run.
    assert_eq!(choose(&mut keys, &queue, now), Some(0));
    queue.remove(0);
    assert_eq!(choose(&mut keys, &queue, now), Some(1)); // b
    queue.remove(1);
    assert_eq!(choose(&mut keys, &queue, now), Some(1)); // keyless
    queue.remove(1);
    assert_eq!(choose(&mut keys, &queue, now), None); // only a#2, a busy
    keys.finished(k("a").as_ref(), 1, true, true);
    assert_eq!(choose(&mut keys, &queue, now), Some(0));
}

#[test]
fn a_retry_not_yet_due_blocks_its_key_but_not_others() {
    let now = Instant::now();
    let later = now + Duration::from_secs(1);
    let mut keys = Keys::new(OrderKey::subject_token(1));
    // The failed a#1 was put back at the front with a delay.
    let queue: Vec<Item> = vec![(k("a"), Some(later)), (k("a"), None), (k("b"), None)];
    assert_eq!(choose(&mut keys, &queue, now), Some(2));
    keys.finished(k("b").as_ref(), 3, true, true);
    // Once due, the retry goes first, before a#2.
    assert_eq!(choose(&mut keys, &queue, later), Some(0));
    // A keyless retry not yet due blocks nothing.
    let mut keys = Keys::new(OrderKey::subject_token(1));
    let queue: Vec<Item> = vec![(None, Some(later)), (None, None)];
    assert_eq!(choose(&mut keys, &queue, now), Some(1));
}

#[test]
fn acked_sequences_are_remembered_up_to_the_bound_and_nothing_else_is() {
    let mut keys = Keys::new(OrderKey::subject_token(1));
    keys.finished(k("a").as_ref(), 7, true, false); // given up on / nak'ed: not acked
    keys.finished(k("a").as_ref(), 8, false, false); // held for a retry
    assert!(keys.acked.is_empty());
    for seq in 1..=super::REMEMBERED as u64 + 1 {
        keys.finished(k("a").as_ref(), seq, true, true);
    }
    // The oldest is forgotten (a replay of it would run again: a duplicate, never a loss).
    assert!(!keys.acked.contains(&1));
    assert!(keys.acked.contains(&2));
    assert!(keys.acked.contains(&(super::REMEMBERED as u64 + 1)));
    assert_eq!(keys.acked.len(), super::REMEMBERED);
    assert_eq!(keys.acked_order.len(), super::REMEMBERED);
}

#[test]
fn acked_sequences_at_or_below_the_ack_floor_are_forgotten() {
    let mut keys = Keys::new(OrderKey::subject_token(1));
    for seq in 1..=10_000 {
        keys.finished(k("a").as_ref(), seq, true, true);
    }
    assert_eq!(keys.remembered(), 10_000);
    // The durable's ack floor passed 9,990: only what is above it can be replayed.
    assert_eq!(keys.forget_acked_through(9_990), 9_990);
    assert_eq!(keys.remembered(), 10);
    assert_eq!(keys.acked_order.len(), 10);
    assert!(!keys.acked.contains(&9_990));
    assert!(keys.acked.contains(&9_991));
    // Later acks are remembered as before; a floor that did not move forgets nothing.
    keys.finished(k("a").as_ref(), 10_001, true, true);
    assert_eq!(keys.forget_acked_through(9_990), 0);
    assert_eq!(keys.remembered(), 11);
}

#[test]
fn a_durable_created_again_forgets_what_was_acked() {
    let mut keys = Keys::new(OrderKey::subject_token(1));
    keys.finished(k("a").as_ref(), 1, true, true);
    assert!(keys.acked.contains(&1));
    // Its sequences may start over: sequence 1 is another message now.
    keys.forget_acked();
    assert!(keys.acked.is_empty() && keys.acked_order.is_empty());
}
