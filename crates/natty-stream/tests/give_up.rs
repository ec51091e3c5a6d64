//! When natty gives up on a message (terminates or dead-letters it): only after its handler ran
//! and failed `max_deliver` times — never because natty itself handed it back (a graceful
//! stop, an abandoned pull, a handler cut off by the stop deadline).
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use natty_core::{Client, ConnectOptions};
use natty_stream::{
    CancellationToken, ConsumeOptions, Consumer, ConsumerConfig, ConsumerStats, HandlerError,
    Message, Publisher, StreamConfig, ensure_consumer, ensure_stream,
};
use natty_testkit::wait_for;

mod common;
use common::{Setup, num, publish_n};

async fn setup(consumer: impl FnOnce(&str) -> ConsumerConfig) -> anyhow::Result<Setup> {
    common::setup("G", consumer).await
}

/// Numbers whose handler started, with the delivery count it saw.
type Log = Arc<Mutex<Vec<(u64, u64)>>>;

type Task = tokio::task::JoinHandle<Result<ConsumerStats, natty_stream::Error>>;

/// Consumes durable `workers`; the handler logs the message, sleeps `pause`, then answers what
/// `behaviour(number, delivered)` says.
fn start(
    client: Client,
    stream: &str,
    options: ConsumeOptions,
    log: Log,
    pause: Duration,
    behaviour: impl Fn(u64, u64) -> Result<(), HandlerError> + Send + Sync + 'static,
) -> (CancellationToken, Consumer, Task) {
    let consumer = Consumer::new(client, stream, "workers", options).unwrap();
    let cancel = CancellationToken::new();
    let behaviour = Arc::new(behaviour);
    let (c, k) = (consumer.clone(), cancel.clone());
    let task = tokio::spawn(async move {
        c.consume(k, move |m: Message| {
            let (log, behaviour) = (log.clone(), behaviour.clone());
            async move {
                let n = num(&m);
                log.lock().unwrap().push((n, m.delivered));
                tokio::time::sleep(pause).await;
                behaviour(n, m.delivered)
            }
        })
        .await
    });
    (cancel, consumer, task)
}

/// The durable's pending and unacknowledged counts.
async fn outstanding(client: &Client, stream: &str) -> Option<(u64, usize)> {
    let info = client
        .jetstream()
        .get_stream(stream)
        .await
        .ok()?
        .consumer_info("workers")
        .await
        .ok()?;
    Some((info.num_pending, info.num_ack_pending))
}

