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

// ---------------------------------------------------------------------------------------------
// Kept connections that the Milter closes, and Milters that reply once too often

/// One packet from `s`: its command and data, or None at the end of the stream.
fn read_packet(s: &mut std::net::TcpStream) -> Option<(u8, Vec<u8>)> {
    use std::io::Read;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > 1 << 20 {
        return None;
    }
    let mut data = vec![0u8; len];
    s.read_exact(&mut data).ok()?;
    let cmd = data.remove(0);
    Some((cmd, data))
}

fn packet(cmd: u8, data: &[u8]) -> Vec<u8> {
    let mut p = ((data.len() + 1) as u32).to_be_bytes().to_vec();
    p.push(cmd);
    p.extend_from_slice(data);
    p
}

/// A hand-written Milter that answers every command properly and, after each final reply at
/// end of message (CONTINUE, with the header "X-Fault-Id: N" of the message's Subject number),
/// sends one more reply `delay` later: "550 5.7.1 stray after message N". No real Milter sends
/// a late reply on demand. Like rspamd, it answers OPTNEG in any state, QUIT_NC included.
fn late_reply_milter(delay: std::time::Duration) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the fault Milter");
    let port = listener.local_addr().expect("its address").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { return };
            std::thread::spawn(move || {
                use std::io::Write;
                let mut n = String::new();
                while let Some((cmd, data)) = read_packet(&mut s) {
                    let reply: Vec<u8> = match cmd {
                        // Version 6, ADDHDRS, every step with a reply.
                        b'O' => packet(b'O', &[0, 0, 0, 6, 0, 0, 0, 1, 0, 0, 0, 0]),
                        b'D' | b'K' | b'A' => continue,
                        b'Q' => return,
                        b'L' => {
                            let mut parts = data.split(|&b| b == 0);
                            if parts.next() == Some(&b"Subject"[..]) {
                                let v = String::from_utf8_lossy(parts.next().unwrap_or(b""));
                                n = v.rsplit(' ').next().unwrap_or("").to_string();
                            }
                            packet(b'c', &[])
                        }
                        b'E' => {
                            let mut r = packet(b'h', format!("X-Fault-Id\0{n}\0").as_bytes());
                            r.extend(packet(b'c', &[]));
                            if s.write_all(&r).is_err() {
                                return;
                            }
                            std::thread::sleep(delay);
                            packet(
                                b'y',
                                format!("550 5.7.1 stray after message {n}\0").as_bytes(),
                            )
                        }
                        _ => packet(b'c', &[]),
                    };
                    if s.write_all(&reply).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// Every message ends with CONTINUE and its connection is kept, and every final reply is
/// followed 0, 2 or 10 ms later by one more: with 32 threads, no message is decided by another
/// message's reply. A stray that arrives with the final reply fails its own message ("sent more
/// after its final reply"); one that comes later is caught by the next message's proof
/// (QUIT_NC + OPTNEG, read up to the OPTNEG reply), which closes the connection and sends the
/// message again over a new one.
#[test]
fn a_late_extra_reply_never_decides_another_message() {
    let (mut out_of_step, mut probed) = (0, 0);
    for delay_ms in [0, 2, 10] {
        let port = late_reply_milter(std::time::Duration::from_millis(delay_ms));
        let h = Arc::new(handle(port, 32));
        let threads: Vec<_> = (0..32)
            .map(|t| {
                let h = Arc::clone(&h);
                std::thread::spawn(move || one_thread_of_late_replies(&h, t))
            })
            .collect();
        let (mut crossed, mut failed) = (Vec::new(), 0);
        for t in threads {
            let (c, f, o, p) = t.join().expect("a filtering thread panicked");
            crossed.extend(c);
            failed += f;
            out_of_step += o;
            probed += p;
        }
        assert!(
            crossed.is_empty(),
            "delay {delay_ms} ms: {} of 256 messages decided by another's reply:\n{}",
            crossed.len(),
            crossed.join("\n")
        );
        assert!(failed < 256, "delay {delay_ms} ms: every message failed");
    }
    assert!(probed > 0, "no kept connection was proven in step");
    assert!(
        out_of_step > 0,
        "no stray reply was caught before the OPTNEG reply"
    );
}

/// Eight messages of thread `t`: those decided by another's reply, those failed because their
/// own Milter sent more after its final reply, those whose kept connection was found out of
/// step, and those that proved a kept connection.
fn one_thread_of_late_replies(h: &Handle, t: usize) -> (Vec<String>, usize, usize, usize) {
    let (mut crossed, mut failed, mut out_of_step, mut probed) = (Vec::new(), 0, 0, 0);
    for i in 0..8 {
        let n = t * 100 + i;
        let msg = format!("Subject: fault {n}\r\nFrom: a@example.org\r\n\r\nbody\r\n");
        let (r, transcript) = h.filter_traced(&envelope(), Content::Buffer(msg.as_bytes()));
        let text = transcript.join("\n");
        out_of_step += usize::from(text.contains("is out of step"));
        probed += usize::from(text.contains("reusing") && text.contains("> OPTNEG"));
        let f = match r {
            Ok(f) => f,
            Err(e)
                if e.message
                    .contains("sent more after its final reply to BODYEOB") =>
            {
                failed += 1;
                continue;
            }
            Err(e) => panic!("message {n}: {e}\n{text}"),
        };
        let script = String::from_utf8_lossy(&f.verdict.script).into_owned();
        if f.verdict.kind != VerdictKind::Sieve
            || !script.contains(&format!("\"X-Fault-Id\" \"{n}\";"))
        {
            crossed.push(format!(
                "message {n}: {:?} {script}\n{text}",
                f.verdict.kind
            ));
        }
    }
    (crossed, failed, out_of_step, probed)
}

/// A loopback relay in front of `upstream` that closes a kept connection at random at the
/// moment it is used again (its next bytes start with QUIT_NC): the Milter closing an idle
/// connection between the library's look at it and its use.
fn closing_relay(upstream: u16) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the relay");
    let port = listener.local_addr().expect("its address").port();
    std::thread::spawn(move || {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for conn in listener.incoming() {
            let Ok(client) = conn else { return };
            let Ok(milter) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                return;
            };
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut coin = seed;
            let (mut c_in, mut m_out) = (
                client.try_clone().expect("clone"),
                milter.try_clone().expect("clone"),
            );
            let (mut m_in, mut c_out) = (milter, client);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut m_in, &mut c_out);
                let _ = c_out.shutdown(std::net::Shutdown::Both);
            });
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = match c_in.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    coin = coin.rotate_left(7) ^ 0x5851_f42d_4c95_7f2d;
                    if buf[..n].starts_with(&[0, 0, 0, 1, b'K']) && coin % 2 == 0 {
                        break;
                    }
                    if m_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = c_in.shutdown(std::net::Shutdown::Both);
                let _ = m_out.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    port
}

/// A kept connection closed between the look at it and its use: the message goes on over a new
/// connection and gets its own verdict (pymilter behind a relay that closes at random).
#[test]
fn a_kept_connection_closed_when_used_is_replaced_within_the_message() {
    let milter = LoadMilter::with_connect(0);
    let h = handle(closing_relay(milter.port), 1);
    let (mut replaced, mut reused) = (0, 0);
    for i in 0..60 {
        let (r, transcript) = check(&h, i * 4);
        reused += usize::from(r);
        replaced += usize::from(
            transcript
                .iter()
                .any(|l| l.contains("failed before any reply to this message")),
        );
    }
    assert!(
        replaced > 0,
        "the relay never closed a kept connection in use"
    );
    assert!(reused > replaced, "{reused} reused, {replaced} replaced");
}
