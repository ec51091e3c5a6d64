use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use natty::{CancellationToken, ConsumeOptions, Consumer, ConsumerConfig, StreamConfig};
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};
use std::time::{Duration, Instant};
fn cpu_ns(pid: &str) -> u64 {
    let mut t = 0;
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let p = e.unwrap().path().join("schedstat");
        if let Ok(s) = std::fs::read_to_string(p) {
            t += s.split_whitespace().next().unwrap().parse::<u64>().unwrap();
        }
    }
    t
}
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("NATS_URL")?;
    let spid = std::env::var("SPID")?;
    let client = natty::ConnectOptions::new([url.as_str()]).connect().await?;
    let js = jetstream::new(client.nats().clone());
    const N: u64 = 200_000;
    let _ = natty::stream::delete_stream(&client, "CP").await;
    natty::stream::ensure_stream(&client, &StreamConfig::new("CP", ["cp.>"])).await?;
    let mut acks = std::collections::VecDeque::new();
    for i in 0..N {
        acks.push_back(js.publish("cp.x", vec![0u8; 128].into()).await?);
        if acks.len() > 4096 {
            acks.pop_front().unwrap().await?;
        }
        let _ = i;
    }
    for a in acks {
        a.await?;
    }
    for round in 0..3 {
        // natty
        let d = format!("n{round}");
        natty::stream::ensure_consumer(
            &client,
            &ConsumerConfig::new("CP", &d).max_ack_pending(10_000),
        )
        .await?;
        let c = Consumer::new(
            client.clone(),
            "CP",
            &d,
            ConsumeOptions::default().batch(500),
        )?;
        let cancel = CancellationToken::new();
        let done = Arc::new(AtomicU64::new(0));
        let (c0, s0, t0) = (cpu_ns("self"), cpu_ns(&spid), Instant::now());
        let (k, dd) = (cancel.clone(), done.clone());
        c.consume(cancel.clone(), move |_m| {
            let (k, dd) = (k.clone(), dd.clone());
            async move {
                if dd.fetch_add(1, Ordering::Relaxed) + 1 >= N {
                    k.cancel();
                }
                Ok(())
            }
        })
        .await?;
        let (c1, s1, el) = (cpu_ns("self"), cpu_ns(&spid), t0.elapsed());
        let natty = (
            N as f64 / el.as_secs_f64(),
            (c1 - c0) as f64 / N as f64,
            (s1 - s0) as f64 / N as f64,
        );
        if std::env::var("ONLY_NATTY").is_ok() {
            println!("natty {:.0} msg/s client {:.2}", natty.0, natty.1 / 1e3);
            continue;
        }
        // raw fetch
        let d = format!("r{round}");
        let consumer: jetstream::consumer::Consumer<pull::Config> = js
            .get_stream("CP")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .create_consumer(pull::Config {
                durable_name: Some(d.clone()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                max_ack_pending: 10_000,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (c0, s0, t0) = (cpu_ns("self"), cpu_ns(&spid), Instant::now());
        let mut got = 0;
        while got < N {
            let mut b = consumer
                .fetch()
                .max_messages(500)
                .expires(Duration::from_secs(1))
                .messages()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            while let Some(m) = b.next().await {
                let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
                m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                got += 1;
            }
        }
        client.nats().flush().await?;
        let (c1, s1, el) = (cpu_ns("self"), cpu_ns(&spid), t0.elapsed());
        let raw = (
            N as f64 / el.as_secs_f64(),
            (c1 - c0) as f64 / N as f64,
            (s1 - s0) as f64 / N as f64,
        );
        println!(
            "round {round}: natty {:.0} msg/s client {:.2} us/msg server {:.2} us/msg | raw fetch {:.0} msg/s client {:.2} server {:.2} | ratio {:.3}",
            natty.0,
            natty.1 / 1e3,
            natty.2 / 1e3,
            raw.0,
            raw.1 / 1e3,
            raw.2 / 1e3,
            natty.0 / raw.0
        );
    }
    Ok(())
}