/// The rolling deploy: `max_deliver(2)`, batch 10, a 300 ms handler that always
/// succeeds, the consumer stopped gracefully and started again five times over a backlog of
/// 200. Every stop hands back what was pulled but not started (and strands what the server
/// pushed into the open pull); none of that may count against the limit: every message
/// reaches its handler, none is terminated or dead-lettered.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn restarts_over_a_backlog_give_up_on_nothing_unseen() -> anyhow::Result<()> {
    const N: u64 = 200;
    let s = setup(|st| {
        ConsumerConfig::new(st, "workers")
            .ack_wait(Duration::from_secs(2))
            .max_deliver(Some(2))
    })
    .await?;
    publish_n(&s, N).await?;
    let log = Log::default();
    let options = ConsumeOptions::default().batch(10);
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let options = options.errors(tx);
    let pause = Duration::from_millis(300);
    let mut totals = Vec::new();
    for restart in 0..5 {
        let before = log.lock().unwrap().len();
        let client = ConnectOptions::new([s.url.clone()]).connect().await?;
        let (cancel, _, task) = start(
            client,
            &s.stream,
            options.clone(),
            log.clone(),
            pause,
            |_, _| Ok(()),
        );
        wait_for(
            &format!("run {restart} to start three handlers"),
            Duration::from_secs(30),
            || async { (log.lock().unwrap().len() >= before + 3).then_some(()) },
        )
        .await?;
        cancel.cancel();
        totals.push(task.await??);
    }
    let (cancel, consumer, task) = start(
        s.client.clone(),
        &s.stream,
        options,
        log.clone(),
        pause,
        |_, _| Ok(()),
    );
    wait_for(
        "every message handled and the durable drained",
        Duration::from_secs(180),
        || async {
            let seen: BTreeSet<u64> = log.lock().unwrap().iter().map(|(n, _)| *n).collect();
            let left = outstanding(&s.client, &s.stream).await?;
            (seen.len() as u64 == N && left == (0, 0)).then_some(())
        },
    )
    .await
    .map_err(|e| {
        let seen: BTreeSet<u64> = log.lock().unwrap().iter().map(|(n, _)| *n).collect();
        let missing: Vec<u64> = (0..N).filter(|n| !seen.contains(n)).collect();
        anyhow::anyhow!(
            "{e}; never handled: {missing:?}; stats now {:?}",
            consumer.stats()
        )
    })?;
    cancel.cancel();
    totals.push(task.await??);
    let mut reports = Vec::new();
    while let Ok(r) = rx.try_recv() {
        reports.push(r.to_string());
    }
    let termed: u64 = totals.iter().map(|t| t.termed).sum();
    let dead: u64 = totals.iter().map(|t| t.dead_lettered).sum();
    assert_eq!(
        (termed, dead),
        (0, 0),
        "given up without a handler failure: {reports:?}"
    );
    let most = log.lock().unwrap().iter().map(|(_, d)| *d).max();
    eprintln!("highest delivery count a handler saw: {most:?} (limit 2: natty's own hand-backs)");
    Ok(())
}
/// A message that really fails is still given up on at the limit — after its handler failed
/// `max_deliver` times — also when the failures are spread over restarts of the process (the
/// count survives them), and when natty handed it back in between.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn failures_counted_across_restarts_reach_the_limit() -> anyhow::Result<()> {
    let s = setup(|st| {
        ConsumerConfig::new(st, "workers")
            .ack_wait(Duration::from_secs(2))
            .max_deliver(Some(3))
    })
    .await?;
    let dlq = format!("{}_DLQ", s.stream);
    ensure_stream(&s.client, &StreamConfig::new(&dlq, [format!("{dlq}.>")])).await?;
    publish_n(&s, 1).await?;
    let log = Log::default();
    // A retry delay longer than it takes to stop: each run sees the message once.
    let options = ConsumeOptions::default()
        .retry_delay(Duration::from_secs(2), Duration::from_secs(2))
        .dead_letter(format!("{dlq}.failed"));
    // Three processes in a row, each failing the message once and then stopping.
    let mut totals = Vec::new();
    for run in 1..=3usize {
        let client = ConnectOptions::new([s.url.clone()]).connect().await?;
        let (cancel, consumer, task) = start(
            client,
            &s.stream,
            options.clone(),
            log.clone(),
            Duration::ZERO,
            |_, _| Err(HandlerError::retry("downstream is down")),
        );
        wait_for(
            &format!("run {run} to fail it"),
            Duration::from_secs(15),
            || async {
                let st = consumer.stats();
                (st.naked + st.termed >= 1).then_some(())
            },
        )
        .await?;
        cancel.cancel();
        totals.push(task.await??);
    }
    let runs = log.lock().unwrap().len();
    assert_eq!(
        runs,
        3,
        "the handler ran {runs} times: {:?}",
        log.lock().unwrap()
    );
    let dead: u64 = totals.iter().map(|t| t.dead_lettered).sum();
    assert_eq!(dead, 1, "{totals:?}");
    let dl = s.client.jetstream().get_stream(&dlq).await?;
    let m = dl
        .get_last_raw_message_by_subject(&format!("{dlq}.failed"))
        .await?;
    assert_eq!(
        m.headers
            .get("Natty-Failures")
            .map(|v| v.as_str().to_owned()),
        Some("3".to_owned())
    );
    Ok(())
}

/// Per number: how many times a handler started.
fn runs_per(log: &Log) -> HashMap<u64, usize> {
    log.lock()
        .unwrap()
        .iter()
        .fold(HashMap::new(), |mut m, (n, _)| {
            *m.entry(*n).or_default() += 1;
            m
        })
}

