//! [`Proxy`]: a TCP proxy between NATS clients and a server that can swallow one chosen
//! client message, to put a server fault exactly in the middle of a protocol exchange (e.g.
//! after an atomic batch's messages reached the server, before its commit did).
//!
//! Hand-written because it must understand just enough of the NATS client protocol to cut at a
//! message boundary (`PUB`/`HPUB` carry a payload whose size is on the op line); generic TCP
//! fault proxies (toxiproxy) cut at byte offsets, which is not deterministic here.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};

/// The armed trap: the marker to look for and whom to tell when a message carried it.
type Trap = Arc<Mutex<Option<(Vec<u8>, oneshot::Sender<()>)>>>;

/// A NATS-aware TCP proxy on `127.0.0.1`, forwarding to a server port. Stops when dropped.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    trap: Trap,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy to the server listening on `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let trap: Trap = Arc::default();
        let accept_trap = trap.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let trap = accept_trap.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await {
                        pipe(client, server, trap).await;
                    }
                });
            }
        });
        Ok(Self { port, trap, task })
    }

    /// The URL clients connect to.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Swallows the next client message (`PUB`/`HPUB` with its payload) whose bytes contain
    /// `marker`: it never reaches the server, while everything before and after it does. The
    /// receiver fires once a message was swallowed.
    pub fn swallow_next(&self, marker: &[u8]) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        *self.trap.lock().unwrap_or_else(PoisonError::into_inner) = Some((marker.to_vec(), tx));
        rx
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies server → client as is, and client → server one protocol op at a time, swallowing
/// the op the trap is armed for. Ends when either side closes.
async fn pipe(client: TcpStream, server: TcpStream, trap: Trap) {
    let (client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let down = async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    let up = async move {
        let mut reader = BufReader::new(client_read);
        let mut op = Vec::new();
        loop {
            op.clear();
            match reader.read_until(b'\n', &mut op).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            // `PUB <subject> [reply] <size>` / `HPUB <subject> [reply] <hdr> <total>`: the
            // payload (and its CRLF) follows.
            let line = String::from_utf8_lossy(&op).to_string();
            let word = line
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            if word == "PUB" || word == "HPUB" {
                let size: usize = line
                    .split_whitespace()
                    .last()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let start = op.len();
                op.resize(start + size + 2, 0);
                if reader.read_exact(&mut op[start..]).await.is_err() {
                    break;
                }
                if swallow(&trap, &op) {
                    continue;
                }
            }
            if server_write.write_all(&op).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    tokio::select! {
        () = down => {}
        () = up => {}
    }
}

/// Whether `message` is the one the trap waits for (then the trap is disarmed and told).
fn swallow(trap: &Trap, message: &[u8]) -> bool {
    let mut armed = trap.lock().unwrap_or_else(PoisonError::into_inner);
    let hit = armed.as_ref().is_some_and(|(marker, _)| {
        message
            .windows(marker.len())
            .any(|w| w == marker.as_slice())
    });
    if hit && let Some((_, tell)) = armed.take() {
        let _ = tell.send(());
    }
    hit
}
