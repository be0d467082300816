//! The option files BMI callers name, each loaded once per process and kept (`BmiSystem`).
//!
//! Exim calls bmiInitSystem and bmiFreeSystem around every message, so a system cannot own its
//! Handle: the Handle (the parsed options, the pool of kept Milter connections, what each
//! Milter negotiated) lives in a process-wide cache keyed by the path as given, and a system is
//! a reference to it. A bmiInitSystem looks at the file (one stat) when its thread has not
//! looked at it for a second (`RECHECK`): when its modification time, size, inode or device
//! differ from those it was loaded with, it is read again and the new Handle replaces the old
//! one for later systems (systems still holding the old one keep it until they are freed, then
//! its kept connections are closed). So an edited file is in effect within a second, and a
//! thread filtering hundreds of messages a second makes one stat a second, not one a message.

use crate::error::Result;
use crate::handle::Handle;
use std::cell::RefCell;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// How long a thread trusts its last look at a file. Exim calls bmiInitSystem for every message;
/// a stat each time (a path walk in the kernel, a microsecond or more) was the costliest call of
/// a message's BMI calls bar the network, for a file that changes once in a while.
pub const RECHECK: Duration = Duration::from_secs(1);

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
    open_within(path, RECHECK)
}

/// `open`, trusting this thread's look at the file for `recheck`.
fn open_within(path: &Path, recheck: Duration) -> Result<Arc<Handle>> {
    if let Some(handle) = looked_at_lately(path, recheck) {
        return Ok(handle);
    }
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
    /// The file this thread opened last, its stamp, its Handle and when the thread last looked
    /// at it. Exim opens the same file for every message: this spares the stat (within
    /// RECHECK), hashing the path and taking the lock. Weak, so that a thread's memory never
    /// keeps a replaced Handle (and its kept connections) alive.
    static LAST: RefCell<Option<Last>> = const { RefCell::new(None) };
}

struct Last {
    path: PathBuf,
    stamp: Stamp,
    handle: Weak<Handle>,
    looked: Instant,
}

/// The Handle this thread opened last for `path`, if it looked at the file less than
/// `recheck` ago.
fn looked_at_lately(path: &Path, recheck: Duration) -> Option<Arc<Handle>> {
    LAST.try_with(|last| match &*last.borrow() {
        Some(l) if l.path.as_os_str() == path.as_os_str() && l.looked.elapsed() < recheck => {
            l.handle.upgrade()
        }
        _ => None,
    })
    .ok()
    .flatten()
}

/// The Handle this thread opened last for `path`, if the file is still the one it was; the
/// thread's look at it is then renewed (see `looked_at_lately`).
fn last_opened(path: &Path, now: Stamp) -> Option<Arc<Handle>> {
    LAST.try_with(|last| match &mut *last.borrow_mut() {
        Some(l) if l.stamp == now && l.path.as_os_str() == path.as_os_str() => {
            let handle = l.handle.upgrade()?;
            l.looked = Instant::now();
            Some(handle)
        }
        _ => None,
    })
    .ok()
    .flatten()
}

fn remember(path: &Path, now: Stamp, handle: &Arc<Handle>) {
    let _ = LAST.try_with(|last| {
        let mut last = last.borrow_mut();
        let looked = Instant::now();
        match &mut *last {
            // The same path: its buffer is kept, not allocated again.
            Some(l) if l.path.as_os_str() == path.as_os_str() => {
                l.stamp = now;
                l.handle = Arc::downgrade(handle);
                l.looked = looked;
            }
            _ => {
                *last = Some(Last {
                    path: path.to_path_buf(),
                    stamp: now,
                    handle: Arc::downgrade(handle),
                    looked,
                })
            }
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

    /// `open`, looking at the file every time.
    fn looked_at(p: &Path) -> Result<Arc<Handle>> {
        open_within(p, Duration::ZERO)
    }

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
        let a = looked_at(&p).unwrap();
        let b = looked_at(&p).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "an unchanged file was read again");
        // A different size is a different file, whatever the clock's resolution.
        std::fs::write(&p, "HOST=127.0.0.1\nPORT=2\nDEBUG=0\n").unwrap();
        let c = looked_at(&p).unwrap();
        assert!(!Arc::ptr_eq(&a, &c), "a changed file was not read again");
        assert_eq!(c.config().port, 2);
        // Replaced by another file at the same path (a new inode), same size and content.
        let q = p.with_extension("new");
        std::fs::write(&q, "HOST=127.0.0.1\nPORT=2\nDEBUG=0\n").unwrap();
        std::fs::rename(&q, &p).unwrap();
        let d = looked_at(&p).unwrap();
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
            Arc::ptr_eq(&looked_at(&p).unwrap(), &d),
            "the unchanged file was read again"
        );
        let _ = std::fs::remove_file(&p);
    }

    /// Within RECHECK a thread trusts its last look at the file; after it, the change is seen.
    #[test]
    fn a_thread_looks_at_the_file_again_only_after_the_recheck_interval() {
        let p = temp_file("recheck", "HOST=127.0.0.1\nPORT=1\n");
        let a = open_within(&p, Duration::ZERO).unwrap();
        std::fs::write(&p, "HOST=127.0.0.1\nPORT=3\nDEBUG=0\n").unwrap();
        let b = open_within(&p, Duration::from_secs(3600)).unwrap();
        assert!(
            Arc::ptr_eq(&a, &b),
            "looked at the file within the interval"
        );
        let wait = Duration::from_millis(50);
        std::thread::sleep(wait * 2);
        let c = open_within(&p, wait).unwrap();
        assert_eq!(
            c.config().port,
            3,
            "the change was not seen after the interval"
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