/// A handler cut off by the stop deadline is handed back, not counted: with `max_deliver(1)`
/// the next consumer still runs it.
async fn a_handler_cut_off_at_stop_is_not_counted(concurrency: usize) -> anyhow::Result<()> {
    let s = setup(|st| {
        ConsumerConfig::new(st, "workers")
            .ack_wait(Duration::from_secs(30))
            .max_deliver(Some(1))
    })
    .await?;
    publish_n(&s, 1).await?;
    let log = Log::default();
    let options = ConsumeOptions::default()
        .concurrency(concurrency)
        .stop_timeout(Duration::from_millis(500));
    let (cancel, _, task) = start(
        s.client.clone(),
        &s.stream,
        options.clone(),
        log.clone(),
        Duration::from_secs(3600),
        |_, _| Ok(()),
    );
    wait_for("the handler to start", Duration::from_secs(10), || async {
        (!log.lock().unwrap().is_empty()).then_some(())
    })
    .await?;
    let stopping = std::time::Instant::now();
    cancel.cancel();
    let first = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .map_err(|_| anyhow::anyhow!("the stop did not end within 10 s"))???;
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(3), "the stop took {took:?}");
    assert_eq!((first.termed, first.naked), (0, 1), "{first:?}");
    let (cancel, consumer, task) = start(
        s.client.clone(),
        &s.stream,
        options,
        log.clone(),
        Duration::ZERO,
        |_, _| Ok(()),
    );
    // Handed back at once (nak), not left to ack_wait (30 s).
    wait_for("the second run", Duration::from_secs(10), || async {
        (consumer.stats().acked == 1).then_some(())
    })
    .await?;
    cancel.cancel();
    let second = task.await??;
    assert_eq!(second.termed, 0, "{second:?}");
    assert_eq!(runs_per(&log).get(&0), Some(&2));
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn an_inline_handler_cut_off_at_stop_is_not_counted_as_a_failure() -> anyhow::Result<()> {
    a_handler_cut_off_at_stop_is_not_counted(1).await
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_concurrent_handler_cut_off_at_stop_is_not_counted_as_a_failure() -> anyhow::Result<()> {
    a_handler_cut_off_at_stop_is_not_counted(4).await
}

/// Issue 24 item 14: one logical reader whose durable changes name (a consumer group's owner
/// per term) keys its failure count and dead letter by a stable identity. The next durable
/// continues the count, and an owner that stopped between the dead-letter publish and its
/// `+TERM` does not make the next one store a second dead letter.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn durables_sharing_an_identity_share_the_count_and_the_dead_letter() -> anyhow::Result<()> {
    let s = setup(|st| ConsumerConfig::new(st, "workers").max_deliver(Some(2))).await?;
    ensure_consumer(
        &s.client,
        &ConsumerConfig::new(&s.stream, "workers_t2").max_deliver(Some(2)),
    )
    .await?;
    let dlq = format!("{}_DLQ", s.stream);
    ensure_stream(&s.client, &StreamConfig::new(&dlq, [format!("{dlq}.>")])).await?;
    publish_n(&s, 1).await?;
    let options = ConsumeOptions::default()
        .retry_delay(Duration::from_millis(100), Duration::from_millis(200))
        .dead_letter(format!("{dlq}.failed"))
        .identity("orders_p0");
    let runs = Arc::new(Mutex::new(Vec::<String>::new()));
    let consume = |durable: &'static str| {
        let consumer =
            Consumer::new(s.client.clone(), &s.stream, durable, options.clone()).unwrap();
        let cancel = CancellationToken::new();
        let (c, k, runs) = (consumer.clone(), cancel.clone(), runs.clone());
        let task = tokio::spawn(async move {
            c.consume(k, move |_m: Message| {
                runs.lock().unwrap().push(durable.to_owned());
                async { Err(HandlerError::retry("downstream is down")) }
            })
            .await
        });
        (cancel, consumer, task)
    };
    // The first term's durable fails it once, then its owner stops.
    let (cancel, c1, task) = consume("workers");
    wait_for("the first failure", Duration::from_secs(10), || async {
        (c1.stats().naked >= 1).then_some(())
    })
    .await?;
    cancel.cancel();
    task.await??;
    // The next term's durable (a new name, the same identity): its first failure is the
    // second counted, the limit: dead-lettered.
    let (cancel, c2, task) = consume("workers_t2");
    wait_for("the dead letter", Duration::from_secs(10), || async {
        (c2.stats().dead_lettered >= 1).then_some(())
    })
    .await?;
    cancel.cancel();
    task.await??;
    // The first durable still has the message (its nak brought it back): given up on without
    // running the handler, and its dead letter is a duplicate of the second's.
    let (cancel, c1, task) = consume("workers");
    wait_for(
        "the old durable to give up",
        Duration::from_secs(10),
        || async { (c1.stats().termed >= 1).then_some(()) },
    )
    .await?;
    cancel.cancel();
    task.await??;
    assert_eq!(*runs.lock().unwrap(), ["workers", "workers_t2"]);
    let mut dl = s.client.jetstream().get_stream(&dlq).await?;
    assert_eq!(dl.info().await?.state.messages, 1, "stored twice");
    let m = dl
        .get_last_raw_message_by_subject(&format!("{dlq}.failed"))
        .await?;
    let header = |name: &str| m.headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(
        header("Nats-Msg-Id"),
        Some(format!("natty-dl:{}:orders_p0:1", s.stream))
    );
    assert_eq!(header("Natty-Failures").as_deref(), Some("2"));
    Ok(())
}

