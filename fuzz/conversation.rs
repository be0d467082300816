//! The conversation fuzz check, shared by fuzz_targets/conversation.rs and by the corpus replay in
//! tests/fuzz_conversation.rs: one whole Milter conversation (`session::run`: the pushes
//! `spamfilter_filter` makes, into one `session::Conversation`) over an in-memory stream whose
//! replies, read sizes and I/O errors come from the fuzzer, then the verdict as the library builds it. No dependency beyond the library and the project's
//! Sieve parser, so that the main test build can include this file as it is.
//!
//! The input, in order (anything missing reads as zero, so every input makes a conversation):
//! - three option bytes (`Choices`): CONTEXT_EDITS, SIEVE_DIALECT, buffer or read callback,
//!   transcript, connection reuse, a second conversation, DEBUG, MILTER_PROTOCOL, 1-3
//!   recipients, the MTA's macro list, the envelope, QUARANTINE_FOLDER, a long body;
//! - a 2-byte length and the message;
//! - a 1-byte length and the I/O plan: one byte per read, write or read-callback call, in the
//!   order the session makes them (a short count or an error; past its end every call is whole);
//! - a 2-byte length and the Milter's replies to the first conversation; the rest of the input
//!   is the replies to the second (same Milter: a kept connection or a remembered negotiation).

#![allow(dead_code)]

use crate::checks::check_verdict;
use crate::sieve::parse_verdict;
use milter_spamfilter::config::SieveDialect;
use milter_spamfilter::logging::LogSink;
use milter_spamfilter::net::SocketTimeouts;
use milter_spamfilter::protocol::consts::*;
use milter_spamfilter::protocol::{Negotiation, MAX_DATA_LEN};
use milter_spamfilter::session::{self, Ended, Resume, Timeouts};
use milter_spamfilter::verdict::{self, Disposition, Stage, VerdictKind, VerdictOptions};
use milter_spamfilter::{Config, Content, Envelope, ErrorKind, Recipient};
use std::cell::RefCell;
use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// TIMEOUT of every fuzzed conversation: the in-memory stream never waits, so no timeout can
/// expire on its own; only the plan's WouldBlock and TimedOut errors make timeouts.
const TIMEOUT: Duration = Duration::from_secs(60);
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(600);

/// A long body is the message repeated to at least this many bytes: several BODY packets, and
/// CRLF stretches long enough to be spliced into the write.
const LONG_BODY: usize = 140_000;

/// Fuzzer bytes read front to back; past the end everything reads as zero.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> usize {
        usize::from(u16::from_be_bytes([self.byte(), self.byte()]))
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (b, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        b
    }
    fn rest(&mut self) -> &'a [u8] {
        self.take(self.0.len())
    }
}

/// The options, the envelope and the message's form, from the first three bytes.
struct Choices {
    context_edits: bool,
    legacy: bool,
    callback: bool,
    transcript: bool,
    keep: bool,
    second: bool,
    debug: u8,
    version: u32,
    recipients: usize,
    macros: u8,
    client: u8,
    client_name: bool,
    helo: bool,
    null_sender: bool,
    esmtp_args: bool,
    folder: u8,
    long_body: bool,
    /// The Milter answers OPTNEG after QUIT_NC, so a kept connection proves itself in step.
    prove: bool,
}

impl Choices {
    fn read(b: &mut Bytes) -> Choices {
        let (f0, f1, f2) = (b.byte(), b.byte(), b.byte());
        Choices {
            context_edits: f0 & 1 == 0,
            legacy: f0 & 2 != 0,
            callback: f0 & 4 != 0,
            transcript: f0 & 8 != 0,
            keep: f0 & 16 != 0,
            second: f0 & 32 != 0,
            debug: f0 >> 6,
            version: [6, 2, 3, 4][usize::from(f1 & 3)],
            recipients: 1 + usize::from((f1 >> 2) & 3) % 3,
            macros: (f1 >> 4) & 3,
            client: f1 >> 6,
            client_name: f2 & 1 != 0,
            helo: f2 & 2 == 0,
            null_sender: f2 & 4 != 0,
            esmtp_args: f2 & 8 != 0,
            folder: (f2 >> 4) & 3,
            long_body: f2 & 64 != 0,
            prove: f2 & 128 != 0,
        }
    }

