//! A log that cannot be written never holds up a message (issue 15, item 8): a FIFO without a
//! reader, a reader that stops reading, a full disk, a stderr nobody reads. Each test filters
//! through a real Milter (tests/milters/load_milter.py, pymilter) at DEBUG=2 on a thread of its
//! own and fails if a message does not come back within `LIMIT`; then it lets the log be written
//! again and checks the line that counts what was dropped, to the line: every line the messages
//! logged was either written whole or counted.
//!
//! The full disk is a small tmpfs, and "stderr nobody reads" a pipe: both need a process of
//! their own (a private mount namespace; a stderr of its own), so those tests run this test binary
//! again with one `#[ignore]`d test, `child_*`, which reports back on stdout.

use milter_spamfilter::{Config, Content, Envelope, Handle, Recipient, VerdictKind};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc};
use std::time::Duration;

mod support {
    pub mod built;
    pub mod load_milter;
    pub mod tempdir;
}
use support::built::{library, made};
use support::load_milter::LoadMilter;
use support::tempdir::TempDir;

/// The handle's TIMEOUT (3 s) and a margin for a loaded machine: a message that takes longer is
/// one the log held up.
const LIMIT: Duration = Duration::from_secs(3 + 10);

/// For a child process's few dozen messages, which take about a second in all: a message its
/// log holds up never returns at all.
const RUN_LIMIT: Duration = Duration::from_secs(3 * 13);

/// Every test message: the load Milter answers it with CONTINUE and an X-Load-Id header.
const MESSAGE: &[u8] = b"Subject: load 4\r\n\r\nbody\r\n";

/// Set in a child's environment: the Milter's port, and the directory it works in.
const CHILD_PORT: &str = "LOGGING_TEST_PORT";
const CHILD_DIR: &str = "LOGGING_TEST_DIR";
const CHILD_MESSAGES: &str = "LOGGING_TEST_MESSAGES";

fn handle(port: u16, log: &str) -> Arc<Handle> {
    let text = format!("HOST=127.0.0.1\nPORT={port}\nTIMEOUT=300\nDEBUG=2\n{log}");
    Arc::new(Handle::new(
        Config::parse("logging.opt", text.as_bytes()).expect("valid option text"),
    ))
}

/// Runs `f` on a thread of its own; fails if it does not return within `LIMIT`.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(LIMIT)
        .unwrap_or_else(|_| panic!("{what} did not return within {LIMIT:?}: the log held it up"))
}

/// Filters the test message through `h` on a thread of its own, within `LIMIT`; it must come
/// back with the Milter's verdict.
fn filter(h: &Arc<Handle>, what: &str) {
    let h = Arc::clone(h);
    let result = within(what, move || {
        let envelope = Envelope {
            client_addr: Some("192.0.2.10".parse().expect("literal")),
            client_port: 40000,
            sender: b"alice@example.org".to_vec(),
            recipients: vec![Recipient::new(b"bob@example.net".to_vec())],
            macros: vec![(b"i".to_vec(), b"LOGTEST".to_vec())],
            ..Envelope::default()
        };
        h.filter(&envelope, Content::Buffer(MESSAGE))
            .map(|f| (f.verdict.kind, f.verdict.script))
    });
    let (kind, script) = result.unwrap_or_else(|e| panic!("{what}: the message failed: {e}"));
    assert_eq!(kind, VerdictKind::Sieve, "{what}");
    assert!(
        String::from_utf8_lossy(&script).contains("X-Load-Id"),
        "{what}: not the Milter's verdict: {}",
        String::from_utf8_lossy(&script)
    );
}

/// What one message logs at DEBUG=2, written to a plain file: (lines, bytes).
fn one_message_logs(port: u16, dir: &TempDir) -> (usize, usize) {
    let path = dir.path("reference.log");
    let h = handle(port, &format!("LOG_FILE={}\n", path.display()));
    filter(&h, "the reference message");
    let text = std::fs::read_to_string(&path).expect("the reference log");
    let lines = text.lines().count();
    assert!(
        lines > 10 && text.contains("message LOGTEST"),
        "DEBUG=2 logs the trace and the message's line:\n{text}"
    );
    (lines, text.len())
}

