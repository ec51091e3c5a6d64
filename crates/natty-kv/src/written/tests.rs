use std::time::{Duration, SystemTime};

use super::*;

fn mark(revision: u64) -> Mark {
    Mark {
        revision,
        expiry: Expiry::Never,
    }
}

fn name(n: &str) -> Arc<str> {
    Arc::from(n)
}

#[test]
fn a_write_is_the_floor_of_its_key_only() {
    let w = Written::default();
    let t = SystemTime::UNIX_EPOCH;
    w.record_in(&name("b"), t, "k", mark(7));
    w.record_in(&name("b"), t, "k", mark(5)); // an older answer arriving late
    assert_eq!(w.floor_in("b", t, "k"), Floor::At(7));
    assert_eq!(w.floor_in("b", t, "other"), Floor::None);
    assert_eq!(w.floor_in("c", t, "k"), Floor::None);
}

#[test]
fn another_incarnation_of_the_bucket_is_not_trusted_and_starts_over() {
    let w = Written::default();
    let old = SystemTime::UNIX_EPOCH;
    let new = old + Duration::from_secs(1);
    w.record_in(&name("b"), old, "k", mark(9));
    // A read through a handle of the other incarnation: the leader decides.
    assert_eq!(w.floor_in("b", new, "k"), Floor::Unknown);
    w.record_in(&name("b"), new, "j", mark(2));
    assert_eq!(w.floor_in("b", new, "k"), Floor::None);
    assert_eq!(w.floor_in("b", new, "j"), Floor::At(2));
    assert_eq!(w.remembered(), (1, 1));
}

#[test]
fn too_many_keys_forget_the_oldest_half_behind_a_floor() {
    let w = Written::default();
    let t = SystemTime::UNIX_EPOCH;
    let n = u64::try_from(MAX_KEYS).unwrap_or(u64::MAX) + 1;
    for rev in 1..=n {
        w.record_in(&name("b"), t, &format!("k{rev}"), mark(rev));
    }
    let (_, keys) = w.remembered();
    assert!(keys <= MAX_KEYS, "{keys}");
    // Every key keeps a floor at or above its own write.
    for rev in 1..=n {
        match w.floor_in("b", t, &format!("k{rev}")) {
            Floor::At(floor) => assert!(floor >= rev, "k{rev}: floor {floor}"),
            other => panic!("k{rev}: {other:?}"),
        }
    }
    // The newest keys are still known exactly.
    assert_eq!(w.floor_in("b", t, &format!("k{n}")), Floor::At(n));
}

#[test]
fn too_many_buckets_forget_the_one_written_longest_ago() {
    let w = Written::default();
    let t = SystemTime::UNIX_EPOCH;
    for i in 0..=MAX_BUCKETS {
        w.record_in(&name(&format!("b{i}")), t, "k", mark(1));
    }
    assert_eq!(w.remembered(), (MAX_BUCKETS, MAX_BUCKETS));
    // b0 was forgotten: its reads go to the leader, never to a replica that may lag.
    assert_eq!(w.floor_in("b0", t, "k"), Floor::Unknown);
    assert_eq!(w.floor_in("b1", t, "k"), Floor::At(1));
}

#[test]
fn a_mark_is_found_only_for_its_revision_and_incarnation() {
    let w = Written::default();
    let t = SystemTime::UNIX_EPOCH;
    w.record_in(&name("b"), t, "k", mark(3));
    assert_eq!(w.mark_in("b", t, "k", 3), Some(mark(3)));
    assert_eq!(w.mark_in("b", t, "k", 2), None);
    assert_eq!(w.mark_in("b", t + Duration::from_secs(1), "k", 3), None);
}
