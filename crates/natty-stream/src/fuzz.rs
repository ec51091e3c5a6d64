//! Bad input, many cases: configuration validation never panics and every rejection is a
//! typed error quoting the input.

use std::time::Duration;

use proptest::prelude::*;

use crate::{BatchConfig, ConsumerConfig, ErrorKind, PublishOptions, StreamConfig};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    #[test]
    fn stream_configs(name in ".{0,30}", subjects in proptest::collection::vec(".{0,20}", 0..3), replicas in 0usize..8, age_s in 0u64..1000, dup_s in 0u64..1000) {
        let cfg = StreamConfig::new(name.clone(), subjects.clone())
            .replicas(replicas)
            .max_age(Duration::from_secs(age_s))
            .duplicate_window(Duration::from_secs(dup_s));
        if let Err(e) = cfg.validate() {
            prop_assert!(matches!(e.kind(), ErrorKind::InvalidName | ErrorKind::InvalidConfig));
            let text = e.to_string();
            prop_assert!(text.contains(&format!("{name:?}")) || subjects.iter().any(|s| text.contains(&format!("{s:?}"))), "{text}");
        }
    }

    #[test]
    fn consumer_configs(stream in ".{0,20}", durable in ".{0,20}", ack_ms in 0u64..100_000, max_deliver in proptest::option::of(-5i64..10), backoff in 0usize..12, pending in -5i64..100) {
        let cfg = ConsumerConfig::new(stream.clone(), durable.clone())
            .ack_wait(Duration::from_millis(ack_ms))
            .max_deliver(max_deliver)
            .backoff(vec![Duration::from_secs(1); backoff])
            .max_ack_pending(pending);
        if let Err(e) = cfg.validate() {
            prop_assert!(matches!(e.kind(), ErrorKind::InvalidName | ErrorKind::InvalidConfig));
            let text = e.to_string();
            prop_assert!(text.contains(&format!("{stream:?}")) || text.contains(&format!("{durable:?}")), "{text}");
        }
    }

    #[test]
    fn publish_options(name in ".{0,12}", value in ".{0,12}", id in proptest::option::of(".{0,12}")) {
        let mut options = PublishOptions::default().header(name.clone(), value.clone());
        if let Some(id) = id {
            options = options.msg_id(id);
        }
        match options.validate() {
            // What passes validation can be turned into headers without a panic.
            Ok(()) => drop(options.header_map()),
            Err(e) => prop_assert_eq!(e.kind(), ErrorKind::InvalidConfig),
        }
    }

    #[test]
    fn batch_configs(queue in 0usize..5, inflight in 0usize..5, attempts in 0u32..5, ack_ms in 0u64..5) {
        let cfg = BatchConfig::default().queue_capacity(queue).max_in_flight(inflight).max_attempts(attempts).ack_timeout(Duration::from_millis(ack_ms));
        if let Err(e) = cfg.validate() {
            prop_assert_eq!(e.kind(), ErrorKind::InvalidConfig);
            prop_assert!(e.to_string().contains("batch publisher"));
        }
    }
}
