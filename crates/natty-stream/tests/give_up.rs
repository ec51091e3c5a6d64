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
use natty_testkit::{Nats, init_tracing, unique_name, wait_for};

struct Setup {
    _nats: Nats,
    url: String,
    client: Client,
    stream: String,
}

async fn setup(consumer: impl FnOnce(&str) -> ConsumerConfig) -> anyhow::Result<Setup> {
    init_tracing();
    let nats = Nats::start().await?;
    let client = ConnectOptions::new([nats.url()]).connect().await?;
    let stream = unique_name("G").replace('-', "_");
    ensure_stream(
        &client,
        &StreamConfig::new(&stream, [format!("{stream}.>")]),
    )
    .await?;
    ensure_consumer(&client, &consumer(&stream)).await?;
    Ok(Setup {
        url: nats.url(),
        _nats: nats,
        client,
        stream,
    })
}

async fn publish_n(s: &Setup, n: u64) -> anyhow::Result<()> {
    let p = Publisher::new(s.client.clone());
    for i in 0..n {
        p.publish(&format!("{}.m", s.stream), i.to_string().into())
            .await?;
    }
    Ok(())
}

fn num(m: &Message) -> u64 {
    std::str::from_utf8(&m.payload).unwrap().parse().unwrap()
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
