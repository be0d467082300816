//! The fault matrix: a hand-written Milter (the one place where a hand-written server is right)
//! answers normally until one chosen stage and there misbehaves in one chosen way. Every case must
//! end in a clear error (kind and message text checked) within its timeout bound, with the
//! library's socket closed and no allocation anywhere near what a lying length claimed.
//!
//! Each test runs one fault at every stage, collects what went wrong and fails once with the
//! whole list, so that a run shows the complete matrix.

use milter_spamfilter::{
    Config, Content, Envelope, Error, ErrorKind, Filtered, Handle, Recipient, VerdictKind,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Allocation tracking: the largest single allocation made by the filtering thread while a
// filter call runs. The session runs on the calling thread, so a thread-local view sees exactly
// the library's allocations for that message, whatever other tests do meanwhile.

struct Tracking;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    /// Bytes allocated less bytes freed by this thread since tracking began, and the most
    /// that ever was: the peak growth of the library's memory for one message.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // try_with: the allocator may run while thread-locals are being torn down.
    let _ = TRACKING.try_with(|t| {
        if t.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

/// `delta` bytes more (or fewer) live on this thread.
fn live(delta: isize) {
    let _ = TRACKING.try_with(|t| {
        if t.get() {
            let _ = LIVE.try_with(|l| {
                let now = l.get() + delta;
                l.set(now);
                let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
            });
        }
    });
}

// SAFETY: every call is passed through to the system allocator unchanged.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        live(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        live(layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        live(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        live(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// No single allocation of a faulty conversation may come near the lengths the fault claims
/// (1 MiB and 4 GiB); the library's own buffers are 64 KiB pieces.
const ALLOCATION_LIMIT: usize = 512 << 10;

// ---------------------------------------------------------------------------------------------
// The wire, from the Milter's side.

/// Where the fault happens: the command whose reply goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    Optneg,
    Connect,
    Helo,
    Mail,
    Rcpt,
    Data,
    Header,
    Eoh,
    Body,
    Eom,
}

const STAGES: [At; 10] = [
    At::Optneg,
    At::Connect,
    At::Helo,
    At::Mail,
    At::Rcpt,
    At::Data,
    At::Header,
    At::Eoh,
    At::Body,
    At::Eom,
];

impl At {
    fn of_command(cmd: u8) -> Option<At> {
        Some(match cmd {
            b'O' => At::Optneg,
            b'C' => At::Connect,
            b'H' => At::Helo,
            b'M' => At::Mail,
            b'R' => At::Rcpt,
            b'T' => At::Data,
            b'L' => At::Header,
            b'N' => At::Eoh,
            b'B' => At::Body,
            b'E' => At::Eom,
            _ => return None,
        })
    }

    /// The command's name as the library's messages write it.
    fn name(self) -> &'static str {
        match self {
            At::Optneg => "OPTNEG",
            At::Connect => "CONNECT",
            At::Helo => "HELO",
            At::Mail => "MAIL",
            At::Rcpt => "RCPT",
            At::Data => "DATA",
            At::Header => "HEADER",
            At::Eoh => "EOH",
            At::Body => "BODY",
            At::Eom => "BODYEOB",
        }
    }
}

/// One packet: big-endian length of command + data, the command, the data.
fn packet(cmd: u8, data: &[u8]) -> Vec<u8> {
    let mut p = ((data.len() + 1) as u32).to_be_bytes().to_vec();
    p.push(cmd);
    p.extend_from_slice(data);
    p
}

/// The normal OPTNEG answer: version 6, ADDHDRS, every stage sent and answered (protocol 0), so
/// that each stage of the matrix gets a reply point. SKIP is deliberately not negotiated.
fn optneg_reply() -> Vec<u8> {
    optneg_reply_version(6)
}

/// An OPTNEG answer with `version`, ADDHDRS and protocol 0.
fn optneg_reply_version(version: u32) -> Vec<u8> {
    let mut d = Vec::new();
    for v in [version, 0x01, 0] {
        d.extend_from_slice(&v.to_be_bytes());
    }
    packet(b'O', &d)
}

fn read_packet(s: &mut TcpStream) -> io::Result<(u8, Vec<u8>)> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > 1 << 20 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the library sent a packet of length {len}"),
        ));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok((body[0], body[1..].to_vec()))
}

// ---------------------------------------------------------------------------------------------
// The faults.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Close the connection instead of answering.
    Close,
    /// Never answer (but keep the connection open).
    Silent,
    /// A valid reply, one byte at a time, quickly: must work.
    DripFast,
    /// A valid reply, one byte at a time, each byte within TIMEOUT but the whole beyond
    /// MESSAGE_TIMEOUT.
    DripSlow,
    /// A packet length of 0.
    LenZero,
    /// A packet length of 0xFFFFFFFF (and nothing after it).
    LenHuge,
    /// A packet length of 1 MiB (within the cap) but only a few bytes, then close.
    LenTruncated,
    /// A length shorter than the packet's fields.
    ShortField,
    /// A string without its NUL.
    NoNul,
    /// REPLYCODE with an embedded NUL.
    ReplyNul,
    /// REPLYCODE with a lone `%`.
    LonePercent,
    /// REPLYCODE whose enhanced-code class digit differs from the reply's.
    WrongClass,
    /// A multi-line REPLYCODE with a bare LF between the lines.
    MultilineBareLf,
    /// A multi-line REPLYCODE whose last line still says `-` and ends in CRLF.
    MultilineUnfinished,
    /// A multi-line REPLYCODE changing its code between lines.
    MultilineCodeChange,
    /// Two replies for one command, in one write.
    TwoReplies,
    /// ADDHEADER before end of message.
    EarlyEdit,
    /// SKIP without SMFIP_SKIP negotiated.
    SkipNotNegotiated,
    /// A reply code that does not exist.
    UnknownCode,
    /// 64 random bytes from the given seed.
    Random(u64),
    /// PROGRESS every SLOW_DRIP_MS, for ever: each within TIMEOUT, together beyond
    /// MESSAGE_TIMEOUT.
    ProgressForever,
}

/// Milliseconds between bytes of a slow drip: each within TIMEOUT (0.5 s), together far beyond
/// MESSAGE_TIMEOUT (1 s).
const SLOW_DRIP_MS: u64 = 150;

