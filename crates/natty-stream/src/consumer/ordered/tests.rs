use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use super::{Keys, Lane, Lanes, OrderKey};
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

/// A waiting item for the key order alone.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    pos: u64,
    key: Option<Arc<str>>,
    not_before: Option<Instant>,
}

impl Lane for Item {
    fn pos(&self) -> u64 {
        self.pos
    }

    fn key(&self) -> Option<&Arc<str>> {
        self.key.as_ref()
    }

    fn not_before(&self) -> Option<Instant> {
        self.not_before
    }
}

fn k(s: &str) -> Option<Arc<str>> {
    Some(Arc::from(s))
}

/// Queues items of these keys (with these delays) in this order; returns the lanes.
fn lanes(items: &[(Option<Arc<str>>, Option<Instant>)]) -> Lanes<Item> {
    let mut lanes = Lanes::new();
    for (key, not_before) in items {
        let pos = lanes.next_pos();
        lanes.push(Item {
            pos,
            key: key.clone(),
            not_before: *not_before,
        });
    }
    lanes
}

fn picked(lanes: &mut Lanes<Item>, now: Instant) -> Option<u64> {
    lanes.pick(now).map(|i| i.pos)
}

#[test]
fn a_key_runs_one_message_at_a_time_in_arrival_order() {
    let now = Instant::now();
    let mut l = lanes(&[(k("a"), None), (k("a"), None), (k("b"), None), (None, None)]);
    // a#0 starts; a#1 must wait for it, b and the keyless one may run.
    assert_eq!(picked(&mut l, now), Some(0));
    assert_eq!(picked(&mut l, now), Some(2)); // b
    assert_eq!(picked(&mut l, now), Some(3)); // keyless
    assert_eq!(picked(&mut l, now), None); // only a#1, a busy
    l.done(k("a").as_ref(), None);
    assert_eq!(picked(&mut l, now), Some(1));
    assert_eq!(l.len(), 0);
}

#[test]
fn a_retry_not_yet_due_blocks_its_key_but_not_others() {
    let now = Instant::now();
    let later = now + Duration::from_secs(1);
    let mut l = lanes(&[(k("a"), None), (k("a"), None), (k("b"), None)]);
    let first = l.pick(now).unwrap();
    assert_eq!(first.pos, 0);
    // a#0 failed: back in front of a#1 with a delay.
    l.done(
        k("a").as_ref(),
        Some(Item {
            not_before: Some(later),
            ..first
        }),
    );
    assert_eq!(l.next_due(), Some(later));
    assert_eq!(picked(&mut l, now), Some(2)); // b, not a#1
    assert_eq!(picked(&mut l, now), None);
    // Once due, the retry goes first, before a#1.
    assert_eq!(picked(&mut l, later), Some(0));
    l.done(k("a").as_ref(), None);
    assert_eq!(picked(&mut l, later), Some(1));
    // A keyless retry not yet due blocks nothing.
    let mut l = lanes(&[(None, Some(later)), (None, None)]);
    assert_eq!(picked(&mut l, now), Some(1));
    assert_eq!(picked(&mut l, now), None);
    assert_eq!(picked(&mut l, later), Some(0));
}

#[test]
fn drain_gives_everything_in_arrival_order() {
    let now = Instant::now();
    let mut l = lanes(&[
        (k("b"), None),
        (None, None),
        (k("a"), Some(now)),
        (k("b"), None),
    ]);
    let all: Vec<u64> = l.drain().into_iter().map(|i| i.pos).collect();
    assert_eq!(all, [0, 1, 2, 3]);
    assert_eq!((l.len(), picked(&mut l, now)), (0, None));
}

/// What may start next, the slow way (the order the lanes must keep): the first item by
/// position that is due, keyless or of an idle key with no earlier item of its key waiting.
fn model_pick(
    waiting: &mut Vec<Item>,
    running: &mut std::collections::HashSet<Arc<str>>,
    now: Instant,
) -> Option<u64> {
    waiting.sort_by_key(|i| i.pos);
    let i = (0..waiting.len()).find(|&i| {
        let it = &waiting[i];
        let due = it.not_before.is_none_or(|t| t <= now);
        match &it.key {
            None => due,
            Some(k) => {
                due && !running.contains(k)
                    && !waiting[..i].iter().any(|e| e.key.as_ref() == Some(k))
            }
        }
    })?;
    let it = waiting.remove(i);
    if let Some(k) = &it.key {
        running.insert(k.clone());
    }
    Some(it.pos)
}

