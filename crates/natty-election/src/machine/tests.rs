use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

const TTL: Duration = Duration::from_secs(3);

fn cfg() -> MachineConfig {
    MachineConfig::new(TTL)
}

/// A stand-in for `StopWork::abort_at` in expected action lists (`drain` writes it there;
/// the abort instant has its own tests).
static ANY: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

const CREATE: Action = Action::Create { make_bucket: false };

/// The bucket epoch in these tests.
const E: u64 = 7;

fn tm(revision: u64) -> Term {
    Term::new(E, revision)
}

fn stop(term: u64) -> Action {
    let term = tm(term);
    Action::StopWork {
        term,
        abort_at: *ANY,
    }
}

fn drain(m: &mut Machine) -> (Vec<Action>, Vec<Event>) {
    let actions = std::iter::from_fn(|| m.poll_action())
        .map(|a| match a {
            Action::StopWork { term, .. } => stop(term.revision),
            other => other,
        })
        .collect();
    let events = std::iter::from_fn(|| m.poll_event()).collect();
    (actions, events)
}

fn holder(node: &str, term: u64) -> Holder {
    Holder {
        node: node.into(),
        term: tm(term),
    }
}

/// A leader at `t0` with term 10.
fn leader(t0: Instant) -> Machine {
    let mut m = Machine::new(cfg(), t0);
    assert_eq!(drain(&mut m).0, vec![CREATE]);
    m.handle(
        t0,
        Input::Created {
            revision: 10,
            epoch: E,
        },
    );
    assert_eq!(
        drain(&mut m),
        (
            vec![Action::StartWork { term: tm(10) }],
            vec![Event::Elected { term: tm(10) }]
        )
    );
    m
}

#[test]
fn win() {
    let t0 = Instant::now();
    let m = leader(t0);
    assert!(m.is_leader(t0));
    assert_eq!(m.term(), Some(tm(10)));
    let c = cfg();
    // Renew is due at sent + renew_interval; the deadline is sent + ttl - margin.
    assert_eq!(m.poll_timeout(), Some(t0 + c.renew_interval));
    assert!(!m.is_leader(t0 + TTL - c.margin));
}

#[test]
fn lose_the_race_then_contest_on_poll_and_on_key_gone() {
    let t0 = Instant::now();
    let mut m = Machine::new(cfg(), t0);
    assert_eq!(drain(&mut m).0, vec![CREATE]);
    m.handle(
        t0,
        Input::Conflict {
            holder: Some(holder("a", 4)),
            ours: None,
        },
    );
    let (actions, events) = drain(&mut m);
    assert!(actions.is_empty());
    assert_eq!(
        events,
        vec![Event::Following {
            leader: Some(holder("a", 4))
        }]
    );
    assert!(!m.is_leader(t0));
    let poll = t0 + cfg().poll_interval;
    assert_eq!(m.poll_timeout(), Some(poll));
    // Nothing before the poll...
    m.handle_timeout(poll - Duration::from_millis(1));
    assert_eq!(drain(&mut m).0, vec![]);
    // ...then it contests again; the same holder is not reported twice.
    m.handle_timeout(poll);
    assert_eq!(drain(&mut m).0, vec![CREATE]);
    m.handle(
        poll,
        Input::Conflict {
            holder: Some(holder("a", 4)),
            ours: None,
        },
    );
    assert_eq!(drain(&mut m), (vec![], vec![]));
    // The key expires: contest at once, not on the next poll.
    let t1 = poll + Duration::from_millis(10);
    m.handle(t1, Input::KeyGone { revision: 20 });
    assert_eq!(drain(&mut m).0, vec![CREATE]);
    m.handle(
        t1,
        Input::Created {
            revision: 21,
            epoch: E,
        },
    );
    assert_eq!(drain(&mut m).1, vec![Event::Elected { term: tm(21) }]);
}

