//! A chaos consumer: consumes the durable, prints `processed` lines with each number; every
//! number divisible by `DEAD_LETTER_EVERY` is refused for good and goes to `chaos-dl.n`.

use std::time::Duration;

use natty::{ConsumeOptions, Consumer};
use natty_chaos::{DEAD_LETTER_EVERY, Event, arg, cancel_on_sigterm, emit, init_logs};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logs();
    let servers: Vec<String> = arg("--server")
        .unwrap_or_default()
        .split(',')
        .map(str::to_owned)
        .collect();
    let id = arg("--id").unwrap_or_else(|| format!("k{}", std::process::id()));
    let stream = arg("--stream").unwrap_or_else(|| "CHAOS".into());
    let client = natty::ConnectOptions::new(servers)
        .name(id.clone())
        .request_timeout(Duration::from_secs(2))
        .ping_interval(Duration::from_secs(1))
        .connect()
        .await?;
    let consumer = Consumer::new(
        client,
        &stream,
        "workers",
        ConsumeOptions::default()
            .batch(100)
            .expires(Duration::from_secs(5))
            .heartbeat(Duration::from_secs(1))
            .dead_letter("chaos-dl.n")
            .retry_delay(Duration::from_millis(100), Duration::from_secs(2)),
    )?;
    let cancel = cancel_on_sigterm();
    emit(
        &id,
        Event::Ready {
            pid: std::process::id(),
        },
    );
    let who = id.clone();
    let stats = consumer
        .consume(cancel, move |m| {
            let who = who.clone();
            async move {
                let n = u64::from_be_bytes(
                    m.payload
                        .as_ref()
                        .try_into()
                        .map_err(|_| natty::HandlerError::permanent("not a number"))?,
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
                if n % DEAD_LETTER_EVERY == 0 {
                    return Err(natty::HandlerError::permanent("chaos: refused for good"));
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
