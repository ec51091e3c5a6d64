//! One election candidate as a process, for multi-process fault tests.
//!
//! Prints one JSON line per transition on stdout in natty-testkit's typed protocol
//! (`natty_testkit::procs::Line`, `mono_ns` from CLOCK_MONOTONIC, comparable across processes
//! on one host): `ready` once running, `elected` (with its term and server), `work` each time
//! its work runs, `lost`, `exit`. SIGTERM/SIGINT: resign and exit.
//!
//! ```text
//! cargo run -p natty-election --example candidate -- --server nats://127.0.0.1:4222 \
//!     --bucket elections --key leader --node n1 --ttl 2 --work-interval-ms 50
//! ```

use std::time::Duration;

use natty_election::{CancellationToken, Election, ElectionConfig};
use natty_testkit::procs::{Event, emit};

fn wire(term: natty_election::Term) -> natty_testkit::procs::Term {
    natty_testkit::procs::Term {
        epoch: term.epoch,
        revision: term.revision,
    }
}

/// One election candidate as a process.
#[derive(Debug, clap::Parser)]
#[command(name = "candidate")]
struct Args {
    /// Server URLs, comma-separated.
    #[arg(
        long = "server",
        value_delimiter = ',',
        default_value = "nats://127.0.0.1:4222"
    )]
    servers: Vec<String>,
    /// KV bucket of the election.
    #[arg(long, default_value = "elections")]
    bucket: String,
    /// Key of the election.
    #[arg(long, default_value = "leader")]
    key: String,
    /// This candidate's name.
    #[arg(long, default_value_t = format!("node-{}", std::process::id()))]
    node: String,
    /// Lease TTL in seconds.
    #[arg(long, default_value_t = 2)]
    ttl: u64,
    /// How often the leader works, in ms.
    #[arg(long = "work-interval-ms", default_value_t = 50)]
    work_interval_ms: u64,
    /// Bucket replicas.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Also write `<node>@<term>` to this fenced key every work interval, from a task that
    /// ignores `lost` (the stale writer fencing must stop): a `sink` line per write,
    /// `accepted: false` once it is refused `Deposed` (then that task ends).
    #[arg(long = "fenced-key")]
    fenced_key: Option<String>,
    /// Client ping interval in ms (default: the client's).
    #[arg(long = "ping-ms")]
    ping_ms: Option<u64>,
    /// On SIGTERM, drop the `run` future instead of cancelling it (what `select!`/`timeout`
    /// users do): the work must stop at once, without a resign; prints `dropped`.
    #[arg(long = "drop-on-term")]
    drop_on_term: bool,
    /// Work without checking the lease first: a broken candidate, to see that the checker
    /// catches it.
    #[arg(long = "unsafe-skip-validity-check")]
    unsafe_skip_validity_check: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = <Args as clap::Parser>::parse();
    let mut options = natty_core::ConnectOptions::new(args.servers.clone())
        .name(args.node.clone())
        .request_timeout(Duration::from_secs(2));
    if let Some(ms) = args.ping_ms {
        options = options.ping_interval(Duration::from_millis(ms));
    }
    let client = options.connect().await?;
    // A bucket deleted behind the election's back is re-created with these.
    let kv = natty_kv::Kv::with_defaults(
        client.clone(),
        natty_kv::BucketConfig::default().replicas(args.replicas),
    );
    let election = Election::new(
        kv,
        ElectionConfig::new(&args.bucket, &args.key, &args.node)
            .ttl(Duration::from_secs(args.ttl))
            .replicas(args.replicas),
    )?;

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

    emit(
        &args.node,
        Event::Ready {
            pid: std::process::id(),
        },
    );
    let node = args.node.clone();
    let interval = Duration::from_millis(args.work_interval_ms);
    let fenced_key = args.fenced_key.clone();
    let skip_check = args.unsafe_skip_validity_check;
    let run_cancel = if args.drop_on_term {
        CancellationToken::new()
    } else {
        cancel.clone()
    };
    let run = election.run(run_cancel, move |lead| {
        let node = node.clone();
        let server = client.nats().server_info().server_name;
        if let Some(key) = fenced_key.clone() {
            // Detached: it outlives the work (aborted or not), as a stale writer would.
            tokio::spawn(write_fenced(lead.clone(), key, node.clone(), interval));
        }
        async move {
            let term = wire(lead.term);
            emit(
                &node,
                Event::Elected {
                    term,
                    server: Some(server),
                },
            );
            loop {
                // The fence check comes right before the side effect. Its time is
                // stamped before the check: a freeze between check and print must not
                // look like work done after the freeze.
                let checked_ns = natty_testkit::procs::mono_ns();
                if skip_check || lead.is_valid() {
                    emit(&node, Event::Work { term, checked_ns });
                }
                tokio::select! {
                    () = lead.lost.cancelled() => break,
                    () = tokio::time::sleep(interval) => {}
                }
            }
            emit(&node, Event::Lost { term });
        }
    });
    if args.drop_on_term {
        tokio::select! {
            result = run => result?,
            () = cancel.cancelled() => emit(&args.node, Event::Dropped),
        }
    } else {
        run.await?;
    }
    emit(&args.node, Event::Exit { acked: None });
    Ok(())
}

/// Writes `<node>@<term>` to fenced key `key` every `interval` until refused `Deposed`,
/// whatever `lost` says; one `sink` (or `sink-error`) line per write.
async fn write_fenced(
    lead: natty_election::Leadership,
    key: String,
    node: String,
    interval: Duration,
) {
    let term = wire(lead.term);
    let value = format!("{node}@{}", lead.term);
    loop {
        let issued_ns = natty_testkit::procs::mono_ns();
        match lead.put(key.clone(), value.clone()).await {
            Ok(()) => emit(
                &node,
                Event::Sink {
                    term,
                    accepted: true,
                    issued_ns,
                },
            ),
            Err(e) if e.kind() == natty_election::ErrorKind::Deposed => {
                emit(
                    &node,
                    Event::Sink {
                        term,
                        accepted: false,
                        issued_ns,
                    },
                );
                return;
            }
            Err(e) => emit(
                &node,
                Event::SinkError {
                    term,
                    error: e.to_string(),
                },
            ),
        }
        tokio::time::sleep(interval).await;
    }
}
