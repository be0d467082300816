//! What an administrator gets: `make install`, the man pages, the check tool against a live and a
//! stopped Milter, the README's example program, and DEBUG output to a file, to syslog, or to a
//! log that cannot be written (which must never fail a message).

use milter_spamfilter::{Config, Content, Envelope, Handle, Recipient, VerdictKind};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

mod support {
    pub mod built;
    pub mod load_milter;
    pub mod milters;
    pub mod tempdir;
}
use support::built::{library, made, root};
use support::load_milter::LoadMilter;
use support::milters::free_port;
use support::tempdir::TempDir;

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn check_tool() -> PathBuf {
    made("build/spamfilter-check")
}

#[test]
fn install_puts_every_file_in_place() {
    let dest = TempDir::new("install");
    let o = run(Command::new("make")
        .args(["-s", "--no-print-directory", "install", "PREFIX=/usr"])
        .arg(format!("DESTDIR={}", dest.dir().display()))
        .current_dir(root()));
    assert!(o.status.success(), "make install failed:\n{}", text(&o));
    for f in [
        "usr/lib/libmilter_spamfilter.so",
        "usr/include/milter_spamfilter.h",
        "usr/lib/pkgconfig/milter-spamfilter.pc",
        "usr/bin/spamfilter-check",
        "usr/share/man/man1/spamfilter-check.1",
        "usr/share/man/man3/milter_spamfilter.3",
        "usr/share/man/man5/milter-spamfilter.opt.5",
        "usr/share/doc/milter-spamfilter/milter.opt.example",
    ] {
        assert!(dest.path(f).is_file(), "make install did not install {f}");
    }
    let pc = std::fs::read_to_string(dest.path("usr/lib/pkgconfig/milter-spamfilter.pc"))
        .expect("read the pkg-config file");
    assert!(pc.contains("prefix=/usr\n"), "{pc}");
    assert!(pc.contains("Libs: -L${libdir} -lmilter_spamfilter"), "{pc}");
    // The installed check tool looks for the installed library, and works with the staged one.
    let tool = std::fs::read(dest.path("usr/bin/spamfilter-check")).expect("read the tool");
    let wanted = b"/usr/lib/libmilter_spamfilter.so";
    assert!(
        tool.windows(wanted.len()).any(|w| w == wanted),
        "the installed check tool does not default to /usr/lib/libmilter_spamfilter.so"
    );
    let o = run(Command::new(dest.path("usr/bin/spamfilter-check"))
        .arg("--library")
        .arg(dest.path("usr/lib/libmilter_spamfilter.so"))
        .arg("--options-only")
        .arg(dest.path("usr/share/doc/milter-spamfilter/milter.opt.example")));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("PORT=8891"), "{}", text(&o));
    // The library exports the plug-in's entry points, and only names beginning spamfilter_.
    let o = run(Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(dest.path("usr/lib/libmilter_spamfilter.so")));
    let symbols = String::from_utf8_lossy(&o.stdout);
    for f in [
        "spamfilter_init",
        "spamfilter_filter",
        "spamfilter_result_free",
        "spamfilter_close",
        "spamfilter_version",
        "spamfilter_last_error",
    ] {
        assert!(
            symbols.lines().any(|l| l.ends_with(&format!(" T {f}"))),
            "{f} not exported:\n{symbols}"
        );
    }
}

#[test]
fn man_pages_render_without_warnings() {
    for page in [
        "docs/man/spamfilter-check.1",
        "docs/man/milter_spamfilter.3",
        "docs/man/milter-spamfilter.opt.5",
    ] {
        let path = root().join(page);
        let o = Command::new("man")
            .arg("-l")
            .arg(&path)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80")
            .output()
            .unwrap_or_else(|e| panic!("cannot run man ({e}): apt-get install man-db groff-base"));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "man -l {page}: {}", text(&o));
        assert!(
            out.contains("NAME") && out.contains("SEE ALSO"),
            "{page}:\n{out}"
        );
        let o = run(Command::new("groff").args(["-man", "-ww", "-z"]).arg(&path));
        assert!(
            o.status.success() && o.stderr.is_empty(),
            "groff warns about {page}:\n{}",
            text(&o)
        );
    }
}

