//! What the server accepts from a client, and what one message costs against it, counted
//! exactly as async-nats writes the message.
//!
//! The server closes the *whole connection* on a message over its limits, and with it every
//! subscription, watch, consumer and lease that shares it; async-nats then reconnects and
//! re-sends, and the server closes it again. So every natty publish path checks a message
//! against [`Limits`] before it is sent, and refuses it with a typed error instead
//! ([`Exceeded`]; `TooLarge` in each crate's error kind).
//!
//! Two limits apply to a client's publish (nats-server `client.go`, `parser.go`):
//! - **`max_payload`**: headers and payload together (`HPUB`'s total size) must not exceed it.
//!   The server announces it in its `INFO` (the client's own limit, which account or user
//!   limits may lower); async-nats keeps the value of the server it is connected to now, so
//!   after a reconnect to another server the next check uses that server's.
//! - **`max_control_line`**: the line `HPUB <subject> <reply> <header size> <total size>` (without
//!   the verb) must not exceed it. It bounds the subject — for a KV write, `$KV.<bucket>.<key>`.
//!   The server does not announce it: natty assumes the server's default,
//!   [`DEFAULT_MAX_CONTROL_LINE`] (4096), unless told otherwise
//!   ([`ConnectOptions::max_control_line`](crate::ConnectOptions::max_control_line)).
//!
//! ```
//! use natty_core::limits::{Limits, headers_len};
//! let limits = Limits::new(1024, 4096, 60);
//! let mut headers = natty_core::async_nats::HeaderMap::new();
//! headers.insert("Nats-Msg-Id", "a1");
//! // `NATS/1.0\r\n` + `Nats-Msg-Id: a1\r\n` + `\r\n`
//! assert_eq!(headers_len(&headers), 10 + 17 + 2);
//! assert!(limits.check("orders.created", headers_len(&headers), 995).is_ok());
//! let over = limits.check("orders.created", headers_len(&headers), 996).unwrap_err();
//! assert_eq!((over.size(), over.limit()), (1025, 1024));
//! ```

use std::fmt;

use async_nats::HeaderMap;

/// The server's `max_control_line` when its configuration does not set one (nats-server
/// `MAX_CONTROL_LINE_SIZE`).
pub const DEFAULT_MAX_CONTROL_LINE: usize = 4096;

/// The longest reply subject natty's publishes carry, beyond the client's inbox
/// `<inbox prefix>.<nuid>`: a JetStream publish replies to `<inbox>.<nuid>` (22 more bytes and
/// a dot), a fast-ingest batch message to `<inbox>.<flow>.<gap>.<sequence>.<op>.$FI` (at most
/// `.500.fail.` + 20 digits + `.4.$FI` = 36 more bytes).
pub const REPLY_TAIL: usize = 36;

/// `NATS/1.0\r\n`, the first line of every header block.
const HEADER_VERSION_LINE: usize = "NATS/1.0\r\n".len();

/// The size of `headers` on the wire, as async-nats writes them: `NATS/1.0\r\n`, then
/// `Name: value\r\n` for every value of every name, then `\r\n`. Zero for an empty map: async-nats
/// then sends a plain `PUB` without a header block.
pub fn headers_len(headers: &HeaderMap) -> usize {
    if headers.is_empty() {
        return 0;
    }
    let mut len = HEADER_VERSION_LINE + 2;
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        for value in values {
            len += name.len() + 2 + value.as_str().len() + 2;
        }
    }
    len
}

/// The size on the wire of headers given as name/value pairs (with `Nats-Msg-Id` and any
/// other header among them), the same as [`headers_len`] of the map made from them.
pub fn header_pairs_len<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> usize {
    let mut len = 0;
    for (name, value) in pairs {
        len += name.len() + 2 + value.len() + 2;
    }
    if len == 0 {
        0
    } else {
        len + HEADER_VERSION_LINE + 2
    }
}

/// What the server a client is connected to accepts from it (see the [module](self)).
/// [`Client::limits`](crate::Client::limits) reads the current values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    max_payload: usize,
    max_control_line: usize,
    reply_len: usize,
}

impl Limits {
    /// Limits of `max_payload` bytes per message (headers included; 0: unknown, not checked)
    /// and `max_control_line` bytes per control line, for publishes whose reply subject is at
    /// most `reply_len` bytes.
    pub const fn new(max_payload: usize, max_control_line: usize, reply_len: usize) -> Self {
        Self {
            max_payload,
            max_control_line,
            reply_len,
        }
    }

