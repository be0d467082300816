//! A fresh directory under the system temp dir for one test's files, removed with everything
//! in it when dropped; and `fresh_dir`, the unique empty directory every scratch directory of the
//! tests and their servers starts as.

#![allow(dead_code)] // Each test file uses a different part.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct TempDir(PathBuf);

impl TempDir {
    /// `milter-spamfilter-TAG-PID-N`: unique to this process and call, whatever the tag.
    pub fn new(tag: &str) -> TempDir {
        TempDir(fresh_dir(
            &std::env::temp_dir(),
            &format!("milter-spamfilter-{tag}"),
        ))
    }

    /// The directory itself.
    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// `name` in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `contents` to `name` in the directory; returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new, empty directory `NAME-PID-N` under `base` (N counts the calls in this process), so
/// that tests running at once never share one; whatever an earlier run left there is removed.
pub fn fresh_dir(base: &Path, name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = base.join(format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}
