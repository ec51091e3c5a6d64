//! A chaos election candidate: works every 50 ms while leader and writes its term to a fenced
//! sink — the election's fenced key `sink`, written with natty's fenced writes
//! (`Leadership::put`: the server refuses the write once another node took the lease).
//! Prints `elected` / `work` / `sink` / `lost` JSON lines.

use std::time::Duration;

use natty::{ElectionConfig, Kv, election::ErrorKind};
use natty_chaos::{Event, arg, cancel_on_sigterm, emit, init_logs, mono_ns, wire};

/// Writes `term` to the sink: natty's fenced write (`Leadership::put`), which the server
/// refuses once another node took the lease. `Ok(true)`: accepted; `Ok(false)`: refused,
/// `Deposed`.
async fn sink_write(lead: &natty::Leadership) -> anyhow::Result<bool> {
    match lead.put("sink", lead.term.to_string()).await {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::Deposed => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logs();
    let servers: Vec<String> = arg("--server")
        .unwrap_or_default()
        .split(',')
        .map(str::to_owned)
        .collect();
    let node = arg("--node").unwrap_or_else(|| format!("c{}", std::process::id()));
    let ttl = Duration::from_secs(arg("--ttl").and_then(|t| t.parse().ok()).unwrap_or(2));
    let bucket = arg("--bucket").unwrap_or_else(|| "chaos_el".into());
    // For verifying the checker: skip the lease check before side effects.
    let unsafe_no_check = std::env::args().any(|a| a == "--unsafe-skip-validity-check");
    let client = natty::ConnectOptions::new(servers)
        .name(node.clone())
        .request_timeout(Duration::from_secs(2))
        .ping_interval(Duration::from_secs(1))
        .connect()
        .await?;
    let kv = Kv::with_defaults(client.clone(), natty::BucketConfig::new("-").replicas(3));
    let election = natty::Election::new(
        kv.clone(),
        ElectionConfig::new(&bucket, "leader", &node)
            .ttl(ttl)
            .replicas(3),
    )?;
    let cancel = cancel_on_sigterm();
    // `--drop-on-term`: on SIGTERM, drop the `run` future instead of cancelling it (what
    // `select!`/`timeout` users do): the work must stop at once, without a resign.
    let drop_on_term = std::env::args().any(|a| a == "--drop-on-term");
    emit(
        &node,
        Event::Ready {
            pid: std::process::id(),
        },
    );
    let n = node.clone();
    let run_cancel = if drop_on_term {
        natty::CancellationToken::new()
    } else {
        cancel.clone()
    };
    let run = election.run(run_cancel, move |lead| {
        let node = n.clone();
        async move {
            let term = wire(lead.term);
            emit(&node, Event::Elected { term, server: None });
            loop {
                let checked_ns = mono_ns();
                if unsafe_no_check || lead.is_valid() {
                    emit(&node, Event::Work { term, checked_ns });
                    let issued = mono_ns();
                    match sink_write(&lead).await {
                        Ok(accepted) => emit(
                            &node,
                            Event::Sink {
                                term,
                                accepted,
                                issued_ns: issued,
                            },
                        ),
                        Err(e) => emit(
                            &node,
                            Event::SinkError {
                                term,
                                error: e.to_string(),
                            },
                        ),
                    }
                }
                tokio::select! {
                    () = lead.lost.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
            emit(&node, Event::Lost { term });
        }
    });
    if drop_on_term {
        tokio::select! {
            result = run => result?,
            () = cancel.cancelled() => {
                emit(&node, Event::Dropped);
            }
        }
        // The run future is gone: its work was aborted; nothing of ours runs any more.
    } else {
        run.await?;
    }
    emit(&node, Event::Exit { acked: None });
    Ok(())
}
