//! A chaos consumer: consumes a durable and prints a `processed` line with each number (8
//! bytes, big-endian); with `--refuse-every N`, every number divisible by N is refused for good
//! (after its `processed` line) and goes to the `--dead-letter` subject. SIGTERM: a graceful
//! stop; `exit` is printed when it is over.

use std::time::Duration;

use natty::{ConsumeOptions, Consumer, HandlerError};
use natty_chaos::{Event, cancel_on_sigterm, emit, init_logs};

/// A chaos consumer.
#[derive(Debug, clap::Parser)]
#[command(name = "chaos-consumer")]
struct Args {
    /// Server URLs, comma-separated.
    #[arg(long = "server", value_delimiter = ',', required = true)]
    servers: Vec<String>,
    /// This process's name (its lines' `node`).
    #[arg(long, default_value_t = format!("k{}", std::process::id()))]
    id: String,
    /// The stream.
    #[arg(long)]
    stream: String,
    /// The durable, made by the orchestrator.
    #[arg(long)]
    durable: String,
    /// Where given-up messages go (none: they are terminated).
    #[arg(long = "dead-letter")]
    dead_letter: Option<String>,
    /// Refuse every number divisible by this for good.
    #[arg(long = "refuse-every", value_parser = clap::value_parser!(u64).range(1..))]
    refuse_every: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logs();
    let args = <Args as clap::Parser>::parse();
    let id = args.id;
    let client = natty::ConnectOptions::new(args.servers)
        .name(id.clone())
        .request_timeout(Duration::from_secs(2))
        .ping_interval(Duration::from_secs(1))
        .connect()
        .await?;
    let mut options = ConsumeOptions::default()
        .batch(100)
        .expires(Duration::from_secs(5))
        .heartbeat(Duration::from_secs(1))
        .retry_delay(Duration::from_millis(100), Duration::from_secs(2));
    if let Some(subject) = args.dead_letter {
        options = options.dead_letter(subject);
    }
    let consumer = Consumer::new(client, &args.stream, &args.durable, options)?;
    let cancel = cancel_on_sigterm();
    emit(
        &id,
        Event::Ready {
            pid: std::process::id(),
        },
    );
    let who = id.clone();
    let refuse_every = args.refuse_every;
    let stats = consumer
        .consume(cancel, move |m| {
            let who = who.clone();
            async move {
                let n = u64::from_be_bytes(
                    m.payload
                        .as_ref()
                        .try_into()
                        .map_err(|_| HandlerError::permanent("not a number"))?,
                );
                emit(
                    &who,
                    Event::Processed {
                        n,
                        delivered: m.delivered,
                        seq: m.stream_sequence,
                        cseq: m.consumer_sequence,
                    },
                );
                if refuse_every.is_some_and(|every| n % every == 0) {
                    return Err(HandlerError::permanent("chaos: refused for good"));
                }
                Ok(())
            }
        })
        .await?;
    emit(
        &id,
        Event::Exit {
            acked: Some(stats.acked),
        },
    );
    Ok(())
}