proptest::proptest! {
    /// Any sequence of arrivals, picks at moving times, successes and retries: the lanes pick
    /// exactly what the slow model picks.
    #[test]
    fn lanes_pick_what_the_slow_model_picks(ops in proptest::collection::vec((0u8..4, 0u8..5, 0u8..3), 1..200)) {
        let start = Instant::now();
        let mut now = start;
        let mut l: Lanes<Item> = Lanes::new();
        let mut model: Vec<Item> = Vec::new();
        let mut running_model = std::collections::HashSet::new();
        let mut started: Vec<Item> = Vec::new();
        for (op, key, delay) in ops {
            let key = (key < 4).then(|| Arc::<str>::from(format!("k{key}")));
            match op {
                // An arrival.
                0 => {
                    let item = Item { pos: l.next_pos(), key, not_before: None };
                    model.push(item.clone());
                    l.push(item);
                }
                // A pick.
                1 => {
                    let got = l.pick(now);
                    let want = model_pick(&mut model, &mut running_model, now);
                    proptest::prop_assert_eq!(got.as_ref().map(|i| i.pos), want);
                    if let Some(item) = got {
                        started.push(item);
                    }
                }
                // A started item ends: acked, or back for a retry after `delay` seconds.
                2 => {
                    if started.is_empty() {
                        continue;
                    }
                    let item = started.remove(usize::from(delay) % started.len());
                    if let Some(k) = &item.key {
                        running_model.remove(k);
                    }
                    let retry = (delay > 0).then(|| Item {
                        not_before: Some(now + Duration::from_secs(u64::from(delay))),
                        ..item.clone()
                    });
                    if let Some(r) = &retry {
                        model.push(r.clone());
                    }
                    l.done(item.key.as_ref(), retry);
                }
                // Time passes.
                _ => now += Duration::from_secs(u64::from(delay)),
            }
            proptest::prop_assert_eq!(l.len(), model.len());
        }
    }
}

#[test]
fn acked_sequences_are_remembered_up_to_the_bound_and_nothing_else_is() {
    let mut keys = Keys::new(OrderKey::subject_token(1));
    keys.finished(k("a").as_ref(), 7, true, false, None); // given up on / nak'ed: not acked
    keys.finished(k("a").as_ref(), 8, false, false, None); // held for a retry
    assert!(keys.acked.is_empty());
    for seq in 1..=super::REMEMBERED as u64 + 1 {
        keys.finished(k("a").as_ref(), seq, true, true, None);
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
        keys.finished(k("a").as_ref(), seq, true, true, None);
    }
    assert_eq!(keys.remembered(), 10_000);
    // The durable's ack floor passed 9,990: only what is above it can be replayed.
    assert_eq!(keys.forget_acked_through(9_990), 9_990);
    assert_eq!(keys.remembered(), 10);
    assert_eq!(keys.acked_order.len(), 10);
    assert!(!keys.acked.contains(&9_990));
    assert!(keys.acked.contains(&9_991));
    // Later acks are remembered as before; a floor that did not move forgets nothing.
    keys.finished(k("a").as_ref(), 10_001, true, true, None);
    assert_eq!(keys.forget_acked_through(9_990), 0);
    assert_eq!(keys.remembered(), 11);
}

#[test]
fn a_durable_created_again_forgets_what_was_acked() {
    let mut keys = Keys::new(OrderKey::subject_token(1));
    keys.finished(k("a").as_ref(), 1, true, true, None);
    assert!(keys.acked.contains(&1));
    // Its sequences may start over: sequence 1 is another message now.
    keys.forget_acked();
    assert!(keys.acked.is_empty() && keys.acked_order.is_empty());
}

/// Cost per pick with many waiting messages of few keys (the case `batch` advice makes
/// common): the lanes against the slow model (what `choose` did before: a scan of the
/// waiting messages). Run with `--ignored --nocapture` to see the numbers.
#[test]
#[ignore = "a measurement, not a check"]
fn cost_per_pick_with_few_keys_and_a_large_batch() {
    const N: u64 = 5_000;
    let now = Instant::now();
    let items: Vec<Item> = (0..N)
        .map(|pos| Item {
            pos,
            key: Some(Arc::from(format!("k{}", pos % 4))),
            not_before: None,
        })
        .collect();
    // Lanes: pick one, finish it, N times (a handler slot freed per event).
    let mut l: Lanes<Item> = Lanes::new();
    for i in &items {
        let pos = l.next_pos();
        l.push(Item { pos, ..i.clone() });
    }
    let t = std::time::Instant::now();
    while let Some(i) = l.pick(now) {
        l.done(i.key.as_ref(), None);
    }
    let lanes = t.elapsed();
    let mut model = items.clone();
    let mut running = std::collections::HashSet::new();
    let t = std::time::Instant::now();
    while let Some(pos) = model_pick(&mut model, &mut running, now) {
        running.remove(&Arc::<str>::from(format!("k{}", pos % 4)));
    }
    let scan = t.elapsed();
    eprintln!(
        "{N} waiting over 4 keys: {:?} per pick with lanes, {:?} per pick scanning",
        lanes / u32::try_from(N).unwrap_or(1),
        scan / u32::try_from(N).unwrap_or(1)
    );
}