    fn config(&self) -> Config {
        let mut c = Config::with_host_port("milter.invalid", 8891);
        c.path = "fuzz.opt".to_string();
        c.timeout = TIMEOUT;
        c.message_timeout = MESSAGE_TIMEOUT;
        c.debug = self.debug;
        c.milter_protocol = self.version;
        c.context_edits = self.context_edits;
        c.sieve_dialect = if self.legacy {
            SieveDialect::Legacy
        } else {
            SieveDialect::Rfc5293
        };
        c.quarantine_folder = ["Quarantine", "Junk/Spam", "Quarantäne", "a \"b\" \\c"]
            [usize::from(self.folder)]
        .to_string();
        // The log goes nowhere, but every line of it is formatted (DEBUG 1-3).
        c.log_target = milter_spamfilter::config::LogTarget::File("/dev/null".into());
        c
    }

    fn envelope(&self) -> Envelope {
        let client_addr = match self.client {
            0 => Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
            1 => Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))),
            2 => Some(IpAddr::V6(Ipv4Addr::new(198, 51, 100, 7).to_ipv6_mapped())),
            _ => None,
        };
        let recipients = (0..self.recipients)
            .map(|i| Recipient {
                address: match i {
                    0 => b"rcpt@example.org".to_vec(),
                    1 => b"postmaster".to_vec(),
                    _ => b"\"odd <x>\"@example.org".to_vec(),
                },
                esmtp_args: if self.esmtp_args {
                    vec![b"NOTIFY=NEVER".to_vec(), b"ORCPT=rfc822;x@y".to_vec()]
                } else {
                    Vec::new()
                },
            })
            .collect();
        Envelope {
            client_name: self.client_name.then(|| b"mx.example.net".to_vec()),
            client_addr,
            client_port: 40000,
            helo: self.helo.then(|| b"mx.example.net".to_vec()),
            sender: if self.null_sender {
                Vec::new()
            } else {
                b"alice@example.net".to_vec()
            },
            mail_args: if self.esmtp_args {
                vec![b"SIZE=1000".to_vec(), b"BODY=8BITMIME".to_vec()]
            } else {
                Vec::new()
            },
            recipients,
            macros: macro_list(self.macros),
        }
    }
}

/// The MTA's macros: none; a usual set; values that override derived ones, empty values and
/// names with and without braces; more than the session's small table holds.
fn macro_list(which: u8) -> Vec<(Vec<u8>, Vec<u8>)> {
    let pairs = |p: &[(&str, &str)]| -> Vec<(Vec<u8>, Vec<u8>)> {
        p.iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    };
    match which {
        0 => Vec::new(),
        1 => pairs(&[
            ("j", "mta.example.org"),
            ("i", "4ABC123"),
            ("{daemon_name}", "smtpd"),
            ("{auth_authen}", "alice"),
            ("{tls_version}", "TLSv1.3"),
        ]),
        2 => pairs(&[
            ("{client_addr}", "203.0.113.9"),
            ("rcpt_addr", "override@example.org"),
            ("{mail_addr}", ""),
            ("i", ""),
            ("{i}", "second-wins"),
            ("_", "name [addr]"),
        ]),
        _ => (0..20)
            .map(|i| {
                (
                    format!("{{m{i}}}").into_bytes(),
                    format!("value {i}").into_bytes(),
                )
            })
            .chain(pairs(&[("i", "QID"), ("{msg_id}", "<1@example.net>")]))
            .collect(),
    }
}

/// The I/O plan, shared by the stream and the read callback: one byte per call, in call order.
struct Plan {
    steps: Vec<u8>,
    at: usize,
}

impl Plan {
    fn next(&mut self) -> Option<u8> {
        let s = self.steps.get(self.at).copied();
        self.at += 1;
        s
    }
}

