use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use natty::{
    BatchConfig, BatchPublisher, CancellationToken, ConsumeOptions, Consumer, ConsumerConfig,
    StreamConfig,
};
use std::time::{Duration, Instant};
fn pct(v: &mut Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p) as usize]
}
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("NATS_URL")?;
    let client = natty::ConnectOptions::new([url.as_str()]).connect().await?;
    let js = jetstream::new(client.nats().clone());
    const N: usize = 3000;
    for round in 0..3 {
        for (np, nc, big) in [
            (true, false, false),
            (true, false, true),
            (false, false, false),
        ] {
            let name = "LP";
            let _ = natty::stream::delete_stream(&client, name).await;
            natty::stream::ensure_stream(&client, &StreamConfig::new(name, ["lp.>"])).await?;
            natty::stream::ensure_consumer(&client, &ConsumerConfig::new(name, "c")).await?;
            let epoch = Instant::now();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<f64>();
            let cancel = CancellationToken::new();
            let task = if nc {
                let c = Consumer::new(
                    client.clone(),
                    name,
                    "c",
                    ConsumeOptions::default()
                        .batch(if big { 5000 } else { 200 })
                        .heartbeat(Duration::from_secs(1))
                        .expires(Duration::from_secs(3)),
                )?;
                let k = cancel.clone();
                tokio::spawn(async move {
                    let _ = c
                        .consume(k, move |m| {
                            let ns = u64::from_be_bytes(m.payload[..8].try_into().unwrap());
                            let _ = tx.send((epoch.elapsed().as_nanos() as u64 - ns) as f64 / 1e3);
                            async { Ok(()) }
                        })
                        .await;
                })
            } else {
                let consumer: jetstream::consumer::Consumer<pull::Config> = js
                    .get_stream(name)
                    .await?
                    .get_consumer("c")
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let mut messages = consumer
                    .stream()
                    .heartbeat(Duration::from_secs(1))
                    .expires(Duration::from_secs(3))
                    .messages()
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                tokio::spawn(async move {
                    while let Some(m) = messages.next().await {
                        let Ok(m) = m else { continue };
                        let ns = u64::from_be_bytes(m.payload[..8].try_into().unwrap());
                        let _ = tx.send((epoch.elapsed().as_nanos() as u64 - ns) as f64 / 1e3);
                        let _ = m.ack().await;
                    }
                })
            };
            let publisher = BatchPublisher::new(
                client.clone(),
                if big {
                    BatchConfig::default().mode(natty::stream::PublishMode::Pipelined)
                } else {
                    BatchConfig::default()
                },
            )?;
            let mut acks = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            for _ in 0..N {
                tick.tick().await;
                let body: bytes::Bytes = (epoch.elapsed().as_nanos() as u64)
                    .to_be_bytes()
                    .to_vec()
                    .into();
                if np {
                    publisher.send("lp.x", body).await?;
                } else {
                    acks.push(js.publish("lp.x", body).await?);
                }
            }
            let mut v = Vec::new();
            while v.len() < N {
                v.push(
                    tokio::time::timeout(Duration::from_secs(10), rx.recv())
                        .await?
                        .unwrap(),
                );
            }
            publisher.close().await?;
            for a in acks {
                a.await?;
            }
            cancel.cancel();
            task.abort();
            println!(
                "round {round}: pipelined {big} publisher {} consumer {}: p50 {:.0} us p99 {:.0} us max {:.0}",
                if np { "natty" } else { "raw  " },
                if nc { "natty" } else { "raw  " },
                pct(&mut v, 0.5),
                pct(&mut v, 0.99),
                pct(&mut v, 1.0)
            );
        }
    }
    Ok(())
}
