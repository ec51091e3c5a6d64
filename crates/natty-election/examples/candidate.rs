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
    let client = natty_core::ConnectOptions::new(args.servers.clone())
        .name(args.node.clone())
        .request_timeout(Duration::from_secs(2))
        .connect()
        .await?;
    let election = Election::new(
        natty_kv::Kv::new(client.clone()),
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
    election
        .run(cancel, move |lead| {
            let node = node.clone();
            let server = client.nats().server_info().server_name;
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
                    // The fence check comes right before the side effect.
                    if lead.is_valid() {
                        emit(
                            &node,
                            Event::Work {
                                term,
                                checked_ns: 0,
                            },
                        );
                    }
                    tokio::select! {
                        () = lead.lost.cancelled() => break,
                        () = tokio::time::sleep(interval) => {}
                    }
                }
                emit(&node, Event::Lost { term });
            }
        })
        .await?;
    emit(&args.node, Event::Exit { acked: None });
    Ok(())
}
