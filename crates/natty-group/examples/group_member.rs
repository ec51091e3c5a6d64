//! One consumer group member as a process, for multi-process tests
//! (`tests/group_processes.rs`).
//!
//! Prints one JSON line per event on stdout in natty-testkit's typed protocol
//! (`natty_testkit::procs::Line`, `mono_ns` from CLOCK_MONOTONIC, comparable across processes
//! on one host): `ready` once running; `partition-owned` / `partition-released` stamped when
//! the group took / stopped consuming the partition (from the event's `at`, not when it was
//! read); `handled` per message, with the handler's start and end and when it checked it still
//! owned the partition (`Partition::is_owned`, right before the line; a message whose check
//! fails is not printed and fails, so the next owner gets it); `exit`. The payload of a
//! message is its number within its key; the key is the last subject token.
//! SIGTERM/SIGINT: leave the group cleanly (cancel, await `join`) and exit.
//!
//! ```text
//! cargo run -p natty-group --example group_member -- --server nats://127.0.0.1:4222 \
//!     --group billing --stream ORDERS --prefix orders --partitions 12 --member m1
//! ```

use std::time::Duration;

use natty_group::{CancellationToken, ConsumerGroup, GroupConfig, GroupEvent, Partition};
use natty_stream::{ConsumeOptions, HandlerError, Message};
use natty_testkit::procs::{Event, emit, emit_at, mono_ns, mono_ns_of};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

fn wire(term: natty_group::Term) -> natty_testkit::procs::Term {
    natty_testkit::procs::Term {
        epoch: term.epoch,
        revision: term.revision,
    }
}

/// One consumer group member as a process.
#[derive(Debug, clap::Parser)]
#[command(name = "group_member")]
struct Args {
    /// Server URLs, comma-separated.
    #[arg(
        long = "server",
        value_delimiter = ',',
        default_value = "nats://127.0.0.1:4222"
    )]
    servers: Vec<String>,
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
    #[arg(long, default_value_t = 12)]
    partitions: u32,
    /// This member's name.
    #[arg(long, default_value_t = format!("member-{}", std::process::id()))]
    member: String,
    /// Lease and membership TTL in seconds.
    #[arg(long, default_value_t = 2)]
    ttl: u64,
    /// `ack_wait` of the partitions' durables, in seconds.
    #[arg(long = "ack-wait", default_value_t = 30)]
    ack_wait: u64,
    /// Handlers at once per partition.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Messages pulled at once per partition.
    #[arg(long, default_value_t = 200)]
    batch: usize,
    /// How long each handler works, in µs (0: it only yields).
    #[arg(long = "handler-us", default_value_t = 0)]
    handler_us: u64,
    /// Replicas of the group's buckets (3 in a cluster).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Client ping interval in ms: a connection that misses two pings is replaced.
    #[arg(long = "ping-ms", default_value_t = 1000)]
    ping_ms: u64,
}

/// Log lines stamped with [`mono_ns`], comparable with the JSON lines' `mono_ns`.
struct MonoTime;

impl tracing_subscriber::fmt::time::FormatTime for MonoTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        write!(w, "{}", mono_ns())
    }
}

fn print_event(node: &str, event: GroupEvent) {
    match event {
        GroupEvent::Acquired {
            partition,
            term,
            at,
        } => emit_at(
            node,
            mono_ns_of(at),
            Event::PartitionOwned {
                partition,
                term: wire(term),
            },
        ),
        GroupEvent::Released {
            partition,
            term,
            at,
        } => emit_at(
            node,
            mono_ns_of(at),
            Event::PartitionReleased {
                partition,
                term: wire(term),
            },
        ),
        _ => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_timer(MonoTime)
        .init();
    let args = <Args as clap::Parser>::parse();
    let node = args.member.clone();
    let client = natty_core::ConnectOptions::new(args.servers.clone())
        .name(node.clone())
        .request_timeout(Duration::from_secs(2))
        .ping_interval(Duration::from_millis(args.ping_ms))
        .connect()
        .await?;
    let config = GroupConfig::new(
        &args.group,
        &args.stream,
        &args.prefix,
        args.partitions,
        &node,
    )
    .ttl(Duration::from_secs(args.ttl))
    .ack_wait(Duration::from_secs(args.ack_wait))
    .replicas(args.replicas)
    .consume(
        ConsumeOptions::default()
            .concurrency(args.concurrency)
            .batch(args.batch),
    );
    let group = ConsumerGroup::new(client, config)?;

    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        on_signal.cancel();
    });

    // Ownership events, printed with the time they happened. Subscribed before `join`, so
    // none is missed; after `join` returned, the rest are drained.
    let mut events = group.subscribe();
    let (done, mut finished) = tokio::sync::oneshot::channel::<()>();
    let printer = {
        let node = node.clone();
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

    emit(
        &node,
        Event::Ready {
            pid: std::process::id(),
        },
    );
    let work = Duration::from_micros(args.handler_us);
    let handler_node = node.clone();
    let joined = group
        .join(cancel, move |p: Partition, m: Message| {
            let node = handler_node.clone();
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
                // The side effect (the line) only while the partition is still ours: a
                // member frozen past its lease wakes up here before it noticed the loss.
                let checked_ns = mono_ns();
                if !p.is_owned() {
                    return Err(HandlerError::retry("the partition is no longer owned"));
                }
                emit(
                    &node,
                    Event::Handled {
                        partition: p.index,
                        term: wire(p.term),
                        key,
                        n,
                        delivered: m.delivered,
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
    joined?;
    emit(&node, Event::Exit { acked: None });
    Ok(())
}