/// The C program in the README, between its markers, exactly as shown.
fn readme_example() -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("read README.md");
    let start = readme
        .find("<!-- example-mta.c -->")
        .expect("README.md has the example-mta.c marker");
    let end = readme
        .find("<!-- /example-mta.c -->")
        .expect("README.md has the closing example-mta.c marker");
    let block = &readme[start..end];
    let code_start = block.find("```c\n").expect("a ```c block") + 5;
    let code_end = block.rfind("```").expect("the block's end");
    block[code_start..code_end].to_string()
}

#[test]
fn the_readme_example_compiles_and_filters_a_message() {
    let dir = TempDir::new("example");
    std::fs::write(dir.path("example-mta.c"), readme_example()).expect("write the example");
    let o = run(Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror"])
        .arg(format!("-I{}", root().join("include").display()))
        .arg(dir.path("example-mta.c"))
        .arg("-ldl")
        .arg("-o")
        .arg(dir.path("example-mta")));
    assert!(
        o.status.success(),
        "the README example does not compile:\n{}",
        text(&o)
    );

    let milter = LoadMilter::start();
    std::fs::write(
        dir.path("milter.opt"),
        format!("HOST=127.0.0.1\nPORT={}\n", milter.port),
    )
    .expect("write the option file");
    let o = run(Command::new(dir.path("example-mta"))
        .arg(library())
        .arg(dir.path("milter.opt")));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // The load Milter continues without edits for a Subject without a number.
    assert_eq!(String::from_utf8_lossy(&o.stdout), "no verdict: deliver\n");

    std::fs::write(
        dir.path("down.opt"),
        format!("HOST=127.0.0.1\nPORT={}\n", free_port()),
    )
    .expect("write the option file");
    let o = run(Command::new(dir.path("example-mta"))
        .arg(library())
        .arg(dir.path("down.opt")));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("connection refused"),
        "expected a refused connection: {}",
        text(&o)
    );
}

#[test]
fn check_tool_against_a_live_milter() {
    let tool = check_tool();
    let milter = LoadMilter::start();
    let dir = TempDir::new("check-live");
    std::fs::write(
        dir.path("milter.opt"),
        format!("HOST=127.0.0.1\nPORT={}\nSPAM_LEVEL=5\n", milter.port),
    )
    .expect("write the option file");
    std::fs::write(
        dir.path("msg.eml"),
        "Subject: load 8\r\nFrom: a@example.org\r\n\r\nbody\r\n",
    )
    .expect("write the message");

    // A message that gets a verdict: exit 1, and every part of the report.
    let o = run(Command::new(&tool)
        .arg("--library")
        .arg(library())
        .args(["--from", "alice@example.org", "--rcpt", "bob@example.net"])
        .args(["--client-addr", "192.0.2.10", "--queue-id", "CHK1"])
        .arg(dir.path("milter.opt"))
        .arg(dir.path("msg.eml")));
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    for want in [
        &format!("PORT={}", milter.port),
        "# default",
        "TIMEOUT=3600",
        "warning:",
        "unknown option \"SPAM_LEVEL\"",
        &format!("connected to 127.0.0.1:{}", milter.port),
        "negotiated: version 6, actions ADDHDRS",
        "macros at connect:",
        "> OPTNEG",
        "< OPTNEG",
        "> MAIL sender=\"<alice@example.org>\"",
        "> HEADER name=\"Subject\" value=\"load 8\"",
        "< ADDHEADER name=\"X-Load-Id\" value=\"8\"",
        "< CONTINUE",
        "result: verdict, disposition continue",
        "addheader :last \"X-Load-Id\" \"8\";",
        "time: ",
        "PASS",
    ] {
        assert!(
            out.contains(want),
            "the check tool's output lacks {want:?}:\n{out}"
        );
    }

    // The built-in sample passes without a verdict: exit 0.
    let o = run(Command::new(&tool)
        .arg("--library")
        .arg(library())
        .arg(dir.path("milter.opt")));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("the built-in sample"), "{}", text(&o));
    assert!(text(&o).contains("result: none"), "{}", text(&o));

    // A rejected message: exit 1 with the Milter's reply.
    std::fs::write(dir.path("rej.eml"), "Subject: load 5\r\n\r\nx\r\n").expect("write");
    let o = run(Command::new(&tool)
        .arg("--library")
        .arg(library())
        .arg("--stream")
        .arg(dir.path("milter.opt"))
        .arg(dir.path("rej.eml")));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("reply: 550 5.7.1 rejected load message 5"),
        "{}",
        text(&o)
    );
}

