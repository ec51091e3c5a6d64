//! A chaos consumer: consumes a durable (`durable`) or joins a consumer group (`group`) and
//! prints a line per handler run, in natty-testkit's typed protocol:
//! - `durable`: the payload is a number (8 bytes, big-endian); `processed` per run. With
//!   `--refuse-every N`, every number divisible by N is refused for good (after its
//!   `processed` line) and goes to the `--dead-letter` subject.
//! - `group`: the payload is the message's number within its key (as text), the key the last
//!   subject token; `partition-owned` / `partition-released` as the group reports them
//!   (stamped when they happened), `handled` per successful run, printed only while the
//!   partition is still owned (checked right before; a run that finds it lost fails).
//!
//! With `--fail-once-every N --fail-dir D`, a message whose stream sequence is divisible by N
//! fails the first time any process runs it (a file per sequence in D records that it did),
//! with a `failed` line: a transient failure, it must come back and run again.
//! SIGTERM: a graceful stop; `exit` is printed when it is over.

use std::{path::PathBuf, sync::Arc, time::Duration};

use natty::{
    ConsumeOptions, Consumer, ConsumerGroup, GroupConfig, HandlerError,
    group::{GroupEvent, Partition},
};
use natty_chaos::{
    CONSUMER_REQUEST_TIMEOUT, Event, cancel_on_sigterm, emit, emit_at, init_logs, mono_ns,
    mono_ns_of,
};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

/// A chaos consumer.
#[derive(Debug, clap::Parser)]
#[command(name = "chaos-consumer")]
struct Args {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    mode: Mode,
}

