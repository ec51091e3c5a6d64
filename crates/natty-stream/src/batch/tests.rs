//! Unit tests of the publisher's handle and settings (no server).

use std::{sync::Arc, time::Duration};

use tokio::sync::mpsc;

use super::{
    BatchConfig, BatchPublisher, Command, gate::Gate, handback::Handback, route::subject_matches,
};
use crate::ErrorKind;

/// A client that never connects (nothing listens there): enough for the handle's own paths.
async fn offline_client() -> natty_core::Client {
    let nats = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect("nats://127.0.0.1:1")
        .await
        .unwrap();
    natty_core::Client::new(nats, Duration::from_secs(1))
}

fn publisher(
    tx: mpsc::UnboundedSender<Command>,
    task: tokio::task::JoinHandle<()>,
    client: natty_core::Client,
) -> BatchPublisher {
    BatchPublisher::from_parts(
        tx,
        Arc::new(Gate::new(8)),
        Arc::new(Handback::new(8)),
        Arc::default(),
        client,
        task,
        "p".into(),
    )
}

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
    let task = tokio::spawn(async move {
        let _rx = rx;
        panic!("boom");
    });
    while !task.is_finished() {
        tokio::task::yield_now().await;
    }
    let p = publisher(tx, task, offline_client().await);
    let e = p.flush().await.expect_err("flush after a panic");
    assert_eq!(e.kind(), ErrorKind::Panicked, "{e}");
    let e = p.flush_all().await.expect_err("strict flush after a panic");
    assert_eq!(
        e.error.as_ref().map(|e| e.kind()),
        Some(ErrorKind::Panicked),
        "{e}"
    );
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
    // A task that acknowledges the close, then dies.
    let task = tokio::spawn(async move {
        if let Some(Command::Close(done)) = rx.recv().await {
            let _ = done.send(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        panic!("late boom");
    });
    let p = publisher(tx, task, offline_client().await);
    let dropped = tokio::time::timeout(Duration::from_millis(50), p.close()).await;
    assert!(
        dropped.is_err(),
        "the first close is dropped while it waits for the task"
    );
    let e = p.close().await.expect_err("the task panicked after all");
    assert_eq!(e.kind(), ErrorKind::Panicked, "{e}");
}

#[tokio::test]
async fn a_message_the_server_would_refuse_is_not_queued() {
    let client = offline_client().await;
    let max = client.nats().max_payload();
    assert!(max > 0, "async-nats' default before any INFO");
    let p = BatchPublisher::new(client, BatchConfig::default()).unwrap();
    let cases = [
        ("over max_payload", "a.b".to_owned(), max + 1),
        (
            "max_payload, plus natty's Nats-Msg-Id",
            "a.b".to_owned(),
            max,
        ),
        (
            "a 5,000-byte subject",
            format!("a.{}", "b".repeat(5_000)),
            1,
        ),
    ];
    for (what, subject, len) in cases {
        let e = p.send(&subject, vec![0; len].into()).await.expect_err(what);
        assert_eq!(e.kind(), ErrorKind::TooLarge, "{what}: {e}");
        let e = p.try_send(&subject, vec![0; len].into()).expect_err(what);
        assert_eq!(e.kind(), ErrorKind::TooLarge, "{what}: {e}");
    }
    assert_eq!(p.stats().queued, 0, "nothing queued");
}
