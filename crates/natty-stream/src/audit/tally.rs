//! The audit's arithmetic, free of I/O: what a sequence of stored `Nats-Msg-Id`s says about
//! each publisher's messages (missing, stored twice, stored out of order).
//!
//! Memory: per publisher, the numbers seen are kept as a set of ranges (a stream of one
//! publisher's messages in order is one range), plus at most [`EXAMPLES`] examples of each
//! anomaly; counts are exact.

use std::{collections::BTreeMap, fmt, ops::RangeInclusive};

/// How many examples of duplicates / out-of-order messages a report keeps per publisher.
pub const EXAMPLES: usize = 100;

/// One message stored again: the publisher's number and the stream sequence of the repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeat {
    /// The publisher's number of the message (the `<n>` of its `Nats-Msg-Id`).
    pub number: u64,
    /// The stream sequence the repeat is stored at.
    pub sequence: u64,
}

/// What the audit found for one publisher instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherAudit {
    /// The publisher instance: its `Nats-Msg-Id`s without the final `-<n>` (the `id_prefix`,
    /// if any, then a part random per instance).
    pub publisher: String,
    /// Messages of this publisher read.
    pub messages: u64,
    /// The lowest and highest numbers read.
    pub numbers: RangeInclusive<u64>,
    /// Numbers between the lowest and the highest read that are not in the stream, in order.
    pub missing: Vec<RangeInclusive<u64>>,
    /// Messages stored more than once (the repeats counted).
    pub duplicates: u64,
    /// The first [`EXAMPLES`] repeats.
    pub duplicate_examples: Vec<Repeat>,
    /// Messages stored after a higher number of the same publisher (a retry stored late is
    /// one; not a loss).
    pub out_of_order: u64,
    /// The first [`EXAMPLES`] of them.
    pub out_of_order_examples: Vec<Repeat>,
}

impl PublisherAudit {
    /// How many numbers are missing.
    pub fn missing_count(&self) -> u64 {
        self.missing.iter().map(|r| r.end() - r.start() + 1).sum()
    }
}

/// The tally of one audit: feed it every stored message in stream order, then [`finish`].
///
/// [`finish`]: Tally::finish
#[derive(Debug, Default)]
pub struct Tally {
    publishers: BTreeMap<String, Seen>,
    messages: u64,
    unnumbered: u64,
}

#[derive(Debug, Default)]
struct Seen {
    /// start → end (inclusive), disjoint, not adjacent.
    ranges: BTreeMap<u64, u64>,
    highest: u64,
    messages: u64,
    duplicates: u64,
    duplicate_examples: Vec<Repeat>,
    out_of_order: u64,
    out_of_order_examples: Vec<Repeat>,
}

impl Seen {
    /// Records `n`; false if it was already there.
    fn insert(&mut self, n: u64) -> bool {
        // The range starting at or before n.
        if let Some((&start, &end)) = self.ranges.range(..=n).next_back() {
            if n <= end {
                return false;
            }
            if end + 1 == n {
                // Extends it; maybe joins the next one.
                let new_end = match self.ranges.get(&(n + 1)).copied() {
                    Some(next_end) => {
                        self.ranges.remove(&(n + 1));
                        next_end
                    }
                    None => n,
                };
                self.ranges.insert(start, new_end);
                return true;
            }
        }
        match n.checked_add(1).and_then(|next| self.ranges.remove(&next)) {
            Some(next_end) => self.ranges.insert(n, next_end),
            None => self.ranges.insert(n, n),
        };
        true
    }
}

/// A message id natty's batch publisher generated, split into (publisher, number):
/// `[<id_prefix>-]<instance>-<n>`, where the instance is a 22-character NUID (possibly after a
/// custom inbox prefix and a dot). Anything else (an id the application chose) is `None`.
pub fn parse_generated(id: &str) -> Option<(&str, u64)> {
    let (publisher, n) = id.rsplit_once('-')?;
    let n: u64 = n.parse().ok().filter(|n| *n > 0)?;
    let instance = publisher.rsplit(['-', '.']).next()?;
    if instance.len() != 22 || !instance.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    Some((publisher, n))
}

impl Tally {
    /// A new, empty tally.
    pub fn new() -> Self {
        Self::default()
    }

    /// One stored message: its stream sequence and `Nats-Msg-Id` (if any).
    pub fn observe(&mut self, sequence: u64, msg_id: Option<&str>) {
        self.messages += 1;
        let Some((publisher, n)) = msg_id.and_then(parse_generated) else {
            self.unnumbered += 1;
            return;
        };
        let seen = match self.publishers.get_mut(publisher) {
            Some(seen) => seen,
            None => self.publishers.entry(publisher.to_owned()).or_default(),
        };
        seen.messages += 1;
        let repeat = Repeat {
            number: n,
            sequence,
        };
        if !seen.insert(n) {
            seen.duplicates += 1;
            if seen.duplicate_examples.len() < EXAMPLES {
                seen.duplicate_examples.push(repeat);
            }
            return;
        }
        if n < seen.highest {
            seen.out_of_order += 1;
            if seen.out_of_order_examples.len() < EXAMPLES {
                seen.out_of_order_examples.push(repeat);
            }
        }
        seen.highest = seen.highest.max(n);
    }

    /// Messages observed so far.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// The publishers' findings, and how many messages carried no natty-generated id.
    pub fn finish(self) -> (Vec<PublisherAudit>, u64) {
        let publishers = self
            .publishers
            .into_iter()
            .map(|(publisher, seen)| {
                let lowest = seen.ranges.keys().next().copied().unwrap_or(0);
                let mut missing = Vec::new();
                let mut previous_end: Option<u64> = None;
                for (&start, &end) in &seen.ranges {
                    if let Some(prev) = previous_end {
                        missing.push(prev + 1..=start - 1);
                    }
                    previous_end = Some(end);
                }
                PublisherAudit {
                    publisher,
                    messages: seen.messages,
                    numbers: lowest..=seen.highest,
                    missing,
                    duplicates: seen.duplicates,
                    duplicate_examples: seen.duplicate_examples,
                    out_of_order: seen.out_of_order,
                    out_of_order_examples: seen.out_of_order_examples,
                }
            })
            .collect();
        (publishers, self.unnumbered)
    }
}

/// Ranges as `3, 7-9`.
pub(crate) struct Ranges<'a>(pub(crate) &'a [RangeInclusive<u64>]);

impl fmt::Display for Ranges<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if r.start() == r.end() {
                write!(f, "{}", r.start())?;
            } else {
                write!(f, "{}-{}", r.start(), r.end())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
