//! natty-stream consuming against a real NATS server: at-least-once, no needless redelivery.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use natty_core::{Client, ConnectOptions};
use natty_stream::{
    Action, CancellationToken, ConsumeOptions, Consumer, ConsumerConfig, ErrorKind, HandlerError,
    Message, StreamConfig, ensure_consumer, ensure_stream,
};
use natty_testkit::wait_for;

mod common;
use common::{Setup, num, publish_n};

async fn setup(consumer: impl FnOnce(&str) -> ConsumerConfig) -> anyhow::Result<Setup> {
    common::setup("S", consumer).await
}

type Log = Arc<Mutex<Vec<(u64, u64, Instant)>>>; // (number, delivery count, when)

fn start(
    client: Client,
    stream: &str,
    options: ConsumeOptions,
    log: Log,
    behaviour: impl Fn(u64, u64) -> Result<Duration, HandlerError> + Send + Sync + 'static,
) -> (
    CancellationToken,
    Consumer,
    tokio::task::JoinHandle<Result<natty_stream::ConsumerStats, natty_stream::Error>>,
) {
    let consumer = Consumer::new(client, stream, "workers", options).unwrap();
    let cancel = CancellationToken::new();
    let behaviour = Arc::new(behaviour);
    let (c, k) = (consumer.clone(), cancel.clone());
    let task = tokio::spawn(async move {
        c.consume(k, move |m: Message| {
            let log = log.clone();
            let behaviour = behaviour.clone();
            async move {
                let n = num(&m);
                log.lock().unwrap().push((n, m.delivered, Instant::now()));
                let pause = behaviour(n, m.delivered)?;
                tokio::time::sleep(pause).await;
                Ok(())
            }
        })
        .await
    });
    (cancel, consumer, task)
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_retryable_failure_is_redelivered_after_the_nak_delay_not_ack_wait() -> anyhow::Result<()>
{
    let s =
        setup(|st| ConsumerConfig::new(st, "workers").ack_wait(Duration::from_secs(30))).await?;
    publish_n(&s, 1).await?;
    let log = Log::default();
    let options =
        ConsumeOptions::default().retry_delay(Duration::from_millis(300), Duration::from_secs(5));
    let (cancel, _, task) = start(
        s.client.clone(),
        &s.stream,
        options,
        log.clone(),
        |_, delivered| {
            if delivered == 1 {
                Err(HandlerError::retry("not yet"))
            } else {
                Ok(Duration::ZERO)
            }
        },
    );
    wait_for("the redelivery", Duration::from_secs(10), || async {
        (log.lock().unwrap().len() >= 2).then_some(())
    })
    .await?;
    let l = log.lock().unwrap().clone();
    let gap = l[1].2 - l[0].2;
    assert_eq!((l[0].1, l[1].1), (1, 2));
    assert!(
        gap >= Duration::from_millis(250),
        "redelivered before the nak delay: {gap:?}"
    );
    assert!(
        gap < Duration::from_secs(5),
        "redelivered only after {gap:?}: the nak delay was ignored"
    );
    cancel.cancel();
    let stats = task.await??;
    assert_eq!(
        (stats.naked, stats.acked, stats.redelivered),
        (1, 1, 1),
        "{stats:?}"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_permanent_failure_is_dead_lettered_and_never_redelivered() -> anyhow::Result<()> {
    let s = setup(|st| ConsumerConfig::new(st, "workers").ack_wait(Duration::from_secs(1))).await?;
    let dlq = format!("{}_DLQ", s.stream);
    ensure_stream(&s.client, &StreamConfig::new(&dlq, [format!("{dlq}.>")])).await?;
    publish_n(&s, 3).await?;
    let log = Log::default();
    let options = ConsumeOptions::default().dead_letter(format!("{dlq}.orders"));
    let (cancel, _, task) = start(s.client.clone(), &s.stream, options, log.clone(), |n, _| {
        if n == 1 {
            Err(HandlerError::permanent("malformed order"))
        } else {
            Ok(Duration::ZERO)
        }
    });
    wait_for("three messages", Duration::from_secs(10), || async {
        (log.lock().unwrap().len() >= 3).then_some(())
    })
    .await?;
    // Past ack_wait twice over: a terminated message must not come back.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    cancel.cancel();
    let stats = task.await??;
    let l = log.lock().unwrap().clone();
    assert_eq!(
        l.iter().filter(|(n, ..)| *n == 1).count(),
        1,
        "redelivered: {l:?}"
    );
    assert_eq!(
        (stats.termed, stats.dead_lettered, stats.acked),
        (1, 1, 2),
        "{stats:?}"
    );

    let mut dl = s.client.jetstream().get_stream(&dlq).await?;
    assert_eq!(dl.info().await?.state.messages, 1);
    let m = dl
        .get_last_raw_message_by_subject(&format!("{dlq}.orders"))
        .await?;
    assert_eq!(m.payload, "1");
    let reason = m
        .headers
        .get("Natty-Dead-Letter-Reason")
        .unwrap()
        .as_str()
        .to_owned();
    assert!(reason.contains("malformed order"), "{reason}");
    assert_eq!(
        m.headers.get("Natty-Original-Subject").unwrap().as_str(),
        format!("{}.m", s.stream)
    );
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_handler_running_three_ack_waits_is_not_redelivered() -> anyhow::Result<()> {
    let s = setup(|st| ConsumerConfig::new(st, "workers").ack_wait(Duration::from_secs(1))).await?;
    publish_n(&s, 1).await?;
    let log = Log::default();
    // Two handlers at once, so a redelivery during the long handler would be taken at once.
    let options = ConsumeOptions::default().concurrency(2);
    let (cancel, _, task) = start(s.client.clone(), &s.stream, options, log.clone(), |_, _| {
        Ok(Duration::from_secs(3))
    });
    let consumer = Consumer::new(
        s.client.clone(),
        &s.stream,
        "workers",
        ConsumeOptions::default(),
    )?;
    wait_for("the handler to finish", Duration::from_secs(10), || async {
        let info = s
            .client
            .jetstream()
            .get_stream(&s.stream)
            .await
            .ok()?
            .consumer_info("workers")
            .await
            .ok()?;
        (info.num_ack_pending == 0 && !log.lock().unwrap().is_empty()).then_some(())
    })
    .await?;
    let _ = consumer;
    cancel.cancel();
    let stats = task.await??;
    let l = log.lock().unwrap().clone();
    assert_eq!(l.len(), 1, "handled more than once: {l:?}");
    assert_eq!((stats.redelivered, stats.acked), (0, 1), "{stats:?}");
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn an_aborted_consumer_leaves_its_unacked_messages_to_the_next() -> anyhow::Result<()> {
    let s = setup(|st| ConsumerConfig::new(st, "workers").ack_wait(Duration::from_secs(1))).await?;
    const N: u64 = 100;
    publish_n(&s, N).await?;
    let first = Log::default();
    let (_cancel, _, task) = start(
        s.client.clone(),
        &s.stream,
        ConsumeOptions::default(),
        first.clone(),
        |_, _| Ok(Duration::from_millis(20)),
    );
    wait_for("some progress", Duration::from_secs(10), || async {
        (first.lock().unwrap().len() >= 10).then_some(())
    })
    .await?;
    task.abort(); // a crash, mid-batch: no cancel, no acks for what was pulled
    let _ = task.await;
    let second = Log::default();
    let client = ConnectOptions::new([s.url.clone()]).connect().await?;
    let (cancel, consumer, task) = start(
        client,
        &s.stream,
        ConsumeOptions::default(),
        second.clone(),
        |_, _| Ok(Duration::ZERO),
    );
    wait_for("all messages handled", Duration::from_secs(20), || async {
        let handled: HashSet<u64> = first
            .lock()
            .unwrap()
            .iter()
            .chain(second.lock().unwrap().iter())
            .map(|(n, ..)| *n)
            .collect();
        (handled.len() as u64 == N).then_some(())
    })
    .await?;
    cancel.cancel();
    task.await??;
    assert!(
        consumer.stats().redelivered > 0,
        "the aborted batch came back as redeliveries"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn after_a_graceful_cancel_the_next_consumer_gets_no_redeliveries() -> anyhow::Result<()> {
    let s = setup(|st| ConsumerConfig::new(st, "workers").ack_wait(Duration::from_secs(1))).await?;
    publish_n(&s, 50).await?;
    let first = Log::default();
    let (cancel, _, task) = start(
        s.client.clone(),
        &s.stream,
        ConsumeOptions::default(),
        first.clone(),
        |_, _| Ok(Duration::ZERO),
    );
    wait_for("the first 50", Duration::from_secs(10), || async {
        (first.lock().unwrap().len() >= 50).then_some(())
    })
    .await?;
    cancel.cancel();
    let stats = task.await??;
    assert_eq!(stats.acked, 50);
    publish_n(&s, 50).await?;
    let second = Log::default();
    let client = ConnectOptions::new([s.url.clone()]).connect().await?;
    let (cancel, consumer, task) = start(
        client,
        &s.stream,
        ConsumeOptions::default(),
        second.clone(),
        |_, _| Ok(Duration::ZERO),
    );
    wait_for("the next 50", Duration::from_secs(10), || async {
        (second.lock().unwrap().len() >= 50).then_some(())
    })
    .await?;
    // Past ack_wait: anything left unacked would be back by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cancel.cancel();
    task.await??;
    assert_eq!(consumer.stats().redelivered, 0, "{:?}", consumer.stats());
    assert_eq!(second.lock().unwrap().len(), 50);
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn two_consumers_on_one_durable_split_the_messages() -> anyhow::Result<()> {
    let s = setup(|st| ConsumerConfig::new(st, "workers")).await?;
    const N: u64 = 1000;
    let (a, b) = (Log::default(), Log::default());
    let options = ConsumeOptions::default().batch(20);
    let (ca, _, ta) = start(
        s.client.clone(),
        &s.stream,
        options.clone(),
        a.clone(),
        |_, _| Ok(Duration::from_millis(1)),
    );
    let client_b = ConnectOptions::new([s.url.clone()]).connect().await?;
    let (cb, _, tb) = start(client_b, &s.stream, options, b.clone(), |_, _| {
        Ok(Duration::from_millis(1))
    });
    publish_n(&s, N).await?;
    wait_for("all handled", Duration::from_secs(30), || async {
        (a.lock().unwrap().len() + b.lock().unwrap().len() >= N as usize).then_some(())
    })
    .await?;
    ca.cancel();
    cb.cancel();
    ta.await??;
    tb.await??;
    let sa: HashSet<u64> = a.lock().unwrap().iter().map(|(n, ..)| *n).collect();
    let sb: HashSet<u64> = b.lock().unwrap().iter().map(|(n, ..)| *n).collect();
    assert!(
        sa.is_disjoint(&sb),
        "handled by both: {:?}",
        sa.intersection(&sb).take(5).collect::<Vec<_>>()
    );
    assert_eq!(sa.len() + sb.len(), N as usize);
    assert!(
        !sa.is_empty() && !sb.is_empty(),
        "both took a share: {} / {}",
        sa.len(),
        sb.len()
    );
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_full_error_channel_never_blocks_consumption() -> anyhow::Result<()> {
    let s = setup(|st| ConsumerConfig::new(st, "workers")).await?;
    const N: u64 = 100;
    publish_n(&s, N).await?;
    let (tx, _rx_never_read) = tokio::sync::mpsc::channel(1);
    let log = Log::default();
    let (cancel, consumer, task) = start(
        s.client.clone(),
        &s.stream,
        ConsumeOptions::default().errors(tx),
        log.clone(),
        |_, _| Err(HandlerError::permanent("always")),
    );
    wait_for("every message handled", Duration::from_secs(10), || async {
        (consumer.stats().termed == N).then_some(())
    })
    .await?;
    cancel.cancel();
    let stats = task.await??;
    assert_eq!(stats.errors_dropped, N - 1, "{stats:?}");
    let per: HashMap<u64, usize> =
        log.lock()
            .unwrap()
            .iter()
            .fold(HashMap::new(), |mut m, (n, ..)| {
                *m.entry(*n).or_default() += 1;
                m
            });
    assert_eq!(per.len() as u64, N);
    Ok(())
}

/// The final delivery's dead-letter publish fails (no stream captures the subject yet): the
/// message must stay in the stream and be dead-lettered once the subject is captured.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_dead_letter_failure_on_the_last_delivery_loses_nothing() -> anyhow::Result<()> {
    let s = setup(|st| {
        ConsumerConfig::new(st, "workers")
            .ack_wait(Duration::from_secs(2))
            .max_deliver(Some(2))
    })
    .await?;
    let dlq = format!("{}_DLQ", s.stream);
    publish_n(&s, 1).await?;
    let log = Log::default();
    let options = ConsumeOptions::default()
        .retry_delay(Duration::from_millis(100), Duration::from_millis(500))
        .dead_letter(format!("{dlq}.failed"));
    let (cancel, consumer, task) =
        start(s.client.clone(), &s.stream, options, log.clone(), |_, _| {
            Err(HandlerError::retry("downstream is down"))
        });
    // Delivery 1: nak. Delivery 2 (the last): the dead-letter publish fails, nothing captures it.
    wait_for("the last delivery", Duration::from_secs(10), || async {
        (log.lock().unwrap().iter().any(|(_, d, _)| *d >= 2) && consumer.stats().naked >= 2)
            .then_some(())
    })
    .await?;
    ensure_stream(&s.client, &StreamConfig::new(&dlq, [format!("{dlq}.>")])).await?;
    let js = s.client.jetstream();
    wait_for("the dead letter", Duration::from_secs(15), || async {
        let n = js
            .get_stream(&dlq)
            .await
            .ok()?
            .info()
            .await
            .ok()?
            .state
            .messages;
        (n >= 1).then_some(())
    })
    .await?;
    // Past ack_wait and the retry delays: nothing else may arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    cancel.cancel();
    let stats = task.await??;
    let mut dl = js.get_stream(&dlq).await?;
    assert_eq!(dl.info().await?.state.messages, 1, "{stats:?}");
    let m = dl
        .get_last_raw_message_by_subject(&format!("{dlq}.failed"))
        .await?;
    assert_eq!(m.payload, "0");
    assert_eq!(
        m.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned()),
        Some(format!("natty-dl:{}:workers:1", s.stream))
    );
    // natty's limit is 2: after the failed dead-letter publish the message came back with
    // delivered 3 and went straight to the dead-letter subject, without the handler.
    let l = log.lock().unwrap().clone();
    assert!(
        l.iter().all(|(_, d, _)| *d <= 2),
        "the handler ran past the delivery limit: {l:?}"
    );
    let info = js
        .get_stream(&s.stream)
        .await?
        .consumer_info("workers")
        .await?;
    assert_eq!(
        (info.num_ack_pending, info.num_pending),
        (0, 0),
        "the message is settled"
    );
    assert_eq!((stats.dead_lettered, stats.termed), (1, 1), "{stats:?}");
    Ok(())
}

/// Messages pulled but waiting for the one handler slot must not outlive `ack_wait` and be
/// handed to the other consumer meanwhile.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn messages_waiting_for_a_slow_handler_are_not_handled_twice() -> anyhow::Result<()> {
    let s = setup(|st| ConsumerConfig::new(st, "workers").ack_wait(Duration::from_secs(2))).await?;
    const N: u64 = 20;
    publish_n(&s, N).await?;
    let (a, b) = (Log::default(), Log::default());
    let options = ConsumeOptions::default().batch(10);
    let (ca, _, ta) = start(
        s.client.clone(),
        &s.stream,
        options.clone(),
        a.clone(),
        |_, _| Ok(Duration::from_millis(1500)),
    );
    let client_b = ConnectOptions::new([s.url.clone()]).connect().await?;
    let (cb, _, tb) = start(client_b, &s.stream, options, b.clone(), |_, _| {
        Ok(Duration::from_millis(1500))
    });
    let js = s.client.jetstream();
    wait_for("every message acked", Duration::from_secs(60), || async {
        let info = js
            .get_stream(&s.stream)
            .await
            .ok()?
            .consumer_info("workers")
            .await
            .ok()?;
        let handled = a.lock().unwrap().len() + b.lock().unwrap().len();
        (info.num_ack_pending == 0 && info.num_pending == 0 && handled >= N as usize).then_some(())
    })
    .await?;
    ca.cancel();
    cb.cancel();
    ta.await??;
    tb.await??;
    let mut times: HashMap<u64, usize> = HashMap::new();
    for (n, ..) in a.lock().unwrap().iter().chain(b.lock().unwrap().iter()) {
        *times.entry(*n).or_default() += 1;
    }
    let twice: Vec<_> = times.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "handled more than once: {twice:?}");
    assert_eq!(times.len() as u64, N);
    Ok(())
}

/// A nak with a delay on a consumer with a server-side `backoff`: the delay asked for wins.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_nak_delay_is_honoured_on_a_consumer_with_server_backoff() -> anyhow::Result<()> {
    let s = setup(|st| {
        ConsumerConfig::new(st, "workers")
            .ack_wait(Duration::from_secs(30))
            .backoff(vec![Duration::from_millis(200), Duration::from_secs(20)])
    })
    .await?;
    publish_n(&s, 1).await?;
    let log = Log::default();
    let (cancel, _, task) = start(
        s.client.clone(),
        &s.stream,
        ConsumeOptions::default(),
        log.clone(),
        |_, delivered| {
            if delivered == 1 {
                Err(HandlerError::retry_after("later", Duration::from_secs(3)))
            } else {
                Ok(Duration::ZERO)
            }
        },
    );
    wait_for("the redelivery", Duration::from_secs(15), || async {
        (log.lock().unwrap().len() >= 2).then_some(())
    })
    .await?;
    let l = log.lock().unwrap().clone();
    let gap = l[1].2 - l[0].2;
    eprintln!("nak delay 3 s, backoff [200ms, 20s]: redelivered after {gap:?}");
    assert!(
        gap >= Duration::from_millis(2700) && gap < Duration::from_secs(6),
        "asked for 3 s, redelivered after {gap:?}"
    );
    cancel.cancel();
    task.await??;
    Ok(())
}

/// Dropping the `consume` future (not cancelling) stops its handlers, also those running on
/// their own tasks (concurrency > 1): nothing works on after the caller moved on.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn dropping_consume_stops_its_handlers() -> anyhow::Result<()> {
    let s = setup(|st| ConsumerConfig::new(st, "workers")).await?;
    publish_n(&s, 4).await?;
    let started = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let finished = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let consumer = Consumer::new(
        s.client.clone(),
        &s.stream,
        "workers",
        ConsumeOptions::default().concurrency(4),
    )?;
    let (st, fi) = (started.clone(), finished.clone());
    let run = consumer.consume(CancellationToken::new(), move |_| {
        let (st, fi) = (st.clone(), fi.clone());
        async move {
            st.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(2)).await;
            fi.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    });
    let dropped = tokio::time::timeout(Duration::from_secs(1), run).await;
    assert!(dropped.is_err(), "consume returned on its own: {dropped:?}");
    assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst), 4);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        finished.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a handler ran on after consume was dropped"
    );
    Ok(())
}