#[test]
fn key_gone_while_a_create_is_in_flight_contests_right_after() {
    let t0 = Instant::now();
    let mut m = Machine::new(cfg(), t0);
    assert_eq!(drain(&mut m).0, vec![CREATE]);
    m.handle(t0, Input::KeyGone { revision: 3 });
    assert_eq!(drain(&mut m).0, vec![], "one request at a time");
    m.handle(
        t0,
        Input::Conflict {
            holder: None,
            ours: None,
        },
    );
    assert_eq!(
        drain(&mut m).0,
        vec![CREATE],
        "the gone key is contested at once"
    );
}

#[test]
fn renew_ok_extends_the_deadline_from_the_send_time() {
    let t0 = Instant::now();
    let c = cfg();
    let mut m = leader(t0);
    let t1 = t0 + c.renew_interval;
    m.handle_timeout(t1);
    assert_eq!(drain(&mut m).0, vec![Action::Renew { revision: 10 }]);
    // The reply is slow: the new lease counts from when the renew was sent.
    let t2 = t1 + Duration::from_millis(700);
    m.handle(
        t2,
        Input::Updated {
            revision: 11,
            epoch: E,
        },
    );
    assert!(m.is_leader(t1 + TTL - c.margin - Duration::from_millis(1)));
    assert!(!m.is_leader(t1 + TTL - c.margin));
    assert_eq!(m.term(), Some(tm(10)), "renewing keeps the term");
    assert_eq!(m.poll_timeout(), Some(t1 + c.renew_interval));
    m.handle_timeout(t1 + c.renew_interval);
    assert_eq!(drain(&mut m).0, vec![Action::Renew { revision: 11 }]);
}

#[test]
fn renew_conflict_stops_work_at_once() {
    let t0 = Instant::now();
    let c = cfg();
    let mut m = leader(t0);
    let t1 = t0 + c.renew_interval;
    m.handle_timeout(t1);
    assert_eq!(drain(&mut m).0, vec![Action::Renew { revision: 10 }]);
    m.handle(
        t1,
        Input::Conflict {
            holder: Some(holder("b", 12)),
            ours: None,
        },
    );
    let (actions, events) = drain(&mut m);
    assert_eq!(actions, vec![stop(10)]);
    assert_eq!(
        events,
        vec![
            Event::Lost {
                term: tm(10),
                reason: LostReason::Conflict
            },
            Event::Following {
                leader: Some(holder("b", 12))
            },
        ]
    );
    assert!(!m.is_leader(t1));
}

#[test]
fn renew_timeout_retries_and_keeps_leading_until_the_deadline() {
    let t0 = Instant::now();
    let c = cfg();
    let mut m = leader(t0);
    let mut t = t0 + c.renew_interval;
    m.handle_timeout(t);
    assert_eq!(drain(&mut m).0, vec![Action::Renew { revision: 10 }]);
    m.handle(t, Input::Failed);
    assert!(m.is_leader(t));
    assert_eq!(m.poll_timeout(), Some(t + c.retry_interval));
    // Keep failing: each retry is a renew on the same revision...
    let deadline = t0 + TTL - c.margin;
    let mut stopped = false;
    while t < deadline + c.retry_interval {
        t += c.retry_interval;
        m.handle_timeout(t);
        let (actions, events) = drain(&mut m);
        if t >= deadline {
            // ...until the deadline: self-fence, then try to reclaim our own key.
            assert_eq!(actions, vec![stop(10), Action::Reclaim { revision: 10 }]);
            assert_eq!(
                events,
                vec![Event::Lost {
                    term: tm(10),
                    reason: LostReason::DeadlineExpired
                }]
            );
            stopped = true;
            break;
        }
        assert_eq!(actions, vec![Action::Renew { revision: 10 }]);
        m.handle(t, Input::Failed);
    }
    assert!(stopped);
    assert!(!m.is_leader(t));
}

