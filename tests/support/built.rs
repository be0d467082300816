//! What the build made, as the tests find it: the checkout, the cdylib `cargo test` has just
//! built, and the C programs of the Makefile (tools/, c_tests/), made on demand.
//!
//! The library is never target/release/libmilter_spamfilter.so by name: only `cargo build` (and
//! so `make`) refreshes that copy, so a bare `cargo test` would test a stale one.

#![allow(dead_code)] // Each test file uses a different part.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::SystemTime;

/// The checkout (where Cargo.toml and the Makefile are).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The cdylib cargo built for this test run. `cargo test` writes it to target/<profile>/deps/
/// but copies it up to target/<profile>/ only for `cargo build`, so the one up there may be
/// older: whichever of the two is newer is taken.
pub fn library() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let deps = exe
        .parent()
        .expect("the test binary lives in target/<profile>/deps");
    let profile_dir = deps
        .parent()
        .expect("the test binary lives in target/<profile>/deps");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let newest: Option<(SystemTime, PathBuf)> = [deps, profile_dir]
        .into_iter()
        .map(|d| d.join("libmilter_spamfilter.so"))
        .filter_map(|p| modified(&p).map(|t| (t, p)))
        .max_by_key(|(t, _)| *t);
    let (_, lib) = newest.unwrap_or_else(|| {
        panic!(
            "no libmilter_spamfilter.so in {} or {}: cargo builds it with the tests \
             (crate-type cdylib)",
            deps.display(),
            profile_dir.display()
        )
    });
    lib
}

/// `make -s TARGET` in the checkout, once per test process and target (make decides what is
/// stale; one make at a time, so that two tests never write the same program at once); returns
/// the target's path.
pub fn made(target: &str) -> PathBuf {
    static MADE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    if !made.contains(target) {
        let o = Command::new("make")
            .args(["-s", "--no-print-directory", target])
            .current_dir(root())
            .output()
            .unwrap_or_else(|e| panic!("cannot run make ({e}): apt-get install make"));
        assert!(
            o.status.success(),
            "make {target} failed:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        made.insert(target.to_string());
    }
    let path = root().join(target);
    assert!(path.exists(), "make {target} made no {}", path.display());
    path
}