/// xorshift64*: reproducible random bytes without a dependency.
fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

const DRIP_REPLY: &[u8] = b"550 5.7.1 dripped reply";

impl Fault {
    /// What the Milter sends instead of its normal reply (None: send nothing).
    fn bytes(self, at: At) -> Option<Vec<u8>> {
        let y = |text: &[u8]| Some(packet(b'y', text));
        Some(match self {
            Fault::Close | Fault::Silent => return None,
            Fault::ProgressForever => packet(b'p', &[]),
            Fault::DripFast | Fault::DripSlow => {
                if at == At::Optneg {
                    optneg_reply()
                } else {
                    packet(b'y', &[DRIP_REPLY, b"\0"].concat())
                }
            }
            Fault::LenZero => vec![0, 0, 0, 0],
            Fault::LenHuge => vec![0xff, 0xff, 0xff, 0xff],
            Fault::LenTruncated => {
                let mut p = (1u32 << 20).to_be_bytes().to_vec();
                p.push(if at == At::Optneg { b'O' } else { b'b' });
                p.extend_from_slice(&[0u8; 16]);
                p
            }
            Fault::ShortField => {
                if at == At::Optneg {
                    // Two of the three uint32.
                    packet(b'O', &[0, 0, 0, 6, 0, 0, 0, 1])
                } else {
                    // INSHEADER whose index field has two of its four bytes.
                    packet(b'i', &[0, 0])
                }
            }
            Fault::NoNul => {
                if at == At::Optneg {
                    // A macro list for stage 0 without its NUL.
                    let mut d = Vec::new();
                    for v in [6u32, 0x01, 0, 0] {
                        d.extend_from_slice(&v.to_be_bytes());
                    }
                    d.extend_from_slice(b"j {client_addr}");
                    packet(b'O', &d)
                } else {
                    packet(b'y', b"550 5.7.1 no terminator")
                }
            }
            Fault::ReplyNul => return y(b"550 5.7.1 before\0after\0"),
            Fault::LonePercent => return y(b"550 5.7.1 100% sure\0"),
            Fault::WrongClass => return y(b"550 4.7.1 class differs\0"),
            Fault::MultilineBareLf => return y(b"550-5.7.1 first\n550 5.7.1 last\0"),
            Fault::MultilineUnfinished => return y(b"550-5.7.1 first\r\n550-5.7.1 second\r\n\0"),
            Fault::MultilineCodeChange => return y(b"550-5.7.1 first\r\n554 5.7.1 last\0"),
            Fault::TwoReplies => {
                // A CONTINUE (or the OPTNEG) and then a REJECT the library never asked for.
                let first = if at == At::Optneg {
                    optneg_reply()
                } else {
                    packet(b'c', &[])
                };
                [first, packet(b'r', &[])].concat()
            }
            Fault::EarlyEdit => packet(b'h', b"X-Early\0edit\0"),
            Fault::SkipNotNegotiated => packet(b's', &[]),
            Fault::UnknownCode => packet(b'Z', &[]),
            Fault::Random(seed) => random_bytes(seed, 64),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The fault Milter.

/// What the fault Milter saw.
#[derive(Debug)]
struct Report {
    /// The stage was reached and the fault delivered.
    delivered: bool,
    /// After the fault, the library closed its end (EOF or reset seen).
    closed: bool,
    /// Anything unexpected on the Milter's side.
    trouble: Option<String>,
}

struct FaultMilter {
    port: u16,
    thread: Option<thread::JoinHandle<Report>>,
}

impl FaultMilter {
    fn start(at: At, fault: Fault) -> FaultMilter {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener
            .local_addr()
            .expect("local address of the listener")
            .port();
        let thread = thread::spawn(move || serve(listener, at, fault));
        FaultMilter {
            port,
            thread: Some(thread),
        }
    }

    fn report(mut self) -> Report {
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            _ => Report {
                delivered: false,
                closed: false,
                trouble: Some("the fault Milter thread panicked".into()),
            },
        }
    }
}

impl Drop for FaultMilter {
    fn drop(&mut self) {
        // The thread ends by itself (accept and reads are bounded); wait so that no server
        // outlives its test.
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: TcpListener, at: At, fault: Fault) -> Report {
    let mut report = Report {
        delivered: false,
        closed: false,
        trouble: None,
    };
    // Accept within 10 s, so that a library that never connects cannot hang the test.
    if listener.set_nonblocking(true).is_err() {
        report.trouble = Some("cannot make the listener non-blocking".into());
        return report;
    }
    let start = Instant::now();
    let mut s = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if start.elapsed() > Duration::from_secs(10) {
                    report.trouble = Some("the library never connected".into());
                    return report;
                }
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                report.trouble = Some(format!("accept: {e}"));
                return report;
            }
        }
    };
    let _ = s.set_nonblocking(false);
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut done = false;
    loop {
        let (cmd, _data) = match read_packet(&mut s) {
            Ok(p) => p,
            Err(e) => {
                if !done {
                    report.trouble = Some(format!("before the fault: {e}"));
                }
                report.closed = is_closed(&e);
                return report;
            }
        };
        let Some(stage) = At::of_command(cmd) else {
            // MACRO, ABORT, QUIT: no reply.
            continue;
        };
        if stage == at && !done {
            done = true;
            report.delivered = true;
            let sent = deliver(&mut s, at, fault);
            if fault == Fault::DripFast && sent.is_ok() {
                // A slow but valid reply: the conversation goes on.
                continue;
            }
            if fault == Fault::Close {
                report.closed = true;
                return report;
            }
            if fault == Fault::LenTruncated {
                // The claimed megabyte never comes: the Milter hangs up after a few bytes.
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
            report.closed = match sent {
                Ok(()) => wait_closed(&mut s),
                Err(e) => is_closed(&e),
            };
            return report;
        }
        let reply = if stage == At::Optneg {
            optneg_reply()
        } else {
            packet(b'c', &[])
        };
        if let Err(e) = s.write_all(&reply) {
            report.trouble = Some(format!("writing the reply to {}: {e}", stage.name()));
            return report;
        }
    }
}

/// Sends the fault. Errors only from writes (the library may already have hung up).
fn deliver(s: &mut TcpStream, at: At, fault: Fault) -> io::Result<()> {
    let Some(bytes) = fault.bytes(at) else {
        return Ok(());
    };
    match fault {
        Fault::DripFast | Fault::DripSlow => {
            let gap = Duration::from_millis(if fault == Fault::DripFast {
                5
            } else {
                SLOW_DRIP_MS
            });
            for b in bytes {
                s.write_all(&[b])?;
                thread::sleep(gap);
            }
            Ok(())
        }
        Fault::ProgressForever => {
            // Until the library hangs up (or 10 s, so that a broken library cannot hang the test).
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                s.write_all(&bytes)?;
                thread::sleep(Duration::from_millis(SLOW_DRIP_MS));
            }
            Ok(())
        }
        // One write, so that both replies arrive together.
        _ => s.write_all(&bytes),
    }
}

/// Reads (and ignores) until the library closes: true on EOF or reset within 5 s.
fn wait_closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return is_closed(&e),
        }
    }
}

fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

// ---------------------------------------------------------------------------------------------
// The client side: the library's Rust API.

fn envelope() -> Envelope {
    Envelope {
        client_name: Some(b"client.example".to_vec()),
        client_addr: Some("192.0.2.1".parse().expect("literal address")),
        client_port: 40000,
        helo: Some(b"client.example".to_vec()),
        sender: b"sender@example.org".to_vec(),
        recipients: vec![Recipient::new(b"rcpt@example.net".to_vec())],
        macros: vec![(b"i".to_vec(), b"FAULT1".to_vec())],
        ..Envelope::default()
    }
}

const MESSAGE: &[u8] = b"Subject: fault matrix\r\nFrom: sender@example.org\r\n\r\nbody line\r\n";

/// TIMEOUT for faults that must be noticed from the bytes alone: long, so that an error that
/// waited for it shows as too slow.
const PATIENT_TIMEOUT: &str = "TIMEOUT=200\n";
/// TIMEOUT 0.5 s for a Milter that never answers.
const SHORT_TIMEOUT: &str = "TIMEOUT=50\n";
/// TIMEOUT 0.5 s and MESSAGE_TIMEOUT 1 s for a Milter that trickles.
const SHORT_TIMEOUTS: &str = "TIMEOUT=50\nMESSAGE_TIMEOUT=100\n";

struct Run {
    result: Result<Filtered, Error>,
    elapsed: Duration,
    largest_allocation: usize,
    /// The most the filtering thread's memory grew during the call.
    peak_growth: usize,
}

impl Run {
    /// Asserts that the conversation failed with `kind` and an error naming `text`; `if_ok` is
    /// the complaint when it did not fail.
    fn assert_failed(&self, kind: ErrorKind, text: &str, if_ok: &str) {
        match &self.result {
            Ok(_) => panic!("{if_ok}"),
            Err(e) => {
                assert_eq!(e.kind, kind, "{e}");
                assert!(e.message.contains(text), "{e}");
            }
        }
    }
}

fn run_case(port: u16, timeouts: &str) -> Run {
    run_message(port, timeouts, &envelope(), MESSAGE)
}

/// One message through the library with these options, its allocations tracked.
fn run_message(port: u16, options: &str, env: &Envelope, message: &[u8]) -> Run {
    let text = format!("HOST=127.0.0.1\nPORT={port}\n{options}");
    let config = match Config::parse("faults.opt", text.as_bytes()) {
        Ok(c) => c,
        Err(e) => panic!("the test's option text was refused: {e}"),
    };
    let handle = Handle::new(config);
    LARGEST.with(|l| l.set(0));
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    TRACKING.with(|t| t.set(true));
    let start = Instant::now();
    let result = handle.filter(env, Content::Buffer(message));
    let elapsed = start.elapsed();
    TRACKING.with(|t| t.set(false));
    Run {
        result,
        elapsed,
        largest_allocation: LARGEST.with(|l| l.get()),
        peak_growth: PEAK.with(|p| p.get()).max(0) as usize,
    }
}

/// What a case must end in.
struct Expect {
    kinds: &'static [ErrorKind],
    /// Every one of these must be in the error message.
    texts: Vec<String>,
    /// The call must return within this.
    within: Duration,
    timeouts: &'static str,
}

fn expect(kind: &'static [ErrorKind], texts: &[&str], within_ms: u64, t: &'static str) -> Expect {
    Expect {
        kinds: kind,
        texts: texts.iter().map(|s| s.to_string()).collect(),
        within: Duration::from_millis(within_ms),
        timeouts: t,
    }
}

const PROTOCOL: &[ErrorKind] = &[ErrorKind::Protocol];

/// An error that the bytes show at once must not wait for any timeout (TIMEOUT is 2 s here).
const AT_ONCE_MS: u64 = 1000;