/// A log's text in its parts: the lines the messages logged, and the sum of the counts in the
/// "N log lines dropped" notices, each of which must name `name` and `reason`.
struct Parsed {
    lines: usize,
    dropped: usize,
    notices: usize,
}

fn parse(text: &str, name: &str, reason: &str) -> Parsed {
    let mut p = Parsed {
        lines: 0,
        dropped: 0,
        notices: 0,
    };
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "the log ends in the middle of a line: {:?}",
        &text[text.len().saturating_sub(200)..]
    );
    for line in text.lines() {
        // Every line is whole: a record's first line, or a hex dump line of one (empty for a
        // packet without data).
        assert!(
            line.starts_with("milter-spamfilter[") || line.starts_with("  ") || line.is_empty(),
            "not a whole log line: {line:?}"
        );
        if let Some(n) = notice(line) {
            assert!(
                line.contains(&format!("dropped ({name}: {reason}")),
                "the notice does not say where and why: {line}"
            );
            p.dropped += n;
            p.notices += 1;
        } else {
            p.lines += 1;
        }
    }
    p
}

/// N from "... WARN: N log line(s) dropped (...)".
fn notice(line: &str) -> Option<usize> {
    let (_, rest) = line.split_once("WARN: ")?;
    let (n, rest) = rest.split_once(' ')?;
    if !(rest.starts_with("log line dropped (") || rest.starts_with("log lines dropped (")) {
        return None;
    }
    n.parse().ok()
}

/// Everything a non-blocking reader can read now.
fn read_available(r: &mut std::fs::File) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("reading the FIFO: {e}"),
        }
    }
    String::from_utf8(out).expect("the log is UTF-8")
}

fn mkfifo(path: &Path) {
    let o = Command::new("mkfifo")
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run mkfifo ({e}): apt-get install coreutils"));
    assert!(o.status.success(), "mkfifo {}: {o:?}", path.display());
}

/// The read end of a FIFO, opened without waiting for a writer.
fn fifo_reader(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .unwrap_or_else(|e| panic!("open {} for reading: {e}", path.display()))
}

#[test]
fn log_file_fifo_without_reader_never_blocks_the_message() {
    let milter = LoadMilter::start();
    let dir = TempDir::new("noreader");
    let (per_message, _) = one_message_logs(milter.port, &dir);
    let fifo = dir.path("log.fifo");
    mkfifo(&fifo);
    // Opening the handle opens LOG_FILE: that must not wait for a reader either.
    let h = {
        let (port, log) = (milter.port, format!("LOG_FILE={}\n", fifo.display()));
        within("opening the handle", move || handle(port, &log))
    };
    for n in 0..3 {
        filter(&h, &format!("message {n}, nobody reading LOG_FILE"));
    }
    // A reader comes: the next message's lines are written, after the count of those dropped.
    let mut reader = fifo_reader(&fifo);
    filter(&h, "the message after a reader came");
    let text = read_available(&mut reader);
    let name = format!("LOG_FILE {}", fifo.display());
    let p = parse(&text, &name, "no reader");
    assert_eq!(p.notices, 1, "one notice:\n{text}");
    assert!(
        notice(text.lines().next().unwrap_or("")).is_some(),
        "the notice comes first:\n{text}"
    );
    assert_eq!(p.dropped, 3 * per_message, "every line counted:\n{text}");
    assert_eq!(
        p.lines, per_message,
        "the last message logged whole:\n{text}"
    );
}

