//! Shared by the chaos orchestrator and its child processes: the clock and the line format.

/// Consumers refuse every number divisible by this for good: it must end up in the
/// dead-letter stream `CHAOS_DL` (subject `chaos-dl.n`) exactly once.
pub const DEAD_LETTER_EVERY: u64 = 101;

/// The request timeout of the chaos consumers' connections (`chaos-consumer`): it bounds each
/// server round-trip of a stop (the ack flush, a group's membership delete and lease resigns).
pub const CONSUMER_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The clock, the typed line protocol and the process harness, shared with natty-election's
/// multi-process suite.
pub use natty_testkit::procs::{Event, Line, Lines, Term, emit, emit_at, mono_ns, mono_ns_of};

/// Logs to stderr, filtered by RUST_LOG (warnings by default).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

/// A token cancelled when the process gets SIGTERM (a graceful stop: resign, ack, exit).
pub fn cancel_on_sigterm() -> natty::CancellationToken {
    natty::cancel_on_shutdown_signal().unwrap_or_default() // no handler: SIGTERM exits as before
}