/// Issue 15, item 7: work that ignores `lost` is aborted `margin / 2` before the lease could
/// expire on the server (`sent + ttl`), not at it; later losses abort no later.
#[test]
fn work_is_aborted_half_the_margin_before_the_lease_expires() {
    let t0 = Instant::now();
    let c = cfg();
    let mut m = leader(t0);
    m.handle_timeout(t0 + c.renew_interval);
    let _ = drain(&mut m);
    let deadline = t0 + TTL - c.margin;
    m.handle_timeout(deadline);
    assert_eq!(
        m.poll_action(),
        Some(Action::StopWork {
            term: tm(10),
            abort_at: t0 + TTL - c.margin / 2
        })
    );
    // A conflict long before the deadline: abort half a margin after the loss.
    let mut m = leader(t0);
    let t1 = t0 + c.renew_interval;
    m.handle_timeout(t1);
    let _ = drain(&mut m);
    m.handle(
        t1,
        Input::Conflict {
            holder: None,
            ours: None,
        },
    );
    assert_eq!(
        m.poll_action(),
        Some(Action::StopWork {
            term: tm(10),
            abort_at: t1 + c.margin / 2
        })
    );
    // A process that stalled past the deadline (told only a second later) still gives the
    // work a quarter margin to see `lost`.
    let mut m = leader(t0);
    let late = t0 + TTL + Duration::from_secs(1);
    m.handle_timeout(late);
    assert_eq!(
        m.poll_action(),
        Some(Action::StopWork {
            term: tm(10),
            abort_at: late + c.margin / 4
        })
    );
}

#[test]
fn deadline_self_fence_without_any_reply() {
    let t0 = Instant::now();
    let c = cfg();
    let mut m = leader(t0);
    let t1 = t0 + c.renew_interval;
    m.handle_timeout(t1);
    assert_eq!(drain(&mut m).0, vec![Action::Renew { revision: 10 }]);
    // The renew never answers. The machine asks to be woken at the deadline.
    let deadline = t0 + TTL - c.margin;
    assert_eq!(m.poll_timeout(), Some(deadline));
    m.handle_timeout(deadline);
    assert_eq!(drain(&mut m).0, vec![stop(10)]);
    assert!(!m.is_leader(deadline));
    // The renew finally lands: the key is ours again at 11; reclaim it (new term), do not
    // resume the old one.
    m.handle(
        deadline + Duration::from_millis(5),
        Input::Updated {
            revision: 11,
            epoch: E,
        },
    );
    assert_eq!(drain(&mut m).0, vec![Action::Reclaim { revision: 11 }]);
}

#[test]
fn transient_error_then_reclaim_with_a_new_term() {
    let t0 = Instant::now();
    let c = cfg();
    let mut m = leader(t0);
    let t1 = t0 + c.renew_interval;
    m.handle_timeout(t1);
    let _ = drain(&mut m);
    let deadline = t0 + TTL - c.margin;
    // The renew fails at the deadline: fence now, try to reclaim after the retry interval.
    m.handle(deadline, Input::Failed);
    assert_eq!(drain(&mut m).0, vec![stop(10)]);
    let retry = deadline + c.retry_interval;
    assert_eq!(m.poll_timeout(), Some(retry));
    m.handle_timeout(retry);
    assert_eq!(drain(&mut m).0, vec![Action::Reclaim { revision: 10 }]);
    m.handle(
        retry,
        Input::Updated {
            revision: 15,
            epoch: E,
        },
    );
    assert_eq!(
        drain(&mut m),
        (
            vec![Action::StartWork { term: tm(15) }],
            vec![Event::Elected { term: tm(15) }]
        )
    );
    // A reclaim that finds the key taken means following.
    let mut m = leader(t0);
    m.handle_timeout(t1);
    let _ = drain(&mut m);
    m.handle(deadline, Input::Failed);
    m.handle_timeout(retry);
    assert_eq!(
        drain(&mut m).0,
        vec![stop(10), Action::Reclaim { revision: 10 }]
    );
    m.handle(
        retry,
        Input::Conflict {
            holder: Some(holder("c", 16)),
            ours: None,
        },
    );
    assert_eq!(
        drain(&mut m).1,
        vec![Event::Following {
            leader: Some(holder("c", 16))
        }]
    );
    assert!(!m.is_leader(retry));
}