#[test]
fn stalled_fifo_reader_at_debug_2_never_blocks() {
    let milter = LoadMilter::start();
    let dir = TempDir::new("stalled");
    let (per_message, bytes) = one_message_logs(milter.port, &dir);
    let fifo = dir.path("log.fifo");
    mkfifo(&fifo);
    let mut reader = fifo_reader(&fifo);
    let h = handle(milter.port, &format!("LOG_FILE={}\n", fifo.display()));
    // Twice what a pipe holds (64 KiB on Linux, unless raised with F_SETPIPE_SZ).
    let messages = 2 * 65536 / bytes + 2;
    for n in 0..messages {
        filter(
            &h,
            &format!("message {n} of {messages}, the reader not reading"),
        );
    }
    let mut text = read_available(&mut reader);
    filter(&h, "the message after the reader drained the FIFO");
    text.push_str(&read_available(&mut reader));
    let name = format!("LOG_FILE {}", fifo.display());
    let p = parse(&text, &name, "full: its reader does not keep up");
    assert!(
        p.notices >= 1 && p.dropped > 0,
        "lines were dropped:\n{text}"
    );
    assert_eq!(
        p.lines + p.dropped,
        (messages + 1) * per_message,
        "every line written whole or counted"
    );
    // The count came before the last message's lines, which all went through.
    let lines: Vec<&str> = text.lines().collect();
    let last_notice = lines.iter().rposition(|l| notice(l).is_some());
    let last_message = lines.iter().rposition(|l| l.contains("message LOGTEST"));
    assert!(
        last_notice < last_message && last_message == Some(lines.len() - 1),
        "the notice precedes the last message's lines:\n{text}"
    );
}

/// The messages of `child_full_disk`, and the lines each logs.
#[test]
fn full_disk_drops_and_counts() {
    let milter = LoadMilter::start();
    let dir = TempDir::new("fulldisk");
    let (per_message, _) = one_message_logs(milter.port, &dir);
    // /dev/full: every write fails with ENOSPC, and every message still goes through.
    let h = handle(milter.port, "LOG_FILE=/dev/full\n");
    for n in 0..3 {
        filter(&h, &format!("message {n} with LOG_FILE=/dev/full"));
    }
    // A disk that fills and then has room again: a 256 KiB tmpfs in a mount namespace of the
    // child's own.
    let mount = dir.path("disk");
    std::fs::create_dir(&mount).expect("create the mount point");
    let exe = std::env::current_exe().expect("the test binary's path");
    let script = format!(
        "mount -t tmpfs -o size=256k tmpfs '{}' && exec '{}' --exact child_full_disk \
         --ignored --nocapture --test-threads=1",
        mount.display(),
        exe.display()
    );
    let messages = 3;
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env(CHILD_PORT, milter.port.to_string())
        .env(CHILD_DIR, &mount)
        .env(CHILD_MESSAGES, messages.to_string())
        .stderr(Stdio::inherit());
    let (status, stdout) = run_bounded(cmd, "the full-disk child (unshare, util-linux)", RUN_LIMIT);
    assert!(
        status.success(),
        "the full-disk child failed ({status}):\n{stdout}"
    );
    let log = stdout
        .split_once("LOG>>>\n")
        .and_then(|(_, rest)| rest.split_once("<<<LOG\n"))
        .map(|(log, _)| log)
        .unwrap_or_else(|| panic!("the child did not print its log:\n{stdout}"));
    let name = format!("LOG_FILE {}", mount.join("milter.log").display());
    let p = parse(log, &name, "No space left on device");
    assert_eq!(p.notices, 1, "one notice:\n{log}");
    assert_eq!(
        p.dropped,
        messages * per_message,
        "every line counted:\n{log}"
    );
    assert_eq!(
        p.lines, per_message,
        "the last message logged whole:\n{log}"
    );
}

