//! Bad input, many cases: configuration and lease decoding never panic, and every rejection
//! is a typed error naming what was wrong.

use std::time::Duration;

use proptest::prelude::*;

use crate::{ElectionConfig, ErrorKind, lease::Lease};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    #[test]
    fn election_configs(
        bucket in ".{0,20}", key in ".{0,20}", node in ".{0,10}",
        ttl_ms in 0u64..100_000, renew_ms in proptest::option::of(0u64..100_000),
        margin_ms in proptest::option::of(0u64..100_000), replicas in 0usize..8,
    ) {
        let mut cfg = ElectionConfig::new(bucket.clone(), key.clone(), node).ttl(Duration::from_millis(ttl_ms)).replicas(replicas);
        if let Some(r) = renew_ms { cfg = cfg.renew_interval(Duration::from_millis(r)); }
        if let Some(m) = margin_ms { cfg = cfg.margin(Duration::from_millis(m)); }
        match cfg.validate() {
            Ok(()) => {
                let m = cfg.machine();
                prop_assert!(m.ttl >= Duration::from_secs(1));
                prop_assert!(m.renew_interval < m.ttl - m.margin);
            }
            Err(e) => {
                prop_assert!(matches!(e.kind(), ErrorKind::InvalidConfig | ErrorKind::InvalidName));
                let text = e.to_string();
                prop_assert!(text.contains(&format!("{bucket:?}")) || text.contains(&format!("{key:?}")), "{text}");
            }
        }
    }

    #[test]
    fn lease_values_decode(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Lease::decode(&bytes);
    }
}
