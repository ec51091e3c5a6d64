//! The judge certifies the election's safety: it must fail on each violation it claims to
//! catch. Synthetic candidate lines, one per case.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use natty_chaos::{Event, Line};
use natty_testkit::procs::{Lines, Term};

use super::election_checks;

fn at(event: Event, proc: &str, mono_ns: u64) -> Line {
    Line {
        node: proc.into(),
        mono_ns,
        event,
        proc: proc.into(),
    }
}

fn tm(revision: u64) -> Term {
    Term { epoch: 5, revision }
}

fn line(event: &str, proc: &str, revision: u64, mono_ns: u64) -> Line {
    let term = tm(revision);
    let event = match event {
        "elected" => Event::Elected { term, server: None },
        "work" => Event::Work {
            term,
            checked_ns: mono_ns,
        },
        "lost" => Event::Lost { term },
        other => panic!("no such event {other}"),
    };
    at(event, proc, mono_ns)
}

fn sink(proc: &str, revision: u64, accepted: bool, issued_ns: u64, mono_ns: u64) -> Line {
    let event = Event::Sink {
        term: tm(revision),
        accepted,
        issued_ns,
    };
    at(event, proc, mono_ns)
}

/// The verdict of the check whose name starts with `name`.
fn verdict(lines: &[Line], name: &str) -> bool {
    election_checks(lines, &[])
        .into_iter()
        .find(|c| c.name.starts_with(name))
        .unwrap()
        .passed
}

fn clean() -> Vec<Line> {
    vec![
        line("elected", "a#0", 10, 100),
        line("work", "a#0", 10, 110),
        line("work", "a#0", 10, 200),
        sink("a#0", 10, true, 150, 160),
        line("lost", "a#0", 10, 300),
        line("elected", "b#0", 20, 400),
        line("work", "b#0", 20, 410),
        sink("b#0", 20, true, 420, 430),
        // a late write of the old term, refused by the fence: fine
        sink("a#0", 10, false, 250, 450),
    ]
}

#[test]
fn a_clean_history_passes_every_check() {
    let checks = election_checks(&clean(), &[]);
    assert_eq!(checks.len(), 5);
    for c in checks {
        assert!(c.passed, "{}: {}", c.name, c.detail);
    }
}

#[test]
fn overlapping_terms_fail() {
    let mut lines = clean();
    lines.retain(|l| !matches!(l.event, Event::Lost { .. }));
    lines.push(line("work", "a#0", 10, 415)); // a still works after b started (410)
    assert!(verdict(&lines, "no work after `lost`"));
    assert!(!verdict(&lines, "leaders never act at once"));
}

#[test]
fn work_after_lost_fails() {
    let mut lines = clean();
    lines.push(line("work", "a#0", 10, 301));
    assert!(!verdict(&lines, "no work after `lost`"));
}

#[test]
fn a_stale_sink_write_accepted_fails() {
    let mut lines = clean();
    // issued by term 10 after term 20 was elected, and accepted
    lines.push(sink("a#0", 10, true, 405, 406));
    assert!(!verdict(&lines, "fenced sink accepted zero stale writes"));
}

#[test]
fn terms_going_backwards_fail() {
    let mut lines = clean();
    // after a bucket re-creation with a broken term: epoch 5, revision 1 < 20
    lines.push(line("elected", "c#0", 1, 500));
    assert!(!verdict(&lines, "terms strictly increase"));
    // a re-created bucket's term (later epoch, low revision) is higher: fine
    let mut lines = clean();
    let term = Term {
        epoch: 6,
        revision: 1,
    };
    lines.push(at(Event::Elected { term, server: None }, "c#0", 500));
    assert!(verdict(&lines, "terms strictly increase"));
}

#[test]
fn a_line_without_a_readable_term_is_a_failure_not_term_zero() {
    // Before the typed lines, `as_u64().unwrap_or(0)` read a missing term as 0.
    let printed = Lines::default();
    printed.push_text(
        "a#0",
        r#"{"node":"a","mono_ns":100,"event":"elected","term":{"epoch":5,"revision":10}}"#,
    );
    printed.push_text(
        "b#0",
        r#"{"node":"b","mono_ns":200,"event":"elected","term":"garbage"}"#,
    );
    let checks = election_checks(&printed.all(), &printed.unreadable());
    assert!(!checks[0].passed, "{:?}", checks[0]);
    assert!(checks[1..].iter().all(|c| c.passed), "{checks:?}");
}

fn stop(proc: &str, ms: u64) -> crate::faults::deploys::Stop {
    crate::faults::deploys::Stop {
        proc: proc.into(),
        signalled_ns: 1_000_000_000,
        exited_ns: 1_000_000_000 + ms * 1_000_000,
        error: None,
    }
}

#[test]
fn a_stop_past_its_deadline_fails_the_stop_check() {
    use super::rolling::{stop_bound, stops};
    let consumer = u64::try_from(stop_bound("p0#1").as_millis()).unwrap();
    let member = u64::try_from(stop_bound("r0#1").as_millis()).unwrap();
    // A member also leaves the group: it may take longer than a consumer.
    assert!(member > consumer);
    let within = [
        stop("p0#1", consumer),
        stop("o0#1", 10),
        stop("r0#1", member),
    ];
    let c = stops(&within);
    assert!(c.passed, "{}", c.detail);
    for late in [stop("o0#2", consumer + 1), stop("r0#2", member + 1)] {
        let mut all = within.to_vec();
        all.push(late);
        let c = stops(&all);
        assert!(!c.passed, "{}", c.detail);
        assert!(c.detail.contains("1 over"), "{}", c.detail);
    }
    // No stop at all proves nothing.
    assert!(!stops(&[]).passed);
}
