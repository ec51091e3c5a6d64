#![allow(clippy::unwrap_used, reason = "test")]

use std::{io::Write, net::TcpListener, path::PathBuf};

use super::*;

/// Something else (here a fake that greets like NATS) on the port asked for: launching there
/// must fail, not report the other server as ours.
#[test]
fn launch_refuses_a_port_that_is_taken() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let _ = stream.write_all(b"INFO {\"jetstream\":true}\r\n");
        }
    });
    let server = Server::Binary(Binary {
        path: PathBuf::from("/bin/true"), // would exit at once: never the one answering
        source: BinarySource::EnvVar,
    });
    let err = launch(&server, port, None).expect_err("the port is taken");
    assert!(
        format!("{err:#}").contains("in use"),
        "unexpected error: {err:#}"
    );
}