/// How many bytes a call moves, from its plan byte's upper five bits: 1 to 31, or all.
fn count(step: u8, all: usize) -> usize {
    match step >> 3 {
        31 => all,
        n => usize::from(n) + 1,
    }
}

/// The Milter's side of one conversation, in memory: reads hand out the fuzzed replies, writes are
/// kept for the packet check.
///
/// A Milter answers a command after it has read it, so a read normally ends where the packet it
/// is in ends (as its length prefix says): the next one is not there yet. A plan step can hand
/// out everything at once instead, as a Milter that sends more than asked for.
struct Stream {
    replies: Vec<u8>,
    pos: usize,
    /// Where the packet being read ends.
    packet_end: usize,
    plan: Rc<RefCell<Plan>>,
    written: Vec<u8>,
    /// A write failed (an error or a zero count): the last packet may be incomplete.
    write_failed: bool,
    timeout: Duration,
}

impl Stream {
    fn timeouts_set(&self, t: Duration) -> io::Result<()> {
        // A zero timeout is refused by a real socket (EINVAL); more than TIMEOUT is a bug.
        assert!(!t.is_zero(), "a zero socket timeout was set");
        assert!(
            t <= self.timeout,
            "a socket timeout of {t:?}, more than TIMEOUT"
        );
        Ok(())
    }

    /// How much of `len` bytes the next write takes, or its error.
    fn write_step(&mut self, len: usize) -> io::Result<usize> {
        let step = self.plan.borrow_mut().next();
        let Some(step) = step else {
            return Ok(len);
        };
        let r: io::Result<usize> = match step & 7 {
            0 => Err(io::ErrorKind::BrokenPipe.into()),
            1 => Err(io::ErrorKind::WouldBlock.into()),
            2 => Err(io::ErrorKind::Interrupted.into()),
            3 => Ok(0),
            _ => Ok(len.min(count(step, len) * 7)),
        };
        // A short count is taken up by the next write; an error or a zero count ends the write.
        self.write_failed |= match &r {
            Ok(n) => *n == 0 && len > 0,
            Err(e) => e.kind() != io::ErrorKind::Interrupted,
        };
        r
    }
}

