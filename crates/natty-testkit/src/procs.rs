//! Multi-process tests: child processes (election candidates, consumers) report what they do
//! as JSON lines on stdout, stamped with `CLOCK_MONOTONIC` (comparable across processes on one
//! host); the test spawns them, signals them (SIGSTOP/SIGCONT/SIGTERM/SIGKILL) and judges from
//! the lines. One typed protocol ([`Line`], [`Event`]) for the children that write and the
//! tests that read: a line that does not parse is kept as such ([`Lines::unreadable`]), never
//! read as zeros.
//!
//! Used by natty-election's `processes` suite (its `candidate` example) and by natty-chaos.

use std::{
    process::Stdio,
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// `CLOCK_MONOTONIC` in ns: comparable across processes on one host.
pub fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

/// The [`mono_ns`] of an earlier `std::time::Instant` (which is `CLOCK_MONOTONIC` on Linux):
/// for an event that carries when it happened but is reported later.
pub fn mono_ns_of(at: std::time::Instant) -> u64 {
    mono_ns().saturating_sub(u64::try_from(at.elapsed().as_nanos()).unwrap_or(u64::MAX))
}

/// A leader's term on the wire: the same fields and order as `natty_election::Term`
/// (`epoch`, then `revision`), which serializes to this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Term {
    /// The bucket's epoch.
    pub epoch: u64,
    /// The key's revision when the term began.
    pub revision: u64,
}

/// What a child process reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// Started (before anything else).
    Ready {
        /// Its process id.
        pid: u32,
    },
    /// Became leader in `term`.
    Elected {
        /// The term.
        term: Term,
        /// The server it is connected to, if it knows.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        server: Option<String>,
    },
    /// Did its leader work in `term` (after checking the lease right before).
    Work {
        /// The term.
        term: Term,
        /// When the lease was checked valid (`mono_ns`, taken just before the check; 0 if not
        /// recorded). The line's own `mono_ns` is taken after it: a process descheduled or
        /// frozen in between stamps the line late.
        #[serde(default)]
        checked_ns: u64,
    },
    /// Wrote `term` to a fenced sink: `accepted` unless a newer term had written.
    Sink {
        /// The term.
        term: Term,
        /// Whether the sink took the write.
        accepted: bool,
        /// When the write was issued (`mono_ns`).
        issued_ns: u64,
    },
    /// The sink write failed.
    SinkError {
        /// The term.
        term: Term,
        /// Why.
        error: String,
    },
    /// Its work saw `lost` for `term`.
    Lost {
        /// The term.
        term: Term,
    },
    /// It dropped its `run` future (instead of cancelling it).
    Dropped,
    /// A consumer group member started consuming `partition` under lease `term` (stamped
    /// when the group took it, before any handler ran).
    PartitionOwned {
        /// The partition.
        partition: u32,
        /// Its lease term.
        term: Term,
    },
    /// A consumer group member stopped consuming `partition` (its handlers finished or were
    /// aborted, its acks flushed; stamped then, before the lease is given up).
    PartitionReleased {
        /// The partition.
        partition: u32,
        /// The lease term it held.
        term: Term,
    },
    /// A consumer group member's handler ran message number `n` of `key`, from `start_ns` to
    /// the line's own `mono_ns`.
    Handled {
        /// The partition it came from.
        partition: u32,
        /// The lease term the handler was given.
        term: Term,
        /// The message's key.
        key: String,
        /// The message's number within its key.
        n: u64,
        /// The delivery attempt.
        delivered: u64,
        /// When the handler started (`mono_ns`).
        start_ns: u64,
        /// When the member checked it still owned the partition, right before printing this
        /// line (`mono_ns`, taken just before the check; 0 if not recorded). A process frozen
        /// between the check and the line stamps the line late.
        #[serde(default)]
        checked_ns: u64,
    },
    /// A consumer handled message number `n` (delivery attempt `delivered`).
    Processed {
        /// The number.
        n: u64,
        /// The delivery attempt.
        delivered: u64,
        /// Its stream sequence (0 if not reported).
        #[serde(default)]
        seq: u64,
        /// Its consumer sequence (0 if not reported).
        #[serde(default)]
        cseq: u64,
    },
    /// A handler ran a message and failed on purpose (a transient failure: the message must
    /// come back and run again). Lines of a successful run are `processed` or `handled`.
    Failed {
        /// The message's key, for a consumer group member (empty otherwise).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        key: String,
        /// Its number (within its key, for a group member).
        n: u64,
        /// Its stream sequence.
        seq: u64,
        /// The delivery attempt.
        delivered: u64,
    },
    /// About to exit normally.
    Exit {
        /// Messages acked, for a consumer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        acked: Option<u64>,
    },
}

/// One line: who, when, what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// The process's name (node or consumer id).
    pub node: String,
    /// When, by `CLOCK_MONOTONIC` ([`mono_ns`]).
    pub mono_ns: u64,
    /// What.
    #[serde(flatten)]
    pub event: Event,
    /// Which incarnation of `node` printed it (`name#n`), set by the reader.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub proc: String,
}

impl Line {
    /// The line's term, if its event has one.
    pub fn term(&self) -> Option<Term> {
        match &self.event {
            Event::Elected { term, .. }
            | Event::Work { term, .. }
            | Event::Sink { term, .. }
            | Event::SinkError { term, .. }
            | Event::Lost { term }
            | Event::PartitionOwned { term, .. }
            | Event::PartitionReleased { term, .. }
            | Event::Handled { term, .. } => Some(*term),
            _ => None,
        }
    }

