//! Minimal reproduction: async-nats `Subscriber::drain` drops messages the server sent before
//! it processed the UNSUB.
//! Needs a server: `nats-server` (NATS_URL, default nats://127.0.0.1:4222).
//! Cargo.toml: async-nats = "0.48", tokio = { version = "1", features = ["full"] },
//! futures = "0.3".
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), async_nats::Error> {
    const N: usize = 20_000;
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let subscriber_client = async_nats::connect(&url).await?;
    let publisher = async_nats::connect(&url).await?;
    let mut sub = subscriber_client.subscribe("repro.drain").await?;
    subscriber_client.flush().await?;
    for _ in 0..N {
        publisher
            .publish("repro.drain", vec![0u8; 1024].into())
            .await?;
    }
    // Once this returns the server has routed all N to the subscription: every one of them
    // was sent before the server sees the UNSUB that drain sends next.
    publisher.flush().await?;
    sub.drain().await?;
    let mut received = 0;
    while sub.next().await.is_some() {
        received += 1;
    }
    println!("published {N}, received {received} after drain (expected {N})");
    assert_eq!(received, N, "drain dropped messages sent before the UNSUB");
    Ok(())
}
