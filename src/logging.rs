//! DEBUG output, per handle. The process has one global `log` logger; ours dispatches each record
//! to the sink of the handle that is working on the current thread, so two handles (two filter
//! slots) keep their own DEBUG level and destination. Each sink writes to stderr, a file or
//! syslog. Writing a log line never fails or blocks a message: a line the destination will not
//! take now is dropped and counted, and the count is written when lines go through again
//! (`writer.rs`, over the non-blocking descriptors of `dest.rs`).

mod dest;
mod writer;

use crate::config::{Config, LogTarget};
use dest::{Fd, Place};
use log::{LevelFilter, Log, Metadata, Record};
use std::cell::RefCell;
use std::sync::{Arc, Mutex, Once, PoisonError};
use writer::LineWriter;

/// One handle's log destination and level.
pub struct LogSink {
    level: LevelFilter,
    output: Output,
}

enum Output {
    /// DEBUG=0: nothing is written, nothing opened.
    Nothing,
    Syslog,
    /// The lock is held only while bytes are handed to a descriptor that never waits, so a
    /// stalled reader cannot hold up a thread that logs.
    Lines(Mutex<LineWriter<Fd>>),
}

thread_local! {
    static CURRENT: RefCell<Vec<Arc<LogSink>>> = const { RefCell::new(Vec::new()) };
}

/// DEBUG value → `log` level: 0 nothing, 1 one line per message and errors, 2 the protocol trace,
/// 3 the raw octets too.
pub fn level_for(debug: u8) -> LevelFilter {
    match debug {
        0 => LevelFilter::Off,
        1 => LevelFilter::Info,
        2 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// What every line written to stderr or a file begins with.
fn prefix() -> String {
    format!("milter-spamfilter[{}] ", std::process::id())
}

fn lines(place: Place, name: String) -> LineWriter<Fd> {
    LineWriter::new(Fd::new(place), name, prefix())
}

impl LogSink {
    pub fn new(config: &Config) -> Arc<LogSink> {
        install();
        let level = level_for(config.debug);
        let output = if level == LevelFilter::Off {
            Output::Nothing
        } else {
            match &config.log_target {
                LogTarget::Syslog => Output::Syslog,
                LogTarget::Stderr => {
                    Output::Lines(Mutex::new(lines(Place::Stderr, "stderr".into())))
                }
                LogTarget::File(path) => Output::Lines(Mutex::new(file_or_stderr(config, path))),
            }
        };
        Arc::new(LogSink { level, output })
    }

    /// Runs `f` with this sink receiving the current thread's log records.
    pub fn run<R>(self: &Arc<Self>, f: impl FnOnce() -> R) -> R {
        struct Pop;
        impl Drop for Pop {
            fn drop(&mut self) {
                CURRENT.with(|c| {
                    c.borrow_mut().pop();
                });
            }
        }
        // Nothing of this handle's logged: no sink pushed. With none on the thread's stack the
        // dispatcher drops every record, just as this one would, and pushing it would cost two
        // atomic operations on a count every MTA thread shares.
        let _pop = (self.level != LevelFilter::Off).then(|| {
            CURRENT.with(|c| c.borrow_mut().push(Arc::clone(self)));
            Pop
        });
        // `f` called in one place only, so that the compiler can put it inline: every push of
        // every message runs through here.
        f()
    }

    pub fn level(&self) -> LevelFilter {
        self.level
    }

    fn write(&self, record: &Record<'_>) {
        match &self.output {
            Output::Nothing => {}
            Output::Syslog => syslog(&format!("{}: {}", record.level(), record.args())),
            Output::Lines(w) => {
                let line = format!("{}{}: {}\n", prefix(), record.level(), record.args());
                // A panic elsewhere while the lock was held leaves the writer whole: each of its
                // steps completes or is dropped.
                let mut w = w.lock().unwrap_or_else(PoisonError::into_inner);
                w.write_record(line.as_bytes());
            }
        }
    }
}

/// The LOG_FILE's writer; if the file cannot be opened (other than a FIFO without a reader, which
/// is tried again at each line), the handle still works and logs to stderr, saying why.
fn file_or_stderr(config: &Config, path: &std::path::Path) -> LineWriter<Fd> {
    let mut fd = Fd::new(Place::File(path.to_path_buf()));
    match fd.open_now() {
        Ok(()) => LineWriter::new(fd, format!("LOG_FILE {}", path.display()), prefix()),
        Err(e) => {
            let mut w = lines(Place::Stderr, "stderr".into());
            w.write_record(
                format!(
                    "milter-spamfilter: {}: LOG_FILE: cannot open \"{}\": {e}; logging to stderr\n",
                    config.path,
                    path.display()
                )
                .as_bytes(),
            );
            w
        }
    }
}

struct Dispatcher;

impl Log for Dispatcher {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        CURRENT
            .try_with(|c| {
                c.borrow()
                    .last()
                    .is_some_and(|sink| metadata.level() <= sink.level)
            })
            .unwrap_or(false)
    }

    fn log(&self, record: &Record<'_>) {
        let _ = CURRENT.try_with(|c| {
            if let Some(sink) = c.borrow().last() {
                if record.level() <= sink.level {
                    sink.write(record);
                }
            }
        });
    }

    fn flush(&self) {}
}

static DISPATCHER: Dispatcher = Dispatcher;

/// Installs the dispatcher as the process's logger, once. If the host already installed a logger,
/// ours is not installed and records go to the host's.
fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if log::set_logger(&DISPATCHER).is_ok() {
            log::set_max_level(LevelFilter::Trace);
        }
    });
}

/// Sends each line to syslog(3) with facility LOG_MAIL, as Milters themselves log. No openlog(3):
/// that would change the ident and options of the MTA's own syslog lines, since the process has
/// only one; the facility goes with each message and the line names the library itself.
fn syslog(text: &str) {
    for line in text.lines() {
        let mut line: Vec<u8> = line.bytes().filter(|&b| b != 0).collect();
        line.push(0);
        // SAFETY: the format is a static NUL-terminated "%s" string and the one argument is
        // NUL-terminated (NULs inside were removed above).
        unsafe {
            libc::syslog(
                libc::LOG_MAIL | libc::LOG_INFO,
                c"milter-spamfilter: %s".as_ptr(),
                line.as_ptr() as *const libc::c_char,
            );
        }
    }
}
