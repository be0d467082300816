//! Bad input through the C ABI: compiles c_tests/abuse.c, which dlopens the built
//! libmilter_spamfilter.so as an MTA does and abuses every entry point (NULL pointers, short
//! structs, broken envelopes, odd messages, a failing read callback, a 100 MB streamed message,
//! bad option files, many load/use/close rounds), against a real libmilter Milter
//! (tests/milters/load_milter.py). It also checks that the library writes nothing to stdout,
//! calls no exit() and leaves signal dispositions alone.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod support {
    pub mod load_milter;
}
use support::load_milter::LoadMilter;

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

/// The cdylib cargo built next to this test binary (target/<profile>/).
fn library() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps");
    let lib = profile_dir.join("libmilter_spamfilter.so");
    assert!(
        lib.is_file(),
        "{} does not exist: cargo builds it with the tests (crate-type cdylib)",
        lib.display()
    );
    lib
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "milter-spamfilter-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Compiles a C test program into `dir` with the project's warning flags.
fn compile(source: &str, dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    let result = Command::new("cc")
        .args(["-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror"])
        .arg(format!("-I{MANIFEST}/include"))
        .arg("-o")
        .arg(&out)
        .arg(Path::new(MANIFEST).join(source))
        .args(["-ldl", "-pthread"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run cc (install the Debian package gcc): {e}"));
    assert!(
        result.status.success(),
        "compiling {source} failed:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

#[test]
fn c_abuse_suite_passes() {
    let lib = library();
    let dir = TempDir::new("abuse");
    let exe = compile("c_tests/abuse.c", &dir.0, "abuse");
    let work = dir.0.join("work");
    std::fs::create_dir(&work).expect("create the work directory");
    let milter = LoadMilter::start();
    let mut child = Command::new(&exe)
        .arg(&lib)
        .arg(&work)
        .arg(milter.port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the abuse program");
    // Read both pipes to the end (stderr on a thread so neither can fill up and block).
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
    let status = child.wait().expect("wait for the abuse program");
    let err = err_thread.join().unwrap_or_default();
    // Shown with --nocapture, and always on failure.
    let _ = std::io::stderr().write_all(err.as_bytes());
    assert!(
        status.success(),
        "abuse failed ({status}); its report:\n{err}"
    );
    assert!(
        err.contains(", 0 failed"),
        "abuse did not report a complete run:\n{err}"
    );
    assert!(
        stdout.is_empty(),
        "abuse wrote {} bytes to stdout: {:?}",
        stdout.len(),
        String::from_utf8_lossy(&stdout)
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
