use super::*;

const P: &str = "0123456789abcdefghijKL";

fn id(n: u64) -> String {
    format!("{P}-{n}")
}

fn run(ids: &[(u64, Option<String>)]) -> (Vec<PublisherAudit>, u64) {
    let mut t = Tally::new();
    for (seq, id) in ids {
        t.observe(*seq, id.as_deref());
    }
    t.finish()
}

fn numbered(ns: &[u64]) -> Vec<(u64, Option<String>)> {
    ns.iter()
        .enumerate()
        .map(|(i, n)| (i as u64 + 1, Some(id(*n))))
        .collect()
}

#[test]
fn generated_ids_are_recognised_and_others_are_not() {
    assert_eq!(parse_generated(&id(7)), Some((P, 7)));
    let prefixed = format!("orders-service-{P}-12");
    assert_eq!(
        parse_generated(&prefixed),
        Some((format!("orders-service-{P}").as_str(), 12))
    );
    let custom_inbox = format!("my.inbox.{P}-3");
    assert_eq!(parse_generated(&custom_inbox).map(|(_, n)| n), Some(3));
    for other in [
        "order-123",
        "123",
        "",
        "natty-dl:S:d:4",
        &format!("{P}-0"),
        &format!("{P}-x"),
    ] {
        assert_eq!(parse_generated(other), None, "{other:?}");
    }
}

#[test]
fn a_clean_stream_has_one_range_and_no_findings() {
    let (ps, unnumbered) = run(&numbered(&(1..=1000).collect::<Vec<_>>()));
    assert_eq!(unnumbered, 0);
    assert_eq!(ps.len(), 1);
    let p = &ps[0];
    assert_eq!((p.messages, p.numbers.clone()), (1000, 1..=1000));
    assert!(p.missing.is_empty() && p.duplicates == 0 && p.out_of_order == 0);
}

#[test]
fn gaps_are_reported_as_ranges() {
    let mut ns: Vec<u64> = (1..=20).collect();
    ns.retain(|n| *n != 5 && !(10..=12).contains(n));
    let (ps, _) = run(&numbered(&ns));
    assert_eq!(ps[0].missing, vec![5..=5, 10..=12]);
    assert_eq!(ps[0].missing_count(), 4);
    assert_eq!(Ranges(&ps[0].missing).to_string(), "5, 10-12");
}

#[test]
fn a_repeat_is_a_duplicate_with_its_stream_sequence() {
    let (ps, _) = run(&numbered(&[1, 2, 3, 2, 4]));
    let p = &ps[0];
    assert_eq!(p.duplicates, 1);
    assert_eq!(
        p.duplicate_examples,
        vec![Repeat {
            number: 2,
            sequence: 4
        }]
    );
    assert!(p.missing.is_empty());
    assert_eq!(p.out_of_order, 0, "a duplicate is not also out of order");
}

#[test]
fn a_late_message_is_out_of_order_and_fills_its_gap() {
    let (ps, _) = run(&numbered(&[1, 2, 4, 5, 3, 6]));
    let p = &ps[0];
    assert_eq!(p.out_of_order, 1);
    assert_eq!(p.out_of_order_examples[0].number, 3);
    assert!(p.missing.is_empty(), "{:?}", p.missing);
    assert_eq!(p.numbers, 1..=6);
}

#[test]
fn publishers_are_kept_apart_and_foreign_ids_counted() {
    let q = "ZYXWVUTSRQPONMLKJIHGFE";
    let ids = vec![
        (1, Some(id(1))),
        (2, Some(format!("{q}-1"))),
        (3, None),
        (4, Some("my-own-id".to_owned())),
        (5, Some(format!("{q}-3"))),
        (6, Some(id(2))),
    ];
    let (ps, unnumbered) = run(&ids);
    assert_eq!(unnumbered, 2);
    assert_eq!(ps.len(), 2);
    let q_audit = ps.iter().find(|p| p.publisher == q).unwrap();
    assert_eq!(q_audit.missing, vec![2..=2]);
    let p_audit = ps.iter().find(|p| p.publisher == P).unwrap();
    assert!(p_audit.missing.is_empty());
}

#[test]
fn ranges_merge_in_any_order() {
    // Every permutation-ish order of 1..=9 ends as one range, each number once.
    let orders: [&[u64]; 3] = [
        &[9, 7, 5, 3, 1, 2, 4, 6, 8],
        &[5, 4, 6, 3, 7, 2, 8, 1, 9],
        &[2, 1, 4, 3, 6, 5, 8, 7, 9],
    ];
    for order in orders {
        let (ps, _) = run(&numbered(order));
        let p = &ps[0];
        assert!(p.missing.is_empty(), "{order:?}: {:?}", p.missing);
        assert_eq!(p.duplicates, 0, "{order:?}");
        assert_eq!(p.numbers, 1..=9);
    }
}

#[test]
fn examples_are_capped_and_counts_exact() {
    let mut ns: Vec<u64> = (1..=10).collect();
    ns.extend(std::iter::repeat_n(3, EXAMPLES + 50));
    let (ps, _) = run(&numbered(&ns));
    assert_eq!(ps[0].duplicates, EXAMPLES as u64 + 50);
    assert_eq!(ps[0].duplicate_examples.len(), EXAMPLES);
}