fn expectation(fault: Fault, at: At) -> Expect {
    let name = at.name();
    let bad_reply = if at == At::Optneg {
        "bad OPTNEG reply".to_string()
    } else {
        format!("bad reply to {name}")
    };
    // A REPLYCODE, SKIP or edit where OPTNEG is due is refused for being no OPTNEG at all.
    let not_optneg = "answered OPTNEG with";
    match fault {
        Fault::Close => expect(
            &[ErrorKind::Io],
            &[&format!(
                "closed the connection while {name} awaited its reply"
            )],
            AT_ONCE_MS,
            PATIENT_TIMEOUT,
        ),
        Fault::Silent => expect(
            &[ErrorKind::Timeout],
            &[
                &format!("reading the reply to {name}"),
                "(TIMEOUT)",
                "0.50 s",
            ],
            500 + 700,
            SHORT_TIMEOUT,
        ),
        Fault::DripFast => unreachable!("a fast drip succeeds"),
        Fault::DripSlow | Fault::ProgressForever => expect(
            &[ErrorKind::Timeout],
            &["MESSAGE_TIMEOUT"],
            1000 + 700,
            SHORT_TIMEOUTS,
        ),
        Fault::LenZero => expect(
            PROTOCOL,
            &[&format!("bad reply to {name}"), "length 0"],
            AT_ONCE_MS,
            PATIENT_TIMEOUT,
        ),
        Fault::LenHuge => expect(
            PROTOCOL,
            &[&format!("bad reply to {name}"), "4294967295"],
            AT_ONCE_MS,
            PATIENT_TIMEOUT,
        ),
        Fault::LenTruncated => expect(
            &[ErrorKind::Io],
            &[&format!(
                "closed the connection while {name} awaited its reply"
            )],
            AT_ONCE_MS,
            PATIENT_TIMEOUT,
        ),
        Fault::ShortField | Fault::NoNul => {
            expect(PROTOCOL, &[&bad_reply], AT_ONCE_MS, PATIENT_TIMEOUT)
        }
        Fault::ReplyNul
        | Fault::LonePercent
        | Fault::WrongClass
        | Fault::MultilineBareLf
        | Fault::MultilineUnfinished
        | Fault::MultilineCodeChange => {
            let t = if at == At::Optneg {
                not_optneg.to_string()
            } else {
                format!("bad reply to {name}")
            };
            expect(PROTOCOL, &[&t, "REPLYCODE"], AT_ONCE_MS, PATIENT_TIMEOUT)
        }
        Fault::TwoReplies => expect(PROTOCOL, &[name], AT_ONCE_MS, PATIENT_TIMEOUT),
        Fault::EarlyEdit => {
            let t = if at == At::Optneg {
                not_optneg
            } else {
                "modifications are allowed only at end of message"
            };
            expect(PROTOCOL, &[t, name], AT_ONCE_MS, PATIENT_TIMEOUT)
        }
        Fault::SkipNotNegotiated => {
            let t = if at == At::Optneg {
                not_optneg
            } else {
                "SKIP, which was not negotiated"
            };
            expect(PROTOCOL, &[t, name], AT_ONCE_MS, PATIENT_TIMEOUT)
        }
        Fault::UnknownCode => {
            let t = if at == At::Optneg {
                not_optneg.to_string()
            } else {
                format!("bad reply to {name}")
            };
            expect(PROTOCOL, &[&t], AT_ONCE_MS, PATIENT_TIMEOUT)
        }
        // Random bytes are most often a bad length (found at once), but may also claim a
        // plausible length and then stall until TIMEOUT.
        Fault::Random(_) => expect(
            &[ErrorKind::Protocol, ErrorKind::Timeout, ErrorKind::Io],
            &[name],
            2000 + 700,
            PATIENT_TIMEOUT,
        ),
    }
}

/// Runs one fault at one stage; returns what was wrong (empty: all good).
fn check_case(fault: Fault, at: At) -> Vec<String> {
    let want = expectation(fault, at);
    let milter = FaultMilter::start(at, fault);
    let port = milter.port;
    let run = run_case(port, want.timeouts);
    let report = milter.report();
    let case = format!("{fault:?} at {}", at.name());
    let mut wrong = Vec::new();
    match &run.result {
        Ok(f) => wrong.push(format!(
            "{case}: succeeded with {:?} at {:?} (reply {:?}); expected a {:?} error",
            f.outcome.disposition,
            f.outcome.stage,
            f.outcome.reply.as_deref().map(String::from_utf8_lossy),
            want.kinds
        )),
        Err(e) => {
            if !want.kinds.contains(&e.kind) {
                wrong.push(format!(
                    "{case}: error kind {:?}, expected one of {:?}: {}",
                    e.kind, want.kinds, e.message
                ));
            }
            let peer = format!("127.0.0.1:{port}");
            for t in want.texts.iter().chain(std::iter::once(&peer)) {
                if !e.message.contains(t.as_str()) {
                    wrong.push(format!(
                        "{case}: the message lacks \"{t}\": \"{}\"",
                        e.message
                    ));
                }
            }
        }
    }
    if run.elapsed > want.within {
        wrong.push(format!(
            "{case}: took {} ms, expected at most {} ms",
            run.elapsed.as_millis(),
            want.within.as_millis()
        ));
    }
    if run.largest_allocation > ALLOCATION_LIMIT {
        wrong.push(format!(
            "{case}: allocated {} bytes at once, expected at most {ALLOCATION_LIMIT}",
            run.largest_allocation
        ));
    }
    if !report.delivered {
        wrong.push(format!(
            "{case}: the fault was never delivered ({})",
            report.trouble.as_deref().unwrap_or("stage not reached")
        ));
    } else if !report.closed {
        wrong.push(format!(
            "{case}: the library did not close the connection after the fault"
        ));
    }
    wrong
}

fn check_everywhere(fault: Fault) {
    check_at(fault, &STAGES);
}

fn check_at(fault: Fault, stages: &[At]) {
    let wrong: Vec<String> = stages
        .iter()
        .flat_map(|&at| check_case(fault, at))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} problem(s):\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn close_instead_of_a_reply() {
    check_everywhere(Fault::Close);
}

#[test]
fn never_answer() {
    check_everywhere(Fault::Silent);
}

#[test]
fn one_byte_at_a_time_slowly_hits_message_timeout() {
    check_everywhere(Fault::DripSlow);
}

/// PROGRESS extends the wait for a reply, but never beyond MESSAGE_TIMEOUT. (At OPTNEG a
/// PROGRESS is no OPTNEG reply at all: that is a protocol error, covered by the others.)
#[test]
fn progress_for_ever_hits_message_timeout() {
    check_at(Fault::ProgressForever, &STAGES[1..]);
}

#[test]
fn length_zero() {
    check_everywhere(Fault::LenZero);
}

#[test]
fn length_0xffffffff() {
    check_everywhere(Fault::LenHuge);
}

#[test]
fn length_1mib_with_few_bytes_allocates_little() {
    check_everywhere(Fault::LenTruncated);
}

#[test]
fn length_shorter_than_the_fields() {
    check_everywhere(Fault::ShortField);
}

#[test]
fn string_without_nul() {
    check_everywhere(Fault::NoNul);
}

#[test]
fn replycode_with_embedded_nul() {
    check_everywhere(Fault::ReplyNul);
}

#[test]
fn replycode_with_lone_percent() {
    check_everywhere(Fault::LonePercent);
}

#[test]
fn replycode_with_wrong_class_digit() {
    check_everywhere(Fault::WrongClass);
}

#[test]
fn replycode_broken_multiline() {
    check_everywhere(Fault::MultilineBareLf);
    check_everywhere(Fault::MultilineUnfinished);
    check_everywhere(Fault::MultilineCodeChange);
}

#[test]
fn two_replies_for_one_command() {
    check_everywhere(Fault::TwoReplies);
}