/// Run by `full_disk_drops_and_counts` in its own mount namespace, with a small tmpfs at
/// $LOGGING_TEST_DIR: fills it, filters $LOGGING_TEST_MESSAGES messages with LOG_FILE there,
/// makes room, filters one more and prints the log between LOG>>> and <<<LOG.
#[test]
#[ignore = "run by full_disk_drops_and_counts in a mount namespace of its own"]
fn child_full_disk() {
    let (port, dir, messages) = child_env();
    let filler = dir.join("filler");
    fill(&filler);
    let log = dir.join("milter.log");
    let h = handle(port, &format!("LOG_FILE={}\n", log.display()));
    for n in 0..messages {
        filter(&h, &format!("message {n} on a full disk"));
    }
    std::fs::remove_file(&filler).expect("remove the filler");
    filter(&h, "the message after the disk had room");
    let text = std::fs::read_to_string(&log).expect("the log file");
    println!("LOG>>>\n{text}<<<LOG");
}

/// Writes to `path` until the disk is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).expect("create the filler");
    let block = [0u8; 4096];
    loop {
        match f.write(&block) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
}

fn child_env() -> (u16, PathBuf, usize) {
    let get = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: this test is run by another one, in a process of its own")
        })
    };
    let port = get(CHILD_PORT).parse().expect("a port");
    let messages = get(CHILD_MESSAGES).parse().expect("a count");
    (port, PathBuf::from(get(CHILD_DIR)), messages)
}

/// The C loader, as an MTA loads the library, with DEBUG=2 on stderr, and stderr a pipe the
/// test never reads: the loader's messages all go through, and it exits.
#[test]
fn stderr_nobody_reads() {
    let loader = made("build/spamfilter-load");
    let milter = LoadMilter::start();
    let dir = TempDir::new("stderr-loader");
    let (_, bytes) = one_message_logs(milter.port, &dir);
    let opt = dir.path("milter.opt");
    std::fs::write(
        &opt,
        format!(
            "HOST=127.0.0.1\nPORT={}\nTIMEOUT=300\nDEBUG=2\n",
            milter.port
        ),
    )
    .expect("write the option file");
    let msg = dir.path("msg.eml");
    std::fs::write(&msg, MESSAGE).expect("write the message");
    let messages = 2 * 65536 / bytes + 2;
    let mut cmd = Command::new(loader);
    cmd.arg("--repeat")
        .arg(messages.to_string())
        .arg(library())
        .arg(&opt)
        .arg(&msg)
        .stderr(Stdio::piped());
    let (status, stdout) = run_bounded(cmd, "build/spamfilter-load", RUN_LIMIT);
    assert!(
        status.success() && stdout.contains("status: ok"),
        "{messages} messages with stderr unread: {status}\n{stdout}"
    );
}

/// Runs `cmd` with stdout piped and read, and stderr as the caller set it (if piped, held open
/// and never read); fails if it has not ended within `limit`, and then kills it.
fn run_bounded(mut cmd: Command, what: &str, limit: Duration) -> (ExitStatus, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let _unread = child.stderr.take();
    let mut stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    // Its stdout reaches its end when it exits.
    match rx.recv_timeout(limit) {
        Ok(s) => (child.wait().expect("the child's status"), s),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not end within {limit:?}: its log held it up");
        }
    }
}

/// The C loader (a C program: SIGPIPE kills it, as it would an MTA that keeps the default
/// action) with DEBUG=1 on stderr, a pipe whose reader goes away after the first line: writing
/// to a pipe without a reader raises SIGPIPE, so the library must see that first and not write.
#[test]
fn a_reader_that_goes_away_does_not_kill_the_mta() {
    let loader = made("build/spamfilter-load");
    let milter = LoadMilter::start();
    let dir = TempDir::new("sigpipe");
    let opt = dir.path("milter.opt");
    std::fs::write(
        &opt,
        format!(
            "HOST=127.0.0.1\nPORT={}\nTIMEOUT=300\nDEBUG=1\n",
            milter.port
        ),
    )
    .expect("write the option file");
    let msg = dir.path("msg.eml");
    std::fs::write(&msg, MESSAGE).expect("write the message");
    let mut child = Command::new(loader)
        .args(["--repeat", "200"])
        .arg(library())
        .arg(&opt)
        .arg(&msg)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start build/spamfilter-load");
    let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
    let mut first = String::new();
    stderr.read_line(&mut first).expect("the first log line");
    assert!(first.contains("message "), "{first}");
    drop(stderr);
    let mut stdout = child.stdout.take().expect("piped stdout");
    let out = within("the loader after its log's reader went away", move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        (s, child.wait())
    });
    let status = out.1.expect("the loader's status");
    assert!(
        status.success() && out.0.contains("status: ok"),
        "the loader's log reader went away: {status}\n{}",
        out.0
    );
}

