//! The size computation against what async-nats really writes: a fake server on a local
//! socket reads each publish line and its bytes.
#![allow(
    clippy::unwrap_used,
    reason = "in a test a panic is the failure report"
)]

use std::time::Duration;

use async_nats::HeaderMap;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
    sync::mpsc,
};

use super::{LimitKind, Limits, REPLY_TAIL, digits, header_pairs_len, headers_len, short};

/// One publish as the fake server read it.
#[derive(Debug)]
struct Seen {
    verb: String,
    /// The control line without the verb and CRLF: what the server measures.
    arg: String,
    reply: Option<String>,
    header_bytes: usize,
    total_bytes: usize,
}

/// A server that speaks just enough of the protocol for async-nats to connect and publish,
/// and reports every `PUB`/`HPUB` it reads.
async fn fake_server() -> (String, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let (read, mut write) = socket.into_split();
        let info = format!(
            "INFO {{\"server_id\":\"fake\",\"server_name\":\"fake\",\"version\":\"2.15.1\",\
             \"proto\":1,\"headers\":true,\"max_payload\":1048576,\"host\":\"127.0.0.1\",\
             \"port\":{}}}\r\n",
            addr.port()
        );
        write.write_all(info.as_bytes()).await.unwrap();
        let mut read = BufReader::new(read);
        let mut line = String::new();
        loop {
            line.clear();
            if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let text = line.trim_end_matches("\r\n");
            let (verb, arg) = text.split_once(' ').unwrap_or((text, ""));
            match verb {
                "PING" => write.write_all(b"PONG\r\n").await.unwrap(),
                "PUB" | "HPUB" => {
                    let fields: Vec<&str> = arg.split(' ').collect();
                    let sizes: Vec<usize> = fields
                        .iter()
                        .rev()
                        .take(if verb == "HPUB" { 2 } else { 1 })
                        .map(|s| s.parse().unwrap())
                        .collect();
                    let total = sizes[0];
                    let header_bytes = if verb == "HPUB" { sizes[1] } else { 0 };
                    let named = fields.len() - sizes.len();
                    let reply = (named == 2).then(|| fields[1].to_owned());
                    let mut body = vec![0; total + 2];
                    read.read_exact(&mut body).await.unwrap();
                    let _ = tx.send(Seen {
                        verb: verb.to_owned(),
                        arg: arg.to_owned(),
                        reply,
                        header_bytes,
                        total_bytes: total,
                    });
                }
                _ => {} // CONNECT, SUB, UNSUB
            }
        }
    });
    (format!("nats://{addr}"), rx)
}

async fn next(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("the fake server saw the publish")
        .unwrap()
}

fn map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(*name, *value);
    }
    headers
}

/// Header sets of every shape natty sends: none, natty's own (`Nats-Msg-Id`, the KV's
/// conditions and TTL), a standard name, several values of one name, long values.
fn header_cases() -> Vec<Vec<(&'static str, &'static str)>> {
    vec![
        vec![],
        vec![("Nats-Msg-Id", "abcdefghijklmnopqrstuv-17")],
        vec![
            ("Nats-Expected-Last-Subject-Sequence", "12345"),
            ("Nats-TTL", "30"),
            ("Nats-Msg-Id", "Xy7Q2mWzzzzzzzzzzzzzzz"),
        ],
        vec![("KV-Operation", "PURGE"), ("Nats-Rollup", "sub")],
        vec![("X-Trace", "a"), ("X-Trace", "bb"), ("X-Trace", "ccc")],
        vec![(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )],
        vec![(
            "X-Long",
            "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz",
        )],
    ]
}