#[test]
fn edits_before_end_of_message() {
    // At end of message an edit is legitimate.
    check_at(Fault::EarlyEdit, &STAGES[..STAGES.len() - 1]);
}

#[test]
fn skip_not_negotiated() {
    check_everywhere(Fault::SkipNotNegotiated);
}

#[test]
fn reply_code_that_does_not_exist() {
    check_everywhere(Fault::UnknownCode);
}

#[test]
fn random_bytes_at_every_stage() {
    for seed in 1..=8 {
        check_everywhere(Fault::Random(seed));
    }
}

/// A valid reply dripped one byte at a time is still a valid reply: the library must assemble
/// it and act on it.
#[test]
fn one_byte_at_a_time_quickly_still_works() {
    let mut wrong = Vec::new();
    for at in STAGES {
        let milter = FaultMilter::start(at, Fault::DripFast);
        let run = run_case(milter.port, PATIENT_TIMEOUT);
        let report = milter.report();
        let case = format!("DripFast at {}", at.name());
        match run.result {
            Err(e) => wrong.push(format!("{case}: failed: {e}")),
            Ok(f) if at == At::Optneg => {
                if f.verdict.kind != VerdictKind::None {
                    wrong.push(format!("{case}: expected no verdict, got {:?}", f.verdict));
                }
            }
            Ok(f) => {
                if f.outcome.reply.as_deref() != Some(DRIP_REPLY) {
                    wrong.push(format!(
                        "{case}: reply {:?}, expected {:?}",
                        f.outcome.reply.as_deref().map(String::from_utf8_lossy),
                        String::from_utf8_lossy(DRIP_REPLY)
                    ));
                }
                if f.verdict.kind != VerdictKind::Sieve
                    || !f.verdict.script.windows(13).any(|w| w == b"dripped reply")
                {
                    wrong.push(format!(
                        "{case}: expected a Sieve reject with the dripped text, got {:?}: {}",
                        f.verdict.kind,
                        String::from_utf8_lossy(&f.verdict.script)
                    ));
                }
            }
        }
        if !report.closed {
            wrong.push(format!("{case}: the connection was not closed at the end"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A Milter that stops answering while more than TIMEOUT is left of MESSAGE_TIMEOUT hits
/// TIMEOUT, and the error must say so, even when less than TIMEOUT is left once it has expired.
#[test]
fn a_timeout_near_the_message_deadline_is_named_timeout() {
    let milter = FaultMilter::start(At::Connect, Fault::Silent);
    let run = run_case(milter.port, SHORT_TIMEOUTS);
    let report = milter.report();
    match run.result {
        Ok(_) => panic!("a silent Milter gave a verdict"),
        Err(e) => {
            assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
            assert!(
                e.message.contains("(TIMEOUT)") && !e.message.contains("MESSAGE_TIMEOUT"),
                "TIMEOUT (0.5 s) expired with 0.5 s of MESSAGE_TIMEOUT (1 s) left, but the \
                 error says: {e}"
            );
        }
    }
    assert!(report.closed, "the connection was not closed");
}

/// The allocation tracker itself must see a large allocation, or the limit checks above prove
/// nothing.
#[test]
fn the_allocation_tracker_sees_allocations() {
    LARGEST.with(|l| l.set(0));
    TRACKING.with(|t| t.set(true));
    let v: Vec<u8> = Vec::with_capacity(3 << 20);
    TRACKING.with(|t| t.set(false));
    drop(v);
    assert!(LARGEST.with(|l| l.get()) >= 3 << 20);
}

// ---------------------------------------------------------------------------------------------
// Fuzz corpus regressions: every committed input (fuzz/corpus/<target>/, and the crashers kept in
// fuzz/regressions/<target>/) replayed through the same checks the fuzz targets run.

#[path = "../fuzz/checks.rs"]
mod checks;

fn replay(target: &str, check: fn(&[u8])) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs = 0;
    let mut failed = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let data = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            inputs += 1;
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                failed.push(path.display().to_string());
            }
        }
    }
    assert!(
        inputs > 0,
        "no inputs for {target} under {}",
        root.display()
    );
    assert!(
        failed.is_empty(),
        "{target}: {} of {inputs} inputs fail:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

#[test]
fn fuzz_corpus_decode_reply() {
    replay("decode_reply", checks::check_decode_reply);
}

#[test]
fn fuzz_corpus_decode_optneg() {
    replay("decode_optneg", checks::check_decode_optneg);
}

#[test]
fn fuzz_corpus_config_parse() {
    replay("config_parse", checks::check_config_parse);
}

#[test]
fn fuzz_corpus_verdict_build() {
    replay("verdict_build", checks::check_verdict_build);
}

/// A Milter that answers a version 6 offer with version 2 (as Milters on an old libmilter do):
/// accepted, and nothing that version lacks is sent (no DATA, no UNKNOWN) or expected.
#[test]
fn a_version_2_answer_to_a_version_6_offer() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let port = listener.local_addr().expect("local address").port();
    let milter = thread::spawn(move || -> Vec<u8> {
        let (mut s, _) = listener.accept().expect("accept");
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut seen = Vec::new();
        while let Ok((cmd, _)) = read_packet(&mut s) {
            seen.push(cmd);
            let reply = match cmd {
                // Version 2, ADDHDRS, every v2 step sent and answered.
                b'O' => optneg_reply_version(2),
                b'E' => [packet(b'h', b"X-V2\0yes\0"), packet(b'c', &[])].concat(),
                b'D' | b'A' | b'Q' => continue,
                _ => packet(b'c', &[]),
            };
            if s.write_all(&reply).is_err() {
                break;
            }
        }
        seen
    });
    let run = run_case(port, PATIENT_TIMEOUT);
    let seen = milter.join().expect("the Milter thread");
    let f = run
        .result
        .unwrap_or_else(|e| panic!("a version 2 Milter failed: {e}"));
    assert_eq!(f.negotiation.version, 2);
    assert!(
        f.verdict.script.windows(4).any(|w| w == b"X-V2"),
        "{}",
        String::from_utf8_lossy(&f.verdict.script)
    );
    let commands: String = seen.iter().map(|&c| c as char).collect();
    assert!(
        !commands.contains('T'),
        "DATA sent to a version 2 Milter: {commands}"
    );
    assert!(
        !commands.contains('U'),
        "UNKNOWN sent to a version 2 Milter: {commands}"
    );
    assert!(
        commands.starts_with('O') && commands.contains('E'),
        "{commands}"
    );
}

/// A Milter that answers every command, each just within TIMEOUT: no single wait runs out, and
/// the conversation (17 round trips, about 5 s) is still ended at MESSAGE_TIMEOUT, not after
/// it. The library reads the clock only every few such exchanges; this is the bound it keeps.
#[test]
fn every_reply_within_timeout_still_ends_at_message_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let milter = thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        while let Ok((cmd, _)) = read_packet(&mut s) {
            let reply = match At::of_command(cmd) {
                None => continue,
                Some(At::Optneg) => optneg_reply(),
                Some(_) => packet(b'c', &[]),
            };
            thread::sleep(Duration::from_millis(300));
            if s.write_all(&reply).is_err() {
                return;
            }
        }
    });
    // TIMEOUT 0.5 s, MESSAGE_TIMEOUT 2.2 s.
    let run = run_case(port, "TIMEOUT=50\nMESSAGE_TIMEOUT=220\n");
    milter.join().expect("the Milter thread");
    run.assert_failed(
        ErrorKind::Timeout,
        "MESSAGE_TIMEOUT",
        "a 5 s conversation passed a MESSAGE_TIMEOUT of 2.2 s",
    );
    assert!(
        run.elapsed >= Duration::from_millis(2100) && run.elapsed < Duration::from_millis(2700),
        "ended after {:?}, not at MESSAGE_TIMEOUT (2.2 s)",
        run.elapsed
    );
}