#[test]
fn a_renew_that_landed_despite_a_lost_reply_keeps_leadership() {
    let t0 = Instant::now();
    let c = cfg();
    let mut m = leader(t0);
    let t1 = t0 + c.renew_interval;
    m.handle_timeout(t1);
    assert_eq!(drain(&mut m).0, vec![Action::Renew { revision: 10 }]);
    // The reply is lost; the retry finds revision 11 — our own write.
    m.handle(t1, Input::Failed);
    let t2 = t1 + c.retry_interval;
    m.handle_timeout(t2);
    assert_eq!(drain(&mut m).0, vec![Action::Renew { revision: 10 }]);
    m.handle(
        t2,
        Input::Conflict {
            holder: None,
            ours: Some(11),
        },
    );
    // Still leading, same term, no work restart; renews on 11 at once; the deadline is still
    // the one the last confirmed renew (the create at t0) gave.
    assert_eq!(
        drain(&mut m),
        (vec![Action::Renew { revision: 11 }], vec![])
    );
    assert_eq!(m.term(), Some(tm(10)));
    assert!(!m.is_leader(t0 + TTL - c.margin));
    // A follower finding its own key reclaims it.
    let mut f = Machine::new(cfg(), t0);
    let _ = drain(&mut f);
    f.handle(t0, Input::Failed);
    f.handle_timeout(t0 + c.retry_interval);
    assert_eq!(drain(&mut f).0, vec![CREATE]);
    f.handle(
        t0 + c.retry_interval,
        Input::Conflict {
            holder: None,
            ours: Some(4),
        },
    );
    assert_eq!(drain(&mut f).0, vec![Action::Reclaim { revision: 4 }]);
}

#[test]
fn a_late_create_reply_is_not_trusted() {
    let t0 = Instant::now();
    let c = cfg();
    let mut m = Machine::new(cfg(), t0);
    let _ = drain(&mut m);
    m.handle(
        t0 + TTL - c.margin,
        Input::Created {
            revision: 5,
            epoch: E,
        },
    );
    assert_eq!(drain(&mut m).0, vec![Action::Reclaim { revision: 5 }]);
    assert!(!m.is_leader(t0 + TTL - c.margin));
}

#[test]
fn resign_on_shutdown_stops_work_first() {
    let t0 = Instant::now();
    let mut m = leader(t0);
    m.handle(t0, Input::Shutdown);
    let (actions, events) = drain(&mut m);
    assert_eq!(actions, vec![stop(10), Action::Resign { revision: 10 }]);
    assert_eq!(
        events,
        vec![Event::Lost {
            term: tm(10),
            reason: LostReason::Resigned
        }]
    );
    m.handle(t0, Input::Resigned);
    assert!(m.is_stopped());
    assert_eq!(m.poll_timeout(), None);
}

#[test]
fn shutdown_with_a_renew_in_flight_resigns_with_the_revision_it_leaves() {
    let t0 = Instant::now();
    let c = cfg();
    let mut m = leader(t0);
    let t1 = t0 + c.renew_interval;
    m.handle_timeout(t1);
    let _ = drain(&mut m);
    m.handle(t1, Input::Shutdown);
    assert_eq!(drain(&mut m).0, vec![stop(10)]);
    m.handle(
        t1,
        Input::Updated {
            revision: 11,
            epoch: E,
        },
    );
    assert_eq!(drain(&mut m).0, vec![Action::Resign { revision: 11 }]);
    m.handle(t1, Input::Resigned);
    assert!(m.is_stopped());
}

