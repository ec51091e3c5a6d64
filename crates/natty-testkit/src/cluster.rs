//! A JetStream cluster of NATS servers on their own Docker network, routes by container name.

use std::time::Duration;

use anyhow::{Context, bail};

use crate::server::{Nats, unique_name};

/// How long a cluster gets to elect its JetStream meta leader (~5 s on this kind of machine).
const META_LEADER_TIMEOUT: Duration = Duration::from_secs(60);

/// A running cluster, removed (with its network) when dropped.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<Nats>,
    network: String,
}

impl NatsCluster {
    /// Starts `size` JetStream nodes and waits until the meta leader is elected.
    pub async fn start(size: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(size >= 1, "a cluster needs at least one node");
        let network = unique_name("natty-net");
        let prefix = unique_name("natty-node");
        let names: Vec<String> = (1..=size).map(|i| format!("{prefix}-{i}")).collect();
        let routes = names
            .iter()
            .map(|n| format!("nats://{n}:6222"))
            .collect::<Vec<_>>()
            .join(",");
        let starts = names.iter().map(|name| {
            let args = [
                "-js",
                "-sd",
                "/data",
                "-p",
                "4222",
                "-n",
                name,
                "--cluster_name",
                &prefix,
                "--cluster",
                "nats://0.0.0.0:6222",
                "--routes",
                &routes,
            ]
            .map(String::from)
            .to_vec();
            Nats::start_node(name.clone(), args, network.clone())
        });
        // All at once: each node waits for its peers' routes, so one by one only adds up.
        let nodes = futures::future::try_join_all(starts).await?;
        let cluster = Self { nodes, network };
        cluster.wait_meta_leader().await?;
        Ok(cluster)
    }

    /// The nodes, in start order.
    pub fn nodes(&self) -> &[Nats] {
        &self.nodes
    }

    /// One node.
    pub fn node(&self, i: usize) -> &Nats {
        &self.nodes[i]
    }

    /// Every node's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Nats::url).collect()
    }

    /// The Docker network the nodes route over.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// The index of the node whose server name is `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name() == name)
    }

    /// Waits until JetStream answers on every running node (a meta leader exists and every node
    /// knows it).
    pub async fn wait_meta_leader(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + META_LEADER_TIMEOUT;
        for node in &self.nodes {
            let client = async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(2))
                .connect(node.url())
                .await
                .with_context(|| format!("connecting to {}", node.name()))?;
            let js = async_nats::jetstream::new(client);
            loop {
                match tokio::time::timeout(Duration::from_secs(2), js.query_account()).await {
                    Ok(Ok(_)) => break,
                    other => {
                        if tokio::time::Instant::now() > deadline {
                            bail!(
                                "no JetStream meta leader seen by {} within {META_LEADER_TIMEOUT:?}: {other:?}",
                                node.name()
                            );
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
        tracing::info!(network = %self.network, "JetStream cluster ready");
        Ok(())
    }
}