/// A Milter that sends one more reply after its final one, late (after the library has read the
/// final reply and kept the connection, CONNECTION_REUSE): the message keeps the Milter's
/// verdict, and the kept connection, which now has bytes no command asked for, is closed before
/// the next message instead of pairing them with that message's commands. No real Milter does
/// this on demand, hence the hand-written one.
#[test]
fn a_reply_after_the_final_one_keeps_no_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    // Serves connections one after the other; the first sends a stray CONTINUE 50 ms after its
    // final reply. Returns the number of connections and of stray replies sent.
    let milter = thread::spawn(move || {
        let (mut connections, mut strays) = (0, 0);
        let _ = listener.set_nonblocking(true);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            let mut s = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                }
                Err(_) => break,
            };
            connections += 1;
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            while let Ok((cmd, _)) = read_packet(&mut s) {
                if cmd == b'Q' {
                    // QUIT: the handle is closing its pool; the test is over.
                    return (connections, strays);
                }
                let reply = match At::of_command(cmd) {
                    None => continue,
                    Some(At::Optneg) => optneg_reply(),
                    Some(_) => packet(b'c', &[]),
                };
                if s.write_all(&reply).is_err() {
                    break;
                }
                if cmd == b'E' && connections == 1 {
                    thread::sleep(Duration::from_millis(50));
                    strays += 1;
                    if s.write_all(&packet(b'c', &[])).is_err() {
                        break;
                    }
                }
            }
        }
        (connections, strays)
    });
    let text = format!("HOST=127.0.0.1\nPORT={port}\nTIMEOUT=200\nCONNECTION_REUSE=1\n");
    let handle = Handle::new(Config::parse("faults.opt", text.as_bytes()).expect("options"));
    let env = envelope();
    let reused = |transcript: &[String]| {
        transcript
            .iter()
            .any(|l| l.starts_with("reusing the open connection"))
    };
    for (n, expect_reuse) in [(1, false), (2, false), (3, true)] {
        let (result, transcript) = handle.filter_traced(&env, Content::Buffer(MESSAGE));
        let f = result.unwrap_or_else(|e| panic!("message {n}: {e}\n{}", transcript.join("\n")));
        // CONTINUE with no edits: nothing for the MTA to do.
        assert_eq!(f.verdict.kind, VerdictKind::None, "message {n}");
        assert_eq!(
            reused(&transcript),
            expect_reuse,
            "message {n}: reused {}, expected {expect_reuse}:\n{}",
            reused(&transcript),
            transcript.join("\n")
        );
        if n == 1 {
            // The stray reply arrives while the connection waits in the pool.
            thread::sleep(Duration::from_millis(200));
        }
    }
    drop(handle);
    let (connections, strays) = milter.join().expect("the Milter thread");
    assert_eq!(strays, 1, "the stray reply was not sent");
    assert_eq!(
        connections, 2,
        "message 2 must open a new connection and message 3 keep using it"
    );
}

/// After a good conversation, the next message on the same thread is encoded on that
/// negotiation while the Milter answers OPTNEG. When the answer then goes wrong (a version the
/// library does not speak, or none at all), the error is the one about OPTNEG, as it is without
/// an earlier conversation, and nothing but OPTNEG was written on that connection: what was
/// encoded is never sent before the answer is read and found the same.
#[test]
fn a_bad_optneg_answer_after_a_good_one_is_the_error_and_nothing_else_is_sent() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    // Connection 1 answers normally; 2 answers OPTNEG with version 1; 3 never answers. Returns
    // the commands each connection received.
    let milter = thread::spawn(move || {
        let mut seen: Vec<String> = Vec::new();
        for n in 1..=3 {
            let Ok((mut s, _)) = listener.accept() else {
                break;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut commands = String::new();
            while let Ok((cmd, _)) = read_packet(&mut s) {
                commands.push(cmd as char);
                let reply = match (n, At::of_command(cmd)) {
                    (_, None) => continue,
                    (1, Some(At::Optneg)) => optneg_reply(),
                    (2, Some(At::Optneg)) => optneg_reply_version(1),
                    (3, _) => continue,
                    (_, Some(_)) => packet(b'c', &[]),
                };
                if s.write_all(&reply).is_err() {
                    break;
                }
            }
            seen.push(commands);
        }
        seen
    });
    let good = run_case(port, PATIENT_TIMEOUT);
    assert!(good.result.is_ok(), "{:?}", good.result.err());
    let bad_version = run_case(port, PATIENT_TIMEOUT);
    let silent = run_case(port, SHORT_TIMEOUT);
    let seen = milter.join().expect("the Milter thread");
    bad_version.assert_failed(
        ErrorKind::Protocol,
        "protocol version 1",
        "an OPTNEG answer with version 1 was taken",
    );
    silent.assert_failed(
        ErrorKind::Timeout,
        "OPTNEG",
        "a Milter that never answered OPTNEG gave a verdict",
    );
    assert!(
        silent.elapsed < Duration::from_millis(1500),
        "{:?}",
        silent.elapsed
    );
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(
        seen[0].starts_with('O') && seen[0].contains('E'),
        "{seen:?}"
    );
    assert_eq!(seen[1], "O", "connection 2 got more than OPTNEG: {seen:?}");
    assert_eq!(seen[2], "O", "connection 3 got more than OPTNEG: {seen:?}");
}