/// Issue 24 item 6: a dead letter larger than the server's `max_payload` (its headers
/// included) is stored without the payload, saying so, instead of closing the shared
/// connection and failing again every `retry_max`.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn an_oversized_dead_letter_is_stored_without_its_payload() -> anyhow::Result<()> {
    let s = setup(|st| ConsumerConfig::new(st, "workers")).await?;
    let dlq = format!("{}_DLQ", s.stream);
    ensure_stream(&s.client, &StreamConfig::new(&dlq, [format!("{dlq}.>")])).await?;
    let max = s.client.nats().server_info().max_payload;
    // Fits the stream; with the dead letter's headers (a 1 KiB reason among them) it does not.
    let size = max - 512;
    Publisher::new(s.client.clone())
        .publish(&format!("{}.big", s.stream), vec![b'x'; size].into())
        .await?;
    let connects = s
        .client
        .nats()
        .statistics()
        .connects
        .load(std::sync::atomic::Ordering::Relaxed);
    let log = Log::default();
    let consumer = Consumer::new(
        s.client.clone(),
        &s.stream,
        "workers",
        ConsumeOptions::default().dead_letter(format!("{dlq}.failed")),
    )?;
    let cancel = CancellationToken::new();
    let (c, k, l) = (consumer.clone(), cancel.clone(), log.clone());
    let task = tokio::spawn(async move {
        c.consume(k, move |m: Message| {
            l.lock().unwrap().push((0, m.delivered));
            async { Err(HandlerError::permanent("x".repeat(4096))) }
        })
        .await
    });
    wait_for("the dead letter", Duration::from_secs(15), || async {
        (consumer.stats().dead_lettered >= 1).then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}: {:?}", consumer.stats()))?;
    cancel.cancel();
    let stats = task.await??;
    assert_eq!((stats.termed, stats.naked), (1, 0), "{stats:?}");
    let dl = s.client.jetstream().get_stream(&dlq).await?;
    let m = dl
        .get_last_raw_message_by_subject(&format!("{dlq}.failed"))
        .await?;
    assert!(m.payload.is_empty());
    let omitted = m
        .headers
        .get("Natty-Payload-Omitted")
        .unwrap()
        .as_str()
        .to_owned();
    assert!(omitted.starts_with(&format!("{size} bytes")), "{omitted}");
    let reason = m
        .headers
        .get("Natty-Dead-Letter-Reason")
        .unwrap()
        .as_str()
        .len();
    assert!(reason < 1100, "reason header of {reason} bytes");
    assert_eq!(
        s.client
            .nats()
            .statistics()
            .connects
            .load(std::sync::atomic::Ordering::Relaxed),
        connects,
        "the connection was closed and made again"
    );
    Ok(())
}

