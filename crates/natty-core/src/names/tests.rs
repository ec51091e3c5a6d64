use super::*;
use proptest::prelude::*;

#[test]
fn table() {
    type Validator = fn(&str) -> Result<&str, Error>;
    let cases: &[(&str, Validator, &str, bool)] = &[
        ("subject", subject, "orders.created", true),
        ("subject", subject, "orders", true),
        ("subject", subject, "", false),
        ("subject", subject, "orders..created", false),
        ("subject", subject, ".orders", false),
        ("subject", subject, "orders.", false),
        ("subject", subject, "orders created", false),
        ("subject", subject, "orders.*", false),
        ("subject", subject, "orders.>", false),
        ("subject", subject, "or\tders", false),
        ("filter", subject_filter, "orders.*", true),
        ("filter", subject_filter, "orders.>", true),
        ("filter", subject_filter, "*.created.>", true),
        ("filter", subject_filter, ">", true),
        ("filter", subject_filter, "orders.>.x", false),
        ("filter", subject_filter, "orders.a*", false),
        ("filter", subject_filter, "orders..*", false),
        ("stream", stream, "ORDERS", true),
        ("stream", stream, "orders-v1_2", true),
        ("stream", stream, "orders.v1", false),
        ("stream", stream, "a/b", false),
        ("stream", stream, "a b", false),
        ("stream", stream, "a*", false),
        ("stream", stream, "", false),
        ("consumer", consumer, "worker", true),
        ("consumer", consumer, "wor>ker", false),
        ("bucket", bucket, "elections", true),
        ("bucket", bucket, "Elections_2-x", true),
        ("bucket", bucket, "my.bucket", false),
        ("bucket", bucket, "my bucket", false),
        ("bucket", bucket, "ümlaut", false),
        ("key", key, "leader", true),
        ("key", key, "a/b=c.d_e-f", true),
        ("key", key, "a.b.c", true),
        ("key", key, ".a", false),
        ("key", key, "a.", false),
        ("key", key, "a..b", false),
        ("key", key, "a b", false),
        ("key", key, "a*", false),
        ("key", key, "a.*", false),
        ("key", key, "", false),
        ("key filter", key_filter, "a.*", true),
        ("key filter", key_filter, "a.>", true),
        ("key filter", key_filter, "a.>.b", false),
    ];
    for (what, validate, input, ok) in cases {
        let result = validate(input);
        assert_eq!(result.is_ok(), *ok, "{what} {input:?}: {result:?}");
        if let Err(err) = result {
            assert_eq!(err.kind(), ErrorKind::InvalidName);
            assert!(
                err.to_string().contains(&format!("{input:?}")),
                "error names the input: {err}"
            );
        }
    }
}

#[test]
fn long_names_are_rejected_with_their_length() {
    let name = "a".repeat(MAX_NAME_LEN + 1);
    let err = stream(&name).unwrap_err();
    assert!(err.to_string().contains("at most 255 bytes"), "{err}");
    assert!(bucket(&"b".repeat(MAX_NAME_LEN - 3)).is_ok());
    assert!(bucket(&"b".repeat(MAX_NAME_LEN - 2)).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn nothing_panics(s in "\\PC*|[ -~]{0,40}|.*") {
        for v in [subject, subject_filter, stream, consumer, bucket, key, key_filter] {
            if let Err(e) = v(&s) {
                prop_assert_eq!(e.kind(), ErrorKind::InvalidName);
            }
        }
    }

    #[test]
    fn valid_names_round_trip(
        b in "[A-Za-z0-9_-]{1,40}",
        k in "[A-Za-z0-9/_=-]{1,10}(\\.[A-Za-z0-9/_=-]{1,10}){0,4}",
    ) {
        prop_assert_eq!(bucket(&b).unwrap(), b.as_str());
        prop_assert_eq!(stream(&b).unwrap(), b.as_str());
        prop_assert_eq!(key(&k).unwrap(), k.as_str());
        // A valid bucket and key always make a valid KV subject, and its tokens give the key back.
        let subject_str = format!("$KV.{b}.{k}");
        prop_assert!(subject(&subject_str).is_ok());
        let back: Vec<&str> = subject_str.splitn(3, '.').collect();
        prop_assert_eq!(back[2], k.as_str());
        // Every valid key is a valid key filter, and every valid subject a valid filter.
        prop_assert!(key_filter(&k).is_ok());
        prop_assert!(subject_filter(&subject_str).is_ok());
    }
}