    /// Parses a line as printed by [`emit`].
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// Prints `event` of `node` as one JSON line, stamped now (one write, so lines from concurrent
/// tasks never interleave).
pub fn emit(node: &str, event: Event) {
    emit_at(node, mono_ns(), event);
}

/// Prints `event` of `node` as one JSON line stamped `at` (a [`mono_ns`] taken when it
/// happened, for an event reported later).
#[allow(
    clippy::print_stdout,
    reason = "child processes report on stdout, one JSON line per event"
)]
pub fn emit_at(node: &str, at: u64, event: Event) {
    let line = Line {
        node: node.to_owned(),
        mono_ns: at,
        event,
        proc: String::new(),
    };
    if let Ok(text) = serde_json::to_string(&line) {
        println!("{text}");
    }
}

/// Every line the spawned processes printed, in arrival order, shared with the readers.
#[derive(Debug, Clone, Default)]
pub struct Lines(Arc<Mutex<Collected>>);

#[derive(Debug, Default)]
struct Collected {
    lines: Vec<Line>,
    unreadable: Vec<String>,
}

impl Lines {
    fn lock(&self) -> std::sync::MutexGuard<'_, Collected> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A copy of every line so far.
    pub fn all(&self) -> Vec<Line> {
        self.lock().lines.clone()
    }

    /// `f` of the lines so far, without copying them (the readers wait meanwhile: keep it
    /// short).
    pub fn with<R>(&self, f: impl FnOnce(&[Line]) -> R) -> R {
        f(&self.lock().lines)
    }

    /// The first line so far that `pred` accepts.
    pub fn find(&self, pred: impl Fn(&Line) -> bool) -> Option<Line> {
        self.lock().lines.iter().find(|l| pred(l)).cloned()
    }

    /// Whether some line so far matches `pred`.
    pub fn any(&self, pred: impl Fn(&Line) -> bool) -> bool {
        self.lock().lines.iter().any(pred)
    }

    /// Output lines that are not [`Line`]s (a protocol mismatch, a stray print).
    pub fn unreadable(&self) -> Vec<String> {
        self.lock().unreadable.clone()
    }

    /// Records a printed line of process `tag`.
    pub fn push_text(&self, tag: &str, text: &str) {
        match Line::parse(text) {
            Ok(mut line) => {
                line.proc = tag.to_owned();
                self.lock().lines.push(line);
            }
            Err(_) => self.lock().unreadable.push(format!("{tag}: {text}")),
        }
    }

    /// Spawns `cmd` (killed when its handle drops) and collects its stdout lines, tagged `tag`.
    pub fn spawn(&self, mut cmd: Command, tag: &str) -> anyhow::Result<Child> {
        let mut child = cmd.stdout(Stdio::piped()).kill_on_drop(true).spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let (lines, tag) = (self.clone(), tag.to_owned());
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(text)) = reader.next_line().await {
                lines.push_text(&tag, &text);
            }
        });
        Ok(child)
    }
}

/// Sends `sig` (`-STOP`, `-CONT`, `-TERM`, `-KILL`) to process `pid`.
pub async fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .await?;
    anyhow::ensure!(status.success(), "kill {sig} {pid} failed");
    Ok(())
}

/// The path of a sibling binary of the running test or program: `target/<profile>/<name>`
/// from a binary in `target/<profile>/`, or from a test in `target/<profile>/deps/`,
/// `target/<profile>/examples/<name>` when `example` is set.
pub fn sibling_binary(name: &str, example: bool) -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("no parent of {}", exe.display()))?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = if example {
        dir.join("examples").join(name)
    } else {
        dir.join(name)
    };
    anyhow::ensure!(
        path.exists(),
        "{} missing: build it first (cargo test builds the examples)",
        path.display()
    );
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_garbage_is_kept_apart() {
        let term = Term {
            epoch: 5,
            revision: 7,
        };
        let line = Line {
            node: "a".into(),
            mono_ns: 42,
            event: Event::Sink {
                term,
                accepted: true,
                issued_ns: 40,
            },
            proc: String::new(),
        };
        let text = serde_json::to_string(&line).unwrap_or_default();
        assert_eq!(
            text,
            r#"{"node":"a","mono_ns":42,"event":"sink","term":{"epoch":5,"revision":7},"accepted":true,"issued_ns":40}"#
        );
        assert_eq!(Line::parse(&text).ok(), Some(line));
        let handled = Line {
            node: "m".into(),
            mono_ns: 9,
            event: Event::Handled {
                partition: 3,
                term,
                key: "key-1".into(),
                n: 4,
                delivered: 2,
                start_ns: 8,
                checked_ns: 9,
            },
            proc: String::new(),
        };
        let handled_text = serde_json::to_string(&handled).unwrap_or_default();
        assert_eq!(
            handled_text,
            r#"{"node":"m","mono_ns":9,"event":"handled","partition":3,"term":{"epoch":5,"revision":7},"key":"key-1","n":4,"delivered":2,"start_ns":8,"checked_ns":9}"#
        );
        assert_eq!(Line::parse(&handled_text).ok(), Some(handled));
        let lines = Lines::default();
        lines.push_text("a#0", &text);
        lines.push_text(
            "a#0",
            r#"{"node":"b","mono_ns":1,"event":"work","term":"garbage"}"#,
        );
        lines.push_text(
            "a#0",
            r#"{"node":"b","event":"work","term":{"epoch":1,"revision":2}}"#,
        );
        assert_eq!(lines.all().len(), 1);
        assert_eq!(lines.all()[0].proc, "a#0");
        assert_eq!(lines.all()[0].term(), Some(term));
        assert_eq!(
            lines.unreadable().len(),
            2,
            "a bad term or a missing time is not zero"
        );
    }
}
