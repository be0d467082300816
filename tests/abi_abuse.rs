//! Bad input through the C ABI: builds c_tests/abuse.c (make build/abuse), which dlopens the
//! cdylib cargo built for the tests as an MTA does and abuses every entry point (NULL pointers,
//! short structs, broken envelopes, odd messages, a failing read callback, a 100 MB streamed
//! message, bad option files, many load/use/close rounds), against a real libmilter Milter
//! (tests/milters/load_milter.py). It also checks that the library writes nothing to stdout,
//! calls no exit() and leaves signal dispositions alone. And c_tests/guard.c (build/guard), which
//! places the caller's structs at their older, shorter sizes at the end of a page before a
//! PROT_NONE page, so that any read or write past struct_size faults.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

mod support {
    pub mod built;
    pub mod load_milter;
    pub mod tempdir;
}
use support::built::{library, made};
use support::load_milter::LoadMilter;
use support::tempdir::TempDir;

/// What a C test program left behind: its exit status, stderr (its report) and stdout.
struct Ran {
    status: std::process::ExitStatus,
    stderr: String,
    stdout: Vec<u8>,
}

/// Runs `exe` with `args`, reading both pipes to the end (stderr on a thread, so that neither
/// can fill up and block it). The report goes to our stderr: shown with --nocapture.
fn run_c(exe: &Path, args: &[&std::ffi::OsStr]) -> Ran {
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
    let mut stderr = child.stderr.take().expect("piped stderr");
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut stdout = Vec::new();
    let _ = child
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_end(&mut stdout);
    let status = child
        .wait()
        .unwrap_or_else(|e| panic!("wait for {}: {e}", exe.display()));
    let stderr = err_thread.join().unwrap_or_default();
    let _ = std::io::stderr().write_all(stderr.as_bytes());
    Ran {
        status,
        stderr,
        stdout,
    }
}

/// Every case passed, the program said so, and it wrote nothing to stdout.
fn assert_passed(name: &str, ran: &Ran) {
    assert!(
        ran.status.success(),
        "{name} failed ({}); its report:\n{}",
        ran.status,
        ran.stderr
    );
    assert!(
        ran.stderr.contains(", 0 failed"),
        "{name} did not report a complete run:\n{}",
        ran.stderr
    );
    assert!(
        ran.stdout.is_empty(),
        "{name} wrote {} bytes to stdout: {:?}",
        ran.stdout.len(),
        String::from_utf8_lossy(&ran.stdout)
    );
}

#[test]
fn c_abuse_suite_passes() {
    let lib = library();
    let dir = TempDir::new("abuse");
    let exe = made("build/abuse");
    let work = dir.path("work");
    std::fs::create_dir(&work).expect("create the work directory");
    let milter = LoadMilter::start();
    let port = milter.port.to_string();
    let ran = run_c(&exe, &[lib.as_os_str(), work.as_os_str(), port.as_ref()]);
    assert_passed("abuse", &ran);
}

/// Structs from an older header, as short as the library accepts, end where a PROT_NONE page
/// begins: the library must work with them (the verdict arrives, every result field within the
/// size is written) and touch nothing beyond, or the program dies of the fault.
#[test]
fn c_short_structs_before_a_guard_page() {
    let lib = library();
    let dir = TempDir::new("guard");
    let exe = made("build/guard");
    let milter = LoadMilter::start();
    let options = dir.path("guard.opt");
    std::fs::write(
        &options,
        format!("HOST=127.0.0.1\nPORT={}\nTIMEOUT=3000\n", milter.port),
    )
    .unwrap_or_else(|e| panic!("cannot write {}: {e}", options.display()));
    let ran = run_c(&exe, &[lib.as_os_str(), options.as_os_str()]);
    assert_passed("guard", &ran);
    // The self-check ran: the byte after a struct really faults, so a pass means something.
    assert!(
        ran.stderr.contains("ok   guard page self-check"),
        "guard did not check its guard page:\n{}",
        ran.stderr
    );
}

/// The shared library must not even import what it must never call.
#[test]
fn library_imports_no_exit_and_no_signal_functions() {
    let lib = library();
    let out = Command::new("nm")
        .args(["-D", "--undefined-only"])
        .arg(&lib)
        .output()
        .unwrap_or_else(|e| panic!("cannot run nm (install the Debian package binutils): {e}"));
    assert!(out.status.success(), "nm {} failed", lib.display());
    let text = String::from_utf8_lossy(&out.stdout);
    let imported: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|s| s.split('@').next().unwrap_or(s))
        .collect();
    assert!(
        imported.contains(&"write"),
        "nm output looks wrong (no `write`):\n{text}"
    );
    for forbidden in [
        "exit",
        "_exit",
        "_Exit",
        "quick_exit",
        "signal",
        "sigaction",
        "sigprocmask",
        "pthread_sigmask",
        "printf",
        "puts",
    ] {
        assert!(
            !imported.contains(&forbidden),
            "{} imports {forbidden}",
            lib.display()
        );
    }
}
