//! [`Proxy`]: a TCP proxy between NATS clients and a server that can swallow one chosen
//! client message, to put a server fault exactly in the middle of a protocol exchange (e.g.
//! after an atomic batch's messages reached the server, before its commit did), and can cut
//! its clients off the server for a while (a network partition of those clients alone).
//!
//! Hand-written because it must understand just enough of the NATS protocol to cut at a
//! message boundary (`PUB`/`HPUB`/`MSG`/`HMSG` carry a payload whose size is on the op line);
//! generic TCP fault proxies (toxiproxy) cut at byte offsets, which is not deterministic here.
//! It strips the servers a cluster advertises (`connect_urls` in `INFO`), so clients keep
//! to the proxy: otherwise they reconnect straight to a server and a cut cuts nothing.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::{oneshot, watch},
};

/// The armed trap: the marker to look for and whom to tell when a message carried it.
type Trap = Arc<Mutex<Option<(Vec<u8>, oneshot::Sender<()>)>>>;

/// A NATS-aware TCP proxy on `127.0.0.1`, forwarding to a server port. Stops when dropped.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    trap: Trap,
    /// `true` while cut.
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy to the server listening on `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let trap: Trap = Arc::default();
        let accept_trap = trap.clone();
        let (cut, open) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (trap, mut open) = (accept_trap.clone(), open.clone());
                tokio::spawn(async move {
                    // A connection made while cut reaches the server only once restored.
                    if open.wait_for(|cut| !*cut).await.is_err() {
                        return;
                    }
                    if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await {
                        pipe(client, server, trap, open).await;
                    }
                });
            }
        });
        Ok(Self {
            port,
            trap,
            cut,
            task,
        })
    }

    /// Cuts every client of this proxy off the server until [`restore`](Self::restore): like
    /// a network partition, nothing is closed, nothing more is forwarded either way (bytes
    /// wait, TCP pushes back), and new connections are accepted but not forwarded. Clients
    /// notice only by their own timeouts (missed pings, requests).
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Ends a [`cut`](Self::cut): what waited is forwarded, new connections go through.
    pub fn restore(&self) {
        self.cut.send_replace(false);
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

/// Forwards both ways one protocol op at a time: client → server swallowing the op the trap
/// is armed for, server → client without the advertised servers; nothing while cut. Ends
/// when either side closes.
async fn pipe(client: TcpStream, server: TcpStream, trap: Trap, open: watch::Receiver<bool>) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = forward(client_read, server_write, open.clone(), |op| {
        !swallow(&trap, op)
    });
    let down = forward(server_read, client_write, open, |op| {
        strip_advertised(op);
        true
    });
    tokio::select! {
        () = down => {}
        () = up => {}
    }
}

/// Copies `from` to `to` one op at a time (`keep` may edit an op or drop it), waiting while
/// cut. An op with a payload (`PUB`/`MSG <subject> [reply] <size>`, `HPUB`/`HMSG ... <hdr>
/// <total>`) is read whole: the size is the op line's last token.
async fn forward<R, W>(
    from: R,
    mut to: W,
    mut open: watch::Receiver<bool>,
    mut keep: impl FnMut(&mut Vec<u8>) -> bool,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut reader = BufReader::new(from);
    let mut op = Vec::new();
    loop {
        op.clear();
        match reader.read_until(b'\n', &mut op).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&op).to_string();
        let word = line
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        if matches!(word.as_str(), "PUB" | "HPUB" | "MSG" | "HMSG") {
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
        }
        if !keep(&mut op) {
            continue;
        }
        if open.wait_for(|cut| !*cut).await.is_err() || to.write_all(&op).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Removes the servers a cluster advertises from an `INFO` op, so that clients reconnect
/// through the proxy only.
fn strip_advertised(op: &mut Vec<u8>) {
    let Some(json) = op.strip_prefix(b"INFO ") else {
        return;
    };
    let Ok(serde_json::Value::Object(mut info)) = serde_json::from_slice(json.trim_ascii()) else {
        return;
    };
    let urls = info.remove("connect_urls");
    let ws_urls = info.remove("ws_connect_urls");
    if urls.is_none() && ws_urls.is_none() {
        return;
    }
    let mut out = b"INFO ".to_vec();
    out.extend(serde_json::Value::Object(info).to_string().into_bytes());
    out.extend(b"\r\n");
    *op = out;
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

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "in a test a panic is the failure report"
    )]

    use std::time::Duration;

    use super::*;

    /// A fake server: sends an `INFO` advertising another server, then echoes.
    async fn upstream() -> u16 {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let info = b"INFO {\"port\":4222,\"connect_urls\":[\"172.18.0.3:4222\"]}\r\n";
                    let _ = s.write_all(info).await;
                    let (r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut BufReader::new(r), &mut w).await;
                });
            }
        });
        port
    }

    async fn read_line(r: &mut BufReader<TcpStream>) -> String {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        line
    }

    #[tokio::test]
    async fn advertised_servers_are_stripped_and_a_cut_holds_everything_until_restored() {
        let proxy = Proxy::start(upstream().await).await.unwrap();
        let addr = ("127.0.0.1", proxy.port);
        let mut c = BufReader::new(TcpStream::connect(addr).await.unwrap());
        assert_eq!(read_line(&mut c).await, "INFO {\"port\":4222}\r\n");
        c.get_mut().write_all(b"PING\r\n").await.unwrap();
        assert_eq!(read_line(&mut c).await, "PING\r\n");

        proxy.cut();
        c.get_mut().write_all(b"PUB a 2\r\nhi\r\n").await.unwrap();
        let mut fresh = BufReader::new(TcpStream::connect(addr).await.unwrap());
        let mut line = String::new();
        let held = tokio::time::timeout(Duration::from_millis(300), c.read_line(&mut line)).await;
        assert!(held.is_err(), "forwarded while cut: {line:?}");
        let held = tokio::time::timeout(Duration::from_millis(300), fresh.read_line(&mut line));
        assert!(
            held.await.is_err(),
            "a new connection got through while cut"
        );

        proxy.restore();
        assert_eq!(read_line(&mut c).await, "PUB a 2\r\n");
        assert_eq!(read_line(&mut c).await, "hi\r\n");
        assert!(read_line(&mut fresh).await.starts_with("INFO {"));
    }
}
