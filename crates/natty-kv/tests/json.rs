//! Typed values (feature `serde`) against a real NATS server: put/create/update/get as JSON, a
//! typed watch, and a value that does not decode coming back with its key and raw bytes while
//! the watch goes on.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use std::time::Duration;

use futures::StreamExt;
use natty_core::ConnectOptions;
use natty_kv::{DecodeError, ErrorKind, EventKind, JsonEvent, JsonWatch, Kv};
use natty_testkit::{Nats, init_tracing, unique_name};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Config {
    replicas: u32,
}

async fn next(
    watch: &mut JsonWatch<Config>,
) -> anyhow::Result<Result<JsonEvent<Config>, natty_kv::Error>> {
    tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("watch ended"))
}

#[tokio::test]
#[ignore = "integration: needs Docker; run `cargo xtask integration`"]
async fn json_values_round_trip_and_a_bad_value_keeps_its_key_and_bytes() -> anyhow::Result<()> {
    init_tracing();
    let nats = Nats::start().await?;
    let kv = Kv::new(ConnectOptions::new([nats.url()]).connect().await?);
    let b = unique_name("b").replace('-', "_");

    let r1 = kv.create_json(&b, "app", &Config { replicas: 1 }).await?;
    let mut watch = kv.watch_key_json::<Config>(&b, "app").await?;
    let first = next(&mut watch).await??;
    assert_eq!(
        (first.value, first.event.revision),
        (Some(Config { replicas: 1 }), r1)
    );

    let r2 = kv
        .update_json(&b, "app", &Config { replicas: 3 }, r1)
        .await?;
    assert_eq!(
        kv.get_json::<Config>(&b, "app").await?,
        Some((Config { replicas: 3 }, r2))
    );
    assert_eq!(next(&mut watch).await??.value, Some(Config { replicas: 3 }));

    let r3 = kv.put(&b, "app", "replicas: five".into()).await?;
    let err = kv.get_json::<Config>(&b, "app").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode);
    let d = err
        .cause()
        .and_then(|c| c.downcast_ref::<DecodeError>())
        .unwrap();
    assert_eq!(
        (d.key.as_str(), d.revision, &d.value[..]),
        ("app", r3, &b"replicas: five"[..])
    );
    let err = next(&mut watch).await?.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
    assert!(err.to_string().contains("`app`"), "{err}");

    // The watch goes on after a bad value, and deletes carry no value.
    kv.put_json(&b, "app", &Config { replicas: 5 }).await?;
    assert_eq!(next(&mut watch).await??.value, Some(Config { replicas: 5 }));
    kv.delete(&b, "app").await?;
    let deleted = next(&mut watch).await??;
    assert_eq!(
        (deleted.event.kind, deleted.value),
        (EventKind::Delete, None)
    );
    assert_eq!(kv.get_json::<Config>(&b, "app").await?, None);
    kv.create_json(&b, "app", &Config { replicas: 7 }).await?;
    assert_eq!(
        kv.create_json(&b, "app", &Config { replicas: 8 })
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::KeyExists
    );
    Ok(())
}