/// Issue 15, item 2: a renew in flight past the deadline, then a shutdown: whatever the renew's
/// reply, the machine stops (resigning first if the key may still be ours) and never asks to
/// be woken in the past.
#[test]
fn shutdown_after_a_fence_with_a_renew_in_flight_always_ends() {
    let t0 = Instant::now();
    let c = cfg();
    let replies = [
        Input::Failed,
        Input::Updated {
            revision: 11,
            epoch: E,
        },
        Input::Conflict {
            holder: Some(holder("b", 12)),
            ours: None,
        },
        Input::Conflict {
            holder: None,
            ours: Some(11),
        },
    ];
    for reply in replies {
        let mut m = leader(t0);
        let t1 = t0 + c.renew_interval;
        m.handle_timeout(t1);
        assert_eq!(drain(&mut m).0, vec![Action::Renew { revision: 10 }]);
        let deadline = t0 + TTL - c.margin;
        m.handle_timeout(deadline);
        let _ = drain(&mut m);
        let t2 = deadline + Duration::from_millis(10);
        m.handle(t2, Input::Shutdown);
        m.handle(t2, reply.clone());
        let mut now = t2;
        for _ in 0..10 {
            if m.is_stopped() {
                break;
            }
            match drain(&mut m).0.as_slice() {
                [Action::Resign { .. }] => m.handle(now, Input::Resigned),
                [] => {
                    let t = m.poll_timeout().expect("not stopped, so it must wake up");
                    assert!(
                        t > now,
                        "after {reply:?}: a timeout in the past ({t:?} <= {now:?}): a busy loop"
                    );
                    now = t;
                    m.handle_timeout(now);
                }
                other => panic!("after {reply:?}: unexpected {other:?}"),
            }
        }
        assert!(
            m.is_stopped(),
            "after {reply:?}: never stopped: {:?}",
            m.state()
        );
        assert!(
            now <= t2 + TTL,
            "after {reply:?}: stopped only at {:?}",
            now - t2
        );
    }
}

/// A shutdown while the server never answers ends within `ttl`: the request in flight is
/// abandoned (the lease expires on the server by itself).
#[test]
fn shutdown_with_no_answer_ends_within_the_ttl() {
    let t0 = Instant::now();
    let mut m = leader(t0);
    m.handle(t0, Input::Shutdown);
    assert_eq!(
        drain(&mut m).0,
        vec![stop(10), Action::Resign { revision: 10 }]
    );
    assert_eq!(m.poll_timeout(), Some(t0 + TTL));
    m.handle_timeout(t0 + TTL);
    assert!(m.is_stopped());
    assert_eq!(m.poll_timeout(), None);
}

#[test]
fn shutdown_while_creating_gives_a_won_key_straight_back() {
    let t0 = Instant::now();
    let mut m = Machine::new(cfg(), t0);
    let _ = drain(&mut m);
    m.handle(t0, Input::Shutdown);
    assert!(!m.is_stopped(), "waits for the create in flight");
    m.handle(
        t0,
        Input::Created {
            revision: 3,
            epoch: E,
        },
    );
    assert_eq!(
        drain(&mut m),
        (vec![Action::Resign { revision: 3 }], vec![])
    );
    m.handle(t0, Input::Resigned);
    assert!(m.is_stopped());
    // A follower with nothing in flight stops at once.
    let mut m = Machine::new(cfg(), t0);
    let _ = drain(&mut m);
    m.handle(
        t0,
        Input::Conflict {
            holder: None,
            ours: None,
        },
    );
    m.handle(t0, Input::Shutdown);
    assert!(m.is_stopped());
}