// ---------------------------------------------------------------------------------------------
// Floods: a Milter that sends far more than any real one (no real Milter floods on demand).
// Each must end within TIMEOUT in an error that names the limit crossed and what was sent, with
// the library's memory grown by less than FLOOD_MEMORY (docs/reliability.md, "Limits").

/// The most a flood may make the library's memory grow, on the filtering thread.
const FLOOD_MEMORY: usize = 16 << 20;

/// TIMEOUT 5 s: a flood must end before one timeout passes.
const FLOOD_TIMEOUT: &str = "TIMEOUT=500\n";
const FLOOD_WITHIN: Duration = Duration::from_secs(5);

/// What a flooding Milter sends.
#[derive(Clone)]
enum Flood {
    /// At end of message, this packet `count` times, then CONTINUE.
    AtEom { packet: Vec<u8>, count: usize },
    /// At every RCPT but the last, a REPLYCODE with a text of this many bytes.
    RcptReplies { text_len: usize },
}

fn add_header(name: &str, value: &[u8]) -> Vec<u8> {
    packet(b'h', &[name.as_bytes(), b"\0", value, b"\0"].concat())
}

fn index_header(cmd: u8, index: u32, name: &str, value: &[u8]) -> Vec<u8> {
    let data = [
        &index.to_be_bytes()[..],
        name.as_bytes(),
        b"\0",
        value,
        b"\0",
    ]
    .concat();
    packet(cmd, &data)
}

/// A flooding Milter on a loopback port, in a thread that ends when the library hangs up.
fn flood_milter(flood: Flood) -> (u16, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let port = listener.local_addr().expect("local address").port();
    let thread = thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(20)));
        let _ = serve_flood(&mut s, &flood);
    });
    (port, thread)
}

fn serve_flood(s: &mut TcpStream, flood: &Flood) -> io::Result<()> {
    let mut rcpts = 0;
    loop {
        let (cmd, _) = read_packet(s)?;
        let reply = match cmd {
            // Version 6, every action, no HEADER packets (NOHDRS): the header is not the point.
            b'O' => {
                let mut d = Vec::new();
                for v in [6u32, 0x1ff, 0x20] {
                    d.extend_from_slice(&v.to_be_bytes());
                }
                packet(b'O', &d)
            }
            b'R' => {
                rcpts += 1;
                match flood {
                    Flood::RcptReplies { text_len } if rcpts < RCPTS => {
                        let mut text = b"550 5.7.1 ".to_vec();
                        text.resize(*text_len, b'x');
                        text.push(0);
                        packet(b'y', &text)
                    }
                    _ => packet(b'c', &[]),
                }
            }
            b'E' => {
                if let Flood::AtEom { packet: p, count } = flood {
                    // In writes of about 1 MiB, whatever the packets' size.
                    let per_write = ((1 << 20) / p.len()).max(1);
                    let batch = p.repeat(per_write);
                    let mut left = *count;
                    while left > 0 {
                        let n = left.min(per_write);
                        s.write_all(&batch[..n * p.len()])?;
                        left -= n;
                    }
                }
                packet(b'c', &[])
            }
            b'C' | b'H' | b'M' | b'T' | b'L' | b'N' | b'B' => packet(b'c', &[]),
            _ => continue,
        };
        s.write_all(&reply)?;
    }
}

/// The recipients of the refused-recipients floods: all but the last refused.
const RCPTS: usize = 300;

/// Runs a flood with these extra options on this envelope and message; asserts that it ended
/// within TIMEOUT with a protocol error naming `limit`, and within the memory bound.
fn check_flood(flood: Flood, options: &str, env: &Envelope, message: &[u8], limit: &str) -> Run {
    let (port, milter) = flood_milter(flood);
    let run = run_message(port, &format!("{FLOOD_TIMEOUT}{options}"), env, message);
    run.assert_failed(
        ErrorKind::Protocol,
        limit,
        &format!(
            "the flood was taken whole: {:?}",
            run.result.as_ref().map(|f| &f.verdict)
        ),
    );
    assert!(run.elapsed < FLOOD_WITHIN, "took {:?}", run.elapsed);
    assert!(
        run.peak_growth < FLOOD_MEMORY,
        "the library's memory grew by {} bytes",
        run.peak_growth
    );
    // The library hung up: the Milter's writes fail and its thread ends.
    let _ = milter.join();
    run
}

fn flood_at_eom(packet: Vec<u8>, count: usize, limit: &str) -> Run {
    let flood = Flood::AtEom { packet, count };
    check_flood(flood, "", &envelope(), MESSAGE, limit)
}

#[test]
fn a_million_addheaders_end_at_max_edits() {
    let run = flood_at_eom(add_header("X-Flood", b"v"), 1_000_000, "MAX_EDITS (10000)");
    run.assert_failed(ErrorKind::Protocol, "the next was ADDHEADER", "no error");
}

#[test]
fn header_values_of_1_mib_and_64_mib_are_refused() {
    // 1 MiB fits a packet: MAX_HEADER_VALUE refuses the value.
    let value = vec![b'v'; (1 << 20) - 64];
    let run = flood_at_eom(add_header("X-Big", &value), 400, "MAX_HEADER_VALUE (65535)");
    run.assert_failed(
        ErrorKind::Protocol,
        "sent ADDHEADER \"X-Big\" with a value of 1048512 bytes",
        "no error",
    );
    // 64 MiB does not: the packet's length is refused before anything of it is read.
    let mut huge = ((64u32 << 20) + 10).to_be_bytes().to_vec();
    huge.push(b'h');
    huge.extend_from_slice(b"X-Huge\0");
    huge.resize(huge.len() + (64 << 20), b'v');
    huge.extend_from_slice(b"\0");
    let run = flood_at_eom(huge, 1, "packet length 67108874 is larger than the limit");
    assert!(run.largest_allocation < ALLOCATION_LIMIT);
}

