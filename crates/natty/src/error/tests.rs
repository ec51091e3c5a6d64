use super::Error;

#[cfg(all(feature = "kv", feature = "stream", feature = "election"))]
#[test]
fn question_mark_works_across_crates_and_keeps_each_kind() {
    fn kv() -> Result<(), natty_kv::Error> {
        Err(natty_kv::Error::new(
            natty_kv::ErrorKind::RevisionMismatch,
            "updating k",
        ))
    }
    fn stream() -> Result<(), natty_stream::Error> {
        Err(natty_stream::Error::new(
            natty_stream::ErrorKind::TimedOut,
            "publishing",
        ))
    }
    fn election() -> Result<(), natty_election::Error> {
        Err(natty_election::Error::new(
            natty_election::ErrorKind::InvalidConfig,
            "electing",
        ))
    }
    fn all(which: u8) -> Result<(), Error> {
        match which {
            0 => kv()?,
            1 => stream()?,
            _ => election()?,
        }
        Ok(())
    }

    let e = all(0).unwrap_err();
    assert_eq!(e.kv_kind(), Some(natty_kv::ErrorKind::RevisionMismatch));
    assert_eq!(e.stream_kind(), None);
    assert!(!e.is_timed_out());
    assert!(e.to_string().contains("updating k"), "{e}");

    let e = all(1).unwrap_err();
    assert_eq!(e.stream_kind(), Some(natty_stream::ErrorKind::TimedOut));
    assert!(e.is_timed_out());

    let e = all(2).unwrap_err();
    assert_eq!(
        e.election_kind(),
        Some(natty_election::ErrorKind::InvalidConfig)
    );
    assert!(e.is_invalid_input());
    assert!(matches!(e, Error::Election(_)));
}

#[test]
fn core_errors_convert_too() {
    let e: Error = natty_core::Error::new(natty_core::ErrorKind::Auth, "connecting").into();
    assert_eq!(e.core_kind(), Some(natty_core::ErrorKind::Auth));
    assert!(!e.is_invalid_input());
}

#[cfg(feature = "stream")]
#[test]
fn a_flush_error_keeps_the_publishers_kind() {
    let e: Error = natty_stream::FlushError::new(
        Vec::new(),
        0,
        Some(natty_stream::Error::new(
            natty_stream::ErrorKind::Panicked,
            "publisher",
        )),
    )
    .into();
    assert_eq!(e.stream_kind(), Some(natty_stream::ErrorKind::Panicked));
}

/// `?` on a consumer group's `join` in a function returning `natty::Error`: the group's error
/// converts too, and keeps its kind.
#[cfg(feature = "group")]
#[test]
fn group_errors_convert_and_keep_their_kind() {
    fn join() -> Result<(), natty_group::Error> {
        Err(natty_group::Error::new(
            natty_group::ErrorKind::InvalidConfig,
            "joining group billing",
        ))
    }
    fn all() -> Result<(), Error> {
        join()?;
        Ok(())
    }
    let e = all().unwrap_err();
    assert_eq!(e.group_kind(), Some(natty_group::ErrorKind::InvalidConfig));
    assert!(e.is_invalid_input());
    assert!(!e.is_timed_out());
    assert_eq!(e.kv_kind(), None);
    assert!(e.to_string().contains("joining group billing"), "{e}");
    assert!(matches!(e, Error::Group(_)));
}