#[test]
fn key_deleted_under_the_leader_stops_work() {
    let t0 = Instant::now();
    let mut m = leader(t0);
    // An old delete marker (before our term) means nothing.
    m.handle(t0, Input::KeyGone { revision: 9 });
    assert!(m.is_leader(t0));
    m.handle(t0, Input::KeyGone { revision: 12 });
    let (actions, events) = drain(&mut m);
    assert_eq!(actions, vec![stop(10), CREATE]);
    assert_eq!(
        events,
        vec![Event::Lost {
            term: tm(10),
            reason: LostReason::KeyGone
        }]
    );
}

/// Issue 15, item 3: a request that finds the bucket gone is an immediate loss, and nobody
/// contests (re-creating the bucket) before a full TTL has passed: any old leader's lease has
/// run out by then, whatever it last sent.
#[test]
fn a_missing_bucket_is_an_immediate_loss_and_everyone_waits_a_ttl() {
    let t0 = Instant::now();
    let c = cfg();
    let mut m = leader(t0);
    let t1 = t0 + c.renew_interval;
    m.handle_timeout(t1);
    assert_eq!(drain(&mut m).0, vec![Action::Renew { revision: 10 }]);
    m.handle(t1, Input::BucketGone);
    assert_eq!(
        drain(&mut m),
        (
            vec![stop(10)],
            vec![Event::Lost {
                term: tm(10),
                reason: LostReason::BucketDeleted
            }]
        )
    );
    assert!(!m.is_leader(t1));
    assert_eq!(m.poll_timeout(), Some(t1 + TTL));
    m.handle_timeout(t1 + TTL - Duration::from_millis(1));
    assert_eq!(drain(&mut m).0, vec![]);
    m.handle_timeout(t1 + TTL);
    assert_eq!(drain(&mut m).0, vec![Action::Create { make_bucket: true }]);
    m.handle(
        t1 + TTL,
        Input::Created {
            revision: 1,
            epoch: E,
        },
    );
    assert_eq!(drain(&mut m).1, vec![Event::Elected { term: tm(1) }]);
    // A follower whose create finds no bucket waits a TTL too, and even a watch saying the
    // key is gone does not make it contest sooner.
    let mut f = Machine::new(cfg(), t0);
    assert_eq!(drain(&mut f).0, vec![CREATE]);
    f.handle(t0, Input::BucketGone);
    f.handle(t0, Input::KeyGone { revision: 1 });
    assert_eq!(drain(&mut f).0, vec![]);
    assert_eq!(f.poll_timeout(), Some(t0 + TTL));
    // A shutdown meanwhile just stops.
    f.handle(t0, Input::Shutdown);
    assert!(f.is_stopped());
    // A candidate that had to create the bucket waits a TTL before its first contest.
    let mut m = Machine::contesting_at(cfg(), t0, t0 + TTL);
    assert_eq!(drain(&mut m).0, vec![]);
    assert_eq!(m.poll_timeout(), Some(t0 + TTL));
}

/// Issue 15, item 5: work that panics (or returns) while leading hands the key back: resign,
/// report why, then follow (and contest again after the poll interval).
#[test]
fn work_that_ends_hands_leadership_back() {
    let t0 = Instant::now();
    let c = cfg();
    for (panicked, reason) in [
        (true, LostReason::WorkPanicked),
        (false, LostReason::WorkEnded),
    ] {
        let mut m = leader(t0);
        // A stale report about another term changes nothing.
        m.handle(
            t0,
            Input::WorkEnded {
                term: tm(9),
                panicked,
            },
        );
        assert!(m.is_leader(t0));
        m.handle(
            t0,
            Input::WorkEnded {
                term: tm(10),
                panicked,
            },
        );
        assert_eq!(
            drain(&mut m),
            (
                vec![stop(10), Action::Resign { revision: 10 }],
                vec![Event::Lost {
                    term: tm(10),
                    reason
                }]
            )
        );
        assert!(!m.is_leader(t0));
        m.handle(t0, Input::Resigned);
        assert!(!m.is_stopped());
        // It holds off for a TTL, even when the key is seen gone again (another node's work
        // panicking too): failing work never makes an election hot loop.
        m.handle(t0, Input::KeyGone { revision: 12 });
        assert_eq!(drain(&mut m).0, vec![]);
        assert_eq!(m.poll_timeout(), Some(t0 + c.ttl));
        m.handle_timeout(t0 + c.ttl);
        assert_eq!(drain(&mut m).0, vec![CREATE]);
    }
}

