//! Writes a development CA, a server certificate (localhost, 127.0.0.1, `nats`) and a client
//! certificate to a directory: `cargo xtask certs` runs it for `assets/`.
//!
//! `cargo run -p natty-testkit --example certs -- <dir>`

use anyhow::Context;
use natty_testkit::TestCerts;

fn main() -> anyhow::Result<()> {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .context("usage: certs <directory>")?,
    );
    std::fs::create_dir_all(&dir)?;
    let certs = TestCerts::generate(&["nats"])?;
    for (name, text) in [
        ("ca.pem", &certs.ca.cert),
        ("server-cert.pem", &certs.server.cert),
        ("server-key.pem", &certs.server.key),
        ("client-cert.pem", &certs.client.cert),
        ("client-key.pem", &certs.client.key),
    ] {
        std::fs::write(dir.join(name), text)?;
        eprintln!("wrote {}", dir.join(name).display());
    }
    Ok(())
}