/// The check tool against a live opendkim: its negotiation (HDR_LEADSPC, SKIP ...), the
/// DKIM-Signature inserted at the top, its ACCEPT, exit 1; then opendkim stopped: exit 2.
#[test]
fn check_tool_against_a_live_and_then_a_stopped_opendkim() {
    let tool = check_tool();
    let dkim = support::milters::opendkim();
    let dir = TempDir::new("check-dkim");
    let opt = dir.path("dkim.opt");
    std::fs::write(
        &opt,
        format!("HOST=127.0.0.1\nPORT={}\nTIMEOUT=1000\n", dkim.port),
    )
    .expect("write the option file");
    std::fs::write(
        dir.path("msg.eml"),
        "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: signed\r\n\
         Date: Wed, 25 Nov 2026 10:00:00 +0000\r\n\r\nHello.\r\n",
    )
    .expect("write the message");
    let run_tool = || {
        run(Command::new(&tool)
            .arg("--library")
            .arg(library())
            .args(["--from", "alice@example.org", "--rcpt", "bob@example.net"])
            .args(["--client-addr", "127.0.0.1", "--hostname", "mx.example.org"])
            .arg(&opt)
            .arg(dir.path("msg.eml")))
    };
    let o = run_tool();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    for want in [
        "negotiated: version 6, actions ADDHDRS",
        "HDR_LEADSPC",
        "< INSHEADER index=0 name=\"DKIM-Signature\"",
        "< ACCEPT",
        "result: verdict, disposition accept",
        "addheader \"DKIM-Signature\" \"v=1; a=rsa-sha256;",
        "d=example.org;",
        "PASS",
    ] {
        assert!(
            out.contains(want),
            "the check tool's output lacks {want:?}:\n{out}"
        );
    }
    let port = dkim.port;
    drop(dkim);
    let o = run_tool();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains(&format!("127.0.0.1:{port}: connection refused"))
            && out.contains("is the Milter running"),
        "{out}"
    );
}

#[test]
fn check_tool_against_a_stopped_milter_says_what_to_check() {
    let tool = check_tool();
    let dir = TempDir::new("check-down");
    let port = free_port();
    std::fs::write(
        dir.path("milter.opt"),
        format!("! nothing listens here\nHOST=127.0.0.1\nPORT={port}\n"),
    )
    .expect("write the option file");
    let opt = dir.path("milter.opt");
    let o = run(Command::new(&tool)
        .arg("--library")
        .arg(library())
        .arg(&opt));
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    for want in [
        format!("connecting to Milter 127.0.0.1:{port}"),
        "FAIL (err_connect)".to_string(),
        "connection refused".to_string(),
        "is the Milter running".to_string(),
        format!(
            "see HOST at {}:2 and PORT at {}:3",
            opt.display(),
            opt.display()
        ),
    ] {
        assert!(out.contains(&want), "the output lacks {want:?}:\n{out}");
    }

    // A bad option file: exit 2, naming the line.
    std::fs::write(dir.path("bad.opt"), "HOST=127.0.0.1\nPORT=abc\n").expect("write");
    let o = run(Command::new(&tool)
        .arg("--library")
        .arg(library())
        .arg(dir.path("bad.opt")));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("bad.opt:2: PORT: \"abc\""),
        "{}",
        text(&o)
    );

    // Usage and loading errors: exit 3.
    let o = run(&mut Command::new(&tool));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let o = run(Command::new(&tool)
        .args(["--library", "/nonexistent/libx.so"])
        .arg(&opt));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("cannot load /nonexistent/libx.so"),
        "{}",
        text(&o)
    );
}

