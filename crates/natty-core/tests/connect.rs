//! natty-core against real NATS servers (plain, TLS, mutual TLS, auth, several URLs).
//! `#[ignore]`d so a plain `cargo test` needs no Docker; `cargo xtask integration` runs them.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use std::time::Duration;

use natty_core::{ConnectOptions, ErrorKind};
use natty_testkit::{Nats, ServerAuth, ServerOptions, TestCerts, TlsMode, init_tracing};

fn dead_url() -> String {
    // Bound then released: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("nats://127.0.0.1:{port}")
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn plain_connect_reaches_jetstream() -> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start().await?;
    let client = ConnectOptions::new([nats.url()])
        .name("plain")
        .connect()
        .await?;
    client.jetstream().query_account().await?;
    let version = client.server_version().expect("server reports a version");
    assert!(version.at_least(2, 11), "{version}");
    client.drain().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn tls_verifies_the_server_with_the_ca_file_or_pem() -> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start_tls(TlsMode::ServerVerified).await?;
    let tls = nats.tls().unwrap();
    let client = ConnectOptions::new([nats.url()])
        .ca_file(tls.ca_file())
        .connect()
        .await?;
    client.jetstream().query_account().await?;

    let client = ConnectOptions::new([nats.url()])
        .ca_pem(tls.certs.ca.cert.clone())
        .connect()
        .await?;
    client.jetstream().query_account().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn tls_with_the_wrong_ca_fails_with_the_tls_kind_naming_the_server() -> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start_tls(TlsMode::ServerVerified).await?;
    let other = TestCerts::generate_with_ca_name("some other CA", &[])?;
    let err = ConnectOptions::new([nats.url()])
        .ca_pem(other.ca.cert)
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .expect_err("a server signed by another CA must be refused");
    assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
    assert!(err.to_string().contains(&nats.url()), "{err}");
    assert_eq!(err.connect_attempts().len(), 1);
    assert_eq!(err.connect_attempts()[0].kind, ErrorKind::Tls);

    // skip-verify is the explicit way around it.
    let client = ConnectOptions::new([nats.url()])
        .danger_skip_verify()
        .connect()
        .await?;
    client.jetstream().query_account().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_plain_client_against_a_tls_only_server_fails_with_the_tls_kind() -> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start_tls(TlsMode::ServerVerified).await?;
    // No CA given: the server's test certificate is unknown to the system roots. Classified by
    // the error's types, not its text.
    let url = nats.url().replace("tls://", "nats://");
    let err = ConnectOptions::new([url])
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .expect_err("an unverifiable server must be refused");
    assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn mutual_tls_needs_the_client_certificate() -> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start_tls(TlsMode::Mutual).await?;
    let tls = nats.tls().unwrap();
    let client = ConnectOptions::new([nats.url()])
        .ca_file(tls.ca_file())
        .client_cert_files(tls.client_cert_file(), tls.client_key_file())
        .connect()
        .await?;
    client.jetstream().query_account().await?;

    let client = ConnectOptions::new([nats.url()])
        .ca_pem(tls.certs.ca.cert.clone())
        .client_cert_pem(tls.certs.client.cert.clone(), tls.certs.client.key.clone())
        .connect()
        .await?;
    client.jetstream().query_account().await?;

    let err = ConnectOptions::new([nats.url()])
        .ca_file(tls.ca_file())
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .expect_err("no client certificate must be refused");
    assert!(
        matches!(err.kind(), ErrorKind::Tls | ErrorKind::Auth),
        "{:?}: {err}",
        err.kind()
    );
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn a_dead_first_server_is_skipped() -> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start().await?;
    let client = ConnectOptions::new([dead_url(), nats.url()])
        .connect()
        .await?;
    client.jetstream().query_account().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn all_servers_dead_lists_each_with_its_reason() -> anyhow::Result<()> {
    init_tracing();
    let urls = [dead_url(), dead_url()];
    let err = ConnectOptions::new(urls.clone())
        .connect()
        .await
        .expect_err("nothing listens");
    assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
    let attempts = err.connect_attempts();
    assert_eq!(attempts.len(), 2, "{err}");
    for (attempt, url) in attempts.iter().zip(&urls) {
        assert_eq!(&attempt.server, url);
        assert_eq!(attempt.kind, ErrorKind::Refused);
        assert!(err.to_string().contains(url.as_str()), "{err}");
    }
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn token_auth() -> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start_with(ServerOptions {
        auth: Some(ServerAuth::Token("s3cret".into())),
        ..ServerOptions::default()
    })
    .await?;
    let client = ConnectOptions::new([nats.url()])
        .token("s3cret")
        .connect()
        .await?;
    client.jetstream().query_account().await?;
    let err = ConnectOptions::new([nats.url()])
        .token("wrong")
        .connect()
        .await
        .expect_err("wrong token");
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn user_password_auth() -> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start_with(ServerOptions {
        auth: Some(ServerAuth::UserPassword("app".into(), "pw".into())),
        ..ServerOptions::default()
    })
    .await?;
    let client = ConnectOptions::new([nats.url()])
        .user_password("app", "pw")
        .connect()
        .await?;
    client.jetstream().query_account().await?;
    for (user, pass) in [("app", "nope"), ("nobody", "pw")] {
        let err = ConnectOptions::new([nats.url()])
            .user_password(user, pass)
            .connect()
            .await
            .expect_err("wrong credentials");
        assert_eq!(err.kind(), ErrorKind::Auth, "{user}/{pass}: {err}");
    }
    Ok(())
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn client_reconnects_after_a_server_restart() -> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start().await?;
    let client = ConnectOptions::new([nats.url()]).connect().await?;
    client.jetstream().query_account().await?;
    nats.restart().await?;
    natty_testkit::wait_for(
        "JetStream answering after restart",
        Duration::from_secs(30),
        || {
            let js = client.jetstream().clone();
            async move { js.query_account().await.ok() }
        },
    )
    .await?;
    Ok(())
}
