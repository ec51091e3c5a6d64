//! A bounded, honest stop (`ConsumeOptions::stop_timeout`), a hung handler cut off
//! (`ConsumeOptions::handler_timeout`), and delays that never panic.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use natty_core::{Client, ConnectOptions};
use natty_stream::{
    Action, CancellationToken, ConsumeOptions, Consumer, ConsumerConfig, ConsumerStats,
    HandlerError, Message, Publisher, StreamConfig, ensure_consumer, ensure_stream,
};
use natty_testkit::{Nats, init_tracing, unique_name, wait_for};

struct Setup {
    _nats: Nats,
    url: String,
    client: Client,
    stream: String,
}

async fn setup(ack_wait: Duration) -> anyhow::Result<Setup> {
    init_tracing();
    let nats = Nats::start().await?;
    let client = ConnectOptions::new([nats.url()]).connect().await?;
    let stream = unique_name("T").replace('-', "_");
    ensure_stream(
        &client,
        &StreamConfig::new(&stream, [format!("{stream}.>")]),
    )
    .await?;
    ensure_consumer(
        &client,
        &ConsumerConfig::new(&stream, "workers").ack_wait(ack_wait),
    )
    .await?;
    Ok(Setup {
        url: nats.url(),
        _nats: nats,
        client,
        stream,
    })
}

/// Publishes `0..n` on `<stream>.k` (one key when ordered by subject token 1).
async fn publish_n(s: &Setup, n: u64) -> anyhow::Result<()> {
    let p = Publisher::new(s.client.clone());
    for i in 0..n {
        p.publish(&format!("{}.k", s.stream), i.to_string().into())
            .await?;
    }
    Ok(())
}

fn num(m: &Message) -> u64 {
    std::str::from_utf8(&m.payload).unwrap().parse().unwrap()
}

/// Numbers whose handler ran to its end, in that order, with the consumer that ran it.
type Done = Arc<Mutex<Vec<(u64, &'static str)>>>;
type Task = tokio::task::JoinHandle<Result<ConsumerStats, natty_stream::Error>>;

/// Consumes `workers` as `who`; each handler sleeps `pause`, then records its number.
fn start(
    client: Client,
    stream: &str,
    options: ConsumeOptions,
    who: &'static str,
    started: Arc<Mutex<Vec<u64>>>,
    done: Done,
    pause: Duration,
) -> (CancellationToken, Consumer, Task) {
    let consumer = Consumer::new(client, stream, "workers", options).unwrap();
    let cancel = CancellationToken::new();
    let (c, k) = (consumer.clone(), cancel.clone());
    let task = tokio::spawn(async move {
        c.consume(k, move |m: Message| {
            let (started, done) = (started.clone(), done.clone());
            async move {
                let n = num(&m);
                started.lock().unwrap().push(n);
                tokio::time::sleep(pause).await;
                done.lock().unwrap().push((n, who));
                Ok(())
            }
        })
        .await
    });
    (cancel, consumer, task)
}

/// Ordered by key, one key, 50 pulled messages of 100 ms each: the stop ends by its deadline
/// (not after the 5 s it takes to run them all), hands the rest back at once, and the next
/// (exclusive) reader runs them in order.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn an_ordered_stop_ends_by_its_deadline_and_hands_back_the_rest() -> anyhow::Result<()> {
    const N: u64 = 50;
    let s = setup(Duration::from_secs(30)).await?;
    publish_n(&s, N).await?;
    let options = ConsumeOptions::default()
        .ordered_by_subject_token(1)
        .exclusive(true)
        .batch(50)
        .stop_timeout(Duration::from_secs(1));
    let (started, done) = (Arc::default(), Done::default());
    let pause = Duration::from_millis(100);
    let (cancel, _, task) = start(
        s.client.clone(),
        &s.stream,
        options.clone(),
        "first",
        Arc::clone(&started),
        done.clone(),
        pause,
    );
    wait_for("the first handlers", Duration::from_secs(10), || async {
        (started.lock().unwrap().len() >= 2).then_some(())
    })
    .await?;
    let stopping = Instant::now();
    cancel.cancel();
    let first = task.await??;
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "stop_timeout 1 s, the stop took {took:?} ({first:?})"
    );
    assert!(first.naked > 0, "nothing handed back: {first:?}");
    let (cancel, _, task) = start(
        s.client.clone(),
        &s.stream,
        options,
        "second",
        Arc::clone(&started),
        done.clone(),
        Duration::ZERO,
    );
    wait_for("every message handled", Duration::from_secs(10), || async {
        (done.lock().unwrap().len() as u64 >= N).then_some(())
    })
    .await?;
    cancel.cancel();
    let second = task.await??;
    let order: Vec<u64> = done.lock().unwrap().iter().map(|(n, _)| *n).collect();
    assert_eq!(
        order,
        (0..N).collect::<Vec<_>>(),
        "per-key order across the stop ({first:?}, {second:?})"
    );
    Ok(())
}