/// A durable deleted and re-created (to reprocess after a fix) does not inherit the old
/// durable's failure counts: a message the old one gave up on, handed back once by the new one
/// before its handler started (delivery 2), reaches the handler instead of being given up on
/// unseen.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_recreated_durable_starts_from_no_failures() -> anyhow::Result<()> {
    use futures::StreamExt;
    let config = |st: &str| ConsumerConfig::new(st, "workers").max_deliver(Some(2));
    let s = setup(config).await?;
    publish_n(&s, 1).await?;
    // The old durable: the handler fails twice, the message is given up on (terminated).
    let log = Log::default();
    let (cancel, consumer, task) = start(
        s.client.clone(),
        &s.stream,
        ConsumeOptions::default().retry_delay(Duration::from_millis(10), Duration::from_millis(20)),
        log.clone(),
        Duration::ZERO,
        |_, _| Err(HandlerError::retry("broken")),
    );
    wait_for("the give-up", Duration::from_secs(20), || async {
        (consumer.stats().termed >= 1).then_some(())
    })
    .await?;
    cancel.cancel();
    task.await??;
    // The fix is deployed: the durable is deleted and made again from the start.
    natty_stream::delete_consumer(&s.client, &s.stream, "workers").await?;
    ensure_consumer(&s.client, &config(&s.stream)).await?;
    // One hand-back before any handler ran (as a graceful stop does): delivery 2 next.
    let raw = s
        .client
        .jetstream()
        .get_stream(&s.stream)
        .await?
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>("workers")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let m = raw
        .fetch()
        .max_messages(1)
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .next()
        .await
        .unwrap()
        .unwrap();
    m.ack_with(async_nats::jetstream::AckKind::Nak(None))
        .await
        .unwrap();
    let log = Log::default();
    let (cancel, consumer, task) = start(
        s.client.clone(),
        &s.stream,
        ConsumeOptions::default(),
        log.clone(),
        Duration::ZERO,
        |_, _| Ok(()),
    );
    wait_for(
        "the message handled or given up on",
        Duration::from_secs(20),
        || async {
            let st = consumer.stats();
            (st.acked + st.termed >= 1).then_some(())
        },
    )
    .await?;
    cancel.cancel();
    let stats = task.await??;
    assert_eq!((stats.acked, stats.termed), (1, 0), "{stats:?}");
    assert_eq!(log.lock().unwrap().len(), 1, "the handler ran");
    Ok(())
}