#[test]
fn a_hundred_thousand_addrcpts_end_at_max_added_recipients() {
    let rcpt = packet(b'+', b"<flood@example.org>\0");
    flood_at_eom(rcpt, 100_000, "MAX_ADDED_RECIPIENTS (1000)");
}

#[test]
fn floods_of_insheaders_addrcpts_and_chgheaders_end_at_their_limits() {
    let ins = index_header(b'i', 0, "X-Top", b"t");
    flood_at_eom(ins, 200_000, "MAX_EDITS (10000)");
    let rcpt = packet(b'+', b"<flood@example.org>\0");
    flood_at_eom(rcpt, 200_000, "MAX_ADDED_RECIPIENTS (1000)");
    let chg = index_header(b'm', i32::MAX as u32, "X-Far", b"c");
    flood_at_eom(chg, 1_000_000, "MAX_EDITS (10000)");
}

/// A message with `n` header fields of one name, each with its own value.
fn many_fields(n: usize) -> Vec<u8> {
    let mut m = Vec::new();
    for i in 0..n {
        m.extend_from_slice(format!("X-F: value {i}\r\n").as_bytes());
    }
    m.extend_from_slice(b"\r\nbody\r\n");
    m
}

/// Deleting 20,000 fields: past MAX_EDITS an error; with MAX_EDITS raised, a verdict of 20,000
/// deletions, built at once (the builder took 36 s when it walked the header for each).
#[test]
fn deleting_20000_fields() {
    let message = many_fields(20_000);
    // CHGHEADER X-F 1, 2, ... 20,000 with an empty value: a removed field still counts.
    let deletions: Vec<u8> = (1..=20_000u32)
        .flat_map(|i| index_header(b'm', i, "X-F", b""))
        .collect();
    let flood = Flood::AtEom {
        packet: deletions.clone(),
        count: 1,
    };
    check_flood(flood, "", &envelope(), &message, "MAX_EDITS (10000)");

    let (port, milter) = flood_milter(Flood::AtEom {
        packet: deletions,
        count: 1,
    });
    let options = format!("{FLOOD_TIMEOUT}MAX_EDITS=20000\nSIEVE_MAX_SCRIPT_SIZE=16M\n");
    let run = run_message(port, &options, &envelope(), &message);
    let _ = milter.join();
    let filtered = match run.result {
        Ok(f) => f,
        Err(e) => panic!("{e}"),
    };
    assert!(run.elapsed < FLOOD_WITHIN, "took {:?}", run.elapsed);
    assert_eq!(filtered.verdict.kind, VerdictKind::Sieve);
    let script = String::from_utf8_lossy(&filtered.verdict.script);
    assert_eq!(script.matches("deleteheader").count(), 20_000);
}

fn many_recipients() -> Envelope {
    Envelope {
        recipients: (0..RCPTS)
            .map(|i| Recipient::new(format!("rcpt{i}@example.net").into_bytes()))
            .collect(),
        ..envelope()
    }
}

/// 299 of 300 recipients refused with reply texts of 1 MiB (MAX_REPLY_TEXT refuses the first),
/// or of 60 KB each (MAX_VERDICT_SIZE ends them at the 18th): 1.2 GB were kept before.
#[test]
fn refused_recipients_with_long_reply_texts() {
    let env = many_recipients();
    let flood = Flood::RcptReplies {
        text_len: (1 << 20) - 8,
    };
    let run = check_flood(flood, "", &env, MESSAGE, "MAX_REPLY_TEXT (65535)");
    run.assert_failed(
        ErrorKind::Protocol,
        "answered RCPT with a reply text of 1048568 bytes",
        "no error",
    );
    let flood = Flood::RcptReplies { text_len: 60_000 };
    let run = check_flood(flood, "", &env, MESSAGE, "MAX_VERDICT_SIZE (1048576)");
    run.assert_failed(
        ErrorKind::Protocol,
        "1080000 with the reply to RCPT",
        "no error",
    );
}

/// The row "400 ADDHEADERs of 1 MiB under a 1 GiB address space": the process aborted
/// ("memory allocation failed"). Run in a child process of this test binary with
/// RLIMIT_AS at 1 GiB, it must exit normally, having seen the limit error.
#[test]
fn header_floods_under_a_1_gib_address_space_end_in_the_limit_error() {
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "address_space_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FAULTS_ADDRESS_SPACE_CHILD", "1")
        .output()
        .expect("running the child test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the child failed: {}\n{text}",
        out.status
    );
    assert!(text.contains("1 passed"), "{text}");
    assert!(text.contains("limit error: milter 127.0.0.1:"), "{text}");
    assert!(text.contains("MAX_HEADER_VALUE (65535)"), "{text}");
}

/// The child of the test above (run only by it: `--ignored`).
#[test]
#[ignore = "run by header_floods_under_a_1_gib_address_space_end_in_the_limit_error"]
fn address_space_child() {
    assert!(
        std::env::var_os("FAULTS_ADDRESS_SPACE_CHILD").is_some(),
        "run only as the child of header_floods_under_a_1_gib_address_space_end_in_the_limit_error"
    );
    let limit = libc::rlimit {
        rlim_cur: 1 << 30,
        rlim_max: 1 << 30,
    };
    // SAFETY: setrlimit reads the struct it is given and nothing else.
    let set = unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) };
    assert_eq!(set, 0, "setrlimit: {}", io::Error::last_os_error());
    let value = vec![b'v'; (1 << 20) - 64];
    let flood = Flood::AtEom {
        packet: add_header("X-Big", &value),
        count: 400,
    };
    let (port, milter) = flood_milter(flood);
    let run = run_message(port, FLOOD_TIMEOUT, &envelope(), MESSAGE);
    let _ = milter.join();
    match &run.result {
        Ok(f) => panic!("400 values of 1 MiB were taken: {:?}", f.verdict.kind),
        Err(e) => println!("limit error: {e}"),
    }
    run.assert_failed(ErrorKind::Protocol, "MAX_HEADER_VALUE (65535)", "no error");
}