/// While an ordered stop works through what it pulled, the messages still waiting are kept
/// alive: a peer on the same durable never gets them after `ack_wait` and runs them a second
/// time.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn messages_waiting_during_an_ordered_stop_are_kept_alive() -> anyhow::Result<()> {
    const N: u64 = 20;
    let s = setup(Duration::from_secs(1)).await?;
    publish_n(&s, N).await?;
    let (started, done) = (Arc::default(), Done::default());
    let pause = Duration::from_millis(300);
    let options = ConsumeOptions::default()
        .ordered_by_subject_token(1)
        .batch(20)
        .stop_timeout(Duration::from_secs(4));
    let (cancel_a, _, task_a) = start(
        s.client.clone(),
        &s.stream,
        options.clone(),
        "a",
        Arc::clone(&started),
        done.clone(),
        pause,
    );
    wait_for("a's first handler", Duration::from_secs(10), || async {
        (!started.lock().unwrap().is_empty()).then_some(())
    })
    .await?;
    let client_b = ConnectOptions::new([s.url.clone()]).connect().await?;
    let (cancel_b, _, task_b) = start(
        client_b,
        &s.stream,
        options,
        "b",
        Arc::clone(&started),
        done.clone(),
        pause,
    );
    cancel_a.cancel();
    let a = task_a.await??;
    wait_for("every message handled", Duration::from_secs(30), || async {
        let handled: std::collections::HashSet<u64> =
            done.lock().unwrap().iter().map(|(n, _)| *n).collect();
        (handled.len() as u64 == N).then_some(())
    })
    .await?;
    cancel_b.cancel();
    let b = task_b.await??;
    let mut times: HashMap<u64, Vec<&str>> = HashMap::new();
    for (n, who) in done.lock().unwrap().iter() {
        times.entry(*n).or_default().push(who);
    }
    let twice: Vec<_> = times.iter().filter(|(_, w)| w.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "run twice (kept alive? a {a:?}, b {b:?}): {twice:?}"
    );
    Ok(())
}

/// Issue 24 item 4: a handler that hangs is cancelled after `handler_timeout`; its message
/// fails as retryable (reported, counted, retried), the slot is free again.
async fn a_hung_handler_is_cancelled_and_retried(options: ConsumeOptions) -> anyhow::Result<()> {
    let s = setup(Duration::from_secs(30)).await?;
    publish_n(&s, 2).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let options = options
        .handler_timeout(Some(Duration::from_millis(500)))
        .retry_delay(Duration::from_millis(100), Duration::from_millis(100))
        .errors(tx);
    let consumer = Consumer::new(s.client.clone(), &s.stream, "workers", options)?;
    let dropped = Arc::new(AtomicBool::new(false));
    let done = Done::default();
    let cancel = CancellationToken::new();
    let (c, k, d, dn) = (
        consumer.clone(),
        cancel.clone(),
        dropped.clone(),
        done.clone(),
    );
    let task = tokio::spawn(async move {
        c.consume(k, move |m: Message| {
            let (dropped, done) = (d.clone(), dn.clone());
            async move {
                let n = num(&m);
                if n == 0 && m.delivered == 1 {
                    // Hangs forever; tells when its future is dropped.
                    struct Guard(Arc<AtomicBool>);
                    impl Drop for Guard {
                        fn drop(&mut self) {
                            self.0.store(true, Ordering::SeqCst);
                        }
                    }
                    let _guard = Guard(dropped);
                    std::future::pending::<()>().await;
                }
                done.lock().unwrap().push((n, "only"));
                Ok(())
            }
        })
        .await
    });
    wait_for("both handled", Duration::from_secs(10), || async {
        (done.lock().unwrap().len() >= 2).then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}: {:?}", consumer.stats()))?;
    assert!(
        dropped.load(Ordering::SeqCst),
        "the hung handler was not cancelled"
    );
    let report = rx.try_recv()?;
    assert!(report.error.reason().contains("timed out"), "{report}");
    assert_eq!(report.stream_sequence, 1);
    assert!(
        matches!(report.action, Action::Nak { .. } | Action::Held { .. }),
        "{report}"
    );
    cancel.cancel();
    let stats = task.await??;
    assert_eq!(stats.acked, 2, "{stats:?}");
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_hung_inline_handler_is_cancelled_and_retried() -> anyhow::Result<()> {
    a_hung_handler_is_cancelled_and_retried(ConsumeOptions::default()).await
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_hung_ordered_handler_is_cancelled_and_retried_in_place() -> anyhow::Result<()> {
    a_hung_handler_is_cancelled_and_retried(ConsumeOptions::default().ordered_by_subject_token(1))
        .await
}

/// Issue 24 item 5: `retry_after(_, Duration::MAX)` neither panics (ordered: `Instant +
/// delay`) nor turns into an immediate redelivery (the server cannot parse the nanoseconds
/// and redelivers at once): the delay is clamped to 24 h.
async fn the_longest_retry_delay_is_clamped(options: ConsumeOptions) -> anyhow::Result<()> {
    let s = setup(Duration::from_secs(30)).await?;
    publish_n(&s, 1).await?;
    let runs = Arc::new(Mutex::new(Vec::new()));
    let consumer = Consumer::new(s.client.clone(), &s.stream, "workers", options)?;
    let cancel = CancellationToken::new();
    let (c, k, r) = (consumer.clone(), cancel.clone(), runs.clone());
    let task = tokio::spawn(async move {
        c.consume(k, move |m: Message| {
            r.lock().unwrap().push(m.delivered);
            async { Err(HandlerError::retry_after("much later", Duration::MAX)) }
        })
        .await
    });
    wait_for("the first run", Duration::from_secs(10), || async {
        (!runs.lock().unwrap().is_empty()).then_some(())
    })
    .await?;
    // Well past an immediate redelivery (and the pull loop's next turn).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!task.is_finished(), "consume ended: {:?}", task.await);
    assert_eq!(*runs.lock().unwrap(), [1], "retried at once");
    cancel.cancel();
    let stats = task.await??;
    assert_eq!(stats.acked, 0, "{stats:?}");
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn the_longest_retry_delay_is_clamped_on_a_nak() -> anyhow::Result<()> {
    the_longest_retry_delay_is_clamped(ConsumeOptions::default()).await
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn the_longest_retry_delay_is_clamped_when_held_for_its_key() -> anyhow::Result<()> {
    the_longest_retry_delay_is_clamped(ConsumeOptions::default().ordered_by_subject_token(1)).await
}