/// A durable made by an earlier natty (server-side `max_deliver`) is moved to natty's limit by
/// `ensure_consumer`, so the last-delivery guarantee holds after an upgrade.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn ensure_consumer_moves_the_delivery_limit_from_the_server_to_natty() -> anyhow::Result<()> {
    use natty_core::async_nats::jetstream::consumer::{AckPolicy, pull};
    let s = setup(|st| ConsumerConfig::new(st, "other")).await?;
    let js = s.client.jetstream();
    js.get_stream(&s.stream)
        .await?
        .create_consumer(pull::Config {
            durable_name: Some("workers".into()),
            name: Some("workers".into()),
            ack_policy: AckPolicy::Explicit,
            max_deliver: 5,
            ..Default::default()
        })
        .await?;
    ensure_consumer(
        &s.client,
        &ConsumerConfig::new(&s.stream, "workers").max_deliver(Some(3)),
    )
    .await?;
    let info = js
        .get_stream(&s.stream)
        .await?
        .consumer_info("workers")
        .await?;
    assert_eq!(info.config.max_deliver, -1);
    assert_eq!(
        info.config
            .metadata
            .get("natty.max_deliver")
            .map(String::as_str),
        Some("3")
    );
    Ok(())
}

/// A handler that panics: the panic is a retryable failure, reported on the error channel, and
/// the message is dead-lettered at the delivery limit (not redelivered forever after
/// `ack_wait`, not unwinding out of `consume`).
async fn a_panicking_handler_is_retried_then_dead_lettered(
    concurrency: usize,
) -> anyhow::Result<()> {
    let s = setup(|st| {
        ConsumerConfig::new(st, "workers")
            .ack_wait(Duration::from_secs(30))
            .max_deliver(Some(2))
    })
    .await?;
    let dlq = format!("{}_DLQ", s.stream);
    ensure_stream(&s.client, &StreamConfig::new(&dlq, [format!("{dlq}.>")])).await?;
    publish_n(&s, 1).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let options = ConsumeOptions::default()
        .concurrency(concurrency)
        .retry_delay(Duration::from_millis(100), Duration::from_millis(500))
        .dead_letter(format!("{dlq}.failed"))
        .errors(tx);
    let log = Log::default();
    let (cancel, _, task) = start(s.client.clone(), &s.stream, options, log.clone(), |n, _| {
        panic!("handler bug on {n}")
    });
    let mut reports = Vec::new();
    while reports.len() < 2 {
        let r = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no report within 10 s; got {reports:?}"))?;
        reports.push(r.unwrap());
    }
    assert_eq!(
        reports[0].action,
        Action::Nak {
            delay: Duration::from_millis(100)
        }
    );
    assert_eq!(reports[1].action, Action::DeadLettered);
    assert!(
        reports[0].error.reason().contains("handler bug on 0"),
        "{}",
        reports[0]
    );
    assert!(!task.is_finished(), "consume ended after a handler panic");
    cancel.cancel();
    let stats = task.await??;
    assert_eq!((stats.dead_lettered, stats.termed), (1, 1), "{stats:?}");
    let mut dl = s.client.jetstream().get_stream(&dlq).await?;
    assert_eq!(dl.info().await?.state.messages, 1);
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_panicking_inline_handler_is_retried_then_dead_lettered() -> anyhow::Result<()> {
    a_panicking_handler_is_retried_then_dead_lettered(1).await
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_panicking_concurrent_handler_is_retried_then_dead_lettered() -> anyhow::Result<()> {
    a_panicking_handler_is_retried_then_dead_lettered(4).await
}

/// Two durables (a broadcast) give up on the same stream sequence into one dead-letter stream:
/// both dead letters are kept (the second is no duplicate of the first).
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn two_durables_dead_lettering_one_message_keep_both() -> anyhow::Result<()> {
    let s = setup(|st| ConsumerConfig::new(st, "workers")).await?;
    ensure_consumer(&s.client, &ConsumerConfig::new(&s.stream, "audit")).await?;
    let dlq = format!("{}_DLQ", s.stream);
    ensure_stream(&s.client, &StreamConfig::new(&dlq, [format!("{dlq}.>")])).await?;
    publish_n(&s, 1).await?;
    let cancel = CancellationToken::new();
    let mut tasks = Vec::new();
    for durable in ["workers", "audit"] {
        let c = Consumer::new(
            s.client.clone(),
            &s.stream,
            durable,
            ConsumeOptions::default().dead_letter(format!("{dlq}.failed")),
        )?;
        let k = cancel.clone();
        tasks.push(tokio::spawn(async move {
            c.consume(k, |_| async { Err(HandlerError::permanent("bad")) })
                .await
        }));
    }
    let js = s.client.jetstream();
    let got = wait_for("two dead letters", Duration::from_secs(10), || async {
        let n = js
            .get_stream(&dlq)
            .await
            .ok()?
            .info()
            .await
            .ok()?
            .state
            .messages;
        (n >= 2).then_some(n)
    })
    .await;
    cancel.cancel();
    let mut dead_lettered = 0;
    for t in tasks {
        dead_lettered += t.await??.dead_lettered;
    }
    let n = js.get_stream(&dlq).await?.info().await?.state.messages;
    assert!(
        got.is_ok(),
        "dead-letter stream holds {n} (both consumers dead-lettered: {dead_lettered})"
    );
    assert_eq!(n, 2);
    Ok(())
}

/// Cancel while the server is unreachable: `consume` still returns (the ack flush is bounded).
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn cancel_during_an_outage_returns() -> anyhow::Result<()> {
    let s = setup(|st| ConsumerConfig::new(st, "workers")).await?;
    publish_n(&s, 1).await?;
    let log = Log::default();
    let options = ConsumeOptions::default()
        .heartbeat(Duration::from_secs(1))
        .expires(Duration::from_secs(5));
    let (cancel, _, task) = start(s.client.clone(), &s.stream, options, log.clone(), |_, _| {
        Ok(Duration::ZERO)
    });
    wait_for("the message", Duration::from_secs(10), || async {
        (!log.lock().unwrap().is_empty()).then_some(())
    })
    .await?;
    // Stopped, not paused: the client sees the connection drop and tries to reconnect.
    s._nats.stop().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    cancel.cancel();
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(30), task).await;
    assert!(
        ended.is_ok(),
        "consume did not return within 30 s of cancel during an outage"
    );
    ended.unwrap()??;
    eprintln!("consume returned {:?} after cancel", started.elapsed());
    Ok(())
}

/// The server is unreachable when `consume` starts: it waits (within the grace period) instead
/// of failing at once, and consumes once the server is back.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_server_unreachable_at_start_is_waited_for() -> anyhow::Result<()> {
    let s = setup(|st| ConsumerConfig::new(st, "workers")).await?;
    let log = Log::default();
    let options = ConsumeOptions::default()
        .heartbeat(Duration::from_secs(1))
        .expires(Duration::from_secs(5))
        .consumer_gone_grace(Duration::from_secs(60));
    s._nats.pause().await?;
    let (cancel, _, task) = start(s.client.clone(), &s.stream, options, log.clone(), |_, _| {
        Ok(Duration::ZERO)
    });
    // Past the client's request timeout: the first look-up has failed by now.
    tokio::time::sleep(s.client.request_timeout() + Duration::from_secs(2)).await;
    let finished = task.is_finished();
    s._nats.unpause().await?;
    assert!(!finished, "consume gave up at start: {:?}", task.await?);
    publish_n(&s, 1).await?;
    wait_for("the message", Duration::from_secs(30), || async {
        (!log.lock().unwrap().is_empty()).then_some(())
    })
    .await?;
    cancel.cancel();
    task.await??;
    Ok(())
}