#[tokio::test]
async fn sizes_match_what_async_nats_writes() {
    let (url, mut seen) = fake_server().await;
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let inbox_len = client.new_inbox().len();
    for pairs in header_cases() {
        for payload_len in [0, 1, 9, 10, 999, 70_000] {
            let payload = bytes::Bytes::from(vec![b'x'; payload_len]);
            let headers = map(&pairs);
            let want_headers = headers_len(&headers);
            assert_eq!(
                header_pairs_len(pairs.iter().copied()),
                want_headers,
                "{pairs:?}"
            );
            let subject = "orders.eu.created";

            // A core publish (no reply): exactly the header block and total async-nats wrote.
            client
                .publish_with_headers(subject, headers.clone(), payload.clone())
                .await
                .unwrap();
            let s = next(&mut seen).await;
            assert_eq!(s.verb, if pairs.is_empty() { "PUB" } else { "HPUB" });
            assert_eq!(s.header_bytes, want_headers, "{pairs:?}");
            assert_eq!(s.total_bytes, want_headers + payload_len, "{pairs:?}");

            // A JetStream publish (a request with a reply subject): the control line the
            // server measures is the one computed, given the reply's length.
            js.publish_with_headers(subject, headers, payload.clone())
                .await
                .unwrap();
            let s = next(&mut seen).await;
            let reply = s
                .reply
                .clone()
                .expect("a JetStream publish has a reply subject");
            assert!(
                reply.len() <= inbox_len + REPLY_TAIL,
                "reply {reply:?} is longer than natty counts ({inbox_len} + {REPLY_TAIL})"
            );
            let limits = Limits::new(1 << 20, 4096, reply.len());
            assert_eq!(
                limits.control_line_len(subject.len(), want_headers, payload_len),
                s.arg.len(),
                "control line {:?}",
                s.arg
            );
            assert_eq!(s.total_bytes, want_headers + payload_len);
        }
    }
}

#[test]
fn a_message_over_max_payload_counts_its_headers() {
    let limits = Limits::new(100, 4096, 60);
    let headers = map(&[("Nats-Msg-Id", "0123456789")]);
    let h = headers_len(&headers);
    assert_eq!(h, 10 + "Nats-Msg-Id: 0123456789\r\n".len() + 2);
    assert!(
        limits.check("a.b", h, 100 - h).is_ok(),
        "exactly max_payload fits"
    );
    let e = limits.check("a.b", h, 100 - h + 1).unwrap_err();
    assert_eq!(e.limit_kind(), LimitKind::MaxPayload);
    assert_eq!((e.size(), e.limit()), (101, 100));
    let text = e.to_string();
    assert!(
        text.contains("101 bytes") && text.contains("max_payload of 100"),
        "{text}"
    );
    // A payload that fits alone is refused once its headers are counted.
    assert!(limits.check("a.b", 0, 100).is_ok());
    assert!(limits.check("a.b", h, 100).is_err());
    // Unknown (0): not checked.
    assert!(Limits::new(0, 4096, 60).check("a.b", h, 1 << 30).is_ok());
}

#[test]
fn a_subject_over_the_control_line_is_refused_and_the_longest_that_fits_is_named() {
    let limits = Limits::new(1 << 20, 4096, 60);
    let (h, p) = (29, 1000);
    let fits = limits.max_subject_len(h, p);
    // `<subject> <reply:60> 29 1029`
    assert_eq!(fits, 4096 - (1 + 60 + 1 + 2 + 1 + 4));
    let subject = "k".repeat(fits);
    assert!(limits.check(&subject, h, p).is_ok());
    assert_eq!(limits.control_line_len(fits, h, p), 4096);
    let subject = "k".repeat(fits + 1);
    let e = limits.check(&subject, h, p).unwrap_err();
    assert_eq!(e.limit_kind(), LimitKind::MaxControlLine);
    assert_eq!((e.size(), e.limit()), (4097, 4096));
    let text = e.to_string();
    assert!(text.contains(&format!("at most {fits} bytes")), "{text}");
    assert!(
        text.len() < 400,
        "a long subject is not printed whole: {text}"
    );
    // Without headers the line has one size field: `<subject> <reply> <size>`.
    assert_eq!(limits.control_line_len(10, 0, 5), 10 + 1 + 60 + 1 + 1);
}

#[test]
fn digits_and_short_subjects() {
    for (n, d) in [(0, 1), (9, 1), (10, 2), (1_048_576, 7), (usize::MAX, 20)] {
        assert_eq!(digits(n), d, "{n}");
    }
    assert_eq!(short("a.b"), "\"a.b\"");
    let long = format!("$KV.b.{}", "é".repeat(3000));
    let s = short(&long);
    assert!(s.ends_with("\"…") && s.len() < 100, "{s}");
}
