//! Who is alive, kept from the watch of `<name>_members` (no key listing per event).
//!
//! Each member writes its key every `ttl / 3`; the bucket's TTL expires it after `ttl` and
//! the server's expiry marker (server 2.11+) tells the watch. Without markers (older servers)
//! an expiry is invisible, so a member not heard from for `ttl + ttl / 3` is taken for gone.
//! After the watch was re-created (the bucket deleted, or re-created behind us) the members
//! known before must announce themselves again within that time, or they are gone: a member
//! killed while the bucket was away never comes back to say so.
//!
//! The watch must see this member's own announcements: one that does not — or an
//! announcement stored at a revision no higher than the one before (revisions start over in
//! a bucket created again) — means the watch follows a bucket that is gone (natty-kv's
//! watch notices a re-created bucket only at its periodic check, up to 10 s later), and it
//! is made again.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use natty_kv::EventKind;

/// The live members.
#[derive(Debug)]
pub(crate) struct Roster {
    me: String,
    /// Member → when it stops counting unless heard from again (`None`: until its key is
    /// removed).
    live: BTreeMap<String, Option<Instant>>,
    /// How long a member counts without a new announcement, when that is the rule.
    silence: Duration,
    /// Whether the bucket's expiry markers tell us of every expiry.
    markers: bool,
    /// The revision of this member's last announcement, and the highest of its own the
    /// watch delivered.
    announced: Option<u64>,
    seen: u64,
}

impl Roster {
    pub(crate) fn new(me: &str, ttl: Duration, markers: bool) -> Self {
        Self {
            me: me.to_owned(),
            live: BTreeMap::new(),
            silence: ttl + ttl / 3,
            markers,
            announced: None,
            seen: 0,
        }
    }

    /// This member's announcement was stored at `revision`: whether the bucket was created
    /// again since the one before (its revisions started over).
    pub(crate) fn announced(&mut self, revision: u64) -> bool {
        let restarted = self.announced.is_some_and(|r| revision <= r);
        self.announced = Some(revision);
        if restarted {
            self.seen = 0;
        }
        restarted
    }

    /// Whether the watch has not delivered this member's last announcement.
    pub(crate) fn unseen(&self) -> bool {
        self.announced.is_some_and(|r| self.seen < r)
    }

    /// A new watch (or bucket): announcements are compared from scratch.
    pub(crate) fn forget_announcements(&mut self) {
        self.announced = None;
        self.seen = 0;
    }

    /// Whether the bucket's expiry markers are seen (set when the bucket is checked again).
    pub(crate) fn set_markers(&mut self, markers: bool) {
        self.markers = markers;
    }

    /// One event of the watch: `kind` on `key` at `revision`.
    pub(crate) fn apply(&mut self, key: &str, kind: EventKind, revision: u64, now: Instant) {
        match kind {
            EventKind::Put => {
                if key == self.me {
                    self.seen = self.seen.max(revision);
                }
                let until = (!self.markers).then(|| now + self.silence);
                self.live.insert(key.to_owned(), until);
            }
            EventKind::Delete | EventKind::Purge | EventKind::Expired => {
                self.live.remove(key);
            }
            EventKind::BucketRecreated => {
                self.forget_announcements();
                self.unconfirm(now);
            }
            _ => {}
        }
    }

    /// The watch starts over (a new watch, or the bucket re-created): who does not announce
    /// itself again in time is gone.
    pub(crate) fn unconfirm(&mut self, now: Instant) {
        let until = now + self.silence;
        for deadline in self.live.values_mut() {
            *deadline = Some(deadline.map_or(until, |d| d.min(until)));
        }
    }

    /// Live members, this one included (also before its own key is seen); forgets those
    /// whose time ran out.
    pub(crate) fn count(&mut self, now: Instant) -> usize {
        self.live.retain(|_, until| until.is_none_or(|t| now < t));
        self.live.len() + usize::from(!self.live.contains_key(&self.me))
    }

    /// When a member's time runs out next (the count may drop then).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.live.values().flatten().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(3);

    #[test]
    fn members_come_from_puts_and_go_with_their_markers() {
        let t0 = Instant::now();
        let mut r = Roster::new("me", TTL, true);
        assert_eq!(r.count(t0), 1, "this member counts before its key is seen");
        for k in ["me", "a", "b"] {
            r.apply(k, EventKind::Put, 1, t0);
        }
        assert_eq!(r.count(t0), 3);
        // Re-announcements change nothing; with markers nobody times out.
        r.apply("a", EventKind::Put, 1, t0);
        assert_eq!(r.count(t0 + TTL * 100), 3);
        assert_eq!(r.next_deadline(), None);
        r.apply("a", EventKind::Expired, 1, t0);
        r.apply("b", EventKind::Delete, 1, t0);
        assert_eq!(r.count(t0), 1);
        r.apply("me", EventKind::Purge, 1, t0);
        assert_eq!(r.count(t0), 1);
    }

    #[test]
    fn without_markers_a_silent_member_is_gone_after_the_ttl_and_a_third() {
        let t0 = Instant::now();
        let mut r = Roster::new("me", TTL, false);
        r.apply("me", EventKind::Put, 1, t0);
        r.apply("a", EventKind::Put, 1, t0);
        assert_eq!(r.next_deadline(), Some(t0 + TTL + TTL / 3));
        // "me" keeps announcing, "a" is silent.
        r.apply("me", EventKind::Put, 1, t0 + TTL);
        assert_eq!(r.count(t0 + TTL), 2);
        assert_eq!(r.count(t0 + TTL + TTL / 3), 1);
    }

    #[test]
    fn after_a_new_watch_members_must_announce_again() {
        let t0 = Instant::now();
        let mut r = Roster::new("me", TTL, true);
        for k in ["me", "a", "dead"] {
            r.apply(k, EventKind::Put, 1, t0);
        }
        // The bucket was deleted and re-created: "a" announces again, "dead" never does.
        let t1 = t0 + TTL;
        r.apply("", EventKind::BucketRecreated, 1, t1);
        assert_eq!(r.count(t1), 3, "nobody is dropped at once");
        r.apply("a", EventKind::Put, 1, t1 + TTL / 3);
        r.apply("me", EventKind::Put, 1, t1 + TTL / 3);
        let later = t1 + TTL + TTL / 3;
        assert_eq!(r.count(later), 2);
        assert_eq!(r.next_deadline(), None);
        // A second restart before the first deadline keeps the earlier deadline.
        r.apply("dead", EventKind::Put, 1, later);
        r.unconfirm(later);
        r.unconfirm(later + TTL);
        assert_eq!(r.count(later + TTL + TTL / 3), 1);
    }

    #[test]
    fn a_watch_that_misses_our_announcement_or_a_bucket_started_over_is_noticed() {
        let t0 = Instant::now();
        let mut r = Roster::new("me", TTL, true);
        assert!(!r.unseen(), "nothing announced yet");
        assert!(!r.announced(10));
        assert!(r.unseen(), "announced, not seen yet");
        r.apply("other", EventKind::Put, 11, t0);
        assert!(r.unseen(), "another member's write is not ours");
        r.apply("me", EventKind::Put, 10, t0);
        assert!(!r.unseen());
        assert!(!r.announced(14));
        assert!(r.unseen());
        // The bucket deleted and created again: our next write is stored at revision 2.
        assert!(r.announced(2), "revisions started over");
        r.forget_announcements();
        assert!(!r.unseen());
        assert!(!r.announced(3));
        r.apply("", EventKind::BucketRecreated, 0, t0);
        assert!(
            !r.unseen(),
            "a re-created bucket starts the comparison over"
        );
    }
}