/// A dead letter its own stream refuses for size (the dead-letter stream's `max_msg_size`,
/// smaller than the message) is stored without its payload, saying so, instead of being
/// refused again at every redelivery.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_dead_letter_its_stream_refuses_for_size_is_stored_without_its_payload()
-> anyhow::Result<()> {
    use natty_core::async_nats::jetstream::stream;
    let s = setup(|st| ConsumerConfig::new(st, "workers")).await?;
    let dlq = format!("{}_DLQ", s.stream);
    s.client
        .jetstream()
        .create_stream(stream::Config {
            name: dlq.clone(),
            subjects: vec![format!("{dlq}.>")],
            max_message_size: 2048,
            ..Default::default()
        })
        .await?;
    Publisher::new(s.client.clone())
        .publish(&format!("{}.big", s.stream), vec![b'x'; 8192].into())
        .await?;
    let consumer = Consumer::new(
        s.client.clone(),
        &s.stream,
        "workers",
        ConsumeOptions::default().dead_letter(format!("{dlq}.failed")),
    )?;
    let cancel = CancellationToken::new();
    let (c, k) = (consumer.clone(), cancel.clone());
    let task = tokio::spawn(async move {
        c.consume(k, |_m: Message| async {
            Err(HandlerError::permanent("poison"))
        })
        .await
    });
    wait_for("the dead letter", Duration::from_secs(15), || async {
        (consumer.stats().dead_lettered >= 1).then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}: {:?}", consumer.stats()))?;
    cancel.cancel();
    let stats = task.await??;
    assert_eq!((stats.termed, stats.naked), (1, 0), "{stats:?}");
    let m = s
        .client
        .jetstream()
        .get_stream(&dlq)
        .await?
        .get_last_raw_message_by_subject(&format!("{dlq}.failed"))
        .await?;
    assert!(m.payload.is_empty());
    let omitted = m.headers.get("Natty-Payload-Omitted").unwrap().as_str();
    assert!(omitted.starts_with("8192 bytes"), "{omitted}");
    Ok(())
}

/// The failure ledger cannot be used (here: someone else's stream holds its name with a
/// configuration that is no KV bucket): a failed message is retried with its delay and never
/// given up on for want of a count, even with `max_deliver(1)`.
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn an_unusable_failure_ledger_never_gives_up() -> anyhow::Result<()> {
    use natty_core::async_nats::jetstream::stream;
    let s = setup(|st| ConsumerConfig::new(st, "workers").max_deliver(Some(1))).await?;
    s.client
        .jetstream()
        .create_stream(stream::Config {
            name: "KV_natty_failures".to_owned(),
            subjects: vec![format!("{}_other.>", s.stream)],
            ..Default::default()
        })
        .await?;
    publish_n(&s, 1).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let options = ConsumeOptions::default()
        .retry_delay(Duration::from_millis(300), Duration::from_millis(300))
        .errors(tx);
    let log = Log::default();
    let at = Arc::new(Mutex::new(Vec::new()));
    let a = at.clone();
    let (cancel, consumer, task) = start(
        s.client.clone(),
        &s.stream,
        options,
        log.clone(),
        Duration::ZERO,
        move |_, delivered| {
            a.lock().unwrap().push(std::time::Instant::now());
            if delivered < 3 {
                Err(HandlerError::retry("downstream is down"))
            } else {
                Ok(())
            }
        },
    );
    wait_for(
        "the third run to succeed",
        Duration::from_secs(15),
        || async { (consumer.stats().acked == 1).then_some(()) },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}: {:?}", consumer.stats()))?;
    cancel.cancel();
    let stats = task.await??;
    assert_eq!((stats.termed, stats.naked), (0, 2), "{stats:?}");
    let at = at.lock().unwrap().clone();
    for pair in at.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(250),
            "retried after {gap:?}: a hot loop"
        );
    }
    let report = rx.try_recv()?;
    assert_eq!(report.failures, None, "{report}");
    Ok(())
}

/// The ledger's bucket deleted behind the consumer's back: the next failure creates it again,
/// with natty's configuration, and the message is still given up on at the limit (a count
/// lost with the bucket means more runs, never fewer).
#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_deleted_failure_ledger_is_created_again() -> anyhow::Result<()> {
    let s = setup(|st| ConsumerConfig::new(st, "workers").max_deliver(Some(2))).await?;
    publish_n(&s, 1).await?;
    let log = Log::default();
    let options = ConsumeOptions::default()
        .retry_delay(Duration::from_millis(500), Duration::from_millis(500));
    let js = s.client.jetstream().clone();
    let (cancel, consumer, task) = start(
        s.client.clone(),
        &s.stream,
        options,
        log.clone(),
        Duration::ZERO,
        |_, _| Err(HandlerError::retry("downstream is down")),
    );
    wait_for("the first failure", Duration::from_secs(10), || async {
        (consumer.stats().naked >= 1).then_some(())
    })
    .await?;
    js.delete_stream("KV_natty_failures").await?;
    wait_for("the give-up", Duration::from_secs(15), || async {
        (consumer.stats().termed >= 1).then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}: {:?}", consumer.stats()))?;
    cancel.cancel();
    task.await??;
    let runs = log.lock().unwrap().len();
    assert!((2..=3).contains(&runs), "the handler ran {runs} times");
    let kv = js.get_key_value("natty_failures").await?;
    let config = kv.status().await?;
    assert_eq!(config.max_age(), Duration::from_secs(2 * 24 * 3600));
    Ok(())
}
