//! The option files BMI callers name, each loaded once per process and kept (`BmiSystem`).
//!
//! Exim calls bmiInitSystem and bmiFreeSystem around every message, so a system cannot own its
//! Handle: the Handle (the parsed options, the pool of kept Milter connections, what each
//! Milter negotiated) lives in a process-wide cache keyed by the path as given, and a system is
//! a reference to it. Each bmiInitSystem looks at the file (one stat): when its modification
//! time, size, inode or device differ from those it was loaded with, it is read again and the
//! new Handle replaces the old one for later systems (systems still holding the old one keep
//! it until they are freed, then its kept connections are closed).

use crate::error::Result;
use crate::handle::Handle;
use std::cell::RefCell;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// What tells one version of a file from another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    mtime: i64,
    mtime_nsec: i64,
    size: u64,
    inode: u64,
    device: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
        size: m.size(),
        inode: m.ino(),
        device: m.dev(),
    })
}

struct Loaded {
    stamp: Stamp,
    handle: Arc<Handle>,
}

fn cache() -> &'static Mutex<HashMap<PathBuf, Loaded>> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Loaded>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The Handle for the option file at `path`: the cached one while the file is unchanged, else
/// the file read anew. A file that cannot be read or has a bad value is an error every time
/// (nothing is cached for it), with the text of `spamfilter_init`'s.
pub fn open(path: &Path) -> Result<Arc<Handle>> {
    let now = stamp(path);
    if let Some(now) = now {
        if let Some(handle) = last_opened(path, now) {
            return Ok(handle);
        }
        let map = cache().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = map.get(path).filter(|l| l.stamp == now) {
            let handle = Arc::clone(&l.handle);
            drop(map);
            remember(path, now, &handle);
            return Ok(handle);
        }
    }
    // Read outside the lock: other messages with other (or this) files go on meanwhile. The
    // stamp taken before the read is stored: if the file changed during it, the next call sees
    // a different stamp and reads it again.
    let handle = Arc::new(Handle::open(path)?);
    if let Some(now) = now {
        let mut map = cache().lock().unwrap_or_else(|p| p.into_inner());
        map.insert(
            path.to_path_buf(),
            Loaded {
                stamp: now,
                handle: Arc::clone(&handle),
            },
        );
        drop(map);
        remember(path, now, &handle);
    }
    Ok(handle)
}

thread_local! {
    /// The file this thread opened last, its stamp and its Handle. Exim opens the same file
    /// for every message: this spares hashing the path and taking the lock. Weak, so that a
    /// thread's memory never keeps a replaced Handle (and its kept connections) alive.
    static LAST: RefCell<Option<(PathBuf, Stamp, Weak<Handle>)>> = const { RefCell::new(None) };
}

/// The Handle this thread opened last for `path`, if the file is still the one it was.
fn last_opened(path: &Path, now: Stamp) -> Option<Arc<Handle>> {
    LAST.try_with(|last| match &*last.borrow() {
        Some((p, stamp, handle)) if *stamp == now && p.as_os_str() == path.as_os_str() => {
            handle.upgrade()
        }
        _ => None,
    })
    .ok()
    .flatten()
}

fn remember(path: &Path, now: Stamp, handle: &Arc<Handle>) {
    let _ = LAST.try_with(|last| {
        let mut last = last.borrow_mut();
        match &mut *last {
            // The same path: its buffer is kept, not allocated again.
            Some((p, stamp, h)) if p.as_os_str() == path.as_os_str() => {
                *stamp = now;
                *h = Arc::downgrade(handle);
            }
            _ => *last = Some((path.to_path_buf(), now, Arc::downgrade(handle))),
        }
    });
}

/// How many option files are cached (for tests).
pub fn cached_files() -> usize {
    cache().lock().map(|m| m.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(tag: &str, text: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "bmi-system-{tag}-{}-{:?}.opt",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn the_same_file_gives_the_same_handle_until_it_changes() {
        let p = temp_file("same", "HOST=127.0.0.1\nPORT=1\n");
        let a = open(&p).unwrap();
        let b = open(&p).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "an unchanged file was read again");
        // A different size is a different file, whatever the clock's resolution.
        std::fs::write(&p, "HOST=127.0.0.1\nPORT=2\nDEBUG=0\n").unwrap();
        let c = open(&p).unwrap();
        assert!(!Arc::ptr_eq(&a, &c), "a changed file was not read again");
        assert_eq!(c.config().port, 2);
        // Replaced by another file at the same path (a new inode), same size and content.
        let q = p.with_extension("new");
        std::fs::write(&q, "HOST=127.0.0.1\nPORT=2\nDEBUG=0\n").unwrap();
        std::fs::rename(&q, &p).unwrap();
        let d = open(&p).unwrap();
        assert!(
            !Arc::ptr_eq(&c, &d),
            "a file replaced by rename was not read again"
        );
        assert!(cached_files() >= 1);
        // The thread's own note of the last file it opened does not keep a replaced Handle
        // (and its kept connections) alive.
        let (gone, gone_too) = (Arc::downgrade(&a), Arc::downgrade(&c));
        drop((a, b, c));
        assert!(gone.upgrade().is_none() && gone_too.upgrade().is_none());
        assert!(
            Arc::ptr_eq(&open(&p).unwrap(), &d),
            "the unchanged file was read again"
        );
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn a_bad_file_is_an_error_every_time_and_names_the_line() {
        let p = temp_file("bad", "HOST=127.0.0.1\nPORT=70000\n");
        for _ in 0..2 {
            let e = open(&p).err().expect("a bad PORT is refused");
            assert_eq!(e.kind, crate::ErrorKind::Config);
            assert!(
                e.message.contains("PORT") && e.message.contains("70000"),
                "{}",
                e.message
            );
            assert!(e.message.contains(":2"), "{}", e.message);
        }
        let _ = std::fs::remove_file(&p);
        let e = open(&p).err().expect("a missing file is refused");
        assert_eq!(e.kind, crate::ErrorKind::Config);
    }
}