fn envelope(id: &str) -> Envelope {
    Envelope {
        client_addr: Some("192.0.2.10".parse().expect("literal")),
        client_port: 40000,
        sender: b"alice@example.org".to_vec(),
        recipients: vec![Recipient::new(b"bob@example.net".to_vec())],
        macros: vec![(b"i".to_vec(), id.as_bytes().to_vec())],
        ..Envelope::default()
    }
}

fn handle(port: u16, extra: &str) -> Handle {
    let text = format!("HOST=127.0.0.1\nPORT={port}\n{extra}");
    Handle::new(Config::parse("log.opt", text.as_bytes()).expect("valid option text"))
}

#[test]
fn debug_levels_write_one_line_per_message_then_the_trace() {
    let milter = LoadMilter::start();
    let dir = TempDir::new("debug");
    let log1 = dir.path("debug1.log");
    let h = handle(
        milter.port,
        &format!("DEBUG=1\nLOG_FILE={}\n", log1.display()),
    );
    let f = h
        .filter(
            &envelope("LOGID1"),
            Content::Buffer(b"Subject: load 9\r\n\r\nx\r\n"),
        )
        .expect("filtered");
    assert_eq!(f.verdict.kind, VerdictKind::Sieve);
    let log = std::fs::read_to_string(&log1).expect("the DEBUG=1 log file");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "DEBUG=1 writes one line per message:\n{log}"
    );
    let line = lines[0];
    for want in [
        "message LOGID1",
        &format!("milter 127.0.0.1:{}", milter.port),
        "verdict \"require",
        " ms",
    ] {
        assert!(line.contains(want), "the line lacks {want:?}: {line}");
    }

    let log2 = dir.path("debug2.log");
    let h = handle(
        milter.port,
        &format!("DEBUG=2\nLOG_FILE={}\n", log2.display()),
    );
    h.filter(
        &envelope("LOGID2"),
        Content::Buffer(b"Subject: load 4\r\n\r\nx\r\n"),
    )
    .expect("filtered");
    let log = std::fs::read_to_string(&log2).expect("the DEBUG=2 log file");
    for want in [
        "> OPTNEG version=6",
        "< OPTNEG",
        "> HEADER name=\"Subject\" value=\"load 4\"",
        "< ADDHEADER name=\"X-Load-Id\" value=\"4\"",
        "  000000  ",
        "message LOGID2",
    ] {
        assert!(log.contains(want), "the DEBUG=2 log lacks {want:?}:\n{log}");
    }
    assert!(
        !log.contains("write ") && !log.contains("read "),
        "raw octets belong to DEBUG=3:\n{log}"
    );

    // A handle at DEBUG=0 beside them writes nothing anywhere near them.
    let before = std::fs::read_to_string(&log1).expect("log1");
    let quiet = handle(milter.port, "DEBUG=0\n");
    quiet
        .filter(
            &envelope("QUIET"),
            Content::Buffer(b"Subject: load 4\r\n\r\nx\r\n"),
        )
        .expect("filtered");
    assert_eq!(std::fs::read_to_string(&log1).expect("log1"), before);
}

#[test]
fn a_log_that_cannot_be_written_never_fails_a_message() {
    let milter = LoadMilter::start();
    // A file that cannot be opened, and a device where every write fails.
    for target in ["/nonexistent-dir/milter.log", "/dev/full"] {
        let h = handle(milter.port, &format!("DEBUG=3\nLOG_FILE={target}\n"));
        for n in [12, 13] {
            let msg = format!("Subject: load {n}\r\n\r\nbody\r\n");
            let f = h
                .filter(&envelope("FULL"), Content::Buffer(msg.as_bytes()))
                .unwrap_or_else(|e| panic!("LOG_FILE={target}: the message failed: {e}"));
            // 12: X-Load-Id added; 13: rejected (ereject). Both are Sieve verdicts.
            assert_eq!(
                f.verdict.kind,
                VerdictKind::Sieve,
                "LOG_FILE={target}, load {n}"
            );
            let want: &[u8] = if n == 12 { b"X-Load-Id" } else { b"ereject" };
            assert!(
                f.verdict.script.windows(want.len()).any(|w| w == want),
                "LOG_FILE={target}, load {n}: {}",
                String::from_utf8_lossy(&f.verdict.script)
            );
        }
    }
}