/// What both modes take (before the mode on the command line).
#[derive(Debug, clap::Args)]
struct Common {
    /// Server URLs, comma-separated.
    #[arg(long = "server", value_delimiter = ',', required = true)]
    servers: Vec<String>,
    /// This process's name (its lines' `node`; the member name in a group).
    #[arg(long, default_value_t = format!("k{}", std::process::id()))]
    id: String,
    /// Messages held at most (`ConsumeOptions::batch`).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// Handlers at once (`ConsumeOptions::concurrency`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    concurrency: u64,
    /// How long each handler works, in ms (0: not at all).
    #[arg(long = "handler-ms", default_value_t = 0)]
    handler_ms: u64,
    /// The graceful stop's deadline in ms (`ConsumeOptions::stop_timeout`; natty's default
    /// if not given).
    #[arg(long = "stop-timeout-ms")]
    stop_timeout_ms: Option<u64>,
    /// Where given-up messages go (none: they are terminated).
    #[arg(long = "dead-letter")]
    dead_letter: Option<String>,
    /// Refuse every number divisible by this for good (`durable` mode).
    #[arg(long = "refuse-every", value_parser = clap::value_parser!(u64).range(1..))]
    refuse_every: Option<u64>,
    /// Fail once, transiently, every message whose stream sequence is divisible by this.
    #[arg(
        long = "fail-once-every",
        requires = "fail_dir",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    fail_once_every: Option<u64>,
    /// The directory recording which messages failed once (shared by every process that
    /// consumes the same stream; it must exist).
    #[arg(long = "fail-dir", requires = "fail_once_every")]
    fail_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum Mode {
    /// Consume a durable made by the orchestrator.
    Durable {
        /// The stream.
        #[arg(long)]
        stream: String,
        /// The durable.
        #[arg(long)]
        durable: String,
        /// Order by key, the subject token at this index (`ordered_by_subject_token`).
        #[arg(long = "ordered-by-token")]
        ordered_by_token: Option<usize>,
    },
    /// Join a consumer group as member `--id`.
    Group {
        /// The group's name.
        #[arg(long)]
        group: String,
        /// The stream holding the messages.
        #[arg(long)]
        stream: String,
        /// Messages are on `<prefix>.<partition>.<key>`.
        #[arg(long)]
        prefix: String,
        /// Partitions.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        partitions: u32,
        /// Lease and membership TTL in seconds.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        ttl: u64,
        /// `ack_wait` of the partitions' durables, in seconds.
        #[arg(long = "ack-wait", value_parser = clap::value_parser!(u64).range(1..))]
        ack_wait: u64,
        /// Replicas of the group's buckets.
        #[arg(long, default_value_t = 3)]
        replicas: usize,
    },
}

/// The transient failures: which messages fail once.
#[derive(Debug)]
struct FailOnce {
    every: u64,
    dir: PathBuf,
}

impl FailOnce {
    /// Whether the run of the message at stream sequence `seq` fails: the first run of one
    /// whose sequence is divisible by `every`, in any process.
    fn now(this: Option<&Self>, seq: u64) -> bool {
        this.is_some_and(|f| {
            seq.is_multiple_of(f.every)
                && std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(f.dir.join(seq.to_string()))
                    .is_ok()
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logs();
    let Args { common, mode } = <Args as clap::Parser>::parse();
    let fail = match (common.fail_once_every, &common.fail_dir) {
        (Some(every), Some(dir)) => {
            anyhow::ensure!(
                dir.is_dir(),
                "--fail-dir {}: not a directory",
                dir.display()
            );
            Some(FailOnce {
                every,
                dir: dir.clone(),
            })
        }
        _ => None,
    };
    let client = natty::ConnectOptions::new(common.servers.clone())
        .name(common.id.clone())
        .request_timeout(CONSUMER_REQUEST_TIMEOUT)
        .ping_interval(Duration::from_secs(1))
        .connect()
        .await?;
    let mut options = ConsumeOptions::default()
        .batch(usize::try_from(common.batch)?)
        .concurrency(usize::try_from(common.concurrency)?)
        .expires(Duration::from_secs(5))
        .heartbeat(Duration::from_secs(1))
        .retry_delay(Duration::from_millis(100), Duration::from_secs(2));
    if let Some(ms) = common.stop_timeout_ms {
        options = options.stop_timeout(Duration::from_millis(ms));
    }
    if let Some(subject) = &common.dead_letter {
        options = options.dead_letter(subject.clone());
    }
    let cancel = cancel_on_sigterm();
    let id = common.id.clone();
    emit(
        &id,
        Event::Ready {
            pid: std::process::id(),
        },
    );
    let acked = match mode {
        Mode::Durable {
            stream,
            durable,
            ordered_by_token,
        } => {
            if let Some(index) = ordered_by_token {
                options = options.ordered_by_subject_token(index);
            }
            Some(consume(client, &stream, &durable, options, cancel, &common, fail).await?)
        }
        Mode::Group {
            group,
            stream,
            prefix,
            partitions,
            ttl,
            ack_wait,
            replicas,
        } => {
            let config = GroupConfig::new(group, stream, prefix, partitions, &id)
                .ttl(Duration::from_secs(ttl))
                .ack_wait(Duration::from_secs(ack_wait))
                .replicas(replicas)
                .consume(options);
            join(client, config, cancel, &common, fail).await?;
            None
        }
    };
    emit(&id, Event::Exit { acked });
    Ok(())
}

/// Consumes the durable until cancelled; returns how many messages were acked.
async fn consume(
    client: natty::Client,
    stream: &str,
    durable: &str,
    options: ConsumeOptions,
    cancel: natty::CancellationToken,
    common: &Common,
    fail: Option<FailOnce>,
) -> anyhow::Result<u64> {
    let consumer = Consumer::new(client, stream, durable, options)?;
    let (who, refuse_every) = (common.id.clone(), common.refuse_every);
    let work = Duration::from_millis(common.handler_ms);
    let fail = Arc::new(fail);
    let stats = consumer
        .consume(cancel, move |m| {
            let (who, fail) = (who.clone(), fail.clone());
            async move {
                let n = u64::from_be_bytes(
                    m.payload
                        .as_ref()
                        .try_into()
                        .map_err(|_| HandlerError::permanent("not a number"))?,
                );
                if !work.is_zero() {
                    tokio::time::sleep(work).await;
                }
                let (seq, delivered) = (m.stream_sequence, m.delivered);
                if FailOnce::now(fail.as_ref().as_ref(), seq) {
                    let key = String::new();
                    emit(
                        &who,
                        Event::Failed {
                            key,
                            n,
                            seq,
                            delivered,
                        },
                    );
                    return Err(HandlerError::retry("chaos: failing once"));
                }
                let cseq = m.consumer_sequence;
                emit(
                    &who,
                    Event::Processed {
                        n,
                        delivered,
                        seq,
                        cseq,
                    },
                );
                if refuse_every.is_some_and(|every| n % every == 0) {
                    return Err(HandlerError::permanent("chaos: refused for good"));
                }
                Ok(())
            }
        })
        .await?;
    Ok(stats.acked)
}

/// Joins the group until cancelled, printing its ownership events.
async fn join(
    client: natty::Client,
    config: GroupConfig,
    cancel: natty::CancellationToken,
    common: &Common,
    fail: Option<FailOnce>,
) -> anyhow::Result<()> {
    let group = ConsumerGroup::new(client, config)?;
    // Subscribed before `join`, so no event is missed; after `join` returned, the rest are
    // drained.
    let mut events = group.subscribe();
    let (done, mut finished) = tokio::sync::oneshot::channel::<()>();
    let printer = {
        let node = common.id.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    event = events.recv() => match event {
                        Ok(event) => print_event(&node, event),
                        Err(RecvError::Lagged(n)) => {
                            anyhow::bail!("{n} group events missed: the lines are incomplete")
                        }
                        Err(RecvError::Closed) => return Ok(()),
                    },
                    _ = &mut finished => loop {
                        match events.try_recv() {
                            Ok(event) => print_event(&node, event),
                            Err(TryRecvError::Lagged(n)) => {
                                anyhow::bail!("{n} group events missed: the lines are incomplete")
                            }
                            Err(_) => return Ok(()),
                        }
                    },
                }
            }
        })
    };
    let who = common.id.clone();
    let work = Duration::from_millis(common.handler_ms);
    let fail = Arc::new(fail);
    let joined = group
        .join(cancel, move |p: Partition, m: natty::Message| {
            let (who, fail) = (who.clone(), fail.clone());
            async move {
                let start_ns = mono_ns();
                let key = m.subject.rsplit('.').next().unwrap_or_default().to_owned();
                let n: u64 = std::str::from_utf8(&m.payload)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| HandlerError::permanent("payload is not a number"))?;
                if work.is_zero() {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(work).await;
                }
                // The side effect (the line) only while the partition is still ours.
                let checked_ns = mono_ns();
                if !p.is_owned() {
                    return Err(HandlerError::retry("the partition is no longer owned"));
                }
                let (seq, delivered) = (m.stream_sequence, m.delivered);
                if FailOnce::now(fail.as_ref().as_ref(), seq) {
                    emit(
                        &who,
                        Event::Failed {
                            key,
                            n,
                            seq,
                            delivered,
                        },
                    );
                    return Err(HandlerError::retry("chaos: failing once"));
                }
                let (partition, term) = (p.index, wire(p.term));
                emit(
                    &who,
                    Event::Handled {
                        partition,
                        term,
                        key,
                        n,
                        delivered,
                        start_ns,
                        checked_ns,
                    },
                );
                Ok(())
            }
        })
        .await;
    let _ = done.send(());
    printer.await??;
    Ok(joined?)
}

fn wire(term: natty::group::Term) -> natty_chaos::Term {
    natty_chaos::Term {
        epoch: term.epoch,
        revision: term.revision,
    }
}

fn print_event(node: &str, event: GroupEvent) {
    match event {
        GroupEvent::Acquired {
            partition,
            term,
            at,
        } => {
            let term = wire(term);
            emit_at(
                node,
                mono_ns_of(at),
                Event::PartitionOwned { partition, term },
            );
        }
        GroupEvent::Released {
            partition,
            term,
            at,
        } => {
            let term = wire(term);
            emit_at(
                node,
                mono_ns_of(at),
                Event::PartitionReleased { partition, term },
            );
        }
        _ => {}
    }
}
