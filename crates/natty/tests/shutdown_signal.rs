//! `natty::cancel_on_shutdown_signal`: the first SIGTERM cancels the token; a second one ends
//! a process whose graceful stop is stuck (the handlers installed for the first signal would
//! otherwise swallow every later Ctrl-C, leaving only SIGKILL).
//!
//! The test re-runs this test binary as a child (`NATTY_SIGNAL_CHILD=1`) and signals it.
#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test")]

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// In the child: cancel on the first signal, then hang as a stuck shutdown would.
#[test]
fn child_stuck_after_first_signal() {
    if std::env::var_os("NATTY_SIGNAL_CHILD").is_none() {
        return; // only meaningful as the child of `second_signal_forces_exit`
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let cancel = natty::cancel_on_shutdown_signal().unwrap();
        println!("ready");
        cancel.cancelled().await;
        println!("cancelled");
        std::future::pending::<()>().await; // a graceful stop that never finishes
    });
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Kills the child if the test fails half-way.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[cfg(unix)]
fn second_signal_forces_exit() {
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_stuck_after_first_signal",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("NATTY_SIGNAL_CHILD", "1")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, lines) = mpsc::channel();
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_line = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                // libtest prints "test <name> ... " before the test's own output on that line.
                Ok(line) if line.trim_end().ends_with(want) => return,
                Ok(_) => {}
                Err(_) => panic!("child never printed {want:?}"),
            }
        }
    };
    wait_line("ready");
    signal(child.0.id(), "-TERM");
    wait_line("cancelled");
    signal(child.0.id(), "-INT");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            panic!("a second signal did not end the process within 10 s (it was swallowed)");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        status.code(),
        Some(130),
        "exit status after the second signal: {status}"
    );
}