#[test]
fn syslog_lines_go_to_dev_log_with_facility_mail() {
    let tool = check_tool();
    let milter = LoadMilter::start();
    let dir = TempDir::new("syslog");
    let sock_path = dir.path("log.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind a datagram socket");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set a timeout");
    std::fs::write(
        dir.path("milter.opt"),
        format!(
            "HOST=127.0.0.1\nPORT={}\nDEBUG=1\nLOG_FILE=syslog\n",
            milter.port
        ),
    )
    .expect("write the option file");
    // The check tool runs in a private mount namespace whose /dev/log is our socket, so that the
    // machine's own syslog (if any) sees nothing.
    let script = format!(
        "mount -t tmpfs tmpfs /dev && touch /dev/log && mount --bind '{}' /dev/log && \
         exec '{}' --library '{}' --queue-id SYSLOG1 '{}'",
        sock_path.display(),
        tool.display(),
        library().display(),
        dir.path("milter.opt").display()
    );
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap_or_else(|e| panic!("cannot run unshare ({e}): apt-get install util-linux"));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let mut buf = [0u8; 8192];
    let n = sock.recv(&mut buf).expect("a syslog datagram within 10 s");
    let line = String::from_utf8_lossy(&buf[..n]).into_owned();
    // <22>: facility mail (2) * 8 + severity info (6).
    assert!(
        line.starts_with("<22>"),
        "not facility mail, severity info: {line}"
    );
    assert!(
        line.contains("milter-spamfilter: ") && line.contains("message SYSLOG1"),
        "{line}"
    );
}

/// The C loader (as an MTA loads the library) prints a clear error for each bad setup, through
/// spamfilter_last_error(), and exits normally: a missing option file, a missing HOST,
/// `PORT=abc`, and a port nobody listens on.
#[test]
fn the_loader_prints_a_clear_error_for_each_bad_setup() {
    let loader = made("build/spamfilter-load");
    let dir = TempDir::new("loader-errors");
    std::fs::write(dir.path("msg.eml"), "Subject: x\r\n\r\nbody\r\n").expect("write");
    std::fs::write(dir.path("nohost.opt"), "PORT=8891\n").expect("write");
    std::fs::write(dir.path("badport.opt"), "HOST=127.0.0.1\nPORT=abc\n").expect("write");
    let port = free_port();
    std::fs::write(
        dir.path("down.opt"),
        format!("HOST=127.0.0.1\nPORT={port}\n"),
    )
    .expect("write");
    let missing = dir.path("missing.opt");
    let cases: [(PathBuf, &str, String); 4] = [
        (
            missing.clone(),
            "status: err_config",
            format!(
                "{}: cannot open the option file: No such file",
                missing.display()
            ),
        ),
        (
            dir.path("nohost.opt"),
            "status: err_config",
            "nohost.opt: HOST is required but not set".to_string(),
        ),
        (
            dir.path("badport.opt"),
            "status: err_config",
            "badport.opt:2: PORT: \"abc\" is not a number from 1 to 65535".to_string(),
        ),
        (
            dir.path("down.opt"),
            "status: err_connect",
            format!("127.0.0.1:{port}: connection refused"),
        ),
    ];
    for (opt, status, error) in cases {
        let o = run(Command::new(&loader)
            .arg(library())
            .arg(&opt)
            .arg(dir.path("msg.eml")));
        let out = text(&o);
        assert_eq!(o.status.code(), Some(1), "{}: {out}", opt.display());
        assert!(out.contains(status), "{}: {out}", opt.display());
        assert!(
            out.lines()
                .any(|l| l.starts_with("error: ") && l.contains(&error)),
            "{}: expected an error line with {error:?}:\n{out}",
            opt.display()
        );
    }
}