/// What a child's stderr is, in `stderr_read_again_gets_the_count`.
#[derive(Debug, Clone, Copy)]
enum StderrKind {
    /// A pipe (the library opens it anew through /proc/self/fd/2, non-blocking).
    Pipe,
    /// A pipe, with /proc hidden: the library polls the MTA's own descriptor.
    PipeWithoutProc,
    /// A UNIX stream socket, as systemd's journal gives (send with MSG_DONTWAIT), with a small
    /// send buffer so that a few messages fill it.
    Socket,
}

/// stderr a pipe or socket the test stops reading and reads again later: the child's messages
/// all go through while it is full, and when it is read again, the count comes first.
#[test]
fn stderr_read_again_gets_the_count() {
    let milter = LoadMilter::start();
    let dir = TempDir::new("stderr-child");
    let (per_message, bytes) = one_message_logs(milter.port, &dir);
    for kind in [
        StderrKind::Pipe,
        StderrKind::PipeWithoutProc,
        StderrKind::Socket,
    ] {
        let messages = 2 * 65536 / bytes + 2;
        let text = stderr_child(kind, milter.port, messages);
        let p = parse(&text, "stderr", "full: its reader does not keep up");
        assert!(
            p.notices >= 1 && p.dropped > 0,
            "{kind:?}: lines were dropped:\n{text}"
        );
        assert_eq!(
            p.lines + p.dropped,
            (messages + 1) * per_message,
            "{kind:?}: every line written whole or counted:\n{text}"
        );
        let lines: Vec<&str> = text.lines().collect();
        let last_notice = lines.iter().rposition(|l| notice(l).is_some());
        let last_message = lines.iter().rposition(|l| l.contains("message LOGTEST"));
        assert!(
            last_notice < last_message && last_message == Some(lines.len() - 1),
            "{kind:?}: the notice precedes the last message's lines:\n{text}"
        );
    }
}

