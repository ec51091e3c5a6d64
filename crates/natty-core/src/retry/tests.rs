#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use std::{collections::HashSet, time::Duration};

use super::RetryPolicy;

const MS: Duration = Duration::from_millis(1);

/// The nominal pause of retry `n` (1-based): `first * 2^(n-1)`, capped.
fn nominal(policy: RetryPolicy, n: u32) -> Duration {
    policy
        .first()
        .saturating_mul(1 << (n - 1).min(30))
        .min(policy.max())
}

#[test]
fn every_pause_is_within_half_of_its_nominal_value_and_the_cap_holds() {
    let cases = [
        RetryPolicy::new(50 * MS, Duration::from_secs(1)),
        RetryPolicy::new(100 * MS, Duration::from_secs(5)),
        RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(1)),
        RetryPolicy::new(Duration::from_secs(3), Duration::from_secs(1)), // max raised to first
        RetryPolicy::new(Duration::ZERO, Duration::ZERO),
    ];
    for policy in cases {
        for _ in 0..200 {
            let mut backoff = policy.backoff();
            for n in 1..=40 {
                let pause = backoff.next_delay();
                let nominal = nominal(policy, n);
                assert!(
                    pause <= policy.max() && pause <= nominal && pause >= nominal / 2,
                    "{policy:?} retry {n}: {pause:?} (nominal {nominal:?})"
                );
            }
        }
    }
}

#[test]
fn the_pauses_grow_to_the_cap() {
    let policy = RetryPolicy::new(50 * MS, Duration::from_secs(2));
    let pauses: Vec<Duration> = policy.backoff().take(12).collect();
    // By the 7th retry the nominal pause is the cap: every later pause is in its upper half.
    assert!(
        pauses[6..].iter().all(|p| *p >= Duration::from_secs(1)),
        "{pauses:?}"
    );
    assert!(pauses[0] < 50 * MS, "{pauses:?}");
}

#[test]
fn jitter_spreads_clients_that_fail_at_the_same_moment() {
    // 200 clients lose the server at once and back off with the same policy: no two of them
    // may retry in step, and their pauses must spread over a wide window, not a few µs.
    let policy = RetryPolicy::new(50 * MS, Duration::from_secs(2));
    for retry in [1, 3, 10] {
        let pauses: Vec<Duration> = (0..200).map(|_| policy.delay(retry)).collect();
        let distinct: HashSet<Duration> = pauses.iter().copied().collect();
        assert!(
            distinct.len() >= 195,
            "retry {retry}: only {} distinct pauses",
            distinct.len()
        );
        let (min, max) = (pauses.iter().min().unwrap(), pauses.iter().max().unwrap());
        let nominal = nominal(policy, retry);
        assert!(
            *max - *min >= nominal / 4,
            "retry {retry}: pauses within {:?} of each other (nominal {nominal:?})",
            *max - *min
        );
    }
    // And whole sequences differ: two clients are not in step at any later retry either.
    let sequences: HashSet<Vec<Duration>> = (0..50)
        .map(|_| policy.backoff().take(8).collect())
        .collect();
    assert_eq!(sequences.len(), 50);
}

#[test]
fn reset_starts_over() {
    let policy = RetryPolicy::new(100 * MS, Duration::from_secs(5));
    let mut backoff = policy.backoff();
    for _ in 0..10 {
        backoff.next_delay();
    }
    assert!(backoff.next_delay() >= Duration::from_millis(2500));
    backoff.reset();
    let first = backoff.next_delay();
    assert!(first >= 50 * MS && first <= 100 * MS, "{first:?}");
}

#[test]
fn delay_matches_the_sequence() {
    let policy = RetryPolicy::new(50 * MS, Duration::from_secs(2));
    for retry in [0, 1, 2, 5, 9, 100, u32::MAX] {
        let pause = policy.delay(retry);
        let nominal = nominal(policy, retry.clamp(1, 64));
        assert!(
            pause <= nominal && pause >= nominal / 2,
            "{retry}: {pause:?}"
        );
    }
}
