//! Name validation, run before any request is sent.
//!
//! Every validator returns the input unchanged on success, so `names::bucket(s)? == s`, and an
//! [`ErrorKind::InvalidName`] error that quotes the input and
//! states the rule it broke otherwise. The rules are the NATS server's (ADR-6) and the KV
//! client's, made strict where the server would accept a name that later misbehaves (for
//! example a key with an empty token, which yields an invalid subject).
//!
//! ```
//! use natty_core::names;
//! assert!(names::bucket("elections").is_ok());
//! let err = names::bucket("my.bucket").unwrap_err();
//! assert!(err.to_string().contains("my.bucket"));
//! ```

use crate::{Error, ErrorKind};

/// The longest stream, consumer or bucket name accepted (the server stores names as file names).
pub const MAX_NAME_LEN: usize = 255;

fn invalid(what: &str, input: &str, rule: &str) -> Error {
    Error::new(
        ErrorKind::InvalidName,
        format!("{input:?} is not a valid {what}: {rule}"),
    )
}

fn check_len<'a>(what: &str, input: &'a str, max: usize) -> Result<&'a str, Error> {
    if input.is_empty() {
        return Err(invalid(what, input, "it must not be empty"));
    }
    if input.len() > max {
        return Err(invalid(
            what,
            input,
            &format!("it must be at most {max} bytes long, it is {}", input.len()),
        ));
    }
    Ok(input)
}

/// A subject to publish to: dot-separated non-empty tokens, no whitespace, no wildcards.
pub fn subject(input: &str) -> Result<&str, Error> {
    subject_impl("subject", input, false)
}

/// A subject filter: like [`subject`], but `*` may stand for one whole token and `>` for the
/// whole rest as the last token.
pub fn subject_filter(input: &str) -> Result<&str, Error> {
    subject_impl("subject filter", input, true)
}

fn subject_impl<'a>(what: &str, input: &'a str, wildcards: bool) -> Result<&'a str, Error> {
    check_len(what, input, usize::MAX)?;
    if let Some(c) = input.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            what,
            input,
            &format!("it must not contain whitespace or control characters (found {c:?})"),
        ));
    }
    // No allocation: this runs for every message published.
    let mut tokens = input.split('.').peekable();
    while let Some(token) = tokens.next() {
        let last = tokens.peek().is_none();
        if token.is_empty() {
            return Err(invalid(
                what,
                input,
                "tokens between dots must not be empty (no leading, trailing or double dots)",
            ));
        }
        if !token.contains(['*', '>']) {
            continue;
        }
        if !wildcards {
            return Err(invalid(
                what,
                input,
                "wildcards (`*`, `>`) are not allowed here",
            ));
        }
        match token {
            "*" => {}
            ">" if last => {}
            ">" => {
                return Err(invalid(what, input, "`>` may only be the last token"));
            }
            _ => {
                return Err(invalid(
                    what,
                    input,
                    "`*` and `>` must be whole tokens, not part of one",
                ));
            }
        }
    }
    Ok(input)
}

/// A stream name: printable, no whitespace, none of `. * > / \`, at most [`MAX_NAME_LEN`] bytes.
pub fn stream(input: &str) -> Result<&str, Error> {
    entity_name("stream name", input)
}

/// A durable consumer name: the same rules as [`stream`].
pub fn consumer(input: &str) -> Result<&str, Error> {
    entity_name("consumer name", input)
}

fn entity_name<'a>(what: &str, input: &'a str) -> Result<&'a str, Error> {
    check_len(what, input, MAX_NAME_LEN)?;
    if let Some(c) = input
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        return Err(invalid(
            what,
            input,
            &format!(
                "it must not contain whitespace, control characters or any of `. * > / \\` (found {c:?})"
            ),
        ));
    }
    Ok(input)
}

/// A KV bucket name: only `A-Z a-z 0-9 _ -`, at most [`MAX_NAME_LEN`] - 3 bytes (the bucket's
/// stream is `KV_<bucket>`).
pub fn bucket(input: &str) -> Result<&str, Error> {
    let what = "bucket name";
    check_len(what, input, MAX_NAME_LEN - 3)?;
    if let Some(c) = input
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
    {
        return Err(invalid(
            what,
            input,
            &format!("only `A-Z a-z 0-9 _ -` are allowed (found {c:?})"),
        ));
    }
    Ok(input)
}

/// A KV key: only `A-Z a-z 0-9 - / _ = .`, no leading, trailing or double dot.
pub fn key(input: &str) -> Result<&str, Error> {
    key_impl(input, false)
}

/// A KV key pattern for watching: a [`key`] whose dot-separated tokens may be `*`, or `>` last.
pub fn key_filter(input: &str) -> Result<&str, Error> {
    key_impl(input, true)
}

fn key_impl(input: &str, wildcards: bool) -> Result<&str, Error> {
    let what = if wildcards { "key filter" } else { "key" };
    check_len(what, input, usize::MAX)?;
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '/' | '_' | '=' | '.');
    if let Some(c) = input
        .chars()
        .find(|&c| !(allowed(c) || (wildcards && matches!(c, '*' | '>'))))
    {
        return Err(invalid(
            what,
            input,
            &format!("only `A-Z a-z 0-9 - / _ = .` are allowed (found {c:?})"),
        ));
    }
    // The key becomes part of the subject `$KV.<bucket>.<key>`: the subject rules apply to it.
    subject_impl(what, input, wildcards)
}

#[cfg(test)]
mod tests;