impl Stream {
    /// Where the packet that starts at or runs over `pos` ends (the end of the replies when its
    /// length prefix is cut short or claims more than there is).
    fn packet_end(&mut self) -> usize {
        if self.pos >= self.packet_end {
            let rest = &self.replies[self.pos..];
            self.packet_end = match rest {
                [a, b, c, d, ..] => {
                    let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
                    self.pos.saturating_add(4).saturating_add(len)
                }
                _ => self.replies.len(),
            }
            .min(self.replies.len());
        }
        self.packet_end
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let packet = (self.packet_end() - self.pos).min(buf.len());
        let all = (self.replies.len() - self.pos).min(buf.len());
        let n = match self.plan.borrow_mut().next() {
            None => packet,
            Some(step) => match step & 7 {
                0 => return Err(io::ErrorKind::WouldBlock.into()),
                1 => return Err(io::ErrorKind::TimedOut.into()),
                2 => return Err(io::ErrorKind::Interrupted.into()),
                3 => return Err(io::ErrorKind::ConnectionReset.into()),
                _ if step >> 3 == 31 => all,
                _ => packet.min(count(step, packet)),
            },
        };
        let left = &self.replies[self.pos..];
        buf[..n].copy_from_slice(&left[..n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.write_step(buf.len())?;
        self.written.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // Takes across the slices, as writev does, so that a short count can end mid-slice.
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut n = self.write_step(total)?;
        let taken = n;
        for b in bufs {
            let k = n.min(b.len());
            self.written.extend_from_slice(&b[..k]);
            n -= k;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Timeouts for Stream {
    fn set_read_timeout_to(&mut self, timeout: Duration) -> io::Result<()> {
        self.timeouts_set(timeout)
    }
    fn set_write_timeout_to(&mut self, timeout: Duration) -> io::Result<()> {
        self.timeouts_set(timeout)
    }
}

/// The MTA's read callback: the message in planned pieces, or a failure.
struct Callback<'a> {
    message: &'a [u8],
    plan: Rc<RefCell<Plan>>,
}

impl Read for Callback<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let all = self.message.len().min(buf.len());
        let n = match self.plan.borrow_mut().next() {
            None => all,
            Some(step) => match step & 7 {
                0 => return Err(io::Error::other("the MTA's read callback failed")),
                1 => return Err(io::ErrorKind::Interrupted.into()),
                _ => all.min(count(step, all)),
            },
        };
        buf[..n].copy_from_slice(&self.message[..n]);
        self.message = &self.message[n..];
        Ok(n)
    }
}

/// A log sink per DEBUG level, made once: the handle makes one per option file.
fn log_sink(config: &Config) -> Arc<LogSink> {
    static SINKS: OnceLock<Vec<Arc<LogSink>>> = OnceLock::new();
    let sinks = SINKS.get_or_init(|| {
        (0..4)
            .map(|d| {
                let mut c = config.clone();
                c.debug = d;
                LogSink::new(&c)
            })
            .collect()
    });
    Arc::clone(&sinks[usize::from(config.debug.min(3))])
}

/// Runs one conversation and checks everything about it. Returns what it ended with, for the
/// next conversation on the same connection, and a line saying how it ended.
#[allow(clippy::too_many_arguments)]
fn converse(
    c: &Choices,
    config: &Config,
    peer: &str,
    envelope: &Envelope,
    message: &[u8],
    plan: &Rc<RefCell<Plan>>,
    replies: &[u8],
    reused: Option<Negotiation>,
) -> (Option<Ended>, String) {
    let mut stream = Stream {
        replies: replies.to_vec(),
        pos: 0,
        packet_end: 0,
        plan: Rc::clone(plan),
        written: Vec::new(),
        write_failed: false,
        timeout: config.timeout,
    };
    let mut callback = Callback {
        message,
        plan: Rc::clone(plan),
    };
    let content = if c.callback {
        Content::Reader(&mut callback)
    } else {
        Content::Buffer(message)
    };
    let mut transcript = Vec::new();
    let was_reused = reused.is_some();
    // How the conversation must begin: OPTNEG; on a kept connection QUIT_NC, and OPTNEG after it
    // when the Milter proves the connection in step.
    let start: &[u8] = match (was_reused, c.prove) {
        (false, _) => &[SMFIC_OPTNEG],
        (true, false) => &[SMFIC_QUIT_NC],
        (true, true) => &[SMFIC_QUIT_NC, SMFIC_OPTNEG],
    };
    let reused = reused.map(|negotiation| Resume {
        negotiation,
        prove: c.prove,
    });
    let result = log_sink(config).run(|| {
        session::run(
            config,
            &mut stream,
            peer,
            envelope,
            content,
            Instant::now() + config.message_timeout,
            c.transcript.then_some(&mut transcript),
            reused,
            c.keep,
            SocketTimeouts::default(),
        )
    });
    let context = || {
        format!(
            "written:\n{}\ntranscript:\n{}",
            show(&stream.written),
            transcript.join("\n")
        )
    };
    match result {
        Ok(ended) => {
            check_ended(c, &ended, &stream, envelope, message, was_reused, &context);
            check_written(&stream, Some(&ended.negotiation), start, &context);
            assert!(
                !was_reused || ended.answered,
                "a message on a kept connection ended without its first reply being noted"
            );
            if !ended.reusable && !stream.write_failed {
                assert_eq!(
                    packets(&stream.written).last().map(|p| p.0),
                    Some(SMFIC_QUIT),
                    "a conversation that ended without keeping its connection did not QUIT\n{}",
                    context()
                );
            }
            if ended.reusable {
                assert!(
                    !packets(&stream.written).any(|p| p.0 == SMFIC_QUIT),
                    "QUIT sent on a connection kept for the next message\n{}",
                    context()
                );
            }
            let how = format!(
                "ok: {:?} at {:?}{}",
                ended.outcome.disposition,
                ended.outcome.stage,
                if ended.reusable { ", kept" } else { "" }
            );
            (Some(ended), how)
        }
        Err(e) => {
            assert!(!e.message.trim().is_empty(), "an error with no message");
            assert!(
                e.message != "the negotiation changed",
                "the internal re-encoding error escaped: {e:?}"
            );
            match e.kind {
                ErrorKind::Protocol | ErrorKind::Io | ErrorKind::Timeout => assert!(
                    e.message.contains(peer),
                    "a {:?} error that does not name the Milter: {}",
                    e.kind,
                    e.message
                ),
                ErrorKind::Message => {}
                kind => panic!("a conversation failed with a {kind:?} error: {}", e.message),
            }
            check_written(&stream, None, start, &context);
            (None, format!("error: {:?}: {}", e.kind, e.message))
        }
    }
}

/// What a conversation that succeeded decided, and the verdict the library makes of it.
fn check_ended(
    c: &Choices,
    ended: &Ended,
    stream: &Stream,
    envelope: &Envelope,
    message: &[u8],
    reused: bool,
    context: &dyn Fn() -> String,
) {
    let o = &ended.outcome;
    let refusal = matches!(o.disposition, Disposition::Reject | Disposition::Tempfail);
    assert_eq!(
        o.reply.is_some(),
        refusal,
        "a reply text on a {:?} outcome (or none on a refusal)",
        o.disposition
    );
    if let Some(r) = &o.reply {
        assert!(
            !r.is_empty(),
            "an empty reply text on a {:?}",
            o.disposition
        );
    }
    assert!(
        o.rejected_recipients.len() <= envelope.recipients.len(),
        "more recipients refused than there are"
    );
    if ended.reusable {
        assert!(
            c.keep && o.stage == Stage::Eom && o.disposition == Disposition::Continue,
            "a connection kept after {:?} at {:?}",
            o.disposition,
            o.stage
        );
        assert!(
            ended.negotiation.version >= 6,
            "a version 2-4 connection kept"
        );
    }
    if !reused {
        let v = ended.negotiation.version;
        assert!(
            (2..=c.version).contains(&v),
            "negotiated version {v} when {} was offered",
            c.version
        );
    }
    // As the handle makes them from its options.
    let config = c.config();
    let options = VerdictOptions {
        context_edits: config.context_edits,
        dialect: config.sieve_dialect,
        quarantine_folder: config.quarantine_folder,
        limits: config.sieve_limits,
    };
    let v = verdict::build(o, &options);
    check_verdict(&v, o);
    match o.disposition {
        Disposition::Tempfail => assert_eq!(v.kind, VerdictKind::Defer, "a tempfail not deferred"),
        Disposition::Reject | Disposition::Discard => {
            assert_eq!(
                v.kind,
                VerdictKind::Sieve,
                "a {:?} with no script",
                o.disposition
            )
        }
        _ => {}
    }
    if v.kind == VerdictKind::Sieve {
        if let Err(why) = parse_verdict(&v.script) {
            panic!(
                "the verdict is not a well-formed scriptlet: {why}\n{}\noutcome {o:?}",
                String::from_utf8_lossy(&v.script)
            );
        }
    }
    check_body(o.stage, &ended.negotiation, stream, message, context);
}

/// `text` with every CRLF as LF: what the session's line-end conversion leaves alone.
fn lf(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for (i, &b) in text.iter().enumerate() {
        if !(b == b'\r' && text.get(i + 1) == Some(&b'\n')) {
            out.push(b);
        }
    }
    out
}

/// The BODY packets of a conversation that went to end of message: CRLF text throughout, and
/// the end of the message (the body) unchanged but for line ends; all of it unless the Milter
/// said SKIP somewhere.
fn check_body(
    stage: Stage,
    neg: &Negotiation,
    stream: &Stream,
    message: &[u8],
    context: &dyn Fn() -> String,
) {
    if stage != Stage::Eom || neg.protocol & SMFIP_NOBODY != 0 {
        return;
    }
    let body: Vec<u8> = packets(&stream.written)
        .filter(|(cmd, _)| *cmd == SMFIC_BODY)
        .flat_map(|(_, data)| data.to_vec())
        .collect();
    for (i, &b) in body.iter().enumerate() {
        if b == b'\n' {
            assert!(
                i > 0 && body[i - 1] == b'\r',
                "a bare LF at {i} of the body sent\n{}",
                context()
            );
        }
    }
    let skipped = packets(&stream.replies[..stream.pos]).any(|(cmd, _)| cmd == SMFIR_SKIP);
    let (sent, whole) = (lf(&body), lf(message));
    if skipped {
        return;
    }
    assert!(
        whole.ends_with(&sent),
        "the body sent is not the end of the message ({} of {} bytes)\n{}",
        sent.len(),
        whole.len(),
        context()
    );
}

/// The packets in `bytes`, while they are whole.
fn packets(bytes: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.len() < 5 {
            return None;
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len == 0 || rest.len() < 4 + len {
            return None;
        }
        let (p, tail) = rest.split_at(4 + len);
        rest = tail;
        Some((p[4], &p[5..]))
    })
}

/// NUL-terminated strings filling `data` exactly.
fn strings(data: &[u8]) -> Option<Vec<&[u8]>> {
    if data.last() != Some(&0) {
        return None;
    }
    Some(data[..data.len() - 1].split(|&b| b == 0).collect())
}

/// Why one packet we sent is malformed, if it is.
fn bad_packet(cmd: u8, data: &[u8]) -> Option<String> {
    let empty = |what: &str| (!data.is_empty()).then(|| format!("{what} with data"));
    match cmd {
        SMFIC_OPTNEG => (data.len() != 12).then(|| format!("OPTNEG of {} bytes", data.len())),
        SMFIC_MACRO => {
            let stage = *data.first()?;
            if !b"CHMRTLNE".contains(&stage) {
                return Some(format!("MACRO for stage '{}'", stage.escape_ascii()));
            }
            match strings(&data[1..]) {
                Some(s) if !s.is_empty() && s.len() % 2 == 0 => s
                    .iter()
                    .step_by(2)
                    .any(|n| n.is_empty())
                    .then(|| "MACRO with an empty name".to_string()),
                _ => Some("MACRO that is not name/value pairs".to_string()),
            }
        }
        SMFIC_CONNECT => {
            let nul = data.iter().position(|&b| b == 0)?;
            match &data[nul + 1..] {
                [b'U'] => None,
                [b'4' | b'6', _, _, addr @ ..] if strings(addr).is_some_and(|s| s.len() == 1) => {
                    None
                }
                _ => Some("CONNECT with a malformed address".to_string()),
            }
        }
        SMFIC_HELO => match strings(data) {
            Some(s) if s.len() == 1 => None,
            _ => Some("HELO that is not one string".to_string()),
        },
        SMFIC_MAIL | SMFIC_RCPT => match strings(data) {
            Some(s) if s[0].first() == Some(&b'<') => None,
            _ => Some("MAIL/RCPT without its <address> string".to_string()),
        },
        SMFIC_HEADER => match strings(data) {
            Some(s) if s.len() == 2 && !s[0].is_empty() => None,
            _ => Some("HEADER that is not name and value".to_string()),
        },
        SMFIC_BODY => data.is_empty().then(|| "an empty BODY".to_string()),
        SMFIC_DATA => empty("DATA"),
        SMFIC_EOH => empty("EOH"),
        SMFIC_BODYEOB => empty("BODYEOB"),
        SMFIC_ABORT => empty("ABORT"),
        SMFIC_QUIT => empty("QUIT"),
        SMFIC_QUIT_NC => empty("QUIT_NC"),
        other => Some(format!("an unknown command '{}'", other.escape_ascii())),
    }
    .or_else(|| (data.len() > MAX_DATA_LEN).then(|| format!("{} data bytes", data.len())))
}

/// What we wrote: whole, well-formed packets (the last may be cut short by a failed write),
/// starting with the commands of `start` and no other OPTNEG, nothing after QUIT, and, when the
/// conversation ended, no command the Milter asked not to get.
fn check_written(
    stream: &Stream,
    neg: Option<&Negotiation>,
    start: &[u8],
    context: &dyn Fn() -> String,
) {
    let w = &stream.written;
    let mut whole = 0;
    let mut cmds = Vec::new();
    for (cmd, data) in packets(w) {
        if let Some(why) = bad_packet(cmd, data) {
            panic!("sent a malformed packet: {why}\n{}", context());
        }
        whole += 5 + data.len();
        cmds.push(cmd);
    }
    assert!(
        whole == w.len() || stream.write_failed,
        "{} bytes after the last whole packet, with no failed write\n{}",
        w.len() - whole,
        context()
    );
    let n = start.len().min(cmds.len());
    assert_eq!(
        &cmds[..n],
        &start[..n],
        "the conversation began with the wrong commands\n{}",
        context()
    );
    if let Some(q) = cmds.iter().position(|&c| c == SMFIC_QUIT) {
        assert_eq!(q + 1, cmds.len(), "sent more after QUIT\n{}", context());
    }
    let optnegs = |c: &[u8]| c.iter().filter(|&&c| c == SMFIC_OPTNEG).count();
    if optnegs(&cmds) > optnegs(start) {
        panic!("OPTNEG sent again\n{}", context());
    }
    let Some(neg) = neg else {
        return;
    };
    for (bit, cmd, name) in [
        (SMFIP_NOCONNECT, SMFIC_CONNECT, "CONNECT"),
        (SMFIP_NOHELO, SMFIC_HELO, "HELO"),
        (SMFIP_NOMAIL, SMFIC_MAIL, "MAIL"),
        (SMFIP_NORCPT, SMFIC_RCPT, "RCPT"),
        (SMFIP_NOHDRS, SMFIC_HEADER, "HEADER"),
        (SMFIP_NOEOH, SMFIC_EOH, "EOH"),
        (SMFIP_NOBODY, SMFIC_BODY, "BODY"),
        (SMFIP_NODATA, SMFIC_DATA, "DATA"),
    ] {
        if neg.protocol & bit != 0 {
            assert!(
                !cmds.contains(&cmd),
                "sent {name}, which the Milter asked not to get (protocol {:#x})\n{}",
                neg.protocol,
                context()
            );
        }
    }
}

/// Written bytes for a failure message: each packet's command and length.
fn show(w: &[u8]) -> String {
    packets(w)
        .map(|(cmd, data)| format!("  '{}' {} bytes", cmd.escape_ascii(), data.len()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The check: a whole conversation, and maybe a second one with the same Milter, from `data`.
/// Returns how each ended ("ok: ..." or "error: ..."), for the corpus test's seeds.
pub fn check_conversation(data: &[u8]) -> Vec<String> {
    let mut b = Bytes(data);
    let c = Choices::read(&mut b);
    let n = b.u16();
    let mut message = b.take(n).to_vec();
    if c.long_body && !message.is_empty() {
        let piece = message.clone();
        while message.len() < LONG_BODY {
            message.extend_from_slice(&piece);
        }
    }
    let n = usize::from(b.byte());
    let plan = Rc::new(RefCell::new(Plan {
        steps: b.take(n).to_vec(),
        at: 0,
    }));
    let n = b.u16();
    let first = b.take(n);
    let second = b.rest();
    let config = c.config();
    let envelope = c.envelope();
    // A new peer name for every input, so that no negotiation remembered from an earlier input
    // (the session keeps the last one per thread and peer) changes what this one does.
    static INPUTS: AtomicU64 = AtomicU64::new(0);
    let peer = format!("fuzz-{}:8891", INPUTS.fetch_add(1, Ordering::Relaxed));
    let (ended, how) = converse(&c, &config, &peer, &envelope, &message, &plan, first, None);
    let mut ends = vec![how];
    if c.second {
        // A kept connection starts with QUIT_NC; otherwise the session assumes the negotiation
        // it remembers from the first and must notice when the second differs.
        let reused = ended.filter(|e| e.reusable).map(|e| e.negotiation);
        let (_, how) = converse(
            &c, &config, &peer, &envelope, &message, &plan, second, reused,
        );
        ends.push(how);
    }
    ends
}
