//! CONNECTION_REUSE: a connection whose message ended cleanly at end of message is kept, and
//! the next message on it starts with QUIT_NC and a new CONNECT (no new negotiation). Checked
//! against a real libmilter-based Milter (tests/milters/load_milter.py): every message keeps its
//! own verdict, from one thread and from many, the pool is bounded and closed with the handle,
//! and a kept connection that the Milter closed is never used.

use milter_spamfilter::{Config, Content, Envelope, Handle, Recipient, VerdictKind};
use std::sync::Arc;

mod support {
    pub mod load_milter;
}
use support::load_milter::LoadMilter;

fn handle(port: u16, reuse: u32) -> Handle {
    let text = format!("HOST=127.0.0.1\nPORT={port}\nTIMEOUT=1000\nCONNECTION_REUSE={reuse}\n");
    Handle::new(Config::parse("reuse.opt", text.as_bytes()).expect("valid option text"))
}

fn envelope() -> Envelope {
    Envelope {
        client_addr: Some("192.0.2.10".parse().expect("literal")),
        client_port: 40000,
        helo: Some(b"client.example.org".to_vec()),
        sender: b"alice@example.org".to_vec(),
        recipients: vec![Recipient::new(b"bob@example.net".to_vec())],
        ..Envelope::default()
    }
}

/// Filters load message `n` (its body `n` lines long) and checks its verdict: the load
/// Milter's answer follows the Subject's number, and it reports the body size it saw, so a
/// Milter that mixed up two messages on one connection shows.
fn check(h: &Handle, n: usize) -> (bool, Vec<String>) {
    let body = "line\r\n".repeat(n % 7 + 1);
    let msg = format!("Subject: load {n}\r\nFrom: alice@example.org\r\n\r\n{body}");
    let (result, transcript) = h.filter_traced(&envelope(), Content::Buffer(msg.as_bytes()));
    let f = result.unwrap_or_else(|e| panic!("message {n}: {e}\n{}", transcript.join("\n")));
    let script = String::from_utf8_lossy(&f.verdict.script).into_owned();
    match n % 4 {
        0 => {
            assert_eq!(f.verdict.kind, VerdictKind::Sieve, "message {n}");
            assert!(
                script.contains(&format!("\"X-Load-Id\" \"{n}\";"))
                    && script.contains(&format!("\"X-Body-Bytes\" \"{}\";", body.len())),
                "message {n}: {script}"
            );
        }
        1 => assert!(
            script.contains(&format!("ereject \"550 5.7.1 rejected load message {n}\";")),
            "message {n}: {script}"
        ),
        2 => {
            assert_eq!(f.verdict.kind, VerdictKind::Defer, "message {n}");
            assert_eq!(
                f.verdict.reply.as_deref(),
                Some(format!("451 4.7.1 deferred load message {n}").as_bytes()),
                "message {n}"
            );
        }
        _ => assert!(
            script.ends_with("discard;\r\n") || script.ends_with("discard;\n"),
            "message {n}: {script}"
        ),
    }
    let reused = transcript
        .iter()
        .any(|l| l.starts_with("reusing the open connection"));
    (reused, transcript)
}

/// Established connections from this machine to the Milter's port (both IPv4 tables), from
/// /proc: other tests in this process open their own descriptors meanwhile, so a count of the
/// process's descriptors would not tell.
fn connections_to(port: u16) -> usize {
    ["/proc/self/net/tcp", "/proc/self/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_string).collect::<Vec<_>>())
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // rem_address is "ADDR:PORT" in hex; state 01 is ESTABLISHED.
            fields.len() > 3
                && fields[3] == "01"
                && fields[2]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                    == Some(port)
        })
        .count()
}

#[test]
fn one_connection_serves_message_after_message() {
    let milter = LoadMilter::with_connect(0);
    let h = handle(milter.port, 1);
    let (first, _) = check(&h, 0);
    assert!(!first, "the first message cannot reuse anything");
    // Numbers divisible by 4 end with CONTINUE (and header edits) at end of message.
    for n in (4..160).step_by(4) {
        let (reused, transcript) = check(&h, n);
        assert!(
            reused,
            "message {n} opened a new connection:\n{}",
            transcript.join("\n")
        );
        // The reused conversation starts with QUIT_NC, no OPTNEG, and ends without QUIT.
        let sent: Vec<&String> = transcript.iter().filter(|l| l.starts_with("> ")).collect();
        assert!(
            sent[0].starts_with("> QUIT_NC"),
            "{}",
            transcript.join("\n")
        );
        assert!(
            !transcript
                .iter()
                .any(|l| l.starts_with("> OPTNEG") || l.starts_with("> QUIT ")),
            "{}",
            transcript.join("\n")
        );
    }
}