/// The client is closed (drained) under a running `consume`: it ends with `Closed`.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_closed_client_ends_consume_with_an_error() -> anyhow::Result<()> {
    let s = setup(|st| ConsumerConfig::new(st, "workers")).await?;
    let own = ConnectOptions::new([s.url.clone()]).connect().await?;
    publish_n(&s, 1).await?;
    let log = Log::default();
    let options = ConsumeOptions::default()
        .heartbeat(Duration::from_secs(1))
        .expires(Duration::from_secs(5));
    let (_cancel, _, task) = start(own.clone(), &s.stream, options, log.clone(), |_, _| {
        Ok(Duration::ZERO)
    });
    wait_for("the message", Duration::from_secs(10), || async {
        (!log.lock().unwrap().is_empty()).then_some(())
    })
    .await?;
    own.drain().await?;
    let ended = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .map_err(|_| anyhow::anyhow!("consume still running 20 s after its client was closed"))??;
    let e = ended.expect_err("consume returned Ok on a closed client");
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    Ok(())
}

/// A durable with `max_batch` / `max_expires` below the options: pulls are clamped to them
/// instead of being refused forever.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn pulls_are_clamped_to_the_durables_limits() -> anyhow::Result<()> {
    use natty_core::async_nats::jetstream::consumer::{AckPolicy, pull};
    let s = setup(|st| ConsumerConfig::new(st, "other")).await?;
    s.client
        .jetstream()
        .get_stream(&s.stream)
        .await?
        .create_consumer(pull::Config {
            durable_name: Some("workers".into()),
            ack_policy: AckPolicy::Explicit,
            max_batch: 5,
            max_expires: Duration::from_secs(4),
            ..Default::default()
        })
        .await?;
    publish_n(&s, 20).await?;
    let log = Log::default();
    let options = ConsumeOptions::default().heartbeat(Duration::from_secs(1));
    let (cancel, _, task) = start(s.client.clone(), &s.stream, options, log.clone(), |_, _| {
        Ok(Duration::ZERO)
    });
    let handled = wait_for("20 messages", Duration::from_secs(15), || async {
        (log.lock().unwrap().len() >= 20).then_some(())
    })
    .await;
    cancel.cancel();
    let stats = task.await??;
    assert!(
        handled.is_ok(),
        "handled {} of 20: {stats:?}",
        log.lock().unwrap().len()
    );
    Ok(())
}

/// A push consumer under the durable's name: `consume` refuses it with `ConfigMismatch` at once,
/// not after the grace period.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_push_durable_is_a_config_mismatch() -> anyhow::Result<()> {
    use natty_core::async_nats::jetstream::consumer::{AckPolicy, push};
    let s = setup(|st| ConsumerConfig::new(st, "other")).await?;
    s.client
        .jetstream()
        .get_stream(&s.stream)
        .await?
        .create_consumer(push::Config {
            durable_name: Some("workers".into()),
            deliver_subject: "somewhere".into(),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    let (cancel, _, task) = start(
        s.client.clone(),
        &s.stream,
        ConsumeOptions::default(),
        Log::default(),
        |_, _| Ok(Duration::ZERO),
    );
    let ended = tokio::time::timeout(Duration::from_secs(10), task).await;
    cancel.cancel();
    let e = ended??.expect_err("consumed a push durable");
    assert_eq!(e.kind(), ErrorKind::ConfigMismatch, "{e}");
    Ok(())
}
