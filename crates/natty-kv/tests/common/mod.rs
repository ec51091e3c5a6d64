//! Helpers shared by the natty-kv suites.
#![allow(dead_code, unreachable_pub, reason = "each suite uses a part")]

use std::time::Duration;

use futures::StreamExt;
use natty_core::ConnectOptions;
use natty_kv::{Event, Kv, Watch};
use natty_testkit::{Nats, init_tracing, unique_name};

/// A fresh server and a `Kv` connected to it.
pub async fn setup() -> anyhow::Result<(Nats, Kv)> {
    init_tracing();
    let nats = Nats::start().await?;
    let client = ConnectOptions::new([nats.url()]).connect().await?;
    Ok((nats, Kv::new(client)))
}

/// A bucket name unique to this test.
pub fn bucket() -> String {
    unique_name("b").replace('-', "_")
}

/// The next event, or fail after `timeout`.
pub async fn next_event(watch: &mut Watch, timeout: Duration) -> anyhow::Result<Event> {
    Ok(tokio::time::timeout(timeout, watch.next())
        .await
        .map_err(|_| anyhow::anyhow!("no watch event within {timeout:?}"))?
        .ok_or_else(|| anyhow::anyhow!("watch ended"))??)
}

/// A TCP proxy in front of a server that can hold back the server's replies: it forwards
/// what the client sends as usual, but while held it keeps every byte the server sends and
/// delivers it (late, in order) only when the client has sent `pattern` a given number of
/// times. This makes "the server stored the write, its answer was lost" happen on purpose.
#[derive(Debug, Clone)]
pub struct Proxy {
    addr: std::net::SocketAddr,
    hold: std::sync::Arc<std::sync::Mutex<Option<Hold>>>,
}

#[derive(Debug)]
struct Hold {
    pattern: Vec<u8>,
    seen: usize,
    release_at: usize,
}

impl Proxy {
    /// A proxy to `target` (`host:port`).
    pub async fn start(target: String) -> anyhow::Result<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let proxy = Self {
            addr: listener.local_addr()?,
            hold: std::sync::Arc::default(),
        };
        let hold = proxy.hold.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut server_rx, mut server_tx) = server.into_split();
                let up = hold.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = client_rx.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        {
                            let mut h =
                                up.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                            if let Some(held) = h.as_mut() {
                                held.seen += count(&buf[..n], &held.pattern);
                                if held.seen >= held.release_at {
                                    // Released before this chunk reaches the server, so its
                                    // answer is not held.
                                    *h = None;
                                }
                            }
                        }
                        if server_tx.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let down = hold.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut kept = Vec::new();
                    while let Ok(n) = server_rx.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if down
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .is_some()
                        {
                            kept.extend_from_slice(&buf[..n]);
                            continue;
                        }
                        if !kept.is_empty() && client_tx.write_all(&kept).await.is_err() {
                            break;
                        }
                        kept.clear();
                        if client_tx.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Ok(proxy)
    }

    /// The URL to connect to.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// From now on, hold the server's replies until the client has sent `pattern` `times`
    /// times (counted from now).
    pub fn hold_until_sent(&self, pattern: &str, times: usize) {
        *self
            .hold
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Hold {
            pattern: pattern.as_bytes().to_vec(),
            seen: 0,
            release_at: times,
        });
    }

    /// Whether replies are still held.
    pub fn holding(&self) -> bool {
        self.hold
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    if needle.is_empty() {
        return 0;
    }
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// A raw JetStream context on `url`, for judging from the outside.
pub async fn judge(url: String) -> anyhow::Result<async_nats::jetstream::Context> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(url)
        .await?;
    Ok(async_nats::jetstream::new(client))
}

/// The server name of the bucket's stream leader (waits until there is one).
pub async fn stream_leader(
    js: &async_nats::jetstream::Context,
    bucket: &str,
) -> anyhow::Result<String> {
    natty_testkit::wait_for("a stream leader", Duration::from_secs(60), || async {
        let mut stream = js.get_stream(format!("KV_{bucket}")).await.ok()?;
        stream.info().await.ok()?.cluster.clone()?.leader
    })
    .await
}