/// After a final reply other than CONTINUE at end of message, libmilter is back in its HELO
/// state, where QUIT_NC and CONNECT would be ignored without an answer: such a connection gets
/// QUIT and the next message a new connection.
#[test]
fn only_a_continue_at_end_of_message_keeps_the_connection() {
    let milter = LoadMilter::with_connect(0);
    let h = handle(milter.port, 1);
    for n in 0..24 {
        let (reused, transcript) = check(&h, n);
        let previous_continued = n > 0 && (n - 1) % 4 == 0;
        assert_eq!(
            reused,
            previous_continued,
            "message {n} (after message {}): {}",
            n.wrapping_sub(1),
            transcript.join("\n")
        );
        let quit = transcript.iter().any(|l| l.starts_with("> QUIT "));
        assert_eq!(quit, n % 4 != 0, "message {n}: {}", transcript.join("\n"));
    }
}

/// pymilter as it comes negotiates NOCONNECT; such a Milter sets its state up at negotiation
/// and loses it at QUIT_NC, so its connections are never kept.
#[test]
fn a_milter_that_takes_no_connect_is_never_reused() {
    let milter = LoadMilter::start();
    let h = handle(milter.port, 2);
    for n in 0..6 {
        let (reused, transcript) = check(&h, n);
        assert!(!reused, "message {n}: {}", transcript.join("\n"));
    }
}

#[test]
fn without_reuse_every_message_has_its_own_connection() {
    let milter = LoadMilter::with_connect(0);
    let h = handle(milter.port, 0);
    for n in 0..8 {
        let (reused, transcript) = check(&h, n);
        assert!(!reused, "message {n}: {}", transcript.join("\n"));
        assert!(
            transcript.iter().any(|l| l.starts_with("> QUIT ")),
            "message {n} did not end with QUIT: {}",
            transcript.join("\n")
        );
    }
}

#[test]
fn many_threads_share_a_bounded_pool_and_close_it_with_the_handle() {
    let milter = LoadMilter::with_connect(0);
    let h = Arc::new(handle(milter.port, 4));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let h = Arc::clone(&h);
            std::thread::spawn(move || {
                let mut reused = 0;
                for i in 0..50 {
                    if check(&h, t * 1000 + i).0 {
                        reused += 1;
                    }
                }
                reused
            })
        })
        .collect();
    let reused: usize = threads
        .into_iter()
        .map(|t| t.join().expect("a filtering thread panicked"))
        .sum();
    // A quarter of the messages end with CONTINUE and keep their connection for the next one.
    assert!(
        reused > 50,
        "only {reused} of 400 messages reused a connection"
    );
    // At most CONNECTION_REUSE connections stay open while idle, and none once it is closed.
    let kept = connections_to(milter.port);
    assert!(kept <= 4, "{kept} connections kept, CONNECTION_REUSE is 4");
    drop(h);
    let start = std::time::Instant::now();
    while connections_to(milter.port) > 0 && start.elapsed().as_secs() < 5 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        connections_to(milter.port),
        0,
        "closing the handle left connections open"
    );
}

#[test]
fn a_kept_connection_the_milter_closed_is_not_used() {
    let milter = LoadMilter::with_connect(0);
    let port = milter.port;
    let h = handle(port, 1);
    check(&h, 4);
    // The Milter goes away (closing the kept connection) and comes back on the same port.
    drop(milter);
    let milter = LoadMilter::with_connect(port);
    let (reused, transcript) = check(&h, 8);
    assert!(
        !reused,
        "a connection the Milter had closed was reused: {}",
        transcript.join("\n")
    );
    let (reused, _) = check(&h, 12);
    assert!(reused, "the new connection was not kept");
    drop(milter);
}

#[test]
fn a_message_that_ends_before_end_of_message_does_not_keep_its_connection() {
    let milter = LoadMilter::with_connect(0);
    let h = handle(milter.port, 2);
    // A message whose read callback fails half-way ends its conversation with an error: its
    // connection is left in the middle of a message and must never be kept.
    struct Failing(usize);
    impl std::io::Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("the spool file went away"));
            }
            let msg = b"Subject: load 4\r\n\r\nbody\r\n";
            let n = msg.len().min(buf.len());
            buf[..n].copy_from_slice(&msg[..n]);
            self.0 -= 1;
            Ok(n)
        }
    }
    // A kept connection, which the failing message then takes.
    let (reused, _) = check(&h, 0);
    assert!(!reused);
    let mut reader = Failing(1);
    let err = h
        .filter(&envelope(), Content::Reader(&mut reader))
        .expect_err("a failing read callback is an error");
    assert!(err.message.contains("the spool file went away"), "{err}");
    let (reused, transcript) = check(&h, 4);
    assert!(
        !reused,
        "the connection of a failed message was reused: {}",
        transcript.join("\n")
    );
}
