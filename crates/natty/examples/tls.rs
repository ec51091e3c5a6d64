//! Connect over TLS, verifying the server against a CA, optionally with a client certificate
//! (mutual TLS).
//!
//! ```text
//! NATS_URL=tls://127.0.0.1:4222 NATS_CA=assets/ca.pem \
//! NATS_CERT=assets/client-cert.pem NATS_KEY=assets/client-key.pem \
//!     cargo run -p natty --example tls
//! ```
#![allow(clippy::print_stdout, reason = "an example prints what it does")]

use natty::ConnectOptions;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "tls://127.0.0.1:4222".into());
    let mut options = ConnectOptions::new([url.clone()]).require_tls();
    if let Ok(ca) = std::env::var("NATS_CA") {
        options = options.ca_file(ca);
    }
    if let (Ok(cert), Ok(key)) = (std::env::var("NATS_CERT"), std::env::var("NATS_KEY")) {
        options = options.client_cert_files(cert, key);
        println!("presenting a client certificate (mutual TLS)");
    }
    let client = options.connect().await?;
    let info = client.nats().server_info();
    println!(
        "connected over TLS to {url}: server {} (nats-server {}), JetStream reachable: {}",
        info.server_name,
        info.version,
        client.jetstream().query_account().await.is_ok()
    );
    client.drain().await?;
    Ok(())
}