    /// The largest message (headers and payload together) the server takes.
    pub const fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// The longest control line the server reads.
    pub const fn max_control_line(&self) -> usize {
        self.max_control_line
    }

    /// The longest reply subject counted for a publish.
    pub const fn reply_len(&self) -> usize {
        self.reply_len
    }

    /// The control line of a publish (`<subject> <reply> [<header size> ]<total size>`, as the
    /// server measures it: without the verb and the CRLF).
    pub fn control_line_len(
        &self,
        subject_len: usize,
        headers_len: usize,
        payload_len: usize,
    ) -> usize {
        let total = headers_len.saturating_add(payload_len);
        let sizes = if headers_len == 0 {
            digits(total)
        } else {
            digits(headers_len) + 1 + digits(total)
        };
        subject_len
            .saturating_add(1 + self.reply_len + 1)
            .saturating_add(sizes)
    }

    /// The longest subject a publish of this size can have.
    pub fn max_subject_len(&self, headers_len: usize, payload_len: usize) -> usize {
        self.max_control_line
            .saturating_sub(self.control_line_len(0, headers_len, payload_len))
    }

    /// Whether the server takes a publish to `subject` with headers of `headers_len` bytes on
    /// the wire ([`headers_len`]) and a payload of `payload_len` bytes. The payload is checked
    /// first: a message too large is refused whatever its subject.
    pub fn check(
        &self,
        subject: &str,
        headers_len: usize,
        payload_len: usize,
    ) -> Result<(), Exceeded> {
        let size = headers_len.saturating_add(payload_len);
        if self.max_payload > 0 && size > self.max_payload {
            return Err(Exceeded {
                limit_kind: LimitKind::MaxPayload,
                subject: short(subject),
                size,
                limit: self.max_payload,
                headers_len,
                payload_len,
                subject_len: subject.len(),
                max_subject_len: self.max_subject_len(headers_len, payload_len),
            });
        }
        let line = self.control_line_len(subject.len(), headers_len, payload_len);
        if line > self.max_control_line {
            return Err(Exceeded {
                limit_kind: LimitKind::MaxControlLine,
                subject: short(subject),
                size: line,
                limit: self.max_control_line,
                headers_len,
                payload_len,
                subject_len: subject.len(),
                max_subject_len: self.max_subject_len(headers_len, payload_len),
            });
        }
        Ok(())
    }
}

/// Which server limit a message broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LimitKind {
    /// Headers and payload together are over `max_payload`.
    MaxPayload,
    /// The subject makes the control line longer than `max_control_line`.
    MaxControlLine,
}

/// A message the server would refuse (by closing the connection): which limit, by how much.
/// Nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    limit_kind: LimitKind,
    /// The subject, shortened for messages.
    subject: String,
    size: usize,
    limit: usize,
    headers_len: usize,
    payload_len: usize,
    subject_len: usize,
    max_subject_len: usize,
}

impl Exceeded {
    /// Which limit.
    pub fn limit_kind(&self) -> LimitKind {
        self.limit_kind
    }

    /// The message's size (headers and payload) or its control line's length, in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The server's limit it is over, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.limit_kind {
            LimitKind::MaxPayload => write!(
                f,
                "the message to {} is {} bytes (payload {} + headers {}), over the server's \
                 max_payload of {} bytes; nothing was sent",
                self.subject, self.size, self.payload_len, self.headers_len, self.limit
            ),
            LimitKind::MaxControlLine => write!(
                f,
                "the subject {} is {} bytes: its publish line would be {} bytes, over the \
                 server's max_control_line of {} (a subject of at most {} bytes fits); nothing \
                 was sent",
                self.subject, self.subject_len, self.size, self.limit, self.max_subject_len
            ),
        }
    }
}

impl std::error::Error for Exceeded {}

/// The number of decimal digits of `n`.
fn digits(n: usize) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// `subject` quoted, cut to a readable length (a key of 5,000 bytes is not printed whole).
fn short(subject: &str) -> String {
    const KEEP: usize = 64;
    if subject.len() <= KEEP + 16 {
        return format!("{subject:?}");
    }
    let mut end = KEEP;
    while !subject.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}…", &subject[..end])
}

#[cfg(test)]
mod tests;
