//! Bad input, many cases: validation and decoding never panic, and every rejection is a
//! typed error that quotes the input.

use std::time::Duration;

use async_nats::HeaderMap;
use proptest::prelude::*;

use crate::{
    BucketConfig, ErrorKind,
    config::{parse_ttl_header, validate_key_ttl},
    entry::{key_of, kind_of, ttl_of},
};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    #[test]
    fn bucket_configs(name in ".{0,40}", history in any::<u8>(), replicas in 0usize..10, ttl_ms in proptest::option::of(0u64..10_000_000)) {
        let mut cfg = BucketConfig::new(name.clone()).history(history).replicas(replicas);
        if let Some(ms) = ttl_ms {
            cfg = cfg.ttl(Duration::from_millis(ms));
        }
        if let Err(e) = cfg.validate() {
            prop_assert!(matches!(e.kind(), ErrorKind::InvalidName | ErrorKind::InvalidConfig));
            prop_assert!(e.to_string().contains(&format!("{name:?}")), "{e}");
        }
    }

    #[test]
    fn key_ttls(nanos in any::<u64>()) {
        let ttl = Duration::from_nanos(nanos);
        match validate_key_ttl(ttl) {
            Ok(secs) => prop_assert_eq!(Duration::from_secs(secs), ttl),
            Err(e) => {
                prop_assert_eq!(e.kind(), ErrorKind::InvalidConfig);
                let quoted = format!("{ttl:?}");
                let names_it = e.to_string().contains(&quoted);
                prop_assert!(names_it, "{} does not quote {}", e, quoted);
            }
        }
    }

    #[test]
    // Header values as a server can send them (no CR/LF); anything else in them, long too.
    fn stored_messages_decode(op in "[^\r\n]{0,40}", reason in "[^\r\n]{0,40}", ttl in "[^\r\n]{0,400}", subject in ".{0,200}", bucket in "[a-z]{1,8}") {
        let mut h = HeaderMap::new();
        if !op.is_empty() { h.insert("KV-Operation", op.as_str()); }
        if !reason.is_empty() { h.insert("Nats-Marker-Reason", reason.as_str()); }
        if !ttl.is_empty() { h.insert("Nats-TTL", ttl.as_str()); }
        let _ = kind_of(Some(&h));
        let _ = ttl_of(Some(&h));
        let _ = parse_ttl_header(&ttl);
        let _ = key_of(&subject, &bucket);
    }

    #[test]
    // Long TTL headers made of valid-looking parts: huge numbers, many units, fractions.
    fn ttl_headers_of_many_parts(ttl in "([0-9]{1,22}(\\.[0-9]{0,6})?(h|m|s|ms|us|µs|ns)){1,60}") {
        let _ = parse_ttl_header(&ttl);
    }
}
