//! Unit tests of the publisher's handle and settings (no server).

use std::{sync::Arc, time::Duration};

use tokio::sync::mpsc;

use super::{BatchConfig, BatchPublisher, Command, gate::Gate, route::subject_matches};
use crate::ErrorKind;

#[test]
fn subjects_match_filters() {
    let cases = [
        ("orders.>", "orders.created", true),
        ("orders.>", "orders.a.b", true),
        ("orders.>", "orders", false),
        ("orders.*", "orders.created", true),
        ("orders.*", "orders.a.b", false),
        ("orders.created", "orders.created", true),
        ("orders.created", "orders.deleted", false),
        ("*.created", "orders.created", true),
        (">", "anything.at.all", true),
    ];
    for (filter, subject, want) in cases {
        assert_eq!(
            subject_matches(filter, subject),
            want,
            "{filter} ~ {subject}"
        );
    }
}

#[tokio::test]
async fn a_panicked_task_fails_flush_and_close() {
    let (tx, rx) = mpsc::unbounded_channel::<Command>();
    let (_failed_tx, failed_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let _rx = rx;
        panic!("boom");
    });
    while !task.is_finished() {
        tokio::task::yield_now().await;
    }
    let p = BatchPublisher::from_parts(
        tx,
        Arc::new(Gate::new(8)),
        failed_rx,
        Arc::default(),
        task,
        "p".into(),
    );
    let e = p.flush().await.expect_err("flush after a panic");
    assert_eq!(e.kind(), ErrorKind::Panicked, "{e}");
    let e = p.close().await.expect_err("close after a panic");
    assert_eq!(e.kind(), ErrorKind::Panicked, "{e}");
    assert!(e.to_string().contains("boom"), "{e}");
    // And again: the outcome is remembered.
    assert_eq!(p.close().await.unwrap_err().kind(), ErrorKind::Panicked);
}

#[test]
fn overflowing_durations_and_crlf_are_config_errors() {
    for (what, cfg) in [
        (
            "ack_timeout",
            BatchConfig::default().ack_timeout(Duration::MAX),
        ),
        (
            "backoff_base",
            BatchConfig::default().backoff(Duration::MAX, Duration::MAX),
        ),
        (
            "backoff order",
            BatchConfig::default().backoff(Duration::from_secs(2), Duration::from_secs(1)),
        ),
        ("id_prefix", BatchConfig::default().id_prefix("a\r\nb")),
        ("id_prefix", BatchConfig::default().id_prefix("")),
    ] {
        let e = cfg.validate().expect_err(what);
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{what}: {e}");
    }
    assert!(BatchConfig::default().validate().is_ok());
}

#[tokio::test]
async fn a_close_dropped_half_way_leaves_the_outcome_to_the_next_close() {
    let (tx, mut rx) = mpsc::unbounded_channel::<Command>();
    let (_failed_tx, failed_rx) = mpsc::unbounded_channel();
    // A task that acknowledges the close, then dies.
    let task = tokio::spawn(async move {
        if let Some(Command::Close(done)) = rx.recv().await {
            let _ = done.send(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        panic!("late boom");
    });
    let p = BatchPublisher::from_parts(
        tx,
        Arc::new(Gate::new(8)),
        failed_rx,
        Arc::default(),
        task,
        "p".into(),
    );
    let dropped = tokio::time::timeout(Duration::from_millis(50), p.close()).await;
    assert!(
        dropped.is_err(),
        "the first close is dropped while it waits for the task"
    );
    let e = p.close().await.expect_err("the task panicked after all");
    assert_eq!(e.kind(), ErrorKind::Panicked, "{e}");
}