#[test]
fn config_checks() {
    assert!(cfg().check().is_ok());
    assert!(
        MachineConfig::new(Duration::from_millis(900))
            .check()
            .is_err()
    );
    assert!(cfg().renew_interval(TTL).check().is_err());
    assert!(cfg().renew_interval(TTL - cfg().margin).check().is_err());
    assert!(cfg().renew_interval(Duration::ZERO).check().is_err());
    assert!(cfg().margin(TTL).check().is_err());
}

#[derive(Debug, Clone)]
enum Step {
    Wait(u64),
    Succeed,
    Conflict,
    ConflictOurs,
    Fail,
    BucketGone,
    KeyGone,
    KeyWritten,
    WorkEnded,
    Shutdown,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u64..4000).prop_map(Step::Wait),
        4 => Just(Step::Succeed),
        1 => Just(Step::Conflict),
        1 => Just(Step::ConflictOurs),
        2 => Just(Step::Fail),
        1 => Just(Step::BucketGone),
        1 => Just(Step::KeyGone),
        1 => Just(Step::KeyWritten),
        1 => Just(Step::WorkEnded),
        1 => (0u8..20).prop_map(|n| if n == 0 { Step::Shutdown } else { Step::Wait(10) }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Over any sequence of replies, observations and delays, the machine never claims to
    /// lead, nor lets work run, past `sent + ttl - margin` of the last request that succeeded;
    /// work starts and stops in pairs; at most one request is outstanding.
    #[test]
    fn never_leader_past_the_deadline(steps in proptest::collection::vec(step(), 1..120)) {
        let c = cfg();
        let t0 = Instant::now();
        let mut now = t0;
        let mut m = Machine::new(c, t0);
        let mut revision = 1u64;
        let mut pending: Option<(Action, Instant)> = None;
        let mut valid_until: Option<Instant> = None;
        let mut working: Option<Term> = None;
        let check = |m: &mut Machine, now: Instant,
                         pending: &mut Option<(Action, Instant)>,
                         working: &mut Option<Term>,
                         valid_until: Option<Instant>| -> Result<(), TestCaseError> {
            while let Some(a) = m.poll_action() {
                match a {
                    Action::StartWork { term } => {
                        prop_assert!(working.is_none(), "work started twice");
                        *working = Some(term);
                    }
                    Action::StopWork { term, abort_at } => {
                        prop_assert_eq!(*working, Some(term), "stopping work not running");
                        // Work that ignores `lost` is aborted half the margin before the
                        // lease could expire on the server.
                        let until = valid_until.expect("work ran without a successful request");
                        // (The driver here is never late: a stalled process gets a quarter
                        // margin from when it runs again.)
                        prop_assert!(abort_at <= (until + c.margin / 2).max(now + c.margin / 4), "abort at {:?} past the bound", abort_at - until);
                        *working = None;
                    }
                    other => {
                        prop_assert!(pending.is_none(), "two requests in flight: {:?}", other);
                        *pending = Some((other, now));
                    }
                }
            }
            if m.is_leader(now) || working.is_some() {
                let until = valid_until.expect("leading without any successful request");
                prop_assert!(now < until, "leading {:?} past the lease bound", now - until);
            }
            Ok(())
        };
        check(&mut m, now, &mut pending, &mut working, valid_until)?;
        for s in steps {
            match s {
                Step::Wait(ms) => {
                    let target = now + Duration::from_millis(ms);
                    // The driver wakes at every timeout before the target, as a real one would.
                    while let Some(t) = m.poll_timeout().filter(|t| *t <= target) {
                        now = t.max(now);
                        m.handle_timeout(now);
                        check(&mut m, now, &mut pending, &mut working, valid_until)?;
                        let next = m.poll_timeout();
                        prop_assert!(next.is_none_or(|n| n > t), "handling the timeout {:?} left it at {:?}: a busy loop", t, next);
                    }
                    now = target;
                    m.handle_timeout(now);
                }
                Step::Succeed => {
                    if let Some((a, sent)) = pending.take() {
                        revision += 1;
                        let input = match a {
                            Action::Create { .. } => Input::Created { revision, epoch: E },
                            Action::Renew { .. } | Action::Reclaim { .. } => Input::Updated { revision, epoch: E },
                            _ => Input::Resigned,
                        };
                        if !matches!(a, Action::Resign { .. }) {
                            valid_until = Some(sent + c.ttl - c.margin);
                        }
                        m.handle(now, input);
                    }
                }
                Step::Conflict => {
                    if pending.take().is_some() {
                        revision += 1;
                        m.handle(now, Input::Conflict { holder: Some(holder("x", revision)), ours: None });
                    }
                }
                Step::ConflictOurs => {
                    // Only sound when our earlier write really landed: model it as the last
                    // failed request having landed, which cannot extend the bound.
                    if pending.take().is_some() {
                        revision += 1;
                        m.handle(now, Input::Conflict { holder: None, ours: Some(revision) });
                    }
                }
                Step::Fail => {
                    if pending.take().is_some() {
                        m.handle(now, Input::Failed);
                    }
                }
                Step::BucketGone => {
                    if pending.take().is_some() {
                        m.handle(now, Input::BucketGone);
                    }
                }
                Step::KeyGone => {
                    revision += 1;
                    m.handle(now, Input::KeyGone { revision });
                }
                Step::KeyWritten => m.handle(now, Input::KeyWritten { holder: holder("y", revision) }),
                Step::WorkEnded => {
                    if let Some(term) = working {
                        m.handle(now, Input::WorkEnded { term, panicked: true });
                    }
                }
                Step::Shutdown => m.handle(now, Input::Shutdown),
            }
            check(&mut m, now, &mut pending, &mut working, valid_until)?;
        }
        // Whatever happened, a shutdown ends: the machine stops within `ttl` of it, whether
        // requests are answered (in turn: failed, conflict, success) or never.
        let shut_at = now;
        m.handle(now, Input::Shutdown);
        check(&mut m, now, &mut pending, &mut working, valid_until)?;
        for i in 0..50u32 {
            if m.is_stopped() {
                break;
            }
            if let Some((a, _)) = pending.take() {
                revision += 1;
                let input = match (i % 3, a) {
                    (0, _) => Input::Failed,
                    (1, _) => Input::Conflict { holder: Some(holder("z", revision)), ours: None },
                    (_, Action::Create { .. }) => Input::Created { revision, epoch: E },
                    (_, Action::Resign { .. }) => Input::Resigned,
                    _ => Input::Updated { revision, epoch: E },
                };
                m.handle(now, input);
            } else {
                let t = m.poll_timeout();
                prop_assert!(t.is_some(), "not stopped and nothing to wait for: {:?}", m.state());
                let t = t.unwrap_or(now);
                prop_assert!(t > now || t == now && i == 0, "timeout in the past: a busy loop");
                now = t.max(now);
                m.handle_timeout(now);
            }
            check(&mut m, now, &mut pending, &mut working, valid_until)?;
        }
        prop_assert!(m.is_stopped(), "never stopped after shutdown: {:?}", m.state());
        prop_assert!(working.is_none(), "stopped with work running");
        prop_assert!(now <= shut_at + c.ttl, "stopped {:?} after shutdown", now - shut_at);
    }
}