/// Runs `child_stderr` with stderr of this kind, unread until it says FILLED; returns all it
/// wrote there.
fn stderr_child(kind: StderrKind, port: u16, messages: usize) -> String {
    let exe = std::env::current_exe().expect("the test binary's path");
    let args = [
        "--exact",
        "child_stderr",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ];
    let mut cmd = match kind {
        StderrKind::PipeWithoutProc => {
            let mut c = Command::new("unshare");
            let script = format!(
                "mount -t tmpfs tmpfs /proc && exec '{}' {}",
                exe.display(),
                args.join(" ")
            );
            c.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
            c
        }
        _ => {
            let mut c = Command::new(&exe);
            c.args(args);
            c
        }
    };
    // A socket: our end, and a copy of the child's end to give it room once we read again.
    let (stderr, ours, theirs): (Stdio, Option<UnixStream>, Option<UnixStream>) = match kind {
        StderrKind::Socket => {
            let (theirs, ours) = UnixStream::pair().expect("a socket pair");
            socket2::SockRef::from(&theirs)
                .set_send_buffer_size(4096)
                .expect("a small send buffer");
            let copy = theirs.try_clone().expect("a copy of the child's end");
            (Stdio::from(OwnedFd::from(theirs)), Some(ours), Some(copy))
        }
        _ => (Stdio::piped(), None, None),
    };
    let mut child = cmd
        .env(CHILD_PORT, port.to_string())
        .env(CHILD_DIR, std::env::temp_dir())
        .env(CHILD_MESSAGES, messages.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{kind:?}: cannot run {cmd:?} ({e}): apt-get install util-linux")
        });
    // Our copy of the child's end of a socket goes, so that its end is the child's exit.
    drop(cmd);
    let mut stderr = match (child.stderr.take(), ours) {
        (Some(pipe), _) => std::fs::File::from(OwnedFd::from(pipe)),
        (None, Some(socket)) => std::fs::File::from(OwnedFd::from(socket)),
        (None, None) => panic!("{kind:?}: no end of the child's stderr"),
    };
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("piped stdin");
    let (tx, said) = mpsc::channel();
    let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |word: &str| loop {
        match said.recv_timeout(RUN_LIMIT) {
            Ok(line) if line.ends_with(word) => return,
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                panic!(
                    "{kind:?}: the child did not say {word} within {RUN_LIMIT:?}: its log held it up"
                );
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("{kind:?}: the child ended before it said {word}")
            }
        }
    };
    wait_for("FILLED");
    // Empty stderr before the child logs again, so that its last message finds room however
    // late this process's threads run. Read only by a thread started now, it could stay full
    // while the child logged that message, tried its count a last time on closing and exited:
    // lines dropped, and their count never written since writing never worked again.
    let mut text = drain(&mut stderr, kind);
    if let Some(theirs) = theirs {
        // Room for the whole message at once (the kernel caps this at net.core.wmem_max).
        socket2::SockRef::from(&theirs)
            .set_send_buffer_size(256 * 1024)
            .expect("a larger send buffer");
    }
    // Read stderr to its end from now on, and let the child log one more message.
    let reader = std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = stderr.read_to_end(&mut rest);
        rest
    });
    stdin.write_all(b"go\n").expect("tell the child to go on");
    wait_for("DONE");
    drop(stdin);
    let status = child.wait().expect("the child's status");
    text.extend(reader.join().expect("the stderr reader"));
    let text = String::from_utf8(text).expect("the log is UTF-8");
    assert!(
        status.success(),
        "{kind:?}: the child failed: {status}\n{text}"
    );
    text
}

/// Everything in our end of the child's stderr now, read without waiting; the end is left
/// blocking, for reading to the end. The child does not share this end's O_NONBLOCK flag: the
/// flag belongs to our open file description, not to the pipe or socket.
fn drain(f: &mut std::fs::File, kind: StderrKind) -> Vec<u8> {
    set_nonblocking(f, true);
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("{kind:?}: reading the child's stderr: {e}"),
        }
    }
    set_nonblocking(f, false);
    out
}

fn set_nonblocking(f: &std::fs::File, on: bool) {
    let fd = f.as_raw_fd();
    // SAFETY: fcntl(2) on a descriptor `f` owns, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    assert!(flags >= 0, "F_GETFL: {}", std::io::Error::last_os_error());
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    let r = unsafe { libc::fcntl(fd, libc::F_SETFL, flags) };
    assert!(r == 0, "F_SETFL: {}", std::io::Error::last_os_error());
}

/// Run by `stderr_read_again_gets_the_count`, with stderr a pipe: filters
/// $LOGGING_TEST_MESSAGES messages logging to stderr, says FILLED, waits for a line on stdin,
/// filters one more and says DONE.
#[test]
#[ignore = "run by stderr_read_again_gets_the_count with a stderr of its own"]
fn child_stderr() {
    let (port, _, messages) = child_env();
    let h = handle(port, "");
    for n in 0..messages {
        filter(&h, &format!("message {n} with stderr unread"));
    }
    println!("FILLED");
    let mut go = String::new();
    std::io::stdin()
        .read_line(&mut go)
        .expect("a line on stdin");
    filter(&h, "the message after stderr was read again");
    println!("DONE");
}
