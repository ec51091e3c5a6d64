//! One election candidate as a process, for multi-process fault tests.
//!
//! Prints one JSON line per transition on stdout, with `mono_ns` from CLOCK_MONOTONIC
//! (comparable across processes on one host):
//! `{"node":"n1","event":"elected","term":{"epoch":..,"revision":7},"mono_ns":..,"server":".."}`,
//! `{"node":"n1","event":"work","term":{..},"mono_ns":..}` each time its work runs,
//! `{"node":"n1","event":"lost","term":{..},"mono_ns":..}`, and `{"event":"ready"}` once running.
//! SIGTERM/SIGINT: resign and exit.
//!
//! ```text
//! cargo run -p natty-election --example candidate -- --server nats://127.0.0.1:4222 \
//!     --bucket elections --key leader --node n1 --ttl 2 --work-interval-ms 50
//! ```

use std::time::Duration;

use natty_election::{CancellationToken, Election, ElectionConfig};
use serde_json::json;

fn mono_ns() -> u128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u128) * 1_000_000_000 + t.tv_nsec as u128
}

fn emit(value: serde_json::Value) {
    // One write per line so lines from concurrent tasks never interleave.
    #[allow(clippy::print_stdout, reason = "this example's output is its protocol")]
    {
        println!("{value}");
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

    emit(json!({"node": args.node, "event": "ready", "mono_ns": mono_ns() as u64}));
    let node = args.node.clone();
    let interval = Duration::from_millis(args.work_interval_ms);
    election
        .run(cancel, move |lead| {
            let node = node.clone();
            let server = client.nats().server_info().server_name;
            async move {
                emit(json!({"node": node, "event": "elected", "term": lead.term,
                            "mono_ns": mono_ns() as u64, "server": server}));
                loop {
                    // The fence check comes right before the side effect.
                    if lead.is_valid() {
                        emit(json!({"node": node, "event": "work", "term": lead.term,
                                    "mono_ns": mono_ns() as u64}));
                    }
                    tokio::select! {
                        () = lead.lost.cancelled() => break,
                        () = tokio::time::sleep(interval) => {}
                    }
                }
                emit(json!({"node": node, "event": "lost", "term": lead.term,
                            "mono_ns": mono_ns() as u64}));
            }
        })
        .await?;
    emit(json!({"node": args.node, "event": "exit", "mono_ns": mono_ns() as u64}));
    Ok(())
}
