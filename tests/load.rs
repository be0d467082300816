//! Load: 64 threads filter 20,000 messages in total through ONE handle against a real
//! libmilter-based Milter (tests/milters/load_milter.py) whose verdict follows each message's
//! Subject number, so every message must come back with its own verdict (no cross-talk between
//! concurrent conversations). The process's open descriptors and memory must be the same before
//! and after.
//!
//! LOAD_MESSAGES overrides the message count (for measuring); the default is the 20,000.

use milter_spamfilter::verdict::{Disposition, Edit};
use milter_spamfilter::{Config, Content, Envelope, Handle, Recipient, VerdictKind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

mod support {
    pub mod load_milter;
}
use support::load_milter::LoadMilter;

const THREADS: usize = 64;
const DEFAULT_MESSAGES: usize = 20_000;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .expect("/proc/self/fd is readable")
}

/// VmRSS of this process in kB.
fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

fn message(n: usize) -> Vec<u8> {
    format!(
        "From: load{n}@example.org\r\nTo: rcpt@example.net\r\nSubject: load {n}\r\n\
         Message-ID: <load{n}@example.org>\r\n\r\nThis is load message {n}.\r\n{}\r\n",
        "Body text to give the Milter something to count. ".repeat(n % 7 + 1)
    )
    .into_bytes()
}

/// Filters message `n` and checks that the verdict is the one for `n`; returns what was wrong.
fn check(handle: &Handle, n: usize) -> Option<String> {
    let env = Envelope {
        client_addr: Some("192.0.2.9".parse().expect("literal address")),
        client_port: 50000,
        helo: Some(b"load.example".to_vec()),
        sender: format!("load{n}@example.org").into_bytes(),
        recipients: vec![Recipient::new(b"rcpt@example.net".to_vec())],
        macros: vec![(b"i".to_vec(), format!("LOAD{n}").into_bytes())],
        ..Envelope::default()
    };
    let data = message(n);
    let f = match handle.filter(&env, Content::Buffer(&data)) {
        Ok(f) => f,
        Err(e) => return Some(format!("message {n}: {:?} error: {e}", e.kind)),
    };
    let o = &f.outcome;
    let reply = o.reply.as_deref().map(String::from_utf8_lossy);
    let ok = match n % 4 {
        0 => {
            let want = Edit::AddHeader {
                name: b"X-Load-Id".to_vec(),
                value: n.to_string().into_bytes(),
            };
            o.disposition == Disposition::Continue
                && o.edits.first() == Some(&want)
                && f.verdict.kind == VerdictKind::Sieve
        }
        1 => {
            o.disposition == Disposition::Reject
                && reply.as_deref() == Some(&format!("550 5.7.1 rejected load message {n}"))
                && f.verdict.kind == VerdictKind::Sieve
        }
        2 => {
            o.disposition == Disposition::Tempfail
                && reply.as_deref() == Some(&format!("451 4.7.1 deferred load message {n}"))
                && f.verdict.kind == VerdictKind::Defer
        }
        _ => o.disposition == Disposition::Discard && f.verdict.kind == VerdictKind::Sieve,
    };
    if ok {
        None
    } else {
        Some(format!(
            "message {n} (mod 4 = {}): got {:?}, reply {reply:?}, edits {:?}, verdict {:?}",
            n % 4,
            o.disposition,
            o.edits,
            f.verdict.kind
        ))
    }
}

/// Filters messages first..first+count on THREADS threads; returns the failures.
fn run(handle: &Handle, first: usize, count: usize) -> Vec<String> {
    let next = AtomicUsize::new(first);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= first + count {
                    break;
                }
                if let Some(problem) = check(handle, n) {
                    if let Ok(mut f) = failures.lock() {
                        f.push(problem);
                    }
                }
            });
        }
    });
    failures.into_inner().unwrap_or_default()
}

#[test]
fn sixty_four_threads_one_handle_every_message_its_own_verdict() {
    let total: usize = std::env::var("LOAD_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MESSAGES);
    let milter = LoadMilter::start();
    let text = format!(
        "HOST=127.0.0.1\nPORT={}\nTIMEOUT=3000\nCONNECT_TIMEOUT=3000\n",
        milter.port
    );
    let config = Config::parse("load.opt", text.as_bytes())
        .unwrap_or_else(|e| panic!("the test's option text was refused: {e}"));
    let handle = Handle::new(config);

    // Warm up: thread arenas, lazily initialised statics, the Milter's worker threads.
    let warm = run(&handle, 1_000_000, 4 * THREADS);
    assert!(warm.is_empty(), "warm-up failed:\n{}", warm.join("\n"));
    let fds_before = open_fds();
    let rss_before = rss_kb();

    let start = Instant::now();
    let failures = run(&handle, 0, total);
    let took = start.elapsed();
    let fds_after = open_fds();
    let rss_after = rss_kb();
    eprintln!(
        "load: {total} messages on {THREADS} threads in {:.1} s ({:.0}/s); fds {fds_before} -> \
         {fds_after}; RSS {rss_before} -> {rss_after} kB",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {total} messages got a wrong verdict or an error; the first 20:\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        fds_before, fds_after,
        "open descriptors before and after {total} messages"
    );
    // The same memory: allow allocator noise, far below what one leaked buffer per message
    // (20,000 x several KiB) would add.
    assert!(
        rss_after <= rss_before + 8 * 1024,
        "RSS grew from {rss_before} kB to {rss_after} kB over {total} messages"
    );
}
